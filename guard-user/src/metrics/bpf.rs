//! The kernel's run-time statistics of our eBPF programs.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use aya::programs::ProgramInfo;

use super::MetricsError;

/// The kernel's run-time statistics of one of our programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfProgram {
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// Keeps the kernel's BPF run-time statistics on while it lives.
#[derive(Debug)]
#[must_use = "the statistics stop when the guard is dropped"]
pub struct BpfStatsGuard(OwnedFd);

impl AsFd for BpfStatsGuard {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Turns on run-time and run-count accounting for every eBPF program on the
/// host (two clock reads per program run) until the guard is dropped.
pub fn enable_bpf_stats() -> Result<BpfStatsGuard, MetricsError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map(BpfStatsGuard)
        .map_err(|e| MetricsError::BpfStats { source: e.io_error })
}

/// Run-time statistics of our programs, from their kernel info.
pub fn bpf_program_stats(programs: &[(String, ProgramInfo)]) -> Vec<BpfProgram> {
    programs
        .iter()
        .map(|(name, info)| BpfProgram {
            name: name.clone(),
            run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            run_count: info.run_count(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{io, time::Duration};

    use super::*;

    /// `bpf(BPF_PROG_LOAD)` of a two-instruction socket filter named
    /// `name`; its fd, or why the kernel refused.
    fn load_socket_filter(name: &str) -> Result<OwnedFd, io::Error> {
        use std::os::fd::FromRawFd as _;
        #[repr(C)]
        #[derive(Default)]
        struct ProgLoad {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
        }
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
        // r0 = 0 (keep no byte of the packet); exit.
        let insns: [u64; 2] = [0xb7, 0x95];
        let license = c"GPL";
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute of the size
        // passed; the instructions and license it points to outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoad,
                std::mem::size_of::<ProgLoad>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this new fd, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    #[test]
    fn enabled_stats_count_the_runs_of_a_program() {
        use std::os::fd::AsRawFd as _;
        let stats = match enable_bpf_stats() {
            Ok(stats) => stats,
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("CAP_SYS_ADMIN"), "{msg}");
                eprintln!("SKIP: {msg}");
                return;
            }
        };
        let name = "guard_mtest";
        let prog = match load_socket_filter(name) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("SKIP: the kernel refused a socket filter: {e}");
                return;
            }
        };
        // Its info, read afresh (the test finds it by name among the
        // host's programs; the daemon reads its own through their fds).
        let info = || {
            aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.name_as_str() == Some(name))
                .expect("our program is listed")
        };

        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let prog_fd = prog.as_raw_fd();
        // SAFETY: valid socket fd, and a pointer to an int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_BPF,
                &prog_fd as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let to = socket.local_addr().expect("addr");
        let mut found = Vec::new();
        for _ in 0..100 {
            socket.send_to(b"x", to).expect("send");
            found = bpf_program_stats(&[("socket_filter".into(), info())]);
            if found.first().is_some_and(|p| p.run_count > 0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].name, "socket_filter");
        assert!(found[0].run_count > 0, "{found:?}");
        assert!(found[0].run_time_ns > 0, "{found:?}");
        drop(stats);
    }
}
