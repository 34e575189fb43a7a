//! The terminal half of `guard trace`'s live view: raw mode, the alternate
//! screen, keys and redraws around the pure [`View`].
//!
//! The terminal is given back on every way out: quit, an error (the
//! [`TerminalGuard`] drops), a signal (SIGTERM, SIGHUP, SIGINT end the loop
//! like `q`) and a panic (a hook restores it before the previous hook
//! prints; the release profile aborts on panic, so no destructor would
//! run). When the record source closes, the last picture stays on screen
//! with "SOURCE CLOSED" in the header until `q`, so the final kill can
//! still be read.

use std::io::{self, IsTerminal, Stdout};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self as term_event, Event as TermEvent, KeyEvent};
use ratatui::crossterm::event::{KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::crossterm::{cursor, execute};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::{Action, View};
use crate::events::Record;

/// At most ten redraws a second while records stream in: faster is
/// unreadable and costs the CPU a stalled machine needs.
const MIN_REDRAW_GAP: Duration = Duration::from_millis(100);

/// Records taken in one go before looking at keys again, so a flood of
/// passes cannot make `q` wait.
const DRAIN_BATCH: usize = 4096;

/// Whether this process has the terminal in raw mode on the alternate
/// screen. Restoring only when set keeps a late panic from writing escape
/// codes into a pipe, and makes restoring twice harmless.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// Shows the live view until `q`, Esc, Ctrl-C or a signal.
pub async fn run(mut rx: mpsc::Receiver<Record>) -> anyhow::Result<()> {
    if !io::stdout().is_terminal() {
        anyhow::bail!(
            "the live view needs a terminal on stdout; use --lines or --json to pipe records"
        );
    }
    // Signals are registered before the terminal is taken: a failure here
    // leaves nothing to restore.
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let _guard = TerminalGuard::take()?;
    let mut terminal =
        Terminal::new(CrosstermBackend::new(io::stdout())).context("cannot use the terminal")?;
    terminal.clear().context("cannot clear the terminal")?;

    let (input_tx, mut input_rx) = mpsc::channel(64);
    spawn_input_reader(input_tx).context("cannot start the keyboard reader")?;

    let mut view = View::new();
    draw(&mut terminal, &view)?;
    let mut pacer = RedrawPacer::new(MIN_REDRAW_GAP, Instant::now());
    let mut source_open = true;

    loop {
        let deadline = pacer.deadline();
        let mut redraw_now = false;
        tokio::select! {
            rec = rx.recv(), if source_open => match rec {
                Some(rec) => {
                    view.push(&rec);
                    for _ in 0..DRAIN_BATCH {
                        match rx.try_recv() {
                            Ok(rec) => view.push(&rec),
                            Err(_) => break,
                        }
                    }
                    pacer.changed();
                }
                None => {
                    source_open = false;
                    view.source_closed();
                    redraw_now = true;
                }
            },
            input = input_rx.recv() => match input {
                Some(Ok(TermEvent::Key(key))) => {
                    if handle_key(&mut view, key) == Action::Quit {
                        break;
                    }
                    redraw_now = true;
                }
                // Resize (the only other event forwarded): draw() adapts.
                Some(Ok(_)) => redraw_now = true,
                Some(Err(e)) => return Err(e).context("cannot read the keyboard"),
                None => anyhow::bail!("the keyboard reader stopped"),
            },
            () = sleep_until(deadline), if deadline.is_some() => redraw_now = true,
            _ = terminate.recv() => break,
            _ = hangup.recv() => break,
            _ = interrupt.recv() => break,
        }
        if redraw_now {
            draw(&mut terminal, &view)?;
            pacer.drawn(Instant::now());
        }
    }
    Ok(())
}

fn draw(terminal: &mut Terminal<CrosstermBackend<Stdout>>, view: &View) -> anyhow::Result<()> {
    // A panic in another task (caught by tokio where panics unwind) has
    // already given the terminal back; drawing on would scribble over the
    // panic message in cooked mode.
    if !TERMINAL_TAKEN.load(Ordering::SeqCst) {
        anyhow::bail!("a panic ended the live view; its message is above");
    }
    terminal
        .draw(|frame| view.render(frame))
        .context("cannot draw the live view")?;
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

/// Ctrl-C is read as a key in raw mode (no SIGINT arrives), and it must
/// quit even while a filter is being typed.
fn handle_key(view: &mut View, key: KeyEvent) -> Action {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    view.key(key.code)
}

/// Reads terminal events on a thread of its own, because crossterm's
/// `read` blocks; forwarding them over a channel lets the async loop wait
/// on records and keys alike without polling. The thread ends when the
/// loop is gone and the next event arrives, or on a read error (which it
/// forwards). It is not joined: it may sit in `read` until the process
/// exits, which is harmless as `run` returns just before that.
fn spawn_input_reader(tx: mpsc::Sender<io::Result<TermEvent>>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("trace-keys".into())
        .spawn(move || {
            loop {
                let event = term_event::read();
                let forward = match &event {
                    Ok(TermEvent::Key(key)) => key.kind != KeyEventKind::Release,
                    Ok(TermEvent::Resize(..)) => true,
                    Ok(_) => false,
                    Err(_) => true,
                };
                let failed = event.is_err();
                if (forward && tx.blocking_send(event).is_err()) || failed {
                    break;
                }
            }
        })?;
    Ok(())
}

/// Owns raw mode and the alternate screen; dropping it gives the terminal
/// back, so every `?` in [`run`] restores it.
struct TerminalGuard;

impl TerminalGuard {
    fn take() -> anyhow::Result<Self> {
        install_panic_hook();
        terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        TERMINAL_TAKEN.store(true, Ordering::SeqCst);
        // From here on the guard exists, so a failure below restores raw
        // mode too.
        let guard = TerminalGuard;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)
            .context("cannot switch to the alternate screen")?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, Ordering::SeqCst) {
        // Best effort: there is nowhere left to report a failure to, and
        // each step should be tried even if another failed.
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// Chains a hook that gives the terminal back before the previous hook
/// prints the panic, so the message lands on a sane screen. Installed
/// once per process however often `run` is called.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// Decides when to redraw: at once on keys (the caller does that), and for
/// records no sooner than `gap` after the last draw. No change, no
/// deadline: an idle view does not wake up.
#[derive(Debug)]
struct RedrawPacer {
    gap: Duration,
    last_draw: Instant,
    pending: bool,
}

impl RedrawPacer {
    fn new(gap: Duration, drawn_at: Instant) -> Self {
        Self {
            gap,
            last_draw: drawn_at,
            pending: false,
        }
    }

    fn changed(&mut self) {
        self.pending = true;
    }

    fn drawn(&mut self, at: Instant) {
        self.last_draw = at;
        self.pending = false;
    }

    fn deadline(&self) -> Option<Instant> {
        self.pending.then(|| self.last_draw + self.gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_redraw_at_most_every_gap_and_an_idle_view_never_wakes() {
        let t0 = Instant::now();
        let mut pacer = RedrawPacer::new(MIN_REDRAW_GAP, t0);
        assert_eq!(pacer.deadline(), None, "nothing changed, nothing to draw");
        pacer.changed();
        pacer.changed();
        assert_eq!(pacer.deadline(), Some(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        pacer.drawn(t1);
        assert_eq!(pacer.deadline(), None);
        pacer.changed();
        assert_eq!(pacer.deadline(), Some(t1 + Duration::from_millis(100)));
    }

    #[test]
    fn ctrl_c_quits_even_while_typing_a_filter() {
        let mut view = View::new();
        assert_eq!(view.key(KeyCode::Char('/')), Action::Continue);
        let plain_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::NONE);
        assert_eq!(handle_key(&mut view, plain_c), Action::Continue);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(handle_key(&mut view, ctrl_c), Action::Quit);
    }
}
