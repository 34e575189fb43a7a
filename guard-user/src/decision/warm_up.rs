//! Paging in the kill path before the first verdict needs it.

use std::path::PathBuf;

use super::{Aux, Confirmed, Responder, Scratch, kill::Victim, rules::Candidate};
use crate::{cgroup::Hierarchy, config::KillMode, procfs::Comm};

impl Responder {
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
}
