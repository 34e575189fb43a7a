//! Drawing the view: the layout, the header, the events pane, the footer
//! and the help. Pure: it reads the [`View`] and writes into a frame.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use super::View;
use super::model::{EventLine, Shown, Source, Tone};
use crate::terminal::printable;

const FILTER_PROMPT: &str = "filter: ";

impl Tone {
    pub(super) fn style(self) -> Style {
        match self {
            Tone::Info => Style::new().fg(Color::Cyan),
            Tone::Quiet => Style::new().fg(Color::DarkGray),
            Tone::Warn => Style::new().fg(Color::Yellow),
            Tone::Alarm => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            Tone::Lost => Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD),
        }
    }
}

impl View {
    /// Draws the whole view into the frame.
    pub fn render(&self, frame: &mut Frame) {
        let area = frame.area();
        let shown = self.shown();
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

    fn header(&self) -> Paragraph<'static> {
        Paragraph::new(vec![self.status_line(), self.counts_line()])
    }

    /// The first header line: the view's state and who is talking.
    fn status_line(&self) -> Line<'static> {
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
            Some(src) => first.extend(source_spans(src)),
        }
        Line::from(first)
    }

    /// The second header line: the counters.
    fn counts_line(&self) -> Line<'static> {
        let c = &self.counts;
        let count_style = |n: u64, alarm: Style| if n > 0 { alarm } else { Style::new() };
        let red = Tone::Alarm.style();
        // Incidents and losses first: on a narrow terminal the line is cut
        // at the right, and those must stay in view.
        let sep = || Span::raw("  ");
        let mut second = vec![
            Span::styled(
                format!("verdicts {}", c.verdicts),
                count_style(c.verdicts, Tone::Warn.style()),
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
                Tone::Warn.style(),
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
        Line::from(second)
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
                Tone::Quiet.style(),
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
                    Tone::Quiet.style(),
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

/// Who is talking, whether it kills, and on what. Least needed last, where
/// a narrow terminal cuts.
fn source_spans(src: &Source) -> [Span<'static>; 4] {
    let who = if src.dry_run {
        format!("{}, never kills", src.source)
    } else {
        format!("{}, kills", src.source)
    };
    let throttle = if src.throttle_hooked {
        Span::raw("hooked")
    } else {
        Span::styled("not hooked (tracepoints only)", Tone::Warn.style())
    };
    [
        Span::styled(who, Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(" │ throttle "),
        throttle,
        Span::raw(format!(
            " │ kernel {} │ guard {}",
            printable(&src.kernel),
            printable(&src.guard_version)
        )),
    ]
}

fn event_line(event: &EventLine) -> Line<'_> {
    // The text starts with the ASCII `HH:MM:SS.mmm ` stamp; dim it so the
    // eye lands on what happened.
    let (time, what) = event.text.split_at(event.text.len().min(13));
    Line::from(vec![
        Span::styled(time, Tone::Quiet.style()),
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
    use crate::live::fixtures::*;

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
    fn a_closed_source_says_so() {
        let mut view = incident();
        view.source_closed();
        let screen = render_to_string(&view, 80, 24);
        assert!(screen.contains("SOURCE CLOSED"), "{screen}");
    }
}
