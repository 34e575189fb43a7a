//! `many-cgroups`: a machine with more limited cgroups than the kernel's
//! watch list used to hold (4096, when more made start-up fail). 4,900
//! cgroups with memory.high exist before the guard starts and 100 more come
//! after; the seed incident happens in the last one. First with the list
//! sized from the machine (everything listed), then with the policy's
//! max_watched_cgroups = 1000: the guard must start, say how many it could
//! not list, and still kill the hog, through the task's own cgroup.

use std::os::unix::process::ExitStatusExt as _;

use super::*;

pub(super) const SCENARIOS: &[Scenario] = &[Scenario {
    memory_mib: 1536,
    timeout_secs: 420,
    ..Scenario::new("many-cgroups", run, summary)
}];

fn summary(r: &Value) -> String {
    format!(
        "{} limited cgroups ({} before start), made in {} ms; sized from the machine: list of {}, \
         {} listed at start, hog killed {}; max_watched_cgroups 1000: {} listed, {} not, hog \
         killed {}",
        r["cgroups"],
        r["before_start"],
        r["create_ms"],
        r["sized_capacity"],
        r["sized_listed"],
        r["sized_killed"],
        r["capped_listed"],
        r["capped_unlisted"],
        r["capped_killed"],
    )
}

const PARENT: &str = "/many.slice";
const BEFORE: usize = 4_900;
const AFTER: usize = 100;
const POLICY: &str = "/etc/guard/many.toml";

fn make(i: usize) -> Result<Cgroup, String> {
    let cg = Cgroup::create(&format!("{PARENT}/c{i}"))?;
    cg.limit("64M", "128M")?;
    Ok(cg)
}

fn run(r: &mut Report) -> Result<(), String> {
    let started = Instant::now();
    Cgroup::create(PARENT)?;
    for i in 0..BEFORE {
        make(i)?;
    }
    r.set("cgroups", BEFORE + AFTER);
    r.set("before_start", BEFORE);
    r.set("create_ms", started.elapsed().as_millis() as u64);

    let (capacity, listed, _, killed) = round(r, &[], BEFORE)?;
    r.set("sized_capacity", capacity);
    r.set("sized_listed", listed);
    r.set("sized_killed", killed);
    r.check(
        capacity >= (BEFORE + AFTER) as u64,
        format!("a watch list of {capacity} for {} limited cgroups", BEFORE + AFTER),
    );
    r.check(
        listed >= BEFORE as u64,
        format!("{listed} cgroups listed at start, not all {BEFORE}"),
    );

    write_policy(POLICY, "max_watched_cgroups = 1000\n[[scope]]\npaths = [\"/**\"]\n")?;
    let (_, listed, unlisted, killed) = round(r, &["--config", POLICY], BEFORE + AFTER)?;
    r.set("capped_listed", listed);
    r.set("capped_unlisted", unlisted);
    r.set("capped_killed", killed);
    r.check(
        listed < 1000 && unlisted >= (BEFORE + AFTER) as u64 - 1000,
        format!("with max_watched_cgroups 1000: {listed} listed, {unlisted} said to be unlisted"),
    );
    Ok(())
}

/// One guard with `args`: the cgroups from `existing` on are made after it
/// started, the hog runs in the last; (list capacity, listed at start,
/// unlisted as the warning says, whether the hog died by SIGKILL).
fn round(r: &mut Report, args: &[&str], existing: usize) -> Result<(u64, u64, u64, bool), String> {
    let mut guard = Guard::start(args, &[])?;
    let mut last = None;
    for i in existing..BEFORE + AFTER {
        last = Some(make(i)?);
    }
    let cg = match last {
        Some(cg) => cg,
        None => Cgroup::create(&format!("{PARENT}/c{}", BEFORE + AFTER - 1))?,
    };
    let mut hog = cg.spawn(&["hog", "100"], Stdio::null())?;
    let killed = match wait_exit(&mut hog, Duration::from_secs(30)) {
        Some((status, _)) => status.signal() == Some(libc::SIGKILL),
        None => {
            end(&mut hog);
            false
        }
    };
    let lines = guard.lines();
    guard.stop();
    r.check(
        killed,
        format!("guard {args:?}: the hog in the last cgroup was not killed within 30 s"),
    );
    let field = |m: &str, key: &str| {
        with_message(&lines, m)
            .first()
            .and_then(|l| number(&l[key]))
            .unwrap_or(0)
    };
    let capacity = field("the kernel's watch list holds this many cgroups", "capacity");
    let listed = field(
        "watching every cgroup; those with a finite memory.high now aggregate their subtree",
        "with_memory_high",
    );
    let unlisted = lines
        .iter()
        .find(|l| message(l).starts_with("the kernel's watch list is full"))
        .and_then(|l| number(&l["unlisted"]))
        .unwrap_or(0);
    Ok((capacity, listed, unlisted, killed))
}
