//! The event stream: what the kernel reported and what the guard did, as
//! typed records. One schema serves the daemon's socket, `guard trace
//! --json`, `guard record` files, the daemon's own log and `guard report`.
//!
//! On the wire every record is one JSON object on one line:
//!
//! ```json
//! {"v":1,"mono_ns":5123000000,"unix_ms":1795000000000,"type":"verdict",...}
//! ```
//!
//! `v` is [`SCHEMA_VERSION`]; a reader refuses records of a newer major
//! version instead of misreading them. Fields may be added within a
//! version; none is removed or changes meaning. `mono_ns` is
//! CLOCK_MONOTONIC (the clock of the kernel's timestamps), `unix_ms` the
//! wall clock at the same instant, for people.

use serde::{Deserialize, Serialize};

use crate::owner::Owner;

/// Version of the record schema. Bump it when a field changes meaning or
/// goes away; adding a field keeps it.
pub const SCHEMA_VERSION: u32 = 1;

/// One line of the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    /// CLOCK_MONOTONIC, ns: when the kernel (or the guard) saw it.
    pub mono_ns: u64,
    /// Wall clock, ms since the Unix epoch, at `mono_ns`.
    pub unix_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a guard event record: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "record schema version {found} is newer than this guard understands ({SCHEMA_VERSION}); \
         read it with the guard that wrote it, or upgrade"
    )]
    Version { found: u32 },
}

impl Record {
    /// A record stamped now, from `mono_ns` (CLOCK_MONOTONIC).
    pub fn at(mono_ns: u64, event: Event) -> Self {
        Self {
            v: SCHEMA_VERSION,
            mono_ns,
            unix_ms: unix_ms_at(mono_ns),
            event,
        }
    }

    /// A record of something the guard itself saw just now.
    pub fn now(event: Event) -> Self {
        Self::at(crate::clock::monotonic_ns(), event)
    }

    /// One JSON line, without the newline.
    pub fn to_line(&self) -> String {
        // A Record holds only strings, numbers, bools and options: it
        // always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// This record with every text in it made
    /// [`printable`](crate::terminal::printable): what `guard report` reads,
    /// so names reach neither a terminal nor an SVG raw.
    pub fn for_terminal(&self) -> Result<Self, RecordError> {
        let mut value = serde_json::to_value(self)?;
        crate::terminal::printable_json(&mut value);
        Ok(serde_json::from_value(value)?)
    }

    pub fn from_line(line: &str) -> Result<Self, RecordError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            v: u32,
        }
        let VersionOnly { v } = serde_json::from_str(line)?;
        if v > SCHEMA_VERSION {
            return Err(RecordError::Version { found: v });
        }
        Ok(serde_json::from_str(line)?)
    }
}

/// Wall-clock ms for a CLOCK_MONOTONIC instant (now minus the age).
pub fn unix_ms_at(mono_ns: u64) -> u64 {
    let now_mono = crate::clock::monotonic_ns();
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let age_ms = now_mono.saturating_sub(mono_ns) / 1_000_000;
    now_unix.saturating_sub(age_ms)
}

/// What happened. `cgroup` fields are paths relative to the cgroup2 root
/// ("/user.slice/..."), or "" when the cgroup was gone before it could be
/// named; `cgroup_id` is the kernel's id either way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// First record on every connection: who is talking.
    Hello {
        /// "daemon" or "standalone" (`guard trace` with its own probes).
        source: String,
        guard_version: String,
        kernel: String,
        /// Whether the memory.high throttle is hooked (fentry allowed).
        throttle_hooked: bool,
        /// True when this source never kills (standalone, or --dry-run).
        dry_run: bool,
        /// The source's process id (0 in records of an older guard).
        #[serde(default)]
        pid: u32,
        /// How the tracepoints are attached: "btf" (all BTF-typed tp_btf),
        /// "classic" (all through tracefs) or "mixed" ("" in records of an older guard).
        #[serde(default)]
        tracepoints: String,
        /// Where the policy came from: its file, or "embedded default"
        /// ("" in records of an older guard).
        #[serde(default)]
        policy: String,
    },
    /// One memcg reclaim pass (only while someone listens).
    Reclaim {
        pid: u32,
        tid: u32,
        comm: String,
        cgroup_id: u64,
        cgroup: String,
        duration_ns: u64,
        reclaimed_pages: u64,
    },
    /// A memory.high penalty sleep began (fentry kernels, only while someone
    /// listens).
    Throttle {
        pid: u32,
        tid: u32,
        comm: String,
        cgroup_id: u64,
        cgroup: String,
        penalty_ns: u64,
    },
    /// The kernel judged a cgroup stalled beyond its budget.
    Verdict {
        cgroup_id: u64,
        cgroup: String,
        stall_ns: u64,
        window_ns: u64,
        budget_ns: u64,
        /// Consecutive reclaim passes without progress.
        streak: u64,
        /// When the run of no-progress passes began (CLOCK_MONOTONIC ns).
        episode_start_ns: u64,
        worst_pid: u32,
        worst_comm: String,
    },
    /// The guard killed (or, dry run, would have killed) a process.
    Kill {
        /// The cgroup over memory.high whose stall was relieved.
        cgroup: String,
        pid: u32,
        comm: String,
        /// Anonymous + swap memory of the victim, bytes.
        footprint_bytes: u64,
        /// Why: "memory_high_stall" for now.
        reason: String,
        /// "process", "process-group" or "cgroup".
        mode: String,
        /// The cgroup killed through cgroup.kill, if the mode did.
        killed_cgroup: Option<String>,
        also_killed: u64,
        stall_ns: u64,
        /// From the kernel's verdict to the signal, µs.
        latency_us: u64,
        memory_current: u64,
        memory_high: Option<u64>,
        dry_run: bool,
        /// Every process guard signalled for this verdict, the largest
        /// first (absent in records of guard before 0.2: `pid` alone).
        #[serde(default)]
        victims: Vec<u32>,
        /// How many victims the decision chose itself; more than one when
        /// the overage was spread over many small processes.
        #[serde(default)]
        batch: u32,
        /// Whose the first victim was: uid, user name, systemd unit (absent
        /// in records of guard before 0.3, and when it was reaped before
        /// it could be read).
        #[serde(default)]
        owner: Option<Owner>,
    },
    /// A confirmed stall that guard could not end by killing, and why
    /// (once per situation, not per verdict).
    Unresolved {
        cgroup: String,
        reason: String,
        /// The process guard may not kill that holds or drives the stall.
        holder_pid: Option<u32>,
        holder_comm: Option<String>,
        stall_ns: u64,
        memory_current: u64,
        memory_high: Option<u64>,
    },
    /// The circuit breaker opened: `fruitless_kills` kills in a row left the
    /// cgroup over its limit, so guard kills nothing more there for
    /// `window_ms`.
    KillLimit {
        cgroup: String,
        fruitless_kills: u64,
        window_ms: u64,
    },
    /// The kernel's own OOM killer chose a victim (oom:mark_victim).
    OomKill {
        pid: u32,
        /// The victim's command name, when it could still be read.
        comm: String,
        cgroup: String,
        /// The task whose allocation invoked the OOM killer.
        trigger_pid: u32,
        trigger_comm: String,
    },
    CgroupCreated {
        cgroup_id: u64,
        cgroup: String,
    },
    CgroupRemoved {
        cgroup_id: u64,
        cgroup: String,
    },
    /// A cgroup's memory and the kernel's totals for it, sampled while
    /// someone listens and around incidents.
    Sample {
        cgroup_id: u64,
        cgroup: String,
        memory_current: u64,
        /// None: "max" (no limit).
        memory_high: Option<u64>,
        memory_max: Option<u64>,
        /// Kernel totals since the cgroup was first seen.
        stall_total_ns: u64,
        passes: u64,
        no_progress_passes: u64,
        reclaimed_pages: u64,
        /// memory.pressure avg10 percentages (None: not readable).
        psi_some_avg10: Option<f64>,
        psi_full_avg10: Option<f64>,
        /// The task with the most no-progress stall in the current window.
        worst_pid: u32,
        worst_comm: String,
        /// No-progress stall in the sliding window the kernel judges by,
        /// as it stands now: what a verdict compares with the budget
        /// (0 in records of an older guard).
        #[serde(default)]
        stall_window_ns: u64,
    },
    /// Records that were lost on the way, since the last such record.
    Lost {
        /// "verdicts", "cgroup_events", "trace" (kernel ring buffers) or
        /// "stream" (this listener read too slowly).
        what: String,
        count: u64,
    },
    /// The source refused this listener, or is going away.
    Error {
        message: String,
    },
}

impl Event {
    /// The kind, as in the `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Hello { .. } => "hello",
            Event::Reclaim { .. } => "reclaim",
            Event::Throttle { .. } => "throttle",
            Event::Verdict { .. } => "verdict",
            Event::Kill { .. } => "kill",
            Event::Unresolved { .. } => "unresolved",
            Event::KillLimit { .. } => "kill_limit",
            Event::OomKill { .. } => "oom_kill",
            Event::CgroupCreated { .. } => "cgroup_created",
            Event::CgroupRemoved { .. } => "cgroup_removed",
            Event::Sample { .. } => "sample",
            Event::Lost { .. } => "lost",
            Event::Error { .. } => "error",
        }
    }

    /// True for the per-pass records that flow only while someone listens.
    pub fn is_raw(&self) -> bool {
        matches!(self, Event::Reclaim { .. } | Event::Throttle { .. })
    }

    /// One line for people (`guard trace --lines`, the events pane), its
    /// names made [`printable`](crate::terminal::printable).
    pub fn describe(&self) -> String {
        let line = self.incident_line().unwrap_or_else(|| self.routine_line());
        match crate::terminal::printable(&line) {
            std::borrow::Cow::Borrowed(_) => line,
            std::borrow::Cow::Owned(escaped) => escaped,
        }
    }

    /// The line of a verdict, a kill, or a stall guard could not end.
    fn incident_line(&self) -> Option<String> {
        let ms = |ns: u64| ns as f64 / 1e6;
        let line = match self {
            Event::Verdict {
                cgroup,
                stall_ns,
                budget_ns,
                window_ns,
                worst_pid,
                worst_comm,
                streak,
                ..
            } => format!(
                "VERDICT {cgroup}: stalled {:.0} ms of {:.0} ms (budget {:.0} ms), {streak} passes without progress, worst {worst_comm}[{worst_pid}]",
                ms(*stall_ns),
                ms(*window_ns),
                ms(*budget_ns)
            ),
            Event::Kill {
                cgroup,
                pid,
                comm,
                footprint_bytes,
                mode,
                latency_us,
                dry_run,
                also_killed,
                owner,
                ..
            } => {
                let what = if *dry_run {
                    "WOULD KILL (dry run)"
                } else {
                    "KILLED SIGKILL"
                };
                let more = if *also_killed > 0 {
                    format!(" and {also_killed} more")
                } else {
                    String::new()
                };
                let whose = owner.as_ref().map_or_else(String::new, Owner::describe);
                format!(
                    "{what} {comm}[{pid}]{more} in {cgroup}{whose}: {:.1} MiB, mode {mode}, {:.1} ms after the verdict",
                    mib(*footprint_bytes),
                    *latency_us as f64 / 1e3
                )
            }
            Event::Unresolved { cgroup, reason, .. } => {
                format!("UNRESOLVED {cgroup}: nothing killed: {reason}")
            }
            Event::KillLimit {
                cgroup,
                fruitless_kills,
                window_ms,
            } => format!(
                "KILL LIMIT {cgroup}: {fruitless_kills} kills in a row left it over its limit; \
                 no more kills there for {:.0} s",
                *window_ms as f64 / 1e3
            ),
            Event::OomKill {
                pid, comm, cgroup, ..
            } => format!("KERNEL OOM KILL {comm}[{pid}] in {cgroup} (oom:mark_victim)"),
            _ => return None,
        };
        Some(line)
    }

    /// The line of everything else.
    fn routine_line(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        match self {
            Event::Hello {
                source,
                guard_version,
                kernel,
                throttle_hooked,
                dry_run,
                ..
            } => hello_line(source, guard_version, kernel, *throttle_hooked, *dry_run),
            Event::Reclaim {
                pid,
                comm,
                cgroup,
                duration_ns,
                reclaimed_pages,
                ..
            } => format!(
                "reclaim {cgroup} {comm}[{pid}] {:.1} ms, {reclaimed_pages} pages",
                ms(*duration_ns)
            ),
            Event::Throttle {
                pid,
                comm,
                cgroup,
                penalty_ns,
                ..
            } => format!(
                "throttle {cgroup} {comm}[{pid}] penalty sleep {:.0} ms",
                ms(*penalty_ns)
            ),
            Event::CgroupCreated { cgroup, .. } => format!("cgroup created {cgroup}"),
            Event::CgroupRemoved { cgroup, .. } => format!("cgroup removed {cgroup}"),
            Event::Sample {
                cgroup,
                memory_current,
                memory_high,
                memory_max,
                ..
            } => sample_line(cgroup, *memory_current, *memory_high, *memory_max),
            Event::Lost { what, count } => format!("LOST {count} {what} records"),
            Event::Error { message } => format!("error: {message}"),
            Event::Verdict { .. }
            | Event::Kill { .. }
            | Event::Unresolved { .. }
            | Event::KillLimit { .. }
            | Event::OomKill { .. } => self.kind().to_owned(),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn hello_line(
    source: &str,
    guard_version: &str,
    kernel: &str,
    throttle_hooked: bool,
    dry_run: bool,
) -> String {
    format!(
        "attached to {source} (guard {guard_version}, kernel {kernel}, throttle {}{})",
        if throttle_hooked {
            "hooked"
        } else {
            "not hooked: tracepoints only"
        },
        if dry_run { ", never kills" } else { "" }
    )
}

fn sample_line(cgroup: &str, current: u64, high: Option<u64>, max: Option<u64>) -> String {
    let lim = |l: Option<u64>| l.map_or("max".to_owned(), |b| format!("{:.1}", mib(b)));
    format!(
        "sample {cgroup}: {:.1} MiB (high {}, max {})",
        mib(current),
        lim(high),
        lim(max)
    )
}

impl Record {
    /// `HH:MM:SS.mmm` (UTC) and the description: `guard trace --lines`.
    pub fn to_text_line(&self) -> String {
        let ms_of_day = self.unix_ms % 86_400_000;
        format!(
            "{:02}:{:02}:{:02}.{:03} {}",
            ms_of_day / 3_600_000,
            ms_of_day / 60_000 % 60,
            ms_of_day / 1000 % 60,
            ms_of_day % 1000,
            self.event.describe()
        )
    }
}

/// How the host appears where a cgroup would: in logs, events and metrics.
pub const HOST_NAME: &str = "(host)";

/// What the post-kill hook and the event stream are told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KillReport {
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    /// What the victims held together, bytes.
    pub footprint: u64,
    /// The kill mode applied ("process", "process-group", "cgroup").
    pub mode: String,
    pub killed_cgroup: Option<String>,
    pub also_killed: u64,
    pub stall_ns: u64,
    /// From the kernel's verdict to the first SIGKILL.
    pub latency_us: u64,
    pub memory_current: u64,
    /// `u64::MAX`: no limit.
    pub memory_high: u64,
    pub dry_run: bool,
    /// Every process signalled (or, dry run, that would be), the largest
    /// first.
    pub victims: Vec<u32>,
    /// How many victims the decision chose; more than one when the overage
    /// was spread over many small processes.
    pub batch: u32,
    /// Whose the first victim was.
    pub owner: Option<Owner>,
}

/// A stall guard could not end, as the stream tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnresolvedReport {
    pub cgroup: String,
    pub reason: String,
    pub holder_pid: Option<u32>,
    pub holder_comm: Option<String>,
    pub stall_ns: u64,
    pub memory_current: u64,
    pub memory_high: u64,
}

/// The circuit breaker opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitReport {
    pub cgroup: String,
    pub fruitless_kills: u64,
    pub window_ms: u64,
}

impl KillReport {
    pub fn event(&self) -> Event {
        Event::Kill {
            cgroup: self.cgroup.clone(),
            pid: self.pid,
            comm: self.comm.clone(),
            footprint_bytes: self.footprint,
            reason: "memory_high_stall".to_owned(),
            mode: self.mode.clone(),
            killed_cgroup: self.killed_cgroup.clone(),
            also_killed: self.also_killed,
            stall_ns: self.stall_ns,
            latency_us: self.latency_us,
            memory_current: self.memory_current,
            memory_high: (self.memory_high != u64::MAX).then_some(self.memory_high),
            dry_run: self.dry_run,
            victims: self.victims.clone(),
            batch: self.batch,
            owner: self.owner.clone(),
        }
    }
}

impl UnresolvedReport {
    pub fn event(&self) -> Event {
        Event::Unresolved {
            cgroup: self.cgroup.clone(),
            reason: self.reason.clone(),
            holder_pid: self.holder_pid,
            holder_comm: self.holder_comm.clone(),
            stall_ns: self.stall_ns,
            memory_current: self.memory_current,
            memory_high: (self.memory_high != u64::MAX).then_some(self.memory_high),
        }
    }
}

impl LimitReport {
    pub fn event(&self) -> Event {
        Event::KillLimit {
            cgroup: self.cgroup.clone(),
            fruitless_kills: self.fruitless_kills,
            window_ms: self.window_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill() -> Event {
        Event::Kill {
            cgroup: "/seed.slice".into(),
            pid: 42,
            comm: "grep".into(),
            footprint_bytes: 96 << 20,
            reason: "memory_high_stall".into(),
            mode: "process".into(),
            killed_cgroup: None,
            also_killed: 0,
            stall_ns: 300_000_000,
            latency_us: 1200,
            memory_current: 100 << 20,
            memory_high: Some(64 << 20),
            dry_run: false,
            victims: vec![42],
            batch: 1,
            owner: None,
        }
    }

    #[test]
    fn a_hostile_name_is_escaped_in_the_line_and_exact_in_json() {
        let mut event = kill();
        if let Event::Kill { comm, cgroup, .. } = &mut event {
            *comm = "\u{1b}[2Jhog\nKILLED sshd[1]".into();
            *cgroup = "/x\u{202e}".into();
        }
        let line = event.describe();
        assert_eq!(
            line,
            "KILLED SIGKILL \\x1b[2Jhog\\nKILLED sshd[1][42] in /x\\u{202e}: 96.0 MiB, mode \
             process, 1.2 ms after the verdict"
        );
        let record = Record::at(5, event);
        assert_eq!(
            Record::from_line(&record.to_line()).ok(),
            Some(record.clone())
        );
        let shown = record.for_terminal().expect("round trip");
        let Event::Kill { comm, .. } = &shown.event else {
            panic!("still a kill: {shown:?}");
        };
        assert_eq!(comm, "\\x1b[2Jhog\\nKILLED sshd[1]");
    }

    #[test]
    fn a_record_is_one_json_line_with_version_type_and_fields() {
        let line = Record::at(5_000_000_000, kill()).to_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["v"], 1);
        assert_eq!(v["type"], "kill");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["mono_ns"], 5_000_000_000u64);
        assert_eq!(v["memory_high"], 64u64 << 20);
        let back = Record::from_line(&line).expect("parses back");
        assert_eq!(back.event, kill());
    }

    #[test]
    fn a_newer_schema_is_refused_by_name_not_misread() {
        let line = Record::at(1, kill())
            .to_line()
            .replace("\"v\":1", "\"v\":2");
        let err = Record::from_line(&line).expect_err("newer version");
        assert!(err.to_string().contains("version 2"), "{err}");
        assert!(Record::from_line("{\"v\":1,\"type\":\"nope\"}").is_err());
    }

    #[test]
    fn descriptions_name_what_a_person_looks_for() {
        let text = Record::at(1, kill()).to_text_line();
        assert!(
            text.contains("KILLED SIGKILL grep[42] in /seed.slice"),
            "{text}"
        );
        let oom = Event::OomKill {
            pid: 7,
            comm: "dd".into(),
            cgroup: "/x".into(),
            trigger_pid: 7,
            trigger_comm: "dd".into(),
        };
        assert!(oom.describe().contains("KERNEL OOM KILL dd[7]"));
        assert_eq!(oom.kind(), "oom_kill");
        assert!(!oom.is_raw());
        let limit = Event::KillLimit {
            cgroup: "/work.slice".into(),
            fruitless_kills: 3,
            window_ms: 60_000,
        };
        assert_eq!(limit.kind(), "kill_limit");
        let text = limit.describe();
        assert!(text.contains("KILL LIMIT /work.slice"), "{text}");
        assert!(text.contains("60 s"), "{text}");
        let u = Event::Unresolved {
            cgroup: "/a".into(),
            reason: "the process driving the stall may not be killed".into(),
            holder_pid: Some(9),
            holder_comm: Some("sshd".into()),
            stall_ns: 1,
            memory_current: 2,
            memory_high: Some(1),
        };
        assert!(
            u.describe()
                .starts_with("UNRESOLVED /a: nothing killed: the process")
        );
    }

    #[test]
    fn a_hello_of_an_older_guard_still_reads() {
        // Written before `pid`, `tracepoints` and `policy` existed.
        let old = "{\"v\":1,\"mono_ns\":1,\"unix_ms\":2,\"type\":\"hello\",\"source\":\"daemon\",\
                   \"guard_version\":\"0.1.0\",\"kernel\":\"6.1.0\",\"throttle_hooked\":true,\
                   \"dry_run\":false}";
        match Record::from_line(old).expect("reads").event {
            Event::Hello {
                pid,
                tracepoints,
                policy,
                throttle_hooked,
                ..
            } => {
                assert_eq!((pid, tracepoints.as_str(), policy.as_str()), (0, "", ""));
                assert!(throttle_hooked);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_kill_record_of_an_older_guard_still_reads() {
        // Written before `victims` and `batch` existed.
        let old = Record::at(1, kill())
            .to_line()
            .replace(",\"victims\":[42],\"batch\":1", "");
        assert!(!old.contains("victims"), "{old}");
        match Record::from_line(&old).expect("reads").event {
            Event::Kill { victims, batch, .. } => assert_eq!((victims.len(), batch), (0, 0)),
            other => panic!("{other:?}"),
        }
    }
}
