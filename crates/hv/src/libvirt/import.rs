//! [`super::list_domains`]: what `standby vm import` reads from a host.

use virt::connect::Connect;

use super::driver::{Ctx, Failed, LibvirtDriver};
use super::{ImportedDisk, ImportedVm};
use crate::HvError;

/// Every domain defined (or running) at `uri`, with its disks and their
/// capacities, sorted by name.
pub async fn list(uri: &str) -> Result<Vec<ImportedVm>, HvError> {
    let u = uri.to_owned();
    virt::error::clear_error_callback();
    let joined = tokio::task::spawn_blocking(move || {
        let fail = |Failed { action, detail }: Failed| HvError::Libvirt {
            vm: "(listing)".into(),
            action,
            uri: u.clone(),
            detail,
            temporary: false,
        };
        let conn = Connect::open(Some(&u)).map_err(|e| HvError::Libvirt {
            vm: "(listing)".into(),
            action: "connect",
            uri: u.clone(),
            detail: e.message().to_owned(),
            temporary: true,
        })?;
        let mut out = Vec::new();
        for d in conn
            .list_all_domains(0)
            .ctx("list the domains")
            .map_err(fail)?
        {
            let info = LibvirtDriver::info(&d).map_err(fail)?;
            let active = d.is_active().ctx("read the domain state").map_err(fail)?;
            let mut disks = Vec::new();
            for x in &info.disks {
                let size = d
                    .block_info(&x.target, 0)
                    .ctx("read a disk's size")
                    .map_err(fail)?
                    .capacity;
                disks.push(ImportedDisk {
                    name: x.target.clone(),
                    source: x.source.clone(),
                    format: x.format.clone(),
                    size,
                });
            }
            out.push(ImportedVm {
                name: info.name.clone(),
                memory_mib: info.memory_kib >> 10,
                vcpus: info.vcpus,
                active,
                guest_agent: info.guest_agent,
                standby: info.standby_vm.is_some(),
                disks,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    })
    .await;
    joined.unwrap_or_else(|e| {
        Err(HvError::Tool {
            vm: "(listing)".into(),
            program: "libvirt",
            detail: format!("listing task failed: {e}"),
        })
    })
}
