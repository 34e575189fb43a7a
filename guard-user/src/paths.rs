//! Paths that no one but root can change. guard runs as root and trusts a
//! file (the policy) or writes one (the event socket, the event log) at a
//! path an admin names; if anyone else could change a directory on the
//! way, they could swap in a link and turn that trust or that write against
//! the machine.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Whose files count as safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owners {
    /// root's only: what guard trusts (the policy file).
    Root,
    /// root's, or those of the user guard runs as: where guard writes (a
    /// daemon run by a user for a test writes into that user's directory).
    RootOrSelf,
}

impl Owners {
    fn allow(self, uid: u32) -> bool {
        uid == 0 || (self == Self::RootOrSelf && uid == rustix::process::geteuid().as_raw())
    }
}

/// Why a path is not safe, or could not be looked at.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("looking at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Someone else could change it; `why` says how, and the fix.
    #[error("refusing {path}: {why}")]
    Exposed { path: PathBuf, why: String },
}

/// What a failed check says: the path's role in the message (`what`, "the
/// event log's directory") and what someone who could change it would gain
/// (`gain`, "chooses which processes guard kills").
#[derive(Clone, Copy, Debug)]
pub struct Role<'a> {
    pub what: &'a str,
    /// How the directories above it are named ("a directory above the
    /// policy file").
    pub above: &'a str,
    pub gain: &'a str,
}

/// What [`judge`] looks at in a path's metadata (from `lstat`).
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub uid: u32,
    /// st_mode: the file type and permission bits.
    pub mode: u32,
    pub symlink: bool,
}

impl From<&fs::Metadata> for Meta {
    fn from(m: &fs::Metadata) -> Self {
        Self {
            uid: m.uid(),
            mode: m.mode(),
            symlink: m.file_type().is_symlink(),
        }
    }
}

/// Checks one path from its metadata: not a symbolic link, owned by
/// `owners`, and not writable by group or others, unless `sticky_ok` and it
/// is a root-owned directory with the sticky bit (like /tmp: there only an
/// entry's owner may rename or remove it).
pub fn judge(
    path: &Path,
    role: Role<'_>,
    owners: Owners,
    meta: Meta,
    sticky_ok: bool,
) -> Result<(), PathError> {
    let Role { what, gain, .. } = role;
    let shown = path.display();
    if meta.symlink {
        return Err(PathError::Exposed {
            path: path.to_owned(),
            why: format!(
                "{what} is a symbolic link: whoever can change the link or its target {gain}. \
                 Fix: use the real path (readlink -f {shown}), or replace the link with a \
                 root-owned copy"
            ),
        });
    }
    let Meta { uid, mode, .. } = meta;
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if !owners.allow(uid) {
        problems.push(format!("owned by uid {uid}, not root"));
        fixes.push(format!("chown root:root {shown}"));
    }
    let is_dir = mode & 0o170000 == 0o040000;
    let sticky = sticky_ok && is_dir && mode & 0o1000 != 0 && uid == 0;
    let writers = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        _ if sticky => None,
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
    Err(PathError::Exposed {
        path: path.to_owned(),
        why: format!(
            "{what} is {}: whoever can write it {gain}. Fix: {}",
            problems.join(" and "),
            fixes.join(" && ")
        ),
    })
}

/// Checks `dir` (as `role`, a sticky one only if `sticky_ok`) and every
/// directory above it up to `/` (sticky ones allowed: an entry of root's
/// stays put in them).
pub fn check_dirs(
    dir: &Path,
    role: Role<'_>,
    owners: Owners,
    sticky_ok: bool,
) -> Result<(), PathError> {
    let absolute = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|source| PathError::Io {
                path: PathBuf::from("."),
                source,
            })?
            .join(dir)
    };
    let above = Role {
        what: role.above,
        ..role
    };
    for (i, d) in absolute.ancestors().enumerate() {
        let meta = fs::symlink_metadata(d).map_err(|source| PathError::Io {
            path: d.to_owned(),
            source,
        })?;
        let (role, sticky_ok) = if i == 0 {
            (role, sticky_ok)
        } else {
            (above, true)
        };
        judge(d, role, owners, Meta::from(&meta), sticky_ok)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const ROLE: Role<'static> = Role {
        what: "the test directory",
        above: "a directory above the test directory",
        gain: "wins",
    };

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn a_directory_others_may_write_is_refused_naming_it_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
        let msg = check_dirs(&open, ROLE, Owners::RootOrSelf, false)
            .expect_err("refused")
            .to_string();
        assert!(
            msg.starts_with(&format!("refusing {}: the test directory", open.display())),
            "{msg}"
        );
        assert!(
            msg.contains("writable by its group and others (mode 0777)"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("chmod go-w {}", open.display())),
            "{msg}"
        );
        // Sticky, like /tmp: fine above, not as the directory itself.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).expect("chmod");
        let sticky = check_dirs(&open, ROLE, Owners::RootOrSelf, false);
        assert!(sticky.is_err());
        if is_root() {
            check_dirs(&open.join("."), ROLE, Owners::RootOrSelf, true).expect("sticky allowed");
            let below = open.join("mine");
            fs::create_dir(&below).expect("mkdir");
            check_dirs(&below, ROLE, Owners::RootOrSelf, false).expect("below a sticky root dir");
        }
    }

    #[test]
    fn a_symlinked_or_foreign_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        fs::create_dir(&real).expect("mkdir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let msg = check_dirs(&link, ROLE, Owners::RootOrSelf, false)
            .expect_err("refused")
            .to_string();
        assert!(msg.contains("symbolic link"), "{msg}");
        if is_root() {
            std::os::unix::fs::chown(&real, Some(65_534), None).expect("chown");
            let msg = check_dirs(&real.join("x"), ROLE, Owners::Root, false)
                .expect_err("missing x")
                .to_string();
            assert!(msg.starts_with("looking at"), "{msg}");
            let msg = check_dirs(&real, ROLE, Owners::RootOrSelf, false)
                .expect_err("refused")
                .to_string();
            assert!(msg.contains("owned by uid 65534, not root"), "{msg}");
        }
    }
}
