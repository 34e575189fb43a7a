//! guard's user-space half, one module per stage of the data path:
//! `probes` (kernel programs and maps) -> `daemon` (event loop) ->
//! `respond` (confirm, choose, kill) using `cgroup`, `procfs`, `policy` and
//! `kill`.

pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod events;
pub mod kill;
pub mod policy;
pub mod probes;
pub mod procfs;
pub mod respond;
