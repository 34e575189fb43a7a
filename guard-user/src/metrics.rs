//! Placeholder replaced by the metrics module.
use crate::events::Record;
pub struct Metrics;
pub struct CgroupGauge {
    pub cgroup: String,
    pub stall_total_ns: u64,
    pub memory_current: u64,
    pub memory_high: Option<u64>,
    pub memory_max: Option<u64>,
}
pub struct BpfProgram {
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}
impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
impl Metrics {
    pub fn new() -> Self {
        Metrics
    }
    pub fn observe(&self, _r: &Record) {}
    pub fn set_cgroups(&self, _c: &[CgroupGauge]) {}
    pub fn set_bpf(&self, _p: &[BpfProgram]) {}
}
pub fn bpf_program_stats(_ids: &[(String, u32)]) -> Vec<BpfProgram> {
    Vec::new()
}
pub fn enable_bpf_stats() -> Result<std::os::fd::OwnedFd, std::io::Error> {
    Err(std::io::Error::other("stub"))
}
pub async fn serve(
    _l: tokio::net::TcpListener,
    _m: std::sync::Arc<Metrics>,
    _r: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    Ok(())
}
