//! The policy file on disk: read only if no one but root can change it.
//!
//! Whoever can write the policy chooses which processes guard kills, and
//! which program it runs as root after a kill.

use std::{fs, io::Read as _, os::unix::fs::OpenOptionsExt, path::Path};

use super::ConfigError;
use crate::paths::{self, Meta, Owners, PathError, Role};

/// The policy file and the directories above it, as messages name them.
const FILE: Role<'static> = Role {
    what: "the policy file",
    above: "a directory above the policy file",
    gain: GAIN,
};
const DIR: Role<'static> = Role {
    what: "the policy file's directory",
    ..FILE
};
const GAIN: &str = "chooses which processes guard kills";

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
    paths::judge(path, FILE, Owners::Root, Meta::from(&meta), false).map_err(insecure)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io_err)?;
    Ok(text)
}

/// Refuses a file, or any directory above it up to `/`, that someone other
/// than root could change: owner not uid 0, group or other write bit set
/// (a root-owned directory with the sticky bit, like /tmp, is fine: there
/// only an entry's owner may rename or remove it), or a symbolic link. The
/// error says which path, why, and how to fix it (chown root:root / chmod
/// go-w / the real path).
pub fn check_secure(path: &Path) -> Result<(), ConfigError> {
    let meta = fs::symlink_metadata(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    paths::judge(path, FILE, Owners::Root, Meta::from(&meta), false).map_err(insecure)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    paths::check_dirs(dir, DIR, Owners::Root, true).map_err(insecure)
}

fn insecure(e: PathError) -> ConfigError {
    match e {
        PathError::Io { path, source } => ConfigError::Io { path, source },
        PathError::Exposed { path, why } => ConfigError::Insecure { path, why },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::config::{Config, DEFAULT_POLICY};

    fn judge(
        path: &Path,
        role: Role<'_>,
        uid: u32,
        mode: u32,
        symlink: bool,
    ) -> Result<(), ConfigError> {
        let meta = Meta { uid, mode, symlink };
        paths::judge(path, role, Owners::Root, meta, true).map_err(insecure)
    }

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
        let msg = refused(0, 0o040777, false);
        assert!(msg.contains("others"), "{msg}");
        // Sticky (like /tmp): a root-owned entry in it stays put.
        judge(Path::new("/tmp"), DIR, 0, 0o041777, false).expect("a sticky root dir");
        let msg = refused(1000, 0o041777, false);
        assert!(msg.contains("uid 1000"), "{msg}");
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

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// tempdir/a/b/guard.toml, all root's and 0755/0644 but for `a`.
    fn nested(a_uid: u32, a_mode: u32) -> (tempfile::TempDir, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = a.join("b");
        fs::create_dir_all(&b).expect("mkdir");
        let file = b.join("guard.toml");
        fs::write(&file, DEFAULT_POLICY).expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::set_permissions(&a, fs::Permissions::from_mode(a_mode)).expect("chmod");
        std::os::unix::fs::chown(&a, Some(a_uid), None).expect("chown");
        (dir, a, file)
    }

    #[test]
    fn a_directory_above_the_file_that_a_user_controls_is_refused() {
        if !is_root() {
            eprintln!("SKIPPED: needs root to give a directory away");
            return;
        }
        let (_dir, a, file) = nested(65_534, 0o755);
        let msg = Config::load(&file).expect_err("refused").to_string();
        assert!(
            msg.contains(&format!(
                "refusing {}: a directory above the policy file",
                a.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains("uid 65534") && msg.contains("chown root:root"),
            "{msg}"
        );

        let (_dir, a, file) = nested(0, 0o777);
        let msg = Config::load(&file).expect_err("refused").to_string();
        assert!(msg.contains(&a.display().to_string()), "{msg}");
        assert!(msg.contains("writable by its group and others"), "{msg}");

        // Root's all the way up, through the sticky /tmp: accepted.
        let (_dir, _a, file) = nested(0, 0o755);
        Config::load(&file).expect("a file only root can change loads");
    }

    #[test]
    fn a_symlinked_directory_above_the_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        fs::create_dir(&real).expect("mkdir");
        fs::write(real.join("guard.toml"), DEFAULT_POLICY).expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let err = check_secure(&link.join("guard.toml")).expect_err("refused");
        let msg = err.to_string();
        if is_root() {
            assert!(
                msg.contains(&format!("refusing {}", link.display())),
                "{msg}"
            );
            assert!(msg.contains("symbolic link"), "{msg}");
        } else {
            // Not root: the file itself (the user's) is refused first.
            assert!(matches!(err, ConfigError::Insecure { .. }), "{msg}");
        }
    }

    #[test]
    fn load_of_a_missing_file_names_it() {
        let err = Config::load(Path::new("/nonexistent/guard.toml")).expect_err("missing");
        assert!(matches!(err, ConfigError::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/guard.toml"), "{err}");
    }
}
