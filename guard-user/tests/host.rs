//! Tests on the build host's own kernel. Nothing here kills anything but the
//! kernel's OOM killer acting on a process this test started in a memory
//! cgroup this test created; the guard itself runs dry.

use std::{
    fs,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use guard::kernel::{Attach, Probes, Settings};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Where the unified (v2) hierarchy is mounted, from mountinfo.
fn unified_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// This process's cgroup in the hierarchy named by `pattern` ("0::" for v2,
/// ":memory:" for the v1 memory controller).
fn own_cgroup(pattern: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| Some(l[l.find(pattern)? + pattern.len()..].to_owned()))
}

/// A cgroup directory removed (after its processes are gone) on drop.
struct TempCgroup(PathBuf);

impl Drop for TempCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `args` inside both cgroups and waits for it; returns its pid and
/// whether it was killed by SIGKILL.
fn run_in(cgroups: &[&Path], args: &[&str]) -> (u32, bool) {
    let procs: Vec<PathBuf> = cgroups.iter().map(|c| c.join("cgroup.procs")).collect();
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec the closure only writes to files.
    unsafe {
        cmd.pre_exec(move || {
            for p in &procs {
                fs::write(p, "0")?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn workload");
    let pid = child.id();
    let status = child.wait().expect("wait workload");
    use std::os::unix::process::ExitStatusExt;
    (pid, status.signal() == Some(libc::SIGKILL))
}

/// A cgroup2 child and a v1 memory child (16M) of this test's own cgroups,
/// or None (with the reason printed) where the host cannot provide them.
fn test_cgroups(tag: &str) -> Option<(TempCgroup, TempCgroup, u64)> {
    if !is_root() {
        eprintln!("SKIPPED: loading eBPF programs needs root");
        return None;
    }
    let (Some(unified), Some(v2_path), Some(v1_path)) =
        (unified_mount(), own_cgroup("0::"), own_cgroup(":memory:"))
    else {
        eprintln!(
            "SKIPPED: this host has no v1 memory controller beside cgroup2; the VM scenarios cover \
             unified hosts"
        );
        return None;
    };
    let name = format!("guard-host-{tag}-{}", std::process::id());
    let v2 = TempCgroup(unified.join(v2_path.trim_start_matches('/')).join(&name));
    let v1 = TempCgroup(
        Path::new("/sys/fs/cgroup/memory")
            .join(v1_path.trim_start_matches('/'))
            .join(&name),
    );
    fs::create_dir(&v2.0).expect("create v2 cgroup");
    fs::create_dir(&v1.0).expect("create v1 memory cgroup");
    fs::write(v1.0.join("memory.limit_in_bytes"), "16M").expect("set the v1 limit");
    let id = fs::metadata(&v2.0).expect("stat").ino();
    Some((v2, v1, id))
}

/// Probe settings for a test: its budget and verdict interval, a 1 s
/// window, only the listed cgroup watched, no host scope.
fn settings(budget: Duration, verdict_interval: Duration, classic: bool) -> Settings {
    Settings {
        budget,
        window: Duration::from_secs(1),
        verdict_interval,
        min_progress_pages: 1,
        watch_capacity: 4096,
        watch_all: false,
        classic_tracepoints: classic,
        host: None,
    }
}

const ANON_HOG: [&str; 5] = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"];

#[test]
fn a_full_verdict_ring_is_counted_and_the_stall_reported_again_once_there_is_room() {
    let Some((v2, v1, watched)) = test_cgroups("ring") else {
        return;
    };
    // Every fruitless pass gives a verdict: no rate limit, a 1 µs budget.
    let mut probes =
        Probes::load(settings(Duration::from_micros(1), Duration::ZERO, false)).expect("load");
    probes
        .watch(watched, guard_common::Watch::default())
        .expect("watch");
    let mut verdicts = probes.take_verdicts().expect("ring buffer");
    let lost = |p: &Probes| p.stats().expect("stats")[guard_common::stat::VERDICTS_LOST as usize];
    let sent = |p: &Probes| p.stats().expect("stats")[guard_common::stat::VERDICTS as usize];
    // Nobody reads: hogs until the ring buffer is full and a verdict is lost.
    let mut runs = 0;
    while lost(&probes) == 0 && runs < 400 {
        run_in(&[&v2.0, &v1.0], &ANON_HOG);
        runs += 1;
    }
    assert!(lost(&probes) > 0, "no verdict was lost after {runs} hogs");
    let mut drained = 0u64;
    while verdicts.next().is_some() {
        drained += 1;
    }
    assert!(
        drained > 0 && drained <= sent(&probes),
        "drained {drained}, sent {}",
        sent(&probes)
    );
    // With room again, the next stall is reported. (The worst task of the
    // window may still be an earlier hog, so the verdict is told by time.)
    let before = guard::clock::monotonic_ns();
    run_in(&[&v2.0, &v1.0], &ANON_HOG);
    let mut fresh = 0;
    while let Some(item) = verdicts.next() {
        let v = guard_common::Verdict::from_bytes(&item).expect("whole");
        fresh += u32::from(v.ktime_ns > before);
    }
    assert!(fresh > 0, "no verdict for the stall after the drain");
}

#[test]
fn probes_attach_on_this_kernel_and_see_reclaim_in_a_memory_cgroup() {
    let Some((v2, v1, watched)) = test_cgroups("reclaim") else {
        return;
    };
    // A 1 µs budget: the first fruitless pass must produce a verdict.
    let mut probes = Probes::load(settings(
        Duration::from_micros(1),
        Duration::from_secs(1),
        false,
    ))
    .expect("the programs load and the tracepoints attach");
    eprintln!("throttle hooks on this kernel: {:?}", probes.throttle);
    assert_eq!(probes.tracepoints.attached.len(), 5);
    attached_as_asked(&probes, false);
    probes
        .watch(watched, guard_common::Watch::default())
        .expect("watch");
    let mut verdicts = probes.take_verdicts().expect("ring buffer");

    // Page cache over the limit: reclaim that makes progress.
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("guard-host-cache-{}.data", std::process::id()));
    let of = format!("of={}", file.display());
    let (_, killed) = run_in(
        &[&v2.0, &v1.0],
        &["dd", "if=/dev/zero", &of, "bs=1M", "count=64", "conv=fsync"],
    );
    let _ = fs::remove_file(&file);
    assert!(!killed, "the page-cache writer must not be OOM-killed");
    let after_cache = probes
        .cgroup_stall(watched)
        .expect("map read")
        .expect("the kernel side saw reclaim in the watched cgroup");
    assert!(after_cache.passes > 0);
    assert!(after_cache.reclaimed_pages > 0, "{after_cache:?}");
    // Passes that met pages under writeback may have freed nothing; start
    // the hog phase from a clean slate (this also undoes the rate limit).
    while verdicts.next().is_some() {}
    probes.reset_cgroup(watched).expect("reset");

    // A 64 MiB anonymous buffer in a 16 MiB cgroup without swap: reclaim
    // frees nothing (the kernel's v1 OOM killer ends it).
    let (hog_pid, hog_killed) = run_in(&[&v2.0, &v1.0], &ANON_HOG);
    assert!(
        hog_killed,
        "the v1 OOM killer should have ended the anonymous hog"
    );
    let after_hog = probes
        .cgroup_stall(watched)
        .expect("map read")
        .expect("state kept");
    // The reset keeps the running totals; the hog's passes add to them.
    assert!(
        after_hog.no_progress_passes > after_cache.no_progress_passes,
        "{after_hog:?}"
    );
    assert!(after_hog.passes > after_cache.passes);

    let item = verdicts
        .next()
        .expect("a verdict for the fruitless reclaim");
    let v = guard_common::Verdict::from_bytes(&item).expect("a whole verdict");
    drop(item);
    assert!(
        verdicts.next().is_none(),
        "one verdict per rate-limit interval"
    );
    assert_eq!(v.cgroup_id, watched);
    assert_eq!(v.worst_tgid, hog_pid);
    assert_eq!(v.comm(), b"dd");
    assert!(v.stall_ns >= v.budget_ns && v.budget_ns == 1000, "{v:?}");
}

/// Drains a trace ring buffer.
fn drain_trace(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
) -> Vec<guard_common::TraceRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(guard_common::TraceRecord::from_bytes(&item).expect("a whole record"));
    }
    out
}

/// Whether the tracepoints were attached as asked: every one classic when
/// classic was asked for; otherwise BTF-typed unless a reason is given.
fn attached_as_asked(probes: &Probes, classic: bool) {
    let tp = &probes.tracepoints;
    eprintln!("tracepoints: {tp:?}");
    if classic {
        assert!(
            tp.attached.iter().all(|(_, how)| *how == Attach::Classic),
            "{tp:?}"
        );
    }
    assert_eq!(tp.all_btf(), tp.classic_because.is_none(), "{tp:?}");
}

// The reclaim, OOM and cgroup tracepoints each read their fields in two
// ways (a tracefs record, or the arguments and the kernel's structs through
// BTF): the tests below run both.

#[test]
fn per_pass_trace_records_flow_only_while_switched_on_and_oom_victims_always() {
    trace_records(false);
}

#[test]
fn per_pass_trace_records_and_oom_victims_through_classic_tracepoints() {
    trace_records(true);
}

fn trace_records(classic: bool) {
    use guard_common::{TRACE_OOM_VICTIM, TRACE_RECLAIM, stat};
    let Some((v2, v1, watched)) = test_cgroups(if classic { "trace-c" } else { "trace" }) else {
        return;
    };
    let mut probes = Probes::load(settings(
        Duration::from_secs(10),
        Duration::from_secs(1),
        classic,
    ))
    .expect("load");
    attached_as_asked(&probes, classic);
    probes
        .watch(watched, guard_common::Watch::default())
        .expect("watch");
    let mut ring = probes.take_trace().expect("trace ring");
    let mut switch = probes.take_trace_switch().expect("trace switch");
    let stats = |p: &Probes| p.stats().expect("stats");

    // Nobody listens: the hog's passes are counted, none is sent; the v1
    // OOM kill that ends it is.
    let (quiet_pid, killed) = run_in(&[&v2.0, &v1.0], &ANON_HOG);
    assert!(killed, "the v1 OOM killer should end the anonymous hog");
    assert!(stats(&probes)[stat::PASSES as usize] > 0, "no pass seen");
    let quiet = drain_trace(&mut ring);
    assert!(
        quiet.iter().all(|r| r.kind == TRACE_OOM_VICTIM),
        "per-pass records were sent while switched off: {quiet:?}"
    );
    assert!(
        quiet.iter().any(|r| r.victim_pid == quiet_pid),
        "no oom:mark_victim record for {quiet_pid}: {quiet:?}"
    );

    // Someone listens: every pass of the hog in the watched cgroup is sent.
    switch.set(true).expect("switch on");
    let (pid, killed) = run_in(&[&v2.0, &v1.0], &ANON_HOG);
    assert!(killed);
    let loud = drain_trace(&mut ring);
    let passes: Vec<_> = loud
        .iter()
        .filter(|r| r.kind == TRACE_RECLAIM && r.tgid == pid)
        .collect();
    assert!(!passes.is_empty(), "no reclaim record of {pid}: {loud:?}");
    assert!(
        passes
            .iter()
            .all(|r| r.cgroup_id == watched && r.comm() == b"dd")
    );
    assert!(
        passes
            .iter()
            .any(|r| r.reclaimed_pages == 0 && r.duration_ns > 0)
    );
    assert!(
        loud.iter()
            .any(|r| r.kind == TRACE_OOM_VICTIM && r.victim_pid == pid)
    );
    assert_eq!(stats(&probes)[stat::TRACE_LOST as usize], 0);
}

#[test]
fn run_refuses_a_host_without_cgroup_v2_memory_and_says_how_to_fix_it() {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let unified_root = mountinfo.lines().any(|l| {
        l.split_once(" - ").is_some_and(|(left, right)| {
            right.starts_with("cgroup2 ")
                && left.split_whitespace().nth(4) == Some("/sys/fs/cgroup")
        })
    });
    if unified_root {
        eprintln!("SKIPPED: this host has cgroup v2 at /sys/fs/cgroup; the refusal is unit-tested");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(["run", "--dry-run"])
        .output()
        .expect("run guard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "guard must exit non-zero: {stderr}");
    assert!(stderr.contains("cgroup v1"), "{stderr}");
    assert!(
        stderr.contains("systemd.unified_cgroup_hierarchy=1"),
        "{stderr}"
    );
    assert!(!stderr.contains("Stack backtrace"), "{stderr}");
}

#[test]
fn cgroup_creation_and_removal_reach_user_space() {
    cgroup_events(false);
}

#[test]
fn cgroup_creation_and_removal_reach_user_space_through_classic_tracepoints() {
    cgroup_events(true);
}

fn cgroup_events(classic: bool) {
    if !is_root() {
        eprintln!("SKIPPED: loading eBPF programs needs root");
        return;
    }
    let (Some(unified), Some(v2_path)) = (unified_mount(), own_cgroup("0::")) else {
        eprintln!("SKIPPED: no cgroup2 mount on this host");
        return;
    };
    let mut probes = Probes::load(settings(
        Duration::from_millis(250),
        Duration::from_secs(1),
        classic,
    ))
    .expect("the programs load and the tracepoints attach");
    attached_as_asked(&probes, classic);
    let mut events = probes.take_cgroup_events().expect("ring buffer");
    let rel = format!(
        "{}/guard-host-events-{}-{classic}",
        v2_path.trim_end_matches('/'),
        std::process::id()
    );
    let dir = unified.join(rel.trim_start_matches('/'));
    fs::create_dir(&dir).expect("create cgroup");
    let id = fs::metadata(&dir).expect("stat").ino();
    fs::remove_dir(&dir).expect("remove cgroup");

    let mut seen = Vec::new();
    while let Some(item) = events.next() {
        let e = guard_common::CgroupEvent::from_bytes(&item).expect("a whole event");
        if e.id == id {
            seen.push((e.kind, e.path().map(str::to_owned)));
        }
    }
    assert_eq!(
        seen,
        [
            (guard_common::CGROUP_CREATED, Some(rel.clone())),
            (guard_common::CGROUP_REMOVED, Some(rel)),
        ]
    );
}

#[test]
fn a_recheck_lets_one_verdict_through_the_interval() {
    let Some((v2, v1, watched)) = test_cgroups("recheck") else {
        return;
    };
    // A 1 µs budget, and an interval no test outlasts.
    let mut probes = Probes::load(settings(
        Duration::from_micros(1),
        Duration::from_secs(600),
        false,
    ))
    .expect("load");
    probes
        .watch(watched, guard_common::Watch::default())
        .expect("watch");
    let mut ring = probes.take_verdicts().expect("ring buffer");
    let count = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>| {
        let mut n = 0;
        while let Some(item) = ring.next() {
            let v = guard_common::Verdict::from_bytes(&item).expect("whole");
            n += u32::from(v.cgroup_id == watched);
        }
        n
    };
    run_in(&[&v2.0, &v1.0], &ANON_HOG);
    assert_eq!(count(&mut ring), 1, "the first stall gives one verdict");
    // Within the interval: nothing more.
    run_in(&[&v2.0, &v1.0], &ANON_HOG);
    assert_eq!(count(&mut ring), 0, "the interval holds");
    // Asked to look again: one verdict (20 ms have passed), and only one.
    probes.recheck(watched).expect("recheck");
    run_in(&[&v2.0, &v1.0], &ANON_HOG);
    run_in(&[&v2.0, &v1.0], &ANON_HOG);
    assert_eq!(count(&mut ring), 1, "one verdict through the interval");
}
