//! Other memory killers running on the machine, and how each one meets
//! guard.

use std::{fs, path::Path};

use serde::Serialize;

/// Each peer guard knows, by process name, with one line on how it and
/// guard interact (facts from each project's own code and docs).
pub const PEERS: [(&str, &str); 4] = [
    (
        "earlyoom",
        "acts on the machine's free RAM and swap only, so it never sees a cgroup stalled on \
         memory.high (the machine has free memory then); guard acts long before it would. No \
         conflict.",
    ),
    (
        "systemd-oomd",
        "kills whole cgroups with ManagedOOMMemoryPressure= whose PSI stays over its limit for \
         a duration (20-30 s by default); guard acts within about 250 ms, first, so oomd acts \
         only where guard could not (an unresolved stall). They coexist.",
    ),
    (
        "oomd",
        "kills whole cgroups on PSI, swap or other rules of its own config over a duration; \
         guard acts first within its budget, so oomd acts only where guard could not (an \
         unresolved stall). They coexist.",
    ),
    (
        "nohang",
        "acts on the machine's memory and PSI as a whole, like earlyoom: it does not see a \
         cgroup stalled on memory.high, and guard acts long before it would. No conflict.",
    ),
];

/// A peer found running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub name: String,
    pub pid: u32,
    pub interaction: String,
}

/// The peers running under `proc_root`, by /proc/PID/comm or the base name
/// of /proc/PID/exe (the latter readable only for one's own processes
/// unless root), in pid order.
pub fn find(proc_root: &Path) -> Vec<Peer> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found: Vec<Peer> = entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let dir = e.path();
            let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let exe = fs::read_link(dir.join("exe")).ok();
            let exe_name = exe
                .as_deref()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .map(|n| n.trim_end_matches(" (deleted)").to_owned());
            let (name, interaction) = PEERS.iter().find(|(name, _)| {
                comm.trim_end_matches('\n') == *name || exe_name.as_deref() == Some(name)
            })?;
            Some(Peer {
                name: (*name).to_owned(),
                pid,
                interaction: (*interaction).to_owned(),
            })
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(proc_root: &Path, pid: u32, comm: &str, exe: Option<&str>) {
        let dir = proc_root.join(pid.to_string());
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("comm"), format!("{comm}\n")).expect("comm");
        if let Some(exe) = exe {
            std::os::unix::fs::symlink(exe, dir.join("exe")).expect("exe");
        }
    }

    #[test]
    fn peers_are_found_by_name_or_executable_with_their_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = dir.path();
        process(proc_root, 1, "systemd", Some("/usr/lib/systemd/systemd"));
        process(proc_root, 40, "systemd-oomd", None);
        process(proc_root, 7, "earlyoom", Some("/usr/bin/earlyoom"));
        // A name cut to 15 bytes, found by its executable.
        process(proc_root, 90, "oomd-worker", Some("/usr/local/bin/oomd"));
        // Lookalikes are not peers.
        process(proc_root, 91, "earlyoom2", Some("/tmp/earlyoomx"));
        process(proc_root, 92, "bash", None);
        fs::create_dir_all(proc_root.join("self")).expect("mkdir");
        let found = find(proc_root);
        let got: Vec<(&str, u32)> = found.iter().map(|p| (p.name.as_str(), p.pid)).collect();
        assert_eq!(
            got,
            vec![("earlyoom", 7), ("systemd-oomd", 40), ("oomd", 90)]
        );
        assert!(found[0].interaction.contains("free RAM"), "{found:?}");
        assert!(found[1].interaction.contains("ManagedOOMMemoryPressure"));
        assert!(find(&proc_root.join("absent")).is_empty());
    }
}
