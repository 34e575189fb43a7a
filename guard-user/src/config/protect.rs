//! `[protect]`: the processes guard never kills.

use globset::{GlobBuilder, GlobMatcher};
use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::check::{Errors, glob_matchers, regexes};
use crate::procfs::{Comm, Exe};

/// What the protection rules look at, for one process. The optional facts
/// are read only when the rules need them (see [`Needs`]).
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub pid: u32,
    pub kernel_thread: bool,
    pub oom_score_adj: i32,
    pub comm: &'a Comm,
    /// The real uid (None: not read, no rule needs it).
    pub uid: Option<u32>,
    /// The process's cgroup path ("/user.slice/...").
    pub cgroup: Option<&'a str>,
    /// None: no executable (or not read).
    pub exe: Option<&'a Exe>,
    pub cmdline: Option<&'a str>,
}

/// Which optional facts the rules need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub exe: bool,
    pub cmdline: bool,
    pub cgroup: bool,
    pub uid: bool,
}

/// Protected executables while `protect.exe` is absent: leaving the key out
/// must not silently make sshd killable. Each is matched by path and by
/// identity (the file at that path), never by the name a process gives
/// itself.
pub const DEFAULT_PROTECT_EXE: [&str; 9] = [
    "/usr/sbin/sshd",
    "/usr/lib/openssh/sshd-session",
    "/usr/lib/systemd/systemd",
    "/usr/bin/tmux",
    "/usr/bin/dockerd",
    "/usr/sbin/dockerd",
    "/usr/bin/containerd",
    "/usr/bin/t3-dispatch",
    "/usr/local/bin/t3-dispatch",
];

/// The file's rules for processes that are never killed.
#[derive(Debug, Clone)]
pub struct Protect {
    comm: Vec<Regex>,
    exe: Vec<GlobMatcher>,
    cmdline: Vec<Regex>,
    cgroups: Vec<GlobMatcher>,
    uids: Vec<u32>,
}

impl Protect {
    /// Whether an `exe` rule names this path (only then is the file behind
    /// it worth checking).
    pub fn exe_named(&self, path: &str) -> bool {
        self.exe.iter().any(|g| g.is_match(path))
    }

    /// Which facts beyond name and owner the rules need.
    pub fn needs(&self) -> Needs {
        Needs {
            exe: !self.exe.is_empty(),
            cmdline: !self.cmdline.is_empty(),
            cgroup: !self.cgroups.is_empty(),
            uid: !self.uids.is_empty(),
        }
    }

    /// Why this process is protected by the file's rules, or None. (PID 1,
    /// kernel threads, the guard itself and oom_score_adj -1000 are handled
    /// by the policy; do not duplicate them.)
    ///
    /// An `exe` glob protects a process whose executable is at a matching
    /// path and is the file guard itself finds there, root's (see
    /// [`crate::procfs::Exe::trusted`]). A `cgroups` glob protects the
    /// cgroup it matches and every cgroup below it.
    pub fn reason(&self, f: &Facts<'_>) -> Option<String> {
        if let Some(exe) = f.exe.filter(|e| e.trusted())
            && let Some(g) = self.exe.iter().find(|g| g.is_match(&exe.path))
        {
            return Some(format!(
                "exe {:?} matches protect.exe {:?}",
                exe.path,
                g.glob().glob()
            ));
        }
        let comm = f.comm.lossy();
        if let Some(re) = self.comm.iter().find(|re| re.is_match(&comm)) {
            return Some(format!(
                "name {comm:?} matches protect.comm {:?}",
                re.as_str()
            ));
        }
        if let Some(path) = f.cgroup {
            for cgroup in self_and_ancestors(path) {
                if let Some(g) = self.cgroups.iter().find(|g| g.is_match(cgroup)) {
                    return Some(format!(
                        "cgroup {path} is under protect.cgroups {:?}",
                        g.glob().glob()
                    ));
                }
            }
        }
        if let Some(uid) = f.uid.filter(|u| self.uids.contains(u)) {
            return Some(format!("uid {uid} is in protect.uids"));
        }
        if let Some(cmdline) = f.cmdline
            && let Some(re) = self.cmdline.iter().find(|re| re.is_match(cmdline))
        {
            return Some(format!(
                "command line matches protect.cmdline {:?}",
                re.as_str()
            ));
        }
        None
    }
}

/// "/a/b" -> "/a/b", "/a", "/".
fn self_and_ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(path), |p| match p.rfind('/') {
        Some(0) if p.len() > 1 => Some("/"),
        Some(i) if i > 0 => Some(&p[..i]),
        _ => None,
    })
}

/// `[protect]` as written. `exe` is None when left out, which is not the
/// same as written empty: see [`DEFAULT_PROTECT_EXE`].
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawProtect {
    comm: Vec<Spanned<String>>,
    exe: Option<Vec<Spanned<String>>>,
    cmdline: Vec<Spanned<String>>,
    cgroups: Vec<Spanned<String>>,
    uids: Vec<u32>,
}

pub(super) fn parse(errors: &mut Errors<'_>, raw: RawProtect) -> Protect {
    let exe = match &raw.exe {
        Some(globs) => glob_matchers(errors, "protect.exe", globs),
        None => DEFAULT_PROTECT_EXE
            .iter()
            .map(|p| {
                GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .expect("the default globs compile")
                    .compile_matcher()
            })
            .collect(),
    };
    Protect {
        comm: regexes(errors, "protect.comm", &raw.comm),
        exe,
        cmdline: regexes(errors, "protect.cmdline", &raw.cmdline),
        cgroups: glob_matchers(errors, "protect.cgroups", &raw.cgroups),
        uids: raw.uids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Config, DEFAULT_POLICY,
        tests::{SCOPE, one_mistake, parse, why},
    };

    #[test]
    fn embedded_default_protects_no_name_only_executables() {
        let p = Config::default_policy().protect;
        // Any user can call a process sshd: the default trusts no name.
        for name in ["sshd", "systemd", "tmux", " sshd", "bash"] {
            assert_eq!(
                why(&p, name, name, "/user.slice/user-1000.slice", 1000),
                None,
                "{name:?}"
            );
        }
        // Root's processes and system cgroups are not protected by the file.
        assert_eq!(
            why(&p, "bash", "bash", "/system.slice/ssh.service", 0),
            None
        );
        let needs = p.needs();
        assert!(
            needs.exe && !needs.cmdline && !needs.cgroup && !needs.uid,
            "{needs:?}"
        );
        // The embedded file and the built-in list say the same.
        for path in DEFAULT_PROTECT_EXE {
            assert!(DEFAULT_POLICY.contains(&format!("\"{path}\"")), "{path}");
        }
    }

    #[test]
    fn ancestors_of_a_cgroup_path() {
        assert_eq!(
            self_and_ancestors("/a/b").collect::<Vec<_>>(),
            ["/a/b", "/a", "/"]
        );
        assert_eq!(self_and_ancestors("/").collect::<Vec<_>>(), ["/"]);
    }

    #[test]
    fn protect_exe_takes_absolute_path_globs() {
        let c = parse(&format!(
            "[protect]\nexe = [\"/opt/*/bin/server\"]\n{SCOPE}"
        ))
        .expect("valid");
        assert!(c.protect.needs().exe);
        let e = one_mistake(&format!("[protect]\nexe = [\"sshd\"]\n{SCOPE}"));
        assert_eq!((e.line, e.column), (2, 8), "{e}");
        assert!(e.message.contains("protect.exe"), "{e}");
        assert!(e.message.contains("executable path"), "{e}");
        assert!(e.message.contains("/proc/PID/exe"), "{e}");
    }
}
