//! `workers`: a small parent with four workers of 30 MiB each in a cgroup
//! with memory.high 64M, memory.max 160M and no swap, next to a bystander.
//! The workers together need about twice memory.high: the guard must take
//! workers one at a time (never the parent or the bystander), each only once
//! the previous one has exited, and stop as soon as the cgroup is back under
//! memory.high.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::summary::{fmt_num, fmt_list, mib};

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::new("workers", run, summary)];

fn summary(r: &Value) -> String {
    format!(
        "{} of 4 workers killed one at a time (exit->next kill {} ms), {} survive; first no-progress->SIGKILL {} ms; memory.current {} MiB at the end (high {} MiB); bystander worst {} ms",
        r["kills"],
        fmt_list(&r["exit_to_next_kill_ms"], ", "),
        r["survivors"],
        fmt_num(&r["detect_to_kill_ms"], 1),
        mib(&r["memory_current_end"]),
        mib(&r["memory_high"]),
        fmt_num(&r["bystander_worst_ms"], 0),
    )
}

const WORKERS: usize = 4;
const WORKER_MIB: usize = 30;
/// How long the cgroup must stay settled (under memory.high, every living
/// worker holding all its memory) with no further kill.
const QUIET: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(20);
/// From one victim's exit to the next kill while the cgroup stays over
/// memory.high: the survivors may be in a penalty sleep that began before
/// the kill (at most 2 s, MEMCG_MAX_HIGH_DELAY_JIFFIES), which the guard
/// does not count again after its reset; then the budget, plus the margin.
const NEXT_KILL_MAX_MS: f64 = 2000.0 + BUDGET_MS + MARGIN_MS;

/// What a parent and its children said (workload::parent): `worker PID`,
/// `ready PID`, `full PID`, `exit PID SIGNAL`.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) workers: Vec<u32>,
    pub(super) ready: BTreeSet<u32>,
    pub(super) full: BTreeSet<u32>,
    /// pid -> signal that ended it (0: exited by itself).
    pub(super) exited: BTreeMap<u32, i32>,
}

impl Seen {
    pub(super) fn take(&mut self, lines: Vec<String>) {
        for line in lines {
            let mut it = line.split_whitespace();
            let (Some(what), Some(Ok(pid))) = (it.next(), it.next().map(str::parse::<u32>)) else {
                continue;
            };
            match what {
                "worker" => self.workers.push(pid),
                "ready" => {
                    self.ready.insert(pid);
                }
                "full" => {
                    self.full.insert(pid);
                }
                "exit" => {
                    let sig = it.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
                    self.exited.insert(pid, sig);
                }
                _ => {}
            }
        }
    }

    /// Children SIGKILL ended, as the parent reported them.
    pub(super) fn sigkilled(&self) -> BTreeSet<u32> {
        self.exited
            .iter()
            .filter(|(_, sig)| **sig == libc::SIGKILL)
            .map(|(p, _)| *p)
            .collect()
    }

    pub(super) fn living(&self) -> Vec<u32> {
        self.workers
            .iter()
            .copied()
            .filter(|p| !self.exited.contains_key(p) && alive(*p))
            .collect()
    }
}

/// Clean-up: SIGKILLs the `survivors`, then waits for their parent, which
/// exits 0 once every child it started has ended.
pub(super) fn end_family(r: &mut Report, parent: &mut Child, survivors: &[u32]) {
    for pid in survivors {
        // SAFETY: plain kill(2) of a child we know to be alive.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    match wait_exit(parent, Duration::from_secs(10)) {
        Some((status, _)) => r.check(status.success(), format!("the parent ended with {status}")),
        None => {
            r.check(false, "the parent did not exit after its children");
            end(parent);
        }
    }
}

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    trace_enable(&["sched/sched_process_exit"], 8192)?;
    let cg = Cgroup::create("/workers")?;
    cg.limit("64M", "160M")?;
    let mut guard = Guard::start(&[], &[])?;
    let bystander = Bystander::start(&cg, 10_000)?;
    sleep(Duration::from_secs(1));
    let high = cg.high();
    let high_events0 = cg.event("high");

    let started = Instant::now();
    let mut parent = cg.spawn(
        &[
            "worker-parent",
            &WORKERS.to_string(),
            &WORKER_MIB.to_string(),
        ],
        Stdio::piped(),
    )?;
    let parent_pid = parent.id();
    r.set("parent_pid", parent_pid);
    let bystander_pid = bystander.pid();
    r.set("bystander_pid", bystander_pid);
    let mut out = Lines::new(parent.stdout.take().ok_or("no stdout of the parent")?);
    let mut seen = Seen::default();
    let (settled, settled_ok) = settle(
        r,
        &guard,
        started,
        DEADLINE,
        QUIET,
        Duration::from_millis(20),
        || {
            seen.take(out.poll());
            let living = seen.living();
            seen.workers.len() == WORKERS
                && living.iter().all(|p| seen.ready.contains(p))
                && cg.current() < high
        },
    );
    seen.take(out.poll());
    let survivors = seen.living();
    let current = cg.current();
    r.set("memory_current_end", current);
    r.set("memory_high", high);
    r.set("survivors", survivors.len());
    r.set("worker_pids", json!(seen.workers));
    r.check(
        seen.workers.len() == WORKERS,
        format!(
            "the parent reported {} of {WORKERS} workers",
            seen.workers.len()
        ),
    );
    r.check(
        settled_ok,
        format!(
            "the cgroup did not settle under memory.high with every living worker holding its \
             {WORKER_MIB} MiB within {DEADLINE:?}: {} living, memory.current {current} (high {high})",
            survivors.len()
        ),
    );
    r.check(
        current < high,
        format!("memory.current {current} still above memory.high {high} at the end"),
    );
    r.check(
        !survivors.is_empty(),
        "no worker survived: the guard took more than it needed to",
    );
    let oom_kills = cg.event("oom_kill");
    r.set("oom_kills", oom_kills);
    r.check(oom_kills == 0, format!("{oom_kills} kernel OOM kills"));
    let high_events = cg.event("high") - high_events0;
    r.set("high_events", high_events);
    r.check(
        high_events > 0,
        "memory.events high did not rise: the workers never went over memory.high",
    );
    let parent_alive = matches!(parent.try_wait(), Ok(None));
    r.check(parent_alive, "the parent did not survive");

    end_family(r, &mut parent, &survivors);
    let (_, worst_us) = bystander.finish(r)?;
    r.set("bystander_worst_ms", worst_us as f64 / 1000.0);

    let settle_kills = settled.map(|(_, k)| k);
    let log = guard.stop();
    let trace_text = trace::read();
    let lines = log_lines(&log);
    let kills = with_message(&lines, "killed");
    let killed: Vec<u32> = kills
        .iter()
        .filter_map(|k| number(&k["pid"]).map(|p| p as u32))
        .collect();
    r.set("kills", kills.len());
    r.set("killed_pids", json!(killed));
    r.check(!kills.is_empty(), "the guard killed nothing");
    if let Some(k) = settle_kills {
        r.check(
            kills.len() == k,
            format!(
                "the guard killed {} more after the cgroup was back under memory.high",
                kills.len() - k
            ),
        );
    }
    let distinct: BTreeSet<u32> = killed.iter().copied().collect();
    r.check(
        distinct.len() == killed.len(),
        format!("the guard logged a pid twice: {killed:?}"),
    );
    for k in &kills {
        let pid = number(&k["pid"]).unwrap_or(0) as u32;
        let who = if pid == parent_pid {
            "the parent".to_owned()
        } else if pid == bystander_pid {
            "the bystander".to_owned()
        } else if seen.workers.contains(&pid) {
            continue;
        } else {
            format!("pid {pid} ({}), not a worker", text(&k["comm"]))
        };
        r.check(false, format!("the guard killed {who}"));
    }
    for k in &kills {
        r.check(
            text(&k["cgroup"]) == cg.rel(),
            format!("a kill names cgroup {}, not {}", k["cgroup"], cg.rel()),
        );
    }
    let by_signal = seen.sigkilled();
    r.check(
        by_signal == distinct,
        format!("workers SIGKILLed before the clean-up {by_signal:?} are not those the guard logged {distinct:?}"),
    );
    r.check(
        survivors.len() + distinct.len() == WORKERS,
        format!(
            "{} survivors and {} killed of {WORKERS} workers",
            survivors.len(),
            distinct.len()
        ),
    );

    // From the trace: each SIGKILL the guard sent came after the previous
    // victim had exited, and the first within budget + margin of the first
    // fruitless reclaim pass of any worker.
    let guard_pid = guard.pid();
    let sent = sigkills_from(&trace_text, guard_pid);
    let exits: BTreeMap<u32, f64> = trace_text
        .lines()
        .filter_map(trace::parse)
        .filter(|l| l.event == "sched_process_exit")
        .filter_map(|l| Some((kv(l.fields, "pid")?.parse().ok()?, l.ts)))
        .collect();
    r.check(
        sent.iter().map(|(_, t)| *t).collect::<Vec<_>>() == killed,
        format!("the trace's SIGKILLs from the guard {sent:?} differ from its log {killed:?}"),
    );
    let mut gaps = Vec::new();
    for pair in sent.windows(2) {
        let ((_, prev), (t, next)) = (pair[0], pair[1]);
        match exits.get(&prev) {
            Some(exit) => {
                let gap = (t - exit) * 1000.0;
                gaps.push(gap);
                r.check(
                    gap <= NEXT_KILL_MAX_MS,
                    format!(
                        "pid {next} was killed {gap:.0} ms after the previous victim {prev} had \
                         exited (at most {NEXT_KILL_MAX_MS} ms: a penalty sleep + budget + margin)"
                    ),
                );
                r.check(
                    t > *exit,
                    format!(
                        "pid {next} was killed {:.1} ms before the previous victim {prev} had exited",
                        (exit - t) * 1000.0
                    ),
                );
            }
            None => r.check(false, format!("no exit of victim {prev} in the trace")),
        }
    }
    r.set("exit_to_next_kill_ms", json!(gaps));
    if let Some(&(first_kill, _)) = sent.first() {
        let first_stall = trace_text
            .lines()
            .filter_map(trace::parse)
            .find(|l| {
                l.event == "mm_vmscan_memcg_reclaim_end"
                    && kv(l.fields, "nr_reclaimed") == Some("0")
                    && seen.workers.contains(&l.pid)
            })
            .map(|l| l.ts);
        match first_stall {
            Some(t0) => {
                let ms = (first_kill - t0) * 1000.0;
                r.set("detect_to_kill_ms", ms);
                r.check(
                    ms <= BUDGET_MS + MARGIN_MS,
                    format!(
                        "first no-progress reclaim of a worker to the first SIGKILL took {ms:.0} ms \
                         (budget {BUDGET_MS} + margin {MARGIN_MS})"
                    ),
                );
            }
            None => r.check(false, "no fruitless reclaim pass of a worker in the trace"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parents_report_is_followed() {
        let mut seen = Seen::default();
        seen.take(
            [
                "worker 10",
                "worker 11",
                "ready 11",
                "exit 10 9",
                "exit 12",
                "full 11",
                "junk",
            ]
            .map(String::from)
            .to_vec(),
        );
        assert_eq!(seen.workers, [10, 11]);
        assert!(seen.ready.contains(&11) && !seen.ready.contains(&10));
        assert_eq!(seen.exited.get(&10), Some(&9));
        assert_eq!(seen.exited.get(&12), Some(&-1));
        assert!(seen.full.contains(&11) && !seen.full.contains(&10));
    }
}
