//! `list_domains` and the `[vms]` entries written from it; an adopted
//! domain started, read and stopped as libvirt has it.

use standby_hv::libvirt::{import_toml, list_domains};
use standby_hv::{Driver, LibvirtSpec, VmSpec, VmState};
use standby_store::Datastore;

use crate::common::{M, lab, pattern, qcow2_with, restored, take_point};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisor_libvirt_import_and_adopt() {
    let lab = lab();
    let d = &lab.driver;
    let dir = lab.dir.path();
    // A domain someone else defined, with a qcow2 disk and a cdrom.
    let img = dir.join("images/web disk.qcow2");
    std::fs::create_dir_all(img.parent().unwrap()).unwrap();
    let content = pattern(4 * M, 5);
    qcow2_with(dir, &img, &content);
    let xml = format!(
        "<domain type='qemu'><name>web</name><memory unit='MiB'>128</memory><vcpu>2</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os>\
         <devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>\
         </devices></domain>",
        img.display()
    );
    let f = dir.join("web.xml");
    std::fs::write(&f, xml).unwrap();
    lab.daemon.virsh(&["define", &f.display().to_string()]);

    let vms = list_domains(lab.daemon.uri()).await.unwrap();
    assert_eq!(vms.len(), 1, "{vms:?}");
    let web = &vms[0];
    assert_eq!(
        (web.name.as_str(), web.memory_mib, web.vcpus),
        ("web", 128, 2)
    );
    assert!(!web.active && !web.standby && !web.guest_agent);
    assert_eq!(web.disks.len(), 1, "the cdrom is not a disk: {web:?}");
    assert_eq!(web.disks[0].name, "vda");
    assert_eq!(web.disks[0].size, 4 * M as u64);
    assert_eq!(web.disks[0].source.as_deref(), Some(img.as_path()));
    let toml = import_toml("h1", &vms);
    eprintln!("{toml}");
    assert!(toml.contains("[vms.web]\nhost = \"h1\"\n"), "{toml}");
    assert!(toml.contains("[vms.web.libvirt]\nadopt = true\n"), "{toml}");
    assert!(
        toml.contains("name = \"vda\"\nsize = 4194304\nformat = \"qcow2\"\n"),
        "{toml}"
    );

    // Adopted: started, read and stopped as defined; never redefined.
    let spec = VmSpec {
        name: "web".into(),
        command: "qemu-system-x86_64".into(),
        args: vec![],
        env: Default::default(),
        disks: vec![standby_hv::DiskSpec {
            name: "vda".into(),
            path: dir.join("unused/vda.img"),
            size: 4 * M as u64,
        }],
        workdir: dir.to_owned(),
        qemu: None,
        libvirt: Some(LibvirtSpec { adopt: true }),
    };
    let before = lab.daemon.virsh(&["dumpxml", "web", "--inactive"]);
    assert_eq!(d.start(&spec).await.unwrap().state, VmState::Running);
    let store = Datastore::open_or_create(&dir.join("store")).unwrap();
    let p = take_point(d, &spec, &store, None).await;
    assert_eq!(p.read("vda"), 4 << 20);
    assert_eq!(restored(&store, dir, &p.id, "vda"), content);
    assert_eq!(d.stop("web").await.unwrap().state, VmState::Stopped);
    let after = lab.daemon.virsh(&["dumpxml", "web", "--inactive"]);
    assert_eq!(before, after, "an adopted domain is never redefined");
    assert!(list_domains(lab.daemon.uri()).await.unwrap()[0].disks.len() == 1);
    let missing = VmSpec {
        name: "gone".into(),
        ..spec
    };
    assert!(
        d.start(&missing)
            .await
            .unwrap_err()
            .to_string()
            .contains("no domain of that name")
    );
}
