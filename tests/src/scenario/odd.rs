//! `odd`: hogs that are easy to overlook. Three cases one after the other,
//! each in its own cgroup (memory.high 64M, memory.max 128M, no swap) with a
//! bystander; each hog must be killed by the guard (a `killed` line naming
//! its pid, the guard's SIGKILL in the kernel's trace within budget +
//! margin of its first fruitless reclaim pass), with no kernel OOM kill and
//! the bystander alive:
//!
//! - `name`: a hog whose name is not UTF-8 (`h\xff\xfeg`); the log shows it
//!   lossily (`h\u{FFFD}\u{FFFD}g`).
//! - `leader`: a hog whose main thread has exited while a second thread
//!   takes 100 MiB: the leader is a zombie with no memory lines in
//!   /proc/PID/status; the memory is in /proc/PID/task/TID/status.
//! - `memfd`: 100 MiB of a memfd mapped shared, which /proc/PID/status
//!   counts as RssShmem, not RssAnon.
//!
//! The scenario checks that each workload is what it claims (the bytes of
//! the name, the zombie leader and its thread's memory, shmem rather than
//! anonymous memory), so that a pass means the guard saw that case.

use std::collections::BTreeSet;

use super::*;
use crate::workload::ODD_NAME;
use crate::summary::{fmt_num, show, kib_as_mib};

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::new("odd", run, summary)];

fn summary(r: &Value) -> String {
    format!(
        "non-UTF-8 name: killed {}, first no-progress->SIGKILL {} ms, logged as {}; exited leader (thread holds {} MiB): killed {}, {} ms, logged as {}; memfd (RssShmem {} MiB): killed {}, {} ms, logged as {}",
        show(&r["name_killed"]),
        fmt_num(&r["name_detect_to_kill_ms"], 1),
        show(&r["name_logged_comm"]),
        kib_as_mib(&r["leader_thread_rss_anon_kib"]),
        show(&r["leader_killed"]),
        fmt_num(&r["leader_detect_to_kill_ms"], 1),
        show(&r["leader_logged_comm"]),
        kib_as_mib(&r["memfd_rss_shmem_kib"]),
        show(&r["memfd_killed"]),
        fmt_num(&r["memfd_detect_to_kill_ms"], 1),
        show(&r["memfd_logged_comm"]),
    )
}

/// How long a hog may live before it counts as spared.
const WAIT: Duration = Duration::from_secs(6);
const MIB_KIB: u64 = 1024;

struct Case {
    key: &'static str,
    cgroup: &'static str,
    hog: &'static [&'static str],
    /// The name the guard's log must show.
    logged_comm: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        key: "name",
        cgroup: "/odd-name",
        hog: &["odd-name", "100"],
        logged_comm: "h\u{FFFD}\u{FFFD}g",
    },
    Case {
        key: "leader",
        cgroup: "/odd-leader",
        hog: &["leader-exit", "100", "threads"],
        logged_comm: "threads",
    },
    Case {
        key: "memfd",
        cgroup: "/odd-memfd",
        hog: &["memfd", "100", "memfd"],
        logged_comm: "memfd",
    },
];

/// What was seen of one hog while it ran.
#[derive(Default)]
struct Seen {
    tids: BTreeSet<u32>,
    /// /proc/PID/comm as bytes, newline included.
    comm: Vec<u8>,
    leader_zombie: bool,
    /// Whether the leader's status still had a RssAnon line once it was a
    /// zombie.
    zombie_rss_line: bool,
    max_rss_anon_kib: u64,
    max_rss_shmem_kib: u64,
    /// The largest RssAnon of a thread other than the leader.
    max_thread_rss_anon_kib: u64,
}

impl Seen {
    fn sample(&mut self, pid: u32) {
        let status = read(&format!("/proc/{pid}/status"));
        if status.is_empty() {
            return;
        }
        // The hog names itself just after exec: keep the latest.
        let comm = fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.is_empty() {
            self.comm = comm;
        }
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if zombie {
            self.leader_zombie = true;
            self.zombie_rss_line |= status.lines().any(|l| l.starts_with("RssAnon:"));
        }
        self.max_rss_anon_kib = self.max_rss_anon_kib.max(keyed_colon(&status, "RssAnon"));
        self.max_rss_shmem_kib = self.max_rss_shmem_kib.max(keyed_colon(&status, "RssShmem"));
        for t in fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Some(tid) = t.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            self.tids.insert(tid);
            if tid != pid {
                let st = read(&format!("/proc/{pid}/task/{tid}/status"));
                self.max_thread_rss_anon_kib = self
                    .max_thread_rss_anon_kib
                    .max(keyed_colon(&st, "RssAnon"));
            }
        }
    }
}

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    trace::enable()?;
    let mut guard = Guard::start(&[], &[])?;
    let mut ran = Vec::new();
    for case in &CASES {
        ran.push(one(r, case)?);
    }
    let guard_pid = guard.pid();
    let log = guard.stop();
    let trace_text = trace::read();
    let lines = log_lines(&log);
    let sent = sigkills_from(&trace_text, guard_pid);
    for (case, (pid, seen)) in CASES.iter().zip(ran) {
        let key = case.key;
        let kills = kills_in(&lines, case.cgroup);
        let mine = kills
            .iter()
            .find(|k| number(&k["pid"]) == Some(u64::from(pid)));
        r.set(&format!("{key}_killed"), mine.is_some());
        match mine {
            Some(k) => {
                let comm = text(&k["comm"]);
                r.set(&format!("{key}_logged_comm"), comm.clone());
                r.check(
                    comm == case.logged_comm,
                    format!("{key}: the kill names {comm:?}, not {:?}", case.logged_comm),
                );
            }
            None => r.check(
                false,
                format!("{key}: no \"killed\" line for the hog, pid {pid}"),
            ),
        }
        let others: Vec<String> = kills
            .iter()
            .filter(|k| number(&k["pid"]) != Some(u64::from(pid)))
            .map(|k| format!("pid {} ({})", k["pid"], text(&k["comm"])))
            .collect();
        r.check(
            others.is_empty(),
            format!("{key}: the guard also killed {}", others.join(", ")),
        );
        let tids: Vec<u32> = seen.tids.iter().copied().chain([pid]).collect();
        let key = format!("{key}_detect_to_kill_ms");
        guard_kill_timed(r, &trace_text, &sent, &tids, pid, &key);
    }
    Ok(())
}

/// One hog beside a bystander: returns its pid and what was seen of it.
fn one(r: &mut Report, case: &Case) -> Result<(u32, Seen), String> {
    let key = case.key;
    let cg = Cgroup::create(case.cgroup)?;
    cg.limit("64M", "128M")?;
    let bystander = Bystander::start(&cg, 4000)?;
    sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut hog = cg.spawn(case.hog, Stdio::null())?;
    let pid = hog.id();
    r.set(&format!("{key}_hog_pid"), pid);
    let mut seen = Seen::default();
    let status = loop {
        if let Ok(Some(status)) = hog.try_wait() {
            break Some(status);
        }
        if started.elapsed() > WAIT {
            break None;
        }
        seen.sample(pid);
        sleep(Duration::from_millis(20));
    };
    r.set(
        &format!("{key}_hog_lived_ms"),
        started.elapsed().as_millis() as u64,
    );
    match status {
        Some(status) => r.check(
            status.signal() == Some(libc::SIGKILL),
            format!("{key}: the hog ended by {status}, not SIGKILL"),
        ),
        None => {
            r.check(
                false,
                format!("{key}: the hog is alive {WAIT:?} after it started"),
            );
            end(&mut hog);
        }
    }
    let oom_kills = cg.event("oom_kill");
    r.set(&format!("{key}_oom_kills"), oom_kills);
    r.check(
        oom_kills == 0,
        format!("{key}: {oom_kills} kernel OOM kills"),
    );
    let (_, worst_us) = bystander.finish(r)?;
    r.set(
        &format!("{key}_bystander_worst_ms"),
        worst_us as f64 / 1000.0,
    );
    workload_checks(r, case, &seen);
    Ok((pid, seen))
}

/// The hog was the odd process it claims to be.
fn workload_checks(r: &mut Report, case: &Case, seen: &Seen) {
    let key = case.key;
    match key {
        "name" => {
            let want: Vec<u8> = ODD_NAME.iter().copied().chain([b'\n']).collect();
            r.check(
                seen.comm == want,
                format!("name: /proc/PID/comm read {:?}, not {want:?}", seen.comm),
            );
        }
        "leader" => {
            r.set("leader_zombie", seen.leader_zombie);
            r.set("leader_thread_rss_anon_kib", seen.max_thread_rss_anon_kib);
            r.check(
                seen.leader_zombie,
                "leader: the main thread never showed as a zombie",
            );
            r.check(
                !seen.zombie_rss_line,
                "leader: the zombie leader's status still had a RssAnon line",
            );
            r.check(
                seen.max_thread_rss_anon_kib >= 32 * MIB_KIB,
                format!(
                    "leader: the memory thread held at most {} KiB",
                    seen.max_thread_rss_anon_kib
                ),
            );
        }
        _ => {
            r.set("memfd_rss_shmem_kib", seen.max_rss_shmem_kib);
            r.set("memfd_rss_anon_kib", seen.max_rss_anon_kib);
            r.check(
                seen.max_rss_shmem_kib >= 32 * MIB_KIB && seen.max_rss_anon_kib < 16 * MIB_KIB,
                format!(
                    "memfd: RssShmem reached {} KiB and RssAnon {} KiB: the memory was not shmem",
                    seen.max_rss_shmem_kib, seen.max_rss_anon_kib
                ),
            );
        }
    }
}
