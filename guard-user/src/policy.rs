//! Who may be killed: the fixed protections and the policy file's rules,
//! applied to plain facts about one process. Which facts a rule needs is
//! asked first, so the caller reads only those (a command line is read only
//! when a rule looks at it).

use std::{fmt, time::Duration};

pub use crate::config::{Facts, Needs};
use crate::{
    config::{Config, HostMode},
    kernel::{HostLimits, Settings},
    procfs::Comm,
};

/// Minimum time between two host verdicts: most ask "is MemAvailable low
/// yet?" and hear "no"; the one that hears "yes" must not wait long.
pub const HOST_VERDICT_INTERVAL: Duration = Duration::from_millis(20);

/// Bounds of the watch list's size when the policy does not set it.
const MIN_WATCH_CAPACITY: u32 = 4096;
const MAX_WATCH_CAPACITY: u32 = 65_536;

/// The policy in force: the policy file (or the embedded default) as
/// checked by `config`.
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
    /// Its memory or its protection could not be read: it counts as a
    /// process guard may not kill.
    Unreadable(String),
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Init => f.write_str("protected: PID 1"),
            Self::KernelThread => f.write_str("protected: kernel thread"),
            Self::Guard => f.write_str("protected: the guard itself"),
            Self::OomScoreAdjMin => f.write_str("protected: oom_score_adj -1000"),
            Self::Rule(why) => write!(f, "protected: {why}"),
            Self::Unreadable(why) => write!(f, "not readable, so never killed: {why}"),
        }
    }
}

impl Policy {
    /// What the kernel half is loaded with: the first scope's limits as
    /// defaults, every cgroup watched, the host scope if it is on.
    pub fn kernel_settings(&self) -> Settings {
        let (budget, window) = self.default_limits();
        let host = &self.config.host;
        Settings {
            budget,
            window,
            verdict_interval: self.config.verdict_interval,
            min_progress_pages: self.config.min_progress_pages,
            watch_all: true,
            classic_tracepoints: false,
            watch_capacity: self.watch_capacity(0),
            host: (host.mode != HostMode::Off).then_some(HostLimits {
                budget: host.budget,
                window: host.window,
                retry_loops: host.retry_loops,
                early: host.on_direct_reclaim,
                interval: HOST_VERDICT_INTERVAL,
            }),
        }
    }

    /// How many cgroups the kernel's watch list holds: the policy's
    /// max_watched_cgroups, else twice the cgroups there are now (room to
    /// grow), at least 4096 and at most 65536 (about 5 MiB of kernel memory).
    pub fn watch_capacity(&self, cgroups_now: usize) -> u32 {
        match self.config.max_watched_cgroups {
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
            None => u32::try_from(cgroups_now.saturating_mul(2))
                .unwrap_or(u32::MAX)
                .clamp(MIN_WATCH_CAPACITY, MAX_WATCH_CAPACITY),
        }
    }

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

    pub fn needs(&self) -> Needs {
        self.config.protect.needs()
    }

    /// Why this process is never killed, or None when it may be.
    pub fn protection(&self, f: &Facts<'_>, guard_pid: u32) -> Option<Protection> {
        if f.pid == 1 {
            Some(Protection::Init)
        } else if f.kernel_thread {
            Some(Protection::KernelThread)
        } else if f.pid == guard_pid {
            Some(Protection::Guard)
        } else if f.oom_score_adj <= -1000 {
            Some(Protection::OomScoreAdjMin)
        } else {
            self.config.protect.reason(f).map(Protection::Rule)
        }
    }

    /// The victim order of a name: +1 preferred, -1 avoided, 0 neither.
    pub fn rank(&self, comm: &Comm) -> i8 {
        self.config.order.rank(&comm.lossy())
    }

    /// Whether names change the victim order (then every candidate's name
    /// is read).
    pub fn ranks_by_name(&self) -> bool {
        !self.config.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::Exe;

    const GUARD: u32 = 999;

    fn exe(path: &str, same_file: bool) -> Exe {
        Exe {
            path: path.to_owned(),
            deleted: false,
            root_owned: true,
            same_file,
        }
    }

    fn facts<'a>(pid: u32, comm: &'a Comm, exe: Option<&'a Exe>) -> Facts<'a> {
        Facts {
            pid,
            kernel_thread: false,
            oom_score_adj: 0,
            comm,
            uid: Some(1000),
            cgroup: Some("/user.slice/user-1000.slice"),
            exe,
            cmdline: Some(""),
        }
    }

    fn policy(toml: &str) -> Policy {
        Policy {
            config: Config::parse(toml, "<test>").expect("valid policy"),
        }
    }

    #[test]
    fn the_fixed_protections_come_first_and_say_why() {
        let p = Policy::default();
        let c = Comm::from("x");
        assert_eq!(
            p.protection(&facts(1, &c, None), GUARD),
            Some(Protection::Init)
        );
        assert_eq!(
            p.protection(&facts(GUARD, &c, None), GUARD),
            Some(Protection::Guard)
        );
        let mut k = facts(2, &c, None);
        k.kernel_thread = true;
        assert_eq!(p.protection(&k, GUARD), Some(Protection::KernelThread));
        let mut adj = facts(50, &c, None);
        adj.oom_score_adj = -1000;
        assert_eq!(p.protection(&adj, GUARD), Some(Protection::OomScoreAdjMin));
        assert_eq!(p.protection(&facts(50, &c, None), GUARD), None);
    }

    #[test]
    fn the_default_protects_daemons_by_their_executable_not_their_name() {
        let p = Policy::default();
        for path in [
            "/usr/sbin/sshd",
            "/usr/lib/systemd/systemd",
            "/usr/bin/tmux",
            "/usr/bin/dockerd",
            "/usr/bin/containerd",
            "/usr/local/bin/t3-dispatch",
        ] {
            let name = Comm::from(path.rsplit('/').next().unwrap_or(path));
            let real = exe(path, true);
            match p.protection(&facts(50, &name, Some(&real)), GUARD) {
                Some(Protection::Rule(why)) => assert!(why.contains(path), "{why}"),
                other => panic!("{path} must be protected by its exe, got {other:?}"),
            }
            // The same path seen from another mount namespace, naming
            // another file: not protected.
            let fake = exe(path, false);
            assert_eq!(
                p.protection(&facts(50, &name, Some(&fake)), GUARD),
                None,
                "{path}"
            );
        }
        // A copy named sshd in /tmp, or a name with a leading space.
        let sshd = Comm::from("sshd");
        let copy = exe("/tmp/sshd", true);
        assert_eq!(p.protection(&facts(50, &sshd, Some(&copy)), GUARD), None);
        let spaced = Comm::from(" sshd");
        assert_eq!(p.protection(&facts(50, &spaced, Some(&copy)), GUARD), None);
        // A deleted (upgraded) daemon binary still protects, if root's.
        let mut upgraded = exe("/usr/sbin/sshd", false);
        upgraded.deleted = true;
        assert!(
            p.protection(&facts(50, &sshd, Some(&upgraded)), GUARD)
                .is_some()
        );
        upgraded.root_owned = false;
        assert_eq!(
            p.protection(&facts(50, &sshd, Some(&upgraded)), GUARD),
            None
        );
    }

    #[test]
    fn file_rules_protect_by_comm_exe_cmdline_cgroup_and_uid() {
        let p = policy(
            "[protect]\ncomm = [\"^keeper$\"]\nexe = [\"/opt/db/bin/*\"]\n\
             cmdline = [\"--keep-me\"]\ncgroups = [\"/system.slice/db.service\"]\nuids = [0]\n\
             [[scope]]\npaths = [\"/**\"]\n",
        );
        let needs = p.needs();
        assert!(needs.exe && needs.cmdline && needs.cgroup && needs.uid);
        let plain = Comm::from("srv");
        let keeper = Comm::from("keeper");
        let db = exe("/opt/db/bin/postgres", true);
        let mut by_cmdline = facts(10, &plain, None);
        by_cmdline.cmdline = Some("srv --keep-me");
        let mut by_cgroup = facts(11, &plain, None);
        by_cgroup.cgroup = Some("/system.slice/db.service/worker");
        let mut by_uid = facts(12, &plain, None);
        by_uid.uid = Some(0);
        for (f, word) in [
            (facts(9, &keeper, None), "protect.comm"),
            (facts(13, &plain, Some(&db)), "protect.exe"),
            (by_cmdline, "protect.cmdline"),
            (by_cgroup, "protect.cgroups"),
            (by_uid, "protect.uids"),
        ] {
            match p.protection(&f, GUARD) {
                Some(Protection::Rule(why)) => assert!(why.contains(word), "{why}"),
                other => panic!("{f:?} must be protected by {word}, got {other:?}"),
            }
        }
        assert_eq!(p.protection(&facts(14, &plain, None), GUARD), None);
        // Without such rules, nothing optional needs reading.
        let lean = policy("[protect]\nexe = []\n[[scope]]\npaths = [\"/**\"]\n");
        assert_eq!(lean.needs(), Needs::default());
    }

    #[test]
    fn the_watch_list_is_sized_from_the_machine_unless_the_policy_says() {
        let p = Policy::default();
        assert_eq!(p.watch_capacity(0), 4096);
        assert_eq!(p.watch_capacity(5_000), 10_000);
        assert_eq!(p.watch_capacity(1_000_000), 65_536);
        let c = Config::parse(
            "max_watched_cgroups = 1000\n[[scope]]\npaths = [\"/**\"]\n",
            "<t>",
        )
        .expect("valid");
        let p = Policy { config: c };
        assert_eq!(p.watch_capacity(1_000_000), 1000);
        assert_eq!(p.kernel_settings().watch_capacity, 1000);
        let e = Config::parse(
            "max_watched_cgroups = 0\n[[scope]]\npaths = [\"/**\"]\n",
            "<t>",
        )
        .expect_err("0 refused")
        .to_string();
        assert!(e.contains("max_watched_cgroups must be above 0"), "{e}");
    }
}
