//! The gauges: snapshots of the watched cgroups and of our eBPF programs,
//! which the main loop hands over when a scrape asks for them.

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::{BpfProgram, Labels1, label};

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

/// The main loop's latest snapshots, read on every scrape.
#[derive(Debug, Default)]
struct Snapshot {
    cgroups: Vec<CgroupGauge>,
    bpf: Vec<BpfProgram>,
}

fn lock(snapshot: &Mutex<Snapshot>) -> MutexGuard<'_, Snapshot> {
    snapshot.lock().unwrap_or_else(PoisonError::into_inner)
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
        let snapshot = lock(&self.0);
        encode_cgroups(&mut encoder, &snapshot.cgroups)?;
        encode_bpf(&mut encoder, &snapshot.bpf)
    }
}

fn encode_cgroups(encoder: &mut DescriptorEncoder, cgroups: &[CgroupGauge]) -> fmt::Result {
    let cg = |c: &CgroupGauge| label("cgroup", &c.cgroup);
    encode_family(
        encoder,
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
        encoder,
        "guard_cgroup_memory_current",
        "memory.current of the cgroup.",
        Some(&Unit::Bytes),
        MetricType::Gauge,
        cgroups
            .iter()
            .map(|c| (cg(c), ConstGauge::new(c.memory_current))),
    )?;
    encode_family(
        encoder,
        "guard_cgroup_memory_high",
        "memory.high of the cgroup (no sample while it is max).",
        Some(&Unit::Bytes),
        MetricType::Gauge,
        cgroups
            .iter()
            .filter_map(|c| Some((cg(c), ConstGauge::new(c.memory_high?)))),
    )?;
    encode_family(
        encoder,
        "guard_cgroup_memory_max",
        "memory.max of the cgroup (no sample while it is max).",
        Some(&Unit::Bytes),
        MetricType::Gauge,
        cgroups
            .iter()
            .filter_map(|c| Some((cg(c), ConstGauge::new(c.memory_max?)))),
    )
}

fn encode_bpf(encoder: &mut DescriptorEncoder, programs: &[BpfProgram]) -> fmt::Result {
    let prog = |p: &BpfProgram| label("program", &p.name);
    encode_family(
        encoder,
        "guard_bpf_run_time",
        "Time the kernel spent running this eBPF program (counted only while BPF stats \
         are enabled).",
        Some(&Unit::Seconds),
        MetricType::Counter,
        programs
            .iter()
            .map(|p| (prog(p), ConstCounter::new(seconds(p.run_time_ns)))),
    )?;
    encode_family(
        encoder,
        "guard_bpf_run_count",
        "Runs of this eBPF program (counted only while BPF stats are enabled).",
        None,
        MetricType::Counter,
        programs
            .iter()
            .map(|p| (prog(p), ConstCounter::new(p.run_count))),
    )
}

/// The latest snapshots, shared with the collector that reads them on every
/// scrape.
#[derive(Debug)]
pub(super) struct Gauges(Arc<Mutex<Snapshot>>);

impl Gauges {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
        Self(snapshot)
    }

    pub(super) fn set_cgroups(&self, cgroups: &[CgroupGauge]) {
        let mut fresh = cgroups.to_vec();
        fresh.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        fresh.dedup_by(|later, first| later.cgroup == first.cgroup);
        lock(&self.0).cgroups = fresh;
    }

    pub(super) fn set_bpf(&self, programs: &[BpfProgram]) {
        let mut fresh = programs.to_vec();
        fresh.sort_by(|a, b| a.name.cmp(&b.name));
        fresh.dedup_by(|later, first| later.name == first.name);
        lock(&self.0).bpf = fresh;
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::{
        BpfProgram, Metrics,
        tests::{cgroup, sample_lines, value_of},
    };

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
}
