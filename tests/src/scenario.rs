//! The scenarios. Each returns a JSON object: `scenario`, `pass`,
//! `failures` (what a person would call wrong) and measured values.

use std::{
    fs,
    io::Read,
    os::unix::{net::UnixDatagram, process::CommandExt, process::ExitStatusExt},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{monotonic_ns, trace};

/// Where the incident happens: the limited cgroup, and the cgroups the hog
/// and the bystander run in (the same one, or two children of it).
struct Layout {
    limited: &'static str,
    hog: &'static str,
    bystander: &'static str,
    guard: bool,
    /// Start the guard before the cgroups exist, so that it must follow them.
    guard_first: bool,
}

const SEED: Layout = Layout {
    limited: "/sys/fs/cgroup/seed",
    hog: "/sys/fs/cgroup/seed",
    bystander: "/sys/fs/cgroup/seed",
    guard: true,
    guard_first: false,
};
const GUARD: &str = "/bin/guard";
const GUARD_LOG: &str = "/tmp/guard.log";
const NOTIFY: &str = "/run/guard-notify";
/// The budget the guard runs with (its default) and the margin the
/// first-no-progress-to-SIGKILL time may exceed it by under TCG.
const BUDGET_MS: f64 = 250.0;
const MARGIN_MS: f64 = 250.0;
/// Bystander ticks scheduled this long after the kill count as "after".
const SETTLE_MS: u64 = 250;
const BYSTANDER_AFTER_MAX_MS: f64 = 100.0;

struct Report {
    failures: Vec<String>,
    values: serde_json::Map<String, Value>,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }
    fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.values.insert(key.to_owned(), v.into());
    }
}

pub fn run(name: &str) -> Value {
    let mut report = Report {
        failures: Vec::new(),
        values: serde_json::Map::new(),
    };
    let outcome = match name {
        "seed" => incident(&mut report, &SEED),
        "control" => incident(
            &mut report,
            &Layout {
                guard: false,
                ..SEED
            },
        ),
        // memory.high on a parent (a slice), hog and bystander in two child
        // scopes, all created after the guard started.
        "nested" => incident(
            &mut report,
            &Layout {
                limited: "/sys/fs/cgroup/nest.slice",
                hog: "/sys/fs/cgroup/nest.slice/hog.scope",
                bystander: "/sys/fs/cgroup/nest.slice/bystander.scope",
                guard: true,
                guard_first: true,
            },
        ),
        other => Err(format!("unknown scenario {other}")),
    };
    if let Err(e) = outcome {
        report.failures.push(format!("scenario could not run: {e}"));
    }
    let mut out = json!({
        "scenario": name,
        "pass": report.failures.is_empty(),
        "failures": report.failures,
    });
    if let Value::Object(o) = &mut out {
        o.extend(report.values);
    }
    out
}

fn write(path: &str, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("writing {value:?} to {path}: {e}"))
}

fn read(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A counter from a flat keyed file such as memory.events.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// `full` stall total (µs) and avg10 (%) from a memory.pressure file.
fn pressure_full(text: &str) -> (u64, f64) {
    let Some(line) = text.lines().find(|l| l.starts_with("full ")) else {
        return (0, 0.0);
    };
    let get = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or("0")
    };
    (
        get("total").parse().unwrap_or(0),
        get("avg10").parse().unwrap_or(0.0),
    )
}

fn spawn_in_cgroup(cgroup: &'static str, args: &[&str], stdout: Stdio) -> Result<Child, String> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(args).stdout(stdout).stdin(Stdio::null());
    // SAFETY: the closure only writes a file (open/write/close) between
    // fork and exec; this program starts no threads before it spawns.
    unsafe {
        cmd.pre_exec(move || fs::write(format!("{cgroup}/cgroup.procs"), "0"));
    }
    cmd.spawn().map_err(|e| format!("spawning {args:?}: {e}"))
}

fn start_guard() -> Result<Child, String> {
    let _ = fs::remove_file(NOTIFY);
    let sock = UnixDatagram::bind(NOTIFY).map_err(|e| format!("binding {NOTIFY}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let log = fs::File::create(GUARD_LOG).map_err(|e| format!("{GUARD_LOG}: {e}"))?;
    let child = Command::new(GUARD)
        .args(["--log-format", "json", "run"])
        .env("NOTIFY_SOCKET", NOTIFY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawning {GUARD}: {e}"))?;
    let mut buf = [0u8; 256];
    loop {
        let n = sock
            .recv(&mut buf)
            .map_err(|e| format!("no READY=1 from the guard: {e}; log:\n{}", read(GUARD_LOG)))?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            return Ok(child);
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<(ExitStatus, u64)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some((status, monotonic_ns()));
        }
        sleep(Duration::from_millis(2));
    }
    None
}

/// Bystander output: (completion ns, lateness µs) samples and worst.
fn bystander_samples(out: &str) -> (Vec<(u64, u64)>, u64) {
    let mut samples = Vec::new();
    let mut worst = 0;
    for line in out.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("sample") => {
                if let (Some(t), Some(l)) = (it.next(), it.next())
                    && let (Ok(t), Ok(l)) = (t.parse(), l.parse())
                {
                    samples.push((t, l));
                }
            }
            Some("bystander") => {
                worst = it
                    .find_map(|kv| kv.strip_prefix("worst_us=")?.parse().ok())
                    .unwrap_or(0)
            }
            _ => {}
        }
    }
    (samples, worst)
}

/// Worst lateness (ms) of ticks scheduled within [from, to).
fn worst_between(samples: &[(u64, u64)], from: u64, to: u64) -> f64 {
    samples
        .iter()
        .filter(|(done, late)| {
            let scheduled = done.saturating_sub(late * 1000);
            scheduled >= from && scheduled < to
        })
        .map(|(_, late)| *late as f64 / 1000.0)
        .fold(0.0, f64::max)
}

/// The seed incident: memory.high 64M, memory.max 128M, no swap; a bystander
/// and a 100 MiB hog under the limited cgroup. With the guard the hog must
/// die fast; without it (control) the livelock must show.
fn incident(r: &mut Report, layout: &Layout) -> Result<(), String> {
    let with_guard = layout.guard;
    let limited = layout.limited;
    trace::enable()?;
    let mut guard = if with_guard && layout.guard_first {
        Some(start_guard()?)
    } else {
        None
    };
    fs::create_dir_all(limited).map_err(|e| format!("mkdir {limited}: {e}"))?;
    write(&format!("{limited}/memory.high"), "64M")?;
    write(&format!("{limited}/memory.max"), "128M")?;
    if Path::new(&format!("{limited}/memory.swap.max")).exists() {
        write(&format!("{limited}/memory.swap.max"), "0")?;
    }
    for leaf in [layout.hog, layout.bystander] {
        if leaf != limited {
            write(&format!("{limited}/cgroup.subtree_control"), "+memory")?;
            fs::create_dir_all(leaf).map_err(|e| format!("mkdir {leaf}: {e}"))?;
        }
    }
    if with_guard && guard.is_none() {
        guard = Some(start_guard()?);
    }
    let bystander_ms: u64 = if with_guard { 8000 } else { 13000 };
    let mut bystander = spawn_in_cgroup(
        layout.bystander,
        &["bystander", &bystander_ms.to_string()],
        Stdio::piped(),
    )?;
    sleep(Duration::from_secs(1));
    let events0 = read(&format!("{limited}/memory.events"));
    let (full0, _) = pressure_full(&read(&format!("{limited}/memory.pressure")));
    let hog_start = monotonic_ns();
    let mut hog = spawn_in_cgroup(layout.hog, &["hog", "100"], Stdio::null())?;
    let hog_pid = hog.id();
    r.set("hog_pid", hog_pid);

    let hog_end;
    if with_guard {
        match wait_exit(&mut hog, Duration::from_secs(20)) {
            Some((status, at)) => {
                r.check(
                    status.signal() == Some(libc::SIGKILL),
                    format!("hog ended by {status}, not SIGKILL"),
                );
                r.set("hog_lived_ms", (at - hog_start) as f64 / 1e6);
                hog_end = at;
            }
            None => {
                r.check(false, "hog still alive 20 s after it started");
                let _ = hog.kill();
                let _ = hog.wait();
                hog_end = monotonic_ns();
            }
        }
    } else {
        let observe = Instant::now();
        sleep(Duration::from_secs(10));
        let secs = observe.elapsed().as_secs_f64();
        let alive = matches!(hog.try_wait(), Ok(None));
        r.check(
            alive,
            "control: the hog died without a guard; the livelock did not happen",
        );
        let events1 = read(&format!("{limited}/memory.events"));
        let (full1, avg10) = pressure_full(&read(&format!("{limited}/memory.pressure")));
        let high = keyed(&events1, "high") - keyed(&events0, "high");
        let oom_kills = keyed(&events1, "oom_kill") - keyed(&events0, "oom_kill");
        let full_share = (full1 - full0) as f64 / (secs * 1e6);
        r.set("high_events", high);
        r.set("oom_kills", oom_kills);
        r.set("pressure_full_share", full_share);
        r.set("pressure_full_avg10", avg10);
        let current: u64 = read(&format!("{limited}/memory.current"))
            .trim()
            .parse()
            .unwrap_or(0);
        r.set("memory_current", current);
        r.check(
            oom_kills == 0,
            format!("control: {oom_kills} kernel OOM kills"),
        );
        r.check(high > 0, "control: memory.events high did not rise");
        r.check(
            full_share >= 0.3,
            format!(
                "control: memory.pressure full was only {:.0}% of the time",
                full_share * 100.0
            ),
        );
        let _ = hog.kill();
        let _ = hog.wait();
        hog_end = monotonic_ns();
    }

    let mut out = String::new();
    if let Some(mut s) = bystander.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    let by_status = bystander.wait().map_err(|e| e.to_string())?;
    r.check(
        by_status.success(),
        format!("bystander ended with {by_status}"),
    );
    let (samples, worst_us) = bystander_samples(&out);
    r.set("bystander_worst_ms", worst_us as f64 / 1000.0);
    r.set(
        "bystander_worst_during_ms",
        worst_between(&samples, hog_start, hog_end),
    );

    let log = if let Some(mut g) = guard.take() {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(g.id() as i32, libc::SIGTERM) };
        let _ = wait_exit(&mut g, Duration::from_secs(5));
        let _ = g.kill();
        read(GUARD_LOG)
    } else {
        String::new()
    };
    let trace = trace::read();
    r.set(
        "no_progress_passes",
        trace::count_no_progress(&trace) as u64,
    );

    if with_guard {
        let after = worst_between(&samples, hog_end + SETTLE_MS * 1_000_000, u64::MAX);
        r.set("bystander_worst_after_ms", after);
        r.check(
            after <= BYSTANDER_AFTER_MAX_MS,
            format!("bystander still {after:.0} ms late after the kill"),
        );
        guard_checks(r, &log, &trace, hog_pid);
    }
    Ok(())
}

fn guard_checks(r: &mut Report, log: &str, trace_text: &str, hog_pid: u32) {
    for line in log.lines() {
        println!("guard-log: {line}");
    }
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let msg = |v: &Value| v["message"].as_str().unwrap_or_default().to_owned();
    let hooked = lines
        .iter()
        .any(|v| msg(v).starts_with("throttle hooks attached"));
    r.set("throttle_hooks", hooked);
    let kills: Vec<&Value> = lines.iter().filter(|v| msg(v) == "killed").collect();
    r.check(
        kills.len() == 1,
        format!(
            "expected exactly one kill, the guard logged {}",
            kills.len()
        ),
    );
    match kills.first() {
        Some(k) => {
            r.check(
                k["pid"].as_u64() == Some(u64::from(hog_pid)),
                format!(
                    "the guard killed pid {} ({}), not the hog {hog_pid}",
                    k["pid"], k["comm"]
                ),
            );
            r.set("verdict_to_kill_us", k["latency_us"].clone());
            r.set("wakeup_us", k["wakeup_us"].clone());
            r.set("decide_us", k["decide_us"].clone());
            r.set("stall_ms", k["stall_ms"].clone());
        }
        None => r.check(false, format!("no kill in the guard's log:\n{log}")),
    }
    match (
        trace::first_no_progress(trace_text, hog_pid),
        trace::first_sigkill(trace_text, hog_pid),
    ) {
        (Some(t0), Some((t1, _sender))) => {
            let ms = (t1 - t0) * 1000.0;
            r.set("detect_to_kill_ms", ms);
            r.check(
                ms <= BUDGET_MS + MARGIN_MS,
                format!(
                    "first no-progress reclaim to SIGKILL took {ms:.0} ms (budget {BUDGET_MS} + margin {MARGIN_MS})"
                ),
            );
        }
        (t0, t1) => r.check(
            false,
            format!(
                "trace lacks the hog's first no-progress pass ({t0:?}) or its SIGKILL ({t1:?})"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_and_events_parse() {
        let p = "some avg10=90.00 avg60=50.00 avg300=10.00 total=9000000\n\
                 full avg10=81.50 avg60=40.00 avg300=9.00 total=8000000\n";
        assert_eq!(pressure_full(p), (8000000, 81.5));
        let e = "low 0\nhigh 5123\nmax 0\noom 0\noom_kill 2\n";
        assert_eq!(
            (keyed(e, "high"), keyed(e, "oom_kill"), keyed(e, "max")),
            (5123, 2, 0)
        );
    }

    #[test]
    fn lateness_is_binned_by_schedule_time() {
        // Two ticks: one scheduled at 1.0 s, 1.5 s late; one at 3.0 s, 2 ms late.
        let samples = [(2_500_000_000, 1_500_000), (3_002_000_000, 2_000)];
        assert_eq!(worst_between(&samples, 0, 2_000_000_000), 1500.0);
        assert_eq!(worst_between(&samples, 2_000_000_000, u64::MAX), 2.0);
        let (parsed, worst) = bystander_samples("sample 5 7\nbystander ticks=3 worst_us=7\n");
        assert_eq!((parsed, worst), (vec![(5, 7)], 7));
    }
}
