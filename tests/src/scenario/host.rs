//! `host`: the machine itself runs out of memory, no cgroup limit involved
//! (a 512 MiB VM without swap). A protected stand-in for the user's session
//! (64 MiB, run from /usr/sbin/sshd, the path the default policy protects)
//! runs beside a hog that grows, 8 MiB at a time,
//! towards more than the RAM, on a machine with some page cache (a file on
//! a scratch disk) like any real one.
//! With `[host] mode = "kill"` the guard must kill the hog before the
//! kernel's OOM killer acts: no `oom:mark_victim` in the trace, the SIGKILL
//! sent by the guard, and the stand-in alive.

use super::*;
use crate::summary::{fmt_num, kib_as_mib, mib};

/// Runs the machine itself out of memory, which is quicker and closer to a
/// real box with a small VM; its page cache is on the scratch disk.
pub(super) const SCENARIOS: &[Scenario] = &[Scenario {
    memory_mib: 512,
    disk: true,
    ..Scenario::new("host", run, summary)
}];

fn summary(r: &Value) -> String {
    format!(
        "{} MiB RAM, no swap, {} MiB page cache: hog {} SIGKILLed by the guard {} ms after the first direct reclaim pass ({} passes before the kill, {} without progress; verdict->kill {} us, MemAvailable {} MiB at the kill); kernel OOM victims {}; protected stand-in alive {}",
        kib_as_mib(&r["mem_total_kib"]),
        kib_as_mib(&r["cached_kib_before"]),
        r["hog_pid"],
        fmt_num(&r["first_direct_reclaim_to_kill_ms"], 1),
        r["direct_reclaim_passes"],
        r["direct_passes_without_progress"],
        fmt_num(&r["verdict_to_kill_us"], 0),
        mib(&r["available_at_kill_bytes"]),
        r["kernel_oom_victims"],
        r["stand_in_alive"],
    )
}

const POLICY_PATH: &str = "/etc/guard/host.toml";
const POLICY: &str = r#"# written by the host scenario
[host]
mode = "kill"
# A small machine: 10 % of 512 MiB leaves the kill path (70-110 ms under
# emulation) the room it needs.
min_available_percent = 10

[[scope]]
paths = ["/**"]
"#;
const TRACEFS: &str = "/sys/kernel/tracing";

fn enable(rel: &str, v: &str) -> Result<(), String> {
    fs::write(format!("{TRACEFS}/{rel}"), v).map_err(|e| format!("tracefs {rel}: {e}"))
}

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    write_policy(POLICY_PATH, POLICY)?;
    trace::enable()?;
    enable("tracing_on", "0")?;
    enable("events/vmscan/mm_vmscan_direct_reclaim_end/enable", "1")?;
    enable("events/oom/mark_victim/enable", "1")?;
    enable("tracing_on", "1")?;
    let meminfo = read("/proc/meminfo");
    r.set("mem_total_kib", keyed_colon(&meminfo, "MemTotal"));
    r.set("swap_total_kib", keyed_colon(&meminfo, "SwapTotal"));

    // Page cache the kernel can reclaim, as on any real machine (binaries,
    // sources, logs): 160 MiB of a file on the scratch disk, written back.
    benign::mount_scratch(r)?;
    let cache = format!("{}/cache", benign::MOUNT);
    {
        use std::io::Write as _;
        let mut f = fs::File::create(&cache).map_err(|e| format!("{cache}: {e}"))?;
        let block = vec![0x5au8; 1 << 20];
        for _ in 0..160 {
            f.write_all(&block)
                .map_err(|e| format!("writing {cache}: {e}"))?;
        }
        f.sync_all().map_err(|e| format!("syncing {cache}: {e}"))?;
    }
    let meminfo = read("/proc/meminfo");
    r.set("cached_kib_before", keyed_colon(&meminfo, "Cached"));

    let mut guard = Guard::start(&["--config", POLICY_PATH], &[])?;
    let root = Cgroup::create("/")?;
    // Run from sshd's installed path: what protects it is the executable,
    // not the name.
    let mut stand_in = root.spawn_from(SSHD, &["hog", "64", "sshd"], Stdio::null())?;
    let stand_in_pid = stand_in.id();
    r.set("stand_in_pid", stand_in_pid);
    sleep(Duration::from_secs(2));

    let hog_start = monotonic_ns();
    let mut hog = root.spawn(&["grower", "700", "hog"], Stdio::null())?;
    let hog_pid = hog.id();
    r.set("hog_pid", hog_pid);
    match wait_exit(&mut hog, Duration::from_secs(60)) {
        Some((status, at)) => {
            r.check(
                status.signal() == Some(libc::SIGKILL),
                format!("the hog ended by {status}, not SIGKILL"),
            );
            r.set("hog_lived_ms", (at - hog_start) as f64 / 1e6);
        }
        None => {
            r.check(false, "the hog is alive 60 s after it started");
            end(&mut hog);
        }
    }
    sleep(Duration::from_millis(500));
    let stand_in_alive = alive(stand_in_pid);
    r.set("stand_in_alive", stand_in_alive);
    r.check(
        stand_in_alive,
        "the protected stand-in (sshd) did not survive",
    );
    end(&mut stand_in);
    let guard_pid = guard.pid();
    let log = guard.stop();
    let trace_text = trace::read();

    let oom_victims: Vec<u32> = trace_text
        .lines()
        .filter_map(trace::parse)
        .filter(|l| l.event == "mark_victim")
        .filter_map(|l| kv(l.fields, "pid")?.parse().ok())
        .collect();
    r.set("kernel_oom_victims", json!(oom_victims));
    r.check(
        oom_victims.is_empty(),
        format!("the kernel's OOM killer acted first: oom:mark_victim for {oom_victims:?}"),
    );
    match trace::first_sigkill(&trace_text, hog_pid) {
        Some((t1, sender)) => {
            r.check(
                sender == guard_pid,
                format!("the hog's SIGKILL came from pid {sender}, not the guard ({guard_pid})"),
            );
            // From the first direct reclaim pass (the allocator reclaiming
            // for itself: the machine is out of free pages) to the kill.
            let direct: Vec<(f64, bool)> = trace_text
                .lines()
                .filter_map(trace::parse)
                .filter(|l| l.event == "mm_vmscan_direct_reclaim_end" && l.ts <= t1)
                .map(|l| (l.ts, kv(l.fields, "nr_reclaimed") == Some("0")))
                .collect();
            match direct.first() {
                Some((t0, _)) => r.set("first_direct_reclaim_to_kill_ms", (t1 - t0) * 1000.0),
                None => r.set("first_direct_reclaim_to_kill_ms", Value::Null),
            }
            r.set("direct_reclaim_passes", direct.len());
            r.set(
                "direct_passes_without_progress",
                direct.iter().filter(|(_, none)| *none).count(),
            );
        }
        None => r.check(false, "no SIGKILL for the hog in the trace"),
    }
    let lines = log_lines(&log);
    let kills = with_message(&lines, "killed");
    r.check(
        kills.len() == 1,
        format!("expected one kill, the guard logged {}", kills.len()),
    );
    if let Some(k) = kills.first() {
        r.check(
            k["cgroup"] == "(host)" && number(&k["pid"]) == Some(u64::from(hog_pid)),
            format!("the kill was not the host scope's kill of the hog: {k}"),
        );
        r.set("verdict_to_kill_us", k["latency_us"].clone());
        r.set("available_at_kill_bytes", k["available"].clone());
    }
    Ok(())
}
