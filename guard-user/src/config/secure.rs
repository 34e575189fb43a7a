//! The policy file on disk: read only if no one but root can change it.
//!
//! Whoever can write the policy chooses which processes guard kills, and
//! which program it runs as root after a kill.

use std::{
    fs,
    io::Read as _,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

use super::ConfigError;

const FILE: &str = "the policy file";
const DIR: &str = "the policy file's directory";

/// The text of a policy file that passes [`check_secure`].
pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    check_secure(path)?;
    let io_err = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    // O_NOFOLLOW and a second look at the opened file: a link put in
    // place after the check is refused, not followed.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    judge(path, FILE, meta.uid(), meta.mode(), false)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io_err)?;
    Ok(text)
}

/// Refuses a file, or its directory, writable by anyone but root (owner not
/// uid 0, or group/other write bit set), or a symlink; the error says which
/// path and why and how to fix (chown root:root / chmod go-w).
pub fn check_secure(path: &Path) -> Result<(), ConfigError> {
    let look = |p: &Path| {
        fs::symlink_metadata(p).map_err(|source| ConfigError::Io {
            path: p.to_owned(),
            source,
        })
    };
    let meta = look(path)?;
    judge(
        path,
        FILE,
        meta.uid(),
        meta.mode(),
        meta.file_type().is_symlink(),
    )?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = look(dir)?;
    judge(
        dir,
        DIR,
        meta.uid(),
        meta.mode(),
        meta.file_type().is_symlink(),
    )
}

/// The decision of [`check_secure`] on one path, from its metadata.
fn judge(
    path: &Path,
    what: &str,
    uid: u32,
    mode: u32,
    is_symlink: bool,
) -> Result<(), ConfigError> {
    let shown = path.display();
    if is_symlink {
        return Err(ConfigError::Insecure {
            path: path.to_owned(),
            why: format!(
                "{what} is a symbolic link: whoever can change the link or its target chooses \
                 the policy. Fix: use the real path (readlink -f {shown}), or replace the link \
                 with a root-owned copy of the file"
            ),
        });
    }
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if uid != 0 {
        problems.push(format!("owned by uid {uid}, not root"));
        fixes.push(format!("chown root:root {shown}"));
    }
    let writers = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("its group and others"),
        (true, false) => Some("its group"),
        (false, true) => Some("others"),
        (false, false) => None,
    };
    if let Some(writers) = writers {
        problems.push(format!(
            "writable by {writers} (mode {:04o})",
            mode & 0o7777
        ));
        fixes.push(format!("chmod go-w {shown}"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Insecure {
        path: path.to_owned(),
        why: format!(
            "{what} is {}: whoever can write it chooses which processes guard kills. Fix: {}",
            problems.join(" and "),
            fixes.join(" && ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEFAULT_POLICY};

    fn refused(uid: u32, mode: u32, is_symlink: bool) -> String {
        match judge(
            Path::new("/etc/guard/guard.toml"),
            FILE,
            uid,
            mode,
            is_symlink,
        ) {
            Err(e @ ConfigError::Insecure { .. }) => e.to_string(),
            Err(e) => panic!("expected insecure, got {e}"),
            Ok(()) => panic!("expected a refusal"),
        }
    }

    #[test]
    fn a_root_owned_file_writable_only_by_root_is_trusted() {
        let ok = |mode| judge(Path::new("/etc/guard/guard.toml"), FILE, 0, mode, false);
        ok(0o100644).expect("0644");
        ok(0o100600).expect("0600");
        ok(0o040755).expect("a 0755 directory");
    }

    #[test]
    fn a_group_writable_file_is_refused_with_the_fix() {
        let msg = refused(0, 0o100664, false);
        assert!(msg.contains("/etc/guard/guard.toml"), "{msg}");
        assert!(msg.contains("writable by its group"), "{msg}");
        assert!(msg.contains("chmod go-w /etc/guard/guard.toml"), "{msg}");
        let msg = refused(0, 0o041777, false);
        assert!(msg.contains("others"), "{msg}");
    }

    #[test]
    fn a_file_owned_by_a_user_is_refused_with_the_fix() {
        let msg = refused(1000, 0o100644, false);
        assert!(msg.contains("/etc/guard/guard.toml"), "{msg}");
        assert!(msg.contains("uid 1000"), "{msg}");
        assert!(
            msg.contains("chown root:root /etc/guard/guard.toml"),
            "{msg}"
        );
        assert!(!msg.contains("chmod"), "{msg}");
    }

    #[test]
    fn a_symlink_is_refused() {
        let msg = refused(0, 0o120777, true);
        assert!(msg.contains("/etc/guard/guard.toml"), "{msg}");
        assert!(msg.contains("symbolic link"), "{msg}");
    }

    #[test]
    fn load_refuses_a_group_writable_file_on_disk() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("guard.toml");
        fs::write(&file, DEFAULT_POLICY).expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o664)).expect("chmod");
        let err = Config::load(&file).expect_err("refused");
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Insecure { .. }), "{msg}");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("chmod go-w"), "{msg}");
    }

    #[test]
    fn load_refuses_a_symlink_on_disk() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.toml");
        fs::write(&real, DEFAULT_POLICY).expect("write");
        fs::set_permissions(&real, fs::Permissions::from_mode(0o644)).expect("chmod");
        let link = dir.path().join("guard.toml");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let err = Config::load(&link).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains(&link.display().to_string()), "{msg}");
        assert!(msg.contains("symbolic link"), "{msg}");
    }

    #[test]
    fn load_of_a_missing_file_names_it() {
        let err = Config::load(Path::new("/nonexistent/guard.toml")).expect_err("missing");
        assert!(matches!(err, ConfigError::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/guard.toml"), "{err}");
    }
}
