//! `stream`: the event stream, as a person debugging an incident sees it.
//! The daemon runs with its default socket and log; `guard trace --json`
//! attaches to the socket. Then the seed incident (a hog over memory.high
//! in /stream.slice) and a kernel OOM kill (a hog over memory.max in
//! /oom.slice, which has no memory.high, so only the kernel acts). The
//! trace must show the hog's verdict and kill, per-pass reclaim records,
//! samples of the limited cgroup, and `oom:mark_victim` for the second hog.
//! `guard report` on the daemon's own log must then name both victims.

use super::*;
use crate::scrape::{metric, scrape};
use crate::summary::fmt_num;

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::new("stream", run, summary)];

fn summary(r: &Value) -> String {
    format!(
        "idle daemon woke {} times in 5 s; guard trace --json: verdict + kill of hog {} (verdict->kill {} ms in the stream), {} reclaim / {} throttle / {} sample records; oom_kill of {} ({}) in {}; daemon log {} records, report names both victims, SVG {} bytes; /metrics: kills {}, reclaim end {} runs at {} ns each",
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
    )
}

const TRACE_OUT: &str = "/tmp/trace.jsonl";
const DAEMON_LOG: &str = "/var/lib/guard/events.jsonl";
const REPORT_SVG: &str = "/tmp/incident.svg";
const METRICS_ADDR: &str = "127.0.0.1:9464";
const IDLE_SECS: u64 = 5;

fn records(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn of_type<'a>(recs: &'a [Value], t: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["type"] == t).collect()
}

/// Waits until `path` holds a line for which `f` is true.
fn wait_for_line(path: &str, limit: Duration, f: impl Fn(&Value) -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if records(&read(path)).iter().any(&f) {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    false
}

/// Runs a hog in `cg` until it is SIGKILLed (by whoever), at most `limit`.
fn hog_until_killed(
    r: &mut Report,
    cg: &Cgroup,
    what: &str,
    limit: Duration,
) -> Result<u32, String> {
    let mut hog = cg.spawn(&["hog", "100"], Stdio::null())?;
    let pid = hog.id();
    match wait_exit(&mut hog, limit) {
        Some((status, _)) => r.check(
            status.signal() == Some(libc::SIGKILL),
            format!("{what}: the hog ended by {status}, not SIGKILL"),
        ),
        None => {
            r.check(false, format!("{what}: the hog is alive after {limit:?}"));
            end(&mut hog);
        }
    }
    Ok(pid)
}

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    trace::enable()?;
    let _ = fs::remove_file(DAEMON_LOG);
    let mut guard = Guard::start(&["--metrics-addr", METRICS_ADDR], &[])?;
    // Idle and unwatched, the daemon must not wake at all: no timer, no
    // polling; it sleeps until the kernel has something to say.
    let switches = |pid: u32| {
        let (voluntary, involuntary, _) = context_switches(pid);
        voluntary + involuntary
    };
    // (After READY=1 the daemon still enters its loop and goes to sleep:
    // one switch that is not a wake-up.)
    sleep(Duration::from_secs(1));
    let before = switches(guard.pid());
    sleep(Duration::from_secs(IDLE_SECS));
    let idle_wakeups = switches(guard.pid()) - before;
    r.set("idle_wakeups", idle_wakeups);
    r.check(
        idle_wakeups == 0,
        format!("the idle daemon woke {idle_wakeups} times in {IDLE_SECS} s"),
    );
    let out = fs::File::create(TRACE_OUT).map_err(|e| format!("{TRACE_OUT}: {e}"))?;
    let mut tracer = Command::new(GUARD)
        .args(["trace", "--json"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning guard trace: {e}"))?;
    if !wait_for_line(TRACE_OUT, Duration::from_secs(20), |v| v["type"] == "hello") {
        end(&mut tracer);
        guard.stop();
        return Err(format!(
            "guard trace printed no hello record:\n{}",
            read(TRACE_OUT)
        ));
    }

    // The seed incident: the guard kills the hog.
    let slice = Cgroup::create("/stream.slice")?;
    slice.limit("64M", "128M")?;
    let hog_cg = Cgroup::create("/stream.slice/hog.scope")?;
    let hog_pid = hog_until_killed(r, &hog_cg, "seed", Duration::from_secs(20))?;
    r.set("hog_pid", hog_pid);

    // The kernel's own memcg OOM killer: memory.max and no memory.high.
    let oom = Cgroup::create("/oom.slice")?;
    oom.limit("max", "64M")?;
    let oom_pid = hog_until_killed(r, &oom, "oom", Duration::from_secs(20))?;
    r.set("oom_hog_pid", oom_pid);

    let got_oom = wait_for_line(TRACE_OUT, Duration::from_secs(5), |v| {
        v["type"] == "oom_kill" && v["pid"] == oom_pid
    });
    // Samples keep coming after the kill; give the stream a moment.
    sleep(Duration::from_secs(1));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let trace_status = wait_exit(&mut tracer, Duration::from_secs(5));
    r.check(
        trace_status.is_some_and(|(s, _)| s.success()),
        format!("guard trace did not end cleanly on SIGINT: {trace_status:?}"),
    );
    if trace_status.is_none() {
        end(&mut tracer);
    }
    // The metrics, scraped like Prometheus would, before the guard stops.
    match scrape(METRICS_ADDR) {
        Ok(body) => {
            let kills = metric(&body, "guard_kills_total{");
            let oom = metric(&body, "guard_kernel_oom_kills_total{cgroup=\"/oom.slice\"}");
            // The reclaim-end program: BTF-typed, or the classic one where
            // the kernel refused that.
            let either = |series: &str| {
                ["btf_reclaim_end", "memcg_reclaim_end"]
                    .iter()
                    .find_map(|p| metric(&body, &format!("{series}{{program=\"{p}\"}}")))
            };
            let runs = either("guard_bpf_run_count_total");
            let run_s = either("guard_bpf_run_time_seconds_total");
            r.set("metrics_kills", kills);
            r.set("metrics_reclaim_end_runs", runs);
            if let (Some(n), Some(s)) = (runs, run_s)
                && n > 0.0
            {
                r.set("metrics_reclaim_end_ns_per_run", s * 1e9 / n);
            }
            r.check(
                kills == Some(1.0),
                format!("guard_kills_total is {kills:?}, not 1"),
            );
            r.check(
                oom == Some(1.0),
                format!("guard_kernel_oom_kills_total for /oom.slice is {oom:?}"),
            );
            r.check(
                runs.is_some_and(|n| n > 0.0),
                format!("no BPF run count for the reclaim-end program: {runs:?}"),
            );
            r.check(
                body.contains("guard_cgroup_memory_current_bytes{cgroup=\"/stream.slice\"}")
                    || body.contains("guard_cgroup_memory_current_bytes{cgroup=\"/oom.slice\"}"),
                "no memory gauge for the incident cgroups",
            );
        }
        Err(e) => r.check(false, format!("scraping /metrics: {e}")),
    }
    let log = guard.stop();
    let kernel_trace = trace::read();
    detect_to_kill(r, &kernel_trace, hog_pid);

    let trace_text = read(TRACE_OUT);
    // On the console too, so a run's stream can be replayed on the host.
    for line in trace_text.lines() {
        println!("guard-trace: {line}");
    }
    let recs = records(&trace_text);
    let count = |t: &str| of_type(&recs, t).len();
    r.set("trace_records", recs.len());
    r.set("trace_reclaim_records", count("reclaim"));
    r.set("trace_throttle_records", count("throttle"));
    r.set("trace_sample_records", count("sample"));
    r.check(
        recs.iter().all(|v| v["v"] == 1),
        "a record without schema version 1",
    );
    r.check(
        of_type(&recs, "hello")
            .first()
            .is_some_and(|h| h["source"] == "daemon"),
        "the trace did not attach to the daemon",
    );

    let verdict = of_type(&recs, "verdict")
        .into_iter()
        .find(|v| v["worst_pid"] == hog_pid)
        .cloned();
    let kill = of_type(&recs, "kill")
        .into_iter()
        .find(|v| v["pid"] == hog_pid)
        .cloned();
    match (&verdict, &kill) {
        (Some(v), Some(k)) => {
            r.check(
                v["cgroup"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("/stream.slice")),
                format!(
                    "the verdict names cgroup {}, not /stream.slice",
                    v["cgroup"]
                ),
            );
            r.check(
                k["comm"] == "hog" && k["dry_run"] == false,
                format!("the kill record is wrong: {k}"),
            );
            let (tv, tk) = (v["mono_ns"].as_u64(), k["mono_ns"].as_u64());
            if let (Some(tv), Some(tk)) = (tv, tk) {
                r.set("stream_verdict_to_kill_ms", (tk as f64 - tv as f64) / 1e6);
            }
            r.set("kill_latency_us", k["latency_us"].clone());
        }
        _ => r.check(
            false,
            format!(
                "the trace lacks the hog's verdict ({}) or kill ({})",
                verdict.is_some(),
                kill.is_some()
            ),
        ),
    }
    r.check(
        of_type(&recs, "reclaim")
            .iter()
            .any(|p| p["pid"] == hog_pid && p["reclaimed_pages"] == 0),
        "no per-pass reclaim record of the hog without progress",
    );
    r.check(
        of_type(&recs, "sample")
            .iter()
            .any(|s| s["cgroup"] == "/stream.slice" && s["memory_high"] == 64u64 << 20),
        "no sample of /stream.slice with its memory.high",
    );
    match of_type(&recs, "oom_kill")
        .into_iter()
        .find(|v| v["pid"] == oom_pid)
    {
        Some(o) => {
            r.set("oom_kill_comm", o["comm"].clone());
            r.set("oom_kill_cgroup", o["cgroup"].clone());
            r.check(got_oom, "the oom_kill record came late");
            r.check(
                o["cgroup"] == "/oom.slice",
                format!("oom_kill names cgroup {}, not /oom.slice", o["cgroup"]),
            );
        }
        None => r.check(
            false,
            format!("no oom_kill record for the OOM-killed hog {oom_pid}"),
        ),
    }
    r.check(
        !log.contains("\"kill failed\""),
        "the guard logged a failed kill",
    );

    // The daemon kept its own log without a listener's help: the report of
    // it names both victims.
    let daemon_log = records(&read(DAEMON_LOG));
    r.set("daemon_log_records", daemon_log.len());
    r.check(
        of_type(&daemon_log, "reclaim").is_empty(),
        "raw reclaim passes went into the daemon's log",
    );
    let report = Command::new(GUARD)
        .args(["report", DAEMON_LOG, "--svg", REPORT_SVG])
        .output()
        .map_err(|e| format!("running guard report: {e}"))?;
    let text = String::from_utf8_lossy(&report.stdout).into_owned();
    for line in text.lines() {
        println!("guard-report: {line}");
    }
    r.check(
        report.status.success(),
        format!(
            "guard report failed: {}",
            String::from_utf8_lossy(&report.stderr)
        ),
    );
    r.check(
        text.contains(&hog_pid.to_string()) && text.contains(&oom_pid.to_string()),
        "the report of the daemon's log does not name both victims",
    );
    let svg = read(REPORT_SVG);
    r.set("report_svg_bytes", svg.len());
    r.check(svg.contains("<svg"), "the report drew no SVG");
    Ok(())
}
