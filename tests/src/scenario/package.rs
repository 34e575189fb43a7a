//! `package`: the Debian package on a machine that has never had guard.
//!
//! The systemd guest comes with guard installed from source (the unit in
//! /etc/systemd/system, the binary in /usr/local/sbin); that is removed
//! first, and the scenario checks that nothing of guard is left before it
//! starts. Then, as an admin would: `apt-get install ./guard_*-1_*.deb`,
//! the unit active and enabled, the seed incident's hog (another user's,
//! in a `MemoryHigh=` slice) killed; the policy conffile changed by hand,
//! `apt-get install` of revision 2: the change kept, the daemon restarted
//! on the new binary; `apt-get purge guard`: nothing of guard left.
//! `guard status` and `guard explain` are run against the live daemon and
//! printed on the console.

use super::{
    systemd::{
        HOG_SERVICE, PERF_EVENT_PARANOID, SEED_SLICE, command_text, guard_events, step, systemctl,
        wait_event,
    },
    *,
};
use crate::units::{prop, sh, wait_inactive};

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::systemd("package", run, summary)];

/// Where xtask puts the two packages (revisions 1 and 2 of this build).
const DEBS: &str = "/root";
/// The package's binary, policy file and unit.
pub(super) const BIN: &str = "/usr/sbin/guard";
pub(super) const POLICY: &str = "/etc/guard/guard.toml";
const UNITS: &str = "/run/systemd/system";
/// What the source install put in the image, removed first.
const SOURCE_INSTALL: [&str; 3] = [
    "/usr/local/sbin/guard",
    "/etc/systemd/system/guard.service",
    "/etc/systemd/system/guard.service.d",
];
/// Paths that must not exist before the install nor after the purge,
/// besides every file the package listed.
const LEFTOVERS: [&str; 5] = [
    "/etc/guard",
    "/var/lib/guard",
    "/run/guard",
    "/etc/systemd/system/multi-user.target.wants/guard.service",
    "/usr/lib/systemd/system/guard.service",
];
/// The admin's change to the conffile before the upgrade.
const LOCAL_CHANGE: &str = "\n# Changed on this machine: kept across upgrades.\n";

fn summary(r: &Value) -> String {
    format!(
        "install {} {}: unit {} and {}, hog SIGKILLed {} ms after start; upgrade to {}: \
         conffile change kept {}, daemon restarted {} (pid {} -> {}); remove kept the policy {}, \
         install after it enabled and started {}, reinstall kept disable {}; purge: {} paths and \
         the group gone {}",
        r["installed_version"].as_str().unwrap_or("-"),
        r["install_result"].as_str().unwrap_or("-"),
        r["active_after_install"].as_str().unwrap_or("-"),
        r["enabled_after_install"].as_str().unwrap_or("-"),
        crate::summary::fmt_num(&r["hog_lifetime_ms"], 0),
        r["upgraded_version"].as_str().unwrap_or("-"),
        r["conffile_kept"],
        r["restarted_on_upgrade"],
        r["pid_before_upgrade"],
        r["pid_after_upgrade"],
        r["remove_kept_policy"],
        r["reinstalled_after_remove"],
        r["reinstall_kept_disabled"],
        r["purge_paths_checked"],
        r["purge_clean"],
    )
}

fn run(r: &mut Report) -> Result<(), String> {
    let outcome = checks(r);
    for line in super::systemd::journal("guard.service", "short").lines() {
        println!("GUARD-JOURNAL {line}");
    }
    outcome
}

/// The package files xtask put in /root: revision 1 and revision 2.
pub(super) fn packages() -> Result<(String, String), String> {
    let mut debs: Vec<String> = fs::read_dir(DEBS)
        .map_err(|e| format!("reading {DEBS}: {e}"))?
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".deb") && p.contains("/guard_"))
        .collect();
    debs.sort();
    match debs.as_slice() {
        [first, second] => Ok((first.clone(), second.clone())),
        other => Err(format!("expected two guard packages in {DEBS}, found {other:?}")),
    }
}

fn checks(r: &mut Report) -> Result<(), String> {
    r.set("kernel", read("/proc/sys/kernel/osrelease").trim());
    let (first, second) = packages()?;
    if let Err(e) = fs::write("/proc/sys/kernel/perf_event_paranoid", PERF_EVENT_PARANOID) {
        r.check(false, format!("setting kernel.perf_event_paranoid: {e}"));
    }
    remove_source_install()?;
    let before = guard_traces(&[]);
    r.check(
        before.is_empty(),
        format!("guard was on the machine before the install: {before:?}"),
    );
    // The slice first, so that its memory.high is set when the guard starts.
    write(&format!("{UNITS}/seed.slice"), SEED_SLICE)?;
    write(&format!("{UNITS}/hog.service"), HOG_SERVICE)?;
    systemctl(&["daemon-reload"])?;
    systemctl(&["start", "seed.slice"])?;
    sh(&["useradd", "--system", "--no-create-home", "stranger"])?;

    step(&format!("apt-get install {first}"));
    let installed = apt(&["install", "-y", &first]);
    r.set("install_result", if installed.is_ok() { "ok" } else { "failed" });
    if let Err(e) = installed {
        r.check(false, e);
        return Ok(());
    }
    r.set("installed_version", version());
    let active = prop("guard", "ActiveState");
    let enabled = is_enabled();
    r.set("active_after_install", active.as_str());
    r.set("enabled_after_install", enabled.as_str());
    r.check(active == "active", format!("guard.service is {active:?} after the install"));
    r.check(enabled == "enabled", format!("guard.service is {enabled:?} after the install"));
    let exec = prop("guard", "ExecStart");
    r.check(
        exec.contains(&format!("path={BIN} ")),
        format!("guard.service does not run {BIN}: {exec}"),
    );
    let group = sh(&["getent", "group", "guard"]);
    r.check(group.is_ok(), "the install created no group guard");
    for path in [
        BIN,
        POLICY,
        "/usr/share/man/man8/guard.8.gz",
        "/usr/share/bash-completion/completions/guard",
        "/usr/share/zsh/vendor-completions/_guard",
        "/usr/share/fish/vendor_completions.d/guard.fish",
        "/usr/share/doc/guard/guard-alerts.yml",
    ] {
        r.check(Path::new(path).exists(), format!("the install left no {path}"));
    }
    let socket_group = fs::metadata("/run/guard/events.sock").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.gid()
    });
    let guard_gid = group
        .as_deref()
        .ok()
        .and_then(|g| g.split(':').nth(2))
        .and_then(|g| g.parse::<u32>().ok());
    r.check(
        socket_group.as_ref().ok() == guard_gid.as_ref(),
        format!("/run/guard/events.sock has group {socket_group:?}, not guard's {guard_gid:?}"),
    );

    seed_incident(r);
    show_status_and_explain(r);

    upgrade(r, &second);
    remove_and_reinstall(r, &second);
    purge(r);
    Ok(())
}

/// The image's source install out of the way, as on a machine that never
/// had guard.
pub(super) fn remove_source_install() -> Result<(), String> {
    let _ = systemctl(&["stop", "guard.service"]);
    for path in SOURCE_INSTALL {
        let p = Path::new(path);
        let removed = if p.is_dir() {
            fs::remove_dir_all(p)
        } else {
            fs::remove_file(p)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {path}: {e}")),
        }
    }
    systemctl(&["daemon-reload"])
}

/// Whatever of guard is on the machine: `paths` (the package's files) and
/// [`LEFTOVERS`] that exist, the group, the unit as systemd knows it, and
/// any process running a guard binary.
fn guard_traces(paths: &[String]) -> Vec<String> {
    let mut found: Vec<String> = LEFTOVERS
        .iter()
        .map(|p| (*p).to_owned())
        .chain(paths.iter().cloned())
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
    if sh(&["getent", "group", "guard"]).is_ok() {
        found.push("group guard".to_owned());
    }
    let load = prop("guard.service", "LoadState");
    if load != "not-found" {
        found.push(format!("guard.service LoadState={load}"));
    }
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let exe = fs::read_link(entry.path().join("exe")).unwrap_or_default();
        let exe = exe.to_string_lossy();
        if exe.ends_with("/guard") || exe.ends_with("/guard (deleted)") {
            found.push(format!("process {} running {exe}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// `apt-get ARGS`, non-interactive; its output on the console.
pub(super) fn apt(args: &[&str]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running apt-get: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines() {
        println!("GUARD-APT {line}");
    }
    if out.status.success() {
        Ok(())
    } else {
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        Err(format!(
            "apt-get {} failed ({}): {}",
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }
}

/// The installed version of guard, as dpkg has it ("" when none).
fn version() -> String {
    sh(&["dpkg-query", "-W", "-f=${Version}", "guard"]).unwrap_or_default()
}

/// The seed incident: another user's hog in a `MemoryHigh=64M` slice
/// without swap, killed by the packaged daemon.
fn seed_incident(r: &mut Report) {
    step("starting hog.service in seed.slice");
    let started = systemctl(&["start", "hog.service"]);
    r.check(started.is_ok(), format!("hog.service did not start: {started:?}"));
    let hog: u32 = prop("hog", "MainPID").parse().unwrap_or(0);
    if !wait_inactive("hog", Duration::from_secs(60)) {
        r.check(false, "hog.service still running 60 s after its start");
        let _ = systemctl(&["kill", "-s", "KILL", "hog.service"]);
        wait_inactive("hog", Duration::from_secs(10));
    }
    let num = |name: &str| prop("hog", name).parse::<u64>().unwrap_or(0);
    let lifetime_ms = num("ExecMainExitTimestampMonotonic")
        .saturating_sub(num("ExecMainStartTimestampMonotonic"))
        / 1000;
    r.set("hog_lifetime_ms", lifetime_ms);
    let (result, code, status) = (
        prop("hog", "Result"),
        num("ExecMainCode"),
        num("ExecMainStatus"),
    );
    r.check(
        result == "signal" && code == 2 && status == 9,
        format!("hog.service ended with Result={result} code={code} status={status}, not SIGKILL"),
    );
    let killed = wait_event(Duration::from_secs(10), |e| {
        message(e) == "killed" && number(&e["pid"]) == Some(u64::from(hog))
    });
    r.check(
        killed.is_some(),
        format!("no 'killed' line for the hog (pid {hog}) in the journal"),
    );
    let others: Vec<Value> = guard_events()
        .into_iter()
        .filter(|e| message(e) == "killed" && number(&e["pid"]) != Some(u64::from(hog)))
        .map(|e| e["pid"].clone())
        .collect();
    r.check(others.is_empty(), format!("the guard also killed {others:?}"));
}

/// `guard status` and `guard explain` against the packaged daemon, for the
/// console (and the closing note); the JSON checked for what the kill left.
fn show_status_and_explain(r: &mut Report) {
    let text = command_text(Command::new(BIN).arg("status"));
    for line in text.lines() {
        println!("GUARD-STATUS {line}");
    }
    let json = command_text(Command::new(BIN).args(["status", "--json"]));
    match serde_json::from_str::<Value>(json.trim()) {
        Ok(v) => {
            r.check(
                v["daemon"].is_object(),
                format!("guard status found no daemon: {}", v["hooks"]),
            );
            r.check(
                v["events"]["kills"].as_u64().is_some_and(|k| k >= 1),
                format!("guard status counts {} kills, not the hog's", v["events"]["kills"]),
            );
            let seed = v["cgroups"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["cgroup"] == "/seed.slice"));
            r.check(
                seed.is_some_and(|s| s["memory_high"] == 67108864u64),
                "guard status does not list /seed.slice with its 64 MiB memory.high",
            );
            r.set("status_daemon", v["daemon"].clone());
        }
        Err(e) => r.check(false, format!("guard status --json is not JSON ({e}): {json}")),
    }
    explain_a_process(r);
    let explain = command_text(Command::new(BIN).args(["explain", "/seed.slice"]));
    for line in explain.lines() {
        println!("GUARD-EXPLAIN {line}");
    }
    r.check(
        explain.contains("/seed.slice"),
        format!("guard explain /seed.slice did not name it: {explain}"),
    );
}

/// The conffile changed by hand, then revision 2 installed over 1.
fn upgrade(r: &mut Report, second: &str) {
    let pid_before = prop("guard", "MainPID");
    r.set("pid_before_upgrade", pid_before.as_str());
    let changed = format!("{}{LOCAL_CHANGE}", read(POLICY));
    if let Err(e) = write(POLICY, &changed) {
        r.check(false, e);
        return;
    }
    step(&format!("apt-get install {second}"));
    if let Err(e) = apt(&["install", "-y", second]) {
        r.check(false, e);
        return;
    }
    let upgraded = version();
    r.set("upgraded_version", upgraded.as_str());
    r.check(
        upgraded.ends_with("-2"),
        format!("dpkg has guard {upgraded:?} after the upgrade, not revision 2"),
    );
    let kept = read(POLICY) == changed;
    r.set("conffile_kept", kept);
    r.check(kept, format!("the upgrade did not keep the changed {POLICY}"));
    for stray in [".dpkg-dist", ".dpkg-new", ".dpkg-old"] {
        let p = format!("{POLICY}{stray}");
        r.check(!Path::new(&p).exists(), format!("the upgrade left {p}"));
    }
    let pid_after = prop("guard", "MainPID");
    r.set("pid_after_upgrade", pid_after.as_str());
    let active = prop("guard", "ActiveState");
    let restarted = active == "active" && pid_after != pid_before && pid_after != "0";
    r.set("restarted_on_upgrade", restarted);
    r.check(
        restarted,
        format!("guard.service after the upgrade: {active}, pid {pid_before} -> {pid_after}"),
    );
    let exe = fs::read_link(format!("/proc/{pid_after}/exe")).unwrap_or_default();
    r.check(
        exe == Path::new(BIN),
        format!("the daemon runs {}, not the new {BIN}", exe.display()),
    );
}

/// `apt-get purge guard`: nothing of it left.
fn purge(r: &mut Report) {
    let listed: Vec<String> = sh(&["dpkg-query", "-L", "guard"])
        .unwrap_or_default()
        .lines()
        .filter(|p| Path::new(p).is_file())
        .map(str::to_owned)
        .collect();
    r.check(
        listed.iter().any(|p| p == BIN),
        format!("dpkg-query -L guard does not list {BIN}: {listed:?}"),
    );
    step("apt-get purge guard");
    if let Err(e) = apt(&["purge", "-y", "guard"]) {
        r.check(false, e);
        return;
    }
    r.set("purge_paths_checked", listed.len() + LEFTOVERS.len());
    let left = guard_traces(&listed);
    r.set("purge_clean", left.is_empty());
    r.check(left.is_empty(), format!("the purge left {left:?}"));
    let state = sh(&["dpkg-query", "-W", "-f=${db:Status-Status}", "guard"]).unwrap_or_default();
    r.check(
        state.is_empty() || state == "not-installed",
        format!("dpkg still has guard as {state:?} after the purge"),
    );
}

/// `guard explain PID` on a small process of the same user in the slice
/// the hog died in: not protected, first (and only) in the victim order,
/// its footprint what it holds.
fn explain_a_process(r: &mut Report) {
    let started = sh(&[
        "systemd-run",
        "--unit=small",
        "--slice=seed.slice",
        "--uid=stranger",
        "--property=Type=exec",
        "/usr/local/bin/guard-scenario",
        "hog",
        "8",
    ]);
    if let Err(e) = started {
        r.check(false, e);
        return;
    }
    let pid = prop("small", "MainPID");
    let limit = Instant::now() + Duration::from_secs(20);
    while read("/sys/fs/cgroup/seed.slice/memory.current")
        .trim()
        .parse::<u64>()
        .unwrap_or(0)
        < 8 << 20
        && Instant::now() < limit
    {
        sleep(Duration::from_millis(100));
    }
    for line in command_text(Command::new(BIN).args(["explain", &pid])).lines() {
        println!("GUARD-EXPLAIN {line}");
    }
    let json = command_text(Command::new(BIN).args(["explain", "--json", &pid]));
    match serde_json::from_str::<Value>(json.trim()) {
        Ok(v) => {
            let ok = v["pid"].as_u64().map(|p| p.to_string()) == Some(pid.clone())
                && v["limited"]["cgroup"] == "/seed.slice"
                && v["protected"].is_null()
                && v["place"] == json!([1, 1])
                && v["footprint_bytes"].as_u64().is_some_and(|b| b >= 8 << 20);
            r.check(
                ok,
                format!("guard explain of the small process (pid {pid}) in /seed.slice: {v}"),
            );
        }
        Err(e) => r.check(false, format!("guard explain --json is not JSON ({e}): {json}")),
    }
    let _ = systemctl(&["stop", "small.service"]);
}

/// The maintainer scripts' other paths: `apt-get remove` stops the daemon
/// and keeps the policy; installing again enables and starts it; a
/// reinstall leaves an admin's `disable` alone.
fn remove_and_reinstall(r: &mut Report, deb: &str) {
    let changed = read(POLICY);
    step("apt-get remove guard");
    if let Err(e) = apt(&["remove", "-y", "guard"]) {
        r.check(false, e);
        return;
    }
    let load = prop("guard", "LoadState");
    let removed = load == "not-found" && !Path::new(BIN).exists() && read(POLICY) == changed;
    r.set("remove_kept_policy", removed);
    r.check(
        removed,
        format!(
            "after apt-get remove: unit {load}, {BIN} exists {}, policy kept {}",
            Path::new(BIN).exists(),
            read(POLICY) == changed
        ),
    );
    step(&format!("apt-get install {deb} after the remove"));
    if let Err(e) = apt(&["install", "-y", deb]) {
        r.check(false, e);
        return;
    }
    let enabled = is_enabled();
    let active = prop("guard", "ActiveState");
    let back = enabled == "enabled" && active == "active" && read(POLICY) == changed;
    r.set("reinstalled_after_remove", back);
    r.check(
        back,
        format!("installed again after a remove: {enabled}, {active}, policy kept {}", read(POLICY) == changed),
    );
    step("systemctl disable --now guard, then apt-get install --reinstall");
    if let Err(e) = systemctl(&["disable", "--now", "guard.service"]) {
        r.check(false, e);
    }
    if let Err(e) = apt(&["install", "-y", "--reinstall", deb]) {
        r.check(false, e);
        return;
    }
    let enabled = is_enabled();
    let active = prop("guard", "ActiveState");
    let kept = enabled == "disabled" && active == "inactive";
    r.set("reinstall_kept_disabled", kept);
    r.check(
        kept,
        format!("a reinstall after disable left guard.service {enabled}, {active}"),
    );
}

/// What `systemctl is-enabled guard.service` prints ("enabled",
/// "disabled", ...): it exits 1 for every state but enabled.
fn is_enabled() -> String {
    command_text(Command::new("systemctl").args(["is-enabled", "guard.service"]))
        .trim()
        .to_owned()
}
