//! From a kernel verdict to a dead hog: confirm against the cgroup's memory
//! files, choose the victim by policy, kill it, log one line.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use guard_common::Verdict;
use tracing::{debug, info, warn};

use crate::{
    cgroup::Hierarchy,
    kill::{KillError, Victim},
    policy::{Choice, Policy},
    probes::Probes,
    procfs::{self, ProcError, ProcessInfo},
};

/// How long an identical "unresolved" or dry-run decision stays quiet.
const REPEAT_QUIET: Duration = Duration::from_secs(10);

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// What became of one verdict (returned for tests and the caller's stats).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    UnknownCgroup,
    VictimStillExiting(u32),
    NotConfirmed,
    CgroupGone,
    Killed { pid: u32, latency_us: u64 },
    DryRun { pid: u32 },
    VictimVanished(u32),
    KillFailed(u32),
    Unresolved,
}

pub struct Responder {
    pub policy: Policy,
    hierarchy: Hierarchy,
    proc_root: PathBuf,
    watched: HashMap<u64, PathBuf>,
    /// The last victim per cgroup, until it has exited: while it is dying
    /// its memory is still charged, and a second kill would be premature.
    dying: HashMap<u64, Victim>,
    quiet: HashMap<u64, (String, Instant)>,
    guard_pid: u32,
}

impl Responder {
    pub fn new(
        policy: Policy,
        hierarchy: Hierarchy,
        proc_root: impl Into<PathBuf>,
        watched: HashMap<u64, PathBuf>,
    ) -> Self {
        Self {
            policy,
            hierarchy,
            proc_root: proc_root.into(),
            watched,
            dying: HashMap::new(),
            quiet: HashMap::new(),
            guard_pid: std::process::id(),
        }
    }

    pub fn watched(&self) -> &HashMap<u64, PathBuf> {
        &self.watched
    }

    /// True when the same message for this cgroup was logged recently.
    fn repeated(&mut self, cgroup_id: u64, key: String) -> bool {
        let now = Instant::now();
        match self.quiet.get(&cgroup_id) {
            Some((k, at)) if *k == key && now.duration_since(*at) < REPEAT_QUIET => true,
            _ => {
                self.quiet.insert(cgroup_id, (key, now));
                false
            }
        }
    }

    /// Runs the decision path once per watched cgroup without acting, so
    /// its code and data are paged in (and locked, after mlockall) before the
    /// first verdict needs them in a hurry.
    pub fn warm_up(&self) {
        // The watched cgroups may be empty now; the guard's own /proc files
        // take the same code paths a victim's will.
        let _ = procfs::process(&self.proc_root, self.guard_pid);
        for dir in self.watched.values() {
            let procs = self.candidates(dir);
            if let (Ok(mem), Ok(stat)) = (Hierarchy::memory(dir), Hierarchy::memory_stat(dir)) {
                let _ = self
                    .policy
                    .choose(&procs, 0, mem.overage(), &stat, self.guard_pid);
            }
        }
    }

    fn candidates(&self, dir: &Path) -> Vec<ProcessInfo> {
        let pids = match Hierarchy::processes(dir) {
            Ok(pids) => pids,
            Err(e) => {
                warn!(error = %e, "listing the stalled cgroup's processes failed");
                return Vec::new();
            }
        };
        pids.into_iter()
            .filter_map(|pid| match procfs::process(&self.proc_root, pid) {
                Ok(p) => Some(p),
                Err(ProcError::Gone(_)) => None,
                Err(e) => {
                    warn!(pid, error = %e, "skipping a process that could not be read");
                    None
                }
            })
            .collect()
    }

    pub fn handle(&mut self, v: &Verdict, probes: Option<&mut Probes>) -> Outcome {
        let received_ns = monotonic_ns();
        let Some(dir) = self.watched.get(&v.cgroup_id).cloned() else {
            warn!(
                cgroup_id = v.cgroup_id,
                "verdict for a cgroup that is not watched (removed?)"
            );
            return Outcome::UnknownCgroup;
        };
        let cgroup = self.hierarchy.display_path(&dir);
        if let Some(prev) = self.dying.get(&v.cgroup_id) {
            if !prev.exited() {
                debug!(%cgroup, pid = prev.pid, "stall continues while the last victim exits");
                return Outcome::VictimStillExiting(prev.pid);
            }
            self.dying.remove(&v.cgroup_id);
        }
        let stall_ms = v.stall_ns / 1_000_000;
        let mem = match Hierarchy::memory(&dir) {
            Ok(m) => m,
            Err(e) => {
                warn!(%cgroup, error = %e, "stalled cgroup vanished before it could be confirmed");
                return Outcome::CgroupGone;
            }
        };
        if mem.current <= mem.high {
            debug!(%cgroup, current = mem.current, high = mem.high, stall_ms,
                "verdict not confirmed: memory.current is back under memory.high");
            return Outcome::NotConfirmed;
        }
        let procs = self.candidates(&dir);
        let stat = Hierarchy::memory_stat(&dir).unwrap_or_default();
        let choice = self
            .policy
            .choose(&procs, v.worst_tgid, mem.overage(), &stat, self.guard_pid);
        let victim = match choice {
            Choice::Kill(p) => p,
            Choice::Unresolved(why) => {
                let reason = why.to_string();
                if !self.repeated(v.cgroup_id, reason.clone()) {
                    warn!(%cgroup, stall_ms, current = mem.current, high = mem.high,
                        %reason, "stall unresolved: nothing to kill");
                }
                return Outcome::Unresolved;
            }
        };
        let stalled_comm = String::from_utf8_lossy(v.comm()).into_owned();
        if self.policy.dry_run {
            let latency_us = monotonic_ns().saturating_sub(v.ktime_ns) / 1000;
            if !self.repeated(v.cgroup_id, format!("dry-run {}", victim.pid)) {
                info!(%cgroup, pid = victim.pid, comm = %victim.comm,
                    footprint_bytes = victim.footprint, stall_ms, latency_us,
                    stalled_task = %stalled_comm, stalled_pid = v.worst_pid,
                    "dry run: would kill");
            }
            return Outcome::DryRun { pid: victim.pid };
        }
        let pinned = Victim::pin(&self.proc_root, victim.pid, victim.start_time)
            .and_then(|p| p.kill().map(|()| p));
        let killed_ns = monotonic_ns();
        let pinned = match pinned {
            Ok(p) => p,
            Err(e @ (KillError::Gone(_) | KillError::Reused(_))) => {
                info!(%cgroup, pid = victim.pid, comm = %victim.comm, reason = %e,
                    "victim vanished before the kill; nothing killed");
                return Outcome::VictimVanished(victim.pid);
            }
            Err(e) => {
                warn!(%cgroup, pid = victim.pid, comm = %victim.comm, error = %e, "kill failed");
                return Outcome::KillFailed(victim.pid);
            }
        };
        let latency_us = killed_ns.saturating_sub(v.ktime_ns) / 1000;
        // Of the latency: the wake-up through the ring buffer, and our work.
        let wakeup_us = received_ns.saturating_sub(v.ktime_ns) / 1000;
        let decide_us = killed_ns.saturating_sub(received_ns) / 1000;
        info!(%cgroup, pid = victim.pid, comm = %victim.comm,
            footprint_bytes = victim.footprint, stall_ms, latency_us, wakeup_us, decide_us,
            current = mem.current, high = mem.high,
            stalled_task = %stalled_comm, stalled_pid = v.worst_pid, "killed");
        if let Err(e) = pinned.release_memory() {
            debug!(pid = victim.pid, error = %e, "process_mrelease did not reap the victim");
        }
        if let Some(probes) = probes
            && let Err(e) = probes.reset_cgroup(v.cgroup_id)
        {
            warn!(%cgroup, error = %e, "could not reset the kernel's stall window");
        }
        self.dying.insert(v.cgroup_id, pinned);
        Outcome::Killed {
            pid: victim.pid,
            latency_us,
        }
    }
}
