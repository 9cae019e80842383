//! Shared domain and API types of standby.
//!
//! Everything that crosses a crate or process boundary lives here: typed
//! names, the `standby.toml` configuration ([`config`]), retention policies
//! and the records the API returns ([`model`], the monthly DR report in
//! [`report`]), and the payloads of others'
//! systems standby reads ([`alertmanager`], ETSI NFV's in [`nfv`]). Nothing here does I/O beyond
//! reading a configuration file.

pub mod alertmanager;
pub mod api;
mod chain;
pub mod config;
pub mod model;
pub mod nfv;
pub mod outcome;
pub mod report;
mod retention;
pub mod watch;

pub use chain::error_chain;
pub use retention::Retention;
