//! The state of the live view, built from records: counters, one row per
//! sampled cgroup and the recent events, already formatted.

use std::collections::{BTreeMap, VecDeque};

use crate::events::{Event, Record};

use super::table::SortBy;

/// How many events the pane remembers. Enough to scroll back through an
/// incident on a tall terminal, small enough that a flood cannot grow the
/// view without bound.
pub(super) const EVENT_RING: usize = 500;

/// The source as its Hello record introduced it.
#[derive(Clone, Debug)]
pub(super) struct Source {
    pub(super) source: String,
    pub(super) guard_version: String,
    pub(super) kernel: String,
    pub(super) throttle_hooked: bool,
    pub(super) dry_run: bool,
}

/// Totals since the view started. They keep counting while paused, so a
/// person who paused to read still sees that more happened.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    pub(super) passes: u64,
    pub(super) throttles: u64,
    pub(super) verdicts: u64,
    pub(super) kills: u64,
    pub(super) dry_run_kills: u64,
    pub(super) oom_kills: u64,
    pub(super) unresolved: u64,
    pub(super) kill_limits: u64,
    pub(super) lost: u64,
    pub(super) errors: u64,
}

/// Reclaim passes per second, from the records' own CLOCK_MONOTONIC
/// stamps: the view has no clock. Any record moves the second on, so the
/// rate falls to 0 when passes stop but samples keep coming.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PassRate {
    second: u64,
    in_second: u64,
    pub(super) last_full_second: u64,
}

impl PassRate {
    fn advance(&mut self, mono_ns: u64) {
        let second = mono_ns / 1_000_000_000;
        if second > self.second {
            self.last_full_second = if second == self.second + 1 {
                self.in_second
            } else {
                0
            };
            self.second = second;
            self.in_second = 0;
        }
    }
}

/// One Sample record, the part the row needs.
#[derive(Clone, Debug)]
pub(super) struct SamplePoint {
    pub(super) mono_ns: u64,
    pub(super) memory_current: u64,
    pub(super) memory_high: Option<u64>,
    pub(super) memory_max: Option<u64>,
    pub(super) stall_total_ns: u64,
    pub(super) passes: u64,
    pub(super) no_progress_passes: u64,
    pub(super) reclaimed_pages: u64,
    pub(super) psi_some_avg10: Option<f64>,
    pub(super) psi_full_avg10: Option<f64>,
    pub(super) worst_pid: u32,
    pub(super) worst_comm: String,
}

/// One cgroup of the table. The rates come from the last two samples,
/// because the kernel reports running totals.
#[derive(Clone, Debug, Default)]
pub(super) struct CgroupRow {
    cgroup_id: u64,
    pub(super) last: Option<SamplePoint>,
    prev: Option<SamplePoint>,
    pub(super) verdicts: u64,
    pub(super) kills: u64,
    pub(super) oom_kills: u64,
    pub(super) unresolved: u64,
    pub(super) kill_limits: u64,
    /// The cgroup was removed; the row stays only if something happened
    /// to it worth remembering.
    pub(super) gone: bool,
}

impl CgroupRow {
    /// Both samples, when there is an interval to divide by.
    fn interval(&self) -> Option<(&SamplePoint, &SamplePoint)> {
        let (prev, last) = (self.prev.as_ref()?, self.last.as_ref()?);
        (last.mono_ns > prev.mono_ns).then_some((prev, last))
    }

    /// No-progress reclaim stall, ms per second of wall time.
    pub(super) fn stall_ms_per_s(&self) -> Option<f64> {
        let (prev, last) = self.interval()?;
        let stalled_ms = last.stall_total_ns.saturating_sub(prev.stall_total_ns) as f64 / 1e6;
        let seconds = (last.mono_ns - prev.mono_ns) as f64 / 1e9;
        Some(stalled_ms / seconds)
    }

    /// (pages per pass, share of passes without progress) over the last
    /// interval; None when no pass ran in it.
    pub(super) fn reclaim_efficiency(&self) -> Option<(f64, f64)> {
        let (prev, last) = self.interval()?;
        let passes = last.passes.saturating_sub(prev.passes);
        if passes == 0 {
            return None;
        }
        let pages = last.reclaimed_pages.saturating_sub(prev.reclaimed_pages);
        let stuck = last
            .no_progress_passes
            .saturating_sub(prev.no_progress_passes);
        Some((pages as f64 / passes as f64, stuck as f64 / passes as f64))
    }

    pub(super) fn percent_of_high(&self) -> Option<f64> {
        let last = self.last.as_ref()?;
        let high = last.memory_high.filter(|&h| h > 0)?;
        Some(last.memory_current as f64 * 100.0 / high as f64)
    }

    fn has_incidents(&self) -> bool {
        self.verdicts + self.kills + self.oom_kills + self.unresolved + self.kill_limits > 0
    }

    /// Takes a new sample in, the previous one kept for the rates.
    fn sampled(&mut self, cgroup_id: u64, point: SamplePoint) {
        // Totals of a recreated cgroup with the same path start over:
        // differences against the old one mean nothing.
        if self.cgroup_id != cgroup_id {
            self.prev = None;
            self.last = None;
            self.cgroup_id = cgroup_id;
        }
        self.gone = false;
        self.prev = self.last.replace(point);
    }
}

/// How an events-pane line is coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tone {
    Info,
    Quiet,
    Warn,
    Alarm,
    Lost,
}

/// One line of the events pane, formatted once when it arrives rather
/// than on every redraw.
#[derive(Clone, Debug)]
pub(super) struct EventLine {
    /// Arrival order, to merge the raw-pass ring with the main one.
    pub(super) seq: u64,
    /// The cgroup the filter matches against; None for events that are
    /// about the stream itself (lost, errors, hello), which a filter never
    /// hides.
    pub(super) cgroup: Option<String>,
    /// `HH:MM:SS.mmm description` ([`Record::to_text_line`]).
    pub(super) text: String,
    pub(super) tone: Tone,
}

/// Everything that freezes on pause: the rows and the events panes.
#[derive(Clone, Debug, Default)]
pub(super) struct Shown {
    pub(super) rows: BTreeMap<String, CgroupRow>,
    pub(super) events: VecDeque<EventLine>,
    /// Raw reclaim/throttle passes, in their own ring so a flood of them
    /// cannot push verdicts and kills out of memory.
    pub(super) raw: VecDeque<EventLine>,
}

/// The state of the live view. Feed it with [`View::push`] and
/// [`View::key`], draw it with [`View::render`].
#[derive(Debug, Default)]
pub struct View {
    pub(super) source: Option<Source>,
    pub(super) source_closed: bool,
    pub(super) counts: Counts,
    pub(super) pass_rate: PassRate,
    pub(super) live: Shown,
    /// Set while paused: what the screen keeps showing.
    pub(super) frozen: Option<Shown>,
    next_seq: u64,
    pub(super) sort: SortBy,
    pub(super) filter: String,
    /// The filter being typed after `/`, applied on Enter.
    pub(super) editing: Option<String>,
    pub(super) show_raw: bool,
    pub(super) show_help: bool,
}

/// The key a row is stored under: its path, or its id when the cgroup was
/// gone before it could be named.
fn row_key(cgroup: &str, cgroup_id: Option<u64>) -> Option<String> {
    match (cgroup.is_empty(), cgroup_id) {
        (false, _) => Some(cgroup.to_owned()),
        (true, Some(id)) => Some(format!("[cgroup id {id}]")),
        (true, None) => None,
    }
}

impl View {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one record in. Counters always move; rows and events only on
    /// screen when not paused.
    pub fn push(&mut self, rec: &Record) {
        self.pass_rate.advance(rec.mono_ns);
        match &rec.event {
            Event::Hello {
                source,
                guard_version,
                kernel,
                throttle_hooked,
                dry_run,
                ..
            } => {
                self.source = Some(Source {
                    source: source.clone(),
                    guard_version: guard_version.clone(),
                    kernel: kernel.clone(),
                    throttle_hooked: *throttle_hooked,
                    dry_run: *dry_run,
                });
                self.log(rec, None, Tone::Info);
            }
            Event::Reclaim { cgroup, .. } => {
                self.counts.passes += 1;
                self.pass_rate.in_second += 1;
                self.log_raw(rec, cgroup);
            }
            Event::Throttle { cgroup, .. } => {
                self.counts.throttles += 1;
                self.log_raw(rec, cgroup);
            }
            Event::Verdict {
                cgroup, cgroup_id, ..
            } => {
                self.counts.verdicts += 1;
                let id = Some(*cgroup_id);
                self.incident(rec, cgroup, id, Tone::Warn, |row| &mut row.verdicts);
            }
            Event::Kill {
                cgroup, dry_run, ..
            } => {
                if *dry_run {
                    self.counts.dry_run_kills += 1;
                } else {
                    self.counts.kills += 1;
                }
                self.incident(rec, cgroup, None, Tone::Alarm, |row| &mut row.kills);
            }
            Event::Unresolved { cgroup, .. } => {
                self.counts.unresolved += 1;
                self.incident(rec, cgroup, None, Tone::Warn, |row| &mut row.unresolved);
            }
            Event::KillLimit { cgroup, .. } => {
                self.counts.kill_limits += 1;
                self.incident(rec, cgroup, None, Tone::Alarm, |row| &mut row.kill_limits);
            }
            Event::OomKill { cgroup, .. } => {
                self.counts.oom_kills += 1;
                self.incident(rec, cgroup, None, Tone::Alarm, |row| &mut row.oom_kills);
            }
            Event::CgroupCreated { cgroup, .. } => self.log(rec, Some(cgroup), Tone::Quiet),
            Event::CgroupRemoved { cgroup, cgroup_id } => {
                self.cgroup_removed(cgroup, *cgroup_id);
                self.log(rec, Some(cgroup), Tone::Quiet);
            }
            Event::Sample { .. } => self.sample(rec),
            Event::Lost { count, .. } => {
                self.counts.lost += count;
                self.log(rec, None, Tone::Lost);
            }
            Event::Error { .. } => {
                self.counts.errors += 1;
                self.log(rec, None, Tone::Alarm);
            }
        }
    }

    /// The record source went away: say so on screen instead of silently
    /// showing a view that no longer moves.
    pub fn source_closed(&mut self) {
        self.source_closed = true;
    }

    pub fn is_paused(&self) -> bool {
        self.frozen.is_some()
    }

    /// What the screen shows: the live state, or what it was when paused.
    pub(super) fn shown(&self) -> &Shown {
        self.frozen.as_ref().unwrap_or(&self.live)
    }

    pub(super) fn passes_filter(&self, cgroup: &str) -> bool {
        self.filter.is_empty() || cgroup.contains(&self.filter)
    }

    /// Marks an incident on the cgroup's row (`tally` picks the mark) and
    /// lists it.
    fn incident(
        &mut self,
        rec: &Record,
        cgroup: &str,
        cgroup_id: Option<u64>,
        tone: Tone,
        tally: fn(&mut CgroupRow) -> &mut u64,
    ) {
        if let Some(row) = self.row_mut(cgroup, cgroup_id) {
            *tally(row) += 1;
        }
        self.log(rec, Some(cgroup), tone);
    }

    fn cgroup_removed(&mut self, cgroup: &str, cgroup_id: u64) {
        let Some(key) = row_key(cgroup, Some(cgroup_id)) else {
            return;
        };
        // A removed cgroup with nothing to remember would only clutter the
        // table (systemd creates and removes scopes all the time); one that
        // was killed in stays, marked.
        let forget = self.live.rows.get_mut(&key).is_some_and(|row| {
            row.gone = true;
            !row.has_incidents()
        });
        if forget {
            self.live.rows.remove(&key);
        }
    }

    fn sample(&mut self, rec: &Record) {
        let Event::Sample {
            cgroup,
            cgroup_id,
            memory_current,
            memory_high,
            memory_max,
            stall_total_ns,
            passes,
            no_progress_passes,
            reclaimed_pages,
            psi_some_avg10,
            psi_full_avg10,
            worst_pid,
            worst_comm,
            ..
        } = &rec.event
        else {
            return;
        };
        let point = SamplePoint {
            mono_ns: rec.mono_ns,
            memory_current: *memory_current,
            memory_high: *memory_high,
            memory_max: *memory_max,
            stall_total_ns: *stall_total_ns,
            passes: *passes,
            no_progress_passes: *no_progress_passes,
            reclaimed_pages: *reclaimed_pages,
            psi_some_avg10: *psi_some_avg10,
            psi_full_avg10: *psi_full_avg10,
            worst_pid: *worst_pid,
            worst_comm: worst_comm.clone(),
        };
        if let Some(row) = self.row_mut(cgroup, Some(*cgroup_id)) {
            row.sampled(*cgroup_id, point);
        }
    }

    fn row_mut(&mut self, cgroup: &str, cgroup_id: Option<u64>) -> Option<&mut CgroupRow> {
        let key = row_key(cgroup, cgroup_id)?;
        Some(self.live.rows.entry(key).or_default())
    }

    fn next_line(&mut self, rec: &Record, cgroup: Option<&str>, tone: Tone) -> EventLine {
        self.next_seq += 1;
        EventLine {
            seq: self.next_seq,
            cgroup: cgroup.map(str::to_owned),
            text: rec.to_text_line(),
            tone,
        }
    }

    fn log(&mut self, rec: &Record, cgroup: Option<&str>, tone: Tone) {
        let line = self.next_line(rec, cgroup, tone);
        push_bounded(&mut self.live.events, line);
    }

    /// Raw passes are kept only while they are shown: thousands a second
    /// would otherwise be formatted for nothing.
    fn log_raw(&mut self, rec: &Record, cgroup: &str) {
        if self.show_raw {
            let line = self.next_line(rec, Some(cgroup), Tone::Quiet);
            push_bounded(&mut self.live.raw, line);
        }
    }
}

fn push_bounded(ring: &mut VecDeque<EventLine>, line: EventLine) {
    if ring.len() == EVENT_RING {
        ring.pop_front();
    }
    ring.push_back(line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::fixtures::*;
    use crate::live::render_to_string;
    use ratatui::crossterm::event::KeyCode;

    #[test]
    fn a_stall_left_alone_and_a_kill_limit_are_counted_marked_and_listed() {
        let mut view = incident();
        view.push(&at(
            1700,
            Event::Unresolved {
                cgroup: "/seed.slice".into(),
                reason: "the process driving the stall may not be killed: tmux (pid 9)".into(),
                holder_pid: Some(9),
                holder_comm: Some("tmux".into()),
                stall_ns: 1,
                memory_current: 70 * MIB,
                memory_high: Some(64 * MIB),
            },
        ));
        view.push(&at(
            1800,
            Event::KillLimit {
                cgroup: "/seed.slice".into(),
                fruitless_kills: 3,
                window_ms: 60_000,
            },
        ));
        let screen = render_to_string(&view, 120, 30);
        let header = line_with(&screen, "verdicts ");
        assert!(header.contains("unresolved 1"), "{header}");
        assert!(header.contains("kill limits 1"), "{header}");
        let row = line_with(&screen, "/seed.slice ");
        assert!(row.contains("U1 L1"), "incident marks: {row}");
        assert!(
            screen.contains("KILL LIMIT /seed.slice: 3 kills in a row"),
            "{screen}"
        );
        assert!(
            screen.contains("UNRESOLVED /seed.slice: nothing killed"),
            "{screen}"
        );
    }

    #[test]
    fn raw_passes_are_counted_but_listed_only_after_r() {
        let pass = |ms| {
            at(
                ms,
                Event::Reclaim {
                    pid: 42,
                    tid: 42,
                    comm: "grep".into(),
                    cgroup_id: 11,
                    cgroup: "/seed.slice".into(),
                    duration_ns: 2_500_000,
                    reclaimed_pages: 0,
                },
            )
        };
        let mut view = incident();
        for ms in [2000, 2100, 2200] {
            view.push(&pass(ms));
        }
        view.push(&at(3000, sample("/seed.slice", 48, 64, 1400, 140)));
        let hidden = render_to_string(&view, 80, 24);
        assert!(
            line_with(&hidden, "verdicts ").contains("passes 3 (3/s)"),
            "{hidden}"
        );
        assert!(!hidden.contains("reclaim /seed.slice"), "{hidden}");

        view.key(KeyCode::Char('r'));
        view.push(&pass(3100));
        let shown = render_to_string(&view, 80, 24);
        assert!(
            shown.contains("reclaim /seed.slice grep[42] 2.5 ms, 0 pages"),
            "{shown}"
        );
        assert!(
            line_with(&shown, "verdicts ").contains("passes 4"),
            "{shown}"
        );
        // Still newest first, merged with the other events.
        assert!(shown.find("reclaim /seed").expect("shown") < shown.find("LOST 7").expect("shown"));
    }

    #[test]
    fn the_events_ring_is_bounded_and_keeps_the_newest() {
        let mut view = View::new();
        for i in 0..(EVENT_RING as u64 + 50) {
            view.push(&at(
                i,
                Event::Error {
                    message: format!("e{i}"),
                },
            ));
        }
        assert_eq!(view.live.events.len(), EVENT_RING);
        let screen = render_to_string(&view, 80, 24);
        assert!(
            screen.contains(&format!("error: e{}", EVENT_RING + 49)),
            "{screen}"
        );
        assert!(line_with(&screen, "verdicts ").contains(&format!("errors {}", EVENT_RING + 50)));
    }
}
