//! `benign`: memory.high crossed by work the kernel itself gets through,
//! which the guard must leave alone.
//!
//! (a) bursts: a process in a cgroup with memory.high 64M, memory.max 256M
//! and no swap goes over memory.high and frees the memory again at once,
//! five times, a second apart;
//! (b) reclaim that makes progress: a process in a cgroup with memory.high
//! 64M writes a 300 MiB file on a real (ext2, NVMe) filesystem and reads it
//! back twice; its page cache is reclaimed as it goes.
//!
//! Why the bursts stop about 1 MiB over memory.high instead of taking
//! 80 MiB: with anonymous memory and no swap nothing of a burst can be
//! reclaimed, and the kernel's penalty sleep grows with the square of the
//! overage and with the pages charged at once. An 80 MiB burst in this
//! cgroup never gets near 80 MiB: at about 69 MiB (3% over, one 2 MiB
//! transparent huge page charged at once) the kernel puts it to sleep for
//! about 490 ms, which is already more than the guard's 250 ms budget, and
//! to reach 80 MiB it would sleep for tens of seconds. The guard kills such
//! a burst, as it should. A burst the kernel lets through is one that stays
//! within a percent or two of memory.high, in small pages; that is what (a)
//! is.
//!
//! `benign-tight` runs (a) alone against a budget so small that every
//! burst's stall passes it: what a slow or loaded machine does to the
//! 250 ms default. The kernel sends its verdicts, and still nobody may die:
//! a stall at a mild overage is acted on only once it has lasted (see
//! guard-user's decision/mild.rs), and each burst is over before that.
//!
//! The two run at the same time. Both must end by themselves with nobody
//! killed, and each must really
//! have gone over memory.high (memory.events high rose), so that "nobody
//! killed" means something.

use super::*;
use crate::summary::{fmt_num, fmt_list};

pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        disk: true,
        ..Scenario::new("benign", run, summary)
    },
    Scenario::new("benign-tight", run_tight, summary_tight),
];

fn summary_tight(r: &Value) -> String {
    format!(
        "nothing killed at budget {} ms; bursts up to {} KiB over high for {} ms each, pressure full {} ms; guard verdicts {}",
        TIGHT_BUDGET_MS,
        r["burst_peak_over_high_kib"],
        fmt_list(&r["burst_over_high_ms"], "/"),
        fmt_num(&r["burst_pressure_full_ms"], 0),
        r["guard_verdicts"],
    )
}

fn summary(r: &Value) -> String {
    format!(
        "nothing killed; bursts (thp {}): up to {} KiB over high for {} ms each, {} high events, {}/{} reclaim passes without progress, pressure full {} ms; file cache ({}): {} high events, {}/{} passes without progress, {} ms; guard verdicts {}",
        r["thp"].as_str().unwrap_or("-"),
        r["burst_peak_over_high_kib"],
        fmt_list(&r["burst_over_high_ms"], "/"),
        r["burst_high_events"],
        r["burst_no_progress_passes"],
        r["burst_passes"],
        fmt_num(&r["burst_pressure_full_ms"], 0),
        r["scratch_fs"].as_str().unwrap_or("-"),
        r["cache_high_events"],
        r["cache_no_progress_passes"],
        r["cache_passes"],
        r["cache_ms"],
        r["guard_verdicts"],
    )
}

pub(super) const DISK: &str = "/dev/nvme0n1";
pub(super) const MOUNT: &str = "/tmp/scratch";
const FILE_MIB: &str = "300";
const READS: &str = "2";
/// Burst arguments: KiB over memory.high to stop at (0: touch all of
/// LIMIT_MIB), rounds, interval ms, LIMIT_MIB, give-up ms.
const BURST: [&str; 5] = ["1024", "5", "1000", "80", "3000"];

pub(super) fn run(r: &mut Report) -> Result<(), String> {
    trace_enable(&[], 32768)?;
    let mut guard = Guard::start(&[], &[])?;
    // (b) runs while (a) does: two cgroups over memory.high at once, and
    // the scenario stays short.
    let cache = FileCache::start(r)
        .map_err(|e| r.check(false, format!("file cache: {e}")))
        .ok();
    let cache_pid = cache.as_ref().map(FileCache::pid);
    let burst_pid = bursts(r);
    if let Some(c) = cache
        && let Err(e) = c.finish(r)
    {
        r.check(false, format!("file cache: {e}"));
    }
    let burst_pid = burst_pid?;
    let log = guard.stop();
    let trace_text = trace::read();
    r.set("trace_overrun", trace_overrun());
    let lines = log_lines(&log);
    let kills = with_message(&lines, "killed");
    r.check(
        kills.is_empty(),
        format!(
            "the guard killed {}",
            kills
                .iter()
                .map(|k| format!(
                    "pid {} ({}) in {}",
                    k["pid"],
                    text(&k["comm"]),
                    text(&k["cgroup"])
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let sigkills = trace_sigkills(&trace_text);
    r.check(
        sigkills.is_empty(),
        format!("SIGKILLs in the trace: {sigkills:?}"),
    );
    let (all, none) = trace_passes(&trace_text, &[burst_pid]);
    r.set("burst_passes", all);
    r.set("burst_no_progress_passes", none);
    if let Some(pid) = cache_pid {
        let (all, none) = trace_passes(&trace_text, &[pid]);
        r.set("cache_passes", all);
        r.set("cache_no_progress_passes", none);
        r.check(
            all > 0,
            "the file-cache workload never entered memcg reclaim",
        );
    }
    if let Some(stop) = with_message(&lines, "guard stopping").first() {
        for key in ["passes", "no_progress", "penalties", "verdicts"] {
            r.set(&format!("guard_{key}"), stop[key].clone());
        }
    }
    Ok(())
}

/// `benign-tight`'s budget: under a tenth of what one burst stalls.
const TIGHT_BUDGET_MS: u64 = 5;
const TIGHT_POLICY: &str = "/etc/guard-tight/guard.toml";

fn run_tight(r: &mut Report) -> Result<(), String> {
    write_policy(
        TIGHT_POLICY,
        &format!("budget_ms = {TIGHT_BUDGET_MS}\n[[scope]]\npaths = [\"/**\"]\n"),
    )?;
    let mut guard = Guard::start(&["--config", TIGHT_POLICY], &[])?;
    let burst = bursts(r);
    let log = guard.stop();
    burst?;
    let lines = log_lines(&log);
    let kills = with_message(&lines, "killed");
    r.check(
        kills.is_empty(),
        format!("the guard killed {} process(es) of the bursts", kills.len()),
    );
    let verdicts = with_message(&lines, "guard stopping")
        .first()
        .and_then(|stop| stop["verdicts"].as_u64())
        .unwrap_or(0);
    r.set("guard_verdicts", verdicts);
    r.check(
        verdicts > 0,
        "no verdict came: the bursts never passed the budget, so nothing was tested",
    );
    Ok(())
}

/// (a): returns the burst process's pid.
fn bursts(r: &mut Report) -> Result<u32, String> {
    let thp = read("/sys/kernel/mm/transparent_hugepage/enabled");
    let thp = thp
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map_or("-", |(mode, _)| mode);
    r.set("thp", thp);
    let cg = Cgroup::create("/burst")?;
    cg.limit("64M", "256M")?;
    let high_events0 = cg.event("high");
    let (full0, _) = pressure_full(&cg.read("memory.pressure"));
    let mut args = vec!["burst"];
    args.extend(BURST);
    let mut child = cg.spawn(&args, Stdio::piped())?;
    let pid = child.id();
    let mut out = Lines::new(child.stdout.take().ok_or("no stdout of the burst")?);
    let mut report = Vec::new();
    let status = match wait_exit(&mut child, Duration::from_secs(20)) {
        Some((status, _)) => status,
        None => {
            end(&mut child);
            return Err("the bursts did not end within 20 s".into());
        }
    };
    report.extend(out.poll());
    r.check(
        status.success(),
        format!("the burst process ended with {status}"),
    );
    let mut peaks_over = 0;
    let mut worst_over = 0;
    let mut ms = Vec::new();
    let mut over_ms = Vec::new();
    for line in &report {
        println!("burst: {line}");
        let peak: u64 = kv(line, "peak").and_then(|s| s.parse().ok()).unwrap_or(0);
        let high: u64 = kv(line, "high")
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if peak > high {
            peaks_over += 1;
            worst_over = worst_over.max(peak - high);
        }
        ms.push(
            kv(line, "ms")
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(-1.0),
        );
        over_ms.push(
            kv(line, "over_ms")
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(-1.0),
        );
        r.check(
            kv(line, "gave_up") == Some("0"),
            format!("a burst did not reach its size in time: {line}"),
        );
    }
    r.set("burst_rounds", report.len());
    r.set("burst_ms", json!(ms));
    r.set("burst_over_high_ms", json!(over_ms));
    r.set("burst_peaks_over_high", peaks_over);
    r.set("burst_peak_over_high_kib", worst_over / 1024);
    r.check(
        report.len() == 5,
        format!("{} of 5 bursts reported", report.len()),
    );
    let rose = cg.event("high") - high_events0;
    r.set("burst_high_events", rose);
    r.check(rose > 0, "bursts: memory.events high did not rise");
    r.check(
        peaks_over == report.len(),
        format!("only {peaks_over} bursts went over memory.high"),
    );
    let (full1, _) = pressure_full(&cg.read("memory.pressure"));
    r.set("burst_pressure_full_ms", (full1 - full0) as f64 / 1000.0);
    Ok(pid)
}

/// (b), running.
struct FileCache {
    cg: Cgroup,
    child: Child,
    out: Lines,
    started: Instant,
    high_events0: u64,
}

impl FileCache {
    /// Formats and mounts the scratch disk and starts the workload.
    fn start(r: &mut Report) -> Result<Self, String> {
        mount_scratch(r)?;
        let cg = Cgroup::create("/cache")?;
        cg.limit("64M", "256M")?;
        let high_events0 = cg.event("high");
        let file = format!("{MOUNT}/big");
        let started = Instant::now();
        let mut child = cg.spawn(&["filecache", &file, FILE_MIB, READS], Stdio::piped())?;
        let out = Lines::new(child.stdout.take().ok_or("no stdout of the workload")?);
        Ok(Self {
            cg,
            child,
            out,
            started,
            high_events0,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the workload and checks how it went.
    fn finish(mut self, r: &mut Report) -> Result<(), String> {
        let status = match wait_exit(&mut self.child, Duration::from_secs(60)) {
            Some((status, _)) => status,
            None => {
                end(&mut self.child);
                return Err("the file-cache workload did not end within 60 s".into());
            }
        };
        r.set("cache_ms", self.started.elapsed().as_millis() as u64);
        let report = self.out.poll();
        for line in &report {
            println!("filecache: {line}");
        }
        r.check(
            status.success(),
            format!("the file-cache workload ended with {status}"),
        );
        r.check(
            report.iter().any(|l| l == "filecache ok"),
            "the file-cache workload did not finish its passes",
        );
        let ms: Vec<f64> = report
            .iter()
            .filter_map(|l| kv(l, "ms")?.parse().ok())
            .collect();
        r.set("cache_pass_ms", json!(ms));
        let cg = &self.cg;
        let rose = cg.event("high") - self.high_events0;
        r.set("cache_high_events", rose);
        r.check(rose > 0, "file cache: memory.events high did not rise");
        let stat = cg.read("memory.stat");
        r.set("cache_file_bytes_end", keyed(&stat, "file"));
        r.set("cache_peak_bytes", cg.number("memory.peak"));
        r.set("cache_oom_kills", cg.event("oom_kill"));
        Ok(())
    }
}

/// Waits for the scratch disk (NVMe, attached fresh per boot) to appear.
pub(super) fn wait_for_disk() -> Result<(), String> {
    let waited = Instant::now();
    while !Path::new(DISK).exists() {
        if waited.elapsed() > Duration::from_secs(10) {
            return Err(format!("{DISK} did not appear (no scratch disk attached?)"));
        }
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Formats the scratch disk and mounts it
/// on MOUNT: a real file system whose page cache the kernel can reclaim.
pub(super) fn mount_scratch(r: &mut Report) -> Result<(), String> {
    wait_for_disk()?;
    let mkfs = Command::new("/bin/mke2fs")
        .args(["-F", "-q", DISK])
        .output()
        .map_err(|e| format!("running mke2fs: {e}"))?;
    if !mkfs.status.success() {
        return Err(format!(
            "mke2fs {DISK}: {}: {}",
            mkfs.status,
            String::from_utf8_lossy(&mkfs.stderr)
        ));
    }
    fs::create_dir_all(MOUNT).map_err(|e| format!("mkdir {MOUNT}: {e}"))?;
    let mut fs_type = "";
    for t in ["ext2", "ext4"] {
        let (src, dst, ty) = (
            CString::new(DISK).unwrap_or_default(),
            CString::new(MOUNT).unwrap_or_default(),
            CString::new(t).unwrap_or_default(),
        );
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let rc =
            unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
        if rc == 0 {
            fs_type = t;
            break;
        }
    }
    if fs_type.is_empty() {
        return Err(format!(
            "mounting {DISK} on {MOUNT} as ext2 or ext4: {}",
            std::io::Error::last_os_error()
        ));
    }
    r.set("scratch_fs", fs_type);
    Ok(())
}
