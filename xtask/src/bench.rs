//! `cargo xtask bench`: the guard against the tools people use today, and
//! what it costs, in the systemd VM on every kernel of the matrix.
//!
//! The guest half is `guard-scenario bench` (tests/src/bench.rs): one boot
//! per kernel runs every case under every tool and prints one
//! `GUARD-CASE {json}` line per case and one `GUARD-COST {json}` line. This
//! half builds the image, boots, collects those lines (booting again after
//! an emulator fault, skipping what was measured), keeps them in
//! `docs/bench/results.json`, and writes BENCHMARKS.md, the chart
//! `docs/bench/kill-latency.svg` and the headline block in README.md.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde_json::{Value, json};

use crate::vm::{
    self, Kernel,
    rootfs::{self, RunDir},
};

/// Tools and cases in the guest's order: the guest's own file.
#[path = "../../tests/src/bench_plan.rs"]
mod plan;
use plan::{CASES, TOOLS, median};

/// What each tool is, as the tables say it.
fn describe(tool: &str) -> &'static str {
    match tool {
        "none" => "nothing but the kernel",
        "earlyoom" => "earlyoom 1.7, Debian defaults (`-r 3600`: 10 % MemAvailable / 10 % swap)",
        "oomd" => {
            "oomd 0.5, `pressure_above` bench.slice 60 % for 1 s, then `kill_by_memory_size_or_growth` on bench.slice/*, interval 1 s"
        }
        "systemd-oomd" => {
            "systemd-oomd 252, `ManagedOOMMemoryPressure=kill` on the slice, defaults (60 % for 30 s)"
        }
        "systemd-oomd-aggressive" => {
            "the same with `DefaultMemoryPressureLimit=20%`, `DefaultMemoryPressureDurationSec=2s`"
        }
        "guard" => "guard, `deploy/guard.service` and the embedded default policy",
        _ => "",
    }
}

/// The bench guest's RAM.
const BENCH_MEM_MIB: u32 = 1024;
const BENCH_SERVICE: &str = "\
[Unit]
Description=guard bench: every tool, every case; powers off when done
After=multi-user.target

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/usr/local/bin/guard-scenario bench
ExecStopPost=-/usr/bin/systemctl poweroff -f
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

const CASE_TAG: &str = "GUARD-CASE ";
const COST_TAG: &str = "GUARD-COST ";
const README_BEGIN: &str = "<!-- bench:begin (cargo xtask bench writes this block) -->";
const README_END: &str = "<!-- bench:end -->";

pub struct Options {
    /// The native kill-path benchmark's line, when it ran.
    pub native: Option<String>,
    pub kernel: Option<String>,
    pub window_secs: u64,
    pub idle_secs: u64,
    /// Only regenerate the documents from the kept results.
    pub report_only: bool,
}

fn results_path(root: &Path) -> PathBuf {
    root.join("docs").join("bench").join("results.json")
}

/// The whole bench: VM runs (unless `report_only`), then the documents.
pub fn run(bin_dir: Option<&Path>, opts: &Options) -> Result<()> {
    let root = crate::workspace_root();
    let results = results_path(&root);
    let data = if opts.report_only {
        let text = fs::read_to_string(&results).with_context(|| {
            format!(
                "reading {} (run `cargo xtask bench` once)",
                results.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", results.display()))?
    } else {
        let Some(bin_dir) = bin_dir else {
            bail!("no binaries to run the bench with");
        };
        let mut kernels = vm::ensure_kernels()?;
        if let Some(k) = &opts.kernel {
            kernels.retain(|x| &x.label == k);
            if kernels.is_empty() {
                bail!("no kernel labelled {k:?} in the matrix (6.1, 6.12, 7.2)");
            }
        }
        let mut data = run_vms(bin_dir, &kernels, opts)?;
        data["native_kill_path"] = json!(opts.native);
        if let Some(dir) = results.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&results, serde_json::to_string_pretty(&data)? + "\n")
            .with_context(|| format!("writing {}", results.display()))?;
        data
    };
    let md = render_markdown(&data);
    fs::write(root.join("BENCHMARKS.md"), &md).context("writing BENCHMARKS.md")?;
    let svg = root.join("docs").join("bench").join("kill-latency.svg");
    draw_chart(&data, &svg)?;
    let readme = root.join("README.md");
    let text = fs::read_to_string(&readme).context("reading README.md")?;
    let updated = replace_block(&text, &headline(&data))
        .with_context(|| format!("README.md has no {README_BEGIN} ... {README_END} block"))?;
    fs::write(&readme, updated).context("writing README.md")?;
    eprintln!(
        "xtask: wrote BENCHMARKS.md, {} and the README headline ({})",
        svg.display(),
        results.display()
    );
    let missing = problems(&data);
    if !missing.is_empty() {
        bail!(
            "{} case(s) of the bench were not measured (the documents say so):\n{}",
            missing.len(),
            missing.join("\n")
        );
    }
    Ok(())
}

/// Cases that ended in an error or never ran, and cost parts that failed.
fn problems(data: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for k in kernels(data) {
        let label = k["label"].as_str().unwrap_or("?");
        for t in TOOLS {
            for c in CASES {
                let found = k["cases"].as_array().and_then(|cs| {
                    cs.iter()
                        .find(|x| x["tool"] == t && x["case"] == c)
                        .cloned()
                });
                match found {
                    None => out.push(format!("{label} {t}/{c}: not measured")),
                    Some(x) if x["error"].is_string() => out.push(format!(
                        "{label} {t}/{c}: {}",
                        x["error"].as_str().unwrap_or("")
                    )),
                    Some(x) if !strays(&x).is_empty() => out.push(format!(
                        "{label} {t}/{c}: other tools were running: {}",
                        strays(&x).join(", ")
                    )),
                    Some(_) => {}
                }
            }
        }
        if k["cost"].is_null() {
            out.push(format!("{label} cost: not measured"));
        }
        for e in k["cost"]["errors"].as_array().into_iter().flatten() {
            out.push(format!("{label} cost: {}", e.as_str().unwrap_or("?")));
        }
    }
    out
}

/// Boots each kernel once (again after an emulator fault, skipping what it
/// measured) and returns `{"kernels": [{label, release, cases, cost}], ...}`.
fn run_vms(bin_dir: &Path, kernels: &[Kernel], opts: &Options) -> Result<Value> {
    let guard = bin_dir.join("guard");
    let scenario = bin_dir.join("guard-scenario");
    let root = crate::workspace_root();
    let unit = fs::read_to_string(root.join("deploy/guard.service"))
        .context("reading deploy/guard.service")?;
    let logs = root.join("target").join("vm");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let cache = rootfs::cache_dir()?;
    let base = rootfs::ensure_base_image(&cache)?;
    rootfs::remove_stale_runs(&cache);
    let run = RunDir::create(cache.join(format!("run-{}", std::process::id())))?;
    let image = run.0.join("root.img");
    let payload = rootfs::stage_payload(
        &run.0.join("stage"),
        &guard,
        &scenario,
        &unit,
        ("guard-bench.service", BENCH_SERVICE),
    )?;
    rootfs::make_run_image(&base, &image, &payload)?;

    let cases = TOOLS.len() * CASES.len();
    // Every case may take its window plus start-up and clean-up; the cost
    // part takes about two idle periods and a minute of jobs.
    let timeout =
        Duration::from_secs(cases as u64 * (opts.window_secs + 40) + 2 * opts.idle_secs + 600);
    let mut out = Vec::new();
    for k in kernels {
        let log = logs.join(format!("bench-{}.log", k.label));
        let started = Instant::now();
        let mut found: Vec<Value> = Vec::new();
        let mut cost: Option<Value> = None;
        let mut faults: Vec<String> = Vec::new();
        loop {
            let mut skip: Vec<String> = found
                .iter()
                .map(|c| {
                    format!(
                        "{}/{}",
                        c["tool"].as_str().unwrap_or(""),
                        c["case"].as_str().unwrap_or("")
                    )
                })
                .collect();
            if cost.is_some() {
                skip.push("cost".to_owned());
            }
            let mut append = format!(
                "guard.bench.window={} guard.bench.idle={}",
                opts.window_secs, opts.idle_secs
            );
            if !skip.is_empty() {
                append.push_str(&format!(" guard.bench.skip={}", skip.join(",")));
            }
            eprintln!(
                "xtask: [{} bench] booting {} ({} of {cases} cases to go; up to {:.0} min) ...",
                k.label,
                k.release,
                cases - found.len(),
                timeout.as_secs_f64() / 60.0
            );
            let done = std::sync::atomic::AtomicBool::new(false);
            let result = std::thread::scope(|scope| {
                scope.spawn(|| show_progress(&k.label, &log, &done));
                let r = rootfs::boot(k, &image, BENCH_MEM_MIB, &append, &log, timeout);
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                r
            });
            let console = fs::read_to_string(&log).unwrap_or_default();
            let (new_cases, new_cost) = parse_console(&console);
            found.extend(new_cases);
            if new_cost.is_some() {
                cost = new_cost;
            }
            match result {
                Ok(_) => break,
                Err(e) => {
                    let text = format!("{e:#}");
                    let first = text.lines().next().unwrap_or_default().to_owned();
                    if text.contains(vm::GUEST_FAULT) && faults.len() < vm::MAX_RETRIES {
                        let kept = log.with_extension(format!("fault{}.log", faults.len() + 1));
                        let _ = fs::copy(&log, &kept);
                        eprintln!("xtask: [{} bench] {first}; booting again", k.label);
                        faults.push(first);
                        continue;
                    }
                    eprintln!("xtask: [{} bench] FAILED: {first}", k.label);
                    faults.push(first);
                    break;
                }
            }
        }
        eprintln!(
            "xtask: [{} bench] {} cases in {:.0} s",
            k.label,
            found.len(),
            started.elapsed().as_secs_f64()
        );
        out.push(json!({
            "label": k.label, "release": k.release, "cases": found,
            "cost": cost, "faults": faults,
            "vm_seconds": started.elapsed().as_secs(),
        }));
    }
    Ok(json!({
        "window_secs": opts.window_secs,
        "idle_secs": opts.idle_secs,
        "date": today(),
        "host_cpu": host_cpu(),
        "kernels": out,
    }))
}

/// Prints each case's result (and the guest's steps) as the console shows
/// it, until `done`: a kernel's run takes a quarter of an hour.
fn show_progress(label: &str, log: &Path, done: &std::sync::atomic::AtomicBool) {
    let mut seen = 0;
    loop {
        let finished = done.load(std::sync::atomic::Ordering::Relaxed);
        let text = fs::read(log).unwrap_or_default();
        if text.len() > seen {
            // Whole lines only; a partial one is read again next time.
            let end = text[seen..]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(seen, |i| seen + i + 1);
            for line in String::from_utf8_lossy(&text[seen..end]).lines() {
                let (cases, _) = parse_console(line);
                for c in &cases {
                    eprintln!("xtask: [{label} bench] {}", case_line(c));
                }
                if line.contains(COST_TAG) {
                    eprintln!("xtask: [{label} bench] cost measured");
                } else if let Some(i) = line.find("GUARD-STEP ") {
                    eprintln!(
                        "xtask: [{label} bench]   {}",
                        line[i + 11..].trim().trim_matches('"')
                    );
                }
            }
            seen = end;
        }
        if finished {
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn host_cpu() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The cases and the cost line on a console.
fn parse_console(console: &str) -> (Vec<Value>, Option<Value>) {
    let tagged = |tag: &str| {
        console
            .lines()
            .filter_map(|l| l.find(tag).map(|i| l[i + tag.len()..].trim()))
            .filter_map(|t| serde_json::from_str::<Value>(t).ok())
            .filter(Value::is_object)
            .collect::<Vec<_>>()
    };
    (tagged(CASE_TAG), tagged(COST_TAG).pop())
}

// ---------------------------------------------------------------------------
// Reading the results
// ---------------------------------------------------------------------------

fn f(v: &Value, key: &str) -> Option<f64> {
    v[key].as_f64()
}

/// Units of the tool itself, as `tools_running` names them.
fn own_units(tool: &str) -> &'static [&'static str] {
    match tool {
        "earlyoom" => &["earlyoom.service"],
        "oomd" => &["oomd.service"],
        "systemd-oomd" | "systemd-oomd-aggressive" => {
            &["systemd-oomd.socket", "systemd-oomd.service"]
        }
        "guard" => &["guard.service"],
        _ => &[],
    }
}

/// Other tools that were running during a case: it does not count then.
fn strays(c: &Value) -> Vec<String> {
    let own = own_units(c["tool"].as_str().unwrap_or(""));
    c["tools_running"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|u| !own.contains(u))
        .map(str::to_owned)
        .collect()
}

/// Who killed the hog, or why nobody did.
fn outcome(c: &Value) -> String {
    let stray = strays(c);
    let also = if stray.is_empty() {
        String::new()
    } else {
        format!(" (INVALID: {} also running)", stray.join(", "))
    };
    format!("{}{also}", outcome_alone(c))
}

fn outcome_alone(c: &Value) -> String {
    if let Some(e) = c["error"].as_str() {
        return format!("error: {e}");
    }
    match c["killer"].as_str() {
        Some(k) => format!(
            "killed by {k}{}",
            if c["signal"] == 15 { " (SIGTERM)" } else { "" }
        ),
        None if c["hog_alive_at_end"] == true => {
            format!("alive after {} s", c["window_s"].as_u64().unwrap_or(0))
        }
        None if c["hog_pid"].is_null() => "-".to_owned(),
        None => "gone, no signal seen".to_owned(),
    }
}

fn ms(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 10_000.0 => format!("{:.1} s", v / 1000.0),
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) => format!("{v:.1} ms"),
        None => "-".to_owned(),
    }
}

fn innocents(c: &Value) -> String {
    let list = c["innocents_signalled"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        return "none".to_owned();
    }
    list.iter()
        .map(|i| {
            format!(
                "{} ({}, sig {}, by {})",
                i["comm"].as_str().unwrap_or("?"),
                i["pid"],
                i["sig"],
                i["by"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn memory(c: &Value) -> String {
    match (f(c, "slice_peak_mib"), f(c, "slice_after_mib")) {
        (Some(p), Some(a)) if p > 0.0 => {
            format!(
                "{p:.0} -> {a:.0} MiB ({:.0} % back)",
                (p - a).max(0.0) / p * 100.0
            )
        }
        _ => "-".to_owned(),
    }
}

fn case_line(c: &Value) -> String {
    if let Some(ok) = c["job_ok"].as_bool() {
        return format!(
            "{} / {}: job {}{}; bystander worst {}; processes signalled {}",
            c["tool"].as_str().unwrap_or("?"),
            c["case"].as_str().unwrap_or("?"),
            if ok { "finished" } else { "did NOT finish" },
            f(c, "job_s").map_or(String::new(), |s| format!(" in {s:.1} s")),
            ms(f(c, "bystander_worst_ms")),
            innocents(c)
        );
    }
    format!(
        "{} / {}: {}; no-progress->signal {}; bystander worst {}; innocents {}",
        c["tool"].as_str().unwrap_or("?"),
        c["case"].as_str().unwrap_or("?"),
        outcome(c),
        ms(f(c, "no_progress_to_signal_ms")),
        ms(f(c, "bystander_worst_ms")),
        innocents(c)
    )
}

fn kernels(data: &Value) -> Vec<Value> {
    data["kernels"].as_array().cloned().unwrap_or_default()
}

/// Every (kernel label, case) of `tool` and `case`.
fn cells(data: &Value, tool: &str, case: &str) -> Vec<(String, Value)> {
    kernels(data)
        .iter()
        .filter_map(|k| {
            let c = k["cases"]
                .as_array()?
                .iter()
                .find(|c| c["tool"] == tool && c["case"] == case)?
                .clone();
            Some((k["label"].as_str().unwrap_or("?").to_owned(), c))
        })
        .collect()
}

/// Over kernels: (hog killed by the tool itself, cells, median no-progress
/// -> signal over the kills, median bystander worst, innocents signalled).
struct Summary {
    killed: usize,
    n: usize,
    kill_ms: Option<f64>,
    bystander_ms: Option<f64>,
    innocents: usize,
    /// Cells in which an innocent was signalled.
    innocents_cells: usize,
}

fn summarize(data: &Value, tool: &str, case: &str) -> Summary {
    let cells = cells(data, tool, case);
    let killed: Vec<&Value> = cells
        .iter()
        .map(|(_, c)| c)
        .filter(|c| c["killer"].is_string())
        .collect();
    Summary {
        killed: killed.len(),
        n: cells.len(),
        kill_ms: median(
            killed
                .iter()
                .filter_map(|c| f(c, "no_progress_to_signal_ms"))
                .collect(),
        ),
        bystander_ms: median(
            cells
                .iter()
                .filter_map(|(_, c)| f(c, "bystander_worst_ms"))
                .collect(),
        ),
        innocents: cells
            .iter()
            .map(|(_, c)| c["innocents_signalled"].as_array().map_or(0, Vec::len))
            .sum(),
        innocents_cells: cells
            .iter()
            .filter(|(_, c)| {
                c["innocents_signalled"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
            })
            .count(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.0}x", a / b),
        _ => "-".to_owned(),
    }
}

/// The README's headline block (between the markers).
pub fn headline(data: &Value) -> String {
    let g = summarize(data, "guard", "seed-siblings");
    let gs = summarize(data, "guard", "seed-shared");
    let none = summarize(data, "none", "seed-siblings");
    let mut fastest_peer: Option<(&str, f64, usize, usize)> = None;
    for tool in TOOLS.iter().filter(|t| !matches!(**t, "guard" | "none")) {
        let s = summarize(data, tool, "seed-siblings");
        if let Some(k) = s.kill_ms
            && fastest_peer.is_none_or(|(_, best, _, _)| k < best)
        {
            fastest_peer = Some((tool, k, s.killed, s.n));
        }
    }
    let benign = summarize(data, "guard", "benign");
    let shared_bystander = if gs.innocents == 0 {
        "the bystander was not signalled".to_owned()
    } else {
        format!("{} innocent(s) were signalled", gs.innocents)
    };
    let shared_peers: Vec<String> = TOOLS
        .iter()
        .filter(|t| !matches!(**t, "guard" | "none"))
        .filter_map(|t| {
            let s = summarize(data, t, "seed-shared");
            (s.killed > 0).then(|| {
                format!(
                    "{t} killed the bystander with it {} of {} times",
                    s.innocents_cells, s.killed
                )
            })
        })
        .collect();
    let never: Vec<&str> = TOOLS
        .iter()
        .filter(|t| !matches!(**t, "guard" | "none"))
        .filter(|t| {
            let s = summarize(data, t, "seed-siblings");
            s.n > 0 && s.killed == 0
        })
        .copied()
        .collect();
    let never = if never.is_empty() {
        String::new()
    } else {
        format!(
            "; {} never killed it within {} s",
            never.join(" and "),
            data["window_secs"]
        )
    };
    let peer = match fastest_peer {
        Some((tool, k, killed, n)) => format!(
            "the fastest peer, {tool}, took {} (killed on {killed} of {n} kernels): {} slower",
            ms(Some(k)),
            ratio(Some(k), g.kill_ms)
        ),
        None => "no peer killed the hog at all".to_owned(),
    };
    format!(
        "{README_BEGIN}\n\
         Measured by `cargo xtask bench` ({}, {} kernels, qemu TCG; details in\n\
         [BENCHMARKS.md](BENCHMARKS.md)), from the kernel's own trace:\n\n\
         - Seed incident, hog and bystander in sibling cgroups: guard killed the hog on\n  \
         {} of {} kernels, median {} after its first reclaim pass without progress;\n  \
         {peer}{never}. The bystander's worst stall: {} with guard, {} with nothing.\n\
         - Hog and bystander in one cgroup: guard killed the hog on {} of {} kernels (median {}),\n  \
         and {shared_bystander}{}.\n\
         - Benign job (page cache, short bursts over memory.high): guard signalled {} process(es) in {} run(s).\n\
         - Cost: {}.\n\
         {README_END}",
        data["date"].as_str().unwrap_or("?"),
        kernels(data).len(),
        g.killed,
        g.n,
        ms(g.kill_ms),
        ms(g.bystander_ms),
        ms(none.bystander_ms),
        gs.killed,
        gs.n,
        ms(gs.kill_ms),
        if shared_peers.is_empty() {
            String::new()
        } else {
            format!("; {}", shared_peers.join(", "))
        },
        benign.innocents,
        benign.n,
        cost_headline(data),
    )
}

fn cost_headline(data: &Value) -> String {
    let costs: Vec<Value> = kernels(data).iter().map(|k| k["cost"].clone()).collect();
    let ratio = median(
        costs
            .iter()
            .filter_map(|c| f(c, "throughput_ratio"))
            .collect(),
    );
    let rss = median(costs.iter().filter_map(|c| f(c, "guard_rss_kib")).collect());
    let ns = median(
        costs
            .iter()
            .filter_map(|c| c["bpf"]["memcg_reclaim_end"]["ns_per_run"].as_f64())
            .collect(),
    );
    let idle = median(
        costs
            .iter()
            .filter_map(|c| f(&c["idle_no_watchdog"], "voluntary"))
            .collect(),
    );
    // How much runs without the guard differ among themselves: the ratio
    // means nothing below that.
    let spread = median(
        costs
            .iter()
            .filter_map(|c| {
                let xs: Vec<f64> = c["throughput_off_mib_s"]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_f64)
                    .collect();
                let lo = xs.iter().copied().reduce(f64::min)?;
                let hi = xs.iter().copied().reduce(f64::max)?;
                let mid = median(xs)?;
                (mid > 0.0).then(|| (hi - lo) / mid)
            })
            .collect(),
    );
    format!(
        "reclaim-heavy job at {} of its speed without guard (median ratio; its runs without \
         guard alone differ by {} under TCG), \
         {} per memcg reclaim pass in BPF, {} resident, {} wake-ups in {} s idle without the \
         systemd watchdog",
        ratio.map_or("-".to_owned(), |r| format!("{:.1} %", r * 100.0)),
        spread.map_or("-".to_owned(), |x| format!("{:.0} %", x * 100.0)),
        ns.map_or("-".to_owned(), |n| format!("{:.1} µs", n / 1000.0)),
        rss.map_or("-".to_owned(), |k| format!("{:.1} MiB", k / 1024.0)),
        idle.map_or("-".to_owned(), |n| format!("{n:.0}")),
        data["idle_secs"],
    )
}

fn replace_block(text: &str, block: &str) -> Option<String> {
    let start = text.find(README_BEGIN)?;
    let end = text[start..].find(README_END)? + start + README_END.len();
    Some(format!("{}{block}{}", &text[..start], &text[end..]))
}

pub fn render_markdown(data: &Value) -> String {
    let ks = kernels(data);
    let mut md = String::new();
    let kernel_list: Vec<String> = ks
        .iter()
        .map(|k| {
            format!(
                "{} (`{}`)",
                k["label"].as_str().unwrap_or("?"),
                k["release"].as_str().unwrap_or("?")
            )
        })
        .collect();
    md.push_str(&format!(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` on {} from `docs/bench/results.json`; do not edit by hand.\n\
         Kernels: {}. Each runs in the systemd VM of the test suite (Debian bookworm, systemd 252,\n\
         1 GiB, 2 vCPUs, no swap) under qemu TCG on {}: emulated, so absolute times are\n\
         several times those of real hardware; compare tools with each other, not with a machine.\n\n",
        data["date"].as_str().unwrap_or("?"),
        kernel_list.join(", "),
        data["host_cpu"].as_str().unwrap_or("?"),
    ));
    md.push_str("## How to reproduce\n\n```sh\ncargo xtask bench                    # every kernel, about 20 min each under TCG\ncargo xtask bench --kernel 6.12      # one kernel\ncargo xtask bench --window-secs 30   # shorter cases (default 90 s; systemd-oomd's defaults need about 60)\ncargo xtask bench --report-only      # rewrite this file from docs/bench/results.json\n```\n\n");
    md.push_str(&format!(
        "## What runs\n\nThe slice `bench.slice` has `MemoryHigh=64M`, `MemoryMax=128M`, `MemorySwapMax=0`,\n\
         `ManagedOOMMemoryPressure=kill`. Cases, each as transient units in it (at most {} s each):\n\n\
         - **seed-siblings**: the seed incident. A bystander (a 10 ms loop that maps, touches and unmaps\n  256 KiB, like a server's event loop) in `bench-by.service`, then a hog taking 100 MiB and touching\n  it forever in `bench-hog.service`: two sibling cgroups under the capped parent.\n\
         - **seed-shared**: the same two processes in one service (`bench-pair.service`).\n\
         - **benign**: a job that writes a 192 MiB file and reads it back twice through the page cache,\n  then makes 5 bursts 1 MiB over memory.high that it frees itself, next to the bystander. Nothing\n  should die.\n\n\
         Tools, one at a time, the others stopped:\n\n",
        data["window_secs"]
    ));
    for t in TOOLS {
        md.push_str(&format!("- **{t}**: {}\n", describe(t)));
    }
    md.push_str(
        "\nMeasured from tracefs (`trace_clock=mono`), the same way for every tool:\n\
         `mm_vmscan_memcg_reclaim_end` of the hog (its first pass with `nr_reclaimed=0` starts the clock),\n\
         `signal:signal_generate` of SIGKILL or SIGTERM (who sent it, to whom), `sched:sched_process_exit`\n\
         (the hog's memory is freed before it) and `oom:mark_victim`. Memory is the slice's\n\
         `memory.current`, sampled every 100 ms: its peak and its value at the end of the case.\n\
         The bystander's worst lateness is its own account of its 10 ms ticks.\n\n",
    );

    md.push_str("## Summary (medians over kernels)\n\n");
    md.push_str("| tool | siblings: hog killed | siblings: first no-progress -> signal | vs guard | siblings: bystander worst | shared: hog killed | shared: first no-progress -> signal | shared: innocents signalled | benign: processes signalled |\n|---|---|---|---|---|---|---|---|---|\n");
    let guard = summarize(data, "guard", "seed-siblings");
    for t in TOOLS {
        let s = summarize(data, t, "seed-siblings");
        let sh = summarize(data, t, "seed-shared");
        let b = summarize(data, t, "benign");
        md.push_str(&format!(
            "| {t} | {} of {} | {} | {} | {} | {} of {} | {} | {} | {} |\n",
            s.killed,
            s.n,
            ms(s.kill_ms),
            ratio(s.kill_ms, guard.kill_ms),
            ms(s.bystander_ms),
            sh.killed,
            sh.n,
            ms(sh.kill_ms),
            sh.innocents,
            b.innocents,
        ));
    }
    md.push_str("\n![time from the hog's first reclaim pass without progress to the signal that ended it](docs/bench/kill-latency.svg)\n\n");
    let labels: Vec<&str> = ks.iter().filter_map(|k| k["label"].as_str()).collect();
    md.push_str(&format!(
        "One point per kernel ({}, left to right); a cross at the top: the hog was still alive when\n\
         the case ended.\n\n",
        labels.join(", ")
    ));

    for case in CASES {
        md.push_str(&format!("## {case}, per kernel\n\n"));
        if case == "benign" {
            md.push_str("| kernel | tool | job finished | job time | bystander worst | processes signalled | slice memory |\n|---|---|---|---|---|---|---|\n");
        } else {
            md.push_str("| kernel | tool | hog | first no-progress -> signal | signal -> exit | reclaim passes (none freed) | bystander worst | innocents signalled | slice memory |\n|---|---|---|---|---|---|---|---|---|\n");
        }
        for k in &ks {
            let label = k["label"].as_str().unwrap_or("?");
            for t in TOOLS {
                let Some(c) = k["cases"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["tool"] == t && c["case"] == case))
                else {
                    md.push_str(&format!("| {label} | {t} | not measured | | | | | | |\n"));
                    continue;
                };
                if case == "benign" {
                    md.push_str(&format!(
                        "| {label} | {t} | {} | {} | {} | {} | {} |\n",
                        match c["job_ok"].as_bool() {
                            Some(true) => "yes".to_owned(),
                            Some(false) => "NO".to_owned(),
                            None => outcome(c),
                        },
                        f(c, "job_s").map_or("-".to_owned(), |s| format!("{s:.1} s")),
                        ms(f(c, "bystander_worst_ms")),
                        innocents(c),
                        memory(c),
                    ));
                } else {
                    md.push_str(&format!(
                        "| {label} | {t} | {} | {} | {} | {} ({}) | {}{} | {} | {} |\n",
                        outcome(c),
                        ms(f(c, "no_progress_to_signal_ms")),
                        ms(f(c, "signal_to_exit_ms")),
                        c["hog_passes"],
                        c["hog_passes_no_progress"],
                        ms(f(c, "bystander_worst_ms")),
                        if c["bystander_alive"] == false {
                            " (killed)"
                        } else {
                            ""
                        },
                        innocents(c),
                        memory(c),
                    ));
                }
            }
        }
        md.push('\n');
    }

    md.push_str("## Cost of the guard\n\n");
    if let Some(lines) = data["native_kill_path"].as_str() {
        md.push_str(
            "The user-space half of the kill path, natively on the build machine (the\n\
             `kill_path` example: verdict in hand to SIGKILL sent, read from a stand-in cgroup\n\
             directory):\n\n",
        );
        for line in lines.lines() {
            md.push_str(&format!("- {line}\n"));
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "A reclaim-heavy job (writes a 128 MiB file, then reads it 3 times through the page cache in a\n\
         slice with `MemoryHigh=32M`: every read is a stream of memcg reclaim passes, each of which runs\n\
         the guard's programs) runs 5 times without and 5 times with the guard, alternating; the ratio\n\
         is of the medians. BPF run time per program comes from the kernel's BPF statistics (enabled\n\
         while the guard serves /metrics) over one more run of the job. Memory is the daemon's VmRSS\n\
         after the last run. Wake-ups are the daemon's context switches (all threads) over {} s\n\
         with nobody attached and nothing stalled: as shipped (`WatchdogSec=10s`: a ping every 5 s),\n\
         and with the watchdog off.\n\n",
        data["idle_secs"]
    ));
    md.push_str("| kernel | MiB/s without | MiB/s with | ratio | BPF ns per run (runs) | RSS / peak | idle wake-ups, shipped | idle wake-ups, no watchdog |\n|---|---|---|---|---|---|---|---|\n");
    for k in &ks {
        let c = &k["cost"];
        let list = |key: &str| {
            c[key]
                .as_array()
                .map(|xs| {
                    xs.iter()
                        .filter_map(Value::as_f64)
                        .map(|x| format!("{x:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "-".to_owned())
        };
        let mut progs: Vec<(String, f64, f64)> = c["bpf"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(p, v)| {
                        Some((p.clone(), v["ns_per_run"].as_f64()?, v["runs"].as_f64()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        progs.sort_by(|a, b| b.2.total_cmp(&a.2));
        let bpf = if progs.is_empty() {
            "-".to_owned()
        } else {
            progs
                .iter()
                .map(|(p, ns, runs)| format!("{p} {ns:.0} ({runs:.0})"))
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let wake = |key: &str| match (f(&c[key], "voluntary"), f(&c[key], "involuntary")) {
            (Some(v), Some(i)) => format!("{v:.0} + {i:.0} involuntary"),
            _ => c[key]["error"]
                .as_str()
                .map_or("-".to_owned(), |e| format!("error: {e}")),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {bpf} | {} / {} | {} | {} |\n",
            k["label"].as_str().unwrap_or("?"),
            list("throughput_off_mib_s"),
            list("throughput_on_mib_s"),
            f(c, "throughput_ratio").map_or("-".to_owned(), |r| format!("{r:.3}")),
            f(c, "guard_rss_kib").map_or("-".to_owned(), |x| format!("{:.1} MiB", x / 1024.0)),
            f(c, "guard_hwm_kib").map_or("-".to_owned(), |x| format!("{:.1} MiB", x / 1024.0)),
            wake("idle"),
            wake("idle_no_watchdog"),
        ));
    }
    let mut notes: Vec<String> = Vec::new();
    for k in &ks {
        for fault in k["faults"].as_array().into_iter().flatten() {
            notes.push(format!(
                "- {}: {}",
                k["label"].as_str().unwrap_or("?"),
                fault.as_str().unwrap_or("?")
            ));
        }
        for e in k["cost"]["errors"].as_array().into_iter().flatten() {
            notes.push(format!(
                "- {} cost: {}",
                k["label"].as_str().unwrap_or("?"),
                e.as_str().unwrap_or("?")
            ));
        }
    }
    if !notes.is_empty() {
        md.push_str("\n## Faults and errors during the run\n\nA guest kernel fault under TCG reboots the VM; the cases measured before it are kept.\n\n");
        md.push_str(&notes.join("\n"));
        md.push('\n');
    }
    md
}

// ---------------------------------------------------------------------------
// The chart
// ---------------------------------------------------------------------------

/// One point per kernel and seed case: the time from the hog's first
/// fruitless pass to its signal; hogs left alive sit on the top line.
fn draw_chart(data: &Value, out: &Path) -> Result<()> {
    let window = data["window_secs"].as_f64().unwrap_or(60.0);
    let top = window * 2.0;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (900, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "first reclaim pass without progress -> signal to the hog",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                -0.5f64..(TOOLS.len() as f64 - 0.5),
                (0.01f64..top).log_scale(),
            )
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_labels(TOOLS.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    TOOLS
                        .get(i as usize)
                        .map_or(String::new(), |t| (*t).to_owned())
                } else {
                    String::new()
                }
            })
            .y_desc("seconds (log)")
            .y_label_formatter(&|y| format!("{y}"))
            .disable_x_mesh()
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(-0.5, window), (TOOLS.len() as f64 - 0.5, window)],
                BLACK.mix(0.4),
            )))
            .map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("not killed within {window:.0} s"),
                (-0.45, window * 1.25),
                ("sans-serif", 13),
            )))
            .map_err(plot_err)?;
        for (ci, (case, colour)) in [("seed-siblings", BLUE), ("seed-shared", RED)]
            .into_iter()
            .enumerate()
        {
            let mut points = Vec::new();
            let mut alive = Vec::new();
            for (ti, tool) in TOOLS.iter().enumerate() {
                for (ki, (_, c)) in cells(data, tool, case).iter().enumerate() {
                    let x = ti as f64 + (ci as f64 - 0.5) * 0.3 + (ki as f64 - 1.0) * 0.06;
                    match f(c, "no_progress_to_signal_ms") {
                        Some(v) if c["killer"].is_string() => {
                            points.push((x, (v / 1000.0).max(0.011)))
                        }
                        _ => alive.push((x, window * 1.5)),
                    }
                }
            }
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 5, colour.filled())))
                .map_err(plot_err)?
                .label(format!("{case}: killed"))
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
            chart
                .draw_series(
                    alive
                        .iter()
                        .map(|p| Cross::new(*p, 5, colour.stroke_width(2))),
                )
                .map_err(plot_err)?
                .label(format!("{case}: hog alive at the end"))
                .legend(move |(x, y)| Cross::new((x + 8, y), 5, colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the bench chart: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(tool: &str, case: &str, killer: Option<&str>, kill_ms: f64, by_ms: f64) -> Value {
        let mut c = json!({
            "tool": tool, "case": case, "hog_pid": 100, "window_s": 60,
            "bystander_worst_ms": by_ms, "bystander_alive": true,
            "innocents_signalled": [], "slice_peak_mib": 80.0, "slice_after_mib": 4.0,
            "hog_passes": 10, "hog_passes_no_progress": 9,
        });
        match killer {
            Some(k) => {
                c["killer"] = json!(k);
                c["signal"] = json!(9);
                c["no_progress_to_signal_ms"] = json!(kill_ms);
                c["signal_to_exit_ms"] = json!(3.0);
            }
            None => c["hog_alive_at_end"] = json!(true),
        }
        c
    }

    fn data() -> Value {
        let kernel = |label: &str, guard_ms: f64| {
            let mut shared = case(
                "systemd-oomd",
                "seed-shared",
                Some("systemd-oomd"),
                40_000.0,
                0.0,
            );
            shared["innocents_signalled"] =
                json!([{"comm": "bystander", "pid": 7, "sig": 9, "by": "systemd-oomd"}]);
            shared["bystander_alive"] = json!(false);
            json!({"label": label, "release": format!("{label}.0-x"), "faults": [],
                "cases": [
                    case("none", "seed-siblings", None, 0.0, 2000.0),
                    case("systemd-oomd", "seed-siblings", Some("systemd-oomd"), 50_000.0, 1900.0),
                    case("guard", "seed-siblings", Some("guard"), guard_ms, 150.0),
                    shared,
                ],
                "cost": {"throughput_off_mib_s": [100.0, 110.0, 90.0], "throughput_on_mib_s": [99.0, 98.0, 97.0],
                         "throughput_ratio": 0.98, "guard_rss_kib": 10240.0, "guard_hwm_kib": 12288.0,
                         "bpf": {"memcg_reclaim_end": {"runs": 100.0, "ns_per_run": 2000.0}},
                         "idle": {"voluntary": 12, "involuntary": 0}, "idle_no_watchdog": {"voluntary": 0, "involuntary": 0}}})
        };
        json!({"window_secs": 60, "idle_secs": 60, "date": "2026-11-23", "host_cpu": "cpu",
               "kernels": [kernel("6.1", 100.0), kernel("6.12", 300.0), kernel("7.2", 200.0)]})
    }

    #[test]
    fn summary_takes_medians_over_kernels_and_counts_kills() {
        let d = data();
        let g = summarize(&d, "guard", "seed-siblings");
        assert_eq!((g.killed, g.n), (3, 3));
        assert_eq!(g.kill_ms, Some(200.0));
        let none = summarize(&d, "none", "seed-siblings");
        assert_eq!((none.killed, none.n, none.kill_ms), (0, 3, None));
        let shared = summarize(&d, "systemd-oomd", "seed-shared");
        assert_eq!(shared.innocents, 3);
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), Some(2.5));
    }

    #[test]
    fn markdown_names_outcomes_innocents_and_cost() {
        let md = render_markdown(&data());
        assert!(md.contains("| 6.1 | none | alive after 60 s |"), "{md}");
        assert!(
            md.contains("| 6.12 | guard | killed by guard | 300 ms | 3.0 ms |"),
            "{md}"
        );
        assert!(
            md.contains("0.0 ms (killed) | bystander (7, sig 9, by systemd-oomd)"),
            "{md}"
        );
        assert!(
            md.contains("| guard | 3 of 3 | 200 ms | 1x | 150 ms |"),
            "{md}"
        );
        assert!(
            md.contains("| systemd-oomd | 3 of 3 | 50.0 s | 250x | 1900 ms |"),
            "{md}"
        );
        assert!(md.contains("| 7.2 | oomd | not measured |"), "{md}");
        assert!(md.contains("memcg_reclaim_end 2000 (100)"), "{md}");
        assert!(md.contains("| 0.980 |"), "{md}");
    }

    #[test]
    fn headline_compares_with_the_fastest_peer() {
        let h = headline(&data());
        assert!(h.starts_with(README_BEGIN) && h.ends_with(README_END));
        assert!(h.contains("3 of 3 kernels, median 200 ms"), "{h}");
        assert!(h.contains("the fastest peer, systemd-oomd, took 50.0 s (killed on 3 of 3 kernels): 250x slower"), "{h}");
        assert!(h.contains("98.0 %"), "{h}");
        assert!(h.contains("250x slower. The"), "{h}");
        let mut d = data();
        for k in 0..3 {
            d["kernels"][k]["cases"][1] = case("systemd-oomd", "seed-siblings", None, 0.0, 1.0);
        }
        let h2 = headline(&d);
        assert!(
            h2.contains("no peer killed the hog at all; systemd-oomd never killed it within 60 s"),
            "{h2}"
        );
        // Runs without the guard: 90, 100, 110: 20 % apart.
        assert!(h.contains("guard alone differ by 20 %"), "{h}");
        assert!(h.contains("and the bystander was not signalled; systemd-oomd killed the bystander with it 3 of 3 times"), "{h}");
        let readme = format!("intro\n{README_BEGIN}\nold\n{README_END}\nrest\n");
        let new = replace_block(&readme, &h).expect("block");
        assert!(new.starts_with("intro\n") && new.ends_with("\nrest\n") && !new.contains("old"));
        assert!(replace_block("no block", &h).is_none());
    }

    #[test]
    fn missing_failed_and_polluted_cases_are_problems() {
        let mut d = data();
        // The fixture measures 4 of 18 cases per kernel.
        assert_eq!(problems(&d).len(), 3 * 14);
        d["kernels"][0]["cases"][0]["error"] = json!("bench-by has no main process");
        d["kernels"][0]["cases"][1]["tools_running"] = json!(["guard.service"]);
        d["kernels"][1]["cost"] = Value::Null;
        let p = problems(&d);
        assert!(
            p.contains(&"6.1 none/seed-siblings: bench-by has no main process".to_owned()),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x
                    == "6.1 systemd-oomd/seed-siblings: other tools were running: guard.service"),
            "{p:?}"
        );
        assert!(p.contains(&"6.12 cost: not measured".to_owned()), "{p:?}");
    }

    #[test]
    fn a_case_with_another_tool_running_is_marked_invalid() {
        let mut c = case("none", "seed-siblings", None, 0.0, 1.0);
        c["tools_running"] = json!(["systemd-oomd.service"]);
        assert!(outcome(&c).contains("INVALID: systemd-oomd.service also running"));
        let mut c = case(
            "systemd-oomd",
            "seed-siblings",
            Some("systemd-oomd"),
            1.0,
            1.0,
        );
        c["tools_running"] = json!(["systemd-oomd.socket", "systemd-oomd.service"]);
        assert!(!outcome(&c).contains("INVALID"), "{}", outcome(&c));
    }

    #[test]
    fn console_lines_are_collected_and_garbage_skipped() {
        let console = "noise\r\nGUARD-CASE {\"tool\":\"none\",\"case\":\"benign\"}\r\n\
                       [ 1.0] GUARD-CASE {\"tool\":\"guard\",\"case\":\"benign\"}\n\
                       GUARD-CASE {broken\nGUARD-COST {\"throughput_ratio\":0.9}\n";
        let (cases, cost) = parse_console(console);
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[1]["tool"], "guard");
        assert_eq!(cost.expect("cost")["throughput_ratio"], 0.9);
    }

    #[test]
    fn the_chart_is_an_svg_with_every_tool() {
        let out = std::env::temp_dir().join(format!("guard-bench-{}.svg", std::process::id()));
        draw_chart(&data(), &out).expect("chart");
        let svg = fs::read_to_string(&out).expect("read");
        let _ = fs::remove_file(&out);
        assert!(svg.starts_with("<svg"));
        for t in TOOLS {
            assert!(svg.contains(t), "{t} missing");
        }
    }
}
