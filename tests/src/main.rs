//! `guard-scenario`: the VM side of guard's behaviour tests.
//!
//! `cargo xtask test` boots each kernel with an initramfs whose /init runs
//! `guard-scenario <scenario>`; this program builds the cgroups, starts the
//! workloads (and the guard, unless it is the control run), measures from
//! the kernel's own trace, and prints one `GUARD-RESULT {json}` line.

mod scenario;
mod trace;
mod workload;

use std::time::Duration;

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("hog") => workload::hog(arg(1).and_then(|s| s.parse().ok()).unwrap_or(100)),
        Some("bystander") => workload::bystander(Duration::from_millis(
            arg(1).and_then(|s| s.parse().ok()).unwrap_or(5000),
        )),
        Some(name) => {
            let result = scenario::run(name);
            println!("GUARD-RESULT {result}");
        }
        None => {
            eprintln!("usage: guard-scenario hog MIB | bystander MS | seed | control");
            std::process::exit(2);
        }
    }
}
