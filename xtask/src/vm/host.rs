//! The host's own tools and directories, as the other rooms use them.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// Sorted entry names of `dir`, or nothing if it does not exist.
pub(super) fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

pub(super) struct ToolOutput {
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// Runs a command to completion, turning spawn failures and non-zero exits
/// into errors that carry the command's own stderr.
pub(super) fn run_tool(cmd: &mut Command, what: &str, install_hint: &str) -> Result<ToolOutput> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what} ({install_hint})"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{what} failed with {}:\n{}", out.status, stderr.trim_end());
    }
    Ok(ToolOutput { stdout, stderr })
}
