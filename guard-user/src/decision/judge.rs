//! Whether a candidate may be killed, reading only what the policy's rules
//! need of it.

use super::{
    Aux,
    rules::{Candidate, Judgement},
};
use crate::{
    policy::{Facts, Policy, Protection},
    procfs::{ProcError, ProcFs},
};

/// Why candidate `c` may not be killed, reading only what the rules need,
/// and its name. Its start time is read first and kept: the kill checks
/// that the pid still names this process.
pub(super) fn judge(
    procfs: &mut ProcFs,
    policy: &Policy,
    guard_pid: u32,
    c: &Candidate,
    a: &mut Aux,
    cgroup: Option<&str>,
) -> Judgement {
    let unreadable =
        |what: &str, e: ProcError| Some(Protection::Unreadable(format!("{what}: {e}")));
    let stat = match procfs.stat(c.pid) {
        Ok(s) => s,
        Err(e) => return (unreadable("stat", e), c.comm),
    };
    a.start_time = stat.start_time;
    a.comm = stat.comm;
    if !c.comm.is_empty() && c.comm != stat.comm {
        // Renamed or replaced by exec between two reads: what was read
        // about it may be another program's.
        let why = format!("it changed while read ({} is now {})", c.comm, stat.comm);
        return (Some(Protection::Unreadable(why)), stat.comm);
    }
    let why = protection(procfs, policy, guard_pid, c.pid, a, cgroup);
    (why, stat.comm)
}

/// The protection facts of one process, read as the rules need them.
fn protection(
    procfs: &mut ProcFs,
    policy: &Policy,
    guard_pid: u32,
    pid: u32,
    a: &mut Aux,
    cgroup: Option<&str>,
) -> Option<Protection> {
    let unreadable =
        |what: &str, e: ProcError| Some(Protection::Unreadable(format!("{what}: {e}")));
    let oom_score_adj = match procfs.oom_score_adj(pid) {
        Ok(adj) => adj,
        Err(e) => return unreadable("oom_score_adj", e),
    };
    let needs = policy.needs();
    let exe = if needs.exe {
        match procfs.exe(pid, a.via_thread, |p| policy.config.protect.exe_named(p)) {
            Ok(exe) => exe,
            Err(e) => return unreadable("exe", e),
        }
    } else {
        None
    };
    let cmdline = if needs.cmdline {
        match procfs.cmdline(pid) {
            Ok(text) => Some(text),
            Err(e) => return unreadable("cmdline", e),
        }
    } else {
        None
    };
    let own_cgroup = match (cgroup, needs.cgroup) {
        (None, true) => match procfs.cgroup(pid) {
            Ok(path) => Some(path),
            Err(e) => return unreadable("cgroup", e),
        },
        _ => None,
    };
    if needs.uid && a.uid.is_none() {
        match procfs.status(pid, a.via_thread) {
            Ok(s) => a.uid = Some(s.uid),
            Err(e) => return unreadable("status", e),
        }
    }
    policy.protection(
        &Facts {
            pid,
            kernel_thread: a.kernel_thread,
            oom_score_adj,
            comm: &a.comm,
            uid: a.uid,
            cgroup: cgroup.or(own_cgroup.as_deref()),
            exe: exe.as_ref(),
            cmdline: cmdline.as_deref(),
        },
        guard_pid,
    )
}
