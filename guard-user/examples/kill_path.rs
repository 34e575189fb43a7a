//! The user-space half of the kill path, timed natively: from a verdict in
//! hand to SIGKILL sent (confirm against the cgroup's memory files, read
//! the subtree's processes, decide, pidfd_open, start-time check,
//! pidfd_send_signal). Run by `cargo xtask bench`; it kills only the
//! processes it starts itself, in a stand-in cgroup directory.
//!
//! Two cases of 16 processes each: a hog holding 64 MiB beside 15 small
//! ones (the stall as it happens: the task the kernel saw stall holds most
//! of the memory), and 16 equal small ones, none of which stands out (every
//! process must be read).

use std::{
    collections::HashMap,
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use guard::{
    cgroup::Hierarchy,
    clock::monotonic_ns,
    decision::{Outcome, Responder, VictimEnd},
    policy::Policy,
};
use guard_common::Verdict;

const ROUNDS: usize = 200;
/// Processes in the stalled cgroup: the victim is chosen among them.
const MEMBERS: usize = 16;
const HOG_MIB: usize = 64;
const MIB: u64 = 1 << 20;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hog") {
        hog();
    }
    let me = std::env::current_exe()?;
    // The hog's 64 MiB against memory.high 64 MiB with 2 MiB over; the equal
    // ones one byte over, so that any of them covers it.
    run(&me, true, (HOG_MIB as u64 + 2) * MIB)?;
    run(&me, false, HOG_MIB as u64 * MIB + 1)?;
    Ok(())
}

/// Takes HOG_MIB of anonymous memory, says so, and sleeps until killed.
fn hog() -> ! {
    let mut block = vec![0u8; HOG_MIB << 20];
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(60));
        std::hint::black_box(&block);
    }
}

fn spawn(program: &Path, args: &[&str]) -> anyhow::Result<Child> {
    Ok(Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?)
}

fn run(me: &Path, with_hog: bool, current: u64) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let cg = root.path().join("stalled");
    fs::create_dir(&cg)?;
    let over = current.to_string();
    fs::write(cg.join("memory.current"), &over)?;
    fs::write(cg.join("memory.high"), (HOG_MIB as u64 * MIB).to_string())?;
    fs::write(cg.join("memory.max"), "max\n")?;
    fs::write(cg.join("memory.stat"), "anon 1000\nfile 0\nshmem 0\n")?;
    let id = Hierarchy::id_of(&cg)?;
    let mut responder = Responder::new(
        Policy::default(),
        Hierarchy::new(root.path()),
        "/proc",
        HashMap::from([(id, cg.clone())]),
    );
    responder.warm_up();

    let mut latencies = Vec::with_capacity(ROUNDS);
    let sleep = Path::new("/bin/sleep");
    for _ in 0..ROUNDS {
        let mut members: Vec<Child> = Vec::with_capacity(MEMBERS);
        if with_hog {
            let mut hog = spawn(me, &["hog"])?;
            // Wait until it holds its memory.
            let mut line = String::new();
            if let Some(out) = hog.stdout.as_mut() {
                use std::io::BufRead as _;
                std::io::BufReader::new(out).read_line(&mut line)?;
            }
            members.push(hog);
        }
        while members.len() < MEMBERS {
            members.push(spawn(sleep, &["60"])?);
        }
        let list: String = members.iter().map(|c| format!("{}\n", c.id())).collect();
        fs::write(cg.join("cgroup.procs"), list)?;
        // The processes run their own programs, not a copy of this one.
        std::thread::sleep(Duration::from_millis(20));
        let verdict = Verdict {
            cgroup_id: id,
            ktime_ns: monotonic_ns(),
            worst_tgid: members[0].id(),
            worst_pid: members[0].id(),
            ..Verdict::default()
        };
        match responder.handle(&verdict) {
            Outcome::Killed(k) => {
                latencies.push(k.report.latency_us);
                if with_hog && k.report.pid != members[0].id() {
                    anyhow::bail!("killed {} instead of the hog", k.report.comm);
                }
                // The daemon would watch them exit; here they are reaped
                // below, and the books are told so: each kill ended its
                // stall (memory back under high), so none is fruitless.
                fs::write(cg.join("memory.current"), "0")?;
                for v in &k.victims {
                    let end = VictimEnd {
                        key: k.key.clone(),
                        pid: v.pid,
                        exited: true,
                        waited: Duration::ZERO,
                    };
                    drop(responder.victim_ended(&end));
                }
            }
            other => anyhow::bail!("expected a kill, got {other:?}"),
        }
        fs::write(cg.join("memory.current"), &over)?;
        for m in &mut members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "kill path (user space, native), {ROUNDS} verdicts, {MEMBERS} processes in the cgroup, {}: \
         median {} us, p90 {} us, p99 {} us, max {} us",
        if with_hog {
            "one of them the hog (64 MiB)"
        } else {
            "all alike (every one read)"
        },
        at(0.5),
        at(0.9),
        at(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}
