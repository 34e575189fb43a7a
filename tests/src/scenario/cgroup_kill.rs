//! `cgroup-kill`: a policy file with one scope, /kill.slice, with
//! kill = "cgroup". memory.high 64M is on /kill.slice; the hog and a small
//! helper share /kill.slice/hog.scope, the bystander is in
//! /kill.slice/bystander.scope. The guard must kill hog.scope whole (hog
//! and helper), through cgroup.kill, and neither the bystander nor
//! /kill.slice itself.

use super::*;
use crate::summary::fmt_num;

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::new("cgroup-kill", run, summary)];

fn summary(r: &Value) -> String {
    format!(
        "kill_mode {}, killed_cgroup {}; SIGKILLs to {}; first no-progress->SIGKILL {} ms; helper dead {} ms after the hog",
        r["kill_mode"].as_str().unwrap_or("-"),
        r["killed_cgroup"].as_str().unwrap_or("-"),
        r["sigkill_targets"],
        fmt_num(&r["detect_to_kill_ms"], 1),
        fmt_num(&r["helper_after_hog_ms"], 1),
    )
}

const POLICY_PATH: &str = "/etc/guard/cgroup-kill.toml";
const POLICY: &str = r#"# written by the cgroup-kill scenario
[[scope]]
paths = ["/kill.slice", "/kill.slice/**"]
kill = "cgroup"
"#;

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    write_policy(POLICY_PATH, POLICY)?;
    trace::enable()?;
    let slice = Cgroup::create("/kill.slice")?;
    slice.limit("64M", "128M")?;
    let hog_cg = Cgroup::create("/kill.slice/hog.scope")?;
    let by_cg = Cgroup::create("/kill.slice/bystander.scope")?;
    let mut guard = Guard::start(&["--config", POLICY_PATH], &[])?;
    let bystander = Bystander::start(&by_cg, 8000)?;
    let mut helper = hog_cg.spawn(&["idle", "helper"], Stdio::null())?;
    let helper_pid = helper.id();
    sleep(Duration::from_secs(1));
    let hog_start = monotonic_ns();
    let mut hog = hog_cg.spawn(&["hog", "100"], Stdio::null())?;
    let hog_pid = hog.id();
    r.set("hog_pid", hog_pid);
    r.set("helper_pid", helper_pid);
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
    match wait_exit(&mut helper, Duration::from_secs(2)) {
        Some((status, at)) => {
            r.check(
                status.signal() == Some(libc::SIGKILL),
                format!("the helper in hog.scope ended by {status}, not SIGKILL"),
            );
            r.set("helper_after_hog_ms", (at as f64 - hog_end as f64) / 1e6);
        }
        None => {
            r.check(
                false,
                "the helper in hog.scope is alive 2 s after the hog died",
            );
            end(&mut helper);
        }
    }
    let bystander_pid = bystander.pid();
    let by_alive = alive(bystander_pid);
    r.check(by_alive, "the bystander did not outlive the kill");
    let (samples, worst_us) = bystander.finish(r)?;
    r.set("bystander_worst_ms", worst_us as f64 / 1000.0);
    r.set(
        "bystander_worst_during_ms",
        worst_between(&samples, hog_start, hog_end),
    );
    r.check(
        Path::new(&slice.path("cgroup.procs")).exists(),
        "/kill.slice is gone",
    );
    let left = hog_cg.procs();
    r.check(
        left.is_empty(),
        format!("processes {left:?} are still in hog.scope"),
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
                "the guard chose pid {} ({}), not the hog {hog_pid}",
                k["pid"],
                text(&k["comm"])
            ),
        );
        let mode = text(&k["kill_mode"]);
        let killed_cgroup = text(&k["killed_cgroup"]);
        let cgroup = text(&k["cgroup"]);
        r.set("kill_mode", mode.clone());
        r.set("killed_cgroup", killed_cgroup.clone());
        r.set("cgroup", cgroup.clone());
        r.set("verdict_to_kill_us", k["latency_us"].clone());
        r.set("also_killed", k["also_killed"].clone());
        r.check(
            mode == "cgroup",
            format!("kill_mode is {mode:?}, not \"cgroup\""),
        );
        r.check(
            killed_cgroup == hog_cg.rel(),
            format!("killed_cgroup is {killed_cgroup:?}, not {:?}", hog_cg.rel()),
        );
        r.check(
            cgroup == slice.rel(),
            format!(
                "the stalled cgroup is logged as {cgroup:?}, not {:?}",
                slice.rel()
            ),
        );
    }
    let guard_pid = guard.pid();
    let targets: Vec<u32> = trace_sigkills(&trace_text)
        .into_iter()
        .filter(|(_, sender, _)| *sender == guard_pid)
        .map(|(_, _, target)| target)
        .collect();
    r.set("sigkill_targets", json!(targets));
    r.check(
        targets.contains(&hog_pid) && targets.contains(&helper_pid),
        format!(
            "the guard's SIGKILLs in the trace went to {targets:?}, not to the hog {hog_pid} and \
             the helper {helper_pid}"
        ),
    );
    r.check(
        !targets.contains(&bystander_pid),
        "the trace shows a SIGKILL from the guard to the bystander",
    );
    detect_to_kill(r, &trace_text, hog_pid);
    Ok(())
}
