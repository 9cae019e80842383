//! `driver = "libvirt"` hosts and their VMs: defined from `[vms.X.qemu]`
//! or adopted (`[vms.X.libvirt] adopt = true`).

use std::path::Path;

use super::*;

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::parse(src, Path::new("standby.toml"))
}

fn base(h2_driver: &str, h1_extra: &str, vm: &str) -> String {
    format!(
        r#"
[sites.s1]
[sites.s2]
[hosts.h1]
site = "s1"
driver = "libvirt"
disk_dir = "d1"
{h1_extra}
[hosts.h2]
site = "s2"
driver = "{h2_driver}"
disk_dir = "d2"
[vms.web]
host = "h1"
dr_site = "s2"
{vm}
"#
    )
}

#[test]
fn libvirt_hosts_and_vms_parse_and_are_checked() {
    let defined = "[vms.web.qemu]\nkernel = \"/k\"\n[[vms.web.disks]]\nname = \"system\"\nsize = \"16MiB\"\nformat = \"qcow2\"";
    let cfg = parse(&base(
        "libvirt",
        "libvirt_uri = \"qemu+ssh://h1/system\"",
        defined,
    ))
    .unwrap();
    assert_eq!(cfg.hosts["h1"].driver, DriverKind::Libvirt);
    assert_eq!(cfg.hosts["h1"].driver.to_string(), "libvirt");
    assert_eq!(
        cfg.hosts["h1"].libvirt_uri.as_deref(),
        Some("qemu+ssh://h1/system")
    );
    assert_eq!(cfg.hosts["h2"].libvirt_uri, None);
    assert!(!cfg.vms["web"].adopted());

    let adopted = "[vms.web.libvirt]\nadopt = true\n[[vms.web.disks]]\nname = \"vda\"\nsize = 4194304\nformat = \"qcow2\"";
    let cfg = parse(&base("libvirt", "", adopted)).unwrap();
    assert!(cfg.vms["web"].adopted());
    assert!(cfg.vms["web"].qemu.is_none());

    for (h2, h1_extra, vm, field, msg) in [
        (
            "libvirt",
            "",
            "command = \"/bin/true\"",
            "vms.web",
            "needs a [vms.web.qemu] table",
        ),
        (
            "libvirt",
            "",
            "[vms.web.libvirt]\nadopt = false",
            "vms.web",
            "adopt = true",
        ),
        ("qemu", "", adopted, "vms.web", "uses the qemu driver"),
        (
            "process",
            "",
            defined,
            "vms.web.qemu",
            "uses the process driver",
        ),
        (
            "libvirt",
            "",
            "[vms.web.qemu]\nkernel = \"/k\"\nforwards = [{ protocol = \"udp\", host_port = 1, guest_port = 1 }]",
            "vms.web.qemu.forwards",
            "no port forwards",
        ),
        (
            "libvirt",
            "netns = \"x\"",
            defined,
            "hosts.h1.netns",
            "process hosts only",
        ),
        (
            "libvirt",
            "",
            "[vms.web.libvirt]\nadopt = true\nuri = \"x\"",
            "standby.toml",
            "unknown field `uri`",
        ),
    ] {
        let e = parse(&base(h2, h1_extra, vm)).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(msg), "{vm}: {e}");
    }
    // `libvirt_uri` on a host of another driver.
    let e = parse(&base("qemu", "", defined).replace(
        "driver = \"qemu\"",
        "driver = \"qemu\"\nlibvirt_uri = \"qemu:///system\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("hosts.h2.libvirt_uri"), "{e}");
    // `[vms.X.libvirt]` on a VM whose hosts are not libvirt hosts.
    let e = parse(
        &base("qemu", "", &format!("{defined}\n[vms.web.libvirt]"))
            .replace("driver = \"libvirt\"", "driver = \"qemu\""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("vms.web.libvirt") && e.contains("needs hosts with driver = \"libvirt\""),
        "{e}"
    );
}
