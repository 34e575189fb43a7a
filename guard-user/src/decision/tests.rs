use super::*;
use crate::{config::HostMode, events::HOST_NAME};
use std::{
    fs,
    os::unix::process::ExitStatusExt,
    process::{Child, Command, Stdio},
};

/// A stand-in cgroup: the memory files the responder reads, and real
/// children of this test as its members.
struct Fixture {
    root: tempfile::TempDir,
    children: Vec<Child>,
    id: u64,
}

const MIB: u64 = 1 << 20;
/// memory.high of the stalled fixtures, and memory.current past the mild
/// range (3 % over: see `mild`) by less than a sleeping process holds, so
/// any member can end the stall and the first verdict acts.
const HIGH: u64 = MIB;
const STALLED: u64 = HIGH + 32 * 1024;

fn spawn(program: &str) -> Child {
    let child = Command::new(program)
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    past_exec(&child);
    child
}

/// Waits until the child runs its own program (before exec /proc shows a
/// copy of this test), and past the loader's first pages.
fn past_exec(child: &Child) {
    let me = fs::read_link("/proc/self/exe").expect("own exe");
    let start = Instant::now();
    while fs::read_link(format!("/proc/{}/exe", child.id())).is_ok_and(|e| e == me)
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(30));
}

/// `n` sleeping members; `current` and `high` in bytes.
fn fixture(n: usize, current: u64, high: u64) -> Fixture {
    let root = tempfile::tempdir().expect("tempdir");
    let cg = root.path().join("seed");
    fs::create_dir(&cg).expect("mkdir");
    let children: Vec<Child> = (0..n).map(|_| spawn("sleep")).collect();
    let f = Fixture {
        id: Hierarchy::id_of(&cg).expect("id"),
        root,
        children,
    };
    f.members();
    f.memory(current, high);
    fs::write(cg.join("memory.max"), "max\n").expect("w");
    fs::write(cg.join("memory.stat"), "anon 1000\nfile 0\nshmem 0\n").expect("w");
    f
}

impl Fixture {
    fn dir(&self) -> PathBuf {
        self.root.path().join("seed")
    }

    fn memory(&self, current: u64, high: u64) {
        fs::write(self.dir().join("memory.current"), current.to_string()).expect("w");
        fs::write(self.dir().join("memory.high"), high.to_string()).expect("w");
    }

    /// cgroup.procs: the children still running.
    fn members(&self) {
        let list: String = self
            .children
            .iter()
            .map(|c| format!("{}\n", c.id()))
            .collect();
        fs::write(self.dir().join("cgroup.procs"), list).expect("procs");
    }

    fn verdict(&self) -> Verdict {
        Verdict {
            cgroup_id: self.id,
            ktime_ns: monotonic_ns(),
            stall_ns: 300_000_000,
            ..Verdict::default()
        }
    }

    /// Which children died of SIGKILL, by index. A signal sent is
    /// delivered at once, but the exit takes a moment: half a second is
    /// plenty for a sleeping process.
    fn killed(&mut self) -> Vec<usize> {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut ended = vec![None; self.children.len()];
        while Instant::now() < deadline && ended.iter().any(Option::is_none) {
            for (i, c) in self.children.iter_mut().enumerate() {
                if ended[i].is_none()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    ended[i] = Some(status.signal());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (0..ended.len())
            .filter(|&i| ended[i] == Some(Some(libc::SIGKILL)))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn responder(f: &Fixture, extra: &str) -> Responder {
    let policy = Policy {
        config: crate::config::Config::parse(
            &format!("{extra}\n[[scope]]\npaths = [\"/**\"]\n"),
            "<test>",
        )
        .expect("valid"),
    };
    let watched = HashMap::from([(f.id, f.dir())]);
    Responder::new(policy, Hierarchy::new(f.root.path()), "/proc", watched)
}

fn killed(o: Outcome) -> Box<Killed> {
    match o {
        Outcome::Killed(k) => k,
        other => panic!("expected a kill, got {other:?}"),
    }
}

fn ended(k: &Killed, exited: bool) -> Vec<VictimEnd> {
    k.victims
        .iter()
        .map(|v| VictimEnd {
            key: k.key.clone(),
            pid: v.pid,
            exited,
            waited: Duration::ZERO,
        })
        .collect()
}

#[test]
fn a_confirmed_stall_kills_the_member_process() {
    let mut f = fixture(1, STALLED, HIGH);
    let mut r = responder(&f, "");
    let k = killed(r.handle(&f.verdict()));
    assert_eq!(k.report.pid, f.children[0].id());
    assert_eq!(k.report.victims, [f.children[0].id()]);
    assert_eq!(k.report.batch, 1);
    // Whose it was, read after the signal: this test's own uid, named as
    // /etc/passwd names it; the stand-in cgroup is no systemd unit.
    let uid = rustix::process::getuid().as_raw();
    let owner = k.report.owner.clone().expect("the victim's owner");
    assert_eq!(owner.uid, uid);
    assert_eq!(owner, crate::owner::Owner::here(uid, Some("/seed")));
    assert_eq!(owner.unit, None);
    assert_eq!(k.reset, f.id);
    assert_eq!(f.killed(), [0]);
    // The victim has exited: the next verdict may act again, and with
    // nothing left to kill it kills nothing.
    for end in ended(&k, true) {
        assert_eq!(r.victim_ended(&end), None);
    }
    fs::write(f.dir().join("cgroup.procs"), "").expect("w");
    assert!(matches!(r.handle(&f.verdict()), Outcome::Unresolved(_)));
}

#[test]
fn a_mild_overage_is_acted_on_only_once_its_stall_has_lasted() {
    // 1 % over memory.high: a burst the kernel lets through, or the start
    // of a mild stall. Either way the first verdict kills nobody.
    let mut f = fixture(1, HIGH + HIGH / 100, HIGH);
    let mut r = responder(&f, "");
    let ms = 1_000_000;
    let mut v = f.verdict();
    let t0 = v.ktime_ns;
    let mut at = |r: &mut Responder, t: u64| {
        v.ktime_ns = t;
        r.handle(&v)
    };
    assert!(matches!(at(&mut r, t0), Outcome::Held { lasted_ms: 0 }));
    assert!(matches!(
        at(&mut r, t0 + 200 * ms),
        Outcome::Held { lasted_ms: 200 }
    ));
    // The burst ended; the next one, a second later, starts afresh.
    let t1 = t0 + 1_200 * ms;
    assert!(matches!(at(&mut r, t1), Outcome::Held { lasted_ms: 0 }));
    assert!(f.killed().is_empty());
    // This one goes on: verdicts every 200 ms, and past 500 ms it is acted on.
    assert!(matches!(at(&mut r, t1 + 200 * ms), Outcome::Held { .. }));
    assert!(matches!(at(&mut r, t1 + 400 * ms), Outcome::Held { .. }));
    let k = killed(at(&mut r, t1 + 600 * ms));
    assert_eq!(k.report.pid, f.children[0].id());
    assert_eq!(f.killed(), [0]);
}

#[test]
fn a_stall_past_the_mild_range_is_acted_on_at_its_first_verdict() {
    // The seed incident's overage at its kill: 3 MiB over 64 MiB, 4.6 %.
    // Scaled down so a sleeping member covers it.
    let mut f = fixture(1, HIGH + HIGH * 46 / 1000, HIGH);
    let mut r = responder(&f, "");
    killed(r.handle(&f.verdict()));
    assert_eq!(f.killed(), [0]);
    assert_eq!(r.books().2, 0, "nothing held");
}

#[test]
fn dry_run_decides_but_kills_nothing() {
    let mut f = fixture(1, STALLED, HIGH);
    let mut r = responder(&f, "dry_run = true");
    match r.handle(&f.verdict()) {
        Outcome::DryRun(report) => {
            assert_eq!(report.pid, f.children[0].id());
            assert!(report.dry_run);
            assert_eq!(report.memory_high, HIGH);
        }
        o => panic!("{o:?}"),
    }
    assert!(f.killed().is_empty());
}

#[test]
fn a_cgroup_back_under_memory_high_is_not_acted_on() {
    let mut f = fixture(1, 60 * MIB, 64 * MIB);
    let mut r = responder(&f, "");
    assert!(matches!(r.handle(&f.verdict()), Outcome::NotConfirmed));
    assert!(f.killed().is_empty());
}

#[test]
fn verdicts_for_unknown_or_vanished_cgroups_are_dropped() {
    let mut f = fixture(1, STALLED, HIGH);
    let mut r = responder(&f, "");
    let mut v = f.verdict();
    v.cgroup_id += 1;
    assert!(matches!(r.handle(&v), Outcome::UnknownCgroup));
    fs::remove_dir_all(f.dir()).expect("rm");
    assert!(matches!(r.handle(&f.verdict()), Outcome::CgroupGone));
    assert!(f.killed().is_empty());
}

#[test]
fn a_member_that_exits_first_is_not_mistaken_for_a_victim() {
    let mut f = fixture(1, STALLED, HIGH);
    let mut r = responder(&f, "");
    f.children[0].kill().expect("kill");
    f.children[0].wait().expect("reap");
    // Its pid is still listed (a stale read): it must be skipped, and
    // nothing else killed.
    assert!(matches!(r.handle(&f.verdict()), Outcome::Unresolved(_)));
}

#[test]
fn a_name_that_is_not_utf8_does_not_hide_the_hog() {
    // A process may name itself with any bytes (prctl, or its own comm
    // file): this shell does, then waits on its stdin.
    let child = Command::new("sh")
        .args(["-c", "printf 'h\\377\\376g' > /proc/$$/comm && read x"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let start = Instant::now();
    while !fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c == b"h\xff\xfeg\n") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the shell never renamed itself"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut f = fixture(0, STALLED, HIGH);
    f.children.push(child);
    f.members();
    let mut r = responder(&f, "");
    let k = killed(r.handle(&f.verdict()));
    assert_eq!(k.report.pid, pid);
    assert_eq!(k.report.comm, "h\u{FFFD}\u{FFFD}g");
    assert_eq!(f.killed(), [0]);
}

#[test]
fn a_protected_executable_is_spared_but_a_copy_of_it_is_not() {
    let sleep = fs::canonicalize("/usr/bin/sleep").expect("sleep");
    let policy = format!("[protect]\nexe = [\"{}\"]", sleep.display());
    // The real one: protected, so nothing is killed, and the log names it.
    let mut f = fixture(1, STALLED, HIGH);
    let mut r = responder(&f, &policy);
    match r.handle(&f.verdict()) {
        Outcome::Unresolved(Some(u)) => {
            assert_eq!(u.holder_pid, Some(f.children[0].id()));
            assert!(u.reason.contains("protect.exe"), "{}", u.reason);
        }
        other => panic!("expected unresolved, got {other:?}"),
    }
    assert!(f.killed().is_empty());
    // The same program copied elsewhere, whatever its name.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("sleep");
    fs::copy(&sleep, &copy).expect("copy");
    let mut f = fixture(0, STALLED, HIGH);
    f.children.push(spawn(copy.to_str().expect("utf-8 path")));
    f.members();
    let mut r = responder(&f, &policy);
    killed(r.handle(&f.verdict()));
    assert_eq!(f.killed(), [0]);
}

#[test]
fn the_same_path_from_another_mount_namespace_is_not_trusted() {
    // A process in its own mount namespace with a copy mounted over the
    // protected path: its exe reads as that path, but is another file.
    let sleep = fs::canonicalize("/usr/bin/sleep").expect("sleep");
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("fake");
    fs::copy(&sleep, &copy).expect("copy");
    let script = format!(
        "mount --bind {} {} && exec {} 30",
        copy.display(),
        sleep.display(),
        sleep.display()
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        eprintln!("SKIPPED: unshare(1) is not installed");
        return;
    };
    let mut f = fixture(0, STALLED, HIGH);
    f.children.push(child);
    // Until the exec, the process is a shell (or unshare): wait for it.
    let start = Instant::now();
    let pid = f.children[0].id();
    while !fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c == b"sleep\n") {
        if start.elapsed() > Duration::from_secs(5)
            || f.children[0].try_wait().is_ok_and(|s| s.is_some())
        {
            eprintln!("SKIPPED: could not mount in a new namespace (not root?)");
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let link = fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert_eq!(link, sleep, "the exe reads as the protected path");
    f.members();
    let mut r = responder(&f, &format!("[protect]\nexe = [\"{}\"]", sleep.display()));
    killed(r.handle(&f.verdict()));
    assert_eq!(f.killed(), [0]);
}

#[test]
fn a_victim_still_exiting_holds_the_next_decision_until_the_timeout() {
    let mut f = fixture(2, STALLED, HIGH);
    let mut r = responder(&f, "victim_exit_timeout_ms = 300");
    let first = killed(r.handle(&f.verdict()));
    // Its exit is not reported (stuck in uninterruptible sleep, say).
    let held = r.handle(&f.verdict());
    assert!(
        matches!(held, Outcome::VictimStillExiting(pid) if pid == first.report.pid),
        "{held:?}"
    );
    std::thread::sleep(Duration::from_millis(350));
    let second = killed(r.handle(&f.verdict()));
    assert_ne!(second.report.pid, first.report.pid);
    assert_eq!(f.killed().len(), 2);
}

#[test]
fn kills_that_leave_the_cgroup_over_its_limit_stop_at_the_limit() {
    // A policy mistake: memory.current never comes down (say, the
    // memory is tmpfs), so every kill is fruitless.
    let mut f = fixture(5, STALLED, HIGH);
    let mut r = responder(&f, "max_fruitless_kills = 3\nkill_window_ms = 60000");
    let mut limits = Vec::new();
    for _ in 0..3 {
        let k = killed(r.handle(&f.verdict()));
        for end in ended(&k, true) {
            limits.extend(r.victim_ended(&end));
        }
    }
    assert_eq!(limits.len(), 1, "{limits:?}");
    assert_eq!(limits[0].fruitless_kills, 3);
    assert_eq!(limits[0].cgroup, "/seed");
    assert!(matches!(r.handle(&f.verdict()), Outcome::KillLimited));
    assert_eq!(f.killed().len(), 3, "two members live on");
}

#[test]
fn kills_that_spare_the_grower_stop_at_the_limit_though_each_relieves_for_a_moment() {
    // A policy mistake steers guard away from the task the kernel sees
    // stall (here a pid outside the table, as an avoided or protected
    // hog would be): each kill brings the cgroup under its limit until
    // the grower fills it again, and the next verdict names it again.
    let mut f = fixture(5, STALLED, HIGH);
    let mut r = responder(&f, "max_fruitless_kills = 3");
    let mut v = f.verdict();
    v.worst_tgid = 4_000_000;
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        f.memory(STALLED, HIGH);
        match r.handle(&v) {
            Outcome::Killed(k) => {
                f.memory(60 * MIB, 64 * MIB);
                for end in ended(&k, true) {
                    assert_eq!(r.victim_ended(&end), None, "judged by the next verdict");
                }
                outcomes.push("killed".to_owned());
            }
            Outcome::LimitReached(l) => {
                assert_eq!(l.fruitless_kills, 3);
                outcomes.push("limit".to_owned());
            }
            other => outcomes.push(format!("{other:?}")),
        }
    }
    assert_eq!(outcomes, ["killed", "killed", "killed", "limit"]);
    assert!(matches!(r.handle(&v), Outcome::KillLimited));
    assert_eq!(f.killed().len(), 3, "two members live on");
}

#[test]
fn kills_that_end_the_stall_never_trip_the_limit() {
    let mut f = fixture(5, STALLED, HIGH);
    let mut r = responder(&f, "max_fruitless_kills = 2");
    for _ in 0..5 {
        f.memory(STALLED, HIGH);
        let k = killed(r.handle(&f.verdict()));
        // Back under memory.high once the victim is gone.
        f.memory(10 * MIB, 64 * MIB);
        for end in ended(&k, true) {
            assert_eq!(r.victim_ended(&end), None);
        }
    }
    assert_eq!(f.killed().len(), 5);
    assert_eq!(
        r.books().0,
        1,
        "one entry for the cgroup (its last kill, until a verdict judges it), not one per kill"
    );
}

#[test]
fn a_removed_cgroup_takes_its_books_with_it() {
    let mut f = fixture(1, STALLED, HIGH);
    let mut r = responder(&f, "");
    let k = killed(r.handle(&f.verdict()));
    assert_eq!(r.books().0, 1);
    assert!(r.forget(f.id));
    assert_eq!(r.books(), (0, 0, 0));
    // Its victim's exit, reported later, is simply ignored.
    for end in ended(&k, true) {
        assert_eq!(r.victim_ended(&end), None);
    }
    assert_eq!(f.killed(), [0]);
}

#[test]
fn a_grower_holding_most_of_the_memory_is_decided_from_its_own_files() {
    // Twenty members; the kernel saw the last one stall, and it holds
    // more than half of what the cgroup is charged.
    let f = fixture(20, 0, 0);
    let worst = f.children[19].id();
    let anon = crate::procfs::ProcFs::new("/proc")
        .statm(worst)
        .expect("statm")
        .anon()
        * rustix::param::page_size() as u64;
    f.memory(anon + anon / 16, anon);
    let mut r = responder(&f, "dry_run = true");
    let mut v = f.verdict();
    v.worst_tgid = worst;
    let before = r.proc_reads();
    match r.handle(&v) {
        Outcome::DryRun(report) => assert_eq!(report.victims, [worst]),
        other => panic!("{other:?}"),
    }
    let read = r.proc_reads() - before;
    assert!(read < 10, "{read} files read for one process's decision");
    // Not the grower (the kernel named no task): every member is read.
    let before = r.proc_reads();
    f.memory(anon + anon / 16 + 1, anon);
    assert!(matches!(r.handle(&f.verdict()), Outcome::DryRun(_)));
    assert!(r.proc_reads() - before >= 20);
}

#[test]
fn a_protected_grower_holding_most_of_the_memory_is_named_not_killed() {
    let sleep = fs::canonicalize("/usr/bin/sleep").expect("sleep");
    let mut f = fixture(1, 0, 0);
    let worst = f.children[0].id();
    let anon = crate::procfs::ProcFs::new("/proc")
        .statm(worst)
        .expect("statm")
        .anon()
        * rustix::param::page_size() as u64;
    f.memory(anon + anon / 16, anon);
    let mut r = responder(&f, &format!("[protect]\nexe = [\"{}\"]", sleep.display()));
    let mut v = f.verdict();
    v.worst_tgid = worst;
    match r.handle(&v) {
        Outcome::Unresolved(Some(u)) => assert_eq!(u.holder_pid, Some(worst)),
        other => panic!("{other:?}"),
    }
    assert!(f.killed().is_empty());
}

/// A /proc with the given meminfo and, as its only processes, a real
/// child of this test (a symlink to its /proc entry) and this test.
fn host_fixture(available_kib: u64) -> (tempfile::TempDir, Child) {
    let root = tempfile::tempdir().expect("tempdir");
    fs::write(
        root.path().join("meminfo"),
        format!("MemTotal: 1048576 kB\nMemFree: 1000 kB\nMemAvailable: {available_kib} kB\n"),
    )
    .expect("meminfo");
    let child = spawn("sleep");
    for pid in [child.id(), std::process::id()] {
        std::os::unix::fs::symlink(format!("/proc/{pid}"), root.path().join(pid.to_string()))
            .expect("symlink");
    }
    (root, child)
}

fn host_responder(root: &Path, mode: HostMode, protect_sleep: bool) -> Responder {
    let text = format!(
        "[host]\nmode = \"{mode}\"\nmin_available_percent = 5\n{}[[scope]]\npaths = [\"/**\"]\n",
        if protect_sleep {
            "[protect]\ncomm = [\"^sleep$\"]\n"
        } else {
            ""
        }
    );
    let policy = Policy {
        config: crate::config::Config::parse(&text, "<test>").expect("valid"),
    };
    Responder::new(policy, Hierarchy::new(root), root, HashMap::new())
}

/// The kernel saw `worst` stall most (the allocating task). This test
/// process, protected as the guard, holds more than a `sleep`: without
/// knowing who grows, the largest holder being protected would leave
/// the stall unresolved.
fn host_verdict(worst: &Child) -> Verdict {
    Verdict {
        cgroup_id: guard_common::HOST_ID,
        ktime_ns: monotonic_ns(),
        stall_ns: 300_000_000,
        worst_pid: worst.id(),
        worst_tgid: worst.id(),
        ..Verdict::default()
    }
}

fn alive(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

#[test]
fn a_host_short_of_memory_loses_its_largest_unprotected_process() {
    // 1 GiB total; 5% is about 52428 KiB, so 52428 KiB available is a
    // shortfall a sleeping child holds a share of. This process is
    // protected as the guard itself, so the child is the one to go.
    let (root, mut child) = host_fixture(52_428);
    let mut r = host_responder(root.path(), HostMode::Kill, false);
    let k = killed(r.handle(&host_verdict(&child)));
    assert_eq!(k.report.pid, child.id());
    assert_eq!(k.report.cgroup, HOST_NAME);
    assert!(!k.report.dry_run);
    assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
    // Judged against MemAvailable once it has exited: still short.
    let end = &ended(&k, true)[0];
    assert_eq!(r.victim_ended(end), None);
}

#[test]
fn the_host_scope_confirms_watches_and_protects() {
    // Plenty available: not confirmed, nothing killed.
    let (root, mut child) = host_fixture(500_000);
    let mut r = host_responder(root.path(), HostMode::Kill, false);
    assert!(matches!(
        r.handle(&host_verdict(&child)),
        Outcome::NotConfirmed
    ));
    assert!(alive(&mut child));
    let _ = child.kill();

    // Short, but only watched: would kill, kills nothing.
    let (root, mut child) = host_fixture(52_428);
    let mut r = host_responder(root.path(), HostMode::Watch, false);
    match r.handle(&host_verdict(&child)) {
        Outcome::DryRun(report) => {
            assert_eq!(report.pid, child.id());
            assert!(report.dry_run);
        }
        o => panic!("{o:?}"),
    }
    assert!(alive(&mut child));
    let _ = child.kill();

    // Short, and the only candidate is protected: unresolved.
    let (root, mut child) = host_fixture(52_428);
    let mut r = host_responder(root.path(), HostMode::Kill, true);
    assert!(matches!(
        r.handle(&host_verdict(&child)),
        Outcome::Unresolved(Some(_))
    ));
    assert!(alive(&mut child));
    let _ = child.kill();
}

#[test]
fn explain_names_scope_protection_place_and_what_a_verdict_would_do() {
    let mut f = fixture(2, STALLED, HIGH);
    let mut r = responder(&f, "");
    let pid = f.children[0].id();
    let e = r.explain(Some(pid), Some(&f.dir())).expect("explained");
    assert_eq!(e.pid, Some(pid));
    assert_eq!(e.comm.as_deref(), Some("sleep"));
    assert_eq!(e.cgroup, "/seed");
    let limited = e.limited.clone().expect("limited");
    assert_eq!(
        (limited.cgroup.as_str(), limited.memory_high),
        ("/seed", HIGH)
    );
    assert_eq!(
        e.scope.as_ref().map(|s| s.paths.clone()),
        Some(vec!["/**".to_owned()])
    );
    assert_eq!(e.protected, None);
    assert!(e.footprint_bytes.is_some_and(|b| b > 0));
    assert!(matches!(e.place, Some((1 | 2, 2))), "{:?}", e.place);
    assert!(
        e.verdict_now
            .contains("over memory.high now; a verdict would kill sleep (pid"),
        "{}",
        e.verdict_now
    );
    let text = e.to_string();
    assert!(
        text.contains("may be killed") && text.contains("of 2 in the victim order"),
        "{text}"
    );
    // Nothing was killed to find that out.
    assert!(f.killed().is_empty());

    // Under memory.high: not confirmed now, and what it would do just over.
    f.memory(HIGH / 2, HIGH);
    let e = r.explain(Some(pid), Some(&f.dir())).expect("explained");
    assert!(
        e.verdict_now.contains("would not be confirmed"),
        "{}",
        e.verdict_now
    );
}

#[test]
fn explain_says_when_a_process_is_protected_or_nothing_applies() {
    let sleep = fs::canonicalize("/usr/bin/sleep").expect("sleep");
    let f = fixture(1, STALLED, HIGH);
    let pid = f.children[0].id();
    let mut r = responder(&f, &format!("[protect]\nexe = [\"{}\"]", sleep.display()));
    let e = r.explain(Some(pid), Some(&f.dir())).expect("explained");
    assert!(
        e.protected
            .as_deref()
            .is_some_and(|w| w.contains("protect.exe")),
        "{e:?}"
    );
    assert!(
        e.verdict_now.contains("would kill nothing"),
        "{}",
        e.verdict_now
    );
    assert!(e.to_string().contains("may not be killed"));

    // A cgroup without memory.high anywhere above: nothing can stall there.
    f.memory(STALLED, u64::MAX);
    fs::write(f.dir().join("memory.high"), "max\n").expect("w");
    let e = r.explain(None, Some(&f.dir())).expect("explained");
    assert_eq!(e.limited, None);
    assert!(
        e.verdict_now.starts_with("none: no cgroup"),
        "{}",
        e.verdict_now
    );

    // In no scope of the policy.
    f.memory(STALLED, HIGH);
    let policy = Policy {
        config: crate::config::Config::parse("[[scope]]\npaths = [\"/other/**\"]\n", "<test>")
            .expect("valid"),
    };
    let mut r = Responder::new(
        policy,
        Hierarchy::new(f.root.path()),
        "/proc",
        HashMap::new(),
    );
    let e = r.explain(None, Some(&f.dir())).expect("explained");
    assert_eq!(e.scope, None);
    assert!(e.verdict_now.contains("in no scope"), "{}", e.verdict_now);
    // Neither a process nor a cgroup.
    assert!(r.explain(None, Some(&f.root.path().join("nope"))).is_err());
    assert!(r.explain(Some(u32::MAX), None).is_err());
}

/// The info lines written while `f` runs, as text.
fn info_lines(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().expect("lock").clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn a_mild_stall_is_said_once_per_episode_not_per_recheck() {
    let f = fixture(1, HIGH + HIGH / 100, HIGH);
    let mut r = responder(&f, "");
    let mut v = f.verdict();
    let t0 = v.ktime_ns;
    let log = info_lines(|| {
        // Rechecks every 20 ms for 400 ms: one episode, still held.
        for i in 0..20 {
            v.ktime_ns = t0 + i * 20_000_000;
            assert!(matches!(r.handle(&v), Outcome::Held { .. }));
        }
        // A second episode, a second later.
        v.ktime_ns = t0 + 2_000_000_000;
        assert!(matches!(r.handle(&v), Outcome::Held { lasted_ms: 0 }));
    });
    let said = log.matches("stall at a mild overage").count();
    assert_eq!(said, 2, "{log}");
}
