//! `guard-scenario`: the VM side of guard's behaviour tests.
//!
//! `cargo xtask test` boots each kernel with an initramfs whose /init runs
//! `guard-scenario <scenario>`; this program builds the cgroups, starts the
//! workloads (and the guard, unless it is the control run), measures from
//! the kernel's own trace, and prints one `GUARD-RESULT {json}` line.
//! `guard-scenario list` prints the scenarios as xtask boots them.
//!
//! The same binary is the workloads, started by the scenarios as
//! `/proc/self/exe <workload> ARGS`.

mod bench;
mod bench_plan;
mod scenario;
mod scrape;
mod summary;
mod trace;
mod units;
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

/// The value of `guard.scenario=` on a kernel command line.
fn scenario_on_cmdline(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("guard.scenario="))
        .filter(|name| !name.is_empty())
}

const USAGE: &str = "usage: guard-scenario SCENARIO | list | from-cmdline | hog MIB [NAME [OOM_SCORE_ADJ]] | \
    bystander MS | nibbler KIB THREADS [NAME [GO_FILE]] | grower MIB [NAME] | worker-parent N MIB | worker MIB | burst OVER_KIB ROUNDS INTERVAL_MS LIMIT_MIB GIVE_UP_MS | \
    filecache PATH MIB READS | idle NAME | holder MIB [NAME] | odd-name MIB | leader-exit MIB [NAME] | \
    memfd MIB [NAME] | stuck MIB WRITE_MIB DEVICE [NAME] | small-parent N FIRST_KIB TOTAL_KIB | \
    small FIRST_KIB TOTAL_KIB | ptyhold MS OUTFILE | bench";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let num = |i: usize, default: u64| -> u64 {
        match arg(i) {
            None => default,
            Some(s) => s.parse().unwrap_or_else(|_| {
                eprintln!("guard-scenario: argument {s:?} is not a number\n{USAGE}");
                std::process::exit(2)
            }),
        }
    };
    let ms = |i: usize, default: u64| Duration::from_millis(num(i, default));
    match arg(0) {
        Some("hog") => workload::hog(
            num(1, 100) as usize,
            arg(2).unwrap_or("hog"),
            arg(3).map(|s| {
                s.parse().unwrap_or_else(|_| {
                    eprintln!("guard-scenario: bad oom_score_adj {s:?}");
                    std::process::exit(2)
                })
            }),
        ),
        Some("bystander") => workload::bystander(ms(1, 5000)),
        Some("nibbler") => workload::nibbler(
            num(1, 2048) as usize,
            num(2, 1) as usize,
            arg(3).unwrap_or("nibbler"),
            arg(4).unwrap_or("/run/guard-go"),
        ),
        Some("grower") => workload::grower(num(1, 700) as usize, arg(2).unwrap_or("grower")),
        Some("worker-parent") => workload::workers(num(1, 4) as usize, num(2, 30) as usize),
        Some("worker") => workload::worker(num(1, 30) as usize),
        Some("burst") => workload::burst(
            num(1, 1024),
            num(2, 5) as u32,
            ms(3, 1000),
            num(4, 80) as usize,
            ms(5, 3000),
        ),
        Some("filecache") => match arg(1) {
            Some(path) => workload::filecache(path, num(2, 300) as usize, num(3, 3) as u32),
            None => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        },
        Some("idle") => workload::idle(arg(1).unwrap_or("idle")),
        Some("ptyhold") => workload::ptyhold(ms(1, 60_000), arg(2).unwrap_or("/tmp/ptyhold.out")),
        Some("holder") => workload::holder(num(1, 8) as usize, arg(2).unwrap_or("holder")),
        Some("odd-name") => workload::odd_name(num(1, 100) as usize),
        Some("leader-exit") => {
            workload::leader_exit(num(1, 100) as usize, arg(2).unwrap_or("threads"))
        }
        Some("memfd") => workload::memfd(num(1, 100) as usize, arg(2).unwrap_or("memfd")),
        Some("stuck") => match arg(3) {
            Some(device) => workload::stuck(
                num(1, 100) as usize,
                num(2, 12) as usize,
                device,
                arg(4).unwrap_or("stuck"),
            ),
            None => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        },
        Some("small-parent") => {
            let (first, total) = (num(2, 1536).to_string(), num(3, 2048).to_string());
            workload::parent(
                "small-parent",
                num(1, 60) as usize,
                &["small", &first, &total],
            );
        }
        Some("small") => workload::small(num(1, 1536) as usize, num(2, 2048) as usize),
        Some("list") => println!("{}", scenario::list()),
        // A systemd guest's guard-test.service: the scenario xtask named
        // on the kernel command line.
        Some("from-cmdline") => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            let name = scenario_on_cmdline(&cmdline).unwrap_or_else(|| {
                eprintln!("guard-scenario: no guard.scenario= on the kernel command line");
                std::process::exit(2)
            });
            println!("GUARD-RESULT {}", scenario::run(name));
        }
        Some("bench") => {
            let result = bench::run();
            println!("GUARD-RESULT {result}");
        }
        Some(name) => {
            let result = scenario::run(name);
            println!("GUARD-RESULT {result}");
        }
        None => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scenario_on_cmdline;

    #[test]
    fn the_scenario_is_read_from_the_kernel_command_line() {
        let cmdline = "console=ttyS0 root=/dev/nvme0n1 rw quiet panic=-1 guard.scenario=systemd\n";
        assert_eq!(scenario_on_cmdline(cmdline), Some("systemd"));
        assert_eq!(scenario_on_cmdline("console=ttyS0 guard.scenario="), None);
        assert_eq!(scenario_on_cmdline("console=ttyS0"), None);
    }
}
