//! `guard status`: what an admin checks after installing. The version and
//! the kernel; whether a daemon runs and which hooks are live; every cgroup
//! with a finite memory.high, its limits, pressure and stall, and the scope
//! that applies; kills and unresolved stalls so far and the last incidents;
//! other memory killers running; and warnings for risky settings. It asks
//! the running daemon on its socket when there is one, and reads the rest
//! from the machine, so it works without a daemon too.

mod daemon;
mod log;
mod peers;
mod render;
#[cfg(test)]
mod tests;
mod warnings;

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
};

use serde::Serialize;

pub use daemon::{Answer, DaemonInfo};
pub use log::{Events, IncidentLine};
pub use peers::{PEERS, Peer};
pub use warnings::Warning;

use crate::{
    cgroup::{self, Hierarchy},
    config::ConfigError,
    daemon::{RunOptions, read_policy},
    decision::{Census, Responder},
    observe::parse_pressure,
    policy::Policy,
    procfs::ProcFs,
};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Policy(#[from] ConfigError),
    #[error("writing the status: {0}")]
    Write(#[from] io::Error),
    #[error("writing the status as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What `guard status` is asked.
#[derive(Clone, Debug)]
pub struct Options {
    pub socket: PathBuf,
    /// The policy file (None: as `guard run` reads it).
    pub config: Option<PathBuf>,
    pub event_log: PathBuf,
    pub json: bool,
}

/// Everything `guard status` says; `--json` prints it as it is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    pub guard_version: String,
    pub kernel: String,
    /// The running daemon; None when none answered.
    pub daemon: Option<DaemonInfo>,
    /// Why there is no daemon to show (none runs, not allowed to ask).
    pub daemon_note: Option<String>,
    /// Which hooks are live, for people.
    pub hooks: String,
    /// Why no cgroup is listed, when the machine cannot have any (no
    /// cgroup v2 memory controller).
    pub cgroups_note: Option<String>,
    pub cgroups: Vec<CgroupStatus>,
    pub events: Events,
    pub peers: Vec<Peer>,
    pub warnings: Vec<Warning>,
}

/// One cgroup with a finite memory.high.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CgroupStatus {
    pub cgroup: String,
    pub memory_high: u64,
    /// None: "max".
    pub memory_max: Option<u64>,
    /// None: "max", or no memory.swap.max file (see `swap_max_absent`).
    pub swap_max: Option<u64>,
    /// No memory.swap.max file (swap accounting off in the kernel).
    pub swap_max_absent: bool,
    pub memory_current: u64,
    pub psi_some_avg10: Option<f64>,
    pub psi_full_avg10: Option<f64>,
    /// The daemon's stall in the current window; None without a daemon
    /// (or when it sent no sample of this cgroup).
    pub stall_window_ns: Option<u64>,
    /// The globs of the scope that applies; None: in no scope, not watched.
    pub scope: Option<String>,
    pub budget_ms: Option<u64>,
    pub window_ms: Option<u64>,
    /// Its processes as guard judges them.
    #[serde(skip)]
    pub census: Option<Census>,
}

/// The machine as `guard status` reads it; tests point it at fixtures.
#[derive(Clone, Debug)]
pub struct Machine {
    /// The cgroup2 hierarchy with the memory controller, or why there is
    /// none.
    pub cgroups: Result<PathBuf, String>,
    pub proc_root: PathBuf,
}

impl Machine {
    /// This machine.
    pub fn here() -> Self {
        let root = Path::new(cgroup::DEFAULT_ROOT);
        let cgroups = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))
            .and_then(|m| cgroup::check_v2(&m, root).map_err(|e| e.to_string()))
            .map(|()| root.to_owned());
        Self {
            cgroups,
            proc_root: PathBuf::from("/proc"),
        }
    }

    fn swap_on(&self) -> bool {
        ProcFs::new(&self.proc_root).swap_on()
    }
}

/// `guard status`: asks, reads, prints. Only a policy that does not load or
/// a stdout that cannot be written is an error.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let (policy, _) =
        read_policy(&RunOptions::new(opts.config.clone(), false)).map_err(StatusError::from)?;
    let answer = daemon::ask(&opts.socket, daemon::LISTEN);
    let status = gather(&Machine::here(), policy, answer, &opts.event_log);
    let mut stdout = io::stdout().lock();
    if opts.json {
        use io::Write as _;
        serde_json::to_writer(&mut stdout, &status).map_err(StatusError::from)?;
        writeln!(stdout).map_err(StatusError::from)?;
    } else {
        render::write(&mut stdout, &status).map_err(StatusError::from)?;
    }
    Ok(())
}

/// Everything, from the machine, the daemon's answer and its log.
pub fn gather(machine: &Machine, policy: Policy, answer: Answer, log_dir: &Path) -> Status {
    let swap_on = machine.swap_on();
    let (daemon, daemon_note, windows) = match answer {
        Answer::Running {
            info,
            stall_window_ns,
        } => (Some(info), None, Some(stall_window_ns)),
        Answer::Absent(why) | Answer::Denied(why) | Answer::Broken(why) => (None, Some(why), None),
    };
    let hooks = hooks_line(daemon.as_ref(), daemon_note.as_deref());
    let (cgroups, cgroups_note) = match &machine.cgroups {
        Ok(root) => match cgroups(root, &machine.proc_root, &policy, windows.as_ref()) {
            Ok(list) => (list, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
        Err(why) => (Vec::new(), Some(why.clone())),
    };
    let mut warnings = warnings::warnings(&cgroups, &policy, swap_on);
    if let Some(w) = daemon.as_ref().and_then(warnings::daemon_version) {
        warnings.push(w);
    }
    Status {
        guard_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: crate::kernel::release(),
        daemon,
        daemon_note,
        hooks,
        cgroups_note,
        cgroups,
        events: log::read(log_dir),
        peers: peers::find(&machine.proc_root),
        warnings,
    }
}

fn hooks_line(daemon: Option<&DaemonInfo>, note: Option<&str>) -> String {
    let Some(d) = daemon else {
        return match note {
            Some(why) if why.starts_with("no guard daemon") => {
                "none live: no guard daemon runs".to_owned()
            }
            _ => "unknown: the daemon could not be asked".to_owned(),
        };
    };
    let tracepoints = match d.tracepoints.as_str() {
        "btf" => "reclaim tracepoints as BTF-typed tracepoints (tp_btf)",
        "classic" => "reclaim tracepoints the classic way (tracefs, perf_event_open)",
        "mixed" => "reclaim tracepoints, some BTF-typed, some the classic way",
        _ => "reclaim tracepoints (how, this daemon does not say)",
    };
    if d.throttle_hooked {
        format!("fentry on the memory.high throttle, and {tracepoints}")
    } else {
        format!(
            "tracepoints only (fentry refused by this kernel: penalty sleeps are not seen): \
             {tracepoints}"
        )
    }
}

/// Every cgroup under `root` with a finite memory.high, in path order,
/// with the scope that applies as `guard explain` finds it.
fn cgroups(
    root: &Path,
    proc_root: &Path,
    policy: &Policy,
    windows: Option<&HashMap<String, u64>>,
) -> Result<Vec<CgroupStatus>, cgroup::CgroupError> {
    let hierarchy = Hierarchy::new(root);
    let mut dirs: Vec<PathBuf> = hierarchy.scan_high_limited()?.into_values().collect();
    dirs.sort();
    let mut responder =
        Responder::new(policy.clone(), hierarchy.clone(), proc_root, HashMap::new());
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(mem) = Hierarchy::memory(&dir) else {
            // Removed while listed.
            continue;
        };
        let name = hierarchy.display_path(&dir);
        let limit = |v: u64| (v != u64::MAX).then_some(v);
        let swap = fs::read_to_string(dir.join("memory.swap.max"));
        let (some, full) = fs::read_to_string(dir.join("memory.pressure"))
            .map(|t| parse_pressure(&t))
            .unwrap_or((None, None));
        let scope = policy.config.scope_for(&name);
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        out.push(CgroupStatus {
            memory_high: mem.high,
            memory_max: limit(mem.max),
            swap_max: swap
                .as_deref()
                .ok()
                .and_then(cgroup::parse_limit)
                .and_then(limit),
            swap_max_absent: swap.is_err(),
            memory_current: mem.current,
            psi_some_avg10: some,
            psi_full_avg10: full,
            stall_window_ns: windows.and_then(|w| w.get(&name).copied()),
            budget_ms: scope.map(|s| ms(s.budget)),
            window_ms: scope.map(|s| ms(s.window)),
            scope: scope.map(|s| s.paths.join(", ")),
            // Only where guard would act: elsewhere who is protected
            // changes nothing, and each census is a scan of the subtree.
            census: scope.and_then(|_| responder.census(&dir)),
            cgroup: name,
        });
    }
    Ok(out)
}
