//! Leadership among controller replicas: one lease row, held by one
//! replica until it expires, with an **epoch** that grows each time the
//! lease changes hands (or is taken up again after it lapsed).
//!
//! # Invariants
//!
//! - Expiry is measured on the database's clock only (`now` read in the
//!   same write transaction), so no two replicas' clocks are compared.
//! - An epoch is never given twice: a lease taken over, or taken up after
//!   it lapsed, gets `max(epoch + 1, min_epoch)`; a renewal by its holder
//!   keeps it unless `min_epoch` is higher.
//! - Takes and renewals are serialised with every other write (one writer
//!   at a time), so two replicas never both hold the lease.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::DbError;

/// The lease as one replica sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The replica holding it (`[controller] name`).
    pub holder: String,
    /// Where that replica serves its API.
    pub url: String,
    pub epoch: u64,
    /// Whether the asking replica holds it.
    pub held: bool,
    /// How long until it expires, on the database's clock (zero: it has).
    pub remaining: Duration,
}

#[async_trait::async_trait]
pub trait LeaseRepo: Send + Sync {
    /// Take or renew the lease for `holder` (serving at `url`) for `ttl`:
    /// granted when nobody holds it, when it expired, when `holder`
    /// holds it already, or with `take_over` (a single controller that
    /// owns its database). Returns the lease in force afterwards: `held`
    /// says whether `holder` has it.
    async fn acquire_lease(
        &self,
        holder: &str,
        url: &str,
        ttl: Duration,
        min_epoch: u64,
        take_over: bool,
    ) -> Result<Lease, DbError>;
    /// Let the lease go now if `holder` has it (a clean stop), so another
    /// replica need not wait for it to expire. The epoch stays.
    async fn release_lease(&self, holder: &str) -> Result<(), DbError>;
    /// The lease in force, seen from `holder`; none before the first.
    async fn lease(&self, holder: &str) -> Result<Option<Lease>, DbError>;
}
