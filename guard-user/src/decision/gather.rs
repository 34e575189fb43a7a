//! Reading the stalled processes into the decision's table, and running
//! the decision on it.

use tracing::{debug, warn};

use super::{
    ALONE, Aux, Confirmed, MAX_CANDIDATES, Responder, SHARED_SUSPECT, Scratch,
    judge::judge,
    rules::{self, Candidate, Decision, Stall},
};
use crate::{
    cgroup::Hierarchy,
    config::KillMode,
    procfs::{Comm, ProcError},
};

impl Responder {
    /// The common case, decided without reading every process: the task
    /// the kernel saw stall most (the one charging) holds more than half of
    /// the cgroup's memory, so no other process can hold more, and by
    /// itself covers the overage. The full decision would take it too when
    /// it may be killed and no prefer/avoid rule reorders; anything else
    /// (it may not be killed, a group kill mode, swap in use, where names
    /// matter) goes the full way.
    pub(super) fn grower_alone(&mut self, c: &Confirmed, worst: u32) -> Option<Decision> {
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
    pub(super) fn gather(&mut self, c: &Confirmed) {
        // Without swap, and without much shared memory, statm tells what a
        // kill gives back; otherwise the full status does.
        let swap = self.swap_on();
        if !self.list(c) {
            return;
        }
        for k in 0..self.scratch.pids.len() {
            let (pid, leaf) = self.scratch.pids[k];
            if let Some((cand, a)) = self.candidate(c, pid, leaf, swap) {
                self.scratch.cands.push(cand);
                self.scratch.aux.push(a);
            }
        }
    }

    /// Lists the processes of the confirmed scope (its cgroup subtree, or
    /// every process for the host) and empties the table; false when they
    /// cannot be listed.
    fn list(&mut self, c: &Confirmed) -> bool {
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
                    return false;
                }
                leaf_names.extend(leaves.iter().map(|l| self.hierarchy.display_path(l)));
            }
            None => {
                leaves.clear();
                let mut all = Vec::new();
                if let Err(e) = self.procfs.pids(MAX_CANDIDATES, &mut all) {
                    warn!(error = %e, "listing the host's processes failed");
                    return false;
                }
                pids.clear();
                pids.extend(all.into_iter().map(|p| (p, u32::MAX)));
            }
        }
        true
    }

    /// One process as the decision sees it; None when it is gone, or holds
    /// nothing to give back (a kernel thread, a zombie: no victim, and no
    /// holder either). A process whose memory cannot be read is a row
    /// without footprint, which the decision counts as one it may not kill.
    fn candidate(
        &mut self,
        c: &Confirmed,
        pid: u32,
        leaf: u32,
        swap: bool,
    ) -> Option<(Candidate, Aux)> {
        let alone = Aux {
            leaf,
            ..Aux::default()
        };
        let page = rustix::param::page_size() as u64;
        let quick = match self.procfs.statm(pid) {
            Ok(q) if q.size > 0 && !swap && q.shared * page < SHARED_SUSPECT => Some(q),
            Ok(_) => None,
            Err(ProcError::Gone(_)) => return None,
            Err(e) => {
                debug!(pid, error = %e, "a process whose memory cannot be read");
                let unreadable = Candidate {
                    pid,
                    comm: Comm::from("?"),
                    footprint: None,
                    unit: ALONE | pid,
                    rank: 0,
                };
                return Some((unreadable, alone));
            }
        };
        let (mut comm, footprint, a) = match quick {
            Some(q) => (Comm::default(), Some(q.anon() * page), alone),
            None => self.read_in_full(pid, leaf)?,
        };
        if footprint == Some(0) {
            return None;
        }
        if self.policy.ranks_by_name() && comm.is_empty() {
            comm = self.procfs.comm(pid).unwrap_or_default();
        }
        let cand = Candidate {
            pid,
            comm,
            footprint,
            unit: self.unit(c, pid, leaf),
            rank: self.policy.rank(&comm),
        };
        Some((cand, a))
    }

    /// Name, footprint and facts from the process's full status; None when
    /// it is gone.
    fn read_in_full(&mut self, pid: u32, leaf: u32) -> Option<(Comm, Option<u64>, Aux)> {
        match self.procfs.process(pid) {
            Ok(p) => Some((
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
            )),
            Err(ProcError::Gone(_)) => None,
            Err(e) => {
                debug!(pid, error = %e, "a process whose memory cannot be read");
                let alone = Aux {
                    leaf,
                    ..Aux::default()
                };
                Some((Comm::from("?"), None, alone))
            }
        }
    }

    /// What dies with the process in the scope's kill mode: itself, its
    /// process group, or its leaf cgroup (never the watched cgroup itself
    /// unless the scope allows it).
    fn unit(&mut self, c: &Confirmed, pid: u32, leaf: u32) -> u32 {
        match c.mode {
            KillMode::Process => pid,
            KillMode::ProcessGroup => match self.procfs.stat(pid) {
                Ok(s) => s.pgrp,
                Err(_) => ALONE | pid,
            },
            KillMode::Cgroup => {
                let own = c.dir.as_ref() == self.scratch.leaves.get(leaf as usize);
                if own && !c.kill_watched {
                    ALONE | pid
                } else {
                    leaf
                }
            }
        }
    }

    /// Runs the decision on the scratch table.
    pub(super) fn decide(
        &mut self,
        c: &Confirmed,
        worst_tgid: u32,
        unowned_shmem: u64,
    ) -> Decision {
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
        rules::decide(&stall, cands, grouped, |i| {
            let cgroup = leaf_names.get(aux[i].leaf as usize).map(String::as_str);
            judge(procfs, policy, guard, &cands[i], &mut aux[i], cgroup)
        })
    }

    /// Candidate `i`'s name: from its table row, or as its judge read it.
    pub(super) fn name(&self, i: usize) -> Comm {
        match self.scratch.cands[i].comm {
            c if c.is_empty() => self.scratch.aux[i].comm,
            c => c,
        }
    }
}
