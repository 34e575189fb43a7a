//! `protected`: protection by what a process is, not by what it is called.
//! Three cases one after the other, each in its own cgroup (memory.high
//! 64M, memory.max 128M, no swap) with a bystander:
//!
//! - `exe`: a hog run from sshd's installed path (/usr/sbin/sshd, a
//!   root-owned copy of this program), started after three innocents that
//!   hold 8 MiB each. Killing the innocents would free 24 MiB but could
//!   never end a stall the protected hog drives: the guard must kill
//!   nobody, the innocents must live, and the stall must be logged
//!   unresolved, naming the hog (its pid, "protected", the rule,
//!   `holder_pid`).
//! - `adj`: a hog with oom_score_adj -1000 beside the bystander: the same.
//! - `copy`: the same program copied to /tmp/sshd at run time and run from
//!   there as `sshd`: a name protects nothing, so the guard must kill it.
//!
//! The scenario ends the protected hogs itself after HOLD.

use super::*;
use crate::summary::{fmt_num, show};

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::new("protected", run, summary)];

fn summary(r: &Value) -> String {
    format!(
        "exe (/usr/sbin/sshd beside 3 innocents): {} killed, {}/3 innocents alive, \"stall unresolved\" {} ms after memory.high was crossed (holder_pid {}); adj (oom_score_adj -1000): {} killed, unresolved after {} ms; copy (/tmp/sshd): {} killed, first no-progress->SIGKILL {} ms; bystander worst {} / {} / {} ms",
        show(&r["exe_kills"]),
        show(&r["exe_innocents_alive"]),
        fmt_num(&r["exe_over_high_to_unresolved_ms"], 0),
        show(&r["exe_holder_pid"]),
        show(&r["adj_kills"]),
        fmt_num(&r["adj_over_high_to_unresolved_ms"], 0),
        show(&r["copy_kills"]),
        fmt_num(&r["copy_detect_to_kill_ms"], 1),
        fmt_num(&r["exe_bystander_worst_ms"], 0),
        fmt_num(&r["adj_bystander_worst_ms"], 0),
        fmt_num(&r["copy_bystander_worst_ms"], 0),
    )
}

const HOLD: Duration = Duration::from_secs(5);
/// The copy of a protected binary that a user could make.
const COPY: &str = "/tmp/sshd";
const INNOCENT_MIB: &str = "8";
/// How long the copy may live before it counts as spared.
const COPY_WAIT: Duration = Duration::from_secs(6);

struct Case {
    key: &'static str,
    cgroup: &'static str,
    /// The file the hog runs from.
    exe: &'static str,
    hog: &'static [&'static str],
    innocents: usize,
    /// Whether the guard must kill the hog (else nobody at all).
    killed: bool,
    /// Words the unresolved line's reason must contain (spared cases).
    reason_has: &'static [&'static str],
}

const CASES: [Case; 3] = [
    Case {
        key: "exe",
        cgroup: "/protect-exe",
        exe: SSHD,
        hog: &["hog", "100", "sshd"],
        innocents: 3,
        killed: false,
        reason_has: &["protected", "sshd", SSHD],
    },
    Case {
        key: "adj",
        cgroup: "/protect-adj",
        exe: "/proc/self/exe",
        hog: &["hog", "100", "hog", "-1000"],
        innocents: 0,
        killed: false,
        reason_has: &["protected", "oom_score_adj -1000"],
    },
    Case {
        key: "copy",
        cgroup: "/protect-copy",
        exe: COPY,
        hog: &["hog", "100", "sshd"],
        innocents: 0,
        killed: true,
        reason_has: &[],
    },
];

/// The processes of one case.
struct Ran {
    hog: u32,
    others: Vec<u32>,
}

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    if !Path::new(SSHD).exists() {
        return Err(format!("{SSHD} is missing from the initramfs"));
    }
    fs::copy("/proc/self/exe", COPY).map_err(|e| format!("copying myself to {COPY}: {e}"))?;
    fs::set_permissions(COPY, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {COPY}: {e}"))?;
    trace::enable()?;
    let mut guard = Guard::start(&[], &[])?;
    let mut ran = Vec::new();
    for case in &CASES {
        ran.push(one(r, &guard, case)?);
    }
    let guard_pid = guard.pid();
    let log = guard.stop();
    let trace_text = trace::read();
    let lines = log_lines(&log);
    let sent = sigkills_from(&trace_text, guard_pid);
    let unresolved = with_message(&lines, "stall unresolved: nothing to kill");
    for (case, ran) in CASES.iter().zip(ran) {
        let kills = kills_in(&lines, case.cgroup);
        r.set(&format!("{}_kills", case.key), kills.len());
        if case.killed {
            r.check(
                kills.len() == 1,
                format!(
                    "{}: expected one kill of the hog, the guard logged {}",
                    case.key,
                    kills.len()
                ),
            );
            if let Some(k) = kills.first() {
                r.check(
                    number(&k["pid"]) == Some(u64::from(ran.hog)),
                    format!(
                        "{}: the guard killed {k}, not the hog {}",
                        case.key, ran.hog
                    ),
                );
            }
            let key = format!("{}_detect_to_kill_ms", case.key);
            guard_kill_timed(r, &trace_text, &sent, &[ran.hog], ran.hog, &key);
            continue;
        }
        r.check(
            kills.is_empty(),
            format!(
                "{}: the guard killed {}",
                case.key,
                kills
                    .iter()
                    .map(|k| format!("pid {} ({})", k["pid"], text(&k["comm"])))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let hit: Vec<u32> = sent
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t == ran.hog || ran.others.contains(t))
            .collect();
        r.check(
            hit.is_empty(),
            format!(
                "{}: the trace shows SIGKILLs from the guard to {hit:?}",
                case.key
            ),
        );
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
            reason.contains(&format!("pid {}", ran.hog)),
            format!(
                "{}: the reason {reason:?} does not name the hog, pid {}",
                case.key, ran.hog
            ),
        );
        r.set(
            &format!("{}_holder_pid", case.key),
            first["holder_pid"].clone(),
        );
        r.check(
            number(&first["holder_pid"]) == Some(u64::from(ran.hog)),
            format!(
                "{}: holder_pid is {}, not the hog {}",
                case.key, first["holder_pid"], ran.hog
            ),
        );
    }
    Ok(())
}

/// One case: innocents first, then the bystander and the hog.
fn one(r: &mut Report, guard: &Guard, case: &Case) -> Result<Ran, String> {
    let key = case.key;
    let cg = Cgroup::create(case.cgroup)?;
    cg.limit("64M", "128M")?;
    let mut innocents = Vec::new();
    for _ in 0..case.innocents {
        innocents.push(cg.spawn(&["holder", INNOCENT_MIB, "innocent"], Stdio::piped())?);
    }
    wait_ready(&mut innocents, Duration::from_secs(10))?;
    let innocent_pids: Vec<u32> = innocents.iter().map(Child::id).collect();
    let bystander = Bystander::start(&cg, if case.killed { 3000 } else { 7000 })?;
    sleep(Duration::from_millis(500));
    r.set(&format!("{key}_current_before_hog"), cg.current());
    let high_events0 = cg.event("high");
    let mut hog = cg.spawn_from(case.exe, case.hog, Stdio::null())?;
    let hog_pid = hog.id();
    r.set(&format!("{key}_hog_pid"), hog_pid);
    let exe = fs::read_link(format!("/proc/{hog_pid}/exe")).unwrap_or_default();
    let want = fs::canonicalize(case.exe).unwrap_or_default();
    r.check(
        exe == want,
        format!("{key}: the hog runs from {exe:?}, not {want:?}"),
    );
    let started = Instant::now();
    if case.killed {
        expect_sigkill(r, &mut hog, COPY_WAIT, &format!("{key}: the hog"));
        r.set(
            &format!("{key}_hog_lived_ms"),
            started.elapsed().as_millis() as u64,
        );
    } else {
        spared(r, guard, case, &cg, &mut hog, started, high_events0);
        let alive_count = innocent_pids.iter().filter(|p| alive(**p)).count();
        r.set(&format!("{key}_innocents_alive"), alive_count);
        r.check(
            alive_count == case.innocents,
            format!(
                "{key}: {alive_count} of {} innocents are alive at the end",
                case.innocents
            ),
        );
    }
    for c in &mut innocents {
        end(c);
    }
    let bystander_pid = bystander.pid();
    let (_, worst_us) = bystander.finish(r)?;
    r.set(
        &format!("{key}_bystander_worst_ms"),
        worst_us as f64 / 1000.0,
    );
    let mut others = innocent_pids;
    others.push(bystander_pid);
    Ok(Ran {
        hog: hog_pid,
        others,
    })
}

/// `guard explain PID --json` on the protected hog, while it stalls: it
/// names the rule that protects it, and that a verdict would kill nobody.
fn explain_checks(r: &mut Report, case: &Case, hog: u32) {
    let key = case.key;
    let out = Command::new(GUARD)
        .args(["explain", "--json", &hog.to_string()])
        .output();
    let json: Value = match &out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            r.check(false, format!("{key}: guard explain {hog} failed: {err}"));
            return;
        }
        Err(e) => {
            r.check(false, format!("{key}: running guard explain: {e}"));
            return;
        }
    };
    let protected = text(&json["protected"]);
    let verdict = text(&json["verdict_now"]);
    r.set(&format!("{key}_explain_protected"), protected.as_str());
    r.set(&format!("{key}_explain_verdict"), verdict.as_str());
    r.check(
        case.reason_has.iter().all(|w| protected.contains(w)),
        format!(
            "{key}: guard explain says protected {protected:?}, without {:?}",
            case.reason_has
        ),
    );
    r.check(
        verdict.contains("over memory.high now") && verdict.contains("kill nothing"),
        format!("{key}: guard explain says a verdict now would {verdict:?}"),
    );
}

/// A protected hog: it must stay over memory.high for HOLD, stalled, and
/// alive until the scenario ends it; the first unresolved line is timed.
fn spared(
    r: &mut Report,
    guard: &Guard,
    case: &Case,
    cg: &Cgroup,
    hog: &mut Child,
    started: Instant,
    high_events0: u64,
) {
    let key = case.key;
    while cg.current() <= cg.high() && started.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(10));
    }
    let over = Instant::now();
    r.set(
        &format!("{key}_over_high_after_ms"),
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
        &format!("{key}_over_high_to_unresolved_ms"),
        json!(first_unresolved_ms),
    );
    let (current, high) = (cg.current(), cg.high());
    r.set(&format!("{key}_memory_current"), current);
    r.check(
        current > high,
        format!(
            "{key}: memory.current {current} is not above memory.high {high}: there was no \
             stall to leave unresolved"
        ),
    );
    let rose = cg.event("high") - high_events0;
    r.set(&format!("{key}_high_events"), rose);
    r.check(rose > 0, format!("{key}: memory.events high did not rise"));
    explain_checks(r, case, hog.id());
    if let Some(status) = end(hog) {
        r.check(
            false,
            format!("{key}: the protected hog ended with {status} before the scenario ended it"),
        );
    }
}
