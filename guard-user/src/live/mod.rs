//! The live view of `guard trace`: the pure view and its terminal driver.

mod tui;
mod view;

pub use tui::run;
pub use view::{Action, SortBy, View, render_to_string};
