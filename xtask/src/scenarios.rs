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
use serde_json::{Value, json};

use crate::vm::{self, rootfs::RunDir};

/// A scenario as `guard-scenario list` describes it: the VM it needs. Each
/// declares itself in its own file under tests/src/scenario/.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    /// The guest it runs in.
    vm: Guest,
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

/// The guests a scenario can ask for.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Guest {
    /// The busybox initramfs below, whose /init runs the scenario.
    Initramfs,
    /// The Debian image of [`vm::rootfs`] with systemd as PID 1 and the
    /// guard installed from deploy/guard.service; [`RUNNER`] runs the
    /// scenario once the system is up.
    Systemd,
}

/// The systemd guest's unit that runs the scenario named on the kernel
/// command line, then powers the guest off.
const RUNNER: (&str, &str) = (
    "guard-test.service",
    "\
[Unit]
Description=guard test: the scenario named by guard.scenario=; powers off when done

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/usr/local/bin/guard-scenario from-cmdline
ExecStopPost=-/usr/bin/systemctl poweroff -f
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
",
);

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
/// A scenario's progress line; the last one is named when no result comes.
const STEP: &str = "GUARD-STEP ";

/// The guest's result line, or a failure naming the console log and the
/// last step the scenario reported.
fn parse_result(console: &str, log: &Path) -> Value {
    let last = |tag: &str| {
        console
            .lines()
            .filter_map(|l| l.find(tag).map(|i| l[i + tag.len()..].trim()))
            .next_back()
            .map(str::to_owned)
    };
    match last(RESULT) {
        Some(text) => serde_json::from_str::<Value>(&text)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| {
                json!({"pass": false, "failures": [format!(
                    "unreadable result line {text:?}; console in {}", log.display()
                )]})
            }),
        None => json!({"pass": false, "failures": [format!(
            "no result line (last step: {}); console in {}",
            last(STEP).as_deref().unwrap_or("none"),
            log.display()
        )]}),
    }
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
        None => result["failures"] = json!([missing]),
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

/// Whether `name` is picked by a `--scenario` filter: one or more
/// comma-separated parts, any of which it contains.
fn picked(name: &str, filter: &str) -> bool {
    filter
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .any(|part| name.contains(part))
}

/// Runs the matrix; prints the table; true when every cell passed.
pub fn run_matrix(
    bin: &Path,
    only_scenario: Option<&str>,
    only_kernel: Option<&str>,
) -> Result<bool> {
    let scenarios: Vec<Scenario> = list(&bin.join("guard-scenario"))?
        .into_iter()
        .filter(|s| only_scenario.is_none_or(|o| picked(&s.name, o)))
        .collect();
    if scenarios.is_empty() {
        bail!(
            "no VM scenario matches --scenario {}; `guard-scenario list` names them",
            only_scenario.unwrap_or_default()
        );
    }
    let kernels = vm::ensure_kernels()?;
    if let Some(o) = only_kernel
        && !kernels.iter().any(|k| k.label == o)
    {
        let labels: Vec<&str> = kernels.iter().map(|k| k.label.as_str()).collect();
        bail!(
            "no kernel labelled {o}; the matrix has {}",
            labels.join(", ")
        );
    }
    let work = crate::workspace_root().join("target").join("vm");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let guests = Guests::prepare(bin, &work, &scenarios)?;
    let mut rows = Vec::new();
    for k in kernels
        .iter()
        .filter(|k| only_kernel.is_none_or(|o| o == k.label))
    {
        for scenario in &scenarios {
            rows.push(run_cell(&guests, k, scenario, &work)?);
        }
    }
    let json: Vec<Value> = rows
        .iter()
        .map(|r| json!({"kernel": r.kernel, "scenario": r.scenario, "seconds": r.secs, "result": r.result}))
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

/// What the chosen scenarios boot: the initramfs, and the systemd image
/// with this build in it (each made only when some scenario needs it).
struct Guests {
    initrd: PathBuf,
    /// The run's copy of the systemd image, removed with the run directory.
    systemd: Option<(RunDir, PathBuf)>,
}

impl Guests {
    fn prepare(bin: &Path, work: &Path, scenarios: &[Scenario]) -> Result<Self> {
        let initrd = work.join("initramfs.cpio");
        if scenarios.iter().any(|s| s.vm == Guest::Initramfs) {
            let files: Vec<(PathBuf, String)> = vec![
                (bin.join("guard"), "bin/guard".to_owned()),
                (bin.join("guard-scenario"), "bin/guard-scenario".to_owned()),
                // At sshd's installed path, root-owned and mode 0755 like
                // the real one: what the default policy protects by identity.
                (bin.join("guard-scenario"), "usr/sbin/sshd".to_owned()),
            ];
            vm::build_initramfs(&initrd, &files, INIT)?;
        }
        let systemd = if scenarios.iter().any(|s| s.vm == Guest::Systemd) {
            Some(systemd_image(bin)?)
        } else {
            None
        };
        Ok(Self { initrd, systemd })
    }

    /// One boot of `scenario` on `k`; the console.
    fn boot(&self, k: &vm::Kernel, scenario: &Scenario, log: &Path, work: &Path) -> Result<String> {
        let append = format!("guard.scenario={}", scenario.name);
        let timeout = Duration::from_secs(scenario.timeout_secs);
        let memory = scenario.memory_mib;
        match scenario.vm {
            Guest::Systemd => {
                if scenario.disk {
                    bail!(
                        "{}: a systemd guest takes no scratch disk (its root disk is the NVMe one)",
                        scenario.name
                    );
                }
                let (_, image) = self
                    .systemd
                    .as_ref()
                    .context("the systemd image was not made")?;
                vm::rootfs::boot(k, image, memory, &append, log, timeout)
            }
            Guest::Initramfs if scenario.disk => {
                let name = format!("{}-{}.img", k.label, scenario.name);
                let disk = scratch_disk(&work.join(name))?;
                let console = vm::run_qemu_with_disk(
                    &k.vmlinuz,
                    &self.initrd,
                    memory,
                    &append,
                    timeout,
                    log,
                    Some((&disk, scenario.drive_options.as_str())),
                );
                let _ = fs::remove_file(&disk);
                console
            }
            Guest::Initramfs => {
                vm::run_qemu(&k.vmlinuz, &self.initrd, memory, &append, timeout, log)
            }
        }
    }
}

/// The cached Debian image, copied for this run with this build, the unit
/// in deploy/ and [`RUNNER`] written into it.
fn systemd_image(bin: &Path) -> Result<(RunDir, PathBuf)> {
    let started = Instant::now();
    let unit_path = crate::workspace_root().join("deploy").join("guard.service");
    let unit = fs::read_to_string(&unit_path)
        .with_context(|| format!("reading {}", unit_path.display()))?;
    let cache = vm::rootfs::cache_dir()?;
    let base = vm::rootfs::ensure_base_image(&cache)?;
    vm::rootfs::remove_stale_runs(&cache);
    let run = RunDir::create(cache.join(format!("run-{}", std::process::id())))?;
    let image = run.0.join("root.img");
    let mut payload = vm::rootfs::stage_payload(
        &run.0.join("stage"),
        &bin.join("guard"),
        &bin.join("guard-scenario"),
        &unit,
        RUNNER,
    )?;
    // The package scenario installs, upgrades and purges these: the same
    // build, revisions 1 and 2.
    for revision in ["1", "2"] {
        let deb = crate::build_deb(bin, revision, &run.0.join("deb"))?;
        let name = deb
            .file_name()
            .context("a package path without a file name")?
            .to_string_lossy()
            .into_owned();
        payload.files.push((deb, format!("/root/{name}")));
    }
    vm::rootfs::make_run_image(&base, &image, &payload)?;
    eprintln!(
        "xtask: systemd VM image with this build ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((run, image))
}

/// One scenario on one kernel: booted again after guest kernel faults (up
/// to [`vm::MAX_RETRIES`] times), its console kept apart when it fails.
fn run_cell(guests: &Guests, k: &vm::Kernel, scenario: &Scenario, work: &Path) -> Result<Row> {
    let s = scenario.name.as_str();
    eprintln!("xtask: [{} {}] booting {} ...", k.label, s, k.release);
    let log = work.join(format!("{}-{}.log", k.label, s));
    let started = Instant::now();
    let mut retried = Vec::new();
    let mut result = loop {
        match guests.boot(k, scenario, &log, work) {
            Ok(text) => break parse_result(&text, &log),
            // The guest kernel broke down (an emulator fault): the
            // scenario never ran to an end. Boot again, and say so.
            Err(e)
                if format!("{e:#}").contains(vm::GUEST_FAULT)
                    && retried.len() < vm::MAX_RETRIES =>
            {
                let kept = log.with_extension(format!("fault{}.log", retried.len() + 1));
                let _ = fs::copy(&log, &kept);
                let text = format!("{e:#}");
                let first = text.lines().next().unwrap_or_default().to_owned();
                eprintln!(
                    "xtask: [{} {}] {first}; booting again (log kept in {})",
                    k.label,
                    s,
                    kept.display()
                );
                retried.push(first);
            }
            Err(e) => break json!({"pass": false, "failures": [format!("{e:#}")]}),
        }
    };
    require_summary(s, &mut result);
    if !retried.is_empty() {
        result["retried_after"] = json!(retried);
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
    Ok(Row {
        kernel: format!("{} ({})", k.label, k.release),
        scenario: s.to_owned(),
        pass,
        result,
        secs,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn scenario_filter_takes_a_comma_list() {
        assert!(picked("nested", "seed,nested"));
        assert!(picked("many-small", "small"));
        assert!(!picked("seed", "nested, churn"));
        assert!(!picked("seed", ","));
    }

    #[test]
    fn the_list_reads_as_guard_scenario_prints_it() {
        let printed = r#"[{"disk":false,"drive_options":"","memory_mib":512,"name":"host","timeout_secs":240,"vm":"initramfs"},
            {"disk":true,"drive_options":"throttling.bps-total=1048576","memory_mib":1024,"name":"stuck-exit","timeout_secs":600,"vm":"initramfs"},
            {"disk":false,"drive_options":"","memory_mib":1024,"name":"systemd","timeout_secs":420,"vm":"systemd"}]"#;
        let list: Vec<Scenario> = serde_json::from_str(printed).expect("a list");
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].vm, Guest::Initramfs);
        assert_eq!(list[2].vm, Guest::Systemd);
        let unknown = printed.replace("\"vm\":\"systemd\"", "\"vm\":\"kvm\"");
        assert!(serde_json::from_str::<Vec<Scenario>>(&unknown).is_err());
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
        let mut lost = parse_result("GUARD-STEP booting\n", Path::new("/l"));
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
    fn the_result_line_is_found_among_console_noise() {
        // A systemd guest: journald forwards the line with its own prefix.
        let console = "\
[  OK  ] Started guard-test.service\r
GUARD-STEP starting guard.service\r
[   40.0] guard-scenario[301]: GUARD-RESULT {\"pass\":true,\"failures\":[],\"hog_lifetime_ms\":1234}\r
[   40.1] reboot: Power down\r
";
        let r = parse_result(console, Path::new("/tmp/log"));
        assert_eq!(r["pass"], json!(true));
        assert_eq!(r["hog_lifetime_ms"], json!(1234));
    }

    #[test]
    fn a_missing_result_names_the_last_step_and_a_garbled_one_fails() {
        let console = "GUARD-STEP kernel 6.1\nGUARD-STEP starting guard.service\n";
        let r = parse_result(console, Path::new("/tmp/x.log"));
        assert_eq!(r["pass"], json!(false));
        let failure = r["failures"][0].as_str().unwrap_or_default();
        assert!(
            failure.contains("last step: starting guard.service"),
            "{failure}"
        );
        assert!(failure.contains("/tmp/x.log"), "{failure}");
        for garbled in ["GUARD-RESULT {\"pass\":tr\n", "GUARD-RESULT 42\n"] {
            let r = parse_result(garbled, Path::new("/l"));
            assert_eq!(r["pass"], json!(false));
            let failure = r["failures"][0].as_str().unwrap_or_default();
            assert!(failure.starts_with("unreadable result line"), "{failure}");
        }
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
