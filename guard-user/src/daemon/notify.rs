//! Telling the owner: after a kill, one plain line on every terminal the
//! victim's owner holds, so the person whose process died learns more than
//! "Killed". A terminal is a pseudo-terminal under /dev/pts owned by their
//! uid (devpts gives a pty to whoever opened it). Writes never block: a
//! terminal that is not ready is skipped. At most one notice per owner per
//! [`QUIET`]; the line is escaped like all text guard prints.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rustix::fs::{FileType, Mode, OFlags};

use crate::{events::KillReport, terminal::printable};

/// Where the pseudo-terminals are.
pub const PTS: &str = "/dev/pts";

/// The least time between two notices to one owner.
pub const QUIET: Duration = Duration::from_secs(5);

/// The most owners remembered for [`QUIET`]; past it, those whose notice is
/// older than that are forgotten.
const KEEP: usize = 1024;

/// Major numbers of Unix98 pty slaves.
const PTS_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

pub struct Notifier {
    pts: PathBuf,
    last: HashMap<u32, Instant>,
}

impl Notifier {
    pub fn new(pts: impl Into<PathBuf>) -> Self {
        Self {
            pts: pts.into(),
            last: HashMap::new(),
        }
    }

    /// Tells the owner of `report`'s victim on each of their terminals;
    /// returns how many got the line (0 also when there is no owner, it is
    /// root, or it was told less than [`QUIET`] ago).
    pub fn notify(&mut self, report: &KillReport, now: Instant) -> usize {
        let Some(owner) = &report.owner else {
            return 0;
        };
        // Root's terminals are the admins', who have the journal.
        if owner.uid == 0 || report.dry_run {
            return 0;
        }
        if self
            .last
            .get(&owner.uid)
            .is_some_and(|at| now.duration_since(*at) < QUIET)
        {
            return 0;
        }
        if self.last.len() >= KEEP {
            self.last.retain(|_, at| now.duration_since(*at) < QUIET);
        }
        self.last.insert(owner.uid, now);
        let line = notice(report);
        terminals(&self.pts, owner.uid)
            .iter()
            .filter(|tty| write_to(tty, owner.uid, &line))
            .count()
    }
}

/// The notice, one line between line breaks, every name escaped.
pub fn notice(report: &KillReport) -> String {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let unit = report
        .owner
        .as_ref()
        .and_then(|o| o.unit.as_deref())
        .map_or_else(String::new, |u| format!(" of {u}"));
    let high = if report.memory_high == u64::MAX {
        String::new()
    } else {
        format!(" ({:.0} MiB)", mib(report.memory_high))
    };
    let text = format!(
        "guard killed {comm} (pid {pid}, {held:.1} MiB){unit}: cgroup {cgroup} was stuck over \
         its memory.high{high}, stalled {stall} ms without reclaiming anything. More: \
         `guard report /var/lib/guard/events.jsonl`",
        comm = report.comm,
        pid = report.pid,
        held = mib(report.footprint),
        cgroup = report.cgroup,
        stall = report.stall_ns / 1_000_000,
    );
    format!("\r\n{}\r\n", printable(&text))
}

/// The pseudo-terminals under `pts` owned by `uid`.
fn terminals(pts: &Path, uid: u32) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(pts) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| {
            use std::os::unix::fs::MetadataExt as _;
            e.metadata().is_ok_and(|m| m.uid() == uid)
        })
        .map(|e| e.path())
        .collect()
}

/// Writes `line` to the terminal at `path` if it is still a pty slave of
/// `uid` once open (checked on the descriptor, not the name); never waits.
fn write_to(path: &Path, uid: u32, line: &str) -> bool {
    let flags = OFlags::WRONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::NOFOLLOW;
    let Ok(fd) = rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::empty()) else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(&fd) else {
        return false;
    };
    let is_pts = FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
        && PTS_MAJORS.contains(&rustix::fs::major(st.st_rdev));
    if !is_pts || st.st_uid != uid {
        return false;
    }
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        match rustix::io::write(&fd, rest) {
            Ok(0) | Err(_) => return false,
            Ok(n) => rest = &rest[n..],
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::owner::Owner;

    fn report(uid: u32) -> KillReport {
        KillReport {
            pid: 4242,
            comm: "hog\x1b[2J".into(),
            cgroup: "/system.slice/hog.service".into(),
            footprint: 70 << 20,
            stall_ns: 1_060_000_000,
            memory_high: 64 << 20,
            owner: Some(Owner {
                uid,
                user: Some("alice".into()),
                unit: Some("hog.service".into()),
            }),
            ..KillReport::default()
        }
    }

    #[test]
    fn the_notice_says_what_died_why_and_where_to_read_more_escaped() {
        let text = notice(&report(1000));
        assert!(
            text.starts_with("\r\n") && text.ends_with("\r\n"),
            "{text:?}"
        );
        let line = text.trim();
        assert!(!line.contains('\n') && !line.contains('\x1b'), "{line:?}");
        assert_eq!(
            line,
            "guard killed hog\\x1b[2J (pid 4242, 70.0 MiB) of hog.service: cgroup \
             /system.slice/hog.service was stuck over its memory.high (64 MiB), stalled 1060 ms \
             without reclaiming anything. More: `guard report /var/lib/guard/events.jsonl`"
        );
    }

    /// A pty of our own: the master, and the slave's path.
    fn pty() -> Option<(std::fs::File, PathBuf)> {
        use rustix::pty::OpenptFlags;
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).ok()?;
        rustix::pty::unlockpt(&master).ok()?;
        let name = rustix::pty::ptsname(&master, Vec::new()).ok()?;
        let path = PathBuf::from(name.to_str().ok()?);
        rustix::fs::fcntl_setfl(&master, OFlags::NONBLOCK).ok()?;
        Some((std::fs::File::from(master), path))
    }

    fn drain(master: &mut std::fs::File) -> String {
        let mut got = vec![0u8; 8192];
        let read = master.read(&mut got).unwrap_or(0);
        String::from_utf8_lossy(&got[..read]).into_owned()
    }

    #[test]
    fn the_owners_terminal_gets_the_line_once_per_quiet_time() {
        let Some((mut master, slave)) = pty() else {
            eprintln!("SKIPPED: no pseudo-terminal here");
            return;
        };
        // Open, as a terminal stays open while someone is logged in on it.
        let _held = fs::OpenOptions::new().read(true).write(true).open(&slave);
        // devpts gives the pty to its opener; as root (CI), hand it to
        // another uid, since root's own kills tell nobody.
        let me = rustix::process::getuid().as_raw();
        let owner = if me == 0 {
            let uid = 4242;
            rustix::fs::chown(&slave, Some(rustix::fs::Uid::from_raw(uid)), None)
                .expect("chown the pty");
            uid
        } else {
            me
        };
        let dir = slave.parent().expect("pts dir").to_owned();
        assert!(terminals(&dir, owner).contains(&slave));
        assert!(!terminals(&dir, owner + 1).contains(&slave));
        let mut n = Notifier::new(&dir);
        let now = Instant::now();
        assert!(n.notify(&report(owner), now) >= 1);
        assert!(drain(&mut master).contains("guard killed hog"));
        // Within the quiet time: nothing; after it: again.
        assert_eq!(n.notify(&report(owner), now + Duration::from_secs(1)), 0);
        assert!(n.notify(&report(owner), now + QUIET) >= 1);
        assert!(drain(&mut master).contains("guard killed hog"));
        // Root is never told, nor is a dry run's owner.
        assert_eq!(n.notify(&report(0), now + 3 * QUIET), 0);
        let mut dry = report(owner);
        dry.dry_run = true;
        assert_eq!(n.notify(&dry, now + 4 * QUIET), 0);
        // Another uid's pty, or a device that is no pty, gets nothing.
        assert!(!write_to(&slave, owner + 1, "x"));
        assert!(!write_to(Path::new("/dev/null"), 0, "x"));
        assert_eq!(drain(&mut master), "");
    }
}
