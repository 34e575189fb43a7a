//! Which verdicts, kills and OOM kills belong to one incident.

use super::SEC;
use super::evidence::within;
use crate::events::{Event, Record};

/// Verdicts (and kills) of one cgroup closer than this are one incident: the
/// kernel repeats its verdict while a stall lasts, and a kill that did not
/// relieve it is followed by another verdict within seconds.
const VERDICT_GAP_NS: u64 = 10 * SEC;

/// The verdicts, kills and OOM kills (by index into the sorted records) that
/// make one incident.
pub(super) struct Cluster {
    pub(super) cgroup: String,
    pub(super) anchors: Vec<usize>,
    pub(super) first_ns: u64,
    pub(super) last_ns: u64,
}

impl Cluster {
    fn new(cgroup: &str, index: usize, at: u64) -> Self {
        Self {
            cgroup: cgroup.to_owned(),
            anchors: vec![index],
            first_ns: at,
            last_ns: at,
        }
    }

    fn add(&mut self, index: usize, at: u64) {
        self.anchors.push(index);
        self.anchors.sort_unstable();
        self.first_ns = self.first_ns.min(at);
        self.last_ns = self.last_ns.max(at);
    }
}

/// Groups the verdicts, kills and OOM kills into incidents, oldest first.
pub(super) fn clusters(sorted: &[&Record]) -> Vec<Cluster> {
    let mut clusters: Vec<Cluster> = Vec::new();
    for (i, r) in sorted.iter().enumerate() {
        let cgroup = match &r.event {
            Event::Verdict { cgroup, .. }
            | Event::Kill { cgroup, .. }
            | Event::Unresolved { cgroup, .. }
            | Event::KillLimit { cgroup, .. } => cgroup,
            _ => continue,
        };
        // A verdict names the cgroup the stall was charged to (where the
        // task runs); the kill names the cgroup over memory.high it
        // relieved, which may be an ancestor (a slice). Related cgroups
        // close in time are one incident, named by the wider of the two.
        let related = |c: &&mut Cluster| within(cgroup, &c.cgroup) || within(&c.cgroup, cgroup);
        match clusters.iter_mut().rev().find(related) {
            Some(c) if r.mono_ns.saturating_sub(c.last_ns) <= VERDICT_GAP_NS => {
                c.add(i, r.mono_ns);
                if c.cgroup != *cgroup && within(&c.cgroup, cgroup) {
                    c.cgroup = cgroup.clone();
                }
            }
            _ => clusters.push(Cluster::new(cgroup, i, r.mono_ns)),
        }
    }
    let guard_clusters = clusters.len();
    for (i, r) in sorted.iter().enumerate() {
        let Event::OomKill { cgroup, .. } = &r.event else {
            continue;
        };
        let t = r.mono_ns;
        let near = |c: &Cluster| {
            t.saturating_add(VERDICT_GAP_NS) >= c.first_ns
                && t <= c.last_ns.saturating_add(VERDICT_GAP_NS)
        };
        // An OOM kill during one of our incidents, in its cgroup or below,
        // belongs to it (memory.max was reached while stalled); of several,
        // the deepest cgroup is the one that ran out.
        let ours = clusters[..guard_clusters]
            .iter()
            .enumerate()
            .filter(|(_, c)| within(cgroup, &c.cgroup) && near(c))
            .max_by_key(|(_, c)| c.cgroup.len())
            .map(|(k, _)| k);
        let kernel_only = || {
            clusters[guard_clusters..]
                .iter()
                .position(|c| c.cgroup == *cgroup && near(c))
                .map(|k| k + guard_clusters)
        };
        match ours.or_else(kernel_only) {
            Some(k) => clusters[k].add(i, t),
            None => clusters.push(Cluster::new(cgroup, i, t)),
        }
    }
    clusters.sort_by_key(|c| c.first_ns);
    clusters
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::analyze;
    use crate::report::fixtures::*;
    use crate::report::model::Ending;

    #[test]
    fn a_verdict_in_a_scope_and_the_kill_at_its_limited_slice_are_one_incident() {
        // As the daemon reports it: the stall is charged to the task's own
        // scope, the kill names the slice over memory.high it relieved.
        let scope = format!("{SEED}/hog.scope");
        let mut v = verdict(at_ms(1_300), at_ms(1_000));
        if let Event::Verdict { cgroup, .. } = &mut v.event {
            *cgroup = scope.clone();
        }
        let mut records = vec![hello()];
        for k in 0..10 {
            let mut r = reclaim(at_ms(1_000 + k * 30), 4242, "grep", 0);
            if let Event::Reclaim { cgroup, .. } = &mut r.event {
                *cgroup = scope.clone();
            }
            records.push(r);
        }
        records.push(v);
        records.push(kill(at_ms(1_302), false));
        let report = analyze(&records);
        assert_eq!(report.incidents.len(), 1, "{report}");
        let inc = &report.incidents[0];
        assert_eq!(inc.cgroup, SEED, "named by the slice whose limit was hit");
        assert_eq!(inc.ended_by, Ending::Kill);
        assert_eq!(inc.verdicts, 1);
        assert_eq!(inc.start.mono_ns, at_ms(1_000));
        assert_eq!(inc.tasks[0].no_progress_passes, 10);
        // A sibling slice's verdict at the same time stays apart.
        let mut other = verdict(at_ms(1_301), at_ms(1_000));
        if let Event::Verdict { cgroup, .. } = &mut other.event {
            *cgroup = "/other.slice/x.scope".into();
        }
        records.push(other);
        assert_eq!(analyze(&records).incidents.len(), 2);
    }
}
