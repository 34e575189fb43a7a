//! The live view of `guard trace`: what a person watches while a cgroup is
//! stuck on memory.high.
//!
//! [`View`] is pure state: it is fed [`Record`]s and keys and draws itself
//! into a ratatui [`Frame`], but never touches a terminal, a clock or a
//! socket, so every behaviour a person sees can be tested by rendering
//! into a `TestBackend` ([`render_to_string`]). The terminal itself is
//! `tui`'s job.
//!
//! Layout, top to bottom: a two-line header (who is talking, counters), a
//! table with one row per sampled cgroup, a pane of recent events (newest
//! first) and a footer with the keys.

use std::collections::{BTreeMap, VecDeque};

use ratatui::Frame;
use ratatui::crossterm::event::KeyCode;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};

use crate::events::{Event, Record};

/// How many events the pane remembers. Enough to scroll back through an
/// incident on a tall terminal, small enough that a flood cannot grow the
/// view without bound.
const EVENT_RING: usize = 500;

/// What the caller should do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Quit,
}

/// The column the cgroup rows are ordered by (`s` cycles).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    /// Biggest no-progress stall per second first: the cgroup about to
    /// get a verdict.
    #[default]
    Stall,
    /// Highest memory.current as a share of memory.high first.
    MemoryOfHigh,
    /// Cgroup path, alphabetically.
    Name,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            SortBy::Stall => SortBy::MemoryOfHigh,
            SortBy::MemoryOfHigh => SortBy::Name,
            SortBy::Name => SortBy::Stall,
        }
    }

    fn label(self) -> &'static str {
        match self {
            SortBy::Stall => "stall/s",
            SortBy::MemoryOfHigh => "memory % of high",
            SortBy::Name => "name",
        }
    }
}

/// The source as its Hello record introduced it.
#[derive(Clone, Debug)]
struct Source {
    source: String,
    guard_version: String,
    kernel: String,
    throttle_hooked: bool,
    dry_run: bool,
}

/// Totals since the view started. They keep counting while paused, so a
/// person who paused to read still sees that more happened.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    passes: u64,
    throttles: u64,
    verdicts: u64,
    kills: u64,
    dry_run_kills: u64,
    oom_kills: u64,
    unresolved: u64,
    kill_limits: u64,
    lost: u64,
    errors: u64,
}

/// Reclaim passes per second, from the records' own CLOCK_MONOTONIC
/// stamps: the view has no clock. Any record moves the second on, so the
/// rate falls to 0 when passes stop but samples keep coming.
#[derive(Clone, Copy, Debug, Default)]
struct PassRate {
    second: u64,
    in_second: u64,
    last_full_second: u64,
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
struct SamplePoint {
    mono_ns: u64,
    memory_current: u64,
    memory_high: Option<u64>,
    memory_max: Option<u64>,
    stall_total_ns: u64,
    passes: u64,
    no_progress_passes: u64,
    reclaimed_pages: u64,
    psi_some_avg10: Option<f64>,
    psi_full_avg10: Option<f64>,
    worst_pid: u32,
    worst_comm: String,
}

/// One cgroup of the table. The rates come from the last two samples,
/// because the kernel reports running totals.
#[derive(Clone, Debug, Default)]
struct CgroupRow {
    cgroup_id: u64,
    last: Option<SamplePoint>,
    prev: Option<SamplePoint>,
    verdicts: u64,
    kills: u64,
    oom_kills: u64,
    unresolved: u64,
    kill_limits: u64,
    /// The cgroup was removed; the row stays only if something happened
    /// to it worth remembering.
    gone: bool,
}

impl CgroupRow {
    /// Both samples, when there is an interval to divide by.
    fn interval(&self) -> Option<(&SamplePoint, &SamplePoint)> {
        let (prev, last) = (self.prev.as_ref()?, self.last.as_ref()?);
        (last.mono_ns > prev.mono_ns).then_some((prev, last))
    }

    /// No-progress reclaim stall, ms per second of wall time.
    fn stall_ms_per_s(&self) -> Option<f64> {
        let (prev, last) = self.interval()?;
        let stalled_ms = last.stall_total_ns.saturating_sub(prev.stall_total_ns) as f64 / 1e6;
        let seconds = (last.mono_ns - prev.mono_ns) as f64 / 1e9;
        Some(stalled_ms / seconds)
    }

    /// (pages per pass, share of passes without progress) over the last
    /// interval; None when no pass ran in it.
    fn reclaim_efficiency(&self) -> Option<(f64, f64)> {
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

    fn percent_of_high(&self) -> Option<f64> {
        let last = self.last.as_ref()?;
        let high = last.memory_high.filter(|&h| h > 0)?;
        Some(last.memory_current as f64 * 100.0 / high as f64)
    }

    fn has_incidents(&self) -> bool {
        self.verdicts + self.kills + self.oom_kills + self.unresolved + self.kill_limits > 0
    }
}

/// How an events-pane line is coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tone {
    Info,
    Quiet,
    Warn,
    Alarm,
    Lost,
}

impl Tone {
    fn style(self) -> Style {
        match self {
            Tone::Info => Style::new().fg(Color::Cyan),
            Tone::Quiet => Style::new().fg(Color::DarkGray),
            Tone::Warn => Style::new().fg(Color::Yellow),
            Tone::Alarm => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            Tone::Lost => Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD),
        }
    }
}

/// One line of the events pane, formatted once when it arrives rather
/// than on every redraw.
#[derive(Clone, Debug)]
struct EventLine {
    /// Arrival order, to merge the raw-pass ring with the main one.
    seq: u64,
    /// The cgroup the filter matches against; None for events that are
    /// about the stream itself (lost, errors, hello), which a filter never
    /// hides.
    cgroup: Option<String>,
    /// `HH:MM:SS.mmm description` ([`Record::to_text_line`]).
    text: String,
    tone: Tone,
}

/// Everything that freezes on pause: the rows and the events panes.
#[derive(Clone, Debug, Default)]
struct Shown {
    rows: BTreeMap<String, CgroupRow>,
    events: VecDeque<EventLine>,
    /// Raw reclaim/throttle passes, in their own ring so a flood of them
    /// cannot push verdicts and kills out of memory.
    raw: VecDeque<EventLine>,
}

/// The state of the live view. Feed it with [`View::push`] and
/// [`View::key`], draw it with [`View::render`].
#[derive(Debug, Default)]
pub struct View {
    source: Option<Source>,
    source_closed: bool,
    counts: Counts,
    pass_rate: PassRate,
    live: Shown,
    /// Set while paused: what the screen keeps showing.
    frozen: Option<Shown>,
    next_seq: u64,
    sort: SortBy,
    filter: String,
    /// The filter being typed after `/`, applied on Enter.
    editing: Option<String>,
    show_raw: bool,
    show_help: bool,
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
                if let Some(row) = self.row_mut(cgroup, Some(*cgroup_id)) {
                    row.verdicts += 1;
                }
                self.log(rec, Some(cgroup), Tone::Warn);
            }
            Event::Kill {
                cgroup, dry_run, ..
            } => {
                if *dry_run {
                    self.counts.dry_run_kills += 1;
                } else {
                    self.counts.kills += 1;
                }
                if let Some(row) = self.row_mut(cgroup, None) {
                    row.kills += 1;
                }
                self.log(rec, Some(cgroup), Tone::Alarm);
            }
            Event::Unresolved { cgroup, .. } => {
                self.counts.unresolved += 1;
                if let Some(row) = self.row_mut(cgroup, None) {
                    row.unresolved += 1;
                }
                self.log(rec, Some(cgroup), Tone::Warn);
            }
            Event::KillLimit { cgroup, .. } => {
                self.counts.kill_limits += 1;
                if let Some(row) = self.row_mut(cgroup, None) {
                    row.kill_limits += 1;
                }
                self.log(rec, Some(cgroup), Tone::Alarm);
            }
            Event::OomKill { cgroup, .. } => {
                self.counts.oom_kills += 1;
                if let Some(row) = self.row_mut(cgroup, None) {
                    row.oom_kills += 1;
                }
                self.log(rec, Some(cgroup), Tone::Alarm);
            }
            Event::CgroupCreated { cgroup, .. } => self.log(rec, Some(cgroup), Tone::Quiet),
            Event::CgroupRemoved { cgroup, cgroup_id } => {
                if let Some(key) = row_key(cgroup, Some(*cgroup_id)) {
                    // A removed cgroup with nothing to remember would only
                    // clutter the table (systemd creates and removes scopes
                    // all the time); one that was killed in stays, marked.
                    let forget = self.live.rows.get_mut(&key).is_some_and(|row| {
                        row.gone = true;
                        !row.has_incidents()
                    });
                    if forget {
                        self.live.rows.remove(&key);
                    }
                }
                self.log(rec, Some(cgroup), Tone::Quiet);
            }
            Event::Sample {
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
            } => {
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
                    // Totals of a recreated cgroup with the same path start
                    // over: differences against the old one mean nothing.
                    if row.cgroup_id != *cgroup_id {
                        row.prev = None;
                        row.last = None;
                        row.cgroup_id = *cgroup_id;
                    }
                    row.gone = false;
                    row.prev = row.last.replace(point);
                }
            }
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

    /// Handles one key. While a filter is being typed every character goes
    /// into the filter, so `q` there is a letter, not quit.
    pub fn key(&mut self, code: KeyCode) -> Action {
        if let Some(edit) = &mut self.editing {
            match code {
                KeyCode::Enter => {
                    self.filter = edit.trim().to_owned();
                    self.editing = None;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    edit.pop();
                }
                KeyCode::Char(c) => edit.push(c),
                _ => {}
            }
            return Action::Continue;
        }
        match code {
            KeyCode::Char('q') => return Action::Quit,
            // Esc first closes the help, so a person reading it does not
            // lose the view by reflex.
            KeyCode::Esc if self.show_help => self.show_help = false,
            KeyCode::Esc => return Action::Quit,
            KeyCode::Char('p') => {
                self.frozen = match self.frozen.take() {
                    Some(_) => None,
                    None => Some(self.live.clone()),
                };
            }
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('/') => self.editing = Some(self.filter.clone()),
            KeyCode::Char('r') => self.show_raw = !self.show_raw,
            KeyCode::Char('?') | KeyCode::Char('h') => self.show_help = !self.show_help,
            _ => {}
        }
        Action::Continue
    }

    pub fn is_paused(&self) -> bool {
        self.frozen.is_some()
    }

    /// Draws the whole view into the frame.
    pub fn render(&self, frame: &mut Frame) {
        let area = frame.area();
        let shown = self.frozen.as_ref().unwrap_or(&self.live);
        let rows = self.visible_rows(shown);
        // The table takes what its rows need, up to half the screen; the
        // events pane gets the rest, since that is where incidents show.
        let body = area.height.saturating_sub(3);
        let wanted = u16::try_from(rows.len())
            .unwrap_or(u16::MAX)
            .saturating_add(2);
        let table_height = wanted.clamp(3, (body / 2).max(3));
        let [header, table, events, footer] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Length(table_height),
            Constraint::Min(2),
            Constraint::Length(1),
        ])
        .areas(area);
        frame.render_widget(self.header(), header);
        self.render_table(frame, table, shown, &rows);
        self.render_events(frame, events, shown);
        frame.render_widget(self.footer(), footer);
        if let Some(edit) = &self.editing {
            let x = footer.x + FILTER_PROMPT.len() as u16 + edit.chars().count() as u16;
            frame.set_cursor_position((x.min(footer.right().saturating_sub(1)), footer.y));
        }
        if self.show_help {
            render_help(frame, events.union(table));
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

    fn passes_filter(&self, cgroup: &str) -> bool {
        self.filter.is_empty() || cgroup.contains(&self.filter)
    }

    /// The rows left by the filter, in the chosen order.
    fn visible_rows<'a>(&self, shown: &'a Shown) -> Vec<(&'a str, &'a CgroupRow)> {
        let mut rows: Vec<_> = shown
            .rows
            .iter()
            .filter(|(name, _)| self.passes_filter(name))
            .map(|(name, row)| (name.as_str(), row))
            .collect();
        // Rows without a value sort last in either numeric order; the
        // BTreeMap already gives name order for ties.
        let desc = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => b.total_cmp(&a),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        match self.sort {
            SortBy::Stall => rows.sort_by(|a, b| desc(a.1.stall_ms_per_s(), b.1.stall_ms_per_s())),
            SortBy::MemoryOfHigh => {
                rows.sort_by(|a, b| desc(a.1.percent_of_high(), b.1.percent_of_high()))
            }
            SortBy::Name => {}
        }
        rows
    }

    fn header(&self) -> Paragraph<'static> {
        let mut first = Vec::new();
        if self.source_closed {
            first.push(Span::styled(
                " SOURCE CLOSED: q to quit ",
                Style::new().fg(Color::Black).bg(Color::Red),
            ));
            first.push(Span::raw(" "));
        }
        if self.is_paused() {
            first.push(Span::styled(
                " PAUSED ",
                Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD),
            ));
            first.push(Span::raw(" "));
        }
        match &self.source {
            None => first.push(Span::raw("waiting for the source to say hello")),
            Some(src) => {
                let who = if src.dry_run {
                    format!("{}, never kills", src.source)
                } else {
                    format!("{}, kills", src.source)
                };
                first.push(Span::styled(who, Style::new().add_modifier(Modifier::BOLD)));
                first.push(Span::raw(" │ throttle "));
                first.push(if src.throttle_hooked {
                    Span::raw("hooked")
                } else {
                    Span::styled(
                        "not hooked (tracepoints only)",
                        Style::new().fg(Color::Yellow),
                    )
                });
                // Least needed last, where a narrow terminal cuts.
                first.push(Span::raw(format!(
                    " │ kernel {} │ guard {}",
                    src.kernel, src.guard_version
                )));
            }
        }

        let c = &self.counts;
        let count_style = |n: u64, alarm: Style| if n > 0 { alarm } else { Style::new() };
        let red = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
        // Incidents and losses first: on a narrow terminal the line is cut
        // at the right, and those must stay in view.
        let sep = || Span::raw("  ");
        let mut second = vec![
            Span::styled(
                format!("verdicts {}", c.verdicts),
                count_style(c.verdicts, Style::new().fg(Color::Yellow)),
            ),
            sep(),
            Span::styled(format!("kills {}", c.kills), count_style(c.kills, red)),
        ];
        if c.dry_run_kills > 0 {
            second.push(Span::raw(format!(" (+{} dry run)", c.dry_run_kills)));
        }
        // Shown once they happen: a stall left alone, a spree stopped.
        if c.unresolved > 0 {
            second.push(sep());
            second.push(Span::styled(
                format!("unresolved {}", c.unresolved),
                Style::new().fg(Color::Yellow),
            ));
        }
        if c.kill_limits > 0 {
            second.push(sep());
            second.push(Span::styled(format!("kill limits {}", c.kill_limits), red));
        }
        second.extend([
            sep(),
            Span::styled(
                format!("OOM kills {}", c.oom_kills),
                count_style(c.oom_kills, red),
            ),
            sep(),
            // Always shown, also at 0: a view that silently lost records
            // would be lying.
            Span::styled(
                format!("lost {}", c.lost),
                count_style(c.lost, Tone::Lost.style()),
            ),
        ]);
        if c.errors > 0 {
            second.push(sep());
            second.push(Span::styled(format!("errors {}", c.errors), red));
        }
        second.push(Span::raw(format!(
            "  passes {} ({}/s)  throttles {}",
            c.passes, self.pass_rate.last_full_second, c.throttles
        )));
        Paragraph::new(vec![Line::from(first), Line::from(second)])
    }

    fn render_table(
        &self,
        frame: &mut Frame,
        area: Rect,
        shown: &Shown,
        rows: &[(&str, &CgroupRow)],
    ) {
        let hidden = shown.rows.len() - rows.len();
        let mut title = format!(" cgroups, sorted by {} ", self.sort.label());
        if !self.filter.is_empty() {
            title.push_str(&format!("│ filter \"{}\", {hidden} hidden ", self.filter));
        }
        let block = Block::new().borders(Borders::TOP).title(title);
        let columns = fit_columns(area.width);
        let widths: Vec<Constraint> = columns
            .iter()
            .map(|c| match c {
                Column::Cgroup => Constraint::Min(CGROUP_MIN_WIDTH),
                other => Constraint::Length(other.width()),
            })
            .collect();
        let fixed: u16 = columns
            .iter()
            .filter(|&&c| c != Column::Cgroup)
            .map(|c| c.width() + 1)
            .sum();
        let name_width = usize::from(area.width.saturating_sub(fixed).max(CGROUP_MIN_WIDTH));
        let header = Row::new(columns.iter().map(|c| c.title()))
            .style(Style::new().add_modifier(Modifier::BOLD));
        let body = rows.iter().map(|(name, row)| {
            let style = if row.gone {
                Style::new().add_modifier(Modifier::DIM)
            } else {
                Style::new()
            };
            Row::new(columns.iter().map(|c| c.cell(name, name_width, row))).style(style)
        });
        let table = Table::new(body, widths)
            .header(header)
            .column_spacing(1)
            .block(block);
        frame.render_widget(table, area);
    }

    fn render_events(&self, frame: &mut Frame, area: Rect, shown: &Shown) {
        let title = if self.show_raw {
            " events, newest first, with raw reclaim/throttle passes "
        } else {
            " events, newest first "
        };
        let block = Block::new().borders(Borders::TOP).title(title);
        let wanted = block.inner(area).height as usize;
        let visible = |e: &&EventLine| e.cgroup.as_deref().is_none_or(|c| self.passes_filter(c));
        let mut main = shown.events.iter().rev().filter(visible).peekable();
        let raw_ring = self.show_raw.then_some(&shown.raw);
        let mut raw = raw_ring
            .into_iter()
            .flat_map(|ring| ring.iter().rev())
            .filter(visible)
            .peekable();
        let mut lines = Vec::with_capacity(wanted);
        while lines.len() < wanted {
            // Merge the two rings newest first by arrival order.
            let take_raw = match (main.peek(), raw.peek()) {
                (Some(m), Some(r)) => r.seq > m.seq,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (None, None) => break,
            };
            let next = if take_raw { raw.next() } else { main.next() };
            let Some(event) = next else { break };
            lines.push(event_line(event));
        }
        if lines.is_empty() {
            lines.push(Line::styled(
                "no events yet: verdicts, kills, OOM kills and lost records show here",
                Style::new().fg(Color::DarkGray),
            ));
        }
        frame.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: false })
                .block(block),
            area,
        );
    }

    fn footer(&self) -> Paragraph<'static> {
        let line = match &self.editing {
            Some(edit) => Line::from(vec![
                Span::styled(FILTER_PROMPT, Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(edit.clone()),
                Span::styled(
                    "   Enter apply, Esc cancel, empty shows all",
                    Style::new().fg(Color::DarkGray),
                ),
            ]),
            None => {
                let pause = if self.is_paused() {
                    "p resume"
                } else {
                    "p pause"
                };
                let raw = if self.show_raw {
                    "r hide passes"
                } else {
                    "r show passes"
                };
                Line::from(format!("q quit  {pause}  s sort  / filter  {raw}  ? help"))
                    .style(Style::new().add_modifier(Modifier::REVERSED))
            }
        };
        Paragraph::new(line)
    }
}

const FILTER_PROMPT: &str = "filter: ";

fn push_bounded(ring: &mut VecDeque<EventLine>, line: EventLine) {
    if ring.len() == EVENT_RING {
        ring.pop_front();
    }
    ring.push_back(line);
}

fn event_line(event: &EventLine) -> Line<'_> {
    // The text starts with the ASCII `HH:MM:SS.mmm ` stamp; dim it so the
    // eye lands on what happened.
    let (time, what) = event.text.split_at(event.text.len().min(13));
    Line::from(vec![
        Span::styled(time, Style::new().fg(Color::DarkGray)),
        Span::styled(what, event.tone.style()),
    ])
}

fn render_help(frame: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("q, Esc   quit (Esc first closes this help)"),
        Line::from("p        pause rows and events; the header counters keep counting"),
        Line::from("s        sort rows: stall/s, memory % of high, name"),
        Line::from("/        filter by cgroup path (Enter apply, Esc cancel)"),
        Line::from("r        list raw reclaim/throttle passes in the events pane"),
        Line::from("?, h     toggle this help"),
        Line::from(""),
        Line::from("STALL: no-progress reclaim stall per second, between the last"),
        Line::from("two samples. PG/PASS: pages reclaimed per pass; NO-PROG: share"),
        Line::from("of passes that reclaimed nothing. PSI: memory some/full avg10."),
        Line::from("INCIDENTS: V verdicts, K kills, OOM kernel OOM kills seen."),
    ];
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" help ")),
        area,
    );
}

/// A table column. On a narrow terminal the least important ones are
/// dropped rather than squeezing every column into unreadable slivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    Cgroup,
    Memory,
    Max,
    Stall,
    PagesPerPass,
    NoProgress,
    Psi,
    Worst,
    Incidents,
}

const CGROUP_MIN_WIDTH: u16 = 14;

/// Columns in the order they are kept when space runs out.
const BY_IMPORTANCE: [Column; 8] = [
    Column::Memory,
    Column::Stall,
    Column::Incidents,
    Column::PagesPerPass,
    Column::NoProgress,
    Column::Psi,
    Column::Worst,
    Column::Max,
];

/// Columns in the order they are drawn.
const IN_ORDER: [Column; 9] = [
    Column::Cgroup,
    Column::Memory,
    Column::Max,
    Column::Stall,
    Column::PagesPerPass,
    Column::NoProgress,
    Column::Psi,
    Column::Worst,
    Column::Incidents,
];

fn fit_columns(width: u16) -> Vec<Column> {
    let mut used = CGROUP_MIN_WIDTH;
    let mut keep = vec![Column::Cgroup];
    for column in BY_IMPORTANCE {
        let need = column.width() + 1;
        if used + need <= width {
            used += need;
            keep.push(column);
        }
    }
    IN_ORDER.into_iter().filter(|c| keep.contains(c)).collect()
}

impl Column {
    fn width(self) -> u16 {
        match self {
            Column::Cgroup => CGROUP_MIN_WIDTH,
            Column::Memory => 16,
            Column::Max => 7,
            Column::Stall => 10,
            Column::PagesPerPass => 7,
            Column::NoProgress => 7,
            Column::Psi => 9,
            Column::Worst => 18,
            Column::Incidents => 16,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Column::Cgroup => "CGROUP",
            Column::Memory => "MEM/HIGH MiB",
            Column::Max => "MAX MiB",
            Column::Stall => "STALL",
            Column::PagesPerPass => "PG/PASS",
            Column::NoProgress => "NO-PROG",
            Column::Psi => "PSI S/F",
            Column::Worst => "WORST",
            Column::Incidents => "INCIDENTS",
        }
    }

    fn cell(self, name: &str, name_width: usize, row: &CgroupRow) -> Cell<'static> {
        let dash = || Cell::from("-");
        let last = row.last.as_ref();
        match self {
            Column::Cgroup if row.gone => {
                Cell::from(keep_tail(&format!("{name} (gone)"), name_width))
            }
            Column::Cgroup => Cell::from(keep_tail(name, name_width)),
            Column::Memory => match last {
                None => dash(),
                Some(s) => {
                    let text = match (s.memory_high, row.percent_of_high()) {
                        (Some(high), Some(pct)) => {
                            format!("{}/{} {pct:.0}%", mib(s.memory_current), mib(high))
                        }
                        _ => format!("{}/max", mib(s.memory_current)),
                    };
                    let over = row.percent_of_high().is_some_and(|p| p >= 100.0);
                    Cell::from(text).style(if over {
                        Style::new().fg(Color::Yellow)
                    } else {
                        Style::new()
                    })
                }
            },
            Column::Max => match last {
                None => dash(),
                Some(s) => Cell::from(s.memory_max.map_or("max".to_owned(), mib)),
            },
            Column::Stall => match row.stall_ms_per_s() {
                None => dash(),
                Some(ms) => Cell::from(format!("{ms:.0} ms/s")).style(if ms >= 1.0 {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new()
                }),
            },
            Column::PagesPerPass => match row.reclaim_efficiency() {
                None => dash(),
                Some((pages, _)) => Cell::from(format!("{pages:.1}")),
            },
            Column::NoProgress => match row.reclaim_efficiency() {
                None => dash(),
                Some((_, stuck)) => Cell::from(format!("{:.0}%", stuck * 100.0)),
            },
            Column::Psi => match last {
                None => dash(),
                Some(s) => {
                    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
                    Cell::from(format!(
                        "{}/{}",
                        pct(s.psi_some_avg10),
                        pct(s.psi_full_avg10)
                    ))
                }
            },
            Column::Worst => match last {
                Some(s) if s.worst_pid != 0 => {
                    Cell::from(format!("{}[{}]", s.worst_comm, s.worst_pid))
                }
                _ => dash(),
            },
            Column::Incidents => {
                let mut parts = Vec::new();
                for (n, tag) in [
                    (row.verdicts, "V"),
                    (row.kills, "K"),
                    (row.oom_kills, "OOM"),
                    (row.unresolved, "U"),
                    (row.kill_limits, "L"),
                ] {
                    if n > 0 {
                        parts.push(format!("{tag}{n}"));
                    }
                }
                let style = if row.kills + row.oom_kills + row.kill_limits > 0 {
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
                } else {
                    Style::new().fg(Color::Yellow)
                };
                Cell::from(parts.join(" ")).style(style)
            }
        }
    }
}

/// Shortens a cgroup path from the left: the leaf ("session-2.scope")
/// tells cgroups apart, the common "/user.slice/user-1000.slice" does not.
fn keep_tail(path: &str, width: usize) -> String {
    let len = path.chars().count();
    if len <= width {
        return path.to_owned();
    }
    let tail: String = path.chars().skip(len + 1 - width.max(1)).collect();
    format!("…{tail}")
}

/// MiB, whole above 10 so the column stays narrow, one decimal below so a
/// small cgroup does not read as 0.
fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1u64 << 20) as f64;
    if m >= 10.0 {
        format!("{m:.0}")
    } else {
        format!("{m:.1}")
    }
}

/// Draws the view into an off-screen buffer of the given size and returns
/// its text, one line per terminal row with trailing blanks trimmed: for
/// tests and for a screenshot of the view in the README.
pub fn render_to_string(view: &View, width: u16, height: u16) -> String {
    let backend = ratatui::backend::TestBackend::new(width, height);
    let mut terminal = match ratatui::Terminal::new(backend) {
        Ok(t) => t,
        Err(e) => return format!("cannot render: {e}"),
    };
    if let Err(e) = terminal.draw(|frame| view.render(frame)) {
        return format!("cannot render: {e}");
    }
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let mut line = String::new();
        for x in 0..buffer.area.width {
            if let Some(cell) = buffer.cell((x, y)) {
                line.push_str(cell.symbol());
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SCHEMA_VERSION;

    const MIB: u64 = 1 << 20;
    /// 2026-01-01 12:34:56.789 UTC, so the stamps are known.
    const T0_UNIX_MS: u64 = 1_767_270_896_789;
    const T0_MONO_NS: u64 = 5_000_000_000;

    /// A record `ms` after T0 on both clocks.
    fn at(ms: u64, event: Event) -> Record {
        Record {
            v: SCHEMA_VERSION,
            mono_ns: T0_MONO_NS + ms * 1_000_000,
            unix_ms: T0_UNIX_MS + ms,
            event,
        }
    }

    fn hello(dry_run: bool) -> Event {
        Event::Hello {
            source: if dry_run { "standalone" } else { "daemon" }.into(),
            guard_version: "0.3.0".into(),
            kernel: "6.12.9".into(),
            throttle_hooked: true,
            dry_run,
        }
    }

    /// A sample of `cgroup`: `current` MiB against `high` MiB, totals as
    /// given.
    fn sample(cgroup: &str, current: u64, high: u64, stall_total_ms: u64, passes: u64) -> Event {
        Event::Sample {
            cgroup_id: cgroup.len() as u64,
            cgroup: cgroup.into(),
            memory_current: current * MIB,
            memory_high: Some(high * MIB),
            memory_max: Some(2 * high * MIB),
            stall_total_ns: stall_total_ms * 1_000_000,
            passes,
            no_progress_passes: passes / 4,
            reclaimed_pages: passes * 12,
            psi_some_avg10: Some(31.5),
            psi_full_avg10: Some(12.5),
            worst_pid: 42,
            worst_comm: "grep".into(),
        }
    }

    /// An incident in /seed.slice as a standalone trace sees it.
    fn incident() -> View {
        let mut view = View::new();
        view.push(&at(0, hello(true)));
        view.push(&at(10, sample("/seed.slice", 48, 64, 1000, 100)));
        view.push(&at(1010, sample("/seed.slice", 48, 64, 1400, 140)));
        view.push(&at(
            1100,
            Event::Verdict {
                cgroup_id: 11,
                cgroup: "/seed.slice".into(),
                stall_ns: 300_000_000,
                window_ns: 1_000_000_000,
                budget_ns: 250_000_000,
                streak: 9,
                episode_start_ns: T0_MONO_NS,
                worst_pid: 42,
                worst_comm: "grep".into(),
            },
        ));
        view.push(&at(
            1101,
            Event::Kill {
                cgroup: "/seed.slice".into(),
                pid: 42,
                comm: "grep".into(),
                footprint_bytes: 40 * MIB,
                reason: "memory_high_stall".into(),
                mode: "process".into(),
                killed_cgroup: None,
                also_killed: 0,
                stall_ns: 300_000_000,
                latency_us: 900,
                memory_current: 48 * MIB,
                memory_high: Some(64 * MIB),
                dry_run: false,
                victims: vec![42],
                batch: 1,
            },
        ));
        view.push(&at(
            1500,
            Event::OomKill {
                pid: 77,
                comm: "dd".into(),
                cgroup: "/seed.slice".into(),
                trigger_pid: 77,
                trigger_comm: "dd".into(),
            },
        ));
        view.push(&at(
            1600,
            Event::Lost {
                what: "trace".into(),
                count: 7,
            },
        ));
        view
    }

    /// The terminal line holding `needle`.
    fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
        screen
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
    }

    fn type_keys(view: &mut View, keys: &str) {
        for c in keys.chars() {
            assert_eq!(view.key(KeyCode::Char(c)), Action::Continue);
        }
    }

    #[test]
    fn an_80x24_screen_shows_the_stalled_row_the_kill_and_the_lost_count() {
        let screen = render_to_string(&incident(), 80, 24);
        assert!(screen.contains("standalone, never kills"), "{screen}");
        assert!(screen.contains("throttle hooked"), "{screen}");
        let header = line_with(&screen, "verdicts ");
        assert!(header.contains("verdicts 1"), "{header}");
        assert!(header.contains("kills 1"), "{header}");
        assert!(header.contains("OOM kills 1"), "{header}");
        assert!(header.contains("lost 7"), "{header}");

        let row = line_with(&screen, "/seed.slice ");
        assert!(row.contains("400 ms/s"), "stall per second: {row}");
        assert!(row.contains("48/64 75%"), "memory vs high: {row}");
        assert!(row.contains("V1 K1 OOM1"), "incident marks: {row}");
        assert!(row.contains("12.0"), "pages per pass (480/40): {row}");
        assert!(row.contains("25%"), "no-progress share: {row}");

        let kill = line_with(&screen, "KILLED SIGKILL");
        assert!(kill.starts_with("12:34:57.890 "), "{kill}");
        assert!(kill.contains("grep[42] in /seed.slice"), "{kill}");
        assert!(screen.contains("KERNEL OOM KILL dd[77]"), "{screen}");
        assert!(screen.contains("LOST 7 trace records"), "{screen}");
        assert!(screen.contains("VERDICT /seed.slice"), "{screen}");
        // Newest first: the lost record above the kill.
        assert!(screen.find("LOST 7").expect("shown") < screen.find("KILLED").expect("shown"));
        assert!(line_with(&screen, "q quit").contains("/ filter"));
        assert_eq!(screen.lines().count(), 24);
    }

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
    fn a_wide_screen_adds_the_worst_task_psi_and_max() {
        let screen = render_to_string(&incident(), 120, 30);
        let row = line_with(&screen, "/seed.slice ");
        assert!(row.contains("grep[42]"), "worst task: {row}");
        assert!(row.contains("31.5/12.5"), "PSI some/full: {row}");
        assert!(row.contains(" 128 "), "memory.max MiB: {row}");
        assert!(row.contains("400 ms/s"), "{row}");
        assert!(
            screen.contains("mode process, 0.9 ms after the verdict"),
            "{screen}"
        );
    }

    #[test]
    fn a_long_cgroup_path_keeps_its_leaf_on_a_narrow_screen() {
        let mut view = View::new();
        let scope = "/user.slice/user-1000.slice/user@1000.service/app.slice/build-42.scope";
        view.push(&at(0, sample(scope, 10, 20, 0, 0)));
        let screen = render_to_string(&view, 80, 24);
        let row = line_with(&screen, "10/20 50%");
        assert!(row.starts_with('…'), "{row}");
        assert!(row.contains("build-42.scope 10/20"), "{row}");
        let wide = render_to_string(&view, 200, 30);
        assert!(wide.contains(scope), "{wide}");
    }

    #[test]
    fn a_daemon_that_kills_is_not_called_a_never_killer() {
        let mut view = View::new();
        view.push(&at(0, hello(false)));
        let screen = render_to_string(&view, 80, 24);
        assert!(screen.contains("daemon, kills"), "{screen}");
        assert!(!screen.contains("never kills"), "{screen}");
        assert!(
            line_with(&screen, "verdicts ").contains("lost 0"),
            "{screen}"
        );
    }

    #[test]
    fn pause_freezes_rows_and_events_but_not_the_counters() {
        let mut view = incident();
        assert_eq!(view.key(KeyCode::Char('p')), Action::Continue);
        view.push(&at(2010, sample("/seed.slice", 60, 64, 2200, 150)));
        view.push(&at(
            2020,
            Event::Error {
                message: "late trouble".into(),
            },
        ));
        let paused = render_to_string(&view, 80, 24);
        assert!(paused.contains("PAUSED"), "{paused}");
        assert!(
            line_with(&paused, "/seed.slice ").contains("400 ms/s"),
            "{paused}"
        );
        assert!(!paused.contains("800 ms/s"), "{paused}");
        assert!(!paused.contains("late trouble"), "{paused}");
        assert!(
            line_with(&paused, "verdicts ").contains("errors 1"),
            "{paused}"
        );

        view.key(KeyCode::Char('p'));
        let live = render_to_string(&view, 80, 24);
        assert!(!live.contains("PAUSED"), "{live}");
        let row = line_with(&live, "/seed.slice ");
        assert!(row.contains("800 ms/s"), "{row}");
        assert!(row.contains("60/64 94%"), "{row}");
        assert!(live.contains("error: late trouble"), "{live}");
    }

    #[test]
    fn a_filter_hides_other_cgroups_but_never_lost_records() {
        let mut view = incident();
        view.push(&at(1700, sample("/other.slice", 10, 20, 0, 0)));
        view.push(&at(
            1800,
            Event::CgroupCreated {
                cgroup_id: 9,
                cgroup: "/other.slice/x".into(),
            },
        ));
        let both = render_to_string(&view, 80, 24);
        assert!(both.contains("/other.slice "), "{both}");

        view.key(KeyCode::Char('/'));
        type_keys(&mut view, "seeq");
        view.key(KeyCode::Backspace);
        type_keys(&mut view, "d");
        let typing = render_to_string(&view, 80, 24);
        assert!(typing.contains("filter: seed"), "{typing}");
        assert!(
            typing.contains("/other.slice "),
            "not applied before Enter: {typing}"
        );

        view.key(KeyCode::Enter);
        let filtered = render_to_string(&view, 80, 24);
        assert!(!filtered.contains("/other.slice"), "{filtered}");
        assert!(filtered.contains("/seed.slice "), "{filtered}");
        assert!(filtered.contains("1 hidden"), "{filtered}");
        assert!(filtered.contains("LOST 7"), "{filtered}");

        view.key(KeyCode::Char('/'));
        type_keys(&mut view, "zzz");
        view.key(KeyCode::Esc);
        let cancelled = render_to_string(&view, 80, 24);
        assert!(
            cancelled.contains("/seed.slice "),
            "Esc keeps the old filter: {cancelled}"
        );
        assert!(!cancelled.contains("/other.slice"), "{cancelled}");

        view.key(KeyCode::Char('/'));
        for _ in 0..4 {
            view.key(KeyCode::Backspace);
        }
        view.key(KeyCode::Enter);
        let cleared = render_to_string(&view, 80, 24);
        assert!(cleared.contains("/other.slice "), "{cleared}");
    }

    #[test]
    fn s_cycles_the_order_stall_then_memory_then_name() {
        let mut view = View::new();
        // a: 100 ms/s at 50%, b: 400 ms/s at 25%, c: 0 ms/s at 90%.
        for (name, pct, stall) in [
            ("/a.slice", 50, 100),
            ("/b.slice", 25, 400),
            ("/c.slice", 90, 0),
        ] {
            view.push(&at(0, sample(name, pct, 100, 1000, 10)));
            view.push(&at(1000, sample(name, pct, 100, 1000 + stall, 20)));
        }
        let order = |view: &View| {
            let screen = render_to_string(view, 80, 24);
            let mut names = ["/a.slice", "/b.slice", "/c.slice"];
            names.sort_by_key(|n| screen.find(n).expect("row shown"));
            names.map(|n| &n[1..2]).concat()
        };
        assert_eq!(order(&view), "bac", "biggest staller first");
        view.key(KeyCode::Char('s'));
        assert_eq!(order(&view), "cab", "fullest against memory.high first");
        assert!(render_to_string(&view, 80, 24).contains("sorted by memory % of high"));
        view.key(KeyCode::Char('s'));
        assert_eq!(order(&view), "abc", "by name");
        view.key(KeyCode::Char('s'));
        assert_eq!(order(&view), "bac", "and around again");
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
    fn q_and_esc_quit_but_not_while_typing_and_esc_closes_help_first() {
        let mut view = View::new();
        assert_eq!(view.key(KeyCode::Char('q')), Action::Quit);
        assert_eq!(view.key(KeyCode::Esc), Action::Quit);

        view.key(KeyCode::Char('/'));
        assert_eq!(
            view.key(KeyCode::Char('q')),
            Action::Continue,
            "q is a letter here"
        );
        view.key(KeyCode::Esc);

        view.key(KeyCode::Char('?'));
        let help = render_to_string(&view, 80, 24);
        assert!(help.contains("pause rows and events"), "{help}");
        assert_eq!(view.key(KeyCode::Esc), Action::Continue);
        assert!(!render_to_string(&view, 80, 24).contains("pause rows and events"));
        assert_eq!(view.key(KeyCode::Char('q')), Action::Quit);
    }

    #[test]
    fn a_closed_source_says_so() {
        let mut view = incident();
        view.source_closed();
        let screen = render_to_string(&view, 80, 24);
        assert!(screen.contains("SOURCE CLOSED"), "{screen}");
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
