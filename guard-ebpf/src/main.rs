//! guard's kernel half.
//!
//! Times every memcg reclaim pass of tasks under a watched cgroup, charges the
//! passes that freed (almost) nothing to the nearest watched ancestor, and, on
//! kernels that allow fentry, also charges the penalty sleep the kernel hands
//! out in `mem_cgroup_handle_over_high`. When a cgroup's no-progress stall in
//! the sliding window crosses its budget, one `Verdict` goes to user space.
//! Nothing else is sent while nobody listens: the daemon sleeps until a
//! verdict arrives. While `guard trace` or `guard record` listens, user space
//! sets `TRACE_ON` and every reclaim pass and penalty sleep also goes to the
//! `TRACE` ring; the kernel OOM killer's victims go there always.
//!
//! Every tracepoint has two programs: a BTF-typed one (`btf_*`, attached as
//! a bpf link, which needs no CAP_SYS_ADMIN) and a classic one (through
//! perf_event_open), the fallback where a kernel refuses the first.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, fentry, fexit, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, FExitContext, TracePointContext},
};
use guard_common::{
    CGROUP_CREATED, CGROUP_REMOVED, CgroupEvent, CgroupStall, HOST_ID, MAX_CGROUP_DEPTH,
    TRACE_OOM_VICTIM, TRACE_RECLAIM, TRACE_THROTTLE, TaskStall, TraceRecord, Verdict, Watch, stat,
};

// Set by the loader (see guard_common::globals); the values here are the
// defaults of the embedded policy.
#[unsafe(no_mangle)]
static BUDGET_NS: u64 = 250_000_000;
#[unsafe(no_mangle)]
static WINDOW_NS: u64 = 1_000_000_000;
#[unsafe(no_mangle)]
static VERDICT_INTERVAL_NS: u64 = 200_000_000;
#[unsafe(no_mangle)]
static MIN_PROGRESS_PAGES: u64 = 1;
#[unsafe(no_mangle)]
static NR_RECLAIMED_OFFSET: u64 = 8;
#[unsafe(no_mangle)]
static NS_PER_JIFFY: u64 = 4_000_000;
/// Non-zero: a task under no watched cgroup is charged to its own cgroup,
/// so every cgroup is watched without user space listing them.
#[unsafe(no_mangle)]
static WATCH_ALL: u64 = 1;
#[unsafe(no_mangle)]
static CGROUP_ROOT_OFFSET: u64 = 8;
#[unsafe(no_mangle)]
static CGROUP_ID_OFFSET: u64 = 16;
#[unsafe(no_mangle)]
static CGROUP_PATH_OFFSET: u64 = 24;
#[unsafe(no_mangle)]
static OOM_PID_OFFSET: u64 = 8;
#[unsafe(no_mangle)]
static DIRECT_NR_RECLAIMED_OFFSET: u64 = 8;
#[unsafe(no_mangle)]
static RETRY_LOOPS_OFFSET: u64 = 48;
#[unsafe(no_mangle)]
static HOST_RETRY_LOOPS: u64 = 4;
/// Minimum time between two host verdicts.
#[unsafe(no_mangle)]
static HOST_INTERVAL_NS: u64 = 20_000_000;
/// Non-zero: every direct reclaim pass (rate-limited) asks user space.
#[unsafe(no_mangle)]
static HOST_EARLY: u64 = 1;
// For the BTF-typed tracepoints (see guard_common::globals).
#[unsafe(no_mangle)]
static CGRP_ROOT_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static ROOT_HIERARCHY_ID_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static CGRP_KN_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static KN_ID_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static VICTIM_TASK_PID_OFFSET: u64 = u64::MAX;

#[inline(always)]
fn global(v: &'static u64) -> u64 {
    // SAFETY: the reference is valid for 'static; the volatile read keeps the
    // compiler from folding the default, which the loader rewrites.
    unsafe { core::ptr::read_volatile(v) }
}

#[map]
static WATCHED: HashMap<u64, Watch> = HashMap::with_max_entries(4096, 0);
#[map]
static CGROUPS: LruHashMap<u64, CgroupStall> = LruHashMap::with_max_entries(4096, 0);
#[map]
static TASKS: LruHashMap<u32, TaskStall> = LruHashMap::with_max_entries(16384, 0);
#[map]
static VERDICTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);
#[map]
static CGROUP_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);
/// Per-pass records for listeners. 256 KiB holds 4096 records: a burst of
/// a few milliseconds of reclaim on every CPU.
#[map]
static TRACE: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
/// Cgroups whose last verdict user space held (a stall at a mild overage):
/// their next verdict may come after `RECHECK_NS` rather than the whole
/// verdict interval, so a stall that grows past the mild range is acted on
/// at once. One-shot: the verdict removes the entry; user space re-arms it.
#[map]
static RECHECK: LruHashMap<u64, u8> = LruHashMap::with_max_entries(1024, 0);
const RECHECK_NS: u64 = 20_000_000;

/// Slot 0 non-zero: someone listens, send per-pass records.
#[map]
static TRACE_ON: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn listening() -> bool {
    matches!(TRACE_ON.get(0), Some(on) if *on != 0)
}

/// Sends one trace record for the current task.
#[inline(always)]
fn trace(kind: u32, cgroup_id: u64, now: u64, duration_ns: u64, value: u64, victim_pid: u32) {
    let Some(mut slot) = TRACE.reserve::<TraceRecord>(0) else {
        count(stat::TRACE_LOST);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    slot.write(TraceRecord {
        kind,
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        victim_pid,
        cgroup_id,
        ktime_ns: now,
        duration_ns,
        reclaimed_pages: value,
        comm: bpf_get_current_comm().unwrap_or([0; guard_common::COMM_LEN]),
    });
    slot.submit(0);
    count(stat::TRACE_SENT);
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
}

/// The deepest watched cgroup that contains the current task, if any.
#[inline(always)]
fn nearest_watched() -> Option<u64> {
    // Find the task's depth first, then look upwards from it and stop at the
    // first hit: returning from inside the loop keeps the map-lookup results
    // out of any arithmetic the verifier would refuse.
    let mut depth = 1;
    while depth < MAX_CGROUP_DEPTH {
        // SAFETY: plain helper call, no pointers involved.
        if unsafe { bpf_get_current_ancestor_cgroup_id(depth) } == 0 {
            break;
        }
        depth += 1;
    }
    let mut level = depth - 1;
    while level >= 1 {
        // SAFETY: plain helper call, no pointers involved.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if WATCHED.get_ptr(id).is_some() {
            return Some(id);
        }
        level -= 1;
    }
    if global(&WATCH_ALL) != 0 {
        // SAFETY: plain helper call.
        return Some(unsafe { bpf_get_current_cgroup_id() });
    }
    None
}

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Task state for the current thread, created if `create` and missing.
#[inline(always)]
fn task_state(cgroup_id: u64, create: bool) -> Option<*mut TaskStall> {
    let tid = tid();
    if let Some(t) = TASKS.get_ptr_mut(tid) {
        return Some(t);
    }
    if !create {
        return None;
    }
    let fresh = TaskStall {
        cgroup_id,
        ..TaskStall::default()
    };
    if TASKS.insert(tid, fresh, 0).is_err() {
        count(stat::TASKS_FULL);
        return None;
    }
    TASKS.get_ptr_mut(tid)
}

#[inline(always)]
fn cgroup_state(cgroup_id: u64) -> Option<*mut CgroupStall> {
    if let Some(c) = CGROUPS.get_ptr_mut(cgroup_id) {
        return Some(c);
    }
    CGROUPS.insert(cgroup_id, CgroupStall::default(), 0).ok()?;
    CGROUPS.get_ptr_mut(cgroup_id)
}

/// Budget and window for a watched cgroup: its own, else the globals.
#[inline(always)]
fn limits(cgroup_id: u64) -> (u64, u64) {
    let (mut budget, mut window) = (global(&BUDGET_NS), global(&WINDOW_NS));
    if let Some(w) = WATCHED.get_ptr(cgroup_id) {
        // SAFETY: map values stay valid for the whole program run.
        let w = unsafe { &*w };
        if w.budget_ns != 0 {
            budget = w.budget_ns;
        }
        if w.window_ns != 0 {
            window = w.window_ns;
        }
    }
    (budget, window.max(1))
}

/// Adds `ns` of no-progress stall by the current task to its watched cgroup
/// and sends a verdict when the sliding-window estimate crosses the budget.
#[inline(always)]
fn charge(task: &mut TaskStall, now: u64, ns: u64) {
    charge_to(task.cgroup_id, task, now, ns, false);
}

/// `charge` to a given key: a cgroup, or `HOST_ID`. With `force`, a verdict
/// goes out whatever the estimate (the verdict interval still applies).
#[inline(always)]
fn charge_to(cgroup_id: u64, task: &mut TaskStall, now: u64, ns: u64, force: bool) {
    let Some(cg) = cgroup_state(cgroup_id) else {
        return;
    };
    // SAFETY: map values stay valid for the whole program run.
    let cg = unsafe { &mut *cg };
    let (budget, window) = limits(cgroup_id);

    let elapsed = now.saturating_sub(cg.window_start_ns);
    if cg.window_start_ns == 0 || elapsed >= 2 * window {
        cg.window_start_ns = now;
        cg.prev_ns = 0;
        cg.cur_ns = 0;
        cg.worst_ns = 0;
    } else if elapsed >= window {
        cg.window_start_ns += window;
        cg.prev_ns = cg.cur_ns;
        cg.cur_ns = 0;
        cg.worst_ns = 0;
    }
    cg.cur_ns += ns;
    cg.stall_total_ns += ns;

    if task.window_start_ns != cg.window_start_ns {
        task.window_start_ns = cg.window_start_ns;
        task.window_ns = 0;
    }
    task.window_ns += ns;
    if task.window_ns >= cg.worst_ns {
        let pid_tgid = bpf_get_current_pid_tgid();
        cg.worst_pid = pid_tgid as u32;
        cg.worst_tgid = (pid_tgid >> 32) as u32;
        cg.worst_ns = task.window_ns;
        if let Ok(comm) = bpf_get_current_comm() {
            cg.worst_comm = comm;
        }
    }

    let into = now.saturating_sub(cg.window_start_ns).min(window);
    let estimate = cg.cur_ns + cg.prev_ns * (window - into) / window;
    if estimate < budget && !force {
        return;
    }
    // The host's verdicts mostly ask user space to look at MemAvailable,
    // which often says "not yet": a long interval would hide the moment it
    // says "now".
    let interval = if cgroup_id == HOST_ID {
        global(&HOST_INTERVAL_NS)
    } else {
        global(&VERDICT_INTERVAL_NS)
    };
    let since = now.saturating_sub(cg.last_verdict_ns);
    let recheck = RECHECK.get_ptr(cgroup_id).is_some();
    if cg.last_verdict_ns != 0 && since < interval && (!recheck || since < RECHECK_NS) {
        return;
    }
    let Some(mut slot) = VERDICTS.reserve::<Verdict>(0) else {
        count(stat::VERDICTS_LOST);
        return;
    };
    slot.write(Verdict {
        cgroup_id,
        ktime_ns: now,
        stall_ns: estimate,
        window_ns: window,
        budget_ns: budget,
        episode_start_ns: cg.episode_start_ns,
        streak: cg.streak,
        worst_ns: cg.worst_ns,
        worst_pid: cg.worst_pid,
        worst_tgid: cg.worst_tgid,
        worst_comm: cg.worst_comm,
    });
    slot.submit(0);
    cg.last_verdict_ns = now;
    if recheck {
        let _ = RECHECK.remove(&cgroup_id);
    }
    count(stat::VERDICTS);
}

// Each tracepoint has two programs: a classic one, which reads the
// tracepoint's record at offsets from tracefs, and a BTF-typed one, which
// gets the tracepoint's arguments. User space attaches one of the two; both
// hand what they read to the same body.

#[tracepoint]
pub fn memcg_reclaim_begin(_ctx: TracePointContext) -> u32 {
    reclaim_begin()
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_begin")]
pub fn btf_reclaim_begin(_ctx: BtfTracePointContext) -> i32 {
    reclaim_begin() as i32
}

/// A memcg reclaim pass begins: the time, for the end to measure.
#[inline(always)]
fn reclaim_begin() -> u32 {
    let Some(cgroup_id) = nearest_watched() else {
        return 0;
    };
    let Some(task) = task_state(cgroup_id, true) else {
        return 0;
    };
    // SAFETY: map values stay valid for the whole program run.
    let task = unsafe { &mut *task };
    task.cgroup_id = cgroup_id;
    // SAFETY: plain helper call.
    task.pass_start_ns = unsafe { bpf_ktime_get_ns() };
    0
}

#[tracepoint]
pub fn memcg_reclaim_end(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from this kernel's format file for this
    // tracepoint; read_at goes through bpf_probe_read and cannot fault.
    let reclaimed: u64 =
        unsafe { ctx.read_at(global(&NR_RECLAIMED_OFFSET) as usize) }.unwrap_or(u64::MAX);
    reclaim_end(reclaimed)
}

/// `(unsigned long nr_reclaimed, ...)`: the first argument on every kernel.
#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_end")]
pub fn btf_reclaim_end(ctx: BtfTracePointContext) -> i32 {
    reclaim_end(ctx.arg::<u64>(0)) as i32
}

/// A memcg reclaim pass ended having freed `reclaimed` pages (u64::MAX:
/// unknown): a pass without progress is stall, charged.
#[inline(always)]
fn reclaim_end(reclaimed: u64) -> u32 {
    let Some(task) = task_state(0, false) else {
        return 0;
    };
    // SAFETY: map values stay valid for the whole program run.
    let task = unsafe { &mut *task };
    if task.pass_start_ns == 0 {
        return 0;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let start = task.pass_start_ns;
    task.pass_start_ns = 0;
    count(stat::PASSES);
    if listening() {
        trace(
            TRACE_RECLAIM,
            task.cgroup_id,
            now,
            now.saturating_sub(start),
            reclaimed,
            0,
        );
    }

    let Some(cg) = cgroup_state(task.cgroup_id) else {
        return 0;
    };
    // SAFETY: map values stay valid for the whole program run.
    let cg = unsafe { &mut *cg };
    cg.passes += 1;
    if reclaimed != u64::MAX {
        cg.reclaimed_pages += reclaimed;
    }
    if reclaimed >= global(&MIN_PROGRESS_PAGES) {
        cg.streak = 0;
        cg.episode_start_ns = 0;
        return 0;
    }
    cg.no_progress_passes += 1;
    cg.streak += 1;
    if cg.episode_start_ns == 0 {
        cg.episode_start_ns = start;
    }
    count(stat::NO_PROGRESS);
    charge(task, now, now.saturating_sub(start));
    0
}

/// fentry on `mem_cgroup_handle_over_high` (or `__mem_cgroup_handle_over_high`
/// from 6.18): brackets the memory.high throttle so the penalty sleep inside
/// it can be told apart from other killable sleeps.
#[fentry]
pub fn over_high_enter(_ctx: FEntryContext) -> u32 {
    let Some(cgroup_id) = nearest_watched() else {
        return 0;
    };
    let Some(task) = task_state(cgroup_id, true) else {
        return 0;
    };
    // SAFETY: map values stay valid for the whole program run.
    let task = unsafe { &mut *task };
    task.cgroup_id = cgroup_id;
    // SAFETY: plain helper call.
    task.over_high_start_ns = unsafe { bpf_ktime_get_ns() };
    0
}

#[fexit]
pub fn over_high_exit(_ctx: FExitContext) -> u32 {
    if let Some(task) = task_state(0, false) {
        // SAFETY: map values stay valid for the whole program run.
        unsafe { (*task).over_high_start_ns = 0 };
    }
    0
}

/// fentry on `schedule_timeout_killable(long timeout)`. Inside the throttle
/// this is the penalty sleep, which the kernel only reaches after its last
/// reclaim retry freed nothing. Charging it when it begins, rather than when
/// it ends up to 2 s later, is what lets a verdict come within the budget.
#[fentry]
pub fn penalty_sleep(ctx: FEntryContext) -> u32 {
    let Some(task) = task_state(0, false) else {
        return 0;
    };
    // SAFETY: map values stay valid for the whole program run.
    let task = unsafe { &mut *task };
    if task.over_high_start_ns == 0 {
        return 0;
    }
    let jiffies: i64 = ctx.arg(0);
    if jiffies <= 0 {
        return 0;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    count(stat::PENALTIES);
    let penalty = jiffies as u64 * global(&NS_PER_JIFFY);
    if listening() {
        trace(TRACE_THROTTLE, task.cgroup_id, now, penalty, 0, 0);
    }
    charge(task, now, penalty);
    0
}

/// mm_vmscan_direct_reclaim_begin: the page allocator itself reclaims, for
/// the whole machine (not a cgroup's limit). Only attached with the host
/// scope on.
#[tracepoint]
pub fn direct_reclaim_begin(_ctx: TracePointContext) -> u32 {
    direct_begin()
}

#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_begin")]
pub fn btf_direct_begin(_ctx: BtfTracePointContext) -> i32 {
    direct_begin() as i32
}

#[inline(always)]
fn direct_begin() -> u32 {
    let Some(task) = task_state(HOST_ID, true) else {
        return 0;
    };
    // SAFETY: map values stay valid for the whole program run.
    let task = unsafe { &mut *task };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    task.direct_start_ns = now;
    if global(&HOST_EARLY) != 0 {
        // Free memory is under the min watermark: with nothing left to
        // reclaim, the OOM killer follows within milliseconds, so user
        // space is asked now (at most once per verdict interval) and
        // confirms against MemAvailable.
        count(stat::DIRECT_EARLY);
        charge_to(HOST_ID, task, now, 0, true);
    }
    0
}

/// mm_vmscan_kswapd_wake: free memory fell under the low watermark and
/// kswapd starts reclaiming. With `HOST_EARLY`, user space is asked (at
/// most once per verdict interval): this comes before direct reclaim, while
/// some page cache may still be left to absorb the growth for a moment.
#[tracepoint]
pub fn kswapd_wake(_ctx: TracePointContext) -> u32 {
    kswapd()
}

#[btf_tracepoint(function = "mm_vmscan_kswapd_wake")]
pub fn btf_kswapd_wake(_ctx: BtfTracePointContext) -> i32 {
    kswapd() as i32
}

#[inline(always)]
fn kswapd() -> u32 {
    if global(&HOST_EARLY) == 0 {
        return 0;
    }
    let Some(task) = task_state(HOST_ID, true) else {
        return 0;
    };
    // SAFETY: map values stay valid for the whole program run.
    let task = unsafe { &mut *task };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    count(stat::DIRECT_EARLY);
    charge_to(HOST_ID, task, now, 0, true);
    0
}

/// mm_vmscan_direct_reclaim_end: a pass that freed (almost) nothing is
/// host-wide stall, charged to `HOST_ID` like a cgroup's.
#[tracepoint]
pub fn direct_reclaim_end(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from this kernel's format file; read_at goes
    // through bpf_probe_read and cannot fault.
    let reclaimed: u64 =
        unsafe { ctx.read_at(global(&DIRECT_NR_RECLAIMED_OFFSET) as usize) }.unwrap_or(u64::MAX);
    direct_end(reclaimed)
}

/// `(unsigned long nr_reclaimed)`.
#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_end")]
pub fn btf_direct_end(ctx: BtfTracePointContext) -> i32 {
    direct_end(ctx.arg::<u64>(0)) as i32
}

#[inline(always)]
fn direct_end(reclaimed: u64) -> u32 {
    let Some(task) = task_state(HOST_ID, false) else {
        return 0;
    };
    // SAFETY: map values stay valid for the whole program run.
    let task = unsafe { &mut *task };
    let start = task.direct_start_ns;
    if start == 0 {
        return 0;
    }
    task.direct_start_ns = 0;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    count(stat::DIRECT_PASSES);
    if listening() {
        trace(
            TRACE_RECLAIM,
            HOST_ID,
            now,
            now.saturating_sub(start),
            reclaimed,
            0,
        );
    }
    if reclaimed >= global(&MIN_PROGRESS_PAGES) {
        return 0;
    }
    count(stat::DIRECT_NO_PROGRESS);
    charge_to(HOST_ID, task, now, now.saturating_sub(start), false);
    0
}

/// oom:reclaim_retry_zone: the allocator decides whether to retry reclaim
/// or give up (after 16 loops without progress, the OOM killer). At
/// HOST_RETRY_LOOPS the host is judged stalled at once (the verdict interval
/// still applies).
#[tracepoint]
pub fn reclaim_retry_zone(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from this kernel's format file; read_at goes
    // through bpf_probe_read and cannot fault.
    let Ok(loops) = (unsafe { ctx.read_at::<i32>(global(&RETRY_LOOPS_OFFSET) as usize) }) else {
        return 0;
    };
    retry_zone(loops)
}

/// `(struct zoneref *, int order, unsigned long reclaimable, unsigned long
/// available, unsigned long min_wmark, int no_progress_loops, bool)`: user
/// space checked the arity in the BTF. The index is a constant: 6.1's
/// verifier refuses a context read at an offset computed from a global.
#[btf_tracepoint(function = "reclaim_retry_zone")]
pub fn btf_retry_zone(ctx: BtfTracePointContext) -> i32 {
    retry_zone(ctx.arg::<u64>(5) as i32) as i32
}

#[inline(always)]
fn retry_zone(loops: i32) -> u32 {
    let limit = global(&HOST_RETRY_LOOPS);
    if limit == 0 {
        return 0;
    }
    if loops < 0 || (loops as u64) < limit {
        return 0;
    }
    count(stat::RETRY_LIMIT_HITS);
    let Some(task) = task_state(HOST_ID, true) else {
        return 0;
    };
    // SAFETY: map values stay valid for the whole program run.
    let task = unsafe { &mut *task };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    charge_to(HOST_ID, task, now, 0, true);
    0
}

/// oom:mark_victim: the kernel's own OOM killer (global or memcg) chose a
/// victim. Always sent: it is rare, and it is what a post-mortem needs most.
/// The current task is the one whose allocation invoked the OOM killer.
#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from this kernel's format file; read_at goes
    // through bpf_probe_read and cannot fault.
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(global(&OOM_PID_OFFSET) as usize) }) else {
        return 0;
    };
    oom_victim(pid)
}

/// `(int pid)` before 6.9, `(struct task_struct *task, uid_t uid)` since.
#[btf_tracepoint(function = "mark_victim")]
pub fn btf_oom_victim(ctx: BtfTracePointContext) -> i32 {
    let first = ctx.arg::<u64>(0);
    let pid_at = global(&VICTIM_TASK_PID_OFFSET);
    if pid_at == u64::MAX {
        return oom_victim(first as i32) as i32;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and cannot fault;
    // the offset of `pid` in task_struct is from this kernel's BTF.
    match unsafe { bpf_probe_read_kernel((first + pid_at) as *const i32) } {
        Ok(pid) => oom_victim(pid) as i32,
        Err(_) => 0,
    }
}

#[inline(always)]
fn oom_victim(pid: i32) -> u32 {
    // SAFETY: plain helper calls.
    let (cgroup_id, now) = unsafe { (bpf_get_current_cgroup_id(), bpf_ktime_get_ns()) };
    trace(TRACE_OOM_VICTIM, cgroup_id, now, 0, 0, pid as u32);
    0
}

/// cgroup:cgroup_mkdir / cgroup_rmdir on the cgroup2 hierarchy (hierarchy
/// id 0): tells the daemon which cgroups come and go, so it can list new
/// ones under their scope and forget removed ones without rescanning.
#[inline(always)]
fn cgroup_event(ctx: &TracePointContext, kind: u32) -> u32 {
    // SAFETY: offsets come from this kernel's format file; read_at goes
    // through bpf_probe_read and cannot fault.
    let fields = unsafe {
        (
            ctx.read_at::<i32>(global(&CGROUP_ROOT_OFFSET) as usize),
            ctx.read_at::<u64>(global(&CGROUP_ID_OFFSET) as usize),
            ctx.read_at::<u32>(global(&CGROUP_PATH_OFFSET) as usize),
        )
    };
    let (Ok(root), Ok(id), Ok(loc)) = fields else {
        return 0;
    };
    // SAFETY: the __data_loc word gives the path's offset inside this
    // tracepoint's own record in its low 16 bits; it is only read through
    // bpf_probe_read_kernel_str.
    let path = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    send_cgroup_event(kind, root, id, path)
}

/// `(struct cgroup *cgrp, const char *path)`: the hierarchy and the id are
/// read through the cgroup at offsets from this kernel's BTF.
#[inline(always)]
fn btf_cgroup_event(ctx: &BtfTracePointContext, kind: u32) -> u32 {
    let cgrp = ctx.arg::<u64>(0);
    let path = ctx.arg::<u64>(1) as *const u8;
    // SAFETY: every read goes through bpf_probe_read_kernel, which checks
    // the address and cannot fault; the offsets are from this kernel's BTF.
    let fields = unsafe {
        let root = bpf_probe_read_kernel((cgrp + global(&CGRP_ROOT_OFFSET)) as *const u64);
        let kn = bpf_probe_read_kernel((cgrp + global(&CGRP_KN_OFFSET)) as *const u64);
        match (root, kn) {
            (Ok(root), Ok(kn)) => (
                bpf_probe_read_kernel((root + global(&ROOT_HIERARCHY_ID_OFFSET)) as *const i32),
                bpf_probe_read_kernel((kn + global(&KN_ID_OFFSET)) as *const u64),
            ),
            _ => return 0,
        }
    };
    let (Ok(root), Ok(id)) = fields else {
        return 0;
    };
    send_cgroup_event(kind, root, id, path)
}

/// One cgroup creation or removal to user space, for the cgroup2
/// hierarchy (id 0) only; `path` is a kernel string.
#[inline(always)]
fn send_cgroup_event(kind: u32, root: i32, id: u64, path: *const u8) -> u32 {
    if root != 0 {
        return 0;
    }
    let Some(mut slot) = CGROUP_EVENTS.reserve::<CgroupEvent>(0) else {
        count(stat::CGROUP_EVENTS_LOST);
        return 0;
    };
    let event = slot.as_mut_ptr();
    // SAFETY: `event` points into the reserved, writable ring buffer slot;
    // the string is only read through bpf_probe_read_kernel_str.
    unsafe {
        (*event).id = id;
        (*event).kind = kind;
        let src = path;
        (*event).len =
            match aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(src, &mut (*event).path) {
                Ok(bytes) => bytes.len() as u32,
                Err(_) => 0,
            };
    }
    slot.submit(0);
    0
}

#[tracepoint]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    cgroup_event(&ctx, CGROUP_CREATED)
}

#[tracepoint]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    cgroup_event(&ctx, CGROUP_REMOVED)
}

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn btf_cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    btf_cgroup_event(&ctx, CGROUP_CREATED) as i32
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn btf_cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    btf_cgroup_event(&ctx, CGROUP_REMOVED) as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
