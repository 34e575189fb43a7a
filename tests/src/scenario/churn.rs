//! `churn`: kill records outlive a user's cgroup churn. The guard keeps a
//! 1 MiB event log (4 MiB with its three old parts); the seed hog is
//! killed; then a mkdir/rmdir loop makes and removes cgroups in a subtree
//! of its own, as any user can in theirs, while `guard trace --json`
//! listens. The churn must reach the listener (the daemon saw it) and not
//! the disk: the kill must still be in the event log afterwards, with no
//! cgroup record beside it.

use std::os::unix::process::ExitStatusExt as _;

use super::*;

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::new("churn", run, summary)];

fn summary(r: &Value) -> String {
    format!(
        "{} cgroups made and removed in {} ms after the kill; the listener saw {} cgroup records, \
         the event log {} ({} bytes); the kill of {} still in it: {}",
        r["churn_cgroups"],
        r["churn_ms"],
        r["listener_cgroup_records"],
        r["log_cgroup_records"],
        r["log_bytes"],
        r["hog_pid"],
        r["kill_kept"],
    )
}

const LOG_DIR: &str = "/var/lib/guard";
const TRACE_OUT: &str = "/tmp/churn-trace.jsonl";
/// Cgroups made and removed: about 6 MB of cgroup records, past the four
/// 1 MiB parts of the log, had they gone to disk.
const CHURN: usize = 20_000;

fn run(r: &mut Report) -> Result<(), String> {
    let _ = fs::remove_dir_all(LOG_DIR);
    let mut guard = Guard::start(&["--event-log", LOG_DIR, "--event-log-mib", "1"], &[])?;
    let seed = Cgroup::create("/churn-seed")?;
    seed.limit("64M", "128M")?;
    let mut hog = seed.spawn(&["hog", "100"], Stdio::null())?;
    let hog_pid = hog.id();
    r.set("hog_pid", hog_pid);
    match wait_exit(&mut hog, Duration::from_secs(20)) {
        Some((status, _)) => r.check(
            status.signal() == Some(libc::SIGKILL),
            format!("the hog ended by {status}, not SIGKILL"),
        ),
        None => {
            r.check(false, "the hog is alive after 20 s");
            end(&mut hog);
        }
    }
    let out = fs::File::create(TRACE_OUT).map_err(|e| format!("{TRACE_OUT}: {e}"))?;
    let mut tracer = Command::new(GUARD)
        .args(["trace", "--json"])
        .stdin(Stdio::null())
        .stdout(out)
        .spawn()
        .map_err(|e| format!("spawning guard trace: {e}"))?;
    sleep(Duration::from_secs(2));

    Cgroup::create("/churn.slice")?;
    let started = Instant::now();
    for i in 0..CHURN {
        let dir = format!("{CGROUP_ROOT}/churn.slice/c{}", i % 64);
        fs::create_dir(&dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
        fs::remove_dir(&dir).map_err(|e| format!("rmdir {dir}: {e}"))?;
    }
    r.set("churn_cgroups", CHURN);
    r.set("churn_ms", started.elapsed().as_millis() as u64);
    // The daemon drains the cgroup events, then the listener is stopped.
    sleep(Duration::from_secs(2));
    end(&mut tracer);
    guard.stop();

    let is_cgroup = |v: &Value| v["type"] == "cgroup_created" || v["type"] == "cgroup_removed";
    let heard = log_lines(&read(TRACE_OUT)).iter().filter(|v| is_cgroup(v)).count();
    r.set("listener_cgroup_records", heard);
    r.check(
        heard > 0,
        "guard trace saw no cgroup record: the churn never reached the daemon, so this proves nothing",
    );
    let parts = ["", ".1", ".2", ".3"].map(|p| read(&format!("{LOG_DIR}/events.jsonl{p}")));
    let log: Vec<Value> = parts.iter().flat_map(|t| log_lines(t)).collect();
    r.set("log_bytes", parts.iter().map(String::len).sum::<usize>());
    let on_disk = log.iter().filter(|v| is_cgroup(v)).count();
    r.set("log_cgroup_records", on_disk);
    r.check(
        on_disk == 0,
        format!("{on_disk} cgroup records went to the event log"),
    );
    let kept = log
        .iter()
        .any(|v| v["type"] == "kill" && number(&v["pid"]) == Some(u64::from(hog_pid)));
    r.set("kill_kept", kept);
    r.check(
        kept,
        format!("the kill of {hog_pid} is no longer in the event log after the churn"),
    );
    Ok(())
}
