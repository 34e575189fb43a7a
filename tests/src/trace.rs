//! Reading the kernel's own account of a run from tracefs, so that latency is
//! measured the same way whoever did the killing.

use std::fs;

const TRACEFS: &str = "/sys/kernel/tracing";

fn write(rel: &str, v: &str) -> Result<(), String> {
    fs::write(format!("{TRACEFS}/{rel}"), v).map_err(|e| format!("tracefs {rel}: {e}"))
}

/// Memcg reclaim ends and SIGKILLs, in a fresh buffer.
pub fn enable() -> Result<(), String> {
    write("tracing_on", "0")?;
    write("buffer_size_kb", "8192")?;
    write("trace", "")?;
    write("events/vmscan/mm_vmscan_memcg_reclaim_end/enable", "1")?;
    write("events/signal/signal_generate/filter", "sig == 9")?;
    write("events/signal/signal_generate/enable", "1")?;
    write("tracing_on", "1")
}

/// SIGKILLs alone, in a fresh buffer: for long runs that only count kills.
pub fn enable_kills() -> Result<(), String> {
    enable()?;
    write("tracing_on", "0")?;
    write("events/vmscan/mm_vmscan_memcg_reclaim_end/enable", "0")?;
    write("tracing_on", "1")
}

/// What the bench reads, in a fresh buffer stamped with CLOCK_MONOTONIC:
/// memcg reclaim ends, SIGKILL and SIGTERM (earlyoom sends SIGTERM first),
/// process exits (the memory is freed before that tracepoint) and the
/// kernel OOM killer's victims.
pub fn enable_bench() -> Result<(), String> {
    write("tracing_on", "0")?;
    write("trace_clock", "mono")?;
    write("buffer_size_kb", "8192")?;
    write("trace", "")?;
    write("events/vmscan/mm_vmscan_memcg_reclaim_end/enable", "1")?;
    write(
        "events/signal/signal_generate/filter",
        "sig == 9 || sig == 15",
    )?;
    write("events/signal/signal_generate/enable", "1")?;
    write("events/sched/sched_process_exit/enable", "1")?;
    write("events/oom/mark_victim/enable", "1")?;
    write("tracing_on", "1")
}

/// Stops recording without reading.
pub fn stop() {
    let _ = write("tracing_on", "0");
}

/// The trace so far (tracing stops). Task names are shown as the kernel
/// holds them, which need not be UTF-8: those bytes come back as U+FFFD.
pub fn read() -> String {
    let _ = fs::write(format!("{TRACEFS}/tracing_on"), "0");
    fs::read(format!("{TRACEFS}/trace"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// One trace line: the task's pid, the timestamp in seconds, the event name
/// and its formatted fields.
pub struct Line<'a> {
    pub pid: u32,
    pub ts: f64,
    pub event: &'a str,
    pub fields: &'a str,
}

pub fn parse(line: &str) -> Option<Line<'_>> {
    if line.starts_with('#') {
        return None;
    }
    // "  comm-PID  [CPU] FLAGS  TS: event: fields"; comm may contain '-'.
    let (task, rest) = line.split_once(" [")?;
    let (_, pid) = task.trim().rsplit_once('-')?;
    let (head, tail) = rest.split_once(": ")?;
    let ts = head.split_whitespace().last()?.parse().ok()?;
    let (event, fields) = tail.split_once(": ").unwrap_or((tail, ""));
    Some(Line {
        pid: pid.parse().ok()?,
        ts,
        event: event.trim(),
        fields,
    })
}

fn field<'a>(fields: &'a str, key: &str) -> Option<&'a str> {
    fields
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// First reclaim pass by `pid` that freed nothing (seconds, trace clock).
pub fn first_no_progress(trace: &str, pid: u32) -> Option<f64> {
    first_no_progress_of(trace, &[pid])
}

/// First reclaim pass that freed nothing by any of the tasks `tids` (trace
/// lines carry the thread's id, not the process's).
pub fn first_no_progress_of(trace: &str, tids: &[u32]) -> Option<f64> {
    trace.lines().filter_map(parse).find_map(|l| {
        (tids.contains(&l.pid)
            && l.event == "mm_vmscan_memcg_reclaim_end"
            && field(l.fields, "nr_reclaimed") == Some("0"))
        .then_some(l.ts)
    })
}

/// When SIGKILL was first sent to `pid`, and by which task.
pub fn first_sigkill(trace: &str, pid: u32) -> Option<(f64, u32)> {
    let pid = pid.to_string();
    trace.lines().filter_map(parse).find_map(|l| {
        (l.event == "signal_generate" && field(l.fields, "pid") == Some(pid.as_str()))
            .then_some((l.ts, l.pid))
    })
}

/// A fatal signal the kernel generated: when, who sent it, to whom.
#[derive(Debug, PartialEq)]
pub struct Signal {
    pub ts: f64,
    pub sig: u32,
    pub sender_pid: u32,
    pub sender_comm: String,
    pub target_pid: u32,
    pub target_comm: String,
}

/// Every `signal_generate` in the trace, in order.
pub fn signals(trace: &str) -> Vec<Signal> {
    trace
        .lines()
        .filter_map(|line| {
            let l = parse(line)?;
            if l.event != "signal_generate" {
                return None;
            }
            let (task, _) = line.split_once(" [")?;
            let sender_comm = task.trim().rsplit_once('-')?.0.to_owned();
            Some(Signal {
                ts: l.ts,
                sig: field(l.fields, "sig")?.parse().ok()?,
                sender_pid: l.pid,
                sender_comm,
                target_pid: field(l.fields, "pid")?.parse().ok()?,
                target_comm: field(l.fields, "comm")?.to_owned(),
            })
        })
        .collect()
}

/// When `pid` exited (`sched_process_exit`), if it did.
pub fn exit_of(trace: &str, pid: u32) -> Option<f64> {
    let pid = pid.to_string();
    trace.lines().filter_map(parse).find_map(|l| {
        (l.event == "sched_process_exit" && field(l.fields, "pid") == Some(pid.as_str()))
            .then_some(l.ts)
    })
}

/// Whether the kernel OOM killer chose `pid` (`oom:mark_victim`).
pub fn oom_victim(trace: &str, pid: u32) -> bool {
    let pid = pid.to_string();
    trace
        .lines()
        .filter_map(parse)
        .any(|l| l.event == "mark_victim" && field(l.fields, "pid") == Some(pid.as_str()))
}

/// Reclaim passes by `pid`: (all, without progress).
pub fn passes_of(trace: &str, pid: u32) -> (usize, usize) {
    trace
        .lines()
        .filter_map(parse)
        .filter(|l| l.pid == pid && l.event == "mm_vmscan_memcg_reclaim_end")
        .fold((0, 0), |(all, none), l| {
            let fruitless = field(l.fields, "nr_reclaimed") == Some("0");
            (all + 1, none + usize::from(fruitless))
        })
}

pub fn count_no_progress(trace: &str) -> usize {
    trace
        .lines()
        .filter_map(parse)
        .filter(|l| {
            l.event == "mm_vmscan_memcg_reclaim_end" && field(l.fields, "nr_reclaimed") == Some("0")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
# tracer: nop
#
              hog-141     [001] d..1.    12.500100: mm_vmscan_memcg_reclaim_end: nr_reclaimed=3
              hog-141     [001] d..1.    12.600200: mm_vmscan_memcg_reclaim_end: nr_reclaimed=0
        by-stand-140     [000] d..1.    12.610000: mm_vmscan_memcg_reclaim_end: nr_reclaimed=0 memcg_id=42
            guard-99      [000] d..2.    12.700300: signal_generate: sig=9 errno=0 code=0 comm=hog pid=141 grp=1 res=0
";

    #[test]
    fn finds_the_first_fruitless_pass_of_the_hog() {
        assert_eq!(first_no_progress(TRACE, 141), Some(12.6002));
        assert_eq!(first_no_progress(TRACE, 140), Some(12.61));
        assert_eq!(first_no_progress_of(TRACE, &[7, 140, 141]), Some(12.6002));
        assert_eq!(first_no_progress_of(TRACE, &[7]), None);
        assert_eq!(count_no_progress(TRACE), 2);
    }

    #[test]
    fn finds_the_kill_and_its_sender() {
        assert_eq!(first_sigkill(TRACE, 141), Some((12.7003, 99)));
        assert_eq!(first_sigkill(TRACE, 140), None);
    }

    #[test]
    fn a_task_name_that_is_not_utf8_still_parses() {
        let raw = b"          h\xff\xfeg-77      [000] d..2.    9.500000: signal_generate: sig=9 errno=0 code=0 comm=h\xff\xfeg pid=77 grp=1 res=0\n";
        let text = String::from_utf8_lossy(raw);
        let l = parse(text.lines().next().expect("a line")).expect("parses");
        assert_eq!((l.pid, l.ts, l.event), (77, 9.5, "signal_generate"));
        assert_eq!(first_sigkill(&text, 77), Some((9.5, 77)));
    }

    const BENCH: &str = "\
 systemd-oomd-201   [000] d..1.   40.000100: signal_generate: sig=9 errno=0 code=0 comm=by-stand pid=140 grp=1 res=0
            hog-141     [001] d..1.    40.000200: signal_generate: sig=9 errno=0 code=0 comm=hog pid=141 grp=1 res=0
            hog-141     [001] .....    40.012000: sched_process_exit: comm=hog pid=141 prio=120
            hog-141     [001] .....    40.013000: mark_victim: pid=141
            hog-141     [001] d..1.    40.100000: mm_vmscan_memcg_reclaim_end: nr_reclaimed=5
";

    #[test]
    fn reads_signals_exits_and_oom_victims() {
        let s = signals(BENCH);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].sender_comm, "systemd-oomd");
        assert_eq!((s[0].sender_pid, s[0].target_pid), (201, 140));
        assert_eq!(s[0].target_comm, "by-stand");
        assert_eq!((s[1].sig, s[1].ts), (9, 40.0002));
        assert_eq!(exit_of(BENCH, 141), Some(40.012));
        assert_eq!(exit_of(BENCH, 140), None);
        assert!(oom_victim(BENCH, 141) && !oom_victim(BENCH, 140));
        assert_eq!(passes_of(TRACE, 141), (2, 1));
        assert_eq!(passes_of(BENCH, 141), (1, 0));
    }
}
