//! `systemd`: the guard as a real systemd service, with exactly the unit
//! file in `deploy/guard.service`. The guest is the Debian image xtask
//! builds for scenarios of kind `systemd`, where guard-test.service runs
//! this scenario once the system is up.
//!
//! It checks how the guard lives under systemd: that the unit's sandboxing
//! lets the programs load and attach, that `READY=1` comes only after they
//! are attached, that the watchdog is fed, that a reload keeps the daemon,
//! that members of group `guard` may read the event socket and others may
//! not, and that a hog in a `MemoryHigh=` slice is killed while a bystander
//! in the same slice finishes. Everything is read back through systemd
//! (`systemctl show`) and the journal, as an admin would.

use super::*;
use crate::{
    summary::fmt_num,
    units::{prop, sh, wait_inactive},
};

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::systemd("systemd", run, summary)];

/// Where xtask puts the guard in the image (the unit's `ExecStart=`).
const GUARD_BIN: &str = "/usr/local/sbin/guard";
/// Runtime units: the test's own, gone with the boot.
const UNITS: &str = "/run/systemd/system";
/// The test's override of the unit's `WatchdogSec=`, and how long it waits
/// after start before checking that no watchdog timeout restarted the guard.
const TEST_WATCHDOG_SEC: u32 = 4;
const WATCHDOG_WAIT: Duration = Duration::from_secs(10);
/// How long the bystander runs; the hog starts a second after it.
const BYSTANDER_MS: u64 = 8_000;
/// The hog must be dead this long after its start.
const HOG_DEADLINE_MS: u64 = 10_000;
/// Where the image installs deploy/guard.service.
const UNIT_FILE: &str = "/etc/systemd/system/guard.service";
/// The policy file the unit's daemon reads.
const POLICY: &str = "/etc/guard/guard.toml";
/// What the test's post-kill hook prints first.
const HOOK_MARK: &str = "guard-test-hook";
/// `systemd-analyze security guard.service` must rate the shipped unit at
/// most this exposed (0 is the most sandboxed, 10 the least): systemd 252
/// rates deploy/guard.service 3.2; it rated it 7.1 before the sandboxing
/// of issue 12 and 3.6 while the unit still granted CAP_SYS_ADMIN. A
/// directive dropped from the unit shows here.
const EXPOSURE_MAX: f64 = 3.2;
/// Debian's own default, set anyway: unprivileged perf events refused, and
/// perf_event_open() of a tracepoint asks for CAP_SYS_ADMIN. The unit has
/// no CAP_SYS_ADMIN, so the guard must attach without perf events.
pub(super) const PERF_EVENT_PARANOID: &str = "3";
/// CAP_SYS_ADMIN's bit in CapEff.
const CAP_SYS_ADMIN_BIT: u64 = 1 << 21;

pub(super) const SEED_SLICE: &str = "\
[Unit]
Description=guard test: the seed incident's limits

[Slice]
MemoryAccounting=yes
MemoryHigh=64M
MemoryMax=128M
MemorySwapMax=0
";

pub(super) const HOG_SERVICE: &str = "\
[Unit]
Description=guard test: takes 100 MiB in seed.slice and keeps touching it

[Service]
Type=exec
Slice=seed.slice
# Another user's process: killing it takes CAP_KILL, reading its exe
# CAP_SYS_PTRACE.
User=stranger
ExecStart=/usr/local/bin/guard-scenario hog 100
";

fn summary(r: &Value) -> String {
    let watchdog = match r["watchdog_ok"].as_bool() {
        Some(true) => "fed".to_owned(),
        Some(false) => format!(
            "NOT fed ({} timeouts, {} restarts)",
            r["watchdog_timeouts"], r["watchdog_restarts"]
        ),
        None => "-".to_owned(),
    };
    let ms = |key: &str| fmt_num(&(r[key].as_f64().map(|us| us / 1000.0)).into(), 0);
    format!(
        "start {} ms, ready->active {} ms; watchdog {watchdog}; hog SIGKILLed {} ms after start \
         (verdict->kill {} us); bystander {} worst {} ms; socket {}, member attached, stranger \
         refused; kill in /var/lib/guard log {}; broken policy reload refused {}; \
         systemd-analyze security exposure {}; perf_event_paranoid {}, CapEff {} (no \
         CAP_SYS_ADMIN), {} bpf links, {} perf events",
        fmt_num(&r["guard_start_ms"], 0),
        fmt_num(&(r["ready_to_active_us"].as_f64().map(|us| us / 1000.0)).into(), 1),
        fmt_num(&r["hog_lifetime_ms"], 0),
        fmt_num(&r["kill_latency_us"], 0),
        r["bystander_result"].as_str().unwrap_or("-"),
        ms("bystander_worst_us"),
        r["socket_mode"].as_str().unwrap_or("-"),
        r["kill_in_event_log"],
        r["bad_reload_refused"],
        fmt_num(&r["exposure"], 1),
        r["perf_event_paranoid"].as_str().unwrap_or("-"),
        r["cap_eff"].as_str().unwrap_or("-"),
        r["bpf_links"],
        r["perf_events"],
    )
}

fn run(r: &mut Report) -> Result<(), String> {
    let outcome = checks(r);
    // The guard's own account, for whoever reads the console log.
    for line in journal("guard.service", "short").lines()
    {
        println!("GUARD-JOURNAL {line}");
    }
    outcome
}

/// The checks in order; a step that leaves nothing to check after it ends
/// them early (its failure is already in the report).
fn checks(r: &mut Report) -> Result<(), String> {
    step(&format!("kernel {}", read("/proc/sys/kernel/osrelease").trim()));
    r.set("kernel", read("/proc/sys/kernel/osrelease").trim());
    let version = command_text(Command::new("systemctl").arg("--version"));
    r.set("systemd", version.lines().next().unwrap_or_default());
    let tracefs = read("/proc/mounts")
        .lines()
        .any(|l| l.starts_with("tracefs /sys/kernel/tracing "));
    r.set("tracefs_mounted_by_systemd", tracefs);
    if let Err(e) = fs::write("/proc/sys/kernel/perf_event_paranoid", PERF_EVENT_PARANOID) {
        r.check(false, format!("setting kernel.perf_event_paranoid: {e}"));
    }
    r.set(
        "perf_event_paranoid",
        read("/proc/sys/kernel/perf_event_paranoid").trim(),
    );
    install_units()?;
    exposure(r);

    // The slice first, so that its memory.high is set when the guard starts.
    r.check(
        systemctl(&["start", "seed.slice"]).is_ok(),
        "seed.slice did not start",
    );
    let high = read("/sys/fs/cgroup/seed.slice/memory.high");
    r.check(
        high.trim() == "67108864",
        format!("seed.slice memory.high is {:?}, not 64M", high.trim()),
    );
    // Members of group guard may read the event stream; others may not.
    for (what, args) in [
        ("groupadd guard", &["groupadd", "--system", "guard"][..]),
        (
            "useradd watcher",
            &["useradd", "--system", "--no-create-home", "-G", "guard", "watcher"],
        ),
        (
            "useradd stranger",
            &["useradd", "--system", "--no-create-home", "stranger"],
        ),
    ] {
        let ok = Command::new(args[0]).args(&args[1..]).status();
        r.check(ok.is_ok_and(|s| s.success()), format!("{what} failed"));
    }

    let Some(pid) = start_guard(r) else {
        return Ok(());
    };
    ready_checks(r, pid);
    socket_checks(r);
    let Some(gpid) = watchdog_checks(r, pid) else {
        return Ok(());
    };
    let restarts = prop("guard", "NRestarts");

    // ExecReload: SIGHUP re-reads the policy, now one with a post-kill
    // hook; the daemon stays.
    if let Err(e) = write_hook_policy() {
        r.check(false, e);
    }
    step("systemctl reload guard.service");
    r.check(
        systemctl(&["reload", "guard.service"]).is_ok(),
        "systemctl reload guard.service failed",
    );
    let reload = wait_event(Duration::from_secs(10), |e| {
        message(e).starts_with("policy reload")
    });
    r.set("reload_message", reload.as_ref().map(message).unwrap_or(""));
    r.check(reload.is_some(), "no 'policy reload...' line after systemctl reload");
    r.check(
        still_up(gpid, None),
        "guard.service did not stay up through a reload",
    );

    bad_reload(r, gpid);

    hog_and_bystander(r);
    r.check(
        still_up(gpid, Some(&restarts)),
        "guard.service did not stay up through the kill",
    );
    Ok(())
}

/// The slice, the workloads and the test's watchdog period, as runtime
/// units.
fn install_units() -> Result<(), String> {
    let bystander = format!(
        "[Unit]\nDescription=guard test: a 10 ms alloc/free loop in seed.slice\n\n\
         [Service]\nType=exec\nSlice=seed.slice\n\
         ExecStart=/usr/local/bin/guard-scenario bystander {BYSTANDER_MS}\n\
         # Keeps the unit loaded after a clean exit, with its exit status to read.\n\
         RemainAfterExit=yes\n"
    );
    let watchdog = format!(
        "# The test's short watchdog period: a missed ping shows within its wait.\n\
         [Service]\nWatchdogSec={TEST_WATCHDOG_SEC}s\n"
    );
    fs::create_dir_all(format!("{UNITS}/guard.service.d"))
        .map_err(|e| format!("creating {UNITS}/guard.service.d: {e}"))?;
    write(&format!("{UNITS}/seed.slice"), SEED_SLICE)?;
    write(&format!("{UNITS}/hog.service"), HOG_SERVICE)?;
    write(&format!("{UNITS}/bystander.service"), &bystander)?;
    write(
        &format!("{UNITS}/guard.service.d/test-watchdog.conf"),
        &watchdog,
    )?;
    systemctl(&["daemon-reload"])
}

/// How exposed systemd rates the unit: `systemd-analyze security`'s overall
/// level, 0 (most sandboxed) to 10.
fn exposure(r: &mut Report) {
    let text = command_text(Command::new("systemd-analyze").args(["security", "guard.service"]));
    match overall_exposure(&text) {
        Some(level) => {
            r.set("exposure", level);
            r.check(
                level <= EXPOSURE_MAX,
                format!(
                    "systemd-analyze security rates guard.service {level:.1}, over \
                     {EXPOSURE_MAX:.1}: a sandboxing directive of deploy/guard.service is gone"
                ),
            );
        }
        None => r.check(
            false,
            format!(
                "no overall exposure level in `systemd-analyze security guard.service`: {}",
                text.lines().last().unwrap_or_default()
            ),
        ),
    }
}

/// The number in `systemd-analyze security`'s "Overall exposure level for
/// UNIT: 4.2 MEDIUM" line.
fn overall_exposure(text: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (_, rest) = line.split_once("Overall exposure level for ")?;
        rest.split_once(':')?.1.split_whitespace().next()?.parse().ok()
    })
}

/// (a) Starts the unit; its main pid when it is active.
fn start_guard(r: &mut Report) -> Option<u32> {
    step("starting guard.service");
    let started = Instant::now();
    r.check(
        systemctl(&["start", "guard.service"]).is_ok(),
        "systemctl start guard.service failed",
    );
    r.set("guard_start_ms", started.elapsed().as_millis() as u64);
    let state = prop("guard", "ActiveState");
    if state != "active" {
        r.check(
            false,
            format!("guard.service is {state:?} after start, not active"),
        );
        return None;
    }
    prop("guard", "MainPID").parse().ok()
}

/// (a) What the running daemon holds and may do, read before anything
/// slow; and that it was ready before systemd called it active.
fn ready_checks(r: &mut Report, pid: u32) {
    let active_us: u64 = prop("guard", "ActiveEnterTimestampMonotonic")
        .parse()
        .unwrap_or(0);
    let fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let status = read(&format!("/proc/{pid}/status"));
    let field = |key: &str| status_field(&status, key).unwrap_or_default().to_owned();
    r.set("cap_eff", field("CapEff"));
    let unit = read(UNIT_FILE);
    let granted = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .map(capability_mask);
    r.check(
        granted.is_some_and(|want| u64::from_str_radix(&field("CapEff"), 16) == Ok(want)),
        format!(
            "the guard holds CapEff {}, not what {UNIT_FILE}'s AmbientCapabilities= grants \
             ({granted:x?})",
            field("CapEff")
        ),
    );
    r.check(
        u64::from_str_radix(&field("CapEff"), 16).is_ok_and(|caps| caps & CAP_SYS_ADMIN_BIT == 0),
        format!("the guard holds CAP_SYS_ADMIN (CapEff {})", field("CapEff")),
    );
    put(r, "no_new_privs", &field("NoNewPrivs"));
    // SystemCallFilter= in force: seccomp mode 2 (a filter).
    put(r, "seccomp", &field("Seccomp"));
    r.check(
        field("Seccomp") == "2",
        format!("the guard runs with Seccomp {:?}, not 2 (SystemCallFilter=)", field("Seccomp")),
    );
    put(r, "oom_score_adj", read(&format!("/proc/{pid}/oom_score_adj")).trim());
    let count = |name: &str| fds.iter().filter(|f| f.as_str() == name).count();
    let (links, perf) = (
        count("anon_inode:bpf_link"),
        count("anon_inode:[perf_event]"),
    );
    r.set("bpf_links", links);
    r.set("perf_events", perf);
    r.set("bpf_progs", count("anon_inode:bpf-prog"));
    r.check(
        links > 0 && perf == 0,
        format!(
            "the guard (pid {pid}) holds {links} bpf-link and {perf} perf_event fds: every \
             program should be a bpf link (BTF-typed tracepoints, fentry)"
        ),
    );
    match wait_event(Duration::from_secs(10), |e| {
        message(e).starts_with("tracepoints attached")
            || message(e).starts_with("some tracepoints attached")
    }) {
        None => r.check(false, "no 'tracepoints attached ...' line in the journal"),
        Some(e) => {
            let how = e["tracepoints"].as_str().unwrap_or_default().to_owned();
            r.check(
                !how.is_empty() && !how.contains("=tracepoint"),
                format!("not every tracepoint is BTF-typed: {how:?} ({})", message(&e)),
            );
            r.set("tracepoints", how);
        }
    }
    r.set("watchdog_usec", prop("guard", "WatchdogUSec"));

    match wait_event(Duration::from_secs(10), |e| message(e) == "guard ready") {
        None => r.check(
            false,
            "no 'guard ready' event with GUARD_* fields in the journal (the daemon logs to \
             journald under systemd)",
        ),
        Some(ready) => {
            // The daemon's own CLOCK_MONOTONIC stamp of that event is the
            // criterion: journald reads the event after the daemon sent it,
            // often after PID 1 has handled the READY=1 sent next (observed:
            // up to 10 ms), so the journal's stamp is reported, not judged.
            let journal_us = number(&ready["j_mono"]).unwrap_or(0);
            r.set(
                "journal_ready_to_active_us",
                active_us as i64 - journal_us as i64,
            );
            match number(&ready["monotonic_us"]) {
                None => r.check(false, "the 'guard ready' line has no timestamp"),
                Some(own) => {
                    r.set("ready_to_active_us", active_us as i64 - own as i64);
                    r.check(
                        own <= active_us,
                        format!(
                            "guard.service became active {} us before the daemon logged \
                             'guard ready'",
                            own - active_us
                        ),
                    );
                }
            }
        }
    }
    hook_and_memory_checks(r);
}

/// (a) The throttle hooks load under the unit; the unit's memory
/// protection; no warnings.
fn hook_and_memory_checks(r: &mut Report) {
    let events = guard_events();
    let last = |prefix: &str, field: &str| {
        events
            .iter()
            .filter(|e| message(e).starts_with(prefix))
            .map(|e| text(&e[field]))
            .next_back()
    };
    match last("throttle hooks attached", "handler") {
        Some(hooks) => r.set("throttle_hooks", hooks),
        None => {
            let refused = last("fentry refused", "reason").unwrap_or_default();
            r.set("throttle_hooks", format!("refused: {refused}"));
            r.check(
                false,
                format!("fentry refused under the unit (it loads on this kernel as root): {refused}"),
            );
        }
    }
    let unit_cgroup = "/sys/fs/cgroup/system.slice/guard.service";
    put(r, "memory_min", read(&format!("{unit_cgroup}/memory.min")).trim());
    put(r, "memory_low", read(&format!("{unit_cgroup}/memory.low")).trim());
    put(
        r,
        "system_slice_memory_min",
        read("/sys/fs/cgroup/system.slice/memory.min").trim(),
    );
    let warnings: Vec<&str> = events
        .iter()
        .filter(|e| matches!(e["level"].as_str(), Some("WARN" | "ERROR")))
        .map(message)
        .collect();
    r.check(
        !warnings.iter().any(|w| w.contains("mlockall")),
        "mlockall failed under the unit",
    );
    r.set("guard_warnings", warnings);
}

/// The event socket: mode 0660, group guard; a member attaches, a stranger
/// is refused with the fix named.
fn socket_checks(r: &mut Report) {
    let sock = command_text(Command::new("stat").args(["-c", "%a %G", "/run/guard/events.sock"]));
    let sock = sock.trim();
    r.set("socket_mode", sock);
    r.check(
        sock == "660 guard",
        format!("/run/guard/events.sock is {sock:?}, not \"660 guard\""),
    );
    let trace_as = |user: &str| {
        command_text(Command::new("runuser").args([
            "-u", user, "--", GUARD_BIN, "trace", "--json", "--duration", "1",
        ]))
    };
    let member = trace_as("watcher");
    let first = member.lines().next().unwrap_or_default();
    let record = serde_json::from_str::<Value>(first)
        .map(|v| format!("{} {}", text(&v["type"]), text(&v["source"])))
        .unwrap_or_default();
    r.set("member_first_record", record.as_str());
    r.check(
        record == "hello daemon",
        format!("a member of group guard could not attach: {first}"),
    );
    let refusal = trace_as("stranger");
    r.check(
        refusal.contains("permission denied"),
        format!("a stranger was not refused by name: {refusal}"),
    );
}

/// (b) Still the same process after more than one watchdog period; the
/// main pid to follow from here (after a restart without the watchdog if
/// it was not fed, so that the kill check says something of its own).
fn watchdog_checks(r: &mut Report, pid: u32) -> Option<u32> {
    step(&format!(
        "waiting {} s with WatchdogSec={}",
        WATCHDOG_WAIT.as_secs(),
        prop("guard", "WatchdogUSec")
    ));
    sleep(WATCHDOG_WAIT);
    let state = prop("guard", "ActiveState");
    let restarts = prop("guard", "NRestarts");
    let now = prop("guard", "MainPID");
    let journal = journal("guard.service", "cat");
    let timeouts = journal.matches("Watchdog timeout").count();
    put(r, "watchdog_restarts", &restarts);
    r.set("watchdog_timeouts", timeouts);
    let fed = state == "active" && restarts == "0" && now == pid.to_string();
    r.set("watchdog_ok", fed);
    if fed {
        return Some(pid);
    }
    r.check(
        false,
        format!(
            "watchdog: after {} s guard.service is {state:?}, NRestarts={restarts}, {timeouts} \
             watchdog timeout(s), main pid {pid} -> {now}",
            WATCHDOG_WAIT.as_secs()
        ),
    );
    step("restarting guard.service with WatchdogSec=0 for the kill check");
    let restarted = write(
        &format!("{UNITS}/guard.service.d/zz-no-watchdog.conf"),
        "[Service]\nWatchdogSec=0\n",
    )
    .and_then(|()| systemctl(&["daemon-reload"]))
    .and_then(|()| systemctl(&["reset-failed", "guard.service"]))
    .and_then(|()| systemctl(&["restart", "guard.service"]));
    r.set("kill_check_without_watchdog", true);
    if restarted.is_err() || prop("guard", "ActiveState") != "active" {
        r.check(false, "guard.service did not come back");
        return None;
    }
    prop("guard", "MainPID").parse().ok()
}

/// The embedded default policy plus a post-kill hook that prints who it
/// was told of and who it runs as: its output goes to the unit's journal.
fn write_hook_policy() -> Result<(), String> {
    let default = sh(&[GUARD_BIN, "config", "default"])?;
    fs::create_dir_all("/etc/guard").map_err(|e| format!("creating /etc/guard: {e}"))?;
    write(
        POLICY,
        &format!(
            "{default}\n[hook]\ncommand = [\"/bin/sh\", \"-c\", \
             \"echo {HOOK_MARK} pid=$GUARD_PID uid=$(id -u) caps=$(grep CapEff /proc/self/status) \
             owner=$GUARD_UID/$GUARD_USER/$GUARD_UNIT\"]\n"
        ),
    )
}

/// Policy files the daemon would refuse fail `systemctl reload` (the unit's
/// ExecReload checks them first) with the reason in the unit's journal, and
/// the daemon keeps running with its policy: a syntax mistake, and a hook
/// user the unit's capabilities cannot switch to.
fn bad_reload(r: &mut Report, gpid: u32) {
    let good = read(POLICY);
    let cases = [
        ("broken", "# broken on purpose\nbudget_ms = \"soon\"\n".to_owned(), format!("{POLICY}:2:")),
        (
            "hook user",
            format!("{good}user = \"watcher\"\n"),
            format!("{POLICY}: [hook] user needs CAP_SETUID and CAP_SETGID"),
        ),
    ];
    let mut refused = true;
    for (what, text, reason) in cases {
        step(&format!("systemctl reload guard.service with a {what} policy file"));
        if let Err(e) = write(POLICY, &text) {
            r.check(false, e);
            return;
        }
        let reload = systemctl(&["reload", "guard.service"]);
        refused &= reload.is_err();
        r.check(
            reload.is_err(),
            format!("systemctl reload succeeded with a {what} policy file: ExecReload did not check it"),
        );
        let journal = journal("guard.service", "cat");
        r.check(
            journal.lines().any(|l| l.starts_with(&reason)),
            format!("the {what} file's reason ({reason:?}) is not in guard.service's journal"),
        );
    }
    if let Err(e) = write(POLICY, &good) {
        r.check(false, e);
    }
    r.set("bad_reload_refused", refused);
    r.check(
        still_up(gpid, None),
        "guard.service did not stay up through a refused reload",
    );
}

/// After the kill, the hook ran under the unit's sandbox, was told of the
/// hog, and held no capability.
fn hook_checks(r: &mut Report, hog: u32, hog_uid: &str) {
    let limit = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let found = journal("guard.service", "cat")
            .lines()
            .find(|l| l.starts_with(HOOK_MARK))
            .map(str::to_owned);
        if found.is_some() || Instant::now() >= limit {
            break found;
        }
        sleep(Duration::from_millis(200));
    };
    r.set("hook_line", line.as_deref().unwrap_or(""));
    // The shell splits grep's "CapEff:<tab>..." into words; echo joins them
    // with a space. The hog is user stranger's, in hog.service.
    let want = format!(
        "{HOOK_MARK} pid={hog} uid=0 caps=CapEff: 0000000000000000 \
         owner={hog_uid}/stranger/hog.service"
    );
    r.check(
        line.as_deref() == Some(want.as_str()),
        format!("the post-kill hook printed {line:?}, not {want:?}"),
    );
}

/// Where the owner's terminal stand-in writes what its terminal shows.
const PTY_OUT: &str = "/tmp/ptyhold.out";

/// The hog's owner was told on their terminal: one line naming the hog,
/// its unit and where to read more.
fn owner_notice_checks(r: &mut Report, hog: u32) {
    let limit = Instant::now() + Duration::from_secs(5);
    let want = format!("guard killed hog (pid {hog},");
    let text = loop {
        let text = fs::read_to_string(PTY_OUT).unwrap_or_default();
        if text.contains(&want) || Instant::now() >= limit {
            break text;
        }
        sleep(Duration::from_millis(200));
    };
    let line = text
        .lines()
        .find(|l| l.contains("guard killed"))
        .unwrap_or("")
        .trim()
        .to_owned();
    r.set("owner_notice", line.as_str());
    r.check(
        line.starts_with(&want) && line.contains(" of hog.service: ") && line.contains("guard report"),
        format!("the owner's terminal showed {text:?}, not a line starting {want:?}"),
    );
    let _ = systemctl(&["stop", "ptyhold.service"]);
}

/// (c) A hog and a bystander in seed.slice: the hog dies by the guard's
/// SIGKILL in time, logged in the journal and the event log; the bystander
/// and nothing else lives.
fn hog_and_bystander(r: &mut Report) {
    // The hog's owner is "logged in": a terminal of theirs, whose output
    // lands in PTY_OUT.
    r.check(
        Command::new("systemd-run")
            .args(["--unit=ptyhold", "--uid=stranger", "--property=Type=exec"])
            .args(["/usr/local/bin/guard-scenario", "ptyhold", "60000", PTY_OUT])
            .status()
            .is_ok_and(|s| s.success()),
        "systemd-run of the owner's terminal stand-in failed",
    );
    step("starting bystander.service, then hog.service, in seed.slice");
    r.check(
        systemctl(&["start", "bystander.service"]).is_ok(),
        "bystander.service did not start",
    );
    sleep(Duration::from_secs(1));
    r.check(
        systemctl(&["start", "hog.service"]).is_ok(),
        "hog.service did not start",
    );
    let hog: u32 = prop("hog", "MainPID").parse().unwrap_or(0);
    r.set("hog_pid", hog);
    let status = read(&format!("/proc/{hog}/status"));
    let uid = status_field(&status, "Uid").and_then(|u| u.split_whitespace().next());
    let hog_uid = uid.unwrap_or("-").to_owned();
    r.set("hog_uid", uid.unwrap_or("-"));
    r.check(
        uid.is_some_and(|u| u != "0"),
        format!("hog.service runs as uid {uid:?}, not as another user"),
    );
    if !wait_inactive("hog", Duration::from_secs(60)) {
        r.check(false, "hog.service still running 60 s after its start");
        let _ = systemctl(&["kill", "-s", "KILL", "hog.service"]);
        wait_inactive("hog", Duration::from_secs(10));
    }
    let num = |name: &str| prop("hog", name).parse::<u64>().unwrap_or(0);
    let (start_us, exit_us) = (
        num("ExecMainStartTimestampMonotonic"),
        num("ExecMainExitTimestampMonotonic"),
    );
    let result = prop("hog", "Result");
    let (code, status) = (num("ExecMainCode"), num("ExecMainStatus"));
    r.set("hog_result", result.as_str());
    r.set("hog_exec_main_code", code);
    r.set("hog_exec_main_status", status);
    let lifetime_ms = exit_us.saturating_sub(start_us) / 1000;
    r.set("hog_lifetime_ms", lifetime_ms);
    r.check(
        result == "signal" && code == 2 && status == 9,
        format!(
            "hog.service ended with Result={result} ExecMainCode={code} \
             ExecMainStatus={status}, not killed by SIGKILL"
        ),
    );
    r.check(
        lifetime_ms <= HOG_DEADLINE_MS,
        format!("hog.service lived {lifetime_ms} ms, over {HOG_DEADLINE_MS} ms"),
    );
    kill_records(r, hog, start_us);
    hook_checks(r, hog, &hog_uid);
    owner_notice_checks(r, hog);
    bystander_checks(r);
}

/// The guard's journal and its event log name the hog's kill, and no other.
fn kill_records(r: &mut Report, hog: u32, hog_start_us: u64) {
    let is_kill = |e: &Value| message(e) == "killed";
    match wait_event(Duration::from_secs(10), |e| {
        is_kill(e) && number(&e["pid"]) == Some(u64::from(hog))
    }) {
        None => {
            let killed: Vec<Value> = guard_events()
                .into_iter()
                .filter(is_kill)
                .map(|e| e["pid"].clone())
                .collect();
            r.check(
                false,
                format!(
                    "no 'killed' line naming the hog's pid {hog} in the guard's journal \
                     (killed: {})",
                    Value::from(killed)
                ),
            );
        }
        Some(killed) => {
            r.set("kill_latency_us", killed["latency_us"].clone());
            r.set("kill_stall_ms", killed["stall_ms"].clone());
            r.set("killed_comm", text(&killed["comm"]));
            // From the hog's start to the journal's stamp of the kill event.
            if let Some(at) = number(&killed["j_mono"]) {
                r.set(
                    "hog_start_to_kill_log_ms",
                    at.saturating_sub(hog_start_us) / 1000,
                );
            }
        }
    }
    let others: Vec<Value> = guard_events()
        .into_iter()
        .filter(|e| is_kill(e) && number(&e["pid"]) != Some(u64::from(hog)))
        .map(|e| e["pid"].clone())
        .collect();
    // The daemon's own log kept the kill, with nobody listening.
    let logged = read("/var/lib/guard/events.jsonl").lines().any(|l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["type"] == "kill" && number(&v["pid"]) == Some(u64::from(hog)))
    });
    r.set("kill_in_event_log", logged);
    r.check(
        logged,
        format!("no kill record for {hog} in /var/lib/guard/events.jsonl"),
    );
    r.check(
        others.is_empty(),
        format!("the guard also killed pid(s) {}", Value::from(others)),
    );
}

/// The bystander ran to its end and exited 0; its worst lateness.
fn bystander_checks(r: &mut Report) {
    let limit = Instant::now() + Duration::from_millis(BYSTANDER_MS) + Duration::from_secs(60);
    while prop("bystander", "SubState") == "running" && Instant::now() < limit {
        sleep(Duration::from_millis(100));
    }
    r.check(
        prop("bystander", "SubState") != "running",
        "bystander.service still running long after its end",
    );
    let result = prop("bystander", "Result");
    let (code, status) = (
        prop("bystander", "ExecMainCode"),
        prop("bystander", "ExecMainStatus"),
    );
    r.set("bystander_result", result.as_str());
    r.check(
        result == "success" && code == "1" && status == "0",
        format!(
            "bystander.service ended with Result={result} ExecMainCode={code} \
             ExecMainStatus={status}, not successfully"
        ),
    );
    let journal = journal("bystander.service", "cat");
    if let Some(line) = journal
        .lines()
        .rfind(|l| l.starts_with("bystander ticks="))
    {
        for key in ["ticks", "worst_us"] {
            if let Some(v) = kv(line, key).and_then(|v| v.parse::<u64>().ok()) {
                r.set(&format!("bystander_{key}"), v);
            }
        }
    }
    let events = read("/sys/fs/cgroup/seed.slice/memory.events");
    r.set("seed_high_events", keyed(&events, "high"));
    r.set("seed_oom_kills", keyed(&events, "oom_kill"));
}

/// Whether guard.service is active with the same main pid (and, when
/// given, the same restart count).
fn still_up(pid: u32, restarts: Option<&str>) -> bool {
    prop("guard", "ActiveState") == "active"
        && prop("guard", "MainPID") == pid.to_string()
        && restarts.is_none_or(|n| prop("guard", "NRestarts") == n)
}

/// A step on the console: the last one is named when no result comes.
pub(super) fn step(what: &str) {
    println!("GUARD-STEP {what}");
}

/// `key` as a JSON value when `value` reads as one, else as a string.
fn put(r: &mut Report, key: &str, value: &str) {
    match serde_json::from_str::<Value>(value) {
        Ok(v) => r.set(key, v),
        Err(_) => r.set(key, value),
    }
}

/// The capability bits of a space-separated list of names; a name this
/// test does not know sets bit 63, so that the comparison fails.
fn capability_mask(names: &str) -> u64 {
    const BITS: &[(&str, u32)] = &[
        ("CAP_CHOWN", 0),
        ("CAP_DAC_OVERRIDE", 1),
        ("CAP_DAC_READ_SEARCH", 2),
        ("CAP_KILL", 5),
        ("CAP_SETGID", 6),
        ("CAP_SETUID", 7),
        ("CAP_IPC_LOCK", 14),
        ("CAP_SYS_PTRACE", 19),
        ("CAP_SYS_ADMIN", 21),
        ("CAP_SYS_NICE", 23),
        ("CAP_SYS_RESOURCE", 24),
        ("CAP_PERFMON", 38),
        ("CAP_BPF", 39),
    ];
    names
        .split_whitespace()
        .map(|n| BITS.iter().find(|(name, _)| *name == n).map_or(63, |(_, bit)| *bit))
        .fold(0, |mask, bit| mask | 1 << bit)
}

/// A field of /proc/PID/status ("CapEff:\t000001c0" -> "000001c0").
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// A command's standard output then its standard error, as text (empty
/// when it cannot run). systemd's tools are told not to page or colour.
pub(super) fn command_text(cmd: &mut Command) -> String {
    match cmd
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            text
        }
        Err(e) => format!("running {cmd:?}: {e}"),
    }
}

/// A unit's journal in `format` (journalctl -o).
pub(super) fn journal(unit: &str, format: &str) -> String {
    command_text(Command::new("journalctl").args(["-q", "-u", unit, "-o", format]))
}

/// `systemctl ARGS`; its error output when it fails.
pub(super) fn systemctl(args: &[&str]) -> Result<(), String> {
    let mut all = vec!["systemctl"];
    all.extend_from_slice(args);
    sh(&all).map(drop)
}

/// The last of the guard's events matching `want`, polled for up to
/// `limit`.
pub(super) fn wait_event(limit: Duration, want: impl Fn(&Value) -> bool) -> Option<Value> {
    let started = Instant::now();
    loop {
        let found = guard_events().into_iter().rfind(|e| want(e));
        if found.is_some() || started.elapsed() >= limit {
            return found;
        }
        sleep(Duration::from_millis(200));
    }
}

/// The guard's log events: under systemd it logs to the journal, with its
/// fields as GUARD_* journal fields.
pub(super) fn guard_events() -> Vec<Value> {
    let json = journal("guard.service", "json");
    json.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|entry| journal_event(&entry))
        .collect()
}

/// A journal entry turned back into the event the guard logged: its
/// GUARD_* fields (lower case, numbers as numbers), `message`, `level`, and
/// the journal's own monotonic stamp as `j_mono` (µs). None for entries
/// without GUARD_* fields (systemd's own lines about the unit).
fn journal_event(entry: &Value) -> Option<Value> {
    let entry = entry.as_object()?;
    let mut event = serde_json::Map::new();
    for (key, value) in entry {
        let (Some(name), Some(text)) = (key.strip_prefix("GUARD_"), value.as_str()) else {
            continue;
        };
        let value = serde_json::from_str::<Value>(text)
            .ok()
            .filter(Value::is_number)
            .unwrap_or_else(|| text.into());
        event.insert(name.to_ascii_lowercase(), value);
    }
    if event.is_empty() {
        return None;
    }
    let level = match entry.get("PRIORITY").and_then(Value::as_str) {
        Some("2" | "3") => "ERROR",
        Some("4") => "WARN",
        Some("5" | "6") => "INFO",
        Some("7") => "DEBUG",
        _ => "",
    };
    event.insert("message".into(), entry.get("MESSAGE").cloned().unwrap_or_default());
    event.insert("level".into(), level.into());
    let mono = entry.get("__MONOTONIC_TIMESTAMP").and_then(Value::as_str);
    event.insert(
        "j_mono".into(),
        mono.and_then(|m| m.parse::<u64>().ok()).into(),
    );
    Some(Value::Object(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_entry_becomes_the_guards_event() {
        let entry = json!({
            "MESSAGE": "killed", "PRIORITY": "4", "__MONOTONIC_TIMESTAMP": "123456",
            "GUARD_PID": "4242", "GUARD_COMM": "hog", "GUARD_LATENCY_US": "450.5",
            "_PID": "17",
        });
        assert_eq!(
            journal_event(&entry),
            Some(json!({
                "pid": 4242, "comm": "hog", "latency_us": 450.5,
                "message": "killed", "level": "WARN", "j_mono": 123456,
            }))
        );
        let systemd_own = json!({"MESSAGE": "Started guard.service", "PRIORITY": "6"});
        assert_eq!(journal_event(&systemd_own), None);
    }

    #[test]
    fn the_line_reads_the_measured_values() {
        let r = json!({
            "pass": true, "guard_start_ms": 2100, "ready_to_active_us": 1500,
            "watchdog_ok": false, "watchdog_timeouts": 2, "watchdog_restarts": 1,
            "hog_lifetime_ms": 1800, "kill_latency_us": 450,
            "bystander_result": "success", "bystander_worst_us": 250000,
            "socket_mode": "660 guard", "kill_in_event_log": true, "bad_reload_refused": true,
            "exposure": 4.2, "perf_event_paranoid": "3", "cap_eff": "000000c000084025",
            "bpf_links": 12, "perf_events": 0,
        });
        assert_eq!(
            summary(&r),
            "start 2100 ms, ready->active 1.5 ms; watchdog NOT fed (2 timeouts, 1 restarts); \
             hog SIGKILLed 1800 ms after start (verdict->kill 450 us); bystander success worst \
             250 ms; socket 660 guard, member attached, stranger refused; kill in \
             /var/lib/guard log true; broken policy reload refused true; systemd-analyze \
             security exposure 4.2; perf_event_paranoid 3, CapEff 000000c000084025 (no \
             CAP_SYS_ADMIN), 12 bpf links, 0 perf events"
        );
        assert!(summary(&json!({})).contains("watchdog -"));
    }

    #[test]
    fn the_exposure_level_is_read_from_the_last_line() {
        let text = "  NAME  DESCRIPTION  EXPOSURE\n\
                    ✗ PrivateNetwork=  Service has access to the host's network  0.5\n\
                    \n→ Overall exposure level for guard.service: 4.2 MEDIUM 😐\n";
        assert_eq!(overall_exposure(text), Some(4.2));
        assert_eq!(overall_exposure("Unit guard.service not found.\n"), None);
    }

    #[test]
    fn capability_names_become_their_bits() {
        assert_eq!(capability_mask("CAP_CHOWN CAP_KILL"), 0b10_0001);
        assert_eq!(capability_mask("CAP_BPF CAP_PERFMON"), 0xc0_0000_0000);
        assert_eq!(capability_mask("CAP_NO_SUCH"), 1 << 63);
    }

    #[test]
    fn status_fields_are_read_by_name() {
        let status = "Name:\tguard\nCapEff:\t000001c0\nNoNewPrivs:\t1\n";
        assert_eq!(status_field(status, "CapEff"), Some("000001c0"));
        assert_eq!(status_field(status, "NoNewPrivs"), Some("1"));
        assert_eq!(status_field(status, "CapBnd"), None);
    }
}
