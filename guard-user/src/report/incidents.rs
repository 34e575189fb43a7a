//! One incident told from its records: when it began and ended, its
//! timeline, and the kills that ended it.

use std::collections::BTreeMap;

use super::SEC;
use super::clusters::Cluster;
use super::cost::{Recoveries, stall_total, stalled_tasks};
use super::evidence::{SampleView, sampled_cgroup, samples_of, stall_evidence, within};
use super::model::{Clock, Ending, Incident, KillFact, Line, OomFact, Recovery, stamp};
use super::text::{mib, ms, secs};
use crate::events::{Event, Record};

/// No-progress evidence closer than this extends an incident: a stalled task
/// reclaims on every charge and sleeps at most 2 s of penalty in between, so
/// a longer silence means the stall had stopped.
pub(super) const EVIDENCE_GAP_NS: u64 = 5 * SEC;
/// More verdicts than this in one incident are summarized in the timeline,
/// which is meant to be read, not scrolled.
const VERDICT_LINES: usize = 5;

/// Timeline lines at kernel-clock instants, before they are given wall time.
type Lines = Vec<(u64, String)>;

/// The incident of `clusters[idx]`: when it began and ended, what it cost,
/// and its story.
pub(super) fn incident(
    sorted: &[&Record],
    clusters: &[Cluster],
    idx: usize,
    clock: &Clock,
) -> Incident {
    let c = &clusters[idx];
    let cg = c.cgroup.as_str();
    let anchors: Vec<&Record> = c
        .anchors
        .iter()
        .filter_map(|&i| sorted.get(i))
        .copied()
        .collect();
    let verdicts: Vec<&Record> = anchors
        .iter()
        .filter(|r| matches!(r.event, Event::Verdict { .. }))
        .copied()
        .collect();
    let evidence: Vec<&Record> = sorted
        .iter()
        .filter(|r| stall_evidence(r, cg).is_some())
        .copied()
        .collect();
    let (start, began) = start_of(c, clusters, &verdicts, &evidence);
    let (end, ended_by) = end_of(c, clusters, &anchors, &verdicts, &evidence);

    let sampled = sampled_cgroup(sorted, cg);
    let samples: Vec<SampleView> = sampled
        .as_deref()
        .map(|s| samples_of(sorted, s))
        .unwrap_or_default();
    let during: Vec<&Record> = sorted
        .iter()
        .filter(|r| r.mono_ns >= start && r.mono_ns <= end)
        .copied()
        .collect();
    let tasks = stalled_tasks(&during, cg, &verdicts, &samples, (start, end));
    let (stall_ns, stall_from) = stall_total(&samples, start, end, &verdicts, &tasks);

    let mut lines = Lines::new();
    began_lines(&mut lines, cg, start, began, &during);
    above_high_line(&mut lines, &samples, (start, end));
    verdict_lines(&mut lines, &verdicts);
    let lost = lost_records(&mut lines, &during);
    let recoveries = Recoveries {
        sorted,
        sampled: sampled.as_deref(),
        samples: &samples,
        clock,
    };
    let (kills, oom_kills) = kills(&mut lines, &anchors, &recoveries);
    if ended_by == Ending::NotRelieved {
        lines.push(not_relieved_line(c, end));
    }

    Incident {
        cgroup: c.cgroup.clone(),
        start: clock.at(start),
        end: clock.at(end),
        ended_by,
        verdicts: verdicts.len(),
        stall_ns,
        stall_from,
        tasks,
        kills,
        oom_kills,
        lost,
        sampled_cgroup: sampled,
        timeline: timeline(lines, clock),
    }
}

/// The lines in time order, each at its wall time.
fn timeline(mut lines: Lines, clock: &Clock) -> Vec<Line> {
    lines.sort_by_key(|(t, _)| *t);
    lines
        .into_iter()
        .map(|(t, text)| Line {
            at: clock.at(t),
            text,
        })
        .collect()
}

/// The stall's first sign, and the first penalty sleep in `cgroup` unless
/// that was the sign.
fn began_lines(
    lines: &mut Lines,
    cgroup: &str,
    start: u64,
    began: Option<BeganLine>,
    during: &[&Record],
) {
    let began_with = began.as_ref().and_then(|b| b.evidence);
    if let Some(began) = began {
        lines.push((start, began.text));
    }
    let first_throttle = during.iter().find(|r| {
        matches!(&r.event, Event::Throttle { cgroup: c, .. } if within(c, cgroup))
            && !began_with.is_some_and(|e| std::ptr::eq(e, **r))
    });
    if let Some(r) = first_throttle
        && let Event::Throttle {
            pid,
            comm,
            penalty_ns,
            ..
        } = &r.event
    {
        lines.push((
            r.mono_ns,
            format!(
                "first memory.high penalty sleep: {comm}[{pid}], {}",
                ms(*penalty_ns)
            ),
        ));
    }
}

/// The first sample, from shortly before the stall to its end, that found
/// memory.current above memory.high.
fn above_high_line(lines: &mut Lines, samples: &[SampleView], (start, end): (u64, u64)) {
    let above_high = samples
        .iter()
        .filter(|s| s.at.saturating_add(EVIDENCE_GAP_NS) >= start && s.at <= end)
        .find_map(|s| Some((s, s.high.filter(|&h| s.current > h)?)));
    if let Some((s, high)) = above_high {
        lines.push((
            s.at,
            format!(
                "memory.current {} is above memory.high {}",
                mib(s.current),
                mib(high)
            ),
        ));
    }
}

/// The first verdicts and the last, with how many were left out between.
fn verdict_lines(lines: &mut Lines, verdicts: &[&Record]) {
    for (k, v) in verdicts.iter().enumerate() {
        let shown =
            verdicts.len() <= VERDICT_LINES || k < VERDICT_LINES - 2 || k + 1 == verdicts.len();
        if shown {
            lines.push((v.mono_ns, v.event.describe()));
        } else if k == VERDICT_LINES - 2 {
            lines.push((
                v.mono_ns,
                format!(
                    "... {} more verdicts like these ...",
                    verdicts.len() - (VERDICT_LINES - 1)
                ),
            ));
        }
    }
}

/// Lost-record counts by what was lost, each loss also a line.
fn lost_records(lines: &mut Lines, during: &[&Record]) -> BTreeMap<String, u64> {
    let mut lost: BTreeMap<String, u64> = BTreeMap::new();
    for r in during {
        if let Event::Lost { what, count } = &r.event {
            let n = lost.entry(what.clone()).or_default();
            *n = n.saturating_add(*count);
            lines.push((r.mono_ns, r.event.describe()));
        }
    }
    lost
}

/// Where an incident nothing relieved ends: its last verdict, or the stall
/// evidence after it.
fn not_relieved_line(c: &Cluster, end: u64) -> (u64, String) {
    let what = if end > c.last_ns {
        "last stall evidence"
    } else {
        "last verdict"
    };
    (
        end,
        format!("{what}; no kill relieved the stall within these records"),
    )
}

/// The guard's kills (dry run or not) and the kernel's OOM kills among the
/// anchors, each told with the memory it gave back.
fn kills(
    lines: &mut Lines,
    anchors: &[&Record],
    recoveries: &Recoveries,
) -> (Vec<KillFact>, Vec<OomFact>) {
    let mut kills = Vec::new();
    let mut oom_kills = Vec::new();
    for r in anchors {
        match &r.event {
            Event::Kill {
                cgroup,
                pid,
                comm,
                footprint_bytes,
                mode,
                also_killed,
                latency_us,
                memory_current,
                dry_run,
                ..
            } => {
                lines.push((r.mono_ns, r.event.describe()));
                let recovery = if *dry_run {
                    None
                } else {
                    recoveries.after_kill(cgroup, r.mono_ns, *memory_current)
                };
                recovery_line(lines, r.mono_ns, *dry_run, recovery.as_ref());
                kills.push(KillFact {
                    at: stamp(r),
                    pid: *pid,
                    comm: comm.clone(),
                    footprint_bytes: *footprint_bytes,
                    mode: mode.clone(),
                    also_killed: *also_killed,
                    latency_us: *latency_us,
                    dry_run: *dry_run,
                    recovery,
                });
            }
            // Why guard left the stall alone, or stopped killing there.
            Event::Unresolved { .. } | Event::KillLimit { .. } => {
                lines.push((r.mono_ns, r.event.describe()));
            }
            Event::OomKill {
                pid,
                comm,
                cgroup,
                trigger_pid,
                trigger_comm,
            } => {
                lines.push((
                    r.mono_ns,
                    format!(
                        "{}, the kernel's OOM killer, invoked by {trigger_comm}[{trigger_pid}]",
                        r.event.describe()
                    ),
                ));
                let recovery = recoveries.after_oom_kill(r.mono_ns);
                recovery_line(lines, r.mono_ns, false, recovery.as_ref());
                oom_kills.push(OomFact {
                    at: stamp(r),
                    pid: *pid,
                    comm: comm.clone(),
                    cgroup: cgroup.clone(),
                    trigger_pid: *trigger_pid,
                    trigger_comm: trigger_comm.clone(),
                    recovery,
                });
            }
            _ => {}
        }
    }
    (kills, oom_kills)
}

/// When the stall began: the earliest of the verdicts' episode start and
/// the run of no-progress evidence leading up to the first verdict, never
/// reaching back into an earlier incident of the same cgroup.
fn start_of<'r>(
    c: &Cluster,
    clusters: &[Cluster],
    verdicts: &[&Record],
    evidence: &[&'r Record],
) -> (u64, Option<BeganLine<'r>>) {
    let floor = clusters
        .iter()
        .filter(|o| o.cgroup == c.cgroup && o.last_ns < c.first_ns)
        .map(|o| o.last_ns)
        .max();
    let mut start = c.first_ns;
    let mut first_evidence = None;
    for r in evidence.iter().rev().filter(|r| r.mono_ns <= c.first_ns) {
        if floor.is_some_and(|f| r.mono_ns <= f) || start - r.mono_ns > EVIDENCE_GAP_NS {
            break;
        }
        start = r.mono_ns;
        first_evidence = Some(*r);
    }
    let episode_start = verdicts
        .iter()
        .filter_map(|r| match r.event {
            Event::Verdict {
                episode_start_ns, ..
            } if episode_start_ns > 0 && episode_start_ns <= r.mono_ns => Some(episode_start_ns),
            _ => None,
        })
        .filter(|&e| floor.is_none_or(|f| e > f))
        .min();
    match (episode_start, first_evidence) {
        (Some(e), _) if e < start => (
            e,
            Some(BeganLine {
                evidence: None,
                text: "stall began: the kernel's run of reclaim passes without progress \
                       (episode start in its verdict)"
                    .to_owned(),
            }),
        ),
        (_, Some(r)) => (
            start,
            Some(BeganLine {
                evidence: Some(r),
                text: began_with(r),
            }),
        ),
        _ => (start, None),
    }
}

/// The timeline's line for a stall whose first sign was `r`.
fn began_with(r: &Record) -> String {
    match &r.event {
        Event::Throttle {
            pid,
            comm,
            penalty_ns,
            ..
        } => format!(
            "stall began: {comm}[{pid}] put to a memory.high penalty sleep of {}",
            ms(*penalty_ns)
        ),
        Event::Reclaim {
            pid,
            comm,
            duration_ns,
            ..
        } => format!(
            "stall began: a reclaim pass by {comm}[{pid}] freed nothing ({})",
            ms(*duration_ns)
        ),
        _ => String::new(),
    }
}

/// What the timeline says about the stall's first sign.
struct BeganLine<'r> {
    /// The reclaim or throttle record, when it was one.
    evidence: Option<&'r Record>,
    text: String,
}

/// When the stall ended: at the last kill, unless a new episode began after
/// it; else at the last verdict or the no-progress evidence that followed,
/// short of the next incident of the same cgroup.
fn end_of(
    c: &Cluster,
    clusters: &[Cluster],
    anchors: &[&Record],
    verdicts: &[&Record],
    evidence: &[&Record],
) -> (u64, Ending) {
    let last_relief = anchors.iter().rev().find(|r| match r.event {
        Event::Kill { dry_run, .. } => !dry_run,
        Event::OomKill { .. } => true,
        _ => false,
    });
    let stalled_after = |k: &Record| {
        verdicts.iter().any(|v| match v.event {
            Event::Verdict {
                episode_start_ns, ..
            } if episode_start_ns > 0 => episode_start_ns > k.mono_ns,
            _ => v.mono_ns > k.mono_ns,
        })
    };
    if let Some(k) = last_relief.filter(|k| !stalled_after(k)) {
        let ending = if matches!(k.event, Event::OomKill { .. }) {
            Ending::OomKill
        } else {
            Ending::Kill
        };
        return (k.mono_ns, ending);
    }
    let ceiling = clusters
        .iter()
        .filter(|o| o.cgroup == c.cgroup && o.first_ns > c.last_ns)
        .map(|o| o.first_ns)
        .min();
    let mut end = c.last_ns;
    for r in evidence.iter().filter(|r| r.mono_ns > c.last_ns) {
        if ceiling.is_some_and(|n| r.mono_ns >= n) || r.mono_ns - end > EVIDENCE_GAP_NS {
            break;
        }
        end = r.mono_ns;
    }
    (end, Ending::NotRelieved)
}

fn recovery_line(lines: &mut Lines, at: u64, dry_run: bool, r: Option<&Recovery>) {
    match r {
        _ if dry_run => {}
        Some(r) => lines.push((
            r.lowest_at.mono_ns,
            format!(
                "memory.current down to {} from {}: {} came back in {}",
                mib(r.lowest_bytes),
                mib(r.before_bytes),
                mib(r.freed_bytes()),
                secs(r.took_ns)
            ),
        )),
        None => lines.push((
            at,
            "no sample of the cgroup both before and after the kill: how much memory came back is unknown".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::report::svg::OOM_COLOUR;
    use crate::report::{analyze, svg};

    #[test]
    fn a_kernel_oom_kill_alone_is_an_incident_named_as_the_kernels() {
        let mut records = vec![hello()];
        for i in 0..8 {
            records.push(sample(SEED, at_ms(i * 500), 10 << 20, 0, (0, "")));
        }
        records.push(rec(
            at_ms(3_000),
            Event::OomKill {
                pid: 777,
                comm: "dd".into(),
                cgroup: "/batch.slice/job-7.scope".into(),
                trigger_pid: 778,
                trigger_comm: "sort".into(),
            },
        ));
        let report = analyze(&records);
        assert_eq!(report.incidents.len(), 1, "{report}");
        let inc = &report.incidents[0];
        assert_eq!(inc.cgroup, "/batch.slice/job-7.scope");
        assert_eq!(inc.ended_by, Ending::OomKill);
        assert!(inc.kills.is_empty());
        assert_eq!(inc.oom_kills.len(), 1);
        assert_eq!(
            (inc.oom_kills[0].pid, inc.oom_kills[0].trigger_pid),
            (777, 778)
        );
        let text = report.to_string();
        for fact in [
            "KERNEL OOM KILL dd[777] in /batch.slice/job-7.scope",
            "the kernel's OOM killer, invoked by sort[778]",
            "killed:       nothing by the guard",
            "1 kernel OOM kill",
        ] {
            assert!(text.contains(fact), "missing {fact:?} in:\n{text}");
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("oom.svg");
        svg(&records, &report, &out).expect("draws");
        let doc_text = std::fs::read_to_string(&out).expect("written");
        let doc = roxmltree::Document::parse(&doc_text).expect("SVG");
        assert!(
            texts(&doc)
                .iter()
                .any(|(t, _)| t == "kernel OOM kill dd[777]")
        );
        assert!(
            polylines(&doc, OOM_COLOUR)
                .iter()
                .any(|p| p.len() == 2 && p[0].0 == p[1].0),
            "no OOM marker"
        );
    }

    #[test]
    fn an_unresolved_stall_and_a_kill_limit_are_in_the_incident_story() {
        let mut records = vec![hello()];
        for k in 0..10 {
            records.push(reclaim(at_ms(1_000 + k * 30), 4242, "grep", 0));
        }
        records.push(verdict(at_ms(1_300), at_ms(1_000)));
        records.push(rec(
            at_ms(1_301),
            Event::Unresolved {
                cgroup: SEED.into(),
                reason: "the process driving the stall may not be killed: tmux (pid 9)".into(),
                holder_pid: Some(9),
                holder_comm: Some("tmux".into()),
                stall_ns: SEC,
                memory_current: 70 << 20,
                memory_high: Some(HIGH),
            },
        ));
        records.push(verdict(at_ms(1_600), at_ms(1_000)));
        records.push(rec(
            at_ms(1_601),
            Event::KillLimit {
                cgroup: SEED.into(),
                fruitless_kills: 3,
                window_ms: 60_000,
            },
        ));
        let report = analyze(&records);
        assert_eq!(report.incidents.len(), 1, "{report}");
        let text = report.to_string();
        assert!(
            text.contains("UNRESOLVED /seed.slice: nothing killed: the process driving"),
            "{text}"
        );
        assert!(
            text.contains("KILL LIMIT /seed.slice: 3 kills in a row"),
            "{text}"
        );
    }

    #[test]
    fn verdicts_far_apart_are_two_incidents_and_a_dry_run_relieves_nothing() {
        let mut records = vec![hello()];
        for start_ms in [1_000, 40_000] {
            for k in 0..10 {
                records.push(reclaim(at_ms(start_ms + k * 100), 4242, "grep", 0));
            }
            records.push(verdict(at_ms(start_ms + 1_000), at_ms(start_ms)));
            records.push(kill(at_ms(start_ms + 1_001), true));
            // The stall goes on after the dry-run kill.
            records.push(reclaim(at_ms(start_ms + 3_000), 4242, "grep", 0));
        }
        let report = analyze(&records);
        assert_eq!(report.incidents.len(), 2, "{report}");
        for (inc, start_ms) in report.incidents.iter().zip([1_000, 40_000]) {
            assert_eq!(inc.start.mono_ns, at_ms(start_ms));
            assert_eq!(inc.ended_by, Ending::NotRelieved);
            assert_eq!(inc.end.mono_ns, at_ms(start_ms + 3_000));
            assert!(inc.kills[0].dry_run && inc.kills[0].recovery.is_none());
            assert_eq!(inc.tasks[0].no_progress_passes, 11);
        }
        let text = report.to_string();
        assert!(text.contains("WOULD KILL (dry run) grep[4242]"), "{text}");
        assert!(text.contains("not relieved by a kill"), "{text}");
        assert!(
            text.contains("0 processes killed by the guard (2 more in dry run)"),
            "{text}"
        );
    }
}
