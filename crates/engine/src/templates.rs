//! Templates and VMs made from them (`standby template`, `standby vm
//! create --template`).
//!
//! A template lives in the datastores (`standby_store::Template`: a
//! point's manifest under a name, sharing the point's chunks), so the
//! datastores are its truth: listing reads them. It is made in a
//! datastore holding its point and copied to **every datastore that
//! holds the point and every datastore of the source VM's protection
//! groups**, i.e. wherever the VM's points are copied, so every site
//! that could restore the VM can deploy the template.
//!
//! A VM made from a template is a **managed VM**: kept in the database
//! ([`standby_db::ManagedVmRepo`]) as its `[vms.NAME]` fields and joined
//! to the file's VMs at start and at every reload, as groups made through
//! the API are (`groups.rs`). Its machine is the template's (the source
//! VM's configuration at the point: memory, processors, kernel, disks),
//! at the host asked for, with its own forwards (the template's would
//! clash with the source VM's), no DR site and no protection group.
//! Its disks are written from the template like a restore writes a
//! point's (sparse), from a datastore the host reads, nearest first.
//!
//! Where the data is decides who works (`standby_agent::templates`): a
//! store an agent serves is read and written by that agent; the template
//! is made in every store holding its point (no data moves) and copied
//! with the missing chunks only between stores the controller opens.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use standby_agent::{Quiet, StoreHandle, StoreRef};
use standby_db::ManagedVm;
use standby_store::{PointId, Template};
use standby_types::api::{
    TemplateCopy, TemplateCreated, TemplateDisk, TemplateInfo, VmCreateRequest, VmCreated,
    VmDeleted,
};
use standby_types::config::{Config, QemuForward, Vm};
use standby_types::watch::{Event, Labels, Severity};

use crate::controller::Controller;
use crate::error::{EngineError, error_chain};
use crate::groups::Asker;

/// Every datastore, as the controller reaches it.
fn template_stores(ctl: &Controller) -> Vec<StoreHandle> {
    let mut out = Vec::new();
    for name in ctl.cfg().datastores.keys() {
        match ctl.store_handle(name) {
            Ok(h) => out.push(h),
            Err(e) => tracing::warn!(datastore = %name, "templates: skipped: {e}"),
        }
    }
    out
}

/// Every template, with the datastores holding it.
async fn collect(ctl: &Controller) -> BTreeMap<String, (Template, Vec<String>)> {
    let mut all: BTreeMap<String, (Template, Vec<String>)> = BTreeMap::new();
    for h in template_stores(ctl) {
        match h.templates().await {
            Ok(ts) => {
                for t in ts {
                    all.entry(t.name.clone())
                        .or_insert_with(|| (t, Vec::new()))
                        .1
                        .push(h.name().to_string());
                }
            }
            Err(e) => {
                tracing::warn!(datastore = %h.name(), "templates: skipped: {}", error_chain(&e))
            }
        }
    }
    all
}

fn info(cfg: &Config, t: &Template, datastores: Vec<String>) -> TemplateInfo {
    let vm: Option<Vm> = serde_json::from_value(t.point.config.clone()).ok();
    let format_of = |disk: &str| {
        vm.as_ref()
            .and_then(|v| v.disks.iter().find(|d| d.name == disk))
            .map(|d| match d.format {
                standby_types::config::DiskFormat::Raw => "raw",
                standby_types::config::DiskFormat::Qcow2 => "qcow2",
            })
            .unwrap_or("raw")
            .to_string()
    };
    let sites: BTreeSet<String> = datastores
        .iter()
        .filter_map(|d| cfg.datastores.get(d).map(|c| c.site.clone()))
        .collect();
    TemplateInfo {
        name: t.name.clone(),
        source: t.source.to_string(),
        vm: t.point.vm.clone(),
        created: t.created,
        tenant: vm.as_ref().and_then(|v| v.tenant.clone()),
        size: t.size(),
        disks: t
            .point
            .disks
            .iter()
            .map(|d| TemplateDisk {
                name: d.name.clone(),
                size: d.size,
                format: format_of(&d.name),
            })
            .collect(),
        memory_mib: vm
            .as_ref()
            .and_then(|v| v.qemu.as_ref())
            .map(|q| q.memory_mib),
        cpus: vm.as_ref().and_then(|v| v.qemu.as_ref()).map(|q| q.cpus),
        datastores,
        sites: sites.into_iter().collect(),
    }
}

/// Every template `who` may see (a tenant's user: its own VMs' only).
pub async fn list(ctl: &Controller, who: &Asker<'_>) -> Vec<TemplateInfo> {
    let cfg = ctl.cfg();
    collect(ctl)
        .await
        .into_values()
        .map(|(t, stores)| info(&cfg, &t, stores))
        .filter(|t| who.tenant.is_none() || t.tenant.as_deref() == who.tenant)
        .collect()
}

pub async fn get(
    ctl: &Controller,
    name: &str,
    who: &Asker<'_>,
) -> Result<TemplateInfo, EngineError> {
    list(ctl, who)
        .await
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| EngineError::not_found("template", name))
}

/// Make template `name` from `from` (`VM` for its newest point, or a
/// point id) and copy it to every datastore that should hold it.
pub async fn create(
    ctl: &Arc<Controller>,
    name: &str,
    from: &str,
    who: &Asker<'_>,
) -> Result<TemplateCreated, EngineError> {
    let started = Instant::now();
    if !standby_store::valid_template_name(name) {
        return Err(EngineError::BadRequest(format!(
            "template name {name:?}: 1 to 128 of letters, digits, '-' and '_'"
        )));
    }
    let cfg = ctl.cfg();
    let vm = from.split_once('@').map_or(from, |(vm, _)| vm);
    // A tenant's user sees its own VMs only.
    if !cfg.vms.contains_key(vm) || who.tenant.is_some_and(|t| cfg.tenant_of_vm(vm) != Some(t)) {
        return Err(EngineError::not_found("vm", vm));
    }
    let stores = template_stores(ctl);
    let _one = ctl.reloading.lock().await;
    if let Some((_, held)) = collect(ctl).await.remove(name) {
        return Err(EngineError::Conflict(format!(
            "template {name} exists already (in {})",
            held.join(", ")
        )));
    }
    let point: PointId = match from.split_once('@') {
        Some(_) => from
            .parse()
            .map_err(|e| EngineError::BadRequest(format!("from {from:?}: {e}")))?,
        None => crate::restore::newest_readable(ctl, vm, None).await?.0.id,
    };
    // Where the point is (its datastores are the truth), and where the
    // VM's points go: the template goes to all of them.
    let mut holders = Vec::new();
    for h in &stores {
        if h.has_point(&point).await.unwrap_or(false) {
            holders.push(h.clone());
        }
    }
    let Some(first) = holders.first().cloned() else {
        return Err(EngineError::not_found("point", point.to_string()));
    };
    let mut targets: BTreeSet<String> = holders.iter().map(|h| h.name().to_string()).collect();
    for g in cfg.groups.values() {
        if g.members.iter().any(|m| m == vm) {
            targets.extend(g.datastores.iter().cloned());
        }
    }
    let t = first.create_template(name, &point).await?;
    let mut copies = vec![TemplateCopy {
        datastore: first.name().to_string(),
        chunks_copied: 0,
        bytes_copied: 0,
        chunks_skipped: 0,
        error: None,
    }];
    let mut held = vec![first.name().to_string()];
    for ds in targets.iter().filter(|d| *d != first.name()) {
        let mut copy = TemplateCopy {
            datastore: ds.clone(),
            chunks_copied: 0,
            bytes_copied: 0,
            chunks_skipped: 0,
            error: None,
        };
        // Where the point is, the template is made there (no data
        // moves); elsewhere it is copied.
        let holder = holders.iter().find(|h| h.name() == ds);
        let done = match (holder, ctl.store_handle(ds)) {
            (Some(h), _) => h
                .create_template(name, &point)
                .await
                .map(|_| Default::default())
                .map_err(|e| error_chain(&e)),
            (None, Ok(to)) => standby_agent::copy_template(&first, &to, name, Arc::new(Quiet))
                .await
                .map_err(|e| error_chain(&e)),
            (None, Err(e)) => Err(error_chain(&e)),
        };
        match done {
            Ok(s) => {
                copy.chunks_copied = s.chunks_copied;
                copy.bytes_copied = s.bytes_copied;
                copy.chunks_skipped = s.chunks_skipped;
                held.push(ds.clone());
            }
            Err(e) => {
                tracing::warn!(template = name, datastore = %ds, "template not copied: {e}");
                copy.error = Some(e);
            }
        }
        copies.push(copy);
    }
    emit(
        ctl,
        "template.created",
        name,
        None,
        &format!("template {name} made from {point} by {}", who.name),
    );
    Ok(TemplateCreated {
        template: info(&cfg, &t, held),
        copies,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Delete template `name` from every datastore holding it; its chunks
/// go at each one's next gc (unless points still name them).
pub async fn delete(
    ctl: &Controller,
    name: &str,
    who: &Asker<'_>,
) -> Result<Vec<String>, EngineError> {
    let t = get(ctl, name, who).await?;
    let mut gone = Vec::new();
    for ds in &t.datastores {
        if ctl.store_handle(ds)?.delete_template(name).await? {
            gone.push(ds.clone());
        }
    }
    emit(
        ctl,
        "template.deleted",
        name,
        None,
        &format!("template {name} deleted by {}", who.name),
    );
    Ok(gone)
}

fn emit(ctl: &Controller, kind: &str, template: &str, vm: Option<&str>, message: &str) {
    let mut labels = Labels::new();
    labels.insert("template".into(), template.to_string());
    if let Some(vm) = vm {
        labels.insert("vm".into(), vm.to_string());
    }
    ctl.watch.emit(Event {
        id: 0,
        at: Utc::now(),
        source: "api".into(),
        kind: kind.into(),
        severity: Severity::Info,
        labels,
        vantage: "controller".into(),
        message: message.to_string(),
    });
    tracing::info!("{message}");
}

/// The configuration of a new VM `req.name` from template `t`: the
/// template's machine and disks at `req.host`, with `req.forwards`.
fn vm_from(t: &Template, req: &VmCreateRequest, tenant: Option<&str>) -> Result<Vm, EngineError> {
    let mut vm: Vm = serde_json::from_value(t.point.config.clone()).map_err(|e| {
        EngineError::Conflict(format!(
            "template {}: the configuration it recorded of vm {} does not read: {e}",
            t.name, t.point.vm
        ))
    })?;
    vm.host = req.host.clone();
    vm.dr_site = None;
    vm.dr_sites.clear();
    vm.priority = 0;
    // The template's tenant's VM stays the tenant's.
    if let Some(t) = tenant {
        vm.tenant = Some(t.to_string());
    }
    let forwards = req
        .forwards
        .iter()
        .map(|f| {
            serde_json::to_value(f)
                .and_then(serde_json::from_value::<QemuForward>)
                .map_err(|e| {
                    EngineError::BadRequest(format!(
                        "forward {}:{}->{}: {e}",
                        f.protocol, f.host_port, f.guest_port
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    match &mut vm.qemu {
        Some(q) => q.forwards = forwards,
        None if !forwards.is_empty() => {
            return Err(EngineError::BadRequest(format!(
                "template {} is of a process VM: forwards are for qemu VMs",
                t.name
            )));
        }
        None => {}
    }
    // A template's disks are what the VM gets.
    let sizes: BTreeMap<&str, u64> = t
        .point
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.size))
        .collect();
    for d in &mut vm.disks {
        if let Some(size) = sizes.get(d.name.as_str()) {
            d.size = standby_types::config::ByteSize(*size);
        }
    }
    Ok(vm)
}

/// Make VM `req.name` from template `req.template` at `req.host`: its
/// disks written from a datastore the host reads, kept as a managed VM,
/// started when asked.
pub async fn deploy(
    ctl: &Arc<Controller>,
    req: &VmCreateRequest,
    who: &Asker<'_>,
) -> Result<VmCreated, EngineError> {
    let started = Instant::now();
    let name = req.name.as_str();
    if !standby_store::valid_vm_name(name) {
        return Err(EngineError::BadRequest(format!(
            "vm name {name:?}: 1 to 128 of letters, digits, '-' and '_'"
        )));
    }
    let _one = ctl.reloading.lock().await;
    let cfg = ctl.cfg();
    if cfg.vms.contains_key(name) {
        return Err(EngineError::Conflict(format!("vm {name} exists already")));
    }
    let host = cfg
        .hosts
        .get(&req.host)
        .ok_or_else(|| EngineError::not_found("host", &req.host))?;
    let site = host.site.clone();
    let mut all = collect(ctl).await;
    let (t, held) = match all.remove(&req.template) {
        Some((t, held)) => {
            let tenant = info(&cfg, &t, Vec::new()).tenant;
            if who.tenant.is_some() && tenant.as_deref() != who.tenant {
                return Err(EngineError::not_found("template", &req.template));
            }
            (t, held)
        }
        None => return Err(EngineError::not_found("template", &req.template)),
    };
    // From a datastore the host reads itself, one at its site first.
    let mut readable: Vec<&String> = held
        .iter()
        .filter(|d| ctl.host_reaches(&req.host, d))
        .collect();
    readable.sort_by_key(|d| cfg.datastores.get(*d).is_none_or(|c| c.site != site));
    if readable.is_empty() {
        return Err(EngineError::Conflict(format!(
            "template {} is in datastore(s) {}, none of which host {} (site {site}) reads",
            req.template,
            held.join(", "),
            req.host
        )));
    }
    let vm = vm_from(&t, req, who.tenant)?;
    let mut new = (*cfg).clone();
    let (with, _) = new
        .clone()
        .with_managed_vms(vec![(name.to_string(), vm.clone())]);
    new = with;
    new.check_whole().map_err(|e| {
        EngineError::BadRequest(format!("vm {name} from template {}: {e}", req.template))
    })?;
    crate::vms::refuse_fenced(ctl, &site).await?;
    let agent = ctl.agent(&req.host)?;
    let spec = agent.spec(&new, name)?;
    let mut written = None;
    let mut tried = Vec::new();
    for ds in readable {
        let handle = ctl.store_handle(ds)?;
        let Some(config) = cfg.datastores.get(ds) else {
            continue;
        };
        let target = StoreRef {
            name: ds,
            config,
            store: handle.here().cloned(),
        };
        match agent
            .restore_template(&spec, &target, &req.template, Arc::new(Quiet))
            .await
        {
            Ok(done) => {
                written = Some((ds.clone(), done));
                break;
            }
            Err(e) if e.is_datastore() => tried.push(format!("{ds}: {}", error_chain(&e))),
            Err(e) => return Err(e.into()),
        }
    }
    let Some((datastore, done)) = written else {
        return Err(EngineError::Conflict(format!(
            "template {} could not be written from any datastore: {}",
            req.template,
            tried.join("; ")
        )));
    };
    let spec_json = serde_json::to_string(&vm)
        .map_err(|e| EngineError::Internal(format!("vm {name} as JSON: {e}")))?;
    if ctl.leader.deposed() {
        return Err(EngineError::Conflict(
            "this controller no longer leads: ask the leader".into(),
        ));
    }
    ctl.repo
        .put_managed_vm(&ManagedVm {
            name: name.to_string(),
            spec: spec_json,
            template: req.template.clone(),
            tenant: vm.tenant.clone(),
            created_by: who.name.to_string(),
            created_at: Utc::now(),
        })
        .await?;
    ctl.repo.apply_config(&new).await?;
    ctl.live_config().set(Arc::new(new));
    emit(
        ctl,
        "vm.created",
        &req.template,
        Some(name),
        &format!(
            "vm {name} made from template {} at {} by {}",
            req.template, req.host, who.name
        ),
    );
    let mut started_vm = false;
    if req.start {
        agent.start(&spec).await?;
        started_vm = true;
    }
    Ok(VmCreated {
        vm: name.to_string(),
        template: req.template.clone(),
        host: req.host.clone(),
        site,
        datastore,
        bytes: done.bytes,
        written: done.written,
        started: started_vm,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Delete VM `name`, made from a template (a VM made through the API):
/// refused for a VM the configuration file declares, one that runs (or
/// whose host cannot say), one in a protection group, or one something
/// else of the configuration names (a service, a plan). It leaves the
/// configuration in force and the database; its disks stay where they are
/// (the answer names them).
pub async fn delete_vm(
    ctl: &Arc<Controller>,
    name: &str,
    who: &Asker<'_>,
) -> Result<VmDeleted, EngineError> {
    let _one = ctl.reloading.lock().await;
    let _vm = ctl.lock_vm(name).await;
    let cfg = ctl.cfg();
    let vm = cfg
        .vms
        .get(name)
        .filter(|v| who.tenant.is_none() || v.tenant.as_deref() == who.tenant)
        .ok_or_else(|| EngineError::not_found("vm", name))?;
    if !vm.managed {
        return Err(EngineError::Conflict(format!(
            "vm {name} is declared in the configuration file: remove it there"
        )));
    }
    let groups = cfg.groups_of(name);
    if !groups.is_empty() {
        return Err(EngineError::Conflict(format!(
            "vm {name} is a member of group(s) {}: take it out first",
            groups.join(", ")
        )));
    }
    let rec = ctl.repo.vm(name).await?;
    let agent = ctl.agent(&rec.active_host)?;
    match agent.status(name).await {
        Ok(st) if st.is_alive() => {
            return Err(EngineError::Conflict(format!(
                "vm {name} is {} at {}: stop it first (standby vm stop {name})",
                st.state, rec.active_host
            )));
        }
        Ok(_) => {}
        Err(e) => {
            return Err(EngineError::Conflict(format!(
                "vm {name}: host {} cannot say whether it runs there ({}); delete it once it answers",
                rec.active_host,
                error_chain(&e)
            )));
        }
    }
    let disks: Vec<String> = agent
        .spec(&cfg, name)?
        .disks
        .iter()
        .map(|d| d.path.display().to_string())
        .collect();
    let mut new = (*cfg).clone();
    new.vms.remove(name);
    new.check_whole()
        .map_err(|e| EngineError::Conflict(format!("vm {name} is still needed: {e}")))?;
    if ctl.leader.deposed() {
        return Err(EngineError::Conflict(
            "this controller no longer leads: ask the leader".into(),
        ));
    }
    let template = ctl
        .repo
        .managed_vms()
        .await?
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| m.template)
        .unwrap_or_default();
    ctl.repo.delete_managed_vm(name).await?;
    ctl.repo.apply_config(&new).await?;
    ctl.live_config().set(Arc::new(new));
    emit(
        ctl,
        "vm.deleted",
        &template,
        Some(name),
        &format!(
            "vm {name} (made from template {template}) deleted by {}; its disks stay at {}",
            who.name, rec.active_host
        ),
    );
    Ok(VmDeleted {
        vm: name.to_string(),
        host: rec.active_host,
        disks_left: disks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use standby_store::{Consistency, Manifest};
    use standby_types::api::ForwardSpec;

    fn template() -> Template {
        let config = serde_json::json!({
            "host": "site1-host1",
            "dr_site": "site2",
            "priority": 5,
            "qemu": {
                "memory_mib": 512,
                "cpus": 2,
                "kernel": "/k",
                "forwards": [{"protocol": "udp", "host_addr": "{site.addr}", "host_port": 5060, "guest_port": 5060}]
            },
            "disks": [{"name": "data", "size": "64MiB", "format": "qcow2"}],
        });
        let time = Utc::now();
        let id = PointId::new("pbx1", time).unwrap();
        let point = Manifest {
            version: 1,
            id: id.clone(),
            vm: "pbx1".into(),
            site: "site1".into(),
            time,
            consistency: Consistency::Crash,
            config,
            labels: Default::default(),
            disks: Vec::new(),
            checksum: String::new(),
        };
        Template {
            version: 1,
            name: "base".into(),
            created: time,
            source: id,
            point,
        }
    }

    fn request(forwards: Vec<ForwardSpec>) -> VmCreateRequest {
        VmCreateRequest {
            name: "pbx2".into(),
            template: "base".into(),
            host: "site2-host1".into(),
            forwards,
            start: true,
        }
    }

    #[test]
    fn a_vm_from_a_template_has_its_machine_its_own_host_and_forwards_and_no_dr() {
        let f = ForwardSpec {
            protocol: "udp".into(),
            host_addr: Some("{site.addr}".into()),
            host_port: 15060,
            guest_port: 5060,
        };
        let vm = vm_from(&template(), &request(vec![f]), Some("acme")).unwrap();
        assert_eq!(vm.host, "site2-host1");
        assert!(vm.dr_site.is_none() && vm.dr_sites.is_empty());
        assert_eq!((vm.priority, vm.tenant.as_deref()), (0, Some("acme")));
        let q = vm.qemu.unwrap();
        assert_eq!((q.memory_mib, q.cpus), (512, 2));
        // The template's forward (the source VM's port) is not taken.
        assert_eq!(q.forwards.len(), 1);
        assert_eq!(q.forwards[0].host_port, 15060);
        assert_eq!(q.forwards[0].host_addr, "{site.addr}");
        assert_eq!(vm.disks[0].format, standby_types::config::DiskFormat::Qcow2);
        // Without forwards it has none.
        let vm = vm_from(&template(), &request(Vec::new()), None).unwrap();
        assert!(vm.qemu.unwrap().forwards.is_empty());
        // A bad forward is a bad request naming it.
        let bad = ForwardSpec {
            protocol: "sctp".into(),
            host_addr: None,
            host_port: 1,
            guest_port: 2,
        };
        let e = vm_from(&template(), &request(vec![bad]), None).unwrap_err();
        assert!(
            matches!(&e, EngineError::BadRequest(m) if m.contains("sctp")),
            "{e}"
        );
    }
}
