//! `guard status` on fixture trees: the warnings appear exactly when they
//! should, and the JSON carries what scripts read.

use std::{
    fs,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::*;
use crate::config::Config;

const MIB: u64 = 1 << 20;

fn policy(text: &str) -> Policy {
    Policy {
        config: Config::parse(text, "<test>").expect("valid"),
    }
}

/// A cgroup2 tree and a /proc with `swaps` (with or without swap), the
/// real /proc's processes seen through links so the judge can read them.
struct Fixture {
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Fixture {
    fn new(swap: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("cg")).expect("cg");
        fs::create_dir_all(dir.path().join("proc")).expect("proc");
        let swaps = if swap {
            "Filename Type Size Used Priority\n/swapfile file 1048572 0 -2\n"
        } else {
            "Filename Type Size Used Priority\n"
        };
        fs::write(dir.path().join("proc/swaps"), swaps).expect("swaps");
        Self {
            dir,
            children: Vec::new(),
        }
    }

    /// A cgroup with these limits (None: "max"; swap None: no file).
    fn cgroup(&self, path: &str, high: u64, max: Option<u64>, swap: Option<u64>) {
        let cg = self.dir.path().join("cg").join(path);
        fs::create_dir_all(&cg).expect("mkdir");
        let lim = |v: Option<u64>| v.map_or("max".to_owned(), |b| b.to_string());
        fs::write(cg.join("memory.current"), (10 * MIB).to_string()).expect("w");
        fs::write(cg.join("memory.high"), high.to_string()).expect("w");
        fs::write(cg.join("memory.max"), lim(max)).expect("w");
        if let Some(s) = swap {
            fs::write(cg.join("memory.swap.max"), s.to_string()).expect("w");
        }
        fs::write(
            cg.join("memory.pressure"),
            "some avg10=1.50 avg60=0 avg300=0 total=1\nfull avg10=0.50 avg60=0 avg300=0 total=1\n",
        )
        .expect("w");
        fs::write(cg.join("cgroup.procs"), "").expect("w");
    }

    /// A sleeping child of this test as the only member of `path`, seen in
    /// the fixture's /proc.
    fn member(&mut self, path: &str) {
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let me = fs::read_link("/proc/self/exe").expect("own exe");
        let start = Instant::now();
        while fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == me)
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(30));
        std::os::unix::fs::symlink(
            format!("/proc/{pid}"),
            self.dir.path().join("proc").join(pid.to_string()),
        )
        .expect("link");
        let cg = self.dir.path().join("cg").join(path);
        fs::write(cg.join("cgroup.procs"), format!("{pid}\n")).expect("procs");
        self.children.push(child);
    }

    fn machine(&self) -> Machine {
        Machine {
            cgroups: Ok(self.dir.path().join("cg")),
            proc_root: self.dir.path().join("proc"),
        }
    }

    fn status(&self, policy: Policy) -> Status {
        gather(
            &self.machine(),
            policy,
            Answer::Absent("no guard daemon runs (test)".into()),
            &self.dir.path().join("log"),
        )
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

fn kinds(s: &Status) -> Vec<(&'static str, Option<String>)> {
    s.warnings
        .iter()
        .map(|w| (w.kind, w.cgroup.clone()))
        .collect()
}

const SCOPED: &str =
    "[host]\nmode = \"kill\"\n[[scope]]\npaths = [\"/work.slice/**\", \"/work.slice\"]\n";

#[test]
fn a_band_without_swap_in_no_scope_is_warned_and_only_that() {
    let f = Fixture::new(true);
    // In no scope, high below max, swap.max 0: the seed incident unwatched.
    f.cgroup("other.slice", 64 * MIB, Some(128 * MIB), Some(0));
    // In no scope, but high equals max: no band to stall in.
    f.cgroup("flat.slice", 64 * MIB, Some(64 * MIB), Some(0));
    // In no scope, but swap allowed on a machine with swap.
    f.cgroup("swapping.slice", 64 * MIB, None, None);
    // The same band, but in a scope: watched.
    f.cgroup("work.slice", 64 * MIB, Some(128 * MIB), Some(0));
    let s = f.status(policy(SCOPED));
    assert_eq!(
        kinds(&s),
        vec![("unwatched_band", Some("/other.slice".to_owned()))]
    );
    assert!(s.warnings[0].message.contains("[[scope]]"), "{s:?}");
    let work = s
        .cgroups
        .iter()
        .find(|c| c.cgroup == "/work.slice")
        .expect("listed");
    assert_eq!(work.scope.as_deref(), Some("/work.slice/**, /work.slice"));
    assert_eq!((work.budget_ms, work.window_ms), (Some(250), Some(1000)));
    assert_eq!(work.swap_max, Some(0));
    let swapping = s
        .cgroups
        .iter()
        .find(|c| c.cgroup == "/swapping.slice")
        .expect("listed");
    assert!(swapping.swap_max_absent && swapping.swap_max.is_none());
    // Every cgroup with a memory.high is listed, in path order.
    let names: Vec<&str> = s.cgroups.iter().map(|c| c.cgroup.as_str()).collect();
    assert_eq!(
        names,
        [
            "/flat.slice",
            "/other.slice",
            "/swapping.slice",
            "/work.slice"
        ]
    );
    // With the default policy ("/**") every one is in a scope.
    let s = f.status(policy(
        "[host]\nmode = \"kill\"\n[[scope]]\npaths = [\"/**\"]\n",
    ));
    assert!(kinds(&s).is_empty(), "{:?}", s.warnings);
}

#[test]
fn without_swap_on_the_machine_a_missing_swap_max_is_a_band_too() {
    let f = Fixture::new(false);
    f.cgroup("other.slice", 64 * MIB, None, None);
    let s = f.status(policy(SCOPED));
    assert_eq!(
        kinds(&s),
        vec![("unwatched_band", Some("/other.slice".to_owned()))]
    );
}

#[test]
fn host_watch_without_swap_is_warned_and_not_with_swap_or_kill() {
    let watch = "[host]\nmode = \"watch\"\n[[scope]]\npaths = [\"/**\"]\n";
    let s = Fixture::new(false).status(policy(watch));
    assert_eq!(kinds(&s), vec![("host_without_swap", None)]);
    assert!(s.warnings[0].message.contains("mode = \"kill\""));
    assert!(kinds(&Fixture::new(true).status(policy(watch))).is_empty());
    let off = "[host]\nmode = \"off\"\n[[scope]]\npaths = [\"/**\"]\n";
    assert!(kinds(&Fixture::new(false).status(policy(off))).is_empty());
    assert!(kinds(&Fixture::new(false).status(policy(SCOPED))).is_empty());
}

#[test]
fn a_watched_cgroup_whose_every_process_is_protected_is_warned() {
    let mut f = Fixture::new(true);
    f.cgroup("work.slice/a.scope", 64 * MIB, None, None);
    f.cgroup("work.slice/b.scope", 64 * MIB, None, None);
    f.cgroup("work.slice/empty.scope", 64 * MIB, None, None);
    f.member("work.slice/a.scope");
    f.member("work.slice/b.scope");
    let protect_a = format!("{SCOPED}[protect]\ncgroups = [\"/work.slice/a.scope\"]\n");
    let s = f.status(policy(&protect_a));
    assert_eq!(
        kinds(&s),
        vec![("all_protected", Some("/work.slice/a.scope".to_owned()))]
    );
    // No rule protects them: no warning.
    assert!(kinds(&f.status(policy(SCOPED))).is_empty());
}

#[test]
fn the_json_has_the_keys_scripts_read() {
    let f = Fixture::new(true);
    f.cgroup("work.slice", 64 * MIB, Some(128 * MIB), Some(0));
    let s = f.status(policy(SCOPED));
    let v = serde_json::to_value(&s).expect("json");
    for key in [
        "guard_version",
        "kernel",
        "daemon",
        "hooks",
        "cgroups",
        "events",
        "peers",
        "warnings",
    ] {
        assert!(v.get(key).is_some(), "{key}: {v}");
    }
    assert_eq!(v["guard_version"], env!("CARGO_PKG_VERSION"));
    assert!(v["daemon"].is_null());
    assert_eq!(v["hooks"], "none live: no guard daemon runs");
    let c = &v["cgroups"][0];
    assert_eq!(c["cgroup"], "/work.slice");
    assert_eq!(c["memory_high"], 64 * MIB);
    assert_eq!(c["memory_max"], 128 * MIB);
    assert_eq!(c["swap_max"], 0);
    assert_eq!(c["memory_current"], 10 * MIB);
    assert_eq!(c["psi_some_avg10"], 1.5);
    assert_eq!(c["psi_full_avg10"], 0.5);
    assert!(c["stall_window_ns"].is_null());
    assert_eq!(c["budget_ms"], 250);
    assert_eq!(c["window_ms"], 1000);
    assert_eq!(v["events"]["readable"], false);
    assert_eq!(v["events"]["kills"], 0);
    assert!(
        v["events"]["incidents"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    // A daemon's answer fills the daemon and the window's stall.
    let running = gather(
        &f.machine(),
        policy(SCOPED),
        Answer::Running {
            info: DaemonInfo {
                pid: 77,
                source: "daemon".into(),
                dry_run: false,
                throttle_hooked: true,
                tracepoints: "btf".into(),
                policy: "/etc/guard/guard.toml".into(),
                socket: "/run/guard/events.sock".into(),
                guard_version: env!("CARGO_PKG_VERSION").into(),
            },
            stall_window_ns: HashMap::from([("/work.slice".to_owned(), 5_000_000)]),
        },
        &f.dir.path().join("log"),
    );
    let v = serde_json::to_value(&running).expect("json");
    assert_eq!(v["daemon"]["pid"], 77);
    assert_eq!(v["daemon"]["tracepoints"], "btf");
    assert_eq!(v["daemon"]["socket"], "/run/guard/events.sock");
    assert_eq!(v["cgroups"][0]["stall_window_ns"], 5_000_000);
    assert_eq!(v["daemon"]["guard_version"], env!("CARGO_PKG_VERSION"));
    let kinds = |v: &serde_json::Value| -> Vec<String> {
        v["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| w["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert!(!kinds(&v).contains(&"daemon_version".to_owned()), "{v}");
    assert!(
        v["hooks"].as_str().is_some_and(|h| h.starts_with("fentry")),
        "{v}"
    );
    // A daemon left running on the old binary after an upgrade is said.
    let old = gather(
        &f.machine(),
        policy(SCOPED),
        Answer::Running {
            info: DaemonInfo {
                guard_version: "0.0.9".into(),
                ..running.daemon.clone().expect("a daemon")
            },
            stall_window_ns: HashMap::new(),
        },
        &f.dir.path().join("log"),
    );
    let v = serde_json::to_value(&old).expect("json");
    assert!(kinds(&v).contains(&"daemon_version".to_owned()), "{v}");
}

#[test]
fn a_machine_without_cgroup_v2_memory_says_why_and_the_text_escapes_names() {
    let f = Fixture::new(true);
    let machine = Machine {
        cgroups: Err("memory is managed by cgroup v1 on this host".into()),
        proc_root: f.dir.path().join("proc"),
    };
    let s = gather(
        &machine,
        policy(SCOPED),
        Answer::Absent("no guard daemon runs".into()),
        f.dir.path(),
    );
    assert!(s.cgroups.is_empty());
    let mut text = Vec::new();
    render::write(&mut text, &s).expect("text");
    let text = String::from_utf8(text).expect("utf-8");
    assert!(text.contains("cgroup v1"), "{text}");
    assert!(text.contains("no guard daemon runs"), "{text}");
    assert!(text.contains("\nevents ("), "{text}");
    f.cgroup("evil\u{1b}[2J.slice", 64 * MIB, Some(128 * MIB), Some(0));
    let s = f.status(policy(SCOPED));
    let mut text = Vec::new();
    render::write(&mut text, &s).expect("text");
    let text = String::from_utf8(text).expect("utf-8");
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("evil\\x1b[2J.slice"), "{text}");
}
