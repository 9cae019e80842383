//! The `qemu` driver: a VM is a `qemu-system-x86_64` process controlled
//! over QMP ([`crate::qmp`]).
//!
//! # Process and files
//!
//! QEMU runs as a supervised child in its own session (`setsid`, as in the
//! process driver), so a controller that dies never takes its VMs along.
//! Per VM, in the driver's state directory:
//!
//! - `<name>.pid`: `<pid> <kernel start time>`, written atomically after the
//!   spawn. A restarted controller (a new [`QemuDriver`] on the same state
//!   dir) adopts a VM whose pid and start time still match: it reconnects
//!   to QMP and reports, freezes and stops it like its own; a VM found
//!   paused (its owner died mid-point) is resumed at once.
//! - `<name>.qmp`: the QMP socket (`server=on,wait=off`). QEMU serves one
//!   client at a time; the driver keeps one connection per VM and receives
//!   its events (SHUTDOWN gives the reason of an exit).
//! - `<name>.qemu.pid`: QEMU's own `-pidfile`, which QEMU locks: a second
//!   QEMU for the same VM refuses to start.
//!
//! In `workdir`: `<name>.log` (QEMU's stdout/stderr) and
//! `<name>.console.log` (the guest's serial console, appended).
//!
//! [`QemuDriver::in_netns`] runs QEMU inside a network namespace (a DR
//! drill's, loopback only), so its port forwards listen there alone.
//!
//! # Machine
//!
//! Built from the [`QemuSpec`] in [`VmSpec::qemu`]: memory, CPUs, machine
//! type, accelerator (KVM when `/dev/kvm` is usable, else TCG), disks as
//! virtio-blk in the order of [`VmSpec::disks`] (so `/dev/vda`, `/dev/vdb`,
//! …), each a `-blockdev` whose format node is named after the disk (dirty
//! bitmaps will hang off it), kernel/initrd/append or boot from the first
//! disk, user-mode networking with host port forwards. [`VmSpec::args`]
//! are appended to QEMU's command line.
//!
//! # States
//!
//! `query-status` `running` is [`VmState::Running`], any other live state
//! [`VmState::Frozen`]. An exit the driver did not ask for is
//! [`VmState::Crashed`], described by the exit status and the reason of
//! the last SHUTDOWN event (`guest-shutdown`, `host-signal`, …). Shutdown
//! is `system_powerdown`, `quit` after the timeout, then SIGKILL.
//!
//! # Recovery points (live)
//!
//! A point of a running VM never pauses it for the read
//! (the `points` submodule holds the QMP choreography):
//!
//! - Each disk carries a dirty bitmap `standby:<point id>` recording the
//!   writes since that committed point: persistent (saved in the image at
//!   QEMU's clean exit) on qcow2, in QEMU's memory only on raw disks.
//! - [`Driver::snapshot_begin_from`] (with the caller's base point and
//!   chunk size): the guest agent freezes the guest's filesystems when the
//!   spec has one (bounded: [`AGENT_TIMEOUT`], [`FREEZE_TIMEOUT`]), then one QMP
//!   `transaction` makes the point's instant: it adds `standby.pending`
//!   (writes from now on), and starts a `blockdev-backup` per disk into a
//!   scratch image in `<state dir>/<vm>.point/` — `sync=full` into a sparse
//!   raw file for a full read, or, for an incremental one, disables the
//!   base bitmap, merges it into `standby.copy` at the chunk size (so
//!   every chunk the reader touches is copied whole) and runs
//!   `sync=bitmap bitmap-mode=never` into a qcow2 scratch. The guest is
//!   thawed right after. Backup jobs copy-before-write, so the scratch
//!   holds the disk as it was at the instant while the guest runs on.
//! - The incremental scratch's allocation (`qemu-img map`, the `present`
//!   extents: data *and* zero clusters, so a cluster rewritten with zeroes
//!   is dirty too) gives [`crate::SnapshotDisk::dirty`]; it is converted
//!   to a sparse raw file for the reader.
//! - [`Driver::snapshot_committed`]: committed as `P` → one transaction
//!   renames `standby.pending` into `standby:P` (add + merge + remove) and
//!   drops the old base bitmap; abandoned → the old bitmap is re-enabled
//!   and `standby.pending` merged back into it, so the next point still
//!   sees those writes (a full read keeps a sound bitmap it found until its
//!   commit, for the same reason). A point never settled (its controller
//!   died) is settled as abandoned at the next begin.
//! - A full read, said on the consistency note, when: no base point; no
//!   bitmap (raw disk after a QEMU restart, qcow2 after QEMU died without
//!   saving it); a bitmap QEMU flags inconsistent (QEMU killed while it
//!   was loaded); a bitmap counting from another point than the base.
//! - A VM that is not running: its image files (qcow2 converted to a raw
//!   scratch copy), a full read labelled "cold".
//!
//! # Live migration
//!
//! The migration halves of [`Driver`] move a running VM to another host's
//! QEMU: disks over NBD with write-blocking block mirrors, then memory and
//! devices with QEMU's migration paused before the switchover so the
//! mirrors complete while the guest is paused; the destination runs only
//! once its `migrate_in_finish` resumes it (the `migrate` submodule). A
//! VM paused by a migration is never resumed by adoption.
//!
//! Restore: the datastore writes raw images;
//! [`QemuDriver::install_restored_disk`] puts one in place as the disk's
//! format (qcow2: `qemu-img convert`, zeroes unallocated).

//!
//! # Files
//!
//! - `spec`: [`QemuSpec`] and its parts (machine, accelerator, disk
//!   formats, port forwards);
//! - `driver`: [`QemuDriver`], its VM table and shared accessors;
//! - `cmdline`: [`command_line`], QEMU's arguments for a spec;
//! - `process`: spawn, adoption, QMP events, termination, pid files;
//! - `disks`: disk images from templates and restored images;
//! - `points`: live recovery points;
//! - `migrate`: live migration (disks by NBD block mirror, then the
//!   running state), in the driver's migration halves;
//! - this file: the [`Driver`] implementation, which ties them together.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Capabilities, Driver, HvError, MigrationListen, MigrationOptions, MigrationReport,
    MigrationTarget, SnapshotSource, VmSpec, VmState, VmStatus,
};

mod cmdline;
mod disks;
mod driver;
mod migrate;
mod points;
mod process;
mod spec;

pub use cmdline::{command_line, kvm_usable};
pub use driver::QemuDriver;
/// For the fuzz target of QMP and tool replies (not an API).
#[doc(hidden)]
pub use points::parse_map;
pub use points::{AGENT_TIMEOUT, FREEZE_TIMEOUT};
pub use spec::{Accel, DiskFormat, Machine, PortForward, Protocol, QemuSpec};

#[async_trait]
impl Driver for QemuDriver {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    fn capabilities(&self) -> Capabilities {
        // App consistency needs a guest agent: see `vm_capabilities`.
        Capabilities {
            live_snapshot: true,
            dirty_tracking: true,
            app_consistent: true,
            live_migration: true,
        }
    }

    fn vm_capabilities(&self, spec: &VmSpec) -> Capabilities {
        Capabilities {
            app_consistent: spec.qemu.as_ref().is_some_and(|q| q.guest_agent),
            ..self.capabilities()
        }
    }

    /// qcow2 disks with a template become overlays backed by it (the
    /// template must stay in place); raw disks get a converted copy. Disks
    /// without a template are created empty. Never overwrites.
    async fn create_from_template(
        &self,
        spec: &VmSpec,
        template_disks: &[(String, PathBuf)],
    ) -> Result<(), HvError> {
        let q = spec.qemu.clone().unwrap_or_default();
        crate::check_template_disks(spec, template_disks)?;
        for disk in &spec.disks {
            let template = template_disks
                .iter()
                .find(|(n, _)| n == &disk.name)
                .map(|(_, p)| p.as_path());
            self.create_disk(&spec.name, disk, q.disk_format(&disk.name), template)
                .await?;
        }
        Ok(())
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
        self.adopt(&spec.name).await;
        if self.current(&spec.name).is_alive() {
            return self.status(&spec.name).await;
        }
        self.spawn(spec).await
    }

    async fn shutdown(&self, name: &str, timeout: Duration) -> Result<VmStatus, HvError> {
        self.adopt(name).await;
        self.terminate(name, Some(timeout)).await
    }

    async fn stop(&self, name: &str) -> Result<VmStatus, HvError> {
        self.adopt(name).await;
        self.terminate(name, None).await
    }

    async fn status(&self, name: &str) -> Result<VmStatus, HvError> {
        self.adopt(name).await;
        if let Ok((qmp, _)) = self.live_qmp(name)
            && let Ok(st) = qmp
                .with_timeout(Duration::from_secs(3))
                .query_status()
                .await
        {
            let state = if st.running {
                VmState::Running
            } else {
                VmState::Frozen
            };
            self.set_state(name, state);
        }
        Ok(self.current(name))
    }

    async fn freeze(&self, name: &str) -> Result<(), HvError> {
        self.adopt(name).await;
        let (qmp, state) = self.live_qmp(name)?;
        if state == VmState::Frozen {
            return Ok(());
        }
        qmp.stop().await?;
        self.set_state(name, VmState::Frozen);
        tracing::debug!(vm = name, "vm paused");
        Ok(())
    }

    async fn thaw(&self, name: &str) -> Result<(), HvError> {
        self.adopt(name).await;
        let (qmp, _) = self.live_qmp(name)?;
        qmp.cont().await?;
        self.set_state(name, VmState::Running);
        tracing::debug!(vm = name, "vm resumed");
        Ok(())
    }

    /// A full read (no base): see [`Driver::snapshot_begin_from`].
    async fn snapshot_begin(&self, spec: &VmSpec) -> Result<SnapshotSource, HvError> {
        self.snapshot_begin_from(spec, None, 64 << 10).await
    }

    async fn snapshot_begin_from(
        &self,
        spec: &VmSpec,
        base: Option<&str>,
        align: u64,
    ) -> Result<SnapshotSource, HvError> {
        self.adopt(&spec.name).await;
        for disk in &spec.disks {
            if !disk.path.is_file() {
                return Err(HvError::DiskMissing {
                    vm: spec.name.clone(),
                    disk: disk.name.clone(),
                    path: disk.path.clone(),
                });
            }
        }
        if self.current(&spec.name).is_alive() {
            let (qmp, _) = self.live_qmp(&spec.name)?;
            self.live_point(spec, &qmp, base, align).await
        } else {
            self.cold_point(spec).await
        }
    }

    async fn snapshot_end(&self, spec: &VmSpec) -> Result<(), HvError> {
        self.drop_scratch(&spec.name);
        Ok(())
    }

    async fn snapshot_committed(&self, spec: &VmSpec, point: Option<&str>) -> Result<(), HvError> {
        self.finish_point(spec, point).await
    }

    async fn migrate_in_prepare(
        &self,
        spec: &VmSpec,
        listen: MigrationListen,
    ) -> Result<MigrationTarget, HvError> {
        self.prepare_incoming(spec, listen).await
    }

    async fn migrate_out(
        &self,
        spec: &VmSpec,
        target: &MigrationTarget,
        options: MigrationOptions,
    ) -> Result<MigrationReport, HvError> {
        self.migrate_outgoing(spec, target, options).await
    }

    async fn migrate_in_finish(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
        self.finish_incoming(spec).await
    }

    async fn migrate_in_abort(&self, spec: &VmSpec) -> Result<(), HvError> {
        self.abort_incoming(spec).await
    }

    async fn migrate_out_confirm(&self, spec: &VmSpec, moved: bool) -> Result<VmStatus, HvError> {
        self.confirm_outgoing(spec, moved).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    use std::path::Path;

    use super::*;
    use crate::DiskSpec;

    fn spec() -> VmSpec {
        VmSpec {
            name: "pbx1".into(),
            command: PathBuf::new(),
            args: vec!["-cpu".into(), "qemu64".into()],
            env: BTreeMap::new(),
            disks: vec![
                DiskSpec {
                    name: "system".into(),
                    path: "/v/sys,1.qcow2".into(),
                    size: 1 << 20,
                },
                DiskSpec {
                    name: "data".into(),
                    path: "/v/data.img".into(),
                    size: 1 << 20,
                },
            ],
            workdir: "/w".into(),
            qemu: None,
            libvirt: None,
        }
    }

    #[test]
    fn command_line_from_spec() {
        let mut q = QemuSpec {
            memory_mib: 128,
            kernel: Some("/g/vmlinuz".into()),
            initrd: Some("/g/initrd.img".into()),
            append: Some("console=ttyS0".into()),
            forwards: vec![PortForward::udp(15060, 5060), PortForward::tcp(18080, 8080)],
            ..QemuSpec::default()
        };
        q.disk_formats.insert("system".into(), DiskFormat::Qcow2);
        let a = command_line(&spec(), &q, Path::new("/s"), false).unwrap();
        let s = a.join(" ");
        assert!(s.contains("-machine q35 -accel tcg -m 128 -smp 1"), "{s}");
        assert!(s.contains("-qmp unix:/s/pbx1.qmp,server=on,wait=off"));
        assert!(s.contains("path=/w/pbx1.console.log,append=on"));
        assert!(s.contains("-kernel /g/vmlinuz -initrd /g/initrd.img -append console=ttyS0"));
        assert!(s.contains("hostfwd=udp:127.0.0.1:15060-:5060,hostfwd=tcp:127.0.0.1:18080-:8080"));
        assert!(s.ends_with("-cpu qemu64"));
        // Disks in order, JSON blockdevs (commas in paths need no escaping).
        let devs: Vec<&String> = a.iter().filter(|x| x.starts_with("virtio-blk")).collect();
        assert_eq!(
            devs,
            [
                "virtio-blk-pci,drive=system,id=system-blk",
                "virtio-blk-pci,drive=data,id=data-blk"
            ]
        );
        let bd: serde_json::Value =
            serde_json::from_str(a.iter().find(|x| x.contains("qcow2")).unwrap()).unwrap();
        assert_eq!(bd["node-name"], "system");
        assert_eq!(bd["file"]["filename"], "/v/sys,1.qcow2");
        assert!(a.iter().any(|x| x.contains("\"driver\":\"raw\"")));

        assert!(!s.contains("qga"));
        q.guest_agent = true;
        let s = command_line(&spec(), &q, Path::new("/s"), false)
            .unwrap()
            .join(" ");
        assert!(s.contains("-chardev socket,id=qga0,path=/s/pbx1.qga,server=on,wait=off"));
        assert!(s.contains("virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"));

        let a = command_line(&spec(), &QemuSpec::default(), Path::new("/s"), true).unwrap();
        assert!(a.join(" ").contains("-accel kvm -cpu host"));
        assert!(a.iter().any(|x| x.ends_with("bootindex=0")));

        let mut bad = spec();
        bad.disks[0].name = "1st disk".into();
        assert!(matches!(
            command_line(&bad, &QemuSpec::default(), Path::new("/s"), false),
            Err(HvError::InvalidSpec { .. })
        ));
    }

    #[tokio::test]
    async fn migration_types_cross_the_wire_and_only_qemu_migrates() {
        let t = MigrationTarget {
            listen: MigrationListen {
                addr: "198.18.0.2".parse().unwrap(),
                state_port: 4444,
                disk_port: 10809,
            },
            exports: vec![crate::MigrationExport {
                disk: "data".into(),
                export: "data".into(),
                size: 1 << 20,
            }],
            tls_name: Some("host2.peer.standby".into()),
            libvirt: None,
        };
        let j = serde_json::to_string(&t).unwrap();
        assert!(!j.contains("libvirt"), "{j}");
        assert_eq!(serde_json::from_str::<MigrationTarget>(&j).unwrap(), t);
        let p = crate::ProcessDriver::new();
        assert!(!p.capabilities().live_migration);
        assert!(
            QemuDriver::new("/nonexistent")
                .capabilities()
                .live_migration
        );
        let err = p.migrate_in_prepare(&spec(), t.listen).await.unwrap_err();
        assert!(
            matches!(
                err,
                HvError::Unsupported {
                    driver: "process",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// An abort removes disks only of a VM this driver prepared as a
    /// migration target (marker present): never a VM's own disks.
    #[tokio::test]
    async fn abort_without_incoming_marker_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec();
        for d in &mut s.disks {
            d.path = dir.path().join(&d.name);
            std::fs::write(&d.path, b"data").unwrap();
        }
        let driver = QemuDriver::new(dir.path().join("state"));
        let err = driver.migrate_in_abort(&s).await.unwrap_err();
        assert!(matches!(err, HvError::Migration { .. }), "{err:?}");
        assert!(s.disks.iter().all(|d| d.path.is_file()));
        assert!(driver.migrate_in_finish(&s).await.is_err());
    }

    #[test]
    fn qemu_spec_defaults_from_json() {
        let q: QemuSpec = serde_json::from_str(
            r#"{"kernel": "/k", "disk_formats": {"system": "qcow2"},
                "forwards": [{"protocol": "udp", "host_port": 5070, "guest_port": 5060}]}"#,
        )
        .unwrap();
        assert_eq!(q.memory_mib, 256);
        assert_eq!(q.machine, Machine::Q35);
        assert_eq!(q.accel, Accel::Auto);
        assert_eq!(q.disk_format("system"), DiskFormat::Qcow2);
        assert_eq!(q.disk_format("data"), DiskFormat::Raw);
        assert_eq!(q.forwards[0].host_addr, Ipv4Addr::LOCALHOST);
    }
}
