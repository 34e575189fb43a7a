//! `pid-reuse`: the victim exits between the guard's choice and its kill,
//! and its pid is then taken by another process.
//!
//! That window is the few microseconds between the guard reading /proc and
//! its `pidfd_open`, so the scenario makes it wide on purpose: it traces
//! the guard's system calls (ptrace) and holds the guard at the entry of
//! `pidfd_open(hog)`. While the guard is held the scenario kills and reaps
//! the hog, and then lets the guard go on:
//!
//! 1. `gone`: the pid is free; the guard must report the victim gone and
//!    kill nothing;
//! 2. `reused`: an innocent process is first started with the hog's pid
//!    (through /proc/sys/kernel/ns_last_pid) in the hog's cgroup; the
//!    guard's pidfd then names the innocent, and the start-time check must
//!    refuse it: nothing killed, the innocent alive.

use super::*;

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::new("pid-reuse", run, summary)];

fn summary(r: &Value) -> String {
    format!(
        "held at pidfd_open: gone -> {}; reused -> {}",
        r["gone_reason"].as_str().unwrap_or("-"),
        r["reused_reason"].as_str().unwrap_or("-"),
    )
}

const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
const VANISHED: &str = "victim vanished before the kill; nothing killed";

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn run(_r: &mut Report) -> Result<(), String> {
    Err("the pid-reuse scenario reads x86_64 registers".into())
}

#[cfg(target_arch = "x86_64")]
pub(super) fn run(r: &mut Report) -> Result<(), String> {
    if !Path::new(NS_LAST_PID).exists() {
        return Err(format!(
            "{NS_LAST_PID} is missing (kernel without CHECKPOINT_RESTORE)"
        ));
    }
    let cg = Cgroup::create("/reuse")?;
    cg.limit("64M", "128M")?;
    let mut guard = Guard::start(&[], &[])?;
    let threads = fs::read_dir(format!("/proc/{}/task", guard.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    r.set("guard_threads", threads);
    if threads != 1 {
        return Err(format!(
            "the guard has {threads} threads; this scenario traces one (its main thread)"
        ));
    }
    let tracer = ptrace::Tracer::seize(guard.pid() as i32)?;
    let mut rounds = Vec::new();
    for reuse in [false, true] {
        rounds.push(round(r, &guard, &tracer, &cg, reuse));
    }
    tracer.detach();
    let log = guard.stop();
    let lines = log_lines(&log);
    let kills = with_message(&lines, "killed");
    r.check(
        kills.is_empty(),
        format!(
            "the guard killed {}",
            kills
                .iter()
                .map(|k| format!("pid {} ({})", k["pid"], text(&k["comm"])))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    for (round, reuse) in rounds.into_iter().zip(["gone", "reused"]) {
        if let Err(e) = round {
            r.check(false, format!("{reuse}: {e}"));
        }
    }
    Ok(())
}

/// One round: a hog, held at the guard's pidfd_open, killed by us.
#[cfg(target_arch = "x86_64")]
fn round(
    r: &mut Report,
    guard: &Guard,
    tracer: &ptrace::Tracer,
    cg: &Cgroup,
    reuse: bool,
) -> Result<(), String> {
    let key = if reuse { "reused" } else { "gone" };
    let mut hog = cg.spawn(&["hog", "100"], Stdio::null())?;
    let hog_pid = hog.id();
    r.set(&format!("{key}_hog_pid"), hog_pid);
    let started = Instant::now();
    let mut other_pidfds = Vec::new();
    let held = loop {
        if started.elapsed() > Duration::from_secs(15) {
            end(&mut hog);
            return Err(format!(
                "the guard never opened a pidfd for the hog in 15 s (it opened {other_pidfds:?})"
            ));
        }
        match tracer.next_pidfd_open(Duration::from_millis(100))? {
            Some(pid) if pid == hog_pid => break Instant::now(),
            Some(pid) => {
                other_pidfds.push(pid);
                tracer.resume()?;
            }
            None => {}
        }
    };
    r.set(
        &format!("{key}_held_after_ms"),
        (held - started).as_millis() as u64,
    );
    // The guard is stopped inside its decision: end the victim now.
    end(&mut hog);
    let mut imposter = None;
    if reuse {
        for _ in 0..5 {
            write(NS_LAST_PID, &(hog_pid - 1).to_string())?;
            let child = cg.spawn(&["idle", "imposter"], Stdio::null())?;
            if child.id() == hog_pid {
                imposter = Some(child);
                break;
            }
            let mut other = child;
            end(&mut other);
        }
        if imposter.is_none() {
            tracer.resume()?;
            return Err(format!(
                "could not start a process with the hog's pid {hog_pid}"
            ));
        }
    }
    tracer.resume()?;
    // Keep the traced guard running until it has answered.
    let answer = loop {
        tracer.pump(Duration::from_millis(50))?;
        let lines = guard.lines();
        let found = with_message(&lines, VANISHED)
            .into_iter()
            .find(|v| number(&v["pid"]) == Some(u64::from(hog_pid)))
            .cloned();
        if found.is_some() || held.elapsed() > Duration::from_secs(5) {
            break found;
        }
    };
    let imposter_alive = match imposter.as_mut() {
        Some(c) => {
            let alive = matches!(c.try_wait(), Ok(None));
            end(c);
            Some(alive)
        }
        None => None,
    };
    let Some(v) = answer else {
        return Err(format!(
            "no {VANISHED:?} for pid {hog_pid} within 5 s of letting the guard go on"
        ));
    };
    let reason = text(&v["reason"]);
    r.set(&format!("{key}_reason"), reason.clone());
    let expect = if reuse { "reused" } else { "exited" };
    r.check(
        reason.contains(expect),
        format!("{key}: the reason {reason:?} does not say {expect:?}"),
    );
    if let Some(alive) = imposter_alive {
        r.check(alive, "the process holding the recycled pid was killed");
    }
    Ok(())
}

/// Just enough ptrace to hold the guard at one system call.
#[cfg(target_arch = "x86_64")]
mod ptrace {
    use std::{
        thread::sleep,
        time::{Duration, Instant},
    };

    const SYS_PIDFD_OPEN: u64 = 434;
    const ENOSYS: u64 = (-(libc::ENOSYS as i64)) as u64;

    pub(super) struct Tracer {
        pid: i32,
    }

    fn errno(what: &str) -> String {
        format!("{what}: {}", std::io::Error::last_os_error())
    }

    impl Tracer {
        /// Seizes `pid` and starts stopping it at every system call.
        pub(super) fn seize(pid: i32) -> Result<Self, String> {
            // SAFETY: ptrace requests on a child of ours with no memory
            // arguments (data is an options word).
            unsafe {
                if libc::ptrace(
                    libc::PTRACE_SEIZE,
                    pid,
                    0,
                    libc::PTRACE_O_TRACESYSGOOD as libc::c_long,
                ) != 0
                {
                    return Err(errno("PTRACE_SEIZE of the guard"));
                }
                if libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0) != 0 {
                    return Err(errno("PTRACE_INTERRUPT of the guard"));
                }
            }
            let t = Self { pid };
            t.wait_stop(Duration::from_secs(5))?
                .ok_or("the guard did not stop after PTRACE_INTERRUPT")?;
            t.resume()?;
            Ok(t)
        }

        /// Lets the stopped guard run to its next system-call stop.
        pub(super) fn resume(&self) -> Result<(), String> {
            self.resume_with(0)
        }

        fn resume_with(&self, sig: i32) -> Result<(), String> {
            // SAFETY: as above; data is the signal to deliver.
            if unsafe { libc::ptrace(libc::PTRACE_SYSCALL, self.pid, 0, sig as libc::c_long) } != 0
            {
                return Err(errno("PTRACE_SYSCALL"));
            }
            Ok(())
        }

        /// The next stop within `limit`: Some(status) when stopped.
        fn wait_stop(&self, limit: Duration) -> Result<Option<i32>, String> {
            let started = Instant::now();
            loop {
                let mut status = 0;
                // SAFETY: waitpid with a valid out pointer.
                let rc =
                    unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL | libc::WNOHANG) };
                if rc < 0 {
                    return Err(errno("waitpid on the traced guard"));
                }
                if rc == self.pid {
                    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                        return Err(format!("the traced guard ended (status {status:#x})"));
                    }
                    return Ok(Some(status));
                }
                if started.elapsed() >= limit {
                    return Ok(None);
                }
                sleep(Duration::from_micros(100));
            }
        }

        /// Handles stops for up to `limit`. Returns Some(pid) and leaves the
        /// guard stopped when it enters pidfd_open(pid); otherwise resumes
        /// it at every stop and returns None when the time is up.
        pub(super) fn next_pidfd_open(&self, limit: Duration) -> Result<Option<u32>, String> {
            let started = Instant::now();
            while let Some(status) = self.wait_stop(limit.saturating_sub(started.elapsed()))? {
                let sig = libc::WSTOPSIG(status);
                if sig == libc::SIGTRAP | 0x80 {
                    // SAFETY: user_regs_struct is plain data; GETREGS fills it.
                    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
                    // SAFETY: a valid out pointer for PTRACE_GETREGS.
                    if unsafe { libc::ptrace(libc::PTRACE_GETREGS, self.pid, 0, &mut regs) } != 0 {
                        return Err(errno("PTRACE_GETREGS"));
                    }
                    // At a syscall-entry stop rax holds -ENOSYS.
                    if regs.rax == ENOSYS && regs.orig_rax == SYS_PIDFD_OPEN {
                        return Ok(Some(regs.rdi as u32));
                    }
                    self.resume()?;
                } else if status >> 16 != 0 || sig == libc::SIGTRAP {
                    // An event stop (our interrupt): nothing to deliver.
                    self.resume()?;
                } else {
                    // A signal for the guard: deliver it.
                    self.resume_with(sig)?;
                }
                if started.elapsed() >= limit {
                    break;
                }
            }
            Ok(None)
        }

        /// Keeps the guard running, through all its stops, for `limit`.
        pub(super) fn pump(&self, limit: Duration) -> Result<(), String> {
            let started = Instant::now();
            while started.elapsed() < limit {
                if self
                    .next_pidfd_open(limit.saturating_sub(started.elapsed()))?
                    .is_some()
                {
                    self.resume()?;
                }
            }
            Ok(())
        }

        /// Stops tracing; the guard runs on untraced.
        pub(super) fn detach(&self) {
            // SAFETY: ptrace requests with no memory arguments.
            unsafe {
                libc::ptrace(libc::PTRACE_INTERRUPT, self.pid, 0, 0);
            }
            for _ in 0..100 {
                match self.wait_stop(Duration::from_millis(50)) {
                    Ok(Some(status)) => {
                        let sig = libc::WSTOPSIG(status);
                        let deliver = if sig == libc::SIGTRAP | 0x80
                            || sig == libc::SIGTRAP
                            || status >> 16 != 0
                        {
                            0
                        } else {
                            sig
                        };
                        // SAFETY: as above; data is the signal to deliver.
                        unsafe {
                            libc::ptrace(libc::PTRACE_DETACH, self.pid, 0, deliver as libc::c_long)
                        };
                        return;
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        }
    }
}
