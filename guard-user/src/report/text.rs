//! The report as text: one story per incident, then the totals.

use std::collections::BTreeMap;
use std::fmt;

use super::MIB;
use super::model::{
    Coverage, Ending, Incident, KillFact, Recovery, Report, StallSource, StalledTask, Stamp,
};

pub(super) fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

pub(super) fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

pub(super) fn mib(bytes: u64) -> String {
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

/// `YYYY-MM-DD HH:MM:SS.mmm`, UTC.
pub fn date_time(unix_ms: u64) -> String {
    format!("{} {}", date(unix_ms), clock_time(unix_ms))
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

pub(super) fn cgroup_name(cgroup: &str) -> &str {
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
        self.write_timeline(f)?;
        self.write_stall(f)?;
        self.write_kills(f)?;
        self.write_lost(f)
    }
}

impl Incident {
    /// The headline, then the timeline, each line at its time of day and
    /// its offset from the start.
    fn write_timeline(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ending = match self.ended_by {
            Ending::Kill => "ended by the guard's kill",
            Ending::OomKill => "ended by the kernel's OOM killer",
            Ending::NotRelieved => "not relieved by a kill",
        };
        writeln!(
            f,
            "{}, {} UTC, lasted {}, {ending}",
            cgroup_name(&self.cgroup),
            date_time(self.start.unix_ms),
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
        Ok(())
    }

    /// How long the stall lasted, by what measure, and who stalled.
    fn write_stall(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        Ok(())
    }

    fn write_kills(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kills.is_empty() {
            writeln!(f, "  killed:       nothing by the guard")?;
        }
        for k in &self.kills {
            write_kill(f, k)?;
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
        Ok(())
    }

    fn write_lost(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lost.is_empty() {
            writeln!(f, "  lost:         none")
        } else {
            writeln!(
                f,
                "  lost:         {} records during the incident: the story above has gaps",
                counts(&self.lost)
            )
        }
    }
}

fn write_kill(f: &mut fmt::Formatter<'_>, k: &KillFact) -> fmt::Result {
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
    if k.dry_run {
        return Ok(());
    }
    write_recovery(f, k.recovery.as_ref())
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
                "{} to {} UTC ({})",
                date_time(a.unix_ms),
                date_time(b.unix_ms),
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
            write_no_incident(f, c, &span)?;
        } else {
            self.write_totals(f, &span)?;
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

/// What the records cover, when there is no incident to tell.
fn write_no_incident(f: &mut fmt::Formatter<'_>, c: &Coverage, span: &str) -> fmt::Result {
    writeln!(
        f,
        "No incident: these records hold no verdict, no kill and no kernel OOM kill."
    )?;
    writeln!(
        f,
        "They cover {span}: {} ({}).",
        plural(c.records as u64, "record", "records"),
        counts(&c.by_kind)
    )
}

/// "3 trace, 1 verdict": each count before what it counts.
fn counts<K: fmt::Display, N: fmt::Display>(by_what: &BTreeMap<K, N>) -> String {
    let counts: Vec<String> = by_what
        .iter()
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    counts.join(", ")
}

impl Report {
    /// The incidents summed up, then what the records span.
    fn write_totals(&self, f: &mut fmt::Formatter<'_>, span: &str) -> fmt::Result {
        let all_kills = self.incidents.iter().flat_map(|i| &i.kills);
        let killed = all_kills.clone().filter(|k| !k.dry_run).count() as u64;
        let dry = all_kills.filter(|k| k.dry_run).count() as u64;
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
            plural(self.incidents.len() as u64, "incident", "incidents"),
            plural(cgroups.len() as u64, "cgroup", "cgroups"),
            secs(stall),
        )?;
        writeln!(
            f,
            "        {} by the guard{}, {}, {}, {} lost during incidents",
            plural(killed, "process killed", "processes killed"),
            if dry > 0 {
                format!(" ({dry} more in dry run)")
            } else {
                String::new()
            },
            plural(ooms, "kernel OOM kill", "kernel OOM kills"),
            self.memory_back(),
            plural(lost, "record", "records"),
        )?;
        writeln!(
            f,
            "Records: {span}, {}.",
            plural(self.coverage.records as u64, "record", "records")
        )
    }

    /// How much memory the kills (not the dry-run ones) gave back, as far as
    /// samples tell.
    fn memory_back(&self) -> String {
        let recoveries: Vec<Option<Recovery>> = self
            .incidents
            .iter()
            .flat_map(|i| &i.kills)
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
        if known.is_empty() {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::WALL0;

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
