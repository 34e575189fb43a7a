//! What `cargo xtask bench` measures, in order: shared by the guest
//! (tests/src/bench.rs) and the host (xtask/src/bench.rs, which includes
//! this file by path), so that both always agree.

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
