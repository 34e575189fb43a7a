//! The user-space half of the kill path, timed natively: from a verdict in
//! hand to SIGKILL sent (confirm against the cgroup's memory files, list and
//! read the subtree's processes, choose, pidfd_open, start-time check,
//! pidfd_send_signal). Run by `cargo xtask bench`; it kills only the `sleep`
//! processes it starts itself, in a stand-in cgroup directory.

use std::{
    collections::HashMap,
    fs,
    process::{Child, Command, Stdio},
};

use guard::{
    cgroup::Hierarchy,
    clock::monotonic_ns,
    policy::Policy,
    respond::{Outcome, Responder},
};
use guard_common::Verdict;

const ROUNDS: usize = 200;
/// Processes in the stalled cgroup: the victim is chosen among them.
const MEMBERS: usize = 16;

fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let cg = root.path().join("stalled");
    fs::create_dir(&cg)?;
    // One byte over high: the `sleep` members hold the whole overage.
    fs::write(cg.join("memory.current"), ((64u64 << 20) + 1).to_string())?;
    fs::write(cg.join("memory.high"), (64u64 << 20).to_string())?;
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
    for _ in 0..ROUNDS {
        let mut members: Vec<Child> = (0..MEMBERS)
            .map(|_| Command::new("sleep").arg("60").stdin(Stdio::null()).spawn())
            .collect::<Result<_, _>>()?;
        let list: String = members.iter().map(|c| format!("{}\n", c.id())).collect();
        fs::write(cg.join("cgroup.procs"), list)?;
        let verdict = Verdict {
            cgroup_id: id,
            ktime_ns: monotonic_ns(),
            worst_tgid: members[0].id(),
            ..Verdict::default()
        };
        match responder.handle(&verdict) {
            Outcome::Killed(k) => {
                latencies.push(k.report.latency_us);
                // The daemon would watch them exit; here they are reaped
                // below, and the books are told so.
                for v in &k.victims {
                    let end = guard::respond::VictimEnd {
                        key: k.key.clone(),
                        pid: v.pid,
                        exited: true,
                        waited: std::time::Duration::ZERO,
                    };
                    drop(responder.victim_ended(&end));
                }
            }
            other => anyhow::bail!("expected a kill, got {other:?}"),
        }
        for m in &mut members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "kill path (user space, native), {ROUNDS} verdicts, {MEMBERS} processes in the cgroup: \
         median {} us, p90 {} us, p99 {} us, max {} us",
        at(0.5),
        at(0.9),
        at(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}
