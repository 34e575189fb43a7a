//! What the running daemon says about itself on its event socket: its
//! hello, and the samples of the cgroups it watches.

use std::{
    collections::HashMap,
    io::ErrorKind,
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    net::UnixStream,
    time::timeout,
};

use crate::{
    events::{Event, Record},
    stream,
};

/// How long connecting, and the hello, may take.
const ANSWER: Duration = Duration::from_secs(1);
/// How long samples are collected: the daemon samples every 500 ms while
/// someone listens, so this sees two or three rounds.
pub const LISTEN: Duration = Duration::from_millis(1500);

/// The daemon as its hello introduced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub source: String,
    pub dry_run: bool,
    pub throttle_hooked: bool,
    pub tracepoints: String,
    pub policy: String,
    pub socket: String,
    /// The daemon's own version: after an upgrade, the one still running
    /// until it is restarted.
    pub guard_version: String,
}

/// What asking the socket gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Running {
        info: DaemonInfo,
        /// The latest sample's stall in the current window, by cgroup path.
        stall_window_ns: HashMap<String, u64>,
    },
    /// Nothing listens there: no daemon runs (or not on this socket).
    Absent(String),
    /// A daemon runs but will not talk to this user.
    Denied(String),
    /// Something answered, but not as a daemon should.
    Broken(String),
}

fn denied(socket: &Path, why: impl std::fmt::Display) -> Answer {
    Answer::Denied(format!(
        "a guard daemon's socket is at {} but {why}: its stream is for root and members of \
         group `{}`. Fix: run guard status as root, or `usermod -aG {} <user>` and log in again",
        socket.display(),
        stream::GROUP,
        stream::GROUP
    ))
}

/// Asks the daemon on `socket`, collecting samples for `listen`. Never
/// waits longer than about `ANSWER` plus `listen`.
pub fn ask(socket: &Path, listen: Duration) -> Answer {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(ask_async(socket, listen)),
        Err(e) => Answer::Broken(format!(
            "could not start the runtime to ask the daemon: {e}"
        )),
    }
}

async fn ask_async(socket: &Path, listen: Duration) -> Answer {
    let stream = match timeout(ANSWER, UnixStream::connect(socket)).await {
        Err(_) => {
            return Answer::Broken(format!(
                "{} did not accept a connection within {} s",
                socket.display(),
                ANSWER.as_secs()
            ));
        }
        Ok(Ok(s)) => s,
        Ok(Err(e)) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Answer::Absent(format!(
                "no guard daemon runs (nothing answers on {}: {e})",
                socket.display()
            ));
        }
        Ok(Err(e)) if e.kind() == ErrorKind::PermissionDenied => {
            return denied(socket, "this user may not connect to it");
        }
        Ok(Err(e)) => return Answer::Broken(format!("connecting to {}: {e}", socket.display())),
    };
    let mut lines = BufReader::new(stream).lines();
    let first = match timeout(ANSWER, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => {
            return Answer::Broken(format!(
                "{} closed the connection at once",
                socket.display()
            ));
        }
        Ok(Err(e)) => return Answer::Broken(format!("reading {}: {e}", socket.display())),
        Err(_) => {
            return Answer::Broken(format!(
                "{} sent nothing within {} s",
                socket.display(),
                ANSWER.as_secs()
            ));
        }
    };
    let info = match Record::from_line(&first).map(|r| r.event) {
        Ok(Event::Hello {
            source,
            guard_version,
            throttle_hooked,
            dry_run,
            pid,
            tracepoints,
            policy,
            ..
        }) => DaemonInfo {
            pid,
            source,
            dry_run,
            throttle_hooked,
            tracepoints,
            policy,
            socket: socket.display().to_string(),
            guard_version,
        },
        Ok(Event::Error { message }) => return denied(socket, format!("it refused: {message}")),
        Ok(other) => {
            return Answer::Broken(format!(
                "{} began with a {} record, not a hello",
                socket.display(),
                other.kind()
            ));
        }
        Err(e) => return Answer::Broken(format!("{}: {e}", socket.display())),
    };
    let mut stall_window_ns = HashMap::new();
    let deadline = Instant::now() + listen;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match timeout(left, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                if let Ok(Record {
                    event:
                        Event::Sample {
                            cgroup,
                            stall_window_ns: ns,
                            ..
                        },
                    ..
                }) = Record::from_line(&line)
                {
                    stall_window_ns.insert(cgroup, ns);
                }
            }
            // Closed, failed or timed out: what was collected is the answer.
            _ => break,
        }
    }
    Answer::Running {
        info,
        stall_window_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_socket_means_no_daemon_not_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("events.sock");
        match ask(&socket, LISTEN) {
            Answer::Absent(why) => {
                assert!(why.contains("no guard daemon runs"), "{why}");
                assert!(why.contains(&socket.display().to_string()), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_hello_and_the_samples_of_a_daemon_are_read_within_the_time_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("events.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let server = std::thread::spawn(move || {
            use std::io::Write as _;
            let (mut conn, _) = listener.accept().expect("accept");
            let hello = Record::now(Event::Hello {
                source: "daemon".into(),
                guard_version: "9.9.9".into(),
                kernel: "k".into(),
                throttle_hooked: false,
                dry_run: true,
                pid: 4321,
                tracepoints: "btf".into(),
                policy: "/etc/guard/guard.toml".into(),
            });
            let sample = Record::now(Event::Sample {
                cgroup_id: 1,
                cgroup: "/seed.slice".into(),
                memory_current: 1,
                memory_high: Some(1),
                memory_max: None,
                stall_total_ns: 0,
                passes: 0,
                no_progress_passes: 0,
                reclaimed_pages: 0,
                psi_some_avg10: None,
                psi_full_avg10: None,
                worst_pid: 0,
                worst_comm: String::new(),
                stall_window_ns: 120_000_000,
            });
            writeln!(conn, "{}\n{}", hello.to_line(), sample.to_line()).expect("write");
            // Keeps the connection open past the listening time: the
            // reader must stop on its own.
            std::thread::sleep(Duration::from_secs(1));
        });
        let start = Instant::now();
        let answer = ask(&socket, Duration::from_millis(300));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        match answer {
            Answer::Running {
                info,
                stall_window_ns,
            } => {
                assert_eq!(info.pid, 4321);
                assert_eq!(info.tracepoints, "btf");
                assert_eq!(info.policy, "/etc/guard/guard.toml");
                assert!(info.dry_run);
                assert_eq!(stall_window_ns.get("/seed.slice"), Some(&120_000_000));
            }
            other => panic!("{other:?}"),
        }
        server.join().expect("server");
    }
}
