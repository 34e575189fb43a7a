//! The policy file: which cgroups to watch, how long they may stall, whom to
//! spare and whom to take first.
//!
//! TOML, at /etc/guard/guard.toml or a path the caller gives, with the
//! built-in policy embedded as [`DEFAULT_POLICY`]. The whole file is checked
//! before guard acts on any of it, and every mistake is reported at once with
//! its line and column: a daemon that kills processes must not run on a
//! policy it half understood, and an admin should fix the file in one pass.

use std::{
    fmt, fs, io,
    io::Read as _,
    ops::Range,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

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
const DEFAULT_HOOK_TIMEOUT_MS: u64 = 5000;
const DEFAULT_HOST_BUDGET_MS: u64 = 250;
const DEFAULT_HOST_WINDOW_MS: u64 = 1000;
const DEFAULT_HOST_RETRY_LOOPS: u64 = 4;
const DEFAULT_HOST_MIN_AVAILABLE_PERCENT: u64 = 5;
const DEFAULT_MAX_FRUITLESS_KILLS: u64 = 3;
const DEFAULT_KILL_WINDOW_MS: u64 = 60_000;
const DEFAULT_VICTIM_EXIT_TIMEOUT_MS: u64 = 3000;
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
}

/// What guard does when the machine itself runs out of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostMode {
    /// Not watched: the direct-reclaim programs are not even attached.
    Off,
    /// Watched and judged, logged and streamed, but nothing killed.
    #[default]
    Watch,
    /// The largest unprotected process on the host is killed.
    Kill,
}

impl fmt::Display for HostMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Watch => "watch",
            Self::Kill => "kill",
        })
    }
}

/// The host scope: direct reclaim by the page allocator without progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub mode: HostMode,
    /// No-progress direct reclaim the host may accumulate within `window`.
    pub budget: Duration,
    pub window: Duration,
    /// A verdict at once when the allocator has retried this many times
    /// without progress (the kernel's OOM killer comes after 16); 0: off.
    pub retry_loops: u64,
    /// Confirmation: MemAvailable must be below this share of MemTotal.
    pub min_available_percent: u64,
    /// Ask at every direct reclaim pass (at most once per verdict interval)
    /// instead of waiting for stall: with nothing left to reclaim, the
    /// kernel's OOM killer follows the first fruitless pass within
    /// milliseconds.
    pub on_direct_reclaim: bool,
}

/// A set of watched cgroups and how their stalls are handled.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The globs as written, for logs.
    pub paths: Vec<String>,
    /// No-progress stall a cgroup may accumulate within `window`.
    pub budget: Duration,
    pub window: Duration,
    pub kill: KillMode,
    /// With [`KillMode::Cgroup`]: may the watched cgroup itself be killed
    /// when the victim lives directly in it.
    pub kill_watched_cgroup: bool,
    globs: GlobSet,
}

impl Scope {
    /// Whether this scope's globs match a cgroup path ("/docker.slice").
    pub fn matches(&self, cgroup_path: &str) -> bool {
        self.globs.is_match(cgroup_path)
    }
}

/// What is killed once a victim is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillMode {
    /// The victim process alone.
    #[default]
    Process,
    /// Every process in the victim's process group.
    ProcessGroup,
    /// Every process in the victim's cgroup, through cgroup.kill.
    Cgroup,
}

impl fmt::Display for KillMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Process => "process",
            Self::ProcessGroup => "process-group",
            Self::Cgroup => "cgroup",
        })
    }
}

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
    pub fn needs(&self) -> crate::policy::Needs {
        crate::policy::Needs {
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
    pub fn reason(&self, f: &crate::policy::Facts<'_>) -> Option<String> {
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

/// The file's preferences among possible victims.
#[derive(Debug, Clone)]
pub struct Order {
    prefer: Vec<Regex>,
    avoid: Vec<Regex>,
}

impl Order {
    /// No prefer or avoid rule: names play no part in the victim order.
    pub fn is_empty(&self) -> bool {
        self.prefer.is_empty() && self.avoid.is_empty()
    }

    /// +1 if comm matches a prefer regex, -1 if it matches an avoid regex
    /// (avoid wins if both), else 0.
    pub fn rank(&self, comm: &str) -> i8 {
        if self.avoid.iter().any(|re| re.is_match(comm)) {
            -1
        } else if self.prefer.iter().any(|re| re.is_match(comm)) {
            1
        } else {
            0
        }
    }
}

/// A program run after each kill.
#[derive(Debug, Clone)]
pub struct Hook {
    /// argv, run without a shell; `command[0]` is an absolute path.
    pub command: Vec<String>,
    pub timeout: Duration,
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
    min_progress_pages: Option<u64>,
    min_share_percent: Option<Spanned<u64>>,
    max_fruitless_kills: Option<Spanned<u64>>,
    kill_window_ms: Option<Spanned<u64>>,
    victim_exit_timeout_ms: Option<Spanned<u64>>,
    protect: RawProtect,
    order: RawOrder,
    hook: Option<Spanned<RawHook>>,
    scope: Vec<Spanned<RawScope>>,
    host: RawHost,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHost {
    mode: HostMode,
    budget_ms: Option<Spanned<u64>>,
    window_ms: Option<Spanned<u64>>,
    retry_loops: Option<Spanned<u64>>,
    min_available_percent: Option<Spanned<u64>>,
    on_direct_reclaim: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawProtect {
    comm: Vec<Spanned<String>>,
    exe: Option<Vec<Spanned<String>>>,
    cmdline: Vec<Spanned<String>>,
    cgroups: Vec<Spanned<String>>,
    uids: Vec<u32>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawOrder {
    prefer: Vec<Spanned<String>>,
    avoid: Vec<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHook {
    command: Option<Spanned<Vec<String>>>,
    timeout_ms: Option<Spanned<u64>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawScope {
    paths: Option<Spanned<Vec<Spanned<String>>>>,
    budget_ms: Option<Spanned<u64>>,
    window_ms: Option<Spanned<u64>>,
    kill: KillMode,
    kill_watched_cgroup: Option<Spanned<bool>>,
}

/// Semantic mistakes found so far.
struct Errors<'a> {
    text: &'a str,
    found: Vec<(usize, Located)>,
}

impl Errors<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.found
            .push((span.start, Located::at(self.text, span.start, message)));
    }
}

fn value<T: Copy>(key: Option<&Spanned<T>>) -> Option<T> {
    key.map(|k| *k.get_ref())
}

fn regexes(errors: &mut Errors<'_>, key: &str, patterns: &[Spanned<String>]) -> Vec<Regex> {
    patterns
        .iter()
        .filter_map(|p| match Regex::new(p.get_ref()) {
            Ok(re) => Some(re),
            Err(e) => {
                errors.at(
                    p.span(),
                    format!("{key}: invalid regex {:?}: {}", p.get_ref(), regex_why(&e)),
                );
                None
            }
        })
        .collect()
}

/// The one-line reason of a regex error, without the pattern drawing.
fn regex_why(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .unwrap_or(text)
            .to_owned(),
        other => other.to_string(),
    }
}

fn glob_matchers(
    errors: &mut Errors<'_>,
    key: &str,
    globs: &[Spanned<String>],
) -> Vec<GlobMatcher> {
    globs
        .iter()
        .filter_map(|g| cgroup_glob(errors, key, g))
        .map(|g| g.compile_matcher())
        .collect()
}

/// A cgroup path glob: "*" does not cross "/", so "/user.slice/*" names the
/// user slices and not every session below them.
fn cgroup_glob(
    errors: &mut Errors<'_>,
    key: &str,
    glob: &Spanned<String>,
) -> Option<globset::Glob> {
    let text = glob.get_ref();
    let (what, example) = if key == "protect.exe" {
        (
            "executable path",
            "absolute, as /proc/PID/exe shows it, e.g. \"/usr/sbin/sshd\"",
        )
    } else {
        (
            "cgroup path",
            "relative to the cgroup2 root, e.g. \"/user.slice\"",
        )
    };
    if !text.starts_with('/') {
        errors.at(
            glob.span(),
            format!("{key}: {what} {text:?} must start with \"/\" ({example})"),
        );
        return None;
    }
    if text.len() > 1 && text.ends_with('/') {
        errors.at(
            glob.span(),
            format!("{key}: {what} {text:?} must not end with \"/\": it would match nothing"),
        );
        return None;
    }
    match GlobBuilder::new(text).literal_separator(true).build() {
        Ok(g) => Some(g),
        Err(e) => {
            errors.at(
                glob.span(),
                format!("{key}: invalid glob {text:?}: {}", e.kind()),
            );
            None
        }
    }
}

/// Checks a budget/window pair set (at least partly) at one level of the
/// file; `inherited` fills in the keys not set there.
fn check_timing(
    errors: &mut Errors<'_>,
    level: &str,
    budget_key: Option<&Spanned<u64>>,
    window_key: Option<&Spanned<u64>>,
    inherited: (u64, u64),
) {
    let budget = value(budget_key).unwrap_or(inherited.0);
    let window = value(window_key).unwrap_or(inherited.1);
    if let Some(b) = budget_key.filter(|_| budget == 0) {
        errors.at(b.span(), format!("{level}budget_ms must be above 0"));
        return;
    }
    if budget == 0 || window >= budget {
        return;
    }
    let (span, window_note) = match (window_key, budget_key) {
        (Some(w), _) => (w.span(), String::new()),
        // The top level and the host scope inherit nothing: a missing
        // window is the built-in default.
        (None, Some(b)) if level.is_empty() || level == "host." => {
            (b.span(), ", the default".to_owned())
        }
        (None, Some(b)) => (b.span(), ", inherited".to_owned()),
        // Neither set here: checked where they were set.
        (None, None) => return,
    };
    errors.at(
        span,
        format!(
            "{level}window_ms ({window}{window_note}) must be at least budget_ms ({budget}): \
             a cgroup cannot stall longer than the window it is measured over"
        ),
    );
}

impl Config {
    /// Parses and checks a policy. `origin` names the text in messages, e.g.
    /// "/etc/guard/guard.toml" or "<embedded>".
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.to_owned(),
            errors: vec![Located::at(
                text,
                e.span().map_or(0, |s| s.start),
                e.message(),
            )],
        })?;
        let mut errors = Errors {
            text,
            found: Vec::new(),
        };

        check_timing(
            &mut errors,
            "",
            raw.budget_ms.as_ref(),
            raw.window_ms.as_ref(),
            (DEFAULT_BUDGET_MS, DEFAULT_WINDOW_MS),
        );
        let budget_ms = value(raw.budget_ms.as_ref()).unwrap_or(DEFAULT_BUDGET_MS);
        let window_ms = value(raw.window_ms.as_ref()).unwrap_or(DEFAULT_WINDOW_MS);

        let min_share_percent = match raw.min_share_percent {
            Some(s) if *s.get_ref() > 100 => {
                errors.at(
                    s.span(),
                    format!("min_share_percent ({}) must be at most 100", s.get_ref()),
                );
                DEFAULT_MIN_SHARE_PERCENT
            }
            Some(s) => s.into_inner(),
            None => DEFAULT_MIN_SHARE_PERCENT,
        };

        let exe = match &raw.protect.exe {
            Some(globs) => glob_matchers(&mut errors, "protect.exe", globs),
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
        let positive =
            |errors: &mut Errors<'_>, key: &str, v: &Option<Spanned<u64>>, default| match v {
                Some(s) if *s.get_ref() == 0 => {
                    errors.at(s.span(), format!("{key} must be above 0"));
                    default
                }
                Some(s) => *s.get_ref(),
                None => default,
            };
        let max_fruitless_kills = positive(
            &mut errors,
            "max_fruitless_kills",
            &raw.max_fruitless_kills,
            DEFAULT_MAX_FRUITLESS_KILLS,
        );
        let kill_window_ms = positive(
            &mut errors,
            "kill_window_ms",
            &raw.kill_window_ms,
            DEFAULT_KILL_WINDOW_MS,
        );
        let victim_exit_timeout_ms = positive(
            &mut errors,
            "victim_exit_timeout_ms",
            &raw.victim_exit_timeout_ms,
            DEFAULT_VICTIM_EXIT_TIMEOUT_MS,
        );
        let protect = Protect {
            comm: regexes(&mut errors, "protect.comm", &raw.protect.comm),
            exe,
            cmdline: regexes(&mut errors, "protect.cmdline", &raw.protect.cmdline),
            cgroups: glob_matchers(&mut errors, "protect.cgroups", &raw.protect.cgroups),
            uids: raw.protect.uids,
        };
        let order = Order {
            prefer: regexes(&mut errors, "order.prefer", &raw.order.prefer),
            avoid: regexes(&mut errors, "order.avoid", &raw.order.avoid),
        };

        let hook = raw.hook.map(|h| {
            let span = h.span();
            let h = h.into_inner();
            let command = match h.command {
                None => {
                    errors.at(
                        span,
                        "[hook] needs command = [\"/absolute/path/to/program\", \"arg\", ...]",
                    );
                    Vec::new()
                }
                Some(c) if c.get_ref().is_empty() => {
                    errors.at(
                        c.span(),
                        "hook command is empty: give the program's absolute path first",
                    );
                    Vec::new()
                }
                Some(c) if !c.get_ref()[0].starts_with('/') => {
                    errors.at(
                        c.span(),
                        format!(
                            "hook command {:?} must start with an absolute path: guard runs it \
                             as root, without a shell and without searching PATH",
                            c.get_ref()[0]
                        ),
                    );
                    Vec::new()
                }
                Some(c) => c.into_inner(),
            };
            let timeout_ms = match h.timeout_ms {
                Some(t) if *t.get_ref() == 0 => {
                    errors.at(t.span(), "hook timeout_ms must be above 0");
                    DEFAULT_HOOK_TIMEOUT_MS
                }
                Some(t) => t.into_inner(),
                None => DEFAULT_HOOK_TIMEOUT_MS,
            };
            Hook {
                command,
                timeout: Duration::from_millis(timeout_ms),
            }
        });

        if raw.scope.is_empty() {
            errors.at(
                0..0,
                "no [[scope]]: guard would watch nothing; add one, e.g. [[scope]] with \
                 paths = [\"/**\"] to watch every cgroup with a finite memory.high",
            );
        }
        let scopes = raw
            .scope
            .into_iter()
            .map(|s| {
                let span = s.span();
                let s = s.into_inner();
                check_timing(
                    &mut errors,
                    "scope ",
                    s.budget_ms.as_ref(),
                    s.window_ms.as_ref(),
                    (budget_ms, window_ms),
                );
                if let Some(k) = &s.kill_watched_cgroup
                    && *k.get_ref()
                    && s.kill != KillMode::Cgroup
                {
                    errors.at(
                        k.span(),
                        format!(
                            "kill_watched_cgroup = true applies only with kill = \"cgroup\" \
                             (this scope has kill = \"{}\")",
                            s.kill
                        ),
                    );
                }
                let mut paths = Vec::new();
                let mut set = GlobSetBuilder::new();
                match &s.paths {
                    Some(p) if !p.get_ref().is_empty() => {
                        for g in p.get_ref() {
                            if let Some(glob) = cgroup_glob(&mut errors, "scope paths", g) {
                                set.add(glob);
                            }
                            paths.push(g.get_ref().clone());
                        }
                    }
                    Some(p) => errors.at(p.span(), "scope paths is empty: it would match nothing"),
                    None => errors.at(
                        span.clone(),
                        "[[scope]] needs paths = [\"/glob\", ...] (cgroup paths, e.g. \
                         \"/user.slice/user-*.slice\")",
                    ),
                }
                let globs = set.build().unwrap_or_else(|e| {
                    errors.at(span, format!("scope paths: {e}"));
                    GlobSet::empty()
                });
                Scope {
                    paths,
                    budget: Duration::from_millis(value(s.budget_ms.as_ref()).unwrap_or(budget_ms)),
                    window: Duration::from_millis(value(s.window_ms.as_ref()).unwrap_or(window_ms)),
                    kill: s.kill,
                    kill_watched_cgroup: value(s.kill_watched_cgroup.as_ref()).unwrap_or(false),
                    globs,
                }
            })
            .collect();

        check_timing(
            &mut errors,
            "host.",
            raw.host.budget_ms.as_ref(),
            raw.host.window_ms.as_ref(),
            (DEFAULT_HOST_BUDGET_MS, DEFAULT_HOST_WINDOW_MS),
        );
        if let Some(l) = raw.host.retry_loops.as_ref().filter(|l| *l.get_ref() >= 16) {
            errors.at(
                l.span(),
                format!(
                    "host.retry_loops ({}) must be below 16: the kernel's OOM killer acts after 16 \
                     retries without progress, so the guard would always come too late",
                    l.get_ref()
                ),
            );
        }
        if let Some(p) = raw
            .host
            .min_available_percent
            .as_ref()
            .filter(|p| *p.get_ref() > 100)
        {
            errors.at(
                p.span(),
                format!(
                    "host.min_available_percent ({}) must be at most 100",
                    p.get_ref()
                ),
            );
        }
        let host = Host {
            mode: raw.host.mode,
            budget: Duration::from_millis(
                value(raw.host.budget_ms.as_ref()).unwrap_or(DEFAULT_HOST_BUDGET_MS),
            ),
            window: Duration::from_millis(
                value(raw.host.window_ms.as_ref()).unwrap_or(DEFAULT_HOST_WINDOW_MS),
            ),
            retry_loops: value(raw.host.retry_loops.as_ref()).unwrap_or(DEFAULT_HOST_RETRY_LOOPS),
            min_available_percent: value(raw.host.min_available_percent.as_ref())
                .unwrap_or(DEFAULT_HOST_MIN_AVAILABLE_PERCENT),
            on_direct_reclaim: raw.host.on_direct_reclaim.unwrap_or(true),
        };

        if !errors.found.is_empty() {
            errors.found.sort_by_key(|(offset, _)| *offset);
            return Err(ConfigError::Invalid {
                path: origin.to_owned(),
                errors: errors.found.into_iter().map(|(_, e)| e).collect(),
            });
        }
        Ok(Config {
            dry_run: raw.dry_run,
            verdict_interval: Duration::from_millis(
                raw.verdict_interval_ms
                    .unwrap_or(DEFAULT_VERDICT_INTERVAL_MS),
            ),
            min_progress_pages: raw.min_progress_pages.unwrap_or(DEFAULT_MIN_PROGRESS_PAGES),
            min_share_percent,
            max_fruitless_kills,
            kill_window: Duration::from_millis(kill_window_ms),
            victim_exit_timeout: Duration::from_millis(victim_exit_timeout_ms),
            protect,
            order,
            hook,
            scopes,
            host,
        })
    }

    /// The built-in policy.
    pub fn default_policy() -> Config {
        // A unit test parses the same text: this cannot fail in a build
        // whose tests pass.
        Self::parse(DEFAULT_POLICY, "<embedded>").expect("the embedded default policy is valid")
    }

    /// Reads a policy file that only root can change.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        check_secure(path)?;
        let io_err = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        // O_NOFOLLOW and a second look at the opened file: a link put in
        // place after the check is refused, not followed.
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        judge(path, FILE, meta.uid(), meta.mode(), false)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io_err)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// First scope whose globs match this cgroup path
    /// ("/user.slice/user-1000.slice"), if any.
    pub fn scope_for(&self, cgroup_path: &str) -> Option<&Scope> {
        self.scopes.iter().find(|s| s.matches(cgroup_path))
    }
}

const FILE: &str = "the policy file";
const DIR: &str = "the policy file's directory";

/// Refuses a file, or its directory, writable by anyone but root (owner not
/// uid 0, or group/other write bit set), or a symlink; the error says which
/// path and why and how to fix (chown root:root / chmod go-w).
///
/// Whoever can write the policy chooses which processes guard kills, and
/// which program it runs as root after a kill.
pub fn check_secure(path: &Path) -> Result<(), ConfigError> {
    let look = |p: &Path| {
        fs::symlink_metadata(p).map_err(|source| ConfigError::Io {
            path: p.to_owned(),
            source,
        })
    };
    let meta = look(path)?;
    judge(
        path,
        FILE,
        meta.uid(),
        meta.mode(),
        meta.file_type().is_symlink(),
    )?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = look(dir)?;
    judge(
        dir,
        DIR,
        meta.uid(),
        meta.mode(),
        meta.file_type().is_symlink(),
    )
}

/// The decision of [`check_secure`] on one path, from its metadata.
fn judge(
    path: &Path,
    what: &str,
    uid: u32,
    mode: u32,
    is_symlink: bool,
) -> Result<(), ConfigError> {
    let shown = path.display();
    if is_symlink {
        return Err(ConfigError::Insecure {
            path: path.to_owned(),
            why: format!(
                "{what} is a symbolic link: whoever can change the link or its target chooses \
                 the policy. Fix: use the real path (readlink -f {shown}), or replace the link \
                 with a root-owned copy of the file"
            ),
        });
    }
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if uid != 0 {
        problems.push(format!("owned by uid {uid}, not root"));
        fixes.push(format!("chown root:root {shown}"));
    }
    let writers = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("its group and others"),
        (true, false) => Some("its group"),
        (false, true) => Some("others"),
        (false, false) => None,
    };
    if let Some(writers) = writers {
        problems.push(format!(
            "writable by {writers} (mode {:04o})",
            mode & 0o7777
        ));
        fixes.push(format!("chmod go-w {shown}"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Insecure {
        path: path.to_owned(),
        why: format!(
            "{what} is {}: whoever can write it chooses which processes guard kills. Fix: {}",
            problems.join(" and "),
            fixes.join(" && ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "/etc/guard/guard.toml")
    }

    /// The mistakes of a file that must be refused.
    fn mistakes(text: &str) -> Vec<Located> {
        match parse(text) {
            Err(ConfigError::Invalid { errors, .. }) => errors,
            Err(other) => panic!("expected an invalid-policy error, got {other}"),
            Ok(c) => panic!("expected an invalid-policy error, got {c:?}"),
        }
    }

    fn one_mistake(text: &str) -> Located {
        let errors = mistakes(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().expect("one")
    }

    const SCOPE: &str = "[[scope]]\npaths = [\"/**\"]\n";

    /// The file rules' verdict on a process with these facts (no exe).
    fn why(p: &Protect, comm: &str, cmdline: &str, cgroup: &str, uid: u32) -> Option<String> {
        let comm = crate::procfs::Comm::from(comm);
        p.reason(&crate::policy::Facts {
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
    fn embedded_default_watches_every_cgroup() {
        let c = Config::default_policy();
        for path in [
            "/user.slice/user-1000.slice",
            "/system.slice/cron.service",
            "/docker.slice",
            "/a/b/c/d",
        ] {
            assert!(c.scope_for(path).is_some(), "{path}");
        }
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
    fn bad_regex_names_its_line_and_column() {
        let e = one_mistake(&format!("[protect]\ncomm = [\"ok\", \"(sshd\"]\n{SCOPE}"));
        assert_eq!((e.line, e.column), (2, 15), "{e}");
        assert!(e.message.contains("protect.comm"), "{e}");
        assert!(e.message.contains("(sshd"), "{e}");
        assert!(e.message.contains("unclosed group"), "{e}");
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
    fn window_shorter_than_budget_is_refused() {
        let e = one_mistake(&format!("budget_ms = 500\nwindow_ms = 400\n{SCOPE}"));
        assert_eq!((e.line, e.column), (2, 13), "{e}");
        assert!(e.message.contains("window_ms (400)"), "{e}");
        // Raising the budget past the default window points at the budget.
        let e = one_mistake(&format!("budget_ms = 2000\n{SCOPE}"));
        assert_eq!(e.line, 1, "{e}");
        assert!(e.message.contains("window_ms (1000, the default)"), "{e}");
        // A scope that shortens its window below the inherited budget.
        let e = one_mistake(&format!("{SCOPE}window_ms = 100\n"));
        assert_eq!((e.line, e.column), (3, 13), "{e}");
        assert!(e.message.starts_with("scope window_ms"), "{e}");
    }

    #[test]
    fn unknown_kill_mode_is_refused_with_its_line() {
        let e = one_mistake(&format!("{SCOPE}kill = \"bogus\"\n"));
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("bogus"), "{e}");
        assert!(e.message.contains("process-group"), "{e}");
    }

    #[test]
    fn a_policy_without_scope_is_refused() {
        let e = one_mistake("dry_run = true\n");
        assert_eq!((e.line, e.column), (1, 1), "{e}");
        assert!(e.message.contains("[[scope]]"), "{e}");
        let e = one_mistake("[[scope]]\nkill = \"cgroup\"\n");
        assert_eq!((e.line, e.column), (1, 1), "{e}");
        assert!(e.message.contains("paths"), "{e}");
        let e = one_mistake("[[scope]]\npaths = []\n");
        assert_eq!((e.line, e.column), (2, 9), "{e}");
    }

    #[test]
    fn cgroup_globs_must_be_absolute_and_well_formed() {
        let errors = mistakes(
            "[protect]\ncgroups = [\"system.slice\"]\n[[scope]]\npaths = [\"/a/[b\", \"/c/\"]\n",
        );
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(2, 12), (4, 10), (4, 19)], "{errors:?}");
        assert!(
            errors[0].message.contains("must start with \"/\""),
            "{errors:?}"
        );
        assert!(errors[1].message.contains("invalid glob"), "{errors:?}");
        assert!(errors[2].message.contains("end with"), "{errors:?}");
    }

    #[test]
    fn other_out_of_range_values_are_refused() {
        let e = one_mistake(&format!("min_share_percent = 101\n{SCOPE}"));
        assert_eq!((e.line, e.column), (1, 21), "{e}");
        let errors = mistakes(&format!("[hook]\ncommand = []\ntimeout_ms = 0\n{SCOPE}"));
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(2, 11), (3, 14)], "{errors:?}");
        let e = one_mistake(&format!("[hook]\ncommand = [\"notify-send\"]\n{SCOPE}"));
        assert!(e.message.contains("absolute path"), "{e}");
        let e = one_mistake(&format!("[hook]\ntimeout_ms = 10\n{SCOPE}"));
        assert!(e.message.contains("command"), "{e}");
        let e = one_mistake(&format!("verdict_interval_ms = -1\n{SCOPE}"));
        assert_eq!(e.line, 1, "{e}");
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

    fn refused(uid: u32, mode: u32, is_symlink: bool) -> String {
        match judge(
            Path::new("/etc/guard/guard.toml"),
            FILE,
            uid,
            mode,
            is_symlink,
        ) {
            Err(e @ ConfigError::Insecure { .. }) => e.to_string(),
            Err(e) => panic!("expected insecure, got {e}"),
            Ok(()) => panic!("expected a refusal"),
        }
    }

    #[test]
    fn a_root_owned_file_writable_only_by_root_is_trusted() {
        let ok = |mode| judge(Path::new("/etc/guard/guard.toml"), FILE, 0, mode, false);
        ok(0o100644).expect("0644");
        ok(0o100600).expect("0600");
        ok(0o040755).expect("a 0755 directory");
    }

    #[test]
    fn a_group_writable_file_is_refused_with_the_fix() {
        let msg = refused(0, 0o100664, false);
        assert!(msg.contains("/etc/guard/guard.toml"), "{msg}");
        assert!(msg.contains("writable by its group"), "{msg}");
        assert!(msg.contains("chmod go-w /etc/guard/guard.toml"), "{msg}");
        let msg = refused(0, 0o041777, false);
        assert!(msg.contains("others"), "{msg}");
    }

    #[test]
    fn a_file_owned_by_a_user_is_refused_with_the_fix() {
        let msg = refused(1000, 0o100644, false);
        assert!(msg.contains("/etc/guard/guard.toml"), "{msg}");
        assert!(msg.contains("uid 1000"), "{msg}");
        assert!(
            msg.contains("chown root:root /etc/guard/guard.toml"),
            "{msg}"
        );
        assert!(!msg.contains("chmod"), "{msg}");
    }

    #[test]
    fn a_symlink_is_refused() {
        let msg = refused(0, 0o120777, true);
        assert!(msg.contains("/etc/guard/guard.toml"), "{msg}");
        assert!(msg.contains("symbolic link"), "{msg}");
    }

    #[test]
    fn load_refuses_a_group_writable_file_on_disk() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("guard.toml");
        fs::write(&file, DEFAULT_POLICY).expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o664)).expect("chmod");
        let err = Config::load(&file).expect_err("refused");
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Insecure { .. }), "{msg}");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("chmod go-w"), "{msg}");
    }

    #[test]
    fn load_refuses_a_symlink_on_disk() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.toml");
        fs::write(&real, DEFAULT_POLICY).expect("write");
        fs::set_permissions(&real, fs::Permissions::from_mode(0o644)).expect("chmod");
        let link = dir.path().join("guard.toml");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let err = Config::load(&link).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains(&link.display().to_string()), "{msg}");
        assert!(msg.contains("symbolic link"), "{msg}");
    }

    #[test]
    fn load_of_a_missing_file_names_it() {
        let err = Config::load(Path::new("/nonexistent/guard.toml")).expect_err("missing");
        assert!(matches!(err, ConfigError::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/guard.toml"), "{err}");
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

    #[test]
    fn the_host_scope_defaults_to_watch_and_is_checked_like_a_scope() {
        let c = Config::default_policy();
        assert_eq!(c.host.mode, HostMode::Watch);
        assert!(c.host.on_direct_reclaim);
        assert_eq!(c.host.budget, Duration::from_millis(250));
        assert_eq!(c.host.retry_loops, 4);
        assert_eq!(c.host.min_available_percent, 5);
        let c = parse(&format!(
            "[host]\nmode = \"kill\"\nbudget_ms = 100\nretry_loops = 0\n{SCOPE}"
        ))
        .expect("valid");
        assert_eq!(c.host.mode, HostMode::Kill);
        assert_eq!(c.host.budget, Duration::from_millis(100));
        assert_eq!(c.host.retry_loops, 0);
        let e = one_mistake(&format!("[host]\nretry_loops = 16\n{SCOPE}"));
        assert_eq!((e.line, e.column), (2, 15));
        assert!(e.message.contains("must be below 16"), "{e}");
        let e = one_mistake(&format!("[host]\nbudget_ms = 2000\n{SCOPE}"));
        assert!(
            e.message.contains("host.window_ms (1000, the default)"),
            "{e}"
        );
        let e = one_mistake(&format!("[host]\nmin_available_percent = 101\n{SCOPE}"));
        assert!(e.message.contains("at most 100"), "{e}");
        let e = one_mistake(&format!("[host]\nmode = \"always\"\n{SCOPE}"));
        assert!(e.message.contains("unknown variant"), "{e}");
    }
}
