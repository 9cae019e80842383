//! Domain, checkpoint and backup XML: built with format strings whose
//! every value is escaped ([`quick_xml::escape::escape`]), and domain XML
//! read back with quick-xml's pull parser for adoption and import.
//!
//! No crate for libvirt's domain XML is both well kept and small (the
//! schema is huge; standby writes a dozen elements and reads fewer), so
//! the builder is these few functions, each unit-tested.

use std::path::{Path, PathBuf};

use quick_xml::escape::escape;
use quick_xml::events::Event;

use crate::qemu::{Accel, DiskFormat, Machine};
use crate::{HvError, VmSpec};

/// XML namespace of the metadata element standby puts in the domains it
/// defines (so it never redefines a domain someone else made).
pub const METADATA_NS: &str = "https://standby.invalid/xmlns/libvirt/1";

/// Target device of the `i`-th disk of a domain standby defines: `vda`,
/// `vdb`, … (virtio-blk, in the order of [`VmSpec::disks`]).
pub fn target_dev(i: usize) -> String {
    let mut n = i;
    let mut s = String::new();
    loop {
        s.insert(0, char::from(b'a' + (n % 26) as u8));
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("vd{s}")
}

fn esc_path(p: &Path) -> String {
    escape(p.to_string_lossy()).into_owned()
}

/// Domain XML for `spec` (its machine from [`VmSpec::qemu`]). `uuid`
/// keeps the identity of an existing definition on a redefine; `kvm`
/// says whether `accel = auto` may use KVM here.
pub fn domain_xml(spec: &VmSpec, uuid: Option<&str>, kvm: bool) -> Result<String, HvError> {
    let invalid = |detail: String| HvError::InvalidSpec {
        vm: spec.name.clone(),
        detail,
    };
    let q = spec
        .qemu
        .as_ref()
        .ok_or_else(|| invalid("a domain standby defines needs the qemu machine table".into()))?;
    if !q.forwards.is_empty() {
        return Err(invalid(
            "port forwards are not supported by the libvirt driver".into(),
        ));
    }
    let kind = match q.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "qemu",
        Accel::Auto if kvm => "kvm",
        Accel::Auto => "qemu",
    };
    let machine = match q.machine {
        Machine::Q35 => "q35",
        Machine::Pc => "pc",
    };
    let name = escape(spec.name.as_str());
    let mut x = format!("<domain type='{kind}'>\n  <name>{name}</name>\n");
    if let Some(u) = uuid {
        x += &format!("  <uuid>{}</uuid>\n", escape(u));
    }
    x += &format!(
        "  <metadata>\n    <standby:vm xmlns:standby='{METADATA_NS}' name='{name}'/>\n  </metadata>\n"
    );
    x += &format!(
        "  <memory unit='MiB'>{}</memory>\n  <vcpu>{}</vcpu>\n",
        q.memory_mib, q.cpus
    );
    x += &format!("  <os>\n    <type arch='x86_64' machine='{machine}'>hvm</type>\n");
    match &q.kernel {
        Some(k) => {
            x += &format!("    <kernel>{}</kernel>\n", esc_path(k));
            if let Some(i) = &q.initrd {
                x += &format!("    <initrd>{}</initrd>\n", esc_path(i));
            }
            if let Some(a) = &q.append {
                x += &format!("    <cmdline>{}</cmdline>\n", escape(a.as_str()));
            }
        }
        None => x += "    <boot dev='hd'/>\n",
    }
    x += "  </os>\n  <features>\n    <acpi/>\n  </features>\n";
    x += "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n";
    x += "  <devices>\n";
    for (i, d) in spec.disks.iter().enumerate() {
        let format = match q.disk_format(&d.name) {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        x += &format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='{format}'/>\n      <source file='{}'/>\n      <target dev='{}' bus='virtio'/>\n    </disk>\n",
            esc_path(&d.path),
            target_dev(i),
        );
    }
    let console = spec.workdir.join(format!("{}.console.log", spec.name));
    x += &format!(
        "    <serial type='file'>\n      <source path='{}' append='on'/>\n      <target port='0'/>\n    </serial>\n",
        esc_path(&console)
    );
    if q.guest_agent {
        x += "    <channel type='unix'>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n    </channel>\n";
    }
    x += "    <interface type='user'>\n      <model type='virtio'/>\n    </interface>\n";
    x += "  </devices>\n</domain>\n";
    Ok(x)
}

/// Checkpoint XML: a bitmap on each of `disks` (target devices).
pub fn checkpoint_xml(name: &str, disks: &[String]) -> String {
    let mut x = format!(
        "<domaincheckpoint>\n  <name>{}</name>\n  <disks>\n",
        escape(name)
    );
    for d in disks {
        x += &format!(
            "    <disk name='{}' checkpoint='bitmap'/>\n",
            escape(d.as_str())
        );
    }
    x + "  </disks>\n</domaincheckpoint>\n"
}

/// One disk of a push-mode backup: target device, scratch file, format.
pub struct BackupTarget<'a> {
    pub dev: &'a str,
    pub file: &'a Path,
    pub format: &'a str,
}

/// Push-mode backup XML; `incremental`: the checkpoint it counts from.
pub fn backup_xml(incremental: Option<&str>, targets: &[BackupTarget<'_>]) -> String {
    let mut x = String::from("<domainbackup mode='push'>\n");
    if let Some(cp) = incremental {
        x += &format!("  <incremental>{}</incremental>\n", escape(cp));
    }
    x += "  <disks>\n";
    for t in targets {
        x += &format!(
            "    <disk name='{}' type='file'>\n      <target file='{}'/>\n      <driver type='{}'/>\n    </disk>\n",
            escape(t.dev),
            esc_path(t.file),
            escape(t.format),
        );
    }
    x + "  </disks>\n</domainbackup>\n"
}

/// What standby reads from a domain's XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainInfo {
    pub name: String,
    pub memory_kib: u64,
    pub vcpus: u32,
    pub disks: Vec<DomainDisk>,
    /// Has the `org.qemu.guest_agent.0` channel.
    pub guest_agent: bool,
    /// The VM name in standby's metadata element: standby defined it.
    pub standby_vm: Option<String>,
}

/// A `<disk device='disk'>` of a domain (cdroms and floppies are left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainDisk {
    /// Target device (`vda`, `sdb`): the disk's name in standby.
    pub target: String,
    /// `<source file=…>` or `dev=…`; none for network disks.
    pub source: Option<PathBuf>,
    /// `<driver type=…>`: `raw`, `qcow2`, ….
    pub format: Option<String>,
}

/// Read a domain's XML (as `virDomainGetXMLDesc` gives it).
pub fn parse_domain(xml: &str) -> Result<DomainInfo, String> {
    let mut r = quick_xml::Reader::from_str(xml);
    let mut info = DomainInfo::default();
    let mut path: Vec<String> = Vec::new();
    let mut disk: Option<(DomainDisk, bool)> = None;
    let mut mem_unit = String::from("KiB");
    let mut text = String::new();
    loop {
        let ev = r.read_event().map_err(|e| e.to_string())?;
        let (start, empty) = match &ev {
            Event::Start(s) => (Some(s.clone()), false),
            Event::Empty(s) => (Some(s.clone()), true),
            _ => (None, false),
        };
        if let Some(s) = start {
            let tag = String::from_utf8_lossy(s.local_name().as_ref()).into_owned();
            let attr = |k: &str| -> Option<String> {
                s.attributes().flatten().find_map(|a| {
                    (a.key.local_name().as_ref() == k.as_bytes())
                        .then(|| {
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .ok()
                                .map(|v| v.into_owned())
                        })
                        .flatten()
                })
            };
            let parent = path.last().map(String::as_str);
            match (parent, tag.as_str()) {
                (Some("domain"), "memory") => mem_unit = attr("unit").unwrap_or("KiB".into()),
                (Some("devices"), "disk") => {
                    let is_disk = attr("device").is_none_or(|d| d == "disk");
                    disk = Some((DomainDisk::default(), is_disk));
                }
                (Some("disk"), "target") => {
                    if let Some((d, _)) = disk.as_mut() {
                        d.target = attr("dev").unwrap_or_default();
                    }
                }
                (Some("disk"), "source") => {
                    if let Some((d, _)) = disk.as_mut() {
                        d.source = attr("file").or_else(|| attr("dev")).map(PathBuf::from);
                    }
                }
                (Some("disk"), "driver") => {
                    if let Some((d, _)) = disk.as_mut() {
                        d.format = attr("type");
                    }
                }
                (Some("channel"), "target")
                    if attr("name").as_deref() == Some("org.qemu.guest_agent.0") =>
                {
                    info.guest_agent = true;
                }
                (Some("metadata"), "vm") if s.name().as_ref().starts_with(b"standby") => {
                    info.standby_vm = attr("name");
                }
                _ => {}
            }
            text.clear();
            if !empty {
                path.push(tag);
            } else if tag == "disk" {
                finish_disk(&mut disk, &mut info);
            }
            continue;
        }
        match ev {
            Event::Text(t) => text += &t.decode().map_err(|e| e.to_string())?,
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| e.to_string())?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity &{name};"))?
                            .to_owned()
                    }
                };
                text += &c;
            }
            Event::End(_) => {
                let t = std::mem::take(&mut text);
                let t = t.trim();
                match path.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                    ["domain", "name"] => info.name = t.to_owned(),
                    ["domain", "memory"] => {
                        let n: u64 = t.parse().map_err(|_| "bad <memory>".to_string())?;
                        info.memory_kib = match mem_unit.as_str() {
                            "b" | "bytes" => n / 1024,
                            "KB" => n * 1000 / 1024,
                            "k" | "KiB" => n,
                            "MB" => n * 1_000_000 / 1024,
                            "M" | "MiB" => n << 10,
                            "G" | "GiB" => n << 20,
                            u => return Err(format!("unknown memory unit '{u}'")),
                        };
                    }
                    ["domain", "vcpu"] => {
                        info.vcpus = t.parse().map_err(|_| "bad <vcpu>".to_string())?;
                    }
                    _ => {}
                }
                let closed = path.pop();
                if closed.as_deref() == Some("disk") {
                    finish_disk(&mut disk, &mut info);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if info.name.is_empty() {
        return Err("no <domain><name>".into());
    }
    Ok(info)
}

fn finish_disk(disk: &mut Option<(DomainDisk, bool)>, info: &mut DomainInfo) {
    if let Some((d, true)) = disk.take()
        && !d.target.is_empty()
    {
        info.disks.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskSpec, QemuSpec};

    fn spec() -> VmSpec {
        let mut q = QemuSpec {
            kernel: Some("/boot/vmlinuz".into()),
            initrd: Some("/boot/initrd.img".into()),
            append: Some("console=ttyS0 a=<b&c>".into()),
            guest_agent: true,
            accel: Accel::Tcg,
            ..QemuSpec::default()
        };
        q.disk_formats.insert("system".into(), DiskFormat::Qcow2);
        VmSpec {
            name: "pbx'1".into(),
            command: "qemu-system-x86_64".into(),
            args: vec![],
            env: Default::default(),
            disks: vec![
                DiskSpec {
                    name: "system".into(),
                    path: "/d/pbx/system.img".into(),
                    size: 1 << 20,
                },
                DiskSpec {
                    name: "data".into(),
                    path: "/d/pbx/a&b.img".into(),
                    size: 1 << 20,
                },
            ],
            workdir: "/w".into(),
            qemu: Some(q),
            libvirt: None,
        }
    }

    #[test]
    fn target_devs_follow_the_disk_order() {
        assert_eq!(target_dev(0), "vda");
        assert_eq!(target_dev(1), "vdb");
        assert_eq!(target_dev(25), "vdz");
        assert_eq!(target_dev(26), "vdaa");
        assert_eq!(target_dev(27), "vdab");
    }

    #[test]
    fn domain_xml_escapes_values_and_reads_back() {
        let x = domain_xml(&spec(), Some("5b2a1e3c-0000-4000-8000-000000000001"), false).unwrap();
        assert!(x.contains("<name>pbx&apos;1</name>"), "{x}");
        assert!(
            x.contains("<cmdline>console=ttyS0 a=&lt;b&amp;c&gt;</cmdline>"),
            "{x}"
        );
        assert!(x.contains("<domain type='qemu'>"), "{x}");
        assert!(x.contains("<uuid>5b2a1e3c-0000-4000-8000-000000000001</uuid>"));
        let info = parse_domain(&x).unwrap();
        assert_eq!(info.name, "pbx'1");
        assert_eq!(info.memory_kib, 256 << 10);
        assert_eq!(info.vcpus, 1);
        assert!(info.guest_agent);
        assert_eq!(info.standby_vm.as_deref(), Some("pbx'1"));
        assert_eq!(
            info.disks,
            vec![
                DomainDisk {
                    target: "vda".into(),
                    source: Some("/d/pbx/system.img".into()),
                    format: Some("qcow2".into()),
                },
                DomainDisk {
                    target: "vdb".into(),
                    source: Some("/d/pbx/a&b.img".into()),
                    format: Some("raw".into()),
                },
            ]
        );
    }

    #[test]
    fn domain_xml_kvm_only_when_allowed() {
        let mut s = spec();
        s.qemu.as_mut().unwrap().accel = Accel::Auto;
        assert!(
            domain_xml(&s, None, true)
                .unwrap()
                .starts_with("<domain type='kvm'>")
        );
        assert!(
            domain_xml(&s, None, false)
                .unwrap()
                .starts_with("<domain type='qemu'>")
        );
        s.qemu.as_mut().unwrap().kernel = None;
        assert!(
            domain_xml(&s, None, false)
                .unwrap()
                .contains("<boot dev='hd'/>")
        );
    }

    #[test]
    fn domain_xml_refuses_forwards_and_missing_machine() {
        let mut s = spec();
        s.qemu
            .as_mut()
            .unwrap()
            .forwards
            .push(crate::qemu::PortForward::udp(5060, 5060));
        assert!(matches!(
            domain_xml(&s, None, false),
            Err(HvError::InvalidSpec { .. })
        ));
        s.qemu = None;
        assert!(domain_xml(&s, None, false).is_err());
    }

    #[test]
    fn parse_domain_as_libvirt_writes_it() {
        let x = r#"<domain type='kvm' id='3'>
  <name>web</name>
  <uuid>c6853f2b-df6f-44c9-93a1-c3ac31cc6c05</uuid>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>2</vcpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web.qcow2' index='2'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/iso/d.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/web-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='/run/libvirt/qemu/channel/3-web/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
    </channel>
  </devices>
</domain>"#;
        let info = parse_domain(x).unwrap();
        assert_eq!(info.name, "web");
        assert_eq!(info.memory_kib, 262144);
        assert_eq!(info.vcpus, 2);
        assert!(info.guest_agent);
        assert_eq!(info.standby_vm, None);
        assert_eq!(info.disks.len(), 2, "the cdrom is left out: {info:?}");
        assert_eq!(info.disks[1].source, Some("/dev/vg/web-data".into()));
        assert!(parse_domain("<domain></domain>").is_err());
        assert!(parse_domain("<domain><name>x</name><memory>lots</memory></domain>").is_err());
    }

    #[test]
    fn checkpoint_and_backup_xml() {
        let c = checkpoint_xml("standby.p<1>", &["vda".into(), "vdb".into()]);
        assert!(c.contains("<name>standby.p&lt;1&gt;</name>"));
        assert!(c.contains("<disk name='vdb' checkpoint='bitmap'/>"));
        let f = PathBuf::from("/s/vda.qcow2");
        let b = backup_xml(
            Some("standby.1"),
            &[BackupTarget {
                dev: "vda",
                file: &f,
                format: "qcow2",
            }],
        );
        assert!(b.contains("<incremental>standby.1</incremental>"));
        assert!(b.contains("<target file='/s/vda.qcow2'/>"));
        assert!(!backup_xml(None, &[]).contains("incremental"));
    }
}
