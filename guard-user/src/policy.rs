//! Who may be killed, and who should be: the embedded default policy and
//! victim choice. Plain data in, plain data out.

use std::{fmt, time::Duration};

use crate::{cgroup::MemoryStat, config::Config, procfs::ProcessInfo};

/// The policy in force: the policy file (or the embedded default) as
/// checked by `config`, applied to plain process data.
#[derive(Clone, Debug)]
pub struct Policy {
    pub config: Config,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            config: Config::default_policy(),
        }
    }
}

/// Why a process is never a victim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protection {
    Init,
    KernelThread,
    Guard,
    OomScoreAdjMin,
    /// A rule of the policy file's `[protect]` table.
    Rule(String),
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Init => f.write_str("PID 1"),
            Self::KernelThread => f.write_str("kernel thread"),
            Self::Guard => f.write_str("the guard itself"),
            Self::OomScoreAdjMin => f.write_str("oom_score_adj -1000"),
            Self::Rule(why) => write!(f, "protected: {why}"),
        }
    }
}

impl Policy {
    pub fn dry_run(&self) -> bool {
        self.config.dry_run
    }

    /// Budget and window of the first scope: what the kernel applies to
    /// cgroups user space has not listed with their own.
    pub fn default_limits(&self) -> (Duration, Duration) {
        self.config
            .scopes
            .first()
            .map(|s| (s.budget, s.window))
            .unwrap_or((Duration::from_millis(250), Duration::from_secs(1)))
    }

    pub fn protection(&self, p: &ProcessInfo, guard_pid: u32) -> Option<Protection> {
        if p.pid == 1 {
            Some(Protection::Init)
        } else if p.kernel_thread {
            Some(Protection::KernelThread)
        } else if p.pid == guard_pid {
            Some(Protection::Guard)
        } else if p.oom_score_adj <= -1000 {
            Some(Protection::OomScoreAdjMin)
        } else {
            self.config
                .protect
                .reason(&p.comm, &p.cmdline, &p.cgroup, p.uid)
                .map(Protection::Rule)
        }
    }

    /// Picks the victim among the processes of a stalled cgroup's subtree.
    ///
    /// `worst_tgid` is the thread group the kernel saw stall longest; it wins
    /// ties on footprint. `overage` is memory.current - memory.high.
    pub fn choose(
        &self,
        processes: &[ProcessInfo],
        worst_tgid: u32,
        overage: u64,
        stat: &MemoryStat,
        guard_pid: u32,
    ) -> Choice {
        let mut eligible: Vec<&ProcessInfo> = Vec::with_capacity(processes.len());
        let mut biggest_protected: Option<(&ProcessInfo, Protection)> = None;
        for p in processes {
            if let Some(why) = self.protection(p, guard_pid) {
                if biggest_protected
                    .as_ref()
                    .is_none_or(|(b, _)| p.footprint > b.footprint)
                {
                    biggest_protected = Some((p, why));
                }
                continue;
            }
            eligible.push(p);
        }
        let killable_total: u64 = eligible.iter().map(|p| p.footprint).sum();
        // Victim order: preferred names first, avoided last; within a rank
        // the largest footprint; ties to the task the kernel saw stall.
        eligible.sort_by_key(|p| {
            (
                std::cmp::Reverse(self.config.order.rank(&p.comm)),
                std::cmp::Reverse(p.footprint),
                p.pid != worst_tgid,
            )
        });
        let min_share = self.config.min_share_percent;
        let relieves = |p: &ProcessInfo| {
            u128::from(p.footprint) * 100 >= u128::from(overage) * u128::from(min_share)
        };
        // Killing must be able to end the stall: the victim holds a real
        // share of the overage, and killable processes hold all of it
        // together (else the next verdicts would only take innocents).
        let victim = eligible.iter().find(|p| relieves(p)).copied();
        match victim {
            Some(p) if killable_total >= overage => Choice::Kill(p.clone()),
            _ => {
                let protected_could = biggest_protected.filter(|(p, _)| relieves(p));
                Choice::Unresolved(if let Some((p, why)) = protected_could {
                    Unresolved::Protected {
                        pid: p.pid,
                        comm: p.comm.clone(),
                        footprint: p.footprint,
                        why,
                    }
                } else if stat.shmem.saturating_mul(100) >= overage.saturating_mul(min_share) {
                    Unresolved::HeldByNoProcess {
                        shmem: stat.shmem,
                        overage,
                    }
                } else {
                    Unresolved::NoRelief {
                        largest: eligible
                            .iter()
                            .max_by_key(|p| p.footprint)
                            .map(|p| (p.pid, p.comm.clone(), p.footprint)),
                        overage,
                    }
                })
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Kill(ProcessInfo),
    Unresolved(Unresolved),
}

/// Why a confirmed stall gets no (further) victim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// The process that could end it is protected.
    Protected {
        pid: u32,
        comm: String,
        footprint: u64,
        why: Protection,
    },
    /// The overage is tmpfs/shmem: killing processes would not free it.
    HeldByNoProcess { shmem: u64, overage: u64 },
    /// No killable process holds a real share of the overage.
    NoRelief {
        largest: Option<(u32, String, u64)>,
        overage: u64,
    },
}

impl Unresolved {
    /// What stays the same while the same situation lasts (the sizes in
    /// the message grow while a throttled hog keeps charging).
    pub fn key(&self) -> String {
        match self {
            Self::Protected { pid, .. } => format!("protected {pid}"),
            Self::HeldByNoProcess { .. } => "held by no process".to_owned(),
            Self::NoRelief { largest, .. } => {
                format!("no relief {:?}", largest.as_ref().map(|l| l.0))
            }
        }
    }
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protected {
                pid,
                comm,
                footprint,
                why,
            } => write!(
                f,
                "the process holding the memory is protected: {comm} (pid {pid}, {} MiB, {why})",
                footprint >> 20
            ),
            Self::HeldByNoProcess { shmem, overage } => write!(
                f,
                "the memory is held by no process: shmem/tmpfs holds {} MiB of a {} MiB overage; \
                 free it by deleting files in the cgroup's tmpfs or shared memory",
                shmem >> 20,
                overage >> 20
            ),
            Self::NoRelief {
                largest: Some((pid, comm, footprint)),
                overage,
            } => write!(
                f,
                "no process holds a real share of the {} MiB overage (largest: {comm}, pid {pid}, {} MiB)",
                overage >> 20,
                footprint >> 20
            ),
            Self::NoRelief {
                largest: None,
                overage,
            } => write!(
                f,
                "no killable process in the cgroup ({} MiB over memory.high)",
                overage >> 20
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GUARD: u32 = 999;

    fn proc(pid: u32, comm: &str, mib: u64) -> ProcessInfo {
        ProcessInfo {
            pid,
            comm: comm.to_owned(),
            uid: 1000,
            footprint: mib * MIB,
            oom_score_adj: 0,
            kernel_thread: false,
            start_time: 100 + u64::from(pid),
            pgrp: pid,
            cmdline: comm.to_owned(),
            cgroup: "/seed".to_owned(),
        }
    }

    fn choose(ps: &[ProcessInfo], worst: u32, overage_mib: u64) -> Choice {
        Policy::default().choose(ps, worst, overage_mib * MIB, &MemoryStat::default(), GUARD)
    }

    fn victim(c: Choice) -> u32 {
        match c {
            Choice::Kill(p) => p.pid,
            Choice::Unresolved(u) => panic!("expected a victim, got: {u}"),
        }
    }

    #[test]
    fn the_largest_footprint_dies_not_the_one_that_stalls_most() {
        // The bystander (pid 20) is the task the kernel saw stall longest.
        let ps = [proc(10, "hog", 70), proc(20, "server", 3)];
        assert_eq!(victim(choose(&ps, 20, 10)), 10);
    }

    #[test]
    fn kernel_stall_time_breaks_footprint_ties() {
        let ps = [proc(10, "a", 40), proc(20, "b", 40), proc(30, "c", 40)];
        assert_eq!(victim(choose(&ps, 20, 10)), 20);
        assert_eq!(victim(choose(&ps, 30, 10)), 30);
    }

    #[test]
    fn protected_processes_are_skipped_for_the_next_largest() {
        let mut adj = proc(11, "db", 90);
        adj.oom_score_adj = -1000;
        let mut kthread = proc(12, "kworker/0:1", 95);
        kthread.kernel_thread = true;
        let ps = [
            proc(1, "init", 99),
            proc(GUARD, "guard", 98),
            proc(13, "sshd", 97),
            proc(14, "tmux", 96),
            kthread,
            adj,
            proc(20, "grep", 50),
        ];
        assert_eq!(victim(choose(&ps, 0, 10)), 20);
    }

    #[test]
    fn every_default_protection_has_its_reason() {
        let p = Policy::default();
        for name in [
            "sshd",
            "systemd",
            "dockerd",
            "containerd",
            "t3-dispatch",
            "tmux",
        ] {
            match p.protection(&proc(50, name, 1), GUARD) {
                Some(Protection::Rule(why)) => assert!(why.contains(name), "{why}"),
                other => panic!("{name} must be protected by rule, got {other:?}"),
            }
        }
        assert_eq!(
            p.protection(&proc(1, "x", 1), GUARD),
            Some(Protection::Init)
        );
        assert_eq!(
            p.protection(&proc(GUARD, "x", 1), GUARD),
            Some(Protection::Guard)
        );
        assert_eq!(p.protection(&proc(50, "bash", 1), GUARD), None);
    }

    fn policy(toml: &str) -> Policy {
        Policy {
            config: Config::parse(toml, "<test>").expect("valid policy"),
        }
    }

    #[test]
    fn prefer_and_avoid_reorder_victims_that_can_relieve() {
        let p = policy(
            "[order]\nprefer = [\"^rg$\"]\navoid = [\"^postgres$\"]\n[[scope]]\npaths = [\"/**\"]\n",
        );
        let ps = [
            proc(10, "postgres", 70),
            proc(20, "rg", 30),
            proc(30, "make", 40),
        ];
        let c = p.choose(&ps, 0, 10 * MIB, &MemoryStat::default(), GUARD);
        assert!(matches!(c, Choice::Kill(ref v) if v.pid == 20), "{c:?}");
        // A preferred process too small to help is passed over.
        let ps = [
            proc(10, "postgres", 70),
            proc(20, "rg", 1),
            proc(30, "make", 40),
        ];
        let c = p.choose(&ps, 0, 10 * MIB, &MemoryStat::default(), GUARD);
        assert!(matches!(c, Choice::Kill(ref v) if v.pid == 30), "{c:?}");
    }

    #[test]
    fn file_rules_protect_by_cmdline_cgroup_and_uid() {
        let p = policy(
            "[protect]\ncmdline = [\"--keep-me\"]\ncgroups = [\"/system.slice/db.service\"]\nuids = [0]\n[[scope]]\npaths = [\"/**\"]\n",
        );
        let mut by_cmdline = proc(10, "srv", 50);
        by_cmdline.cmdline = "srv --keep-me".into();
        let mut by_cgroup = proc(11, "pg", 50);
        by_cgroup.cgroup = "/system.slice/db.service/worker".into();
        let mut by_uid = proc(12, "x", 50);
        by_uid.uid = 0;
        for victim in [&by_cmdline, &by_cgroup, &by_uid] {
            assert!(
                matches!(p.protection(victim, GUARD), Some(Protection::Rule(_))),
                "{victim:?}"
            );
        }
        assert_eq!(p.protection(&proc(13, "x", 50), GUARD), None);
    }

    #[test]
    fn a_protected_hog_leaves_the_stall_unresolved_and_says_why() {
        let ps = [proc(10, "sshd", 70), proc(20, "server", 3)];
        match choose(&ps, 20, 10) {
            Choice::Unresolved(u @ Unresolved::Protected { pid: 10, .. }) => {
                assert!(u.to_string().contains("sshd"), "{u}");
                assert!(u.to_string().contains("protected"), "{u}");
            }
            other => panic!("expected protected/unresolved, got {other:?}"),
        }
    }

    #[test]
    fn the_same_situation_keeps_its_key_while_sizes_grow() {
        let at = |mib| match choose(&[proc(10, "sshd", mib), proc(20, "server", 3)], 20, 10) {
            Choice::Unresolved(u) => u,
            other => panic!("expected unresolved, got {other:?}"),
        };
        assert_eq!(at(64).key(), at(70).key());
        assert_ne!(at(64).to_string(), at(70).to_string());
    }

    #[test]
    fn a_process_too_small_to_help_is_not_killed() {
        // 40 MiB over high; the bystander's 3 MiB cannot end that.
        let ps = [proc(20, "server", 3)];
        match choose(&ps, 20, 40) {
            Choice::Unresolved(Unresolved::NoRelief {
                largest: Some((20, _, _)),
                ..
            }) => {}
            other => panic!("expected no relief, got {other:?}"),
        }
    }

    #[test]
    fn shmem_overage_is_reported_as_held_by_no_process() {
        let ps = [proc(20, "server", 3)];
        let stat = MemoryStat {
            shmem: 40 * MIB,
            ..MemoryStat::default()
        };
        let c = Policy::default().choose(&ps, 20, 40 * MIB, &stat, GUARD);
        match c {
            Choice::Unresolved(u @ Unresolved::HeldByNoProcess { .. }) => {
                assert!(u.to_string().contains("held by no process"), "{u}");
            }
            other => panic!("expected held-by-no-process, got {other:?}"),
        }
    }

    #[test]
    fn among_many_workers_one_at_a_time_is_taken() {
        // Ten workers of 8 MiB, 10 MiB over high: no single one holds the
        // overage, but each is a real share and together they hold it all.
        let ps: Vec<ProcessInfo> = (0..10)
            .map(|i| proc(100 + i, "worker", 8 + u64::from(i == 3)))
            .collect();
        assert_eq!(victim(choose(&ps, 0, 10)), 103);
    }

    #[test]
    fn small_innocents_are_not_taken_when_a_protected_process_holds_the_memory() {
        // Killing all twenty 1 MiB helpers could free the overage, but none
        // is a real share of it: killing them one by one would be a string
        // of innocent kills.
        let mut ps: Vec<ProcessInfo> = (0..20).map(|i| proc(100 + i, "helper", 1)).collect();
        ps.push(proc(10, "tmux", 60));
        match choose(&ps, 0, 10) {
            Choice::Unresolved(Unresolved::Protected { pid: 10, .. }) => {}
            other => panic!("expected unresolved (protected), got {other:?}"),
        }
    }

    #[test]
    fn an_empty_cgroup_has_no_victim() {
        assert!(matches!(
            choose(&[], 0, 10),
            Choice::Unresolved(Unresolved::NoRelief { largest: None, .. })
        ));
    }
}
