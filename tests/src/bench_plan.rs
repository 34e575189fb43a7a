//! What `cargo xtask bench` measures, in order, and how it sums up:
//! shared by the guest (tests/src/bench.rs) and the host (xtask/src/bench.rs,
//! which includes this file by path), so that both always agree.

/// The tools, one at a time: nothing, the three peers (systemd-oomd twice),
/// and the guard.
pub const TOOLS: [&str; 6] = [
    "none",
    "earlyoom",
    "oomd",
    "systemd-oomd",
    "systemd-oomd-aggressive",
    "guard",
];

/// The cases run under each tool.
pub const CASES: [&str; 3] = ["seed-siblings", "seed-shared", "benign"];

/// The median (the mean of the middle two for an even count).
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
    }
}
