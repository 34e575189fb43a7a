//! The three ring buffers as one stream of typed messages, read in one
//! place and in bounded batches.

use std::io;

use aya::maps::{MapData, RingBuf};
use guard_common::{CgroupEvent, TraceRecord, Verdict};
use tokio::io::{Interest, unix::AsyncFd};

use super::{ProbeError, Probes};

/// Records taken from one ring buffer per call: a flood of trace records
/// must not starve the caller's other sources (the watchdog among them), and
/// the ring stays ready, so the next call comes back for the rest.
pub const DRAIN_BATCH: usize = 256;

type Ring = AsyncFd<RingBuf<MapData>>;

/// One record of the kernel half.
#[derive(Clone, Copy, Debug)]
pub enum Message {
    /// A task stalled its cgroup (or the host) past the budget.
    Verdict(Verdict),
    /// A cgroup was created or removed.
    Cgroup(CgroupEvent),
    /// A raw reclaim or throttle record (only while someone listens).
    Trace(TraceRecord),
    /// A record too short for its type: names its ring.
    Garbled(&'static str),
}

/// The kernel half's ring buffers, registered with tokio.
pub struct Feed {
    verdicts: Ring,
    cgroups: Ring,
    trace: Ring,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("registering the {ring} ring buffer with tokio: {source}")]
    Register {
        ring: &'static str,
        source: io::Error,
    },
    #[error("waiting on the {ring} ring buffer: {source}")]
    Wait {
        ring: &'static str,
        source: io::Error,
    },
}

fn register(ring: RingBuf<MapData>, name: &'static str) -> Result<Ring, FeedError> {
    // SAFETY: the ring buffer's fd belongs to `ring`, which the AsyncFd owns
    // for its whole life, so the registered fd stays open and unchanged.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
        FeedError::Register {
            ring: name,
            source: e.into_parts().1,
        }
    })
}

const VERDICT: &str = "verdict";
const CGROUP: &str = "cgroup event";
const TRACE: &str = "trace";

impl Feed {
    /// Takes the ring buffers out of the loaded probes.
    pub fn take(probes: &mut Probes) -> Result<Self, FeedError> {
        Ok(Self {
            verdicts: register(probes.take_verdicts()?, VERDICT)?,
            cgroups: register(probes.take_cgroup_events()?, CGROUP)?,
            trace: register(probes.take_trace()?, TRACE)?,
        })
    }

    /// Waits until a ring has records, then moves up to [`DRAIN_BATCH`] of
    /// them into `into` (cleared first; its capacity is reused), each slot
    /// given back to the kernel as soon as it is parsed. Verdicts come
    /// first when several rings are ready. Cancel-safe: nothing is taken
    /// before the wait ends.
    pub async fn recv(&mut self, into: &mut Vec<Message>) -> Result<(), FeedError> {
        into.clear();
        tokio::select! {
            biased;
            r = self.verdicts.readable_mut() => {
                let mut ready = r.map_err(|source| FeedError::Wait { ring: VERDICT, source })?;
                drain(&mut ready, into, |b| Verdict::from_bytes(b).map(Message::Verdict), VERDICT);
            }
            r = self.cgroups.readable_mut() => {
                let mut ready = r.map_err(|source| FeedError::Wait { ring: CGROUP, source })?;
                drain(&mut ready, into, |b| CgroupEvent::from_bytes(b).map(Message::Cgroup), CGROUP);
            }
            r = self.trace.readable_mut() => {
                let mut ready = r.map_err(|source| FeedError::Wait { ring: TRACE, source })?;
                drain(&mut ready, into, |b| TraceRecord::from_bytes(b).map(Message::Trace), TRACE);
            }
        }
        Ok(())
    }
}

/// Takes at most [`DRAIN_BATCH`] records from a ready ring. The readiness is
/// cleared only once the ring is empty.
fn drain(
    ready: &mut tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>,
    into: &mut Vec<Message>,
    parse: impl Fn(&[u8]) -> Option<Message>,
    ring: &'static str,
) {
    for _ in 0..DRAIN_BATCH {
        let Some(item) = ready.get_inner_mut().next() else {
            ready.clear_ready();
            return;
        };
        let message = parse(&item).unwrap_or(Message::Garbled(ring));
        drop(item);
        into.push(message);
    }
}
