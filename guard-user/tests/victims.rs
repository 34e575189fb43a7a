//! Watching victims exit: the pidfd of each victim is closed once it has
//! exited or once guard gives up waiting for it, so a daemon that kills a
//! thousand hogs holds no more descriptors than one that killed one.
//! Its own test binary: it counts this process's open descriptors, which
//! other tests running beside it would disturb.

use std::{
    fs,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use guard::{
    decision::{kill::Victim, wait_exit},
    procfs::ProcFs,
};

/// The two tests count descriptors: one at a time.
static ALONE: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn sleeper() -> (Child, Victim) {
    let child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut procfs = ProcFs::new("/proc");
    let start = procfs.start_time(child.id()).expect("start time");
    let victim = Victim::pin(&mut procfs, child.id(), start).expect("pin");
    (child, victim)
}

/// Runs `f` alone, on a runtime built before the count starts.
fn alone<F: std::future::Future<Output = ()>>(f: impl FnOnce(usize) -> F) {
    let _one = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = open_fds();
    rt.block_on(f(before));
}

#[test]
fn a_killed_victim_reports_its_exit_and_gives_its_pidfd_back() {
    alone(|before| async move { killed(before).await });
}

async fn killed(before: usize) {
    for _ in 0..50 {
        let (mut child, victim) = sleeper();
        victim.kill().expect("kill");
        let timeout = Duration::from_secs(5);
        let end = wait_exit(victim, PathBuf::from("/seed"), timeout).await;
        assert!(end.exited, "{end:?}");
        assert!(end.waited < timeout);
        assert_eq!(child.wait().expect("reap").signal(), Some(libc::SIGKILL));
    }
    assert_eq!(open_fds(), before, "50 victims watched, no descriptor kept");
}

#[test]
fn a_victim_that_does_not_exit_is_given_up_at_the_timeout() {
    alone(|before| async move { given_up(before).await });
}

async fn given_up(before: usize) {
    // A live process stands in for a victim stuck in uninterruptible
    // sleep: pinned, never signalled.
    let (mut child, victim) = sleeper();
    let end = wait_exit(victim, PathBuf::from("/seed"), Duration::from_millis(100)).await;
    assert!(!end.exited);
    assert!(end.waited >= Duration::from_millis(100));
    assert_eq!(open_fds(), before, "given up, its pidfd is closed too");
    assert!(child.try_wait().expect("try_wait").is_none(), "still alive");
    child.kill().expect("cleanup");
    child.wait().expect("reap");
}
