//! The VM matrix: every scenario on every kernel, one boot each, and the
//! table `cargo xtask test` ends with.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::vm;

/// A scenario as `guard-scenario list` describes it: the VM it needs. Each
/// declares itself in its own file under tests/src/scenario/.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    /// Guest RAM, MiB.
    memory_mib: u32,
    /// Whether it gets a scratch disk (a sparse raw image, fresh per boot,
    /// attached as NVMe).
    disk: bool,
    /// Extra `-drive` options of that disk, such as throttling.
    drive_options: String,
    /// How long one boot may take before qemu is killed.
    timeout_secs: u64,
}

/// Size of a scratch disk, a sparse image made fresh for each boot.
const DISK_BYTES: u64 = 512 << 20;

/// The scenarios, in the order they run on each kernel, as the host build
/// of `guard-scenario` lists them.
fn list(scenario_bin: &Path) -> Result<Vec<Scenario>> {
    let out = Command::new(scenario_bin)
        .arg("list")
        .output()
        .with_context(|| format!("running {} list", scenario_bin.display()))?;
    let printed = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} list failed ({}); it printed {:?} and on stderr {:?}",
            scenario_bin.display(),
            out.status,
            printed.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_str(&printed).with_context(|| {
        format!(
            "{} list printed {:?}, not a list of scenarios",
            scenario_bin.display(),
            printed.trim()
        )
    })
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
        .filter(Value::is_object)
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

/// A result must carry its scenario's summary line: a passing one without
/// it fails, naming the scenario (a failed one already says why).
fn require_summary(scenario: &str, result: &mut Value) {
    if result["summary"].is_string() || result["pass"] != true {
        return;
    }
    result["pass"] = false.into();
    let missing = format!("{scenario}: the result has no \"summary\"");
    match result["failures"].as_array_mut() {
        Some(failures) => failures.push(missing.into()),
        None => result["failures"] = serde_json::json!([missing]),
    }
}

/// The longest part of a failure a table row quotes.
const FAILURE_IN_ROW: usize = 240;

/// The row's line: the scenario's own summary, why a failed cell failed
/// (the first line of each failure, so the table alone says it), and the
/// boots again after guest kernel faults.
fn summary(r: &Value) -> String {
    let mut text = r["summary"].as_str().unwrap_or("-").to_owned();
    if r["pass"] == false {
        for failure in r["failures"].as_array().into_iter().flatten() {
            let line = failure.as_str().unwrap_or_default().lines().next();
            let line = line.unwrap_or_default();
            let cut: String = line.chars().take(FAILURE_IN_ROW).collect();
            let more = if cut.len() < line.len() { "..." } else { "" };
            text.push_str(&format!("; failed: {}{more}", cut.replace('|', "/")));
        }
    }
    if let Some(faults) = r["retried_after"].as_array() {
        text.push_str(&format!(
            "; booted again after {} guest kernel fault(s)",
            faults.len()
        ));
    }
    text
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

/// Runs the matrix; prints the table; true when every cell passed.
pub fn run_matrix(
    bin: &Path,
    only_scenario: Option<&str>,
    only_kernel: Option<&str>,
) -> Result<bool> {
    let scenarios = list(&bin.join("guard-scenario"))?;
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
        for scenario in scenarios
            .iter()
            .filter(|s| only_scenario.is_none_or(|o| s.name.contains(o)))
        {
            let s = scenario.name.as_str();
            eprintln!("xtask: [{} {}] booting {} ...", k.label, s, k.release);
            let log = work.join(format!("{}-{}.log", k.label, s));
            let started = Instant::now();
            let mut retried = Vec::new();
            let result = loop {
                let disk = scenario
                    .disk
                    .then(|| scratch_disk(&work.join(format!("{}-{}.img", k.label, s))))
                    .transpose()?;
                let append = format!("guard.scenario={s}");
                let timeout = Duration::from_secs(scenario.timeout_secs);
                let memory = scenario.memory_mib;
                let console = match &disk {
                    Some(d) => vm::run_qemu_with_disk(
                        &k.vmlinuz,
                        &initrd,
                        memory,
                        &append,
                        timeout,
                        &log,
                        Some((d, scenario.drive_options.as_str())),
                    ),
                    None => vm::run_qemu(&k.vmlinuz, &initrd, memory, &append, timeout, &log),
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
            require_summary(s, &mut result);
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
                summary(&result)
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
        for (label, scenario, mut result) in
            crate::systemd_vm::run_systemd_scenarios(&bin.join("guard"), &chosen)?
        {
            // Its guest is a shell script, so its line is made here.
            result["summary"] = crate::systemd_vm::summary(&result).into();
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
            summary(&r.result)
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
    use serde_json::json;

    use super::*;

    #[test]
    fn the_list_reads_as_guard_scenario_prints_it() {
        let printed = r#"[{"disk":false,"drive_options":"","memory_mib":512,"name":"host","timeout_secs":240},
            {"disk":true,"drive_options":"throttling.bps-total=1048576","memory_mib":1024,"name":"stuck-exit","timeout_secs":600}]"#;
        let list: Vec<Scenario> = serde_json::from_str(printed).expect("a list");
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].name.as_str(), list[0].memory_mib), ("host", 512));
        assert!(list[1].disk);
        assert_eq!(list[1].drive_options, "throttling.bps-total=1048576");
        assert_eq!(list[1].timeout_secs, 600);
        let renamed = printed.replace("timeout_secs", "timeout");
        assert!(serde_json::from_str::<Vec<Scenario>>(&renamed).is_err());
    }

    #[test]
    fn an_unreadable_list_names_the_binary_and_what_it_printed() {
        // `echo list` prints "list": a program, but not guard-scenario.
        let e = format!("{:#}", list(Path::new("/bin/echo")).unwrap_err());
        assert!(
            e.starts_with("/bin/echo list printed \"list\", not a list of scenarios"),
            "{e}"
        );
        let e = format!("{:#}", list(Path::new("/bin/false")).unwrap_err());
        assert!(e.starts_with("/bin/false list failed"), "{e}");
        let e = format!(
            "{:#}",
            list(Path::new("/nonexistent/guard-scenario")).unwrap_err()
        );
        assert!(
            e.contains("running /nonexistent/guard-scenario list"),
            "{e}"
        );
    }

    #[test]
    fn a_result_without_summary_fails_naming_the_scenario() {
        let mut r = json!({"scenario": "odd", "pass": true, "failures": []});
        require_summary("odd", &mut r);
        assert_eq!(r["pass"], false);
        assert_eq!(r["failures"], json!(["odd: the result has no \"summary\""]));
        assert_eq!(summary(&r), "-; failed: odd: the result has no \"summary\"");

        let mut ok = json!({"pass": true, "failures": [], "summary": "3 kills"});
        require_summary("odd", &mut ok);
        assert_eq!(ok["pass"], true);

        // A boot that printed no result has already failed and says why.
        let mut lost = parse_result("GUARD-RESULT 42\n", Path::new("/l"));
        require_summary("odd", &mut lost);
        assert_eq!(lost["failures"].as_array().map(Vec::len), Some(1));
        assert!(
            lost["failures"][0]
                .as_str()
                .unwrap_or_default()
                .starts_with("no result line")
        );
    }

    #[test]
    fn the_line_is_the_scenarios_own_and_counts_the_reboots() {
        let r = json!({"summary": "hog alive after 10 s", "retried_after": ["fault"]});
        assert_eq!(
            summary(&r),
            "hog alive after 10 s; booted again after 1 guest kernel fault(s)"
        );
        assert_eq!(summary(&json!({"summary": "3 kills"})), "3 kills");
    }

    /// The CI output of a failed stop showed only a table row "FAIL | -;
    /// booted again after 2 guest kernel fault(s)": the reason was elsewhere.
    #[test]
    fn a_failed_row_says_why_in_one_line() {
        let r = json!({
            "pass": false,
            "failures": [
                "guest kernel fault (\"silent after the firmware\") after 121s (console log: /l); last console lines:\nBooting",
                "a|b",
            ],
            "retried_after": ["fault", "fault"],
        });
        assert_eq!(
            summary(&r),
            "-; failed: guest kernel fault (\"silent after the firmware\") after 121s (console log: /l); \
             last console lines:; failed: a/b; booted again after 2 guest kernel fault(s)"
        );
        let long = json!({"pass": false, "failures": ["x".repeat(FAILURE_IN_ROW + 5)]});
        assert!(summary(&long).ends_with(&format!("{}...", "x".repeat(FAILURE_IN_ROW))));
    }
}
