//! The event socket seen from outside: who may read it (real peers with
//! other uids and gids, checked by the file mode and by SO_PEERCRED), and
//! the round trip `guard record` -> file -> `guard report --svg`.
//! No probes are loaded here: the test serves records itself.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use guard::{
    events::{Event, Record},
    stream::{self, Access, Bus},
};

const GUARD: &str = env!("CARGO_BIN_EXE_guard");
/// A group id no real group uses here, standing in for `guard`.
const TEST_GID: u32 = 54_321;
const NOBODY: u32 = 65_534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn hello() -> Record {
    Record::now(Event::Hello {
        source: "daemon".into(),
        guard_version: "test".into(),
        kernel: "test".into(),
        throttle_hooked: true,
        dry_run: false,
        pid: std::process::id(),
        tracepoints: "btf".into(),
        policy: "embedded default".into(),
    })
}

/// A served socket in a directory everyone may traverse.
async fn serve(dir: &Path) -> (PathBuf, Bus, tokio::task::JoinHandle<()>) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let path = dir.join("events.sock");
    let access = Access {
        group: Some(TEST_GID),
    };
    let listener = stream::bind(&path, access).expect("bind");
    let bus = Bus::new();
    let (_, hello) = tokio::sync::watch::channel(hello());
    let task = tokio::spawn(stream::serve(listener, bus.clone(), hello, access));
    (path, bus, task)
}

/// `guard trace --json` against `socket` as uid/gid, for at most 2 s.
async fn trace_as(socket: &Path, uid: u32, gid: u32) -> Output {
    let mut cmd = Command::new(GUARD);
    cmd.args(["trace", "--json", "--duration", "2", "--socket"])
        .arg(socket)
        .current_dir("/");
    cmd.uid(uid).gid(gid);
    tokio::task::spawn_blocking(move || cmd.output().expect("run guard trace"))
        .await
        .expect("join")
}

#[tokio::test]
async fn root_and_the_guard_group_may_read_the_stream_and_others_are_refused_by_name() {
    if !is_root() {
        eprintln!("SKIPPED: switching to other uids needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, _bus, task) = serve(dir.path()).await;
    let meta = fs::metadata(&socket).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), TEST_GID);

    // Root, and a member of the group: the hello record arrives.
    for (uid, gid) in [(0, 0), (NOBODY, TEST_GID)] {
        let out = trace_as(&socket, uid, gid).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "uid {uid} gid {gid}: {out:?}");
        let first =
            Record::from_line(stdout.lines().next().unwrap_or_default()).expect("a record line");
        assert_eq!(first.event, hello().event);
    }

    // Anyone else: the file mode refuses first, and the client names the fix.
    let out = trace_as(&socket, NOBODY, NOBODY).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing is streamed to a stranger");
    assert!(
        stderr.contains("permission denied") && stderr.contains("usermod -aG guard"),
        "{stderr}"
    );

    // With the file mode opened up, SO_PEERCRED still refuses, with an
    // error record the client prints.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = trace_as(&socket, NOBODY, NOBODY).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("refused") && stderr.contains("uid 65534 may not read"),
        "{stderr}"
    );
    task.abort();
}

/// `guard record` of `socket` into `file`, for 3 s.
fn record(file: &Path, socket: &Path) -> tokio::process::Child {
    tokio::process::Command::new(GUARD)
        .args(["record", "--duration", "3", "-o"])
        .arg(file)
        .arg("--socket")
        .arg(socket)
        .spawn()
        .expect("spawn guard record")
}

/// Sends `records` once `listeners` are attached.
async fn send_once_heard(bus: &Bus, listeners: usize, records: &[Record]) {
    let mut watch = bus.watch_listeners();
    tokio::time::timeout(Duration::from_secs(10), watch.wait_for(|n| *n == listeners))
        .await
        .expect("the listeners attached in time")
        .expect("bus alive");
    for r in records {
        bus.send(r);
    }
}

/// A small incident as the daemon would stream it: the cgroup fills past
/// memory.high, passes stop making progress, a verdict, a kill, memory
/// comes back.
fn incident(t0: u64) -> Vec<Record> {
    incident_of(t0, "grep", "/seed.slice")
}

/// [`incident`] with the hog named `comm` in the cgroup `cgroup`.
fn incident_of(t0: u64, comm: &str, cgroup: &str) -> Vec<Record> {
    let ms = 1_000_000u64;
    let mib = 1u64 << 20;
    let mut out = Vec::new();
    let sample = |at: u64, current: u64, stall: u64| {
        Record::at(
            at,
            Event::Sample {
                cgroup_id: 7,
                cgroup: cgroup.into(),
                memory_current: current,
                memory_high: Some(64 * mib),
                memory_max: Some(128 * mib),
                stall_total_ns: stall,
                passes: stall / ms,
                no_progress_passes: stall / ms,
                reclaimed_pages: 0,
                psi_some_avg10: Some(40.0),
                psi_full_avg10: Some(30.0),
                worst_pid: 4242,
                worst_comm: comm.into(),
                stall_window_ns: 0,
            },
        )
    };
    for i in 0..4u64 {
        out.push(sample(t0 + i * 250 * ms, (40 + 8 * i) * mib, 0));
    }
    for i in 0..30u64 {
        out.push(Record::at(
            t0 + 1000 * ms + i * 10 * ms,
            Event::Reclaim {
                pid: 4242,
                tid: 4242,
                comm: comm.into(),
                cgroup_id: 7,
                cgroup: cgroup.into(),
                duration_ns: 9 * ms,
                reclaimed_pages: 0,
            },
        ));
    }
    out.push(sample(t0 + 1250 * ms, 66 * mib, 250 * ms));
    out.push(Record::at(
        t0 + 1300 * ms,
        Event::Verdict {
            cgroup_id: 7,
            cgroup: cgroup.into(),
            stall_ns: 270 * ms,
            window_ns: 1000 * ms,
            budget_ns: 250 * ms,
            streak: 30,
            episode_start_ns: t0 + 1000 * ms,
            worst_pid: 4242,
            worst_comm: comm.into(),
        },
    ));
    out.push(Record::at(
        t0 + 1302 * ms,
        Event::Kill {
            cgroup: cgroup.into(),
            pid: 4242,
            comm: comm.into(),
            footprint_bytes: 60 * mib,
            reason: "memory_high_stall".into(),
            mode: "process".into(),
            killed_cgroup: None,
            also_killed: 0,
            stall_ns: 270 * ms,
            latency_us: 2000,
            memory_current: 66 * mib,
            memory_high: Some(64 * mib),
            dry_run: false,
            victims: vec![4242],
            batch: 1,
            owner: None,
        },
    ));
    for i in 1..5u64 {
        out.push(sample(t0 + 1302 * ms + i * 250 * ms, 6 * mib, 280 * ms));
    }
    out
}

#[tokio::test]
async fn a_recorded_stream_reports_the_incident_and_draws_it() {
    if !is_root() {
        eprintln!("SKIPPED: the socket is served as root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, bus, task) = serve(dir.path()).await;
    let file = dir.path().join("incident.jsonl");
    let mut recorder = record(&file, &socket);
    let sent = incident(guard::clock::monotonic_ns());
    send_once_heard(&bus, 1, &sent).await;
    let status = recorder.wait().await.expect("guard record ends");
    assert!(status.success());
    task.abort();

    // Every record sent is in the file, after the daemon's hello.
    let text = fs::read_to_string(&file).expect("recorded file");
    let got: Vec<Record> = text
        .lines()
        .map(|l| Record::from_line(l).expect("valid line"))
        .collect();
    assert_eq!(got.first().map(|r| r.event.kind()), Some("hello"));
    assert_eq!(&got[1..], &sent[..]);

    let svg = dir.path().join("incident.svg");
    let out = Command::new(GUARD)
        .arg("report")
        .arg(&file)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run guard report");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(report.contains("/seed.slice"), "{report}");
    assert!(
        report.contains("grep") && report.contains("4242"),
        "{report}"
    );
    let drawing = fs::read_to_string(&svg).expect("svg written");
    let doc = roxmltree::Document::parse(&drawing).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(
        doc.descendants()
            .any(|n| n.text().is_some_and(|t| t.contains("grep[4242]"))),
        "the kill marker names the victim"
    );
}

/// A name chosen to attack the admin's terminal: it retitles the window,
/// clears the screen and forges a line of its own.
const HOSTILE_COMM: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2Jgrep\nKILLED sshd[1]";
const HOSTILE_CGROUP: &str = "/seed.slice/\u{1b}[8mhidden\u{202e}";

/// Text a terminal would act on: any control character but the line ends
/// the output itself writes, or a bidirectional override.
fn acts_on_a_terminal(text: &str) -> bool {
    text.chars()
        .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
}

#[tokio::test]
async fn hostile_names_reach_the_terminal_escaped_and_the_json_exact() {
    if !is_root() {
        eprintln!("SKIPPED: the socket is served as root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, bus, task) = serve(dir.path()).await;
    let file = dir.path().join("hostile.jsonl");
    let lines = tokio::process::Command::new(GUARD)
        .args(["trace", "--lines", "--duration", "3", "--socket"])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn guard trace --lines");
    let mut recorder = record(&file, &socket);
    let sent = incident_of(guard::clock::monotonic_ns(), HOSTILE_COMM, HOSTILE_CGROUP);
    send_once_heard(&bus, 2, &sent).await;
    let traced = lines.wait_with_output().await.expect("guard trace ends");
    assert!(recorder.wait().await.expect("guard record ends").success());
    task.abort();

    let traced = String::from_utf8_lossy(&traced.stdout);
    assert!(!acts_on_a_terminal(&traced), "{traced:?}");
    assert!(
        traced.contains("KILLED SIGKILL \\x1b]0;pwned\\x07\\x1b[2Jgrep\\nKILLED sshd[1][4242]"),
        "{traced}"
    );
    assert!(
        !traced.lines().any(|l| l.starts_with("KILLED sshd")),
        "a name forged a line: {traced}"
    );

    // The recorded JSON keeps the names exactly.
    let text = fs::read_to_string(&file).expect("recorded file");
    let got: Vec<Record> = text
        .lines()
        .map(|l| Record::from_line(l).expect("valid line"))
        .collect();
    assert_eq!(&got[1..], &sent[..]);

    let svg = dir.path().join("hostile.svg");
    let out = Command::new(GUARD)
        .arg("report")
        .arg(&file)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run guard report");
    assert!(out.status.success(), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!acts_on_a_terminal(&report), "{report:?}");
    assert!(report.contains("\\x1b[8mhidden\\u{202e}"), "{report}");
    let drawing = fs::read_to_string(&svg).expect("svg written");
    assert!(!acts_on_a_terminal(&drawing));
    roxmltree::Document::parse(&drawing).expect("the SVG is well-formed XML");
}
