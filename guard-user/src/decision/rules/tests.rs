use super::*;

const MIB: u64 = 1 << 20;

/// A table row: pid, name, MiB; its unit is its pid.
fn proc(pid: u32, comm: &str, mib: u64) -> Candidate {
    Candidate {
        pid,
        comm: Comm::from(comm),
        footprint: Some(mib * MIB),
        unit: pid,
        rank: 0,
    }
}

fn stall(overage_mib: u64, worst: u32) -> Stall {
    Stall {
        overage: overage_mib * MIB,
        worst_tgid: worst,
        min_share_percent: 25,
        unowned_shmem: 0,
    }
}

/// Protected: the names in `protected` (as a rule would say).
fn judge<'a>(cands: &'a [Candidate], protected: &'a [&str]) -> impl FnMut(usize) -> Judgement + 'a {
    move |i| {
        let name = cands[i].comm.to_string();
        let why = protected
            .contains(&name.as_str())
            .then(|| Protection::Rule(format!("{name} is protected")));
        (why, cands[i].comm)
    }
}

fn run(s: &Stall, cands: &[Candidate], protected: &[&str]) -> Decision {
    decide(s, cands, false, judge(cands, protected))
}

fn victims(d: &Decision, cands: &[Candidate]) -> Vec<u32> {
    match d {
        Decision::Kill(picks) => picks
            .iter()
            .flat_map(|p| p.members.iter().map(|&i| cands[i].pid))
            .collect(),
        Decision::Unresolved(u) => panic!("expected victims, got: {u}"),
    }
}

fn unresolved(d: Decision) -> Unresolved {
    match d {
        Decision::Unresolved(u) => u,
        Decision::Kill(p) => panic!("expected nobody killed, got {p:?}"),
    }
}

#[test]
fn the_largest_footprint_dies_not_the_one_that_stalls_most() {
    // The bystander (pid 20) is the task the kernel saw stall longest.
    let t = [proc(10, "hog", 70), proc(20, "server", 3)];
    assert_eq!(victims(&run(&stall(10, 20), &t, &[]), &t), [10]);
}

#[test]
fn kernel_stall_time_breaks_footprint_ties() {
    let t = [proc(10, "a", 40), proc(20, "b", 40), proc(30, "c", 40)];
    assert_eq!(victims(&run(&stall(10, 20), &t, &[]), &t), [20]);
    assert_eq!(victims(&run(&stall(10, 30), &t, &[]), &t), [30]);
}

#[test]
fn a_protected_hog_beside_innocents_holding_real_memory_kills_nobody() {
    // Issue 10's first finding: a 6 GiB protected hog stuck over
    // memory.high with a 64 MiB overage, beside an editor, cargo,
    // rust-analyzer and a browser that each hold more than a quarter of
    // the overage. Today they died one after another.
    let t = [
        proc(10, "tmux", 6144),
        proc(20, "vim", 40),
        proc(21, "cargo", 300),
        proc(22, "rust-analyzer", 2048),
        proc(23, "firefox", 1500),
    ];
    for worst in [10, 0] {
        let u = unresolved(run(&stall(64, worst), &t, &["tmux"]));
        assert!(
            matches!(&u, Unresolved::Driver { holder, .. } if holder.pid == 10),
            "worst {worst}: {u:?}"
        );
        let text = u.to_string();
        assert!(text.contains("tmux (pid 10, 6144 MiB"), "{text}");
        assert!(text.contains("protected"), "{text}");
    }
    // Unless the kernel saw the editor charge most: it is the one
    // growing, and it alone dies, not the larger innocents.
    assert_eq!(victims(&run(&stall(64, 20), &t, &["tmux"]), &t), [20]);
}

#[test]
fn a_protected_process_that_only_sits_there_does_not_shield_the_hog() {
    // A large protected daemon holds steady; the hog growing beside it
    // is what the kernel saw stall: it dies.
    let t = [proc(10, "dockerd", 900), proc(20, "grep", 300)];
    assert_eq!(victims(&run(&stall(40, 20), &t, &["dockerd"]), &t), [20]);
}

#[test]
fn protected_holders_that_leave_too_little_to_kill_are_named() {
    // Killing everything killable (8 MiB) cannot end a 30 MiB overage.
    let t = [
        proc(10, "db", 50),
        proc(11, "sshd", 60),
        proc(20, "grep", 8),
    ];
    let u = unresolved(run(&stall(30, 20), &t, &["db", "sshd"]));
    match &u {
        Unresolved::Held { holder, .. } => assert_eq!(holder.pid, 11, "the largest"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unreadable_process_counts_as_one_guard_may_not_kill() {
    let mut odd = proc(10, "odd", 0);
    odd.footprint = None;
    let t = [odd, proc(20, "server", 3)];
    let u = unresolved(run(&stall(40, 10), &t, &[]));
    match &u {
        Unresolved::Held { holder, .. } => {
            assert_eq!(holder.pid, 10);
            assert!(u.to_string().contains("not readable"), "{u}");
        }
        other => panic!("{other:?}"),
    }
    // Readable processes that cover the overage are still killed.
    let t = [odd, proc(20, "hog", 70)];
    assert_eq!(victims(&run(&stall(40, 20), &t, &[]), &t), [20]);
}

#[test]
fn every_fixed_protection_is_honoured() {
    let t = [proc(1, "init", 5), proc(20, "grep", 50)];
    let d = decide(&stall(10, 0), &t, false, |i| {
        ((t[i].pid == 1).then_some(Protection::Init), t[i].comm)
    });
    assert_eq!(victims(&d, &t), [20]);
}

#[test]
fn prefer_and_avoid_reorder_victims_that_can_relieve() {
    let mut t = [
        proc(10, "postgres", 70),
        proc(20, "rg", 30),
        proc(30, "make", 40),
    ];
    t[0].rank = -1;
    t[1].rank = 1;
    assert_eq!(victims(&run(&stall(10, 0), &t, &[]), &t), [20]);
    // A preferred process too small to help is passed over.
    t[1].footprint = Some(MIB);
    assert_eq!(victims(&run(&stall(10, 0), &t, &[]), &t), [30]);
}

#[test]
fn a_process_too_small_to_help_is_not_killed() {
    // 40 MiB over high; the bystander's 3 MiB cannot end that.
    let t = [proc(20, "server", 3)];
    match unresolved(run(&stall(40, 20), &t, &[])) {
        Unresolved::NoRelief {
            largest: Some((20, _, _)),
            ..
        } => {}
        other => panic!("expected no relief, got {other:?}"),
    }
}

#[test]
fn shmem_overage_is_reported_as_held_by_no_process() {
    let t = [proc(20, "server", 3)];
    let mut s = stall(40, 20);
    s.unowned_shmem = 40 * MIB;
    let u = unresolved(run(&s, &t, &[]));
    assert!(matches!(u, Unresolved::HeldByNoProcess { .. }), "{u:?}");
    assert!(u.to_string().contains("held by no process"), "{u}");
}

#[test]
fn among_many_workers_one_at_a_time_is_taken() {
    // Ten workers of 8 MiB, 10 MiB over high: each is a real share.
    let t: Vec<Candidate> = (0..10)
        .map(|i| proc(100 + i, "worker", 8 + u64::from(i == 3)))
        .collect();
    assert_eq!(victims(&run(&stall(10, 0), &t, &[]), &t), [103]);
}

#[test]
fn an_overage_spread_over_many_small_processes_is_covered_by_several() {
    // Sixty 2 MiB children of a small parent, 20 MiB over: none holds a
    // quarter (5 MiB) of it. Today nobody was killed, for ever.
    let mut t: Vec<Candidate> = (0..60).map(|i| proc(100 + i, "child", 2)).collect();
    t.push(proc(99, "make", 1));
    t.push(proc(98, "bystander", 1));
    let v = victims(&run(&stall(20, 0), &t, &[]), &t);
    assert_eq!(v.len(), 10, "{v:?}");
    assert!(v.iter().all(|p| (100..160).contains(p)), "{v:?}");
    // The batch stops as soon as the overage is covered.
    let v = victims(&run(&stall(9, 0), &t, &[]), &t);
    assert_eq!(v.len(), 5, "{v:?}");
}

#[test]
fn an_overage_too_thin_for_one_batch_says_which_mode_ends_it() {
    let t: Vec<Candidate> = (0..200).map(|i| proc(100 + i, "tiny", 1)).collect();
    let u = unresolved(run(&stall(150, 0), &t, &[]));
    assert_eq!(u, Unresolved::TooSpread { overage: 150 * MIB });
    assert!(u.to_string().contains("process-group"), "{u}");
}

#[test]
fn small_innocents_are_not_taken_when_a_protected_process_holds_the_memory() {
    // Killing all twenty 1 MiB helpers could free the 10 MiB overage,
    // but the protected holder is what drives it.
    let mut t: Vec<Candidate> = (0..20).map(|i| proc(100 + i, "helper", 1)).collect();
    t.push(proc(10, "tmux", 60));
    assert!(matches!(
        unresolved(run(&stall(10, 0), &t, &["tmux"])),
        Unresolved::Driver { holder, .. } if holder.pid == 10
    ));
}

#[test]
fn in_group_modes_the_share_is_judged_per_group() {
    // A build: one process group of 30 compilers of 2 MiB (60 MiB), a
    // 20 MiB overage; no compiler holds a quarter, the group does.
    let mut t: Vec<Candidate> = (0..30).map(|i| proc(100 + i, "cc1", 2)).collect();
    for c in &mut t {
        c.unit = 100;
    }
    t.push(proc(50, "server", 4));
    let d = decide(&stall(20, 0), &t, true, judge(&t, &[]));
    match &d {
        Decision::Kill(picks) => {
            assert_eq!(picks.len(), 1, "{picks:?}");
            assert_eq!(picks[0].unit, 100);
            assert!(picks[0].whole);
            assert_eq!(picks[0].members.len(), 30);
        }
        other => panic!("{other:?}"),
    }
    // A group that holds a protected process is split: its killable
    // members are taken one by one, never the protected one.
    t[0].comm = Comm::from("sshd");
    let d = decide(&stall(20, 0), &t, true, judge(&t, &["sshd"]));
    let v = victims(&d, &t);
    assert!(!v.contains(&100), "{v:?}");
    assert!(v.iter().any(|p| (101..130).contains(p)), "{v:?}");
    if let Decision::Kill(picks) = &d {
        assert!(
            picks.iter().all(|p| !(p.unit == 100 && p.whole)),
            "{picks:?}"
        );
    }
}

#[test]
fn an_empty_cgroup_has_no_victim() {
    assert!(matches!(
        unresolved(run(&stall(10, 0), &[], &[])),
        Unresolved::NoRelief { largest: None, .. }
    ));
}

#[test]
fn the_judge_is_asked_only_about_the_processes_that_matter() {
    // The hog covers the overage alone: the 50 small ones are never
    // looked at (their exe, cmdline, oom_score_adj stay unread).
    let mut t: Vec<Candidate> = (0..50).map(|i| proc(100 + i, "small", 1)).collect();
    t.push(proc(10, "hog", 100));
    let mut asked = Vec::new();
    let d = decide(&stall(20, 10), &t, false, |i| {
        asked.push(t[i].pid);
        (None, t[i].comm)
    });
    assert_eq!(victims(&d, &t), [10]);
    assert_eq!(asked, [10]);
}

#[test]
fn names_the_table_was_read_without_come_from_the_judge() {
    // The table is read without names (one small file per process);
    // the judge reads the name of what it judges.
    let mut t = [proc(10, "", 70), proc(20, "", 3)];
    t[0].comm = Comm::default();
    let d = decide(&stall(10, 10), &t, false, |i| {
        let why = (i == 0).then(|| Protection::Rule("exe matches".into()));
        (why, Comm::from(if i == 0 { "sshd" } else { "server" }))
    });
    let u = unresolved(d);
    assert!(u.to_string().contains("sshd (pid 10"), "{u}");
}

#[test]
fn the_same_situation_keeps_its_key_while_sizes_grow() {
    let at = |mib| {
        unresolved(run(
            &stall(10, 10),
            &[proc(10, "sshd", mib), proc(20, "server", 3)],
            &["sshd"],
        ))
    };
    assert_eq!(at(64).key(), at(70).key());
    assert_ne!(at(64).to_string(), at(70).to_string());
}
