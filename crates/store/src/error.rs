//! The one error type of the crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in a datastore.
///
/// Messages say what failed and on what; the source is never repeated in
/// the message. [`StoreError::is_temporary`] tells whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unable to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An object-store request that failed after the retries; `temporary`
    /// when the service was unreachable or overloaded.
    #[error("unable to {action} {path}{}", if *temporary { " (temporary failure; retrying later can help)" } else { "" })]
    Remote {
        action: &'static str,
        path: PathBuf,
        temporary: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid object store {location}: {reason}")]
    Config { location: String, reason: String },
    #[error("{path} is not a standby datastore")]
    NotADatastore { path: PathBuf },
    /// A marker of another format: `format` newer than `supported` was
    /// written by a newer standby (this one must not touch it); an older
    /// one predates every release that could read it.
    #[error("unsupported datastore format {format} at {path}: this standby reads format {supported}{}", if format > supported { ", a newer standby wrote it" } else { "" })]
    UnsupportedFormat {
        path: PathBuf,
        format: u64,
        supported: u64,
    },
    /// An unencrypted store of format 1: its points carry no MAC, so none
    /// of them can be told from a planted one until it is upgraded.
    #[error(
        "datastore {location} predates authenticated points (format 1, standby 0.1): run `standby store upgrade DATASTORE` once, then use it"
    )]
    NotUpgraded { location: PathBuf },
    #[error("unusable store key for datastore {location}: {reason}")]
    StoreKey { location: PathBuf, reason: String },
    /// A point writer's chunks are in a pack gc deleted while it wrote
    /// (its lease was lost): the point is not committed.
    #[error("point {point} not committed in datastore {root}: {reason}; write it again")]
    PointRobbed {
        point: String,
        root: PathBuf,
        reason: String,
    },
    #[error("wrong key for datastore {location}: no key object opens with it")]
    WrongKey { location: PathBuf },
    #[error("datastore {location} is encrypted: open it with its key file or passphrase")]
    KeyRequired { location: PathBuf },
    #[error("datastore {location} is not encrypted: it takes no key")]
    NotEncrypted { location: PathBuf },
    #[error("unusable key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("unable to derive a key from the passphrase: {0}")]
    Kdf(String),
    #[error("invalid chunk size {0}: must be a power of two from 64 KiB to 4 MiB")]
    InvalidChunkSize(u32),
    #[error("invalid pack size {0}: must be from 16 MiB to 64 MiB")]
    InvalidPackSize(usize),
    #[error("invalid vm name '{0}': use letters, digits, '_' and '-'")]
    InvalidVmName(String),
    #[error("invalid point id '{0}': expected <vm>@<YYYYMMDDTHHMMSS.mmmZ>")]
    InvalidPointId(String),
    #[error("invalid disk name '{0}': use letters, digits, '_', '-' and '.'")]
    InvalidDiskName(String),
    #[error("point {0} not found in datastore {1}")]
    PointNotFound(String, PathBuf),
    #[error("invalid template name '{0}': use letters, digits, '_' and '-'")]
    InvalidTemplateName(String),
    #[error("template {0} not found in datastore {1}")]
    TemplateNotFound(String, PathBuf),
    #[error("template {0} already exists in datastore {1}")]
    TemplateExists(String, PathBuf),
    #[error("unable to read template {path}: {reason}")]
    BadTemplate { path: PathBuf, reason: String },
    #[error("unable to copy template {name}: {reason}")]
    TemplateCopy { name: String, reason: String },
    #[error("point {0} has disks written already; it cannot be restamped")]
    PointStarted(String),
    #[error("point {0} already exists in datastore {1}")]
    PointExists(String, PathBuf),
    #[error("disk '{disk}' not found in point {point}")]
    DiskNotFound { point: String, disk: String },
    #[error("disk '{disk}' written twice in point {point}")]
    DuplicateDisk { point: String, disk: String },
    #[error("base point {base} is not usable for point {point}: {reason}")]
    InvalidBase {
        point: String,
        base: String,
        reason: String,
    },
    #[error(
        "disk '{disk}' of {size} bytes in {chunks} chunks is past the limit of a point ({limit})"
    )]
    DiskTooLarge {
        disk: String,
        size: u64,
        chunks: u64,
        limit: &'static str,
    },
    #[error("dirty range {start}..{end} is invalid for disk '{disk}'")]
    InvalidDirtyRange { disk: String, start: u64, end: u64 },
    #[error("unable to read manifest {path}: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    #[error("chunk {chunk} not found in datastore {root}")]
    ChunkNotFound { chunk: String, root: PathBuf },
    #[error("corrupt {object} in datastore {root}: {reason}")]
    Corrupt {
        object: String,
        root: PathBuf,
        reason: String,
    },
    #[error("unable to restore disk '{disk}' of point {point}")]
    Restore {
        point: String,
        disk: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("unable to read disk '{disk}' of point {point}")]
    ReadPoint {
        point: String,
        disk: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("datastore {0} is locked by {1}")]
    Locked(PathBuf, &'static str),
    #[error("source disk {path} changed size while reading")]
    SourceChanged { path: PathBuf },
    #[error("unable to encode {what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// True when the same call may succeed later without anyone repairing
    /// the datastore (a lock held by someone else, a transient I/O error).
    pub fn is_temporary(&self) -> bool {
        match self {
            StoreError::Locked(..) | StoreError::PointRobbed { .. } => true,
            StoreError::Remote { temporary, .. } => *temporary,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::ResourceBusy
            ),
            StoreError::Restore { source, .. } | StoreError::ReadPoint { source, .. } => {
                source.is_temporary()
            }
            _ => false,
        }
    }

    /// True when the error is an I/O "not found".
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}
