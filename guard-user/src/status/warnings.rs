//! Risky settings guard can see from the machine and the policy, each with
//! the fix.

use serde::Serialize;

use super::CgroupStatus;
use crate::{config::HostMode, policy::Policy};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// "unwatched_band", "all_protected", "host_without_swap" or
    /// "daemon_version".
    pub kind: &'static str,
    pub cgroup: Option<String>,
    pub message: String,
}

/// The warnings for these cgroups under `policy`, `swap_on` telling whether
/// the machine has any swap.
///
/// "No scope watches" a cgroup when no `[[scope]]` of the policy matches its
/// path: the daemon lists only cgroups in a scope, and a verdict for one in
/// no scope is dropped (OutOfScope), so guard never acts there whatever
/// its memory.high.
pub fn warnings(cgroups: &[CgroupStatus], policy: &Policy, swap_on: bool) -> Vec<Warning> {
    let mut out = Vec::new();
    for c in cgroups {
        let below_max = c.memory_max.is_none_or(|max| c.memory_high < max);
        let no_swap = c.swap_max == Some(0) || !swap_on;
        if c.scope.is_none() && below_max && no_swap {
            out.push(Warning {
                kind: "unwatched_band",
                cgroup: Some(c.cgroup.clone()),
                message: format!(
                    "{} has memory.high below memory.max and no swap, so a process there can \
                     stall on memory.high for ever, and no [[scope]] of the policy matches it, \
                     so guard leaves it alone. Fix: add a [[scope]] whose paths match it, or \
                     set its memory.high to its memory.max",
                    c.cgroup
                ),
            });
        }
        if let Some(census) = &c.census
            && c.scope.is_some()
            && census.processes > 0
            && census.protected == census.processes
        {
            out.push(Warning {
                kind: "all_protected",
                cgroup: Some(c.cgroup.clone()),
                message: format!(
                    "every process in {} ({} of them) is protected by the policy, so guard \
                     could never end a stall there: it would only log it as unresolved. Fix: \
                     narrow the [protect] rules that match them, or leave this cgroup out of \
                     the scopes and give it a memory.max instead",
                    c.cgroup, census.processes
                ),
            });
        }
    }
    if policy.config.host.mode == HostMode::Watch && !swap_on {
        out.push(Warning {
            kind: "host_without_swap",
            cgroup: None,
            message: "[host] mode = \"watch\" on a machine without swap: when the whole \
                      machine runs out of memory guard only logs what it would kill, and the \
                      kernel's OOM killer picks the victim (it may be a session or a user's \
                      systemd). Fix: set mode = \"kill\" in [host] of the policy, or add swap"
                .to_owned(),
        });
    }
    out
}

/// The running daemon is another version than this command: it was not
/// restarted after an upgrade (or a second build runs).
pub fn daemon_version(d: &super::DaemonInfo) -> Option<Warning> {
    let mine = env!("CARGO_PKG_VERSION");
    (d.guard_version != mine).then(|| Warning {
        kind: "daemon_version",
        cgroup: None,
        message: format!(
            "the running daemon (pid {}) is guard {}, this command is guard {mine}: the \
             installed binary is not the one guarding. Fix: systemctl restart guard",
            d.pid, d.guard_version
        ),
    })
}
