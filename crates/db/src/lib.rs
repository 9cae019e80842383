//! Control-plane state of standby: inventory, schedules, the recovery-point
//! catalog and jobs.
//!
//! Callers use the [`Repo`] trait; [`SqlRepo`] implements it on SQLite (the
//! embedded default: one file in the controller's data directory) and on
//! PostgreSQL (shared by controller replicas), with one copy of the SQL
//! through sqlx's `Any` driver. The schema lives in `migrations/sqlite/`
//! and `migrations/postgres/` (the same versions, each in its dialect) and
//! is applied on open.
//!
//! # Tables
//!
//! - `sites`, `hosts`, `vms`, `disks`, `groups` (+ `group_members`,
//!   `group_datastores`): the inventory, a copy of `standby.toml` made by
//!   [`Repo::apply_config`], plus runtime state the file doesn't hold: a
//!   VM's `active_site`/`active_host` and a group's
//!   `next_run`/`last_run`/`last_status`.
//! - `points` + `point_copies`: the catalog of recovery points and the
//!   datastores holding a complete copy, in the order they got it.
//! - `jobs`: long work and its progress, ids increasing and never reused.
//! - `fences`: fenced sites, with when and why ([`Repo::fence`]).
//! - `events`, `alerts`, `silences`, `incidents` + `incident_timeline`,
//!   `deliveries`: the watch side ([`WatchRepo`]). Labels are JSON text
//!   matched after reading, so the SQL stays portable; an alert row is one
//!   firing (a fingerprint firing again gets a new row); a delivery keeps
//!   its payload until `delivered` or `failed`.
//! - `services`: the site each front-door service sends its clients to
//!   ([`ServiceRepo`]).
//! - `users`, `api_tokens`, `sessions`: who may call ([`AuthRepo`]);
//!   hashes only, never a secret.
//! - `runbook_runs`, `runbook_steps`, `runbook_locks`: runbook jobs
//!   ([`RunbookRepo`]): what a restart needs to resume them, one row per
//!   step execution, one lock per rendered key.
//!
//! # Invariants
//!
//! - Applying the configuration deletes what it no longer names, but never
//!   points or jobs: they describe data and history, not configuration.
//! - Runtime state survives re-applying the configuration. A VM whose active
//!   host is no longer configured moves back to its home; a group whose
//!   schedule text changed loses its `next_run` (the scheduler recomputes
//!   it).
//! - A point exists only while at least one copy does, except between
//!   [`Repo::insert_point`] with no copies and the first
//!   [`Repo::add_point_copy`].
//! - Every job that is not finished when the controller starts was
//!   interrupted ([`Repo::fail_interrupted_jobs`]), except runbook jobs:
//!   they resume.
//! - Ordered lists (disks, members, datastores, copies) keep their order
//!   through an explicit `position` column.
//!
//! # Storage
//!
//! Timestamps are RFC 3339 UTC text with nine fractional digits, so text
//! order is time order (PostgreSQL's text columns are `COLLATE "C"`, so
//! names and times sort byte by byte there too); `u64` values are stored as
//! `BIGINT` (`i64`) and refused beyond `i64::MAX`. SQL is portable (`$1`
//! parameters, `ON CONFLICT ... DO UPDATE`, `RETURNING`, aggregates cast to
//! `BIGINT`, no boolean columns in results); what differs per backend
//! (pragmas, how a write transaction takes the write lock, a JSON list as
//! a subquery) stays in a few branches inside [`SqlRepo`].
//!
//! Writers are serialised: SQLite has one writer; on PostgreSQL every write
//! transaction holds one advisory lock ([`WRITE_LOCK`]). Whole-table reads
//! are memoised on SQLite only, where this process is the only writer.

pub mod auth;
mod error;
mod groups;
mod lease;
mod managed_vms;
pub mod runbook;
mod services;
mod sql;
mod watch;

use chrono::{DateTime, Utc};
use standby_types::config::Config;
use standby_types::model::{
    DamagedCopy, DiskRecord, GroupRecord, HostRecord, Job, JobStatus, PointRecord, SiteRecord,
    VmRecord,
};

pub use auth::{AuthRepo, SessionRecord, TokenRecord, UserRecord};
pub use error::DbError;
pub use groups::{GroupRepo, ManagedGroup, join_managed_groups};
pub use lease::{Lease, LeaseRepo};
pub use managed_vms::{ManagedVm, ManagedVmRepo, join_managed_vms};
pub use runbook::{NewRun, RunRecord, RunStart, RunbookRepo, StepRecord, StepState};
pub use services::{ServiceRecord, ServiceRepo};
pub use sql::{Backend, SqlRepo, WRITE_LOCK};
pub use watch::{AlertQuery, EventQuery, WatchRepo};

/// Error text a job gets when the controller stopped while it was queued
/// or running.
pub const INTERRUPTED: &str = "interrupted: the controller stopped while the job ran";

/// A fenced site: no VM runs there until the fence is lifted (the same
/// record the API shows).
pub use standby_types::outcome::Fence as FenceRecord;

/// Which points a page of the catalog holds ([`Repo::point_page`]): every
/// filter given must match.
#[derive(Debug, Clone, Default)]
pub struct PointQuery {
    /// Only this VM's points.
    pub vm: Option<String>,
    /// Only points of these VMs (a tenant's); `None` for every VM.
    pub vms: Option<Vec<String>>,
    /// Only points taken at this site.
    pub site: Option<String>,
    /// Only points of this protection group.
    pub group: Option<String>,
    /// Only points taken at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// At most this many; 0 for a count alone.
    pub limit: u32,
    /// Skip this many first.
    pub offset: u32,
}

/// One VM's points in short ([`Repo::point_summary`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPoints {
    pub vm: String,
    pub count: u64,
    /// The newest point's time and disk size.
    pub newest: DateTime<Utc>,
    pub newest_size: u64,
    /// Bytes the VM's points added to their datastores.
    pub new_bytes: u64,
}

/// How many points of a VM and group (`group` as recorded on the point)
/// exist, and how many of them a datastore holds ([`Repo::copy_counts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCount {
    pub vm: String,
    pub group: Option<String>,
    /// `None`: the number of points; `Some(ds)`: of copies in `ds`.
    pub datastore: Option<String>,
    pub count: u64,
}

/// What [`Repo::sync_catalog`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatalogSync {
    pub points_added: u64,
    pub copies_added: u64,
    pub copies_removed: u64,
}

/// The control-plane state, independent of the database behind it.
#[async_trait::async_trait]
pub trait Repo: GroupRepo + ManagedVmRepo + Send + Sync {
    /// Make the inventory match the configuration: upsert sites, hosts,
    /// VMs, disks, groups (+ members, datastores); delete ones no longer
    /// configured, but keep recovery points and jobs. Keeps runtime state:
    /// a VM's active site/host (new VMs start active at their home) and a
    /// group's next_run/last_run/last_status (a changed schedule text
    /// clears next_run). All or nothing.
    async fn apply_config(&self, cfg: &Config) -> Result<(), DbError>;

    /// Sites by name.
    async fn sites(&self) -> Result<Vec<SiteRecord>, DbError>;
    /// Hosts by name.
    async fn hosts(&self) -> Result<Vec<HostRecord>, DbError>;
    /// VMs by name (shared: kept in memory while this process is the
    /// database's only writer).
    async fn vms(&self) -> Result<std::sync::Arc<Vec<VmRecord>>, DbError>;
    async fn vm(&self, name: &str) -> Result<VmRecord, DbError>;
    /// A VM's disks in configuration order (empty for an unknown VM).
    async fn disks(&self, vm: &str) -> Result<Vec<DiskRecord>, DbError>;
    /// Record where a VM runs now. The site and host must exist and the
    /// host must be at the site.
    async fn set_vm_placement(&self, vm: &str, site: &str, host: &str) -> Result<(), DbError>;

    /// Groups by name.
    async fn groups(&self) -> Result<Vec<GroupRecord>, DbError>;
    async fn group(&self, name: &str) -> Result<GroupRecord, DbError>;
    async fn set_group_schedule(
        &self,
        group: &str,
        next_run: Option<DateTime<Utc>>,
    ) -> Result<(), DbError>;
    async fn record_group_run(
        &self,
        group: &str,
        at: DateTime<Utc>,
        status: &str,
    ) -> Result<(), DbError>;

    /// Store a point; idempotent on its id. An existing point takes the new
    /// fields, and copies it lacks are appended (a re-insert never forgets a
    /// copy; use [`Repo::remove_point_copy`] for that).
    async fn insert_point(&self, p: &PointRecord) -> Result<(), DbError>;
    /// Note that `datastore` holds a complete copy; idempotent, appended
    /// after the existing copies.
    async fn add_point_copy(&self, id: &str, datastore: &str) -> Result<(), DbError>;
    /// Forget the copy in `datastore`; the point itself goes with its last
    /// copy.
    async fn remove_point_copy(&self, id: &str, datastore: &str) -> Result<(), DbError>;
    /// Make the catalog's copies in `datastore` exactly `found` (what the
    /// datastore holds): unknown points are inserted, missing copies
    /// added, copies no longer found removed (a point goes with its last
    /// copy). Known points keep their fields. The differences are written
    /// in batches, so a catalog that already matches costs one read.
    async fn sync_catalog(
        &self,
        datastore: &str,
        found: &[PointRecord],
    ) -> Result<CatalogSync, DbError>;
    /// Record what a verify of `datastore` found: each (point, reason) is
    /// a damaged copy there (kept with its first `since`); with `full` (the
    /// whole datastore was checked) the datastore's other damaged copies
    /// are cleared. Copies the catalog does not have are ignored.
    async fn set_damaged(
        &self,
        datastore: &str,
        found: &[(String, String)],
        full: bool,
    ) -> Result<(), DbError>;
    /// Points whose copy in `datastore` is whole again (repaired).
    async fn clear_damaged(&self, datastore: &str, points: &[String]) -> Result<(), DbError>;
    /// Every damaged copy, by point then datastore.
    async fn damaged_copies(&self) -> Result<Vec<DamagedCopy>, DbError>;
    /// Record the scheduled verify of `datastore` at `at` (slice `slice`
    /// of `slices`, `problems` found).
    async fn verify_ran(
        &self,
        datastore: &str,
        at: DateTime<Utc>,
        slice: u32,
        slices: u32,
        problems: u64,
    ) -> Result<(), DbError>;
    /// When each datastore was last verified by schedule.
    async fn verify_runs(&self) -> Result<Vec<(String, DateTime<Utc>)>, DbError>;
    /// Points of one VM or of all, oldest first.
    async fn points(&self, vm: Option<&str>) -> Result<Vec<PointRecord>, DbError>;
    async fn point(&self, id: &str) -> Result<PointRecord, DbError>;
    /// The newest point of each of these VMs that has one, by VM name:
    /// one indexed lookup per VM, in one query.
    async fn latest_points(&self, vms: &[String]) -> Result<Vec<PointRecord>, DbError>;
    /// The time of the newest point of each of these VMs that has one, by
    /// VM name: an index seek per VM.
    async fn newest_point_times(
        &self,
        vms: &[String],
    ) -> Result<Vec<(String, DateTime<Utc>)>, DbError>;
    /// One page of the points matching `q` and the number of matches;
    /// filtered, ordered and cut in the database, so a page costs the
    /// same with a hundred points or a million.
    async fn point_page(&self, q: &PointQuery) -> Result<(Vec<PointRecord>, u64), DbError>;
    /// Per VM with points: how many, the newest one's time and size, and
    /// the bytes they added; by VM name. One aggregate query.
    async fn point_summary(&self) -> Result<Vec<VmPoints>, DbError>;
    /// Points and copies per (VM, group, datastore): what sync progress is
    /// computed from without reading each point.
    async fn copy_counts(&self) -> Result<Vec<CopyCount>, DbError>;
    /// The times of the points of `vms` taken at or after `since`, oldest
    /// first, as (VM, time).
    async fn point_times(
        &self,
        vms: &[String],
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, DbError>;
    /// The times of the VM's points over a period: the newest one before
    /// `from` (the point in force when the period begins) and every one
    /// in `[from, to)`, oldest first. Two index seeks: what a month's RPO
    /// compliance is computed from without reading the VM's other points.
    async fn point_times_in(
        &self,
        vm: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Option<DateTime<Utc>>, Vec<DateTime<Utc>>), DbError>;
    /// The VM of each of these points that exists.
    async fn point_vms(&self, ids: &[String]) -> Result<Vec<(String, String)>, DbError>;
    /// The VM's newest point (by time), if any.
    async fn latest_point(&self, vm: &str) -> Result<Option<PointRecord>, DbError> {
        Ok(self.latest_points(&[vm.to_string()]).await?.pop())
    }

    /// A new job: queued, no progress, result `null`.
    async fn create_job(&self, kind: &str, target: &str) -> Result<Job, DbError>;
    /// Mark a job running, started now.
    async fn start_job(&self, id: i64) -> Result<(), DbError>;
    async fn update_job(
        &self,
        id: i64,
        done: u64,
        total: u64,
        message: &str,
    ) -> Result<(), DbError>;
    /// Set the final status, error and result; finished now.
    async fn finish_job(
        &self,
        id: i64,
        status: JobStatus,
        error: Option<&str>,
        result: &serde_json::Value,
    ) -> Result<(), DbError>;
    async fn job(&self, id: i64) -> Result<Job, DbError>;
    /// The newest `limit` jobs, newest first.
    async fn jobs(&self, limit: u32) -> Result<Vec<Job>, DbError>;
    /// Delete finished jobs (succeeded or failed) that finished before
    /// `before`, with their runbook runs and steps; returns how many.
    /// Queued and running jobs are kept, however old.
    async fn prune_jobs(&self, before: DateTime<Utc>) -> Result<u64, DbError>;
    /// How many jobs there are of each (kind, status), sorted.
    async fn job_counts(&self) -> Result<Vec<(String, JobStatus, u64)>, DbError>;
    /// At controller start: every queued or running job except runbook
    /// jobs (they resume) becomes failed with error [`INTERRUPTED`].
    /// Returns how many.
    async fn fail_interrupted_jobs(&self) -> Result<u64, DbError>;

    /// Fence `site` since `at`. Idempotent: a site fenced already keeps
    /// its first time and reason. Returns the fence in force.
    async fn fence(
        &self,
        site: &str,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<FenceRecord, DbError>;
    /// Lift the fence of `site`; the lifted fence, or `None` when the site
    /// was not fenced.
    async fn unfence(&self, site: &str) -> Result<Option<FenceRecord>, DbError>;
    /// Fenced sites by name.
    async fn fences(&self) -> Result<Vec<FenceRecord>, DbError>;

    /// Close the database at shutdown; later calls fail.
    async fn close(&self);
}
