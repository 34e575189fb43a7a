//! `[[scope]]`: which cgroups guard watches, how long each may stall, and
//! what a kill there takes.

use std::{fmt, ops::Range, time::Duration};

use globset::{GlobSet, GlobSetBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::check::{Errors, cgroup_glob, check_timing, value};

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

/// One `[[scope]]` as written. Absent keys are None so that a scope can
/// tell "not set here" (inherit the top level) from "set to the default".
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawScope {
    paths: Option<Spanned<Vec<Spanned<String>>>>,
    budget_ms: Option<Spanned<u64>>,
    window_ms: Option<Spanned<u64>>,
    kill: KillMode,
    kill_watched_cgroup: Option<Spanned<bool>>,
}

/// Every scope in file order; `inherited` is the top level's (budget_ms,
/// window_ms).
pub(super) fn parse(
    errors: &mut Errors<'_>,
    scopes: Vec<Spanned<RawScope>>,
    inherited: (u64, u64),
) -> Vec<Scope> {
    if scopes.is_empty() {
        errors.at(
            0..0,
            "no [[scope]]: guard would watch nothing; add one, e.g. [[scope]] with \
             paths = [\"/**\"] to watch every cgroup with a finite memory.high",
        );
    }
    scopes
        .into_iter()
        .map(|s| parse_one(errors, s, inherited))
        .collect()
}

fn parse_one(errors: &mut Errors<'_>, scope: Spanned<RawScope>, inherited: (u64, u64)) -> Scope {
    let span = scope.span();
    let s = scope.into_inner();
    check_timing(
        errors,
        "scope ",
        s.budget_ms.as_ref(),
        s.window_ms.as_ref(),
        inherited,
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
    let (paths, globs) = paths(errors, span, s.paths.as_ref());
    Scope {
        paths,
        budget: Duration::from_millis(value(s.budget_ms.as_ref()).unwrap_or(inherited.0)),
        window: Duration::from_millis(value(s.window_ms.as_ref()).unwrap_or(inherited.1)),
        kill: s.kill,
        kill_watched_cgroup: value(s.kill_watched_cgroup.as_ref()).unwrap_or(false),
        globs,
    }
}

/// A scope's globs as written, and compiled; `span` is the whole scope's,
/// for mistakes no single glob is to blame for.
fn paths(
    errors: &mut Errors<'_>,
    span: Range<usize>,
    written: Option<&Spanned<Vec<Spanned<String>>>>,
) -> (Vec<String>, GlobSet) {
    let mut paths = Vec::new();
    let mut set = GlobSetBuilder::new();
    match written {
        Some(p) if !p.get_ref().is_empty() => {
            for g in p.get_ref() {
                if let Some(glob) = cgroup_glob(errors, "scope paths", g) {
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
    (paths, globs)
}

#[cfg(test)]
mod tests {
    use crate::config::{
        Config,
        tests::{SCOPE, one_mistake},
    };

    /// deploy/band/guard.toml, the runbook's policy: each band its own
    /// scope, matched on the paths systemd gives those units (a template's
    /// slice name has its dash escaped), and anything else the default.
    #[test]
    fn the_band_runbooks_policy_gives_each_band_its_scope() {
        let text = include_str!("../../../deploy/band/guard.toml");
        let c = Config::parse(text, "deploy/band/guard.toml").expect("the runbook's policy");
        let first = |path: &str| {
            c.scope_for(path)
                .map(|s| s.paths[0].clone())
                .unwrap_or_default()
        };
        assert_eq!(
            first("/system.slice/system-t3\\x2dserve.slice/t3-serve@demo.service"),
            "/system.slice/system-t3*.slice/t3-serve@*.service"
        );
        assert_eq!(
            first("/user.slice/user-1000.slice"),
            "/user.slice/user-*.slice"
        );
        assert_eq!(first("/docker.slice"), "/docker.slice");
        assert_eq!(first("/system.slice/guard-balloon.scope"), "/**");
        // A session inside a user's slice is not the slice's band.
        assert_eq!(first("/user.slice/user-1000.slice/session-3.scope"), "/**");
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
}
