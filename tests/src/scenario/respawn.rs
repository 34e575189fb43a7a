//! `respawn`: a supervisor that restarts a hog over and over, each time in
//! a fresh transient scope, as a user looping a job under `systemd-run
//! --scope` would. CYCLES times: create /respawn.slice/hog-N.scope with its
//! own memory.high 64M, memory.max 128M and no swap, run a 100 MiB hog in
//! it, wait until it dies, remove the scope.
//!
//! Every hog must die by the guard's SIGKILL within 10 s: each kill ends
//! its stall, so none may count towards the circuit breaker. And the
//! guard's bookkeeping must not grow with the kills: its open fds and its
//! VmRSS after the last cycle at most 2 fds and 2 MiB above what they were
//! after cycle SAMPLE_AT (a pidfd kept per victim would add one fd a kill).

use super::*;
use crate::summary::{fmt_num, show};

/// A few hundred kill cycles take longer than one boot usually may.
pub(super) const SCENARIOS: &[Scenario] = &[Scenario {
    timeout_secs: 600,
    ..Scenario::new("respawn", run, summary)
}];

fn summary(r: &Value) -> String {
    format!(
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
    )
}

const CYCLES: usize = 300;
const SAMPLE_AT: usize = 20;
const HOG_WAIT: Duration = Duration::from_secs(10);
/// Hogs that may outlive HOG_WAIT before the loop stops (it has failed).
const MAX_SPARED: usize = 3;
const FDS_SLACK: usize = 2;
const RSS_SLACK_KIB: u64 = 2048;

/// The guard's open fds and VmRSS (KiB).
fn usage(pid: u32) -> (usize, u64) {
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let rss = keyed_colon(&read(&format!("/proc/{pid}/status")), "VmRSS");
    (fds, rss)
}

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    trace::enable_kills()?;
    Cgroup::create("/respawn.slice")?;
    let mut guard = Guard::start(&[], &[])?;
    let guard_pid = guard.pid();
    let (fds0, rss0) = usage(guard_pid);
    r.set("fds_start", fds0);
    r.set("rss_start_kib", rss0);
    let began = Instant::now();
    let mut hogs = Vec::new();
    let mut cycle_ms = Vec::new();
    let mut sigkilled = 0;
    let mut spared = 0;
    let mut otherwise = Vec::new();
    let mut at_sample = None;
    for n in 1..=CYCLES {
        let started = Instant::now();
        let cg = Cgroup::create(&format!("/respawn.slice/hog-{n}.scope"))?;
        cg.limit("64M", "128M")?;
        let mut hog = cg.spawn(&["hog", "100"], Stdio::null())?;
        hogs.push(hog.id());
        match wait_exit(&mut hog, HOG_WAIT) {
            Some((status, _)) if status.signal() == Some(libc::SIGKILL) => sigkilled += 1,
            Some((status, _)) => otherwise.push(format!("{} ended by {status}", hog.id())),
            None => {
                spared += 1;
                end(&mut hog);
            }
        }
        cg.remove()?;
        cycle_ms.push(started.elapsed().as_millis() as u64);
        if n == SAMPLE_AT {
            // Let the guard see the scope go before counting.
            sleep(Duration::from_millis(500));
            at_sample = Some(usage(guard_pid));
        }
        if spared >= MAX_SPARED {
            break;
        }
    }
    let cycles = cycle_ms.len();
    r.set("cycles", cycles);
    r.set("seconds", began.elapsed().as_secs_f64());
    sleep(Duration::from_millis(500));
    let (fds_end, rss_end) = usage(guard_pid);
    let log = guard.stop();
    let trace_text = trace::read();

    let mut sorted = cycle_ms.clone();
    sorted.sort_unstable();
    r.set("cycle_median_ms", sorted.get(sorted.len() / 2).copied());
    r.set("cycle_max_ms", sorted.last().copied());
    r.set("hogs_sigkilled", sigkilled);
    r.check(
        cycles == CYCLES,
        format!("stopped after {cycles} of {CYCLES} cycles: {spared} hogs outlived {HOG_WAIT:?}"),
    );
    r.check(
        spared == 0,
        format!("{spared} hogs were alive {HOG_WAIT:?} after they started"),
    );
    r.check(
        otherwise.is_empty(),
        format!("hogs that ended otherwise than by SIGKILL: {otherwise:?}"),
    );
    let lines = log_lines(&log);
    let logged: Vec<u32> = with_message(&lines, "killed")
        .iter()
        .filter_map(|k| number(&k["pid"]).map(|p| p as u32))
        .collect();
    let logged_hogs = hogs.iter().filter(|p| logged.contains(p)).count();
    r.set("kills", logged.len());
    r.check(
        logged_hogs == hogs.len() && logged.len() == hogs.len(),
        format!(
            "the guard logged {} kills, {logged_hogs} of them of the {} hogs",
            logged.len(),
            hogs.len()
        ),
    );
    let overrun = trace_overrun();
    r.set("trace_overrun", overrun);
    let sent = sigkills_from(&trace_text, guard_pid);
    let by_guard = hogs
        .iter()
        .filter(|h| sent.iter().any(|(_, t)| t == *h))
        .count();
    r.set("sigkills_from_guard", by_guard);
    r.check(
        by_guard == hogs.len(),
        format!(
            "the trace shows the guard's SIGKILL for {by_guard} of {} hogs (trace overrun {overrun})",
            hogs.len()
        ),
    );
    r.set("fds_end", fds_end);
    r.set("rss_end_kib", rss_end);
    match at_sample {
        Some((fds, rss)) => {
            r.set("fds_at_sample", fds);
            r.set("rss_at_sample_kib", rss);
            r.check(
                fds_end <= fds + FDS_SLACK,
                format!(
                    "the guard's open fds grew from {fds} after cycle {SAMPLE_AT} to {fds_end} \
                     after cycle {cycles}"
                ),
            );
            r.check(
                rss_end <= rss + RSS_SLACK_KIB,
                format!(
                    "the guard's VmRSS grew from {rss} KiB after cycle {SAMPLE_AT} to {rss_end} \
                     KiB after cycle {cycles}"
                ),
            );
        }
        None => r.check(false, format!("the loop ended before cycle {SAMPLE_AT}")),
    }
    Ok(())
}
