//! The cgroup v2 hierarchy: is there one, which cgroups to watch, what their
//! memory files say, and which processes live below a cgroup.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "memory is managed by cgroup v1 on this host ({detail}); guard needs the unified \
         cgroup v2 hierarchy with the memory controller, because memory.high exists only there. \
         Fix: boot with `systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all` on the kernel \
         command line (Debian 11 and later use cgroup v2 by default)"
    )]
    V1 { detail: String },
    #[error(
        "the cgroup v2 hierarchy at {root} has no memory controller (cgroup.controllers: \
         {controllers:?}). Fix: enable it with `echo +memory > {root}/cgroup.subtree_control`, or \
         free it from cgroup v1 with `cgroup_no_v1=memory` on the kernel command line"
    )]
    NoMemoryController { root: PathBuf, controllers: String },
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is malformed: {what}")]
    Malformed { path: PathBuf, what: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How cgroups are mounted, from /proc/self/mountinfo.
#[derive(Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup2 mounted at the root: what the guard needs.
    Unified(PathBuf),
    /// cgroup v1 controllers at the root, cgroup2 (if any) beside them.
    Hybrid {
        unified: Option<PathBuf>,
        memory_v1: bool,
    },
}

/// Classifies the mounts under `root` (normally /sys/fs/cgroup).
pub fn layout(mountinfo: &str, root: &Path) -> Layout {
    let mut unified_at_root = false;
    let mut unified_elsewhere = None;
    let mut memory_v1 = false;
    for line in mountinfo.lines() {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mut right = right.split_whitespace();
        let fs_type = right.next().unwrap_or_default();
        let super_opts = right.nth(1).unwrap_or_default();
        let mount_point = Path::new(mount_point);
        if !mount_point.starts_with(root) {
            continue;
        }
        match fs_type {
            "cgroup2" if mount_point == root => unified_at_root = true,
            "cgroup2" => unified_elsewhere = Some(mount_point.to_owned()),
            "cgroup" if super_opts.split(',').any(|o| o == "memory") => memory_v1 = true,
            _ => {}
        }
    }
    if unified_at_root {
        Layout::Unified(root.to_owned())
    } else {
        Layout::Hybrid {
            unified: unified_elsewhere,
            memory_v1,
        }
    }
}

/// Checks that `root` is a cgroup v2 hierarchy with the memory controller.
pub fn check_v2(mountinfo: &str, root: &Path) -> Result<(), CgroupError> {
    match layout(mountinfo, root) {
        Layout::Unified(_) => {}
        Layout::Hybrid { unified, memory_v1 } => {
            let detail = match (unified, memory_v1) {
                (Some(u), true) => format!(
                    "hybrid layout: v1 memory controller at {}/memory, cgroup2 without it at {}",
                    root.display(),
                    u.display()
                ),
                (Some(u), false) => format!(
                    "hybrid layout: v1 controllers at {}, cgroup2 at {}",
                    root.display(),
                    u.display()
                ),
                (None, _) => format!("no cgroup2 mount under {}", root.display()),
            };
            return Err(CgroupError::V1 { detail });
        }
    }
    let path = root.join("cgroup.controllers");
    let controllers = fs::read_to_string(&path).map_err(io_err(&path))?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(CgroupError::NoMemoryController {
            root: root.to_owned(),
            controllers: controllers.trim().to_owned(),
        });
    }
    Ok(())
}

/// The cgroup v2 path in a /proc/PID/cgroup file (its "0::" line).
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// A limit file's value: a byte count, or "max".
pub fn parse_limit(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// The memory files of one cgroup that decide a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pub current: u64,
    pub high: u64,
    pub max: u64,
}

impl Memory {
    pub fn overage(&self) -> u64 {
        self.current.saturating_sub(self.high)
    }
}

/// A cgroup found over its memory.high.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Over {
    pub current: u64,
    pub high: u64,
}

impl Over {
    pub fn overage(&self) -> u64 {
        self.current.saturating_sub(self.high)
    }
}

/// Selected counters of memory.stat, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStat {
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
}

pub fn parse_memory_stat(text: &str) -> MemoryStat {
    let mut stat = MemoryStat::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(value)) = (it.next(), it.next().and_then(|v| v.parse().ok())) else {
            continue;
        };
        match key {
            "anon" => stat.anon = value,
            "file" => stat.file = value,
            "shmem" => stat.shmem = value,
            _ => {}
        }
    }
    stat
}

/// A cgroup v2 hierarchy mounted at `root`.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    root: PathBuf,
}

impl Hierarchy {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path as users know it: "/user.slice/user-1000.slice".
    pub fn display_path(&self, dir: &Path) -> String {
        match dir.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => "/".to_owned(),
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => dir.display().to_string(),
        }
    }

    /// The cgroup v2 id of a cgroup directory (its kernfs inode number), as
    /// `bpf_get_current_ancestor_cgroup_id` reports it.
    pub fn id_of(dir: &Path) -> Result<u64, CgroupError> {
        Ok(fs::metadata(dir).map_err(io_err(dir))?.ino())
    }

    fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
        let path = dir.join(file);
        fs::read_to_string(&path).map_err(io_err(&path))
    }

    /// A one-number file: open, one read into a stack buffer, close (it is
    /// read on the kill path).
    fn limit(dir: &Path, file: &str) -> Result<u64, CgroupError> {
        use io::Read as _;
        let path = dir.join(file);
        let mut buf = [0u8; 64];
        let n = fs::File::open(&path)
            .and_then(|mut f| f.read(&mut buf))
            .map_err(io_err(&path))?;
        let text = String::from_utf8_lossy(&buf[..n]);
        parse_limit(&text).ok_or_else(|| CgroupError::Malformed {
            path: dir.join(file),
            what: format!("expected a byte count or \"max\", got {:?}", text.trim()),
        })
    }

    pub fn memory(dir: &Path) -> Result<Memory, CgroupError> {
        Ok(Memory {
            current: Self::limit(dir, "memory.current")?,
            high: Self::limit(dir, "memory.high")?,
            max: Self::limit(dir, "memory.max")?,
        })
    }

    pub fn memory_stat(dir: &Path) -> Result<MemoryStat, CgroupError> {
        Ok(parse_memory_stat(&Self::read(dir, "memory.stat")?))
    }

    /// Every cgroup below the root, by id: the map that names the cgroup of
    /// a verdict whose task has exited.
    pub fn scan_all(&self) -> HashMap<u64, PathBuf> {
        let mut found = HashMap::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
            if dir != self.root
                && let Ok(id) = Self::id_of(&dir)
            {
                found.insert(id, dir);
            }
        }
        found
    }

    /// Every cgroup below the root (the root itself has no memory.high)
    /// whose memory.high is finite, with its id: the embedded default policy.
    pub fn scan_high_limited(&self) -> Result<HashMap<u64, PathBuf>, CgroupError> {
        let mut found = HashMap::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Removed while we walked: nothing to watch there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Io { path: dir, source }),
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
            if dir == self.root {
                continue;
            }
            match Self::limit(&dir, "memory.high") {
                Ok(u64::MAX) => {}
                Ok(_) => {
                    found.insert(Self::id_of(&dir)?, dir);
                }
                // No memory controller enabled for this subtree, or gone.
                Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                }
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// The nearest cgroup from `dir` up to (not including) the root whose
    /// memory files satisfy `limited`, with those files. Cgroups without
    /// memory files (no memory controller) are passed over.
    pub fn nearest_limited(
        &self,
        dir: &Path,
        limited: impl Fn(&Memory) -> bool,
    ) -> Option<(PathBuf, Memory)> {
        let mut at = dir.to_owned();
        while at.starts_with(&self.root) && at != self.root {
            if let Ok(mem) = Self::memory(&at)
                && limited(&mem)
            {
                return Some((at, mem));
            }
            if !at.pop() {
                break;
            }
        }
        None
    }

    /// The deepest cgroup from `dir` up to (not including) the root whose
    /// memory.current is above a finite memory.high. Errors only if `dir`
    /// itself is gone. Two small reads per level (it is on the kill path).
    pub fn over_high(&self, dir: &Path) -> Result<Option<(PathBuf, Over)>, CgroupError> {
        let mut at = dir.to_owned();
        while at.starts_with(&self.root) && at != self.root {
            // A cgroup without the memory controller has no memory files:
            // its parent's limits are the ones that apply.
            match Self::limit(&at, "memory.high") {
                Ok(u64::MAX) => {}
                Ok(high) => {
                    if let Ok(current) = Self::limit(&at, "memory.current")
                        && current > high
                    {
                        return Ok(Some((at, Over { current, high })));
                    }
                }
                Err(_) if at == dir && !dir.is_dir() => {
                    return Err(CgroupError::Io {
                        path: dir.to_owned(),
                        source: io::Error::from(io::ErrorKind::NotFound),
                    });
                }
                Err(_) => {}
            }
            if !at.pop() {
                break;
            }
        }
        Ok(None)
    }

    /// Thread-group ids of every process in `dir` and its descendants, at
    /// most `limit`: `leaves` gets each cgroup directory that holds any,
    /// `pids` each process with the index of its directory in `leaves`.
    /// Both are cleared first and reused, so a decision does not allocate
    /// per process.
    pub fn processes(
        dir: &Path,
        limit: usize,
        leaves: &mut Vec<PathBuf>,
        pids: &mut Vec<(u32, u32)>,
    ) -> Result<(), CgroupError> {
        leaves.clear();
        pids.clear();
        let mut stack = vec![dir.to_owned()];
        let mut text = String::new();
        while let Some(dir) = stack.pop() {
            let procs = dir.join("cgroup.procs");
            text.clear();
            match fs::File::open(&procs).and_then(|mut f| {
                use io::Read as _;
                f.read_to_string(&mut text)
            }) {
                Ok(_) => {
                    let before = pids.len();
                    let leaf = leaves.len() as u32;
                    pids.extend(
                        text.lines()
                            .filter_map(|l| l.trim().parse::<u32>().ok())
                            .take(limit.saturating_sub(before))
                            .map(|pid| (pid, leaf)),
                    );
                    if pids.len() > before {
                        leaves.push(dir.clone());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(CgroupError::Io {
                        path: procs,
                        source,
                    });
                }
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(entry.path());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIFIED: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    // What this project's build machines show: v1 memory, cgroup2 beside it.
    const HYBRID: &str = "\
26 25 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
31 26 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
32 26 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn unified_root_is_recognised() {
        let root = Path::new(DEFAULT_ROOT);
        assert_eq!(layout(UNIFIED, root), Layout::Unified(root.to_owned()));
    }

    #[test]
    fn hybrid_host_is_refused_with_the_fix() {
        let err = check_v2(HYBRID, Path::new(DEFAULT_ROOT)).expect_err("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("cgroup v1"), "{msg}");
        assert!(msg.contains("/sys/fs/cgroup/unified"), "{msg}");
        assert!(msg.contains("systemd.unified_cgroup_hierarchy=1"), "{msg}");
    }

    #[test]
    fn pure_v1_host_is_refused() {
        let only_v1 = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .collect::<Vec<_>>()
            .join("\n");
        let err = check_v2(&only_v1, Path::new(DEFAULT_ROOT)).expect_err("must refuse");
        assert!(err.to_string().contains("no cgroup2 mount"), "{err}");
    }

    #[test]
    fn unified_without_memory_controller_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io pids\n",
        )
        .expect("write");
        let mountinfo = UNIFIED.replace("/sys/fs/cgroup", &root.path().display().to_string());
        let err = check_v2(&mountinfo, root.path()).expect_err("must refuse");
        assert!(
            matches!(err, CgroupError::NoMemoryController { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("+memory"), "{err}");
    }

    #[test]
    fn unified_with_memory_controller_passes() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .expect("write");
        let mountinfo = UNIFIED.replace("/sys/fs/cgroup", &root.path().display().to_string());
        check_v2(&mountinfo, root.path()).expect("accepted");
    }

    #[test]
    fn limits_parse_max_and_numbers_and_reject_junk() {
        assert_eq!(parse_limit("max\n"), Some(u64::MAX));
        assert_eq!(parse_limit("67108864\n"), Some(67108864));
        assert_eq!(parse_limit("64M"), None);
    }

    #[test]
    fn memory_stat_picks_anon_file_shmem() {
        let s = parse_memory_stat("anon 1000\nfile 200\nkernel 7\nshmem 150\nfile_mapped 9\n");
        assert_eq!(
            s,
            MemoryStat {
                anon: 1000,
                file: 200,
                shmem: 150
            }
        );
    }

    /// A fake hierarchy: /a (high 64M) /a/b (high max) /a/b/c (high 32M),
    /// /d (no memory controller: no memory.high file).
    fn fake_tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let mk = |rel: &str, high: Option<&str>, procs: &str| {
            let d = root.path().join(rel);
            fs::create_dir_all(&d).expect("mkdir");
            if let Some(h) = high {
                fs::write(d.join("memory.high"), h).expect("write");
            }
            fs::write(d.join("cgroup.procs"), procs).expect("write");
        };
        mk("a", Some("67108864\n"), "10\n");
        mk("a/b", Some("max\n"), "");
        mk("a/b/c", Some("33554432\n"), "30\n31\n");
        mk("d", None, "40\n");
        root
    }

    #[test]
    fn scan_finds_exactly_the_cgroups_with_finite_high() {
        let root = fake_tree();
        let h = Hierarchy::new(root.path());
        let found = h.scan_high_limited().expect("scan");
        let mut paths: Vec<String> = found.values().map(|p| h.display_path(p)).collect();
        paths.sort();
        assert_eq!(paths, ["/a", "/a/b/c"]);
        let a = root.path().join("a");
        assert_eq!(found.get(&Hierarchy::id_of(&a).expect("id")), Some(&a));
    }

    #[test]
    fn scan_all_names_every_cgroup_by_id() {
        let root = fake_tree();
        let h = Hierarchy::new(root.path());
        let all = h.scan_all();
        let mut paths: Vec<String> = all.values().map(|p| h.display_path(p)).collect();
        paths.sort();
        assert_eq!(paths, ["/a", "/a/b", "/a/b/c", "/d"]);
        let c = root.path().join("a/b/c");
        assert_eq!(all.get(&Hierarchy::id_of(&c).expect("id")), Some(&c));
    }

    #[test]
    fn processes_cover_the_whole_subtree_and_nothing_else() {
        let root = fake_tree();
        let a = root.path().join("a");
        let (mut leaves, mut pids) = (Vec::new(), Vec::new());
        Hierarchy::processes(&a, 100, &mut leaves, &mut pids).expect("procs");
        let mut found: Vec<(u32, PathBuf)> = pids
            .iter()
            .map(|&(pid, leaf)| (pid, leaves[leaf as usize].clone()))
            .collect();
        found.sort();
        let c = a.join("b/c");
        assert_eq!(found, [(10, a.clone()), (30, c.clone()), (31, c)]);
        // At most `limit` of them.
        Hierarchy::processes(&a, 2, &mut leaves, &mut pids).expect("procs");
        assert_eq!(pids.len(), 2);
    }

    #[test]
    fn the_v2_line_of_proc_cgroup_is_found_among_v1_lines() {
        let text = "4:memory:/process_api/x\n0::/user.slice/user-1000.slice/session-3.scope\n";
        assert_eq!(
            v2_path(text),
            Some("/user.slice/user-1000.slice/session-3.scope")
        );
        assert_eq!(v2_path("4:memory:/a\n"), None);
    }

    fn memory_files(dir: &Path, current: u64, high: &str) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join("memory.current"), current.to_string()).expect("w");
        fs::write(dir.join("memory.high"), high).expect("w");
        fs::write(dir.join("memory.max"), "max").expect("w");
    }

    #[test]
    fn the_nearest_limited_cgroup_is_found_from_the_cgroup_itself_up() {
        let root = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy::new(root.path());
        let slice = root.path().join("seed.slice");
        let leaf = slice.join("agent.scope");
        memory_files(&slice, 70 << 20, &(64u64 << 20).to_string());
        memory_files(&leaf, 69 << 20, "max");
        let high = |m: &Memory| m.high != u64::MAX;
        let (dir, mem) = h.nearest_limited(&leaf, high).expect("found");
        assert_eq!((dir, mem.high), (slice.clone(), 64 << 20));
        // The cgroup itself counts when it is limited.
        fs::write(leaf.join("memory.high"), (32u64 << 20).to_string()).expect("w");
        assert_eq!(
            h.nearest_limited(&leaf, high).map(|(d, _)| d),
            Some(leaf.clone())
        );
        // Nothing limited up to the root: none (the root itself never counts).
        fs::write(leaf.join("memory.high"), "max").expect("w");
        fs::write(slice.join("memory.high"), "max").expect("w");
        assert_eq!(h.nearest_limited(&leaf, high), None);
    }

    #[test]
    fn over_high_finds_the_limited_ancestor() {
        let root = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy::new(root.path());
        let slice = root.path().join("seed.slice");
        let leaf = slice.join("agent.scope");
        memory_files(&slice, 70 << 20, &(64u64 << 20).to_string());
        memory_files(&leaf, 69 << 20, "max");
        let (dir, mem) = h.over_high(&leaf).expect("readable").expect("found");
        assert_eq!(dir, slice);
        assert_eq!(mem.overage(), 6 << 20);
        // Back under high: nothing to confirm.
        fs::write(slice.join("memory.current"), (60u64 << 20).to_string()).expect("w");
        assert_eq!(h.over_high(&leaf).expect("readable"), None);
        // A vanished cgroup is an error, not "not over high".
        assert!(h.over_high(&slice.join("gone.scope")).is_err());
        // A leaf without the memory controller defers to its parent.
        fs::write(slice.join("memory.current"), (70u64 << 20).to_string()).expect("w");
        let bare = slice.join("bare.scope");
        fs::create_dir(&bare).expect("mkdir");
        assert_eq!(
            h.over_high(&bare).expect("readable").map(|(d, _)| d),
            Some(slice)
        );
    }

    #[test]
    fn display_path_is_relative_to_the_root() {
        let h = Hierarchy::new("/sys/fs/cgroup");
        assert_eq!(
            h.display_path(Path::new("/sys/fs/cgroup/user.slice")),
            "/user.slice"
        );
        assert_eq!(h.display_path(Path::new("/sys/fs/cgroup")), "/");
    }
}
