//! Reading the kernel's own account of a run from tracefs, so that latency is
//! measured the same way whoever did the killing.

use std::fs;

const TRACEFS: &str = "/sys/kernel/tracing";

pub fn enable() -> Result<(), String> {
    let w = |rel: &str, v: &str| {
        fs::write(format!("{TRACEFS}/{rel}"), v).map_err(|e| format!("tracefs {rel}: {e}"))
    };
    w("tracing_on", "0")?;
    w("buffer_size_kb", "8192")?;
    w("trace", "")?;
    w("events/vmscan/mm_vmscan_memcg_reclaim_end/enable", "1")?;
    w("events/signal/signal_generate/filter", "sig == 9")?;
    w("events/signal/signal_generate/enable", "1")?;
    w("tracing_on", "1")
}

pub fn read() -> String {
    let _ = fs::write(format!("{TRACEFS}/tracing_on"), "0");
    fs::read_to_string(format!("{TRACEFS}/trace")).unwrap_or_default()
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
    trace.lines().filter_map(parse).find_map(|l| {
        (l.pid == pid
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
        assert_eq!(count_no_progress(TRACE), 2);
    }

    #[test]
    fn finds_the_kill_and_its_sender() {
        assert_eq!(first_sigkill(TRACE, 141), Some((12.7003, 99)));
        assert_eq!(first_sigkill(TRACE, 140), None);
    }
}
