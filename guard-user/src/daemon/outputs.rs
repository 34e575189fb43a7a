//! Where records go: the socket's listeners, the daemon's own log, the
//! metrics. Which records are kept on disk, and how often the cgroups are
//! sampled, follows from whether an incident is fresh or someone listens.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    events::{Event, Record},
    metrics::Metrics,
    stream,
};

/// How long after a verdict, kill or kernel OOM kill the daemon keeps
/// sampling the cgroups (and logging the samples): long enough to see the
/// memory come back.
const INCIDENT_TAIL: Duration = Duration::from_secs(15);
/// Sample period during an incident, and while only listeners want rows.
const INCIDENT_SAMPLE: Duration = Duration::from_millis(250);
const LISTENER_SAMPLE: Duration = Duration::from_millis(500);

/// Where records go: the socket's listeners, the daemon's log, the metrics.
pub struct Outputs {
    pub bus: stream::Bus,
    pub log: Option<stream::EventLog>,
    /// Set after a log write failed, so it is said once, not per record.
    log_failed: bool,
    pub metrics: Option<Arc<Metrics>>,
    incident_until: Option<Instant>,
}

impl Outputs {
    pub fn new(bus: stream::Bus, log: Option<stream::EventLog>) -> Self {
        Self {
            bus,
            log,
            log_failed: false,
            metrics: None,
            incident_until: None,
        }
    }

    /// A record of what guard saw or did: to listeners, metrics, and the
    /// daemon's log (samples only around incidents, raw passes never).
    pub fn emit(&mut self, record: &Record) {
        self.send(record, true);
    }

    /// A record of the machine's churn: cgroups made and removed, host asks
    /// that MemAvailable answered "fine". Any user makes the former as fast
    /// as mkdir and rmdir run in their own subtree, and a machine full of
    /// page cache the latter at every direct reclaim pass; on disk they
    /// would rotate every kill record away. They go to listeners and
    /// metrics only, and open no incident window.
    pub fn emit_churn(&mut self, record: &Record) {
        self.send(record, false);
    }

    fn send(&mut self, record: &Record, keep_on_disk: bool) {
        if keep_on_disk
            && matches!(
                record.event,
                Event::Verdict { .. }
                    | Event::Kill { .. }
                    | Event::OomKill { .. }
                    | Event::Unresolved { .. }
                    | Event::KillLimit { .. }
            )
        {
            self.incident_until = Some(Instant::now() + INCIDENT_TAIL);
        }
        if let Some(m) = &self.metrics {
            m.observe(record);
        }
        self.bus.send(record);
        // Raw passes only flow while someone listens, and go to them alone;
        // samples are kept on disk around incidents.
        let keep = keep_on_disk
            && !record.event.is_raw()
            && (!matches!(record.event, Event::Sample { .. }) || self.in_incident());
        if keep && let Some(log) = &mut self.log {
            match log.write(record) {
                Ok(()) => self.log_failed = false,
                Err(e) if !self.log_failed => {
                    warn!(error = %e, "writing the event log failed; records go to listeners only");
                    self.log_failed = true;
                }
                Err(_) => {}
            }
        }
    }

    pub fn in_incident(&self) -> bool {
        self.incident_until.is_some_and(|t| Instant::now() < t)
    }

    /// How often to sample now, if at all.
    pub(super) fn sample_period(&self) -> Option<Duration> {
        if self.in_incident() {
            Some(INCIDENT_SAMPLE)
        } else if self.bus.listened() {
            Some(LISTENER_SAMPLE)
        } else {
            None
        }
    }
}

/// Aborts a background task when the daemon's loop ends.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    pub(super) fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self(task)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the event stream on the socket the options name. Observability
/// must never stop the guard from guarding: a socket that cannot be set up
/// is said loudly, and the guard runs on.
pub(super) fn serve_stream(
    socket: Option<&Path>,
    bus: &stream::Bus,
    hello: tokio::sync::watch::Receiver<Record>,
) -> Option<AbortOnDrop> {
    let path = socket?;
    let access = stream::Access::from_system();
    if access.group.is_none() {
        warn!(
            group = stream::GROUP,
            "no group `guard` on this machine: only root may read the event stream \
             (groupadd --system guard)"
        );
    }
    match stream::bind(path, access) {
        Ok(listener) => {
            info!(socket = %path.display(), "serving the event stream");
            Some(AbortOnDrop(tokio::spawn(stream::serve(
                listener,
                bus.clone(),
                hello,
                access,
            ))))
        }
        Err(e) => {
            warn!(error = %e, "no event stream socket: guard trace and guard record \
                cannot attach (the daemon's own log is kept regardless)");
            None
        }
    }
}

/// Opens the daemon's own event log; like the socket, a failure is said
/// and the guard runs on.
pub(super) fn open_log(dir: Option<&Path>, max_bytes: u64) -> Option<stream::EventLog> {
    match stream::EventLog::open(dir?, max_bytes, stream::LOG_KEEP) {
        Ok(log) => {
            info!(path = %log.path().display(), max_bytes, "keeping an event log");
            Some(log)
        }
        Err(e) => {
            warn!(error = %e, "no event log: incidents are not kept on disk");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn churn_never_rotates_a_kill_out_of_the_log_nor_opens_an_incident() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = stream::EventLog::open(dir.path(), 4096, 1).expect("log");
        let path = log.path().to_owned();
        let mut out = Outputs::new(stream::Bus::new(), Some(log));
        let kill = Record::now(Event::KillLimit {
            cgroup: "/user.slice/a".into(),
            fruitless_kills: 3,
            window_ms: 60_000,
        });
        out.emit(&kill);
        out.incident_until = None;
        for id in 0..10_000u64 {
            let cgroup = format!("/user.slice/churn/c{id}");
            out.emit_churn(&Record::now(Event::CgroupCreated {
                cgroup_id: id,
                cgroup: cgroup.clone(),
            }));
            out.emit_churn(&Record::now(Event::CgroupRemoved {
                cgroup_id: id,
                cgroup,
            }));
        }
        let text = fs::read_to_string(&path).expect("log");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"kill_limit\""), "{text}");
        assert!(!out.in_incident(), "churn opened an incident window");
    }

    #[test]
    fn the_daemon_log_keeps_events_and_samples_around_incidents_but_no_raw_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = stream::EventLog::open(dir.path(), 1 << 20, 1).expect("log");
        let path = log.path().to_owned();
        let mut out = Outputs::new(stream::Bus::new(), Some(log));
        let sample = || {
            Record::now(Event::Sample {
                cgroup_id: 1,
                cgroup: "/a".into(),
                memory_current: 1,
                memory_high: None,
                memory_max: None,
                stall_total_ns: 0,
                passes: 0,
                no_progress_passes: 0,
                reclaimed_pages: 0,
                psi_some_avg10: None,
                psi_full_avg10: None,
                worst_pid: 0,
                worst_comm: String::new(),
                stall_window_ns: 0,
            })
        };
        let pass = Record::now(Event::Reclaim {
            pid: 1,
            tid: 1,
            comm: "x".into(),
            cgroup_id: 1,
            cgroup: "/a".into(),
            duration_ns: 1,
            reclaimed_pages: 0,
        });
        assert_eq!(out.sample_period(), None, "idle and unwatched: no timer");
        out.emit(&pass);
        out.emit(&sample());
        let verdict = Record::now(Event::Verdict {
            cgroup_id: 1,
            cgroup: "/a".into(),
            stall_ns: 1,
            window_ns: 1,
            budget_ns: 1,
            streak: 1,
            episode_start_ns: 0,
            worst_pid: 1,
            worst_comm: "x".into(),
        });
        out.emit(&verdict);
        assert_eq!(out.sample_period(), Some(INCIDENT_SAMPLE));
        out.emit(&sample());
        out.emit(&pass);
        let kinds: Vec<String> = fs::read_to_string(&path)
            .expect("log")
            .lines()
            .map(|l| Record::from_line(l).expect("valid").event.kind().to_owned())
            .collect();
        assert_eq!(kinds, vec!["verdict", "sample"]);
    }
}
