//! Renders what `guard trace` would show after a recorded stream, as text:
//! how the README's capture of the live view is made from a real run.
//!
//! cargo run --example render_view -- FILE [WIDTH HEIGHT [UNTIL_TYPE]]
//!
//! With UNTIL_TYPE (e.g. `kill`), the screen as it was right after the
//! first record of that type.

use guard::{events::Record, live};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        anyhow::bail!("usage: render_view FILE [WIDTH HEIGHT [UNTIL_TYPE]]");
    };
    let width = args.next().map(|w| w.parse()).transpose()?.unwrap_or(100);
    let height = args.next().map(|h| h.parse()).transpose()?.unwrap_or(30);
    let until = args.next();
    let mut view = live::View::new();
    for line in std::fs::read_to_string(&path)?.lines() {
        let record = Record::from_line(line)?;
        view.push(&record);
        if until.as_deref() == Some(record.event.kind()) {
            break;
        }
    }
    print!("{}", live::render_to_string(&view, width, height));
    Ok(())
}
