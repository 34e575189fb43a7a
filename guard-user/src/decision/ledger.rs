//! What happened after each kill, per watched cgroup (and for the host):
//! the victims still exiting, and whether kills end the stalls they were
//! for. Two rules live here:
//!
//! - While a victim is exiting its memory is still charged, so the next
//!   verdict for its cgroup waits for it, but only until a timeout: a victim
//!   stuck in uninterruptible sleep must not block the next decision for
//!   ever.
//! - A circuit breaker: a kill that does not end the stall it was for was
//!   fruitless, a sign the decision is wrong there. It did not when its
//!   cgroup is still over the limit once its victims are gone; nor when it
//!   spared the task the kernel saw stall most, and the next verdict there
//!   names a task the kill left alive (the kill made room, and a grower it
//!   left alive filled it: a policy that steers guard away from the real
//!   hog). The verdict that led to a kill may name a bystander that stalled
//!   a moment longer than the hog, so any task the kill spared counts, not
//!   only that one.
//!   After `max_fruitless` of them in a row within `window`, nothing more is
//!   killed there until the window has passed. A kill that ends the stall
//!   resets the count, so a hog that a supervisor respawns dies every time
//!   (the next stall there is another process's).
//!
//! Time is passed in, so the rules are tested without waiting.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The breaker's and the exit wait's settings (from the policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_fruitless: u64,
    pub window: Duration,
    pub exit_timeout: Duration,
}

/// Whether a new decision may go ahead for a scope.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// A victim of the last kill is still exiting, within the timeout.
    Exiting {
        pid: u32,
    },
    /// The breaker is open: no kill before `until`.
    Limited {
        until: Instant,
    },
    /// The last kill's victims outlived the timeout; they no longer block,
    /// and the kill counts as fruitless (a verdict says the stall goes on).
    TimedOut {
        pids: Vec<u32>,
        waited: Duration,
        trip: Option<Trip>,
    },
}

/// The breaker just opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trip {
    pub fruitless_kills: u64,
    pub window: Duration,
}

#[derive(Debug)]
struct Inflight {
    /// Still waited for.
    pids: Vec<u32>,
    /// All of the kill's victims.
    all: Vec<u32>,
    deadline: Instant,
    killed_at: Instant,
    spared: Vec<u32>,
}

/// A kill judged by the verdict that followed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judged {
    pub fruitful: bool,
    /// The breaker opened with it.
    pub trip: Option<Trip>,
}

/// A kill whose victims are gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    pub victims: Vec<u32>,
    /// The tasks of the scope the kill left alive, sorted; empty when it
    /// took the task the kernel saw stall most.
    pub spared: Vec<u32>,
}

#[derive(Debug, Default)]
struct Entry {
    inflight: Option<Inflight>,
    /// When each fruitless kill in the current run was judged.
    fruitless: Vec<Instant>,
    limited_until: Option<Instant>,
    /// A kill that left its cgroup under the limit, waiting for the next
    /// verdict there to tell whether it ended the stall; the tasks it spared.
    pending: Option<Vec<u32>>,
}

impl Entry {
    fn idle(&self) -> bool {
        self.inflight.is_none()
            && self.fruitless.is_empty()
            && self.limited_until.is_none()
            && self.pending.is_none()
    }
}

#[derive(Debug)]
pub struct Ledger {
    limits: Limits,
    scopes: HashMap<PathBuf, Entry>,
}

impl Ledger {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            scopes: HashMap::new(),
        }
    }

    /// A reloaded policy's settings; what is in flight stays.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many scopes hold any state (it must stay bounded).
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// A new verdict in `key`, whose most stalled task is `worst` (0: none
    /// known), judges the last kill there if it left the cgroup under its
    /// limit: the stall is back, so that kill ended it only if what stalls
    /// now is not a task it spared.
    pub fn verdict(&mut self, key: &Path, now: Instant, worst: u32) -> Option<Judged> {
        let spared = self.scopes.get_mut(key)?.pending.take()?;
        let fruitful = worst == 0 || spared.binary_search(&worst).is_err();
        let trip = self.record(key, fruitful, now);
        self.tidy(key);
        Some(Judged { fruitful, trip })
    }

    /// May a decision go ahead in `key` now?
    pub fn gate(&mut self, key: &Path, now: Instant) -> Gate {
        let Some(e) = self.scopes.get_mut(key) else {
            return Gate::Open;
        };
        if let Some(until) = e.limited_until {
            if now < until {
                return Gate::Limited { until };
            }
            e.limited_until = None;
            e.fruitless.clear();
        }
        let gate = match e.inflight.take() {
            Some(f) if now < f.deadline => {
                let pid = f.pids.first().copied().unwrap_or(0);
                e.inflight = Some(f);
                Gate::Exiting { pid }
            }
            Some(f) => {
                let trip = self.record(key, false, now);
                Gate::TimedOut {
                    pids: f.pids,
                    waited: now.saturating_duration_since(f.killed_at),
                    trip,
                }
            }
            None => Gate::Open,
        };
        self.tidy(key);
        gate
    }

    /// A kill of `pids` in `key` just happened; `spared` are the tasks of
    /// the scope it left alive when it did not take the task the kernel saw
    /// stall most (else empty).
    pub fn killed(&mut self, key: &Path, pids: Vec<u32>, now: Instant, mut spared: Vec<u32>) {
        spared.sort_unstable();
        spared.dedup();
        let deadline = now + self.limits.exit_timeout;
        let e = self.scopes.entry(key.to_owned()).or_default();
        e.pending = None;
        e.inflight = Some(Inflight {
            all: pids.clone(),
            pids,
            deadline,
            killed_at: now,
            spared,
        });
    }

    /// Victim `pid` of `key` has exited (or is no longer waited for).
    /// When it was the last of its kill, the kill: the caller then judges
    /// it.
    pub fn ended(&mut self, key: &Path, pid: u32) -> Option<Done> {
        let e = self.scopes.get_mut(key)?;
        let f = e.inflight.as_mut()?;
        let before = f.pids.len();
        f.pids.retain(|&p| p != pid);
        if before == 0 || !f.pids.is_empty() {
            return None;
        }
        e.inflight.take().map(|f| Done {
            victims: f.all,
            spared: f.spared,
        })
    }

    /// Whether `pid` is a victim of `key` still waited for.
    pub fn waiting_for(&self, key: &Path, pid: u32) -> bool {
        self.scopes
            .get(key)
            .and_then(|e| e.inflight.as_ref())
            .is_some_and(|f| f.pids.contains(&pid))
    }

    /// A finished kill: is its scope back under its limit? If not, it was
    /// fruitless (the returned trip when that opens the breaker); if so,
    /// the next verdict there, if any, tells whether it ended the stall.
    pub fn judge(&mut self, key: &Path, done: &Done, under: bool, now: Instant) -> Option<Trip> {
        if !under {
            let trip = self.record(key, false, now);
            self.tidy(key);
            return trip;
        }
        self.scopes.entry(key.to_owned()).or_default().pending = Some(done.spared.clone());
        None
    }

    fn record(&mut self, key: &Path, fruitful: bool, now: Instant) -> Option<Trip> {
        let limits = self.limits;
        let e = self.scopes.entry(key.to_owned()).or_default();
        if fruitful {
            e.fruitless.clear();
            return None;
        }
        e.fruitless
            .retain(|&t| now.saturating_duration_since(t) < limits.window);
        e.fruitless.push(now);
        let count = e.fruitless.len() as u64;
        if count < limits.max_fruitless {
            return None;
        }
        e.fruitless.clear();
        e.limited_until = Some(now + limits.window);
        Some(Trip {
            fruitless_kills: count,
            window: limits.window,
        })
    }

    fn tidy(&mut self, key: &Path) {
        if self.scopes.get(key).is_some_and(Entry::idle) {
            self.scopes.remove(key);
        }
    }

    /// The scope is gone (its cgroup removed): forget all of it.
    pub fn forget(&mut self, key: &Path) {
        self.scopes.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ledger() -> (Ledger, PathBuf, Instant) {
        let l = Ledger::new(Limits {
            max_fruitless: 3,
            window: 60 * S,
            exit_timeout: 3 * S,
        });
        (l, PathBuf::from("/sys/fs/cgroup/seed"), Instant::now())
    }

    fn done(spared: &[u32]) -> Done {
        Done {
            victims: vec![10],
            spared: spared.to_vec(),
        }
    }

    #[test]
    fn the_next_decision_waits_for_a_victim_until_it_exits() {
        let (mut l, k, t) = ledger();
        assert_eq!(l.gate(&k, t), Gate::Open);
        l.killed(&k, vec![10, 11], t, vec![13, 12]);
        assert_eq!(l.gate(&k, t + S), Gate::Exiting { pid: 10 });
        assert_eq!(l.ended(&k, 10), None, "one of two");
        assert!(l.waiting_for(&k, 11));
        assert_eq!(
            l.ended(&k, 11),
            Some(Done {
                victims: vec![10, 11],
                spared: vec![12, 13]
            }),
            "the last one"
        );
        assert_eq!(l.gate(&k, t + S), Gate::Open);
        assert_eq!(l.ended(&k, 11), None, "already done");
    }

    #[test]
    fn a_victim_that_does_not_exit_blocks_only_until_the_timeout() {
        let (mut l, k, t) = ledger();
        l.killed(&k, vec![10], t, Vec::new());
        assert_eq!(l.gate(&k, t + 2 * S), Gate::Exiting { pid: 10 });
        match l.gate(&k, t + 3 * S) {
            Gate::TimedOut { pids, waited, trip } => {
                assert_eq!(pids, [10]);
                assert_eq!(waited, 3 * S);
                assert_eq!(trip, None, "one fruitless kill is no trip");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(l.gate(&k, t + 3 * S), Gate::Open);
        // Its exit, seen later, changes nothing.
        assert_eq!(l.ended(&k, 10), None);
    }

    #[test]
    fn kills_that_leave_the_cgroup_over_its_limit_open_the_breaker_for_the_window() {
        let (mut l, k, t) = ledger();
        assert_eq!(l.judge(&k, &done(&[]), false, t), None);
        assert_eq!(l.judge(&k, &done(&[]), false, t + S), None);
        let trip = l
            .judge(&k, &done(&[]), false, t + 2 * S)
            .expect("third trips");
        assert_eq!(trip.fruitless_kills, 3);
        assert_eq!(l.gate(&k, t + 30 * S), Gate::Limited { until: t + 62 * S });
        // Other cgroups are not affected.
        assert_eq!(l.gate(Path::new("/other"), t + 30 * S), Gate::Open);
        // After the window it may kill again, with a fresh count.
        assert_eq!(l.gate(&k, t + 62 * S), Gate::Open);
        assert_eq!(l.judge(&k, &done(&[]), false, t + 63 * S), None);
    }

    #[test]
    fn kills_that_spare_the_grower_are_fruitless_when_it_stalls_again() {
        // An avoid rule keeps the hog (pid 50) alive: each innocent killed
        // brings the cgroup under its limit for a moment, then the hog
        // fills it and the next verdict names it again.
        let (mut l, k, t) = ledger();
        for i in 0..2 {
            assert_eq!(l.judge(&k, &done(&[50, 51]), true, t + i * S), None);
            let j = l.verdict(&k, t + i * S + S / 2, 50).expect("judged");
            assert!(!j.fruitful, "kill {i}");
            assert_eq!(j.trip, None);
        }
        assert_eq!(l.judge(&k, &done(&[50, 51]), true, t + 2 * S), None);
        let j = l.verdict(&k, t + 3 * S, 50).expect("judged");
        assert_eq!(j.trip.map(|t| t.fruitless_kills), Some(3));
        assert!(matches!(l.gate(&k, t + 4 * S), Gate::Limited { .. }));
        assert_eq!(l.verdict(&k, t + 4 * S, 50), None, "nothing left to judge");
    }

    #[test]
    fn a_kill_that_spared_a_bystander_is_fruitless_when_the_hog_it_left_stalls_next() {
        // The verdict behind the first kill named the bystander (7), which
        // had stalled a moment longer; the kill took an innocent (10) and
        // left the bystander and the hog (8) alive. When the next verdict
        // names the hog, the kill did not end the stall.
        let (mut l, k, t) = ledger();
        l.killed(&k, vec![10], t, vec![8, 7, 11]);
        let d = l.ended(&k, 10).expect("its only victim");
        assert_eq!(d.spared, [7, 8, 11]);
        assert_eq!(l.judge(&k, &d, true, t), None);
        let j = l.verdict(&k, t + S, 8).expect("judged");
        assert!(!j.fruitful);
    }

    #[test]
    fn a_kill_that_ends_the_stall_resets_the_count() {
        let (mut l, k, t) = ledger();
        // A supervisor respawns the hog in the same cgroup: every kill took
        // the grower, and the next stall is a new hog's.
        for i in 0..300 {
            let now = t + i * S / 10;
            if let Some(j) = l.verdict(&k, now, 1000 + i) {
                assert!(j.fruitful, "respawn {i}");
            }
            assert_eq!(l.gate(&k, now), Gate::Open, "respawn {i}");
            l.killed(&k, vec![1000 + i], now, Vec::new());
            let d = l.ended(&k, 1000 + i).expect("its only victim");
            assert_eq!(l.judge(&k, &d, true, now), None);
        }
        // Two fruitless, one that ends it, two more: no trip.
        l.judge(&k, &done(&[]), false, t);
        l.judge(&k, &done(&[]), false, t);
        l.judge(&k, &done(&[7]), true, t);
        let j = l.verdict(&k, t, 8).expect("judged");
        assert!(j.fruitful, "another task stalls now");
        assert_eq!(l.judge(&k, &done(&[]), false, t), None);
        assert_eq!(l.judge(&k, &done(&[]), false, t), None);
        assert!(l.judge(&k, &done(&[]), false, t).is_some());
    }

    #[test]
    fn fruitless_kills_spread_wider_than_the_window_do_not_trip() {
        let (mut l, k, t) = ledger();
        for i in 0..10 {
            let at = t + i * 31 * S;
            assert_eq!(l.judge(&k, &done(&[]), false, at), None, "kill {i}");
        }
    }

    #[test]
    fn state_stays_bounded_while_scopes_come_and_go() {
        let (mut l, _, t) = ledger();
        for i in 0..1000 {
            let k = PathBuf::from(format!("/sys/fs/cgroup/loop/hog-{i}.scope"));
            l.killed(&k, vec![i], t, Vec::new());
            let d = l.ended(&k, i).expect("its only victim");
            l.judge(&k, &d, true, t);
            // Removed once its hog is dead, as the daemon sees it.
            l.forget(&k);
        }
        assert!(l.is_empty(), "{} scopes kept", l.len());
    }
}
