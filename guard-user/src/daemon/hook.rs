//! The post-kill hook: the admin's own command, told who died, run in the
//! background so it never delays the next verdict.

use std::process::Stdio;

use tracing::warn;

use crate::{config::Hook, events::KillReport};

/// How a post-kill hook ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HookEnd {
    Succeeded,
    Failed,
    TimedOut,
    NotStarted,
}

/// Runs the post-kill hook in the background: it never delays the next
/// verdict, and is killed when it outlives its timeout.
pub fn spawn_hook(hook: &Hook, report: &KillReport) -> tokio::task::JoinHandle<HookEnd> {
    let Some((program, args)) = hook.command.split_first() else {
        // The policy check refuses an empty command; nothing to run.
        return tokio::spawn(async { HookEnd::NotStarted });
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("GUARD_PID", report.pid.to_string())
        .env("GUARD_COMM", &report.comm)
        .env("GUARD_CGROUP", &report.cgroup)
        .env("GUARD_FOOTPRINT_BYTES", report.footprint.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let timeout = hook.timeout;
    let program = program.clone();
    let child = cmd.spawn();
    tokio::spawn(async move {
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                warn!(%program, error = %e, "post-kill hook could not start");
                return HookEnd::NotStarted;
            }
        };
        match tokio::time::timeout(timeout, child.wait()).await {
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
                warn!(%program, timeout_ms = timeout.as_millis() as u64,
                    "post-kill hook timed out and was killed");
                let _ = child.kill().await;
                HookEnd::TimedOut
            }
        }
    })
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
            ..KillReport::default()
        }
    }

    fn hook(command: &[&str], timeout_ms: u64) -> Hook {
        Hook {
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn the_hook_gets_the_victim_in_its_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("env");
        let script = format!(
            "echo \"$GUARD_PID $GUARD_COMM $GUARD_CGROUP $GUARD_FOOTPRINT_BYTES\" > {}",
            out.display()
        );
        let end = spawn_hook(&hook(&["/bin/sh", "-c", &script], 5000), &report())
            .await
            .expect("join");
        assert_eq!(end, HookEnd::Succeeded);
        let text = fs::read_to_string(&out).expect("hook wrote its environment");
        assert_eq!(text.trim(), format!("4242 hog /seed {}", 70u64 << 20));
    }

    #[tokio::test]
    async fn a_hook_that_outlives_its_timeout_is_killed_and_does_not_block() {
        let started = std::time::Instant::now();
        let handle = spawn_hook(&hook(&["/bin/sleep", "30"], 200), &report());
        // spawn_hook itself returns at once; the wait happens in the task.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(handle.await.expect("join"), HookEnd::TimedOut);
    }

    #[tokio::test]
    async fn a_missing_hook_program_is_reported() {
        let end = spawn_hook(&hook(&["/nonexistent/guard-hook"], 1000), &report())
            .await
            .expect("join");
        assert_eq!(end, HookEnd::NotStarted);
    }
}
