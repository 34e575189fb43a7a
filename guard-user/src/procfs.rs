//! What the policy needs to know about a process, read from /proc.
//!
//! Five fields from three small files; parsing is split from reading so it
//! can be tested on fixtures.

use std::{fs, io, path::Path};

/// `PF_KTHREAD` in /proc/PID/stat's flags field.
const PF_KTHREAD: u64 = 0x0020_0000;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process exited (or its pid was never there): not an error for the
    /// caller to report loudly, the process simply is no candidate.
    #[error("process {0} is gone")]
    Gone(u32),
    #[error("reading /proc/{pid}/{file}: {source}")]
    Io {
        pid: u32,
        file: &'static str,
        source: io::Error,
    },
    #[error("/proc/{pid}/{file} is malformed: {what}")]
    Malformed {
        pid: u32,
        file: &'static str,
        what: &'static str,
    },
}

/// One thread group, as the victim policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    /// Anonymous resident memory plus swap, bytes: what a kill gives back.
    pub footprint: u64,
    pub oom_score_adj: i32,
    pub kernel_thread: bool,
    /// Start time in clock ticks since boot; with the pid it names one
    /// process for good, so a reused pid is never mistaken for the old one.
    pub start_time: u64,
    /// Process group, for the process-group kill mode.
    pub pgrp: u32,
    /// Arguments joined by single spaces (empty for kernel threads).
    pub cmdline: String,
    /// Its cgroup v2 path, filled in by the caller that listed it.
    pub cgroup: String,
}

/// Fields of /proc/PID/status.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub uid: u32,
    pub rss_anon_kib: u64,
    pub swap_kib: u64,
}

pub fn parse_status(text: &str) -> Option<Status> {
    let mut status = Status::default();
    let mut have_name = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => {
                status.name = value.to_owned();
                have_name = true;
            }
            // Real, effective, saved, filesystem: the real uid owns it.
            "Uid" => status.uid = value.split_whitespace().next()?.parse().ok()?,
            "RssAnon" => status.rss_anon_kib = kib(value)?,
            "VmSwap" => status.swap_kib = kib(value)?,
            _ => {}
        }
    }
    have_name.then_some(status)
}

fn kib(value: &str) -> Option<u64> {
    value.split_whitespace().next()?.parse().ok()
}

/// Fields of /proc/PID/stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pgrp: u32,
    pub flags: u64,
    pub start_time: u64,
}

pub fn parse_stat(text: &str) -> Option<Stat> {
    // The command name sits in parentheses and may itself contain spaces or
    // parentheses, so the fields are counted from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3 of the man page, pgrp 5, flags 9,
    // starttime 22.
    let pgrp = fields.nth(5 - 3)?.parse().ok()?;
    let flags = fields.nth(9 - 5 - 1)?.parse().ok()?;
    let start_time = fields.nth(22 - 9 - 1)?.parse().ok()?;
    Some(Stat {
        pgrp,
        flags,
        start_time,
    })
}

/// /proc/PID/cmdline: NUL-separated arguments, joined by spaces.
pub fn parse_cmdline(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.trim_end_matches('\0').replace('\0', " ")
}

pub fn parse_oom_score_adj(text: &str) -> Option<i32> {
    text.trim().parse().ok()
}

fn read(proc_root: &Path, pid: u32, file: &'static str) -> Result<String, ProcError> {
    fs::read_to_string(proc_root.join(pid.to_string()).join(file)).map_err(|source| {
        match source.kind() {
            io::ErrorKind::NotFound => ProcError::Gone(pid),
            // ESRCH: the process died while the file was being read.
            _ if source.raw_os_error() == Some(libc::ESRCH) => ProcError::Gone(pid),
            _ => ProcError::Io { pid, file, source },
        }
    })
}

/// Start time of `pid`, to check after `pidfd_open` that the pid still
/// names the process the policy chose.
pub fn start_time(proc_root: &Path, pid: u32) -> Result<u64, ProcError> {
    let stat = read(proc_root, pid, "stat")?;
    let stat = parse_stat(&stat).ok_or(ProcError::Malformed {
        pid,
        file: "stat",
        what: "no pgrp/flags/starttime fields",
    })?;
    Ok(stat.start_time)
}

/// Reads one process from `proc_root` (normally /proc).
pub fn process(proc_root: &Path, pid: u32) -> Result<ProcessInfo, ProcError> {
    let stat = read(proc_root, pid, "stat")?;
    let stat = parse_stat(&stat).ok_or(ProcError::Malformed {
        pid,
        file: "stat",
        what: "no pgrp/flags/starttime fields",
    })?;
    let status = parse_status(&read(proc_root, pid, "status")?).ok_or(ProcError::Malformed {
        pid,
        file: "status",
        what: "no Name line",
    })?;
    let oom_score_adj = parse_oom_score_adj(&read(proc_root, pid, "oom_score_adj")?).ok_or(
        ProcError::Malformed {
            pid,
            file: "oom_score_adj",
            what: "not an integer",
        },
    )?;
    let cmdline = match fs::read(proc_root.join(pid.to_string()).join("cmdline")) {
        Ok(raw) => parse_cmdline(&raw),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ProcError::Gone(pid)),
        Err(_) => String::new(),
    };
    Ok(ProcessInfo {
        pid,
        cmdline,
        cgroup: String::new(),
        comm: status.name,
        uid: status.uid,
        footprint: (status.rss_anon_kib + status.swap_kib) * 1024,
        oom_score_adj,
        kernel_thread: stat.flags & PF_KTHREAD != 0,
        start_time: stat.start_time,
        pgrp: stat.pgrp,
    })
}

/// MemTotal and MemAvailable of /proc/meminfo, bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some((kib("MemTotal:")?, kib("MemAvailable:")?))
}

/// Every process id in `proc_root`, in no particular order.
pub fn pids(proc_root: &Path) -> io::Result<Vec<u32>> {
    Ok(fs::read_dir(proc_root)?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_gives_total_and_available_in_bytes() {
        let text = "MemTotal:         512000 kB\nMemFree:           10000 kB\n\
                    MemAvailable:      20480 kB\nBuffers:              0 kB\n";
        assert_eq!(parse_meminfo(text), Some((512_000 * 1024, 20 << 20)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    const STATUS: &str = "Name:\thog\nUmask:\t0022\nState:\tD (disk sleep)\nTgid:\t812\n\
        Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n\
        VmRSS:\t   76044 kB\nRssAnon:\t   75520 kB\nRssFile:\t     524 kB\n\
        RssShmem:\t       0 kB\nVmSwap:\t    2048 kB\nThreads:\t1\n";

    // A command name with a space and a parenthesis, as a process may set.
    const STAT: &str = "812 (my (hog) x) D 700 812 700 0 -1 4194560 18000 0 0 0 \
        120 30 0 0 20 0 1 0 3456 104857600 19000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";

    #[test]
    fn status_gives_name_uid_and_anon_footprint() {
        let s = parse_status(STATUS).expect("parses");
        assert_eq!(s.name, "hog");
        assert_eq!(s.uid, 1000);
        assert_eq!(s.rss_anon_kib, 75520);
        assert_eq!(s.swap_kib, 2048);
    }

    #[test]
    fn kernel_thread_status_has_no_memory_lines() {
        let s = parse_status("Name:\tkswapd0\nUid:\t0\t0\t0\t0\n").expect("parses");
        assert_eq!((s.rss_anon_kib, s.swap_kib), (0, 0));
    }

    #[test]
    fn status_without_name_is_rejected() {
        assert_eq!(parse_status("Uid:\t0\t0\t0\t0\n"), None);
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        assert_eq!(
            parse_stat(STAT),
            Some(Stat {
                pgrp: 812,
                flags: 4194560,
                start_time: 3456
            })
        );
    }

    #[test]
    fn truncated_stat_is_rejected() {
        assert_eq!(parse_stat("812 (hog) D 700"), None);
    }

    #[test]
    fn cmdline_arguments_are_joined_by_spaces() {
        assert_eq!(
            parse_cmdline(b"ugrep\0-r\0needle\0/\0"),
            "ugrep -r needle /"
        );
        assert_eq!(parse_cmdline(b""), "");
    }

    fn fake_proc(pid: u32, stat: &str, status: &str, adj: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(pid.to_string());
        fs::create_dir(&p).expect("mkdir");
        fs::write(p.join("stat"), stat).expect("write");
        fs::write(p.join("status"), status).expect("write");
        fs::write(p.join("oom_score_adj"), adj).expect("write");
        fs::write(p.join("cmdline"), b"hog\0--mib\0x64\0").expect("write");
        dir
    }

    #[test]
    fn process_combines_the_three_files() {
        let root = fake_proc(812, STAT, STATUS, "-500\n");
        let p = process(root.path(), 812).expect("reads");
        assert_eq!(p.comm, "hog");
        assert_eq!(p.footprint, (75520 + 2048) * 1024);
        assert_eq!(p.oom_score_adj, -500);
        assert!(!p.kernel_thread);
        assert_eq!(p.start_time, 3456);
        assert_eq!(p.pgrp, 812);
        assert_eq!(p.cmdline, "hog --mib x64");
    }

    #[test]
    fn kernel_threads_are_recognised_by_their_flag() {
        let stat = STAT.replace("4194560", &(4194560u64 | PF_KTHREAD).to_string());
        let root = fake_proc(812, &stat, STATUS, "0");
        assert!(process(root.path(), 812).expect("reads").kernel_thread);
    }

    #[test]
    fn a_vanished_process_is_gone_not_an_io_error() {
        let root = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            process(root.path(), 4242),
            Err(ProcError::Gone(4242))
        ));
    }
}
