//! `cargo xtask install`: puts the static binary, the systemd unit, the
//! default policy, the man page and shell completions in place.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Joins an absolute target path under `root` ("/" for the real system).
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn put(root: &Path, path: &str, data: &[u8], mode: u32) -> Result<PathBuf> {
    let dest = under(root, path);
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Written beside and renamed, so a running guard's binary is replaced,
    // not rewritten in place.
    let tmp = dest.with_extension("xtask-new");
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    eprintln!("xtask: installed {}", dest.display());
    Ok(dest)
}

/// What `guard ARGS` prints; an error naming the command when it fails.
pub(crate) fn output_of(guard: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(guard)
        .args(args)
        .output()
        .with_context(|| format!("running {} {}", guard.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            guard.display(),
            args.join(" "),
            out.status
        );
    }
    Ok(out.stdout)
}

/// Installs under `root`. Never overwrites an existing policy file.
pub fn install(guard: &Path, unit: &Path, root: &Path) -> Result<()> {
    let binary = fs::read(guard).with_context(|| format!("reading {}", guard.display()))?;
    put(root, "/usr/local/sbin/guard", &binary, 0o755)?;
    let unit_text = fs::read(unit).with_context(|| format!("reading {}", unit.display()))?;
    put(root, "/etc/systemd/system/guard.service", &unit_text, 0o644)?;
    let policy = under(root, "/etc/guard/guard.toml");
    if policy.exists() {
        eprintln!("xtask: kept the existing {}", policy.display());
    } else {
        put(
            root,
            "/etc/guard/guard.toml",
            &output_of(guard, &["config", "default"])?,
            0o644,
        )?;
    }
    put(
        root,
        "/usr/local/share/man/man8/guard.8",
        &output_of(guard, &["man"])?,
        0o644,
    )?;
    put(
        root,
        "/usr/local/share/bash-completion/completions/guard",
        &output_of(guard, &["completions", "bash"])?,
        0o644,
    )?;
    put(
        root,
        "/usr/local/share/zsh/site-functions/_guard",
        &output_of(guard, &["completions", "zsh"])?,
        0o644,
    )?;
    if root == Path::new("/") {
        ensure_group()?;
        eprintln!("xtask: now run: systemctl daemon-reload && systemctl enable --now guard");
    }
    Ok(())
}

/// The `guard` group: its members may read the event stream
/// (/run/guard/events.sock) without being root.
fn ensure_group() -> Result<()> {
    let groups = fs::read_to_string("/etc/group").context("reading /etc/group")?;
    if groups.lines().any(|l| l.split(':').next() == Some("guard")) {
        return Ok(());
    }
    let status = Command::new("groupadd")
        .args(["--system", "guard"])
        .status()
        .context("running groupadd")?;
    if !status.success() {
        bail!("groupadd --system guard failed: {status}");
    }
    eprintln!(
        "xtask: created group `guard`; add users who may watch `guard trace`: usermod -aG guard USER"
    );
    Ok(())
}
