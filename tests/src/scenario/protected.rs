//! `protected`: a hog the policy never kills, in two forms run one after
//! the other (each in its own cgroup, memory.high 64M, memory.max 128M, no
//! swap, with a bystander): named `sshd`, and with oom_score_adj -1000.
//! The guard must kill nothing, neither the hog nor the bystander (the only
//! killable process, far too small to end the stall), and must log the
//! stall as unresolved naming the protection. The scenario ends each hog
//! itself after HOLD.

use super::*;

const HOLD: Duration = Duration::from_secs(5);

struct Case {
    key: &'static str,
    cgroup: &'static str,
    hog: &'static [&'static str],
    /// Words the unresolved line's reason must contain.
    reason_has: &'static [&'static str],
}

const CASES: [Case; 2] = [
    Case {
        key: "name",
        cgroup: "/protect-name",
        hog: &["hog", "100", "sshd"],
        reason_has: &["protected", "sshd"],
    },
    Case {
        key: "adj",
        cgroup: "/protect-adj",
        hog: &["hog", "100", "hog", "-1000"],
        reason_has: &["protected", "oom_score_adj -1000"],
    },
];

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    trace::enable()?;
    let mut guard = Guard::start(&[], &[])?;
    let mut hogs = Vec::new();
    for case in &CASES {
        hogs.push(one(r, &guard, case)?);
    }
    let log = guard.stop();
    let lines = log_lines(&log);
    let kills = with_message(&lines, "killed");
    r.check(
        kills.is_empty(),
        format!(
            "the guard killed {}",
            kills
                .iter()
                .map(|k| format!("pid {} ({})", k["pid"], text(&k["comm"])))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let unresolved = with_message(&lines, "stall unresolved: nothing to kill");
    for (case, hog_pid) in CASES.iter().zip(hogs) {
        let mine: Vec<&&Value> = unresolved
            .iter()
            .filter(|v| text(&v["cgroup"]) == case.cgroup)
            .collect();
        r.set(&format!("{}_unresolved_lines", case.key), mine.len());
        let Some(first) = mine.first() else {
            r.check(
                false,
                format!(
                    "{}: no \"stall unresolved: nothing to kill\" for {}",
                    case.key, case.cgroup
                ),
            );
            continue;
        };
        let reason = text(&first["reason"]);
        r.set(&format!("{}_reason", case.key), reason.clone());
        for word in case.reason_has {
            r.check(
                reason.contains(word),
                format!("{}: the reason {reason:?} does not say {word:?}", case.key),
            );
        }
        r.check(
            reason.contains(&format!("pid {hog_pid}")),
            format!(
                "{}: the reason {reason:?} does not name the hog, pid {hog_pid}",
                case.key
            ),
        );
    }
    Ok(())
}

/// One protected hog: returns its pid.
fn one(r: &mut Report, guard: &Guard, case: &Case) -> Result<u32, String> {
    let cg = Cgroup::create(case.cgroup)?;
    cg.limit("64M", "128M")?;
    let bystander = Bystander::start(&cg, 7000)?;
    sleep(Duration::from_millis(500));
    let high_events0 = cg.event("high");
    let mut hog = cg.spawn(case.hog, Stdio::null())?;
    let hog_pid = hog.id();
    r.set(&format!("{}_hog_pid", case.key), hog_pid);
    let started = Instant::now();
    while cg.current() <= cg.high() && started.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(10));
    }
    let over = Instant::now();
    r.set(
        &format!("{}_over_high_after_ms", case.key),
        started.elapsed().as_millis() as u64,
    );
    let mut first_unresolved_ms = None;
    while over.elapsed() < HOLD {
        if first_unresolved_ms.is_none()
            && guard.lines().iter().any(|v| {
                message(v) == "stall unresolved: nothing to kill"
                    && text(&v["cgroup"]) == case.cgroup
            })
        {
            first_unresolved_ms = Some(over.elapsed().as_millis() as u64);
        }
        sleep(Duration::from_millis(20));
    }
    r.set(
        &format!("{}_over_high_to_unresolved_ms", case.key),
        json!(first_unresolved_ms),
    );
    let (current, high) = (cg.current(), cg.high());
    r.set(&format!("{}_memory_current", case.key), current);
    r.check(
        current > high,
        format!(
            "{}: memory.current {current} is not above memory.high {high}: there was no stall to \
             leave unresolved",
            case.key
        ),
    );
    let rose = cg.event("high") - high_events0;
    r.set(&format!("{}_high_events", case.key), rose);
    r.check(
        rose > 0,
        format!("{}: memory.events high did not rise", case.key),
    );
    match end(&mut hog) {
        None => {}
        Some(status) => r.check(
            false,
            format!(
                "{}: the protected hog ended with {status} before the scenario ended it",
                case.key
            ),
        ),
    }
    let (_, worst_us) = bystander.finish(r)?;
    r.set(
        &format!("{}_bystander_worst_ms", case.key),
        worst_us as f64 / 1000.0,
    );
    Ok(hog_pid)
}
