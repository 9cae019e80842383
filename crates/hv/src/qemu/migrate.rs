//! Live migration: the disks over NBD with block mirrors, then the running
//! state with QEMU's migration, in the halves of the [`crate::Driver`]
//! migration calls (the NBD storage migration libvirt does too).
//!
//! Destination ([`QemuDriver::prepare_incoming`]): the disks are created
//! empty (sparse) at their sizes, QEMU starts for the same spec with
//! `-S -incoming defer`, an NBD server listens on the disk port and exports
//! each disk's format node writable (QEMU activates an exported node even
//! while it waits for its state), and `migrate-incoming` listens on the
//! state port. `<state dir>/<vm>.incoming` marks the VM as a migration
//! target until the switchover: only such a VM's disks are ever removed
//! by an abort, and an adopting driver never resumes it.
//!
//! Source ([`QemuDriver::migrate_outgoing`]):
//!
//! 1. per disk, `blockdev-add` an NBD client node `mig-<disk>` on the
//!    destination's export and `blockdev-mirror` `sync=full` into it with
//!    `copy-mode=write-blocking`: a guest write completes only once it is
//!    on both sides, so the mirror converges however busy the guest is;
//!    wait until every job is ready (in sync);
//! 2. `migrate` with `pause-before-switchover`: QEMU copies the memory
//!    while the guest runs, pauses it for the last pages, and waits in
//!    `pre-switchover`;
//! 3. in that window (guest paused, nothing writes) each ready mirror is
//!    completed without pivot (`block-job-cancel` of a ready job: the
//!    target is then an exact copy), the NBD nodes are removed, and
//!    `migrate-continue` sends the device state; the migration is
//!    `completed` and the source stays paused (`postmigrate`).
//!
//! Any failure before `completed` cancels the migration and the mirrors
//! (forced), removes the NBD nodes, and resumes the source if the
//! migration had paused it: the source runs on untouched.
//!
//! Destination ([`QemuDriver::finish_incoming`]): the state arrived, so
//! the NBD server stops and the VM is resumed (`cont`): the switchover.
//! Source ([`QemuDriver::confirm_outgoing`]): `quit` after a switchover,
//! `cont` when the destination was aborted instead.
//!
//! The guest's pause spans the last memory pages (QEMU aims at
//! `downtime-limit`), the mirrors' completion, the device state, and the
//! calls up to the destination's `cont`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::driver::{QMP_CALL, QemuDriver};
use crate::qmp::Qmp;
use crate::{
    HvError, MigrationExport, MigrationListen, MigrationOptions, MigrationReport, MigrationTarget,
    VmSpec, VmState, VmStatus,
};

/// The id of the TLS credentials object in a migrating QEMU.
const TLS_CREDS: &str = "mig-tls";

/// How often block jobs and the migration are polled.
const POLL: Duration = Duration::from_millis(10);

fn nbd_node(disk: &str) -> String {
    format!("mig-{disk}")
}

fn mirror_job(disk: &str) -> String {
    format!("migrate-{disk}")
}

fn fail(vm: &str, detail: impl Into<String>) -> HvError {
    HvError::Migration {
        vm: vm.to_owned(),
        detail: detail.into(),
    }
}

impl QemuDriver {
    /// Marks a VM as the target of a migration not switched over yet.
    pub(super) fn incoming_marker(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.incoming"))
    }

    /// With migration TLS: the VM's credentials directory in QEMU's layout
    /// (the CA bundle, this host's certificate and key as `ENDPOINT-cert.pem`
    /// and `ENDPOINT-key.pem`), copied afresh (a reissued certificate is
    /// taken), and the `tls-creds-x509` object made in its QEMU; the name
    /// this host's certificate carries. Without: `None`.
    async fn tls_creds(
        &self,
        qmp: &Qmp,
        vm: &str,
        endpoint: &str,
    ) -> Result<Option<String>, HvError> {
        let Some(tls) = &self.migration_tls else {
            return Ok(None);
        };
        let dir = self.state_dir.join(format!("{vm}.tls"));
        let copy = |from: &std::path::Path, to: &str, mode: u32| -> Result<(), HvError> {
            use std::os::unix::fs::OpenOptionsExt;
            let to = dir.join(to);
            let bytes = std::fs::read(from).map_err(Self::io_err(vm, "read", from))?;
            let _ = std::fs::remove_file(&to);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&to)
                .map_err(Self::io_err(vm, "write", &to))?;
            std::io::Write::write_all(&mut f, &bytes).map_err(Self::io_err(vm, "write", &to))
        };
        std::fs::create_dir_all(&dir).map_err(Self::io_err(vm, "create", &dir))?;
        copy(&tls.ca, "ca-cert.pem", 0o644)?;
        copy(&tls.cert, &format!("{endpoint}-cert.pem"), 0o644)?;
        copy(&tls.key, &format!("{endpoint}-key.pem"), 0o600)?;
        // An earlier attempt's object, if any, goes first.
        let _ = qmp
            .execute_raw("object-del", json!({ "id": TLS_CREDS }))
            .await;
        qmp.execute_raw(
            "object-add",
            json!({
                "qom-type": "tls-creds-x509",
                "id": TLS_CREDS,
                "dir": dir,
                "endpoint": endpoint,
                "verify-peer": true,
            }),
        )
        .await?;
        Ok(Some(tls.name.clone()))
    }

    /// Destination half 1: see the module docs.
    pub(super) async fn prepare_incoming(
        &self,
        spec: &VmSpec,
        listen: MigrationListen,
    ) -> Result<MigrationTarget, HvError> {
        let name = spec.name.as_str();
        self.adopt(name).await;
        if self.current(name).is_alive() {
            return Err(fail(name, "the vm already runs on the destination"));
        }
        crate::check_template_disks(spec, &[])?;
        std::fs::create_dir_all(&self.state_dir).map_err(Self::io_err(
            name,
            "create the state directory",
            &self.state_dir,
        ))?;
        let marker = self.incoming_marker(name);
        std::fs::write(&marker, b"").map_err(Self::io_err(name, "write", &marker))?;
        match self.start_incoming(spec, listen).await {
            Ok(target) => Ok(target),
            Err(e) => {
                tracing::warn!(vm = name, error = %e, "migration target failed to prepare");
                if let Err(e2) = self.abort_incoming(spec).await {
                    tracing::warn!(vm = name, error = %e2, "unable to clean up the migration target");
                }
                Err(e)
            }
        }
    }

    async fn start_incoming(
        &self,
        spec: &VmSpec,
        listen: MigrationListen,
    ) -> Result<MigrationTarget, HvError> {
        let q = spec.qemu.clone().unwrap_or_default();
        for disk in &spec.disks {
            self.create_disk(&spec.name, disk, q.disk_format(&disk.name), None)
                .await?;
        }
        let mut incoming = spec.clone();
        incoming
            .args
            .extend(["-S", "-incoming", "defer"].map(String::from));
        self.spawn(&incoming).await?;
        let (qmp, _) = self.live_qmp(&spec.name)?;
        let tls = self.tls_creds(&qmp, &spec.name, "server").await?;
        let mut nbd = json!({ "addr": { "type": "inet", "data": {
            "host": listen.addr.to_string(),
            "port": listen.disk_port.to_string(),
        } } });
        if tls.is_some() {
            nbd["tls-creds"] = TLS_CREDS.into();
            qmp.execute_raw("migrate-set-parameters", json!({ "tls-creds": TLS_CREDS }))
                .await?;
        }
        qmp.execute_raw("nbd-server-start", nbd).await?;
        let mut exports = Vec::new();
        for disk in &spec.disks {
            qmp.execute_raw(
                "block-export-add",
                json!({
                    "type": "nbd",
                    "id": nbd_node(&disk.name),
                    "node-name": disk.name,
                    "name": disk.name,
                    "writable": true,
                }),
            )
            .await?;
            exports.push(MigrationExport {
                disk: disk.name.clone(),
                export: disk.name.clone(),
                size: disk.size,
            });
        }
        let uri = format!("tcp:{}", SocketAddr::new(listen.addr, listen.state_port));
        qmp.execute_raw("migrate-incoming", json!({ "uri": uri }))
            .await?;
        tracing::info!(vm = %spec.name, %uri, disks = exports.len(), tls = tls.is_some(), "waiting for the migrating vm");
        Ok(MigrationTarget {
            listen,
            exports,
            tls_name: tls,
            libvirt: None,
        })
    }

    /// Destination half 2: the switchover.
    pub(super) async fn finish_incoming(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
        let name = spec.name.as_str();
        self.adopt(name).await;
        let marker = self.incoming_marker(name);
        if !marker.exists() {
            // Finished already (a retried call) or never prepared.
            return match self.current(name).state {
                VmState::Running => Ok(self.current(name)),
                _ => Err(fail(name, "no incoming migration to finish here")),
            };
        }
        let (qmp, _) = self.live_qmp(name)?;
        // The source sees its copy completed a moment before this side
        // has loaded the last of it.
        let until = Instant::now() + QMP_CALL;
        loop {
            let st = qmp.execute_raw("query-migrate", Value::Null).await?;
            let status = st["status"].as_str().unwrap_or("none");
            if status == "completed" {
                break;
            }
            if status != "active" || Instant::now() > until {
                return Err(fail(
                    name,
                    format!("the vm's state has not arrived (incoming migration {status})"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        qmp.execute_raw("nbd-server-stop", Value::Null).await?;
        qmp.cont().await?;
        let _ = std::fs::remove_file(&marker);
        self.set_state(name, VmState::Running);
        tracing::info!(vm = name, "migrated vm resumed on the destination");
        Ok(self.current(name))
    }

    /// Destination: stop the target VM and remove the disks it was given.
    pub(super) async fn abort_incoming(&self, spec: &VmSpec) -> Result<(), HvError> {
        let name = spec.name.as_str();
        let marker = self.incoming_marker(name);
        if !marker.exists() {
            return Err(fail(
                name,
                "not a migration target here (switched over already?); nothing removed",
            ));
        }
        self.adopt(name).await;
        self.terminate(name, None).await?;
        for disk in &spec.disks {
            match std::fs::remove_file(&disk.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(HvError::Io {
                        vm: name.to_owned(),
                        action: "remove the migration target's disk",
                        path: disk.path.clone(),
                        source,
                    });
                }
            }
        }
        let _ = std::fs::remove_file(&marker);
        tracing::info!(vm = name, "migration target removed");
        Ok(())
    }

    /// Source half 1: see the module docs.
    pub(super) async fn migrate_outgoing(
        &self,
        spec: &VmSpec,
        target: &MigrationTarget,
        options: MigrationOptions,
    ) -> Result<MigrationReport, HvError> {
        let name = spec.name.as_str();
        self.adopt(name).await;
        let (qmp, state) = self.live_qmp(name)?;
        if state != VmState::Running {
            return Err(fail(name, format!("the vm is {state}, not running")));
        }
        let mut exports = Vec::new();
        for disk in &spec.disks {
            let e = target
                .exports
                .iter()
                .find(|e| e.disk == disk.name)
                .ok_or_else(|| {
                    fail(
                        name,
                        format!("the destination has no export for disk '{}'", disk.name),
                    )
                })?;
            if e.size != disk.size {
                return Err(fail(
                    name,
                    format!(
                        "disk '{}' is {} bytes here and {} at the destination",
                        disk.name, disk.size, e.size
                    ),
                ));
            }
            exports.push((disk.name.clone(), e.export.clone()));
        }
        let tls = match (&target.tls_name, &self.migration_tls) {
            (Some(peer), Some(_)) => {
                self.tls_creds(&qmp, name, "client").await?;
                Some(peer.clone())
            }
            (Some(peer), None) => {
                return Err(fail(
                    name,
                    format!(
                        "the destination ({peer}) takes migrations over TLS only, and this host has no migration TLS (its agent runs without [pki])"
                    ),
                ));
            }
            (None, Some(_)) => {
                return Err(fail(
                    name,
                    "the destination offers no TLS, and this host migrates over TLS only: give the destination's agent [pki] too",
                ));
            }
            (None, None) => None,
        };
        let mut run = Outgoing {
            vm: name,
            tls,
            qmp: qmp.with_timeout(QMP_CALL),
            nodes: Vec::new(),
            jobs: Vec::new(),
            migrating: false,
            deadline: Instant::now() + options.timeout,
        };
        match run.run(target, &exports, options).await {
            Ok(report) => {
                tracing::info!(vm = name, ?report, "vm migrated out, source paused");
                Ok(report)
            }
            Err(e) => {
                tracing::warn!(vm = name, error = %e, "live migration failed; the source runs on");
                run.rollback().await;
                Err(e)
            }
        }
    }

    /// Source half 2: stop the source after a switchover, or resume it.
    pub(super) async fn confirm_outgoing(
        &self,
        spec: &VmSpec,
        moved: bool,
    ) -> Result<VmStatus, HvError> {
        let name = spec.name.as_str();
        self.adopt(name).await;
        if moved {
            tracing::info!(vm = name, "vm moved: stopping the source");
            return self.terminate(name, None).await;
        }
        let (qmp, _) = self.live_qmp(name)?;
        let st = qmp.query_status().await?;
        if !st.running {
            qmp.cont().await?;
        }
        self.set_state(name, VmState::Running);
        tracing::info!(vm = name, "vm not moved: source resumed");
        Ok(self.current(name))
    }
}

/// One outgoing migration and what it has set up, for the rollback.
struct Outgoing<'a> {
    vm: &'a str,
    /// Over TLS, to a destination proving this name.
    tls: Option<String>,
    qmp: Qmp,
    nodes: Vec<String>,
    jobs: Vec<String>,
    migrating: bool,
    deadline: Instant,
}

impl Outgoing<'_> {
    async fn run(
        &mut self,
        target: &MigrationTarget,
        exports: &[(String, String)],
        options: MigrationOptions,
    ) -> Result<MigrationReport, HvError> {
        let start = Instant::now();
        let host = target.listen.addr.to_string();
        let port = target.listen.disk_port.to_string();
        for (disk, export) in exports {
            let node = nbd_node(disk);
            let mut add = json!({
                "driver": "nbd",
                "node-name": node,
                "server": { "type": "inet", "host": host, "port": port },
                "export": export,
            });
            if let Some(name) = &self.tls {
                add["tls-creds"] = TLS_CREDS.into();
                add["tls-hostname"] = name.as_str().into();
            }
            self.qmp.execute_raw("blockdev-add", add).await?;
            self.nodes.push(node.clone());
            let job = mirror_job(disk);
            self.qmp
                .execute_raw(
                    "blockdev-mirror",
                    json!({
                        "job-id": job,
                        "device": disk,
                        "target": node,
                        "sync": "full",
                        "copy-mode": "write-blocking",
                    }),
                )
                .await?;
            self.jobs.push(job);
        }
        self.wait_jobs(|j| j["ready"].as_bool() == Some(true), "in sync")
            .await?;
        let disk_sync = start.elapsed();
        tracing::info!(
            vm = self.vm,
            ?disk_sync,
            "disks in sync, copying the running state"
        );

        self.qmp
            .execute_raw(
                "migrate-set-capabilities",
                json!({ "capabilities": [
                    { "capability": "pause-before-switchover", "state": true },
                ] }),
            )
            .await?;
        let mut params = json!({
            "downtime-limit": u64::try_from(options.downtime_limit.as_millis()).unwrap_or(u64::MAX),
        });
        if let Some(bw) = options.max_bandwidth {
            params["max-bandwidth"] = json!(bw);
        }
        if let Some(name) = &self.tls {
            params["tls-creds"] = TLS_CREDS.into();
            params["tls-hostname"] = name.as_str().into();
        }
        self.qmp
            .execute_raw("migrate-set-parameters", params)
            .await?;
        let uri = format!(
            "tcp:{}",
            SocketAddr::new(target.listen.addr, target.listen.state_port)
        );
        let state_start = Instant::now();
        self.qmp
            .execute_raw("migrate", json!({ "uri": uri }))
            .await?;
        self.migrating = true;
        self.wait_migration("pre-switchover").await?;
        let paused = Instant::now();

        // The guest is paused: complete the mirrors (exact copies now).
        let jobs = self.query_jobs().await?;
        let disk_bytes = jobs
            .iter()
            .filter(|j| self.jobs.iter().any(|id| j["device"] == id.as_str()))
            .map(|j| j["len"].as_u64().unwrap_or(0))
            .sum();
        for job in &self.jobs {
            self.qmp
                .execute_raw("block-job-cancel", json!({ "device": job }))
                .await?;
        }
        self.wait_jobs_gone().await?;
        self.jobs.clear();
        self.del_nodes().await?;
        self.qmp
            .execute_raw("migrate-continue", json!({ "state": "pre-switchover" }))
            .await?;
        let info = self.wait_migration("completed").await?;
        self.migrating = false;
        let ms = |k: &str| info[k].as_u64().map(Duration::from_millis);
        Ok(MigrationReport {
            disk_bytes,
            disk_sync,
            state_bytes: info["ram"]["transferred"].as_u64().unwrap_or(0),
            state_copy: state_start.elapsed(),
            downtime: ms("downtime"),
            switchover: paused.elapsed(),
            total: start.elapsed(),
        })
    }

    async fn query_jobs(&self) -> Result<Vec<Value>, HvError> {
        let v = self
            .qmp
            .execute_raw("query-block-jobs", Value::Null)
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Until every job of ours satisfies `done`; a job that vanished or
    /// failed ends the wait with an error.
    async fn wait_jobs(&self, done: impl Fn(&Value) -> bool, what: &str) -> Result<(), HvError> {
        loop {
            let jobs = self.query_jobs().await?;
            let mut all = true;
            for id in &self.jobs {
                let Some(j) = jobs.iter().find(|j| j["device"] == id.as_str()) else {
                    return Err(fail(self.vm, format!("disk copy {id} ended early")));
                };
                if let Some(err) = j["error"].as_str() {
                    return Err(fail(self.vm, format!("disk copy {id} failed: {err}")));
                }
                all &= done(j);
            }
            if all {
                return Ok(());
            }
            if Instant::now() > self.deadline {
                return Err(fail(
                    self.vm,
                    format!("disks not {what} before the timeout"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait_jobs_gone(&self) -> Result<(), HvError> {
        loop {
            let jobs = self.query_jobs().await?;
            if !jobs
                .iter()
                .any(|j| self.jobs.iter().any(|id| j["device"] == id.as_str()))
            {
                return Ok(());
            }
            if Instant::now() > self.deadline {
                return Err(fail(
                    self.vm,
                    "disk copies did not complete before the timeout",
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Until the migration reaches `want`; its `query-migrate` then.
    async fn wait_migration(&self, want: &str) -> Result<Value, HvError> {
        loop {
            let info = self.qmp.execute_raw("query-migrate", Value::Null).await?;
            let status = info["status"].as_str().unwrap_or("none");
            if status == want {
                return Ok(info);
            }
            if matches!(status, "failed" | "cancelled" | "cancelling" | "none") {
                let why = info["error-desc"].as_str().unwrap_or(status);
                return Err(fail(self.vm, format!("state copy {status}: {why}")));
            }
            if Instant::now() > self.deadline {
                return Err(fail(
                    self.vm,
                    format!("state copy still {status} at the timeout"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn del_nodes(&mut self) -> Result<(), HvError> {
        while let Some(node) = self.nodes.pop() {
            self.qmp
                .execute_raw("blockdev-del", json!({ "node-name": node }))
                .await?;
        }
        Ok(())
    }

    /// Undo what `run` set up; the source runs on.
    async fn rollback(&mut self) {
        if self.migrating {
            if let Err(e) = self.qmp.execute_raw("migrate_cancel", Value::Null).await {
                tracing::warn!(vm = self.vm, error = %e, "migrate_cancel failed");
            }
            // Cancelling from pre-switchover needs no continue; wait for
            // the migration to settle so the guest is running again.
            let until = Instant::now() + QMP_CALL;
            while Instant::now() < until {
                match self.qmp.execute_raw("query-migrate", Value::Null).await {
                    Ok(i) if matches!(i["status"].as_str(), Some("cancelled" | "failed")) => break,
                    Ok(_) => tokio::time::sleep(POLL).await,
                    Err(_) => break,
                }
            }
        }
        for job in &self.jobs {
            let _ = self
                .qmp
                .execute_raw("block-job-cancel", json!({ "device": job, "force": true }))
                .await;
        }
        self.deadline = Instant::now() + QMP_CALL;
        if let Err(e) = self.wait_jobs_gone().await {
            tracing::warn!(vm = self.vm, error = %e, "disk copies did not stop");
        }
        self.jobs.clear();
        if let Err(e) = self.del_nodes().await {
            tracing::warn!(vm = self.vm, error = %e, "unable to remove the nbd nodes");
        }
        if let Ok(st) = self.qmp.query_status().await
            && !st.running
            && st.status != "shutdown"
        {
            tracing::warn!(
                vm = self.vm,
                status = st.status,
                "resuming the source after a failed migration"
            );
            if let Err(e) = self.qmp.cont().await {
                tracing::warn!(vm = self.vm, error = %e, "unable to resume the source");
            }
        }
    }
}
