//! guard's user-space half, laid out along its data path:
//!
//! - leaf types: `clock`, `events` (the stream's schema);
//! - what the admin asked for: `config` (the policy file), `policy` (who
//!   may be killed);
//! - the machine's files as plain data: `cgroup`, `procfs`;
//! - `kernel`: the eBPF programs loaded and their rings read as one stream
//!   of messages;
//! - `decision`: from a verdict to dead hogs (confirm, gather, judge, kill,
//!   the books);
//! - `daemon`: set-up, then one handler per message kind;
//! - outputs and readers of the events: `observe` (kernel records as
//!   events), `stream` (socket and event log), `metrics`, `source` and
//!   `live` (the view of `guard trace`), `report`.

pub mod cgroup;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod decision;
pub mod events;
pub mod kernel;
pub mod live;
pub mod metrics;
pub mod observe;
pub mod owner;
pub mod paths;
pub mod policy;
pub mod procfs;
pub mod report;
pub mod source;
pub mod status;
pub mod stream;
pub mod terminal;
