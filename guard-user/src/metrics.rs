//! The metrics sink: what the guard did, and the state of the cgroups it
//! watches, for Prometheus (`--metrics-addr`).
//!
//! Event counters are fed from the record stream ([`Metrics::observe`]); the
//! gauges are snapshots the daemon's main loop hands over when a scrape asks
//! for them ([`serve`] sends a refresh request, [`Metrics::set_cgroups`] and
//! [`Metrics::set_bpf`] answer it). The exposition is OpenMetrics text.

use std::{
    convert::Infallible,
    fmt::{self, Write as _},
    io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder, text},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        info::Info,
    },
    registry::{Registry, Unit},
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::events::{Event, Record};

/// OpenMetrics, because that is what `prometheus_client`'s text encoder
/// writes (`# EOF`, `# UNIT`, counter families named without `_total`, the
/// `info` type); under the 0.0.4 text type Prometheus would misread them.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for the main loop to refresh the gauges before
/// it serves the last values.
const REFRESH_WAIT: Duration = Duration::from_secs(1);

/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot listen for metrics on {addr}: {source}. Fix: if another process holds the port \
         (`ss -ltnp 'sport = :{port}'`), stop it or pick another with --metrics-addr; the \
         address must be one of this host's (127.0.0.1:9464 for a local Prometheus)",
        port = addr.port()
    )]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(
        "turning on the kernel's BPF run-time statistics (BPF_ENABLE_STATS) failed: {source}. \
         It needs CAP_SYS_ADMIN and a kernel >= 5.8; without it guard_bpf_run_* stay at 0 \
         unless `sysctl kernel.bpf_stats_enabled=1` is set"
    )]
    BpfStats { source: io::Error },
}

/// One watched cgroup, as the main loop last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupGauge {
    pub cgroup: String,
    /// The kernel's running total of no-progress stall, ns.
    pub stall_total_ns: u64,
    pub memory_current: u64,
    /// None: "max" (no limit).
    pub memory_high: Option<u64>,
    pub memory_max: Option<u64>,
}

/// The kernel's run-time statistics of one of our programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfProgram {
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// A label value, escaped as OpenMetrics asks when it is written
/// (`prometheus_client` writes values verbatim, and a cgroup name may hold
/// `"`, `\` or a newline).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Value(String);

impl EncodeLabelValue for Value {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

type Labels1 = [(&'static str, Value); 1];
type Labels2 = [(&'static str, Value); 2];

fn label(key: &'static str, value: &str) -> Labels1 {
    [(key, Value(value.to_owned()))]
}

/// The main loop's latest snapshots, read on every scrape.
#[derive(Debug, Default)]
struct Snapshot {
    cgroups: Vec<CgroupGauge>,
    bpf: Vec<BpfProgram>,
}

#[derive(Debug)]
struct SnapshotCollector(Arc<Mutex<Snapshot>>);

/// One metric family of constant samples; written even when it has none, so
/// its HELP and TYPE stay visible.
fn encode_family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels1, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let cgroups = &snapshot.cgroups;
        let cg = |c: &CgroupGauge| label("cgroup", &c.cgroup);
        encode_family(
            &mut encoder,
            "guard_stall",
            "No-progress reclaim stall of the cgroup's tasks, the kernel's running total \
             (reset when guard kills in the cgroup).",
            Some(&Unit::Seconds),
            MetricType::Counter,
            cgroups
                .iter()
                .map(|c| (cg(c), ConstCounter::new(seconds(c.stall_total_ns)))),
        )?;
        encode_family(
            &mut encoder,
            "guard_cgroup_memory_current",
            "memory.current of the cgroup.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            cgroups
                .iter()
                .map(|c| (cg(c), ConstGauge::new(c.memory_current))),
        )?;
        encode_family(
            &mut encoder,
            "guard_cgroup_memory_high",
            "memory.high of the cgroup (no sample while it is max).",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            cgroups
                .iter()
                .filter_map(|c| Some((cg(c), ConstGauge::new(c.memory_high?)))),
        )?;
        encode_family(
            &mut encoder,
            "guard_cgroup_memory_max",
            "memory.max of the cgroup (no sample while it is max).",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            cgroups
                .iter()
                .filter_map(|c| Some((cg(c), ConstGauge::new(c.memory_max?)))),
        )?;
        let prog = |p: &BpfProgram| label("program", &p.name);
        encode_family(
            &mut encoder,
            "guard_bpf_run_time",
            "Time the kernel spent running this eBPF program (counted only while BPF stats \
             are enabled).",
            Some(&Unit::Seconds),
            MetricType::Counter,
            snapshot
                .bpf
                .iter()
                .map(|p| (prog(p), ConstCounter::new(seconds(p.run_time_ns)))),
        )?;
        encode_family(
            &mut encoder,
            "guard_bpf_run_count",
            "Runs of this eBPF program (counted only while BPF stats are enabled).",
            None,
            MetricType::Counter,
            snapshot
                .bpf
                .iter()
                .map(|p| (prog(p), ConstCounter::new(p.run_count))),
        )
    }
}

/// The guard's metrics. Shared between the main loop (which feeds it) and
/// the HTTP server (which encodes it): every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    kills: Family<Labels2, Counter>,
    dry_run_kills: Family<Labels2, Counter>,
    verdicts: Family<Labels1, Counter>,
    oom_kills: Family<Labels1, Counter>,
    lost: Family<Labels1, Counter>,
    kill_limits: Family<Labels1, Counter>,
    unresolved: Family<Labels1, Counter>,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register("guard_up", "1 while guard runs", ConstGauge::new(1u64));
        registry.register(
            "guard_build",
            "Version of the running guard",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let kills = Family::<Labels2, Counter>::default();
        registry.register(
            "guard_kills",
            "Processes guard killed to end a cgroup's memory stall",
            kills.clone(),
        );
        let dry_run_kills = Family::<Labels2, Counter>::default();
        registry.register(
            "guard_dry_run_kills",
            "Kills guard would have made but did not (dry run)",
            dry_run_kills.clone(),
        );
        let verdicts = Family::<Labels1, Counter>::default();
        registry.register(
            "guard_verdicts",
            "Times the kernel side judged a cgroup stalled beyond its budget",
            verdicts.clone(),
        );
        let oom_kills = Family::<Labels1, Counter>::default();
        registry.register(
            "guard_kernel_oom_kills",
            "Victims of the kernel's own OOM killer, by the victim's cgroup",
            oom_kills.clone(),
        );
        let lost = Family::<Labels1, Counter>::default();
        registry.register(
            "guard_lost_events",
            "Records lost on the way (full kernel ring buffers or a slow listener)",
            lost.clone(),
        );
        let kill_limits = Family::<Labels1, Counter>::default();
        registry.register(
            "guard_kill_limits",
            "Times guard stopped killing in a cgroup because kills in a row left it over its \
             limit (the circuit breaker opened)",
            kill_limits.clone(),
        );
        let unresolved = Family::<Labels1, Counter>::default();
        registry.register(
            "guard_unresolved_stalls",
            "Stalls guard confirmed but could not end by killing (a protected or unreadable \
             holder, memory no process holds), counted once per situation",
            unresolved.clone(),
        );
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
        Self {
            registry,
            kills,
            dry_run_kills,
            verdicts,
            oom_kills,
            lost,
            kill_limits,
            unresolved,
            snapshot,
        }
    }

    /// Counts one record of the event stream; kinds without a counter are
    /// ignored.
    pub fn observe(&self, rec: &Record) {
        match &rec.event {
            Event::Kill {
                cgroup,
                reason,
                dry_run,
                victims,
                ..
            } => {
                let family = if *dry_run {
                    &self.dry_run_kills
                } else {
                    &self.kills
                };
                let labels = [
                    ("cgroup", Value(cgroup.clone())),
                    ("reason", Value(reason.clone())),
                ];
                // One record per verdict; a batch kills several.
                family
                    .get_or_create(&labels)
                    .inc_by(victims.len().max(1) as u64);
            }
            Event::KillLimit { cgroup, .. } => {
                self.kill_limits
                    .get_or_create(&label("cgroup", cgroup))
                    .inc();
            }
            Event::Unresolved { cgroup, .. } => {
                self.unresolved
                    .get_or_create(&label("cgroup", cgroup))
                    .inc();
            }
            Event::Verdict { cgroup, .. } => {
                self.verdicts.get_or_create(&label("cgroup", cgroup)).inc();
            }
            Event::OomKill { cgroup, .. } => {
                self.oom_kills.get_or_create(&label("cgroup", cgroup)).inc();
            }
            Event::Lost { what, count } => {
                self.lost.get_or_create(&label("what", what)).inc_by(*count);
            }
            _ => {}
        }
    }

    fn snapshot(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.snapshot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the cgroup gauges: a cgroup not in `cgroups` has no series
    /// any more. A cgroup listed twice keeps its first entry.
    pub fn set_cgroups(&self, cgroups: &[CgroupGauge]) {
        let mut fresh = cgroups.to_vec();
        fresh.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        fresh.dedup_by(|later, first| later.cgroup == first.cgroup);
        self.snapshot().cgroups = fresh;
    }

    /// Replaces the eBPF program statistics.
    pub fn set_bpf(&self, programs: &[BpfProgram]) {
        let mut fresh = programs.to_vec();
        fresh.sort_by(|a, b| a.name.cmp(&b.name));
        fresh.dedup_by(|later, first| later.name == first.name);
        self.snapshot().bpf = fresh;
    }

    /// The whole exposition, OpenMetrics text ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail and no metric of ours refuses to
        // encode; should one, the scrape still gets the rest.
        if let Err(e) = text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// Keeps the kernel's BPF run-time statistics on while it lives.
#[derive(Debug)]
#[must_use = "the statistics stop when the guard is dropped"]
pub struct BpfStatsGuard(OwnedFd);

impl AsFd for BpfStatsGuard {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Turns on run-time and run-count accounting for every eBPF program on the
/// host (two clock reads per program run) until the guard is dropped.
pub fn enable_bpf_stats() -> Result<BpfStatsGuard, MetricsError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map(BpfStatsGuard)
        .map_err(|e| MetricsError::BpfStats { source: e.io_error })
}

/// Run-time statistics of our programs, by (name, kernel program id).
/// Programs that are gone, or whose info cannot be read, are left out.
pub fn bpf_program_stats(ids: &[(String, u32)]) -> Vec<BpfProgram> {
    if ids.is_empty() {
        return Vec::new();
    }
    // aya 0.14 reads a program's info by id only through this walk over all
    // loaded programs; a host has a few dozen, and a scrape comes rarely.
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| {
            let (name, _) = ids.iter().find(|(_, id)| *id == info.id())?;
            Some(BpfProgram {
                name: name.clone(),
                run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                run_count: info.run_count(),
            })
        })
        .collect()
}

/// Binds the metrics listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Asks the main loop to refresh the gauges and waits for it, at most
/// [`REFRESH_WAIT`]; a busy or gone loop leaves the last values in place.
async fn refresh_gauges(refresh: &mpsc::Sender<oneshot::Sender<()>>) {
    let (done, answered) = oneshot::channel();
    let ask = async {
        refresh.send(done).await.ok()?;
        answered.await.ok()
    };
    match tokio::time::timeout(REFRESH_WAIT, ask).await {
        Ok(Some(())) => {}
        Ok(None) => tracing::debug!("metrics: the main loop is gone; serving the last values"),
        Err(_) => tracing::debug!(
            "metrics: the main loop did not refresh within {REFRESH_WAIT:?}; serving the last values"
        ),
    }
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn handle(
    req: Request<Incoming>,
    metrics: &Metrics,
    refresh: &mpsc::Sender<oneshot::Sender<()>>,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = response(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".into(),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/metrics" => {
            refresh_gauges(refresh).await;
            response(StatusCode::OK, CONTENT_TYPE, metrics.encode())
        }
        "/" => response(
            StatusCode::OK,
            PLAIN,
            "guard: memory guard. Prometheus metrics are at /metrics\n".into(),
        ),
        _ => response(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: guard serves /metrics\n".into(),
        ),
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Each
/// connection runs in its own task; its errors are logged, never fatal.
/// Each scrape first sends a oneshot over `refresh`: the main loop answers it
/// after calling [`Metrics::set_cgroups`] (and [`Metrics::set_bpf`]).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    refresh: mpsc::Sender<oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and the like pass; do not spin while they last.
                tracing::warn!(error = %e, "metrics: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let http = http.clone();
        let metrics = metrics.clone();
        let refresh = refresh.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                let refresh = refresh.clone();
                async move { Ok::<_, Infallible>(handle(req, &metrics, &refresh).await) }
            });
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, error = %e, "metrics: connection failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn kill(cgroup: &str, dry_run: bool) -> Record {
        Record::at(
            1,
            Event::Kill {
                cgroup: cgroup.into(),
                pid: 42,
                comm: "hog".into(),
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
                victims: vec![42],
                batch: 1,
            },
        )
    }

    fn verdict(cgroup: &str) -> Record {
        Record::at(
            1,
            Event::Verdict {
                cgroup_id: 7,
                cgroup: cgroup.into(),
                stall_ns: 300_000_000,
                window_ns: 1_000_000_000,
                budget_ns: 200_000_000,
                streak: 12,
                episode_start_ns: 0,
                worst_pid: 42,
                worst_comm: "hog".into(),
            },
        )
    }

    fn oom_kill(cgroup: &str) -> Record {
        Record::at(
            1,
            Event::OomKill {
                pid: 9,
                comm: "dd".into(),
                cgroup: cgroup.into(),
                trigger_pid: 9,
                trigger_comm: "dd".into(),
            },
        )
    }

    fn lost(what: &str, count: u64) -> Record {
        Record::at(
            1,
            Event::Lost {
                what: what.into(),
                count,
            },
        )
    }

    fn cgroup(name: &str, stall_ns: u64, current: u64, high: Option<u64>) -> CgroupGauge {
        CgroupGauge {
            cgroup: name.into(),
            stall_total_ns: stall_ns,
            memory_current: current,
            memory_high: high,
            memory_max: Some(1 << 30),
        }
    }

    fn sample_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    /// The value of the one sample named exactly `series` (name and labels).
    fn value_of<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        sample_lines(text)
            .into_iter()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn event_counters_count_by_label_and_dry_runs_are_not_kills() {
        let m = Metrics::new();
        m.observe(&kill("/a.slice", false));
        m.observe(&kill("/a.slice", false));
        m.observe(&kill("/dry.slice", true));
        m.observe(&verdict("/a.slice"));
        m.observe(&oom_kill("/b.slice"));
        m.observe(&lost("verdicts", 3));
        m.observe(&lost("verdicts", 4));
        m.observe(&lost("stream", 1));
        let mut batch = kill("/a.slice", false);
        if let Event::Kill {
            victims, batch: n, ..
        } = &mut batch.event
        {
            *victims = vec![50, 51, 52];
            *n = 3;
        }
        m.observe(&batch);
        m.observe(&Record::at(
            1,
            Event::KillLimit {
                cgroup: "/a.slice".into(),
                fruitless_kills: 3,
                window_ms: 60_000,
            },
        ));
        m.observe(&Record::at(
            1,
            Event::Unresolved {
                cgroup: "/p.slice".into(),
                reason: "protected".into(),
                holder_pid: Some(4),
                holder_comm: Some("sshd".into()),
                stall_ns: 1,
                memory_current: 2,
                memory_high: Some(1),
            },
        ));
        let out = m.encode();

        let a = r#"{cgroup="/a.slice",reason="memory_high_stall"}"#;
        let dry = r#"{cgroup="/dry.slice",reason="memory_high_stall"}"#;
        assert_eq!(
            value_of(&out, &format!("guard_kills_total{a}")),
            Some("5"),
            "two kills of one process and a batch of three"
        );
        assert_eq!(
            value_of(&out, r#"guard_kill_limits_total{cgroup="/a.slice"}"#),
            Some("1")
        );
        assert_eq!(
            value_of(&out, r#"guard_unresolved_stalls_total{cgroup="/p.slice"}"#),
            Some("1")
        );
        assert_eq!(value_of(&out, &format!("guard_kills_total{dry}")), None);
        assert_eq!(
            value_of(&out, &format!("guard_dry_run_kills_total{dry}")),
            Some("1"),
            "{out}"
        );
        assert_eq!(
            value_of(&out, r#"guard_verdicts_total{cgroup="/a.slice"}"#),
            Some("1")
        );
        assert_eq!(
            value_of(&out, r#"guard_kernel_oom_kills_total{cgroup="/b.slice"}"#),
            Some("1")
        );
        assert_eq!(
            value_of(&out, r#"guard_lost_events_total{what="verdicts"}"#),
            Some("7")
        );
        assert_eq!(
            value_of(&out, r#"guard_lost_events_total{what="stream"}"#),
            Some("1")
        );
        assert_eq!(value_of(&out, "guard_up"), Some("1"));
        let build = format!(
            r#"guard_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value_of(&out, &build), Some("1"), "{out}");
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn odd_cgroup_names_are_escaped_not_breaking_the_exposition() {
        let m = Metrics::new();
        m.observe(&verdict("/we\"ird\\na\nme"));
        let out = m.encode();
        assert_eq!(
            value_of(&out, r#"guard_verdicts_total{cgroup="/we\"ird\\na\nme"}"#),
            Some("1"),
            "{out}"
        );
    }

    #[test]
    fn set_cgroups_replaces_the_previous_snapshot_and_drops_vanished_cgroups() {
        let m = Metrics::new();
        m.set_cgroups(&[
            cgroup("/a.slice", 1_000_000_000, 100, Some(64)),
            cgroup("/b.slice", 5, 300, None),
        ]);
        let first = m.encode();
        assert_eq!(
            value_of(
                &first,
                r#"guard_cgroup_memory_current_bytes{cgroup="/b.slice"}"#
            ),
            Some("300")
        );
        assert_eq!(
            value_of(
                &first,
                r#"guard_cgroup_memory_high_bytes{cgroup="/a.slice"}"#
            ),
            Some("64")
        );
        // "max" has no sample.
        assert_eq!(
            value_of(
                &first,
                r#"guard_cgroup_memory_high_bytes{cgroup="/b.slice"}"#
            ),
            None
        );

        m.set_cgroups(&[cgroup("/a.slice", 2_500_000_000, 200, None)]);
        let out = m.encode();
        assert_eq!(
            value_of(
                &out,
                r#"guard_cgroup_memory_current_bytes{cgroup="/a.slice"}"#
            ),
            Some("200"),
            "{out}"
        );
        assert_eq!(
            value_of(&out, r#"guard_stall_seconds_total{cgroup="/a.slice"}"#),
            Some("2.5")
        );
        assert_eq!(
            value_of(&out, r#"guard_cgroup_memory_max_bytes{cgroup="/a.slice"}"#),
            Some("1073741824")
        );
        assert_eq!(
            value_of(&out, r#"guard_cgroup_memory_high_bytes{cgroup="/a.slice"}"#),
            None,
            "memory.high went back to max"
        );
        assert!(!out.contains("/b.slice"), "{out}");
        assert_eq!(
            sample_lines(&out)
                .iter()
                .filter(|l| l.contains("/a.slice"))
                .count(),
            3,
            "stall, current and max, once each: {out}"
        );
    }

    #[test]
    fn bpf_statistics_are_exported_per_program() {
        let m = Metrics::new();
        m.set_bpf(&[BpfProgram {
            name: "reclaim_end".into(),
            run_time_ns: 1_500_000_000,
            run_count: 1234,
        }]);
        let out = m.encode();
        assert_eq!(
            value_of(
                &out,
                r#"guard_bpf_run_time_seconds_total{program="reclaim_end"}"#
            ),
            Some("1.5")
        );
        assert_eq!(
            value_of(&out, r#"guard_bpf_run_count_total{program="reclaim_end"}"#),
            Some("1234")
        );
    }

    /// Metric names in the `expr`s of an alert rules file, including block
    /// scalars (`expr: |` and the more-indented lines after it).
    fn expr_metric_names(yaml: &str) -> BTreeSet<String> {
        let name = regex::Regex::new(r"guard_[a-z_]+").expect("regex");
        let mut exprs = String::new();
        let mut block_indent: Option<usize> = None;
        for line in yaml.lines() {
            let indent = line.len() - line.trim_start().len();
            if let Some(min) = block_indent {
                if line.trim().is_empty() || indent > min {
                    exprs.push_str(line);
                    exprs.push('\n');
                    continue;
                }
                block_indent = None;
            }
            let trimmed = line.trim_start().trim_start_matches("- ");
            if let Some(rest) = trimmed.strip_prefix("expr:") {
                let rest = rest.trim();
                if rest.starts_with('|') || rest.starts_with('>') {
                    block_indent = Some(indent);
                } else {
                    exprs.push_str(rest);
                    exprs.push('\n');
                }
            }
        }
        name.find_iter(&exprs)
            .map(|m| m.as_str().to_owned())
            .collect()
    }

    #[test]
    fn alert_rules_only_use_metrics_the_exporter_exports() {
        let yaml = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/guard-alerts.yml"
        ))
        .expect("deploy/guard-alerts.yml");
        let used = expr_metric_names(&yaml);
        for wanted in [
            "guard_kills_total",
            "guard_stall_seconds_total",
            "guard_kernel_oom_kills_total",
            "guard_lost_events_total",
            "guard_kill_limits_total",
            "guard_unresolved_stalls_total",
            "guard_up",
        ] {
            assert!(used.contains(wanted), "no alert on {wanted}: {used:?}");
        }

        let m = Metrics::new();
        m.observe(&kill("/a.slice", false));
        m.observe(&verdict("/a.slice"));
        m.observe(&oom_kill("/a.slice"));
        m.observe(&lost("verdicts", 1));
        m.observe(&Record::at(
            1,
            Event::KillLimit {
                cgroup: "/a.slice".into(),
                fruitless_kills: 3,
                window_ms: 1,
            },
        ));
        m.observe(&Record::at(
            1,
            Event::Unresolved {
                cgroup: "/a.slice".into(),
                reason: String::new(),
                holder_pid: None,
                holder_comm: None,
                stall_ns: 1,
                memory_current: 2,
                memory_high: None,
            },
        ));
        m.set_cgroups(&[cgroup("/a.slice", 1, 2, Some(3))]);
        m.set_bpf(&[BpfProgram {
            name: "p".into(),
            run_time_ns: 1,
            run_count: 1,
        }]);
        let out = m.encode();
        let exported: BTreeSet<&str> = sample_lines(&out)
            .into_iter()
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        for name in &used {
            assert!(
                exported.contains(name.as_str()),
                "the alert rules use {name}, which guard does not export: {exported:?}"
            );
        }
    }

    #[test]
    fn expr_names_are_read_from_inline_and_block_exprs_only() {
        let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate(guard_a_total[1m]) > 0\n        annotations:\n          summary: guard_not_an_expr\n      - alert: B\n        expr: |\n          guard_b\n            or guard_c\n        for: 1m\n";
        let names = expr_metric_names(yaml);
        let want: BTreeSet<String> = ["guard_a_total", "guard_b", "guard_c"]
            .map(String::from)
            .into();
        assert_eq!(names, want);
    }

    #[test]
    fn a_program_id_that_does_not_exist_gives_no_stats() {
        // The kernel hands out program ids from 1.
        assert_eq!(bpf_program_stats(&[("nothing".into(), 0)]), Vec::new());
        assert_eq!(bpf_program_stats(&[]), Vec::new());
    }

    /// `bpf(BPF_PROG_LOAD)` of a two-instruction socket filter named
    /// `name`; its fd, or why the kernel refused.
    fn load_socket_filter(name: &str) -> Result<OwnedFd, io::Error> {
        use std::os::fd::FromRawFd as _;
        #[repr(C)]
        #[derive(Default)]
        struct ProgLoad {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
        }
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
        // r0 = 0 (keep no byte of the packet); exit.
        let insns: [u64; 2] = [0xb7, 0x95];
        let license = c"GPL";
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute of the size
        // passed; the instructions and license it points to outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoad,
                std::mem::size_of::<ProgLoad>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this new fd, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    #[test]
    fn enabled_stats_count_the_runs_of_a_program_found_by_its_id() {
        use std::os::fd::AsRawFd as _;
        let stats = match enable_bpf_stats() {
            Ok(stats) => stats,
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("CAP_SYS_ADMIN"), "{msg}");
                eprintln!("SKIP: {msg}");
                return;
            }
        };
        let name = "guard_mtest";
        let prog = match load_socket_filter(name) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("SKIP: the kernel refused a socket filter: {e}");
                return;
            }
        };
        let id = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.name_as_str() == Some(name))
            .map(|p| p.id())
            .expect("our program is listed");

        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let prog_fd = prog.as_raw_fd();
        // SAFETY: valid socket fd, and a pointer to an int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_BPF,
                &prog_fd as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let to = socket.local_addr().expect("addr");
        let mut found = Vec::new();
        for _ in 0..100 {
            socket.send_to(b"x", to).expect("send");
            found = bpf_program_stats(&[("socket_filter".into(), id)]);
            if found.first().is_some_and(|p| p.run_count > 0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].name, "socket_filter");
        assert!(found[0].run_count > 0, "{found:?}");
        assert!(found[0].run_time_ns > 0, "{found:?}");
        drop(stats);
    }

    /// A raw HTTP/1.1 GET: (status line, lower-cased head, body).
    async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.expect("write");
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, head.to_lowercase(), body.to_owned())
    }

    async fn start() -> (
        SocketAddr,
        Arc<Metrics>,
        mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(serve(listener, metrics.clone(), tx));
        (addr, metrics, rx)
    }

    #[tokio::test]
    async fn a_scrape_refreshes_the_gauges_and_serves_openmetrics() {
        let (addr, metrics, mut refresh) = start().await;
        let main_loop = metrics.clone();
        tokio::spawn(async move {
            while let Some(done) = refresh.recv().await {
                main_loop.set_cgroups(&[cgroup("/t.slice", 0, 4096, None)]);
                let _ = done.send(());
            }
        });

        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            head.contains(&format!("content-type: {CONTENT_TYPE}")),
            "{head}"
        );
        assert_eq!(
            value_of(
                &body,
                r#"guard_cgroup_memory_current_bytes{cgroup="/t.slice"}"#
            ),
            Some("4096"),
            "{body}"
        );

        let (status, _, body) = get(addr, "/nope").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert!(body.contains("/metrics"), "{body}");
        let (status, _, body) = get(addr, "/").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("/metrics"), "{body}");
    }

    #[tokio::test]
    async fn a_silent_main_loop_delays_a_scrape_by_about_a_second_only() {
        // The receiver lives but never answers.
        let (addr, metrics, _refresh) = start().await;
        metrics.set_cgroups(&[cgroup("/old.slice", 0, 1, None)]);
        let started = std::time::Instant::now();
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), get(addr, "/metrics"))
            .await
            .expect("the scrape must not wait for the main loop forever");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains(r#"cgroup="/old.slice""#), "{body}");
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    #[tokio::test]
    async fn a_broken_connection_does_not_end_the_server() {
        let (addr, _metrics, refresh) = start().await;
        drop(refresh);
        let mut bad = tokio::net::TcpStream::connect(addr).await.expect("connect");
        bad.write_all(b"\x00\x01 not http at all\r\n\r\n")
            .await
            .expect("write");
        let mut sink = Vec::new();
        let _ = bad.read_to_end(&mut sink).await;

        let (status, _, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("guard_up 1"), "{body}");
    }

    #[tokio::test]
    async fn a_taken_address_names_itself_in_the_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind(addr).await.expect_err("the port is taken");
        let msg = err.to_string();
        assert!(msg.contains(&addr.to_string()), "{msg}");
        assert!(msg.contains("--metrics-addr"), "{msg}");
    }
}
