//! `band`: deploy/README.md's runbook "The band, safely", run as written.
//!
//! The package installed; the drop-ins of deploy/band/ that give the
//! t3-serve@ services, every user slice and docker.slice
//! `MemoryHigh=12G`/`MemoryMax=16G`/`MemorySwapMax=0` again, checked in the
//! cgroups systemd makes for them; deploy/band/guard.toml as the policy,
//! reloaded; earlyoom running beside guard; `guard status` listing each
//! band under its scope, no band unwatched, earlyoom found. Then the
//! runbook's test balloon, a `systemd-run --scope` with a band of its own
//! (64M/128M here: the guest has 1 GiB) and a pipe that keeps everything it
//! reads: guard kills it, earlyoom kills nothing. Last the rollback: the
//! drop-ins removed, the bands gone from the running cgroups.

use super::{
    package::{BIN, POLICY, apt, packages, remove_source_install},
    systemd::{PERF_EVENT_PARANOID, command_text, guard_events, journal, step, systemctl, wait_event},
    *,
};
use crate::units::{prop, put_file, sh};

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::systemd("band", run, summary)];

/// The runbook's files, as the repository has them.
const DROP_INS: [(&str, &str); 3] = [
    (
        "t3-serve@.service.d",
        include_str!("../../../deploy/band/t3-serve@.service.d/50-guard-band.conf"),
    ),
    (
        "user-.slice.d",
        include_str!("../../../deploy/band/user-.slice.d/50-guard-band.conf"),
    ),
    (
        "docker.slice.d",
        include_str!("../../../deploy/band/docker.slice.d/50-guard-band.conf"),
    ),
];
const BAND_POLICY: &str = include_str!("../../../deploy/band/guard.toml");
const DROP_IN_NAME: &str = "50-guard-band.conf";
/// A stand-in for the real t3-serve@ template: something that runs.
const T3_SERVE: &str = "\
[Unit]
Description=guard test: a stand-in for t3-serve@%i

[Service]
Type=exec
ExecStart=/bin/sleep infinity
";
/// The cgroups the drop-ins limit, under /sys/fs/cgroup, with the units
/// that make them.
const BANDS: [(&str, &str); 3] = [
    (
        "t3-serve@demo.service",
        "/system.slice/system-t3\\x2dserve.slice/t3-serve@demo.service",
    ),
    ("user-995.slice", "/user.slice/user-995.slice"),
    ("docker.slice", "/docker.slice"),
];
/// The scope deploy/band/guard.toml gives each of [`BANDS`].
const BAND_SCOPES: [&str; 3] = [
    "/system.slice/system-t3*.slice/t3-serve@*.service",
    "/user.slice/user-*.slice",
    "/docker.slice",
];
const HIGH_12G: u64 = 12 << 30;
const MAX_16G: u64 = 16 << 30;
/// The balloon as the runbook gives it, scaled to the guest: a band of
/// 64M..128M without swap, and a pipe whose reader keeps all it reads.
const BALLOON: [&str; 11] = [
    "systemd-run",
    "--scope",
    "--unit=guard-balloon",
    "-p",
    "MemoryHigh=64M",
    "-p",
    "MemoryMax=128M",
    "-p",
    "MemorySwapMax=0",
    "sh",
    "-c",
];
const BALLOON_PIPE: &str = "head -c 512M /dev/zero | tail";

fn summary(r: &Value) -> String {
    format!(
        "bands 12G/16G/swap 0 on {} of 3 cgroups, all watched {}; balloon {} (exit {}, \
         {} ms) by guard, earlyoom beside it killed {}; guard status with the daemon stopped {}; rollback restored memory.high=max {}",
        r["bands_applied"],
        r["bands_watched"],
        r["balloon_victim"].as_str().unwrap_or("-"),
        r["balloon_exit"],
        crate::summary::fmt_num(&r["balloon_ms"], 0),
        r["earlyoom_kills"],
        r["status_without_daemon"],
        r["rolled_back"],
    )
}

fn run(r: &mut Report) -> Result<(), String> {
    let outcome = checks(r);
    for line in journal("guard.service", "short").lines() {
        println!("GUARD-JOURNAL {line}");
    }
    outcome
}

fn checks(r: &mut Report) -> Result<(), String> {
    r.set("kernel", read("/proc/sys/kernel/osrelease").trim());
    if let Err(e) = fs::write("/proc/sys/kernel/perf_event_paranoid", PERF_EVENT_PARANOID) {
        r.check(false, format!("setting kernel.perf_event_paranoid: {e}"));
    }
    let (first, _) = packages()?;
    remove_source_install()?;
    step("runbook step 1: apt-get install the package");
    apt(&["install", "-y", &first])?;

    step("runbook step 2: the band's drop-ins");
    for (dir, text) in DROP_INS {
        put_file(&format!("/etc/systemd/system/{dir}/{DROP_IN_NAME}"), text)?;
    }
    write("/run/systemd/system/t3-serve@.service", T3_SERVE)?;
    systemctl(&["daemon-reload"])?;
    for (unit, _) in BANDS {
        if unit.starts_with("user-") {
            // A user's slice lives while something of the user runs in it
            // (systemd's own user-.slice.d says StopWhenUnneeded=yes).
            sh(&[
                "systemd-run",
                "--unit=worker-session",
                &format!("--slice={unit}"),
                "--property=Type=exec",
                "/bin/sleep",
                "infinity",
            ])?;
        } else {
            systemctl(&["start", unit])?;
        }
    }
    let mut applied = 0;
    for (unit, cgroup) in BANDS {
        let dir = format!("{CGROUP_ROOT}{cgroup}");
        let value = |f: &str| read(&format!("{dir}/{f}")).trim().to_owned();
        let (high, max, swap) = (value("memory.high"), value("memory.max"), value("memory.swap.max"));
        let ok = high == HIGH_12G.to_string() && max == MAX_16G.to_string() && swap == "0";
        applied += u32::from(ok);
        r.check(
            ok,
            format!("{unit}: memory.high {high:?}, memory.max {max:?}, memory.swap.max {swap:?}"),
        );
    }
    r.set("bands_applied", applied);

    step("runbook step 3: the policy for those scopes");
    write(POLICY, BAND_POLICY)?;
    let check = command_text(Command::new(BIN).args(["config", "check"]));
    r.check(
        check.trim() == format!("{POLICY}: ok"),
        format!("guard config check of deploy/band/guard.toml: {check}"),
    );
    systemctl(&["reload", "guard.service"])?;
    let reloaded = wait_event(Duration::from_secs(10), |e| message(e).starts_with("policy reload"));
    r.check(reloaded.is_some(), "no 'policy reload' line after systemctl reload guard");

    step("runbook step 4: earlyoom beside guard");
    systemctl(&["unmask", "earlyoom.service"])?;
    systemctl(&["start", "earlyoom.service"])?;
    r.check(
        prop("earlyoom", "ActiveState") == "active",
        "earlyoom.service is not active",
    );

    step("runbook step 5: guard status");
    status_checks(r);

    step("runbook step 6: the test balloon");
    balloon(r);

    step("guard status with the daemon stopped");
    status_without_daemon(r);

    step("runbook step 7: roll back");
    rollback(r);
    Ok(())
}

/// `guard status`: every band watched under its scope, none unwatched,
/// earlyoom found beside it.
fn status_checks(r: &mut Report) {
    for line in command_text(Command::new(BIN).arg("status")).lines() {
        println!("GUARD-STATUS {line}");
    }
    let json = command_text(Command::new(BIN).args(["status", "--json"]));
    let v = match serde_json::from_str::<Value>(json.trim()) {
        Ok(v) => v,
        Err(e) => {
            r.check(false, format!("guard status --json is not JSON ({e}): {json}"));
            return;
        }
    };
    let cgroups = v["cgroups"].as_array().cloned().unwrap_or_default();
    let mut watched = true;
    for ((unit, cgroup), scope) in BANDS.into_iter().zip(BAND_SCOPES) {
        let row = cgroups.iter().find(|c| c["cgroup"] == cgroup);
        // Its own scope, not the catch-all /** (whose budget is 250 ms too).
        let ok = row.is_some_and(|c| {
            c["memory_high"] == HIGH_12G
                && c["swap_max"] == 0
                && c["budget_ms"] == 250
                && c["scope"] == scope
        });
        watched &= ok;
        r.check(
            ok,
            format!("guard status: {unit} ({cgroup}) not watched with its band: {row:?}"),
        );
    }
    r.set("bands_watched", watched);
    let unwatched: Vec<&Value> = v["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["kind"] == "unwatched_band")
        .collect();
    r.check(
        unwatched.is_empty(),
        format!("guard status warns of unwatched bands: {unwatched:?}"),
    );
    let earlyoom = v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "earlyoom");
    r.check(
        earlyoom.is_some_and(|p| p["interaction"].as_str().is_some_and(|s| !s.is_empty())),
        format!("guard status does not name earlyoom among its peers: {}", v["peers"]),
    );
}

/// The balloon: killed by guard (its `tail`), not by earlyoom nor by the
/// kernel at MemoryMax.
fn balloon(r: &mut Report) {
    let started = Instant::now();
    let mut cmd = Command::new(BALLOON[0]);
    cmd.args(&BALLOON[1..]).arg(BALLOON_PIPE).stdin(Stdio::null());
    let status = cmd.status();
    r.set("balloon_ms", started.elapsed().as_millis() as u64);
    let code = status.as_ref().ok().and_then(ExitStatus::code);
    r.set("balloon_exit", code);
    r.check(
        code == Some(137),
        format!("the balloon ended with {status:?}, not 137 (its tail SIGKILLed)"),
    );
    let kill = wait_event(Duration::from_secs(10), |e| {
        message(e) == "killed" && text(&e["cgroup"]).contains("guard-balloon.scope")
    });
    r.set(
        "balloon_victim",
        kill.as_ref().map(|k| text(&k["comm"])).unwrap_or_default(),
    );
    r.check(
        kill.as_ref().is_some_and(|k| text(&k["comm"]) == "tail"),
        format!("guard's kill in guard-balloon.scope: {kill:?}, not the balloon's tail"),
    );
    let others: Vec<String> = guard_events()
        .into_iter()
        .filter(|e| message(e) == "killed" && !text(&e["cgroup"]).contains("guard-balloon.scope"))
        .map(|e| format!("{} in {}", text(&e["comm"]), text(&e["cgroup"])))
        .collect();
    r.check(others.is_empty(), format!("guard also killed {others:?}"));
    let earlyoom_kills = journal("earlyoom.service", "cat")
        .lines()
        // Not its start-up lines ("sending SIGTERM when mem avail <= ...").
        .filter(|l| l.contains("sending SIG") && l.contains(" to process "))
        .count();
    r.set("earlyoom_kills", earlyoom_kills);
    r.check(earlyoom_kills == 0, "earlyoom killed something during the balloon");
    for line in command_text(Command::new(BIN).args(["explain", "/docker.slice"])).lines() {
        println!("GUARD-EXPLAIN {line}");
    }
}

/// The rollback as the runbook gives it: drop-ins removed, daemon-reload;
/// the running cgroups lose their band.
fn rollback(r: &mut Report) {
    for (dir, _) in DROP_INS {
        let path = format!("/etc/systemd/system/{dir}/{DROP_IN_NAME}");
        if let Err(e) = fs::remove_file(&path) {
            r.check(false, format!("removing {path}: {e}"));
        }
    }
    if let Err(e) = systemctl(&["daemon-reload"]) {
        r.check(false, e);
    }
    let mut restored = true;
    for (unit, cgroup) in BANDS {
        let high = read(&format!("{CGROUP_ROOT}{cgroup}/memory.high"));
        let ok = high.trim() == "max";
        restored &= ok;
        r.check(ok, format!("after the rollback {unit} still has memory.high {}", high.trim()));
    }
    r.set("rolled_back", restored);
}

/// `guard status` where no daemon runs: it says so, naming the socket, and
/// still lists the bands from the machine.
fn status_without_daemon(r: &mut Report) {
    if let Err(e) = systemctl(&["stop", "guard.service"]) {
        r.check(false, e);
        return;
    }
    let json = command_text(Command::new(BIN).args(["status", "--json"]));
    match serde_json::from_str::<Value>(json.trim()) {
        Ok(v) => {
            let note = text(&v["daemon_note"]);
            let listed = BANDS.iter().all(|(_, cgroup)| {
                v["cgroups"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["cgroup"] == *cgroup))
            });
            let ok = v["daemon"].is_null()
                && note.contains("/run/guard/events.sock")
                && listed
                && v["events"]["kills"].as_u64().is_some_and(|k| k >= 1);
            r.set("status_without_daemon", ok);
            r.check(
                ok,
                format!("guard status with no daemon: daemon {}, note {note:?}, bands listed {listed}, kills {}", v["daemon"], v["events"]["kills"]),
            );
        }
        Err(e) => r.check(false, format!("guard status --json is not JSON ({e}): {json}")),
    }
}
