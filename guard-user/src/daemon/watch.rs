//! Which cgroups the kernel lists, with which limits: a scan at start and
//! at reload, and every creation and removal followed as it happens.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use guard_common::{CGROUP_CREATED, CGROUP_REMOVED, CgroupEvent, Watch};
use tracing::{debug, info, warn};

use crate::{
    cgroup::{self, Hierarchy},
    config::Scope,
    decision::Responder,
    kernel::Probes,
    policy::Policy,
};

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Cgroups to list in the kernel: those with a finite memory.high in a
/// scope, with the scope's budget and window.
pub(super) fn scan(
    hierarchy: &Hierarchy,
    policy: &Policy,
) -> Result<HashMap<u64, (PathBuf, Watch)>, cgroup::CgroupError> {
    let mut out = HashMap::new();
    for (id, dir) in hierarchy.scan_high_limited()? {
        if let Some(scope) = policy.config.scope_for(&hierarchy.display_path(&dir)) {
            out.insert(id, (dir, scope_limits(scope)));
        }
    }
    Ok(out)
}

/// Whether a cgroup created after start is listed in the kernel under its
/// scope. A catch-all scope (one that matches any path, like the default
/// `/**`) lists nothing at creation: the kernel already charges stalls to the
/// task's own cgroup with the default limits, and listing every new cgroup
/// would only keep subtrees from adding up.
fn lists_on_creation(scope: &Scope) -> bool {
    !scope.matches("/guard-probe.slice/any/depth.scope")
}

fn scope_limits(scope: &Scope) -> Watch {
    Watch {
        budget_ns: nanos(scope.budget),
        window_ns: nanos(scope.window),
    }
}

/// Follows one cgroup creation or removal.
pub(super) fn follow_cgroup(
    event: &CgroupEvent,
    probes: &mut Probes,
    responder: &mut Responder,
    hierarchy: &Hierarchy,
) {
    match event.kind {
        CGROUP_CREATED => {
            let Some(path) = event.path() else {
                debug!(
                    cgroup_id = event.id,
                    "created cgroup's path is too long to follow"
                );
                return;
            };
            let dir = hierarchy.root().join(path.trim_start_matches('/'));
            let scope = responder.policy.config.scope_for(path);
            let Some(scope) = scope.filter(|s| lists_on_creation(s)) else {
                responder.add_cgroup(event.id, dir, false);
                return;
            };
            let limits = scope_limits(scope);
            match probes.watch(event.id, limits) {
                Ok(false) => {
                    debug!(
                        cgroup = path,
                        cgroup_id = event.id,
                        "the kernel's watch list is full: new cgroup not listed"
                    );
                    responder.add_cgroup(event.id, dir, false);
                }
                Ok(true) => {
                    info!(
                        cgroup = path,
                        cgroup_id = event.id,
                        budget_ms = limits.budget_ns / 1_000_000,
                        window_ms = limits.window_ns / 1_000_000,
                        "watching new cgroup"
                    );
                    responder.add_cgroup(event.id, dir, true);
                }
                Err(e) => {
                    warn!(cgroup = path, error = %e, "could not watch a new cgroup");
                    responder.add_cgroup(event.id, dir, false);
                }
            }
        }
        CGROUP_REMOVED => {
            if responder.forget(event.id) {
                if let Err(e) = probes.unwatch(event.id) {
                    warn!(cgroup_id = event.id, error = %e, "could not unlist a removed cgroup");
                }
                info!(
                    cgroup = event.path().unwrap_or("?"),
                    cgroup_id = event.id,
                    "forgot removed cgroup"
                );
            }
        }
        _ => warn!(kind = event.kind, "unknown cgroup event"),
    }
}

/// Makes the kernel's list match `wanted`; returns the id -> path map.
pub(super) fn apply_watch_list(
    probes: &mut Probes,
    hierarchy: &Hierarchy,
    old: &HashMap<u64, PathBuf>,
    wanted: HashMap<u64, (PathBuf, Watch)>,
) -> anyhow::Result<HashMap<u64, PathBuf>> {
    for id in old.keys().filter(|id| !wanted.contains_key(id)) {
        probes.unwatch(*id)?;
    }
    let mut paths = HashMap::new();
    let mut unlisted = 0usize;
    for (id, (dir, limits)) in wanted {
        if !probes.watch(id, limits)? {
            unlisted += 1;
            continue;
        }
        if !old.contains_key(&id) {
            debug!(cgroup = %hierarchy.display_path(&dir), cgroup_id = id,
                budget_ms = limits.budget_ns / 1_000_000, window_ms = limits.window_ns / 1_000_000,
                "watching");
        }
        paths.insert(id, dir);
    }
    if unlisted > 0 {
        warn!(
            listed = paths.len(),
            unlisted,
            "the kernel's watch list is full: these limited cgroups are not listed; stalls \
             under them are charged to each task's own cgroup with the default budget and \
             window (raise max_watched_cgroups in the policy to list them all)"
        );
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn only_specific_scopes_list_cgroups_at_creation() {
        let p = Config::parse(
            "[[scope]]\npaths = [\"/user.slice/user-*.slice\"]\n[[scope]]\npaths = [\"/**\"]\n",
            "<test>",
        )
        .expect("valid");
        assert!(lists_on_creation(&p.scopes[0]));
        assert!(!lists_on_creation(&p.scopes[1]));
        assert!(!lists_on_creation(&Config::default_policy().scopes[0]));
    }
}
