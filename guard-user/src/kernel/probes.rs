//! Loading and attaching the kernel half, and the maps it shares with us.

use std::{fs, io, path::Path, time::Duration};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, ProgramError, TracePoint},
};
use aya_obj::btf::BtfKind;
use guard_common::{CgroupStall, HOST_ID, Watch, globals, maps, programs, stat};

/// The eBPF object, built by build.rs (aya-build) and embedded, so the
/// `guard` binary is self-contained.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const RECLAIM_BEGIN: &str = "mm_vmscan_memcg_reclaim_begin";
const RECLAIM_END: &str = "mm_vmscan_memcg_reclaim_end";
/// The memory.high throttle handler: renamed with a `__` prefix in 6.18 when
/// an inline wrapper took its old name.
const OVER_HIGH: [&str; 2] = [
    "__mem_cgroup_handle_over_high",
    "mem_cgroup_handle_over_high",
];
const PENALTY_SLEEP: &str = "schedule_timeout_killable";
const DIRECT_BEGIN: &str = "mm_vmscan_direct_reclaim_begin";
const DIRECT_END: &str = "mm_vmscan_direct_reclaim_end";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "no tracefs event format under {TRACEFS:?}: {source}. Fix: mount tracefs \
         (`mount -t tracefs tracefs /sys/kernel/tracing`); the kernel needs CONFIG_FTRACE and \
         the vmscan and cgroup tracepoints"
    )]
    NoTracefs { source: io::Error },
    #[error("the format of {event} has no `{field}` field:\n{format}")]
    NoField {
        event: String,
        field: String,
        format: String,
    },
    #[error(
        "loading guard's eBPF programs failed: {0}. guard needs root (or CAP_BPF and \
         CAP_PERFMON) and a kernel >= 6.1 with BTF"
    )]
    Load(#[from] aya::EbpfError),
    #[error("attaching {what} failed: {source}")]
    Attach { what: String, source: ProgramError },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("the eBPF object lacks {0}; the build is broken")]
    Missing(&'static str),
}

/// Settings baked into the programs at load time.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub budget: Duration,
    pub window: Duration,
    pub verdict_interval: Duration,
    pub min_progress_pages: u64,
    /// Charge tasks under no watched cgroup to their own cgroup.
    pub watch_all: bool,
    /// How many cgroups the kernel's watch list holds.
    pub watch_capacity: u32,
    /// The host scope's limits; None: its programs are not attached.
    pub host: Option<HostLimits>,
}

/// What the kernel half needs of the host scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    pub budget: Duration,
    pub window: Duration,
    /// Allocator retries without progress that make a verdict at once (0: never).
    pub retry_loops: u64,
    /// Ask user space at every kswapd wake-up and direct reclaim pass.
    pub early: bool,
    /// Minimum time between two host verdicts.
    pub interval: Duration,
}

/// What was attached, for the start-up log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Throttle {
    /// fentry on the throttle handler and the penalty sleep.
    Hooked { handler: &'static str },
    /// Tracepoints only: penalty sleeps are not seen.
    Refused { reason: String },
}

pub struct Probes {
    ebpf: Ebpf,
    pub throttle: Throttle,
}

/// Offset of `nr_reclaimed` in a tracefs `format` file.
pub fn field_offset(format: &str, field: &str) -> Option<u64> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()?;
        if name != field {
            return None;
        }
        rest.split(';')
            .find_map(|kv| kv.trim().strip_prefix("offset:"))?
            .parse()
            .ok()
    })
}

/// Mounts tracefs at its usual place when no tracefs is mounted: the
/// tracepoints cannot be attached without it. Returns whether it mounted.
pub fn ensure_tracefs() -> Result<bool, ProbeError> {
    if TRACEFS
        .iter()
        .any(|root| Path::new(root).join("events").is_dir())
    {
        return Ok(false);
    }
    rustix::mount::mount(
        "tracefs",
        TRACEFS[0],
        "tracefs",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| ProbeError::NoTracefs { source: e.into() })?;
    Ok(true)
}

/// The format file of a tracepoint, from whichever tracefs is mounted.
fn format_of(category: &str, event: &str) -> Result<String, ProbeError> {
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    for root in TRACEFS {
        let path = Path::new(root)
            .join("events")
            .join(category)
            .join(event)
            .join("format");
        match fs::read_to_string(&path) {
            Ok(text) => return Ok(text),
            Err(e) => last = e,
        }
    }
    Err(ProbeError::NoTracefs { source: last })
}

fn offset_in(category: &str, event: &str, field: &str) -> Result<u64, ProbeError> {
    let text = format_of(category, event)?;
    field_offset(&text, field).ok_or(ProbeError::NoField {
        event: format!("{category}:{event}"),
        field: field.to_owned(),
        format: text,
    })
}

/// 1e9 / CONFIG_HZ: the coarse clocks tick once a jiffy, so their
/// resolution is the jiffy length.
pub fn ns_per_jiffy() -> u64 {
    let res = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
    let ns = res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64;
    if ns == 0 { 4_000_000 } else { ns }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The eBPF object with its globals set: the policy's limits and the
/// tracepoint field offsets of the running kernel.
fn load_object(settings: &Settings) -> Result<Ebpf, ProbeError> {
    let offset = offset_in("vmscan", RECLAIM_END, "nr_reclaimed")?;
    let cg_root = offset_in("cgroup", "cgroup_mkdir", "root")?;
    let cg_id = offset_in("cgroup", "cgroup_mkdir", "id")?;
    let cg_path = offset_in("cgroup", "cgroup_mkdir", "path")?;
    let oom_pid = offset_in("oom", "mark_victim", "pid")?;
    let direct_reclaimed = offset_in("vmscan", DIRECT_END, "nr_reclaimed")?;
    let retry_loops_at = offset_in("oom", "reclaim_retry_zone", "no_progress_loops")?;
    let host_retry = settings.host.map_or(0, |h| h.retry_loops);
    let host_early = u64::from(settings.host.is_some_and(|h| h.early));
    let host_interval = settings.host.map_or(0, |h| nanos(h.interval));
    let budget = nanos(settings.budget);
    let window = nanos(settings.window);
    let interval = nanos(settings.verdict_interval);
    let jiffy = ns_per_jiffy();
    let watch_all = u64::from(settings.watch_all);
    EbpfLoader::new()
        .map_max_entries(maps::WATCHED, settings.watch_capacity)
        .override_global(globals::BUDGET_NS, &budget, true)
        .override_global(globals::WINDOW_NS, &window, true)
        .override_global(globals::VERDICT_INTERVAL_NS, &interval, true)
        .override_global(
            globals::MIN_PROGRESS_PAGES,
            &settings.min_progress_pages,
            true,
        )
        .override_global(globals::NR_RECLAIMED_OFFSET, &offset, true)
        .override_global(globals::NS_PER_JIFFY, &jiffy, true)
        .override_global(globals::WATCH_ALL, &watch_all, true)
        .override_global(globals::CGROUP_ROOT_OFFSET, &cg_root, true)
        .override_global(globals::CGROUP_ID_OFFSET, &cg_id, true)
        .override_global(globals::CGROUP_PATH_OFFSET, &cg_path, true)
        .override_global(globals::OOM_PID_OFFSET, &oom_pid, true)
        .override_global(globals::DIRECT_NR_RECLAIMED_OFFSET, &direct_reclaimed, true)
        .override_global(globals::RETRY_LOOPS_OFFSET, &retry_loops_at, true)
        .override_global(globals::HOST_RETRY_LOOPS, &host_retry, true)
        .override_global(globals::HOST_EARLY, &host_early, true)
        .override_global(globals::HOST_INTERVAL_NS, &host_interval, true)
        .load(OBJECT)
        .map_err(ProbeError::from)
}

/// Attaches the tracepoints, the host scope's only when it is on; every
/// one must attach.
fn attach_tracepoints(ebpf: &mut Ebpf, host: bool) -> Result<(), ProbeError> {
    let host_programs = [
        (programs::DIRECT_RECLAIM_BEGIN, "vmscan", DIRECT_BEGIN),
        (programs::DIRECT_RECLAIM_END, "vmscan", DIRECT_END),
        (programs::RECLAIM_RETRY_ZONE, "oom", "reclaim_retry_zone"),
        (programs::KSWAPD_WAKE, "vmscan", "mm_vmscan_kswapd_wake"),
    ];
    let host_programs = if host { &host_programs[..] } else { &[] };
    for &(prog, category, event) in [
        (programs::RECLAIM_BEGIN, "vmscan", RECLAIM_BEGIN),
        (programs::RECLAIM_END, "vmscan", RECLAIM_END),
        (programs::CGROUP_MKDIR, "cgroup", "cgroup_mkdir"),
        (programs::CGROUP_RMDIR, "cgroup", "cgroup_rmdir"),
        (programs::OOM_MARK_VICTIM, "oom", "mark_victim"),
    ]
    .iter()
    .chain(host_programs)
    {
        let tp: &mut TracePoint = ebpf
            .program_mut(prog)
            .ok_or(ProbeError::Missing(prog))?
            .try_into()
            .map_err(|source| ProbeError::Attach {
                what: prog.to_owned(),
                source,
            })?;
        let attach = |tp: &mut TracePoint| -> Result<(), ProgramError> {
            tp.load()?;
            tp.attach(category, event)?;
            Ok(())
        };
        attach(tp).map_err(|source| ProbeError::Attach {
            what: format!("tracepoint {category}:{event}"),
            source,
        })?;
    }
    Ok(())
}

impl Probes {
    /// Loads every program; the tracepoints must attach, the fentry
    /// programs may be refused (then `throttle` says why).
    pub fn load(settings: Settings) -> Result<Self, ProbeError> {
        if ensure_tracefs()? {
            tracing::info!(
                path = TRACEFS[0],
                "mounted tracefs, which the tracepoints need"
            );
        }
        let mut ebpf = load_object(&settings)?;
        attach_tracepoints(&mut ebpf, settings.host.is_some())?;
        let throttle = match attach_throttle(&mut ebpf) {
            Ok(handler) => Throttle::Hooked { handler },
            Err(reason) => Throttle::Refused { reason },
        };
        let mut probes = Self { ebpf, throttle };
        if let Some(h) = settings.host {
            // The first entry of a list of at least one: never full.
            probes.watch(
                HOST_ID,
                Watch {
                    budget_ns: nanos(h.budget),
                    window_ns: nanos(h.window),
                },
            )?;
        }
        Ok(probes)
    }

    fn watched(&mut self) -> Result<BpfHashMap<&mut MapData, u64, Watch>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(maps::WATCHED)
            .ok_or(ProbeError::Missing(maps::WATCHED))?;
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::WATCHED,
            source,
        })
    }

    /// Lists a cgroup: stalls of tasks below it are charged to it, against
    /// its own budget and window (zero: the defaults set at load). False
    /// when the list is full: the cgroup's tasks are then charged to their
    /// own cgroups, with the defaults.
    pub fn watch(&mut self, cgroup_id: u64, limits: Watch) -> Result<bool, ProbeError> {
        match self.watched()?.insert(cgroup_id, limits, 0) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Ok(false)
            }
            Err(source) => Err(ProbeError::Map {
                name: maps::WATCHED,
                source,
            }),
        }
    }

    /// Removes a cgroup from the list (it is gone, or out of every scope).
    pub fn unwatch(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        match self.watched()?.remove(&cgroup_id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(ProbeError::Map {
                name: maps::WATCHED,
                source,
            }),
        }
    }

    fn cgroups(&mut self) -> Result<BpfHashMap<&mut MapData, u64, CgroupStall>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(maps::CGROUPS)
            .ok_or(ProbeError::Missing(maps::CGROUPS))?;
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::CGROUPS,
            source,
        })
    }

    /// The kernel's aggregate for one cgroup, if it has seen reclaim there.
    pub fn cgroup_stall(&mut self, cgroup_id: u64) -> Result<Option<CgroupStall>, ProbeError> {
        match self.cgroups()?.get(&cgroup_id, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(ProbeError::Map {
                name: maps::CGROUPS,
                source,
            }),
        }
    }

    /// Starts a fresh window for a cgroup, after a kill: the stall that led
    /// to it must not count again towards the next verdict. The running
    /// totals (passes, stall) stay: the metrics and the trace view count on
    /// them only growing. A pass the kernel accounts between our read and
    /// write is lost, which costs at most one pass of accounting.
    pub fn reset_cgroup(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        let mut map = self.cgroups()?;
        let old = match map.get(&cgroup_id, 0) {
            Ok(v) => v,
            Err(MapError::KeyNotFound) => return Ok(()),
            Err(source) => {
                return Err(ProbeError::Map {
                    name: maps::CGROUPS,
                    source,
                });
            }
        };
        let fresh = CgroupStall {
            passes: old.passes,
            no_progress_passes: old.no_progress_passes,
            reclaimed_pages: old.reclaimed_pages,
            stall_total_ns: old.stall_total_ns,
            ..CgroupStall::default()
        };
        map.insert(cgroup_id, fresh, 0)
            .map_err(|source| ProbeError::Map {
                name: maps::CGROUPS,
                source,
            })
    }

    /// Every cgroup the kernel keeps an aggregate for.
    pub fn cgroup_stalls(&mut self) -> Result<Vec<(u64, CgroupStall)>, ProbeError> {
        let map = self.cgroups()?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// The ring buffer of trace records; the caller owns it from here on.
    pub fn take_trace(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::TRACE)
            .ok_or(ProbeError::Missing(maps::TRACE))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::TRACE,
            source,
        })
    }

    /// The switch for per-pass trace records; the caller owns it.
    pub fn take_trace_switch(&mut self) -> Result<TraceSwitch, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::TRACE_ON)
            .ok_or(ProbeError::Missing(maps::TRACE_ON))?;
        let map = Array::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::TRACE_ON,
            source,
        })?;
        Ok(TraceSwitch { map, on: false })
    }

    /// (name, kernel program id) of every loaded program, for BPF run
    /// statistics.
    pub fn program_ids(&self) -> Vec<(String, u32)> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| Some((name.to_owned(), prog.info().ok()?.id())))
            .collect()
    }

    /// Kernel-side counters, summed over CPUs, indexed by `guard_common::stat`.
    pub fn stats(&self) -> Result<[u64; stat::COUNT as usize], ProbeError> {
        let map = self
            .ebpf
            .map(maps::STATS)
            .ok_or(ProbeError::Missing(maps::STATS))?;
        let arr = PerCpuArray::<_, u64>::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::STATS,
            source,
        })?;
        let mut out = [0; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = arr.get(&(i as u32), 0).map_err(|source| ProbeError::Map {
                name: maps::STATS,
                source,
            })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }

    /// The ring buffer of cgroup creations and removals.
    pub fn take_cgroup_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::CGROUP_EVENTS)
            .ok_or(ProbeError::Missing(maps::CGROUP_EVENTS))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::CGROUP_EVENTS,
            source,
        })
    }

    /// The verdict ring buffer; the caller owns it from here on.
    pub fn take_verdicts(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::VERDICTS)
            .ok_or(ProbeError::Missing(maps::VERDICTS))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::VERDICTS,
            source,
        })
    }
}

/// Turns the kernel's per-pass trace records on while someone listens.
pub struct TraceSwitch {
    map: Array<MapData, u32>,
    on: bool,
}

impl TraceSwitch {
    pub fn set(&mut self, on: bool) -> Result<(), ProbeError> {
        if on == self.on {
            return Ok(());
        }
        self.map
            .set(0, u32::from(on), 0)
            .map_err(|source| ProbeError::Map {
                name: maps::TRACE_ON,
                source,
            })?;
        self.on = on;
        Ok(())
    }

    pub fn is_on(&self) -> bool {
        self.on
    }
}

/// fentry/fexit on the throttle handler and fentry on the penalty sleep.
/// All three or none: half of them would count stalls inconsistently.
fn attach_throttle(ebpf: &mut Ebpf) -> Result<&'static str, String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
    let handler = OVER_HIGH
        .into_iter()
        .find(|f| btf.id_by_type_name_kind(f, BtfKind::Func).is_ok())
        .ok_or_else(|| format!("neither of {OVER_HIGH:?} is in the kernel's BTF"))?;
    let err = |what: &str, e: ProgramError| format!("{what}: {e}");

    let enter: &mut FEntry = ebpf
        .program_mut(programs::OVER_HIGH_ENTER)
        .ok_or("missing program")?
        .try_into()
        .map_err(|e| err("fentry", e))?;
    enter
        .load(handler, &btf)
        .map_err(|e| err("loading fentry", e))?;
    let exit: &mut FExit = ebpf
        .program_mut(programs::OVER_HIGH_EXIT)
        .ok_or("missing program")?
        .try_into()
        .map_err(|e| err("fexit", e))?;
    exit.load(handler, &btf)
        .map_err(|e| err("loading fexit", e))?;
    let sleep: &mut FEntry = ebpf
        .program_mut(programs::PENALTY_SLEEP)
        .ok_or("missing program")?
        .try_into()
        .map_err(|e| err("fentry", e))?;
    sleep
        .load(PENALTY_SLEEP, &btf)
        .map_err(|e| err("loading fentry", e))?;

    // Attach the exit side first so no task is left marked "inside".
    let exit: &mut FExit = ebpf
        .program_mut(programs::OVER_HIGH_EXIT)
        .ok_or("missing program")?
        .try_into()
        .map_err(|e| err("fexit", e))?;
    exit.attach().map_err(|e| err("attaching fexit", e))?;
    for prog in [programs::PENALTY_SLEEP, programs::OVER_HIGH_ENTER] {
        let p: &mut FEntry = ebpf
            .program_mut(prog)
            .ok_or("missing program")?
            .try_into()
            .map_err(|e| err("fentry", e))?;
        p.attach().map_err(|e| err("attaching fentry", e))?;
    }
    Ok(handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 6.1 .. 7.0 shape, and the 7.1+ shape with memcg_id after nr_reclaimed.
    const END_61: &str = "name: mm_vmscan_memcg_reclaim_end\nID: 512\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:unsigned long nr_reclaimed;\toffset:8;\tsize:8;\tsigned:0;\n";

    #[test]
    fn nr_reclaimed_offset_is_read_from_the_format() {
        assert_eq!(field_offset(END_61, "nr_reclaimed"), Some(8));
        let shifted = END_61.replace("offset:8;", "offset:16;");
        assert_eq!(field_offset(&shifted, "nr_reclaimed"), Some(16));
        assert_eq!(field_offset(END_61, "memcg_id"), None);
        // A prefix of the name is not the name.
        assert_eq!(field_offset(END_61, "reclaimed"), None);
    }

    #[test]
    fn cgroup_event_fields_are_found_including_the_data_loc_path() {
        let fmt = "format:\n\tfield:int root;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:int level;\toffset:12;\tsize:4;\tsigned:1;\n\
\tfield:u64 id;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:__data_loc char[] path;\toffset:24;\tsize:4;\tsigned:0;\n";
        assert_eq!(field_offset(fmt, "root"), Some(8));
        assert_eq!(field_offset(fmt, "id"), Some(16));
        assert_eq!(field_offset(fmt, "path"), Some(24));
    }

    #[test]
    fn jiffy_length_is_a_plausible_hz() {
        // CONFIG_HZ is 100, 250, 300 or 1000 on every kernel guard supports.
        let hz = 1_000_000_000 / ns_per_jiffy();
        assert!([100, 250, 300, 1000].contains(&hz), "HZ {hz}");
    }
}
