//! What an incident cost: who stalled, for how long, and how much memory
//! a kill gave back.

use std::collections::BTreeMap;

use super::SEC;
use super::evidence::{SampleView, samples_of, within};
use super::incidents::EVIDENCE_GAP_NS;
use super::model::{Clock, Recovery, StallSource, StalledTask};
use crate::events::{Event, Record};

/// How long after a kill the memory is watched for coming back: a victim's
/// pages are normally freed well within a second.
const RECOVERY_WINDOW_NS: u64 = 10 * SEC;

/// Every task seen stalling in the incident, the kernel's worst first.
pub(super) fn stalled_tasks(
    during: &[&Record],
    cgroup: &str,
    verdicts: &[&Record],
    samples: &[SampleView],
    (start, end): (u64, u64),
) -> Vec<StalledTask> {
    let mut tasks: BTreeMap<(u32, String), StalledTask> = BTreeMap::new();
    for r in during {
        match &r.event {
            Event::Reclaim {
                pid,
                comm,
                cgroup: c,
                duration_ns,
                reclaimed_pages,
                ..
            } if within(c, cgroup) => {
                let t = task(&mut tasks, *pid, comm);
                t.reclaim_passes += 1;
                if *reclaimed_pages == 0 {
                    t.no_progress_passes += 1;
                    t.stall_ns = t.stall_ns.saturating_add(*duration_ns);
                }
            }
            Event::Throttle {
                pid,
                comm,
                cgroup: c,
                penalty_ns,
                ..
            } if within(c, cgroup) => {
                let t = task(&mut tasks, *pid, comm);
                t.penalty_sleeps += 1;
                t.stall_ns = t.stall_ns.saturating_add(*penalty_ns);
            }
            _ => {}
        }
    }
    for v in verdicts {
        if let Event::Verdict {
            worst_pid,
            worst_comm,
            ..
        } = &v.event
            && *worst_pid != 0
        {
            task(&mut tasks, *worst_pid, worst_comm).worst_in_verdicts += 1;
        }
    }
    for s in samples
        .iter()
        .filter(|s| s.at >= start && s.at <= end && s.worst_pid != 0)
    {
        task(&mut tasks, s.worst_pid, s.worst_comm).worst_in_samples += 1;
    }
    let mut tasks: Vec<StalledTask> = tasks.into_values().collect();
    // The kernel's judgement first: it saw every pass, the raw events only
    // those that flowed while someone listened.
    tasks.sort_by(|a, b| {
        let rank = |t: &StalledTask| (t.worst_in_verdicts, t.worst_in_samples, t.stall_ns);
        rank(b).cmp(&rank(a)).then(a.pid.cmp(&b.pid))
    });
    tasks
}

fn task<'t>(
    tasks: &'t mut BTreeMap<(u32, String), StalledTask>,
    pid: u32,
    comm: &str,
) -> &'t mut StalledTask {
    tasks
        .entry((pid, comm.to_owned()))
        .or_insert_with(|| StalledTask {
            pid,
            comm: comm.to_owned(),
            ..StalledTask::default()
        })
}

pub(super) fn stall_total(
    samples: &[SampleView],
    start: u64,
    end: u64,
    verdicts: &[&Record],
    tasks: &[StalledTask],
) -> (u64, StallSource) {
    // The kernel's own counter, from the last sample before the stall to the
    // first after it ended (the one that saw the whole of it).
    let base = samples
        .iter()
        .rev()
        .find(|s| s.at <= start)
        .or_else(|| samples.iter().find(|s| s.at > start && s.at <= end));
    let last = samples
        .iter()
        .find(|s| s.at >= end && s.at <= end.saturating_add(EVIDENCE_GAP_NS))
        .or_else(|| samples.iter().rev().find(|s| s.at <= end));
    if let (Some(b), Some(l)) = (base, last)
        && l.at > b.at
        && l.stall_total_ns >= b.stall_total_ns
    {
        return (l.stall_total_ns - b.stall_total_ns, StallSource::Samples);
    }
    // Without samples both are lower bounds: a verdict covers one window,
    // raw events only the passes that flowed while someone listened.
    let verdict_stall = verdicts
        .iter()
        .filter_map(|v| match v.event {
            Event::Verdict { stall_ns, .. } => Some(stall_ns),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let raw = tasks
        .iter()
        .map(|t| t.stall_ns)
        .fold(0, u64::saturating_add);
    if verdict_stall == 0 && raw == 0 {
        (0, StallSource::Unknown)
    } else if verdict_stall >= raw {
        (verdict_stall, StallSource::Verdicts)
    } else {
        (raw, StallSource::RawEvents)
    }
}

/// Where the memory back after one incident's kills is measured.
pub(super) struct Recoveries<'a> {
    pub(super) sorted: &'a [&'a Record],
    /// The incident's sampled cgroup, and its samples.
    pub(super) sampled: Option<&'a str>,
    pub(super) samples: &'a [SampleView<'a>],
    pub(super) clock: &'a Clock<'a>,
}

impl Recoveries<'_> {
    /// From the samples of the cgroup the kill relieved; the kill record's
    /// memory.current (what the guard read when it decided) stands in for a
    /// missing sample before.
    pub(super) fn after_kill(
        &self,
        cgroup: &str,
        killed_at: u64,
        memory_current: u64,
    ) -> Option<Recovery> {
        if self.sampled == Some(cgroup) {
            recovery(self.samples, killed_at, Some(memory_current), self.clock)
        } else {
            let own = samples_of(self.sorted, cgroup);
            recovery(&own, killed_at, Some(memory_current), self.clock)
        }
    }

    /// From the samples of the incident's cgroup or its sampled ancestor.
    pub(super) fn after_oom_kill(&self, killed_at: u64) -> Option<Recovery> {
        recovery(self.samples, killed_at, None, self.clock)
    }
}

fn recovery(
    samples: &[SampleView],
    killed_at: u64,
    fallback_before: Option<u64>,
    clock: &Clock,
) -> Option<Recovery> {
    let before = samples
        .iter()
        .rev()
        .find(|s| s.at <= killed_at)
        .map(|s| s.current)
        .or(fallback_before)?;
    let lowest = samples
        .iter()
        .filter(|s| s.at > killed_at && s.at <= killed_at.saturating_add(RECOVERY_WINDOW_NS))
        .fold(None::<&SampleView>, |low, s| match low {
            Some(l) if l.current <= s.current => Some(l),
            _ => Some(s),
        })?;
    Some(Recovery {
        before_bytes: before,
        lowest_bytes: lowest.current,
        lowest_at: clock.at(lowest.at),
        took_ns: lowest.at - killed_at,
    })
}
