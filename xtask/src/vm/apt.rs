//! apt and dpkg run against a private package list, and the `apt-cache
//! show` fields read from what they print.

use anyhow::{Context, Result, anyhow, bail};
use std::fs;
use std::path::Path;
use std::process::Command;

use super::host::{ToolOutput, read_dir_names, run_tool};

/// Keyring used to verify all three suites. Bookworm's
/// `debian-archive-keyring` also carries the trixie keys, which currently sign
/// trixie and sid as well.
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// apt pointed at a private, single-suite package list, so fetching a
/// kernel never touches (or depends on) the host's own apt state.
pub(super) struct Apt {
    suite: String,
    options: Vec<String>,
}

impl Apt {
    pub(super) fn new(work: &Path, suite: &str, mirror: &str) -> Result<Self> {
        if !Path::new(ARCHIVE_KEYRING).is_file() {
            bail!("{ARCHIVE_KEYRING} is missing (install debian-archive-keyring)");
        }
        let sources = work.join("sources.list");
        // arch= and target= keep `update` to the one index we read.
        fs::write(
            &sources,
            format!(
                "deb [signed-by={ARCHIVE_KEYRING} arch=amd64 target=Packages] \
                 {mirror} {suite} main\n"
            ),
        )
        .with_context(|| format!("writing {}", sources.display()))?;
        let lists = work.join("lists");
        let cache = work.join("cache");
        for dir in [
            lists.join("partial"),
            cache.join("archives").join("partial"),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let path = |p: &Path| p.display().to_string();
        let options = [
            ("Dir::Etc::sourcelist", path(&sources)),
            // A directory that does not exist: ignore the host's sources.list.d.
            ("Dir::Etc::sourceparts", "-".to_owned()),
            // Host pins could hide the candidate we want.
            ("Dir::Etc::preferences", path(&work.join("preferences"))),
            ("Dir::Etc::preferencesparts", "-".to_owned()),
            ("Dir::State::Lists", path(&lists)),
            ("Dir::State::status", "/dev/null".to_owned()),
            // Private so we never overwrite the host's pkgcache.bin.
            ("Dir::Cache", path(&cache)),
            ("Dir::Cache::archives", path(&cache.join("archives"))),
            ("APT::Architecture", "amd64".to_owned()),
            ("APT::Architectures", "amd64".to_owned()),
            // Only the current candidate in `apt-cache show`.
            ("APT::Cache::AllVersions", "false".to_owned()),
            // As root apt drops to the `_apt` user, which cannot write into a
            // private download directory under $HOME; it is our own cache, so
            // downloading as ourselves is fine (apt ignores this for non-root).
            ("APT::Sandbox::User", "root".to_owned()),
        ]
        .into_iter()
        .flat_map(|(key, value)| ["-o".to_owned(), format!("{key}={value}")])
        .collect();
        Ok(Self {
            suite: suite.to_owned(),
            options,
        })
    }

    pub(super) fn update(&self) -> Result<()> {
        // A suite signed by a key newer than the host's keyring fails here;
        // say which package to upgrade instead of leaving only apt's words.
        let keyring_hint = || {
            format!(
                "{ARCHIVE_KEYRING} lacks the key that signs {}: upgrade \
                 debian-archive-keyring (e.g. from the host's *-updates or backports)",
                self.suite
            )
        };
        let out = self.run("apt-get", &["-q", "update"], None).map_err(|e| {
            if format!("{e:#}").contains("NO_PUBKEY") {
                e.context(keyring_hint())
            } else {
                e
            }
        })?;
        // Failed fetches are only warnings to apt-get, but stale or missing
        // lists would resolve the wrong kernel or none at all.
        let problems: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
            .collect();
        if problems.iter().any(|l| {
            l.starts_with("E:") || l.contains("GPG error") || l.contains("Failed to fetch")
        }) {
            let error = anyhow!(
                "apt-get update for {} reported:\n{}",
                self.suite,
                problems.join("\n")
            );
            if out.stderr.contains("NO_PUBKEY") {
                return Err(error.context(keyring_hint()));
            }
            return Err(error);
        }
        for warning in problems {
            eprintln!("xtask: apt ({}): {warning}", self.suite);
        }
        Ok(())
    }

    /// The candidate version's `Depends:` value of `package`.
    pub(super) fn depends(&self, package: &str) -> Result<String> {
        let out = self.run("apt-cache", &["show", package], None)?;
        depends_field(&out.stdout)
            .ok_or_else(|| anyhow!("apt-cache show {package} ({}) has no Depends", self.suite))
    }

    pub(super) fn download_and_extract(
        &self,
        package: &str,
        download_dir: &Path,
        root: &Path,
    ) -> Result<()> {
        fs::create_dir_all(download_dir)
            .with_context(|| format!("creating {}", download_dir.display()))?;
        self.run("apt-get", &["-q", "download", package], Some(download_dir))?;
        let prefix = format!("{package}_");
        let deb = read_dir_names(download_dir)?
            .into_iter()
            .find(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            .map(|n| download_dir.join(n))
            .ok_or_else(|| {
                anyhow!(
                    "apt-get download {package} left no .deb in {}",
                    download_dir.display()
                )
            })?;
        run_tool(
            Command::new("dpkg").arg("-x").arg(&deb).arg(root),
            "dpkg -x",
            "install dpkg",
        )?;
        fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str], cwd: Option<&Path>) -> Result<ToolOutput> {
        let mut cmd = Command::new(program);
        cmd.args(&self.options).args(args);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        run_tool(
            &mut cmd,
            &format!("{program} {} ({})", args.join(" "), self.suite),
            "install apt",
        )
    }
}

/// The `Depends:` value of the first stanza of `apt-cache show` output.
fn depends_field(show: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in show.lines() {
        if line.trim().is_empty() {
            break;
        }
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => {
                v.push(' ');
                v.push_str(line.trim());
            }
            Some(_) => break,
            None => {
                if let Some(rest) = line.strip_prefix("Depends:") {
                    value = Some(rest.trim().to_owned());
                }
            }
        }
    }
    value
}

/// The first package named in a `Depends:` value (alternatives included)
/// that starts with `prefix` and is not `exclude`, without version or
/// architecture qualifiers.
pub(super) fn pick_dependency(depends: &str, prefix: &str, exclude: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .filter_map(|alternative| {
            alternative
                .trim()
                .split(|c: char| c.is_whitespace() || c == '(' || c == ':')
                .next()
        })
        .find(|name| name.starts_with(prefix) && *name != exclude)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::kernels::META_PACKAGE;

    #[test]
    fn depends_field_reads_first_stanza() {
        let show = "\
Package: linux-image-cloud-amd64
Version: 7.2.13-1
Depends: linux-base-cloud-amd64 (= 7.2.13-1),
 linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Description: Linux for x86-64 cloud

Package: linux-image-cloud-amd64
Version: 7.1.0-1
Depends: linux-image-7.1.0-1-cloud-amd64 (= 7.1.0-1)
";
        let depends = depends_field(show);
        assert_eq!(
            depends.as_deref(),
            Some(
                "linux-base-cloud-amd64 (= 7.2.13-1), \
                 linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)"
            )
        );
        assert_eq!(depends_field("Package: x\nVersion: 1\n"), None);
    }

    #[test]
    fn meta_package_resolves_to_concrete_image() {
        let bookworm = "linux-image-6.1.0-41-cloud-amd64 (= 6.1.158-1)";
        assert_eq!(
            pick_dependency(bookworm, "linux-image-", META_PACKAGE).as_deref(),
            Some("linux-image-6.1.0-41-cloud-amd64")
        );
        let sid = "linux-base-cloud-amd64 (= 7.2.13-1), \
                   linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)";
        assert_eq!(
            pick_dependency(sid, "linux-image-", META_PACKAGE).as_deref(),
            Some("linux-image-7.2.13+deb14-cloud-amd64")
        );
        assert_eq!(pick_dependency(sid, "linux-binary-", ""), None);
    }

    #[test]
    fn split_image_resolves_to_binary_package() {
        let depends = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                       linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), \
                       linux-binary-7.2.13+deb14-cloud-amd64:amd64 (= 7.2.13-1), \
                       linux-modules-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)";
        assert_eq!(
            pick_dependency(depends, "linux-binary-", "").as_deref(),
            Some("linux-binary-7.2.13+deb14-cloud-amd64")
        );
    }
}
