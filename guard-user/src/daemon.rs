//! `guard run`: load the policy and the probes, watch the cgroups, and answer
//! verdicts as they arrive. Nothing on the kill path is driven by a timer:
//! the loop wakes for a verdict, a signal, or (under systemd) the watchdog.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;
use guard_common::{
    CGROUP_CREATED, CGROUP_REMOVED, CgroupEvent, TraceRecord, Verdict, Watch, stat,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracing::{debug, info, warn};

use crate::{
    cgroup::{self, Hierarchy},
    config::{self, Config, Hook, Scope},
    events::{Event, Record},
    observe::Observer,
    policy::Policy,
    probes::{Probes, Settings, Throttle},
    respond::{self, KillReport, Outcome, Responder, VictimEnd},
    stream,
};

/// Where the policy comes from, and where the event stream goes.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `--config`; without it /etc/guard/guard.toml if present, else the
    /// embedded default.
    pub config: Option<PathBuf>,
    /// `--dry-run`: overrides the file's `dry_run`.
    pub dry_run: bool,
    /// The event socket (None: no socket).
    pub socket: Option<PathBuf>,
    /// Directory of the daemon's own event log (None: no log).
    pub event_log: Option<PathBuf>,
    pub event_log_max_bytes: u64,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl RunOptions {
    /// The defaults of `guard run`: socket and log at their usual places.
    pub fn new(config: Option<PathBuf>, dry_run: bool) -> Self {
        Self {
            config,
            dry_run,
            socket: Some(PathBuf::from(stream::SOCKET_PATH)),
            event_log: Some(PathBuf::from(stream::LOG_DIR)),
            event_log_max_bytes: stream::LOG_MAX_BYTES,
            metrics_addr: None,
        }
    }
}

/// How long after a verdict, kill or kernel OOM kill the daemon keeps
/// sampling the cgroups (and logging the samples): long enough to see the
/// memory come back.
const INCIDENT_TAIL: Duration = Duration::from_secs(15);
/// Records taken from one ring buffer before the loop looks at its other
/// sources: a flood of trace records must not starve the watchdog or a
/// verdict.
const DRAIN_BATCH: usize = 256;
/// Sample period during an incident, and while only listeners want rows.
const INCIDENT_SAMPLE: Duration = Duration::from_millis(250);
const LISTENER_SAMPLE: Duration = Duration::from_millis(500);

/// Where records go: the socket's listeners, the daemon's log, the metrics.
pub struct Outputs {
    pub bus: stream::Bus,
    pub log: Option<stream::EventLog>,
    /// Set after a log write failed, so it is said once, not per record.
    log_failed: bool,
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    incident_until: Option<std::time::Instant>,
}

impl Outputs {
    pub fn new(bus: stream::Bus, log: Option<stream::EventLog>) -> Self {
        Self {
            bus,
            log,
            log_failed: false,
            metrics: None,
            incident_until: None,
        }
    }

    pub fn emit(&mut self, record: &Record) {
        if matches!(
            record.event,
            Event::Verdict { .. }
                | Event::Kill { .. }
                | Event::OomKill { .. }
                | Event::Unresolved { .. }
                | Event::KillLimit { .. }
        ) {
            self.incident_until = Some(std::time::Instant::now() + INCIDENT_TAIL);
        }
        if let Some(m) = &self.metrics {
            m.observe(record);
        }
        self.bus.send(record);
        // Raw passes only flow while someone listens, and go to them alone;
        // samples are kept on disk around incidents.
        let keep = !record.event.is_raw()
            && (!matches!(record.event, Event::Sample { .. }) || self.in_incident());
        if keep && let Some(log) = &mut self.log {
            match log.write(record) {
                Ok(()) => self.log_failed = false,
                Err(e) if !self.log_failed => {
                    warn!(error = %e, "writing the event log failed; records go to listeners only");
                    self.log_failed = true;
                }
                Err(_) => {}
            }
        }
    }

    pub fn in_incident(&self) -> bool {
        self.incident_until
            .is_some_and(|t| std::time::Instant::now() < t)
    }

    /// How often to sample now, if at all.
    fn sample_period(&self) -> Option<Duration> {
        if self.in_incident() {
            Some(INCIDENT_SAMPLE)
        } else if self.bus.listened() {
            Some(LISTENER_SAMPLE)
        } else {
            None
        }
    }
}

/// The running kernel's release, for the hello record.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// What the kernel half is loaded with for a policy: the first scope's
/// limits as defaults, every cgroup watched, the host scope if it is on.
pub fn probe_settings(policy: &Policy) -> Settings {
    let (budget, window) = policy.default_limits();
    Settings {
        budget,
        window,
        verdict_interval: policy.config.verdict_interval,
        min_progress_pages: policy.config.min_progress_pages,
        watch_all: true,
        host: host_limits(&policy.config.host),
    }
}

/// Minimum time between two host verdicts: most ask "is MemAvailable low
/// yet?" and hear "no"; the one that hears "yes" must not wait long.
pub const HOST_VERDICT_INTERVAL: Duration = Duration::from_millis(20);

/// The kernel half's view of the host scope; None when it is off.
pub fn host_limits(host: &config::Host) -> Option<crate::probes::HostLimits> {
    (host.mode != config::HostMode::Off).then_some(crate::probes::HostLimits {
        budget: host.budget,
        window: host.window,
        retry_loops: host.retry_loops,
        early: host.on_direct_reclaim,
        interval: HOST_VERDICT_INTERVAL,
    })
}

type Ring = aya::maps::RingBuf<aya::maps::MapData>;

/// Takes at most [`DRAIN_BATCH`] records from a ready ring buffer, each
/// parsed and its slot given back before `handle` sees it. The readiness is
/// cleared only once the ring is empty, so the loop comes back for the rest
/// after its other sources (the watchdog among them) had their turn.
fn drain<T>(
    ready: &mut tokio::io::unix::AsyncFdReadyMutGuard<'_, Ring>,
    parse: impl Fn(&[u8]) -> Option<T>,
    mut handle: impl FnMut(Option<T>),
) {
    for _ in 0..DRAIN_BATCH {
        let Some(item) = ready.get_inner_mut().next() else {
            ready.clear_ready();
            return;
        };
        let parsed = parse(&item);
        drop(item);
        handle(parsed);
    }
}

/// The niceness the kill path runs at: the hog, its bystanders and every
/// other busy task of a stalled machine compete for the CPU, and a verdict
/// must not wait behind them.
const NICE: i32 = -20;

/// Raises this thread's (and so every later thread's) CPU priority to
/// [`NICE`], unless it already is there (systemd's `Nice=`); says so when
/// it cannot.
fn raise_priority() {
    match rustix::process::getpriority_process(None) {
        Ok(nice) if nice <= NICE => {}
        _ => {
            if let Err(e) = rustix::process::setpriority_process(None, NICE) {
                warn!(error = %e, nice = NICE,
                    "could not raise the guard's CPU priority: under load its kill path may \
                     wait for the CPU (give it CAP_SYS_NICE, or Nice=-20 in its unit)");
            }
        }
    }
}

/// Registers a ring buffer with tokio.
pub fn async_ring(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    what: &str,
) -> anyhow::Result<AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>> {
    // SAFETY: the ring buffer's fd belongs to `ring`, which the AsyncFd owns
    // for its whole life, so the registered fd stays open and unchanged.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .with_context(|| format!("registering the {what} ring buffer with tokio"))
}

/// Reads the policy the options name. An explicit path must load; the
/// default path is used only when it exists.
pub fn load_policy(opts: &RunOptions) -> Result<(Policy, String), config::ConfigError> {
    let default = Path::new(config::DEFAULT_PATH);
    let (mut cfg, origin) = match &opts.config {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None if default.exists() => (Config::load(default)?, default.display().to_string()),
        None => (Config::default_policy(), "embedded default".to_owned()),
    };
    if opts.dry_run {
        cfg.dry_run = true;
    }
    Ok((Policy { config: cfg }, origin))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Cgroups to list in the kernel: those with a finite memory.high in a
/// scope, with the scope's budget and window.
fn scan(
    hierarchy: &Hierarchy,
    policy: &Policy,
) -> Result<HashMap<u64, (PathBuf, Watch)>, cgroup::CgroupError> {
    let mut out = HashMap::new();
    for (id, dir) in hierarchy.scan_high_limited()? {
        if let Some(scope) = policy.config.scope_for(&hierarchy.display_path(&dir)) {
            out.insert(id, (dir, scope_limits(scope)));
        }
    }
    Ok(out)
}

/// Whether a cgroup created after start is listed in the kernel under its
/// scope. A catch-all scope (one that matches any path, like the default
/// `/**`) lists nothing at creation: the kernel already charges stalls to the
/// task's own cgroup with the default limits, and listing every new cgroup
/// would only keep subtrees from adding up.
fn lists_on_creation(scope: &Scope) -> bool {
    !scope.matches("/guard-probe.slice/any/depth.scope")
}

fn scope_limits(scope: &Scope) -> Watch {
    Watch {
        budget_ns: nanos(scope.budget),
        window_ns: nanos(scope.window),
    }
}

/// Follows one cgroup creation or removal.
fn follow_cgroup(
    event: &CgroupEvent,
    probes: &mut Probes,
    responder: &mut Responder,
    hierarchy: &Hierarchy,
) {
    match event.kind {
        CGROUP_CREATED => {
            let Some(path) = event.path() else {
                debug!(
                    cgroup_id = event.id,
                    "created cgroup's path is too long to follow"
                );
                return;
            };
            let dir = hierarchy.root().join(path.trim_start_matches('/'));
            let scope = responder.policy.config.scope_for(path);
            let Some(scope) = scope.filter(|s| lists_on_creation(s)) else {
                responder.add_cgroup(event.id, dir, false);
                return;
            };
            let limits = scope_limits(scope);
            match probes.watch(event.id, limits) {
                Ok(()) => {
                    info!(
                        cgroup = path,
                        cgroup_id = event.id,
                        budget_ms = limits.budget_ns / 1_000_000,
                        window_ms = limits.window_ns / 1_000_000,
                        "watching new cgroup"
                    );
                    responder.add_cgroup(event.id, dir, true);
                }
                Err(e) => {
                    warn!(cgroup = path, error = %e, "could not watch a new cgroup");
                    responder.add_cgroup(event.id, dir, false);
                }
            }
        }
        CGROUP_REMOVED => {
            if responder.forget(event.id) {
                if let Err(e) = probes.unwatch(event.id) {
                    warn!(cgroup_id = event.id, error = %e, "could not unlist a removed cgroup");
                }
                info!(
                    cgroup = event.path().unwrap_or("?"),
                    cgroup_id = event.id,
                    "forgot removed cgroup"
                );
            }
        }
        _ => warn!(kind = event.kind, "unknown cgroup event"),
    }
}

/// Makes the kernel's list match `wanted`; returns the id -> path map.
fn apply_watch_list(
    probes: &mut Probes,
    hierarchy: &Hierarchy,
    old: &HashMap<u64, PathBuf>,
    wanted: HashMap<u64, (PathBuf, Watch)>,
) -> anyhow::Result<HashMap<u64, PathBuf>> {
    for id in old.keys().filter(|id| !wanted.contains_key(id)) {
        probes.unwatch(*id)?;
    }
    let mut paths = HashMap::new();
    for (id, (dir, limits)) in wanted {
        probes.watch(id, limits)?;
        if !old.contains_key(&id) {
            info!(cgroup = %hierarchy.display_path(&dir), cgroup_id = id,
                budget_ms = limits.budget_ns / 1_000_000, window_ms = limits.window_ns / 1_000_000,
                "watching");
        }
        paths.insert(id, dir);
    }
    Ok(paths)
}

/// Everything that follows a decision, once the kill (if any) is done: the
/// kernel's stall window reset, the records, the hook, and a watch on each
/// victim until it exits.
fn finish(
    outcome: Outcome,
    responder: &Responder,
    probes: &mut Probes,
    observer: &Observer,
    out: &mut Outputs,
    exits: &mut tokio::task::JoinSet<VictimEnd>,
) {
    match outcome {
        Outcome::Killed(k) => {
            let respond::Killed {
                report,
                victims,
                key,
                reset,
                exit_timeout,
            } = *k;
            if let Err(e) = probes.reset_cgroup(reset) {
                warn!(cgroup = %report.cgroup, error = %e, "could not reset the kernel's stall window");
            }
            for victim in victims {
                exits.spawn(respond::wait_exit(victim, key.clone(), exit_timeout));
            }
            if let Some(hook) = &responder.policy.config.hook {
                drop(spawn_hook(hook, &report));
            }
            out.emit(&observer.kill(&report));
        }
        Outcome::DryRun(report) => out.emit(&observer.kill(&report)),
        Outcome::Unresolved(Some(u)) => out.emit(&observer.unresolved(&u)),
        Outcome::LimitReached(l) => out.emit(&observer.kill_limit(&l)),
        _ => {}
    }
}

/// How a post-kill hook ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HookEnd {
    Succeeded,
    Failed,
    TimedOut,
    NotStarted,
}

/// Runs the post-kill hook in the background: it never delays the next
/// verdict, and is killed when it outlives its timeout.
pub fn spawn_hook(hook: &Hook, report: &KillReport) -> tokio::task::JoinHandle<HookEnd> {
    let Some((program, args)) = hook.command.split_first() else {
        // The policy check refuses an empty command; nothing to run.
        return tokio::spawn(async { HookEnd::NotStarted });
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("GUARD_PID", report.pid.to_string())
        .env("GUARD_COMM", &report.comm)
        .env("GUARD_CGROUP", &report.cgroup)
        .env("GUARD_FOOTPRINT_BYTES", report.footprint.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let timeout = hook.timeout;
    let program = program.clone();
    let child = cmd.spawn();
    tokio::spawn(async move {
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                warn!(%program, error = %e, "post-kill hook could not start");
                return HookEnd::NotStarted;
            }
        };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => HookEnd::Succeeded,
            Ok(Ok(status)) => {
                warn!(%program, %status, "post-kill hook failed");
                HookEnd::Failed
            }
            Ok(Err(e)) => {
                warn!(%program, error = %e, "waiting for the post-kill hook failed");
                HookEnd::Failed
            }
            Err(_) => {
                warn!(%program, timeout_ms = timeout.as_millis() as u64,
                    "post-kill hook timed out and was killed");
                let _ = child.kill().await;
                HookEnd::TimedOut
            }
        }
    })
}

/// Aborts a background task when the daemon's loop ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let (policy, origin) = load_policy(&opts)?;
    info!(policy = %origin, "policy loaded");
    let policy_dry_run = policy.dry_run();
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let root = Path::new(cgroup::DEFAULT_ROOT);
    cgroup::check_v2(&mountinfo, root)?;

    // Locked in memory first: the guard must keep working when memory is short.
    if let Err(e) =
        rustix::mm::mlockall(rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE)
    {
        warn!(error = %e, "mlockall failed: the guard's own pages may be reclaimed under pressure");
    }
    raise_priority();

    let (budget, window) = policy.default_limits();
    let mut probes = Probes::load(probe_settings(&policy))?;
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
    let watched = apply_watch_list(
        &mut probes,
        &hierarchy,
        &HashMap::new(),
        scan(&hierarchy, &policy)?,
    )?;
    // Cgroups created later, or limited later, are watched too: a stall
    // under no listed cgroup is charged to the task's own cgroup, and the
    // verdict is confirmed against whichever ancestor is over memory.high.
    info!(
        with_memory_high = watched.len(),
        "watching every cgroup; those with a finite memory.high now aggregate their subtree"
    );
    let mut ring = async_ring(probes.take_verdicts()?, "verdict")?;
    let mut cgroup_ring = async_ring(probes.take_cgroup_events()?, "cgroup event")?;
    let mut trace_ring = async_ring(probes.take_trace()?, "trace")?;
    let mut trace_switch = probes.take_trace_switch()?;
    let mut observer = Observer::new(Some(hierarchy.clone()), "/proc");

    let bus = stream::Bus::new();
    let mut listeners = bus.watch_listeners();
    let hello = Record::now(Event::Hello {
        source: "daemon".to_owned(),
        guard_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: kernel_release(),
        throttle_hooked: matches!(probes.throttle, Throttle::Hooked { .. }),
        dry_run: policy_dry_run,
    });
    // Observability must never stop the guard from guarding: a socket or
    // log that cannot be set up is said loudly, and the guard runs on.
    let _server = match &opts.socket {
        Some(path) => {
            let access = stream::Access::from_system();
            if access.group.is_none() {
                warn!(
                    group = stream::GROUP,
                    "no group `guard` on this machine: only root may read the event stream \
                     (groupadd --system guard)"
                );
            }
            match stream::bind(path, access) {
                Ok(listener) => {
                    info!(socket = %path.display(), "serving the event stream");
                    Some(AbortOnDrop(tokio::spawn(stream::serve(
                        listener,
                        bus.clone(),
                        hello,
                        access,
                    ))))
                }
                Err(e) => {
                    warn!(error = %e, "no event stream socket: guard trace and guard record \
                        cannot attach (the daemon's own log is kept regardless)");
                    None
                }
            }
        }
        None => None,
    };
    let log = opts.event_log.as_ref().and_then(|dir| {
        match stream::EventLog::open(dir, opts.event_log_max_bytes, stream::LOG_KEEP) {
            Ok(log) => {
                info!(path = %log.path().display(), max_bytes = opts.event_log_max_bytes,
                    "keeping an event log");
                Some(log)
            }
            Err(e) => {
                warn!(error = %e, "no event log: incidents are not kept on disk");
                None
            }
        }
    });
    let mut out = Outputs::new(bus, log);
    let mut metrics_requests = match opts.metrics_addr {
        Some(addr) => Some(crate::metrics_glue::start(addr, &mut out).await?),
        None => None,
    };
    let mut sampler: Option<(Duration, tokio::time::Interval)> = None;

    // Before READY=1: a SIGHUP sent as soon as the guard is ready must reload
    // it, not end it (the default action).
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;

    let mut responder = Responder::new(policy, hierarchy.clone(), "/proc", watched);
    // Victims being watched until they exit (each holds its pidfd).
    let mut exits: tokio::task::JoinSet<VictimEnd> = tokio::task::JoinSet::new();
    responder.set_known(hierarchy.scan_all());
    responder.warm_up();
    info!(
        dry_run = responder.policy.dry_run(),
        budget_ms = budget.as_millis() as u64,
        window_ms = window.as_millis() as u64,
        scopes = responder.policy.config.scopes.len(),
        // CLOCK_MONOTONIC: comparable with the service manager's timestamps.
        monotonic_us = crate::clock::monotonic_ns() / 1000,
        "guard ready"
    );
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "could not notify the service manager");
    }
    let mut watchdog_usec = 0;
    let mut watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec).then(|| {
        tokio::time::interval(
            Duration::from_micros(watchdog_usec / 2).max(Duration::from_millis(100)),
        )
    });

    loop {
        // Sampling runs only while someone listens or an incident is fresh:
        // an idle daemon with nobody watching has no timer but the watchdog.
        let period = out.sample_period();
        if sampler.as_ref().map(|(p, _)| *p) != period {
            sampler = period.map(|p| {
                let mut tick = tokio::time::interval(p);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                (p, tick)
            });
        }
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut ready = ready.context("waiting on the verdict ring buffer")?;
                drain(&mut ready, Verdict::from_bytes, |verdict| match verdict {
                    // The kill first; what is said about it after.
                    Some(v) => {
                        let outcome = responder.handle(&v);
                        out.emit(&observer.verdict(&v));
                        finish(outcome, &responder, &mut probes, &observer, &mut out, &mut exits);
                    }
                    None => warn!("short record in the verdict ring buffer"),
                });
                // After the kill, never before it: were records dropped?
                if let Ok(s) = probes.stats() {
                    for r in observer.lost(&s) {
                        out.emit(&r);
                    }
                }
            }
            Some(end) = exits.join_next(), if !exits.is_empty() => {
                match end {
                    Ok(end) => {
                        if let Some(limit) = responder.victim_ended(&end) {
                            out.emit(&observer.kill_limit(&limit));
                        }
                    }
                    Err(e) => warn!(error = %e, "watching a victim's exit failed"),
                }
            }
            ready = cgroup_ring.readable_mut() => {
                let mut ready = ready.context("waiting on the cgroup event ring buffer")?;
                drain(&mut ready, CgroupEvent::from_bytes, |event| match event {
                    Some(e) => {
                        follow_cgroup(&e, &mut probes, &mut responder, &hierarchy);
                        if let Some(r) = observer.cgroup_event(&e) {
                            out.emit(&r);
                        }
                    }
                    None => warn!("short record in the cgroup event ring buffer"),
                });
            }
            ready = trace_ring.readable_mut() => {
                let mut ready = ready.context("waiting on the trace ring buffer")?;
                drain(&mut ready, TraceRecord::from_bytes, |record| {
                    match record.and_then(|r| observer.trace(&r)) {
                        Some(r) => out.emit(&r),
                        None => warn!("short or unknown record in the trace ring buffer"),
                    }
                });
            }
            changed = listeners.changed() => {
                if changed.is_ok() {
                    let on = *listeners.borrow_and_update() > 0;
                    if let Err(e) = trace_switch.set(on) {
                        warn!(error = %e, "could not switch the kernel's trace records");
                    }
                }
            }
            _ = async {
                match sampler.as_mut() {
                    Some((_, tick)) => { tick.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                let stalls = probes.cgroup_stalls().unwrap_or_default();
                let listed: Vec<u64> = responder.watched().keys().copied().collect();
                for r in observer.samples(&stalls, &listed) {
                    out.emit(&r);
                }
                if let Ok(s) = probes.stats() {
                    for r in observer.lost(&s) {
                        out.emit(&r);
                    }
                }
            }
            Some(reply) = async {
                match metrics_requests.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                crate::metrics_glue::refresh(&mut probes, &observer, &out);
                let _ = reply.send(());
            }
            _ = hup.recv() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                match load_policy(&opts) {
                    Ok((policy, origin)) => {
                        let listed = scan(&hierarchy, &policy).map_err(anyhow::Error::from).and_then(|w| {
                            apply_watch_list(&mut probes, &hierarchy, responder.watched(), w)
                        });
                        match listed {
                            Ok(watched) => {
                                responder.replace_policy(policy, watched);
                                info!(policy = %origin, "policy reloaded");
                            }
                            Err(e) => warn!(error = %format!("{e:#}"),
                                "policy reload failed, keeping the current policy"),
                        }
                    }
                    Err(e) => warn!(error = %e, "policy reload failed, keeping the current policy"),
                }
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            }
            _ = async {
                match watchdog.as_mut() {
                    Some(w) => { w.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
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
            cgroup_events_lost = s[stat::CGROUP_EVENTS_LOST as usize],
            trace_sent = s[stat::TRACE_SENT as usize],
            direct_passes = s[stat::DIRECT_PASSES as usize],
            direct_no_progress = s[stat::DIRECT_NO_PROGRESS as usize],
            direct_early = s[stat::DIRECT_EARLY as usize],
            retry_limit_hits = s[stat::RETRY_LIMIT_HITS as usize],
            trace_lost = s[stat::TRACE_LOST as usize],
            "guard stopping"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> KillReport {
        KillReport {
            pid: 4242,
            comm: "hog".into(),
            cgroup: "/seed".into(),
            footprint: 70 << 20,
            ..KillReport::default()
        }
    }

    fn hook(command: &[&str], timeout_ms: u64) -> Hook {
        Hook {
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn the_hook_gets_the_victim_in_its_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("env");
        let script = format!(
            "echo \"$GUARD_PID $GUARD_COMM $GUARD_CGROUP $GUARD_FOOTPRINT_BYTES\" > {}",
            out.display()
        );
        let end = spawn_hook(&hook(&["/bin/sh", "-c", &script], 5000), &report())
            .await
            .expect("join");
        assert_eq!(end, HookEnd::Succeeded);
        let text = fs::read_to_string(&out).expect("hook wrote its environment");
        assert_eq!(text.trim(), format!("4242 hog /seed {}", 70u64 << 20));
    }

    #[tokio::test]
    async fn a_hook_that_outlives_its_timeout_is_killed_and_does_not_block() {
        let started = std::time::Instant::now();
        let handle = spawn_hook(&hook(&["/bin/sleep", "30"], 200), &report());
        // spawn_hook itself returns at once; the wait happens in the task.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(handle.await.expect("join"), HookEnd::TimedOut);
    }

    #[tokio::test]
    async fn a_missing_hook_program_is_reported() {
        let end = spawn_hook(&hook(&["/nonexistent/guard-hook"], 1000), &report())
            .await
            .expect("join");
        assert_eq!(end, HookEnd::NotStarted);
    }

    #[test]
    fn only_specific_scopes_list_cgroups_at_creation() {
        let p = Config::parse(
            "[[scope]]\npaths = [\"/user.slice/user-*.slice\"]\n[[scope]]\npaths = [\"/**\"]\n",
            "<test>",
        )
        .expect("valid");
        assert!(lists_on_creation(&p.scopes[0]));
        assert!(!lists_on_creation(&p.scopes[1]));
        assert!(!lists_on_creation(&Config::default_policy().scopes[0]));
    }

    #[test]
    fn the_daemon_log_keeps_events_and_samples_around_incidents_but_no_raw_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = stream::EventLog::open(dir.path(), 1 << 20, 1).expect("log");
        let path = log.path().to_owned();
        let mut out = Outputs::new(stream::Bus::new(), Some(log));
        let sample = || {
            Record::now(Event::Sample {
                cgroup_id: 1,
                cgroup: "/a".into(),
                memory_current: 1,
                memory_high: None,
                memory_max: None,
                stall_total_ns: 0,
                passes: 0,
                no_progress_passes: 0,
                reclaimed_pages: 0,
                psi_some_avg10: None,
                psi_full_avg10: None,
                worst_pid: 0,
                worst_comm: String::new(),
            })
        };
        let pass = Record::now(Event::Reclaim {
            pid: 1,
            tid: 1,
            comm: "x".into(),
            cgroup_id: 1,
            cgroup: "/a".into(),
            duration_ns: 1,
            reclaimed_pages: 0,
        });
        assert_eq!(out.sample_period(), None, "idle and unwatched: no timer");
        out.emit(&pass);
        out.emit(&sample());
        let verdict = Record::now(Event::Verdict {
            cgroup_id: 1,
            cgroup: "/a".into(),
            stall_ns: 1,
            window_ns: 1,
            budget_ns: 1,
            streak: 1,
            episode_start_ns: 0,
            worst_pid: 1,
            worst_comm: "x".into(),
        });
        out.emit(&verdict);
        assert_eq!(out.sample_period(), Some(INCIDENT_SAMPLE));
        out.emit(&sample());
        out.emit(&pass);
        let kinds: Vec<String> = fs::read_to_string(&path)
            .expect("log")
            .lines()
            .map(|l| Record::from_line(l).expect("valid").event.kind().to_owned())
            .collect();
        assert_eq!(kinds, vec!["verdict", "sample"]);
    }

    #[test]
    fn an_explicit_policy_file_must_load_and_dry_run_overrides_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = RunOptions::new(Some(dir.path().join("nope.toml")), false);
        assert!(load_policy(&missing).is_err());
        let (policy, origin) = load_policy(&RunOptions::new(None, true)).expect("default");
        if !Path::new(config::DEFAULT_PATH).exists() {
            assert_eq!(origin, "embedded default");
        }
        assert!(policy.dry_run());
    }
}
