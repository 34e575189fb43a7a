//! `stuck-exit`: a victim that cannot exit at once must not hold up the
//! next decision for ever.
//!
//! The first hog's second thread takes 100 MiB and keeps touching it, while
//! its main thread writes 12 MiB with O_DIRECT, over and over, to a scratch
//! disk that qemu throttles to 1 MiB/s: it sits in uninterruptible sleep
//! (state D) for seconds at a time, and after the guard's SIGKILL the
//! process cannot exit until the write in flight completes
//! (process_mrelease gives its memory back meanwhile). Right after that
//! SIGKILL a second, plain 100 MiB hog starts in the same cgroup (memory.high
//! 64M, memory.max 128M, no swap) and stalls at once.
//!
//! The guard must not act on the second hog while the first victim is
//! still exiting, and must not wait for it for ever either: it logs `victim
//! still exiting after the timeout` for the first pid (state "D") and kills
//! the second hog between victim_exit_timeout_ms (3000) and 3000 + 2500 ms
//! after the first SIGKILL, while the first has still not exited (from the
//! kernel's trace: SIGKILLs and sched_process_exit).

use super::{benign::DISK, *};
use crate::summary::{fmt_num, show};

/// The scratch disk is throttled to 1 MiB/s, so that a 12 MiB O_DIRECT
/// write keeps its writer in uninterruptible sleep for seconds.
pub(super) const SCENARIOS: &[Scenario] = &[Scenario {
    disk: true,
    drive_options: "throttling.bps-total=1048576",
    ..Scenario::new("stuck-exit", run, summary)
}];

fn summary(r: &Value) -> String {
    format!(
        "second hog killed {} ms after the first victim (stalling from {} ms); first victim {} at 3 s, exited {} ms after its SIGKILL; guard logged it still exiting in state {} after {} ms",
        fmt_num(&r["kill_gap_ms"], 0),
        fmt_num(&r["second_stall_after_first_kill_ms"], 0),
        show(&r["first_state_after_timeout"]),
        fmt_num(&r["first_exit_after_kill_ms"], 0),
        show(&r["logged_state"]),
        show(&r["logged_waited_ms"]),
    )
}

const WRITE_MIB: &str = "12";
/// victim_exit_timeout_ms, the policy's default.
const EXIT_TIMEOUT_MS: f64 = 3000.0;
/// How late after the timeout the second kill may come under TCG.
const LATE_MS: f64 = 2500.0;
/// The second hog must be stalling this soon after the first SIGKILL, so
/// that the guard's holding back is a decision, not a lack of stall.
const SECOND_STALL_WITHIN_MS: f64 = 2000.0;
const STILL_EXITING: &str = "victim still exiting after the timeout: no longer waiting for it";

/// The state letter of /proc/PID/stat, if the process is there.
fn state(pid: u32) -> Option<char> {
    read(&format!("/proc/{pid}/stat"))
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    benign::wait_for_disk()?;
    trace_enable(&["sched/sched_process_exit"], 8192)?;
    let cg = Cgroup::create("/stuck")?;
    cg.limit("64M", "128M")?;
    let mut guard = Guard::start(&[], &[])?;
    let mut first = cg.spawn(&["stuck", "100", WRITE_MIB, DISK, "stuck"], Stdio::piped())?;
    let first_pid = first.id();
    r.set("first_pid", first_pid);
    let mut out = Lines::new(first.stdout.take().ok_or("no stdout of the first hog")?);
    let started = Instant::now();
    let mut said = Vec::new();
    let killed_seen = loop {
        said.extend(out.poll());
        if with_message(&guard.lines(), "killed")
            .iter()
            .any(|k| number(&k["pid"]) == Some(u64::from(first_pid)))
        {
            break Some(Instant::now());
        }
        if started.elapsed() > Duration::from_secs(20) || !alive(first_pid) {
            break None;
        }
        sleep(Duration::from_millis(10));
    };
    r.check(
        said.iter().any(|l| *l == format!("writing {first_pid}")),
        format!("the first hog never started writing to {DISK}: {said:?}"),
    );
    let Some(killed_seen) = killed_seen else {
        r.check(false, "the guard did not kill the first hog within 20 s");
        end(&mut first);
        guard.stop();
        return Ok(());
    };
    r.set("first_killed_seen_ms", started.elapsed().as_millis() as u64);
    r.set("current_at_second_start", cg.current());
    let mut second = cg.spawn(&["hog", "100"], Stdio::null())?;
    let second_pid = second.id();
    r.set("second_pid", second_pid);

    // The first victim's state once the guard's timeout has run out.
    let mut state_after_timeout = None;
    let second_status = loop {
        if state_after_timeout.is_none()
            && killed_seen.elapsed() >= Duration::from_millis(EXIT_TIMEOUT_MS as u64)
        {
            state_after_timeout = Some(state(first_pid).map_or("exited".to_owned(), String::from));
        }
        if let Ok(Some(status)) = second.try_wait() {
            break Some(status);
        }
        if killed_seen.elapsed() > Duration::from_secs(15) {
            break None;
        }
        sleep(Duration::from_millis(10));
    };
    r.set("first_state_after_timeout", json!(state_after_timeout));
    r.check(
        state_after_timeout.as_deref() == Some("D"),
        format!(
            "the first victim was {state_after_timeout:?} {EXIT_TIMEOUT_MS} ms after its kill, \
             not in uninterruptible sleep (D)"
        ),
    );
    match second_status {
        Some(status) => r.check(
            status.signal() == Some(libc::SIGKILL),
            format!("the second hog ended by {status}, not SIGKILL"),
        ),
        None => {
            r.check(false, "the second hog was alive 15 s after the first kill");
            end(&mut second);
        }
    }
    expect_sigkill(r, &mut first, Duration::from_secs(30), "the first hog");
    let oom_kills = cg.event("oom_kill");
    r.set("oom_kills", oom_kills);
    r.check(oom_kills == 0, format!("{oom_kills} kernel OOM kills"));

    let guard_pid = guard.pid();
    let log = guard.stop();
    let trace_text = trace::read();
    let lines = log_lines(&log);
    let sent = sigkills_from(&trace_text, guard_pid);
    let kill_of = |pid: u32| sent.iter().find(|(_, t)| *t == pid).map(|(ts, _)| *ts);
    let (Some(t1), Some(t2)) = (kill_of(first_pid), kill_of(second_pid)) else {
        r.check(
            false,
            format!("the trace lacks the guard's SIGKILL of the first or second hog: {sent:?}"),
        );
        return Ok(());
    };
    let gap = (t2 - t1) * 1000.0;
    r.set("kill_gap_ms", gap);
    r.check(
        gap >= EXIT_TIMEOUT_MS,
        format!(
            "the second hog was killed {gap:.0} ms after the first, before the {EXIT_TIMEOUT_MS} \
             ms exit timeout had run out"
        ),
    );
    r.check(
        gap <= EXIT_TIMEOUT_MS + LATE_MS,
        format!(
            "the second hog was killed {gap:.0} ms after the first (at most {EXIT_TIMEOUT_MS} + \
             {LATE_MS} ms)"
        ),
    );
    match trace::first_no_progress(&trace_text, second_pid) {
        Some(ts) => {
            let ms = (ts - t1) * 1000.0;
            r.set("second_stall_after_first_kill_ms", ms);
            r.check(
                ms <= SECOND_STALL_WITHIN_MS,
                format!(
                    "the second hog's first fruitless reclaim came {ms:.0} ms after the first \
                     kill (at most {SECOND_STALL_WITHIN_MS} ms): nothing to hold back from"
                ),
            );
        }
        None => r.check(
            false,
            "no fruitless reclaim pass of the second hog in the trace",
        ),
    }
    match trace::exit_of(&trace_text, first_pid) {
        Some(exit) => {
            r.set("first_exit_after_kill_ms", (exit - t1) * 1000.0);
            r.check(
                exit > t2,
                format!(
                    "the first victim exited {:.0} ms before the second kill: the guard may \
                     simply have waited for it",
                    (t2 - exit) * 1000.0
                ),
            );
        }
        None => r.check(false, "no exit of the first victim in the trace"),
    }
    let waits: Vec<&Value> = with_message(&lines, STILL_EXITING)
        .into_iter()
        .filter(|v| number(&v["pid"]) == Some(u64::from(first_pid)))
        .collect();
    match waits.first() {
        Some(w) => {
            let st = text(&w["state"]);
            r.set("logged_state", st.clone());
            r.set("logged_waited_ms", w["waited_ms"].clone());
            r.check(
                st == "D",
                format!("the guard logged the first victim's state as {st:?}, not \"D\""),
            );
        }
        None => r.check(
            false,
            format!("no \"{STILL_EXITING}\" line for the first victim, pid {first_pid}"),
        ),
    }
    Ok(())
}
