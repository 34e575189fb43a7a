//! From a kernel verdict to dead hogs, one pipeline for the cgroup scopes
//! and the host: confirm the stall (a cgroup's memory files, or the host's
//! MemAvailable), read the stalled processes (`procfs`), decide (`decide`),
//! kill (`kill`), and keep the books (`ledger`). SIGKILL and
//! process_mrelease come first; the log line after them, and records,
//! hooks and the kernel's reset are the caller's, after this returns.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use guard_common::Verdict;
use tracing::{debug, info, warn};

use crate::{
    cgroup::{Hierarchy, Memory},
    clock::monotonic_ns,
    config::Scope,
    config::{HostMode, KillMode},
    decide::{self, Candidate, Decision, Pick, Stall, Unresolved},
    kill::{KillError, Victim},
    ledger::{Gate, Ledger, Limits, Trip},
    policy::{Facts, Policy, Protection},
    procfs::{Comm, ProcError, ProcFs},
};

/// How the host appears where a cgroup would: in logs, events and metrics.
pub const HOST_NAME: &str = "(host)";

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

/// What the post-kill hook and the event stream are told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KillReport {
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    /// What the victims held together, bytes.
    pub footprint: u64,
    /// The kill mode applied ("process", "process-group", "cgroup").
    pub mode: String,
    pub killed_cgroup: Option<String>,
    pub also_killed: u64,
    pub stall_ns: u64,
    /// From the kernel's verdict to the first SIGKILL.
    pub latency_us: u64,
    pub memory_current: u64,
    /// `u64::MAX`: no limit.
    pub memory_high: u64,
    pub dry_run: bool,
    /// Every process signalled (or, dry run, that would be), the largest
    /// first.
    pub victims: Vec<u32>,
    /// How many victims the decision chose; more than one when the overage
    /// was spread over many small processes.
    pub batch: u32,
}

/// A stall guard could not end, as the stream tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnresolvedReport {
    pub cgroup: String,
    pub reason: String,
    pub holder_pid: Option<u32>,
    pub holder_comm: Option<String>,
    pub stall_ns: u64,
    pub memory_current: u64,
    pub memory_high: u64,
}

/// The circuit breaker opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitReport {
    pub cgroup: String,
    pub fruitless_kills: u64,
    pub window_ms: u64,
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
            guard_pid: std::process::id(),
            scratch,
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

    /// Forgets a removed cgroup and everything kept about it; true if it
    /// was listed.
    pub fn forget(&mut self, id: u64) -> bool {
        let dir = self.known.remove(&id);
        let listed = self.watched.remove(&id);
        for dir in dir.iter().chain(listed.iter()) {
            self.quiet.remove(dir);
            self.ledger.forget(dir);
            self.scope_of.remove(dir);
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
    pub fn books(&self) -> (usize, usize) {
        (self.ledger.len(), self.quiet.len())
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

    /// Runs the decision path once per watched cgroup without acting, so
    /// its code and data are paged in (and locked, after mlockall) before the
    /// first verdict needs them in a hurry.
    pub fn warm_up(&mut self) {
        let me = self.guard_pid;
        // Every /proc file the kill path reads, on the guard's own entry.
        let _ = self.procfs.statm(me);
        let _ = self.procfs.process(me);
        let _ = self.procfs.comm(me);
        let _ = self.procfs.meminfo();
        self.swap = None;
        let _ = self.swap_on();
        let own = match self.procfs.cgroup(me) {
            Ok(rel) => self.hierarchy.root().join(rel.trim_start_matches('/')),
            Err(_) => self.hierarchy.root().to_owned(),
        };
        // A cgroup's memory file, also when no cgroup is watched yet.
        let _ = Hierarchy::memory_stat(self.hierarchy.root());
        let mut dirs: Vec<PathBuf> = self.watched.values().cloned().collect();
        dirs.push(own);
        for dir in dirs {
            // The cgroup files and listing, as a verdict reads them.
            let _ = self.hierarchy.over_high(&dir);
            let c = Confirmed {
                key: dir.clone(),
                name: self.hierarchy.display_path(&dir),
                dir: Some(dir),
                overage: 1,
                current: 1,
                high: 0,
                available: None,
                mode: KillMode::Process,
                kill_watched: false,
                dry_run: true,
            };
            let _ = self.grower_alone(&c, me);
            self.gather(&c);
            let _ = self.decide(&c, 0, 0);
            // And the decision's judge on a process it may not kill: itself.
            let Scratch { cands, aux, .. } = &mut self.scratch;
            cands.clear();
            aux.clear();
            cands.push(Candidate {
                pid: me,
                comm: Comm::default(),
                footprint: Some(1),
                unit: me,
                rank: 0,
            });
            aux.push(Aux::default());
            let _ = self.decide(&c, me, 0);
        }
        // The kill's own system calls, on itself, harmlessly: pidfd_open,
        // the start-time check, a signal 0, process_mrelease (refused: it
        // is not dying).
        if let Ok(start) = self.procfs.start_time(me)
            && let Ok(v) = Victim::pin(&mut self.procfs, me, start)
        {
            let _ = v.probe();
            let _ = v.release_memory();
        }
    }

    /// The directory of the cgroup a verdict charges: a cgroup user space
    /// listed or knows, or else the one the stalled task is in.
    fn charged_cgroup(&mut self, v: &Verdict) -> Option<PathBuf> {
        if let Some(dir) = self
            .watched
            .get(&v.cgroup_id)
            .or(self.known.get(&v.cgroup_id))
        {
            return Some(dir.clone());
        }
        for pid in [v.worst_pid, v.worst_tgid] {
            let Ok(rel) = self.procfs.cgroup(pid) else {
                continue;
            };
            let dir = self.hierarchy.root().join(rel.trim_start_matches('/'));
            // The task may have moved since: only its cgroup at verdict time counts.
            if Hierarchy::id_of(&dir).is_ok_and(|id| id == v.cgroup_id) {
                return Some(dir);
            }
        }
        None
    }

    fn confirm_cgroup(&mut self, v: &Verdict) -> Result<Confirmed, Outcome> {
        let Some(charged) = self.charged_cgroup(v) else {
            warn!(
                cgroup_id = v.cgroup_id,
                pid = v.worst_pid,
                "verdict for a cgroup that is gone, and its stalled task with it"
            );
            return Err(Outcome::UnknownCgroup);
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
                return Err(Outcome::NotConfirmed);
            }
            Err(e) => {
                warn!(cgroup = %self.hierarchy.display_path(&charged), error = %e,
                    "stalled cgroup vanished before it could be confirmed");
                return Err(Outcome::CgroupGone);
            }
        };
        let name = self.hierarchy.display_path(&dir);
        let policy = &self.policy;
        let scope = *self.scope_of.entry(dir.clone()).or_insert_with(|| {
            policy
                .config
                .scope_for(&name)
                .map(|s: &Scope| (s.kill, s.kill_watched_cgroup))
        });
        let Some((mode, kill_watched)) = scope else {
            debug!(cgroup = %name, "stalled cgroup is in no scope of the policy: left alone");
            return Err(Outcome::OutOfScope);
        };
        Ok(Confirmed {
            key: dir.clone(),
            name,
            dir: Some(dir),
            overage: mem.overage(),
            current: mem.current,
            high: mem.high,
            available: None,
            mode,
            kill_watched,
            dry_run: self.policy.dry_run(),
        })
    }

    /// The host's MemAvailable threshold and what is available, bytes.
    fn host_memory(&mut self) -> Option<(u64, u64, u64)> {
        let (total, available) = self.procfs.meminfo()?;
        let threshold = total / 100 * self.policy.config.host.min_available_percent;
        Some((total, available, threshold))
    }

    fn confirm_host(&mut self, v: &Verdict) -> Result<Confirmed, Outcome> {
        let host = self.policy.config.host;
        if host.mode == HostMode::Off {
            return Err(Outcome::OutOfScope);
        }
        let Some((total, available, threshold)) = self.host_memory() else {
            warn!("host stall, but /proc/meminfo could not be read: nothing done");
            return Err(Outcome::NotConfirmed);
        };
        if available >= threshold {
            debug!(
                stall_ms = v.stall_ns / 1_000_000,
                available,
                threshold,
                "host verdict not confirmed: MemAvailable is above host.min_available_percent"
            );
            return Err(Outcome::NotConfirmed);
        }
        Ok(Confirmed {
            key: PathBuf::from(HOST_NAME),
            name: HOST_NAME.to_owned(),
            dir: None,
            // The shortfall below the threshold stands in for a cgroup's
            // overage: the victims must cover it.
            overage: threshold - available,
            current: total - available,
            high: u64::MAX,
            available: Some(available),
            mode: KillMode::Process,
            kill_watched: false,
            dry_run: self.policy.dry_run() || host.mode == HostMode::Watch,
        })
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
            info!(cgroup = %c.name, fruitful = j.fruitful, spared = j.spared,
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

    /// The common case, decided without reading every process: the task
    /// the kernel saw stall most (the one charging) holds more than half of
    /// the cgroup's memory, so no other process can hold more, and by
    /// itself covers the overage. The full decision would take it too when
    /// it may be killed and no prefer/avoid rule reorders; anything else
    /// (it may not be killed, a group kill mode, swap in use, where names
    /// matter) goes the full way.
    fn grower_alone(&mut self, c: &Confirmed, worst: u32) -> Option<Decision> {
        let dir = c.dir.as_ref()?;
        if worst == 0 || c.mode != KillMode::Process || self.policy.ranks_by_name() {
            return None;
        }
        // Still in the stalled subtree? (The listing is what the full
        // decision starts from anyway.)
        let Scratch { pids, leaves, .. } = &mut self.scratch;
        Hierarchy::processes(dir, MAX_CANDIDATES, leaves, pids).ok()?;
        let &(_, leaf) = pids.iter().find(|(pid, _)| *pid == worst)?;
        if self.swap_on() {
            return None;
        }
        let page = rustix::param::page_size() as u64;
        let q = self.procfs.statm(worst).ok()?;
        let (footprint, full) = if q.size > 0 && q.shared * page < SHARED_SUSPECT {
            (q.anon() * page, None)
        } else {
            let p = self.procfs.process(worst).ok()?;
            (p.footprint, Some(p))
        };
        if footprint.saturating_mul(2) <= c.current || footprint < c.overage {
            return None;
        }
        let Scratch {
            cands,
            aux,
            leaves,
            leaf_names,
            ..
        } = &mut self.scratch;
        cands.clear();
        aux.clear();
        leaf_names.clear();
        leaf_names.extend(leaves.iter().map(|l| self.hierarchy.display_path(l)));
        let comm = full.map_or_else(Comm::default, |p| p.comm);
        cands.push(Candidate {
            pid: worst,
            comm,
            footprint: Some(footprint),
            unit: worst,
            rank: 0,
        });
        aux.push(Aux {
            leaf,
            uid: full.map(|p| p.uid),
            kernel_thread: full.is_some_and(|p| p.kernel_thread),
            via_thread: full.and_then(|p| p.via_thread),
            start_time: 0,
            comm,
        });
        match self.decide(c, worst, 0) {
            d @ Decision::Kill(_) => Some(d),
            Decision::Unresolved(_) => None,
        }
    }

    /// Reads the processes of the confirmed scope into the scratch table.
    fn gather(&mut self, c: &Confirmed) {
        // Without swap, and without much shared memory, statm tells what a
        // kill gives back; otherwise the full status does.
        let swap = self.swap_on();
        let Scratch {
            pids,
            leaves,
            leaf_names,
            cands,
            aux,
        } = &mut self.scratch;
        cands.clear();
        aux.clear();
        leaf_names.clear();
        match &c.dir {
            Some(dir) => {
                if let Err(e) = Hierarchy::processes(dir, MAX_CANDIDATES, leaves, pids) {
                    warn!(cgroup = %c.name, error = %e, "listing the stalled cgroup's processes failed");
                    return;
                }
                leaf_names.extend(leaves.iter().map(|l| self.hierarchy.display_path(l)));
            }
            None => {
                leaves.clear();
                let mut all = Vec::new();
                if let Err(e) = self.procfs.pids(MAX_CANDIDATES, &mut all) {
                    warn!(error = %e, "listing the host's processes failed");
                    return;
                }
                pids.clear();
                pids.extend(all.into_iter().map(|p| (p, u32::MAX)));
            }
        }
        let page = rustix::param::page_size() as u64;
        let by_name = self.policy.ranks_by_name();
        for &(pid, leaf) in pids.iter() {
            let alone = Aux {
                leaf,
                ..Aux::default()
            };
            let quick = match self.procfs.statm(pid) {
                Ok(q) if q.size > 0 && !swap && q.shared * page < SHARED_SUSPECT => Some(q),
                Ok(_) => None,
                Err(ProcError::Gone(_)) => continue,
                Err(e) => {
                    debug!(pid, error = %e, "a process whose memory cannot be read");
                    cands.push(Candidate {
                        pid,
                        comm: Comm::from("?"),
                        footprint: None,
                        unit: ALONE | pid,
                        rank: 0,
                    });
                    aux.push(alone);
                    continue;
                }
            };
            let (mut comm, footprint, a) = match quick {
                Some(q) => (Comm::default(), Some(q.anon() * page), alone),
                None => match self.procfs.process(pid) {
                    Ok(p) => (
                        p.comm,
                        Some(p.footprint),
                        Aux {
                            leaf,
                            uid: Some(p.uid),
                            kernel_thread: p.kernel_thread,
                            via_thread: p.via_thread,
                            start_time: 0,
                            comm: p.comm,
                        },
                    ),
                    Err(ProcError::Gone(_)) => continue,
                    Err(e) => {
                        debug!(pid, error = %e, "a process whose memory cannot be read");
                        (Comm::from("?"), None, alone)
                    }
                },
            };
            // Nothing to give back (a kernel thread, a zombie): no victim,
            // and no holder either.
            if footprint == Some(0) {
                continue;
            }
            if by_name && comm.is_empty() {
                comm = self.procfs.comm(pid).unwrap_or_default();
            }
            let unit = match c.mode {
                KillMode::Process => pid,
                KillMode::ProcessGroup => match self.procfs.stat(pid) {
                    Ok(s) => s.pgrp,
                    Err(_) => ALONE | pid,
                },
                KillMode::Cgroup => {
                    let own = c.dir.as_ref() == leaves.get(leaf as usize);
                    if own && !c.kill_watched {
                        ALONE | pid
                    } else {
                        leaf
                    }
                }
            };
            cands.push(Candidate {
                pid,
                comm,
                footprint,
                unit,
                rank: self.policy.rank(&comm),
            });
            aux.push(a);
        }
    }

    /// Runs the decision on the scratch table.
    fn decide(&mut self, c: &Confirmed, worst_tgid: u32, unowned_shmem: u64) -> Decision {
        let stall = Stall {
            overage: c.overage,
            worst_tgid,
            min_share_percent: self.policy.config.min_share_percent,
            unowned_shmem,
        };
        let Scratch {
            cands,
            aux,
            leaf_names,
            ..
        } = &mut self.scratch;
        let (procfs, policy, guard) = (&mut self.procfs, &self.policy, self.guard_pid);
        let grouped = c.mode != KillMode::Process;
        decide::decide(&stall, cands, grouped, |i| {
            let cgroup = leaf_names.get(aux[i].leaf as usize).map(String::as_str);
            judge(procfs, policy, guard, &cands[i], &mut aux[i], cgroup)
        })
    }

    fn unresolved(&mut self, c: &Confirmed, v: &Verdict, u: Unresolved) -> Outcome {
        if self.repeated(&c.key, u.key()) {
            return Outcome::Unresolved(None);
        }
        let reason = u.to_string();
        let holder = u.holder();
        warn!(cgroup = %c.name, stall_ms = v.stall_ns / 1_000_000, current = c.current,
            high = c.high, %reason, holder_pid = holder.map(|h| h.pid),
            "stall unresolved: nothing to kill");
        Outcome::Unresolved(Some(UnresolvedReport {
            cgroup: c.name.clone(),
            reason,
            holder_pid: holder.map(|h| h.pid),
            holder_comm: holder.map(|h| h.comm.to_string()),
            stall_ns: v.stall_ns,
            memory_current: c.current,
            memory_high: c.high,
        }))
    }

    /// Candidate `i`'s name: from its table row, or as its judge read it.
    fn name(&self, i: usize) -> Comm {
        match self.scratch.cands[i].comm {
            c if c.is_empty() => self.scratch.aux[i].comm,
            c => c,
        }
    }

    fn report(&self, c: &Confirmed, v: &Verdict, picks: &[Pick]) -> KillReport {
        let cands = &self.scratch.cands;
        let first = picks.first().and_then(|p| p.members.first()).copied();
        KillReport {
            pid: first.map_or(0, |i| cands[i].pid),
            comm: first.map_or_else(String::new, |i| self.name(i).to_string()),
            cgroup: c.name.clone(),
            footprint: picks.iter().map(|p| p.footprint).sum(),
            mode: if picks.iter().all(|p| p.whole) {
                c.mode
            } else {
                KillMode::Process
            }
            .to_string(),
            stall_ns: v.stall_ns,
            memory_current: c.current,
            memory_high: c.high,
            victims: picks
                .iter()
                .flat_map(|p| p.members.iter().map(|&i| cands[i].pid))
                .collect(),
            batch: picks.len() as u32,
            ..KillReport::default()
        }
    }

    fn dry_run(&mut self, c: &Confirmed, v: &Verdict, picks: &[Pick]) -> Outcome {
        let mut report = self.report(c, v, picks);
        report.dry_run = true;
        report.latency_us = monotonic_ns().saturating_sub(v.ktime_ns) / 1000;
        if !self.repeated(&c.key, format!("dry-run {:?}", report.victims)) {
            info!(cgroup = %c.name, pid = report.pid, comm = %report.comm,
                footprint_bytes = report.footprint, victims = %pid_list(&report.victims),
                batch = report.batch, stall_ms = v.stall_ns / 1_000_000,
                latency_us = report.latency_us, current = c.current, high = c.high,
                stalled_task = %String::from_utf8_lossy(v.comm()), stalled_pid = v.worst_pid,
                "dry run: would kill");
        }
        Outcome::DryRun(Box::new(report))
    }

    /// Signals every pick; returns the pinned victims (at most
    /// [`MAX_WATCHED`]), every pid signalled, the first signal's time, the
    /// cgroup killed whole and how many died with it.
    fn signal(&mut self, c: &Confirmed, picks: &[Pick]) -> Signalled {
        let mut out = Signalled::default();
        for pick in picks {
            let whole_cgroup = pick.whole && c.mode == KillMode::Cgroup;
            for (n, &i) in pick.members.iter().enumerate() {
                if whole_cgroup && n > 0 {
                    break;
                }
                let (pid, comm) = (self.scratch.cands[i].pid, self.name(i));
                let mut start = self.scratch.aux[i].start_time;
                if start == 0 {
                    start = self.procfs.start_time(pid).unwrap_or(0);
                }
                match Victim::pin(&mut self.procfs, pid, start).and_then(|p| p.kill().map(|()| p)) {
                    Ok(p) => {
                        out.first_ns.get_or_insert_with(monotonic_ns);
                        out.pids.push(pid);
                        if out.victims.len() < MAX_WATCHED {
                            out.victims.push(p);
                        }
                    }
                    Err(e @ (KillError::Gone(_) | KillError::Reused(_))) => {
                        info!(cgroup = %c.name, pid, %comm, reason = %e,
                            "victim vanished before the kill; nothing killed");
                        out.vanished.get_or_insert(pid);
                        // The rest of its unit was chosen with it: spare it.
                        break;
                    }
                    Err(e) => {
                        warn!(cgroup = %c.name, pid, %comm, error = %e, "kill failed");
                        out.failed.get_or_insert(pid);
                        break;
                    }
                }
            }
            let first = pick.members.first().map(|&i| self.scratch.cands[i].pid);
            if whole_cgroup && out.pids.last().copied() == first {
                let leaf_index = self.scratch.aux[pick.members[0]].leaf as usize;
                if let Some(leaf) = self.scratch.leaves.get(leaf_index) {
                    match std::fs::write(leaf.join("cgroup.kill"), "1") {
                        Ok(()) => {
                            out.killed_cgroup = self.scratch.leaf_names.get(leaf_index).cloned();
                            out.also += pick.members.len().saturating_sub(1) as u64;
                        }
                        Err(e) => warn!(cgroup = %self.hierarchy.display_path(leaf), error = %e,
                            "writing cgroup.kill failed: killed the victim alone"),
                    }
                }
            }
        }
        out
    }

    fn kill(&mut self, c: &Confirmed, v: &Verdict, picks: &[Pick], received_ns: u64) -> Outcome {
        let s = self.signal(c, picks);
        // Memory back at once, before anything is logged or written.
        for victim in &s.victims {
            if let Err(e) = victim.release_memory() {
                debug!(pid = victim.pid, error = %e, "process_mrelease did not reap the victim");
            }
        }
        let Some(first_ns) = s.first_ns else {
            return match (s.vanished, s.failed) {
                (_, Some(pid)) => Outcome::KillFailed(pid),
                (Some(pid), None) => Outcome::VictimVanished(pid),
                (None, None) => Outcome::KillFailed(0),
            };
        };
        let mut report = self.report(c, v, picks);
        report.victims = s.pids;
        report.killed_cgroup = s.killed_cgroup;
        if report.killed_cgroup.is_none() && c.mode == KillMode::Cgroup {
            report.mode = KillMode::Process.to_string();
        }
        report.also_killed = s.also + report.victims.len().saturating_sub(1) as u64;
        report.latency_us = first_ns.saturating_sub(v.ktime_ns) / 1000;
        // Of the latency: the wake-up through the ring buffer, and our work.
        let wakeup_us = received_ns.saturating_sub(v.ktime_ns) / 1000;
        let decide_us = first_ns.saturating_sub(received_ns) / 1000;
        info!(cgroup = %c.name, pid = report.pid, comm = %report.comm,
            footprint_bytes = report.footprint, stall_ms = v.stall_ns / 1_000_000,
            latency_us = report.latency_us, wakeup_us, decide_us,
            current = c.current, high = c.high,
            available = c.available,
            kill_mode = %report.mode,
            killed_cgroup = %report.killed_cgroup.as_deref().unwrap_or("-"),
            also_killed = report.also_killed, victims = %pid_list(&report.victims),
            batch = report.batch, stalled_task = %String::from_utf8_lossy(v.comm()),
            stalled_pid = v.worst_pid, "killed");
        let watched: Vec<u32> = s.victims.iter().map(|p| p.pid).collect();
        let spared =
            (v.worst_tgid != 0 && !report.victims.contains(&v.worst_tgid)).then_some(v.worst_tgid);
        self.ledger.killed(&c.key, watched, Instant::now(), spared);
        Outcome::Killed(Box::new(Killed {
            report,
            victims: s.victims,
            key: c.key.clone(),
            reset: v.cgroup_id,
            exit_timeout: self.policy.config.victim_exit_timeout,
        }))
    }

    fn still_exiting(&mut self, cgroup: &str, pid: u32, waited: Duration) {
        let state = self.procfs.state(pid);
        warn!(cgroup, pid, waited_ms = waited.as_millis() as u64, state = %state,
            "victim still exiting after the timeout: no longer waiting for it");
    }

    /// A victim exited, or the caller stopped waiting for it. When it was the
    /// last of its kill, the kill is judged: did it bring the scope back
    /// under its limit? If not, it was fruitless; if so, the next verdict
    /// there tells (see [`Ledger::verdict`]). Returns the breaker's trip,
    /// when it opens.
    pub fn victim_ended(&mut self, end: &VictimEnd) -> Option<LimitReport> {
        if !self.ledger.waiting_for(&end.key, end.pid) {
            return None;
        }
        let name = if end.key == Path::new(HOST_NAME) {
            HOST_NAME.to_owned()
        } else {
            self.hierarchy.display_path(&end.key)
        };
        if !end.exited {
            self.still_exiting(&name, end.pid, end.waited);
        }
        let done = self.ledger.ended(&end.key, end.pid)?;
        let (under, current, high) = if end.key == Path::new(HOST_NAME) {
            match self.host_memory() {
                Some((total, available, threshold)) => {
                    (available >= threshold, total - available, u64::MAX)
                }
                None => (false, 0, u64::MAX),
            }
        } else {
            match Hierarchy::memory(&end.key) {
                Ok(Memory { current, high, .. }) => (current <= high, current, high),
                // Gone with its victims: nothing stalls there any more.
                Err(_) => (true, 0, u64::MAX),
            }
        };
        if under {
            info!(cgroup = %name, victims = %pid_list(&done.victims), back_under_limit = true,
                current, high, "victims gone");
        } else {
            info!(cgroup = %name, victims = %pid_list(&done.victims), back_under_limit = false,
                fruitful = false, current, high, "kill outcome");
        }
        let trip = self.ledger.judge(&end.key, &done, under, Instant::now())?;
        Some(limit_reached(&name, trip))
    }
}

/// What [`Responder::signal`] did.
#[derive(Default)]
struct Signalled {
    victims: Vec<Victim>,
    pids: Vec<u32>,
    first_ns: Option<u64>,
    vanished: Option<u32>,
    failed: Option<u32>,
    killed_cgroup: Option<String>,
    also: u64,
}

fn limit_reached(cgroup: &str, t: Trip) -> LimitReport {
    let window_ms = t.window.as_millis() as u64;
    warn!(
        cgroup,
        fruitless_kills = t.fruitless_kills,
        window_ms,
        "kill limit reached: no more kills here until the window has passed"
    );
    LimitReport {
        cgroup: cgroup.to_owned(),
        fruitless_kills: t.fruitless_kills,
        window_ms,
    }
}

/// "101,102,103"
pub fn pid_list(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Why candidate `c` may not be killed, reading only what the rules need,
/// and its name. Its start time is read first and kept: the kill checks
/// that the pid still names this process.
fn judge(
    procfs: &mut ProcFs,
    policy: &Policy,
    guard_pid: u32,
    c: &Candidate,
    a: &mut Aux,
    cgroup: Option<&str>,
) -> decide::Judgement {
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

/// For the victims that come back from [`Responder::handle`]: waits until
/// the victim exits or `timeout` passes, without polling (the pidfd wakes
/// the event loop). The pidfd is closed when this returns.
pub async fn wait_exit(victim: Victim, key: PathBuf, timeout: Duration) -> VictimEnd {
    let pid = victim.pid;
    let started = Instant::now();
    // SAFETY: the pidfd belongs to `victim`, which the AsyncFd owns for its
    // whole life, so the registered fd stays open and unchanged until it is
    // deregistered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(victim, tokio::io::Interest::READABLE)
    };
    let exited = match registered.map_err(|e| e.into_parts().1) {
        Ok(fd) => tokio::time::timeout(timeout, fd.readable())
            .await
            .is_ok_and(|r| r.is_ok()),
        Err(e) => {
            debug!(pid, error = %e, "could not watch the victim's pidfd; not waiting for it");
            false
        }
    };
    VictimEnd {
        key,
        pid,
        exited,
        waited: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        fs,
        os::unix::process::ExitStatusExt,
        process::{Child, Command, Stdio},
    };

    /// A stand-in cgroup: the memory files the responder reads, and real
    /// children of this test as its members.
    struct Fixture {
        root: tempfile::TempDir,
        children: Vec<Child>,
        id: u64,
    }

    const MIB: u64 = 1 << 20;

    fn spawn(program: &str) -> Child {
        let child = Command::new(program)
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        past_exec(&child);
        child
    }

    /// Waits until the child runs its own program (before exec /proc shows a
    /// copy of this test), and past the loader's first pages.
    fn past_exec(child: &Child) {
        let me = fs::read_link("/proc/self/exe").expect("own exe");
        let start = Instant::now();
        while fs::read_link(format!("/proc/{}/exe", child.id())).is_ok_and(|e| e == me)
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(30));
    }

    /// `n` sleeping members; `current` and `high` in bytes. A sleep holds a
    /// few hundred KiB, so a stall set one byte over high is one any member
    /// can end.
    fn fixture(n: usize, current: u64, high: u64) -> Fixture {
        let root = tempfile::tempdir().expect("tempdir");
        let cg = root.path().join("seed");
        fs::create_dir(&cg).expect("mkdir");
        let children: Vec<Child> = (0..n).map(|_| spawn("sleep")).collect();
        let f = Fixture {
            id: Hierarchy::id_of(&cg).expect("id"),
            root,
            children,
        };
        f.members();
        f.memory(current, high);
        fs::write(cg.join("memory.max"), "max\n").expect("w");
        fs::write(cg.join("memory.stat"), "anon 1000\nfile 0\nshmem 0\n").expect("w");
        f
    }

    impl Fixture {
        fn dir(&self) -> PathBuf {
            self.root.path().join("seed")
        }

        fn memory(&self, current: u64, high: u64) {
            fs::write(self.dir().join("memory.current"), current.to_string()).expect("w");
            fs::write(self.dir().join("memory.high"), high.to_string()).expect("w");
        }

        /// cgroup.procs: the children still running.
        fn members(&self) {
            let list: String = self
                .children
                .iter()
                .map(|c| format!("{}\n", c.id()))
                .collect();
            fs::write(self.dir().join("cgroup.procs"), list).expect("procs");
        }

        fn verdict(&self) -> Verdict {
            Verdict {
                cgroup_id: self.id,
                ktime_ns: monotonic_ns(),
                stall_ns: 300_000_000,
                ..Verdict::default()
            }
        }

        /// Which children died of SIGKILL, by index. A signal sent is
        /// delivered at once, but the exit takes a moment: half a second is
        /// plenty for a sleeping process.
        fn killed(&mut self) -> Vec<usize> {
            let deadline = Instant::now() + Duration::from_millis(500);
            let mut ended = vec![None; self.children.len()];
            while Instant::now() < deadline && ended.iter().any(Option::is_none) {
                for (i, c) in self.children.iter_mut().enumerate() {
                    if ended[i].is_none()
                        && let Ok(Some(status)) = c.try_wait()
                    {
                        ended[i] = Some(status.signal());
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (0..ended.len())
                .filter(|&i| ended[i] == Some(Some(libc::SIGKILL)))
                .collect()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            for c in &mut self.children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn responder(f: &Fixture, extra: &str) -> Responder {
        let policy = Policy {
            config: crate::config::Config::parse(
                &format!("{extra}\n[[scope]]\npaths = [\"/**\"]\n"),
                "<test>",
            )
            .expect("valid"),
        };
        let watched = HashMap::from([(f.id, f.dir())]);
        Responder::new(policy, Hierarchy::new(f.root.path()), "/proc", watched)
    }

    fn killed(o: Outcome) -> Box<Killed> {
        match o {
            Outcome::Killed(k) => k,
            other => panic!("expected a kill, got {other:?}"),
        }
    }

    fn ended(k: &Killed, exited: bool) -> Vec<VictimEnd> {
        k.victims
            .iter()
            .map(|v| VictimEnd {
                key: k.key.clone(),
                pid: v.pid,
                exited,
                waited: Duration::ZERO,
            })
            .collect()
    }

    #[test]
    fn a_confirmed_stall_kills_the_member_process() {
        let mut f = fixture(1, 64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, "");
        let k = killed(r.handle(&f.verdict()));
        assert_eq!(k.report.pid, f.children[0].id());
        assert_eq!(k.report.victims, [f.children[0].id()]);
        assert_eq!(k.report.batch, 1);
        assert_eq!(k.reset, f.id);
        assert_eq!(f.killed(), [0]);
        // The victim has exited: the next verdict may act again, and with
        // nothing left to kill it kills nothing.
        for end in ended(&k, true) {
            assert_eq!(r.victim_ended(&end), None);
        }
        fs::write(f.dir().join("cgroup.procs"), "").expect("w");
        assert!(matches!(r.handle(&f.verdict()), Outcome::Unresolved(_)));
    }

    #[test]
    fn dry_run_decides_but_kills_nothing() {
        let mut f = fixture(1, 64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, "dry_run = true");
        match r.handle(&f.verdict()) {
            Outcome::DryRun(report) => {
                assert_eq!(report.pid, f.children[0].id());
                assert!(report.dry_run);
                assert_eq!(report.memory_high, 64 * MIB);
            }
            o => panic!("{o:?}"),
        }
        assert!(f.killed().is_empty());
    }

    #[test]
    fn a_cgroup_back_under_memory_high_is_not_acted_on() {
        let mut f = fixture(1, 60 * MIB, 64 * MIB);
        let mut r = responder(&f, "");
        assert!(matches!(r.handle(&f.verdict()), Outcome::NotConfirmed));
        assert!(f.killed().is_empty());
    }

    #[test]
    fn verdicts_for_unknown_or_vanished_cgroups_are_dropped() {
        let mut f = fixture(1, 64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, "");
        let mut v = f.verdict();
        v.cgroup_id += 1;
        assert!(matches!(r.handle(&v), Outcome::UnknownCgroup));
        fs::remove_dir_all(f.dir()).expect("rm");
        assert!(matches!(r.handle(&f.verdict()), Outcome::CgroupGone));
        assert!(f.killed().is_empty());
    }

    #[test]
    fn a_member_that_exits_first_is_not_mistaken_for_a_victim() {
        let mut f = fixture(1, 64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, "");
        f.children[0].kill().expect("kill");
        f.children[0].wait().expect("reap");
        // Its pid is still listed (a stale read): it must be skipped, and
        // nothing else killed.
        assert!(matches!(r.handle(&f.verdict()), Outcome::Unresolved(_)));
    }

    #[test]
    fn a_name_that_is_not_utf8_does_not_hide_the_hog() {
        // A process may name itself with any bytes (prctl, or its own comm
        // file): this shell does, then waits on its stdin.
        let child = Command::new("sh")
            .args(["-c", "printf 'h\\377\\376g' > /proc/$$/comm && read x"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let start = Instant::now();
        while !fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c == b"h\xff\xfeg\n") {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the shell never renamed itself"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut f = fixture(0, 64 * MIB + 1, 64 * MIB);
        f.children.push(child);
        f.members();
        let mut r = responder(&f, "");
        let k = killed(r.handle(&f.verdict()));
        assert_eq!(k.report.pid, pid);
        assert_eq!(k.report.comm, "h\u{FFFD}\u{FFFD}g");
        assert_eq!(f.killed(), [0]);
    }

    #[test]
    fn a_protected_executable_is_spared_but_a_copy_of_it_is_not() {
        let sleep = fs::canonicalize("/usr/bin/sleep").expect("sleep");
        let policy = format!("[protect]\nexe = [\"{}\"]", sleep.display());
        // The real one: protected, so nothing is killed, and the log names it.
        let mut f = fixture(1, 64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, &policy);
        match r.handle(&f.verdict()) {
            Outcome::Unresolved(Some(u)) => {
                assert_eq!(u.holder_pid, Some(f.children[0].id()));
                assert!(u.reason.contains("protect.exe"), "{}", u.reason);
            }
            other => panic!("expected unresolved, got {other:?}"),
        }
        assert!(f.killed().is_empty());
        // The same program copied elsewhere, whatever its name.
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("sleep");
        fs::copy(&sleep, &copy).expect("copy");
        let mut f = fixture(0, 64 * MIB + 1, 64 * MIB);
        f.children.push(spawn(copy.to_str().expect("utf-8 path")));
        f.members();
        let mut r = responder(&f, &policy);
        killed(r.handle(&f.verdict()));
        assert_eq!(f.killed(), [0]);
    }

    #[test]
    fn the_same_path_from_another_mount_namespace_is_not_trusted() {
        // A process in its own mount namespace with a copy mounted over the
        // protected path: its exe reads as that path, but is another file.
        let sleep = fs::canonicalize("/usr/bin/sleep").expect("sleep");
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("fake");
        fs::copy(&sleep, &copy).expect("copy");
        let script = format!(
            "mount --bind {} {} && exec {} 30",
            copy.display(),
            sleep.display(),
            sleep.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("SKIPPED: unshare(1) is not installed");
            return;
        };
        let mut f = fixture(0, 64 * MIB + 1, 64 * MIB);
        f.children.push(child);
        // Until the exec, the process is a shell (or unshare): wait for it.
        let start = Instant::now();
        let pid = f.children[0].id();
        while !fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c == b"sleep\n") {
            if start.elapsed() > Duration::from_secs(5)
                || f.children[0].try_wait().is_ok_and(|s| s.is_some())
            {
                eprintln!("SKIPPED: could not mount in a new namespace (not root?)");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let link = fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
        assert_eq!(link, sleep, "the exe reads as the protected path");
        f.members();
        let mut r = responder(&f, &format!("[protect]\nexe = [\"{}\"]", sleep.display()));
        killed(r.handle(&f.verdict()));
        assert_eq!(f.killed(), [0]);
    }

    #[test]
    fn a_victim_still_exiting_holds_the_next_decision_until_the_timeout() {
        let mut f = fixture(2, 64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, "victim_exit_timeout_ms = 300");
        let first = killed(r.handle(&f.verdict()));
        // Its exit is not reported (stuck in uninterruptible sleep, say).
        let held = r.handle(&f.verdict());
        assert!(
            matches!(held, Outcome::VictimStillExiting(pid) if pid == first.report.pid),
            "{held:?}"
        );
        std::thread::sleep(Duration::from_millis(350));
        let second = killed(r.handle(&f.verdict()));
        assert_ne!(second.report.pid, first.report.pid);
        assert_eq!(f.killed().len(), 2);
    }

    #[test]
    fn kills_that_leave_the_cgroup_over_its_limit_stop_at_the_limit() {
        // A policy mistake: memory.current never comes down (say, the
        // memory is tmpfs), so every kill is fruitless.
        let mut f = fixture(5, 64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, "max_fruitless_kills = 3\nkill_window_ms = 60000");
        let mut limits = Vec::new();
        for _ in 0..3 {
            let k = killed(r.handle(&f.verdict()));
            for end in ended(&k, true) {
                limits.extend(r.victim_ended(&end));
            }
        }
        assert_eq!(limits.len(), 1, "{limits:?}");
        assert_eq!(limits[0].fruitless_kills, 3);
        assert_eq!(limits[0].cgroup, "/seed");
        assert!(matches!(r.handle(&f.verdict()), Outcome::KillLimited));
        assert_eq!(f.killed().len(), 3, "two members live on");
    }

    #[test]
    fn kills_that_spare_the_grower_stop_at_the_limit_though_each_relieves_for_a_moment() {
        // A policy mistake steers guard away from the task the kernel sees
        // stall (here a pid outside the table, as an avoided or protected
        // hog would be): each kill brings the cgroup under its limit until
        // the grower fills it again, and the next verdict names it again.
        let mut f = fixture(5, 64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, "max_fruitless_kills = 3");
        let mut v = f.verdict();
        v.worst_tgid = 4_000_000;
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            f.memory(64 * MIB + 1, 64 * MIB);
            match r.handle(&v) {
                Outcome::Killed(k) => {
                    f.memory(60 * MIB, 64 * MIB);
                    for end in ended(&k, true) {
                        assert_eq!(r.victim_ended(&end), None, "judged by the next verdict");
                    }
                    outcomes.push("killed".to_owned());
                }
                Outcome::LimitReached(l) => {
                    assert_eq!(l.fruitless_kills, 3);
                    outcomes.push("limit".to_owned());
                }
                other => outcomes.push(format!("{other:?}")),
            }
        }
        assert_eq!(outcomes, ["killed", "killed", "killed", "limit"]);
        assert!(matches!(r.handle(&v), Outcome::KillLimited));
        assert_eq!(f.killed().len(), 3, "two members live on");
    }

    #[test]
    fn kills_that_end_the_stall_never_trip_the_limit() {
        let mut f = fixture(5, 64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, "max_fruitless_kills = 2");
        for _ in 0..5 {
            f.memory(64 * MIB + 1, 64 * MIB);
            let k = killed(r.handle(&f.verdict()));
            // Back under memory.high once the victim is gone.
            f.memory(10 * MIB, 64 * MIB);
            for end in ended(&k, true) {
                assert_eq!(r.victim_ended(&end), None);
            }
        }
        assert_eq!(f.killed().len(), 5);
        assert_eq!(
            r.books().0,
            1,
            "one entry for the cgroup (its last kill, until a verdict judges it), not one per kill"
        );
    }

    #[test]
    fn a_removed_cgroup_takes_its_books_with_it() {
        let mut f = fixture(1, 64 * MIB + 1, 64 * MIB);
        let mut r = responder(&f, "");
        let k = killed(r.handle(&f.verdict()));
        assert_eq!(r.books().0, 1);
        assert!(r.forget(f.id));
        assert_eq!(r.books(), (0, 0));
        // Its victim's exit, reported later, is simply ignored.
        for end in ended(&k, true) {
            assert_eq!(r.victim_ended(&end), None);
        }
        assert_eq!(f.killed(), [0]);
    }

    #[test]
    fn a_grower_holding_most_of_the_memory_is_decided_from_its_own_files() {
        // Twenty members; the kernel saw the last one stall, and it holds
        // more than half of what the cgroup is charged.
        let f = fixture(20, 0, 0);
        let worst = f.children[19].id();
        let anon = crate::procfs::ProcFs::new("/proc")
            .statm(worst)
            .expect("statm")
            .anon()
            * rustix::param::page_size() as u64;
        f.memory(anon + 1, anon);
        let mut r = responder(&f, "dry_run = true");
        let mut v = f.verdict();
        v.worst_tgid = worst;
        let before = r.proc_reads();
        match r.handle(&v) {
            Outcome::DryRun(report) => assert_eq!(report.victims, [worst]),
            other => panic!("{other:?}"),
        }
        let read = r.proc_reads() - before;
        assert!(read < 10, "{read} files read for one process's decision");
        // Not the grower (the kernel named no task): every member is read.
        let before = r.proc_reads();
        f.memory(anon + 2, anon);
        assert!(matches!(r.handle(&f.verdict()), Outcome::DryRun(_)));
        assert!(r.proc_reads() - before >= 20);
    }

    #[test]
    fn a_protected_grower_holding_most_of_the_memory_is_named_not_killed() {
        let sleep = fs::canonicalize("/usr/bin/sleep").expect("sleep");
        let mut f = fixture(1, 0, 0);
        let worst = f.children[0].id();
        let anon = crate::procfs::ProcFs::new("/proc")
            .statm(worst)
            .expect("statm")
            .anon()
            * rustix::param::page_size() as u64;
        f.memory(anon + 1, anon);
        let mut r = responder(&f, &format!("[protect]\nexe = [\"{}\"]", sleep.display()));
        let mut v = f.verdict();
        v.worst_tgid = worst;
        match r.handle(&v) {
            Outcome::Unresolved(Some(u)) => assert_eq!(u.holder_pid, Some(worst)),
            other => panic!("{other:?}"),
        }
        assert!(f.killed().is_empty());
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
        let child = spawn("sleep");
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

    /// The kernel saw `worst` stall most (the allocating task). This test
    /// process, protected as the guard, holds more than a `sleep`: without
    /// knowing who grows, the largest holder being protected would leave
    /// the stall unresolved.
    fn host_verdict(worst: &Child) -> Verdict {
        Verdict {
            cgroup_id: guard_common::HOST_ID,
            ktime_ns: monotonic_ns(),
            stall_ns: 300_000_000,
            worst_pid: worst.id(),
            worst_tgid: worst.id(),
            ..Verdict::default()
        }
    }

    fn alive(child: &mut Child) -> bool {
        matches!(child.try_wait(), Ok(None))
    }

    #[test]
    fn a_host_short_of_memory_loses_its_largest_unprotected_process() {
        // 1 GiB total; 5% is about 52428 KiB, so 52428 KiB available is a
        // shortfall a sleeping child holds a share of. This process is
        // protected as the guard itself, so the child is the one to go.
        let (root, mut child) = host_fixture(52_428);
        let mut r = host_responder(root.path(), HostMode::Kill, false);
        let k = killed(r.handle(&host_verdict(&child)));
        assert_eq!(k.report.pid, child.id());
        assert_eq!(k.report.cgroup, HOST_NAME);
        assert!(!k.report.dry_run);
        assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
        // Judged against MemAvailable once it has exited: still short.
        let end = &ended(&k, true)[0];
        assert_eq!(r.victim_ended(end), None);
    }

    #[test]
    fn the_host_scope_confirms_watches_and_protects() {
        // Plenty available: not confirmed, nothing killed.
        let (root, mut child) = host_fixture(500_000);
        let mut r = host_responder(root.path(), HostMode::Kill, false);
        assert!(matches!(
            r.handle(&host_verdict(&child)),
            Outcome::NotConfirmed
        ));
        assert!(alive(&mut child));
        let _ = child.kill();

        // Short, but only watched: would kill, kills nothing.
        let (root, mut child) = host_fixture(52_428);
        let mut r = host_responder(root.path(), HostMode::Watch, false);
        match r.handle(&host_verdict(&child)) {
            Outcome::DryRun(report) => {
                assert_eq!(report.pid, child.id());
                assert!(report.dry_run);
            }
            o => panic!("{o:?}"),
        }
        assert!(alive(&mut child));
        let _ = child.kill();

        // Short, and the only candidate is protected: unresolved.
        let (root, mut child) = host_fixture(52_428);
        let mut r = host_responder(root.path(), HostMode::Kill, true);
        assert!(matches!(
            r.handle(&host_verdict(&child)),
            Outcome::Unresolved(Some(_))
        ));
        assert!(alive(&mut child));
        let _ = child.kill();
    }
}
