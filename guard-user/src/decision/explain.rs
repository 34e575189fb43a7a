//! `guard explain`: why guard would or would not kill a process, or what it
//! would do about a cgroup, read the way a verdict there reads it (the same
//! scope lookup, the same table of processes, the same protection rules and
//! the same decision), killing nothing.

use std::{
    cmp::Reverse,
    fmt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{Aux, Confirmed, Responder, judge::judge, rules::Decision};
use crate::{cgroup::Hierarchy, config::KillMode, policy::Protection};

/// What guard would do, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// The process asked about, if it was a process.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Its cgroup, or the cgroup asked about ("/seed.slice/hog.scope").
    pub cgroup: String,
    /// The nearest cgroup at or above with a finite memory.high: where a
    /// memory.high stall would be confirmed. None: nothing there has one.
    pub limited: Option<Limited>,
    /// The policy's scope for that cgroup; None: guard leaves it alone.
    pub scope: Option<ScopeInfo>,
    /// Why the process may not be killed ("protected: ..."); None when it
    /// may (or when a cgroup was asked about).
    pub protected: Option<String>,
    /// What killing the process gives back, bytes.
    pub footprint_bytes: Option<u64>,
    /// Its place in the victim order of the limited cgroup (1: first) and
    /// how many processes that order holds.
    pub place: Option<(usize, usize)>,
    /// What a verdict for the limited cgroup would do now.
    pub verdict_now: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Limited {
    pub cgroup: String,
    pub memory_current: u64,
    pub memory_high: u64,
    /// `u64::MAX`: no memory.max.
    pub memory_max: u64,
}

/// The processes of a cgroup subtree as guard judges them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Processes holding memory (kernel threads and zombies left out).
    pub processes: usize,
    /// Those the policy or the fixed rules protect.
    pub protected: usize,
    /// Those whose protection could not be read (another user's, when not
    /// root): guard may not kill them either, but whether a rule protects
    /// them is not known.
    pub unreadable: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScopeInfo {
    pub paths: Vec<String>,
    pub budget_ms: u64,
    pub window_ms: u64,
    pub kill: String,
}

impl Responder {
    /// Explains a process (`pid`), in its own cgroup or in `dir` when
    /// given, or a cgroup directory (`dir`).
    pub fn explain(&mut self, pid: Option<u32>, dir: Option<&Path>) -> Result<Explanation, String> {
        let comm = pid.and_then(|p| self.procfs.stat(p).ok().map(|s| s.comm.to_string()));
        let dir = match (pid, dir) {
            (_, Some(dir)) => dir.to_owned(),
            (Some(pid), None) => {
                let rel = self
                    .procfs
                    .cgroup(pid)
                    .map_err(|e| format!("process {pid}: {e}"))?;
                self.hierarchy.root().join(rel.trim_start_matches('/'))
            }
            (None, None) => return Err("nothing to explain".to_owned()),
        };
        if !dir.is_dir() {
            return Err(format!("{} is not a cgroup", dir.display()));
        }
        let mut out = Explanation {
            pid,
            comm,
            cgroup: self.hierarchy.display_path(&dir),
            limited: None,
            scope: None,
            protected: None,
            footprint_bytes: None,
            place: None,
            verdict_now: String::new(),
        };
        let Some((limited, mem)) = self.limited(&dir) else {
            out.verdict_now = "none: no cgroup at or above it has a memory.high, so it cannot \
                               stall on one"
                .to_owned();
            return Ok(out);
        };
        let name = self.hierarchy.display_path(&limited);
        out.limited = Some(Limited {
            cgroup: name.clone(),
            memory_current: mem.current,
            memory_high: mem.high,
            memory_max: mem.max,
        });
        let Some(scope) = self.policy.config.scope_for(&name) else {
            out.verdict_now = format!("none: {name} is in no scope of the policy");
            return Ok(out);
        };
        out.scope = Some(ScopeInfo {
            paths: scope.paths.clone(),
            budget_ms: scope.budget.as_millis() as u64,
            window_ms: scope.window.as_millis() as u64,
            kill: scope.kill.to_string(),
        });
        let c = Confirmed {
            key: limited.clone(),
            name: name.clone(),
            dir: Some(limited),
            // Under memory.high now: the decision as it would be just over.
            overage: mem.overage().max(1),
            current: mem.current,
            high: mem.high,
            available: None,
            mode: scope.kill,
            kill_watched: scope.kill_watched_cgroup,
            dry_run: true,
        };
        self.gather(&c);
        if let Some(pid) = pid {
            self.explain_process(pid, &mut out);
        }
        let shmem = Hierarchy::memory_stat(&dir).map_or(0, |s| s.shmem);
        let decision = self.decide(&c, 0, shmem);
        let what = match decision {
            Decision::Kill(picks) => {
                let victims: Vec<String> = picks
                    .iter()
                    .flat_map(|p| p.members.iter())
                    .map(|&i| {
                        let cand = &self.scratch.cands[i];
                        let mib = cand.footprint.unwrap_or(0) as f64 / f64::from(1 << 20);
                        format!("{} (pid {}, {mib:.1} MiB)", self.name(i), cand.pid)
                    })
                    .collect();
                format!("kill {}", victims.join(", "))
            }
            Decision::Unresolved(u) => format!("kill nothing: {u}"),
        };
        out.verdict_now = if mem.current > mem.high {
            format!("{name} is over memory.high now; a verdict would {what}")
        } else {
            format!(
                "{name} is under memory.high now, so a verdict would not be confirmed; just \
                 over it, a verdict would {what}"
            )
        };
        Ok(out)
    }

    /// The process's protection, footprint and place in the table just
    /// gathered.
    fn explain_process(&mut self, pid: u32, out: &mut Explanation) {
        let cands = &self.scratch.cands;
        let mut order: Vec<usize> = (0..cands.len()).collect();
        order.sort_by_key(|&i| (Reverse(cands[i].rank), Reverse(cands[i].footprint)));
        out.place = order
            .iter()
            .position(|&i| cands[i].pid == pid)
            .map(|at| (at + 1, order.len()));
        let Some(i) = cands.iter().position(|c| c.pid == pid) else {
            out.protected = Some("not in the cgroup's table (gone, or a thread)".to_owned());
            return;
        };
        out.footprint_bytes = cands[i].footprint;
        out.protected = self.judge_gathered(i).map(|w| w.to_string());
    }

    /// How many processes holding memory the subtree of `dir` has, and
    /// how many of those guard may not kill, judged as a verdict there
    /// would judge them (same table, same rules). None when its memory
    /// files cannot be read.
    pub fn census(&mut self, dir: &Path) -> Option<Census> {
        let name = self.hierarchy.display_path(dir);
        let mem = Hierarchy::memory(dir).ok()?;
        let (mode, kill_watched) = self
            .policy
            .config
            .scope_for(&name)
            .map_or((KillMode::Process, false), |s| {
                (s.kill, s.kill_watched_cgroup)
            });
        let c = Confirmed {
            key: dir.to_owned(),
            name,
            dir: Some(dir.to_owned()),
            overage: mem.overage().max(1),
            current: mem.current,
            high: mem.high,
            available: None,
            mode,
            kill_watched,
            dry_run: true,
        };
        self.gather(&c);
        let mut out = Census::default();
        for i in 0..self.scratch.cands.len() {
            out.processes += 1;
            match self.judge_gathered(i) {
                None => {}
                Some(Protection::Unreadable(_)) => out.unreadable += 1,
                Some(_) => out.protected += 1,
            }
        }
        Some(out)
    }

    /// The protection rules' verdict on the `i`th process of the table the
    /// last `gather` built, as a decision would judge it.
    fn judge_gathered(&mut self, i: usize) -> Option<Protection> {
        let cand = self.scratch.cands[i];
        let mut aux: Aux = self.scratch.aux[i];
        let leaf = self.scratch.leaf_names.get(aux.leaf as usize).cloned();
        judge(
            &mut self.procfs,
            &self.policy,
            self.guard_pid,
            &cand,
            &mut aux,
            leaf.as_deref(),
        )
        .0
    }

    /// The nearest cgroup from `dir` up whose memory.high is finite.
    fn limited(&self, dir: &Path) -> Option<(PathBuf, crate::cgroup::Memory)> {
        self.hierarchy.nearest_limited(dir, |m| m.high != u64::MAX)
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        match (self.pid, &self.comm) {
            (Some(pid), Some(comm)) => writeln!(f, "{comm} (pid {pid}) in {}", self.cgroup)?,
            (Some(pid), None) => writeln!(f, "pid {pid} in {}", self.cgroup)?,
            _ => writeln!(f, "cgroup {}", self.cgroup)?,
        }
        match &self.limited {
            Some(l) => {
                let max = if l.memory_max == u64::MAX {
                    "max".to_owned()
                } else {
                    format!("{:.1} MiB", mib(l.memory_max))
                };
                writeln!(
                    f,
                    "  limited by {}: memory.high {:.1} MiB, memory.max {max}, memory.current {:.1} MiB",
                    l.cgroup,
                    mib(l.memory_high),
                    mib(l.memory_current)
                )?;
            }
            None => writeln!(f, "  no memory.high at or above it")?,
        }
        if let Some(s) = &self.scope {
            writeln!(
                f,
                "  scope {:?}: budget {} ms in {} ms, kill {}",
                s.paths, s.budget_ms, s.window_ms, s.kill
            )?;
        }
        if self.pid.is_some() && self.scope.is_some() {
            match &self.protected {
                Some(why) => writeln!(f, "  may not be killed: {why}")?,
                None => writeln!(f, "  may be killed")?,
            }
            if let Some(b) = self.footprint_bytes {
                write!(f, "  footprint {:.1} MiB", mib(b))?;
                match self.place {
                    Some((at, of)) => writeln!(f, ", {at} of {of} in the victim order")?,
                    None => writeln!(f)?,
                }
            }
        }
        writeln!(f, "  a verdict now: {}", self.verdict_now)
    }
}
