//! What a report is made of: incidents, what they cost, what the records
//! cover, and instants on both clocks.

use std::collections::BTreeMap;

use crate::events::Record;

/// An instant on both clocks: the kernel's, to order and measure, and the
/// wall clock, for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub mono_ns: u64,
    pub unix_ms: u64,
}

/// What a report found in the records.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub incidents: Vec<Incident>,
    pub coverage: Coverage,
    /// Lines the loader skipped (`Loaded::skipped`): [`analyze`](super::analyze)
    /// sees only records, so the caller hands these over for the text to
    /// mention.
    pub skipped: Vec<(String, String)>,
}

/// What the records span, for a report with no incident to show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Coverage {
    pub records: usize,
    pub first: Option<Stamp>,
    pub last: Option<Stamp>,
    /// Number of records by `type`.
    pub by_kind: BTreeMap<&'static str, usize>,
    /// Who wrote them: each Hello, described.
    pub sources: Vec<String>,
}

/// One cgroup's episode of stall, or one kernel OOM kill.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    pub cgroup: String,
    /// The first evidence of no progress (or the first verdict or kill).
    pub start: Stamp,
    /// The kill that relieved it, else the last verdict or stall evidence.
    pub end: Stamp,
    pub ended_by: Ending,
    pub verdicts: usize,
    /// Stall summed over the cgroup's tasks.
    pub stall_ns: u64,
    pub stall_from: StallSource,
    /// Worst first.
    pub tasks: Vec<StalledTask>,
    pub kills: Vec<KillFact>,
    pub oom_kills: Vec<OomFact>,
    /// Lost-record counts during the incident, by what was lost.
    pub lost: BTreeMap<String, u64>,
    /// The cgroup whose samples measure memory and stall: the incident's
    /// own, or the nearest ancestor that was sampled.
    pub sampled_cgroup: Option<String>,
    pub timeline: Vec<Line>,
}

impl Incident {
    pub fn duration_ns(&self) -> u64 {
        self.end.mono_ns.saturating_sub(self.start.mono_ns)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The guard killed, and no new stall began after.
    Kill,
    /// The kernel's OOM killer did.
    OomKill,
    /// Nothing relieved it within the records (dry run, or the kill came
    /// too late): it ends at its last verdict or stall evidence.
    NotRelieved,
}

/// Where `Incident::stall_ns` comes from, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallSource {
    /// The kernel's stall_total_ns counter, difference across the incident.
    Samples,
    /// The largest verdict's stall (one window's worth: a lower bound).
    Verdicts,
    /// Reclaim and penalty-sleep times of the raw events.
    RawEvents,
    Unknown,
}

/// A task seen stalling, with what it was seen doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StalledTask {
    pub pid: u32,
    pub comm: String,
    pub reclaim_passes: u64,
    pub no_progress_passes: u64,
    pub penalty_sleeps: u64,
    /// No-progress reclaim time plus penalty sleeps.
    pub stall_ns: u64,
    pub worst_in_verdicts: u64,
    pub worst_in_samples: u64,
}

/// A kill by the guard (or, dry run, one it would have made).
#[derive(Clone, Debug, PartialEq)]
pub struct KillFact {
    pub at: Stamp,
    pub pid: u32,
    pub comm: String,
    pub footprint_bytes: u64,
    pub mode: String,
    pub also_killed: u64,
    pub latency_us: u64,
    pub dry_run: bool,
    /// None: no sample before and after the kill (or a dry run, which frees nothing).
    pub recovery: Option<Recovery>,
}

/// A victim of the kernel's OOM killer.
#[derive(Clone, Debug, PartialEq)]
pub struct OomFact {
    pub at: Stamp,
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    pub trigger_pid: u32,
    pub trigger_comm: String,
    pub recovery: Option<Recovery>,
}

/// How much memory came back after a kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// memory.current in the last sample before the kill.
    pub before_bytes: u64,
    /// The lowest memory.current sampled within 10 s after.
    pub lowest_bytes: u64,
    pub lowest_at: Stamp,
    /// From the kill to that lowest sample.
    pub took_ns: u64,
}

impl Recovery {
    pub fn freed_bytes(&self) -> u64 {
        self.before_bytes.saturating_sub(self.lowest_bytes)
    }
}

/// One line of an incident's timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub at: Stamp,
    pub text: String,
}

/// Wall-clock time of any kernel-clock instant, from the nearest record:
/// derived instants (a verdict's episode start) have no wall time of their own.
pub(super) struct Clock<'a>(pub(super) &'a [&'a Record]);

impl Clock<'_> {
    pub(super) fn at(&self, mono_ns: u64) -> Stamp {
        let i = self.0.partition_point(|r| r.mono_ns < mono_ns);
        let near = [i.checked_sub(1), Some(i)]
            .into_iter()
            .flatten()
            .filter_map(|i| self.0.get(i))
            .min_by_key(|r| r.mono_ns.abs_diff(mono_ns));
        let unix_ms = near.map_or(0, |r| {
            let delta_ms = (i128::from(mono_ns) - i128::from(r.mono_ns)).div_euclid(1_000_000);
            u64::try_from(i128::from(r.unix_ms) + delta_ms).unwrap_or(0)
        });
        Stamp { mono_ns, unix_ms }
    }
}

pub(super) fn stamp(r: &Record) -> Stamp {
    Stamp {
        mono_ns: r.mono_ns,
        unix_ms: r.unix_ms,
    }
}
