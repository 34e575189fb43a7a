//! The kill decision for one confirmed stall: from a table of the stalled
//! subtree's processes to the victims, or to the reason there are none.
//! Plain data in, plain data out; the only question asked outside is
//! "may this process be killed?", through the `judge` the caller passes,
//! which is asked lazily (and at most once per process), so a decision
//! usually reads the protection facts of a few processes, not of all. The
//! judge also answers with the process's name, which the table itself need
//! not carry (reading every name would cost a file per process).
//!
//! The rules, in order:
//! 1. A kill must be able to end the stall. When what guard may not kill
//!    (protected or unreadable processes) holds so much that killing every
//!    other process could not bring memory back under the limit, nobody is
//!    killed. Nor when the process driving the stall may not be killed:
//!    the task the kernel saw stall most (it throttles a task for what that
//!    task charges, so that is the one growing) when it holds at least as
//!    much as any killable process, or the largest holder of all, unless
//!    the growing task is known and may be killed (then it alone dies).
//!    Killing others would only make room for the driver to grow into.
//! 2. One victim when one holds a real share of the overage: the first in
//!    the policy's order (prefer/avoid), then by footprint, ties to the task
//!    the kernel saw stall.
//! 3. Otherwise several, in the same order, until together they cover the
//!    overage (many small processes: a fork bomb, a parallel build).
//!
//! In the `process-group` and `cgroup` kill modes a unit is a process group
//! or a leaf cgroup, judged by what it holds as a whole; a unit that holds a
//! process guard may not kill is split into its killable processes.

use std::{cmp::Reverse, fmt};

use crate::{policy::Protection, procfs::Comm};

/// The most units one decision kills: beyond it the overage is spread so
/// thin that only a wider kill mode can end it.
pub const MAX_BATCH: usize = 64;

/// One process of the stalled subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub pid: u32,
    /// Its name when the table was read with it (empty otherwise: the judge
    /// tells it).
    pub comm: Comm,
    /// What killing it gives back, bytes; None when its memory could not
    /// be read (it then counts as a process guard may not kill).
    pub footprint: Option<u64>,
    /// Its kill unit: a process group, a leaf cgroup, or (process mode) its
    /// own pid.
    pub unit: u32,
    /// The policy's order: +1 preferred, -1 avoided.
    pub rank: i8,
}

/// What the decision needs to know about the stall itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// memory.current - memory.high (for the host, the shortfall below the
    /// MemAvailable threshold), bytes.
    pub overage: u64,
    /// The thread group the kernel saw stall most (0: none known).
    pub worst_tgid: u32,
    pub min_share_percent: u64,
    /// Shared memory charged to the cgroup that no process holds (tmpfs
    /// files, SysV segments): killing frees none of it.
    pub unowned_shmem: u64,
}

/// Victims: units to kill, each with the candidates (indices) it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    pub unit: u32,
    /// Indices into the candidate table, largest footprint first.
    pub members: Vec<usize>,
    /// Killed as a whole (group or cgroup); false for a single process or
    /// for a unit split because it holds a process guard may not kill.
    pub whole: bool,
    pub footprint: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// One pick normally; several when no single one holds a real share.
    Kill(Vec<Pick>),
    Unresolved(Unresolved),
}

/// A process guard may not kill, named in an unresolved stall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: Comm,
    pub footprint: Option<u64>,
    pub why: Protection,
}

/// Why a confirmed stall gets no victim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// The process driving the stall may not be killed, and holds at least
    /// as much as any that may.
    Driver { holder: Holder, overage: u64 },
    /// Killing every process guard may kill would not end it: what it may
    /// not kill holds the rest.
    Held { holder: Holder, overage: u64 },
    /// The overage is tmpfs/shmem: killing processes would not free it.
    HeldByNoProcess { shmem: u64, overage: u64 },
    /// Killable processes cannot cover the overage, and nothing guard can
    /// name holds it (kernel memory, say).
    NoRelief {
        largest: Option<(u32, Comm, u64)>,
        overage: u64,
    },
    /// Covering the overage would take more than [`MAX_BATCH`] kills.
    TooSpread { overage: u64 },
}

impl Unresolved {
    /// What stays the same while the same situation lasts (the sizes in the
    /// message grow while a throttled hog keeps charging).
    pub fn key(&self) -> String {
        match self {
            Self::Driver { holder, .. } => format!("driver {}", holder.pid),
            Self::Held { holder, .. } => format!("held {}", holder.pid),
            Self::HeldByNoProcess { .. } => "held by no process".to_owned(),
            Self::NoRelief { largest, .. } => {
                format!("no relief {:?}", largest.as_ref().map(|l| l.0))
            }
            Self::TooSpread { .. } => "too spread".to_owned(),
        }
    }

    /// The process named, if any.
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Self::Driver { holder, .. } | Self::Held { holder, .. } => Some(holder),
            _ => None,
        }
    }
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.footprint {
            Some(b) => write!(
                f,
                "{} (pid {}, {} MiB, {})",
                self.comm,
                self.pid,
                mib(b),
                self.why
            ),
            None => write!(f, "{} (pid {}, {})", self.comm, self.pid, self.why),
        }
    }
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Driver { holder, overage } => write!(
                f,
                "the process driving the stall may not be killed: {holder}; killing others \
                 would only make room for it ({} MiB over)",
                mib(*overage)
            ),
            Self::Held { holder, overage } => write!(
                f,
                "what guard may not kill holds too much: killing every other process could \
                 not end the {} MiB overage; largest such holder: {holder}",
                mib(*overage)
            ),
            Self::HeldByNoProcess { shmem, overage } => write!(
                f,
                "the memory is held by no process: shmem/tmpfs holds {} MiB of a {} MiB \
                 overage; free it by deleting files in the cgroup's tmpfs or shared memory",
                mib(*shmem),
                mib(*overage)
            ),
            Self::NoRelief {
                largest: Some((pid, comm, footprint)),
                overage,
            } => write!(
                f,
                "the processes guard may kill hold less than the {} MiB overage together \
                 (largest: {comm}, pid {pid}, {} MiB)",
                mib(*overage),
                mib(*footprint)
            ),
            Self::NoRelief {
                largest: None,
                overage,
            } => write!(
                f,
                "no killable process in the cgroup ({} MiB over the limit)",
                mib(*overage)
            ),
            Self::TooSpread { overage } => write!(
                f,
                "the {} MiB overage is spread over more than {MAX_BATCH} processes; \
                 kill = \"process-group\" or \"cgroup\" in the scope can end it",
                mib(*overage)
            ),
        }
    }
}

/// A unit of the table: the candidates it holds and what they hold.
struct Unit {
    key: u32,
    /// Its candidates: a range of the units' shared index list, largest
    /// first (no allocation per unit).
    members: std::ops::Range<usize>,
    footprint: u64,
    rank: i8,
    whole: bool,
    worst: bool,
}

/// The judge's answer: why the process may not be killed (None: it may),
/// and its name.
pub type Judgement = (Option<Protection>, Comm);

/// Memoized answers of the caller's judge.
struct Judged<'a, J> {
    judge: J,
    cands: &'a [Candidate],
    answers: Vec<Option<Judgement>>,
}

impl<J: FnMut(usize) -> Judgement> Judged<'_, J> {
    fn answer(&mut self, i: usize) -> &Judgement {
        if self.answers[i].is_none() {
            let a = if self.cands[i].footprint.is_none() {
                (
                    Some(Protection::Unreadable(
                        "its memory could not be read".to_owned(),
                    )),
                    self.cands[i].comm,
                )
            } else {
                (self.judge)(i)
            };
            self.answers[i] = Some(a);
        }
        self.answers[i].as_ref().expect("answered above")
    }

    /// Why candidate `i` may not be killed, or None.
    fn why(&mut self, i: usize) -> Option<Protection> {
        self.answer(i).0.clone()
    }

    fn killable(&mut self, i: usize) -> bool {
        self.answer(i).0.is_none()
    }

    fn name(&mut self, i: usize) -> Comm {
        self.answer(i).1
    }

    fn holder(&mut self, i: usize) -> Holder {
        let (pid, footprint) = (self.cands[i].pid, self.cands[i].footprint);
        Holder {
            pid,
            comm: self.name(i),
            footprint,
            why: self.why(i).unwrap_or(Protection::Unreadable(String::new())),
        }
    }
}

/// Decides whom to kill for one stall. `grouped`: the kill mode takes
/// process groups or cgroups (units may hold several candidates).
pub fn decide(
    stall: &Stall,
    cands: &[Candidate],
    grouped: bool,
    judge: impl FnMut(usize) -> Judgement,
) -> Decision {
    let mut j = Judged {
        judge,
        cands,
        answers: vec![None; cands.len()],
    };
    let by_size = by_size(stall, cands);
    if killable_sum(stall.overage, cands, &by_size, grouped, &mut j) < stall.overage {
        return Decision::Unresolved(no_capacity(stall, cands, &by_size, &mut j));
    }
    // The kill units; in process mode every process is one, and whether it
    // may be killed is asked only when a rule reaches it.
    let (list, units) = units(cands, &by_size, grouped, stall.worst_tgid, &mut j);
    let u = Units {
        list: &list,
        units: &units,
    };
    if let Some(d) = driver(stall, cands, &by_size, &u, &mut j) {
        return d;
    }
    in_order(stall, &u, &mut j)
}

/// Whether `bytes` is at least the policy's share of the overage.
fn share(stall: &Stall, bytes: u64) -> bool {
    u128::from(bytes) * 100 >= u128::from(stall.overage) * u128::from(stall.min_share_percent)
}

/// Every process by footprint, those guard may not kill included;
/// unreadable ones (unknown size) last.
fn by_size(stall: &Stall, cands: &[Candidate]) -> Vec<usize> {
    let mut by_size: Vec<usize> = (0..cands.len()).collect();
    by_size.sort_by_key(|&i| {
        (
            cands[i].footprint.is_none(),
            Reverse(size_of(cands, i)),
            cands[i].pid != stall.worst_tgid,
            cands[i].pid,
        )
    });
    by_size
}

/// Rule 1: could killing every killable process end it? Walks down by size
/// until the killable ones cover the overage (usually the first).
fn killable_sum<J: FnMut(usize) -> Judgement>(
    overage: u64,
    cands: &[Candidate],
    by_size: &[usize],
    grouped: bool,
    j: &mut Judged<'_, J>,
) -> u64 {
    let mut sum = 0u64;
    for &i in by_size {
        if sum >= overage && !grouped {
            break;
        }
        if j.killable(i) {
            sum = sum.saturating_add(size_of(cands, i));
        }
    }
    sum
}

/// The kill units, and the candidates they list.
struct Units<'a> {
    list: &'a [usize],
    units: &'a [Unit],
}

impl Units<'_> {
    fn pick(&self, u: &Unit) -> Pick {
        Pick {
            unit: u.key,
            members: self.list[u.members.clone()].to_vec(),
            whole: u.whole,
            footprint: u.footprint,
        }
    }
}

/// Rule 1, the driver. The kernel throttles a task for the pages it charges
/// itself, so the task it saw stall most (when it holds a real share) is
/// the one growing; a task that charges nothing is not throttled at all.
/// Decides when the driver, or the largest holder, may not be killed.
fn driver<J: FnMut(usize) -> Judgement>(
    stall: &Stall,
    cands: &[Candidate],
    by_size: &[usize],
    u: &Units<'_>,
    j: &mut Judged<'_, J>,
) -> Option<Decision> {
    let overage = stall.overage;
    let worst = cands
        .iter()
        .position(|c| c.pid == stall.worst_tgid && c.pid != 0)
        .filter(|&i| share(stall, size_of(cands, i)));
    if let Some(w) = worst
        && !j.killable(w)
    {
        // Units come largest first: the first killable one is the largest.
        let largest = u
            .units
            .iter()
            .find(|x| unit_ok(x, u.list, j))
            .map_or(0, |x| x.footprint);
        if size_of(cands, w) >= largest {
            return Some(Decision::Unresolved(Unresolved::Driver {
                holder: j.holder(w),
                overage,
            }));
        }
    }
    // The largest holder may not be killed: unless the growing task is
    // known and may be, it is the presumed cause, and every other kill
    // would only make room for it.
    let &top = by_size.first()?;
    if cands[top].footprint.is_none() || j.killable(top) {
        return None;
    }
    let grower = worst.and_then(|w| {
        u.units
            .iter()
            .find(|x| u.list[x.members.clone()].contains(&w) && unit_ok(x, u.list, j))
    });
    Some(match grower {
        Some(x) => Decision::Kill(vec![u.pick(x)]),
        None => Decision::Unresolved(Unresolved::Driver {
            holder: j.holder(top),
            overage,
        }),
    })
}

/// Rules 2 and 3, in the policy's order: the first unit that holds the
/// share alone, or else the fewest units that together cover the overage.
fn in_order<J: FnMut(usize) -> Judgement>(
    stall: &Stall,
    u: &Units<'_>,
    j: &mut Judged<'_, J>,
) -> Decision {
    let mut order: Vec<&Unit> = u.units.iter().collect();
    order.sort_by_key(|x| (Reverse(x.rank), Reverse(x.footprint), !x.worst, x.key));
    for x in &order {
        if share(stall, x.footprint) && unit_ok(x, u.list, j) {
            return Decision::Kill(vec![u.pick(x)]);
        }
    }
    let mut picks = Vec::new();
    let mut covered = 0u64;
    for x in order {
        if covered >= stall.overage {
            break;
        }
        if !unit_ok(x, u.list, j) {
            continue;
        }
        if picks.len() == MAX_BATCH {
            return Decision::Unresolved(Unresolved::TooSpread {
                overage: stall.overage,
            });
        }
        covered = covered.saturating_add(x.footprint);
        picks.push(u.pick(x));
    }
    Decision::Kill(picks)
}

/// Why killing cannot end it: the largest holder guard may not kill, the
/// shared memory no process holds, or nothing it can name.
fn no_capacity<J: FnMut(usize) -> Judgement>(
    stall: &Stall,
    cands: &[Candidate],
    by_size: &[usize],
    j: &mut Judged<'_, J>,
) -> Unresolved {
    let overage = stall.overage;
    let holder = by_size.iter().copied().find(|&i| !j.killable(i));
    let held = holder.map_or(0, |i| cands[i].footprint.unwrap_or(0));
    match holder {
        Some(i) if held >= stall.unowned_shmem || cands[i].footprint.is_none() => {
            Unresolved::Held {
                holder: j.holder(i),
                overage,
            }
        }
        _ if stall.unowned_shmem.saturating_mul(100)
            >= overage.saturating_mul(stall.min_share_percent) =>
        {
            Unresolved::HeldByNoProcess {
                shmem: stall.unowned_shmem,
                overage,
            }
        }
        _ => Unresolved::NoRelief {
            largest: by_size
                .iter()
                .copied()
                .find(|&i| j.killable(i))
                .map(|i| (cands[i].pid, j.name(i), cands[i].footprint.unwrap_or(0))),
            overage,
        },
    }
}

/// The kill units, largest first, and the index list their member ranges
/// point into. In process mode each unit is one process, not yet judged
/// (`whole` false: the rules ask as they reach it); grouped, every
/// candidate is judged, a unit holds only killable processes, and a unit
/// holding one guard may not kill is split into its killable ones.
fn units<J: FnMut(usize) -> Judgement>(
    cands: &[Candidate],
    by_size: &[usize],
    grouped: bool,
    worst_tgid: u32,
    j: &mut Judged<'_, J>,
) -> (Vec<usize>, Vec<Unit>) {
    let single = |at: usize, i: usize| Unit {
        key: cands[i].unit,
        members: at..at + 1,
        footprint: cands[i].footprint.unwrap_or(0),
        rank: cands[i].rank,
        whole: false,
        worst: cands[i].pid == worst_tgid,
    };
    let known: Vec<usize> = by_size
        .iter()
        .copied()
        .filter(|&i| cands[i].footprint.is_some())
        .collect();
    if !grouped {
        let units = known
            .iter()
            .enumerate()
            .map(|(at, &i)| single(at, i))
            .collect();
        return (known, units);
    }
    // By unit, each unit's members largest first (the sort is stable on
    // the size order).
    let mut list = known;
    list.sort_by_key(|&i| cands[i].unit);
    let mut out = Vec::new();
    let mut start = 0;
    while start < list.len() {
        let key = cands[list[start]].unit;
        let end = start
            + list[start..]
                .iter()
                .take_while(|&&i| cands[i].unit == key)
                .count();
        let members = &list[start..end];
        // Every member is judged: the unit dies whole or not at all.
        let mut all = true;
        for &i in members {
            all &= j.killable(i);
        }
        if all {
            out.push(Unit {
                key,
                members: start..end,
                footprint: members.iter().map(|&i| size_of(cands, i)).sum(),
                rank: cands[members[0]].rank,
                whole: true,
                worst: members.iter().any(|&i| cands[i].pid == worst_tgid),
            });
        } else {
            for (at, &i) in members.iter().enumerate() {
                if j.killable(i) {
                    out.push(single(start + at, i));
                }
            }
        }
        start = end;
    }
    out.sort_by_key(|u| (Reverse(u.footprint), u.key));
    (list, out)
}

/// Whether a unit may be killed: a whole one was judged when it was
/// formed, a single process is judged now.
fn unit_ok<J: FnMut(usize) -> Judgement>(u: &Unit, list: &[usize], j: &mut Judged<'_, J>) -> bool {
    u.whole || j.killable(list[u.members.start])
}

fn size_of(cands: &[Candidate], i: usize) -> u64 {
    cands[i].footprint.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A table row: pid, name, MiB; its unit is its pid.
    fn proc(pid: u32, comm: &str, mib: u64) -> Candidate {
        Candidate {
            pid,
            comm: Comm::from(comm),
            footprint: Some(mib * MIB),
            unit: pid,
            rank: 0,
        }
    }

    fn stall(overage_mib: u64, worst: u32) -> Stall {
        Stall {
            overage: overage_mib * MIB,
            worst_tgid: worst,
            min_share_percent: 25,
            unowned_shmem: 0,
        }
    }

    /// Protected: the names in `protected` (as a rule would say).
    fn judge<'a>(
        cands: &'a [Candidate],
        protected: &'a [&str],
    ) -> impl FnMut(usize) -> Judgement + 'a {
        move |i| {
            let name = cands[i].comm.to_string();
            let why = protected
                .contains(&name.as_str())
                .then(|| Protection::Rule(format!("{name} is protected")));
            (why, cands[i].comm)
        }
    }

    fn run(s: &Stall, cands: &[Candidate], protected: &[&str]) -> Decision {
        decide(s, cands, false, judge(cands, protected))
    }

    fn victims(d: &Decision, cands: &[Candidate]) -> Vec<u32> {
        match d {
            Decision::Kill(picks) => picks
                .iter()
                .flat_map(|p| p.members.iter().map(|&i| cands[i].pid))
                .collect(),
            Decision::Unresolved(u) => panic!("expected victims, got: {u}"),
        }
    }

    fn unresolved(d: Decision) -> Unresolved {
        match d {
            Decision::Unresolved(u) => u,
            Decision::Kill(p) => panic!("expected nobody killed, got {p:?}"),
        }
    }

    #[test]
    fn the_largest_footprint_dies_not_the_one_that_stalls_most() {
        // The bystander (pid 20) is the task the kernel saw stall longest.
        let t = [proc(10, "hog", 70), proc(20, "server", 3)];
        assert_eq!(victims(&run(&stall(10, 20), &t, &[]), &t), [10]);
    }

    #[test]
    fn kernel_stall_time_breaks_footprint_ties() {
        let t = [proc(10, "a", 40), proc(20, "b", 40), proc(30, "c", 40)];
        assert_eq!(victims(&run(&stall(10, 20), &t, &[]), &t), [20]);
        assert_eq!(victims(&run(&stall(10, 30), &t, &[]), &t), [30]);
    }

    #[test]
    fn a_protected_hog_beside_innocents_holding_real_memory_kills_nobody() {
        // Issue 10's first finding: a 6 GiB protected hog stuck over
        // memory.high with a 64 MiB overage, beside an editor, cargo,
        // rust-analyzer and a browser that each hold more than a quarter of
        // the overage. Today they died one after another.
        let t = [
            proc(10, "tmux", 6144),
            proc(20, "vim", 40),
            proc(21, "cargo", 300),
            proc(22, "rust-analyzer", 2048),
            proc(23, "firefox", 1500),
        ];
        for worst in [10, 0] {
            let u = unresolved(run(&stall(64, worst), &t, &["tmux"]));
            assert!(
                matches!(&u, Unresolved::Driver { holder, .. } if holder.pid == 10),
                "worst {worst}: {u:?}"
            );
            let text = u.to_string();
            assert!(text.contains("tmux (pid 10, 6144 MiB"), "{text}");
            assert!(text.contains("protected"), "{text}");
        }
        // Unless the kernel saw the editor charge most: it is the one
        // growing, and it alone dies, not the larger innocents.
        assert_eq!(victims(&run(&stall(64, 20), &t, &["tmux"]), &t), [20]);
    }

    #[test]
    fn a_protected_process_that_only_sits_there_does_not_shield_the_hog() {
        // A large protected daemon holds steady; the hog growing beside it
        // is what the kernel saw stall: it dies.
        let t = [proc(10, "dockerd", 900), proc(20, "grep", 300)];
        assert_eq!(victims(&run(&stall(40, 20), &t, &["dockerd"]), &t), [20]);
    }

    #[test]
    fn protected_holders_that_leave_too_little_to_kill_are_named() {
        // Killing everything killable (8 MiB) cannot end a 30 MiB overage.
        let t = [
            proc(10, "db", 50),
            proc(11, "sshd", 60),
            proc(20, "grep", 8),
        ];
        let u = unresolved(run(&stall(30, 20), &t, &["db", "sshd"]));
        match &u {
            Unresolved::Held { holder, .. } => assert_eq!(holder.pid, 11, "the largest"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unreadable_process_counts_as_one_guard_may_not_kill() {
        let mut odd = proc(10, "odd", 0);
        odd.footprint = None;
        let t = [odd, proc(20, "server", 3)];
        let u = unresolved(run(&stall(40, 10), &t, &[]));
        match &u {
            Unresolved::Held { holder, .. } => {
                assert_eq!(holder.pid, 10);
                assert!(u.to_string().contains("not readable"), "{u}");
            }
            other => panic!("{other:?}"),
        }
        // Readable processes that cover the overage are still killed.
        let t = [odd, proc(20, "hog", 70)];
        assert_eq!(victims(&run(&stall(40, 20), &t, &[]), &t), [20]);
    }

    #[test]
    fn every_fixed_protection_is_honoured() {
        let t = [proc(1, "init", 5), proc(20, "grep", 50)];
        let d = decide(&stall(10, 0), &t, false, |i| {
            ((t[i].pid == 1).then_some(Protection::Init), t[i].comm)
        });
        assert_eq!(victims(&d, &t), [20]);
    }

    #[test]
    fn prefer_and_avoid_reorder_victims_that_can_relieve() {
        let mut t = [
            proc(10, "postgres", 70),
            proc(20, "rg", 30),
            proc(30, "make", 40),
        ];
        t[0].rank = -1;
        t[1].rank = 1;
        assert_eq!(victims(&run(&stall(10, 0), &t, &[]), &t), [20]);
        // A preferred process too small to help is passed over.
        t[1].footprint = Some(MIB);
        assert_eq!(victims(&run(&stall(10, 0), &t, &[]), &t), [30]);
    }

    #[test]
    fn a_process_too_small_to_help_is_not_killed() {
        // 40 MiB over high; the bystander's 3 MiB cannot end that.
        let t = [proc(20, "server", 3)];
        match unresolved(run(&stall(40, 20), &t, &[])) {
            Unresolved::NoRelief {
                largest: Some((20, _, _)),
                ..
            } => {}
            other => panic!("expected no relief, got {other:?}"),
        }
    }

    #[test]
    fn shmem_overage_is_reported_as_held_by_no_process() {
        let t = [proc(20, "server", 3)];
        let mut s = stall(40, 20);
        s.unowned_shmem = 40 * MIB;
        let u = unresolved(run(&s, &t, &[]));
        assert!(matches!(u, Unresolved::HeldByNoProcess { .. }), "{u:?}");
        assert!(u.to_string().contains("held by no process"), "{u}");
    }

    #[test]
    fn among_many_workers_one_at_a_time_is_taken() {
        // Ten workers of 8 MiB, 10 MiB over high: each is a real share.
        let t: Vec<Candidate> = (0..10)
            .map(|i| proc(100 + i, "worker", 8 + u64::from(i == 3)))
            .collect();
        assert_eq!(victims(&run(&stall(10, 0), &t, &[]), &t), [103]);
    }

    #[test]
    fn an_overage_spread_over_many_small_processes_is_covered_by_several() {
        // Sixty 2 MiB children of a small parent, 20 MiB over: none holds a
        // quarter (5 MiB) of it. Today nobody was killed, for ever.
        let mut t: Vec<Candidate> = (0..60).map(|i| proc(100 + i, "child", 2)).collect();
        t.push(proc(99, "make", 1));
        t.push(proc(98, "bystander", 1));
        let v = victims(&run(&stall(20, 0), &t, &[]), &t);
        assert_eq!(v.len(), 10, "{v:?}");
        assert!(v.iter().all(|p| (100..160).contains(p)), "{v:?}");
        // The batch stops as soon as the overage is covered.
        let v = victims(&run(&stall(9, 0), &t, &[]), &t);
        assert_eq!(v.len(), 5, "{v:?}");
    }

    #[test]
    fn an_overage_too_thin_for_one_batch_says_which_mode_ends_it() {
        let t: Vec<Candidate> = (0..200).map(|i| proc(100 + i, "tiny", 1)).collect();
        let u = unresolved(run(&stall(150, 0), &t, &[]));
        assert_eq!(u, Unresolved::TooSpread { overage: 150 * MIB });
        assert!(u.to_string().contains("process-group"), "{u}");
    }

    #[test]
    fn small_innocents_are_not_taken_when_a_protected_process_holds_the_memory() {
        // Killing all twenty 1 MiB helpers could free the 10 MiB overage,
        // but the protected holder is what drives it.
        let mut t: Vec<Candidate> = (0..20).map(|i| proc(100 + i, "helper", 1)).collect();
        t.push(proc(10, "tmux", 60));
        assert!(matches!(
            unresolved(run(&stall(10, 0), &t, &["tmux"])),
            Unresolved::Driver { holder, .. } if holder.pid == 10
        ));
    }

    #[test]
    fn in_group_modes_the_share_is_judged_per_group() {
        // A build: one process group of 30 compilers of 2 MiB (60 MiB), a
        // 20 MiB overage; no compiler holds a quarter, the group does.
        let mut t: Vec<Candidate> = (0..30).map(|i| proc(100 + i, "cc1", 2)).collect();
        for c in &mut t {
            c.unit = 100;
        }
        t.push(proc(50, "server", 4));
        let d = decide(&stall(20, 0), &t, true, judge(&t, &[]));
        match &d {
            Decision::Kill(picks) => {
                assert_eq!(picks.len(), 1, "{picks:?}");
                assert_eq!(picks[0].unit, 100);
                assert!(picks[0].whole);
                assert_eq!(picks[0].members.len(), 30);
            }
            other => panic!("{other:?}"),
        }
        // A group that holds a protected process is split: its killable
        // members are taken one by one, never the protected one.
        t[0].comm = Comm::from("sshd");
        let d = decide(&stall(20, 0), &t, true, judge(&t, &["sshd"]));
        let v = victims(&d, &t);
        assert!(!v.contains(&100), "{v:?}");
        assert!(v.iter().any(|p| (101..130).contains(p)), "{v:?}");
        if let Decision::Kill(picks) = &d {
            assert!(
                picks.iter().all(|p| !(p.unit == 100 && p.whole)),
                "{picks:?}"
            );
        }
    }

    #[test]
    fn an_empty_cgroup_has_no_victim() {
        assert!(matches!(
            unresolved(run(&stall(10, 0), &[], &[])),
            Unresolved::NoRelief { largest: None, .. }
        ));
    }

    #[test]
    fn the_judge_is_asked_only_about_the_processes_that_matter() {
        // The hog covers the overage alone: the 50 small ones are never
        // looked at (their exe, cmdline, oom_score_adj stay unread).
        let mut t: Vec<Candidate> = (0..50).map(|i| proc(100 + i, "small", 1)).collect();
        t.push(proc(10, "hog", 100));
        let mut asked = Vec::new();
        let d = decide(&stall(20, 10), &t, false, |i| {
            asked.push(t[i].pid);
            (None, t[i].comm)
        });
        assert_eq!(victims(&d, &t), [10]);
        assert_eq!(asked, [10]);
    }

    #[test]
    fn names_the_table_was_read_without_come_from_the_judge() {
        // The table is read without names (one small file per process);
        // the judge reads the name of what it judges.
        let mut t = [proc(10, "", 70), proc(20, "", 3)];
        t[0].comm = Comm::default();
        let d = decide(&stall(10, 10), &t, false, |i| {
            let why = (i == 0).then(|| Protection::Rule("exe matches".into()));
            (why, Comm::from(if i == 0 { "sshd" } else { "server" }))
        });
        let u = unresolved(d);
        assert!(u.to_string().contains("sshd (pid 10"), "{u}");
    }

    #[test]
    fn the_same_situation_keeps_its_key_while_sizes_grow() {
        let at = |mib| {
            unresolved(run(
                &stall(10, 10),
                &[proc(10, "sshd", mib), proc(20, "server", 3)],
                &["sshd"],
            ))
        };
        assert_eq!(at(64).key(), at(70).key());
        assert_ne!(at(64).to_string(), at(70).to_string());
    }
}
