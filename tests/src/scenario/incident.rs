//! The seed incident: a hog over memory.high beside a bystander.
//!
//! - `control`: no guard; the livelock must show (the hog alive after 10 s,
//!   memory.pressure full, memory.events high rising, no kernel OOM kill).
//! - `seed`: the guard must kill the hog fast, and the bystander recover.
//! - `nested`: the same with memory.high on a parent slice, hog and
//!   bystander in two child scopes, all created after the guard started.

use super::*;
use crate::summary::fmt_num;

pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario::new("control", control, control_summary),
    Scenario::new("seed", seed, summary),
    Scenario::new("nested", nested, summary),
];

fn control_summary(r: &Value) -> String {
    format!(
        "hog alive after 10 s; pressure full {}% (avg10 {}); high events {}; oom_kill {}; bystander worst {} ms",
        fmt_num(
            &(r["pressure_full_share"].as_f64().map(|x| x * 100.0).into()),
            0
        ),
        fmt_num(&r["pressure_full_avg10"], 0),
        r["high_events"],
        r["oom_kills"],
        fmt_num(&r["bystander_worst_during_ms"], 0),
    )
}

fn summary(r: &Value) -> String {
    format!(
        "first no-progress->SIGKILL {} ms; verdict->kill {} us; bystander worst {} ms during, {} ms after; hooks {}",
        fmt_num(&r["detect_to_kill_ms"], 1),
        fmt_num(&r["verdict_to_kill_us"], 0),
        fmt_num(&r["bystander_worst_during_ms"], 0),
        fmt_num(&r["bystander_worst_after_ms"], 1),
        r["throttle_hooks"],
    )
}

/// Where the incident happens: the limited cgroup, and the cgroups the hog
/// and the bystander run in (the same one, or two children of it), as
/// paths below the cgroup2 root.
struct Layout {
    limited: &'static str,
    hog: &'static str,
    bystander: &'static str,
    guard: bool,
    /// Start the guard before the cgroups exist, so that it must follow them.
    guard_first: bool,
}

const SEED: Layout = Layout {
    limited: "/seed",
    hog: "/seed",
    bystander: "/seed",
    guard: true,
    guard_first: false,
};

/// Bystander ticks scheduled this long after the kill count as "after".
const SETTLE_MS: u64 = 250;
/// After the kill a tick this late counts as a hiccup. A throttled cgroup
/// makes nearly every one of the ~650 ticks after the kill later than this
/// (the control shows 1-2 s); a TCG guest on a busy host has the odd one.
const BYSTANDER_HICCUP_MS: f64 = 100.0;
/// At most this many hiccups after the kill, none later than the cap.
const BYSTANDER_HICCUPS_MAX: usize = 2;
const BYSTANDER_AFTER_CAP_MS: f64 = 500.0;

pub(super) fn control(r: &mut Report) -> Result<(), String> {
    incident(
        r,
        &Layout {
            guard: false,
            ..SEED
        },
    )
}

pub(super) fn seed(r: &mut Report) -> Result<(), String> {
    incident(r, &SEED)
}

pub(super) fn nested(r: &mut Report) -> Result<(), String> {
    incident(
        r,
        &Layout {
            limited: "/nest.slice",
            hog: "/nest.slice/hog.scope",
            bystander: "/nest.slice/bystander.scope",
            guard: true,
            guard_first: true,
        },
    )
}

/// The seed incident: memory.high 64M, memory.max 128M, no swap; a bystander
/// and a 100 MiB hog under the limited cgroup. With the guard the hog must
/// die fast; without it (control) the livelock must show.
fn incident(r: &mut Report, layout: &Layout) -> Result<(), String> {
    let with_guard = layout.guard;
    trace::enable()?;
    let mut guard = if with_guard && layout.guard_first {
        Some(Guard::start(&[], &[])?)
    } else {
        None
    };
    let limited = Cgroup::create(layout.limited)?;
    limited.limit("64M", "128M")?;
    let hog_cg = Cgroup::create(layout.hog)?;
    let bystander_cg = Cgroup::create(layout.bystander)?;
    if with_guard && guard.is_none() {
        guard = Some(Guard::start(&[], &[])?);
    }
    let bystander_ms: u64 = if with_guard { 8000 } else { 13000 };
    let bystander = Bystander::start(&bystander_cg, bystander_ms)?;
    sleep(Duration::from_secs(1));
    let events0 = limited.read("memory.events");
    let (full0, _) = pressure_full(&limited.read("memory.pressure"));
    let hog_start = monotonic_ns();
    let mut hog = hog_cg.spawn(&["hog", "100"], Stdio::null())?;
    let hog_pid = hog.id();
    r.set("hog_pid", hog_pid);

    let hog_end;
    if with_guard {
        match wait_exit(&mut hog, Duration::from_secs(20)) {
            Some((status, at)) => {
                r.check(
                    status.signal() == Some(libc::SIGKILL),
                    format!("hog ended by {status}, not SIGKILL"),
                );
                r.set("hog_lived_ms", (at - hog_start) as f64 / 1e6);
                hog_end = at;
            }
            None => {
                r.check(false, "hog still alive 20 s after it started");
                end(&mut hog);
                hog_end = monotonic_ns();
            }
        }
    } else {
        let observe = Instant::now();
        sleep(Duration::from_secs(10));
        let secs = observe.elapsed().as_secs_f64();
        let alive = matches!(hog.try_wait(), Ok(None));
        r.check(
            alive,
            "control: the hog died without a guard; the livelock did not happen",
        );
        let events1 = limited.read("memory.events");
        let (full1, avg10) = pressure_full(&limited.read("memory.pressure"));
        let high = keyed(&events1, "high") - keyed(&events0, "high");
        let oom_kills = keyed(&events1, "oom_kill") - keyed(&events0, "oom_kill");
        let full_share = (full1 - full0) as f64 / (secs * 1e6);
        r.set("high_events", high);
        r.set("oom_kills", oom_kills);
        r.set("pressure_full_share", full_share);
        r.set("pressure_full_avg10", avg10);
        r.set("memory_current", limited.current());
        r.check(
            oom_kills == 0,
            format!("control: {oom_kills} kernel OOM kills"),
        );
        r.check(high > 0, "control: memory.events high did not rise");
        r.check(
            full_share >= 0.3,
            format!(
                "control: memory.pressure full was only {:.0}% of the time",
                full_share * 100.0
            ),
        );
        end(&mut hog);
        hog_end = monotonic_ns();
    }

    let (samples, worst_us) = bystander.finish(r)?;
    r.set("bystander_worst_ms", worst_us as f64 / 1000.0);
    r.set(
        "bystander_worst_during_ms",
        worst_between(&samples, hog_start, hog_end),
    );

    let log = guard.as_mut().map(Guard::stop).unwrap_or_default();
    let trace = trace::read();
    r.set(
        "no_progress_passes",
        trace::count_no_progress(&trace) as u64,
    );

    if with_guard {
        let settled = hog_end + SETTLE_MS * 1_000_000;
        let after = worst_between(&samples, settled, u64::MAX);
        let hiccups = late_between(&samples, settled, u64::MAX, BYSTANDER_HICCUP_MS);
        r.set("bystander_worst_after_ms", after);
        r.set("bystander_hiccups_after", hiccups);
        r.check(
            hiccups <= BYSTANDER_HICCUPS_MAX && after <= BYSTANDER_AFTER_CAP_MS,
            format!(
                "bystander still throttled after the kill: {hiccups} ticks over \
                 {BYSTANDER_HICCUP_MS:.0} ms late, the worst {after:.0} ms"
            ),
        );
        guard_checks(r, &log, &trace, hog_pid);
    }
    Ok(())
}
