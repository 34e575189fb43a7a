//! `guard status` for people: one section per topic, every name made
//! printable.

use std::io::{self, Write};

use super::{CgroupStatus, Status};
use crate::{report::date_time, terminal::printable};

fn size(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let mib = bytes as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

fn limit(v: Option<u64>) -> String {
    v.map_or_else(|| "max".to_owned(), size)
}

fn psi(v: Option<f64>) -> String {
    v.map_or_else(|| "?".to_owned(), |p| format!("{p:.2}%"))
}

fn cgroup_line(c: &CgroupStatus) -> String {
    let swap = if c.swap_max_absent {
        "no memory.swap.max file".to_owned()
    } else {
        // 0 is the point of a band without swap: said as a number.
        match c.swap_max {
            Some(0) => "swap.max 0 (no swap)".to_owned(),
            other => format!("swap.max {}", limit(other)),
        }
    };
    let stall = c.stall_window_ns.map_or_else(
        || "stall n/a".to_owned(),
        |ns| format!("stall {:.0} ms in the window", ns as f64 / 1e6),
    );
    let scope = match (&c.scope, c.budget_ms, c.window_ms) {
        (Some(globs), Some(budget), Some(window)) => {
            format!("scope {globs}: budget {budget} ms in {window} ms")
        }
        _ => "in no scope: guard leaves it alone".to_owned(),
    };
    format!(
        "{}: current {} of high {}, max {}, {swap}; psi some {} full {}; {stall}; {scope}",
        c.cgroup,
        size(c.memory_current),
        size(c.memory_high),
        limit(c.memory_max),
        psi(c.psi_some_avg10),
        psi(c.psi_full_avg10),
    )
}

/// Writes the status as text.
pub fn write(out: &mut impl Write, s: &Status) -> io::Result<()> {
    let line = |out: &mut dyn Write, text: &str| writeln!(out, "{}", printable(text));
    line(
        out,
        &format!("guard {} on kernel {}", s.guard_version, s.kernel),
    )?;

    writeln!(out, "\ndaemon")?;
    match (&s.daemon, &s.daemon_note) {
        (Some(d), _) => {
            let mode = if d.dry_run {
                "dry run: kills nothing"
            } else {
                "kills hogs (not a dry run)"
            };
            line(
                out,
                &format!(
                    "  running, guard {}, pid {} ({}): {mode}; policy {}; socket {}",
                    d.guard_version, d.pid, d.source, d.policy, d.socket
                ),
            )?;
        }
        (None, Some(why)) => line(out, &format!("  {why}"))?,
        (None, None) => line(out, "  unknown")?,
    }
    line(out, &format!("  hooks: {}", s.hooks))?;

    writeln!(out, "\ncgroups with a finite memory.high")?;
    if let Some(why) = &s.cgroups_note {
        line(out, &format!("  {why}"))?;
    } else if s.cgroups.is_empty() {
        line(out, "  none: no cgroup has a memory.high below \"max\"")?;
    }
    for c in &s.cgroups {
        line(out, &format!("  {}", cgroup_line(c)))?;
    }

    let e = &s.events;
    writeln!(out)?;
    line(out, &format!("events ({})", e.log_dir))?;
    if let Some(note) = &e.note {
        line(out, &format!("  {note}"))?;
    }
    if e.readable {
        line(
            out,
            &format!(
                "  kills: {}, dry-run kills: {}, unresolved stalls: {}",
                e.kills, e.dry_run_kills, e.unresolved
            ),
        )?;
        if e.incidents.is_empty() {
            line(out, "  no incident")?;
        } else {
            line(out, "  last incidents:")?;
        }
        for i in &e.incidents {
            let what = if i.killed.is_empty() {
                format!("nothing killed ({})", i.ended_by)
            } else {
                format!("killed {}", i.killed.join(", "))
            };
            line(
                out,
                &format!(
                    "    {} UTC {} for {:.1} s, {what}",
                    date_time(i.start_unix_ms),
                    i.cgroup,
                    i.duration_ms as f64 / 1e3
                ),
            )?;
        }
    }

    writeln!(out, "\nother memory killers")?;
    if s.peers.is_empty() {
        line(out, "  none running (earlyoom, systemd-oomd, oomd, nohang)")?;
    }
    for p in &s.peers {
        line(
            out,
            &format!("  {} (pid {}): {}", p.name, p.pid, p.interaction),
        )?;
    }

    writeln!(out, "\nwarnings")?;
    if s.warnings.is_empty() {
        line(out, "  none")?;
    }
    for w in &s.warnings {
        line(out, &format!("  {}: {}", w.kind, w.message))?;
    }
    Ok(())
}
