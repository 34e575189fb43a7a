//! `sighup`: policy reloads. The guard starts on a policy file with
//! kill = "process" and gets a SIGHUP as soon as it has said READY=1 (it
//! must reload, not die); the file is replaced by a valid one with
//! kill = "process-group" and the guard gets SIGHUP (it must log "policy
//! reloaded"); then by broken TOML and SIGHUP again (it must log the
//! failure and keep the policy it has). Then the seed incident: the hog
//! must be killed as before, in process-group mode (the last good policy,
//! neither the first file nor the embedded default, which both say
//! "process").

use std::os::unix::process::CommandExt as _;

use super::*;
use crate::summary::fmt_num;

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::new("sighup", run, summary)];

fn summary(r: &Value) -> String {
    format!(
        "bad file kept the policy ({}); hog killed in mode {}; first no-progress->SIGKILL {} ms",
        r["reload_error"].as_str().unwrap_or("-"),
        r["kill_mode"].as_str().unwrap_or("-"),
        fmt_num(&r["detect_to_kill_ms"], 1),
    )
}

const POLICY_PATH: &str = "/etc/guard/guard.toml";
const FIRST: &str =
    "# sighup scenario: first policy\n[[scope]]\npaths = [\"/**\"]\nkill = \"process\"\n";
const SECOND: &str =
    "# sighup scenario: second policy\n[[scope]]\npaths = [\"/**\"]\nkill = \"process-group\"\n";
const BROKEN: &str = "# sighup scenario: broken\n[[scope]\npaths = [\"/**\"\nkill = \n";
const RELOADED: &str = "policy reloaded";
const FAILED: &str = "policy reload failed, keeping the current policy";

/// Waits up to 5 s for the `n`th log line with message `m`.
fn wait_for(guard: &Guard, m: &str, n: usize) -> Option<Value> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let lines = guard.lines();
        if let Some(v) = with_message(&lines, m).get(n - 1) {
            return Some((*v).clone());
        }
        sleep(Duration::from_millis(20));
    }
    None
}

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    write_policy(POLICY_PATH, FIRST)?;
    trace::enable()?;
    let mut guard = Guard::start(&["--config", POLICY_PATH], &[])?;
    // At once, as `systemctl reload` right after the start would: once the
    // guard has said READY=1 it must take SIGHUP as a reload.
    guard.signal(libc::SIGHUP);
    let first = wait_for(&guard, RELOADED, 1);
    if let Some(status) = guard.exited() {
        return Err(format!(
            "the guard ended ({status}) on a SIGHUP sent right after its READY=1"
        ));
    }
    r.check(
        first.is_some(),
        format!("no {RELOADED:?} after SIGHUP right after READY=1"),
    );

    write_policy(POLICY_PATH, SECOND)?;
    guard.signal(libc::SIGHUP);
    let reloaded = wait_for(&guard, RELOADED, 2);
    r.check(
        reloaded.is_some(),
        format!("no {RELOADED:?} after SIGHUP with a valid new file"),
    );

    write_policy(POLICY_PATH, BROKEN)?;
    guard.signal(libc::SIGHUP);
    match wait_for(&guard, FAILED, 1) {
        Some(v) => {
            let error = text(&v["error"]);
            r.set("reload_error", error.clone());
            r.check(
                error.contains(POLICY_PATH),
                format!("the reload error {error:?} does not name {POLICY_PATH}"),
            );
        }
        None => r.check(
            false,
            format!("no {FAILED:?} after SIGHUP with broken TOML"),
        ),
    }
    let after_broken = guard.lines();
    r.check(
        with_message(&after_broken, RELOADED).len() == 2,
        "the broken file was reported as reloaded",
    );
    if let Some(status) = guard.exited() {
        r.check(
            false,
            format!("the guard is gone ({status}) after the SIGHUPs"),
        );
    }

    // The seed incident, with the hog leading its own process group so that
    // a process-group kill takes it alone.
    let cg = Cgroup::create("/seed")?;
    cg.limit("64M", "128M")?;
    let bystander = Bystander::start(&cg, 8000)?;
    sleep(Duration::from_secs(1));
    let hog_start = monotonic_ns();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["hog", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0);
    let mut hog = cg.spawn_cmd(cmd)?;
    let hog_pid = hog.id();
    r.set("hog_pid", hog_pid);
    let hog_end = match wait_exit(&mut hog, Duration::from_secs(20)) {
        Some((status, at)) => {
            r.check(
                status.signal() == Some(libc::SIGKILL),
                format!("hog ended by {status}, not SIGKILL"),
            );
            r.set("hog_lived_ms", (at - hog_start) as f64 / 1e6);
            at
        }
        None => {
            r.check(false, "hog still alive 20 s after it started");
            end(&mut hog);
            monotonic_ns()
        }
    };
    let (samples, _) = bystander.finish(r)?;
    r.set(
        "bystander_worst_during_ms",
        worst_between(&samples, hog_start, hog_end),
    );
    let log = guard.stop();
    let trace_text = trace::read();
    let lines = log_lines(&log);
    let kills = with_message(&lines, "killed");
    r.check(
        kills.len() == 1,
        format!(
            "expected exactly one kill, the guard logged {}",
            kills.len()
        ),
    );
    if let Some(k) = kills.first() {
        r.check(
            number(&k["pid"]) == Some(u64::from(hog_pid)),
            format!(
                "the guard killed pid {} ({}), not the hog {hog_pid}",
                k["pid"],
                text(&k["comm"])
            ),
        );
        let mode = text(&k["kill_mode"]);
        r.set("kill_mode", mode.clone());
        r.check(
            mode == "process-group",
            format!("kill_mode is {mode:?}: not the last good policy's \"process-group\""),
        );
        r.set("verdict_to_kill_us", k["latency_us"].clone());
    }
    detect_to_kill(r, &trace_text, hog_pid);
    Ok(())
}
