//! The "systemd" VM scenario: the guard as a real systemd service.
//!
//! The initramfs scenarios (scenarios.rs) check what the guard does; this
//! one checks how it lives under systemd, with exactly the unit file in
//! `deploy/guard.service`: that the unit's sandboxing lets the programs load
//! and attach, that `READY=1` comes only after they are attached, that the
//! watchdog is fed, and that a hog in a `MemoryHigh=` slice is killed while
//! a bystander in the same slice finishes.
//!
//! The guest is a Debian bookworm system built once with `debootstrap`
//! (from the mirror this machine's apt already uses) and kept, as an ext4
//! image, in `$XDG_CACHE_HOME/guard/systemd-rootfs` (or
//! `~/.cache/guard/systemd-rootfs`). Each call copies that image once
//! (sparsely), writes the payload into the copy with `debugfs` (no mount,
//! no root needed), and boots every kernel from the copy with
//! `snapshot=on`, so the guest's writes never reach it. The root disk is the
//! only disk: a second one would race the first for the name `nvme0n1`.
//!
//! Inside, `guard-test.service` runs a shell script (below) that checks
//! everything with `systemctl show` and the journal, prints one
//! `GUARD-RESULT {json}` line on the console and powers off.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::vm::{self, Kernel};

/// The scenario's name in result rows.
pub const SCENARIO: &str = "systemd";

/// The guest's Debian release: systemd 252.
const SUITE: &str = "bookworm";
/// Packages on top of `minbase`: systemd as PID 1, D-Bus (systemd expects
/// it), jq for the test script to read the journal's JSON, and the peers
/// `cargo xtask bench` measures the guard against (masked in the systemd
/// scenario, started one at a time by the bench).
const INCLUDE: [&str; 7] = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "jq",
    "systemd-oomd",
    "earlyoom",
    "oomd",
];
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEBOOTSTRAP: &str = "debootstrap";
/// Size of the sparse ext4 image; the system takes under a fifth of it.
const IMAGE_BYTES: u64 = 1 << 30;
const MEM_MIB: u32 = 1024;
/// A run takes about 60 s under TCG, twice that on a busy machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
/// Boots after a guest kernel fault (an emulator fault) before giving up.
pub(crate) const MAX_RETRIES: usize = 2;
const RESULT: &str = "GUARD-RESULT ";
const STEP: &str = "GUARD-STEP ";

/// The test's override of the unit's `WatchdogSec=`, and how long it waits
/// after start before checking that no watchdog timeout restarted the guard.
const TEST_WATCHDOG_SEC: u32 = 4;
const WATCHDOG_WAIT_SEC: u32 = 10;
/// How long the bystander runs; the hog starts a second after it.
const BYSTANDER_MS: u32 = 8_000;
/// The hog must be dead this long after its start.
const HOG_DEADLINE_MS: u32 = 10_000;

/// Units the test does not want: timers that would start apt in the middle
/// of a measurement, gettys waiting for devices that no udev announces, and
/// the other OOM daemons in the image (they are the bench's peers).
pub(crate) const MASKED: [&str; 9] = [
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "getty.target",
    "serial-getty@ttyS0.service",
    "systemd-timesyncd.service",
    "earlyoom.service",
    "oomd.service",
    "systemd-oomd.service",
    "systemd-oomd.socket",
];

const SEED_SLICE: &str = "\
[Unit]
Description=guard test: the seed incident's limits

[Slice]
MemoryAccounting=yes
MemoryHigh=64M
MemoryMax=128M
MemorySwapMax=0
";

const HOG_SERVICE: &str = "\
[Unit]
Description=guard test: takes 100 MiB in seed.slice and keeps touching it

[Service]
Type=exec
Slice=seed.slice
ExecStart=/usr/local/bin/guard-scenario hog 100
";

const BYSTANDER_SERVICE: &str = "\
[Unit]
Description=guard test: a 10 ms alloc/free loop in seed.slice

[Service]
Type=exec
Slice=seed.slice
ExecStart=/usr/local/bin/guard-scenario bystander @BYSTANDER_MS@
# Keeps the unit loaded after a clean exit, with its exit status to read.
RemainAfterExit=yes
";

const TEST_SERVICE: &str = "\
[Unit]
Description=guard test: the systemd scenario; powers off when done

[Service]
Type=oneshot
ExecStart=/usr/local/lib/guard-test/run.sh
ExecStopPost=-/usr/bin/systemctl poweroff -f
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

/// The scenario, run by guard-test.service. Every check appends to
/// $R/failures; measured values go to $R/values; `finish` joins them into
/// the result line. `@NAME@` are filled in from the constants above.
const TEST_SCRIPT: &str = r##"#!/bin/sh
# The systemd scenario; see xtask/src/systemd_vm.rs.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export SYSTEMD_PAGER= SYSTEMD_COLORS=0
R=/run/guard-test
mkdir -p $R
: > $R/values
: > $R/failures
WATCHDOG_WAIT=@WATCHDOG_WAIT_SEC@
BYSTANDER_MS=@BYSTANDER_MS@
HOG_DEADLINE_MS=@HOG_DEADLINE_MS@

con() { echo "$*" > /dev/console; }
step() { con "GUARD-STEP $*"; }
# put KEY VALUE: a JSON value if VALUE is one, else a string.
put() {
    jq -cn --arg k "$1" --argjson v "$2" '{($k): $v}' >> $R/values 2>/dev/null ||
        jq -cn --arg k "$1" --arg v "$2" '{($k): $v}' >> $R/values
}
putstr() { jq -cn --arg k "$1" --arg v "$2" '{($k): $v}' >> $R/values; }
fail() { step "FAIL $*"; jq -cn --arg m "$*" '$m' >> $R/failures; }
prop() { systemctl show -p "$2" --value "$1"; }
# The guard's log events: under systemd it logs to the journal with its
# fields as GUARD_* journal fields; turned back into objects here, with the
# journal's own fields next to them.
guard_events() {
    journalctl -q -u guard.service -o json | jq -c '
        select(.GUARD_TARGET != null or (.MESSAGE | type == "string"))
        | (reduce (to_entries[] | select(.key | startswith("GUARD_"))) as $e ({};
            . + {($e.key | ltrimstr("GUARD_") | ascii_downcase): ($e.value | (tonumber? // .))})) as $f
        | select($f | length > 0)
        | $f + {
            message: .MESSAGE,
            level: ({"2":"ERROR","3":"ERROR","4":"WARN","5":"INFO","6":"INFO","7":"DEBUG"}[.PRIORITY] // .PRIORITY),
            j_mono: (.__MONOTONIC_TIMESTAMP | tonumber),
            j_rt: (.__REALTIME_TIMESTAMP | tonumber),
            j_pid: (._PID | tonumber? // null)
          }'
}
# wait_event JQ-FILTER SECONDS: the last matching guard event, polled for.
wait_event() {
    i=0
    while :; do
        e=$(guard_events | jq -c "select($1)" | tail -n 1)
        if [ -n "$e" ] || [ $i -ge $(($2 * 5)) ]; then
            echo "$e"
            return
        fi
        sleep 0.2
        i=$((i + 1))
    done
}
# wait_inactive UNIT SECONDS
wait_inactive() {
    i=0
    while [ $i -lt $(($2 * 10)) ]; do
        case "$(prop "$1" ActiveState)" in
            active|activating|deactivating|reloading) ;;
            *) return 0 ;;
        esac
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}
finish() {
    journalctl -q -u guard.service -o cat | sed 's/^/GUARD-JOURNAL /' > /dev/console
    result=$(jq -cs --slurpfile f $R/failures \
        '(add // {}) + {pass: ($f | length == 0), failures: $f}' $R/values)
    con "GUARD-RESULT $result"
    systemctl poweroff -f
    exit 0
}

step "kernel $(uname -r), $(systemctl --version | head -n 1)"
putstr kernel "$(uname -r)"
putstr systemd "$(systemctl --version | head -n 1)"
if grep -q '^tracefs /sys/kernel/tracing ' /proc/mounts; then
    put tracefs_mounted_by_systemd true
else
    put tracefs_mounted_by_systemd false
fi

# The slice first, so that its memory.high is set when the guard starts.
systemctl start seed.slice || fail "seed.slice did not start"
high=$(cat /sys/fs/cgroup/seed.slice/memory.high 2>/dev/null)
[ "$high" = 67108864 ] || fail "seed.slice memory.high is '$high', not 64M"

# Members of group guard may read the event stream; others may not.
groupadd --system guard || fail "groupadd guard failed"
useradd --system --no-create-home -G guard watcher || fail "useradd watcher failed"
useradd --system --no-create-home stranger || fail "useradd stranger failed"

# (a) active, and only once the programs are attached.
step "starting guard.service"
t0=$(date +%s%N)
systemctl start guard.service || fail "systemctl start guard.service failed"
t1=$(date +%s%N)
put guard_start_ms $(((t1 - t0) / 1000000))
state=$(prop guard ActiveState)
if [ "$state" != active ]; then
    fail "guard.service is '$state' after start, not active"
    finish
fi
pid=$(prop guard MainPID)
active_mono=$(prop guard ActiveEnterTimestampMonotonic)
# What the running daemon holds and is allowed, read before anything slow.
fds=$(ls -l /proc/$pid/fd 2>/dev/null)
putstr cap_eff "$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/$pid/status)"
put no_new_privs "$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' /proc/$pid/status)"
put oom_score_adj "$(cat /proc/$pid/oom_score_adj)"
links=$(echo "$fds" | grep -c 'anon_inode:bpf_link')
perf=$(echo "$fds" | grep -c 'anon_inode:\[perf_event\]')
put bpf_links $links
put perf_events $perf
put bpf_progs "$(echo "$fds" | grep -c 'anon_inode:bpf-prog')"
[ $((links + perf)) -gt 0 ] || fail "the guard (pid $pid) holds no bpf-link or perf_event fd: nothing is attached"
putstr watchdog_usec "$(prop guard WatchdogUSec)"
ready=$(wait_event '.message == "guard ready"' 10)
if [ -z "$ready" ]; then
    fail "no 'guard ready' event with GUARD_* fields in the journal (the daemon logs to journald under systemd)"
else
    j_mono=$(echo "$ready" | jq '.j_mono')
    # The daemon's own CLOCK_MONOTONIC stamp of that event is the criterion:
    # journald reads the event after the daemon sent it, often after PID 1
    # has handled the READY=1 sent next (observed: up to 10 ms), so the
    # journal's stamp is reported but not judged.
    own_mono=$(echo "$ready" | jq '.monotonic_us // null')
    put journal_ready_to_active_us $((active_mono - j_mono))
    if [ "$own_mono" = null ]; then
        fail "the 'guard ready' line has no timestamp"
    else
        put ready_to_active_us $((active_mono - own_mono))
        [ "$own_mono" -le "$active_mono" ] ||
            fail "guard.service became active $((own_mono - active_mono)) us before the daemon logged 'guard ready'"
    fi
fi
hooks=$(guard_events | jq -r 'select(.message | startswith("throttle hooks attached")) | .handler' | tail -n 1)
if [ -n "$hooks" ]; then
    putstr throttle_hooks "$hooks"
else
    refused=$(guard_events | jq -r 'select(.message | startswith("fentry refused")) | .reason' | tail -n 1)
    putstr throttle_hooks "refused: $refused"
    fail "fentry refused under the unit (it loads on this kernel as root): $refused"
fi
put memory_min "$(cat /sys/fs/cgroup/system.slice/guard.service/memory.min)"
put memory_low "$(cat /sys/fs/cgroup/system.slice/guard.service/memory.low)"
put system_slice_memory_min "$(cat /sys/fs/cgroup/system.slice/memory.min)"
warnings=$(guard_events | jq -c 'select(.level == "WARN" or .level == "ERROR") | .message' | jq -cs '.')
put guard_warnings "$warnings"
echo "$warnings" | grep -q mlockall && fail "mlockall failed under the unit"

# The event socket: mode 0660, group guard; a member attaches, a stranger is
# refused with the fix named.
sock=$(stat -c '%a %G' /run/guard/events.sock 2>&1)
putstr socket_mode "$sock"
[ "$sock" = "660 guard" ] || fail "/run/guard/events.sock is '$sock', not '660 guard'"
first=$(runuser -u watcher -- /usr/local/sbin/guard trace --json --duration 1 2>&1 | head -n 1)
putstr member_first_record "$(echo "$first" | jq -r '.type + " " + .source' 2>/dev/null)"
[ "$(echo "$first" | jq -r '.type + " " + .source' 2>/dev/null)" = "hello daemon" ] ||
    fail "a member of group guard could not attach: $first"
refusal=$(runuser -u stranger -- /usr/local/sbin/guard trace --json --duration 1 2>&1)
echo "$refusal" | grep -q 'permission denied' ||
    fail "a stranger was not refused by name: $refusal"

# (b) still the same process after more than one watchdog period.
step "waiting ${WATCHDOG_WAIT} s with WatchdogSec=$(prop guard WatchdogUSec)"
sleep "$WATCHDOG_WAIT"
state=$(prop guard ActiveState)
restarts=$(prop guard NRestarts)
pid2=$(prop guard MainPID)
timeouts=$(journalctl -q -u guard.service -o cat | grep -c 'Watchdog timeout')
put watchdog_restarts "$restarts"
put watchdog_timeouts "$timeouts"
if [ "$state" = active ] && [ "$restarts" = 0 ] && [ "$pid2" = "$pid" ]; then
    put watchdog_ok true
else
    put watchdog_ok false
    fail "watchdog: after ${WATCHDOG_WAIT} s guard.service is '$state', NRestarts=$restarts, $timeouts watchdog timeout(s), main pid $pid -> $pid2"
    # Go on without the watchdog, so that (c) says something of its own.
    step "restarting guard.service with WatchdogSec=0 for the kill check"
    printf '[Service]\nWatchdogSec=0\n' > /etc/systemd/system/guard.service.d/zz-no-watchdog.conf
    systemctl daemon-reload
    systemctl reset-failed guard.service
    systemctl restart guard.service
    put kill_check_without_watchdog true
    [ "$(prop guard ActiveState)" = active ] || { fail "guard.service did not come back"; finish; }
fi
gpid=$(prop guard MainPID)
grestarts=$(prop guard NRestarts)

# ExecReload: SIGHUP re-reads the policy; the daemon stays.
step "systemctl reload guard.service"
systemctl reload guard.service || fail "systemctl reload guard.service failed"
reload=$(wait_event '.message | startswith("policy reload")' 10)
putstr reload_message "$(echo "$reload" | jq -r '.message')"
[ -n "$reload" ] || fail "no 'policy reload...' line after systemctl reload"
[ "$(prop guard ActiveState)" = active ] && [ "$(prop guard MainPID)" = "$gpid" ] ||
    fail "guard.service did not stay up through a reload"

# (c) a hog and a bystander in seed.slice.
step "starting bystander.service, then hog.service, in seed.slice"
systemctl start bystander.service || fail "bystander.service did not start"
sleep 1
systemctl start hog.service || fail "hog.service did not start"
hogpid=$(prop hog MainPID)
put hog_pid "$hogpid"
if ! wait_inactive hog 60; then
    fail "hog.service still running 60 s after its start"
    systemctl kill -s KILL hog.service
    wait_inactive hog 10
fi
hog_start=$(prop hog ExecMainStartTimestampMonotonic)
hog_exit=$(prop hog ExecMainExitTimestampMonotonic)
hog_result=$(prop hog Result)
hog_code=$(prop hog ExecMainCode)
hog_status=$(prop hog ExecMainStatus)
putstr hog_result "$hog_result"
put hog_exec_main_code "$hog_code"
put hog_exec_main_status "$hog_status"
hog_ms=$(((hog_exit - hog_start) / 1000))
put hog_lifetime_ms "$hog_ms"
[ "$hog_result" = signal ] && [ "$hog_code" = 2 ] && [ "$hog_status" = 9 ] ||
    fail "hog.service ended with Result=$hog_result ExecMainCode=$hog_code ExecMainStatus=$hog_status, not killed by SIGKILL"
[ "$hog_ms" -le "$HOG_DEADLINE_MS" ] || fail "hog.service lived $hog_ms ms, over $HOG_DEADLINE_MS ms"
killed=$(wait_event ".message == \"killed\" and .pid == $hogpid" 10)
if [ -z "$killed" ]; then
    fail "no 'killed' line naming the hog's pid $hogpid in the guard's journal (killed: $(guard_events | jq -c 'select(.message == "killed") | .pid' | jq -cs '.'))"
else
    put kill_latency_us "$(echo "$killed" | jq '.latency_us')"
    put kill_stall_ms "$(echo "$killed" | jq '.stall_ms')"
    putstr killed_comm "$(echo "$killed" | jq -r '.comm')"
    # From the hog's start to the journal's stamp of the kill event.
    kill_mono=$(echo "$killed" | jq '.j_mono')
    [ "$kill_mono" = null ] || put hog_start_to_kill_log_ms $(((kill_mono - hog_start) / 1000))
fi
others=$(guard_events | jq -c "select(.message == \"killed\" and .pid != $hogpid) | .pid" | jq -cs '.')
# The daemon's own log kept the kill, with nobody listening.
logged=$(jq -c "select(.type == \"kill\" and .pid == $hogpid)" /var/lib/guard/events.jsonl 2>/dev/null | tail -n 1)
if [ -n "$logged" ]; then put kill_in_event_log true; else
    put kill_in_event_log false
    fail "no kill record for $hogpid in /var/lib/guard/events.jsonl"
fi
[ "$others" = "[]" ] || fail "the guard also killed pid(s) $others"

i=0
while [ "$(prop bystander SubState)" = running ] && [ $i -lt $((BYSTANDER_MS / 100 + 600)) ]; do
    sleep 0.1
    i=$((i + 1))
done
[ "$(prop bystander SubState)" != running ] || fail "bystander.service still running long after its end"
by_result=$(prop bystander Result)
by_code=$(prop bystander ExecMainCode)
by_status=$(prop bystander ExecMainStatus)
putstr bystander_result "$by_result"
[ "$by_result" = success ] && [ "$by_code" = 1 ] && [ "$by_status" = 0 ] ||
    fail "bystander.service ended with Result=$by_result ExecMainCode=$by_code ExecMainStatus=$by_status, not successfully"
line=$(journalctl -q -u bystander.service -o cat | grep '^bystander ticks=' | tail -n 1)
put bystander_ticks "$(echo "$line" | sed -n 's/.*ticks=\([0-9]*\).*/\1/p')"
put bystander_worst_us "$(echo "$line" | sed -n 's/.*worst_us=\([0-9]*\).*/\1/p')"
ev=/sys/fs/cgroup/seed.slice/memory.events
put seed_high_events "$(sed -n 's/^high //p' $ev)"
put seed_oom_kills "$(sed -n 's/^oom_kill //p' $ev)"
[ "$(prop guard ActiveState)" = active ] && [ "$(prop guard MainPID)" = "$gpid" ] &&
    [ "$(prop guard NRestarts)" = "$grestarts" ] ||
    fail "guard.service did not stay up through the kill"
finish
"##;

/// Runs the systemd scenario on each of `kernels`, one boot each, and
/// returns `(kernel label, "systemd", result)` rows; `result` is the
/// guest's JSON (`pass`, `failures` and the measured values) plus
/// `kernel_release`, `vm_seconds` and, after emulator faults,
/// `retried_after`. Consoles go to `target/vm/systemd-<label>.log`.
///
/// `guard_bin` is the static `guard`; the static `guard-scenario` must be
/// next to it. The first call builds the cached Debian image (minutes, as
/// root); later ones copy it in about a second.
pub fn run_systemd_scenarios(
    guard_bin: &Path,
    kernels: &[Kernel],
) -> Result<Vec<(String, String, Value)>> {
    let scenario_bin = guard_bin.with_file_name("guard-scenario");
    for bin in [guard_bin, scenario_bin.as_path()] {
        if !bin.is_file() {
            bail!("{} does not exist: build it first", bin.display());
        }
    }
    let root = crate::workspace_root();
    let unit_path = root.join("deploy").join("guard.service");
    let unit = fs::read_to_string(&unit_path)
        .with_context(|| format!("reading {}", unit_path.display()))?;
    let logs = root.join("target").join("vm");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let cache = cache_dir()?;
    let base = ensure_base_image(&cache)?;
    let started = Instant::now();
    remove_stale_runs(&cache);
    let run = RunDir::create(cache.join(format!("run-{}", std::process::id())))?;
    let image = run.0.join("root.img");
    let stage = run.0.join("stage");
    let payload = stage_payload(&stage, guard_bin, &scenario_bin, &unit)?;
    make_run_image(&base, &image, &payload)?;
    eprintln!(
        "xtask: systemd VM image with this build ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut rows = Vec::with_capacity(kernels.len());
    for k in kernels {
        eprintln!("xtask: [{} {SCENARIO}] booting {} ...", k.label, k.release);
        let log = logs.join(format!("systemd-{}.log", k.label));
        let started = Instant::now();
        let mut retried: Vec<String> = Vec::new();
        let mut result = loop {
            match boot(k, &image, "", &log, BOOT_TIMEOUT) {
                Ok(console) => break parse_result(&console, &log),
                Err(e) => {
                    let text = format!("{e:#}");
                    if text.contains(vm::GUEST_FAULT) && retried.len() < MAX_RETRIES {
                        let kept = log.with_extension(format!("fault{}.log", retried.len() + 1));
                        let _ = fs::copy(&log, &kept);
                        let first = text.lines().next().unwrap_or_default().to_owned();
                        eprintln!(
                            "xtask: [{} {SCENARIO}] {first}; booting again (log kept in {})",
                            k.label,
                            kept.display()
                        );
                        retried.push(first);
                        continue;
                    }
                    break json!({"pass": false, "failures": [text]});
                }
            }
        };
        let secs = started.elapsed().as_secs_f64();
        result["kernel_release"] = json!(k.release);
        result["vm_seconds"] = json!((secs * 10.0).round() / 10.0);
        if !retried.is_empty() {
            result["retried_after"] = json!(retried);
        }
        let pass = result["pass"].as_bool().unwrap_or(false);
        eprintln!(
            "xtask: [{} {SCENARIO}] {} in {secs:.0} s: {}",
            k.label,
            if pass { "pass" } else { "FAIL" },
            summary(&result)
        );
        if !pass {
            let kept = log.with_extension("failed.log");
            let _ = fs::copy(&log, &kept);
            eprintln!("xtask:   failures: {}", result["failures"]);
            eprintln!("xtask:   console log: {}", kept.display());
        }
        rows.push((k.label.clone(), SCENARIO.to_owned(), result));
    }
    Ok(rows)
}

/// One line for the results table (without the reboots after guest faults,
/// which scenarios.rs adds to every scenario's line).
pub fn summary(r: &Value) -> String {
    let num = |key: &str, div: f64, digits: usize| {
        r[key]
            .as_f64()
            .map(|x| format!("{:.digits$}", x / div))
            .unwrap_or_else(|| "-".to_owned())
    };
    let watchdog = match r["watchdog_ok"].as_bool() {
        Some(true) => "fed".to_owned(),
        Some(false) => format!(
            "NOT fed ({} timeouts, {} restarts)",
            r["watchdog_timeouts"], r["watchdog_restarts"]
        ),
        None => "-".to_owned(),
    };
    format!(
        "start {} ms, ready->active {} ms; watchdog {watchdog}; hog SIGKILLed {} ms after start \
         (verdict->kill {} us); bystander {} worst {} ms; socket {}, member attached, stranger \
         refused; kill in /var/lib/guard log {}",
        num("guard_start_ms", 1.0, 0),
        num("ready_to_active_us", 1000.0, 1),
        num("hog_lifetime_ms", 1.0, 0),
        num("kill_latency_us", 1.0, 0),
        r["bystander_result"].as_str().unwrap_or("-"),
        num("bystander_worst_us", 1000.0, 0),
        r["socket_mode"].as_str().unwrap_or("-"),
        r["kill_in_event_log"],
    )
}

/// The guest's result line, or a failure naming the console log and the
/// last step the guest reported.
fn parse_result(console: &str, log: &Path) -> Value {
    let line = |tag: &str| {
        console
            .lines()
            .filter_map(|l| l.find(tag).map(|i| l[i + tag.len()..].trim()))
            .next_back()
            .map(str::to_owned)
    };
    match line(RESULT) {
        Some(text) => serde_json::from_str::<Value>(&text)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| {
                json!({"pass": false, "failures": [format!(
                    "unreadable result line {text:?}; console in {}", log.display()
                )]})
            }),
        None => json!({"pass": false, "failures": [format!(
            "no result line (last step: {}); console in {}",
            line(STEP).as_deref().unwrap_or("none"),
            log.display()
        )]}),
    }
}

// ---------------------------------------------------------------------------
// The cached base image
// ---------------------------------------------------------------------------

pub(crate) fn cache_dir() -> Result<PathBuf> {
    vm::cache_dir("systemd-rootfs")
}

/// What the cached rootfs was built from; a change rebuilds it.
fn recipe() -> String {
    format!(
        "debootstrap --variant=minbase --include={} {SUITE}\n",
        INCLUDE.join(",")
    )
}

/// Returns the cached `base.img`, building what is missing: the rootfs
/// directory with debootstrap (minutes, root only), then the image from it
/// (a second). `rootfs.recipe` says what both were built from.
pub(crate) fn ensure_base_image(cache: &Path) -> Result<PathBuf> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = lock(&cache.join("lock"))?;
    let rootfs = cache.join("rootfs");
    let stamp = cache.join("rootfs.recipe");
    let image = cache.join("base.img");
    let recipe = recipe();
    let current = fs::read_to_string(&stamp).is_ok_and(|s| s == recipe);
    if current && image.is_file() {
        eprintln!(
            "xtask: using the cached Debian {SUITE} systemd image {}",
            image.display()
        );
        return Ok(image);
    }
    if !current || !rootfs.join("usr/lib/systemd/systemd").is_file() {
        let started = Instant::now();
        let _ = fs::remove_file(&stamp);
        let _ = fs::remove_file(&image);
        build_rootfs(cache, &rootfs)?;
        fs::write(&stamp, &recipe).with_context(|| format!("writing {}", stamp.display()))?;
        eprintln!(
            "xtask: Debian {SUITE} rootfs built in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    eprintln!("xtask: making the ext4 image {} ...", image.display());
    let tmp = cache.join("base.img.tmp");
    let _ = fs::remove_file(&tmp);
    fs::File::create(&tmp)
        .and_then(|f| f.set_len(IMAGE_BYTES))
        .with_context(|| format!("creating {}", tmp.display()))?;
    run_quiet(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "guard-root", "-d"])
            .arg(&rootfs)
            .arg(&tmp),
        "mkfs.ext4 (install e2fsprogs)",
    )?;
    fs::rename(&tmp, &image).with_context(|| format!("renaming {}", tmp.display()))?;
    eprintln!(
        "xtask: image made in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(image)
}

fn build_rootfs(cache: &Path, rootfs: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        bail!(
            "the systemd VM test needs a Debian {SUITE} rootfs, built once with debootstrap, \
             which must run as root: run this once as root (the Debian package `{DEBOOTSTRAP}` \
             is installed then if missing)"
        );
    }
    ensure_debootstrap()?;
    if !Path::new(ARCHIVE_KEYRING).is_file() {
        bail!("{ARCHIVE_KEYRING} is missing (install debian-archive-keyring)");
    }
    let mirror = vm::find_mirror()?;
    let tmp = cache.join("rootfs.tmp");
    remove_tree(&tmp)?;
    remove_tree(rootfs)?;
    eprintln!(
        "xtask: building a Debian {SUITE} rootfs with systemd for the systemd VM test \
         (debootstrap, a few minutes, once; cached in {}) ...",
        rootfs.display()
    );
    let log_path = cache.join("debootstrap.log");
    let result = debootstrap(&tmp, &mirror, &log_path);
    if let Err(e) = result {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    // The downloaded packages and indexes are a third of the tree and
    // nothing in the test needs them.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let dir = tmp.join(dir);
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.is_file() {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    fs::rename(&tmp, rootfs).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

fn ensure_debootstrap() -> Result<()> {
    let present = Command::new(DEBOOTSTRAP)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "{DEBOOTSTRAP} is missing and this machine has no apt-get: install the \
             `{DEBOOTSTRAP}` package (it builds the Debian rootfs of the systemd VM test)"
        );
    }
    eprintln!("xtask: installing {DEBOOTSTRAP} (builds the Debian rootfs of the systemd VM test)");
    for args in [
        &["update", "-q"][..],
        &[
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            DEBOOTSTRAP,
        ][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::io::stderr())
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed ({status}): install the `{DEBOOTSTRAP}` package",
                args.join(" ")
            );
        }
    }
    Ok(())
}

/// Runs debootstrap into `target`, keeping its whole output in `log` and
/// printing the first line of each stage (Retrieving, Extracting,
/// Configuring ...) and every warning or error.
fn debootstrap(target: &Path, mirror: &str, log: &Path) -> Result<()> {
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut child = Command::new(DEBOOTSTRAP)
        .arg("--variant=minbase")
        .arg(format!("--include={}", INCLUDE.join(",")))
        .arg(format!("--keyring={ARCHIVE_KEYRING}"))
        .arg(SUITE)
        .arg(target)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().context("duplicating a pipe")?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("starting {DEBOOTSTRAP}"))?;
    let mut file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut tail: Vec<String> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let started = Instant::now();
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading debootstrap's output")?;
        let _ = writeln!(file, "{line}");
        let stage = debootstrap_stage(&line);
        let new_stage = stage.is_some_and(|s| !stages.iter().any(|seen| seen == s));
        if new_stage || line.starts_with("E:") || line.starts_with("W:") {
            eprintln!(
                "xtask:   [{:>3.0} s] debootstrap: {line}",
                started.elapsed().as_secs_f64()
            );
        }
        if let Some(s) = stage.filter(|_| new_stage) {
            stages.push(s.to_owned());
        }
        tail.push(line);
        if tail.len() > 30 {
            tail.remove(0);
        }
    }
    let status = child.wait().context("waiting for debootstrap")?;
    if !status.success() {
        bail!(
            "debootstrap failed with {status} (whole output in {}); last lines:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

/// The stage a debootstrap info line belongs to: its first word.
fn debootstrap_stage(line: &str) -> Option<&str> {
    line.strip_prefix("I: ")?.split_whitespace().next()
}

/// Removes a tree that debootstrap may have left file systems mounted in
/// (proc, sys, devpts): those are unmounted first, so nothing outside the
/// tree is ever deleted.
fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut under = mounts_under(&mountinfo, dir);
    // Deepest first.
    under.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for mount in under {
        run_quiet(
            Command::new("umount").arg("-l").arg(&mount),
            "umount (install mount)",
        )?;
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Mount points in `mountinfo` at or below `dir`.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An exclusive lock on `path`, released when the file is dropped.
fn lock(path: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a valid, open file descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

// ---------------------------------------------------------------------------
// The per-run image
// ---------------------------------------------------------------------------

/// A host file and where it goes in the guest.
pub(crate) struct Payload {
    pub files: Vec<(PathBuf, String)>,
    pub dirs: Vec<String>,
    pub symlinks: Vec<(String, String)>,
}

/// Writes the test's files into `stage` and lists where each goes.
fn stage_payload(stage: &Path, guard: &Path, scenario: &Path, unit: &str) -> Result<Payload> {
    fs::create_dir_all(stage).with_context(|| format!("creating {}", stage.display()))?;
    let script = TEST_SCRIPT
        .replace("@WATCHDOG_WAIT_SEC@", &WATCHDOG_WAIT_SEC.to_string())
        .replace("@BYSTANDER_MS@", &BYSTANDER_MS.to_string())
        .replace("@HOG_DEADLINE_MS@", &HOG_DEADLINE_MS.to_string());
    let bystander = BYSTANDER_SERVICE.replace("@BYSTANDER_MS@", &BYSTANDER_MS.to_string());
    let watchdog = format!(
        "# The test's short watchdog period: a missed ping shows within its wait.\n\
         [Service]\nWatchdogSec={TEST_WATCHDOG_SEC}s\n"
    );
    let system = "/etc/systemd/system";
    let texts: [(&str, String, String, u32); 8] = [
        (
            "run.sh",
            "/usr/local/lib/guard-test/run.sh".to_owned(),
            script,
            0o755,
        ),
        (
            "guard.service",
            format!("{system}/guard.service"),
            unit.to_owned(),
            0o644,
        ),
        (
            "test-watchdog.conf",
            format!("{system}/guard.service.d/test-watchdog.conf"),
            watchdog,
            0o644,
        ),
        (
            "seed.slice",
            format!("{system}/seed.slice"),
            SEED_SLICE.to_owned(),
            0o644,
        ),
        (
            "hog.service",
            format!("{system}/hog.service"),
            HOG_SERVICE.to_owned(),
            0o644,
        ),
        (
            "bystander.service",
            format!("{system}/bystander.service"),
            bystander,
            0o644,
        ),
        (
            "guard-test.service",
            format!("{system}/guard-test.service"),
            TEST_SERVICE.to_owned(),
            0o644,
        ),
        (
            "hostname",
            "/etc/hostname".to_owned(),
            "guard-vm\n".to_owned(),
            0o644,
        ),
    ];
    let mut files = vec![
        (guard.to_owned(), "/usr/local/sbin/guard".to_owned()),
        (
            scenario.to_owned(),
            "/usr/local/bin/guard-scenario".to_owned(),
        ),
    ];
    for (name, dest, text, mode) in texts {
        let path = stage.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        files.push((path, dest));
    }
    let mut symlinks = vec![(
        format!("{system}/multi-user.target.wants/guard-test.service"),
        format!("{system}/guard-test.service"),
    )];
    for unit in MASKED {
        symlinks.push((format!("{system}/{unit}"), "/dev/null".to_owned()));
    }
    Ok(Payload {
        files,
        dirs: vec![
            "/usr/local/lib/guard-test".to_owned(),
            format!("{system}/guard.service.d"),
            format!("{system}/multi-user.target.wants"),
        ],
        symlinks,
    })
}

/// Copies `base` to `out` (sparse) and writes the payload into the copy.
pub(crate) fn make_run_image(base: &Path, out: &Path, payload: &Payload) -> Result<()> {
    run_quiet(
        Command::new("cp").arg("--sparse=always").arg(base).arg(out),
        "cp (install coreutils)",
    )?;
    // debugfs splits its command lines at white space.
    let word = |path: &str| {
        if path.is_empty() || path.contains(char::is_whitespace) {
            bail!("debugfs cannot take the path {path:?}: it contains white space");
        }
        Ok(path.to_owned())
    };
    let mut script = String::new();
    for dir in &payload.dirs {
        script.push_str(&format!("mkdir {}\n", word(dir)?));
    }
    for (src, dest) in &payload.files {
        let (src, dest) = (word(&src.to_string_lossy())?, word(dest)?);
        // `write` refuses to replace a file.
        script.push_str(&format!("rm {dest}\nwrite {src} {dest}\n"));
    }
    for (link, target) in &payload.symlinks {
        let (link, target) = (word(link)?, word(target)?);
        script.push_str(&format!("rm {link}\nsymlink {link} {target}\n"));
    }
    let commands = out.with_extension("debugfs");
    fs::write(&commands, &script).with_context(|| format!("writing {}", commands.display()))?;
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut child = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&commands)
        .arg(out)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().context("duplicating a pipe")?)
        .stderr(writer)
        .spawn()
        .context("starting debugfs (install e2fsprogs)")?;
    let mut output = String::new();
    let mut reader = reader;
    reader
        .read_to_string(&mut output)
        .context("reading debugfs's output")?;
    let status = child.wait().context("waiting for debugfs")?;
    let errors = debugfs_errors(&output);
    if !status.success() || !errors.is_empty() {
        bail!(
            "debugfs could not write the payload into {} ({status}):\n{}",
            out.display(),
            errors.join("\n")
        );
    }
    Ok(())
}

/// Errors in the merged output of `debugfs -f`, which exits 0 whatever
/// happens. Each command is echoed as `debugfs: CMD`; what follows it up to
/// the next echo is its output. Expected complaints are not errors: `mkdir`
/// of a directory that exists, `rm` of a file that does not.
fn debugfs_errors(output: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let mut command = "";
    for line in output.lines() {
        if let Some(c) = line.strip_prefix("debugfs: ") {
            command = c;
            continue;
        }
        let verb = command.split(' ').next().unwrap_or("");
        let expected = line.trim().is_empty()
            || line.starts_with("debugfs ") // the version banner
            || line.starts_with("Allocated inode:")
            || (verb == "mkdir" && line.contains("already exists"))
            || (verb == "rm" && line.contains("File not found"));
        if !expected {
            errors.push(format!("{command}: {line}"));
        }
    }
    errors
}

/// The per-call directory in the cache: the staged payload and the image
/// copy. Removed on drop; ones left by killed runs are removed next time.
pub(crate) struct RunDir(pub PathBuf);

impl RunDir {
    pub(crate) fn create(path: PathBuf) -> Result<Self> {
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn remove_stale_runs(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("run-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

// ---------------------------------------------------------------------------
// QEMU
// ---------------------------------------------------------------------------

/// Boots `kernel` with `image` as the NVMe root disk (copy-on-write, so the
/// image is never changed) and `extra_append` on the kernel command line;
/// returns the console, also written to `log`.
/// A guest kernel fault ends the run early with an error starting with
/// [`vm::GUEST_FAULT`]; the timeout kills QEMU and fails the run.
pub(crate) fn boot(
    kernel: &Kernel,
    image: &Path,
    extra_append: &str,
    log: &Path,
    timeout: Duration,
) -> Result<String> {
    let mut drive = std::ffi::OsString::from("file=");
    drive.push(image);
    drive.push(",if=none,id=d0,format=raw,snapshot=on");
    vm::boot(
        &kernel.vmlinuz,
        MEM_MIB,
        &[
            "-drive".into(),
            drive,
            "-device".into(),
            "nvme,serial=x,drive=d0".into(),
        ],
        &format!("console=ttyS0 root=/dev/nvme0n1 rw quiet panic=-1 {extra_append}"),
        timeout,
        log,
    )
}

/// Runs a command, failing with its stderr if it fails.
fn run_quiet(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_is_found_among_console_noise() {
        let console = "\
[  OK  ] Started guard-test.service\r
GUARD-STEP starting guard.service\r
GUARD-JOURNAL {\"message\":\"guard ready\"}\r
GUARD-RESULT {\"pass\":true,\"failures\":[],\"hog_lifetime_ms\":1234}\r
[   40.1] reboot: Power down\r
";
        let r = parse_result(console, Path::new("/tmp/log"));
        assert_eq!(r["pass"], json!(true));
        assert_eq!(r["hog_lifetime_ms"], json!(1234));
    }

    #[test]
    fn missing_result_names_the_last_step() {
        let console = "GUARD-STEP kernel 6.1\nGUARD-STEP starting guard.service\n";
        let r = parse_result(console, Path::new("/tmp/x.log"));
        assert_eq!(r["pass"], json!(false));
        let failure = r["failures"][0].as_str().expect("a failure");
        assert!(
            failure.contains("last step: starting guard.service"),
            "{failure}"
        );
        assert!(failure.contains("/tmp/x.log"), "{failure}");
    }

    #[test]
    fn garbled_result_is_a_failure() {
        let r = parse_result("GUARD-RESULT {\"pass\":tr\n", Path::new("/l"));
        assert_eq!(r["pass"], json!(false));
        let r = parse_result("GUARD-RESULT 42\n", Path::new("/l"));
        assert_eq!(r["pass"], json!(false));
    }

    #[test]
    fn summary_reads_measured_values() {
        let r = json!({
            "pass": true, "guard_start_ms": 2100, "ready_to_active_us": 1500,
            "watchdog_ok": false, "watchdog_timeouts": 2, "watchdog_restarts": 1,
            "hog_lifetime_ms": 1800, "kill_latency_us": 450,
            "bystander_result": "success", "bystander_worst_us": 250000,
            "socket_mode": "660 guard", "kill_in_event_log": true,
        });
        assert_eq!(
            summary(&r),
            "start 2100 ms, ready->active 1.5 ms; watchdog NOT fed (2 timeouts, 1 restarts); \
             hog SIGKILLed 1800 ms after start (verdict->kill 450 us); bystander success worst 250 ms; \
             socket 660 guard, member attached, stranger refused; kill in /var/lib/guard log true"
        );
        assert!(summary(&json!({})).contains("watchdog -"));
    }

    #[test]
    fn debugfs_output_is_checked_per_command() {
        let output = "\
debugfs 1.47.0 (5-Feb-2023)
debugfs: mkdir /etc/systemd/system/multi-user.target.wants
ext2fs_mkdir: Ext2 directory already exists while creating directory \"multi-user.target.wants\"
mkdir: Ext2 directory already exists 
debugfs: rm /usr/local/sbin/guard
rm: File not found by ext2_lookup while trying to resolve filename
debugfs: write /tmp/guard /usr/local/sbin/guard
Allocated inode: 17
debugfs: symlink /etc/systemd/system/getty.target /dev/null
";
        assert!(
            debugfs_errors(output).is_empty(),
            "{:?}",
            debugfs_errors(output)
        );
        let bad = "\
debugfs: write /tmp/guard /usr/local/sbin/guard
write: Could not allocate block in ext2 filesystem while writing file \"guard\"
debugfs: mkdir /nope/x
mkdir: File not found by ext2_lookup 
";
        let errors = debugfs_errors(bad);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("write /tmp/guard /usr/local/sbin/guard: write: Could not"));
        assert!(errors[1].starts_with("mkdir /nope/x: "));
    }

    #[test]
    fn debootstrap_stages_are_first_words() {
        assert_eq!(
            debootstrap_stage("I: Retrieving Packages "),
            Some("Retrieving")
        );
        assert_eq!(
            debootstrap_stage("I: Configuring systemd..."),
            Some("Configuring")
        );
        assert_eq!(debootstrap_stage("W: something"), None);
        assert_eq!(debootstrap_stage("dpkg: warning"), None);
    }

    #[test]
    fn mounts_under_a_tree_are_found_and_unescaped() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
60 22 0:5 / /root/.cache/guard/systemd-rootfs/rootfs.tmp/proc rw - proc proc rw
61 22 0:6 / /root/.cache/guard/systemd-rootfs/rootfs.tmp/dev/pts rw - devpts devpts rw
62 22 0:7 / /root/.cache/guard/systemd-rootfs/rootfs.tmp2/sys rw - sysfs sys rw
63 22 0:8 / /tmp/a\\040b/proc rw - proc proc rw
";
        let dir = Path::new("/root/.cache/guard/systemd-rootfs/rootfs.tmp");
        assert_eq!(
            mounts_under(mountinfo, dir),
            [dir.join("proc"), dir.join("dev/pts")]
        );
        assert_eq!(
            mounts_under(mountinfo, Path::new("/tmp/a b")),
            [PathBuf::from("/tmp/a b/proc")]
        );
        assert_eq!(unescape_mountinfo("a\\011b\\134"), "a\tb\\");
    }

    #[test]
    fn payload_templates_are_filled() {
        let stage = std::env::temp_dir().join(format!("guard-systemd-vm-{}", std::process::id()));
        let bin = stage.join("bin");
        fs::create_dir_all(&bin).expect("mkdir");
        let guard = bin.join("guard");
        fs::write(&guard, b"x").expect("write");
        let payload = stage_payload(
            &stage.join("s"),
            &guard,
            &bin.join("guard-scenario"),
            "[Unit]\n",
        )
        .expect("stage");
        let script = fs::read_to_string(stage.join("s/run.sh")).expect("script");
        let bystander = fs::read_to_string(stage.join("s/bystander.service")).expect("unit");
        let _ = fs::remove_dir_all(&stage);
        assert!(!script.contains("@WATCHDOG_WAIT_SEC@"));
        assert!(!script.contains("@BYSTANDER_MS@") && !script.contains("@HOG_DEADLINE_MS@"));
        assert!(bystander.contains(&format!("bystander {BYSTANDER_MS}\n")));
        assert!(
            payload
                .files
                .iter()
                .any(|(_, d)| d == "/usr/local/sbin/guard")
        );
        assert!(
            payload
                .files
                .iter()
                .any(|(_, d)| d == "/etc/systemd/system/guard.service")
        );
    }
}
