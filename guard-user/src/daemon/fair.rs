//! Fair shares of the verdict handler. Every cgroup's verdicts share one
//! ring and one handler, so one user with hundreds of stalling cgroups could
//! keep another user's kill waiting behind theirs. A batch of verdicts is
//! therefore served by tenant, round-robin, at most [`SHARE`] verdicts of
//! each tenant per batch, its longest-stalled cgroups first. A verdict past
//! its tenant's share is deferred, not lost: while that stall lasts the
//! kernel asks again after `verdict_interval_ms`.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use guard_common::Verdict;
use tracing::warn;

use crate::decision::Responder;

/// Verdicts of one tenant handled per batch.
pub const SHARE: usize = 4;

/// The tenant a cgroup belongs to: the first two levels of its path, a
/// user's slice (`/user.slice/user-1000.slice`) or a service
/// (`/system.slice/nginx.service`); a shallower path is its own tenant.
pub fn tenant(path: &str) -> &str {
    match path.match_indices('/').nth(2) {
        Some((end, _)) => &path[..end],
        None => path,
    }
}

/// Whose stall a verdict is: the tenant of its cgroup's path; the host is
/// a tenant of its own, and so is a cgroup not known by id.
pub fn tenant_of(responder: &Responder, v: &Verdict) -> String {
    if v.cgroup_id == guard_common::HOST_ID {
        return "host".to_owned();
    }
    match responder.cgroup_name(v.cgroup_id) {
        Some(path) => tenant(&path).to_owned(),
        None => format!("cgroup id {}", v.cgroup_id),
    }
}

/// The order a batch is handled in.
#[derive(Debug, Default)]
pub struct Schedule<'a> {
    pub order: Vec<&'a Verdict>,
    /// Verdicts left for the kernel to send again.
    pub deferred: usize,
    /// The tenant with the most deferred verdicts, and how many.
    pub busiest: Option<(String, usize)>,
}

/// How long the cgroup has stalled without a break, as the kernel saw it.
fn episode_ns(v: &Verdict) -> u64 {
    v.ktime_ns.saturating_sub(v.episode_start_ns)
}

/// Orders `batch` fairly: only the latest verdict of each cgroup; tenants
/// in the order they first appear, served one verdict each per round; in a
/// tenant the longest episode first; at most `share` per tenant.
pub fn schedule<'a>(
    batch: &'a [Verdict],
    mut tenant_of: impl FnMut(&Verdict) -> String,
    share: usize,
) -> Schedule<'a> {
    let mut seen = HashSet::new();
    let mut latest: Vec<&Verdict> = batch
        .iter()
        .rev()
        .filter(|v| seen.insert(v.cgroup_id))
        .collect();
    latest.reverse();

    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<(String, Vec<&Verdict>)> = Vec::new();
    for v in latest {
        let name = tenant_of(v);
        let at = *index.entry(name.clone()).or_insert_with(|| {
            groups.push((name, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(v);
    }

    let mut out = Schedule::default();
    for (name, group) in &mut groups {
        group.sort_by_key(|v| std::cmp::Reverse(episode_ns(v)));
        let over = group.len().saturating_sub(share);
        out.deferred += over;
        if over > out.busiest.as_ref().map_or(0, |(_, n)| *n) {
            out.busiest = Some((name.clone(), over));
        }
    }
    for round in 0..share {
        for (_, group) in &groups {
            if let Some(v) = group.get(round) {
                out.order.push(v);
            }
        }
    }
    out
}

/// Deferred verdicts, counted; said at most once per [`SAY_EVERY`].
#[derive(Default)]
pub struct Deferred {
    total: u64,
    said: Option<Instant>,
}

const SAY_EVERY: Duration = Duration::from_secs(10);

impl Deferred {
    /// Counts `n` deferred verdicts, `most` of them `tenant`'s.
    pub fn note(&mut self, n: usize, tenant: &str, most: usize) {
        self.total += n as u64;
        if self.said.is_some_and(|at| at.elapsed() < SAY_EVERY) {
            return;
        }
        self.said = Some(Instant::now());
        warn!(%tenant, deferred = most, total = self.total, share = SHARE,
            "more cgroups of one tenant stall at once than its share of the guard: the \
             rest wait for the kernel to ask again, so other tenants' kills are not delayed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(cgroup_id: u64, episode_ms: u64) -> Verdict {
        Verdict {
            cgroup_id,
            ktime_ns: 10_000_000_000,
            episode_start_ns: 10_000_000_000 - episode_ms * 1_000_000,
            ..Verdict::default()
        }
    }

    #[test]
    fn a_tenant_is_the_first_two_levels_of_the_path() {
        assert_eq!(
            tenant("/user.slice/user-1000.slice/session-3.scope"),
            "/user.slice/user-1000.slice"
        );
        assert_eq!(
            tenant("/user.slice/user-1000.slice"),
            "/user.slice/user-1000.slice"
        );
        assert_eq!(
            tenant("/system.slice/nginx.service"),
            "/system.slice/nginx.service"
        );
        assert_eq!(tenant("/seed"), "/seed");
        assert_eq!(tenant("/"), "/");
    }

    /// Cgroups 1..=200 belong to user A, 900 to user B.
    fn owner(v: &Verdict) -> String {
        if v.cgroup_id == 900 { "B" } else { "A" }.to_owned()
    }

    #[test]
    fn another_tenant_is_served_in_the_first_round_whatever_the_flood_before_it() {
        let mut batch: Vec<Verdict> = (1..=200).map(|id| verdict(id, 300)).collect();
        batch.push(verdict(900, 250));
        let s = schedule(&batch, owner, SHARE);
        let ids: Vec<u64> = s.order.iter().map(|v| v.cgroup_id).collect();
        assert_eq!(ids.len(), SHARE + 1, "{ids:?}");
        assert_eq!(ids[1], 900, "B comes second, after A's first: {ids:?}");
        assert_eq!(ids.iter().filter(|&&id| id != 900).count(), SHARE);
        assert_eq!(s.deferred, 200 - SHARE);
        assert_eq!(s.busiest, Some(("A".to_owned(), 200 - SHARE)));
    }

    #[test]
    fn within_a_tenant_the_longest_stall_goes_first_so_none_starves() {
        // A's cgroup 7 was deferred before: its episode is the longest now.
        let batch: Vec<Verdict> = (1..=8)
            .map(|id| verdict(id, if id == 7 { 900 } else { 300 + id }))
            .collect();
        let s = schedule(&batch, owner, 2);
        let ids: Vec<u64> = s.order.iter().map(|v| v.cgroup_id).collect();
        assert_eq!(ids, [7, 8]);
        assert_eq!(s.deferred, 6);
    }

    #[test]
    fn only_the_latest_verdict_of_a_cgroup_counts_and_a_small_batch_is_kept_whole() {
        let mut early = verdict(5, 100);
        early.stall_ns = 1;
        let mut late = verdict(5, 300);
        late.stall_ns = 2;
        let batch = [early, verdict(900, 250), late];
        let s = schedule(&batch, owner, SHARE);
        let got: Vec<(u64, u64)> = s.order.iter().map(|v| (v.cgroup_id, v.stall_ns)).collect();
        assert_eq!(got, [(900, 0), (5, 2)]);
        assert_eq!((s.deferred, s.busiest), (0, None));
    }
}
