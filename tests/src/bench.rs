//! `guard-scenario bench`: the guest half of `cargo xtask bench`.
//!
//! Runs as a oneshot unit in the systemd VM (xtask/src/bench.rs builds the
//! image). For each tool (none, earlyoom, oomd, systemd-oomd with its
//! defaults and with aggressive limits, guard) and each case (the seed
//! incident with hog and bystander in sibling cgroups, the same in one
//! cgroup, a benign job) it starts the tool as its Debian package does,
//! runs the case in `bench.slice` as transient units, and measures from the
//! kernel's trace, stamped with CLOCK_MONOTONIC, so that every tool is
//! measured the same way. Then the guard's cost: throughput of a
//! reclaim-heavy job with and without it (alternating), BPF run time per
//! program, resident memory, and wake-ups while idle.
//!
//! Output goes to the console, one line per result: `GUARD-CASE {json}`,
//! `GUARD-COST {json}`, then `GUARD-BENCH-DONE`. Settings come from the
//! kernel command line: `guard.bench.window=SECS` (how long a case may
//! last), `guard.bench.idle=SECS`, `guard.bench.skip=TOOL/CASE,...` (cases
//! already measured before a guest fault rebooted the VM).

use std::{
    fs,
    io::Write,
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    bench_plan::{CASES, TOOLS, median},
    monotonic_ns,
    scenario::{alive, context_switches, keyed_colon, read},
    scrape, trace,
    units::{prop, put_file, sh},
};

const RUN: &str = "/run/bench";
const SLICE_DIR: &str = "/sys/fs/cgroup/bench.slice";
const BIN: &str = "/usr/local/bin/guard-scenario";
const HOG_MIB: u32 = 100;
/// After the hog's death, how long the case goes on (the bystander's
/// recovery, the memory coming back).
const SETTLE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);
const METRICS_ADDR: &str = "127.0.0.1:9464";
/// Alternating rounds of the cost job, without and with the guard.
const COST_ROUNDS: usize = 5;
const COST_FILE_MIB: u32 = 128;
const COST_READS: u32 = 3;

const SLICE: &str = "\
[Unit]
Description=guard bench: the seed incident's limits

[Slice]
MemoryAccounting=yes
MemoryHigh=64M
MemoryMax=128M
MemorySwapMax=0
# systemd-oomd acts on this slice when it runs (its limits: oomd.conf).
ManagedOOMMemoryPressure=kill
";

const COST_SLICE: &str = "\
[Unit]
Description=guard bench: the cost job's limits

[Slice]
MemoryAccounting=yes
MemoryHigh=32M
MemoryMax=96M
MemorySwapMax=0
";

/// oomd as the issue asks: memory pressure above 60% for 1 s on the watched
/// cgroup, then kill_by_memory_size_or_growth among its children.
const OOMD_JSON: &str = r#"{
  "rulesets": [
    {
      "name": "bench.slice memory pressure",
      "detectors": [
        [
          "bench.slice pressure above 60 for 1s",
          {
            "name": "pressure_above",
            "args": {
              "cgroup": "bench.slice",
              "resource": "memory",
              "threshold": "60",
              "duration": "1"
            }
          }
        ]
      ],
      "actions": [
        {
          "name": "kill_by_memory_size_or_growth",
          "args": { "cgroup": "bench.slice/*" }
        }
      ]
    }
  ]
}
"#;

/// The Debian package's options with the bench's config; this VM is pure
/// cgroup v2, so no `--cgroup-fs` into a hybrid tree.
const OOMD_DEFAULT: &str =
    "DAEMON_OPTS=\"--interval 1 --config /etc/oomd/bench.json --cgroup-fs /sys/fs/cgroup\"\n";

/// systemd-oomd's aggressive setting: 20% for 2 s instead of 60% for 30 s.
const OOMD_CONF_DIR: &str = "/etc/systemd/oomd.conf.d";
const AGGRESSIVE: &str =
    "[OOM]\nDefaultMemoryPressureLimit=20%\nDefaultMemoryPressureDurationSec=2s\n";

const METRICS_DROP_IN: &str = "/etc/systemd/system/guard.service.d/bench-metrics.conf";
const NO_WATCHDOG_DROP_IN: &str = "/etc/systemd/system/guard.service.d/bench-no-watchdog.conf";

struct Settings {
    window: Duration,
    idle: Duration,
    skip: Vec<String>,
}

impl Settings {
    fn from_cmdline(cmdline: &str) -> Self {
        let get = |key: &str| {
            cmdline
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        };
        let secs = |key: &str, default: u64| {
            Duration::from_secs(get(key).and_then(|v| v.parse().ok()).unwrap_or(default))
        };
        Self {
            window: secs("guard.bench.window", 90),
            idle: secs("guard.bench.idle", 60),
            skip: get("guard.bench.skip")
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        }
    }
}

fn console(tag: &str, v: &Value) {
    let line = format!("{tag} {v}\n");
    match fs::OpenOptions::new().append(true).open("/dev/console") {
        Ok(mut c) => {
            let _ = c.write_all(line.as_bytes());
        }
        Err(_) => print!("{line}"),
    }
}

fn step(what: &str) {
    console("GUARD-STEP", &json!(what));
}

fn read_u64(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The peers' units, masked in the image (xtask's MASKED list).
const PEER_UNITS: [&str; 4] = [
    "earlyoom.service",
    "oomd.service",
    "systemd-oomd.socket",
    "systemd-oomd.service",
];

/// Units of the tools that are running now.
fn active_tools() -> Vec<String> {
    PEER_UNITS
        .iter()
        .chain(["guard.service"].iter())
        .filter(|u| prop(u, "ActiveState") == "active")
        .map(|u| (*u).to_owned())
        .collect()
}

/// The units to unmask and mask again for `tool`.
fn masked_units_of(tool: &str) -> &'static [&'static str] {
    match tool {
        "earlyoom" => &PEER_UNITS[..1],
        "oomd" => &PEER_UNITS[1..2],
        "systemd-oomd" | "systemd-oomd-aggressive" => &PEER_UNITS[2..],
        _ => &[],
    }
}

/// The unit of each tool (none for `none`).
fn unit_of(tool: &str) -> Option<&'static str> {
    match tool {
        "earlyoom" => Some("earlyoom.service"),
        "oomd" => Some("oomd.service"),
        "systemd-oomd" | "systemd-oomd-aggressive" => Some("systemd-oomd.service"),
        "guard" => Some("guard.service"),
        _ => None,
    }
}

fn prepare() -> Result<(), String> {
    put_file("/etc/systemd/system/bench.slice", SLICE)?;
    put_file("/etc/systemd/system/benchcost.slice", COST_SLICE)?;
    put_file("/etc/oomd/bench.json", OOMD_JSON)?;
    put_file("/etc/default/oomd", OOMD_DEFAULT)?;
    fs::create_dir_all(RUN).map_err(|e| format!("creating {RUN}: {e}"))?;
    // The image masks every peer; each is unmasked only for its own cases.
    for unit in PEER_UNITS {
        let _ = sh(&["systemctl", "stop", unit]);
    }
    let _ = sh(&["groupadd", "--system", "guard"]);
    if !std::path::Path::new("/sys/kernel/tracing/trace").exists() {
        sh(&["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"])?;
    }
    sh(&["systemctl", "daemon-reload"])?;
    sh(&["systemctl", "start", "bench.slice", "benchcost.slice"])?;
    Ok(())
}

/// Starts `tool` as its package does; an error names what failed.
fn start_tool(tool: &str) -> Result<(), String> {
    let _ = fs::remove_file(format!("{OOMD_CONF_DIR}/bench.conf"));
    if tool == "systemd-oomd-aggressive" {
        put_file(&format!("{OOMD_CONF_DIR}/bench.conf"), AGGRESSIVE)?;
    }
    let Some(unit) = unit_of(tool) else {
        return Ok(());
    };
    for u in masked_units_of(tool) {
        sh(&["systemctl", "unmask", u])?;
    }
    sh(&["systemctl", "restart", unit])?;
    let began = Instant::now();
    while prop(unit, "ActiveState") != "active" {
        if began.elapsed() > Duration::from_secs(20) {
            let journal =
                sh(&["journalctl", "-q", "-u", unit, "-n", "5", "-o", "cat"]).unwrap_or_default();
            return Err(format!("{unit} not active 20 s after start: {journal}"));
        }
        sleep(POLL);
    }
    // Each reads its config and takes its first samples.
    sleep(Duration::from_secs(2));
    Ok(())
}

fn stop_tool(tool: &str) {
    if let Some(unit) = unit_of(tool) {
        let _ = sh(&["systemctl", "stop", unit]);
    }
    for u in masked_units_of(tool) {
        let _ = sh(&["systemctl", "stop", u]);
        let _ = sh(&["systemctl", "mask", u]);
    }
    let _ = fs::remove_file(format!("{OOMD_CONF_DIR}/bench.conf"));
}

const CASE_UNITS: [&str; 4] = ["bench-hog", "bench-by", "bench-pair", "bench-job"];

/// Stops whatever a case left, drops the page cache, and starts the slice
/// afresh: a new cgroup, whose pressure averages start at zero (the last
/// case's would otherwise trip a PSI-based tool as soon as the next begins).
fn clean_slate() -> Result<(), String> {
    for unit in CASE_UNITS {
        let _ = sh(&["systemctl", "stop", unit]);
        let _ = sh(&["systemctl", "reset-failed", unit]);
    }
    let _ = sh(&["systemctl", "stop", "bench.slice"]);
    let _ = sh(&["sync"]);
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    let began = Instant::now();
    while std::path::Path::new(SLICE_DIR).exists() {
        if began.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "{SLICE_DIR} still exists 10 s after stopping bench.slice"
            ));
        }
        sleep(POLL);
    }
    sh(&["systemctl", "start", "bench.slice"])?;
    for f in ["by.out", "by.pid", "hog.pid", "job.out"] {
        let _ = fs::remove_file(format!("{RUN}/{f}"));
    }
    Ok(())
}

/// Waits for a pid file the case's shell writes.
fn pid_file(name: &str) -> Result<u32, String> {
    let began = Instant::now();
    loop {
        if let Some(p) = read_u64(&format!("{RUN}/{name}")) {
            return Ok(p as u32);
        }
        if began.elapsed() > Duration::from_secs(10) {
            return Err(format!("the shared unit wrote no {name}"));
        }
        sleep(POLL);
    }
}

/// `systemd-run` a transient service in bench.slice; its main pid.
fn run_unit(name: &str, stdout: Option<&str>, cmd: &[&str]) -> Result<u32, String> {
    let unit = format!("--unit={name}");
    let output = stdout.map(|p| format!("StandardOutput=file:{p}"));
    let mut args = vec!["systemd-run", "--quiet", &unit, "--slice=bench.slice"];
    if let Some(o) = &output {
        args.extend(["-p", o]);
    }
    args.extend(cmd);
    sh(&args)?;
    let pid: u32 = prop(name, "MainPID").parse().unwrap_or(0);
    if pid == 0 {
        return Err(format!("{name} has no main process after systemd-run"));
    }
    Ok(pid)
}

/// The bystander's worst lateness so far (ms), from its `sample` lines.
pub fn worst_late_ms(out: &str) -> f64 {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("sample"), Some(_), Some(late)) => late.parse::<f64>().ok(),
                _ => None,
            }
        })
        .fold(0.0, f64::max)
        / 1000.0
}

/// What the trace says about one case; pure, for the tests.
pub fn judge(trace_text: &str, hog: Option<u32>, started_s: f64, innocent: &[u32]) -> Value {
    let signals = trace::signals(trace_text);
    let mut v = json!({});
    if let Some(hog) = hog {
        let first_np = trace::first_no_progress(trace_text, hog);
        let (passes, fruitless) = trace::passes_of(trace_text, hog);
        let kill = signals.iter().find(|s| s.target_pid == hog);
        let exit = trace::exit_of(trace_text, hog);
        v["hog_passes"] = json!(passes);
        v["hog_passes_no_progress"] = json!(fruitless);
        v["first_no_progress_s"] = json!(first_np.map(|t| t - started_s));
        if let Some(k) = kill {
            // PID 1 signals what is left of a unit once its main process is
            // gone: the cause is whoever killed that one first.
            let cause = (k.sender_pid == 1)
                .then(|| {
                    signals
                        .iter()
                        .find(|s| s.ts <= k.ts && s.sender_pid != 1)
                        .map(|s| format!("{} (then systemd stopped the unit)", s.sender_comm))
                })
                .flatten();
            let killer = if trace::oom_victim(trace_text, hog) {
                "kernel OOM killer".to_owned()
            } else {
                cause.unwrap_or_else(|| k.sender_comm.clone())
            };
            v["killer"] = json!(killer);
            v["signal"] = json!(k.sig);
            v["signal_s"] = json!(k.ts - started_s);
            if let Some(np) = first_np {
                v["no_progress_to_signal_ms"] = json!((k.ts - np) * 1000.0);
            }
            if let Some(e) = exit {
                v["signal_to_exit_ms"] = json!((e - k.ts) * 1000.0);
            }
        }
        v["hog_exited"] = json!(exit.is_some());
    }
    let others: Vec<Value> = signals
        .iter()
        .filter(|s| Some(s.target_pid) != hog)
        .filter(|s| innocent.is_empty() || innocent.contains(&s.target_pid))
        .map(|s| {
            json!({"comm": s.target_comm, "pid": s.target_pid, "sig": s.sig, "by": s.sender_comm})
        })
        .collect();
    v["innocents_signalled"] = json!(others);
    v
}

/// The processes of a case, once started.
struct Started {
    hog: Option<u32>,
    bystander: u32,
    /// The benign job's shell.
    job: Option<u32>,
}

/// Starts the case's units in bench.slice.
fn start_case(case: &str, window: Duration) -> Result<Started, String> {
    let by_out = format!("{RUN}/by.out");
    let by_ms = (window + Duration::from_secs(30)).as_millis().to_string();
    let hog_mib = HOG_MIB.to_string();
    match case {
        "seed-siblings" => {
            let bystander = run_unit("bench-by", Some(&by_out), &[BIN, "bystander", &by_ms])?;
            sleep(Duration::from_secs(1));
            let hog = run_unit("bench-hog", None, &[BIN, "hog", &hog_mib, "hog"])?;
            Ok(Started {
                hog: Some(hog),
                bystander,
                job: None,
            })
        }
        "seed-shared" => {
            // The shell stays the unit's main process: when the hog dies,
            // systemd must not stop the unit (and the bystander with it).
            let script = format!(
                "{BIN} bystander {by_ms} > {by_out} & echo $! > {RUN}/by.pid; sleep 1; \
                 {BIN} hog {hog_mib} hog & echo $! > {RUN}/hog.pid; wait"
            );
            run_unit("bench-pair", None, &["/bin/sh", "-c", &script])?;
            let bystander = pid_file("by.pid")?;
            let hog = pid_file("hog.pid")?;
            Ok(Started {
                hog: Some(hog),
                bystander,
                job: None,
            })
        }
        _ => {
            let bystander = run_unit("bench-by", Some(&by_out), &[BIN, "bystander", &by_ms])?;
            let script = format!(
                "{BIN} filecache /var/tmp/bench.dat 192 2 && exec {BIN} burst 1024 5 1000 80 3000"
            );
            let job = run_unit(
                "bench-job",
                Some(&format!("{RUN}/job.out")),
                &["/bin/sh", "-c", &script],
            )?;
            Ok(Started {
                hog: None,
                bystander,
                job: Some(job),
            })
        }
    }
}

/// One case under one tool.
fn run_case(tool: &str, case: &str, s: &Settings) -> Value {
    let mut v = json!({"tool": tool, "case": case});
    if let Err(e) = clean_slate() {
        v["error"] = json!(e);
        return v;
    }
    v["tools_running"] = json!(active_tools());
    if let Err(e) = trace::enable_bench() {
        v["error"] = json!(e);
        return v;
    }
    let started_ns = monotonic_ns();
    let by_out = format!("{RUN}/by.out");
    let Started {
        hog,
        bystander,
        job,
    } = match start_case(case, s.window) {
        Ok(x) => x,
        Err(e) => {
            trace::stop();
            v["error"] = json!(e);
            return v;
        }
    };
    v["hog_pid"] = json!(hog);
    // Poll until the hog (or the benign job) is gone, or the window ends.
    let watched = hog.or(job).unwrap_or(0);
    let mut peak: u64 = 0;
    let mut gone_at: Option<Instant> = None;
    let began = Instant::now();
    loop {
        let current = read_u64(&format!("{SLICE_DIR}/memory.current")).unwrap_or(0);
        peak = peak.max(current);
        if gone_at.is_none() && !alive(watched) {
            gone_at = Some(Instant::now());
        }
        let settled = gone_at.is_some_and(|t| t.elapsed() >= SETTLE || job.is_some());
        if settled || began.elapsed() >= s.window {
            break;
        }
        sleep(POLL);
    }
    let after = read_u64(&format!("{SLICE_DIR}/memory.current")).unwrap_or(0);
    let bystander_alive = alive(bystander);
    trace::stop();
    let text = trace::read();
    let by_text = fs::read_to_string(&by_out).unwrap_or_default();
    let high_events = fs::read_to_string(format!("{SLICE_DIR}/memory.events"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("high ")?.trim().parse::<u64>().ok())
        });
    let started_s = started_ns as f64 / 1e9;
    // Any process signalled during a benign job is an innocent.
    let innocent: &[u32] = if job.is_some() { &[] } else { &[bystander] };
    let judged = judge(&text, hog, started_s, innocent);
    if let Some(obj) = judged.as_object() {
        for (k, x) in obj {
            v[k] = x.clone();
        }
    }
    v["window_s"] = json!(s.window.as_secs());
    v["hog_alive_at_end"] = json!(hog.map(alive));
    v["watched_gone_after_s"] = json!(gone_at.map(|t| t.duration_since(began).as_secs_f64()));
    v["bystander_alive"] = json!(bystander_alive);
    v["bystander_worst_ms"] = json!(worst_late_ms(&by_text));
    v["slice_peak_mib"] = json!(peak as f64 / (1 << 20) as f64);
    v["slice_after_mib"] = json!(after as f64 / (1 << 20) as f64);
    v["slice_high_events"] = json!(high_events);
    if let Some(job) = job {
        let out = fs::read_to_string(format!("{RUN}/job.out")).unwrap_or_default();
        v["job_pid"] = json!(job);
        v["job_ok"] = json!(
            out.contains("filecache ok")
                && out.lines().filter(|l| l.starts_with("burst ")).count() == 5
        );
        v["job_s"] = json!(gone_at.map(|t| t.duration_since(began).as_secs_f64()));
    }
    v["trace_lines"] = json!(text.lines().count());
    if let Err(e) = clean_slate() {
        v["error_after"] = json!(e);
    }
    v
}

fn guard_pid() -> Option<u32> {
    prop("guard.service", "MainPID")
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// A "kB" line of /proc/PID/status, e.g. VmRSS.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    Some(keyed_colon(&read(&format!("/proc/{pid}/status")), key)).filter(|k| *k > 0)
}

/// One run of the cost job in benchcost.slice: MiB/s of its read passes.
fn cost_job() -> Result<f64, String> {
    let out = format!("{RUN}/cost.out");
    let _ = fs::remove_file(&out);
    let mib = COST_FILE_MIB.to_string();
    let reads = COST_READS.to_string();
    sh(&[
        "systemd-run",
        "--quiet",
        "--wait",
        "--unit=bench-cost",
        "--slice=benchcost.slice",
        "-p",
        &format!("StandardOutput=file:{out}"),
        BIN,
        "filecache",
        "/var/tmp/cost.dat",
        &mib,
        &reads,
    ])?;
    let text = fs::read_to_string(&out).map_err(|e| format!("reading {out}: {e}"))?;
    let (mut mib, mut ms) = (0.0, 0.0);
    for l in text.lines().filter(|l| l.starts_with("read ")) {
        for kv in l.split_whitespace() {
            if let Some(x) = kv.strip_prefix("mib=") {
                mib += x.parse::<f64>().unwrap_or(0.0);
            }
            if let Some(x) = kv.strip_prefix("ms=") {
                ms += x.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    let _ = fs::remove_file("/var/tmp/cost.dat");
    if ms <= 0.0 {
        return Err(format!("the cost job printed no read pass: {text}"));
    }
    Ok(mib / (ms / 1000.0))
}

/// Idle wake-ups of the guard over `idle`, nobody attached, nothing stalled.
fn idle_wakeups(idle: Duration) -> Value {
    if let Err(e) = start_tool("guard") {
        return json!({"error": e});
    }
    let Some(pid) = guard_pid() else {
        return json!({"error": "guard.service has no main pid"});
    };
    let (v0, i0, threads) = context_switches(pid);
    sleep(idle);
    let (v1, i1, _) = context_switches(pid);
    let watchdog = prop("guard.service", "WatchdogUSec");
    stop_tool("guard");
    json!({"secs": idle.as_secs(), "voluntary": v1 - v0, "involuntary": i1 - i0,
           "threads": threads, "watchdog": watchdog})
}

fn run_cost(s: &Settings) -> Value {
    let mut v = json!({});
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut errors: Vec<String> = Vec::new();
    for round in 0..COST_ROUNDS {
        step(&format!("cost round {} of {COST_ROUNDS}", round + 1));
        let _ = clean_slate();
        match cost_job() {
            Ok(x) => off.push(x),
            Err(e) => errors.push(e),
        }
        if let Err(e) = start_tool("guard") {
            errors.push(e);
            continue;
        }
        let _ = clean_slate();
        match cost_job() {
            Ok(x) => on.push(x),
            Err(e) => errors.push(e),
        }
        if round + 1 == COST_ROUNDS
            && let Some(pid) = guard_pid()
        {
            v["guard_rss_kib"] = json!(status_kib(pid, "VmRSS"));
            v["guard_hwm_kib"] = json!(status_kib(pid, "VmHWM"));
        }
        stop_tool("guard");
    }
    v["throughput_off_mib_s"] = json!(off);
    v["throughput_on_mib_s"] = json!(on);
    if let (Some(a), Some(b)) = (median(off.clone()), median(on.clone())) {
        v["throughput_ratio"] = json!(b / a);
    }
    // BPF run time per program: one more run with /metrics (and so the
    // kernel's BPF stats) on.
    step("cost: BPF run time per program");
    let drop_in = format!(
        "[Service]\nExecStart=\nExecStart=/usr/local/sbin/guard run --metrics-addr {METRICS_ADDR}\n"
    );
    let programs = put_file(METRICS_DROP_IN, &drop_in)
        .and_then(|()| sh(&["systemctl", "daemon-reload"]).map(drop))
        .and_then(|()| start_tool("guard"))
        .and_then(|()| {
            clean_slate()?;
            cost_job()?;
            scrape::scrape(METRICS_ADDR)
        })
        .map(|body| bpf_stats(&body));
    stop_tool("guard");
    let _ = fs::remove_file(METRICS_DROP_IN);
    match programs {
        Ok(p) => v["bpf"] = p,
        Err(e) => errors.push(e),
    }
    step(&format!("cost: idle wake-ups over {} s", s.idle.as_secs()));
    let _ = sh(&["systemctl", "daemon-reload"]);
    v["idle"] = idle_wakeups(s.idle);
    let _ = put_file(NO_WATCHDOG_DROP_IN, "[Service]\nWatchdogSec=0\n");
    let _ = sh(&["systemctl", "daemon-reload"]);
    v["idle_no_watchdog"] = idle_wakeups(s.idle);
    let _ = fs::remove_file(NO_WATCHDOG_DROP_IN);
    let _ = sh(&["systemctl", "daemon-reload"]);
    v["errors"] = json!(errors);
    v
}

/// Per program: runs and ns per run, from the OpenMetrics text.
pub fn bpf_stats(body: &str) -> Value {
    let mut out = serde_json::Map::new();
    for l in body.lines() {
        let Some(rest) = l.strip_prefix("guard_bpf_run_count_total{program=\"") else {
            continue;
        };
        let Some((prog, count)) = rest.split_once("\"} ") else {
            continue;
        };
        let runs: f64 = count.trim().parse().unwrap_or(0.0);
        let secs = scrape::metric(
            body,
            &format!("guard_bpf_run_time_seconds_total{{program=\"{prog}\"}}"),
        );
        out.insert(
            prog.to_owned(),
            json!({"runs": runs, "ns_per_run": secs.filter(|_| runs > 0.0).map(|s| s * 1e9 / runs)}),
        );
    }
    Value::Object(out)
}

pub fn run() -> Value {
    let s = Settings::from_cmdline(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    step(&format!(
        "bench: window {} s, idle {} s, skipping {:?}",
        s.window.as_secs(),
        s.idle.as_secs(),
        s.skip
    ));
    if let Err(e) = prepare() {
        return json!({"pass": false, "failures": [e]});
    }
    for tool in TOOLS {
        let todo: Vec<&str> = CASES
            .into_iter()
            .filter(|c| !s.skip.contains(&format!("{tool}/{c}")))
            .collect();
        if todo.is_empty() {
            continue;
        }
        step(&format!("starting {tool}"));
        if let Err(e) = start_tool(tool) {
            for case in todo {
                console(
                    "GUARD-CASE",
                    &json!({"tool": tool, "case": case, "error": e}),
                );
            }
            stop_tool(tool);
            continue;
        }
        for case in todo {
            step(&format!("{tool} / {case}"));
            let mut v = run_case(tool, case, &s);
            if let Some(unit) = unit_of(tool) {
                v["tool_active_after"] = json!(prop(unit, "ActiveState"));
            }
            if tool == "guard"
                && let Some(pid) = guard_pid()
            {
                v["guard_rss_kib"] = json!(status_kib(pid, "VmRSS"));
            }
            console("GUARD-CASE", &v);
        }
        stop_tool(tool);
    }
    if !s.skip.iter().any(|x| x == "cost") {
        step("cost of the guard");
        console("GUARD-COST", &run_cost(&s));
    }
    json!({"pass": true})
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
            hog-141     [001] d..1.    10.500000: mm_vmscan_memcg_reclaim_end: nr_reclaimed=3
            hog-141     [001] d..1.    10.600000: mm_vmscan_memcg_reclaim_end: nr_reclaimed=0
            hog-141     [001] d..1.    10.700000: mm_vmscan_memcg_reclaim_end: nr_reclaimed=0
          guard-99      [000] d..2.    10.750000: signal_generate: sig=9 errno=0 code=0 comm=hog pid=141 grp=1 res=0
            hog-141     [001] .....    10.760000: sched_process_exit: comm=hog pid=141 prio=120
     oomd-77      [000] d..2.    10.800000: signal_generate: sig=9 errno=0 code=0 comm=bystander pid=140 grp=1 res=0
";

    #[test]
    fn judges_kill_latency_exit_and_innocents_from_the_trace() {
        let v = judge(TRACE, Some(141), 10.0, &[140]);
        assert_eq!(v["killer"], "guard");
        assert_eq!(v["signal"], 9);
        assert!((v["no_progress_to_signal_ms"].as_f64().unwrap() - 150.0).abs() < 1e-6);
        assert!((v["signal_to_exit_ms"].as_f64().unwrap() - 10.0).abs() < 1e-6);
        assert!((v["first_no_progress_s"].as_f64().unwrap() - 0.6).abs() < 1e-6);
        assert_eq!(v["hog_passes"], 3);
        assert_eq!(v["hog_passes_no_progress"], 2);
        assert_eq!(v["innocents_signalled"][0]["comm"], "bystander");
        assert_eq!(v["innocents_signalled"][0]["by"], "oomd");
    }

    #[test]
    fn a_kill_by_pid_1_is_laid_at_the_door_of_whoever_started_it() {
        let trace = "\
     oomd-77      [000] d..2.    10.700000: signal_generate: sig=9 errno=0 code=0 comm=sh pid=139 grp=1 res=0
        systemd-1       [000] d..2.    10.720000: signal_generate: sig=15 errno=0 code=0 comm=hog pid=141 grp=1 res=0
";
        let v = judge(trace, Some(141), 10.0, &[140]);
        assert_eq!(v["killer"], "oomd (then systemd stopped the unit)");
        assert_eq!(v["signal"], 15);
        // PID 1 alone, with nobody before it, is named as it is.
        let v = judge(
            trace.lines().nth(1).unwrap_or_default(),
            Some(141),
            10.0,
            &[],
        );
        assert_eq!(v["killer"], "systemd");
    }

    #[test]
    fn an_unkilled_hog_has_no_killer_and_signals_elsewhere_are_not_counted() {
        let trace: String = TRACE.lines().take(3).collect::<Vec<_>>().join("\n");
        let v = judge(&trace, Some(141), 10.0, &[140]);
        assert!(v.get("killer").is_none());
        assert_eq!(v["hog_exited"], false);
        // A signal to a process outside the case is not an innocent of it.
        let v = judge(TRACE, Some(141), 10.0, &[555]);
        assert_eq!(v["innocents_signalled"], json!([]));
    }

    #[test]
    fn each_peer_unmasks_only_its_own_units() {
        assert_eq!(masked_units_of("earlyoom"), ["earlyoom.service"]);
        assert_eq!(masked_units_of("oomd"), ["oomd.service"]);
        assert_eq!(
            masked_units_of("systemd-oomd-aggressive"),
            ["systemd-oomd.socket", "systemd-oomd.service"]
        );
        assert!(masked_units_of("guard").is_empty() && masked_units_of("none").is_empty());
    }

    #[test]
    fn bystander_worst_is_read_before_it_ends() {
        assert_eq!(
            worst_late_ms("sample 1 2500\nsample 2 900000\nsample 3 40\n"),
            900.0
        );
        assert_eq!(worst_late_ms(""), 0.0);
    }

    #[test]
    fn settings_come_from_the_kernel_command_line() {
        let s = Settings::from_cmdline(
            "console=ttyS0 guard.bench.window=20 guard.bench.skip=none/benign,cost quiet",
        );
        assert_eq!(s.window, Duration::from_secs(20));
        assert_eq!(s.idle, Duration::from_secs(60));
        assert_eq!(s.skip, ["none/benign", "cost"]);
    }

    #[test]
    fn bpf_stats_per_program() {
        let body = "guard_bpf_run_count_total{program=\"memcg_reclaim_end\"} 200\n\
                    guard_bpf_run_time_seconds_total{program=\"memcg_reclaim_end\"} 0.0001\n\
                    guard_bpf_run_count_total{program=\"kswapd_wake\"} 0\n";
        let v = bpf_stats(body);
        assert!((v["memcg_reclaim_end"]["ns_per_run"].as_f64().unwrap() - 500.0).abs() < 1e-6);
        assert_eq!(v["kswapd_wake"]["ns_per_run"], Value::Null);
    }
}
