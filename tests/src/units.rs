//! systemd from inside a guest where it is PID 1: the helpers the bench and
//! the systemd scenarios share.

use std::{
    fs,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

/// Runs a command; its stdout, or an error naming it and its stderr.
pub(crate) fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One property of a unit, as `systemctl show` prints it (empty when it
/// cannot be read).
pub(crate) fn prop(unit: &str, name: &str) -> String {
    sh(&["systemctl", "show", "-p", name, "--value", unit]).unwrap_or_default()
}

/// Writes a config file, making its directory.
pub(crate) fn put_file(path: &str, text: &str) -> Result<(), String> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    fs::write(path, text).map_err(|e| format!("writing {path}: {e}"))
}

/// Waits until `unit` is no longer running; false when it still is at
/// `limit`.
pub(crate) fn wait_inactive(unit: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        let state = prop(unit, "ActiveState");
        if !matches!(
            state.as_str(),
            "active" | "activating" | "deactivating" | "reloading"
        ) {
            return true;
        }
        sleep(Duration::from_millis(100));
    }
    false
}
