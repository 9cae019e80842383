//! Test support shared by the crates' tests: real servers (Azurite for
//! Azure Blob, moto for S3, aiosmtpd for mail, BIND9 for DNS updates)
//! started on free loopback ports and stopped on drop, and a PostgreSQL
//! cluster per test binary (stopped when the binary exits). Only tests
//! depend on this crate.

pub mod bind;
pub mod libvirt;
pub mod mail;
pub mod objects;
pub mod ports;
pub mod postgres;

pub use ports::free_port;
