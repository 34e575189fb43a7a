//! `[hook]`: the program guard runs after each kill.

use std::time::Duration;

use rustix::thread::CapabilitySet;
use serde::Deserialize;
use toml::Spanned;

use super::check::{Bound, Errors, bounded};

const DEFAULT_HOOK_TIMEOUT_MS: u64 = 5000;

/// A program run after each kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// argv, run without a shell; `command[0]` is an absolute path.
    pub command: Vec<String>,
    pub timeout: Duration,
    /// Run as this user (uid, gid) instead of root.
    pub user: Option<(u32, u32)>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawHook {
    command: Option<Spanned<Vec<String>>>,
    timeout_ms: Option<Spanned<u64>>,
    user: Option<Spanned<String>>,
}

pub(super) fn parse(errors: &mut Errors<'_>, hook: Spanned<RawHook>) -> Hook {
    let span = hook.span();
    let hook = hook.into_inner();
    let command = match hook.command {
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
    let timeout_ms = bounded(
        errors,
        "hook timeout_ms",
        hook.timeout_ms.as_ref(),
        DEFAULT_HOOK_TIMEOUT_MS,
        Bound::AboveZero,
    );
    let user = hook.user.and_then(|u| {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let found = crate::owner::passwd_ids(&passwd, u.get_ref());
        if found.is_none() {
            errors.at(
                u.span(),
                format!("hook user {:?} is not in /etc/passwd", u.get_ref()),
            );
        }
        found
    });
    Hook {
        command,
        timeout: Duration::from_millis(timeout_ms),
        user,
    }
}

/// Whether a process with these effective capabilities can start `hook`:
/// running it as another user takes CAP_SETUID and CAP_SETGID, which the
/// shipped unit leaves out. The reason, naming the fix, when it cannot.
pub fn startable(hook: &Hook, effective: CapabilitySet) -> Result<(), String> {
    if hook.user.is_none() {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (CapabilitySet::SETUID, "CAP_SETUID"),
        (CapabilitySet::SETGID, "CAP_SETGID"),
    ]
    .into_iter()
    .filter(|(cap, _)| !effective.contains(*cap))
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "[hook] user needs {}, which this process lacks, so the hook could never start. Fix: \
         add them to CapabilityBoundingSet= and AmbientCapabilities= in a drop-in for \
         guard.service (deploy/README.md), or remove `user` to run the hook as root \
         without capabilities",
        missing.join(" and ")
    ))
}

/// [`startable`] for this process.
pub fn startable_here(hook: &Hook) -> Result<(), String> {
    let effective = rustix::thread::capabilities(None)
        .map(|sets| sets.effective)
        .unwrap_or_else(|_| CapabilitySet::empty());
    startable(hook, effective)
}

#[cfg(test)]
mod tests {
    use rustix::thread::CapabilitySet;

    use super::{Hook, startable};
    use crate::config::tests::{SCOPE, mistakes, one_mistake, parse};

    #[test]
    fn a_hook_user_needs_the_capabilities_to_switch_to_it() {
        let hook = |user| Hook {
            command: vec!["/bin/true".into()],
            timeout: std::time::Duration::from_secs(1),
            user,
        };
        let none = CapabilitySet::empty();
        assert_eq!(startable(&hook(None), none), Ok(()));
        let e = startable(&hook(Some((1000, 1000))), CapabilitySet::SETUID).unwrap_err();
        assert!(e.starts_with("[hook] user needs CAP_SETGID,"), "{e}");
        let e = startable(&hook(Some((1000, 1000))), none).unwrap_err();
        assert!(e.contains("CAP_SETUID and CAP_SETGID"), "{e}");
        let both = CapabilitySet::SETUID | CapabilitySet::SETGID;
        assert_eq!(startable(&hook(Some((1000, 1000))), both), Ok(()));
    }

    #[test]
    fn a_hook_needs_an_absolute_command_and_a_positive_timeout() {
        let errors = mistakes(&format!("[hook]\ncommand = []\ntimeout_ms = 0\n{SCOPE}"));
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(2, 11), (3, 14)], "{errors:?}");
        let e = one_mistake(&format!("[hook]\ncommand = [\"notify-send\"]\n{SCOPE}"));
        assert!(e.message.contains("absolute path"), "{e}");
        let e = one_mistake(&format!("[hook]\ntimeout_ms = 10\n{SCOPE}"));
        assert!(e.message.contains("command"), "{e}");
        let e = one_mistake(&format!(
            "[hook]\ncommand = [\"/bin/true\"]\nuser = \"no-such-user-here\"\n{SCOPE}"
        ));
        assert!(
            e.message
                .contains("\"no-such-user-here\" is not in /etc/passwd"),
            "{e}"
        );
        let root = parse(&format!(
            "[hook]\ncommand = [\"/bin/true\"]\nuser = \"root\"\n{SCOPE}"
        ))
        .expect("root is a user");
        assert_eq!(root.hook.and_then(|h| h.user), Some((0, 0)));
    }
}
