//! The checks several tables share, and the list of mistakes they fill.

use std::ops::Range;

use globset::{GlobBuilder, GlobMatcher};
use regex::Regex;
use toml::Spanned;

use super::{ConfigError, Located};

/// Semantic mistakes found so far, with the offset each points at.
pub(super) struct Errors<'a> {
    text: &'a str,
    found: Vec<(usize, Located)>,
}

impl<'a> Errors<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            text,
            found: Vec::new(),
        }
    }

    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.found
            .push((span.start, Located::at(self.text, span.start, message)));
    }

    /// Every mistake found, in file order, or Ok if there was none.
    pub(super) fn finish(mut self, origin: &str) -> Result<(), ConfigError> {
        if self.found.is_empty() {
            return Ok(());
        }
        // Stable: mistakes at one offset keep the order they were found in.
        self.found.sort_by_key(|(offset, _)| *offset);
        Err(ConfigError::Invalid {
            path: origin.to_owned(),
            errors: self.found.into_iter().map(|(_, e)| e).collect(),
        })
    }
}

pub(super) fn value<T: Copy>(key: Option<&Spanned<T>>) -> Option<T> {
    key.map(|k| *k.get_ref())
}

/// What a number key must be.
#[derive(Clone, Copy)]
pub(super) enum Bound {
    /// For counts and durations where 0 would switch off what the key is for.
    AboveZero,
    Percent,
    /// Pages a memory.high reclaim pass must free to count as progress.
    ProgressPages,
}

/// What a memory.high reclaim pass is asked to free: the charges made over
/// the limit since the last pass, in batches of MEMCG_CHARGE_BATCH (64
/// pages). A pass asked for that much cannot free much more.
pub(super) const PASS_TARGET_PAGES: u64 = 64;

/// The key's value; `default` when it is left out, or when it is out of
/// `bound` (a mistake is then noted at the value).
pub(super) fn bounded(
    errors: &mut Errors<'_>,
    key: &str,
    v: Option<&Spanned<u64>>,
    default: u64,
    bound: Bound,
) -> u64 {
    let Some(s) = v else { return default };
    let n = *s.get_ref();
    let why = match bound {
        Bound::AboveZero if n == 0 => format!("{key} must be above 0"),
        Bound::Percent if n > 100 => format!("{key} ({n}) must be at most 100"),
        Bound::ProgressPages if n == 0 => format!(
            "{key} must be above 0: no pass frees fewer than 0 pages, so none would count as \
             without progress and guard would never act"
        ),
        Bound::ProgressPages if n > PASS_TARGET_PAGES => format!(
            "{key} ({n}) must be at most {PASS_TARGET_PAGES}: a memory.high reclaim pass is \
             asked for about {PASS_TARGET_PAGES} pages (the kernel's charge batch), so above \
             that a pass that freed all it was asked would count as without progress and guard \
             would kill in cgroups that reclaim normally"
        ),
        _ => return n,
    };
    errors.at(s.span(), why);
    default
}

pub(super) fn regexes(
    errors: &mut Errors<'_>,
    key: &str,
    patterns: &[Spanned<String>],
) -> Vec<Regex> {
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

pub(super) fn glob_matchers(
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
pub(super) fn cgroup_glob(
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
pub(super) fn check_timing(
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

#[cfg(test)]
mod tests {
    use crate::config::tests::{SCOPE, mistakes, one_mistake};

    #[test]
    fn bad_regex_names_its_line_and_column() {
        let e = one_mistake(&format!("[protect]\ncomm = [\"ok\", \"(sshd\"]\n{SCOPE}"));
        assert_eq!((e.line, e.column), (2, 15), "{e}");
        assert!(e.message.contains("protect.comm"), "{e}");
        assert!(e.message.contains("(sshd"), "{e}");
        assert!(e.message.contains("unclosed group"), "{e}");
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
}
