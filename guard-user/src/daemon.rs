//! `guard run`: load the probes, watch the cgroups, and answer verdicts as
//! they arrive. The only things that wake this loop are a verdict in the
//! ring buffer and a termination signal.

use std::{fs, path::Path};

use anyhow::Context as _;
use guard_common::{Verdict, stat};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use crate::{
    cgroup::{self, Hierarchy},
    policy::Policy,
    probes::{Probes, Settings, Throttle},
    respond::Responder,
};

pub async fn run(policy: Policy) -> anyhow::Result<()> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let root = Path::new(cgroup::DEFAULT_ROOT);
    cgroup::check_v2(&mountinfo, root)?;

    let mut probes = Probes::load(Settings {
        budget: policy.budget,
        window: policy.window,
        verdict_interval: policy.verdict_interval,
        min_progress_pages: policy.min_progress_pages,
        watch_all: true,
    })?;
    match &probes.throttle {
        Throttle::Hooked { handler } => {
            info!(
                handler,
                "throttle hooks attached: penalty sleeps count as stall"
            )
        }
        Throttle::Refused { reason } => warn!(
            %reason,
            "fentry refused by this kernel: running on the reclaim tracepoints alone; \
             penalty sleeps are not seen, so a verdict needs the budget in reclaim time alone"
        ),
    }

    let hierarchy = Hierarchy::new(root);
    let watched = hierarchy.scan_high_limited()?;
    for (id, dir) in &watched {
        probes.watch(*id)?;
        info!(cgroup = %hierarchy.display_path(dir), cgroup_id = id, "watching");
    }
    // Cgroups created later, or limited later, are watched too: a stall
    // under no listed cgroup is charged to the task's own cgroup, and the
    // verdict is confirmed against whichever ancestor is over memory.high.
    info!(
        with_memory_high = watched.len(),
        "watching every cgroup; those with a finite memory.high now aggregate their subtree"
    );
    let ring = probes.take_verdicts()?;
    // SAFETY: the ring buffer's fd belongs to `ring`, which the AsyncFd owns
    // for its whole life, so the registered fd stays open and unchanged.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the verdict ring buffer with tokio")?;

    let mut responder = Responder::new(policy, hierarchy, "/proc", watched);
    // The guard must keep working when memory is short: its pages stay in.
    if let Err(e) =
        rustix::mm::mlockall(rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE)
    {
        warn!(error = %e, "mlockall failed: the guard's own pages may be reclaimed under pressure");
    }
    responder.warm_up();
    info!(
        dry_run = responder.policy.dry_run,
        budget_ms = responder.policy.budget.as_millis() as u64,
        window_ms = responder.policy.window.as_millis() as u64,
        watched = responder.watched().len(),
        "guard ready"
    );
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "could not notify the service manager");
    }

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut ready = ready.context("waiting on the verdict ring buffer")?;
                while let Some(item) = ready.get_inner_mut().next() {
                    let verdict = Verdict::from_bytes(&item);
                    drop(item);
                    match verdict {
                        Some(v) => {
                            responder.handle(&v, Some(&mut probes));
                        }
                        None => warn!("short record in the verdict ring buffer"),
                    }
                }
                ready.clear_ready();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    if let Ok(s) = probes.stats() {
        info!(
            passes = s[stat::PASSES as usize],
            no_progress = s[stat::NO_PROGRESS as usize],
            penalties = s[stat::PENALTIES as usize],
            verdicts = s[stat::VERDICTS as usize],
            verdicts_lost = s[stat::VERDICTS_LOST as usize],
            "guard stopping"
        );
    }
    Ok(())
}
