//! Attaching the programs: each tracepoint as a BTF-typed tracepoint
//! (`tp_btf`) where the kernel allows, else the classic way through tracefs
//! and perf_event_open; the throttle hooks as fentry/fexit where allowed.

use std::{fs, io, path::Path};

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, ProgramError, TracePoint},
};
use aya_obj::btf::BtfKind;
use guard_common::programs;

use super::ProbeError;

pub(super) const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
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

/// How a tracepoint program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// BTF-typed (`tp_btf`): a bpf link, allowed by CAP_BPF and CAP_PERFMON.
    Btf,
    /// Classic: a perf event through tracefs, which Debian's
    /// `kernel.perf_event_paranoid=3` reserves for CAP_SYS_ADMIN.
    Classic,
}

impl Attach {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Btf => "tp_btf",
            Self::Classic => "tracepoint",
        }
    }
}

/// One tracepoint and its two programs.
#[derive(Clone, Copy, Debug)]
struct Tp {
    category: &'static str,
    event: &'static str,
    classic: &'static str,
    btf: &'static str,
}

const fn tp(
    category: &'static str,
    event: &'static str,
    classic: &'static str,
    btf: &'static str,
) -> Tp {
    Tp {
        category,
        event,
        classic,
        btf,
    }
}

/// The tracepoints every guard attaches.
const CORE: [Tp; 5] = [
    tp(
        "vmscan",
        RECLAIM_BEGIN,
        programs::RECLAIM_BEGIN,
        programs::BTF_RECLAIM_BEGIN,
    ),
    tp(
        "vmscan",
        RECLAIM_END,
        programs::RECLAIM_END,
        programs::BTF_RECLAIM_END,
    ),
    tp(
        "cgroup",
        "cgroup_mkdir",
        programs::CGROUP_MKDIR,
        programs::BTF_CGROUP_MKDIR,
    ),
    tp(
        "cgroup",
        "cgroup_rmdir",
        programs::CGROUP_RMDIR,
        programs::BTF_CGROUP_RMDIR,
    ),
    tp(
        "oom",
        "mark_victim",
        programs::OOM_MARK_VICTIM,
        programs::BTF_OOM_MARK_VICTIM,
    ),
];

/// The host scope's, attached only when it is on.
const HOST: [Tp; 4] = [
    tp(
        "vmscan",
        DIRECT_BEGIN,
        programs::DIRECT_RECLAIM_BEGIN,
        programs::BTF_DIRECT_RECLAIM_BEGIN,
    ),
    tp(
        "vmscan",
        DIRECT_END,
        programs::DIRECT_RECLAIM_END,
        programs::BTF_DIRECT_RECLAIM_END,
    ),
    tp(
        "oom",
        "reclaim_retry_zone",
        programs::RECLAIM_RETRY_ZONE,
        programs::BTF_RECLAIM_RETRY_ZONE,
    ),
    tp(
        "vmscan",
        "mm_vmscan_kswapd_wake",
        programs::KSWAPD_WAKE,
        programs::BTF_KSWAPD_WAKE,
    ),
];

/// What the BTF-typed programs need of the running kernel, read from its
/// BTF: struct member offsets and the shape of two tracepoints' arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtfShapes {
    pub cgrp_root: u64,
    pub root_hierarchy_id: u64,
    pub cgrp_kn: u64,
    pub kn_id: u64,
    /// Offset of `pid` in task_struct when mark_victim passes the task;
    /// u64::MAX when it passes the pid.
    pub victim_task_pid: u64,
}

impl BtfShapes {
    /// Everything the BTF-typed programs need, or what is missing.
    pub fn read(btf: &super::btf::Btf) -> Result<Self, String> {
        let member = |s: &str, m: &str| {
            btf.member_offset(s, m)
                .map(u64::from)
                .ok_or_else(|| format!("the kernel's BTF has no member `{m}` in struct {s}"))
        };
        let args = |event: &str| {
            btf.tracepoint_args(event)
                .ok_or_else(|| format!("the kernel's BTF has no tracepoint type btf_trace_{event}"))
        };
        for t in CORE.iter().chain(&HOST) {
            args(t.event)?;
        }
        let victim_task_pid = match args("mark_victim")? {
            1 => u64::MAX,
            2 => member("task_struct", "pid")?,
            n => {
                return Err(format!(
                    "oom:mark_victim has {n} arguments; guard knows 1 or 2"
                ));
            }
        };
        // (zoneref, order, reclaimable, available, min_wmark,
        // no_progress_loops, wmark_check): the program reads argument 5.
        match args("reclaim_retry_zone")? {
            7 => {}
            n => {
                return Err(format!(
                    "oom:reclaim_retry_zone has {n} arguments; guard knows 7"
                ));
            }
        }
        Ok(Self {
            cgrp_root: member("cgroup", "root")?,
            root_hierarchy_id: member("cgroup_root", "hierarchy_id")?,
            cgrp_kn: member("cgroup", "kn")?,
            kn_id: member("kernfs_node", "id")?,
            victim_task_pid,
        })
    }
}

/// The classic programs' offsets in the tracepoints' records, from tracefs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct RecordOffsets {
    pub(super) nr_reclaimed: u64,
    pub(super) cg_root: u64,
    pub(super) cg_id: u64,
    pub(super) cg_path: u64,
    pub(super) oom_pid: u64,
    pub(super) direct_reclaimed: u64,
    pub(super) retry_loops: u64,
}

impl RecordOffsets {
    fn read() -> Result<Self, ProbeError> {
        Ok(Self {
            nr_reclaimed: offset_in("vmscan", RECLAIM_END, "nr_reclaimed")?,
            cg_root: offset_in("cgroup", "cgroup_mkdir", "root")?,
            cg_id: offset_in("cgroup", "cgroup_mkdir", "id")?,
            cg_path: offset_in("cgroup", "cgroup_mkdir", "path")?,
            oom_pid: offset_in("oom", "mark_victim", "pid")?,
            direct_reclaimed: offset_in("vmscan", DIRECT_END, "nr_reclaimed")?,
            retry_loops: offset_in("oom", "reclaim_retry_zone", "no_progress_loops")?,
        })
    }
}

/// How the tracepoints were attached, for the start-up log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracepoints {
    /// Each tracepoint's event name and how it is attached.
    pub attached: Vec<(&'static str, Attach)>,
    /// Why some are classic, when some are.
    pub classic_because: Option<String>,
}

impl Tracepoints {
    /// "mm_vmscan_memcg_reclaim_begin=tp_btf, ..."
    pub fn summary(&self) -> String {
        self.attached
            .iter()
            .map(|(event, how)| format!("{event}={}", how.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// True when every one is BTF-typed: CAP_SYS_ADMIN is not needed.
    pub fn all_btf(&self) -> bool {
        self.attached.iter().all(|(_, how)| *how == Attach::Btf)
    }

    /// "btf" when every one is BTF-typed, "classic" when every one is
    /// classic, else "mixed": what the stream's hello says.
    pub fn mode(&self) -> &'static str {
        if self.all_btf() {
            "btf"
        } else if self.attached.iter().all(|(_, how)| *how == Attach::Classic) {
            "classic"
        } else {
            "mixed"
        }
    }
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

fn attach_classic(ebpf: &mut Ebpf, t: &Tp) -> Result<(), ProbeError> {
    let tp: &mut TracePoint = ebpf
        .program_mut(t.classic)
        .ok_or(ProbeError::Missing(t.classic))?
        .try_into()
        .map_err(|source| ProbeError::Attach {
            what: t.classic.to_owned(),
            source,
        })?;
    let attach = |tp: &mut TracePoint| -> Result<(), ProgramError> {
        tp.load()?;
        tp.attach(t.category, t.event)?;
        Ok(())
    };
    attach(tp).map_err(|source| ProbeError::Attach {
        what: format!("tracepoint {}:{}", t.category, t.event),
        source,
    })
}

fn attach_btf(ebpf: &mut Ebpf, t: &Tp, btf: &Btf) -> Result<(), String> {
    let prog = typed::<BtfTracePoint>(ebpf, t.btf)?;
    prog.load(t.event, btf)
        .map_err(|e| format!("loading: {}", error_chain(&e)))?;
    prog.attach()
        .map_err(|e| format!("attaching: {}", error_chain(&e)))?;
    Ok(())
}

/// An error and its sources, one line ("a: b: c").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The classic programs' offsets. Without BTF shapes (`no_btf` says why)
/// they are needed: tracefs is mounted if it is not, and an error names
/// both reasons. Otherwise they are read where tracefs is there anyway, for
/// a tracepoint the kernel refuses as tp_btf (Err: why they cannot be).
pub(super) fn record_offsets(
    no_btf: Option<&String>,
) -> Result<Result<RecordOffsets, String>, ProbeError> {
    let Some(no_btf) = no_btf else {
        return Ok(RecordOffsets::read().map_err(|e| e.to_string()));
    };
    let classic = ensure_tracefs().and_then(|mounted| {
        if mounted {
            tracing::info!(
                path = TRACEFS[0],
                "mounted tracefs, which the classic tracepoints need"
            );
        }
        RecordOffsets::read()
    });
    classic.map(Ok).map_err(|e| ProbeError::NoAttach {
        event: "the tracepoints".to_owned(),
        btf: no_btf.clone(),
        classic: e.to_string(),
    })
}

/// Attaches the tracepoints (the host scope's only when it is on), each as
/// a BTF-typed tracepoint where `btf` allows, else as a classic one; every
/// one must attach one way or the other.
pub(super) fn attach_tracepoints(
    ebpf: &mut Ebpf,
    host: bool,
    btf: Result<&Btf, &str>,
    records: Result<(), &str>,
) -> Result<Tracepoints, ProbeError> {
    let host_tps = if host { &HOST[..] } else { &[] };
    let mut out = Tracepoints {
        attached: Vec::new(),
        classic_because: None,
    };
    for t in CORE.iter().chain(host_tps) {
        let refused = match btf {
            Ok(btf) => match attach_btf(ebpf, t, btf) {
                Ok(()) => {
                    out.attached.push((t.event, Attach::Btf));
                    continue;
                }
                Err(e) => format!("the kernel refused {} as tp_btf ({e})", t.event),
            },
            Err(why) => why.to_owned(),
        };
        let classic = match records {
            Err(no_tracefs) => Err(no_tracefs.to_owned()),
            Ok(()) => attach_classic(ebpf, t).map_err(|e| error_chain(&e)),
        };
        if let Err(classic) = classic {
            return Err(ProbeError::NoAttach {
                event: format!("{}:{}", t.category, t.event),
                btf: refused,
                classic,
            });
        }
        out.attached.push((t.event, Attach::Classic));
        out.classic_because.get_or_insert(refused);
    }
    Ok(out)
}

/// A program of the object as its type (`FEntry`, `FExit`, ...).
fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("the object lacks {name}"))?
        .try_into()
        .map_err(|e: ProgramError| format!("{name}: {e}"))
}

/// fentry/fexit on the throttle handler and fentry on the penalty sleep.
/// All three or none: half of them would count stalls inconsistently.
pub(super) fn attach_throttle(ebpf: &mut Ebpf, btf: &Btf) -> Result<&'static str, String> {
    let handler = OVER_HIGH
        .into_iter()
        .find(|f| btf.id_by_type_name_kind(f, BtfKind::Func).is_ok())
        .ok_or_else(|| format!("neither of {OVER_HIGH:?} is in the kernel's BTF"))?;
    let err = |what: &str, e: ProgramError| format!("{what}: {e}");
    typed::<FEntry>(ebpf, programs::OVER_HIGH_ENTER)?
        .load(handler, btf)
        .map_err(|e| err("loading fentry", e))?;
    typed::<FExit>(ebpf, programs::OVER_HIGH_EXIT)?
        .load(handler, btf)
        .map_err(|e| err("loading fexit", e))?;
    typed::<FEntry>(ebpf, programs::PENALTY_SLEEP)?
        .load(PENALTY_SLEEP, btf)
        .map_err(|e| err("loading fentry", e))?;
    // Attach the exit side first so no task is left marked "inside".
    typed::<FExit>(ebpf, programs::OVER_HIGH_EXIT)?
        .attach()
        .map_err(|e| err("attaching fexit", e))?;
    for prog in [programs::PENALTY_SLEEP, programs::OVER_HIGH_ENTER] {
        typed::<FEntry>(ebpf, prog)?
            .attach()
            .map_err(|e| err("attaching fentry", e))?;
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

    /// The running kernel's BTF has every shape the BTF-typed programs
    /// need, and the two that differ between kernels are read as known.
    #[test]
    fn the_running_kernel_gives_the_btf_tracepoints_their_shapes() {
        let btf = match super::super::btf::Btf::from_kernel() {
            Ok(btf) => btf,
            Err(e) => {
                eprintln!("SKIPPED: {e}");
                return;
            }
        };
        let shapes = BtfShapes::read(&btf).expect("shapes");
        assert_eq!(btf.tracepoint_args("reclaim_retry_zone"), Some(7));
        // (int pid) before 6.9, (task, uid) since: then pid's offset.
        match btf.tracepoint_args("mark_victim") {
            Some(1) => assert_eq!(shapes.victim_task_pid, u64::MAX),
            _ => assert_eq!(
                Some(shapes.victim_task_pid),
                btf.member_offset("task_struct", "pid").map(u64::from)
            ),
        }
        // Pointers are 8 bytes: distinct members at distinct 8-byte slots.
        assert_ne!(shapes.cgrp_root, shapes.cgrp_kn);
        assert_eq!(shapes.cgrp_kn % 8, 0);
    }
}
