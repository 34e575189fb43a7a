//! The Debian mirror this machine's apt already uses, read from its
//! configuration so no mirror host is ever written into the repository.

use anyhow::{Context, Result, anyhow};
use std::fs;
use std::path::Path;

use super::host::read_dir_names;

/// One `deb`/`deb-src` source, from either file format.
#[derive(Debug, Default, PartialEq, Eq)]
struct SourceEntry {
    types: Vec<String>,
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    signed_by: String,
    enabled: bool,
}

/// Release names (and aliases) whose presence marks a source as Debian's.
const DEBIAN_SUITES: [&str; 12] = [
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "sid",
    "stable",
    "oldstable",
    "oldoldstable",
    "testing",
    "unstable",
    "experimental",
];

/// Finds the Debian mirror this machine's apt uses, so downloads go wherever
/// the machine is allowed to reach (a local mirror, a proxy, ...).
pub(crate) fn find_mirror() -> Result<String> {
    let etc = Path::new("/etc/apt");
    let parts = etc.join("sources.list.d");
    let part_names = read_dir_names(&parts)?;
    let mut entries = Vec::new();
    let mut read = |path: &Path, parse: fn(&str) -> Vec<SourceEntry>| -> Result<()> {
        match fs::read_to_string(path) {
            Ok(text) => entries.extend(parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        Ok(())
    };
    for name in part_names.iter().filter(|n| n.ends_with(".sources")) {
        read(&parts.join(name), parse_deb822)?;
    }
    read(&etc.join("sources.list"), parse_one_line)?;
    for name in part_names.iter().filter(|n| n.ends_with(".list")) {
        read(&parts.join(name), parse_one_line)?;
    }
    choose_mirror(&entries).ok_or_else(|| {
        anyhow!(
            "no Debian mirror found in /etc/apt/sources.list.d/*.sources or \
             /etc/apt/sources.list: need an enabled `deb` source with component \
             `main` for a Debian suite (e.g. bookworm)"
        )
    })
}

/// Picks the mirror URI: the stanza listing `bookworm` if there is one,
/// otherwise the first Debian `deb` source. Security mirrors are skipped,
/// as they only carry `*-security` suites.
fn choose_mirror(entries: &[SourceEntry]) -> Option<String> {
    let candidates: Vec<(&SourceEntry, &String)> = entries
        .iter()
        .filter(|e| {
            e.enabled
                && e.types.iter().any(|t| t == "deb")
                && e.components.iter().any(|c| c == "main")
                && (e.signed_by.contains("debian-archive")
                    || e.suites.iter().any(|s| {
                        let base = s.split(['-', '/']).next().unwrap_or(s);
                        DEBIAN_SUITES.contains(&base)
                    }))
        })
        .flat_map(|e| e.uris.iter().map(move |u| (e, u)))
        .filter(|(_, uri)| !uri.contains("security") && !uri.starts_with("cdrom:"))
        .collect();
    candidates
        .iter()
        .find(|(e, _)| e.suites.iter().any(|s| s == "bookworm"))
        .or_else(|| candidates.first())
        .map(|(_, uri)| uri.trim_end_matches('/').to_owned())
}

/// Parses deb822 `.sources` text: stanzas separated by blank lines, `#`
/// comment lines, and continuation lines starting with whitespace.
fn parse_deb822(text: &str) -> Vec<SourceEntry> {
    let mut stanzas: Vec<Vec<(String, String)>> = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        stanzas.push(current);
    }
    stanzas
        .into_iter()
        .map(|fields| {
            let get = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            };
            let words = |key: &str| get(key).split_whitespace().map(str::to_owned).collect();
            SourceEntry {
                types: words("types"),
                uris: words("uris"),
                suites: words("suites"),
                components: words("components"),
                signed_by: get("signed-by").to_owned(),
                enabled: !get("enabled").eq_ignore_ascii_case("no"),
            }
        })
        .collect()
}

/// Parses one-line `sources.list` text: `TYPE [OPTIONS] URI SUITE COMPONENT...`.
fn parse_one_line(text: &str) -> Vec<SourceEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("").trim();
            let (kind, rest) = line.split_once(char::is_whitespace)?;
            let mut rest = rest.trim_start();
            let mut signed_by = String::new();
            if let Some(after) = rest.strip_prefix('[') {
                let (options, after) = after.split_once(']')?;
                for option in options.split_whitespace() {
                    if let Some(value) = option.strip_prefix("signed-by=") {
                        signed_by = value.to_owned();
                    }
                }
                rest = after;
            }
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_owned();
            let suite = words.next()?.to_owned();
            Some(SourceEntry {
                types: vec![kind.to_owned()],
                uris: vec![uri],
                suites: vec![suite],
                components: words.map(str::to_owned).collect(),
                signed_by,
                enabled: true,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# a comment inside the stanza
URIs: file:///srv/mirror/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: file:///srv/mirror/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn deb822_stanzas_are_parsed() {
        let entries = parse_deb822(DEB822);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].types, ["deb"]);
        assert_eq!(entries[0].uris, ["file:///srv/mirror/debian/"]);
        assert_eq!(entries[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(entries[0].components, ["main"]);
        assert!(entries[0].enabled);
        assert_eq!(entries[1].suites, ["bookworm-security"]);
    }

    #[test]
    fn deb822_mirror_prefers_bookworm_stanza() {
        let entries = parse_deb822(DEB822);
        assert_eq!(
            choose_mirror(&entries).as_deref(),
            Some("file:///srv/mirror/debian")
        );
    }

    #[test]
    fn deb822_mirror_skips_security_disabled_and_foreign_sources() {
        let text = "\
Types: deb
URIs: file:///srv/debian-security
Suites: trixie-security
Components: main

Types: deb
URIs: file:///srv/disabled/debian
Suites: trixie
Components: main
Enabled: no

Types: deb
URIs: file:///srv/vendor/linux/debian
Suites: trixie
Components: stable

Types: deb-src deb
URIs:
 file:///srv/mirror/debian
Suites: trixie trixie-updates
Components: main contrib
";
        let entries = parse_deb822(text);
        assert_eq!(entries.len(), 4);
        assert!(!entries[1].enabled);
        assert_eq!(entries[3].uris, ["file:///srv/mirror/debian"]);
        assert_eq!(
            choose_mirror(&entries).as_deref(),
            Some("file:///srv/mirror/debian")
        );
    }

    #[test]
    fn one_line_sources_are_parsed() {
        let text = "\
# deb file:///srv/commented/debian bookworm main
deb-src file:///srv/src/debian bookworm main
deb [ arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg ] file:///srv/debian-security bookworm-security main
deb [arch=amd64] file:/opt/debian bookworm main contrib # trailing comment
";
        let entries = parse_one_line(text);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].types, ["deb-src"]);
        assert_eq!(
            entries[1].signed_by,
            "/usr/share/keyrings/debian-archive-keyring.gpg"
        );
        assert_eq!(entries[1].uris, ["file:///srv/debian-security"]);
        assert_eq!(entries[2].uris, ["file:/opt/debian"]);
        assert_eq!(entries[2].suites, ["bookworm"]);
        assert_eq!(entries[2].components, ["main", "contrib"]);
        assert_eq!(choose_mirror(&entries).as_deref(), Some("file:/opt/debian"));
    }

    #[test]
    fn no_debian_source_means_no_mirror() {
        let entries = parse_one_line("deb file:///srv/ubuntu jammy main\n");
        assert_eq!(choose_mirror(&entries), None);
        assert_eq!(choose_mirror(&parse_deb822("")), None);
    }
}
