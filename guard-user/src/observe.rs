//! From what the kernel half sends to event records: names cgroups, reads
//! victims' names before they are gone, samples cgroup memory, and turns the
//! kernel's lost-record counters into `lost` records. Shared by the daemon
//! and by `guard trace` when it runs its own probes.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use guard_common::{
    CGROUP_CREATED, CGROUP_REMOVED, CgroupEvent, CgroupStall, TRACE_OOM_VICTIM, TRACE_RECLAIM,
    TRACE_THROTTLE, TraceRecord, Verdict, stat,
};

use crate::{
    cgroup::{self, Hierarchy},
    events::{Event, Record},
};

/// At most this many cgroups are sampled per tick: the busiest ones.
pub const MAX_SAMPLED: usize = 64;

/// Kernel counters whose growth means records were dropped, and the name
/// the `lost` record gives them.
const LOST_COUNTERS: [(u32, &str); 3] = [
    (stat::VERDICTS_LOST, "verdicts"),
    (stat::CGROUP_EVENTS_LOST, "cgroup_events"),
    (stat::TRACE_LOST, "trace"),
];

pub struct Observer {
    hierarchy: Option<Hierarchy>,
    proc_root: PathBuf,
    /// cgroup id -> path relative to the cgroup2 root.
    names: HashMap<u64, String>,
    lost_seen: [u64; stat::COUNT as usize],
}

/// memory.pressure's avg10 of the `some` and `full` lines.
pub fn parse_pressure(text: &str) -> (Option<f64>, Option<f64>) {
    let avg10 = |kind: &str| {
        text.lines()
            .find(|l| l.starts_with(kind))?
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("avg10="))?
            .parse()
            .ok()
    };
    (avg10("some "), avg10("full "))
}

fn comm_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Observer {
    /// `hierarchy`: the cgroup2 mount, if there is one (a cgroup v1 host has
    /// none, and then cgroups are named by id only).
    pub fn new(hierarchy: Option<Hierarchy>, proc_root: impl Into<PathBuf>) -> Self {
        let names = match &hierarchy {
            Some(h) => h
                .scan_all()
                .into_iter()
                .map(|(id, dir)| (id, h.display_path(&dir)))
                .collect(),
            None => HashMap::new(),
        };
        Self {
            hierarchy,
            proc_root: proc_root.into(),
            names,
            lost_seen: [0; stat::COUNT as usize],
        }
    }

    /// The path of a cgroup by id; the root cgroup is "/", an unknown one
    /// "" (removed before it could be named).
    pub fn name(&self, id: u64) -> String {
        if id == guard_common::HOST_ID {
            return crate::events::HOST_NAME.to_owned();
        }
        if let Some(name) = self.names.get(&id) {
            return name.clone();
        }
        match &self.hierarchy {
            Some(h) if Hierarchy::id_of(h.root()).is_ok_and(|root| root == id) => "/".to_owned(),
            _ => String::new(),
        }
    }

    /// The cgroup2 path of a live process, from /proc.
    fn cgroup_of(&self, pid: u32) -> Option<String> {
        let text = fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        cgroup::v2_path(&text).map(str::to_owned)
    }

    fn comm_of(&self, pid: u32) -> Option<String> {
        let text = fs::read_to_string(self.proc_root.join(pid.to_string()).join("comm")).ok()?;
        Some(text.trim_end().to_owned())
    }

    pub fn trace(&self, r: &TraceRecord) -> Option<Record> {
        let comm = comm_string(r.comm());
        let event = match r.kind {
            TRACE_RECLAIM => Event::Reclaim {
                pid: r.tgid,
                tid: r.tid,
                comm,
                cgroup_id: r.cgroup_id,
                cgroup: self.name(r.cgroup_id),
                duration_ns: r.duration_ns,
                reclaimed_pages: r.reclaimed_pages,
            },
            TRACE_THROTTLE => Event::Throttle {
                pid: r.tgid,
                tid: r.tid,
                comm,
                cgroup_id: r.cgroup_id,
                cgroup: self.name(r.cgroup_id),
                penalty_ns: r.duration_ns,
            },
            TRACE_OOM_VICTIM => {
                let victim = r.victim_pid;
                // The victim is usually still exiting: its /proc entry names it.
                // When it invoked the OOM killer itself, the record names it too.
                let comm_v = self
                    .comm_of(victim)
                    .or_else(|| (victim == r.tgid).then(|| comm.clone()))
                    .unwrap_or_default();
                let cgroup = self
                    .cgroup_of(victim)
                    .unwrap_or_else(|| self.name(r.cgroup_id));
                Event::OomKill {
                    pid: victim,
                    comm: comm_v,
                    cgroup,
                    trigger_pid: r.tgid,
                    trigger_comm: comm,
                }
            }
            _ => return None,
        };
        Some(Record::at(r.ktime_ns, event))
    }

    pub fn verdict(&self, v: &Verdict) -> Record {
        Record::at(
            v.ktime_ns,
            Event::Verdict {
                cgroup_id: v.cgroup_id,
                cgroup: self.name(v.cgroup_id),
                stall_ns: v.stall_ns,
                window_ns: v.window_ns,
                budget_ns: v.budget_ns,
                streak: v.streak,
                episode_start_ns: v.episode_start_ns,
                worst_pid: v.worst_tgid,
                worst_comm: comm_string(v.comm()),
            },
        )
    }

    /// Follows a cgroup creation or removal in the names.
    pub fn cgroup_event(&mut self, e: &CgroupEvent) -> Option<Record> {
        match e.kind {
            CGROUP_CREATED => {
                let path = e.path()?.to_owned();
                self.names.insert(e.id, path.clone());
                Some(Record::now(Event::CgroupCreated {
                    cgroup_id: e.id,
                    cgroup: path,
                }))
            }
            CGROUP_REMOVED => {
                let path = self
                    .names
                    .remove(&e.id)
                    .or_else(|| e.path().map(str::to_owned))
                    .unwrap_or_default();
                Some(Record::now(Event::CgroupRemoved {
                    cgroup_id: e.id,
                    cgroup: path,
                }))
            }
            _ => None,
        }
    }

    /// `lost` records for every kernel drop counter that grew since the
    /// last call.
    pub fn lost(&mut self, stats: &[u64; stat::COUNT as usize]) -> Vec<Record> {
        let mut out = Vec::new();
        for (index, what) in LOST_COUNTERS {
            let i = index as usize;
            let grew = stats[i].saturating_sub(self.lost_seen[i]);
            self.lost_seen[i] = stats[i];
            if grew > 0 {
                out.push(Record::now(Event::Lost {
                    what: what.to_owned(),
                    count: grew,
                }));
            }
        }
        out
    }

    /// Samples of the cgroups the kernel has seen reclaim in, plus `also`
    /// (the listed ones): the busiest `MAX_SAMPLED` by stall. `window_of`
    /// gives the window (ns) the kernel judges a cgroup by, from its id and
    /// path.
    pub fn samples(
        &self,
        stalls: &[(u64, CgroupStall)],
        also: &[u64],
        window_of: impl Fn(u64, &str) -> u64,
    ) -> Vec<Record> {
        let Some(h) = &self.hierarchy else {
            return Vec::new();
        };
        let now = crate::clock::monotonic_ns();
        let mut chosen: Vec<(u64, CgroupStall)> = stalls.to_vec();
        for id in also {
            if !chosen.iter().any(|(c, _)| c == id) {
                chosen.push((*id, CgroupStall::default()));
            }
        }
        chosen.sort_by_key(|(_, s)| std::cmp::Reverse((s.stall_total_ns, s.passes)));
        let mut out: Vec<Record> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (id, s) in chosen {
            if out.len() >= MAX_SAMPLED {
                break;
            }
            let Some(name) = self.names.get(&id) else {
                continue;
            };
            let window = window_stall(&s, now, window_of(id, name));
            if seen.insert(id)
                && let Some(r) = self.sample(
                    &h.root().join(name.trim_start_matches('/')),
                    id,
                    name,
                    &s,
                    window,
                )
            {
                out.push(r);
            }
            // The stall is charged where the task runs, but the limit that
            // throttles it may sit on an ancestor (a slice): sample that too,
            // so the row shows memory against the limit that matters.
            if let Some((dir, aid)) = self.limited_ancestor(h, name)
                && seen.insert(aid)
            {
                let aname = h.display_path(&dir);
                if let Some(r) = self.sample(&dir, aid, &aname, &CgroupStall::default(), 0) {
                    out.push(r);
                }
            }
        }
        out.truncate(MAX_SAMPLED);
        out
    }

    /// The nearest strict ancestor of `name` (below the root) with a finite
    /// memory.high or memory.max.
    fn limited_ancestor(&self, h: &Hierarchy, name: &str) -> Option<(PathBuf, u64)> {
        let parent = h
            .root()
            .join(name.trim_start_matches('/'))
            .parent()?
            .to_owned();
        let (dir, _) = h.nearest_limited(&parent, |m| m.high != u64::MAX || m.max != u64::MAX)?;
        let id = Hierarchy::id_of(&dir).ok()?;
        Some((dir, id))
    }

    fn sample(
        &self,
        dir: &Path,
        id: u64,
        name: &str,
        s: &CgroupStall,
        stall_window_ns: u64,
    ) -> Option<Record> {
        let mem = Hierarchy::memory(dir).ok()?;
        let (some, full) = fs::read_to_string(dir.join("memory.pressure"))
            .map(|t| parse_pressure(&t))
            .unwrap_or((None, None));
        let limit = |v: u64| (v != u64::MAX).then_some(v);
        Some(Record::now(Event::Sample {
            cgroup_id: id,
            cgroup: name.to_owned(),
            memory_current: mem.current,
            memory_high: limit(mem.high),
            memory_max: limit(mem.max),
            stall_total_ns: s.stall_total_ns,
            passes: s.passes,
            no_progress_passes: s.no_progress_passes,
            reclaimed_pages: s.reclaimed_pages,
            psi_some_avg10: some,
            psi_full_avg10: full,
            worst_pid: s.worst_tgid,
            worst_comm: comm_string(
                &s.worst_comm[..s
                    .worst_comm
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(s.worst_comm.len())],
            ),
            stall_window_ns,
        }))
    }
}

/// The kernel's estimate of a cgroup's no-progress stall in its sliding
/// window, as it stands at `now` (CLOCK_MONOTONIC): the current bucket plus
/// the previous one weighted by how much of it the window still covers, the
/// buckets rolled forward as the kernel would roll them at its next charge.
pub fn window_stall(s: &CgroupStall, now: u64, window_ns: u64) -> u64 {
    if s.window_start_ns == 0 || window_ns == 0 {
        return 0;
    }
    let elapsed = now.saturating_sub(s.window_start_ns);
    let weighted = |ns: u64, into: u64| {
        let left = u128::from(window_ns.saturating_sub(into));
        u64::try_from(u128::from(ns) * left / u128::from(window_ns)).unwrap_or(u64::MAX)
    };
    if elapsed >= window_ns.saturating_mul(2) {
        0
    } else if elapsed >= window_ns {
        weighted(s.cur_ns, elapsed - window_ns)
    } else {
        s.cur_ns.saturating_add(weighted(s.prev_ns, elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(s: &str) -> [u8; 16] {
        let mut c = [0; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    #[test]
    fn pressure_avg10_of_some_and_full() {
        let text = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\n\
                    full avg10=80.25 avg60=2.00 avg300=0.50 total=99\n";
        assert_eq!(parse_pressure(text), (Some(12.5), Some(80.25)));
        assert_eq!(parse_pressure(""), (None, None));
    }

    /// A fake cgroup2 tree with one cgroup and a fake /proc with one process.
    fn tree() -> (tempfile::TempDir, Observer, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path().join("cg/seed.slice");
        fs::create_dir_all(&cg).expect("mkdir");
        fs::write(cg.join("memory.current"), "70000000\n").expect("w");
        fs::write(cg.join("memory.high"), "67108864\n").expect("w");
        fs::write(cg.join("memory.max"), "max\n").expect("w");
        fs::write(
            cg.join("memory.pressure"),
            "some avg10=50.00 avg60=0 avg300=0 total=1\nfull avg10=40.00 avg60=0 avg300=0 total=1\n",
        )
        .expect("w");
        let proc_dir = dir.path().join("proc/4242");
        fs::create_dir_all(&proc_dir).expect("mkdir");
        fs::write(proc_dir.join("comm"), "grep\n").expect("w");
        fs::write(proc_dir.join("cgroup"), "0::/seed.slice\n").expect("w");
        let id = Hierarchy::id_of(&cg).expect("id");
        let obs = Observer::new(
            Some(Hierarchy::new(dir.path().join("cg"))),
            dir.path().join("proc"),
        );
        (dir, obs, id)
    }

    #[test]
    fn trace_records_name_the_cgroup_and_oom_victims_by_their_proc_entry() {
        let (_dir, obs, id) = tree();
        let pass = TraceRecord {
            kind: TRACE_RECLAIM,
            tid: 11,
            tgid: 10,
            cgroup_id: id,
            ktime_ns: 5,
            duration_ns: 3_000_000,
            reclaimed_pages: 0,
            comm: comm("node"),
            ..TraceRecord::default()
        };
        let rec = obs.trace(&pass).expect("known kind");
        assert_eq!(rec.mono_ns, 5);
        match rec.event {
            Event::Reclaim {
                pid, cgroup, comm, ..
            } => assert_eq!(
                (pid, cgroup.as_str(), comm.as_str()),
                (10, "/seed.slice", "node")
            ),
            e => panic!("{e:?}"),
        }
        let oom = TraceRecord {
            kind: TRACE_OOM_VICTIM,
            tgid: 10,
            victim_pid: 4242,
            cgroup_id: id,
            comm: comm("node"),
            ..TraceRecord::default()
        };
        match obs.trace(&oom).expect("known").event {
            Event::OomKill {
                pid,
                comm,
                cgroup,
                trigger_comm,
                ..
            } => {
                assert_eq!(pid, 4242);
                assert_eq!(comm, "grep");
                assert_eq!(cgroup, "/seed.slice");
                assert_eq!(trigger_comm, "node");
            }
            e => panic!("{e:?}"),
        }
        let unknown = TraceRecord {
            kind: 99,
            ..TraceRecord::default()
        };
        assert!(obs.trace(&unknown).is_none());
    }

    #[test]
    fn samples_read_memory_limits_and_pressure() {
        let (_dir, obs, id) = tree();
        let stall = CgroupStall {
            stall_total_ns: 400_000_000,
            passes: 9,
            worst_tgid: 4242,
            worst_comm: comm("grep"),
            ..CgroupStall::default()
        };
        let samples = obs.samples(&[(id, stall), (id + 999, stall)], &[], |_, _| SEC);
        assert_eq!(samples.len(), 1, "the unknown id is skipped");
        // A stall charged to an unlimited child is sampled with the limited
        // parent beside it.
        let (dir, mut obs2, _) = tree();
        let child = dir.path().join("cg/seed.slice/hog.scope");
        fs::create_dir_all(&child).expect("mkdir");
        fs::write(child.join("memory.current"), "60000000\n").expect("w");
        fs::write(child.join("memory.high"), "max\n").expect("w");
        fs::write(child.join("memory.max"), "max\n").expect("w");
        let child_id = Hierarchy::id_of(&child).expect("id");
        obs2.names.insert(child_id, "/seed.slice/hog.scope".into());
        let both = obs2.samples(&[(child_id, stall)], &[], |_, _| SEC);
        let names: Vec<(String, Option<u64>)> = both
            .iter()
            .map(|r| match &r.event {
                Event::Sample {
                    cgroup,
                    memory_high,
                    ..
                } => (cgroup.clone(), *memory_high),
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("/seed.slice/hog.scope".to_owned(), None),
                ("/seed.slice".to_owned(), Some(64 << 20))
            ]
        );
        match &samples[0].event {
            Event::Sample {
                memory_current,
                memory_high,
                memory_max,
                psi_full_avg10,
                stall_total_ns,
                worst_comm,
                ..
            } => {
                assert_eq!(*memory_current, 70_000_000);
                assert_eq!(*memory_high, Some(64 << 20));
                assert_eq!(*memory_max, None);
                assert_eq!(*psi_full_avg10, Some(40.0));
                assert_eq!(*stall_total_ns, 400_000_000);
                assert_eq!(worst_comm, "grep");
            }
            e => panic!("{e:?}"),
        }
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn the_window_stall_is_the_kernels_sliding_estimate_now() {
        let s = CgroupStall {
            window_start_ns: 10 * SEC,
            cur_ns: 200_000_000,
            prev_ns: 400_000_000,
            ..CgroupStall::default()
        };
        // A quarter into the window: all of cur, three quarters of prev.
        assert_eq!(window_stall(&s, 10 * SEC + SEC / 4, SEC), 500_000_000);
        // Half into the next window (not rolled yet): half of cur.
        assert_eq!(window_stall(&s, 11 * SEC + SEC / 2, SEC), 100_000_000);
        // Two windows of quiet: nothing left.
        assert_eq!(window_stall(&s, 12 * SEC, SEC), 0);
        assert_eq!(window_stall(&CgroupStall::default(), 5, SEC), 0);
    }

    #[test]
    fn lost_records_are_reported_once_per_growth() {
        let (_dir, mut obs, _) = tree();
        let mut stats = [0; stat::COUNT as usize];
        assert!(obs.lost(&stats).is_empty());
        stats[stat::TRACE_LOST as usize] = 7;
        stats[stat::VERDICTS_LOST as usize] = 1;
        let lost = obs.lost(&stats);
        let mut got: Vec<(String, u64)> = lost
            .into_iter()
            .map(|r| match r.event {
                Event::Lost { what, count } => (what, count),
                e => panic!("{e:?}"),
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("trace".to_owned(), 7), ("verdicts".to_owned(), 1)]
        );
        assert!(obs.lost(&stats).is_empty(), "no growth, no record");
    }

    #[test]
    fn cgroup_events_keep_names_current() {
        let (_dir, mut obs, _) = tree();
        let mut e = CgroupEvent {
            id: 777,
            kind: CGROUP_CREATED,
            len: 9,
            path: [0; guard_common::CGROUP_PATH_LEN],
        };
        e.path[..9].copy_from_slice(b"/new.unit");
        assert!(obs.cgroup_event(&e).is_some());
        assert_eq!(obs.name(777), "/new.unit");
        e.kind = CGROUP_REMOVED;
        match obs.cgroup_event(&e).expect("record").event {
            Event::CgroupRemoved { cgroup, .. } => assert_eq!(cgroup, "/new.unit"),
            ev => panic!("{ev:?}"),
        }
        assert_eq!(obs.name(777), "");
    }
}
