//! What the daemon's own event log says so far: kills, stalls it could not
//! end, and the last incidents.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    events::Event,
    report::{self, Ending, ReportError},
    stream,
};

/// How many incidents are shown.
pub const LAST_INCIDENTS: usize = 5;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Events {
    pub log_dir: String,
    /// Whether the log could be read (false too when there is none).
    pub readable: bool,
    /// Why not, and the fix.
    pub note: Option<String>,
    pub kills: u64,
    /// Kills a dry run would have made (not in `kills`).
    pub dry_run_kills: u64,
    pub unresolved: u64,
    /// The last incidents, oldest first.
    pub incidents: Vec<IncidentLine>,
}

/// One incident in one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IncidentLine {
    /// Wall clock, ms since the Unix epoch.
    pub start_unix_ms: u64,
    pub cgroup: String,
    pub duration_ms: u64,
    /// "comm[pid]" of each process killed (or, dry run, that would be).
    pub killed: Vec<String>,
    /// "kill", "oom_kill" (the kernel's) or "not_relieved".
    pub ended_by: String,
}

/// The log's files in `dir`, oldest part first; an error when the
/// directory cannot be looked into.
fn parts(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let newest = dir.join(stream::LOG_FILE);
    let mut out = Vec::new();
    for n in (1..=stream::LOG_KEEP).rev() {
        let mut name = newest.as_os_str().to_owned();
        name.push(format!(".{n}"));
        out.push(PathBuf::from(name));
    }
    out.push(newest);
    let mut present = Vec::new();
    for p in out {
        match std::fs::metadata(&p) {
            // A part rotated a moment ago is empty, and says nothing.
            Ok(m) if m.len() > 0 => present.push(p),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(present)
}

fn unreadable(dir: &Path, why: impl std::fmt::Display) -> String {
    format!(
        "cannot read the event log in {}: {why}. Fix: run guard status as root",
        dir.display()
    )
}

/// Counts and the last incidents of the event log in `dir`.
pub fn read(dir: &Path) -> Events {
    let mut out = Events {
        log_dir: dir.display().to_string(),
        ..Events::default()
    };
    let files = match parts(dir) {
        Ok(files) => files,
        Err(e) => {
            out.note = Some(unreadable(dir, e));
            return out;
        }
    };
    if files.is_empty() {
        let log = dir.join(stream::LOG_FILE);
        out.readable = log.exists();
        if !out.readable {
            out.note = Some(format!("no event log at {}", dir.display()));
        }
        return out;
    }
    let loaded = match report::load(&files) {
        Ok(loaded) => loaded,
        Err(ReportError::Read { file, error })
            if error.kind() == io::ErrorKind::PermissionDenied =>
        {
            out.note = Some(unreadable(dir, format!("{file}: {error}")));
            return out;
        }
        Err(e) => {
            out.note = Some(format!(
                "the event log in {} is unusable: {e}",
                dir.display()
            ));
            return out;
        }
    };
    out.readable = true;
    for r in &loaded.records {
        match &r.event {
            Event::Kill { dry_run: true, .. } => out.dry_run_kills += 1,
            Event::Kill { .. } => out.kills += 1,
            Event::Unresolved { .. } => out.unresolved += 1,
            _ => {}
        }
    }
    let analysis = report::analyze(&loaded.records);
    let skip = analysis.incidents.len().saturating_sub(LAST_INCIDENTS);
    out.incidents = analysis.incidents[skip..]
        .iter()
        .map(|i| IncidentLine {
            start_unix_ms: i.start.unix_ms,
            cgroup: i.cgroup.clone(),
            duration_ms: i.duration_ns() / 1_000_000,
            killed: i
                .kills
                .iter()
                .map(|k| format!("{}[{}]", k.comm, k.pid))
                .chain(i.oom_kills.iter().map(|o| format!("{}[{}]", o.comm, o.pid)))
                .collect(),
            ended_by: match i.ended_by {
                Ending::Kill => "kill",
                Ending::OomKill => "oom_kill",
                Ending::NotRelieved => "not_relieved",
            }
            .to_owned(),
        })
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::events::Record;

    const SEC: u64 = 1_000_000_000;

    fn kill(at: u64, pid: u32, dry_run: bool) -> Record {
        Record::at(
            at,
            Event::Kill {
                cgroup: "/seed.slice".into(),
                pid,
                comm: "grep".into(),
                footprint_bytes: 96 << 20,
                reason: "memory_high_stall".into(),
                mode: "process".into(),
                killed_cgroup: None,
                also_killed: 0,
                stall_ns: 300_000_000,
                latency_us: 1200,
                memory_current: 100 << 20,
                memory_high: Some(64 << 20),
                dry_run,
                victims: vec![pid],
                batch: 1,
                owner: None,
            },
        )
    }

    fn unresolved(at: u64) -> Record {
        Record::at(
            at,
            Event::Unresolved {
                cgroup: "/work.slice".into(),
                reason: "the process driving the stall may not be killed".into(),
                holder_pid: Some(9),
                holder_comm: Some("sshd".into()),
                stall_ns: 1,
                memory_current: 2,
                memory_high: Some(1),
            },
        )
    }

    fn write(path: &Path, records: &[Record]) {
        let text: String = records
            .iter()
            .map(|r| format!("{}\n", r.to_line()))
            .collect();
        fs::write(path, text).expect("write log");
    }

    #[test]
    fn kills_dry_runs_and_unresolved_stalls_are_counted_over_every_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            &dir.path().join("events.jsonl.1"),
            &[kill(10 * SEC, 41, false), unresolved(20 * SEC)],
        );
        write(
            &dir.path().join("events.jsonl"),
            &[kill(100 * SEC, 42, false), kill(200 * SEC, 43, true)],
        );
        let e = read(dir.path());
        assert!(e.readable, "{e:?}");
        assert_eq!((e.kills, e.dry_run_kills, e.unresolved), (2, 1, 1));
        assert!(!e.incidents.is_empty());
        assert!(e.incidents.len() <= LAST_INCIDENTS);
        let last = e.incidents.last().expect("an incident");
        assert_eq!(last.killed, vec!["grep[43]".to_owned()]);
        assert_eq!(last.cgroup, "/seed.slice");
    }

    #[test]
    fn only_the_last_five_incidents_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kills: Vec<Record> = (0..8u32)
            .map(|i| kill(u64::from(i + 1) * 100 * SEC, 100 + i, false))
            .collect();
        write(&dir.path().join("events.jsonl"), &kills);
        let e = read(dir.path());
        assert_eq!(e.kills, 8);
        let victims: Vec<String> = e.incidents.iter().flat_map(|i| i.killed.clone()).collect();
        assert_eq!(
            victims,
            [
                "grep[103]",
                "grep[104]",
                "grep[105]",
                "grep[106]",
                "grep[107]"
            ]
        );
    }

    #[test]
    fn a_missing_log_is_said_not_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = read(&dir.path().join("nowhere"));
        assert!(!e.readable);
        assert_eq!((e.kills, e.unresolved), (0, 0));
        let note = e.note.expect("a note");
        assert!(note.starts_with("no event log at "), "{note}");
    }
}
