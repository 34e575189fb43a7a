//! Plain `#[repr(C)]` data shared by the eBPF programs and the `guard` daemon.
//!
//! Everything here crosses the user/kernel boundary as raw bytes, so every
//! type is `Copy`, has no padding holes the verifier would reject, and keeps
//! its layout fixed across builds.
#![no_std]

/// Deepest cgroup level the kernel side walks when it looks for the nearest
/// watched ancestor. systemd hierarchies on the target machines are 4 to 6
/// deep; 16 leaves room without making the bounded loop expensive.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Task command name length, as in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Names of the global variables the loader sets before the programs load.
pub mod globals {
    /// Stall budget in ns: no-progress stall that may accumulate in a window.
    pub const BUDGET_NS: &str = "BUDGET_NS";
    /// Window length in ns.
    pub const WINDOW_NS: &str = "WINDOW_NS";
    /// Minimum time between two verdicts for the same cgroup, in ns.
    pub const VERDICT_INTERVAL_NS: &str = "VERDICT_INTERVAL_NS";
    /// A reclaim pass that frees fewer pages than this made no progress.
    pub const MIN_PROGRESS_PAGES: &str = "MIN_PROGRESS_PAGES";
    /// Byte offset of `nr_reclaimed` in the `mm_vmscan_memcg_reclaim_end`
    /// record, read from the running kernel's tracefs format file.
    pub const NR_RECLAIMED_OFFSET: &str = "NR_RECLAIMED_OFFSET";
    /// Nanoseconds per jiffy (1e9 / CONFIG_HZ) of the running kernel.
    pub const NS_PER_JIFFY: &str = "NS_PER_JIFFY";
    /// Non-zero: charge tasks under no watched cgroup to their own cgroup.
    pub const WATCH_ALL: &str = "WATCH_ALL";
    /// Offsets of `root`, `id` and `path` in the cgroup_mkdir/rmdir records.
    pub const CGROUP_ROOT_OFFSET: &str = "CGROUP_ROOT_OFFSET";
    pub const CGROUP_ID_OFFSET: &str = "CGROUP_ID_OFFSET";
    pub const CGROUP_PATH_OFFSET: &str = "CGROUP_PATH_OFFSET";
    /// Offset of `pid` in the `oom:mark_victim` record.
    pub const OOM_PID_OFFSET: &str = "OOM_PID_OFFSET";
    /// Offset of `nr_reclaimed` in `mm_vmscan_direct_reclaim_end`.
    pub const DIRECT_NR_RECLAIMED_OFFSET: &str = "DIRECT_NR_RECLAIMED_OFFSET";
    /// Offset of `no_progress_loops` in `oom:reclaim_retry_zone`.
    pub const RETRY_LOOPS_OFFSET: &str = "RETRY_LOOPS_OFFSET";
    /// For the BTF-typed tracepoints, which get the tracepoint's arguments
    /// rather than its record: byte offsets of struct members on the
    /// running kernel, read from its BTF. `cgroup.root`,
    /// `cgroup_root.hierarchy_id`, `cgroup.kn` and `kernfs_node.id` give a
    /// new cgroup's hierarchy and id.
    pub const CGRP_ROOT_OFFSET: &str = "CGRP_ROOT_OFFSET";
    pub const ROOT_HIERARCHY_ID_OFFSET: &str = "ROOT_HIERARCHY_ID_OFFSET";
    pub const CGRP_KN_OFFSET: &str = "CGRP_KN_OFFSET";
    pub const KN_ID_OFFSET: &str = "KN_ID_OFFSET";
    /// `oom:mark_victim`'s first argument is the victim's pid (`int pid`,
    /// before 6.9) when this is `u64::MAX`; otherwise it is the victim's
    /// `task_struct` and this is the offset of `pid` in it.
    pub const VICTIM_TASK_PID_OFFSET: &str = "VICTIM_TASK_PID_OFFSET";

    /// Host scope: a verdict as soon as the page allocator has retried
    /// reclaim this many times without progress (0: only the budget).
    pub const HOST_RETRY_LOOPS: &str = "HOST_RETRY_LOOPS";
    /// Non-zero: a host verdict (rate-limited) at every direct reclaim pass,
    /// for user space to confirm against MemAvailable.
    pub const HOST_EARLY: &str = "HOST_EARLY";
    /// Minimum time between two host verdicts, ns.
    pub const HOST_INTERVAL_NS: &str = "HOST_INTERVAL_NS";
}

/// Names of the programs in the eBPF object, so both halves agree.
pub mod programs {
    pub const RECLAIM_BEGIN: &str = "memcg_reclaim_begin";
    pub const RECLAIM_END: &str = "memcg_reclaim_end";
    pub const OVER_HIGH_ENTER: &str = "over_high_enter";
    pub const OVER_HIGH_EXIT: &str = "over_high_exit";
    pub const PENALTY_SLEEP: &str = "penalty_sleep";
    pub const CGROUP_MKDIR: &str = "cgroup_mkdir";
    pub const CGROUP_RMDIR: &str = "cgroup_rmdir";
    pub const OOM_MARK_VICTIM: &str = "oom_mark_victim";
    pub const DIRECT_RECLAIM_BEGIN: &str = "direct_reclaim_begin";
    pub const DIRECT_RECLAIM_END: &str = "direct_reclaim_end";
    pub const RECLAIM_RETRY_ZONE: &str = "reclaim_retry_zone";
    pub const KSWAPD_WAKE: &str = "kswapd_wake";
    /// The same tracepoints attached as BTF-typed tracepoints (`tp_btf`):
    /// bpf links, which CAP_BPF and CAP_PERFMON allow, where the classic
    /// ones above go through perf_event_open and tracefs.
    pub const BTF_RECLAIM_BEGIN: &str = "btf_reclaim_begin";
    pub const BTF_RECLAIM_END: &str = "btf_reclaim_end";
    pub const BTF_CGROUP_MKDIR: &str = "btf_cgroup_mkdir";
    pub const BTF_CGROUP_RMDIR: &str = "btf_cgroup_rmdir";
    pub const BTF_OOM_MARK_VICTIM: &str = "btf_oom_victim";
    pub const BTF_DIRECT_RECLAIM_BEGIN: &str = "btf_direct_begin";
    pub const BTF_DIRECT_RECLAIM_END: &str = "btf_direct_end";
    pub const BTF_RECLAIM_RETRY_ZONE: &str = "btf_retry_zone";
    pub const BTF_KSWAPD_WAKE: &str = "btf_kswapd_wake";
}

/// Names of the maps.
pub mod maps {
    pub const WATCHED: &str = "WATCHED";
    pub const CGROUPS: &str = "CGROUPS";
    pub const TASKS: &str = "TASKS";
    pub const VERDICTS: &str = "VERDICTS";
    pub const STATS: &str = "STATS";
    pub const CGROUP_EVENTS: &str = "CGROUP_EVENTS";
    pub const TRACE: &str = "TRACE";
    pub const TRACE_ON: &str = "TRACE_ON";
    pub const RECHECK: &str = "RECHECK";
}

/// The key under which the whole host is aggregated (no cgroup has id 0):
/// direct reclaim by the page allocator when the machine itself is short of
/// memory. Listed in `WATCHED` (with the host scope's budget) when the host
/// scope is on; a `Verdict` for it means the host, not a cgroup.
pub const HOST_ID: u64 = 0;

/// Value of the `WATCHED` map (key: cgroup v2 id). Reserved for per-cgroup
/// settings; a zero field means "use the global default".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    pub budget_ns: u64,
    pub window_ns: u64,
}

/// Kernel-side aggregation for one watched cgroup (value of `CGROUPS`).
///
/// The window is a two-bucket sliding window: `cur_ns` collects no-progress
/// stall since `window_start_ns`, `prev_ns` holds the previous window, and the
/// estimate weights `prev_ns` by how much of it still overlaps the sliding
/// window. Updates from several CPUs are not serialized: a lost update costs
/// at most one pass of accounting, and the daemon re-confirms every verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStall {
    pub window_start_ns: u64,
    pub cur_ns: u64,
    pub prev_ns: u64,
    /// When the current run of no-progress passes began (0: none running).
    pub episode_start_ns: u64,
    /// Consecutive no-progress passes (reset by any pass that progressed).
    pub streak: u64,
    pub last_verdict_ns: u64,
    /// Reclaim passes attributed to this cgroup, and how many of them
    /// made no progress; totals since the cgroup was first seen.
    pub passes: u64,
    pub no_progress_passes: u64,
    pub reclaimed_pages: u64,
    pub stall_total_ns: u64,
    /// The task with the most no-progress time in the current window.
    pub worst_pid: u32,
    pub worst_tgid: u32,
    pub worst_ns: u64,
    pub worst_comm: [u8; COMM_LEN],
}

/// Per-task state (value of `TASKS`, key: thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskStall {
    /// Watched cgroup this task's stall is charged to.
    pub cgroup_id: u64,
    /// Start of the reclaim pass in flight (0: none).
    pub pass_start_ns: u64,
    /// Entry into the memory.high handler in flight (0: none; fentry only).
    pub over_high_start_ns: u64,
    /// Start of the direct (global) reclaim pass in flight (0: none).
    pub direct_start_ns: u64,
    /// No-progress time charged to this task in the window that began at
    /// `window_start_ns`.
    pub window_start_ns: u64,
    pub window_ns: u64,
}

/// The one event the daemon reacts to: a watched cgroup spent more than its
/// budget stalled without reclaim progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The watched cgroup the stall is charged to.
    pub cgroup_id: u64,
    /// Kernel time (CLOCK_MONOTONIC ns) the verdict was made.
    pub ktime_ns: u64,
    /// Estimated no-progress stall in the sliding window, ns.
    pub stall_ns: u64,
    pub window_ns: u64,
    pub budget_ns: u64,
    /// When the current run of no-progress passes began (CLOCK_MONOTONIC).
    pub episode_start_ns: u64,
    pub streak: u64,
    /// The task with the most no-progress time in the window.
    pub worst_ns: u64,
    pub worst_pid: u32,
    pub worst_tgid: u32,
    pub worst_comm: [u8; COMM_LEN],
}

/// Longest cgroup path a `CgroupEvent` carries; a longer one arrives cut
/// and the daemon ignores it (its id still identifies it on removal).
pub const CGROUP_PATH_LEN: usize = 256;

pub const CGROUP_CREATED: u32 = 1;
pub const CGROUP_REMOVED: u32 = 2;

/// A cgroup2 directory was created or removed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupEvent {
    pub id: u64,
    /// `CGROUP_CREATED` or `CGROUP_REMOVED`.
    pub kind: u32,
    /// Bytes of `path` before its NUL.
    pub len: u32,
    pub path: [u8; CGROUP_PATH_LEN],
}

/// A reclaim pass ended (sent only while someone listens).
pub const TRACE_RECLAIM: u32 = 1;
/// A memory.high penalty sleep began (fentry kernels, only while someone
/// listens).
pub const TRACE_THROTTLE: u32 = 2;
/// The kernel's OOM killer marked a victim (always sent: rare and vital).
pub const TRACE_OOM_VICTIM: u32 = 3;

/// One record of the `TRACE` ring buffer: what the kernel reported, for the
/// event stream. Whether per-pass records flow is switched at run time
/// through `TRACE_ON`, so a daemon nobody watches sends none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// `TRACE_RECLAIM`, `TRACE_THROTTLE` or `TRACE_OOM_VICTIM`.
    pub kind: u32,
    /// The current task (thread id and process id).
    pub tid: u32,
    pub tgid: u32,
    /// OOM: the victim's pid; else 0.
    pub victim_pid: u32,
    /// The cgroup charged (reclaim, throttle) or the current task's cgroup.
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    /// Reclaim: the pass's duration; throttle: the penalty sleep, ns.
    pub duration_ns: u64,
    /// Reclaim: pages reclaimed (`u64::MAX`: unreadable).
    pub reclaimed_pages: u64,
    pub comm: [u8; COMM_LEN],
}

/// Indexes into the per-CPU `STATS` array.
pub mod stat {
    pub const PASSES: u32 = 0;
    pub const NO_PROGRESS: u32 = 1;
    pub const VERDICTS: u32 = 2;
    /// Verdicts the ring buffer had no room for.
    pub const VERDICTS_LOST: u32 = 3;
    /// Tasks the per-task map had no room for.
    pub const TASKS_FULL: u32 = 4;
    pub const PENALTIES: u32 = 5;
    /// Cgroup events the ring buffer had no room for.
    pub const CGROUP_EVENTS_LOST: u32 = 6;
    /// Trace records the ring buffer had no room for.
    pub const TRACE_LOST: u32 = 7;
    /// Trace records sent (zero while nobody listens, but for OOM kills).
    pub const TRACE_SENT: u32 = 8;
    /// Direct (host-wide) reclaim passes, and those without progress.
    pub const DIRECT_PASSES: u32 = 9;
    pub const DIRECT_NO_PROGRESS: u32 = 10;
    /// Allocator retries without progress at or over HOST_RETRY_LOOPS.
    pub const RETRY_LIMIT_HITS: u32 = 11;
    /// Host verdicts asked for at a kswapd wake-up or the start of a direct
    /// reclaim pass.
    pub const DIRECT_EARLY: u32 = 12;
    pub const COUNT: u32 = 13;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all four are `#[repr(C)]`, `Copy`, made only of integers and
    // byte arrays, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Watch {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CgroupStall {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskStall {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Verdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CgroupEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TraceRecord {}
}

#[cfg(feature = "user")]
impl CgroupEvent {
    /// Reads an event from a ring buffer record; `None` if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length is checked above, `CgroupEvent` is plain old
        // data and `read_unaligned` needs no alignment.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The path, if it arrived whole and is UTF-8.
    pub fn path(&self) -> Option<&str> {
        let len = self.len as usize;
        if len == 0 || len >= CGROUP_PATH_LEN {
            return None;
        }
        core::str::from_utf8(&self.path[..len]).ok()
    }
}

#[cfg(feature = "user")]
impl Verdict {
    /// Reads a verdict from a ring buffer record; `None` if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length is checked above, `Verdict` is plain old data
        // (any bit pattern is valid) and `read_unaligned` needs no alignment.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The worst task's command name, up to its first NUL.
    pub fn comm(&self) -> &[u8] {
        let end = self
            .worst_comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(COMM_LEN);
        &self.worst_comm[..end]
    }
}

#[cfg(feature = "user")]
impl TraceRecord {
    /// Reads a record from a ring buffer record; `None` if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length is checked above, `TraceRecord` is plain old
        // data and `read_unaligned` needs no alignment.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The current task's command name, up to its first NUL.
    pub fn comm(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.comm[..end]
    }
}
