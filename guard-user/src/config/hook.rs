//! `[hook]`: the program guard runs after each kill.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::check::{Bound, Errors, bounded};

const DEFAULT_HOOK_TIMEOUT_MS: u64 = 5000;

/// A program run after each kill.
#[derive(Debug, Clone)]
pub struct Hook {
    /// argv, run without a shell; `command[0]` is an absolute path.
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawHook {
    command: Option<Spanned<Vec<String>>>,
    timeout_ms: Option<Spanned<u64>>,
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
    Hook {
        command,
        timeout: Duration::from_millis(timeout_ms),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{SCOPE, mistakes, one_mistake};

    #[test]
    fn a_hook_needs_an_absolute_command_and_a_positive_timeout() {
        let errors = mistakes(&format!("[hook]\ncommand = []\ntimeout_ms = 0\n{SCOPE}"));
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(2, 11), (3, 14)], "{errors:?}");
        let e = one_mistake(&format!("[hook]\ncommand = [\"notify-send\"]\n{SCOPE}"));
        assert!(e.message.contains("absolute path"), "{e}");
        let e = one_mistake(&format!("[hook]\ntimeout_ms = 10\n{SCOPE}"));
        assert!(e.message.contains("command"), "{e}");
    }
}
