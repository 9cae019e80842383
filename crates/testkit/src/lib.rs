//! Test support shared by the crates' tests: real object-storage servers
//! (Azurite for Azure Blob, moto for S3) started on free loopback ports
//! and stopped on drop. Only tests depend on this crate.

pub mod objects;
