//! QEMU's command line for a [`VmSpec`]: machine, accelerator, disks as
//! `-blockdev` nodes, boot, networking and forwards.

use std::fs::OpenOptions;
use std::path::Path;

use super::spec::{Accel, Machine, Protocol, QemuSpec};
use crate::{HvError, VmSpec};

/// True when KVM can be used: `/dev/kvm` opens read-write.
pub fn kvm_usable() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// QEMU option values double their commas.
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// A disk name usable as a QEMU node name (letter first, then letters,
/// digits, `-`, `_`; at most 26 characters so `-file` still fits in 31).
fn valid_node_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 26
}

/// QEMU's arguments for `spec` (without the binary).
pub fn command_line(
    spec: &VmSpec,
    q: &QemuSpec,
    state_dir: &Path,
    kvm: bool,
) -> Result<Vec<String>, HvError> {
    let invalid = |detail: String| HvError::InvalidSpec {
        vm: spec.name.clone(),
        detail,
    };
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let accel = match (q.accel, kvm) {
        (Accel::Kvm, _) | (Accel::Auto, true) => "kvm",
        _ => "tcg",
    };
    let machine = match q.machine {
        Machine::Q35 => "q35",
        Machine::Pc => "pc",
    };
    push(&[
        "-name",
        &format!("guest={},debug-threads=on", spec.name.replace(',', ",,")),
    ]);
    push(&["-machine", machine, "-accel", accel]);
    if accel == "kvm" {
        push(&["-cpu", "host"]);
    }
    push(&[
        "-m",
        &q.memory_mib.to_string(),
        "-smp",
        &q.cpus.max(1).to_string(),
    ]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    let console = spec.workdir.join(format!("{}.console.log", spec.name));
    push(&[
        "-chardev",
        &format!("file,id=console,path={},append=on", opt_path(&console)),
        "-serial",
        "chardev:console",
    ]);
    let socket = state_dir.join(format!("{}.qmp", spec.name));
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt_path(&socket)),
    ]);
    push(&[
        "-pidfile",
        &state_dir
            .join(format!("{}.qemu.pid", spec.name))
            .to_string_lossy(),
    ]);
    if let Some(kernel) = &q.kernel {
        push(&["-kernel", &kernel.to_string_lossy()]);
        if let Some(initrd) = &q.initrd {
            push(&["-initrd", &initrd.to_string_lossy()]);
        }
        if let Some(append) = &q.append {
            push(&["-append", append]);
        }
    }
    for name in q.disk_formats.keys() {
        if !spec.disks.iter().any(|d| &d.name == name) {
            return Err(invalid(format!("disk_formats names unknown disk '{name}'")));
        }
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        if !valid_node_name(&disk.name) {
            return Err(invalid(format!(
                "disk name '{}' is not usable as a qemu node name (letter first, then letters, digits, '-', '_'; at most 26)",
                disk.name
            )));
        }
        let blockdev = serde_json::json!({
            "driver": q.disk_format(&disk.name).as_str(),
            "node-name": disk.name,
            "file": {
                "driver": "file",
                "filename": disk.path,
                "node-name": format!("{}-file", disk.name),
            },
        });
        push(&["-blockdev", &blockdev.to_string()]);
        let mut device = format!("virtio-blk-pci,drive={0},id={0}-blk", disk.name);
        if q.kernel.is_none() && i == 0 {
            device.push_str(",bootindex=0");
        }
        push(&["-device", &device]);
    }
    let mut netdev = "user,id=net0".to_owned();
    for f in &q.forwards {
        let proto = match f.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        netdev.push_str(&format!(
            ",hostfwd={proto}:{}:{}-:{}",
            f.host_addr, f.host_port, f.guest_port
        ));
    }
    push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"]);
    if q.guest_agent {
        let qga = state_dir.join(format!("{}.qga", spec.name));
        push(&[
            "-chardev",
            &format!("socket,id=qga0,path={},server=on,wait=off", opt_path(&qga)),
            "-device",
            "virtio-serial-pci,id=qga-serial",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]);
    }
    a.extend(spec.args.iter().cloned());
    Ok(a)
}
