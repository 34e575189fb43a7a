//! Records and screens shared by the live view's tests.

use ratatui::crossterm::event::KeyCode;

use super::{Action, View};
use crate::events::{Event, Record, SCHEMA_VERSION};

pub(super) const MIB: u64 = 1 << 20;
/// 2026-01-01 12:34:56.789 UTC, so the stamps are known.
pub(super) const T0_UNIX_MS: u64 = 1_767_270_896_789;
pub(super) const T0_MONO_NS: u64 = 5_000_000_000;

/// A record `ms` after T0 on both clocks.
pub(super) fn at(ms: u64, event: Event) -> Record {
    Record {
        v: SCHEMA_VERSION,
        mono_ns: T0_MONO_NS + ms * 1_000_000,
        unix_ms: T0_UNIX_MS + ms,
        event,
    }
}

pub(super) fn hello(dry_run: bool) -> Event {
    Event::Hello {
        source: if dry_run { "standalone" } else { "daemon" }.into(),
        guard_version: "0.3.0".into(),
        kernel: "6.12.9".into(),
        throttle_hooked: true,
        dry_run,
        pid: 0,
        tracepoints: String::new(),
        policy: String::new(),
    }
}

/// A sample of `cgroup`: `current` MiB against `high` MiB, totals as
/// given.
pub(super) fn sample(
    cgroup: &str,
    current: u64,
    high: u64,
    stall_total_ms: u64,
    passes: u64,
) -> Event {
    Event::Sample {
        cgroup_id: cgroup.len() as u64,
        cgroup: cgroup.into(),
        memory_current: current * MIB,
        memory_high: Some(high * MIB),
        memory_max: Some(2 * high * MIB),
        stall_total_ns: stall_total_ms * 1_000_000,
        passes,
        no_progress_passes: passes / 4,
        reclaimed_pages: passes * 12,
        psi_some_avg10: Some(31.5),
        psi_full_avg10: Some(12.5),
        worst_pid: 42,
        worst_comm: "grep".into(),
        stall_window_ns: 0,
    }
}

/// An incident in /seed.slice as a standalone trace sees it.
pub(super) fn incident() -> View {
    let mut view = View::new();
    view.push(&at(0, hello(true)));
    view.push(&at(10, sample("/seed.slice", 48, 64, 1000, 100)));
    view.push(&at(1010, sample("/seed.slice", 48, 64, 1400, 140)));
    view.push(&at(
        1100,
        Event::Verdict {
            cgroup_id: 11,
            cgroup: "/seed.slice".into(),
            stall_ns: 300_000_000,
            window_ns: 1_000_000_000,
            budget_ns: 250_000_000,
            streak: 9,
            episode_start_ns: T0_MONO_NS,
            worst_pid: 42,
            worst_comm: "grep".into(),
        },
    ));
    view.push(&at(
        1101,
        Event::Kill {
            cgroup: "/seed.slice".into(),
            pid: 42,
            comm: "grep".into(),
            footprint_bytes: 40 * MIB,
            reason: "memory_high_stall".into(),
            mode: "process".into(),
            killed_cgroup: None,
            also_killed: 0,
            stall_ns: 300_000_000,
            latency_us: 900,
            memory_current: 48 * MIB,
            memory_high: Some(64 * MIB),
            dry_run: false,
            victims: vec![42],
            batch: 1,
            owner: None,
        },
    ));
    view.push(&at(
        1500,
        Event::OomKill {
            pid: 77,
            comm: "dd".into(),
            cgroup: "/seed.slice".into(),
            trigger_pid: 77,
            trigger_comm: "dd".into(),
        },
    ));
    view.push(&at(
        1600,
        Event::Lost {
            what: "trace".into(),
            count: 7,
        },
    ));
    view
}

/// The terminal line holding `needle`.
pub(super) fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
}

pub(super) fn type_keys(view: &mut View, keys: &str) {
    for c in keys.chars() {
        assert_eq!(view.key(KeyCode::Char(c)), Action::Continue);
    }
}
