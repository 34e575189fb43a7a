//! What a single record says about a cgroup: its place in the tree, a task
//! stalled in it, a sample of it.

use crate::events::{Event, Record};

/// `cgroup` is `ancestor` or below it: raw events and OOM victims may name
/// a child of the cgroup whose limit was hit.
pub(super) fn within(cgroup: &str, ancestor: &str) -> bool {
    if ancestor.is_empty() {
        // A cgroup gone before it was named holds only what names it so.
        return cgroup.is_empty();
    }
    cgroup == ancestor
        || (ancestor == "/" && cgroup.starts_with('/'))
        || cgroup
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// How long a task stalled, if `r` is a reclaim pass that freed nothing or
/// a penalty sleep, of `cgroup` or below.
pub(super) fn stall_evidence(r: &Record, cgroup: &str) -> Option<u64> {
    match &r.event {
        Event::Reclaim {
            cgroup: c,
            duration_ns,
            reclaimed_pages: 0,
            ..
        } if within(c, cgroup) => Some(*duration_ns),
        Event::Throttle {
            cgroup: c,
            penalty_ns,
            ..
        } if within(c, cgroup) => Some(*penalty_ns),
        _ => None,
    }
}

/// The samples of exactly `cgroup`, in the order of `sorted`.
pub(super) fn samples_of<'r>(sorted: &[&'r Record], cgroup: &str) -> Vec<SampleView<'r>> {
    sorted.iter().filter_map(|r| sample_of(r, cgroup)).collect()
}

fn sample_of<'r>(r: &'r Record, cgroup: &str) -> Option<SampleView<'r>> {
    match &r.event {
        Event::Sample {
            cgroup: c,
            memory_current,
            memory_high,
            memory_max,
            stall_total_ns,
            worst_pid,
            worst_comm,
            ..
        } if c == cgroup => Some(SampleView {
            at: r.mono_ns,
            current: *memory_current,
            high: *memory_high,
            max: *memory_max,
            stall_total_ns: *stall_total_ns,
            worst_pid: *worst_pid,
            worst_comm,
        }),
        _ => None,
    }
}

pub(super) struct SampleView<'r> {
    pub(super) at: u64,
    pub(super) current: u64,
    pub(super) high: Option<u64>,
    pub(super) max: Option<u64>,
    pub(super) stall_total_ns: u64,
    pub(super) worst_pid: u32,
    pub(super) worst_comm: &'r str,
}

/// The cgroup itself if it was sampled, else its nearest sampled ancestor
/// (the daemon samples the watched cgroup; a victim may sit below it).
pub(super) fn sampled_cgroup(sorted: &[&Record], cgroup: &str) -> Option<String> {
    sorted
        .iter()
        .filter_map(|r| match &r.event {
            Event::Sample { cgroup: c, .. } if within(cgroup, c) => Some(c),
            _ => None,
        })
        .max_by_key(|c| c.len())
        .cloned()
}
