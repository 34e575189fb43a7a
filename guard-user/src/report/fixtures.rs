//! Synthetic records for the tests: one incident with known ground truth,
//! and readers of the SVG drawn from it.

use std::path::{Path, PathBuf};

use plotters::style::RGBColor;

use super::SEC;

pub(super) use crate::events::{Event, Record, SCHEMA_VERSION};

pub(super) const MS: u64 = 1_000_000;
/// CLOCK_MONOTONIC and wall clock of the first record (2026-11-18
/// 11:06:40.000 UTC).
const T0: u64 = 1_000 * SEC;
pub(super) const WALL0: u64 = 1_795_000_000_000;
pub(super) const SEED: &str = "/seed.slice";
pub(super) const HIGH: u64 = 64 << 20;
const MAX: u64 = 128 << 20;

// Ground truth of the synthetic incident, ms after T0.
pub(super) const FIRST_NO_PROGRESS_MS: u64 = 1_900;
pub(super) const EPISODE_START_MS: u64 = 2_000;
pub(super) const STALL_END_MS: u64 = 5_500;
const VERDICT_MS: u64 = 5_500;
/// The kernel's stall counter grows this many ms per second while grep
/// and node both stall.
pub(super) const STALL_MS_PER_S: u64 = 1_600;

pub(super) fn at_ms(ms: u64) -> u64 {
    T0 + ms * MS
}

pub(super) fn kill_ns() -> u64 {
    at_ms(VERDICT_MS) + 1_200_000
}

pub(super) fn rec(mono_ns: u64, event: Event) -> Record {
    Record {
        v: SCHEMA_VERSION,
        mono_ns,
        unix_ms: WALL0 + (mono_ns - T0) / MS,
        event,
    }
}

pub(super) fn hello() -> Record {
    rec(
        T0,
        Event::Hello {
            source: "daemon".into(),
            guard_version: "0.1.0".into(),
            kernel: "6.12.0".into(),
            throttle_hooked: true,
            dry_run: false,
            pid: 0,
            tracepoints: String::new(),
            policy: String::new(),
        },
    )
}

pub(super) fn sample(
    cgroup: &str,
    at: u64,
    current: u64,
    stall_total_ns: u64,
    worst: (u32, &str),
) -> Record {
    rec(
        at,
        Event::Sample {
            cgroup_id: 7,
            cgroup: cgroup.into(),
            memory_current: current,
            memory_high: Some(HIGH),
            memory_max: Some(MAX),
            stall_total_ns,
            passes: 0,
            no_progress_passes: 0,
            reclaimed_pages: 0,
            psi_some_avg10: None,
            psi_full_avg10: None,
            worst_pid: worst.0,
            worst_comm: worst.1.into(),
            stall_window_ns: 0,
        },
    )
}

pub(super) fn reclaim(at: u64, pid: u32, comm: &str, reclaimed_pages: u64) -> Record {
    rec(
        at,
        Event::Reclaim {
            pid,
            tid: pid,
            comm: comm.into(),
            cgroup_id: 7,
            cgroup: SEED.into(),
            duration_ns: 3 * MS,
            reclaimed_pages,
        },
    )
}

pub(super) fn throttle(at: u64, pid: u32, comm: &str, penalty_ns: u64) -> Record {
    rec(
        at,
        Event::Throttle {
            pid,
            tid: pid,
            comm: comm.into(),
            cgroup_id: 7,
            cgroup: SEED.into(),
            penalty_ns,
        },
    )
}

pub(super) fn verdict(at: u64, episode_start_ns: u64) -> Record {
    rec(
        at,
        Event::Verdict {
            cgroup_id: 7,
            cgroup: SEED.into(),
            stall_ns: 1_200 * MS,
            window_ns: 2 * SEC,
            budget_ns: SEC,
            streak: 34,
            episode_start_ns,
            worst_pid: 4242,
            worst_comm: "grep".into(),
        },
    )
}

pub(super) fn kill(at: u64, dry_run: bool) -> Record {
    rec(
        at,
        Event::Kill {
            cgroup: SEED.into(),
            pid: 4242,
            comm: "grep".into(),
            footprint_bytes: 96 << 20,
            reason: "memory_high_stall".into(),
            mode: "process".into(),
            killed_cgroup: None,
            also_killed: 0,
            stall_ns: 1_200 * MS,
            latency_us: 1_200,
            // What the guard read when it decided, a little after the
            // last sample: the recovery must come from the samples.
            memory_current: 97 << 20,
            memory_high: Some(HIGH),
            dry_run,
            victims: vec![4242],
            batch: 1,
            owner: None,
        },
    )
}

/// grep 4242 fills /seed.slice past memory.high and keeps it there;
/// node 4300 is a bystander stalled with it; the guard kills grep and
/// memory falls back. Another cgroup is sampled throughout, to catch
/// samples being mixed up.
pub(super) fn seed_incident() -> Vec<Record> {
    let kill_at = kill_ns();
    let mut records = vec![hello()];
    for i in 0..40u64 {
        let t = at_ms(i * 250);
        let current_mib = match t.checked_sub(kill_at) {
            None => (40 + 4 * i).min(96),
            Some(after) if after < 300 * MS => 60,
            Some(after) if after < 550 * MS => 20,
            Some(_) => 21,
        };
        let ms = (i * 250).clamp(EPISODE_START_MS, STALL_END_MS) - EPISODE_START_MS;
        let stalled = (EPISODE_START_MS..STALL_END_MS).contains(&(i * 250));
        records.push(sample(
            SEED,
            t,
            current_mib << 20,
            ms * MS * STALL_MS_PER_S / 1000,
            if stalled { (4242, "grep") } else { (0, "") },
        ));
        records.push(sample("/user.slice", t + MS, 500 << 20, 0, (0, "")));
    }
    records.push(reclaim(at_ms(1_000), 4242, "grep", 32));
    for k in 0..36u64 {
        let t = at_ms(FIRST_NO_PROGRESS_MS + k * 100);
        records.push(reclaim(t, 4242, "grep", 0));
        if k % 3 == 0 {
            records.push(reclaim(t + 30 * MS, 4300, "node", 0));
        }
    }
    records.push(throttle(at_ms(3_000), 4300, "node", 200 * MS));
    records.push(throttle(at_ms(3_500), 4242, "grep", 250 * MS));
    records.push(throttle(at_ms(4_000), 4300, "node", 200 * MS));
    records.push(verdict(at_ms(VERDICT_MS), at_ms(EPISODE_START_MS)));
    records.push(kill(kill_at, false));
    records.sort_by_key(|r| r.mono_ns);
    records
}

pub(super) fn write_lines(dir: &Path, name: &str, records: &[Record], tail: &str) -> PathBuf {
    let path = dir.join(name);
    let mut text: String = records.iter().map(|r| r.to_line() + "\n").collect();
    text.push_str(tail);
    std::fs::write(&path, text).expect("write");
    path
}

fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

pub(super) fn polylines(doc: &roxmltree::Document, colour: RGBColor) -> Vec<Vec<(f64, f64)>> {
    doc.descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(&hex(colour)))
        .map(|n| {
            n.attribute("points")
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| {
                    let (x, y) = p.split_once(',')?;
                    Some((x.parse().ok()?, y.parse().ok()?))
                })
                .collect()
        })
        .collect()
}

pub(super) fn texts(doc: &roxmltree::Document) -> Vec<(String, f64)> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            let x = n
                .attribute("x")
                .and_then(|x| x.parse().ok())
                .unwrap_or(-1.0);
            (n.text().unwrap_or_default().trim().to_owned(), x)
        })
        .collect()
}
