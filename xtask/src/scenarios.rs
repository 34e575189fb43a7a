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
pub const SCENARIOS: [&str; 3] = ["control", "seed", "nested"];

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
                let console = vm::run_qemu(
                    &k.vmlinuz,
                    &initrd,
                    1024,
                    &format!("guard.scenario={s}"),
                    Duration::from_secs(240),
                    &log,
                );
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
