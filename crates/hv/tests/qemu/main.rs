//! The qemu driver and its QMP client against a real `qemu-system-x86_64`
//! (software emulation). A missing QEMU fails these tests with the command
//! that installs it; they never skip.
//!
//! - `common`: QEMU and the guest image, VM specs, waits, live-point helpers;
//! - `qmp`: the QMP client (`qmp_against_real_qemu`);
//! - `lifecycle`: `vm_lifecycle`, start errors, disks from templates;
//! - `live_points`: `live_points_follow_writes_zeroes_and_restarts`;
//! - `sip_vm`: `live_points_of_a_sip_vm_restore_and_boot`;
//! - `migrate`: `hypervisor_qemu_live_migration_keeps_sip_answering`;
//! - `bench`: `bench_live_points` (ignored).

mod bench;
mod common;
mod lifecycle;
mod live_points;
mod migrate;
mod qmp;
mod sip_vm;
