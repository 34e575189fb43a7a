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
    cgroup::{self, Hierarchy},
    config::{HostMode, KillMode},
    kill::{KillError, Victim},
    policy::{Choice, Policy},
    probes::Probes,
    procfs::{self, ProcError, ProcessInfo},
};

/// How the host appears where a cgroup would: in logs, events and metrics.
pub const HOST_NAME: &str = "(host)";

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
    Killed {
        pid: u32,
        latency_us: u64,
        report: KillReport,
    },
    DryRun {
        pid: u32,
        report: KillReport,
    },
    VictimVanished(u32),
    KillFailed(u32),
    Unresolved,
    OutOfScope,
}

/// Why a chosen victim was not killed (logged where it happened).
#[derive(Debug, Clone, Copy)]
enum NotKilled {
    Vanished(u32),
    Failed(u32),
}

impl From<NotKilled> for Outcome {
    fn from(n: NotKilled) -> Self {
        match n {
            NotKilled::Vanished(pid) => Outcome::VictimVanished(pid),
            NotKilled::Failed(pid) => Outcome::KillFailed(pid),
        }
    }
}

/// What the post-kill hook and the event stream are told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KillReport {
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    pub footprint: u64,
    /// The kill mode applied ("process", "process-group", "cgroup").
    pub mode: String,
    pub killed_cgroup: Option<String>,
    pub also_killed: u64,
    pub stall_ns: u64,
    /// From the kernel's verdict to the signal.
    pub latency_us: u64,
    pub memory_current: u64,
    /// `u64::MAX`: no limit.
    pub memory_high: u64,
    pub dry_run: bool,
}

pub struct Responder {
    pub policy: Policy,
    hierarchy: Hierarchy,
    proc_root: PathBuf,
    watched: HashMap<u64, PathBuf>,
    /// Every cgroup known by id (scanned at start, followed since).
    known: HashMap<u64, PathBuf>,
    /// The last victim per cgroup, until it has exited: while it is dying
    /// its memory is still charged, and a second kill would be premature.
    dying: HashMap<PathBuf, Victim>,
    quiet: HashMap<PathBuf, (String, Instant)>,
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
            known: HashMap::new(),
            dying: HashMap::new(),
            quiet: HashMap::new(),
            guard_pid: std::process::id(),
        }
    }

    pub fn watched(&self) -> &HashMap<u64, PathBuf> {
        &self.watched
    }

    /// Every cgroup that exists now, by id (a scan at start).
    pub fn set_known(&mut self, known: HashMap<u64, PathBuf>) {
        self.known = known;
    }

    /// A cgroup created after start; `listed` when the kernel lists it too.
    pub fn add_cgroup(&mut self, id: u64, dir: PathBuf, listed: bool) {
        if listed {
            self.watched.insert(id, dir.clone());
        }
        self.known.insert(id, dir);
    }

    /// Forgets a removed cgroup; true if it was listed.
    pub fn forget(&mut self, id: u64) -> bool {
        self.known.remove(&id);
        match self.watched.remove(&id) {
            Some(dir) => {
                self.quiet.remove(&dir);
                true
            }
            None => false,
        }
    }

    /// A reloaded policy and the cgroups it lists. Victims still dying stay
    /// tracked: a reload must not open the door to a premature second kill.
    pub fn replace_policy(&mut self, policy: Policy, watched: HashMap<u64, PathBuf>) {
        self.policy = policy;
        self.watched = watched;
        self.quiet.clear();
    }

    /// True when the same message for this cgroup was logged recently.
    fn repeated(&mut self, dir: &Path, key: String) -> bool {
        let now = Instant::now();
        match self.quiet.get(dir) {
            Some((k, at)) if *k == key && now.duration_since(*at) < REPEAT_QUIET => true,
            _ => {
                self.quiet.insert(dir.to_owned(), (key, now));
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
            .filter_map(|(pid, dir)| match procfs::process(&self.proc_root, pid) {
                Ok(mut p) => {
                    p.cgroup = self.hierarchy.display_path(&dir);
                    Some(p)
                }
                Err(ProcError::Gone(_)) => None,
                Err(e) => {
                    warn!(pid, error = %e, "skipping a process that could not be read");
                    None
                }
            })
            .collect()
    }

    /// The directory of the cgroup a verdict charges: a cgroup user space
    /// listed or knows, or else the one the stalled task is in.
    fn charged_cgroup(&self, v: &Verdict) -> Option<PathBuf> {
        if let Some(dir) = self
            .watched
            .get(&v.cgroup_id)
            .or(self.known.get(&v.cgroup_id))
        {
            return Some(dir.clone());
        }
        [v.worst_pid, v.worst_tgid].into_iter().find_map(|pid| {
            let text = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup"))
                .ok()?;
            let rel = cgroup::v2_path(&text)?;
            let dir = self.hierarchy.root().join(rel.trim_start_matches('/'));
            // The task may have moved since: only its cgroup at verdict time counts.
            (Hierarchy::id_of(&dir).ok()? == v.cgroup_id).then_some(dir)
        })
    }

    pub fn handle(&mut self, v: &Verdict, probes: Option<&mut Probes>) -> Outcome {
        let received_ns = monotonic_ns();
        if v.cgroup_id == guard_common::HOST_ID {
            return self.handle_host(v, received_ns, probes);
        }
        let Some(charged) = self.charged_cgroup(v) else {
            warn!(
                cgroup_id = v.cgroup_id,
                pid = v.worst_pid,
                "verdict for a cgroup that is gone, and its stalled task with it"
            );
            return Outcome::UnknownCgroup;
        };
        let stall_ms = v.stall_ns / 1_000_000;
        // The stall is the throttle of whichever cgroup at or above the
        // charged one is over its memory.high: that is the one to relieve,
        // with victims from its whole subtree.
        let (dir, mem) = match self.hierarchy.over_high(&charged) {
            Ok(Some(found)) => found,
            Ok(None) => {
                debug!(cgroup = %self.hierarchy.display_path(&charged), stall_ms,
                    "verdict not confirmed: no cgroup at or above it is over memory.high");
                return Outcome::NotConfirmed;
            }
            Err(e) => {
                warn!(cgroup = %self.hierarchy.display_path(&charged), error = %e,
                    "stalled cgroup vanished before it could be confirmed");
                return Outcome::CgroupGone;
            }
        };
        let cgroup = self.hierarchy.display_path(&dir);
        let Some(scope) = self.policy.config.scope_for(&cgroup) else {
            debug!(%cgroup, "stalled cgroup is in no scope of the policy: left alone");
            return Outcome::OutOfScope;
        };
        let (kill_mode, kill_watched) = (scope.kill, scope.kill_watched_cgroup);
        if let Some(prev) = self.dying.get(&dir) {
            if !prev.exited() {
                debug!(%cgroup, pid = prev.pid, "stall continues while the last victim exits");
                return Outcome::VictimStillExiting(prev.pid);
            }
            self.dying.remove(&dir);
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
                if !self.repeated(&dir, why.key()) {
                    warn!(%cgroup, stall_ms, current = mem.current, high = mem.high,
                        %reason, "stall unresolved: nothing to kill");
                }
                return Outcome::Unresolved;
            }
        };
        let stalled_comm = String::from_utf8_lossy(v.comm()).into_owned();
        if self.policy.dry_run() {
            let latency_us = monotonic_ns().saturating_sub(v.ktime_ns) / 1000;
            if !self.repeated(&dir, format!("dry-run {}", victim.pid)) {
                info!(%cgroup, pid = victim.pid, comm = %victim.comm,
                    footprint_bytes = victim.footprint, stall_ms, latency_us,
                    stalled_task = %stalled_comm, stalled_pid = v.worst_pid,
                    "dry run: would kill");
            }
            return Outcome::DryRun {
                pid: victim.pid,
                report: KillReport {
                    pid: victim.pid,
                    comm: victim.comm,
                    cgroup,
                    footprint: victim.footprint,
                    mode: kill_mode.to_string(),
                    stall_ns: v.stall_ns,
                    latency_us,
                    memory_current: mem.current,
                    memory_high: mem.high,
                    dry_run: true,
                    ..KillReport::default()
                },
            };
        }
        let pinned = match self.pin_and_kill(&victim, &cgroup) {
            Ok(p) => p,
            Err(not) => return not.into(),
        };
        let mut killed_ns = monotonic_ns();
        // The victim is dead; the kill mode may take its company with it.
        let (mode, killed_cgroup, also) =
            self.kill_company(&victim, &procs, &dir, kill_mode, kill_watched);
        if also > 0 || killed_cgroup.is_some() {
            killed_ns = monotonic_ns();
        }
        let killed_cgroup_name = killed_cgroup.clone().unwrap_or_else(|| "-".to_owned());
        let latency_us = killed_ns.saturating_sub(v.ktime_ns) / 1000;
        // Of the latency: the wake-up through the ring buffer, and our work.
        let wakeup_us = received_ns.saturating_sub(v.ktime_ns) / 1000;
        let decide_us = killed_ns.saturating_sub(received_ns) / 1000;
        info!(%cgroup, pid = victim.pid, comm = %victim.comm,
            footprint_bytes = victim.footprint, stall_ms, latency_us, wakeup_us, decide_us,
            current = mem.current, high = mem.high, kill_mode = %mode, killed_cgroup = %killed_cgroup_name,
            also_killed = also, stalled_task = %stalled_comm, stalled_pid = v.worst_pid, "killed");
        if let Err(e) = pinned.release_memory() {
            debug!(pid = victim.pid, error = %e, "process_mrelease did not reap the victim");
        }
        if let Some(probes) = probes
            && let Err(e) = probes.reset_cgroup(v.cgroup_id)
        {
            warn!(%cgroup, error = %e, "could not reset the kernel's stall window");
        }
        self.dying.insert(dir, pinned);
        Outcome::Killed {
            pid: victim.pid,
            latency_us,
            report: KillReport {
                pid: victim.pid,
                comm: victim.comm,
                cgroup,
                footprint: victim.footprint,
                mode: mode.to_string(),
                killed_cgroup,
                also_killed: also as u64,
                stall_ns: v.stall_ns,
                latency_us,
                memory_current: mem.current,
                memory_high: mem.high,
                dry_run: false,
            },
        }
    }

    /// Pins the chosen process by pid and start time and SIGKILLs it; a
    /// victim that vanished or a failed kill is logged and becomes the
    /// outcome.
    fn pin_and_kill(&self, victim: &ProcessInfo, cgroup: &str) -> Result<Victim, NotKilled> {
        match Victim::pin(&self.proc_root, victim.pid, victim.start_time)
            .and_then(|p| p.kill().map(|()| p))
        {
            Ok(p) => Ok(p),
            Err(e @ (KillError::Gone(_) | KillError::Reused(_))) => {
                info!(%cgroup, pid = victim.pid, comm = %victim.comm, reason = %e,
                    "victim vanished before the kill; nothing killed");
                Err(NotKilled::Vanished(victim.pid))
            }
            Err(e) => {
                warn!(%cgroup, pid = victim.pid, comm = %victim.comm, error = %e, "kill failed");
                Err(NotKilled::Failed(victim.pid))
            }
        }
    }

    /// The machine itself short of memory: confirmed against MemAvailable,
    /// the victim is the largest unprotected process on the host.
    fn handle_host(
        &mut self,
        v: &Verdict,
        received_ns: u64,
        probes: Option<&mut Probes>,
    ) -> Outcome {
        let host = self.policy.config.host;
        let key = PathBuf::from(HOST_NAME);
        let stall_ms = v.stall_ns / 1_000_000;
        if host.mode == HostMode::Off {
            return Outcome::OutOfScope;
        }
        let meminfo = std::fs::read_to_string(self.proc_root.join("meminfo"))
            .ok()
            .and_then(|t| procfs::parse_meminfo(&t));
        let Some((total, available)) = meminfo else {
            warn!("host stall, but /proc/meminfo could not be read: nothing done");
            return Outcome::NotConfirmed;
        };
        let threshold = total / 100 * host.min_available_percent;
        if available >= threshold {
            debug!(
                stall_ms,
                available,
                threshold,
                "host verdict not confirmed: MemAvailable is above host.min_available_percent"
            );
            return Outcome::NotConfirmed;
        }
        if let Some(prev) = self.dying.get(&key) {
            if !prev.exited() {
                debug!(
                    pid = prev.pid,
                    "host stall continues while the last victim exits"
                );
                return Outcome::VictimStillExiting(prev.pid);
            }
            self.dying.remove(&key);
        }
        let procs: Vec<ProcessInfo> = procfs::pids(&self.proc_root)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|pid| {
                // Kernel threads (and zombies) have an empty command line:
                // one small read instead of four, for the hundred of them.
                let cmdline =
                    std::fs::read(self.proc_root.join(pid.to_string()).join("cmdline")).ok()?;
                if cmdline.is_empty() {
                    return None;
                }
                let mut p = procfs::process(&self.proc_root, pid).ok()?;
                if let Ok(text) =
                    std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup"))
                    && let Some(path) = cgroup::v2_path(&text)
                {
                    p.cgroup = path.to_owned();
                }
                Some(p)
            })
            .collect();
        // The shortfall below the threshold stands in for a cgroup's
        // overage: the victim must hold a real share of it.
        let shortfall = threshold - available;
        let choice = self.policy.choose(
            &procs,
            v.worst_tgid,
            shortfall,
            &cgroup::MemoryStat::default(),
            self.guard_pid,
        );
        let victim = match choice {
            Choice::Kill(p) => p,
            Choice::Unresolved(why) => {
                let reason = why.to_string();
                if !self.repeated(&key, why.key()) {
                    warn!(cgroup = HOST_NAME, stall_ms, available, total, %reason,
                        "host stall unresolved: nothing to kill");
                }
                return Outcome::Unresolved;
            }
        };
        let mut report = KillReport {
            pid: victim.pid,
            comm: victim.comm.clone(),
            cgroup: HOST_NAME.to_owned(),
            footprint: victim.footprint,
            mode: KillMode::Process.to_string(),
            stall_ns: v.stall_ns,
            memory_current: total - available,
            memory_high: u64::MAX,
            ..KillReport::default()
        };
        if self.policy.dry_run() || host.mode == HostMode::Watch {
            report.latency_us = monotonic_ns().saturating_sub(v.ktime_ns) / 1000;
            report.dry_run = true;
            if !self.repeated(&key, format!("dry-run {}", victim.pid)) {
                info!(cgroup = HOST_NAME, pid = victim.pid, comm = %victim.comm,
                    footprint_bytes = victim.footprint, stall_ms, available, total,
                    host_mode = %host.mode, "host short of memory: would kill");
            }
            return Outcome::DryRun {
                pid: victim.pid,
                report,
            };
        }
        let pinned = match self.pin_and_kill(&victim, HOST_NAME) {
            Ok(p) => p,
            Err(not) => return not.into(),
        };
        let killed_ns = monotonic_ns();
        let latency_us = killed_ns.saturating_sub(v.ktime_ns) / 1000;
        let wakeup_us = received_ns.saturating_sub(v.ktime_ns) / 1000;
        let decide_us = killed_ns.saturating_sub(received_ns) / 1000;
        report.latency_us = latency_us;
        info!(cgroup = HOST_NAME, pid = victim.pid, comm = %victim.comm,
            footprint_bytes = victim.footprint, stall_ms, latency_us, wakeup_us, decide_us,
            available, total, kill_mode = "process", stalled_task = %String::from_utf8_lossy(v.comm()),
            stalled_pid = v.worst_pid, "killed");
        if let Err(e) = pinned.release_memory() {
            debug!(pid = victim.pid, error = %e, "process_mrelease did not reap the victim");
        }
        if let Some(probes) = probes
            && let Err(e) = probes.reset_cgroup(guard_common::HOST_ID)
        {
            warn!(error = %e, "could not reset the kernel's host stall window");
        }
        self.dying.insert(key, pinned);
        Outcome::Killed {
            pid: victim.pid,
            latency_us,
            report,
        }
    }

    /// After the victim itself: in `process-group` mode every unprotected
    /// member of its process group in the stalled subtree, in `cgroup` mode
    /// its leaf cgroup through cgroup.kill. Falls back to the victim alone
    /// (and says why) when the wider kill would reach a protected process or
    /// the watched cgroup itself. Returns the mode applied, the cgroup
    /// killed, and how many other processes were signalled.
    fn kill_company(
        &self,
        victim: &ProcessInfo,
        procs: &[ProcessInfo],
        limited: &Path,
        mode: KillMode,
        kill_watched: bool,
    ) -> (KillMode, Option<String>, usize) {
        match mode {
            KillMode::Process => (mode, None, 0),
            KillMode::ProcessGroup => {
                let group: Vec<&ProcessInfo> = procs
                    .iter()
                    .filter(|p| p.pgrp == victim.pgrp && p.pid != victim.pid)
                    .collect();
                if let Some(p) = group
                    .iter()
                    .find(|p| self.policy.protection(p, self.guard_pid).is_some())
                {
                    warn!(pid = p.pid, comm = %p.comm,
                        "process group holds a protected process: killed the victim alone");
                    return (KillMode::Process, None, 0);
                }
                let mut n = 0;
                for p in group {
                    match Victim::pin(&self.proc_root, p.pid, p.start_time).and_then(|v| v.kill()) {
                        Ok(()) => n += 1,
                        Err(e) => debug!(pid = p.pid, error = %e, "group member not killed"),
                    }
                }
                (mode, None, n)
            }
            KillMode::Cgroup => {
                let leaf = self
                    .hierarchy
                    .root()
                    .join(victim.cgroup.trim_start_matches('/'));
                if leaf == limited && !kill_watched {
                    warn!(cgroup = %victim.cgroup,
                        "the victim lives in the watched cgroup itself and kill_watched_cgroup is off: killed the victim alone");
                    return (KillMode::Process, None, 0);
                }
                let inside: Vec<&ProcessInfo> = procs
                    .iter()
                    .filter(|p| Path::new(&p.cgroup).starts_with(&victim.cgroup))
                    .collect();
                if let Some(p) = inside
                    .iter()
                    .find(|p| self.policy.protection(p, self.guard_pid).is_some())
                {
                    warn!(pid = p.pid, comm = %p.comm, cgroup = %victim.cgroup,
                        "the victim's cgroup holds a protected process: killed the victim alone");
                    return (KillMode::Process, None, 0);
                }
                match std::fs::write(leaf.join("cgroup.kill"), "1") {
                    Ok(()) => (
                        mode,
                        Some(victim.cgroup.clone()),
                        inside.len().saturating_sub(1),
                    ),
                    Err(e) => {
                        warn!(cgroup = %victim.cgroup, error = %e,
                            "writing cgroup.kill failed: killed the victim alone");
                        (KillMode::Process, None, 0)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        fs,
        process::{Child, Command, Stdio},
    };

    /// A stand-in cgroup: the memory files the responder reads, and a real
    /// child process of this test as its only member.
    struct Fixture {
        root: tempfile::TempDir,
        child: Child,
        id: u64,
    }

    const MIB: u64 = 1 << 20;

    /// `current` and `high` in bytes. `sleep` holds a few pages of anonymous
    /// memory, so a confirmed stall is set one byte over high: then it holds
    /// the whole overage.
    fn fixture(current: u64, high: u64) -> Fixture {
        let root = tempfile::tempdir().expect("tempdir");
        let cg = root.path().join("seed");
        fs::create_dir(&cg).expect("mkdir");
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        fs::write(cg.join("cgroup.procs"), format!("{}\n", child.id())).expect("procs");
        fs::write(cg.join("memory.current"), current.to_string()).expect("w");
        fs::write(cg.join("memory.high"), high.to_string()).expect("w");
        fs::write(cg.join("memory.max"), "max\n").expect("w");
        fs::write(cg.join("memory.stat"), "anon 1000\nfile 0\nshmem 0\n").expect("w");
        let id = Hierarchy::id_of(&cg).expect("id");
        Fixture { root, child, id }
    }

    fn responder(f: &Fixture, dry_run: bool) -> Responder {
        let mut policy = Policy::default();
        policy.config.dry_run = dry_run;
        let watched = HashMap::from([(f.id, f.root.path().join("seed"))]);
        Responder::new(policy, Hierarchy::new(f.root.path()), "/proc", watched)
    }

    fn verdict(f: &Fixture) -> Verdict {
        Verdict {
            cgroup_id: f.id,
            ktime_ns: monotonic_ns(),
            stall_ns: 300_000_000,
            worst_tgid: f.child.id(),
            worst_pid: f.child.id(),
            ..Verdict::default()
        }
    }

    fn alive(child: &mut Child) -> bool {
        matches!(child.try_wait(), Ok(None))
    }

    #[test]
    fn a_confirmed_stall_kills_the_member_process() {
        let mut f = fixture(64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, false);
        let outcome = r.handle(&verdict(&f), None);
        assert!(
            matches!(outcome, Outcome::Killed { pid, .. } if pid == f.child.id()),
            "{outcome:?}"
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(f.child.wait().expect("wait").signal(), Some(libc::SIGKILL));
        // The victim has exited now: the next verdict may act again, and
        // with nothing left to kill it kills nothing.
        fs::write(f.root.path().join("seed/cgroup.procs"), "").expect("w");
        assert_eq!(r.handle(&verdict(&f), None), Outcome::Unresolved);
    }

    #[test]
    fn dry_run_decides_but_kills_nothing() {
        let mut f = fixture(64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, true);
        match r.handle(&verdict(&f), None) {
            Outcome::DryRun { pid, report } => {
                assert_eq!(pid, f.child.id());
                assert!(report.dry_run);
                assert_eq!(report.memory_high, 64 * MIB);
            }
            o => panic!("{o:?}"),
        }
        assert!(alive(&mut f.child));
        let _ = f.child.kill();
    }

    #[test]
    fn a_cgroup_back_under_memory_high_is_not_acted_on() {
        let mut f = fixture(60 * MIB, 64 * MIB);
        let mut r = responder(&f, false);
        assert_eq!(r.handle(&verdict(&f), None), Outcome::NotConfirmed);
        assert!(alive(&mut f.child));
        let _ = f.child.kill();
    }

    #[test]
    fn verdicts_for_unknown_or_vanished_cgroups_are_dropped() {
        let mut f = fixture(64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, false);
        let mut v = verdict(&f);
        v.cgroup_id += 1;
        assert_eq!(r.handle(&v, None), Outcome::UnknownCgroup);
        fs::remove_dir_all(f.root.path().join("seed")).expect("rm");
        assert_eq!(r.handle(&verdict(&f), None), Outcome::CgroupGone);
        assert!(alive(&mut f.child));
        let _ = f.child.kill();
    }

    #[test]
    fn a_member_that_exits_first_is_not_mistaken_for_a_victim() {
        let mut f = fixture(64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, false);
        f.child.kill().expect("kill");
        f.child.wait().expect("reap");
        // Its pid is still listed (a stale read): it must be skipped, and
        // nothing else killed.
        assert_eq!(r.handle(&verdict(&f), None), Outcome::Unresolved);
    }

    /// A /proc with the given meminfo and, as its only processes, a real
    /// child of this test (a symlink to its /proc entry) and this test.
    fn host_fixture(available_kib: u64) -> (tempfile::TempDir, Child) {
        let root = tempfile::tempdir().expect("tempdir");
        fs::write(
            root.path().join("meminfo"),
            format!("MemTotal: 1048576 kB\nMemFree: 1000 kB\nMemAvailable: {available_kib} kB\n"),
        )
        .expect("meminfo");
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        // Past its exec: before it, /proc shows a copy of this test.
        let comm = format!("/proc/{}/comm", child.id());
        let start = Instant::now();
        while fs::read_to_string(&comm)
            .map(|c| c.trim() != "sleep")
            .unwrap_or(true)
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        // And past the loader, which maps its first anonymous pages.
        std::thread::sleep(Duration::from_millis(50));
        for pid in [child.id(), std::process::id()] {
            std::os::unix::fs::symlink(format!("/proc/{pid}"), root.path().join(pid.to_string()))
                .expect("symlink");
        }
        (root, child)
    }

    fn host_responder(root: &Path, mode: HostMode, protect_sleep: bool) -> Responder {
        let text = format!(
            "[host]\nmode = \"{mode}\"\nmin_available_percent = 5\n{}[[scope]]\npaths = [\"/**\"]\n",
            if protect_sleep {
                "[protect]\ncomm = [\"^sleep$\"]\n"
            } else {
                ""
            }
        );
        let policy = Policy {
            config: crate::config::Config::parse(&text, "<test>").expect("valid"),
        };
        Responder::new(policy, Hierarchy::new(root), root, HashMap::new())
    }

    fn host_verdict() -> Verdict {
        Verdict {
            cgroup_id: guard_common::HOST_ID,
            ktime_ns: monotonic_ns(),
            stall_ns: 300_000_000,
            ..Verdict::default()
        }
    }

    #[test]
    fn a_host_short_of_memory_loses_its_largest_unprotected_process() {
        // 1 GiB total; 5% is about 52428 KiB, so 52428 KiB available is a
        // shortfall a sleeping child holds a share of. This process is protected as
        // the guard itself, so the child is the only candidate.
        let (root, mut child) = host_fixture(52_428);
        let mut r = host_responder(root.path(), HostMode::Kill, false);
        match r.handle(&host_verdict(), None) {
            Outcome::Killed { pid, report, .. } => {
                assert_eq!(pid, child.id());
                assert_eq!(report.cgroup, HOST_NAME);
                assert!(!report.dry_run);
            }
            o => panic!("{o:?}"),
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn the_host_scope_confirms_watches_and_protects() {
        // Plenty available: not confirmed, nothing killed.
        let (root, mut child) = host_fixture(500_000);
        let mut r = host_responder(root.path(), HostMode::Kill, false);
        assert_eq!(r.handle(&host_verdict(), None), Outcome::NotConfirmed);
        assert!(alive(&mut child));
        let _ = child.kill();

        // Short, but only watched: would kill, kills nothing.
        let (root, mut child) = host_fixture(52_428);
        let mut r = host_responder(root.path(), HostMode::Watch, false);
        match r.handle(&host_verdict(), None) {
            Outcome::DryRun { pid, report } => {
                assert_eq!(pid, child.id());
                assert!(report.dry_run);
            }
            o => panic!("{o:?}"),
        }
        assert!(alive(&mut child));
        let _ = child.kill();

        // Short, and the only candidate is protected: unresolved.
        let (root, mut child) = host_fixture(52_428);
        let mut r = host_responder(root.path(), HostMode::Kill, true);
        assert_eq!(r.handle(&host_verdict(), None), Outcome::Unresolved);
        assert!(alive(&mut child));
        let _ = child.kill();
    }
}
