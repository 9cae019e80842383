//! The sample VNF: a minimal SIP registrar over UDP with a durable journal,
//! plus an HTTP endpoint that reports its state. It is the workload of
//! standby's demo and tests, so its durability is exact: a REGISTER is
//! answered `200 OK` only after its binding is on disk (`pwrite` +
//! `fdatasync`), and every acknowledged binding survives `kill -9`, a copy
//! of the disk image taken mid-run, or a restore of such a copy.
//!
//! # Layout
//!
//! - [`journal`]: the on-disk format, an append-only log of checksummed
//!   records inside a raw disk image (header block, then records; replay
//!   stops at the first invalid record, so a torn tail is ignored).
//! - [`sip`]: the SIP subset: a lenient parser and the response builder.
//! - [`registrar`]: bindings rebuilt from the journal and the handling of
//!   one request (OPTIONS → 200, REGISTER → persist then 200, other → 405,
//!   garbage → ignored or 400).
//! - [`server`]: [`Vnf`], the running service: UDP loop, HTTP (`/state`,
//!   `/health`), graceful shutdown that finishes in-flight writes.
//! - [`client`]: real-packet helpers for probes, demos and tests
//!   ([`client::options`], [`client::register`], [`client::state`]).
//!
//! `docs/vnf.md` describes the record format and the protocol subset.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod client;
pub mod journal;
pub mod registrar;
pub mod server;
pub mod sip;

pub use client::ClientError;
pub use server::{Config, Vnf};

/// One registered contact of an address of record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Binding {
    /// Address of record: the URI of the REGISTER's To header.
    pub aor: String,
    /// Contact URI (without `<>` or parameters).
    pub contact: String,
    /// Seconds, as requested. Expiry is recorded, not enforced: the state
    /// lists every binding that was acknowledged and not unregistered.
    pub expires: u32,
    /// Unix time in milliseconds when the REGISTER was accepted.
    pub registered_at: u64,
    /// Journal sequence number of the record that created it.
    pub seq: u64,
}

/// `GET /state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnfState {
    pub name: String,
    /// Current bindings, oldest record first.
    pub bindings: Vec<Binding>,
    /// Records written by this process.
    pub writes: u64,
    /// Records replayed at start plus records written.
    pub records: u64,
    /// Sequence number of the last record in the journal (0 = empty).
    pub last_seq: u64,
}

impl VnfState {
    /// Whether `aor` has a binding to `contact`.
    pub fn has_binding(&self, aor: &str, contact: &str) -> bool {
        self.bindings
            .iter()
            .any(|b| b.aor == aor && b.contact == contact)
    }
}

/// Errors of the VNF service and its journal.
#[derive(Debug, thiserror::Error)]
pub enum VnfError {
    #[error("unable to {action} disk image {}", path.display())]
    Disk {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {} is too small: {size} bytes, need at least {min}", path.display())]
    DiskTooSmall { path: PathBuf, size: u64, min: u64 },
    #[error("disk image {} holds something else than a standby-vnf journal", path.display())]
    NotAJournal { path: PathBuf },
    #[error("disk image {} is full: record needs {needed} bytes, {free} free", path.display())]
    DiskFull {
        path: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("record of {len} bytes exceeds the journal limit")]
    RecordTooLarge { len: usize },
    #[error("journal record {seq} has a valid checksum but an unreadable payload")]
    BadRecord {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("unable to bind the {what} socket to {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Task(String),
}

impl VnfError {
    /// Whether retrying can succeed without operator action.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            VnfError::Disk { .. } | VnfError::Bind { .. } | VnfError::Task(_)
        )
    }
}
