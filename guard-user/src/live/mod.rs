//! The live view of `guard trace`: what a person watches while a cgroup is
//! stuck on memory.high.
//!
//! [`View`] is pure state: it is fed [`Record`](crate::events::Record)s and
//! keys and draws itself into a ratatui frame, but never touches a
//! terminal, a clock or a socket, so every behaviour a person sees can be
//! tested by rendering into a `TestBackend` ([`render_to_string`]). The
//! terminal itself is [`run`]'s job.
//!
//! Layout, top to bottom: a two-line header (who is talking, counters), a
//! table with one row per sampled cgroup, a pane of recent events (newest
//! first) and a footer with the keys.

#[cfg(test)]
mod fixtures;
mod keys;
mod model;
mod render;
mod table;
mod tui;

pub use keys::Action;
pub use model::View;
pub use render::render_to_string;
pub use table::SortBy;
pub use tui::run;
