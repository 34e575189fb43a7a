//! Killing one process without a pid-reuse race, and reaping its memory at
//! once: pidfd_open, a start-time check, pidfd_send_signal(SIGKILL),
//! process_mrelease.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use rustix::{
    event::{PollFd, PollFlags, poll},
    process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal},
};

use crate::procfs::{ProcError, ProcFs};

#[derive(Debug, thiserror::Error)]
pub enum KillError {
    #[error("process {0} exited before it could be killed")]
    Gone(u32),
    #[error("pid {0} now names another process (the victim exited and the pid was reused)")]
    Reused(u32),
    #[error("{what} for pid {pid}: {source}")]
    Sys {
        what: &'static str,
        pid: u32,
        source: io::Error,
    },
    #[error(transparent)]
    Proc(#[from] ProcError),
}

/// A process pinned by a pidfd: signals can only ever reach this process.
#[derive(Debug)]
pub struct Victim {
    pub pid: u32,
    pidfd: OwnedFd,
}

impl Victim {
    /// Pins `pid`, checking that it is still the process that started at
    /// `start_time` (the one the policy chose).
    pub fn pin(procfs: &mut ProcFs, pid: u32, start_time: u64) -> Result<Self, KillError> {
        let raw = Pid::from_raw(pid as i32).ok_or(KillError::Gone(pid))?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).map_err(|e| match e {
            rustix::io::Errno::SRCH => KillError::Gone(pid),
            e => KillError::Sys {
                what: "pidfd_open",
                pid,
                source: e.into(),
            },
        })?;
        // The pidfd now refers to whatever process holds `pid`; if that is
        // not the one we chose, the chosen one is gone.
        match procfs.start_time(pid) {
            Ok(t) if t == start_time => Ok(Self { pid, pidfd }),
            Ok(_) => Err(KillError::Reused(pid)),
            Err(ProcError::Gone(_)) => Err(KillError::Gone(pid)),
            Err(e) => Err(e.into()),
        }
    }

    /// SIGKILL through the pidfd.
    pub fn kill(&self) -> Result<(), KillError> {
        pidfd_send_signal(self.pidfd.as_fd(), Signal::KILL).map_err(|e| match e {
            rustix::io::Errno::SRCH => KillError::Gone(self.pid),
            e => KillError::Sys {
                what: "pidfd_send_signal",
                pid: self.pid,
                source: e.into(),
            },
        })
    }

    /// Signal 0 through the pidfd: checks that it could be signalled,
    /// sends nothing (the daemon's warm-up, so the first real kill does not
    /// pay for the first use of the path).
    pub fn probe(&self) -> Result<(), KillError> {
        // SAFETY: pidfd_send_signal(2) with signal 0 and a null siginfo
        // sends nothing and reads no user memory; the fd is owned and open
        // for the whole call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(KillError::Sys {
                what: "pidfd_send_signal(0)",
                pid: self.pid,
                source: io::Error::last_os_error(),
            })
        }
    }

    /// Frees the dying victim's private memory now instead of when its
    /// last thread has left the kernel (which, throttled, may take seconds).
    pub fn release_memory(&self) -> Result<(), KillError> {
        // SAFETY: process_mrelease(2) takes a pidfd and a flags word, reads
        // no user memory, and the fd is owned and open for the whole call.
        let rc = unsafe { libc::syscall(libc::SYS_process_mrelease, self.pidfd.as_raw_fd(), 0) };
        if rc == 0 {
            return Ok(());
        }
        let source = io::Error::last_os_error();
        match source.raw_os_error() {
            // Already reaped, or exited and its memory is gone.
            Some(libc::ESRCH) => Ok(()),
            _ => Err(KillError::Sys {
                what: "process_mrelease",
                pid: self.pid,
                source,
            }),
        }
    }

    /// Whether the process has exited (its pidfd polls readable: every
    /// thread of it is gone).
    pub fn exited(&self) -> bool {
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }
}

impl AsFd for Victim {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

/// For registering with the event loop, which wakes when the victim exits.
impl AsRawFd for Victim {
    fn as_raw_fd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn procfs() -> ProcFs {
        ProcFs::new("/proc")
    }

    fn child() -> std::process::Child {
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep")
    }

    #[test]
    fn kills_our_own_child_and_sees_it_exit() {
        let mut c = child();
        let pid = c.id();
        let start = procfs().start_time(pid).expect("start");
        let v = Victim::pin(&mut procfs(), pid, start).expect("pin");
        assert!(!v.exited());
        v.kill().expect("kill");
        let status = c.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(v.exited());
    }

    #[test]
    fn a_probe_signals_nothing() {
        let mut c = child();
        let pid = c.id();
        let start = procfs().start_time(pid).expect("start");
        let v = Victim::pin(&mut procfs(), pid, start).expect("pin");
        v.probe().expect("signal 0 is allowed");
        assert!(c.try_wait().expect("try_wait").is_none(), "still alive");
        c.kill().expect("cleanup");
        c.wait().expect("reap");
        assert!(v.probe().is_err(), "a reaped process cannot be signalled");
    }

    #[test]
    fn a_different_start_time_means_the_pid_was_reused() {
        let mut c = child();
        let pid = c.id();
        let start = procfs().start_time(pid).expect("start");
        let err = Victim::pin(&mut procfs(), pid, start + 1).expect_err("must refuse");
        assert!(matches!(err, KillError::Reused(p) if p == pid), "{err}");
        // And the process that now holds the pid was not touched.
        assert!(c.try_wait().expect("try_wait").is_none());
        c.kill().expect("cleanup");
        c.wait().expect("reap");
    }

    #[test]
    fn a_vanished_process_is_reported_gone() {
        let mut c = child();
        let pid = c.id();
        let start = procfs().start_time(pid).expect("start");
        c.kill().expect("kill");
        c.wait().expect("reap");
        let err = Victim::pin(&mut procfs(), pid, start).expect_err("gone");
        assert!(matches!(err, KillError::Gone(p) if p == pid), "{err}");
    }
}
