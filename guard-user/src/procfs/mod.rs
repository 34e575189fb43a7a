//! What the decision needs to know about a process, read from /proc.
//!
//! Everything is read as bytes: a process may name itself with any bytes,
//! and one that cannot be parsed as text must still be seen (and killed).
//! Reads go through one reused buffer, and the files read per process are
//! few and small: `status` for every candidate, the others (`stat`,
//! `oom_score_adj`, `exe`, `cmdline`, `maps`) only for the processes a
//! decision has to look at. Parsing is split from reading so it can be
//! tested on fixtures.

use std::{
    borrow::Cow,
    fmt::{self, Write as _},
    fs,
    io::{self, Read as _},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// `PF_KTHREAD` in /proc/PID/stat's flags field.
const PF_KTHREAD: u64 = 0x0020_0000;
/// The most of a command line that is ever read: rules match its start.
pub const CMDLINE_CAP: usize = 4096;
/// The most of /proc/PID/maps read to tell what a process's shared memory
/// is; a process with more mappings than fit gets no credit for it.
const MAPS_CAP: usize = 64 << 10;
/// Longest task name kept: 15 bytes for user tasks, longer for kernel
/// threads (workqueue names).
const COMM_CAP: usize = 64;

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

/// A task name as the kernel keeps it: bytes, not necessarily UTF-8, kept
/// inline so that a candidate costs no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; COMM_CAP],
    len: u8,
}

impl Default for Comm {
    fn default() -> Self {
        Self {
            bytes: [0; COMM_CAP],
            len: 0,
        }
    }
}

impl Comm {
    pub fn new(raw: &[u8]) -> Self {
        let mut c = Self::default();
        let n = raw.len().min(COMM_CAP);
        c.bytes[..n].copy_from_slice(&raw[..n]);
        c.len = n as u8;
        c
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The name as text; bytes that are not UTF-8 show as U+FFFD.
    pub fn lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lossy())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.lossy())
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes())
    }
}

/// Fields of /proc/PID/status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub name: Comm,
    /// The state letter: R, S, D, Z, ...
    pub state: u8,
    pub uid: u32,
    pub rss_anon_kib: u64,
    pub rss_shmem_kib: u64,
    pub swap_kib: u64,
    /// False when the task has no memory of its own: a kernel thread, a
    /// process that is exiting, or a thread-group leader that exited while
    /// its other threads live on.
    pub has_mm: bool,
    /// The `Kthread:` line (6.x kernels from about 6.9); None when absent.
    pub kthread: Option<bool>,
    pub threads: u32,
}

/// The `Name:` value with the kernel's escapes (`\n`, `\\`) undone.
fn unescape_name(raw: &[u8]) -> Comm {
    let mut out = [0u8; COMM_CAP];
    let mut n = 0;
    let mut i = 0;
    while i < raw.len() && n < COMM_CAP {
        let b = match (raw[i], raw.get(i + 1)) {
            (b'\\', Some(b'n')) => {
                i += 1;
                b'\n'
            }
            (b'\\', Some(b'\\')) => {
                i += 1;
                b'\\'
            }
            (b, _) => b,
        };
        out[n] = b;
        n += 1;
        i += 1;
    }
    Comm::new(&out[..n])
}

fn number<T: std::str::FromStr>(raw: &[u8]) -> Option<T> {
    std::str::from_utf8(raw).ok()?.trim().parse().ok()
}

/// The leading number of a value such as "  75520 kB".
fn kib(raw: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(raw).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

pub fn parse_status(text: &[u8]) -> Option<Status> {
    let mut status = Status::default();
    let mut have_name = false;
    for line in text.split(|&b| b == b'\n') {
        // The name is taken exactly as written after "Name:\t": a leading
        // space is part of it, not padding.
        if let Some(name) = line.strip_prefix(b"Name:\t") {
            status.name = unescape_name(name);
            have_name = true;
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        match key {
            b"State" => {
                status.state = value
                    .iter()
                    .copied()
                    .find(|b| !b.is_ascii_whitespace())
                    .unwrap_or(b'?')
            }
            // Real, effective, saved, filesystem: the real uid owns it.
            b"Uid" => status.uid = number(value.split(|&b| b == b'\t').nth(1)?)?,
            b"VmRSS" => status.has_mm = true,
            b"RssAnon" => status.rss_anon_kib = kib(value)?,
            b"RssShmem" => status.rss_shmem_kib = kib(value)?,
            b"VmSwap" => status.swap_kib = kib(value)?,
            b"Kthread" => status.kthread = Some(number::<u32>(value)? != 0),
            b"Threads" => status.threads = number(value)?,
            _ => {}
        }
    }
    have_name.then_some(status)
}

/// Fields of /proc/PID/stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The name between the parentheses, raw.
    pub comm: Comm,
    pub state: u8,
    pub pgrp: u32,
    pub flags: u64,
    pub start_time: u64,
}

pub fn parse_stat(text: &[u8]) -> Option<Stat> {
    // The command name sits in parentheses and may itself contain spaces,
    // parentheses or bytes that are not UTF-8, so the fields are counted
    // from the last ')'.
    let close = text.iter().rposition(|&b| b == b')')?;
    let open = text
        .iter()
        .position(|&b| b == b'(')
        .filter(|&o| o < close)?;
    let comm = Comm::new(&text[open + 1..close]);
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3 of the man page, pgrp 5, flags 9,
    // starttime 22.
    let state = *fields.next()?.as_bytes().first()?;
    let pgrp = fields.nth(5 - 4)?.parse().ok()?;
    let flags = fields.nth(9 - 5 - 1)?.parse().ok()?;
    let start_time = fields.nth(22 - 9 - 1)?.parse().ok()?;
    Some(Stat {
        comm,
        state,
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

/// Whether the shared memory a process maps (RssShmem) goes away with it,
/// from its /proc/PID/maps: memfd and shared anonymous mappings do, when
/// nothing else holds them; a file on tmpfs or a SysV segment outlives the
/// process. True only when every shared mapping of the first kind.
pub fn shmem_dies_with(maps: &[u8]) -> bool {
    let mut any = false;
    for line in maps.split(|&b| b == b'\n') {
        let Some((perms, path)) = maps_line(line) else {
            continue;
        };
        if perms.get(3) != Some(&b's') {
            continue;
        }
        let dies = path.starts_with(b"/memfd:")
            || path == b"/dev/zero (deleted)"
            // A SysV segment marked for removal goes with its last user.
            || (path.starts_with(b"/SYSV") && path.ends_with(b" (deleted)"));
        if !dies {
            return false;
        }
        any = true;
    }
    any
}

/// The permissions and the path of a /proc/PID/maps line
/// ("start-end perms offset dev inode   path"); the path may hold spaces.
fn maps_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut rest = line;
    let mut fields: [&[u8]; 5] = [&[]; 5];
    for f in &mut fields {
        rest = rest.trim_ascii_start();
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        *f = &rest[..end];
        rest = &rest[end..];
    }
    (!fields[4].is_empty()).then(|| (fields[1], rest.trim_ascii()))
}

/// /proc/PID/statm, in pages: the cheapest look at a process's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statm {
    /// 0 for a process without memory of its own (a kernel thread, an
    /// exiting one, a leader that exited before its threads).
    pub size: u64,
    /// Anonymous + file-backed + shared memory resident.
    pub resident: u64,
    /// File-backed + shared memory resident.
    pub shared: u64,
}

impl Statm {
    /// Anonymous memory resident (RssAnon), pages.
    pub fn anon(&self) -> u64 {
        self.resident.saturating_sub(self.shared)
    }
}

pub fn parse_statm(text: &[u8]) -> Option<Statm> {
    let text = std::str::from_utf8(text).ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some(Statm {
        size: f.next()??,
        resident: f.next()??,
        shared: f.next()??,
    })
}

/// The executable a process runs, and whether it is the very file guard
/// sees at that path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exe {
    /// The path /proc/PID/exe names, without a " (deleted)" suffix.
    pub path: String,
    /// Replaced or removed since the process started (a package upgrade).
    pub deleted: bool,
    /// Owned by root and writable by nobody else: installed by root.
    pub root_owned: bool,
    /// The file at `path` in guard's own view of the file system is the
    /// file the process runs (same device and inode). A process in another
    /// mount namespace (a container, a user's own namespace) can make its
    /// exe read as any path; it cannot make it this file.
    pub same_file: bool,
}

impl Exe {
    /// What a `[protect] exe` rule may trust: the path names this file, or
    /// (after an upgrade replaced it) a file root installed.
    pub fn trusted(&self) -> bool {
        self.root_owned && (self.same_file || self.deleted)
    }
}

/// A readable process as the decision sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: Comm,
    pub uid: u32,
    /// What killing it gives back, bytes: anonymous memory, swap, and the
    /// shared memory that dies with it (memfd, shared anonymous).
    pub footprint: u64,
    pub kernel_thread: bool,
    /// A thread other than the leader, when the leader has exited and the
    /// memory (and the executable) are only visible through it.
    pub via_thread: Option<u32>,
}

/// Reads /proc files of one process at a time through one reused buffer.
pub struct ProcFs {
    root: PathBuf,
    buf: Vec<u8>,
    path: String,
    /// Files of processes read so far (the kill path's work, for tests).
    reads: u64,
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            path: String::with_capacity(root.as_os_str().len() + 64),
            root,
            buf: Vec::with_capacity(MAPS_CAP),
            reads: 0,
        }
    }

    /// How many per-process files were read so far.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn set_path(&mut self, pid: u32, tid: Option<u32>, file: &str) {
        self.path.clear();
        // Writing to a String cannot fail.
        let _ = write!(self.path, "{}/{pid}", self.root.display());
        if let Some(tid) = tid {
            let _ = write!(self.path, "/task/{tid}");
        }
        if !file.is_empty() {
            let _ = write!(self.path, "/{file}");
        }
    }

    fn map_err(pid: u32, file: &'static str, source: io::Error) -> ProcError {
        match source.kind() {
            io::ErrorKind::NotFound => ProcError::Gone(pid),
            // ESRCH: the process died while the file was being read.
            _ if source.raw_os_error() == Some(libc::ESRCH) => ProcError::Gone(pid),
            _ => ProcError::Io { pid, file, source },
        }
    }

    /// Reads at most `cap` bytes of a /proc file into the buffer.
    fn read(
        &mut self,
        pid: u32,
        tid: Option<u32>,
        file: &'static str,
        cap: usize,
    ) -> Result<&[u8], ProcError> {
        self.set_path(pid, tid, file);
        self.reads += 1;
        read_small(Path::new(&self.path), &mut self.buf, cap)
            .map_err(|e| Self::map_err(pid, file, e))?;
        Ok(&self.buf)
    }

    pub fn status(&mut self, pid: u32, tid: Option<u32>) -> Result<Status, ProcError> {
        let text = self.read(pid, tid, "status", MAPS_CAP)?;
        parse_status(text).ok_or(ProcError::Malformed {
            pid,
            file: "status",
            what: "no Name line",
        })
    }

    pub fn stat(&mut self, pid: u32) -> Result<Stat, ProcError> {
        let text = self.read(pid, None, "stat", 4096)?;
        parse_stat(text).ok_or(ProcError::Malformed {
            pid,
            file: "stat",
            what: "no state/pgrp/flags/starttime fields",
        })
    }

    pub fn statm(&mut self, pid: u32) -> Result<Statm, ProcError> {
        let text = self.read(pid, None, "statm", 256)?;
        parse_statm(text).ok_or(ProcError::Malformed {
            pid,
            file: "statm",
            what: "fewer than three page counts",
        })
    }

    /// The name, from /proc/PID/comm (without the newline).
    pub fn comm(&mut self, pid: u32) -> Result<Comm, ProcError> {
        let text = self.read(pid, None, "comm", 128)?;
        Ok(Comm::new(text.strip_suffix(b"\n").unwrap_or(text)))
    }

    /// Whether any swap is on: without it no process has swapped memory,
    /// and a process's footprint can be read from its statm alone.
    pub fn swap_on(&mut self) -> bool {
        self.path.clear();
        let _ = write!(self.path, "{}/swaps", self.root.display());
        match read_small(Path::new(&self.path), &mut self.buf, MAPS_CAP) {
            // A header line, then one line per swap area.
            Ok(()) => {
                self.buf
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count()
                    > 1
            }
            // Cannot tell: assume there is.
            Err(_) => true,
        }
    }

    pub fn oom_score_adj(&mut self, pid: u32) -> Result<i32, ProcError> {
        let text = self.read(pid, None, "oom_score_adj", 64)?;
        number(text).ok_or(ProcError::Malformed {
            pid,
            file: "oom_score_adj",
            what: "not an integer",
        })
    }

    /// The start of the command line, at most [`CMDLINE_CAP`] bytes.
    pub fn cmdline(&mut self, pid: u32) -> Result<String, ProcError> {
        Ok(parse_cmdline(self.read(
            pid,
            None,
            "cmdline",
            CMDLINE_CAP,
        )?))
    }

    /// The process's cgroup v2 path ("/user.slice/...").
    pub fn cgroup(&mut self, pid: u32) -> Result<String, ProcError> {
        let text = self.read(pid, None, "cgroup", 4096)?;
        let text = String::from_utf8_lossy(text);
        crate::cgroup::v2_path(&text)
            .map(str::to_owned)
            .ok_or(ProcError::Malformed {
                pid,
                file: "cgroup",
                what: "no cgroup v2 (0::) line",
            })
    }

    /// A live thread of a process whose leader has exited.
    fn live_thread(&mut self, pid: u32) -> Option<u32> {
        self.set_path(pid, None, "task");
        fs::read_dir(&self.path)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|&tid| tid != pid)
    }

    /// One process: name, owner and footprint. A leader that exited while
    /// its threads live on is read through one of those threads.
    pub fn process(&mut self, pid: u32) -> Result<Process, ProcError> {
        let mut status = self.status(pid, None)?;
        let mut via_thread = None;
        if !status.has_mm && status.state == b'Z' && status.threads > 1 {
            // Every thread shares the one address space: any live one shows
            // the whole process's memory.
            if let Some(tid) = self.live_thread(pid)
                && let Ok(t) = self.status(pid, Some(tid))
            {
                let name = status.name;
                status = t;
                status.name = name;
                via_thread = Some(tid);
            }
        }
        let kernel_thread = match (status.has_mm, status.kthread) {
            (_, Some(k)) => k,
            (true, None) => false,
            // No Kthread line (older kernels): the stat flags say it.
            (false, None) => self.stat(pid).is_ok_and(|s| s.flags & PF_KTHREAD != 0),
        };
        let mut footprint = (status.rss_anon_kib + status.swap_kib) * 1024;
        if status.rss_shmem_kib > 0 && self.shmem_is_own(pid, via_thread) {
            footprint += status.rss_shmem_kib * 1024;
        }
        Ok(Process {
            pid,
            comm: status.name,
            uid: status.uid,
            footprint,
            kernel_thread,
            via_thread,
        })
    }

    fn shmem_is_own(&mut self, pid: u32, tid: Option<u32>) -> bool {
        match self.read(pid, tid, "maps", MAPS_CAP) {
            Ok(maps) if maps.len() < MAPS_CAP => shmem_dies_with(maps),
            _ => false,
        }
    }

    /// The executable of `pid` (through `tid` when its leader has exited),
    /// with what a protection rule needs to trust it: read only when
    /// `trust_needed` says its path matters (a rule matches it), else the
    /// path alone. None for a process without one (a kernel thread, an
    /// exited one).
    pub fn exe(
        &mut self,
        pid: u32,
        tid: Option<u32>,
        trust_needed: impl Fn(&str) -> bool,
    ) -> Result<Option<Exe>, ProcError> {
        self.set_path(pid, tid, "exe");
        let link = match fs::read_link(&self.path) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::map_err(pid, "exe", e)),
        };
        let text = link.to_string_lossy();
        let (path, deleted) = match text.strip_suffix(" (deleted)") {
            Some(p) => (p.to_owned(), true),
            None => (text.into_owned(), false),
        };
        let mut exe = Exe {
            path,
            deleted,
            root_owned: false,
            same_file: false,
        };
        if !trust_needed(&exe.path) {
            return Ok(Some(exe));
        }
        // Following the link reaches the file the process runs, wherever it
        // lives, even once deleted.
        let running = fs::metadata(&self.path).map_err(|e| Self::map_err(pid, "exe", e))?;
        exe.root_owned = running.uid() == 0 && running.mode() & 0o022 == 0;
        exe.same_file = !deleted
            && fs::metadata(&exe.path)
                .is_ok_and(|m| m.dev() == running.dev() && m.ino() == running.ino());
        Ok(Some(exe))
    }

    /// Start time of `pid`, to check after `pidfd_open` that the pid still
    /// names the process the policy chose.
    pub fn start_time(&mut self, pid: u32) -> Result<u64, ProcError> {
        Ok(self.stat(pid)?.start_time)
    }

    /// The state letter of a process (R, S, D, Z...), or '?' if unreadable.
    pub fn state(&mut self, pid: u32) -> char {
        self.stat(pid).map_or('?', |s| char::from(s.state))
    }

    /// MemTotal and MemAvailable, bytes.
    pub fn meminfo(&mut self) -> Option<(u64, u64)> {
        self.path.clear();
        let _ = write!(self.path, "{}/meminfo", self.root.display());
        read_small(Path::new(&self.path), &mut self.buf, MAPS_CAP).ok()?;
        parse_meminfo(&String::from_utf8_lossy(&self.buf))
    }

    /// Every process id, in no particular order, at most `limit`.
    pub fn pids(&self, limit: usize, out: &mut Vec<u32>) -> io::Result<()> {
        out.clear();
        for e in fs::read_dir(&self.root)?.flatten() {
            if out.len() >= limit {
                break;
            }
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(pid);
            }
        }
        Ok(())
    }
}

/// Reads at most `cap` bytes of a kernel file with as few system calls as
/// it takes: open, one read when it all fits, close. (A general reader
/// first asks for the file's size, which /proc does not know, and reads
/// once more to see the end; a kernel file that returns less than was
/// asked for has no more.)
pub fn read_small(path: &Path, buf: &mut Vec<u8>, cap: usize) -> io::Result<()> {
    let mut f = fs::File::open(path)?;
    buf.clear();
    let mut chunk = 4096.min(cap);
    loop {
        let start = buf.len();
        buf.resize(start + chunk, 0);
        let n = f.read(&mut buf[start..])?;
        buf.truncate(start + n);
        if n < chunk || buf.len() >= cap {
            return Ok(());
        }
        chunk = (cap - buf.len()).min(chunk * 2);
    }
}

/// Start time of `pid` under `proc_root` (normally /proc).
pub fn start_time(proc_root: &Path, pid: u32) -> Result<u64, ProcError> {
    ProcFs::new(proc_root).start_time(pid)
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

#[cfg(test)]
mod tests;
