//! The kernel feed: the eBPF programs loaded and attached (`probes`), and
//! their ring buffers read as one stream of typed messages (`feed`). The
//! daemon and `guard trace --standalone` both read the kernel through it.
//! `btf` reads the kernel's type information: the offsets and tracepoint
//! shapes the BTF-typed tracepoints need.

mod attach;
pub mod btf;
mod feed;
mod probes;

pub use attach::{Attach, BtfShapes, Tracepoints, ensure_tracefs, field_offset};
pub use feed::{DRAIN_BATCH, Feed, Message};
pub use probes::*;

/// The running kernel's release, for the hello record.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
