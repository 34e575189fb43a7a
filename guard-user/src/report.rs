//! `guard report`: the post-mortem of an incident, read from recorded event
//! files (`guard record -o FILE`, or the daemon's rotating
//! /var/lib/guard/events.jsonl and its older parts events.jsonl.1 ...).
//!
//! Three stages, plain data in and out, so each is tested without a kernel:
//! [`load`] reads the files, [`analyze`] finds the incidents and what they
//! cost, and the result is read as text (`Display` for [`Report`]) or drawn
//! ([`svg`]).
//!
//! An incident is one cgroup's episode of stall: from the first evidence
//! that reclaim stopped making progress, over the verdicts that followed, to
//! the kill that relieved it. The kernel's own OOM kills are incidents too,
//! so a report also shows what happened where the guard did not act.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::events::{Event, Record, RecordError};

const MIB: f64 = (1u64 << 20) as f64;
const SEC: u64 = 1_000_000_000;

/// Verdicts (and kills) of one cgroup closer than this are one incident: the
/// kernel repeats its verdict while a stall lasts, and a kill that did not
/// relieve it is followed by another verdict within seconds.
const VERDICT_GAP_NS: u64 = 10 * SEC;
/// No-progress evidence closer than this extends an incident: a stalled task
/// reclaims on every charge and sleeps at most 2 s of penalty in between, so
/// a longer silence means the stall had stopped.
const EVIDENCE_GAP_NS: u64 = 5 * SEC;
/// How long after a kill the memory is watched for coming back: a victim's
/// pages are normally freed well within a second.
const RECOVERY_WINDOW_NS: u64 = 10 * SEC;
/// More verdicts than this in one incident are summarized in the timeline,
/// which is meant to be read, not scrolled.
const VERDICT_LINES: usize = 5;

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

/// What [`load`] read: the records in the kernel clock's order, and the lines
/// it had to skip, so a report can say what it did not see.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// ("FILE:LINE", why), in the order read.
    pub skipped: Vec<(String, String)>,
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
        let file = path.display().to_string();
        let reader = std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|error| ReportError::Read {
                file: file.clone(),
                error,
            })?;
        let skipped_before = loaded.skipped.len();
        if read_records(reader, &file, &mut loaded)? == 0 {
            let skipped = &loaded.skipped[skipped_before..];
            let why = match skipped.first() {
                None => "the file is empty".to_owned(),
                Some((at, why)) => format!(
                    "none of its {} lines is one (first: {at}: {why})",
                    skipped.len()
                ),
            };
            return Err(ReportError::NoRecords { file, why });
        }
    }
    // Rotated parts are often given newest first (a shell glob sorts
    // events.jsonl before events.jsonl.1); the kernel's clock orders them.
    loaded.records.sort_by_key(|r| r.mono_ns);
    Ok(loaded)
}

/// Appends one file's records and skipped lines; returns how many records.
fn read_records(
    mut reader: impl BufRead,
    file: &str,
    into: &mut Loaded,
) -> Result<usize, ReportError> {
    let mut buf = Vec::new();
    let mut line = 0;
    let mut read = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|error| ReportError::Read {
                file: file.to_owned(),
                error,
            })?;
        if n == 0 {
            return Ok(read);
        }
        line += 1;
        let complete = buf.last() == Some(&b'\n');
        // Bytes, not a String: a crash can leave garbage (or zeros) that must
        // count as one bad line, not end the file.
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match Record::from_line(text) {
            Ok(record) => {
                into.records.push(record);
                read += 1;
            }
            Err(error @ RecordError::Version { .. }) => {
                return Err(ReportError::Version {
                    file: file.to_owned(),
                    line,
                    error,
                });
            }
            Err(error) => {
                let why = if complete {
                    error.to_string()
                } else {
                    format!("truncated last line (the writer stopped mid-line): {error}")
                };
                into.skipped.push((format!("{file}:{line}"), why));
            }
        }
    }
}

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
    /// Lines the loader skipped (`Loaded::skipped`): [`analyze`] sees only
    /// records, so the caller hands these over for the text to mention.
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

/// Finds the incidents in `records` (in any order) and what they cost.
pub fn analyze(records: &[Record]) -> Report {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.mono_ns);
    let clock = Clock(&sorted);
    let clusters = clusters(&sorted);
    let incidents = (0..clusters.len())
        .map(|i| incident(&sorted, &clusters, i, &clock))
        .collect();
    Report {
        incidents,
        coverage: coverage(&sorted),
        skipped: Vec::new(),
    }
}

/// Wall-clock time of any kernel-clock instant, from the nearest record:
/// derived instants (a verdict's episode start) have no wall time of their own.
struct Clock<'a>(&'a [&'a Record]);

impl Clock<'_> {
    fn at(&self, mono_ns: u64) -> Stamp {
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

fn stamp(r: &Record) -> Stamp {
    Stamp {
        mono_ns: r.mono_ns,
        unix_ms: r.unix_ms,
    }
}

/// The verdicts, kills and OOM kills (by index into the sorted records) that
/// make one incident.
struct Cluster {
    cgroup: String,
    anchors: Vec<usize>,
    first_ns: u64,
    last_ns: u64,
}

impl Cluster {
    fn new(cgroup: &str, index: usize, at: u64) -> Self {
        Self {
            cgroup: cgroup.to_owned(),
            anchors: vec![index],
            first_ns: at,
            last_ns: at,
        }
    }

    fn add(&mut self, index: usize, at: u64) {
        self.anchors.push(index);
        self.anchors.sort_unstable();
        self.first_ns = self.first_ns.min(at);
        self.last_ns = self.last_ns.max(at);
    }
}

/// `cgroup` is `ancestor` or below it: raw events and OOM victims may name
/// a child of the cgroup whose limit was hit.
fn within(cgroup: &str, ancestor: &str) -> bool {
    if ancestor.is_empty() {
        // A cgroup gone before it was named holds only what names it so.
        return cgroup.is_empty();
    }
    cgroup == ancestor
        || (ancestor == "/" && cgroup.starts_with('/'))
        || cgroup
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Groups the verdicts, kills and OOM kills into incidents, oldest first.
fn clusters(sorted: &[&Record]) -> Vec<Cluster> {
    let mut clusters: Vec<Cluster> = Vec::new();
    for (i, r) in sorted.iter().enumerate() {
        let cgroup = match &r.event {
            Event::Verdict { cgroup, .. }
            | Event::Kill { cgroup, .. }
            | Event::Unresolved { cgroup, .. }
            | Event::KillLimit { cgroup, .. } => cgroup,
            _ => continue,
        };
        // A verdict names the cgroup the stall was charged to (where the
        // task runs); the kill names the cgroup over memory.high it
        // relieved, which may be an ancestor (a slice). Related cgroups
        // close in time are one incident, named by the wider of the two.
        let related = |c: &&mut Cluster| within(cgroup, &c.cgroup) || within(&c.cgroup, cgroup);
        match clusters.iter_mut().rev().find(related) {
            Some(c) if r.mono_ns.saturating_sub(c.last_ns) <= VERDICT_GAP_NS => {
                c.add(i, r.mono_ns);
                if c.cgroup != *cgroup && within(&c.cgroup, cgroup) {
                    c.cgroup = cgroup.clone();
                }
            }
            _ => clusters.push(Cluster::new(cgroup, i, r.mono_ns)),
        }
    }
    let guard_clusters = clusters.len();
    for (i, r) in sorted.iter().enumerate() {
        let Event::OomKill { cgroup, .. } = &r.event else {
            continue;
        };
        let t = r.mono_ns;
        let near = |c: &Cluster| {
            t.saturating_add(VERDICT_GAP_NS) >= c.first_ns
                && t <= c.last_ns.saturating_add(VERDICT_GAP_NS)
        };
        // An OOM kill during one of our incidents, in its cgroup or below,
        // belongs to it (memory.max was reached while stalled); of several,
        // the deepest cgroup is the one that ran out.
        let ours = clusters[..guard_clusters]
            .iter()
            .enumerate()
            .filter(|(_, c)| within(cgroup, &c.cgroup) && near(c))
            .max_by_key(|(_, c)| c.cgroup.len())
            .map(|(k, _)| k);
        let kernel_only = || {
            clusters[guard_clusters..]
                .iter()
                .position(|c| c.cgroup == *cgroup && near(c))
                .map(|k| k + guard_clusters)
        };
        match ours.or_else(kernel_only) {
            Some(k) => clusters[k].add(i, t),
            None => clusters.push(Cluster::new(cgroup, i, t)),
        }
    }
    clusters.sort_by_key(|c| c.first_ns);
    clusters
}

/// How long a task stalled, if `r` is a reclaim pass that freed nothing or
/// a penalty sleep, of `cgroup` or below.
fn stall_evidence(r: &Record, cgroup: &str) -> Option<u64> {
    match &r.event {
        Event::Reclaim {
            cgroup: c,
            duration_ns,
            reclaimed_pages: 0,
            ..
        } if within(c, cgroup) => Some(*duration_ns),
        Event::Throttle {
            cgroup: c,
            penalty_ns,
            ..
        } if within(c, cgroup) => Some(*penalty_ns),
        _ => None,
    }
}

fn sample_of<'r>(r: &'r Record, cgroup: &str) -> Option<SampleView<'r>> {
    match &r.event {
        Event::Sample {
            cgroup: c,
            memory_current,
            memory_high,
            memory_max,
            stall_total_ns,
            worst_pid,
            worst_comm,
            ..
        } if c == cgroup => Some(SampleView {
            at: r.mono_ns,
            current: *memory_current,
            high: *memory_high,
            max: *memory_max,
            stall_total_ns: *stall_total_ns,
            worst_pid: *worst_pid,
            worst_comm,
        }),
        _ => None,
    }
}

struct SampleView<'r> {
    at: u64,
    current: u64,
    high: Option<u64>,
    max: Option<u64>,
    stall_total_ns: u64,
    worst_pid: u32,
    worst_comm: &'r str,
}

/// The cgroup itself if it was sampled, else its nearest sampled ancestor
/// (the daemon samples the watched cgroup; a victim may sit below it).
fn sampled_cgroup(sorted: &[&Record], cgroup: &str) -> Option<String> {
    sorted
        .iter()
        .filter_map(|r| match &r.event {
            Event::Sample { cgroup: c, .. } if within(cgroup, c) => Some(c),
            _ => None,
        })
        .max_by_key(|c| c.len())
        .cloned()
}

fn incident(sorted: &[&Record], clusters: &[Cluster], idx: usize, clock: &Clock) -> Incident {
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
        .map(|s| sorted.iter().filter_map(|r| sample_of(r, s)).collect())
        .unwrap_or_default();
    let during: Vec<&Record> = sorted
        .iter()
        .filter(|r| r.mono_ns >= start && r.mono_ns <= end)
        .copied()
        .collect();
    let tasks = stalled_tasks(&during, cg, &verdicts, &samples, (start, end));
    let (stall_ns, stall_from) = stall_total(&samples, start, end, &verdicts, &tasks);

    let mut lines: Vec<(u64, String)> = Vec::new();
    let began_with = began.as_ref().and_then(|b| b.evidence);
    if let Some(began) = began {
        lines.push((start, began.text));
    }
    let first_throttle = during.iter().find(|r| {
        matches!(&r.event, Event::Throttle { cgroup, .. } if within(cgroup, cg))
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
    let mut lost: BTreeMap<String, u64> = BTreeMap::new();
    for r in &during {
        if let Event::Lost { what, count } = &r.event {
            let n = lost.entry(what.clone()).or_default();
            *n = n.saturating_add(*count);
            lines.push((r.mono_ns, r.event.describe()));
        }
    }

    let mut kills = Vec::new();
    let mut oom_kills = Vec::new();
    for r in &anchors {
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
                } else if sampled.as_deref() == Some(cgroup.as_str()) {
                    // The kill record's memory.current (what the guard read
                    // when it decided) stands in for a missing sample before.
                    recovery(&samples, r.mono_ns, Some(*memory_current), clock)
                } else {
                    let own: Vec<SampleView> =
                        sorted.iter().filter_map(|r| sample_of(r, cgroup)).collect();
                    recovery(&own, r.mono_ns, Some(*memory_current), clock)
                };
                recovery_line(&mut lines, r.mono_ns, *dry_run, recovery.as_ref());
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
                let recovery = recovery(&samples, r.mono_ns, None, clock);
                recovery_line(&mut lines, r.mono_ns, false, recovery.as_ref());
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
    if ended_by == Ending::NotRelieved {
        let what = if end > c.last_ns {
            "last stall evidence"
        } else {
            "last verdict"
        };
        lines.push((
            end,
            format!("{what}; no kill relieved the stall within these records"),
        ));
    }
    lines.sort_by_key(|(t, _)| *t);

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
        timeline: lines
            .into_iter()
            .map(|(t, text)| Line {
                at: clock.at(t),
                text,
            })
            .collect(),
    }
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
        (_, Some(r)) => {
            let text = match &r.event {
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
            };
            (
                start,
                Some(BeganLine {
                    evidence: Some(r),
                    text,
                }),
            )
        }
        _ => (start, None),
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

/// Every task seen stalling in the incident, the kernel's worst first.
fn stalled_tasks(
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

fn stall_total(
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

fn recovery_line(lines: &mut Vec<(u64, String)>, at: u64, dry_run: bool, r: Option<&Recovery>) {
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

fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// Signed seconds from the incident start, as "+0.412 s".
fn relative(at: Stamp, start: Stamp) -> String {
    let ns = i128::from(at.mono_ns) - i128::from(start.mono_ns);
    format!("{:+.3} s", ns as f64 / 1e9)
}

/// `HH:MM:SS.mmm`, UTC, as `guard trace --lines` prints it.
fn clock_time(unix_ms: u64) -> String {
    let ms_of_day = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

/// `YYYY-MM-DD`, UTC.
fn date(unix_ms: u64) -> String {
    let mut days = unix_ms / 86_400_000;
    let mut year = 1970u64;
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    loop {
        let in_year = if leap(year) { 366 } else { 365 };
        if days < in_year {
            break;
        }
        days -= in_year;
        year += 1;
    }
    let february = if leap(year) { 29 } else { 28 };
    let mut month = 1;
    for len in [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    format!("{year:04}-{month:02}-{:02}", days + 1)
}

fn cgroup_name(cgroup: &str) -> &str {
    if cgroup.is_empty() {
        "(a cgroup gone before it was named)"
    } else {
        cgroup
    }
}

fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

impl StalledTask {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.no_progress_passes > 0 {
            parts.push(format!(
                "{} without progress",
                plural(self.no_progress_passes, "reclaim pass", "reclaim passes")
            ));
        }
        if self.reclaim_passes > self.no_progress_passes {
            parts.push(format!(
                "{} with progress",
                self.reclaim_passes - self.no_progress_passes
            ));
        }
        if self.penalty_sleeps > 0 {
            parts.push(plural(
                self.penalty_sleeps,
                "penalty sleep",
                "penalty sleeps",
            ));
        }
        if self.stall_ns > 0 {
            parts.push(format!("{} stalled", ms(self.stall_ns)));
        }
        if self.worst_in_verdicts > 0 {
            parts.push(format!(
                "worst task of {}",
                plural(self.worst_in_verdicts, "verdict", "verdicts")
            ));
        }
        if self.worst_in_samples > 0 {
            parts.push(format!(
                "worst in {}",
                plural(self.worst_in_samples, "sample", "samples")
            ));
        }
        format!("{}[{}]: {}", self.comm, self.pid, parts.join(", "))
    }
}

impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ending = match self.ended_by {
            Ending::Kill => "ended by the guard's kill",
            Ending::OomKill => "ended by the kernel's OOM killer",
            Ending::NotRelieved => "not relieved by a kill",
        };
        writeln!(
            f,
            "{}, {} {} UTC, lasted {}, {ending}",
            cgroup_name(&self.cgroup),
            date(self.start.unix_ms),
            clock_time(self.start.unix_ms),
            secs(self.duration_ns()),
        )?;
        for line in &self.timeline {
            writeln!(
                f,
                "  {} {:>9}  {}",
                clock_time(line.at.unix_ms),
                relative(line.at, self.start),
                line.text
            )?;
        }
        let source = match self.stall_from {
            StallSource::Samples => "the kernel's counters in samples",
            StallSource::Verdicts => "the largest verdict: at least this much",
            StallSource::RawEvents => "reclaim and penalty-sleep events: at least this much",
            StallSource::Unknown => "no samples, verdicts or stall events",
        };
        writeln!(
            f,
            "  stalled:      {} summed over tasks (from {source})",
            secs(self.stall_ns)
        )?;
        if self.verdicts > 0 {
            writeln!(f, "  verdicts:     {}", self.verdicts)?;
        }
        let mut tasks = self.tasks.iter();
        match tasks.next() {
            None => writeln!(f, "  tasks:        none seen stalling")?,
            Some(t) => writeln!(f, "  tasks:        {}", t.describe())?,
        }
        for t in tasks {
            writeln!(f, "                {}", t.describe())?;
        }
        if self.kills.is_empty() {
            writeln!(f, "  killed:       nothing by the guard")?;
        }
        for k in &self.kills {
            writeln!(
                f,
                "  {}{}[{}], {} footprint, mode {}{}, {} after the verdict",
                if k.dry_run {
                    "would kill:   "
                } else {
                    "killed:       "
                },
                k.comm,
                k.pid,
                mib(k.footprint_bytes),
                k.mode,
                if k.also_killed > 0 {
                    format!(" (+{} more)", k.also_killed)
                } else {
                    String::new()
                },
                ms(k.latency_us.saturating_mul(1000)),
            )?;
            if !k.dry_run {
                write_recovery(f, k.recovery.as_ref())?;
            }
        }
        for o in &self.oom_kills {
            writeln!(
                f,
                "  kernel OOM:   {}[{}] in {}, invoked by {}[{}]",
                o.comm,
                o.pid,
                cgroup_name(&o.cgroup),
                o.trigger_comm,
                o.trigger_pid
            )?;
            write_recovery(f, o.recovery.as_ref())?;
        }
        if self.lost.is_empty() {
            writeln!(f, "  lost:         none")
        } else {
            let lost: Vec<String> = self
                .lost
                .iter()
                .map(|(what, n)| format!("{n} {what}"))
                .collect();
            writeln!(
                f,
                "  lost:         {} records during the incident: the story above has gaps",
                lost.join(", ")
            )
        }
    }
}

fn write_recovery(f: &mut fmt::Formatter<'_>, r: Option<&Recovery>) -> fmt::Result {
    match r {
        Some(r) => writeln!(
            f,
            "  memory back:  {} ({} before the kill, {} lowest after), within {}",
            mib(r.freed_bytes()),
            mib(r.before_bytes),
            mib(r.lowest_bytes),
            secs(r.took_ns)
        ),
        None => writeln!(
            f,
            "  memory back:  unknown, no sample both before and after the kill"
        ),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.coverage;
        let span = match (c.first, c.last) {
            (Some(a), Some(b)) => format!(
                "{} {} to {} {} UTC ({})",
                date(a.unix_ms),
                clock_time(a.unix_ms),
                date(b.unix_ms),
                clock_time(b.unix_ms),
                secs(b.mono_ns.saturating_sub(a.mono_ns))
            ),
            _ => "nothing".to_owned(),
        };
        for source in &c.sources {
            writeln!(f, "Recorded from: {source}")?;
        }
        let n = self.incidents.len();
        for (i, incident) in self.incidents.iter().enumerate() {
            write!(f, "Incident {} of {n}: {incident}", i + 1)?;
            writeln!(f)?;
        }
        if n == 0 {
            let kinds: Vec<String> = c
                .by_kind
                .iter()
                .map(|(kind, count)| format!("{count} {kind}"))
                .collect();
            writeln!(
                f,
                "No incident: these records hold no verdict, no kill and no kernel OOM kill."
            )?;
            writeln!(
                f,
                "They cover {span}: {} ({}).",
                plural(c.records as u64, "record", "records"),
                kinds.join(", ")
            )?;
        } else {
            let all_kills = self.incidents.iter().flat_map(|i| &i.kills);
            let killed = all_kills.clone().filter(|k| !k.dry_run).count() as u64;
            let dry = all_kills.clone().filter(|k| k.dry_run).count() as u64;
            let ooms: u64 = self
                .incidents
                .iter()
                .map(|i| i.oom_kills.len() as u64)
                .sum();
            let stall = self
                .incidents
                .iter()
                .map(|i| i.stall_ns)
                .fold(0, u64::saturating_add);
            let recoveries: Vec<Option<Recovery>> = all_kills
                .filter(|k| !k.dry_run)
                .map(|k| k.recovery)
                .chain(
                    self.incidents
                        .iter()
                        .flat_map(|i| &i.oom_kills)
                        .map(|o| o.recovery),
                )
                .collect();
            let known: Vec<&Recovery> = recoveries.iter().flatten().collect();
            let back_bytes = known
                .iter()
                .map(|r| r.freed_bytes())
                .fold(0, u64::saturating_add);
            let back = if known.is_empty() {
                "memory back unknown".to_owned()
            } else if known.len() < recoveries.len() {
                format!(
                    "{} came back after {} of {} kills (no samples around the others)",
                    mib(back_bytes),
                    known.len(),
                    recoveries.len()
                )
            } else {
                format!("{} came back", mib(back_bytes))
            };
            let lost = self
                .incidents
                .iter()
                .flat_map(|i| i.lost.values().copied())
                .fold(0, u64::saturating_add);
            let mut cgroups: Vec<&str> = self.incidents.iter().map(|i| i.cgroup.as_str()).collect();
            cgroups.sort_unstable();
            cgroups.dedup();
            writeln!(
                f,
                "Totals: {} in {}, {} stalled",
                plural(n as u64, "incident", "incidents"),
                plural(cgroups.len() as u64, "cgroup", "cgroups"),
                secs(stall),
            )?;
            writeln!(
                f,
                "        {} by the guard{}, {}, {back}, {} lost during incidents",
                plural(killed, "process killed", "processes killed"),
                if dry > 0 {
                    format!(" ({dry} more in dry run)")
                } else {
                    String::new()
                },
                plural(ooms, "kernel OOM kill", "kernel OOM kills"),
                plural(lost, "record", "records"),
            )?;
            writeln!(
                f,
                "Records: {span}, {}.",
                plural(c.records as u64, "record", "records")
            )?;
        }
        if let Some((at, why)) = self.skipped.first() {
            writeln!(
                f,
                "Skipped {} that did not parse (first: {at}: {why}).",
                plural(self.skipped.len() as u64, "line", "lines")
            )?;
        }
        Ok(())
    }
}

const MEMORY_COLOURS: [RGBColor; 3] = [
    RGBColor(31, 96, 196),
    RGBColor(20, 140, 70),
    RGBColor(0, 150, 160),
];
const HIGH_COLOUR: RGBColor = RGBColor(230, 130, 0);
const MAX_COLOUR: RGBColor = RGBColor(120, 60, 20);
const KILL_COLOUR: RGBColor = RGBColor(215, 25, 25);
const OOM_COLOUR: RGBColor = RGBColor(140, 20, 170);
const DRY_RUN_COLOUR: RGBColor = RGBColor(120, 120, 120);
const SIZE: (u32, u32) = (1000, 600);

/// What the chart shows, in chart units: seconds since the first incident
/// began, MiB, ms of stall per second.
struct Chart {
    title: String,
    x: (f64, f64),
    memory: Vec<MemorySeries>,
    memory_top: f64,
    /// Limits too far above the data to draw without flattening it.
    off_chart: Vec<String>,
    stall: Vec<(String, Vec<(f64, f64)>)>,
    stall_from: &'static str,
    stall_top: f64,
    markers: Vec<Marker>,
}

struct MemorySeries {
    cgroup: String,
    current: Vec<(f64, f64)>,
    high: Vec<(f64, f64)>,
    max: Vec<(f64, f64)>,
}

struct Marker {
    at: f64,
    label: String,
    colour: RGBColor,
}

/// Draws the report's incidents as an SVG file: memory over time above,
/// stall per second below, kills marked.
pub fn svg(records: &[Record], report: &Report, out: &Path) -> Result<(), ReportError> {
    if report.incidents.is_empty() {
        return Err(ReportError::NoIncident);
    }
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.mono_ns);
    let chart = chart(&sorted, report);
    let file = out.display().to_string();
    let mut text = String::new();
    draw(&chart, &mut text).map_err(|e| ReportError::Plot {
        file: file.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(out, text).map_err(|error| ReportError::Write { file, error })
}

fn chart(sorted: &[&Record], report: &Report) -> Chart {
    let incidents = &report.incidents;
    let t0 = incidents
        .iter()
        .map(|i| i.start.mono_ns)
        .min()
        .unwrap_or_default();
    let rel = |t: u64| (i128::from(t) - i128::from(t0)) as f64 / 1e9;
    let mut last = incidents
        .iter()
        .map(|i| rel(i.end.mono_ns))
        .fold(0.0, f64::max);
    for r in incidents.iter().flat_map(|i| {
        i.kills
            .iter()
            .filter_map(|k| k.recovery)
            .chain(i.oom_kills.iter().filter_map(|o| o.recovery))
    }) {
        last = last.max(rel(r.lowest_at.mono_ns));
    }
    let pad = (last * 0.2).max(1.0);
    let (x0, x1) = (-pad, last + pad);
    let shown = |t: u64| (x0..=x1).contains(&rel(t));

    let mut sampled: Vec<&str> = incidents
        .iter()
        .filter_map(|i| i.sampled_cgroup.as_deref())
        .collect();
    sampled.sort_unstable();
    sampled.dedup();
    let mut memory = Vec::new();
    let mut stall = Vec::new();
    for cg in &sampled {
        let samples: Vec<SampleView> = sorted
            .iter()
            .filter_map(|r| sample_of(r, cg))
            .filter(|s| shown(s.at))
            .collect();
        let mib = |b: u64| b as f64 / MIB;
        // The guard read memory.current when it decided to kill: one more
        // point, where samples are sparse (a short incident falls between
        // two of them).
        let mut current: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| (rel(s.at), mib(s.current)))
            .chain(
                sorted
                    .iter()
                    .filter(|r| shown(r.mono_ns))
                    .filter_map(|r| match &r.event {
                        Event::Kill {
                            cgroup,
                            memory_current,
                            ..
                        } if cgroup == cg => Some((rel(r.mono_ns), mib(*memory_current))),
                        _ => None,
                    }),
            )
            .collect();
        current.sort_by(|a, b| a.0.total_cmp(&b.0));
        memory.push(MemorySeries {
            cgroup: (*cg).to_owned(),
            current,
            high: samples
                .iter()
                .filter_map(|s| s.high.map(|h| (rel(s.at), mib(h))))
                .collect(),
            max: samples
                .iter()
                .filter_map(|s| s.max.map(|m| (rel(s.at), mib(m))))
                .collect(),
        });
        // A step per interval between samples: the kernel's counter says how
        // much stall accrued in it, not when within it.
        let mut steps = Vec::new();
        for pair in samples.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.at <= a.at || b.stall_total_ns < a.stall_total_ns {
                continue;
            }
            let rate =
                (b.stall_total_ns - a.stall_total_ns) as f64 / 1e6 / ((b.at - a.at) as f64 / 1e9);
            steps.push((rel(a.at), rate));
            steps.push((rel(b.at), rate));
        }
        if !steps.is_empty() {
            stall.push(((*cg).to_owned(), steps));
        }
    }
    // Per-pass events, where recorded, say when the stall happened to the
    // millisecond; the samples' counters only per interval, and only for
    // the cgroup the stall was charged to. So events win when there are any.
    let mut stall_from = "from the kernel's counters in samples";
    let raw = sorted.iter().any(|r| {
        shown(r.mono_ns)
            && incidents
                .iter()
                .any(|i| stall_evidence(r, &i.cgroup).is_some())
    });
    if stall.is_empty() || raw {
        stall.clear();
        stall_from = "from reclaim and penalty-sleep events";
        let deaths: Vec<(u32, u64)> = sorted
            .iter()
            .filter_map(|r| match &r.event {
                Event::Kill {
                    pid,
                    dry_run: false,
                    ..
                }
                | Event::OomKill { pid, .. } => Some((*pid, r.mono_ns)),
                _ => None,
            })
            .collect();
        let width = ((x1 - x0) / 60.0).max(0.1);
        for i in incidents {
            let mut bins = vec![0.0f64; ((x1 - x0) / width).ceil() as usize + 1];
            for r in sorted.iter().filter(|r| shown(r.mono_ns)) {
                // A penalty sleep begins at its record; a reclaim pass is
                // recorded when it ends. Spread each over the bins it spans,
                // so a 200 ms sleep does not read as 2 s per second.
                let span = match &r.event {
                    // A penalty sleep is killable: it ends when its task dies.
                    Event::Throttle { pid, .. } => stall_evidence(r, &i.cgroup).map(|ns| {
                        let end = r.mono_ns.saturating_add(ns);
                        let died = deaths
                            .iter()
                            .filter(|(p, t)| p == pid && *t >= r.mono_ns)
                            .map(|&(_, t)| t)
                            .min();
                        (r.mono_ns, died.map_or(end, |t| t.min(end)))
                    }),
                    _ => stall_evidence(r, &i.cgroup)
                        .map(|ns| (r.mono_ns.saturating_sub(ns), r.mono_ns)),
                };
                if let Some((from, to)) = span {
                    spread(&mut bins, (rel(from) - x0) / width, (rel(to) - x0) / width);
                }
            }
            if bins.iter().any(|&b| b > 0.0) {
                let steps = bins
                    .iter()
                    .enumerate()
                    .flat_map(|(k, &rate)| {
                        let from = x0 + k as f64 * width;
                        [(from, rate), (from + width, rate)]
                    })
                    .collect();
                stall.push((i.cgroup.clone(), steps));
            }
        }
    }

    let data_top = memory
        .iter()
        .flat_map(|s| s.current.iter().chain(&s.high))
        .map(|&(_, y)| y)
        .fold(0.0, f64::max);
    let mut memory_top = data_top;
    let mut off_chart = Vec::new();
    for s in &memory {
        let max = s.max.iter().map(|&(_, y)| y).fold(0.0, f64::max);
        if max > 3.0 * data_top.max(1.0) {
            off_chart.push(format!("memory.max {max:.0} MiB is above the chart"));
        } else {
            memory_top = memory_top.max(max);
        }
    }
    // Headroom for the legend and the marker labels above the data.
    let memory_top = (memory_top * 1.4).max(1.0);
    let stall_top = stall
        .iter()
        .flat_map(|(_, s)| s.iter().map(|&(_, y)| y))
        .fold(0.0, f64::max);
    let stall_top = (stall_top * 1.4).max(1.0);

    let mut markers = Vec::new();
    for i in incidents {
        for k in &i.kills {
            let (verb, colour) = if k.dry_run {
                ("would kill", DRY_RUN_COLOUR)
            } else {
                ("SIGKILL", KILL_COLOUR)
            };
            markers.push(Marker {
                at: rel(k.at.mono_ns),
                label: format!("{verb} {}[{}]", k.comm, k.pid),
                colour,
            });
        }
        for o in &i.oom_kills {
            markers.push(Marker {
                at: rel(o.at.mono_ns),
                label: format!("kernel OOM kill {}[{}]", o.comm, o.pid),
                colour: OOM_COLOUR,
            });
        }
    }

    let mut cgroups: Vec<&str> = Vec::new();
    for name in incidents.iter().map(|i| cgroup_name(&i.cgroup)) {
        if !cgroups.contains(&name) {
            cgroups.push(name);
        }
    }
    let when = incidents
        .first()
        .map(|i| {
            format!(
                "{} {} UTC",
                date(i.start.unix_ms),
                clock_time(i.start.unix_ms)
            )
        })
        .unwrap_or_default();
    Chart {
        title: format!(
            "guard {}: {}, {when}",
            if incidents.len() == 1 {
                "incident"
            } else {
                "incidents"
            },
            cgroups.join(", ")
        ),
        x: (x0, x1),
        memory,
        memory_top,
        off_chart,
        stall,
        stall_from,
        stall_top,
        markers,
    }
}

/// Adds one stalled interval, given in bin units `[from, to)`, to the bins
/// it overlaps: a task stalled for a whole bin adds 1000 ms/s to it.
fn spread(bins: &mut [f64], from: f64, to: f64) {
    let first = from.floor().max(0.0) as usize;
    for (k, bin) in bins.iter_mut().enumerate().skip(first) {
        if k as f64 >= to {
            break;
        }
        *bin += 1e3 * (to.min(k as f64 + 1.0) - from.max(k as f64)).max(0.0);
    }
}

/// Plotters' SVG backend writes `<text>` elements and leaves the glyphs to
/// the viewer, so labels need no font feature (its built-in font metrics
/// only estimate the layout).
fn draw(chart: &Chart, buf: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(buf, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&chart.title, ("sans-serif", 22))?;
    let (upper, lower) = root.split_vertically(310);
    let (x0, x1) = chart.x;

    let mut mem = ChartBuilder::on(&upper)
        .margin(10)
        .x_label_area_size(24)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, 0.0..chart.memory_top)?;
    mem.configure_mesh()
        .y_desc("memory (MiB)")
        .light_line_style(WHITE)
        .draw()?;
    for (k, s) in chart.memory.iter().enumerate() {
        let colour = MEMORY_COLOURS[k % MEMORY_COLOURS.len()];
        mem.draw_series(LineSeries::new(
            s.current.iter().copied(),
            colour.stroke_width(2),
        ))?
        .label(format!("memory.current {}", s.cgroup))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        for (points, colour, name) in [
            (&s.high, HIGH_COLOUR, "memory.high"),
            (&s.max, MAX_COLOUR, "memory.max"),
        ] {
            if points.is_empty() || points.iter().any(|&(_, y)| y > chart.memory_top) {
                continue;
            }
            mem.draw_series(DashedLineSeries::new(
                points.iter().copied(),
                8,
                5,
                colour.stroke_width(2),
            ))?
            .label(if chart.memory.len() > 1 {
                format!("{name} {}", s.cgroup)
            } else {
                name.to_owned()
            })
            .legend(move |(x, y)| {
                let style = colour.stroke_width(2);
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (8, 0)], style)
                    + PathElement::new(vec![(12, 0), (20, 0)], style)
            });
        }
    }
    let top = chart.memory_top;
    for (k, note) in chart.off_chart.iter().enumerate() {
        mem.draw_series(std::iter::once(Text::new(
            note.clone(),
            (x0 + (x1 - x0) * 0.01, top * (0.97 - 0.08 * k as f64)),
            ("sans-serif", 13).into_font().color(&MAX_COLOUR),
        )))?;
    }
    for (k, m) in chart.markers.iter().enumerate() {
        mem.draw_series(std::iter::once(PathElement::new(
            vec![(m.at, 0.0), (m.at, top)],
            m.colour.stroke_width(2),
        )))?;
        // Staggered, so markers close in time keep readable labels.
        mem.draw_series(std::iter::once(Text::new(
            m.label.clone(),
            (
                m.at + (x1 - x0) * 0.005,
                top * (0.97 - 0.08 * (k % 4) as f64),
            ),
            ("sans-serif", 14).into_font().color(&m.colour),
        )))?;
    }
    let note_at = (x0 + (x1 - x0) * 0.3, top * 0.5);
    if chart.memory.iter().all(|s| s.current.is_empty()) {
        mem.draw_series(std::iter::once(Text::new(
            "no memory.current sample of this cgroup in these records",
            note_at,
            ("sans-serif", 16).into_font().color(&BLACK),
        )))?;
    }
    if !chart.memory.is_empty() {
        mem.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }

    let mut stall = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, 0.0..chart.stall_top)?;
    stall
        .configure_mesh()
        .y_desc("stall (ms/s)")
        .x_desc("seconds since the stall began")
        .light_line_style(WHITE)
        .draw()?;
    for (k, (cgroup, steps)) in chart.stall.iter().enumerate() {
        let colour = MEMORY_COLOURS[k % MEMORY_COLOURS.len()];
        stall
            .draw_series(LineSeries::new(
                steps.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(format!("stall {cgroup}, {}", chart.stall_from))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    if chart.stall.is_empty() {
        stall.draw_series(std::iter::once(Text::new(
            "no stall data: no samples, reclaim or penalty-sleep events",
            (x0 + (x1 - x0) * 0.3, chart.stall_top * 0.5),
            ("sans-serif", 16).into_font().color(&BLACK),
        )))?;
    }
    for m in &chart.markers {
        stall.draw_series(std::iter::once(PathElement::new(
            vec![(m.at, 0.0), (m.at, chart.stall_top)],
            m.colour.stroke_width(2),
        )))?;
    }
    if !chart.stall.is_empty() {
        stall
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SCHEMA_VERSION;

    const MS: u64 = 1_000_000;
    /// CLOCK_MONOTONIC and wall clock of the first record (2026-11-18
    /// 11:06:40.000 UTC).
    const T0: u64 = 1_000 * SEC;
    const WALL0: u64 = 1_795_000_000_000;
    const SEED: &str = "/seed.slice";
    const HIGH: u64 = 64 << 20;
    const MAX: u64 = 128 << 20;

    // Ground truth of the synthetic incident, ms after T0.
    const FIRST_NO_PROGRESS_MS: u64 = 1_900;
    const EPISODE_START_MS: u64 = 2_000;
    const STALL_END_MS: u64 = 5_500;
    const VERDICT_MS: u64 = 5_500;
    /// The kernel's stall counter grows this many ms per second while grep
    /// and node both stall.
    const STALL_MS_PER_S: u64 = 1_600;

    fn at_ms(ms: u64) -> u64 {
        T0 + ms * MS
    }

    fn kill_ns() -> u64 {
        at_ms(VERDICT_MS) + 1_200_000
    }

    fn rec(mono_ns: u64, event: Event) -> Record {
        Record {
            v: SCHEMA_VERSION,
            mono_ns,
            unix_ms: WALL0 + (mono_ns - T0) / MS,
            event,
        }
    }

    fn hello() -> Record {
        rec(
            T0,
            Event::Hello {
                source: "daemon".into(),
                guard_version: "0.1.0".into(),
                kernel: "6.12.0".into(),
                throttle_hooked: true,
                dry_run: false,
            },
        )
    }

    fn sample(
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
            },
        )
    }

    fn reclaim(at: u64, pid: u32, comm: &str, reclaimed_pages: u64) -> Record {
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

    fn throttle(at: u64, pid: u32, comm: &str, penalty_ns: u64) -> Record {
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

    fn verdict(at: u64, episode_start_ns: u64) -> Record {
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

    fn kill(at: u64, dry_run: bool) -> Record {
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
            },
        )
    }

    /// grep 4242 fills /seed.slice past memory.high and keeps it there;
    /// node 4300 is a bystander stalled with it; the guard kills grep and
    /// memory falls back. Another cgroup is sampled throughout, to catch
    /// samples being mixed up.
    fn seed_incident() -> Vec<Record> {
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

    fn write_lines(dir: &Path, name: &str, records: &[Record], tail: &str) -> PathBuf {
        let path = dir.join(name);
        let mut text: String = records.iter().map(|r| r.to_line() + "\n").collect();
        text.push_str(tail);
        std::fs::write(&path, text).expect("write");
        path
    }

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
    fn rotated_parts_given_newest_first_are_read_in_clock_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = seed_incident();
        let (older, newer) = records.split_at(records.len() / 2);
        let old = write_lines(dir.path(), "events.jsonl.1", older, "");
        let new = write_lines(dir.path(), "events.jsonl", newer, "");

        let loaded = load(&[new, old]).expect("loads");
        assert!(
            loaded
                .records
                .windows(2)
                .all(|w| w[0].mono_ns <= w[1].mono_ns)
        );
        let report = analyze(&loaded.records);
        assert_eq!(report.incidents.len(), 1, "{report}");
        assert_eq!(
            report.incidents[0].start.mono_ns,
            at_ms(FIRST_NO_PROGRESS_MS)
        );
        assert!(report.incidents[0].kills[0].recovery.is_some());
    }

    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    fn polylines(doc: &roxmltree::Document, colour: RGBColor) -> Vec<Vec<(f64, f64)>> {
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

    fn texts(doc: &roxmltree::Document) -> Vec<(String, f64)> {
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

    #[test]
    fn the_svg_shows_memory_falling_after_a_labelled_kill_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = seed_incident();
        let report = analyze(&records);
        let out = dir.path().join("incident.svg");
        svg(&records, &report, &out).expect("draws");

        let text = std::fs::read_to_string(&out).expect("written");
        let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
        assert_eq!(doc.root_element().tag_name().name(), "svg");

        let memory = polylines(&doc, MEMORY_COLOURS[0]);
        let series = memory
            .iter()
            .max_by_key(|p| p.len())
            .expect("a memory.current line");
        assert!(series.len() >= 10, "{series:?}");
        // SVG y grows downwards: the peak is the smallest y, the trough after
        // the kill the largest, and the trough comes later.
        let peak = series
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("peak");
        let trough = series
            .iter()
            .filter(|p| p.0 > peak.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("memory falls after the peak");

        let labels = texts(&doc);
        let (label, label_x) = labels
            .iter()
            .find(|(t, _)| t.contains("grep[4242]"))
            .expect("the victim is named");
        assert!(label.contains("SIGKILL"), "{label}");
        let title = labels.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>();
        assert!(
            title
                .iter()
                .any(|t| t.contains(SEED) && t.contains("2026-11-18")),
            "{title:?}"
        );

        let markers: Vec<f64> = polylines(&doc, KILL_COLOUR)
            .iter()
            .filter(|p| p.len() == 2 && p[0].0 == p[1].0)
            .map(|p| p[0].0)
            .collect();
        assert!(!markers.is_empty(), "no vertical kill marker");
        assert!(
            markers.iter().all(|x| (label_x - x).abs() < 15.0),
            "marker at {markers:?}, label at {label_x}"
        );
        assert!(
            markers.iter().all(|x| *x > peak.0 && *x < trough.0),
            "the kill at {markers:?} sits between the peak {peak:?} and the fall {trough:?}"
        );
    }

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
    fn a_short_incident_between_samples_is_drawn_from_its_passes_and_the_kill() {
        // As a fast kill looks: the incident falls between two samples, the
        // slice's counters show no stall (it was charged to a child), but
        // the passes and the guard's own reading at the kill were recorded.
        let mut records = vec![hello(), sample(SEED, at_ms(0), 2 << 20, 0, (0, ""))];
        for k in 0..20 {
            records.push(reclaim(at_ms(600 + k * 5), 4242, "grep", 0));
        }
        // A 2 s penalty sleep that the kill cuts short.
        records.push(throttle(at_ms(650), 4242, "grep", 2 * SEC));
        records.push(verdict(at_ms(700), at_ms(595)));
        records.push(kill(at_ms(702), false));
        records.push(sample(SEED, at_ms(720), 1 << 20, 0, (0, "")));
        let sorted: Vec<&Record> = records.iter().collect();
        let report = analyze(&records);
        let c = chart(&sorted, &report);
        assert_eq!(c.stall_from, "from reclaim and penalty-sleep events");
        let peak = c
            .stall
            .iter()
            .flat_map(|(_, s)| s.iter().map(|&(_, y)| y))
            .fold(0.0, f64::max);
        assert!(peak > 0.0, "the passes' stall is drawn");
        let kill_x = (at_ms(702) - at_ms(595)) as f64 / 1e9;
        let after: f64 = c
            .stall
            .iter()
            .flat_map(|(_, s)| {
                s.iter()
                    .filter(|&&(x, _)| x > kill_x + 0.1)
                    .map(|&(_, y)| y)
            })
            .fold(0.0, f64::max);
        assert_eq!(after, 0.0, "the victim's penalty sleep ends with it");
        let seed = c.memory.iter().find(|m| m.cgroup == SEED).expect("series");
        let top = seed.current.iter().map(|&(_, y)| y).fold(0.0, f64::max);
        assert_eq!(top, 97.0, "the kill's reading of memory.current is a point");
        assert!(
            seed.current.windows(2).all(|w| w[0].0 <= w[1].0),
            "in time order"
        );
    }

    #[test]
    fn a_verdict_in_a_scope_and_the_kill_at_its_limited_slice_are_one_incident() {
        // As the daemon reports it: the stall is charged to the task's own
        // scope, the kill names the slice over memory.high it relieved.
        let scope = format!("{SEED}/hog.scope");
        let mut v = verdict(at_ms(1_300), at_ms(1_000));
        if let Event::Verdict { cgroup, .. } = &mut v.event {
            *cgroup = scope.clone();
        }
        let mut records = vec![hello()];
        for k in 0..10 {
            let mut r = reclaim(at_ms(1_000 + k * 30), 4242, "grep", 0);
            if let Event::Reclaim { cgroup, .. } = &mut r.event {
                *cgroup = scope.clone();
            }
            records.push(r);
        }
        records.push(v);
        records.push(kill(at_ms(1_302), false));
        let report = analyze(&records);
        assert_eq!(report.incidents.len(), 1, "{report}");
        let inc = &report.incidents[0];
        assert_eq!(inc.cgroup, SEED, "named by the slice whose limit was hit");
        assert_eq!(inc.ended_by, Ending::Kill);
        assert_eq!(inc.verdicts, 1);
        assert_eq!(inc.start.mono_ns, at_ms(1_000));
        assert_eq!(inc.tasks[0].no_progress_passes, 10);
        // A sibling slice's verdict at the same time stays apart.
        let mut other = verdict(at_ms(1_301), at_ms(1_000));
        if let Event::Verdict { cgroup, .. } = &mut other.event {
            *cgroup = "/other.slice/x.scope".into();
        }
        records.push(other);
        assert_eq!(analyze(&records).incidents.len(), 2);
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

    #[test]
    fn a_newer_schema_fails_naming_file_line_and_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let newer = seed_incident()[2].to_line().replace("\"v\":1", "\"v\":2");
        let path = write_lines(dir.path(), "new.jsonl", &[hello()], &newer);
        let err = load(std::slice::from_ref(&path)).expect_err("refused");
        assert!(
            matches!(
                err,
                ReportError::Version {
                    line: 2,
                    error: RecordError::Version { found: 2 },
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&format!("{}:2:", path.display())), "{msg}");
        assert!(
            msg.contains("version 2") && msg.contains("upgrade"),
            "{msg}"
        );
    }

    #[test]
    fn an_empty_file_or_one_without_records_fails_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "").expect("write");
        let err = load(std::slice::from_ref(&empty)).expect_err("empty");
        let msg = err.to_string();
        assert!(matches!(err, ReportError::NoRecords { .. }), "{err:?}");
        assert!(
            msg.contains(&format!("{}", empty.display())) && msg.contains("empty"),
            "{msg}"
        );

        let junk = dir.path().join("junk.txt");
        std::fs::write(&junk, "hello\n{\"v\":1}\n").expect("write");
        let msg = load(std::slice::from_ref(&junk))
            .expect_err("junk")
            .to_string();
        assert!(msg.contains("none of its 2 lines"), "{msg}");
        assert!(msg.contains(&format!("{}:1:", junk.display())), "{msg}");

        let missing = dir.path().join("missing.jsonl");
        let msg = load(std::slice::from_ref(&missing))
            .expect_err("missing")
            .to_string();
        assert!(
            msg.contains(&format!("cannot read {}", missing.display())),
            "{msg}"
        );
        assert!(matches!(load(&[]), Err(ReportError::NoFiles)));
    }

    #[test]
    fn without_samples_stall_is_drawn_from_events_spread_over_their_time() {
        let records: Vec<Record> = seed_incident()
            .into_iter()
            .filter(|r| !matches!(r.event, Event::Sample { .. }))
            .collect();
        let report = analyze(&records);
        let text = report.to_string();
        assert!(
            text.contains("memory back:  unknown, no sample both before and after the kill"),
            "{text}"
        );
        let sorted: Vec<&Record> = records.iter().collect();
        let chart = chart(&sorted, &report);
        assert!(chart.memory.is_empty());
        let (_, steps) = chart.stall.first().expect("a stall line from the events");
        // One task at a time sleeps its penalty in the data: a full bin of it
        // is 1000 ms/s (plus a few ms of reclaim), not a 200 ms spike in one
        // narrow bin.
        let peak = steps.iter().map(|p| p.1).fold(0.0, f64::max);
        assert!((1000.0..1200.0).contains(&peak), "peak {peak} ms/s");
        let sleeps: Vec<(f64, f64)> = records
            .iter()
            .filter_map(|r| match r.event {
                Event::Throttle { penalty_ns, .. } => {
                    let from = (r.mono_ns - at_ms(FIRST_NO_PROGRESS_MS)) as f64 / 1e9;
                    Some((from, from + penalty_ns as f64 / 1e9))
                }
                _ => None,
            })
            .collect();
        let bin = (chart.x.1 - chart.x.0) / 60.0;
        for &(t, rate) in steps.iter().filter(|p| p.1 > 500.0) {
            assert!(
                sleeps
                    .iter()
                    .any(|&(a, b)| t >= a - bin - 1e-9 && t <= b + bin + 1e-9),
                "{rate} ms/s at {t} s, outside every penalty sleep {sleeps:?}"
            );
        }
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

    #[test]
    fn dates_are_civil_utc_across_leap_years() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_709_164_800_000), "2024-02-29");
        assert_eq!(date(1_709_251_200_000), "2024-03-01");
        assert_eq!(date(WALL0), "2026-11-18");
        assert_eq!(date(4_107_456_000_000), "2100-02-28");
        assert_eq!(date(4_107_542_400_000), "2100-03-01");
    }
}
