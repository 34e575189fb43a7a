//! Whose a victim was: its uid, that uid's user name, and the systemd unit
//! its cgroup belongs to, for the kill record, the post-kill hook and the
//! person who lost the process. Names come from /etc/passwd, read as text:
//! the binary is static, so the C library's name services are not there.

use std::fs;

use serde::{Deserialize, Serialize};

/// Where user names are looked up.
pub const PASSWD: &str = "/etc/passwd";

/// The owner of a killed process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The real uid of the process.
    pub uid: u32,
    /// Its name in /etc/passwd, when it has one.
    pub user: Option<String>,
    /// The deepest `.service` or `.scope` of the process's cgroup path.
    pub unit: Option<String>,
}

impl Owner {
    /// The owner of a process with real uid `uid` in the cgroup `cgroup`
    /// (a path as users know it, "/user.slice/..."), names from `passwd`.
    pub fn new(uid: u32, cgroup: Option<&str>, passwd: &str) -> Self {
        Self {
            uid,
            user: passwd_name(passwd, uid).map(str::to_owned),
            unit: cgroup.and_then(unit_of).map(str::to_owned),
        }
    }

    /// " (user alice, unit vim.scope)", " (uid 4242)": for one-line text.
    pub fn describe(&self) -> String {
        let who = match &self.user {
            Some(user) => format!("user {user}"),
            None => format!("uid {}", self.uid),
        };
        match &self.unit {
            Some(unit) => format!(" ({who}, unit {unit})"),
            None => format!(" ({who})"),
        }
    }

    /// As `new`, with this machine's /etc/passwd (unreadable: no name).
    pub fn here(uid: u32, cgroup: Option<&str>) -> Self {
        let passwd = fs::read_to_string(PASSWD).unwrap_or_default();
        Self::new(uid, cgroup, &passwd)
    }
}

/// The uid and gid of `name` in an /etc/passwd text.
pub fn passwd_ids(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// The name of `uid` in an /etc/passwd text (the first line with it).
pub fn passwd_name(passwd: &str, uid: u32) -> Option<&str> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next().filter(|n| !n.is_empty())?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then_some(name)
    })
}

/// The systemd unit a cgroup path belongs to: its deepest component that
/// names a service or a scope ("/user.slice/user-1000.slice/user@1000.service
/// /app.slice/vim.scope" is in vim.scope). None outside any (a cgroup made
/// by hand, or a slice itself).
pub fn unit_of(cgroup: &str) -> Option<&str> {
    cgroup
        .split('/')
        .rev()
        .find(|part| part.ends_with(".service") || part.ends_with(".scope"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/bash\n\
        nobody:x:65534:65534::/:/usr/sbin/nologin\n\
        alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
        # a comment line\n\
        broken line\n";

    #[test]
    fn users_are_found_by_name_and_by_uid() {
        assert_eq!(passwd_ids(PASSWD_TEXT, "nobody"), Some((65534, 65534)));
        assert_eq!(passwd_ids(PASSWD_TEXT, "alice"), Some((1000, 1000)));
        assert_eq!(passwd_ids(PASSWD_TEXT, "bob"), None);
        assert_eq!(passwd_name(PASSWD_TEXT, 1000), Some("alice"));
        assert_eq!(passwd_name(PASSWD_TEXT, 0), Some("root"));
        assert_eq!(passwd_name(PASSWD_TEXT, 4242), None);
        assert_eq!(passwd_name("", 0), None);
    }

    #[test]
    fn the_unit_is_the_deepest_service_or_scope() {
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/vim.scope"),
            Some("vim.scope")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/user@1000.service"),
            Some("user@1000.service")
        );
        assert_eq!(
            unit_of("/system.slice/t3-serve@2.service"),
            Some("t3-serve@2.service")
        );
        // A cgroup below a unit still belongs to it.
        assert_eq!(
            unit_of("/system.slice/docker-1f2e.scope/init"),
            Some("docker-1f2e.scope")
        );
        assert_eq!(unit_of("/seed"), None);
        assert_eq!(unit_of("/user.slice"), None);
        assert_eq!(unit_of("/"), None);
    }

    #[test]
    fn an_owner_is_named_from_passwd_and_its_cgroup() {
        let o = Owner::new(1000, Some("/system.slice/hog.service"), PASSWD_TEXT);
        assert_eq!(o.uid, 1000);
        assert_eq!(o.user.as_deref(), Some("alice"));
        assert_eq!(o.unit.as_deref(), Some("hog.service"));
        assert_eq!(o.describe(), " (user alice, unit hog.service)");
        let nobody_known = Owner::new(4242, None, PASSWD_TEXT);
        assert_eq!(nobody_known.user, None);
        assert_eq!(nobody_known.unit, None);
        assert_eq!(nobody_known.describe(), " (uid 4242)");
    }
}
