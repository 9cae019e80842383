//! The libvirt driver against a private libvirtd (Debian's
//! libvirt-daemon, QEMU under software emulation) started by each test
//! ([`standby_testkit::libvirt::Libvirtd`], killed on drop with its
//! QEMUs). Built only with the `libvirt` feature; a missing libvirtd or
//! QEMU fails these tests with the command that installs it.
//!
//! - `common`: the lab, the guest image, specs, points into a datastore;
//! - `lifecycle`: `hypervisor_libvirt_lifecycle` (define, start, status,
//!   freeze, graceful shutdown, stop, foreign domains),
//!   `hypervisor_libvirt_guest_agent_points` (app consistency and its
//!   fallback);
//! - `points`: `hypervisor_libvirt_incremental_points` (checkpoints and
//!   backups, bytes read counted, abandoned points, raw disks);
//! - `import`: `hypervisor_libvirt_import_and_adopt`;
//! - `migrate`: `hypervisor_libvirt_live_migration_keeps_sip_answering`
//!   (two libvirtds in two network namespaces, peer-to-peer migration
//!   with storage copy, a failed attempt first);
//! - `bench`: `bench_libvirt_against_qemu` (ignored; `scripts/bench-hypervisors`).

mod bench;
mod common;
mod import;
mod lifecycle;
mod migrate;
mod points;
