//! The VM matrix: every scenario on every kernel, one boot each, and the
//! table `cargo xtask test` ends with.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::vm;

/// Scenarios, in the order they run on each kernel.
pub const SCENARIOS: [&str; 16] = [
    "control",
    "seed",
    "nested",
    "workers",
    "protected",
    "benign",
    "cgroup-kill",
    "sighup",
    "pid-reuse",
    "stream",
    "host",
    "odd",
    "many-small",
    "respawn",
    "breaker",
    "stuck-exit",
];

/// Guest RAM per scenario, MiB: `host` runs the machine itself out of
/// memory, which is quicker and closer to a real box with a small VM.
fn memory_mib(scenario: &str) -> u32 {
    if scenario == "host" { 512 } else { 1024 }
}

/// Scenarios that get a scratch disk (a sparse raw image, fresh per boot,
/// attached as NVMe): they need a real filesystem, the initramfs being RAM,
/// or (stuck-exit) a slow device to block on.
const WITH_DISK: [&str; 3] = ["benign", "host", "stuck-exit"];
const DISK_BYTES: u64 = 512 << 20;

/// Extra `-drive` options of a scenario's scratch disk: stuck-exit's is
/// throttled to 1 MiB/s, so that a 12 MiB O_DIRECT write keeps its writer in
/// uninterruptible sleep for seconds.
fn drive_options(scenario: &str) -> &'static str {
    if scenario == "stuck-exit" {
        "throttling.bps-total=1048576"
    } else {
        ""
    }
}

/// How long one boot may take before qemu is killed: respawn runs a few
/// hundred kill cycles.
fn timeout(scenario: &str) -> Duration {
    Duration::from_secs(if scenario == "respawn" { 600 } else { 240 })
}

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
ip link set lo up
scenario=$(sed -n 's/.*guard\.scenario=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "GUARD-KERNEL $(uname -r)"
/bin/guard-scenario "$scenario"
echo "GUARD-DONE"
poweroff -f
"#;

const RESULT: &str = "GUARD-RESULT ";
/// Boots after a guest kernel fault before a cell counts as failed.
const MAX_RETRIES: usize = 2;

fn parse_result(console: &str, log: &Path) -> Value {
    console
        .lines()
        .find_map(|l| l.find(RESULT).map(|i| l[i + RESULT.len()..].trim().to_owned()))
        .and_then(|j| serde_json::from_str::<Value>(&j).ok())
        .unwrap_or_else(|| {
            serde_json::json!({"pass": false, "failures": [format!("no result line; console in {}", log.display())]})
        })
}

struct Row {
    kernel: String,
    scenario: String,
    pass: bool,
    result: Value,
    secs: f64,
}

fn fmt_num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".to_owned())
}

fn summary(scenario: &str, r: &Value) -> String {
    let text = match scenario {
        "systemd" => crate::systemd_vm::summary(r),
        "seed" | "nested" => format!(
            "first no-progress->SIGKILL {} ms; verdict->kill {} us; bystander worst {} ms during, {} ms after; hooks {}",
            fmt_num(&r["detect_to_kill_ms"], 1),
            fmt_num(&r["verdict_to_kill_us"], 0),
            fmt_num(&r["bystander_worst_during_ms"], 0),
            fmt_num(&r["bystander_worst_after_ms"], 1),
            r["throttle_hooks"],
        ),
        "control" => format!(
            "hog alive after 10 s; pressure full {}% (avg10 {}); high events {}; oom_kill {}; bystander worst {} ms",
            fmt_num(
                &(r["pressure_full_share"].as_f64().map(|x| x * 100.0).into()),
                0
            ),
            fmt_num(&r["pressure_full_avg10"], 0),
            r["high_events"],
            r["oom_kills"],
            fmt_num(&r["bystander_worst_during_ms"], 0),
        ),
        "workers" => format!(
            "{} of 4 workers killed one at a time (exit->next kill {} ms), {} survive; first no-progress->SIGKILL {} ms; memory.current {} MiB at the end (high {} MiB); bystander worst {} ms",
            r["kills"],
            fmt_list(&r["exit_to_next_kill_ms"], ", "),
            r["survivors"],
            fmt_num(&r["detect_to_kill_ms"], 1),
            mib(&r["memory_current_end"]),
            mib(&r["memory_high"]),
            fmt_num(&r["bystander_worst_ms"], 0),
        ),
        "protected" => format!(
            "exe (/usr/sbin/sshd beside 3 innocents): {} killed, {}/3 innocents alive, \"stall unresolved\" {} ms after memory.high was crossed (holder_pid {}); adj (oom_score_adj -1000): {} killed, unresolved after {} ms; copy (/tmp/sshd): {} killed, first no-progress->SIGKILL {} ms; bystander worst {} / {} / {} ms",
            show(&r["exe_kills"]),
            show(&r["exe_innocents_alive"]),
            fmt_num(&r["exe_over_high_to_unresolved_ms"], 0),
            show(&r["exe_holder_pid"]),
            show(&r["adj_kills"]),
            fmt_num(&r["adj_over_high_to_unresolved_ms"], 0),
            show(&r["copy_kills"]),
            fmt_num(&r["copy_detect_to_kill_ms"], 1),
            fmt_num(&r["exe_bystander_worst_ms"], 0),
            fmt_num(&r["adj_bystander_worst_ms"], 0),
            fmt_num(&r["copy_bystander_worst_ms"], 0),
        ),
        "benign" => format!(
            "nothing killed; bursts (thp {}): up to {} KiB over high for {} ms each, {} high events, {}/{} reclaim passes without progress, pressure full {} ms; file cache ({}): {} high events, {}/{} passes without progress, {} ms; guard verdicts {}",
            r["thp"].as_str().unwrap_or("-"),
            r["burst_peak_over_high_kib"],
            fmt_list(&r["burst_over_high_ms"], "/"),
            r["burst_high_events"],
            r["burst_no_progress_passes"],
            r["burst_passes"],
            fmt_num(&r["burst_pressure_full_ms"], 0),
            r["scratch_fs"].as_str().unwrap_or("-"),
            r["cache_high_events"],
            r["cache_no_progress_passes"],
            r["cache_passes"],
            r["cache_ms"],
            r["guard_verdicts"],
        ),
        "cgroup-kill" => format!(
            "kill_mode {}, killed_cgroup {}; SIGKILLs to {}; first no-progress->SIGKILL {} ms; helper dead {} ms after the hog",
            r["kill_mode"].as_str().unwrap_or("-"),
            r["killed_cgroup"].as_str().unwrap_or("-"),
            r["sigkill_targets"],
            fmt_num(&r["detect_to_kill_ms"], 1),
            fmt_num(&r["helper_after_hog_ms"], 1),
        ),
        "sighup" => format!(
            "bad file kept the policy ({}); hog killed in mode {}; first no-progress->SIGKILL {} ms",
            r["reload_error"].as_str().unwrap_or("-"),
            r["kill_mode"].as_str().unwrap_or("-"),
            fmt_num(&r["detect_to_kill_ms"], 1),
        ),
        "pid-reuse" => format!(
            "held at pidfd_open: gone -> {}; reused -> {}",
            r["gone_reason"].as_str().unwrap_or("-"),
            r["reused_reason"].as_str().unwrap_or("-"),
        ),
        "stream" => format!(
            "idle daemon woke {} times in 5 s; guard trace --json: verdict + kill of hog {} (verdict->kill {} ms in the stream), {} reclaim / {} throttle / {} sample records; oom_kill of {} ({}) in {}; daemon log {} records, report names both victims, SVG {} bytes; /metrics: kills {}, memcg_reclaim_end {} runs at {} ns each",
            r["idle_wakeups"],
            r["hog_pid"],
            fmt_num(&r["stream_verdict_to_kill_ms"], 1),
            r["trace_reclaim_records"],
            r["trace_throttle_records"],
            r["trace_sample_records"],
            r["oom_hog_pid"],
            r["oom_kill_comm"].as_str().unwrap_or("-"),
            r["oom_kill_cgroup"].as_str().unwrap_or("-"),
            r["daemon_log_records"],
            r["report_svg_bytes"],
            r["metrics_kills"],
            r["metrics_reclaim_end_runs"],
            fmt_num(&r["metrics_reclaim_end_ns_per_run"], 0),
        ),
        "host" => format!(
            "{} MiB RAM, no swap, {} MiB page cache: hog {} SIGKILLed by the guard {} ms after the first direct reclaim pass ({} passes before the kill, {} without progress; verdict->kill {} us, MemAvailable {} MiB at the kill); kernel OOM victims {}; protected stand-in alive {}",
            r["mem_total_kib"]
                .as_u64()
                .map_or("-".to_owned(), |k| (k / 1024).to_string()),
            r["cached_kib_before"]
                .as_u64()
                .map_or("-".to_owned(), |k| (k / 1024).to_string()),
            r["hog_pid"],
            fmt_num(&r["first_direct_reclaim_to_kill_ms"], 1),
            r["direct_reclaim_passes"],
            r["direct_passes_without_progress"],
            fmt_num(&r["verdict_to_kill_us"], 0),
            mib(&r["available_at_kill_bytes"]),
            r["kernel_oom_victims"],
            r["stand_in_alive"],
        ),
        "odd" => format!(
            "non-UTF-8 name: killed {}, first no-progress->SIGKILL {} ms, logged as {}; exited leader (thread holds {} MiB): killed {}, {} ms, logged as {}; memfd (RssShmem {} MiB): killed {}, {} ms, logged as {}",
            show(&r["name_killed"]),
            fmt_num(&r["name_detect_to_kill_ms"], 1),
            show(&r["name_logged_comm"]),
            kib_as_mib(&r["leader_thread_rss_anon_kib"]),
            show(&r["leader_killed"]),
            fmt_num(&r["leader_detect_to_kill_ms"], 1),
            show(&r["leader_logged_comm"]),
            kib_as_mib(&r["memfd_rss_shmem_kib"]),
            show(&r["memfd_killed"]),
            fmt_num(&r["memfd_detect_to_kill_ms"], 1),
            show(&r["memfd_logged_comm"]),
        ),
        "many-small" => format!(
            "60 children of 2 MiB, {} MiB over memory.high at the go; {} kills (batches {}), {} victims, {} survive; settled {} ms after the go; memory.current {} MiB at the end (high {} MiB); bystander worst {} ms",
            mib(&r["overage_at_go"]),
            show(&r["kills"]),
            fmt_list(&r["batches"], "/"),
            show(&r["victims_total"]),
            show(&r["survivors"]),
            fmt_num(&r["settled_after_ms"], 0),
            mib(&r["memory_current_end"]),
            mib(&r["memory_high"]),
            fmt_num(&r["bystander_worst_ms"], 0),
        ),
        "respawn" => format!(
            "{} cycles in {} s ({} ms median, {} ms max), {} kills logged, {} hogs SIGKILLed by the guard; guard fds {} after cycle 20 -> {} at the end, VmRSS {} -> {} KiB",
            show(&r["cycles"]),
            fmt_num(&r["seconds"], 0),
            show(&r["cycle_median_ms"]),
            show(&r["cycle_max_ms"]),
            show(&r["kills"]),
            show(&r["sigkills_from_guard"]),
            show(&r["fds_at_sample"]),
            show(&r["fds_end"]),
            show(&r["rss_at_sample_kib"]),
            show(&r["rss_end_kib"]),
        ),
        "breaker" => format!(
            "{} kills {}; kill limit {} ms after the hog started ({} line(s), fruitless_kills {}), kill_limit event {}; hog alive {}; {}/6 innocents alive",
            show(&r["kills"]),
            show(&r["killed_pids"]),
            fmt_num(&r["limit_after_ms"], 0),
            show(&r["limit_lines"]),
            show(&r["fruitless_kills"]),
            show(&r["kill_limit_event"]),
            show(&r["hog_alive"]),
            show(&r["innocents_alive"]),
        ),
        "stuck-exit" => format!(
            "second hog killed {} ms after the first victim (stalling from {} ms); first victim {} at 3 s, exited {} ms after its SIGKILL; guard logged it still exiting in state {} after {} ms",
            fmt_num(&r["kill_gap_ms"], 0),
            fmt_num(&r["second_stall_after_first_kill_ms"], 0),
            show(&r["first_state_after_timeout"]),
            fmt_num(&r["first_exit_after_kill_ms"], 0),
            show(&r["logged_state"]),
            show(&r["logged_waited_ms"]),
        ),
        _ => String::new(),
    };
    match r["retried_after"].as_array() {
        Some(faults) => format!(
            "{text}; booted again after {} guest kernel fault(s)",
            faults.len()
        ),
        None => text,
    }
}

/// A fresh sparse image of DISK_BYTES at `path` (an existing one is
/// replaced: each boot formats its own).
fn scratch_disk(path: &Path) -> Result<PathBuf> {
    if path.to_string_lossy().contains(',') {
        anyhow::bail!(
            "{}: qemu's -drive option cannot take a path with a comma",
            path.display()
        );
    }
    let _ = fs::remove_file(path);
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(DISK_BYTES)
        .with_context(|| format!("sizing {}", path.display()))?;
    Ok(path.to_owned())
}

/// An array of numbers, each without decimals, or "-".
fn fmt_list(v: &Value, sep: &str) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| fmt_num(x, 0))
                .collect::<Vec<_>>()
                .join(sep)
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// A value as a person reads it: strings bare, null as "-".
fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// KiB as whole MiB, or "-".
fn kib_as_mib(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "-".to_owned(), |k| (k / 1024).to_string())
}

/// Bytes as MiB with one decimal, or "-".
fn mib(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:.1}", x / 1048576.0))
        .unwrap_or_else(|| "-".to_owned())
}

/// Runs the matrix; prints the table; true when every cell passed.
pub fn run_matrix(
    bin: &Path,
    only_scenario: Option<&str>,
    only_kernel: Option<&str>,
) -> Result<bool> {
    let kernels = vm::ensure_kernels()?;
    let work = crate::workspace_root().join("target").join("vm");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = work.join("initramfs.cpio");
    let files: Vec<(PathBuf, String)> = vec![
        (bin.join("guard"), "bin/guard".to_owned()),
        (bin.join("guard-scenario"), "bin/guard-scenario".to_owned()),
        // At sshd's installed path, root-owned and mode 0755 like the real
        // one: what the default policy protects by identity.
        (bin.join("guard-scenario"), "usr/sbin/sshd".to_owned()),
    ];
    vm::build_initramfs(&initrd, &files, INIT)?;

    let mut rows = Vec::new();
    for k in kernels
        .iter()
        .filter(|k| only_kernel.is_none_or(|o| o == k.label))
    {
        for s in SCENARIOS
            .iter()
            .filter(|s| only_scenario.is_none_or(|o| s.contains(o)))
        {
            eprintln!("xtask: [{} {}] booting {} ...", k.label, s, k.release);
            let log = work.join(format!("{}-{}.log", k.label, s));
            let started = Instant::now();
            let mut retried = Vec::new();
            let result = loop {
                let disk = WITH_DISK
                    .contains(s)
                    .then(|| scratch_disk(&work.join(format!("{}-{}.img", k.label, s))))
                    .transpose()?;
                let append = format!("guard.scenario={s}");
                let timeout = timeout(s);
                let console = match &disk {
                    Some(d) => vm::run_qemu_with_disk(
                        &k.vmlinuz,
                        &initrd,
                        memory_mib(s),
                        &append,
                        timeout,
                        &log,
                        Some((d, drive_options(s))),
                    ),
                    None => {
                        vm::run_qemu(&k.vmlinuz, &initrd, memory_mib(s), &append, timeout, &log)
                    }
                };
                if let Some(d) = &disk {
                    let _ = fs::remove_file(d);
                }
                match console {
                    Ok(text) => break parse_result(&text, &log),
                    // The guest kernel broke down (an emulator fault): the
                    // scenario never ran to an end. Boot again, and say so.
                    Err(e)
                        if format!("{e:#}").contains(vm::GUEST_FAULT)
                            && retried.len() < MAX_RETRIES =>
                    {
                        let kept = log.with_extension(format!("fault{}.log", retried.len() + 1));
                        let _ = fs::copy(&log, &kept);
                        let first = format!("{e:#}")
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        eprintln!(
                            "xtask: [{} {}] {first}; booting again (log kept in {})",
                            k.label,
                            s,
                            kept.display()
                        );
                        retried.push(first);
                    }
                    Err(e) => {
                        break serde_json::json!({"pass": false, "failures": [format!("{e:#}")]});
                    }
                }
            };
            let mut result = result;
            if !retried.is_empty() {
                result["retried_after"] = serde_json::json!(retried);
            }
            let secs = started.elapsed().as_secs_f64();
            let pass = result["pass"].as_bool().unwrap_or(false);
            eprintln!(
                "xtask: [{} {}] {} in {secs:.0} s: {}",
                k.label,
                s,
                if pass { "pass" } else { "FAIL" },
                summary(s, &result)
            );
            if !pass {
                // Kept apart so a later passing run does not overwrite it.
                let kept = log.with_extension("failed.log");
                let _ = fs::copy(&log, &kept);
                eprintln!("xtask:   failures: {}", result["failures"]);
                eprintln!("xtask:   console log: {}", kept.display());
            }
            rows.push(Row {
                kernel: format!("{} ({})", k.label, k.release),
                scenario: s.to_string(),
                pass,
                result,
                secs,
            });
        }
    }
    if only_scenario.is_none_or(|o| crate::systemd_vm::SCENARIO.contains(o)) {
        let chosen: Vec<vm::Kernel> = kernels
            .iter()
            .filter(|k| only_kernel.is_none_or(|o| o == k.label))
            .cloned()
            .collect();
        for (label, scenario, result) in
            crate::systemd_vm::run_systemd_scenarios(&bin.join("guard"), &chosen)?
        {
            let release = chosen
                .iter()
                .find(|k| k.label == label)
                .map_or("?", |k| k.release.as_str());
            rows.push(Row {
                kernel: format!("{label} ({release})"),
                scenario,
                pass: result["pass"].as_bool().unwrap_or(false),
                secs: result["vm_seconds"].as_f64().unwrap_or(0.0),
                result,
            });
        }
    }
    let json: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::json!({"kernel": r.kernel, "scenario": r.scenario, "seconds": r.secs, "result": r.result}))
        .collect();
    let out = work.join("results.json");
    fs::write(&out, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", out.display()))?;

    println!();
    println!("| kernel | scenario | result | measured |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.kernel,
            r.scenario,
            if r.pass { "pass" } else { "FAIL" },
            summary(&r.scenario, &r.result)
        );
    }
    let passed = rows.iter().filter(|r| r.pass).count();
    let failed = rows.len() - passed;
    println!();
    println!("vm: {passed} passed, {failed} failed");
    Ok(failed == 0 && !rows.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_a_summary_line() {
        let empty = serde_json::json!({});
        for s in SCENARIOS {
            assert!(!summary(s, &empty).is_empty(), "{s} has no summary arm");
        }
    }

    #[test]
    fn only_stuck_exit_gets_a_throttled_disk() {
        for s in SCENARIOS {
            let options = drive_options(s);
            assert!(
                options.is_empty() || WITH_DISK.contains(&s),
                "{s} has drive options but no disk"
            );
        }
        assert_eq!(drive_options("stuck-exit"), "throttling.bps-total=1048576");
        assert_eq!(drive_options("benign"), "");
    }

    #[test]
    fn values_read_as_a_person_reads_them() {
        assert_eq!(show(&serde_json::json!(null)), "-");
        assert_eq!(show(&serde_json::json!("D")), "D");
        assert_eq!(show(&serde_json::json!(3)), "3");
        assert_eq!(kib_as_mib(&serde_json::json!(71680)), "70");
        assert_eq!(kib_as_mib(&serde_json::json!(null)), "-");
    }
}
