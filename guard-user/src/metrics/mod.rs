//! The metrics sink: what the guard did, and the state of the cgroups it
//! watches, for Prometheus (`--metrics-addr`).
//!
//! Event counters are fed from the record stream ([`Metrics::observe`]); the
//! gauges are snapshots the daemon's main loop hands over when a scrape asks
//! for them ([`serve`] sends a refresh request, [`Metrics::set_cgroups`] and
//! [`Metrics::set_bpf`] answer it). The exposition is OpenMetrics text.

mod bpf;
mod counters;
mod gauges;
mod http;

use std::{
    fmt::{self, Write as _},
    io,
    net::SocketAddr,
};

use prometheus_client::{
    encoding::{EncodeLabelValue, LabelValueEncoder, text},
    metrics::{gauge::ConstGauge, info::Info},
    registry::Registry,
};

use crate::events::Record;

pub use bpf::{BpfProgram, BpfStatsGuard, bpf_program_stats, enable_bpf_stats};
pub use gauges::CgroupGauge;
pub use http::{CONTENT_TYPE, bind, serve};

use counters::Counters;
use gauges::Gauges;

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

/// The guard's metrics. Shared between the main loop (which feeds it) and
/// the HTTP server (which encodes it): every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    counters: Counters,
    gauges: Gauges,
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
        // Registration order is exposition order: the counters, then the
        // snapshot gauges.
        let counters = Counters::register(&mut registry);
        let gauges = Gauges::register(&mut registry);
        Self {
            registry,
            counters,
            gauges,
        }
    }

    /// Counts one record of the event stream; kinds without a counter are
    /// ignored.
    pub fn observe(&self, rec: &Record) {
        self.counters.observe(rec);
    }

    /// Replaces the cgroup gauges: a cgroup not in `cgroups` has no series
    /// any more. A cgroup listed twice keeps its first entry.
    pub fn set_cgroups(&self, cgroups: &[CgroupGauge]) {
        self.gauges.set_cgroups(cgroups);
    }

    /// Replaces the eBPF program statistics.
    pub fn set_bpf(&self, programs: &[BpfProgram]) {
        self.gauges.set_bpf(programs);
    }

    /// The whole exposition, OpenMetrics text ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail and no metric of ours refuses to
        // encode; should one, the scrape still gets the rest.
        if let Err(e) = text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        self.counters.drop_gone();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::events::Event;

    pub(super) fn kill(cgroup: &str, dry_run: bool) -> Record {
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
                owner: None,
            },
        )
    }

    pub(super) fn verdict(cgroup: &str) -> Record {
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

    pub(super) fn oom_kill(cgroup: &str) -> Record {
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

    pub(super) fn lost(what: &str, count: u64) -> Record {
        Record::at(
            1,
            Event::Lost {
                what: what.into(),
                count,
            },
        )
    }

    pub(super) fn cgroup(
        name: &str,
        stall_ns: u64,
        current: u64,
        high: Option<u64>,
    ) -> CgroupGauge {
        CgroupGauge {
            cgroup: name.into(),
            stall_total_ns: stall_ns,
            memory_current: current,
            memory_high: high,
            memory_max: Some(1 << 30),
        }
    }

    pub(super) fn sample_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    /// The value of the one sample named exactly `series` (name and labels).
    pub(super) fn value_of<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        sample_lines(text)
            .into_iter()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
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
}
