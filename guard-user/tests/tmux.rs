//! `guard trace` in a real terminal: tmux runs it standalone (its own
//! probes, which never kill) on this host's kernel; the test reads the
//! screen with capture-pane, presses keys with send-keys, and checks that
//! `q` gives the terminal back as it was.

use std::{
    fs,
    path::PathBuf,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

const GUARD: &str = env!("CARGO_BIN_EXE_guard");

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs (cargo xtask test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "trace"])
    }

    /// Waits until the screen shows `text`; the last screen either way.
    fn wait_for(&self, text: &str, limit: Duration) -> (bool, String) {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return (true, screen);
            }
            if start.elapsed() > limit {
                return (false, screen);
            }
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.cmd(&["kill-server"]);
    }
}

/// The cgroup2 hierarchy, wherever it is mounted.
fn unified_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

#[test]
fn the_live_view_runs_in_a_real_terminal_answers_keys_and_restores_it() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: a standalone trace loads probes, which needs root");
        return;
    }
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux is missing: `cargo xtask test` installs it (apt-get install tmux)"
    );
    let tmux = Tmux {
        socket: format!("guard-test-{}", std::process::id()),
    };
    let script = format!("'{GUARD}' trace --standalone; echo EXITED:$?; sleep 60");
    tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "trace",
        "-x",
        "120",
        "-y",
        "30",
        "sh",
        "-c",
        &script,
    ]);

    let (up, screen) = tmux.wait_for("standalone, never kills", Duration::from_secs(30));
    assert!(up, "the view did not come up:\n{screen}");
    assert_eq!(
        tmux.cmd(&["display", "-p", "-t", "trace", "#{alternate_on}"])
            .trim(),
        "1",
        "the view draws on the alternate screen"
    );
    for heading in ["CGROUP", "events", "q quit"] {
        assert!(
            screen.contains(heading),
            "no {heading:?} on screen:\n{screen}"
        );
    }

    // Something the kernel reports while we watch: a cgroup comes and goes.
    if let Some(root) = unified_mount() {
        let name = format!("guard-tmux-{}", std::process::id());
        let dir = root.join(&name);
        fs::create_dir(&dir).expect("mkdir cgroup");
        fs::remove_dir(&dir).expect("rmdir cgroup");
        let (seen, screen) =
            tmux.wait_for(&format!("cgroup created /{name}"), Duration::from_secs(10));
        assert!(seen, "the new cgroup is not in the events pane:\n{screen}");
    }

    tmux.cmd(&["send-keys", "-t", "trace", "p"]);
    let (paused, screen) = tmux.wait_for("PAUSED", Duration::from_secs(5));
    assert!(paused, "p did not pause:\n{screen}");
    tmux.cmd(&["send-keys", "-t", "trace", "p"]);
    let start = Instant::now();
    while tmux.screen().contains("PAUSED") && start.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(100));
    }
    assert!(!tmux.screen().contains("PAUSED"), "p did not resume");

    tmux.cmd(&["send-keys", "-t", "trace", "q"]);
    let (ended, screen) = tmux.wait_for("EXITED:0", Duration::from_secs(10));
    assert!(ended, "q did not end the view with status 0:\n{screen}");
    assert_eq!(
        tmux.cmd(&["display", "-p", "-t", "trace", "#{alternate_on}"])
            .trim(),
        "0",
        "the terminal is still on the alternate screen after q"
    );
    assert!(
        !screen.contains("q quit"),
        "the view's drawing is left on the normal screen:\n{screen}"
    );
}
