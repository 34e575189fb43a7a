//! From a kernel verdict to dead hogs, one pipeline for the cgroup scopes
//! and the host: confirm the stall (a cgroup's memory files, or the host's
//! MemAvailable), read the stalled processes (`gather`), judge who may die (`judge`),
//! decide (`rules`), kill (`act`, `kill`), and keep the books (`ledger`). SIGKILL and
//! process_mrelease come first; the log line after them, and records,
//! hooks and the kernel's reset are the caller's, after this returns.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use guard_common::Verdict;
use tracing::{debug, info};

use crate::{
    cgroup::Hierarchy,
    clock::monotonic_ns,
    config::KillMode,
    events::{KillReport, LimitReport, UnresolvedReport},
    policy::Policy,
    procfs::{Comm, ProcFs},
};

pub mod kill;
pub mod ledger;
pub mod rules;

use act::limit_reached;
use kill::Victim;
use ledger::{Gate, Ledger, Limits};
use mild::MildStalls;
use rules::{Candidate, Decision};

mod act;
mod confirm;
mod explain;
mod gather;
mod judge;
pub mod mild;
#[cfg(test)]
mod tests;
mod warm_up;

pub use act::wait_exit;
pub use explain::{Census, Explanation, Limited, ScopeInfo};

/// How long an identical "unresolved" or dry-run decision stays quiet.
const REPEAT_QUIET: Duration = Duration::from_secs(10);

/// The most processes one decision reads: the work between a verdict and
/// its SIGKILL stays bounded on any machine.
pub const MAX_CANDIDATES: usize = 16384;

/// The most victims of one kill whose exit is watched (one pidfd each); the
/// others are signalled all the same.
pub const MAX_WATCHED: usize = 64;

/// A unit key that cannot collide with a leaf cgroup's index: a process
/// taken alone in a group kill mode.
const ALONE: u32 = 1 << 31;

/// A process with more file-backed and shared memory resident than this
/// gets its full status read: some of it may be memfd or shared anonymous
/// memory that a kill would free. Below it, statm's anonymous memory is
/// the footprint (one small read instead of a large one per process).
const SHARED_SUSPECT: u64 = 16 << 20;

/// How long whether swap is on is taken as known (swapon is rare; reading
/// /proc/swaps on every verdict is not free).
const SWAP_RECHECK: Duration = Duration::from_secs(5);

/// What became of one verdict.
#[derive(Debug)]
pub enum Outcome {
    UnknownCgroup,
    NotConfirmed,
    CgroupGone,
    OutOfScope,
    /// A victim of the last kill there is still exiting.
    VictimStillExiting(u32),
    /// The circuit breaker is open there.
    KillLimited,
    /// A stall at a mild overage that has not lasted long enough yet (see
    /// [`mild`]); how long its verdicts have kept coming, ms.
    Held {
        lasted_ms: u64,
    },
    /// The circuit breaker opened at this verdict.
    LimitReached(LimitReport),
    /// Nothing to kill; the report is there when the situation is new
    /// (repeats within a few seconds are only counted).
    Unresolved(Option<UnresolvedReport>),
    Killed(Box<Killed>),
    DryRun(Box<KillReport>),
    VictimVanished(u32),
    KillFailed(u32),
}

/// A kill, for the caller to finish: records, the hook, the kernel reset,
/// and watching the victims exit.
#[derive(Debug)]
pub struct Killed {
    pub report: KillReport,
    /// The victims, pinned by their pidfds; report each exit (or timeout)
    /// through [`Responder::victim_ended`].
    pub victims: Vec<Victim>,
    /// The scope the kill was for (the cgroup over its limit, or the host).
    pub key: PathBuf,
    /// The verdict's cgroup id, whose stall window the kernel should reset.
    pub reset: u64,
    /// How long to wait for the victims before giving up on them.
    pub exit_timeout: Duration,
}

/// A victim exited, or its wait timed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VictimEnd {
    pub key: PathBuf,
    pub pid: u32,
    pub exited: bool,
    pub waited: Duration,
}

/// A stall confirmed against the memory it is about.
struct Confirmed {
    key: PathBuf,
    name: String,
    /// The cgroup over memory.high; None for the host.
    dir: Option<PathBuf>,
    overage: u64,
    current: u64,
    /// memory.high, or u64::MAX for the host.
    high: u64,
    /// The host's MemAvailable at confirmation.
    available: Option<u64>,
    mode: KillMode,
    kill_watched: bool,
    dry_run: bool,
}

/// What a decision reads besides the candidate row.
#[derive(Clone, Copy, Debug, Default)]
struct Aux {
    /// Index into the leaf cgroups (cgroup scopes).
    leaf: u32,
    /// The real uid, when its status was read.
    uid: Option<u32>,
    kernel_thread: bool,
    via_thread: Option<u32>,
    /// Read when the process is judged (0: not yet).
    start_time: u64,
    /// Its name, read when judged.
    comm: Comm,
}

/// Buffers reused by every decision.
#[derive(Default)]
struct Scratch {
    pids: Vec<(u32, u32)>,
    leaves: Vec<PathBuf>,
    leaf_names: Vec<String>,
    cands: Vec<Candidate>,
    aux: Vec<Aux>,
}

pub struct Responder {
    pub policy: Policy,
    hierarchy: Hierarchy,
    procfs: ProcFs,
    watched: HashMap<u64, PathBuf>,
    /// Every cgroup known by id (scanned at start, followed since).
    known: HashMap<u64, PathBuf>,
    ledger: Ledger,
    quiet: HashMap<PathBuf, (String, Instant)>,
    /// The scope each cgroup over its limit falls in (kill mode, whether
    /// the watched cgroup may be killed), as the policy in force says.
    scope_of: HashMap<PathBuf, Option<(KillMode, bool)>>,
    /// Whether swap was on, and when that was read.
    swap: Option<(bool, Instant)>,
    /// Stalls at a mild overage, until they have lasted.
    mild: MildStalls,
    guard_pid: u32,
    scratch: Scratch,
}

fn limits(policy: &Policy) -> Limits {
    Limits {
        max_fruitless: policy.config.max_fruitless_kills,
        window: policy.config.kill_window,
        exit_timeout: policy.config.victim_exit_timeout,
    }
}

impl Responder {
    pub fn new(
        policy: Policy,
        hierarchy: Hierarchy,
        proc_root: impl Into<PathBuf>,
        watched: HashMap<u64, PathBuf>,
    ) -> Self {
        let mut scratch = Scratch::default();
        scratch.pids.reserve(1024);
        scratch.cands.reserve(1024);
        scratch.aux.reserve(1024);
        Self {
            ledger: Ledger::new(limits(&policy)),
            policy,
            hierarchy,
            procfs: ProcFs::new(proc_root),
            watched,
            known: HashMap::new(),
            quiet: HashMap::new(),
            scope_of: HashMap::new(),
            swap: None,
            mild: MildStalls::default(),
            guard_pid: std::process::id(),
            scratch,
        }
    }

    pub fn watched(&self) -> &HashMap<u64, PathBuf> {
        &self.watched
    }

    /// The path of a cgroup known by id, as users know it
    /// ("/user.slice/user-1000.slice"); no file is read.
    pub fn cgroup_name(&self, id: u64) -> Option<String> {
        let dir = self.watched.get(&id).or(self.known.get(&id))?;
        Some(self.hierarchy.display_path(dir))
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

    /// Forgets a removed cgroup and everything kept about it; true if it
    /// was listed.
    pub fn forget(&mut self, id: u64) -> bool {
        let dir = self.known.remove(&id);
        let listed = self.watched.remove(&id);
        for dir in dir.iter().chain(listed.iter()) {
            self.quiet.remove(dir);
            self.ledger.forget(dir);
            self.scope_of.remove(dir);
            self.mild.forget(dir);
        }
        listed.is_some()
    }

    /// A reloaded policy and the cgroups it lists. Victims still dying stay
    /// tracked: a reload must not open the door to a premature second kill.
    pub fn replace_policy(&mut self, policy: Policy, watched: HashMap<u64, PathBuf>) {
        self.ledger.set_limits(limits(&policy));
        self.policy = policy;
        self.watched = watched;
        self.quiet.clear();
        self.scope_of.clear();
        self.mild.clear();
    }

    /// Whether swap is on (re-read every few seconds).
    fn swap_on(&mut self) -> bool {
        match self.swap {
            Some((on, at)) if at.elapsed() < SWAP_RECHECK => on,
            _ => {
                let on = self.procfs.swap_on();
                self.swap = Some((on, Instant::now()));
                on
            }
        }
    }

    /// Per-process files read so far (for tests: the kill path reads only
    /// what it needs).
    pub fn proc_reads(&self) -> u64 {
        self.procfs.reads()
    }

    /// How many scopes the books hold (for tests: it stays bounded).
    pub fn books(&self) -> (usize, usize, usize) {
        (self.ledger.len(), self.quiet.len(), self.mild.len())
    }

    /// True when the same message for this cgroup was logged recently.
    fn repeated(&mut self, key: &Path, what: String) -> bool {
        let now = Instant::now();
        match self.quiet.get(key) {
            Some((k, at)) if *k == what && now.duration_since(*at) < REPEAT_QUIET => true,
            _ => {
                self.quiet.insert(key.to_owned(), (what, now));
                false
            }
        }
    }

    pub fn handle(&mut self, v: &Verdict) -> Outcome {
        let received_ns = monotonic_ns();
        let confirmed = if v.cgroup_id == guard_common::HOST_ID {
            self.confirm_host(v)
        } else {
            self.confirm_cgroup(v)
        };
        let c = match confirmed {
            Ok(c) => c,
            Err(outcome) => return outcome,
        };
        if let Some(j) = self.ledger.verdict(&c.key, Instant::now(), v.worst_tgid) {
            info!(cgroup = %c.name, fruitful = j.fruitful,
                stalled_pid = v.worst_tgid, "kill outcome");
            if let Some(t) = j.trip {
                return Outcome::LimitReached(limit_reached(&c.name, t));
            }
        }
        match self.ledger.gate(&c.key, Instant::now()) {
            Gate::Open => {}
            Gate::Exiting { pid } => {
                debug!(cgroup = %c.name, pid, "stall continues while the last victim exits");
                return Outcome::VictimStillExiting(pid);
            }
            Gate::Limited { .. } => {
                debug!(cgroup = %c.name, "stall continues, but the kill limit holds here");
                return Outcome::KillLimited;
            }
            Gate::TimedOut { pids, waited, trip } => {
                for pid in pids {
                    self.still_exiting(&c.name, pid, waited);
                }
                if let Some(t) = trip {
                    return Outcome::LimitReached(limit_reached(&c.name, t));
                }
            }
        }
        if mild::is_mild(c.overage, c.high) {
            let gap = mild::max_gap(self.policy.config.verdict_interval);
            if let Err(lasted) = self.mild.lasted(&c.key, v.ktime_ns, gap) {
                let lasted_ms = lasted / 1_000_000;
                // Said once per episode; its rechecks (every 20 ms) only
                // at debug.
                if lasted == 0 {
                    info!(cgroup = %c.name, overage = c.overage, high = c.high,
                        stall_ms = v.stall_ns / 1_000_000, streak = v.streak,
                        "stall at a mild overage: acted on once it has lasted");
                } else {
                    debug!(cgroup = %c.name, overage = c.overage, lasted_ms,
                        "mild stall goes on");
                }
                return Outcome::Held { lasted_ms };
            }
        }
        let d = match self.grower_alone(&c, v.worst_tgid) {
            Some(d) => d,
            None => {
                self.gather(&c);
                self.decide(&c, v.worst_tgid, 0)
            }
        };
        match d {
            Decision::Kill(picks) if c.dry_run => self.dry_run(&c, v, &picks),
            Decision::Kill(picks) => self.kill(&c, v, &picks, received_ns),
            Decision::Unresolved(_) => {
                // Only now is memory.stat worth reading: it tells whether
                // tmpfs or shared memory nobody holds is the cause.
                let shmem = c
                    .dir
                    .as_deref()
                    .and_then(|d| Hierarchy::memory_stat(d).ok())
                    .map_or(0, |s| s.shmem);
                match self.decide(&c, v.worst_tgid, shmem) {
                    Decision::Unresolved(u) => self.unresolved(&c, v, u),
                    // The second look cannot find a victim the first missed,
                    // but should it, the first answer stands.
                    Decision::Kill(_) => Outcome::Unresolved(None),
                }
            }
        }
    }
}

/// "101,102,103"
pub fn pid_list(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
