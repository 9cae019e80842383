//! Datastores on object storage, against real API servers started here:
//! Azurite for Azure Blob, moto's server mode for S3. A missing server
//! program is a failure that says how to install it, never a skip.

mod common;
mod encrypted;
mod figures;
mod hardening;
mod maintenance;
mod roundtrip;

mod sync;
