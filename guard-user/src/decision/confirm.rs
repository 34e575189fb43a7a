//! Confirming a verdict against the memory it is about: the cgroup over
//! memory.high at or above the charged one, or the host's MemAvailable.

use std::path::PathBuf;

use guard_common::Verdict;
use tracing::{debug, warn};

use super::{Confirmed, Outcome, Responder};
use crate::{
    cgroup::Hierarchy,
    config::{HostMode, KillMode, Scope},
    events::HOST_NAME,
};

impl Responder {
    /// The directory of the cgroup a verdict charges: a cgroup user space
    /// listed or knows, or else the one the stalled task is in.
    pub(super) fn charged_cgroup(&mut self, v: &Verdict) -> Option<PathBuf> {
        if let Some(dir) = self
            .watched
            .get(&v.cgroup_id)
            .or(self.known.get(&v.cgroup_id))
        {
            return Some(dir.clone());
        }
        for pid in [v.worst_pid, v.worst_tgid] {
            let Ok(rel) = self.procfs.cgroup(pid) else {
                continue;
            };
            let dir = self.hierarchy.root().join(rel.trim_start_matches('/'));
            // The task may have moved since: only its cgroup at verdict time counts.
            if Hierarchy::id_of(&dir).is_ok_and(|id| id == v.cgroup_id) {
                return Some(dir);
            }
        }
        None
    }

    pub(super) fn confirm_cgroup(&mut self, v: &Verdict) -> Result<Confirmed, Outcome> {
        let Some(charged) = self.charged_cgroup(v) else {
            warn!(
                cgroup_id = v.cgroup_id,
                pid = v.worst_pid,
                "verdict for a cgroup that is gone, and its stalled task with it"
            );
            return Err(Outcome::UnknownCgroup);
        };
        let stall_ms = v.stall_ns / 1_000_000;
        // The stall is the throttle of whichever cgroup at or above the
        // charged one is over its memory.high: that is the one to relieve,
        // with victims from its whole subtree.
        let (dir, mem) = match self.hierarchy.over_high(&charged) {
            Ok(Some(found)) => found,
            Ok(None) => {
                debug!(cgroup = %self.hierarchy.display_path(&charged), stall_ms,
                    "verdict not confirmed: no cgroup at or above it is over memory.high");
                return Err(Outcome::NotConfirmed);
            }
            Err(e) => {
                warn!(cgroup = %self.hierarchy.display_path(&charged), error = %e,
                    "stalled cgroup vanished before it could be confirmed");
                return Err(Outcome::CgroupGone);
            }
        };
        let name = self.hierarchy.display_path(&dir);
        let policy = &self.policy;
        let scope = *self.scope_of.entry(dir.clone()).or_insert_with(|| {
            policy
                .config
                .scope_for(&name)
                .map(|s: &Scope| (s.kill, s.kill_watched_cgroup))
        });
        let Some((mode, kill_watched)) = scope else {
            debug!(cgroup = %name, "stalled cgroup is in no scope of the policy: left alone");
            return Err(Outcome::OutOfScope);
        };
        Ok(Confirmed {
            key: dir.clone(),
            name,
            dir: Some(dir),
            overage: mem.overage(),
            current: mem.current,
            high: mem.high,
            available: None,
            mode,
            kill_watched,
            dry_run: self.policy.dry_run(),
        })
    }

    /// The host's MemAvailable threshold and what is available, bytes.
    pub(super) fn host_memory(&mut self) -> Option<(u64, u64, u64)> {
        let (total, available) = self.procfs.meminfo()?;
        let threshold = total / 100 * self.policy.config.host.min_available_percent;
        Some((total, available, threshold))
    }

    pub(super) fn confirm_host(&mut self, v: &Verdict) -> Result<Confirmed, Outcome> {
        let host = self.policy.config.host;
        if host.mode == HostMode::Off {
            return Err(Outcome::OutOfScope);
        }
        let Some((total, available, threshold)) = self.host_memory() else {
            warn!("host stall, but /proc/meminfo could not be read: nothing done");
            return Err(Outcome::NotConfirmed);
        };
        if available >= threshold {
            debug!(
                stall_ms = v.stall_ns / 1_000_000,
                available,
                threshold,
                "host verdict not confirmed: MemAvailable is above host.min_available_percent"
            );
            return Err(Outcome::NotConfirmed);
        }
        Ok(Confirmed {
            key: PathBuf::from(HOST_NAME),
            name: HOST_NAME.to_owned(),
            dir: None,
            // The shortfall below the threshold stands in for a cgroup's
            // overage: the victims must cover it.
            overage: threshold - available,
            current: total - available,
            high: u64::MAX,
            available: Some(available),
            mode: KillMode::Process,
            kill_watched: false,
            dry_run: self.policy.dry_run() || host.mode == HostMode::Watch,
        })
    }
}
