//! `guard report`: the post-mortem of an incident, read from recorded event
//! files (`guard record -o FILE`, or the daemon's rotating
//! /var/lib/guard/events.jsonl and its older parts events.jsonl.1 ...).
//!
//! Three stages, plain data in and out, so each is tested without a kernel:
//! [`load`] reads the files, [`analyze`] finds the incidents and what they
//! cost, and the result is read as text (`Display` for [`Report`]) or drawn
//! ([`svg()`]).
//!
//! An incident is one cgroup's episode of stall: from the first evidence
//! that reclaim stopped making progress, over the verdicts that followed, to
//! the kill that relieved it. The kernel's own OOM kills are incidents too,
//! so a report also shows what happened where the guard did not act.

mod chart;
mod clusters;
mod cost;
mod evidence;
#[cfg(test)]
mod fixtures;
mod incidents;
mod model;
mod read;
mod svg;
mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::events::{Event, Record, RecordError};

pub use model::{
    Coverage, Ending, Incident, KillFact, Line, OomFact, Recovery, Report, StallSource,
    StalledTask, Stamp,
};
pub use read::Loaded;
pub use text::date_time;

use model::{Clock, stamp};

const MIB: f64 = (1u64 << 20) as f64;
const SEC: u64 = 1_000_000_000;

/// Why no report could be made. Each message carries its cause (fields named
/// `error`, not `source`), so `{e:#}` at the top does not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "no file to report on: give a file written by `guard record -o FILE`, or the daemon's \
         /var/lib/guard/events.jsonl (and its older parts events.jsonl.1 ...)"
    )]
    NoFiles,
    #[error("cannot read {file}: {error}; check the path and that you may read it")]
    Read { file: String, error: std::io::Error },
    /// The inner error is the `RecordError::Version` naming both versions.
    #[error("{file}:{line}: {error}")]
    Version {
        file: String,
        line: usize,
        error: RecordError,
    },
    #[error(
        "{file} holds no guard event record: {why}; give a file written by `guard record -o FILE` \
         or the daemon's /var/lib/guard/events.jsonl, or leave this one out"
    )]
    NoRecords { file: String, why: String },
    #[error(
        "no incident in these records, so there is nothing to draw; run the report without \
         --svg to see what they cover"
    )]
    NoIncident,
    #[error("cannot draw {file}: {message}")]
    Plot { file: String, message: String },
    #[error("cannot write {file}: {error}; check that its directory exists and is writable")]
    Write { file: String, error: std::io::Error },
}

/// Reads recorded JSON-lines files, in the order given, into one stream.
///
/// Bad lines are skipped and counted rather than fatal: a guard that died
/// mid-write leaves a truncated last line, and the rest of the file is what
/// the post-mortem needs. A record of a newer schema is fatal instead, since
/// skipping it would silently drop what this guard cannot understand; so is
/// a file with no record at all, which is most likely the wrong file.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, ReportError> {
    if paths.is_empty() {
        return Err(ReportError::NoFiles);
    }
    let mut loaded = Loaded::default();
    for path in paths {
        read::read_file(path, &mut loaded)?;
    }
    // Rotated parts are often given newest first (a shell glob sorts
    // events.jsonl before events.jsonl.1); the kernel's clock orders them.
    loaded.records.sort_by_key(|r| r.mono_ns);
    Ok(loaded)
}

/// Finds the incidents in `records` (in any order) and what they cost.
pub fn analyze(records: &[Record]) -> Report {
    let sorted = by_clock(records);
    let clock = Clock(&sorted);
    let clusters = clusters::clusters(&sorted);
    let incidents = (0..clusters.len())
        .map(|i| incidents::incident(&sorted, &clusters, i, &clock))
        .collect();
    Report {
        incidents,
        coverage: coverage(&sorted),
        skipped: Vec::new(),
    }
}

/// The records in the kernel clock's order.
fn by_clock(records: &[Record]) -> Vec<&Record> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.mono_ns);
    sorted
}

fn coverage(sorted: &[&Record]) -> Coverage {
    let mut by_kind = BTreeMap::new();
    let mut sources = Vec::new();
    for r in sorted {
        *by_kind.entry(r.event.kind()).or_default() += 1;
        if let Event::Hello { .. } = r.event {
            sources.push(r.event.describe());
        }
    }
    Coverage {
        records: sorted.len(),
        first: sorted.first().map(|r| stamp(r)),
        last: sorted.last().map(|r| stamp(r)),
        by_kind,
        sources,
    }
}

/// Draws the report's incidents as an SVG file: memory over time above,
/// stall per second below, kills marked.
pub fn svg(records: &[Record], report: &Report, out: &Path) -> Result<(), ReportError> {
    if report.incidents.is_empty() {
        return Err(ReportError::NoIncident);
    }
    let sorted = by_clock(records);
    let chart = chart::chart(&sorted, report);
    let file = out.display().to_string();
    let mut text = String::new();
    svg::draw(&chart, &mut text).map_err(|e| ReportError::Plot {
        file: file.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(out, text).map_err(|error| ReportError::Write { file, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;

    /// What a person computes from the samples by hand: memory.current just
    /// before the kill, and the lowest within 10 s after.
    fn memory_around_kill(records: &[Record]) -> (u64, u64) {
        let seed = |r: &Record| match &r.event {
            Event::Sample {
                cgroup,
                memory_current,
                ..
            } if cgroup == SEED => Some((r.mono_ns, *memory_current)),
            _ => None,
        };
        let samples: Vec<(u64, u64)> = records.iter().filter_map(seed).collect();
        let before = samples
            .iter()
            .filter(|(t, _)| *t <= kill_ns())
            .max_by_key(|(t, _)| *t)
            .expect("a sample before")
            .1;
        let lowest = samples
            .iter()
            .filter(|(t, _)| *t > kill_ns() && *t <= kill_ns() + 10 * SEC)
            .map(|(_, m)| *m)
            .min()
            .expect("a sample after");
        (before, lowest)
    }

    #[test]
    fn a_recorded_incident_reads_as_one_story_with_victim_stalled_tasks_and_memory_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = seed_incident();
        let truncated = &records[1].to_line()[..40];
        let path = write_lines(dir.path(), "events.jsonl", &records, truncated);

        let loaded = load(std::slice::from_ref(&path)).expect("loads despite the torn line");
        assert_eq!(loaded.records.len(), records.len());
        assert_eq!(loaded.skipped.len(), 1, "{:?}", loaded.skipped);
        let torn_at = format!("{}:{}", path.display(), records.len() + 1);
        assert_eq!(loaded.skipped[0].0, torn_at);
        assert!(
            loaded.skipped[0].1.contains("truncated"),
            "{:?}",
            loaded.skipped
        );

        let mut report = analyze(&loaded.records);
        assert_eq!(report.incidents.len(), 1, "{report}");
        let inc = &report.incidents[0];
        assert_eq!(inc.cgroup, SEED);
        // Begins at the first reclaim pass that freed nothing, which came
        // before the verdict's own episode start; ends at the kill.
        assert_eq!(inc.start.mono_ns, at_ms(FIRST_NO_PROGRESS_MS));
        assert_eq!(inc.start.unix_ms, WALL0 + FIRST_NO_PROGRESS_MS);
        assert_eq!(inc.end.mono_ns, kill_ns());
        assert_eq!(inc.ended_by, Ending::Kill);
        assert_eq!(inc.verdicts, 1);

        assert_eq!(inc.kills.len(), 1);
        let k = &inc.kills[0];
        assert_eq!((k.pid, k.comm.as_str(), k.dry_run), (4242, "grep", false));
        assert_eq!(k.footprint_bytes, 96 << 20);
        assert_eq!(k.latency_us, 1_200);
        let (before, lowest) = memory_around_kill(&records);
        assert_eq!(before - lowest, 76 << 20, "the synthetic data itself");
        let recovery = k.recovery.expect("samples after the kill");
        assert_eq!(recovery.before_bytes, before);
        assert_eq!(recovery.lowest_bytes, lowest);
        assert_eq!(recovery.freed_bytes(), before - lowest);
        assert!(
            recovery.took_ns > 0 && recovery.took_ns < SEC,
            "{recovery:?}"
        );

        let stall_truth = (STALL_END_MS - EPISODE_START_MS) * MS * STALL_MS_PER_S / 1000;
        assert_eq!(
            (inc.stall_ns, inc.stall_from),
            (stall_truth, StallSource::Samples)
        );

        let comms: Vec<&str> = inc.tasks.iter().map(|t| t.comm.as_str()).collect();
        assert_eq!(
            comms.first(),
            Some(&"grep"),
            "the hog stalled most: {comms:?}"
        );
        assert!(comms.contains(&"node"), "{comms:?}");
        let node = inc.tasks.iter().find(|t| t.comm == "node").expect("node");
        let node_passes = records
            .iter()
            .filter(|r| {
                matches!(
                    &r.event,
                    Event::Reclaim {
                        pid: 4300,
                        reclaimed_pages: 0,
                        ..
                    }
                )
            })
            .count() as u64;
        assert_eq!(node.no_progress_passes, node_passes);
        assert_eq!(node.penalty_sleeps, 2);
        assert!(inc.lost.is_empty());

        report.skipped = loaded.skipped;
        let text = report.to_string();
        let freed = format!("{:.1} MiB", (before - lowest) as f64 / MIB);
        let kill_after = format!(
            "{:+.3} s",
            (kill_ns() - at_ms(FIRST_NO_PROGRESS_MS)) as f64 / 1e9
        );
        for fact in [
            SEED,
            "2026-11-18 11:06:41.900 UTC",
            "11:06:41.900  +0.000 s  stall began: a reclaim pass by grep[4242] freed nothing",
            "KILLED SIGKILL grep[4242] in /seed.slice: 96.0 MiB",
            &kill_after,
            "node[4300]",
            &format!("memory back:  {freed}"),
            "1 process killed",
            &format!("Skipped 1 line that did not parse (first: {torn_at}"),
        ] {
            assert!(text.contains(fact), "missing {fact:?} in:\n{text}");
        }
    }

    #[test]
    fn records_without_an_incident_say_what_they_cover() {
        let mut records = vec![hello()];
        for i in 0..8 {
            records.push(sample(SEED, at_ms(i * 500), 10 << 20, 0, (0, "")));
        }
        let report = analyze(&records);
        assert!(report.incidents.is_empty());
        let text = report.to_string();
        for fact in [
            "No incident",
            "2026-11-18 11:06:40.000 to 2026-11-18 11:06:43.500 UTC (3.500 s)",
            "9 records (1 hello, 8 sample)",
            "attached to daemon",
        ] {
            assert!(text.contains(fact), "missing {fact:?} in:\n{text}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let err = svg(&records, &report, &dir.path().join("x.svg")).expect_err("nothing to draw");
        assert!(matches!(err, ReportError::NoIncident), "{err}");
    }

    fn arbitrary_record(ms: u64, kind: u8, cgroup: &str, n: u64) -> Record {
        let at = at_ms(ms);
        let pid = 100 + n as u32;
        let event = match kind {
            0 => Event::Reclaim {
                pid,
                tid: pid,
                comm: "a".into(),
                cgroup_id: 1,
                cgroup: cgroup.into(),
                duration_ns: n * MS,
                reclaimed_pages: n % 2,
            },
            1 => Event::Throttle {
                pid,
                tid: pid,
                comm: "b".into(),
                cgroup_id: 1,
                cgroup: cgroup.into(),
                penalty_ns: n * 100 * MS,
            },
            2 => Event::Verdict {
                cgroup_id: 1,
                cgroup: cgroup.into(),
                stall_ns: n * SEC,
                window_ns: SEC,
                budget_ns: SEC,
                streak: n,
                episode_start_ns: at.saturating_sub(n * SEC),
                worst_pid: pid,
                worst_comm: "c".into(),
            },
            3 => Event::Kill {
                cgroup: cgroup.into(),
                pid,
                comm: "d".into(),
                footprint_bytes: n << 20,
                reason: "memory_high_stall".into(),
                mode: "process".into(),
                killed_cgroup: None,
                also_killed: n,
                stall_ns: SEC,
                latency_us: n,
                memory_current: n << 20,
                memory_high: None,
                dry_run: n == 0,
                victims: vec![pid],
                batch: 1,
                owner: None,
            },
            4 => Event::OomKill {
                pid,
                comm: "e".into(),
                cgroup: cgroup.into(),
                trigger_pid: pid,
                trigger_comm: "e".into(),
            },
            5 => Event::Lost {
                what: "trace".into(),
                count: n,
            },
            _ => return sample(cgroup, at, n << 20, n * SEC, (pid, "f")),
        };
        rec(at, event)
    }

    proptest::proptest! {
        /// Whatever a file holds, the report accounts for every verdict and
        /// kill exactly once, keeps each incident in order, and renders.
        #[test]
        fn any_mix_of_records_is_reported_without_losing_a_kill(
            raw in proptest::collection::vec((0u64..60_000, 0u8..7, 0usize..4, 0u64..4), 0..60)
        ) {
            let cgroups = ["/a", "/a/b", "/c", ""];
            let records: Vec<Record> = raw
                .iter()
                .map(|&(ms, kind, cg, n)| arbitrary_record(ms, kind, cgroups[cg], n))
                .collect();
            let report = analyze(&records);
            let count = |kind: &str| records.iter().filter(|r| r.event.kind() == kind).count();
            let incidents = &report.incidents;
            proptest::prop_assert_eq!(incidents.iter().map(|i| i.verdicts).sum::<usize>(), count("verdict"));
            proptest::prop_assert_eq!(incidents.iter().map(|i| i.kills.len()).sum::<usize>(), count("kill"));
            proptest::prop_assert_eq!(incidents.iter().map(|i| i.oom_kills.len()).sum::<usize>(), count("oom_kill"));
            for i in incidents {
                proptest::prop_assert!(i.start.mono_ns <= i.end.mono_ns);
                proptest::prop_assert!(i.kills.iter().all(|k| k.at.mono_ns >= i.start.mono_ns));
                proptest::prop_assert!(i.timeline.windows(2).all(|w| w[0].at.mono_ns <= w[1].at.mono_ns));
            }
            proptest::prop_assert!(!report.to_string().is_empty());
            if !incidents.is_empty() {
                let dir = tempfile::tempdir().expect("tempdir");
                let out = dir.path().join("any.svg");
                svg(&records, &report, &out).expect("draws");
                let text = std::fs::read_to_string(&out).expect("written");
                proptest::prop_assert!(roxmltree::Document::parse(&text).is_ok());
            }
        }
    }
}
