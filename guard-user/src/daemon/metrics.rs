//! Wires the Prometheus exporter (`crate::metrics`) into the daemon: the
//! scrape handler asks the daemon's loop to refresh the gauges, so the
//! kernel maps are only read by their one owner and only when someone
//! scrapes.

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{
    events::Event,
    kernel::Probes,
    metrics::{self, CgroupGauge, Metrics},
    observe::Observer,
};

pub type RefreshRequests = mpsc::Receiver<oneshot::Sender<()>>;

/// Binds `addr`, turns on the kernel's BPF run-time statistics, and serves
/// /metrics in the background. A bind failure ends the start-up: the admin
/// asked for metrics at that address.
pub async fn start(addr: SocketAddr) -> anyhow::Result<(Arc<Metrics>, RefreshRequests)> {
    let listener = metrics::bind(addr).await?;
    let stats = match metrics::enable_bpf_stats() {
        Ok(fd) => Some(fd),
        Err(e) => {
            warn!(error = %e, "BPF run-time statistics are off: guard_bpf_run_* stay at zero");
            None
        }
    };
    let m = Arc::new(Metrics::new());
    let (tx, rx) = mpsc::channel(4);
    let served = m.clone();
    tokio::spawn(async move {
        // Kernel statistics stay on while the exporter runs.
        let _stats = stats;
        if let Err(e) = metrics::serve(listener, served, tx).await {
            warn!(error = %format!("{e:#}"), "the metrics server stopped");
        }
    });
    info!(%addr, "serving Prometheus metrics at /metrics");
    Ok((m, rx))
}

/// Refreshes the gauges read at scrape time: the cgroups' memory and the
/// kernel's stall totals, and the programs' run statistics.
pub fn refresh(m: &Metrics, probes: &mut Probes, observer: &Observer) {
    let stalls = probes.cgroup_stalls().unwrap_or_default();
    let gauges: Vec<CgroupGauge> = observer
        // The gauges carry totals, not the window's stall.
        .samples(&stalls, &[], |_, _| 0)
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Sample {
                cgroup,
                stall_total_ns,
                memory_current,
                memory_high,
                memory_max,
                ..
            } => Some(CgroupGauge {
                cgroup,
                stall_total_ns,
                memory_current,
                memory_high,
                memory_max,
            }),
            _ => None,
        })
        .collect();
    m.set_cgroups(&gauges);
    m.set_bpf(&metrics::bpf_program_stats(&probes.program_infos()));
}
