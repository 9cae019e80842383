//! Test support shared by the crates' tests: real servers (Azurite for
//! Azure Blob, moto for S3, aiosmtpd for mail, BIND9 for DNS updates)
//! started on free loopback ports and stopped on drop. Only tests depend
//! on this crate.

pub mod bind;
pub mod mail;
pub mod objects;

pub use objects::free_port;
