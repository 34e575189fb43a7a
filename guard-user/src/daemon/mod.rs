//! `guard run`: load the policy and the probes, watch the cgroups, and answer
//! verdicts as they arrive. Set-up first, then one small handler per kind of
//! message: a verdict, a cgroup event, a trace record, a victim's exit, a
//! sampling tick, a scrape, a reload, a signal. Nothing on the kill path is
//! driven by a timer: the loop wakes for a verdict, a signal, or (under
//! systemd) the watchdog.

mod fair;
mod hook;
mod metrics;
mod notify;
mod outputs;
mod watch;

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use guard_common::{CgroupEvent, TraceRecord, Verdict, stat};
use tokio::{
    signal::unix::{SignalKind, signal},
    task::{JoinError, JoinSet},
    time::{Interval, MissedTickBehavior},
};
use tracing::{info, warn};

pub use hook::{HOOK_QUEUE, HookEnd, HookRunner};
pub use outputs::Outputs;

use crate::{
    cgroup::{self, Hierarchy},
    config::{self, Config},
    decision::{self, Killed, Outcome, Responder, VictimEnd},
    events::{Event, Record},
    kernel::{self, DRAIN_BATCH, Feed, Message, Probes, Settings, Throttle, TraceSwitch},
    observe::Observer,
    policy::Policy,
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
    /// `--classic-tracepoints`: no BTF-typed tracepoints.
    pub classic_tracepoints: bool,
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
            classic_tracepoints: false,
        }
    }
}

/// Reads the policy the options name. An explicit path must load; the
/// default path is used only when it exists.
pub fn load_policy(opts: &RunOptions) -> Result<(Policy, String), config::ConfigError> {
    let (policy, origin) = read_policy(opts)?;
    if let Some(hook) = &policy.config.hook {
        config::hook_startable_here(hook).map_err(|why| config::ConfigError::Unusable {
            path: origin.clone(),
            why,
        })?;
    }
    Ok((policy, origin))
}

/// The policy as [`load_policy`] reads it, without asking whether this
/// process could start its hook: for the commands that only read it
/// (`guard status`, `guard explain`), which any member of group `guard`
/// may run without the daemon's capabilities.
pub fn read_policy(opts: &RunOptions) -> Result<(Policy, String), config::ConfigError> {
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

/// Locks the guard in memory (it must keep working when memory is short)
/// and raises its priority.
fn harden() {
    if let Err(e) =
        rustix::mm::mlockall(rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE)
    {
        warn!(error = %e, "mlockall failed: the guard's own pages may be reclaimed under pressure");
    }
    raise_priority();
}

/// Loads the kernel half and says, once, what it could attach.
fn load_probes(policy: &Policy, cgroups_now: usize, classic: bool) -> anyhow::Result<Probes> {
    let settings = Settings {
        watch_capacity: policy.watch_capacity(cgroups_now),
        classic_tracepoints: classic,
        ..policy.kernel_settings()
    };
    info!(
        capacity = settings.watch_capacity,
        cgroups = cgroups_now,
        "the kernel's watch list holds this many cgroups"
    );
    let probes = Probes::load(settings)?;
    let tp = &probes.tracepoints;
    match &tp.classic_because {
        None => info!(
            tracepoints = %tp.summary(),
            "tracepoints attached as BTF-typed tracepoints (bpf links: CAP_BPF and CAP_PERFMON suffice)"
        ),
        Some(reason) => warn!(
            tracepoints = %tp.summary(),
            %reason,
            "some tracepoints attached the classic way (perf_event_open through tracefs: \
             CAP_SYS_ADMIN where kernel.perf_event_paranoid is 3)"
        ),
    }
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
    Ok(probes)
}

/// The state every handler works on.
struct Daemon {
    opts: RunOptions,
    hierarchy: Hierarchy,
    probes: Probes,
    trace_switch: TraceSwitch,
    responder: Responder,
    observer: Observer,
    out: Outputs,
    /// Victims being watched until they exit (each holds its pidfd).
    exits: JoinSet<VictimEnd>,
    /// Post-kill hooks, one at a time.
    hooks: HookRunner,
    /// Tells a victim's owner on their terminals.
    notifier: notify::Notifier,
    /// Verdicts past their tenant's share, and when that was last said.
    deferred: fair::Deferred,
    /// The first record every new stream listener gets; a reload updates
    /// its policy and dry-run mode.
    hello: tokio::sync::watch::Sender<Record>,
    _hook_task: outputs::AbortOnDrop,
}

impl Daemon {
    fn on_messages(&mut self, batch: &[Message]) {
        // A batch comes from one ring: verdicts only, or none.
        let verdicts: Vec<Verdict> = batch
            .iter()
            .filter_map(|m| match m {
                Message::Verdict(v) => Some(*v),
                _ => None,
            })
            .collect();
        if !verdicts.is_empty() {
            self.on_verdicts(&verdicts);
            // After the kill, never before it: were records dropped?
            self.emit_lost();
        }
        for message in batch {
            match message {
                Message::Verdict(_) => {}
                Message::Cgroup(e) => self.on_cgroup_event(e),
                Message::Trace(r) => self.on_trace(r),
                Message::Garbled(ring) => warn!(ring, "short record in a ring buffer"),
            }
        }
    }

    /// A batch of verdicts, each tenant served its share in turn.
    fn on_verdicts(&mut self, batch: &[Verdict]) {
        if let [v] = batch {
            self.on_verdict(v);
            return;
        }
        let responder = &self.responder;
        let schedule = fair::schedule(batch, |v| fair::tenant_of(responder, v), fair::SHARE);
        for v in &schedule.order {
            self.on_verdict(v);
        }
        if let Some((tenant, n)) = &schedule.busiest {
            self.deferred.note(schedule.deferred, tenant, *n);
        }
    }

    /// The kill first; what is said about it after.
    fn on_verdict(&mut self, v: &Verdict) {
        let outcome = self.responder.handle(v);
        let record = self.observer.verdict(v);
        let host_fine = v.cgroup_id == guard_common::HOST_ID
            && matches!(outcome, Outcome::NotConfirmed | Outcome::OutOfScope);
        if host_fine {
            self.out.emit_churn(&record);
        } else {
            self.out.emit(&record);
        }
        match outcome {
            Outcome::Killed(k) => self.finish_kill(*k),
            Outcome::DryRun(report) => self.out.emit(&Record::now(report.event())),
            Outcome::Unresolved(Some(u)) => self.out.emit(&Record::now(u.event())),
            Outcome::LimitReached(l) => self.out.emit(&Record::now(l.event())),
            Outcome::Held { .. } => {
                if let Err(e) = self.probes.recheck(v.cgroup_id) {
                    warn!(error = %e, "could not ask the kernel to look again soon");
                }
            }
            _ => {}
        }
    }

    /// Everything that follows a kill: the kernel's stall window reset, the
    /// hook, a watch on each victim until it exits, and the record.
    fn finish_kill(&mut self, k: Killed) {
        let Killed {
            report,
            victims,
            key,
            reset,
            exit_timeout,
        } = k;
        if let Err(e) = self.probes.reset_cgroup(reset) {
            warn!(cgroup = %report.cgroup, error = %e, "could not reset the kernel's stall window");
        }
        for victim in victims {
            self.exits
                .spawn(decision::wait_exit(victim, key.clone(), exit_timeout));
        }
        if let Some(hook) = &self.responder.policy.config.hook {
            self.hooks.submit(hook, &report);
        }
        if self.responder.policy.config.notify_owner {
            let told = self.notifier.notify(&report, std::time::Instant::now());
            if told > 0 {
                info!(
                    pid = report.pid,
                    terminals = told,
                    "told the owner on their terminals"
                );
            }
        }
        self.out.emit(&Record::now(report.event()));
    }

    fn on_cgroup_event(&mut self, e: &CgroupEvent) {
        watch::follow_cgroup(e, &mut self.probes, &mut self.responder, &self.hierarchy);
        if let Some(r) = self.observer.cgroup_event(e) {
            self.out.emit_churn(&r);
        }
    }

    fn on_trace(&mut self, r: &TraceRecord) {
        match self.observer.trace(r) {
            Some(r) => self.out.emit(&r),
            None => warn!("unknown record in the trace ring buffer"),
        }
    }

    fn on_victim_end(&mut self, end: Result<VictimEnd, JoinError>) {
        match end {
            Ok(end) => {
                if let Some(limit) = self.responder.victim_ended(&end) {
                    self.out.emit(&Record::now(limit.event()));
                }
            }
            Err(e) => warn!(error = %e, "watching a victim's exit failed"),
        }
    }

    /// Raw trace records flow from the kernel only while someone listens.
    fn on_listeners(&mut self, on: bool) {
        if let Err(e) = self.trace_switch.set(on) {
            warn!(error = %e, "could not switch the kernel's trace records");
        }
    }

    fn on_tick(&mut self) {
        let stalls = self.probes.cgroup_stalls().unwrap_or_default();
        let listed: Vec<u64> = self.responder.watched().keys().copied().collect();
        // The window the kernel judges by: a listed cgroup's scope's, else
        // the default it was loaded with.
        let policy = &self.responder.policy;
        let default_window = policy.default_limits().1;
        let window_of = |id: u64, name: &str| {
            let window = match policy.config.scope_for(name) {
                Some(scope) if listed.contains(&id) => scope.window,
                _ => default_window,
            };
            u64::try_from(window.as_nanos()).unwrap_or(u64::MAX)
        };
        for r in self.observer.samples(&stalls, &listed, window_of) {
            self.out.emit(&r);
        }
        self.emit_lost();
    }

    fn emit_lost(&mut self) {
        if let Ok(s) = self.probes.stats() {
            for r in self.observer.lost(&s) {
                self.out.emit(&r);
            }
        }
    }

    fn on_scrape(&mut self) {
        if let Some(m) = &self.out.metrics {
            metrics::refresh(m, &mut self.probes, &self.observer);
        }
    }

    /// SIGHUP: a new policy and the cgroups it lists, or the old one kept.
    fn on_reload(&mut self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        match self.reload() {
            Ok(origin) => info!(policy = %origin, "policy reloaded"),
            Err(e) => warn!(error = %format!("{e:#}"),
                "policy reload failed, keeping the current policy"),
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }

    fn reload(&mut self) -> anyhow::Result<String> {
        let (policy, origin) = load_policy(&self.opts)?;
        let wanted = watch::scan(&self.hierarchy, &policy)?;
        let watched = watch::apply_watch_list(
            &mut self.probes,
            &self.hierarchy,
            self.responder.watched(),
            wanted,
        )?;
        let dry = policy.dry_run();
        self.responder.replace_policy(policy, watched);
        self.hello.send_modify(|r| {
            if let Event::Hello {
                dry_run, policy, ..
            } = &mut r.event
            {
                *dry_run = dry;
                policy.clone_from(&origin);
            }
        });
        Ok(origin)
    }

    fn stopping(&self) {
        if let Ok(s) = self.probes.stats() {
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
    }
}

/// A timer that exists only while it is wanted: pending for ever otherwise.
async fn tick(timer: Option<&mut Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// The systemd watchdog's timer, when the unit asks for one.
fn watchdog() -> Option<Interval> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| {
        tokio::time::interval(Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
    })
}

/// What wakes the loop besides the handlers' own state.
struct Wakers {
    feed: Feed,
    listeners: tokio::sync::watch::Receiver<usize>,
    scrapes: Option<metrics::RefreshRequests>,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    /// Serves the socket until the loop ends.
    _server: Option<outputs::AbortOnDrop>,
}

/// Loads everything, in the order that keeps the guard safe: policy and
/// cgroup v2 checked, memory locked, programs attached, cgroups listed,
/// outputs open, signals handled, the kill path paged in; then READY=1.
async fn start(opts: RunOptions) -> anyhow::Result<(Daemon, Wakers)> {
    let (policy, origin) = load_policy(&opts)?;
    info!(policy = %origin, "policy loaded");
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let root = Path::new(cgroup::DEFAULT_ROOT);
    cgroup::check_v2(&mountinfo, root)?;
    harden();

    let hierarchy = Hierarchy::new(root);
    let known = hierarchy.scan_all();
    let mut probes = load_probes(&policy, known.len(), opts.classic_tracepoints)?;
    let wanted = watch::scan(&hierarchy, &policy)?;
    let watched = watch::apply_watch_list(&mut probes, &hierarchy, &HashMap::new(), wanted)?;
    // Cgroups created later, or limited later, are watched too: a stall
    // under no listed cgroup is charged to the task's own cgroup, and the
    // verdict is confirmed against whichever ancestor is over memory.high.
    info!(
        with_memory_high = watched.len(),
        "watching every cgroup; those with a finite memory.high now aggregate their subtree"
    );
    let feed = Feed::take(&mut probes)?;
    let trace_switch = probes.take_trace_switch()?;

    let bus = stream::Bus::new();
    let listeners = bus.watch_listeners();
    let hello = Record::now(Event::Hello {
        source: "daemon".to_owned(),
        guard_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: kernel::release(),
        throttle_hooked: matches!(probes.throttle, Throttle::Hooked { .. }),
        dry_run: policy.dry_run(),
        pid: std::process::id(),
        tracepoints: probes.tracepoints.mode().to_owned(),
        policy: origin,
    });
    let (hello, hello_rx) = tokio::sync::watch::channel(hello);
    let server = outputs::serve_stream(opts.socket.as_deref(), &bus, hello_rx);
    let log = outputs::open_log(opts.event_log.as_deref(), opts.event_log_max_bytes);
    let mut out = Outputs::new(bus, log);
    let scrapes = match opts.metrics_addr {
        Some(addr) => {
            let (m, requests) = metrics::start(addr).await?;
            out.metrics = Some(m);
            Some(requests)
        }
        None => None,
    };
    // Before READY=1: a SIGHUP sent as soon as the guard is ready must reload
    // it, not end it (the default action).
    let wakers = Wakers {
        feed,
        listeners,
        scrapes,
        term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        _server: server,
    };
    let mut responder = Responder::new(policy, hierarchy.clone(), "/proc", watched);
    responder.set_known(known);
    responder.warm_up();
    let (hooks, hook_task) = HookRunner::start(None);
    let d = Daemon {
        hooks,
        notifier: notify::Notifier::new(notify::PTS),
        deferred: fair::Deferred::default(),
        hello,
        _hook_task: outputs::AbortOnDrop::new(hook_task),
        opts,
        observer: Observer::new(Some(hierarchy.clone()), "/proc"),
        hierarchy,
        probes,
        trace_switch,
        responder,
        out,
        exits: JoinSet::new(),
    };
    Ok((d, wakers))
}

/// Says the guard is ready, to the log and the service manager.
fn ready(d: &Daemon) {
    let policy = &d.responder.policy;
    let (budget, window) = policy.default_limits();
    info!(
        dry_run = policy.dry_run(),
        budget_ms = budget.as_millis() as u64,
        window_ms = window.as_millis() as u64,
        scopes = policy.config.scopes.len(),
        // CLOCK_MONOTONIC: comparable with the service manager's timestamps.
        monotonic_us = crate::clock::monotonic_ns() / 1000,
        "guard ready"
    );
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "could not notify the service manager");
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let (mut d, mut w) = start(opts).await?;
    ready(&d);
    let mut watchdog = watchdog();
    let mut sampler: Option<(Duration, Interval)> = None;
    let mut batch = Vec::with_capacity(DRAIN_BATCH);
    loop {
        // Sampling runs only while someone listens or an incident is fresh:
        // an idle daemon with nobody watching has no timer but the watchdog.
        let period = d.out.sample_period();
        if sampler.as_ref().map(|(p, _)| *p) != period {
            sampler = period.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                (p, t)
            });
        }
        tokio::select! {
            r = w.feed.recv(&mut batch) => {
                r?;
                d.on_messages(&batch);
            }
            Some(end) = d.exits.join_next(), if !d.exits.is_empty() => d.on_victim_end(end),
            changed = w.listeners.changed() => {
                if changed.is_ok() {
                    let on = *w.listeners.borrow_and_update() > 0;
                    d.on_listeners(on);
                }
            }
            _ = tick(sampler.as_mut().map(|(_, t)| t)) => d.on_tick(),
            Some(reply) = async {
                match w.scrapes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                d.on_scrape();
                let _ = reply.send(());
            }
            _ = w.hup.recv() => d.on_reload(),
            _ = tick(watchdog.as_mut()) => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            _ = w.term.recv() => break,
            _ = w.int.recv() => break,
        }
    }
    d.stopping();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
