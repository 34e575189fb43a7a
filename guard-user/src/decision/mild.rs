//! A stall at a mild overage must last before anyone is killed for it.
//!
//! The kernel's penalty for a cgroup over memory.high grows with the square
//! of the overage: one charge batch (64 pages) sleeps `f² · 64` seconds at
//! an overage of `f` (mm/memcontrol.c, calculate_high_delay: the overage
//! scaled by 2^20, squared, times HZ, shifted right by 34). Under about
//! 2.8 % that is under 50 ms a batch: tasks still move, and a burst that
//! frees its memory a moment later gets through by itself. Its stall can
//! still pass the budget on a slow or loaded machine (the failed reclaim
//! passes add up), and a kill then takes an innocent. So a mild stall is
//! acted on only once its verdicts have kept coming, each within
//! [`max_gap`] of the last, for [`PERSIST_NS`]. A stall past the mild
//! range is acted on at its first verdict, as before: that is the
//! livelock guard exists for. After a held verdict the daemon asks the
//! kernel to look again after 20 ms rather than the whole verdict interval
//! (`Probes::recheck`), so a stall that grows out of the mild range (a hog's
//! next huge page, and the long penalty sleep that comes with it) is acted
//! on at its next charge, not 200 ms later.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

/// Overages below this share of memory.high (per mille) are mild.
pub const MILD_PERMILLE: u64 = 28;

/// How long a mild stall's verdicts must keep coming before it is acted on.
pub const PERSIST_NS: u64 = 500_000_000;

/// The fewest cgroups whose mild stalls are followed; past it, those whose
/// verdicts stopped are forgotten.
const KEEP: usize = 1024;

/// Whether an overage of `overage` bytes over `high` is mild.
pub fn is_mild(overage: u64, high: u64) -> bool {
    high != u64::MAX && u128::from(overage) * 1000 < u128::from(high) * u128::from(MILD_PERMILLE)
}

/// The longest pause between two verdicts of one stall: the kernel asks
/// again once per verdict interval while the stall goes on, so twice that
/// (at least 400 ms) means it stopped in between.
pub fn max_gap(verdict_interval: Duration) -> u64 {
    let twice = u64::try_from(verdict_interval.as_nanos().saturating_mul(2)).unwrap_or(u64::MAX);
    twice.max(400_000_000)
}

/// The mild stalls seen, by the cgroup over memory.high: when their
/// verdicts began and when the last came (kernel monotonic ns).
#[derive(Debug, Default)]
pub struct MildStalls {
    stalls: HashMap<PathBuf, (u64, u64)>,
}

impl MildStalls {
    /// A verdict at `ktime_ns` for a mild stall of `key`: Ok with how long
    /// it has lasted once that is at least [`PERSIST_NS`], else Err with
    /// how long so far (0 for the first verdict of a stall).
    pub fn lasted(&mut self, key: &Path, ktime_ns: u64, gap_ns: u64) -> Result<u64, u64> {
        if self.stalls.len() >= KEEP && !self.stalls.contains_key(key) {
            self.stalls
                .retain(|_, (_, last)| ktime_ns.saturating_sub(*last) <= gap_ns);
        }
        let entry = self
            .stalls
            .entry(key.to_owned())
            .or_insert((ktime_ns, ktime_ns));
        let (first, last) = entry;
        // A verdict older than the last one (a batch out of order) neither
        // breaks nor extends the stall.
        if ktime_ns.saturating_sub(*last) > gap_ns {
            *first = ktime_ns;
        }
        *last = (*last).max(ktime_ns);
        let lasted = last.saturating_sub(*first);
        if lasted >= PERSIST_NS {
            Ok(lasted)
        } else {
            Err(lasted)
        }
    }

    pub fn forget(&mut self, key: &Path) {
        self.stalls.remove(key);
    }

    pub fn clear(&mut self) {
        self.stalls.clear();
    }

    pub fn len(&self) -> usize {
        self.stalls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stalls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn mild_is_under_the_overage_whose_penalty_reaches_50_ms_a_batch() {
        let high = 64 << 20;
        // The benign bursts: about 1.3 MiB over 64 MiB.
        assert!(is_mild(1260 << 10, high));
        // The seed incident at its kill: 3 MiB over 64 MiB.
        assert!(!is_mild(3 << 20, high));
        // The boundary, and that the penalty there is about 50 ms.
        let edge = (high * MILD_PERMILLE).div_ceil(1000);
        assert!(!is_mild(edge, high));
        assert!(is_mild(edge - 1, high));
        let f = MILD_PERMILLE as f64 / 1000.0;
        let penalty_ms = f * f * 64.0 * 1000.0;
        assert!((45.0..55.0).contains(&penalty_ms), "{penalty_ms} ms");
        // No memory.high (the host): never mild.
        assert!(!is_mild(1, u64::MAX));
        // Huge values do not overflow.
        assert!(!is_mild(u64::MAX - 1, u64::MAX - 1));
    }

    #[test]
    fn a_stall_counts_once_its_verdicts_kept_coming_for_the_persist_time() {
        let mut m = MildStalls::default();
        let key = Path::new("/sys/fs/cgroup/burst");
        let gap = max_gap(Duration::from_millis(200));
        let t0 = 1_000 * MS;
        assert_eq!(m.lasted(key, t0, gap), Err(0));
        assert_eq!(m.lasted(key, t0 + 200 * MS, gap), Err(200 * MS));
        assert_eq!(m.lasted(key, t0 + 400 * MS, gap), Err(400 * MS));
        assert_eq!(m.lasted(key, t0 + 600 * MS, gap), Ok(600 * MS));
        // It goes on counting while it lasts.
        assert_eq!(m.lasted(key, t0 + 800 * MS, gap), Ok(800 * MS));
    }

    #[test]
    fn bursts_a_second_apart_never_add_up() {
        let mut m = MildStalls::default();
        let key = Path::new("/sys/fs/cgroup/burst");
        let gap = max_gap(Duration::from_millis(200));
        for burst in 0..10 {
            let start = burst * 1_000 * MS;
            assert_eq!(m.lasted(key, start, gap), Err(0));
            assert_eq!(m.lasted(key, start + 200 * MS, gap), Err(200 * MS));
        }
    }

    #[test]
    fn an_out_of_order_verdict_neither_breaks_nor_extends_a_stall() {
        let mut m = MildStalls::default();
        let key = Path::new("/a");
        let gap = max_gap(Duration::from_millis(200));
        assert_eq!(m.lasted(key, 1_000 * MS, gap), Err(0));
        assert_eq!(m.lasted(key, 1_300 * MS, gap), Err(300 * MS));
        assert_eq!(m.lasted(key, 1_100 * MS, gap), Err(300 * MS));
        assert_eq!(m.lasted(key, 1_600 * MS, gap), Ok(600 * MS));
    }

    #[test]
    fn cgroups_are_followed_apart_and_the_books_stay_bounded() {
        let mut m = MildStalls::default();
        let gap = max_gap(Duration::from_millis(10));
        assert_eq!(gap, 400 * MS);
        assert_eq!(max_gap(Duration::from_secs(1)), 2_000 * MS);
        for i in 0..(3 * KEEP as u64) {
            let key = PathBuf::from(format!("/c{i}"));
            // Each a second after the last: all but the newest are over.
            assert_eq!(m.lasted(&key, i * 1_000 * MS, gap), Err(0));
        }
        assert!(m.len() <= KEEP, "{} kept", m.len());
        let a = Path::new("/a");
        let b = Path::new("/b");
        let t = 10_000_000 * MS;
        assert_eq!(m.lasted(a, t, gap), Err(0));
        assert_eq!(m.lasted(b, t + 300 * MS, gap), Err(0));
        assert_eq!(m.lasted(a, t + 300 * MS, gap), Err(300 * MS));
        m.forget(a);
        assert_eq!(m.lasted(a, t + 600 * MS, gap), Err(0));
        m.clear();
        assert_eq!(m.len(), 0);
    }
}
