//! The cgroups table: which rows show in which order, which columns fit,
//! and what each cell says.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Borders, Cell, Row, Table};

use super::View;
use super::model::{CgroupRow, SamplePoint, Shown, Tone};
use crate::terminal::printable;

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
    pub(super) fn next(self) -> Self {
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

impl View {
    /// The rows left by the filter, in the chosen order.
    pub(super) fn visible_rows<'a>(&self, shown: &'a Shown) -> Vec<(&'a str, &'a CgroupRow)> {
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

    pub(super) fn render_table(
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

    /// The cell of this column for one row; `-` where there is nothing to
    /// say yet.
    fn cell(self, name: &str, name_width: usize, row: &CgroupRow) -> Cell<'static> {
        let last = row.last.as_ref();
        let cell = match self {
            Column::Cgroup => Some(name_cell(name, name_width, row.gone)),
            Column::Memory => last.map(|s| memory_cell(s, row.percent_of_high())),
            Column::Max => last.map(|s| Cell::from(s.memory_max.map_or("max".to_owned(), mib))),
            Column::Stall => row.stall_ms_per_s().map(stall_cell),
            Column::PagesPerPass => row
                .reclaim_efficiency()
                .map(|(pages, _)| Cell::from(format!("{pages:.1}"))),
            Column::NoProgress => row
                .reclaim_efficiency()
                .map(|(_, stuck)| Cell::from(format!("{:.0}%", stuck * 100.0))),
            Column::Psi => last.map(psi_cell),
            Column::Worst => last
                .filter(|s| s.worst_pid != 0)
                .map(|s| Cell::from(format!("{}[{}]", printable(&s.worst_comm), s.worst_pid))),
            Column::Incidents => Some(incidents_cell(row)),
        };
        cell.unwrap_or_else(|| Cell::from("-"))
    }
}

fn name_cell(name: &str, width: usize, gone: bool) -> Cell<'static> {
    let name = printable(name);
    if gone {
        Cell::from(keep_tail(&format!("{name} (gone)"), width))
    } else {
        Cell::from(keep_tail(&name, width))
    }
}

fn memory_cell(s: &SamplePoint, percent_of_high: Option<f64>) -> Cell<'static> {
    let text = match (s.memory_high, percent_of_high) {
        (Some(high), Some(pct)) => format!("{}/{} {pct:.0}%", mib(s.memory_current), mib(high)),
        _ => format!("{}/max", mib(s.memory_current)),
    };
    let over = percent_of_high.is_some_and(|p| p >= 100.0);
    Cell::from(text).style(warn_if(over))
}

fn stall_cell(ms: f64) -> Cell<'static> {
    Cell::from(format!("{ms:.0} ms/s")).style(warn_if(ms >= 1.0))
}

fn psi_cell(s: &SamplePoint) -> Cell<'static> {
    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    Cell::from(format!(
        "{}/{}",
        pct(s.psi_some_avg10),
        pct(s.psi_full_avg10)
    ))
}

/// `V1 K1 OOM1 U1 L1`: counts of what happened to the cgroup, red once
/// something was killed in it or kills were stopped.
fn incidents_cell(row: &CgroupRow) -> Cell<'static> {
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
        Tone::Alarm.style()
    } else {
        Tone::Warn.style()
    };
    Cell::from(parts.join(" ")).style(style)
}

fn warn_if(warn: bool) -> Style {
    if warn {
        Tone::Warn.style()
    } else {
        Style::new()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::live::fixtures::*;
    use crate::live::render_to_string;
    use ratatui::crossterm::event::KeyCode;

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
    fn hostile_cgroup_and_task_names_are_shown_escaped() {
        let mut view = View::new();
        let mut event = sample("/evil\u{1b}[2J.scope", 10, 20, 0, 0);
        if let Event::Sample { worst_comm, .. } = &mut event {
            *worst_comm = "\u{1b}]0;x\u{7}hog".into();
        }
        view.push(&at(0, event));
        let screen = render_to_string(&view, 200, 30);
        let row = line_with(&screen, "10/20 50%");
        assert!(row.contains("/evil\\x1b[2J.scope"), "{row}");
        assert!(row.contains("\\x1b]0;x\\x07hog"), "{row}");
        assert!(
            !screen.chars().any(|c| c.is_control() && c != '\n'),
            "{screen:?}"
        );
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
}
