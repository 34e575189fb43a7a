//! The event counters, fed from the record stream.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, MutexGuard},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{Labels1, Labels2, Value, label};
use crate::events::{Event, Record};

/// Counter families of the records guard saw, by cgroup (and reason).
#[derive(Debug)]
pub(super) struct Counters {
    kills: Family<Labels2, Counter>,
    dry_run_kills: Family<Labels2, Counter>,
    verdicts: Family<Labels1, Counter>,
    oom_kills: Family<Labels1, Counter>,
    lost: Family<Labels1, Counter>,
    kill_limits: Family<Labels1, Counter>,
    unresolved: Family<Labels1, Counter>,
    /// Per-cgroup series are dropped when their cgroup goes, after one more
    /// scrape: a kill in a scope that vanishes with its victim must still
    /// be seen once.
    books: Mutex<Books>,
}

/// Which cgroups have series, and which of them are gone.
#[derive(Debug, Default)]
struct Books {
    /// Every cgroup with a series, and the kill reasons it has series for.
    with_series: BTreeMap<String, BTreeSet<String>>,
    /// Removed cgroups whose series the next scrape shows for the last time.
    gone: BTreeSet<String>,
}

/// A new counter family, registered under `name`.
fn family<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<[(&'static str, Value); N], Counter> {
    let family = Family::default();
    registry.register(name, help, family.clone());
    family
}

impl Counters {
    /// Registers every family, in the order the exposition lists them.
    pub(super) fn register(registry: &mut Registry) -> Self {
        Self {
            kills: family(
                registry,
                "guard_kills",
                "Processes guard killed to end a cgroup's memory stall",
            ),
            dry_run_kills: family(
                registry,
                "guard_dry_run_kills",
                "Kills guard would have made but did not (dry run)",
            ),
            verdicts: family(
                registry,
                "guard_verdicts",
                "Times the kernel side judged a cgroup stalled beyond its budget",
            ),
            oom_kills: family(
                registry,
                "guard_kernel_oom_kills",
                "Victims of the kernel's own OOM killer, by the victim's cgroup",
            ),
            lost: family(
                registry,
                "guard_lost_events",
                "Records lost on the way (full kernel ring buffers or a slow listener)",
            ),
            kill_limits: family(
                registry,
                "guard_kill_limits",
                "Times guard stopped killing in a cgroup because kills in a row left it over its \
                 limit (the circuit breaker opened)",
            ),
            unresolved: family(
                registry,
                "guard_unresolved_stalls",
                "Stalls guard confirmed but could not end by killing (a protected or unreadable \
                 holder, memory no process holds), counted once per situation",
            ),
            books: Mutex::default(),
        }
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        // A panic elsewhere while holding the lock leaves the books as
        // they were, still usable.
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `cgroup` has a series (of a kill `reason`, if given).
    fn has_series(&self, cgroup: &str, reason: Option<&str>) {
        let mut books = self.books();
        let reasons = books.with_series.entry(cgroup.to_owned()).or_default();
        if let Some(r) = reason {
            reasons.insert(r.to_owned());
        }
        books.gone.remove(cgroup);
    }

    /// After a scrape: drops the series of the cgroups gone before it.
    pub(super) fn drop_gone(&self) {
        let mut books = self.books();
        for cgroup in std::mem::take(&mut books.gone) {
            let reasons = books.with_series.remove(&cgroup).unwrap_or_default();
            let one = label("cgroup", &cgroup);
            for family in [
                &self.verdicts,
                &self.oom_kills,
                &self.kill_limits,
                &self.unresolved,
            ] {
                family.remove(&one);
            }
            for reason in reasons {
                let two = [("cgroup", Value(cgroup.clone())), ("reason", Value(reason))];
                self.kills.remove(&two);
                self.dry_run_kills.remove(&two);
            }
        }
    }

    /// Counts one record; kinds without a counter are ignored.
    pub(super) fn observe(&self, rec: &Record) {
        match &rec.event {
            Event::CgroupRemoved { cgroup, .. } => {
                let mut books = self.books();
                if books.with_series.contains_key(cgroup) {
                    books.gone.insert(cgroup.clone());
                }
                return;
            }
            Event::Kill { cgroup, reason, .. } => self.has_series(cgroup, Some(reason)),
            Event::KillLimit { cgroup, .. }
            | Event::Unresolved { cgroup, .. }
            | Event::Verdict { cgroup, .. }
            | Event::OomKill { cgroup, .. } => self.has_series(cgroup, None),
            _ => {}
        }
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
}

#[cfg(test)]
mod tests {
    use crate::{
        events::{Event, Record},
        metrics::{
            Metrics,
            tests::{kill, lost, oom_kill, value_of, verdict},
        },
    };

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
    fn a_removed_cgroups_series_are_shown_once_more_then_dropped() {
        let m = Metrics::new();
        let removed = |cgroup: &str| {
            Record::at(
                2,
                Event::CgroupRemoved {
                    cgroup_id: 9,
                    cgroup: cgroup.into(),
                },
            )
        };
        let series =
            r#"guard_kills_total{cgroup="/u.slice/run-1.scope",reason="memory_high_stall"}"#;
        let verdicts = r#"guard_verdicts_total{cgroup="/u.slice/run-1.scope"}"#;
        m.observe(&verdict("/u.slice/run-1.scope"));
        m.observe(&kill("/u.slice/run-1.scope", false));
        m.observe(&kill("/kept.slice", false));
        // The scope goes with its victim, before anyone scraped.
        m.observe(&removed("/u.slice/run-1.scope"));
        // Churn of cgroups that never had a series is not remembered.
        for i in 0..1000 {
            m.observe(&removed(&format!("/churn/c{i}")));
        }
        let first = m.encode();
        assert_eq!(value_of(&first, series), Some("1"), "{first}");
        assert_eq!(value_of(&first, verdicts), Some("1"), "{first}");
        let second = m.encode();
        assert_eq!(value_of(&second, series), None, "{second}");
        assert_eq!(value_of(&second, verdicts), None, "{second}");
        let kept = r#"guard_kills_total{cgroup="/kept.slice",reason="memory_high_stall"}"#;
        assert_eq!(value_of(&second, kept), Some("1"));
        assert!(m.counters.books().with_series.len() == 1 && m.counters.books().gone.is_empty());
    }
}
