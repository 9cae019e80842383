//! Live migration of a domain between two libvirtds: libvirt's own
//! peer-to-peer migration with storage copy (`VIR_MIGRATE_LIVE |
//! PEER2PEER | NON_SHARED_DISK | PERSIST_DEST | UNDEFINE_SOURCE`),
//! split into the [`Driver`](crate::Driver)'s halves so that each host's
//! agent only talks to its own libvirtd:
//!
//! - destination, `migrate_in_prepare`: creates the disks empty at their
//!   sizes and formats (libvirt's NBD copy writes into existing files),
//!   leaves `<state dir>/<vm>.incoming`, and returns the destination's
//!   libvirtd URI as the source's libvirtd reaches it, its disk and
//!   console paths;
//! - source, `migrate_out`: `virDomainMigrateToURI3` (the safe
//!   `migrate_to_uri3`). The source's libvirtd connects to the
//!   destination's, which starts the incoming QEMU from the source's
//!   migratable XML with the destination's paths; the disks go over NBD
//!   (`drive-mirror`), then the memory; libvirt's Finish phase resumes the
//!   destination and its Confirm phase kills and undefines the source. So
//!   the switchover happens inside this call, under libvirt's protocol
//!   (never two running copies): when it returns Ok, the VM runs at the
//!   destination; when it fails, libvirt resumed the source and removed
//!   the incoming domain.
//! - destination, `migrate_in_finish`: checks the domain runs there and
//!   is standby's, removes the marker;
//! - destination, `migrate_in_abort`: removes the disks prepare made
//!   (and an incoming domain still paused, which fails the source's
//!   migration: it resumes); refuses once the domain runs there;
//! - source, `migrate_out_confirm`: moved → the source's domain is gone
//!   (undefined if it is still defined, shut off), its checkpoint record
//!   removed; not moved → resumed if it was left paused.
//!
//! The `virt` 0.5 safe API has no `virDomainAbortJob`: a migration that
//! outlives its timeout is aborted with `virsh domjobabort`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quick_xml::escape::escape;
use virt::domain::{DomainState, MigrateParameters};
use virt::enumutil::Enum;

use super::LibvirtMigrationTarget;
use super::driver::{Ctx, Failed, LibvirtDriver, is_no_domain};
use crate::{
    Driver, HvError, MigrationExport, MigrationListen, MigrationOptions, MigrationReport,
    MigrationTarget, VmSpec, VmState, VmStatus,
};

fn fail(vm: &str, detail: impl Into<String>) -> HvError {
    HvError::Migration {
        vm: vm.to_owned(),
        detail: detail.into(),
    }
}

/// What the source's polling saw of the running job.
#[derive(Default, Clone, Copy)]
struct Progress {
    disk_bytes: u64,
    mem_bytes: u64,
    /// First sample with memory sent: the disks were in sync.
    disks_synced: Option<Instant>,
}

/// `xml` with every attribute value `old` (a path) replaced by `new`;
/// how many were replaced.
fn replace_path(xml: &str, old: &Path, new: &Path) -> (String, usize) {
    let (o, n) = (
        escape(old.to_string_lossy()).into_owned(),
        escape(new.to_string_lossy()).into_owned(),
    );
    let mut out = xml.to_owned();
    let mut count = 0;
    for q in ['\'', '"'] {
        let (from, to) = (format!("={q}{o}{q}"), format!("={q}{n}{q}"));
        count += out.matches(&from).count();
        out = out.replace(&from, &to);
    }
    (out, count)
}

/// The destination's host for a URI: an IPv6 address in brackets.
fn uri_host(addr: std::net::IpAddr) -> String {
    match addr {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    }
}

impl LibvirtDriver {
    fn incoming_marker(&self, vm: &str) -> PathBuf {
        self.state_dir.join(format!("{vm}.incoming"))
    }

    fn console_path(spec: &VmSpec) -> PathBuf {
        spec.workdir.join(format!("{}.console.log", spec.name))
    }

    /// Destination half 1: see the module docs.
    pub(super) async fn prepare_incoming(
        &self,
        spec: &VmSpec,
        listen: MigrationListen,
    ) -> Result<MigrationTarget, HvError> {
        let vm = spec.name.as_str();
        if spec.libvirt.as_ref().is_some_and(|l| l.adopt) || spec.qemu.is_none() {
            return Err(HvError::Unsupported {
                driver: "libvirt",
                operation: "live migration of an adopted domain (its disks are where its XML says; define it from a [vms.NAME.qemu] table)",
            });
        }
        let name = vm.to_owned();
        let defined = self
            .call(vm, move |c| Ok(Self::lookup(c, &name)?.is_some()))
            .await?;
        if defined {
            return Err(fail(
                vm,
                format!(
                    "a domain '{vm}' is already defined at the destination ({}); undefine it first",
                    self.uri
                ),
            ));
        }
        crate::check_template_disks(spec, &[])?;
        for (dir, what) in [
            (&self.state_dir, "create the state directory"),
            (&spec.workdir, "create the work dir"),
        ] {
            std::fs::create_dir_all(dir).map_err(|source| HvError::Io {
                vm: vm.to_owned(),
                action: what,
                path: dir.clone(),
                source,
            })?;
        }
        let marker = self.incoming_marker(vm);
        std::fs::write(&marker, b"").map_err(|source| HvError::Io {
            vm: vm.to_owned(),
            action: "write the migration marker",
            path: marker.clone(),
            source,
        })?;
        if let Err(e) = self.disks.create_from_template(spec, &[]).await {
            let _ = self.migrate_in_abort_impl(spec).await;
            return Err(e);
        }
        let mut exports = Vec::new();
        let mut disk_paths = BTreeMap::new();
        for (i, d) in spec.disks.iter().enumerate() {
            exports.push(MigrationExport {
                disk: d.name.clone(),
                export: super::xml::target_dev(i),
                size: d.size,
            });
            disk_paths.insert(d.name.clone(), d.path.clone());
        }
        let peer_uri = self.peer_uri.replace("{addr}", &uri_host(listen.addr));
        tracing::info!(vm, %peer_uri, disks = exports.len(), "migration target prepared");
        Ok(MigrationTarget {
            listen,
            exports,
            // libvirt's own transport: qemu+tls between the libvirtds.
            tls_name: None,
            libvirt: Some(LibvirtMigrationTarget {
                peer_uri,
                disk_paths,
                console: Self::console_path(spec),
            }),
        })
    }

    /// Source half: see the module docs.
    pub(super) async fn migrate_out_impl(
        &self,
        spec: &VmSpec,
        target: &MigrationTarget,
        options: MigrationOptions,
    ) -> Result<MigrationReport, HvError> {
        let vm = spec.name.as_str();
        let Some(lt) = target.libvirt.clone() else {
            return Err(fail(
                vm,
                "the destination is not a libvirt host (no libvirt migration target)",
            ));
        };
        for d in &spec.disks {
            match target.exports.iter().find(|e| e.disk == d.name) {
                Some(e) if e.size == d.size => {}
                Some(e) => {
                    return Err(fail(
                        vm,
                        format!(
                            "disk '{}' is {} bytes at the destination, {} here",
                            d.name, e.size, d.size
                        ),
                    ));
                }
                None => {
                    return Err(fail(
                        vm,
                        format!("the destination has no disk '{}'", d.name),
                    ));
                }
            }
            if !lt.disk_paths.contains_key(&d.name) {
                return Err(fail(
                    vm,
                    format!("the destination gave no path for disk '{}'", d.name),
                ));
            }
        }
        let s = spec.clone();
        let console = Self::console_path(spec);
        let name = vm.to_owned();
        // The live migratable XML with the destination's paths, and the
        // target devices to copy.
        let prepared = self
            .call(vm, move |c| {
                let Some(dom) = Self::lookup(c, &name)? else {
                    return Ok(Err(fail(&name, "no domain of that name here")));
                };
                let (state, _) = dom.state().ctx("read the domain state")?;
                if state != Enum::Known(DomainState::Running) {
                    return Ok(Err(fail(&name, "the domain is not running")));
                }
                let info = Self::info(&dom)?;
                let disks = match Self::domain_disks(&s, &info) {
                    Ok(d) => d,
                    Err(e) => return Ok(Err(e)),
                };
                let flags = virt::sys::VIR_DOMAIN_XML_MIGRATABLE | virt::sys::VIR_DOMAIN_XML_SECURE;
                // The running definition for the incoming QEMU, and the
                // persistent one the destination keeps (without it,
                // libvirt would persist the source's, with the source's
                // paths).
                let live = dom.xml_desc(flags).ctx("read the migratable domain xml")?;
                let persistent = dom
                    .xml_desc(flags | virt::sys::VIR_DOMAIN_XML_INACTIVE)
                    .ctx("read the persistent domain xml")?;
                let mut out = Vec::new();
                let mut devs = Vec::new();
                for mut x in [live, persistent] {
                    devs.clear();
                    for (disk, dev, source, _) in &disks {
                        let (y, n) = replace_path(&x, source, &lt.disk_paths[disk]);
                        if n == 0 {
                            return Ok(Err(fail(
                                &name,
                                format!(
                                    "disk {dev} ({}) not found in the domain xml",
                                    source.display()
                                ),
                            )));
                        }
                        x = y;
                        devs.push(dev.clone());
                    }
                    out.push(replace_path(&x, &console, &lt.console).0);
                }
                let persistent = out.pop().unwrap_or_default();
                let live = out.pop().unwrap_or_default();
                Ok(Ok((live, persistent, devs)))
            })
            .await??;
        let (xml, persist_xml, devs) = prepared;
        let params = MigrateParameters {
            dest_xml: Some(xml),
            persist_xml: Some(persist_xml),
            uri: Some(format!(
                "tcp://{}:{}",
                uri_host(target.listen.addr),
                target.listen.state_port
            )),
            listen_address: Some(target.listen.addr.to_string()),
            disks_port: Some(i32::from(target.listen.disk_port)),
            migrate_disks: devs,
            // MiB/s.
            bandwidth: options.max_bandwidth.map(|b| b.div_ceil(1 << 20)),
            ..MigrateParameters::default()
        };
        let flags = virt::sys::VIR_MIGRATE_LIVE
            | virt::sys::VIR_MIGRATE_PEER2PEER
            | virt::sys::VIR_MIGRATE_NON_SHARED_DISK
            | virt::sys::VIR_MIGRATE_PERSIST_DEST
            | virt::sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        let downtime_ms = options.downtime_limit.as_millis() as u64;
        let peer = lt.peer_uri.clone();
        let name = vm.to_owned();
        let t0 = Instant::now();
        tracing::info!(vm, peer_uri = %peer, ?params.uri, "live migration starts");
        let mut run = Box::pin(self.call(vm, move |c| {
            let Some(dom) = Self::lookup(c, &name)? else {
                return Ok(Err("the domain went away".to_owned()));
            };
            if let Err(e) = dom.migrate_set_max_downtime(downtime_ms, 0) {
                tracing::debug!(vm = %name, error = %e.message(), "max downtime not set");
            }
            Ok(dom
                .migrate_to_uri3(Some(&peer), params, flags)
                .map_err(|e| e.message().to_owned()))
        }));
        // Poll the job beside it for the report.
        let progress = Arc::new(std::sync::Mutex::new(Progress::default()));
        let done = Arc::new(AtomicBool::new(false));
        let poller = {
            let (uri, name, progress, done) = (
                self.uri.clone(),
                vm.to_owned(),
                progress.clone(),
                done.clone(),
            );
            tokio::task::spawn_blocking(move || poll_job(&uri, &name, &progress, &done))
        };
        let outcome = tokio::select! {
            r = &mut run => Some(r),
            () = tokio::time::sleep(options.timeout) => None,
        };
        let outcome = match outcome {
            Some(r) => r,
            None => {
                tracing::warn!(vm, timeout = ?options.timeout, "live migration timed out: aborting it");
                if let Err(e) = self.virsh(vm, &["domjobabort", vm]).await {
                    tracing::warn!(vm, error = %e, "unable to abort the migration job");
                }
                match run.await {
                    Ok(Ok(())) => Ok(Ok(())),
                    Ok(Err(e)) => Ok(Err(format!(
                        "timed out after {:?} and aborted: {e}",
                        options.timeout
                    ))),
                    Err(e) => Err(e),
                }
            }
        };
        done.store(true, Ordering::Relaxed);
        let _ = poller.await;
        let total = t0.elapsed();
        match outcome? {
            Ok(()) => {}
            Err(detail) => {
                // libvirt resumes the source itself when it fails before
                // the switchover. A source left paused is resumed only by
                // `migrate_out_confirm(false)`, after the destination was
                // aborted (which refuses once the VM runs there): never
                // two running copies.
                tracing::warn!(vm, %detail, "live migration failed");
                return Err(fail(vm, detail));
            }
        }
        let p = *progress.lock().unwrap_or_else(|e| e.into_inner());
        let disk_sync = p.disks_synced.map_or(total, |t| t.duration_since(t0));
        let report = MigrationReport {
            disk_bytes: p.disk_bytes,
            disk_sync,
            state_bytes: p.mem_bytes,
            state_copy: total.saturating_sub(disk_sync),
            downtime: None,
            switchover: Duration::ZERO,
            total,
        };
        tracing::info!(
            vm,
            ?total,
            disk_bytes = p.disk_bytes,
            "live migration completed: the vm runs at the destination"
        );
        Ok(report)
    }

    /// Destination half 2: the domain runs here (libvirt's Finish phase
    /// resumed it) and is standby's.
    pub(super) async fn finish_incoming(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
        let vm = spec.name.as_str();
        let name = vm.to_owned();
        let found = self
            .call(vm, move |c| match Self::lookup(c, &name)? {
                Some(d) => {
                    let info = Self::info(&d)?;
                    let active = d.is_active().ctx("read the domain state")?;
                    let persistent = d.is_persistent().ctx("read the domain persistence")?;
                    Ok(Some((info.standby_vm, active, persistent)))
                }
                None => Ok(None),
            })
            .await?;
        match found {
            None => Err(fail(vm, "no domain arrived at the destination")),
            Some((owner, _, _)) if owner.as_deref() != Some(vm) => {
                Err(fail(vm, "the domain at the destination is not standby's"))
            }
            Some((_, false, _)) => Err(fail(vm, "the domain at the destination is not running")),
            Some((_, true, persistent)) => {
                let st = self.observe_pub(vm).await?;
                if st.state != VmState::Running {
                    return Err(fail(
                        vm,
                        format!(
                            "the domain at the destination is {:?}, not running",
                            st.state
                        ),
                    ));
                }
                if !persistent {
                    tracing::warn!(vm, "the migrated domain is transient at the destination");
                }
                let _ = std::fs::remove_file(self.incoming_marker(vm));
                tracing::info!(vm, "the vm runs at the destination");
                Ok(st)
            }
        }
    }

    /// Destination: give up a migration not switched over.
    pub(super) async fn migrate_in_abort_impl(&self, spec: &VmSpec) -> Result<(), HvError> {
        let vm = spec.name.as_str();
        let marker = self.incoming_marker(vm);
        if !marker.exists() {
            tracing::info!(vm, "no migration target here to abort");
            return Ok(());
        }
        let name = vm.to_owned();
        let refused = self
            .call(vm, move |c| {
                let Some(d) = Self::lookup(c, &name)? else {
                    return Ok(None);
                };
                let (state, _) = d.state().ctx("read the domain state")?;
                match state {
                    // Still waiting for its state: destroying it fails the
                    // source's migration, which resumes the source.
                    Enum::Known(DomainState::Paused) => match d.destroy() {
                        Ok(()) => Ok(None),
                        // The failed migration removed the transient
                        // domain under the call.
                        Err(e) if is_no_domain(&e) || !d.is_active().unwrap_or(true) => {
                            drop(e);
                            Ok(None)
                        }
                        Err(e) => Err(Failed {
                            action: "destroy the incoming domain",
                            detail: e.message().to_owned(),
                        }),
                    },
                    Enum::Known(DomainState::Shutoff) => Ok(None),
                    _ => Ok(Some(())),
                }
            })
            .await?;
        if refused.is_some() {
            return Err(fail(
                vm,
                "the vm already runs at the destination (the migration completed): not aborting",
            ));
        }
        let name = vm.to_owned();
        // A paused incoming domain destroyed: transient, it vanishes;
        // defined (shut off) by a completed-then-stopped move: kept.
        let defined = self
            .call(vm, move |c| match Self::lookup(c, &name)? {
                Some(d) => Ok(!d.is_active().ctx("read the domain state")?
                    && d.is_persistent().ctx("read the domain persistence")?),
                None => Ok(false),
            })
            .await?;
        if defined {
            return Err(fail(
                vm,
                "a shut-off domain of that name is defined at the destination: not removing its disks",
            ));
        }
        for d in &spec.disks {
            match std::fs::remove_file(&d.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(HvError::Io {
                        vm: vm.to_owned(),
                        action: "remove a disk of the migration target",
                        path: d.path.clone(),
                        source,
                    });
                }
            }
        }
        let _ = std::fs::remove_file(&marker);
        tracing::info!(vm, "migration target removed");
        Ok(())
    }

    /// Source half 2: see the module docs.
    pub(super) async fn confirm_out(
        &self,
        spec: &VmSpec,
        moved: bool,
    ) -> Result<VmStatus, HvError> {
        let vm = spec.name.as_str();
        if moved {
            let name = vm.to_owned();
            let running = self
                .call(vm, move |c| match Self::lookup(c, &name)? {
                    Some(d) if d.is_active().ctx("read the domain state")? => Ok(true),
                    Some(d) => {
                        // 16: VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                        d.undefine_flags(16).ctx("undefine the source domain")?;
                        Ok(false)
                    }
                    None => Ok(false),
                })
                .await?;
            if running {
                return Err(fail(
                    vm,
                    "the source domain still runs: the migration did not complete here",
                ));
            }
            // Its checkpoints went with the domain.
            let _ = std::fs::remove_file(self.state_dir.join(format!("{vm}.checkpoint")));
        } else {
            let st = self.observe_pub(vm).await?;
            if st.state == VmState::Frozen {
                self.resume_paused(vm).await?;
            }
        }
        self.observe_pub(vm).await
    }

    async fn resume_paused(&self, vm: &str) -> Result<(), HvError> {
        let name = vm.to_owned();
        self.call(vm, move |c| match Self::lookup(c, &name)? {
            Some(d) => d.resume().ctx("resume the source domain"),
            None => Ok(()),
        })
        .await
    }
}

/// Sample the migration job of `vm` until `done` (a connection of its
/// own; `job_info`, not the unsound `job_stats`, see the docs).
fn poll_job(uri: &str, vm: &str, progress: &std::sync::Mutex<Progress>, done: &AtomicBool) {
    let Ok(conn) = virt::connect::Connect::open(Some(uri)) else {
        return;
    };
    if let Ok(dom) = conn.lookup_domain_by_name(vm) {
        while !done.load(Ordering::Relaxed) {
            if let Ok(j) = dom.job_info()
                && j.r#type != 0
            {
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                p.disk_bytes = p.disk_bytes.max(j.disk_processed.unwrap_or(0));
                let mem = j.mem_processed.unwrap_or(0);
                p.mem_bytes = p.mem_bytes.max(mem);
                if mem > 0 && p.disks_synced.is_none() {
                    p.disks_synced = Some(Instant::now());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_replaced_in_attributes_only() {
        let x = "<disk><source file='/a/b&apos;c.img' index='1'/></disk><x>/a/b'c.img</x>";
        let (y, n) = replace_path(x, Path::new("/a/b'c.img"), Path::new("/d/e&f.img"));
        assert_eq!(n, 1);
        assert_eq!(
            y,
            "<disk><source file='/d/e&amp;f.img' index='1'/></disk><x>/a/b'c.img</x>"
        );
        assert_eq!(uri_host("::1".parse().unwrap()), "[::1]");
        assert_eq!(uri_host("198.18.0.2".parse().unwrap()), "198.18.0.2");
    }
}
