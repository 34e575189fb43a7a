//! The post-kill hook: the admin's own command, told who died, run in the
//! background so it never delays the next verdict.
//!
//! guard runs as root with capabilities, oom_score_adj -1000 and nice -20;
//! none of that may pass to a program it starts. The hook gets a clean
//! environment (PATH and the GUARD_* variables), no capabilities (the
//! no_new_privs bit keeps even a root hook from regaining them at exec),
//! oom_score_adj 0, nice 0, optionally another user, and a process group of
//! its own, which is killed whole at the timeout. Hooks run one at a time
//! from a bounded queue: a kill spree cannot start a process per kill.

use std::{ffi::CString, io, os::unix::process::CommandExt as _, process::Stdio};

use tokio::sync::mpsc;
use tracing::warn;

use crate::{config::Hook, events::KillReport};

/// Hook runs that may wait while one runs; more are dropped and counted.
pub const HOOK_QUEUE: usize = 16;
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a post-kill hook ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HookEnd {
    Succeeded,
    Failed,
    TimedOut,
    NotStarted,
}

/// Runs hooks one at a time, in the order of the kills.
pub struct HookRunner {
    tx: mpsc::Sender<(Hook, KillReport)>,
    /// Runs dropped because the queue was full.
    pub dropped: u64,
}

impl HookRunner {
    /// The runner, and the task that runs the hooks (it reports each end
    /// on `ends`, if given, for tests).
    pub fn start(
        ends: Option<mpsc::UnboundedSender<HookEnd>>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<(Hook, KillReport)>(HOOK_QUEUE);
        let task = tokio::spawn(async move {
            while let Some((hook, report)) = rx.recv().await {
                let end = run_hook(&hook, &report).await;
                if let Some(ends) = &ends {
                    let _ = ends.send(end);
                }
            }
        });
        (Self { tx, dropped: 0 }, task)
    }

    /// Queues a run of `hook` for the kill `report`; false when the queue
    /// was full and the run was dropped.
    pub fn submit(&mut self, hook: &Hook, report: &KillReport) -> bool {
        match self.tx.try_send((hook.clone(), report.clone())) {
            Ok(()) => true,
            Err(_) => {
                self.dropped += 1;
                warn!(
                    pid = report.pid,
                    dropped = self.dropped,
                    queue = HOOK_QUEUE,
                    "post-kill hook queue full: this run is dropped"
                );
                false
            }
        }
    }
}

/// Runs one hook to its end or its timeout.
async fn run_hook(hook: &Hook, report: &KillReport) -> HookEnd {
    let Some(program) = hook.command.first() else {
        // The policy check refuses an empty command; nothing to run.
        return HookEnd::NotStarted;
    };
    let mut child = match command(hook, report).and_then(|mut c| c.spawn()) {
        Ok(c) => c,
        Err(e) => {
            warn!(%program, error = %e, "post-kill hook could not start");
            return HookEnd::NotStarted;
        }
    };
    // Its process group is its own pid (see `command`).
    let group = child.id().and_then(|id| i32::try_from(id).ok());
    match tokio::time::timeout(hook.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => HookEnd::Succeeded,
        Ok(Ok(status)) => {
            warn!(%program, %status, "post-kill hook failed");
            HookEnd::Failed
        }
        Ok(Err(e)) => {
            warn!(%program, error = %e, "waiting for the post-kill hook failed");
            HookEnd::Failed
        }
        Err(_) => {
            warn!(%program, timeout_ms = hook.timeout.as_millis() as u64,
                "post-kill hook timed out; its process group was killed");
            if let Some(pgid) = group {
                // SAFETY: kill(2) with a negative pid signals that process
                // group; the group is the hook's own, made at its start.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.kill().await;
            HookEnd::TimedOut
        }
    }
}

/// The hook's command: clean environment, own process group, and the
/// privileges dropped between fork and exec.
fn command(hook: &Hook, report: &KillReport) -> io::Result<tokio::process::Command> {
    let (program, args) = hook
        .command
        .split_first()
        .ok_or_else(|| io::Error::other("empty hook command"))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("GUARD_PID", report.pid.to_string())
        .env("GUARD_COMM", &report.comm)
        .env("GUARD_CGROUP", &report.cgroup)
        .env("GUARD_FOOTPRINT_BYTES", report.footprint.to_string());
    // Whose the victim was, where it could be read: absent variables, not
    // empty ones, when not.
    if let Some(owner) = &report.owner {
        cmd.env("GUARD_UID", owner.uid.to_string());
        if let Some(user) = &owner.user {
            cmd.env("GUARD_USER", user);
        }
        if let Some(unit) = &owner.unit {
            cmd.env("GUARD_UNIT", unit);
        }
    }
    cmd.stdin(Stdio::null()).current_dir("/").process_group(0);
    let oom_adj = CString::new("/proc/self/oom_score_adj").map_err(io::Error::other)?;
    let user = hook.user;
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only async-signal-safe system calls on memory prepared before the
    // fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || drop_privileges(&oom_adj, user));
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    Ok(cmd)
}

/// In the hook's child, before exec: oom_score_adj 0 and nice 0 (raising
/// both needs no privilege), the user if one is set, then no capabilities
/// at all, with no_new_privs so that exec grants none back (not even to
/// uid 0).
fn drop_privileges(oom_adj: &CString, user: Option<(u32, u32)>) -> io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path and a static buffer.
    unsafe {
        let fd = libc::open(oom_adj.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            return Err(io::Error::last_os_error());
        }
        libc::close(fd);
    }
    rustix::process::setpriority_process(None, 0)?;
    if let Some((uid, gid)) = user {
        // SAFETY: plain system calls; an empty group list needs no pointer.
        let failed = unsafe {
            libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
        };
        if failed {
            return Err(io::Error::last_os_error());
        }
    }
    rustix::thread::set_no_new_privs(true)?;
    rustix::thread::clear_ambient_capability_set()?;
    let none = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{fs, time::Duration};

    use super::*;

    fn report() -> KillReport {
        KillReport {
            pid: 4242,
            comm: "hog".into(),
            cgroup: "/seed".into(),
            footprint: 70 << 20,
            owner: Some(crate::owner::Owner {
                uid: 1001,
                user: Some("alice".into()),
                unit: Some("hog.service".into()),
            }),
            ..KillReport::default()
        }
    }

    fn hook(command: &[&str], timeout_ms: u64) -> Hook {
        Hook {
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
            user: None,
        }
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Runs one hook through a runner; how it ended.
    async fn run_one(h: &Hook) -> HookEnd {
        let (ends_tx, mut ends) = mpsc::unbounded_channel();
        let (mut runner, _task) = HookRunner::start(Some(ends_tx));
        assert!(runner.submit(h, &report()));
        ends.recv().await.expect("an end")
    }

    #[tokio::test]
    async fn the_hook_gets_the_victim_and_nothing_of_the_daemon() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("env");
        let script = format!(
            "/usr/bin/env > {0}; grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status >> {0}; \
             echo adj=$(cat /proc/self/oom_score_adj) nice=$(cut -d' ' -f19 /proc/self/stat) >> {0}",
            out.display()
        );
        // What the daemon has that the hook must not: a low oom_score_adj
        // and a negative nice (this thread's, which the hook forks from).
        // Both need CAP_SYS_RESOURCE / CAP_SYS_NICE; without them the hook
        // starts at 0 anyway and only the reset itself is exercised.
        let adj_before = fs::read_to_string("/proc/self/oom_score_adj").expect("read");
        let lowered = fs::write("/proc/self/oom_score_adj", "-100").is_ok();
        let niced = rustix::process::setpriority_process(None, -5).is_ok();
        if !(lowered && niced) {
            eprintln!("note: oom_score_adj lowered {lowered}, nice lowered {niced} (no privilege)");
        }
        let end = run_one(&hook(&["/bin/sh", "-c", &script], 5000)).await;
        if lowered {
            fs::write("/proc/self/oom_score_adj", adj_before.trim()).expect("restore");
        }
        if niced {
            rustix::process::setpriority_process(None, 0).expect("restore nice");
        }
        assert_eq!(end, HookEnd::Succeeded);
        let text = fs::read_to_string(&out).expect("hook wrote its environment");
        for want in [
            "GUARD_PID=4242",
            "GUARD_COMM=hog",
            "GUARD_CGROUP=/seed",
            &format!("GUARD_FOOTPRINT_BYTES={}", 70u64 << 20),
            "GUARD_UID=1001",
            "GUARD_USER=alice",
            "GUARD_UNIT=hog.service",
            &format!("PATH={PATH}"),
            "CapInh:\t0000000000000000",
            "CapPrm:\t0000000000000000",
            "CapEff:\t0000000000000000",
            "CapAmb:\t0000000000000000",
            "adj=0 nice=0",
        ] {
            assert!(text.lines().any(|l| l == want), "{want:?} not in:\n{text}");
        }
        // cargo's own variables, which this test process has, are gone.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        assert!(!text.contains("CARGO_"), "{text}");
    }

    #[tokio::test]
    async fn a_hook_that_outlives_its_timeout_dies_with_its_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let script = format!("/bin/sleep 30 & echo $! > {}; wait", pidfile.display());
        let started = std::time::Instant::now();
        assert_eq!(
            run_one(&hook(&["/bin/sh", "-c", &script], 300)).await,
            HookEnd::TimedOut
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = fs::read_to_string(&pidfile)
            .expect("the hook's child wrote its pid")
            .trim()
            .parse()
            .expect("a pid");
        // Reaped by init soon after its SIGKILL: gone, or a zombie.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let dead = loop {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(dead, "the hook's own child {pid} outlived the timeout");
    }

    #[tokio::test]
    async fn hooks_run_one_at_a_time_and_a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let script = format!(
            "echo start >> {0}; /bin/sleep 0.2; echo end >> {0}",
            log.display()
        );
        let h = hook(&["/bin/sh", "-c", &script], 5000);
        let (ends_tx, mut ends) = mpsc::unbounded_channel();
        let (mut runner, _task) = HookRunner::start(Some(ends_tx));
        let asked = HOOK_QUEUE + 5;
        let queued = (0..asked).filter(|_| runner.submit(&h, &report())).count();
        assert_eq!(queued as u64 + runner.dropped, asked as u64);
        // One may already be running, so the queue took 16 or 17.
        assert!((HOOK_QUEUE..=HOOK_QUEUE + 1).contains(&queued), "{queued}");
        for _ in 0..queued {
            assert_eq!(ends.recv().await, Some(HookEnd::Succeeded));
        }
        let text = fs::read_to_string(&log).expect("log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 * queued);
        assert!(
            lines.chunks(2).all(|p| p == ["start", "end"]),
            "two hooks overlapped:\n{text}"
        );
    }

    #[tokio::test]
    async fn a_missing_hook_program_is_reported() {
        assert_eq!(
            run_one(&hook(&["/nonexistent/guard-hook"], 1000)).await,
            HookEnd::NotStarted
        );
    }

    #[tokio::test]
    async fn a_hook_can_run_as_another_user() {
        if !is_root() {
            eprintln!("SKIPPED: only root can start a hook as another user");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("id");
        std::os::unix::fs::chown(dir.path(), Some(65_534), Some(65_534)).expect("chown");
        let script = format!("/usr/bin/id -u > {0}; /usr/bin/id -g >> {0}", out.display());
        let mut h = hook(&["/bin/sh", "-c", &script], 5000);
        h.user = Some((65_534, 65_534));
        assert_eq!(run_one(&h).await, HookEnd::Succeeded);
        assert_eq!(fs::read_to_string(&out).expect("id"), "65534\n65534\n");
    }
}
