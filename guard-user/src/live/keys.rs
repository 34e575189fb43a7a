//! What each key does to the live view.

use ratatui::crossterm::event::KeyCode;

use super::View;

/// What the caller should do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Quit,
}

impl View {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::live::fixtures::*;
    use crate::live::render_to_string;

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
}
