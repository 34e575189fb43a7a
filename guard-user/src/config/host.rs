//! `[host]`: the whole machine short of memory, with no cgroup limit
//! involved.

use std::{fmt, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::check::{Bound, Errors, bounded, check_timing, value};

const DEFAULT_HOST_BUDGET_MS: u64 = 250;
const DEFAULT_HOST_WINDOW_MS: u64 = 1000;
const DEFAULT_HOST_RETRY_LOOPS: u64 = 4;
const DEFAULT_HOST_MIN_AVAILABLE_PERCENT: u64 = 5;
/// The most MemAvailable (percent of MemTotal) at which a host kill is
/// still confirmed.
const MAX_KILL_MIN_AVAILABLE_PERCENT: u64 = 50;

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

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawHost {
    mode: HostMode,
    budget_ms: Option<Spanned<u64>>,
    window_ms: Option<Spanned<u64>>,
    retry_loops: Option<Spanned<u64>>,
    min_available_percent: Option<Spanned<u64>>,
    on_direct_reclaim: Option<bool>,
}

pub(super) fn parse(errors: &mut Errors<'_>, raw: &RawHost) -> Host {
    check_timing(
        errors,
        "host.",
        raw.budget_ms.as_ref(),
        raw.window_ms.as_ref(),
        (DEFAULT_HOST_BUDGET_MS, DEFAULT_HOST_WINDOW_MS),
    );
    if let Some(l) = raw.retry_loops.as_ref().filter(|l| *l.get_ref() >= 16) {
        errors.at(
            l.span(),
            format!(
                "host.retry_loops ({}) must be below 16: the kernel's OOM killer acts after 16 \
                 retries without progress, so the guard would always come too late",
                l.get_ref()
            ),
        );
    }
    let min_available_percent = bounded(
        errors,
        "host.min_available_percent",
        raw.min_available_percent.as_ref(),
        DEFAULT_HOST_MIN_AVAILABLE_PERCENT,
        Bound::Percent,
    );
    if let Some(p) = raw.min_available_percent.as_ref()
        && raw.mode == HostMode::Kill
        && (MAX_KILL_MIN_AVAILABLE_PERCENT + 1..=100).contains(p.get_ref())
    {
        errors.at(
            p.span(),
            format!(
                "host.min_available_percent ({}) must be at most {MAX_KILL_MIN_AVAILABLE_PERCENT} \
                 with mode = \"kill\": a machine with more than that available is not short of \
                 memory, and a host kill there would take a process for nothing",
                p.get_ref()
            ),
        );
    }
    Host {
        mode: raw.mode,
        budget: Duration::from_millis(
            value(raw.budget_ms.as_ref()).unwrap_or(DEFAULT_HOST_BUDGET_MS),
        ),
        window: Duration::from_millis(
            value(raw.window_ms.as_ref()).unwrap_or(DEFAULT_HOST_WINDOW_MS),
        ),
        retry_loops: value(raw.retry_loops.as_ref()).unwrap_or(DEFAULT_HOST_RETRY_LOOPS),
        min_available_percent,
        on_direct_reclaim: raw.on_direct_reclaim.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Config,
        tests::{SCOPE, one_mistake, parse},
    };

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

    #[test]
    fn a_host_kill_confirmed_with_most_memory_available_is_refused() {
        let e = one_mistake(&format!(
            "[host]\nmode = \"kill\"\nmin_available_percent = 100\n{SCOPE}"
        ));
        assert_eq!((e.line, e.column), (3, 25));
        assert!(e.message.contains("at most 50 with mode = \"kill\""), "{e}");
        // Watching only logs: any share may be asked for.
        parse(&format!(
            "[host]\nmode = \"watch\"\nmin_available_percent = 100\n{SCOPE}"
        ))
        .expect("watch");
        parse(&format!(
            "[host]\nmode = \"kill\"\nmin_available_percent = 50\n{SCOPE}"
        ))
        .expect("kill at 50");
    }
}
