//! Loading and attaching the kernel half, and the maps it shares with us.

use std::{io, time::Duration};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::ProgramError,
};
use guard_common::{CgroupStall, HOST_ID, Watch, globals, maps, stat};

use super::attach::{
    BtfShapes, RecordOffsets, TRACEFS, Tracepoints, attach_throttle, attach_tracepoints,
    record_offsets,
};

/// The eBPF object, built by build.rs (aya-build) and embedded, so the
/// `guard` binary is self-contained.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

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
    #[error(
        "cannot attach {event}: as a BTF-typed tracepoint: {btf}; as a classic tracepoint: \
         {classic}. Fix: a kernel with CONFIG_DEBUG_INFO_BTF (every kernel guard supports has it), \
         or tracefs mounted (`mount -t tracefs tracefs /sys/kernel/tracing`) and CAP_SYS_ADMIN \
         where kernel.perf_event_paranoid is 3"
    )]
    NoAttach {
        event: String,
        btf: String,
        classic: String,
    },
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
    /// Attach every tracepoint the classic way, none as tp_btf.
    pub classic_tracepoints: bool,
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
    pub tracepoints: Tracepoints,
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

/// The eBPF object with its globals set: the policy's limits, the BTF
/// shapes for the BTF-typed programs (zero where unknown: those programs are
/// then not attached) and the record offsets for the classic ones (zero
/// where tracefs could not be read: likewise).
fn load_object(
    settings: &Settings,
    shapes: Option<&BtfShapes>,
    records: &RecordOffsets,
) -> Result<Ebpf, ProbeError> {
    let host_retry = settings.host.map_or(0, |h| h.retry_loops);
    let host_early = u64::from(settings.host.is_some_and(|h| h.early));
    let host_interval = settings.host.map_or(0, |h| nanos(h.interval));
    let budget = nanos(settings.budget);
    let window = nanos(settings.window);
    let interval = nanos(settings.verdict_interval);
    let jiffy = ns_per_jiffy();
    let watch_all = u64::from(settings.watch_all);
    let shapes = shapes.copied().unwrap_or(BtfShapes {
        cgrp_root: 0,
        root_hierarchy_id: 0,
        cgrp_kn: 0,
        kn_id: 0,
        victim_task_pid: u64::MAX,
    });
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
        .override_global(globals::NR_RECLAIMED_OFFSET, &records.nr_reclaimed, true)
        .override_global(globals::NS_PER_JIFFY, &jiffy, true)
        .override_global(globals::WATCH_ALL, &watch_all, true)
        .override_global(globals::CGROUP_ROOT_OFFSET, &records.cg_root, true)
        .override_global(globals::CGROUP_ID_OFFSET, &records.cg_id, true)
        .override_global(globals::CGROUP_PATH_OFFSET, &records.cg_path, true)
        .override_global(globals::OOM_PID_OFFSET, &records.oom_pid, true)
        .override_global(
            globals::DIRECT_NR_RECLAIMED_OFFSET,
            &records.direct_reclaimed,
            true,
        )
        .override_global(globals::RETRY_LOOPS_OFFSET, &records.retry_loops, true)
        .override_global(globals::HOST_RETRY_LOOPS, &host_retry, true)
        .override_global(globals::HOST_EARLY, &host_early, true)
        .override_global(globals::HOST_INTERVAL_NS, &host_interval, true)
        .override_global(globals::CGRP_ROOT_OFFSET, &shapes.cgrp_root, true)
        .override_global(
            globals::ROOT_HIERARCHY_ID_OFFSET,
            &shapes.root_hierarchy_id,
            true,
        )
        .override_global(globals::CGRP_KN_OFFSET, &shapes.cgrp_kn, true)
        .override_global(globals::KN_ID_OFFSET, &shapes.kn_id, true)
        .override_global(
            globals::VICTIM_TASK_PID_OFFSET,
            &shapes.victim_task_pid,
            true,
        )
        .load(OBJECT)
        .map_err(ProbeError::from)
}

impl Probes {
    /// Loads every program; the tracepoints must attach, the fentry
    /// programs may be refused (then `throttle` says why).
    pub fn load(settings: Settings) -> Result<Self, ProbeError> {
        // The kernel's BTF, as aya loads against it and as our reader
        // finds the shapes in it.
        let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF ({e})"));
        let shapes = match &btf {
            Ok(_) if settings.classic_tracepoints => {
                Err("--classic-tracepoints asks for no BTF-typed tracepoints".to_owned())
            }
            Ok(_) => super::btf::Btf::from_kernel()
                .map_err(|e| e.to_string())
                .and_then(|b| BtfShapes::read(&b)),
            Err(e) => Err(e.clone()),
        };
        let records = record_offsets(shapes.as_ref().err())?;
        let mut ebpf = load_object(
            &settings,
            shapes.as_ref().ok(),
            records.as_ref().unwrap_or(&RecordOffsets::default()),
        )?;
        let usable = match (&btf, &shapes) {
            (Ok(btf), Ok(_)) => Ok(btf),
            (_, Err(why)) => Err(why.as_str()),
            (Err(why), _) => Err(why.as_str()),
        };
        let tracepoints = attach_tracepoints(
            &mut ebpf,
            settings.host.is_some(),
            usable,
            records.as_ref().map(|_| ()).map_err(String::as_str),
        )?;
        let throttle = match &btf {
            Ok(btf) => match attach_throttle(&mut ebpf, btf) {
                Ok(handler) => Throttle::Hooked { handler },
                Err(reason) => Throttle::Refused { reason },
            },
            Err(why) => Throttle::Refused {
                reason: why.clone(),
            },
        };
        let mut probes = Self {
            ebpf,
            throttle,
            tracepoints,
        };
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

    /// Asks the kernel for the next verdict of a cgroup (a kernel key: the
    /// verdict's `cgroup_id`) after 20 ms rather than the verdict interval,
    /// once: user space held its last one.
    pub fn recheck(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(maps::RECHECK)
            .ok_or(ProbeError::Missing(maps::RECHECK))?;
        let mut map =
            BpfHashMap::<_, u64, u8>::try_from(map).map_err(|source| ProbeError::Map {
                name: maps::RECHECK,
                source,
            })?;
        map.insert(cgroup_id, 1, 0)
            .map_err(|source| ProbeError::Map {
                name: maps::RECHECK,
                source,
            })
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

    /// Every loaded program's kernel info (run time and count among it),
    /// read now through the program's own fd: a walk over the host's
    /// programs by id would need CAP_SYS_ADMIN. Programs not loaded (the
    /// other way of attaching a tracepoint) are left out.
    pub fn program_infos(&self) -> Vec<(String, aya::programs::ProgramInfo)> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| Some((name.to_owned(), prog.info().ok()?)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jiffy_length_is_a_plausible_hz() {
        // CONFIG_HZ is 100, 250, 300 or 1000 on every kernel guard supports.
        let hz = 1_000_000_000 / ns_per_jiffy();
        assert!([100, 250, 300, 1000].contains(&hz), "HZ {hz}");
    }
}
