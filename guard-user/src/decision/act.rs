//! Acting on a decision: the kill (or the dry run, or the unresolved
//! report), and the books when its victims are gone.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use guard_common::Verdict;
use tracing::{debug, info, warn};

use super::{
    Confirmed, Killed, MAX_WATCHED, Outcome, Responder, VictimEnd,
    kill::{KillError, Victim},
    ledger::Trip,
    pid_list,
    rules::{Pick, Unresolved},
};
use crate::{
    cgroup::{Hierarchy, Memory},
    clock::monotonic_ns,
    config::KillMode,
    events::{HOST_NAME, KillReport, LimitReport, UnresolvedReport},
    owner::Owner,
};

impl Responder {
    pub(super) fn unresolved(&mut self, c: &Confirmed, v: &Verdict, u: Unresolved) -> Outcome {
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

    pub(super) fn report(&self, c: &Confirmed, v: &Verdict, picks: &[Pick]) -> KillReport {
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

    pub(super) fn dry_run(&mut self, c: &Confirmed, v: &Verdict, picks: &[Pick]) -> Outcome {
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
    pub(super) fn signal(&mut self, c: &Confirmed, picks: &[Pick]) -> Signalled {
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

    pub(super) fn kill(
        &mut self,
        c: &Confirmed,
        v: &Verdict,
        picks: &[Pick],
        received_ns: u64,
    ) -> Outcome {
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
        // Read after the signal, off the kill path: a killed process stays
        // readable until its parent reaps it.
        let first = picks.first().and_then(|p| p.members.first()).copied();
        report.owner = first.and_then(|i| self.owner(i));
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
            stalled_pid = v.worst_pid,
            uid = report.owner.as_ref().map(|o| o.uid),
            user = report.owner.as_ref().and_then(|o| o.user.as_deref()),
            unit = report.owner.as_ref().and_then(|o| o.unit.as_deref()),
            "killed");
        let watched: Vec<u32> = s.victims.iter().map(|p| p.pid).collect();
        // When the kill did not take the task the kernel saw stall most, the
        // next verdict tells whether it ended the stall: not if it names a
        // task this kill left alive.
        let spared: Vec<u32> = if v.worst_tgid != 0 && !report.victims.contains(&v.worst_tgid) {
            let pids = &self.scratch.pids;
            pids.iter()
                .map(|&(pid, _)| pid)
                .filter(|pid| !report.victims.contains(pid))
                // Listed or not (it may sit outside the table, as a task
                // guard may not read would): the stalled task was spared.
                .chain([v.worst_tgid])
                .collect()
        } else {
            Vec::new()
        };
        self.ledger.killed(&c.key, watched, Instant::now(), spared);
        Outcome::Killed(Box::new(Killed {
            report,
            victims: s.victims,
            key: c.key.clone(),
            reset: v.cgroup_id,
            exit_timeout: self.policy.config.victim_exit_timeout,
        }))
    }

    /// Whose candidate `i` is: its real uid (already read, or from its
    /// status), user name and systemd unit. None when it is gone.
    fn owner(&mut self, i: usize) -> Option<Owner> {
        let pid = self.scratch.cands.get(i)?.pid;
        let a = *self.scratch.aux.get(i)?;
        let uid = match a.uid {
            Some(uid) => uid,
            None => self.procfs.status(pid, a.via_thread).ok()?.uid,
        };
        let cgroup = match self.scratch.leaf_names.get(a.leaf as usize) {
            Some(name) => Some(name.clone()),
            None => self.procfs.cgroup(pid).ok(),
        };
        Some(Owner::here(uid, cgroup.as_deref()))
    }

    pub(super) fn still_exiting(&mut self, cgroup: &str, pid: u32, waited: Duration) {
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
pub(super) struct Signalled {
    victims: Vec<Victim>,
    pids: Vec<u32>,
    first_ns: Option<u64>,
    vanished: Option<u32>,
    failed: Option<u32>,
    killed_cgroup: Option<String>,
    also: u64,
}

pub(super) fn limit_reached(cgroup: &str, t: Trip) -> LimitReport {
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
