//! `breaker`: a policy mistake that makes every kill fruitless, stopped by
//! the circuit breaker. The policy (min_share_percent = 1, `avoid` on the
//! hog's name) makes the guard take innocents while a 100 MiB hog named
//! `hog` keeps the cgroup (memory.high 64M, memory.max 128M, no swap) over
//! memory.high: no such kill can end the stall. With max_fruitless_kills
//! = 3 and kill_window_ms = 60000 the guard must kill exactly three
//! innocents, log `kill limit reached` once for the cgroup, record a
//! `kill_limit` event in its event log, and kill nothing more for the 10 s
//! the scenario watches after that: the hog alive when the scenario ends
//! it, three of the six innocents alive, the bystander untouched.

use super::*;
use crate::summary::{fmt_num, show};

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::new("breaker", run, summary)];

fn summary(r: &Value) -> String {
    format!(
        "{} kills {}; kill limit {} ms after the hog started ({} line(s), fruitless_kills {}), kill_limit event {}; hog alive {}; {}/6 innocents alive",
        show(&r["kills"]),
        show(&r["killed_pids"]),
        fmt_num(&r["limit_after_ms"], 0),
        show(&r["limit_lines"]),
        show(&r["fruitless_kills"]),
        show(&r["kill_limit_event"]),
        show(&r["hog_alive"]),
        show(&r["innocents_alive"]),
    )
}

const POLICY_PATH: &str = "/etc/guard/breaker.toml";
const EVENTS_DIR: &str = "/tmp/guard-events";
const LIMIT: &str = "kill limit reached: no more kills here until the window has passed";
const INNOCENTS: usize = 6;
const MAX_FRUITLESS: usize = 3;
const LIMIT_WITHIN: Duration = Duration::from_secs(20);
const WATCH_AFTER: Duration = Duration::from_secs(10);

fn policy(breaker: bool) -> String {
    let keys = if breaker {
        format!("max_fruitless_kills = {MAX_FRUITLESS}\nkill_window_ms = 60000\n")
    } else {
        String::new()
    };
    format!(
        "# written by the breaker scenario: a mistake that makes kills fruitless\n\
         min_share_percent = 1\n{keys}\n[order]\navoid = [\"^hog$\"]\n\n\
         [[scope]]\npaths = [\"/**\"]\n"
    )
}

/// `guard config check`: None when the file is accepted, else the output.
fn refused(path: &str) -> Result<Option<String>, String> {
    let out = Command::new(GUARD)
        .args(["config", "check", path])
        .output()
        .map_err(|e| format!("running {GUARD} config check: {e}"))?;
    Ok((!out.status.success()).then(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .trim()
        .to_owned()
    }))
}

/// Records of the guard's event log (every file in its directory).
fn events() -> Vec<Value> {
    let mut all = Vec::new();
    for f in fs::read_dir(EVENTS_DIR).into_iter().flatten().flatten() {
        all.extend(log_lines(&read(&f.path().display().to_string())));
    }
    all
}

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    write_policy(POLICY_PATH, &policy(true))?;
    if let Some(why) = refused(POLICY_PATH)? {
        // Without the keys the rest still shows what this guard does with
        // the mistake (their values are the defaults the issue asks for).
        r.check(
            false,
            format!("the guard refuses the breaker's keys: {why}"),
        );
        write_policy(POLICY_PATH, &policy(false))?;
    }
    trace::enable()?;
    let cg = Cgroup::create("/breaker")?;
    cg.limit("64M", "128M")?;
    let mut guard = Guard::start(&["--config", POLICY_PATH, "--event-log", EVENTS_DIR], &[])?;
    let mut innocents = Vec::new();
    for _ in 0..INNOCENTS {
        innocents.push(cg.spawn(&["holder", "4", "innocent"], Stdio::piped())?);
    }
    wait_ready(&mut innocents, Duration::from_secs(10))?;
    let innocent_pids: Vec<u32> = innocents.iter().map(Child::id).collect();
    let bystander = Bystander::start(&cg, 20_000)?;
    let bystander_pid = bystander.pid();
    sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut hog = cg.spawn(&["hog", "100", "hog"], Stdio::null())?;
    let hog_pid = hog.id();
    r.set("hog_pid", hog_pid);

    let mut limit_seen = None;
    while started.elapsed() < LIMIT_WITHIN {
        let lines = guard.lines();
        if with_message(&lines, LIMIT)
            .iter()
            .any(|v| text(&v["cgroup"]) == cg.rel())
        {
            limit_seen = Some((started.elapsed(), kills_in(&lines, cg.rel()).len()));
            break;
        }
        if matches!(hog.try_wait(), Ok(Some(_))) {
            break;
        }
        sleep(Duration::from_millis(50));
    }
    match limit_seen {
        Some((after, _)) => {
            r.set("limit_after_ms", after.as_millis() as u64);
            sleep(WATCH_AFTER);
        }
        None => r.check(
            false,
            format!(
                "no \"{LIMIT}\" for {} within {LIMIT_WITHIN:?} of the hog's start",
                cg.rel()
            ),
        ),
    }
    let hog_alive = matches!(hog.try_wait(), Ok(None));
    r.set("hog_alive", hog_alive);
    r.check(
        hog_alive,
        "the hog did not live until the scenario ended it",
    );
    end(&mut hog);
    let alive_innocents = innocent_pids.iter().filter(|p| alive(**p)).count();
    r.set("innocents_alive", alive_innocents);
    r.check(
        alive_innocents == INNOCENTS - MAX_FRUITLESS,
        format!("{alive_innocents} of {INNOCENTS} innocents alive at the end"),
    );
    for c in &mut innocents {
        end(c);
    }
    let (_, worst_us) = bystander.finish(r)?;
    r.set("bystander_worst_ms", worst_us as f64 / 1000.0);

    let guard_pid = guard.pid();
    let log = guard.stop();
    let trace_text = trace::read();
    let lines = log_lines(&log);
    let kills = kills_in(&lines, cg.rel());
    let killed: Vec<u32> = kills.iter().flat_map(|k| victims(k)).collect();
    r.set("kills", kills.len());
    r.set("killed_pids", json!(killed));
    r.check(
        kills.len() == MAX_FRUITLESS,
        format!(
            "expected exactly {MAX_FRUITLESS} kills, the guard logged {}",
            kills.len()
        ),
    );
    let not_innocent: Vec<u32> = killed
        .iter()
        .copied()
        .filter(|p| !innocent_pids.contains(p))
        .collect();
    r.check(
        not_innocent.is_empty(),
        format!("the guard killed {not_innocent:?}, not innocents (hog {hog_pid}, bystander {bystander_pid})"),
    );
    if let Some((_, at_limit)) = limit_seen {
        r.check(
            kills.len() == at_limit,
            format!(
                "{} kills after the limit was reached",
                kills.len().saturating_sub(at_limit)
            ),
        );
    }
    let limits: Vec<&Value> = with_message(&lines, LIMIT)
        .into_iter()
        .filter(|v| text(&v["cgroup"]) == cg.rel())
        .collect();
    r.set("limit_lines", limits.len());
    r.check(
        limits.len() == 1,
        format!(
            "{} \"{LIMIT}\" lines for {}, not one",
            limits.len(),
            cg.rel()
        ),
    );
    if let Some(l) = limits.first() {
        r.set("fruitless_kills", l["fruitless_kills"].clone());
    }
    r.set(
        "fruitless_outcomes",
        with_message(&lines, "kill outcome")
            .iter()
            .filter(|v| v["fruitful"] == Value::Bool(false))
            .count(),
    );
    let sent = sigkills_from(&trace_text, guard_pid);
    r.set("sigkills_from_guard", sent.len());
    r.check(
        sent.len() == MAX_FRUITLESS,
        format!("the trace shows {} SIGKILLs from the guard", sent.len()),
    );
    let recorded = events()
        .iter()
        .any(|e| e["type"] == "kill_limit" && text(&e["cgroup"]) == cg.rel());
    r.set("kill_limit_event", recorded);
    r.check(
        recorded,
        format!("no \"kill_limit\" record for {} in {EVENTS_DIR}", cg.rel()),
    );
    Ok(())
}
