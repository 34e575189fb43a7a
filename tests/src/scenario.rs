//! The scenarios. Each returns a JSON object: `scenario`, `pass`,
//! `failures` (what a person would call wrong), measured values and
//! `summary`, the one line `cargo xtask test` shows for it.
//!
//! Each scenario is a file in `scenario/` that declares itself (a
//! [`Scenario`]) and has a line in the list below. This file holds that
//! list and the pieces every scenario uses: cgroups with limits, the guard
//! with its log, workloads started inside a cgroup.

use std::{
    ffi::CString,
    fs,
    io::Read,
    os::unix::{
        fs::PermissionsExt,
        io::AsRawFd,
        net::UnixDatagram,
        process::{CommandExt, ExitStatusExt},
    },
    path::Path,
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{monotonic_ns, trace};

pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// guard-scenario's copy at sshd's installed path (xtask puts it in the
/// initramfs, root-owned, mode 0755): a process run from it is the real
/// sshd as far as /proc/PID/exe can tell.
pub(crate) const SSHD: &str = "/usr/sbin/sshd";
const GUARD: &str = "/bin/guard";
const GUARD_LOG: &str = "/tmp/guard.log";
const NOTIFY: &str = "/run/guard-notify";
/// The budget the guard runs with (its default) and the margin the
/// first-no-progress-to-SIGKILL time may exceed it by under TCG.
pub(crate) const BUDGET_MS: f64 = 250.0;
pub(crate) const MARGIN_MS: f64 = 250.0;

pub(crate) struct Report {
    failures: Vec<String>,
    values: serde_json::Map<String, Value>,
}

impl Report {
    pub(crate) fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }
    pub(crate) fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.values.insert(key.to_owned(), v.into());
    }
}

/// The scenarios, one module each in `scenario/`, in the order they run on
/// each kernel. A module declares its scenarios as `SCENARIOS`.
macro_rules! scenarios {
    ($($module:ident)*) => {
        $(mod $module;)*

        /// Every scenario, in the order they run.
        pub(crate) fn all() -> impl Iterator<Item = &'static Scenario> {
            [$($module::SCENARIOS),*].into_iter().flatten()
        }
    };
}

scenarios! {
    incident
    workers
    protected
    benign
    cgroup_kill
    sighup
    pid_reuse
    stream
    host
    odd
    many_small
    respawn
    breaker
    stuck_exit
    churn
    many_cgroups
    fair
    systemd
    package
    band
}

/// A scenario as its file declares it: its name, the VM it needs, how it
/// runs, and how its result reads in one line. xtask boots each as
/// `guard-scenario list` describes it.
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    /// The guest it runs in.
    pub(crate) vm: Vm,
    /// Guest RAM, MiB.
    pub(crate) memory_mib: u32,
    /// A scratch disk, /dev/nvme0n1 (a fresh sparse image of xtask's): a
    /// real filesystem, the initramfs being RAM, or a slow device.
    pub(crate) disk: bool,
    /// Extra qemu `-drive` options of that disk, such as throttling.
    pub(crate) drive_options: &'static str,
    /// How long one boot may take before qemu is killed.
    pub(crate) timeout_secs: u64,
    pub(crate) run: fn(&mut Report) -> Result<(), String>,
    /// The line of the results table, read from the finished result.
    pub(crate) summary: fn(&Value) -> String,
}

/// The guests a scenario can run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vm {
    /// An initramfs whose /init mounts what the guard needs and runs the
    /// scenario as the only thing on the machine.
    Initramfs,
    /// A Debian system booted with systemd as PID 1, the guard installed as
    /// `deploy/guard.service`; guard-test.service runs the scenario once
    /// the system is up.
    Systemd,
}

impl Vm {
    /// The name `guard-scenario list` gives xtask.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Initramfs => "initramfs",
            Self::Systemd => "systemd",
        }
    }
}

impl Scenario {
    /// A scenario in the usual VM: an initramfs, 1 GiB of RAM, no disk,
    /// 240 s.
    pub(crate) const fn new(
        name: &'static str,
        run: fn(&mut Report) -> Result<(), String>,
        summary: fn(&Value) -> String,
    ) -> Self {
        Self {
            name,
            vm: Vm::Initramfs,
            memory_mib: 1024,
            disk: false,
            drive_options: "",
            timeout_secs: 240,
            run,
            summary,
        }
    }
}

impl Scenario {
    /// A scenario on a systemd machine: 1 GiB of RAM, 420 s (the system
    /// boots first: about 60 s under TCG, twice that on a busy host).
    pub(crate) const fn systemd(
        name: &'static str,
        run: fn(&mut Report) -> Result<(), String>,
        summary: fn(&Value) -> String,
    ) -> Self {
        Self {
            vm: Vm::Systemd,
            timeout_secs: 420,
            ..Self::new(name, run, summary)
        }
    }
}

/// Every scenario as xtask needs it to boot one (`guard-scenario list`).
pub fn list() -> Value {
    all()
        .map(|s| {
            json!({
                "name": s.name,
                "vm": s.vm.name(),
                "memory_mib": s.memory_mib,
                "disk": s.disk,
                "drive_options": s.drive_options,
                "timeout_secs": s.timeout_secs,
            })
        })
        .collect()
}

/// Runs the scenario `name`; its result, with its summary line.
pub fn run(name: &str) -> Value {
    let mut report = Report {
        failures: Vec::new(),
        values: serde_json::Map::new(),
    };
    let scenario = all().find(|s| s.name == name);
    let outcome = match scenario {
        Some(s) => (s.run)(&mut report),
        None => Err(format!("unknown scenario {name}")),
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
    if let Some(s) = scenario {
        out["summary"] = (s.summary)(&out).into();
    }
    out
}

pub(crate) fn write(path: &str, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("writing {value:?} to {path}: {e}"))
}

/// A file's text, empty when it cannot be read. Bytes that are not UTF-8
/// (a task name in /proc/PID/stat may be any bytes) come back as U+FFFD.
pub(crate) fn read(path: &str) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A counter from a flat keyed file such as memory.events.
pub(crate) fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// `full` stall total (µs) and avg10 (%) from a memory.pressure file.
pub(crate) fn pressure_full(text: &str) -> (u64, f64) {
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

/// `key=value` from a line of space-separated pairs.
pub(crate) fn kv<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// A cgroup, named by its path below the cgroup2 root ("/seed").
#[derive(Clone, Debug)]
pub(crate) struct Cgroup {
    rel: String,
}

impl Cgroup {
    /// Creates the cgroup (and its parents), enabling the memory controller
    /// on the way down so that every level has its memory files.
    pub(crate) fn create(rel: &str) -> Result<Self, String> {
        let mut at = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let parent = format!("{CGROUP_ROOT}{at}");
            at.push('/');
            at.push_str(part);
            let dir = format!("{CGROUP_ROOT}{at}");
            if !Path::new(&dir).exists() {
                if at.matches('/').count() > 1 {
                    write(&format!("{parent}/cgroup.subtree_control"), "+memory")?;
                }
                fs::create_dir(&dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
            }
        }
        Ok(Self { rel: at })
    }

    /// memory.high and memory.max ("64M", "max"), and no swap.
    pub(crate) fn limit(&self, high: &str, max: &str) -> Result<&Self, String> {
        write(&self.path("memory.high"), high)?;
        write(&self.path("memory.max"), max)?;
        if Path::new(&self.path("memory.swap.max")).exists() {
            write(&self.path("memory.swap.max"), "0")?;
        }
        Ok(self)
    }

    /// The path as the guard logs it: "/kill.slice".
    pub(crate) fn rel(&self) -> &str {
        &self.rel
    }

    pub(crate) fn path(&self, file: &str) -> String {
        format!("{CGROUP_ROOT}{}/{file}", self.rel)
    }

    pub(crate) fn read(&self, file: &str) -> String {
        read(&self.path(file))
    }

    pub(crate) fn number(&self, file: &str) -> u64 {
        self.read(file).trim().parse().unwrap_or(0)
    }

    pub(crate) fn current(&self) -> u64 {
        self.number("memory.current")
    }

    pub(crate) fn high(&self) -> u64 {
        self.number("memory.high")
    }

    /// A counter of memory.events.
    pub(crate) fn event(&self, key: &str) -> u64 {
        keyed(&self.read("memory.events"), key)
    }

    /// Pids in this cgroup (not its children).
    pub(crate) fn procs(&self) -> Vec<u32> {
        self.read("cgroup.procs")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Starts `guard-scenario ARGS` (a workload) inside this cgroup.
    pub(crate) fn spawn(&self, args: &[&str], stdout: Stdio) -> Result<Child, String> {
        self.spawn_from("/proc/self/exe", args, stdout)
    }

    /// The same, run from another copy of guard-scenario (`exe`), so that
    /// /proc/PID/exe names that file.
    pub(crate) fn spawn_from(
        &self,
        exe: &str,
        args: &[&str],
        stdout: Stdio,
    ) -> Result<Child, String> {
        let mut cmd = Command::new(exe);
        cmd.args(args).stdout(stdout).stdin(Stdio::null());
        self.spawn_cmd(cmd)
    }

    /// Removes the (empty) cgroup; a task that was just reaped may keep it
    /// busy for a moment.
    pub(crate) fn remove(&self) -> Result<(), String> {
        let dir = format!("{CGROUP_ROOT}{}", self.rel);
        let mut tries = 0;
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                    tries += 1;
                    sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("rmdir {dir}: {e}")),
            }
        }
    }

    /// Starts `cmd` inside this cgroup: the child joins it before exec, so
    /// not a page of the new program is charged elsewhere.
    pub(crate) fn spawn_cmd(&self, mut cmd: Command) -> Result<Child, String> {
        let procs = CString::new(self.path("cgroup.procs")).map_err(|e| e.to_string())?;
        // SAFETY: between fork and exec the closure makes only the
        // async-signal-safe calls open, write and close, on memory that
        // was allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n == 1 { Ok(()) } else { Err(err) }
            });
        }
        let shown = format!("{cmd:?}");
        cmd.spawn()
            .map_err(|e| format!("spawning {shown} in {}: {e}", self.rel))
    }
}

/// Writes a policy file as the guard requires it: root-owned, written by
/// root alone, in a directory likewise.
pub(crate) fn write_policy(path: &str, text: &str) -> Result<(), String> {
    let dir = Path::new(path)
        .parent()
        .ok_or("policy path has no directory")?;
    fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    // Written to a new file and renamed, as an editor or config manager would.
    let tmp = format!("{path}.new");
    fs::write(&tmp, text).map_err(|e| format!("writing {tmp}: {e}"))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("chmod {tmp}: {e}"))?;
    fs::rename(&tmp, path).map_err(|e| format!("renaming {tmp} to {path}: {e}"))
}

/// The guard, started as `guard --log-format json run ARGS` with its stderr
/// in GUARD_LOG.
pub(crate) struct Guard {
    child: Child,
}

impl Guard {
    /// Starts the guard and waits for its READY=1.
    pub(crate) fn start(args: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        let _ = fs::remove_file(NOTIFY);
        let sock = UnixDatagram::bind(NOTIFY).map_err(|e| format!("binding {NOTIFY}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let log = fs::File::create(GUARD_LOG).map_err(|e| format!("{GUARD_LOG}: {e}"))?;
        let child = Command::new(GUARD)
            .args(["--log-format", "json", "run"])
            .args(args)
            .envs(env.iter().copied())
            .env("NOTIFY_SOCKET", NOTIFY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {GUARD}: {e}"))?;
        let mut guard = Self { child };
        let mut buf = [0u8; 256];
        loop {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let log = guard.stop();
                    return Err(format!("no READY=1 from the guard: {e}; log:\n{log}"));
                }
            };
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return Ok(guard);
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the guard ended, if it has.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The log so far, one JSON value per line.
    pub(crate) fn lines(&self) -> Vec<Value> {
        log_lines(&read(GUARD_LOG))
    }

    /// SIGTERM, then the whole log (also echoed to the console).
    pub(crate) fn stop(&mut self) -> String {
        self.signal(libc::SIGTERM);
        if wait_exit(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let log = read(GUARD_LOG);
        for line in log.lines() {
            println!("guard-log: {line}");
        }
        log
    }
}

pub(crate) fn log_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub(crate) fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

/// The log lines whose message is `m`.
pub(crate) fn with_message<'a>(lines: &'a [Value], m: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| message(v) == m).collect()
}

/// The guard's `killed` lines for `cgroup`.
pub(crate) fn kills_in<'a>(lines: &'a [Value], cgroup: &str) -> Vec<&'a Value> {
    with_message(lines, "killed")
        .into_iter()
        .filter(|k| text(&k["cgroup"]) == cgroup)
        .collect()
}

/// Every pid a `killed` line says the guard signalled: its `victims`
/// ("101,102"), or its `pid` alone when it has no such field.
pub(crate) fn victims(kill: &Value) -> Vec<u32> {
    match kill["victims"].as_str() {
        Some(list) => list
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect(),
        None => number(&kill["pid"]).map(|p| p as u32).into_iter().collect(),
    }
}

/// The targets of the SIGKILLs `sender` sent, in order, from the trace.
pub(crate) fn sigkills_from(trace_text: &str, sender: u32) -> Vec<(f64, u32)> {
    trace_sigkills(trace_text)
        .into_iter()
        .filter(|(_, from, _)| *from == sender)
        .map(|(ts, _, target)| (ts, target))
        .collect()
}

/// A log field as text, whether the logger wrote it as a string or number.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A log field as a number, whether written as a number or a string.
pub(crate) fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

pub(crate) fn wait_exit(child: &mut Child, limit: Duration) -> Option<(ExitStatus, u64)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some((status, monotonic_ns()));
        }
        sleep(Duration::from_millis(2));
    }
    None
}

/// Waits up to `limit` for `child` (`what`, for the failure) to end: a
/// failure unless SIGKILL ended it; one still alive is killed. Returns when
/// it ended, if it did.
pub(crate) fn expect_sigkill(
    r: &mut Report,
    child: &mut Child,
    limit: Duration,
    what: &str,
) -> Option<u64> {
    match wait_exit(child, limit) {
        Some((status, at)) => {
            r.check(
                status.signal() == Some(libc::SIGKILL),
                format!("{what} ended by {status}, not SIGKILL"),
            );
            Some(at)
        }
        None => {
            r.check(false, format!("{what} was alive {limit:?} later"));
            end(child);
            None
        }
    }
}

/// Polls `calm` every `every` until it has held for `quiet` without a
/// break, or `deadline` has passed since `from`. Returns when the last calm
/// spell began (ms since `from`, also reported as `settled_after_ms`) with
/// the number of the guard's kills then, and whether it lasted `quiet`.
pub(crate) fn settle(
    r: &mut Report,
    guard: &Guard,
    from: Instant,
    deadline: Duration,
    quiet: Duration,
    every: Duration,
    mut calm: impl FnMut() -> bool,
) -> (Option<(u64, usize)>, bool) {
    let mut spell: Option<(Instant, u64, usize)> = None;
    let mut lasted = false;
    while from.elapsed() < deadline {
        if !calm() {
            spell = None;
        } else if let Some((at, ..)) = spell {
            if at.elapsed() >= quiet {
                lasted = true;
                break;
            }
        } else {
            let kills = with_message(&guard.lines(), "killed").len();
            spell = Some((Instant::now(), from.elapsed().as_millis() as u64, kills));
        }
        sleep(every);
    }
    if let Some((_, ms, _)) = spell {
        r.set("settled_after_ms", ms);
    }
    (spell.map(|(_, ms, kills)| (ms, kills)), lasted)
}

/// Alive and not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    read(&format!("/proc/{pid}/stat"))
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Kills a child we started and reaps it; how it had ended if it already had.
pub(crate) fn end(child: &mut Child) -> Option<ExitStatus> {
    let before = child.try_wait().ok().flatten();
    let _ = child.kill();
    let _ = child.wait();
    before
}

/// Complete lines from a child's stdout, read without blocking.
pub(crate) struct Lines {
    src: ChildStdout,
    buf: Vec<u8>,
}

impl Lines {
    pub(crate) fn new(src: ChildStdout) -> Self {
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let fd = src.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Self {
            src,
            buf: Vec::new(),
        }
    }

    /// The lines completed since the last call.
    pub(crate) fn poll(&mut self) -> Vec<String> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.src.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let Some(end) = self.buf.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let done: Vec<u8> = self.buf.drain(..=end).collect();
        String::from_utf8_lossy(&done)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Waits until each child has said `ready PID` on its stdout.
pub(crate) fn wait_ready(children: &mut [Child], limit: Duration) -> Result<(), String> {
    let mut outs = Vec::new();
    for c in children.iter_mut() {
        let out = c.stdout.take().ok_or("a child without stdout")?;
        outs.push((c.id(), Lines::new(out), false));
    }
    let started = Instant::now();
    while outs.iter().any(|(_, _, ready)| !ready) {
        if started.elapsed() > limit {
            let late: Vec<u32> = outs.iter().filter(|o| !o.2).map(|o| o.0).collect();
            return Err(format!("{late:?} not ready within {limit:?}"));
        }
        for (pid, out, ready) in &mut outs {
            *ready |= out.poll().iter().any(|l| *l == format!("ready {pid}"));
        }
        sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// SIGKILLs in the trace: (time, sender pid, target pid).
pub(crate) fn trace_sigkills(trace_text: &str) -> Vec<(f64, u32, u32)> {
    trace_text
        .lines()
        .filter_map(trace::parse)
        .filter(|l| l.event == "signal_generate" && kv(l.fields, "sig") == Some("9"))
        .filter_map(|l| Some((l.ts, l.pid, kv(l.fields, "pid")?.parse().ok()?)))
        .collect()
}

/// Reclaim passes in the trace by the tasks `pids` (all tasks if empty):
/// (all passes, passes that freed nothing).
pub(crate) fn trace_passes(trace_text: &str, pids: &[u32]) -> (u64, u64) {
    let mut all = 0;
    let mut none = 0;
    for l in trace_text.lines().filter_map(trace::parse) {
        if l.event == "mm_vmscan_memcg_reclaim_end" && (pids.is_empty() || pids.contains(&l.pid)) {
            all += 1;
            if kv(l.fields, "nr_reclaimed") == Some("0") {
                none += 1;
            }
        }
    }
    (all, none)
}

/// Starts tracing (the seed events) plus `extra` event directories such
/// as "sched/sched_process_exit", with `buffer_kb` per CPU.
pub(crate) fn trace_enable(extra: &[&str], buffer_kb: u32) -> Result<(), String> {
    trace::enable()?;
    let w = |rel: &str, v: &str| {
        fs::write(format!("/sys/kernel/tracing/{rel}"), v)
            .map_err(|e| format!("tracefs {rel}: {e}"))
    };
    w("tracing_on", "0")?;
    if buffer_kb != 8192 {
        w("buffer_size_kb", &buffer_kb.to_string())?;
    }
    for event in extra {
        w(&format!("events/{event}/enable"), "1")?;
    }
    w("trace", "")?;
    w("tracing_on", "1")
}

/// Events the trace buffer dropped (overwritten) on any CPU.
pub(crate) fn trace_overrun() -> u64 {
    let Ok(dirs) = fs::read_dir("/sys/kernel/tracing/per_cpu") else {
        return 0;
    };
    dirs.flatten()
        .map(|d| keyed_colon(&read(&format!("{}/stats", d.path().display())), "overrun"))
        .sum()
}

/// Context switches of every thread of `pid`: (voluntary, involuntary,
/// threads). A sleeping daemon that wakes shows here.
pub(crate) fn context_switches(pid: u32) -> (u64, u64, usize) {
    let mut out = (0, 0, 0);
    for t in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let status = read(&format!("{}/status", t.path().display()));
        out.0 += keyed_colon(&status, "voluntary_ctxt_switches");
        out.1 += keyed_colon(&status, "nonvoluntary_ctxt_switches");
        out.2 += 1;
    }
    out
}

/// The number after "key:" in a /proc-style file ("VmRSS:\t 12 kB" -> 12).
pub(crate) fn keyed_colon(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Bystander output: (completion ns, lateness µs) samples and worst.
pub(crate) fn bystander_samples(out: &str) -> (Vec<(u64, u64)>, u64) {
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

/// Lateness (ms) of each tick scheduled within [from, to).
fn lateness_between(samples: &[(u64, u64)], from: u64, to: u64) -> impl Iterator<Item = f64> + '_ {
    samples
        .iter()
        .filter(move |(done, late)| {
            let scheduled = done.saturating_sub(late * 1000);
            scheduled >= from && scheduled < to
        })
        .map(|(_, late)| *late as f64 / 1000.0)
}

/// Worst lateness (ms) of ticks scheduled within [from, to).
pub(crate) fn worst_between(samples: &[(u64, u64)], from: u64, to: u64) -> f64 {
    lateness_between(samples, from, to).fold(0.0, f64::max)
}

/// How many ticks scheduled within [from, to) were more than `over_ms` late.
pub(crate) fn late_between(samples: &[(u64, u64)], from: u64, to: u64, over_ms: f64) -> usize {
    lateness_between(samples, from, to)
        .filter(|&ms| ms > over_ms)
        .count()
}

/// A bystander started in a cgroup, to be judged when it ends.
pub(crate) struct Bystander {
    child: Child,
}

impl Bystander {
    pub(crate) fn start(cg: &Cgroup, run_for_ms: u64) -> Result<Self, String> {
        let child = cg.spawn(&["bystander", &run_for_ms.to_string()], Stdio::piped())?;
        Ok(Self { child })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for it to end; checks that it ended by itself with status 0.
    /// Returns its (samples, worst µs).
    pub(crate) fn finish(mut self, r: &mut Report) -> Result<(Vec<(u64, u64)>, u64), String> {
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let status = self.child.wait().map_err(|e| e.to_string())?;
        r.check(status.success(), format!("bystander ended with {status}"));
        Ok(bystander_samples(&out))
    }
}

/// The guard killed the hog, once, within budget + margin of the hog's
/// first fruitless reclaim pass (measured from the kernel's trace).
pub(crate) fn guard_checks(r: &mut Report, log: &str, trace_text: &str, hog_pid: u32) {
    let lines = log_lines(log);
    let hooked = lines
        .iter()
        .any(|v| message(v).starts_with("throttle hooks attached"));
    r.set("throttle_hooks", hooked);
    let kills = with_message(&lines, "killed");
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
                number(&k["pid"]) == Some(u64::from(hog_pid)),
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
    detect_to_kill(r, trace_text, hog_pid);
}

/// First no-progress reclaim pass of `pid` to its SIGKILL, from the trace:
/// sets `detect_to_kill_ms` and checks it against budget + margin.
pub(crate) fn detect_to_kill(r: &mut Report, trace_text: &str, pid: u32) -> Option<f64> {
    let kill = trace::first_sigkill(trace_text, pid).map(|(ts, _)| ts);
    detect_to_kill_as(r, trace_text, &[pid], pid, kill, "detect_to_kill_ms")
}

/// `pid`'s SIGKILL from the guard (`sent`, as [`sigkills_from`] gives it),
/// timed from the first fruitless pass of its threads `tids` as `key`;
/// a failure when the guard sent none.
pub(crate) fn guard_kill_timed(
    r: &mut Report,
    trace_text: &str,
    sent: &[(f64, u32)],
    tids: &[u32],
    pid: u32,
    key: &str,
) {
    match sent.iter().find(|(_, t)| *t == pid) {
        Some((ts, _)) => {
            detect_to_kill_as(r, trace_text, tids, pid, Some(*ts), key);
        }
        None => r.check(
            false,
            format!("{key}: no SIGKILL from the guard to pid {pid} in the trace"),
        ),
    }
}

/// The same for a process whose threads `tids` stall (the first pass of
/// any of them counts) and that was killed at `kill` (trace clock),
/// reported as `key`.
pub(crate) fn detect_to_kill_as(
    r: &mut Report,
    trace_text: &str,
    tids: &[u32],
    pid: u32,
    kill: Option<f64>,
    key: &str,
) -> Option<f64> {
    match (trace::first_no_progress_of(trace_text, tids), kill) {
        (Some(t0), Some(t1)) => {
            let ms = (t1 - t0) * 1000.0;
            r.set(key, ms);
            r.check(
                ms <= BUDGET_MS + MARGIN_MS,
                format!(
                    "first no-progress reclaim to SIGKILL of pid {pid} took {ms:.0} ms (budget {BUDGET_MS} + margin {MARGIN_MS})"
                ),
            );
            Some(ms)
        }
        (t0, t1) => {
            r.check(
                false,
                format!(
                    "trace lacks the first no-progress pass ({t0:?}) or the SIGKILL ({t1:?}) of pid {pid}"
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str) -> &'static Scenario {
        all()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no scenario {name}"))
    }

    #[test]
    fn every_name_is_declared_once() {
        let names: Vec<&str> = all().map(|s| s.name).collect();
        for n in &names {
            assert_eq!(names.iter().filter(|m| *m == n).count(), 1, "{n}");
        }
    }

    #[test]
    fn only_stuck_exit_gets_a_throttled_disk() {
        for e in list().as_array().expect("an array") {
            let options = e["drive_options"].as_str().expect("drive_options");
            assert!(
                options.is_empty() || e["disk"] == true,
                "{} has drive options but no disk",
                e["name"]
            );
            let throttled = options.contains("throttling");
            assert_eq!(throttled, e["name"] == "stuck-exit", "{}", e["name"]);
        }
        let stuck = scenario("stuck-exit");
        assert!(stuck.disk);
        assert_eq!(stuck.drive_options, "throttling.bps-total=1048576");
    }

    /// The systemd guest boots from its root image on NVMe: a scratch disk
    /// would race it for the name nvme0n1.
    #[test]
    fn systemd_scenarios_are_listed_as_such_and_take_no_disk() {
        let listed = list();
        let systemd: Vec<&Value> = listed
            .as_array()
            .expect("an array")
            .iter()
            .filter(|e| e["vm"] == "systemd")
            .collect();
        let names: Vec<&Value> = systemd.iter().map(|e| &e["name"]).collect();
        assert_eq!(names, ["systemd", "package", "band"], "{listed}");
        assert!(systemd.iter().all(|e| e["disk"] == false), "{listed}");
        assert_eq!(scenario("seed").vm, Vm::Initramfs);
    }

    #[test]
    fn an_unknown_scenario_fails_without_a_summary() {
        let r = run("no-such-scenario");
        assert_eq!(r["pass"], false);
        assert_eq!(
            r["failures"],
            json!(["scenario could not run: unknown scenario no-such-scenario"])
        );
        assert!(r.get("summary").is_none());
    }

    /// The lines read as `cargo xtask test` has always printed them.
    #[test]
    fn summaries_read_the_measured_values() {
        let seed = json!({
            "detect_to_kill_ms": 134.46, "verdict_to_kill_us": 9120,
            "bystander_worst_during_ms": 126.2, "bystander_worst_after_ms": 11.9,
            "throttle_hooks": true,
        });
        assert_eq!(
            (scenario("seed").summary)(&seed),
            "first no-progress->SIGKILL 134.5 ms; verdict->kill 9120 us; bystander worst 126 ms \
             during, 11.9 ms after; hooks true"
        );
        let host = json!({
            "mem_total_kib": 479600, "cached_kib_before": 179500, "hog_pid": 104,
            "direct_reclaim_passes": 0, "direct_passes_without_progress": 0,
            "verdict_to_kill_us": 25377, "available_at_kill_bytes": 48549069,
            "kernel_oom_victims": [], "stand_in_alive": true,
        });
        assert_eq!(
            (scenario("host").summary)(&host),
            "468 MiB RAM, no swap, 175 MiB page cache: hog 104 SIGKILLed by the guard - ms after \
             the first direct reclaim pass (0 passes before the kill, 0 without progress; \
             verdict->kill 25377 us, MemAvailable 46.3 MiB at the kill); kernel OOM victims []; \
             protected stand-in alive true"
        );
        // A result of a real run (6.12), as the VM printed it.
        let stream: Value = serde_json::from_str(
            r#"{"daemon_log_records": 24, "detect_to_kill_ms": 111.5320000000004,
            "failures": [], "hog_pid": 158, "idle_wakeups": 0, "kill_latency_us": 6804,
            "metrics_kills": 1.0, "metrics_reclaim_end_ns_per_run": 57412.392857142855,
            "metrics_reclaim_end_runs": 56.0, "oom_hog_pid": 159, "oom_kill_cgroup": "/oom.slice",
            "oom_kill_comm": "hog", "pass": true, "report_svg_bytes": 52030, "scenario": "stream",
            "stream_verdict_to_kill_ms": 11.988851, "trace_reclaim_records": 56,
            "trace_records": 83, "trace_sample_records": 18, "trace_throttle_records": 2}"#,
        )
        .expect("json");
        assert_eq!(
            (scenario("stream").summary)(&stream),
            "idle daemon woke 0 times in 5 s; guard trace --json: verdict + kill of hog 158 \
             (verdict->kill 12.0 ms in the stream), 56 reclaim / 2 throttle / 18 sample records; \
             oom_kill of 159 (hog) in /oom.slice; daemon log 24 records, report names both \
             victims, SVG 52030 bytes; /metrics: kills 1.0, reclaim end 56.0 runs at 57412 \
             ns each"
        );
    }

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
        assert_eq!(late_between(&samples, 0, u64::MAX, 1.0), 2);
        assert_eq!(late_between(&samples, 0, u64::MAX, 2.0), 1);
        assert_eq!(late_between(&samples, 2_000_000_000, u64::MAX, 1.0), 1);
        let (parsed, worst) = bystander_samples("sample 5 7\nbystander ticks=3 worst_us=7\n");
        assert_eq!((parsed, worst), (vec![(5, 7)], 7));
    }

    const TRACE: &str = "\
# tracer: nop
          worker-101     [001] d..1.    12.500100: mm_vmscan_memcg_reclaim_end: nr_reclaimed=3
          worker-101     [001] d..1.    12.600200: mm_vmscan_memcg_reclaim_end: nr_reclaimed=0
       bystander-98      [000] d..1.    12.610000: mm_vmscan_memcg_reclaim_end: nr_reclaimed=0
           guard-97      [000] d..2.    12.700300: signal_generate: sig=9 errno=0 code=0 comm=worker pid=101 grp=1 res=0
 guard-scenario-96      [000] d..2.    13.000000: signal_generate: sig=9 errno=0 code=0 comm=worker pid=102 grp=1 res=0
";

    #[test]
    fn sigkills_and_passes_are_read_from_the_trace() {
        assert_eq!(
            trace_sigkills(TRACE),
            vec![(12.7003, 97, 101), (13.0, 96, 102)]
        );
        assert_eq!(trace_passes(TRACE, &[]), (3, 2));
        assert_eq!(trace_passes(TRACE, &[101]), (2, 1));
        assert_eq!(trace_passes(TRACE, &[5]), (0, 0));
    }

    #[test]
    fn kills_are_found_by_cgroup_and_by_sender() {
        let lines = [
            json!({"message": "killed", "cgroup": "/a", "pid": 1}),
            json!({"message": "killed", "cgroup": "/b", "pid": 2}),
            json!({"message": "kill outcome", "cgroup": "/a"}),
        ];
        assert_eq!(kills_in(&lines, "/a").len(), 1);
        assert_eq!(sigkills_from(TRACE, 97), [(12.7003, 101)]);
        assert_eq!(sigkills_from(TRACE, 101), []);
    }

    #[test]
    fn victims_are_read_from_the_list_or_the_pid() {
        let batch = json!({"message": "killed", "pid": 101, "victims": "101,102, 103"});
        assert_eq!(victims(&batch), [101, 102, 103]);
        let today = json!({"message": "killed", "pid": "104"});
        assert_eq!(victims(&today), [104]);
        assert!(victims(&json!({"message": "killed"})).is_empty());
    }

    #[test]
    fn key_value_fields_are_found_whole() {
        let line = "burst 0 peak=68395008 high=67108864 over_ms=12.5 gave_up=0";
        assert_eq!(kv(line, "high"), Some("67108864"));
        assert_eq!(kv(line, "over_ms"), Some("12.5"));
        assert_eq!(kv(line, "ms"), None);
        assert_eq!(keyed_colon("entries: 5\noverrun: 17\n", "overrun"), 17);
        assert_eq!(
            keyed_colon("MemTotal:       470896 kB\nMemFree: 1 kB\n", "MemTotal"),
            470896
        );
    }
}
