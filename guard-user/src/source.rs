//! Where `guard trace` and `guard record` get their records: the daemon's
//! socket, or, when no daemon runs, probes of their own (which never kill).

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    net::UnixStream,
    sync::mpsc,
};
use tracing::warn;

use crate::{
    cgroup::{self, Hierarchy, Layout},
    config::Config,
    events::{Event, Record},
    kernel::{self, DRAIN_BATCH, Feed, Message, Probes, Throttle},
    observe::Observer,
    policy::Policy,
};

/// Records buffered between the source and a slow sink; beyond that the
/// source counts what it dropped and says so in a `lost` record.
const DEPTH: usize = 8192;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Where the records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Daemon(PathBuf),
    /// Own probes: no daemon was listening on the socket.
    Standalone,
}

/// How connecting to the daemon went.
enum Connect {
    Connected(UnixStream),
    NoDaemon(String),
}

async fn connect(socket: &Path) -> anyhow::Result<Connect> {
    match UnixStream::connect(socket).await {
        Ok(s) => Ok(Connect::Connected(s)),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => Ok(
            Connect::NoDaemon(format!("no guard daemon on {} ({e})", socket.display())),
        ),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "permission denied on {}: guard's event stream is for root and members of group \
             `{}`. Fix: `usermod -aG {} <user>` and log in again, or run as root",
            socket.display(),
            crate::stream::GROUP,
            crate::stream::GROUP
        ),
        Err(e) => Err(e).with_context(|| format!("connecting to {}", socket.display())),
    }
}

/// Opens the stream: the daemon's socket if a daemon answers (unless
/// `standalone`), else own probes. The first record is always a `hello`.
pub async fn open(
    socket: &Path,
    standalone: bool,
) -> anyhow::Result<(mpsc::Receiver<Record>, Origin)> {
    let why = if standalone {
        "--standalone".to_owned()
    } else {
        match connect(socket).await? {
            Connect::Connected(stream) => return from_daemon(stream, socket).await,
            Connect::NoDaemon(why) => why,
        }
    };
    if !rustix::process::geteuid().is_root() {
        bail!(
            "{why}, and loading guard's own probes needs root. Fix: start the daemon \
             (systemctl start guard), or run this as root"
        );
    }
    eprintln!("guard: {why}: loading own probes; this trace never kills");
    Ok((standalone_source().await?, Origin::Standalone))
}

async fn from_daemon(
    stream: UnixStream,
    socket: &Path,
) -> anyhow::Result<(mpsc::Receiver<Record>, Origin)> {
    let mut lines = BufReader::new(stream).lines();
    let first = lines
        .next_line()
        .await
        .with_context(|| format!("reading from {}", socket.display()))?
        .with_context(|| format!("{} closed the connection at once", socket.display()))?;
    let hello = Record::from_line(&first).context("the daemon's first record")?;
    if let Event::Error { message } = &hello.event {
        bail!("the guard daemon refused: {message}");
    }
    let (tx, rx) = mpsc::channel(DEPTH);
    // The hello goes first; the channel is empty, so this cannot fail.
    let _ = tx.try_send(hello);
    tokio::spawn(async move {
        let mut bad = 0u64;
        loop {
            let line = match lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx
                        .send(Record::now(Event::Error {
                            message: format!("reading the daemon's stream: {e}"),
                        }))
                        .await;
                    break;
                }
            };
            match Record::from_line(&line) {
                Ok(r) => {
                    if tx.send(r).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    bad += 1;
                    if bad == 1 {
                        warn!(error = %e, "skipping a record this guard cannot read");
                    }
                }
            }
        }
        let _ = tx
            .send(Record::now(Event::Error {
                message: "the guard daemon closed the stream".to_owned(),
            }))
            .await;
    });
    Ok((rx, Origin::Daemon(socket.to_owned())))
}

/// The cgroup2 hierarchy wherever it is mounted (on a hybrid host it is
/// beside the v1 controllers), for naming cgroups.
fn find_hierarchy() -> Option<Hierarchy> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    match cgroup::layout(&mountinfo, Path::new(cgroup::DEFAULT_ROOT)) {
        Layout::Unified(root) => Some(Hierarchy::new(root)),
        Layout::Hybrid { unified, .. } => unified.map(Hierarchy::new),
    }
}

/// Own probes, with the default policy's limits so verdicts show where the
/// daemon would judge; nothing here kills.
async fn standalone_source() -> anyhow::Result<mpsc::Receiver<Record>> {
    let policy = Policy {
        config: Config::default_policy(),
    };
    let mut probes = Probes::load(policy.kernel_settings())?;
    if let Throttle::Refused { reason } = &probes.throttle {
        eprintln!(
            "guard: fentry refused by this kernel ({reason}): penalty sleeps are not seen, \
             reclaim tracepoints only"
        );
    }
    if let Some(reason) = &probes.tracepoints.classic_because {
        eprintln!(
            "guard: some tracepoints attached the classic way ({reason}): {}",
            probes.tracepoints.summary()
        );
    }
    let feed = Feed::take(&mut probes)?;
    let mut switch = probes.take_trace_switch()?;
    switch.set(true)?;
    let observer = Observer::new(find_hierarchy(), "/proc");
    let (tx, rx) = mpsc::channel(DEPTH);
    let hello = Record::now(Event::Hello {
        source: "standalone".to_owned(),
        guard_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: kernel::release(),
        throttle_hooked: matches!(probes.throttle, Throttle::Hooked { .. }),
        dry_run: true,
        pid: std::process::id(),
        tracepoints: probes.tracepoints.mode().to_owned(),
        policy: "embedded default".to_owned(),
    });
    let _ = tx.try_send(hello);
    tokio::spawn(pump(feed, probes, observer, Lossy { tx, dropped: 0 }));
    Ok(rx)
}

/// A sender that never blocks the reading of the rings: a sink that cannot
/// keep up loses records, counted and reported when there is room again.
struct Lossy {
    tx: mpsc::Sender<Record>,
    dropped: u64,
}

impl Lossy {
    fn send(&mut self, r: Record) {
        if self.dropped > 0
            && self
                .tx
                .try_send(Record::now(Event::Lost {
                    what: "stream".to_owned(),
                    count: self.dropped,
                }))
                .is_ok()
        {
            self.dropped = 0;
        }
        if self.tx.try_send(r).is_err() {
            self.dropped += 1;
        }
    }
}

/// Turns the kernel's messages, and a sample every second, into records
/// until the reader goes away; then the probes are dropped, which detaches
/// every program.
async fn pump(mut feed: Feed, mut probes: Probes, mut observer: Observer, mut out: Lossy) {
    // Own probes list no cgroup: every one is judged by the default window.
    let (_, window) = Policy::default().default_limits();
    let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut batch = Vec::with_capacity(DRAIN_BATCH);
    loop {
        tokio::select! {
            _ = out.tx.closed() => break,
            r = feed.recv(&mut batch) => {
                if r.is_err() {
                    break;
                }
                for m in &batch {
                    let record = match m {
                        Message::Verdict(v) => Some(observer.verdict(v)),
                        Message::Cgroup(e) => observer.cgroup_event(e),
                        Message::Trace(r) => observer.trace(r),
                        Message::Garbled(_) => None,
                    };
                    if let Some(r) = record {
                        out.send(r);
                    }
                }
            }
            _ = tick.tick() => {
                let stalls = probes.cgroup_stalls().unwrap_or_default();
                for r in observer.samples(&stalls, &[], |_, _| window_ns) {
                    out.send(r);
                }
                if let Ok(s) = probes.stats() {
                    for r in observer.lost(&s) {
                        out.send(r);
                    }
                }
            }
        }
    }
    drop(probes);
}
