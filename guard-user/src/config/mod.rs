//! The policy file: which cgroups to watch, how long they may stall, whom to
//! spare and whom to take first.
//!
//! TOML, at /etc/guard/guard.toml or a path the caller gives, with the
//! built-in policy embedded as [`DEFAULT_POLICY`]. The whole file is checked
//! before guard acts on any of it, and every mistake is reported at once with
//! its line and column: a daemon that kills processes must not run on a
//! policy it half understood, and an admin should fix the file in one pass.
//!
//! Each table is read and checked in its own file; all of them add their
//! mistakes to one list, which sorts them into file order.

mod check;
mod hook;
mod host;
mod order;
mod protect;
mod read;
mod scope;
mod secure;

use std::{
    fmt, io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

pub use hook::{Hook, startable_here as hook_startable_here};
pub use host::{Host, HostMode};
pub use order::Order;
pub use protect::{DEFAULT_PROTECT_EXE, Facts, Needs, Protect};
pub use scope::{KillMode, Scope};
pub use secure::check_secure;

use check::{Bound, Errors, bounded, check_timing, value};

/// Where the daemon looks for its policy.
pub const DEFAULT_PATH: &str = "/etc/guard/guard.toml";

/// The built-in policy, as a file an admin can copy and edit.
pub const DEFAULT_POLICY: &str = include_str!("default-policy.toml");

// Defaults of keys left out of a file. They equal the values written in
// DEFAULT_POLICY, so a file that only adds a scope behaves like the built-in
// policy everywhere else.
const DEFAULT_BUDGET_MS: u64 = 250;
const DEFAULT_WINDOW_MS: u64 = 1000;
const DEFAULT_VERDICT_INTERVAL_MS: u64 = 200;
const DEFAULT_MIN_PROGRESS_PAGES: u64 = 1;
const DEFAULT_MIN_SHARE_PERCENT: u64 = 25;
const DEFAULT_MAX_FRUITLESS_KILLS: u64 = 3;
const DEFAULT_KILL_WINDOW_MS: u64 = 60_000;
const DEFAULT_VICTIM_EXIT_TIMEOUT_MS: u64 = 3000;

/// A checked policy, ready to use.
#[derive(Debug, Clone)]
pub struct Config {
    /// Log every decision, kill nothing.
    pub dry_run: bool,
    /// Minimum time between two verdicts for one cgroup.
    pub verdict_interval: Duration,
    /// A reclaim pass freeing fewer pages than this made no progress.
    pub min_progress_pages: u64,
    /// Share (percent) of the overage a victim must hold.
    pub min_share_percent: u64,
    /// Kills in a row that leave their cgroup over memory.high before guard
    /// stops killing there for `kill_window`.
    pub max_fruitless_kills: u64,
    pub kill_window: Duration,
    /// How long a victim may take to exit before the next decision for its
    /// cgroup stops waiting for it.
    pub victim_exit_timeout: Duration,
    pub protect: Protect,
    pub order: Order,
    pub hook: Option<Hook>,
    /// In file order: the first match wins.
    pub scopes: Vec<Scope>,
    /// The whole machine short of memory (no cgroup limit involved).
    pub host: Host,
    /// Size of the kernel's list of watched cgroups (None: from the
    /// machine, see Policy::watch_capacity).
    pub max_watched_cgroups: Option<u64>,
    /// Tell the owner of a killed process on their terminals.
    pub notify_owner: bool,
}

/// One mistake in a policy file. Line and column count from 1; the column
/// counts characters, as editors do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Located {
    fn at(text: &str, offset: usize, message: impl Into<String>) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        // One message per line in the error's Display, whatever the source
        // of the message printed.
        let message: String = message.into();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        Self {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            message,
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Every mistake found, in file order.
    #[error("{}", render(.path, .errors))]
    Invalid { path: String, errors: Vec<Located> },
    /// The file could be changed by someone other than root.
    #[error("refusing {path}: {why}")]
    Insecure { path: PathBuf, why: String },
    /// Valid, but this process could not do what it asks.
    #[error("{path}: {why}")]
    Unusable { path: String, why: String },
}

fn render(path: &str, errors: &[Located]) -> String {
    errors
        .iter()
        .map(|e| format!("{path}:{e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// The file as written, with the positions of the values that later checks
// may have to point at. Absent keys are None so that a scope can tell "not
// set here" (inherit) from "set to the default".
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    dry_run: bool,
    budget_ms: Option<Spanned<u64>>,
    window_ms: Option<Spanned<u64>>,
    verdict_interval_ms: Option<u64>,
    min_progress_pages: Option<Spanned<u64>>,
    min_share_percent: Option<Spanned<u64>>,
    max_fruitless_kills: Option<Spanned<u64>>,
    kill_window_ms: Option<Spanned<u64>>,
    victim_exit_timeout_ms: Option<Spanned<u64>>,
    max_watched_cgroups: Option<Spanned<u64>>,
    protect: protect::RawProtect,
    order: order::RawOrder,
    hook: Option<Spanned<hook::RawHook>>,
    scope: Vec<Spanned<scope::RawScope>>,
    host: host::RawHost,
    notify: RawNotify,
}

/// `[notify]`: who is told of a kill.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawNotify {
    owner: Option<bool>,
}

impl Config {
    /// Parses and checks a policy. `origin` names the text in messages, e.g.
    /// "/etc/guard/guard.toml" or "<embedded>".
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let (raw, found) = read::deserialize::<RawConfig>(text);
        let mut errors = Errors::new(text);
        for (span, message) in found {
            errors.at(span, message);
        }
        // Keys that did not fit were set aside; what is left is checked too.
        let Some(raw) = raw else {
            errors.finish(origin)?;
            return Err(ConfigError::Invalid {
                path: origin.to_owned(),
                errors: vec![Located::at(
                    text,
                    0,
                    "the file could not be read as a policy",
                )],
            });
        };
        let inherited = scope_defaults(&mut errors, &raw);
        let config = Config {
            dry_run: raw.dry_run,
            verdict_interval: Duration::from_millis(
                raw.verdict_interval_ms
                    .unwrap_or(DEFAULT_VERDICT_INTERVAL_MS),
            ),
            min_progress_pages: bounded(
                &mut errors,
                "min_progress_pages",
                raw.min_progress_pages.as_ref(),
                DEFAULT_MIN_PROGRESS_PAGES,
                Bound::ProgressPages,
            ),
            min_share_percent: bounded(
                &mut errors,
                "min_share_percent",
                raw.min_share_percent.as_ref(),
                DEFAULT_MIN_SHARE_PERCENT,
                Bound::Percent,
            ),
            max_fruitless_kills: bounded(
                &mut errors,
                "max_fruitless_kills",
                raw.max_fruitless_kills.as_ref(),
                DEFAULT_MAX_FRUITLESS_KILLS,
                Bound::AboveZero,
            ),
            kill_window: Duration::from_millis(bounded(
                &mut errors,
                "kill_window_ms",
                raw.kill_window_ms.as_ref(),
                DEFAULT_KILL_WINDOW_MS,
                Bound::AboveZero,
            )),
            victim_exit_timeout: Duration::from_millis(bounded(
                &mut errors,
                "victim_exit_timeout_ms",
                raw.victim_exit_timeout_ms.as_ref(),
                DEFAULT_VICTIM_EXIT_TIMEOUT_MS,
                Bound::AboveZero,
            )),
            protect: protect::parse(&mut errors, raw.protect),
            order: order::parse(&mut errors, &raw.order),
            hook: raw.hook.map(|h| hook::parse(&mut errors, h)),
            scopes: scope::parse(&mut errors, raw.scope, inherited),
            host: host::parse(&mut errors, &raw.host),
            max_watched_cgroups: raw.max_watched_cgroups.as_ref().map(|n| {
                bounded(
                    &mut errors,
                    "max_watched_cgroups",
                    Some(n),
                    1,
                    Bound::AboveZero,
                )
            }),
            notify_owner: raw.notify.owner.unwrap_or(true),
        };
        errors.finish(origin)?;
        Ok(config)
    }

    /// The built-in policy.
    pub fn default_policy() -> Config {
        // A unit test parses the same text: this cannot fail in a build
        // whose tests pass.
        Self::parse(DEFAULT_POLICY, "<embedded>").expect("the embedded default policy is valid")
    }

    /// Reads a policy file that only root can change.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = secure::read(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// First scope whose globs match this cgroup path
    /// ("/user.slice/user-1000.slice"), if any.
    pub fn scope_for(&self, cgroup_path: &str) -> Option<&Scope> {
        self.scopes.iter().find(|s| s.matches(cgroup_path))
    }
}

/// The top level's budget_ms and window_ms, checked: every scope that does
/// not set its own inherits them.
fn scope_defaults(errors: &mut Errors<'_>, raw: &RawConfig) -> (u64, u64) {
    check_timing(
        errors,
        "",
        raw.budget_ms.as_ref(),
        raw.window_ms.as_ref(),
        (DEFAULT_BUDGET_MS, DEFAULT_WINDOW_MS),
    );
    (
        value(raw.budget_ms.as_ref()).unwrap_or(DEFAULT_BUDGET_MS),
        value(raw.window_ms.as_ref()).unwrap_or(DEFAULT_WINDOW_MS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "/etc/guard/guard.toml")
    }

    /// The mistakes of a file that must be refused.
    pub(super) fn mistakes(text: &str) -> Vec<Located> {
        match parse(text) {
            Err(ConfigError::Invalid { errors, .. }) => errors,
            Err(other) => panic!("expected an invalid-policy error, got {other}"),
            Ok(c) => panic!("expected an invalid-policy error, got {c:?}"),
        }
    }

    pub(super) fn one_mistake(text: &str) -> Located {
        let errors = mistakes(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().expect("one")
    }

    pub(super) const SCOPE: &str = "[[scope]]\npaths = [\"/**\"]\n";

    /// The file rules' verdict on a process with these facts (no exe).
    pub(super) fn why(
        p: &Protect,
        comm: &str,
        cmdline: &str,
        cgroup: &str,
        uid: u32,
    ) -> Option<String> {
        let comm = crate::procfs::Comm::from(comm);
        p.reason(&super::Facts {
            pid: 50,
            kernel_thread: false,
            oom_score_adj: 0,
            comm: &comm,
            uid: Some(uid),
            cgroup: Some(cgroup),
            exe: None,
            cmdline: Some(cmdline),
        })
    }

    #[test]
    fn embedded_default_parses_to_todays_built_in_policy() {
        let c = Config::default_policy();
        assert!(!c.dry_run);
        assert_eq!(c.verdict_interval, Duration::from_millis(200));
        assert_eq!(c.min_progress_pages, 1);
        assert_eq!(c.min_share_percent, 25);
        assert!(c.hook.is_none());
        assert_eq!(c.scopes.len(), 1);
        let s = &c.scopes[0];
        assert_eq!(s.paths, ["/**"]);
        assert_eq!(s.budget, Duration::from_millis(250));
        assert_eq!(s.window, Duration::from_secs(1));
        assert_eq!(s.kill, KillMode::Process);
        assert!(!s.kill_watched_cgroup);
        assert_eq!(c.order.rank("node"), 0);
    }

    #[test]
    fn leaving_keys_out_keeps_the_built_in_values() {
        let c = parse(SCOPE).expect("parses");
        assert_eq!(c.scopes[0].budget, Duration::from_millis(250));
        assert_eq!(c.scopes[0].window, Duration::from_millis(1000));
        assert_eq!(c.verdict_interval, Duration::from_millis(200));
        assert_eq!(c.min_share_percent, 25);
        assert!(c.protect.needs().exe, "the default executables apply");
        // Written explicitly empty, the list protects nothing.
        let c = parse(&format!("[protect]\nexe = []\n{SCOPE}")).expect("parses");
        assert!(!c.protect.needs().exe);
    }

    #[test]
    fn other_out_of_range_values_are_refused() {
        let e = one_mistake(&format!("min_share_percent = 101\n{SCOPE}"));
        assert_eq!((e.line, e.column), (1, 21), "{e}");
        let e = one_mistake(&format!("verdict_interval_ms = -1\n{SCOPE}"));
        assert_eq!(e.line, 1, "{e}");
    }

    const DEV_MACHINE: &str = r#"
# The shared dev machine: t3-serve units, user slices, docker.
min_share_percent = 20

[protect]
comm = ["^(sshd|systemd|dockerd|containerd|t3-dispatch|tmux)$"]
cmdline = ["^/usr/bin/python3 /opt/backup/"]
cgroups = ["/system.slice/sshd.service"]
uids = [0]

[order]
prefer = ["^(ugrep|rg|node|chrome|claude)$"]
avoid = ["^node$"]

[hook]
command = ["/usr/local/bin/notify", "guard killed a process"]
timeout_ms = 2000

[[scope]]
paths = ["/system.slice/t3-serve@*.service"]
budget_ms = 100
window_ms = 500
kill = "cgroup"
kill_watched_cgroup = true

[[scope]]
paths = ["/user.slice/user-*.slice"]
kill = "process-group"

[[scope]]
paths = ["/docker.slice"]
budget_ms = 500
kill = "process"
"#;

    #[test]
    fn dev_machine_policy_picks_the_right_scope() {
        let c = parse(DEV_MACHINE).expect("parses");
        let t3 = c
            .scope_for("/system.slice/t3-serve@a.service")
            .expect("t3-serve");
        assert_eq!(t3.kill, KillMode::Cgroup);
        assert!(t3.kill_watched_cgroup);
        assert_eq!(
            (t3.budget, t3.window),
            (Duration::from_millis(100), Duration::from_millis(500))
        );
        let user = c
            .scope_for("/user.slice/user-1000.slice")
            .expect("user slice");
        assert_eq!(user.kill, KillMode::ProcessGroup);
        assert_eq!(
            (user.budget, user.window),
            (Duration::from_millis(250), Duration::from_millis(1000))
        );
        let docker = c.scope_for("/docker.slice").expect("docker");
        assert_eq!(docker.paths, ["/docker.slice"]);
        assert_eq!(docker.budget, Duration::from_millis(500));
        assert!(c.scope_for("/system.slice/cron.service").is_none());
        // "*" stays within one path component.
        assert!(
            c.scope_for("/user.slice/user-1000.slice/session-3.scope")
                .is_none()
        );
        assert_eq!(c.min_share_percent, 20);
        let hook = c.hook.expect("hook");
        assert_eq!(hook.command[0], "/usr/local/bin/notify");
        assert_eq!(hook.timeout, Duration::from_secs(2));
    }

    #[test]
    fn dev_machine_policy_orders_and_protects() {
        let c = parse(DEV_MACHINE).expect("parses");
        assert_eq!(c.order.rank("rg"), 1);
        assert_eq!(c.order.rank("claude"), 1);
        assert_eq!(c.order.rank("cargo"), 0);
        // Both prefer and avoid match: avoid wins.
        assert_eq!(c.order.rank("node"), -1);
        let p = &c.protect;
        let r = why(p, "sshd", "sshd: alice", "/system.slice/ssh.service", 0).expect("sshd");
        assert!(r.contains("protect.comm"), "{r}");
        let r = why(
            p,
            "python3",
            "/usr/bin/python3 /opt/backup/run.py",
            "/x",
            1000,
        )
        .expect("backup");
        assert!(r.contains("protect.cmdline"), "{r}");
        let r = why(p, "bash", "bash", "/system.slice/sshd.service/child", 1000)
            .expect("below sshd.service");
        assert!(r.contains("/system.slice/sshd.service"), "{r}");
        let r = why(p, "bash", "bash", "/user.slice", 0).expect("root");
        assert!(r.contains("uid 0"), "{r}");
        assert_eq!(
            why(p, "bash", "bash", "/system.slice/sshd.service2", 1000),
            None
        );
    }

    #[test]
    fn unknown_key_names_its_line_and_column() {
        let e = one_mistake(&format!("dry_run = true\n[order]\n  prefr = []\n{SCOPE}"));
        assert_eq!((e.line, e.column), (3, 3), "{e}");
        assert!(e.message.contains("prefr"), "{e}");
        let e = one_mistake(&format!("{SCOPE}budget = 3\n"));
        assert_eq!((e.line, e.column), (3, 1), "{e}");
    }

    #[test]
    fn every_semantic_mistake_is_reported_at_once() {
        let text = format!(
            "budget_ms = 0\n[order]\navoid = [\"[z-a]\"]\n{SCOPE}kill = \"process\"\n\
             kill_watched_cgroup = true\n"
        );
        let errors = mistakes(&text);
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(1, 13), (3, 10), (7, 23)], "{errors:?}");
        let err = parse(&text).expect_err("invalid");
        let shown = err.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 3, "{shown}");
        assert!(
            lines[0].starts_with("/etc/guard/guard.toml:1:13: budget_ms must be above 0"),
            "{shown}"
        );
        assert!(
            lines[1].starts_with("/etc/guard/guard.toml:3:10: order.avoid"),
            "{shown}"
        );
        assert!(lines[2].contains("kill_watched_cgroup"), "{shown}");
    }

    #[test]
    fn syntax_errors_name_their_line_and_column() {
        let e = one_mistake("dry_run = true\nbudget_ms = = 3\n");
        assert_eq!(e.line, 2, "{e}");
        let e = one_mistake("dry_run = yes\n");
        assert_eq!((e.line, e.column), (1, 11), "{e}");
        // Columns count characters, not bytes.
        let e = one_mistake("[protect]\ncomm = [\"é\", \"(\"]\n[[scope]]\npaths = [\"/**\"]\n");
        assert_eq!((e.line, e.column), (2, 14), "{e}");
    }

    #[test]
    fn the_breaker_and_the_exit_wait_have_defaults_and_refuse_zero() {
        let c = Config::default_policy();
        assert_eq!(c.max_fruitless_kills, 3);
        assert_eq!(c.kill_window, Duration::from_secs(60));
        assert_eq!(c.victim_exit_timeout, Duration::from_secs(3));
        let c = parse(&format!(
            "max_fruitless_kills = 5\nkill_window_ms = 1000\nvictim_exit_timeout_ms = 200\n{SCOPE}"
        ))
        .expect("valid");
        assert_eq!(c.max_fruitless_kills, 5);
        assert_eq!(c.kill_window, Duration::from_secs(1));
        assert_eq!(c.victim_exit_timeout, Duration::from_millis(200));
        let errors = mistakes(&format!(
            "max_fruitless_kills = 0\nkill_window_ms = 0\nvictim_exit_timeout_ms = 0\n{SCOPE}"
        ));
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(1, 23), (2, 18), (3, 26)], "{errors:?}");
        assert!(
            errors[0]
                .message
                .contains("max_fruitless_kills must be above 0")
        );
    }

    #[test]
    fn owners_are_told_unless_the_policy_says_not() {
        let on = Config::parse(SCOPE, "<test>").expect("valid");
        assert!(on.notify_owner);
        assert!(Config::default_policy().notify_owner);
        let off =
            Config::parse(&format!("[notify]\nowner = false\n{SCOPE}"), "<test>").expect("valid");
        assert!(!off.notify_owner);
        let e = one_mistake(&format!("[notify]\nowners = true\n{SCOPE}"));
        assert!(e.to_string().contains("owners"), "{e}");
    }

    #[test]
    fn a_progress_threshold_no_pass_could_meet_or_miss_is_refused() {
        let e = one_mistake(&format!("min_progress_pages = 0\n{SCOPE}"));
        assert_eq!((e.line, e.column), (1, 22));
        assert!(e.message.contains("guard would never act"), "{e}");
        let e = one_mistake(&format!("min_progress_pages = 4096\n{SCOPE}"));
        assert!(e.message.contains("must be at most 64"), "{e}");
        assert!(e.message.contains("reclaim normally"), "{e}");
        let c = parse(&format!("min_progress_pages = 64\n{SCOPE}")).expect("64");
        assert_eq!(c.min_progress_pages, 64);
    }
}
