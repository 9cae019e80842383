//! standby's hosts: what runs VMs and moves their disk data.
//!
//! # Layout
//! - [`host`]: [`Agent`], one hypervisor host as the controller sees it
//!   (disk paths, VM specs computed from the configuration), and the
//!   [`Host`] trait (`ops`) of its operations: status, start, shutdown,
//!   stop, provisioning, points, restores, fence and unfence, drills.
//! - [`local`]: [`LocalHost`], a driver in this process (the embedded
//!   default), and the one implementation of the data path
//!   ([`local::take_point`], [`local::restore_point`], the latter in
//!   `restore`) that the agent daemon runs as well.
//! - [`remote`]: [`RemoteHost`], a `standby agent` reached over JSON/HTTP
//!   under `/agent/v1`.
//! - [`daemon`]: the `standby agent` process: heartbeats and probe
//!   results to the controller, and with a data dir the host side of
//!   `/agent/v1` (its driver, its fence flag, its open datastores).
//! - [`drill`]: the host side of DR drills (a copy restored and booted in
//!   a namespace of its own, probed from inside, torn down verified).
//! - [`policy`]: what a remote agent agrees to run (its own
//!   `allowed_commands`, its disk directory, no loader environment).
//! - [`wire`]: the messages of `/agent/v1` and of heartbeats.
//! - [`stores`]: opening the configured datastores (directory, Azure Blob,
//!   S3; encrypted or not) at whichever side writes them.
//! - [`creds`]: this process's credentials toward the others: mutual TLS
//!   with one certificate per role (`[pki]`), or a lab's shared token.
//! - [`fresh`]: no replay: each call between standby's processes names
//!   the receiver's session and a counter taken once.
//! - [`progress`]: the [`Progress`] a point or restore reports to.
//! - `seen`: what a remote host last said of its VMs, for views that may
//!   be a moment old ([`Agent::recent_status`]); never for a decision.
//!
//! # Invariants
//! - Nothing outside this crate asks whether a host is local or remote:
//!   both implement [`Host`] with the same meaning.
//! - The disk data of a point or restore moves between the host's disks
//!   and the datastore at the host's side: a remote agent opens the
//!   datastore itself from the configuration it is sent.
//! - A restore writes all disks of the VM or none (each beside its final
//!   name, renamed into place once every one is complete).
//! - A remote agent runs only what its own configuration allows
//!   ([`policy`]): a stolen controller credential cannot make it run an
//!   arbitrary program or write outside its disk directory.
//! - A fenced agent stops every VM it runs and refuses starts until told
//!   otherwise; the flag survives a restart of the agent.

pub mod access;
pub mod creds;
pub mod daemon;
pub mod drill;
pub mod epoch;
mod error;
pub mod fresh;
pub mod host;
pub mod limit;
pub mod local;
mod onto;
mod ops;
pub mod policy;
mod progress;
pub mod remote;
mod restore;
mod seen;
pub mod selffence;
pub mod stores;
pub mod templates;
pub mod transfer;
pub mod wire;

pub use access::{StoreHandle, copy_point};
pub use drill::DrillRequest;
pub use error::AgentError;
pub use host::Agent;
pub use local::LocalHost;
pub use ops::{Host, PointRequest, StoreRef};
pub use progress::{Progress, Quiet};
pub use remote::RemoteHost;
pub use templates::copy_template;
pub use wire::{FencedVm, Heartbeat, HeartbeatReply, Onto, PointStats, RestoreDone};
