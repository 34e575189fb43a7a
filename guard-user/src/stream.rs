//! Serving the event stream: the daemon's Unix socket (who may read it,
//! checked with SO_PEERCRED), and its own size-capped, rotating log on disk
//! so an incident is kept even when nobody was watching.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{broadcast, watch},
};
use tracing::{debug, info, warn};

use crate::{
    events::{Event, Record},
    paths::{self, Owners, Role},
};

pub const SOCKET_PATH: &str = "/run/guard/events.sock";
/// Members of this group may read the stream (besides root).
pub const GROUP: &str = "guard";
pub const LOG_DIR: &str = "/var/lib/guard";
pub const LOG_FILE: &str = "events.jsonl";
/// Default cap of one log file; with `LOG_KEEP` older parts that is 64 MiB.
pub const LOG_MAX_BYTES: u64 = 16 << 20;
pub const LOG_KEEP: usize = 3;
/// Records a slow listener may fall behind before it is told what it lost.
const BUS_DEPTH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("creating {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error(
        "binding the event socket {path}: {source}. Fix: is another guard running? Stop it, \
         or give this one another --socket"
    )]
    Bind { path: PathBuf, source: io::Error },
    #[error(
        "giving {path} to group `guard` with mode 0660: {source}. Fix: run guard as root with \
         CAP_CHOWN (deploy/guard.service grants it)"
    )]
    Mode { path: PathBuf, source: io::Error },
    #[error("event log {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    /// A directory on the way someone other than root could change.
    #[error("{0}")]
    Path(#[from] crate::paths::PathError),
}

/// The socket's and the log's directories, as the messages name them.
const SOCKET_DIR: Role<'static> = Role {
    what: "the event socket's directory",
    above: "a directory above the event socket",
    gain: "can swap the socket for a link, so that guard gives a file of their choosing to \
           group guard",
};
const LOG_DIR_ROLE: Role<'static> = Role {
    what: "the event log's directory",
    above: "a directory above the event log",
    gain: "can swap the log for a link, so that guard appends to a file of their choosing",
};

/// Makes `dir` if missing (mode 0755) and checks that no one but root (or
/// the user guard runs as) can change it or any directory above it.
fn private_dir(dir: &Path, role: Role<'_>) -> Result<(), StreamError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| StreamError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
    Ok(paths::check_dirs(dir, role, Owners::RootOrSelf, false)?)
}

/// Who may read the stream: root, and members of the `guard` group if it
/// exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub group: Option<u32>,
}

impl Access {
    /// The `guard` group from /etc/group.
    pub fn from_system() -> Self {
        Self {
            group: fs::read_to_string("/etc/group")
                .ok()
                .and_then(|t| group_id(&t, GROUP)),
        }
    }

    /// Whether a peer with these credentials may read. `groups`: its
    /// supplementary groups.
    pub fn allows(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        uid == 0 || self.group.is_some_and(|g| gid == g || groups.contains(&g))
    }

    /// The refusal a peer is sent.
    pub fn refusal(&self, uid: u32) -> String {
        match self.group {
            Some(_) => format!(
                "uid {uid} may not read guard's event stream: it is for root and members of \
                 group `{GROUP}`. Fix: `usermod -aG {GROUP} <user>`, then log in again"
            ),
            None => format!(
                "uid {uid} may not read guard's event stream: only root may, as this machine \
                 has no group `{GROUP}`. Fix: `groupadd --system {GROUP}`, add the user to it, \
                 and restart guard"
            ),
        }
    }
}

/// The gid of `name` in /etc/group's text.
pub fn group_id(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Supplementary groups from /proc/<pid>/status ("Groups:\t4 24 27").
pub fn groups_in_status(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Where records go to every connected listener.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<str>>,
    listeners: Arc<watch::Sender<usize>>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(BUS_DEPTH).0,
            listeners: Arc::new(watch::channel(0).0),
        }
    }

    /// Sends a record to the listeners, if any.
    pub fn send(&self, record: &Record) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(record.to_line().into());
        }
    }

    /// Whether anyone listens now.
    pub fn listened(&self) -> bool {
        *self.listeners.borrow() > 0
    }

    /// Changes whenever a listener comes or goes.
    pub fn watch_listeners(&self) -> watch::Receiver<usize> {
        self.listeners.subscribe()
    }
}

/// Binds the event socket: its directory is made if missing, a stale socket
/// left by a crash is replaced, and the socket gets mode 0660 with the
/// `guard` group so the file system enforces the rule before we do.
pub fn bind(path: &Path, access: Access) -> Result<UnixListener, StreamError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    private_dir(dir, SOCKET_DIR)?;
    if let Ok(meta) = fs::symlink_metadata(path) {
        // Only ever a socket is replaced: a mistyped --socket must not cost
        // anyone a file.
        if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
            return Err(StreamError::Bind {
                path: path.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it exists and is not a socket; it is left alone",
                ),
            });
        }
        // A live guard answers on it; a stale socket refuses connections.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StreamError::Bind {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::AddrInUse, "a guard already serves it"),
            });
        }
        let _ = fs::remove_file(path);
    }
    // Made with the process's umask (0755 under the usual 022: no one but
    // root may connect until the mode below is set). Not a tighter umask
    // around the bind: the umask is the whole process's, and another
    // thread's files would get it too.
    let listener = UnixListener::bind(path).map_err(|source| StreamError::Bind {
        path: path.to_owned(),
        source,
    })?;
    if let Err(source) = give_to_group(path, access.group) {
        // No socket rather than one with the wrong owner or mode.
        let _ = fs::remove_file(path);
        return Err(StreamError::Mode {
            path: path.to_owned(),
            source,
        });
    }
    Ok(listener)
}

/// Gives the socket just bound at `path` to `group` with mode 0660, through
/// a descriptor of the node itself (O_PATH, no link followed), after
/// checking that the node is a socket: a link or file swapped in is never
/// changed.
fn give_to_group(path: &Path, group: Option<u32>) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;

    use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(io::Error::other(format!(
            "{} is no longer the socket just bound",
            path.display()
        )));
    }
    rustix::fs::chownat(&fd, "", None, group.map(Gid::from_raw), AtFlags::EMPTY_PATH)?;
    // chmod cannot take an O_PATH descriptor; its /proc link reaches the
    // same node without looking up `path` again.
    let node = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::chmod(node.as_str(), Mode::from_raw_mode(0o660))?;
    Ok(())
}

/// Accepts listeners until the task is dropped. Each gets the hello as it
/// stands when it attaches (the daemon updates it on a reload), then every
/// record sent on the bus; one that falls behind is told how many records
/// it lost.
pub async fn serve(
    listener: UnixListener,
    bus: Bus,
    hello: tokio::sync::watch::Receiver<Record>,
    access: Access,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "accepting an event stream listener failed");
                continue;
            }
        };
        let bus = bus.clone();
        let hello = hello.borrow().to_line();
        tokio::spawn(async move {
            if let Err(e) = listener_task(stream, bus, hello, access).await {
                debug!(error = %e, "event stream listener ended");
            }
        });
    }
}

async fn listener_task(
    mut stream: UnixStream,
    bus: Bus,
    hello: String,
    access: Access,
) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let (uid, gid) = (cred.uid(), cred.gid());
    let groups = cred
        .pid()
        .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .map(|s| groups_in_status(&s))
        .unwrap_or_default();
    if !access.allows(uid, gid, &groups) {
        info!(uid, gid, "refused an event stream listener");
        let refusal = Record::now(Event::Error {
            message: access.refusal(uid),
        });
        stream
            .write_all(format!("{}\n", refusal.to_line()).as_bytes())
            .await?;
        return stream.shutdown().await;
    }
    let mut rx = bus.tx.subscribe();
    bus.listeners.send_modify(|n| *n += 1);
    info!(uid, "event stream listener attached");
    let result = forward(&mut stream, &mut rx, hello).await;
    bus.listeners.send_modify(|n| *n = n.saturating_sub(1));
    info!(uid, "event stream listener left");
    result
}

async fn forward(
    stream: &mut UnixStream,
    rx: &mut broadcast::Receiver<Arc<str>>,
    hello: String,
) -> io::Result<()> {
    let (mut read, mut write) = stream.split();
    write.write_all(format!("{hello}\n").as_bytes()).await?;
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            // A listener sends nothing; EOF (or an error) means it left.
            n = read.read(&mut scratch) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            line = rx.recv() => match line {
                Ok(line) => {
                    write.write_all(line.as_bytes()).await?;
                    write.write_all(b"\n").await?;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let lost = Record::now(Event::Lost { what: "stream".to_owned(), count: n });
                    write.write_all(format!("{}\n", lost.to_line()).as_bytes()).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// The daemon's own record of what happened: verdicts, kills, OOM kills,
/// cgroup changes, lost counts and samples around incidents (not raw
/// passes). Appends one line per record; at `max_bytes` the file becomes
/// `.1`, `.1` becomes `.2`, and so on up to `keep` old parts.
pub struct EventLog {
    path: PathBuf,
    file: fs::File,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl EventLog {
    /// Opens (or creates) the log in `dir`, a directory no one but root
    /// (or the user guard runs as) can change; the file is never a link.
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> Result<Self, StreamError> {
        private_dir(dir, LOG_DIR_ROLE)?;
        let path = dir.join(LOG_FILE);
        let file = Self::append(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path,
            file,
            size,
            max_bytes: max_bytes.max(4096),
            keep,
        })
    }

    fn append(path: &Path) -> Result<fs::File, StreamError> {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| StreamError::Log {
                path: path.to_owned(),
                source,
            })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rotated part `n` (1 = newest old part).
    pub fn part(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    pub fn write(&mut self, record: &Record) -> Result<(), StreamError> {
        let line = format!("{}\n", record.to_line());
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| StreamError::Log {
                path: self.path.clone(),
                source,
            })?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), StreamError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| StreamError::Log { path, source }
        };
        if self.keep == 0 {
            fs::remove_file(&self.path).map_err(err(&self.path))?;
        } else {
            for n in (1..self.keep).rev() {
                let from = self.part(n);
                if from.exists() {
                    fs::rename(&from, self.part(n + 1)).map_err(err(&from))?;
                }
            }
            fs::rename(&self.path, self.part(1)).map_err(err(&self.path))?;
        }
        self.file = Self::append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_guard_group_may_read_others_may_not() {
        let access = Access { group: Some(990) };
        assert!(access.allows(0, 0, &[]));
        assert!(access.allows(1000, 990, &[]), "primary group");
        assert!(access.allows(1000, 1000, &[4, 990]), "supplementary group");
        assert!(!access.allows(1000, 1000, &[4, 24]));
        let none = Access { group: None };
        assert!(none.allows(0, 0, &[]));
        assert!(!none.allows(1000, 990, &[990]));
        assert!(access.refusal(1000).contains("usermod -aG guard"));
        assert!(none.refusal(1000).contains("groupadd --system guard"));
    }

    #[test]
    fn group_and_supplementary_groups_are_parsed() {
        let etc = "root:x:0:\nguardian:x:5:\nguard:x:990:alice,bob\n";
        assert_eq!(group_id(etc, "guard"), Some(990));
        assert_eq!(group_id(etc, "nope"), None);
        let status =
            "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 990 \nVmRSS:\t1 kB\n";
        assert_eq!(groups_in_status(status), vec![4, 24, 990]);
        assert!(groups_in_status("Groups:\n").is_empty());
    }

    fn sample(n: u64) -> Record {
        Record::at(
            n,
            Event::Lost {
                what: "trace".into(),
                count: n,
            },
        )
    }

    #[test]
    fn the_event_log_rotates_at_its_cap_and_keeps_its_parts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = EventLog::open(dir.path(), 4096, 2).expect("open");
        let line_len = sample(1).to_line().len() as u64 + 1;
        let per_file = 4096 / line_len;
        let total = per_file * 3 + 5;
        for n in 0..total {
            log.write(&sample(n)).expect("write");
        }
        let read = |p: &Path| -> Vec<Record> {
            fs::read_to_string(p)
                .expect("read")
                .lines()
                .map(|l| Record::from_line(l).expect("valid"))
                .collect()
        };
        let current = read(log.path());
        let one = read(&log.part(1));
        let two = read(&log.part(2));
        assert!(!log.part(3).exists(), "only `keep` old parts");
        for part in [log.path(), &log.part(1), &log.part(2)] {
            assert!(fs::metadata(part).expect("meta").len() <= 4096);
        }
        // The newest records are in the current file, in order, and the
        // parts hold the ones before them without a gap.
        assert_eq!(current.last().map(|r| r.mono_ns), Some(total - 1));
        assert_eq!(
            one.last().map(|r| r.mono_ns + 1),
            current.first().map(|r| r.mono_ns)
        );
        assert_eq!(
            two.last().map(|r| r.mono_ns + 1),
            one.first().map(|r| r.mono_ns)
        );
        // Reopening appends instead of truncating.
        drop(log);
        let mut log = EventLog::open(dir.path(), 4096, 2).expect("reopen");
        log.write(&sample(total)).expect("write");
        let after = read(log.path());
        assert_eq!(after.len(), current.len() + 1);
    }

    #[tokio::test]
    async fn only_a_stale_socket_is_replaced_never_another_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("precious");
        fs::write(&file, "keep me").expect("write");
        let err = bind(&file, Access { group: None }).expect_err("not a socket");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(fs::read_to_string(&file).expect("still there"), "keep me");
        // A socket left by a crashed guard (nobody answers) is replaced.
        let stale = dir.path().join("events.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
        assert!(stale.exists());
        bind(&stale, Access { group: None }).expect("the stale socket is replaced");
    }

    #[tokio::test]
    async fn a_listener_that_falls_behind_is_told_how_many_records_it_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.sock");
        let listener = bind(&path, Access { group: None }).expect("bind");
        let bus = Bus::new();
        let hello = sample(0);
        let (_, hello) = tokio::sync::watch::channel(hello);
        let server = tokio::spawn(serve(listener, bus.clone(), hello, Access { group: None }));
        let mut listeners = bus.watch_listeners();
        let client = UnixStream::connect(&path).await.expect("connect");
        listeners.wait_for(|n| *n == 1).await.expect("counted");
        // All sent before the forwarding task runs again (one thread): the
        // oldest fall out of the bus.
        let total = BUS_DEPTH as u64 + 1000;
        for n in 1..=total {
            bus.send(&sample(n));
        }
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(client));
        let mut lost = 0;
        let mut last = 0;
        let mut received = 0;
        while last < total {
            let line = lines.next_line().await.expect("read").expect("line");
            match Record::from_line(&line).expect("valid").event {
                Event::Lost { what, count } if what == "stream" => lost += count,
                Event::Lost { .. } => {
                    received += 1;
                    last = Record::from_line(&line).expect("valid").mono_ns;
                }
                e => panic!("{e:?}"),
            }
        }
        // The hello (mono_ns 0) is counted among the received.
        assert_eq!(lost, 1000, "what fell out is counted exactly");
        assert_eq!(received - 1 + lost, total, "nothing is lost silently");
        server.abort();
    }

    #[tokio::test]
    async fn a_listener_gets_hello_then_records_and_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/events.sock");
        let listener = bind(&path, Access { group: None }).expect("bind");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(&path).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o660);
        let bus = Bus::new();
        let hello = Record::now(Event::Hello {
            source: "daemon".into(),
            guard_version: "t".into(),
            kernel: "k".into(),
            throttle_hooked: false,
            dry_run: true,
            pid: 1,
            tracepoints: "btf".into(),
            policy: "embedded default".into(),
        });
        let (_, hello) = tokio::sync::watch::channel(hello);
        let server = tokio::spawn(serve(listener, bus.clone(), hello, Access { group: None }));
        // A second guard must not steal a live socket.
        assert!(matches!(
            bind(&path, Access { group: None }),
            Err(StreamError::Bind { .. })
        ));
        let mut listeners = bus.watch_listeners();
        let client = UnixStream::connect(&path).await.expect("connect");
        listeners.wait_for(|n| *n == 1).await.expect("counted");
        assert!(bus.listened());
        // One record, compared with itself: its wall-clock stamp is taken
        // when it is made.
        let sent = sample(7);
        bus.send(&sent);
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(client));
        let first = lines.next_line().await.expect("read").expect("hello");
        assert_eq!(
            Record::from_line(&first).expect("valid").event.kind(),
            "hello"
        );
        let second = lines.next_line().await.expect("read").expect("record");
        assert_eq!(Record::from_line(&second).expect("valid"), sent);
        drop(lines);
        listeners.wait_for(|n| *n == 0).await.expect("uncounted");
        server.abort();
    }

    /// A listener gets the hello as it stands when it attaches: after a
    /// reload changed the daemon's mode, the new one.
    #[tokio::test]
    async fn a_listener_gets_the_hello_as_it_stands_when_it_attaches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/events.sock");
        let listener = bind(&path, Access { group: None }).expect("bind");
        let hello = |dry_run: bool, policy: &str| {
            Record::now(Event::Hello {
                source: "daemon".into(),
                guard_version: "t".into(),
                kernel: "k".into(),
                throttle_hooked: false,
                dry_run,
                pid: 1,
                tracepoints: "btf".into(),
                policy: policy.into(),
            })
        };
        let (tx, rx) = tokio::sync::watch::channel(hello(false, "/etc/guard/guard.toml"));
        let server = tokio::spawn(serve(listener, Bus::new(), rx, Access { group: None }));
        let first_hello = || async {
            let client = UnixStream::connect(&path).await.expect("connect");
            let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(client));
            let line = lines.next_line().await.expect("read").expect("hello");
            Record::from_line(&line).expect("valid").event
        };
        assert!(matches!(
            first_hello().await,
            Event::Hello { dry_run: false, .. }
        ));
        tx.send_replace(hello(true, "/etc/guard/dry.toml"));
        match first_hello().await {
            Event::Hello {
                dry_run, policy, ..
            } => assert!(dry_run && policy == "/etc/guard/dry.toml", "{policy}"),
            other => panic!("not a hello: {other:?}"),
        }
        server.abort();
    }

    /// A directory others may write, holding a link planted where the
    /// socket or the log would go: both are refused before anything is
    /// made, and the link's target is left as it was.
    #[test]
    fn a_socket_or_log_in_a_directory_others_may_write_is_refused() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
        let target = dir.path().join("precious");
        fs::write(&target, "mine\n").expect("write");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::symlink(&target, open.join("events.sock")).expect("symlink");
        std::os::unix::fs::symlink(&target, open.join(LOG_FILE)).expect("symlink");
        let before = fs::metadata(&target).expect("meta");

        let socket = bind(&open.join("events.sock"), Access { group: Some(4242) });
        let msg = socket.expect_err("refused").to_string();
        assert!(
            msg.starts_with(&format!(
                "refusing {}: the event socket's directory",
                open.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("writable by its group and others") && msg.contains("chmod go-w"));
        let log = EventLog::open(&open, 1 << 20, 1).map(|_| ());
        let msg = log.expect_err("refused").to_string();
        assert!(msg.contains("the event log's directory"), "{msg}");

        let after = fs::metadata(&target).expect("meta");
        assert_eq!(
            (after.gid(), after.mode(), after.len()),
            (before.gid(), before.mode(), before.len())
        );
    }

    #[test]
    fn the_log_never_follows_a_link_even_in_a_private_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("precious");
        fs::write(&target, "mine\n").expect("write");
        let logs = dir.path().join("logs");
        fs::create_dir(&logs).expect("mkdir");
        std::os::unix::fs::symlink(&target, logs.join(LOG_FILE)).expect("symlink");
        let err = EventLog::open(&logs, 1 << 20, 1)
            .map(|_| ())
            .expect_err("refused");
        assert!(matches!(err, StreamError::Log { .. }), "{err}");
        assert_eq!(fs::read_to_string(&target).expect("read"), "mine\n");
    }
}
