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
mod tests;
