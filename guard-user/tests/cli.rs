//! The `guard` command line as an admin uses it (no root, no kernel needed).

use std::process::Command;

fn guard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(args)
        .output()
        .expect("run guard")
}

#[test]
fn config_default_prints_a_policy_that_config_check_accepts() {
    let out = guard(&["config", "default"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("guard.toml");
    std::fs::write(&path, &out.stdout).expect("write");
    let check = guard(&["config", "check", path.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    if is_root() {
        assert!(check.status.success(), "{stderr}");
        assert!(String::from_utf8_lossy(&check.stdout).contains(": ok"));
    } else {
        // The text is fine; a file of this user's is what guard run refuses.
        assert_eq!(check.status.code(), Some(1));
        assert!(
            stderr.contains("not root") && !stderr.contains(".toml:"),
            "{stderr}"
        );
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The example: serde stopped at one mistake and named only it.
#[test]
fn config_check_names_an_unknown_key_and_a_wrong_type_in_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("two.toml");
    std::fs::write(
        &path,
        "# two mistakes\ndry_run = false\nunknown_key = 3\nbudget_ms = 250\nwindow_ms = 1000\n\
         verdict_interval_ms = \"fast\"\n[[scope]]\npaths = [\"/**\"]\nkill = 7\n",
    )
    .expect("write");
    let out = guard(&["config", "check", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display().to_string();
    for line in [3, 6, 9] {
        assert!(
            stderr.contains(&format!("{p}:{line}:")),
            "line {line}: {stderr}"
        );
    }
    assert!(stderr.contains("unknown_key"), "{stderr}");
}

#[test]
fn config_check_refuses_a_file_others_can_change_as_guard_run_would() {
    use std::os::unix::fs::PermissionsExt as _;
    let out = guard(&["config", "default"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("guard.toml");
    std::fs::write(&path, &out.stdout).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let check = guard(&["config", "check", path.to_str().expect("utf-8")]);
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains(&format!("refusing {}", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("writable by its group and others"),
        "{stderr}"
    );
    assert!(
        stderr.contains("guard run and a reload refuse this file"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&check.stdout).contains(": ok"));
}

#[test]
fn config_check_names_every_error_with_line_and_column_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "budget_ms = 0\n[order]\nprefer = [\"(unclosed\"]\n[[scope]]\npaths = [\"/**\"]\n",
    )
    .expect("write");
    let out = guard(&["config", "check", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display().to_string();
    assert!(stderr.contains(&format!("{p}:1:")), "{stderr}");
    assert!(stderr.contains(&format!("{p}:3:")), "{stderr}");
}

#[test]
fn run_with_a_missing_policy_file_says_which_file() {
    let out = guard(&["run", "--dry-run", "--config", "/nonexistent/guard.toml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/guard.toml"), "{stderr}");
}

#[test]
fn completions_and_man_page_are_generated() {
    let bash = guard(&["completions", "bash"]);
    assert!(bash.status.success());
    assert!(String::from_utf8_lossy(&bash.stdout).contains("config"));
    let man = guard(&["man"]);
    assert!(man.status.success());
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH guard"));
}

#[test]
fn report_of_a_missing_or_foreign_file_fails_and_names_it() {
    let out = guard(&["report", "/nonexistent/guard-events.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/guard-events.jsonl"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "this is not a recorded stream\n").expect("write");
    let out = guard(&["report", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("notes.txt"), "{stderr}");
}

#[test]
fn trace_without_a_daemon_or_root_says_what_to_do() {
    use std::os::unix::process::CommandExt as _;
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to become another user");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(["trace", "--json", "--socket", "/nonexistent/events.sock"])
        .current_dir("/")
        .uid(65_534)
        .gid(65_534)
        .output()
        .expect("run guard");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no guard daemon on /nonexistent/events.sock")
            && stderr.contains("needs root")
            && stderr.contains("systemctl start guard"),
        "{stderr}"
    );
}

/// After installing, without a daemon: what runs and what the log says.
#[test]
fn status_without_a_daemon_reads_the_machine_and_the_event_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kill = |pid: u32, dry_run: bool| {
        format!(
            "{{\"v\":1,\"mono_ns\":{pid}000000000,\"unix_ms\":1795000000000,\"type\":\"kill\",\
             \"cgroup\":\"/seed.slice\",\"pid\":{pid},\"comm\":\"grep\",\"footprint_bytes\":1,\
             \"reason\":\"memory_high_stall\",\"mode\":\"process\",\"killed_cgroup\":null,\
             \"also_killed\":0,\"stall_ns\":1,\"latency_us\":1,\"memory_current\":2,\
             \"memory_high\":1,\"dry_run\":{dry_run}}}\n"
        )
    };
    let log = [kill(100, false), kill(200, false), kill(300, true)].concat();
    std::fs::write(dir.path().join("events.jsonl"), log).expect("write log");
    // Its own policy, not whatever this machine has in /etc/guard.
    let policy = dir.path().join("guard.toml");
    std::fs::write(&policy, "[[scope]]\npaths = [\"/**\"]\n").expect("write policy");
    let out = guard(&[
        "status",
        "--json",
        "--socket",
        "/nonexistent/events.sock",
        "--event-log",
        dir.path().to_str().expect("utf-8"),
        "--config",
        policy.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["daemon"].is_null(), "{v}");
    assert_eq!(v["guard_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["events"]["readable"], true, "{v}");
    assert_eq!(v["events"]["kills"], 2, "{v}");
    assert_eq!(v["events"]["dry_run_kills"], 1, "{v}");
    assert!(
        v["daemon_note"]
            .as_str()
            .is_some_and(|n| n.contains("/nonexistent/events.sock")),
        "{v}"
    );
}

/// `guard status` is for the members of group `guard` too, who hold none of
/// the daemon's capabilities: a policy whose hook runs as another user (which
/// `guard run` may only load with CAP_SETUID and CAP_SETGID) must not stop
/// it. Run as nobody through setpriv (util-linux), so it needs root.
#[test]
fn status_runs_without_capabilities_on_a_policy_with_a_hook_user() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    if std::fs::metadata("/proc/self").expect("/proc/self").uid() != 0 {
        eprintln!("skipped: needs root to become nobody");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let policy = dir.path().join("guard.toml");
    std::fs::write(
        &policy,
        "[[scope]]\npaths = [\"/**\"]\n\n[hook]\ncommand = [\"/bin/true\"]\nuser = \"nobody\"\n",
    )
    .expect("write policy");
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_guard"))
        .args(["status", "--json", "--socket", "/nonexistent/events.sock"])
        .arg("--config")
        .arg(&policy)
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["daemon"].is_null(), "{v}");
    // guard run, by contrast, refuses that policy without the capabilities.
    let run = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_guard"))
        .args(["config", "check"])
        .arg(&policy)
        .output()
        .expect("run setpriv");
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("CAP_SETUID"),
        "{run:?}"
    );
}
