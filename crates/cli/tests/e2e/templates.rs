//! Templates with a real VM: a QEMU VM's point at site 1 becomes a
//! template (`standby template create`), no chunk data is added to any
//! datastore for it, and `standby vm create` deploys a new VM from it at
//! a site-2 host, whose disks are written sparse and which boots and
//! answers SIP; the VM made is kept across a reload and a controller
//! restart. The lab is `qemu.rs`'s (guest and configuration).

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::free_port;
use crate::qemu::{INSTALL, QemuLab, bindings, guest, qemu_installed, register, sip_answers};

/// Pack files and their bytes (packs and indexes) under a datastore.
fn packs(store: &Path) -> (usize, u64) {
    let (mut n, mut bytes) = (0, 0);
    let mut stack = vec![store.join("packs")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                n += usize::from(e.path().extension().is_some_and(|x| x == "pack"));
                bytes += m.len();
            }
        }
    }
    (n, bytes)
}

/// Stops the VM made from the template when the test ends (the lab
/// stops its own), through the lab's configuration.
struct StopAtEnd(std::path::PathBuf, &'static str);

impl Drop for StopAtEnd {
    fn drop(&mut self) {
        let _ = std::process::Command::new(crate::harness::STANDBY)
            .args(["--config", self.0.to_str().unwrap(), "vm", "stop", self.1])
            .output();
    }
}

#[test]
fn hypervisor_template_deploys_a_new_vm_at_site2_that_answers() {
    if !qemu_installed() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed; run: {INSTALL}");
        return;
    }
    let (kernel, initrd) = guest();
    let test_started = Instant::now();
    let (sip_port, http_port) = (free_port(), free_port());
    let mut lab = QemuLab::start(&kernel, &initrd, sip_port, http_port, "");
    let sip1: SocketAddr = format!("127.0.1.1:{sip_port}").parse().unwrap();
    let st = lab.json(&["vm", "start", "pbx1"]);
    assert!(
        sip_answers(sip1, Duration::from_secs(90)),
        "no SIP at {sip1}: {st}\n{}",
        lab.console_of("site1-host1", "pbx1")
    );
    let mut acked = register(sip1, 0..10);
    let run = lab.json(&["protect", "run", "gold"]);
    let point = run["vms"][0]["point"].as_str().unwrap().to_string();
    let store1 = lab.dir.path().join("site1/store");
    let store2 = lab.dir.path().join("site2/store");
    let before = (packs(&store1), packs(&store2));

    // The template: from the newest point, in both sites' stores.
    let made = lab.json(&["template", "create", "base", "--from", "pbx1"]);
    assert_eq!(made["template"]["source"], point.as_str(), "{made}");
    let copies = made["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{made}");
    for c in copies {
        assert!(c["error"].is_null(), "{made}");
        assert_eq!(c["chunks_copied"], 0, "the point was there: {made}");
    }
    // No chunk data added anywhere: one small object per store.
    assert_eq!((packs(&store1), packs(&store2)), before);
    let object = std::fs::metadata(store2.join("templates/base.json"))
        .unwrap()
        .len();
    eprintln!(
        "template: {object} bytes of template object vs {} bytes of packs for the point at site 1, made in {:.2}s",
        before.0.1, made["seconds"]
    );
    assert!(object < 16 * 1024, "{object}");
    // Made twice: refused.
    let again = lab.run(&["template", "create", "base", "--from", "pbx1"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    let list = lab.json(&["template", "list"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "base");
    assert_eq!(list[0]["vm"], "pbx1");
    assert_eq!(list[0]["memory_mib"], 256);
    assert_eq!(
        list[0]["datastores"],
        serde_json::json!(["site1-store", "site2-store"])
    );
    let formats: Vec<(String, String)> = list[0]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().into(),
                d["format"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        formats.contains(&("system".into(), "qcow2".into())),
        "{formats:?}"
    );
    assert!(
        formats.contains(&("data".into(), "raw".into())),
        "{formats:?}"
    );

    // Refusals name what is wrong.
    for (args, says) in [
        (
            vec!["--template", "nope", "--host", "site2-host1"],
            "template 'nope' not found",
        ),
        (
            vec!["--template", "base", "--host", "nohost"],
            "host 'nohost' not found",
        ),
    ] {
        let mut a = vec!["vm", "create", "pbx2"];
        a.extend(args);
        let out = lab.run(&a);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
    let out = lab.run(&[
        "vm",
        "create",
        "pbx1",
        "--template",
        "base",
        "--host",
        "site2-host1",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("vm pbx1 exists already"));

    // Deployed at site 2 with forwards of its own.
    let (sip_port2, http_port2) = (free_port(), free_port());
    let sip2: SocketAddr = format!("127.0.2.1:{sip_port2}").parse().unwrap();
    let http2: SocketAddr = format!("127.0.2.1:{http_port2}").parse().unwrap();
    let t = Instant::now();
    let made = lab.json(&[
        "vm",
        "create",
        "pbx2",
        "--template",
        "base",
        "--host",
        "site2-host1",
        "--forward",
        &format!("udp:{{site.addr}}:{sip_port2}:5060"),
        "--forward",
        &format!("{{ protocol = \"tcp\", host_addr = \"{{site.addr}}\", host_port = {http_port2}, guest_port = 8080 }}"),
    ]);
    let _stop = StopAtEnd(lab.cfg.clone(), "pbx2");
    let deployed = t.elapsed();
    assert_eq!(made["site"], "site2", "{made}");
    assert_eq!(made["datastore"], "site2-store", "the nearest copy: {made}");
    assert_eq!(made["started"], true);
    assert!(
        sip_answers(sip2, Duration::from_secs(90)),
        "no SIP from pbx2 at {sip2}: {made}\n{}",
        lab.console_of("site2-host1", "pbx2")
    );
    let answered = t.elapsed();
    eprintln!(
        "deploy at site 2: disks written and started in {deployed:.1?} ({} bytes of disks, {} written), SIP answers {answered:.1?} after the request",
        made["bytes"], made["written"]
    );
    // Its data disk is the template's: the registrations of the point.
    acked.sort();
    assert_eq!(bindings(http2), acked);

    // Written sparse: the raw data disk's zero chunks are holes, and the
    // qcow2 system disk holds only what is used.
    let disks = lab.dir.path().join("site2/disks/pbx2");
    let data = std::fs::metadata(disks.join("data.img")).unwrap();
    let allocated = data.blocks() * 512;
    eprintln!(
        "deployed data disk: {allocated} bytes allocated of {} (raw); system disk file {} bytes (qcow2 of 16 MiB)",
        data.len(),
        std::fs::metadata(disks.join("system.img"))
            .unwrap()
            .blocks()
            * 512
    );
    assert_eq!(data.len(), 64 << 20);
    assert!(allocated < data.len() / 8, "{allocated} of {}", data.len());
    assert_eq!(
        &std::fs::read(disks.join("system.img")).unwrap()[..4],
        b"QFI\xfb",
        "system disk is not qcow2"
    );
    // Still no new chunk data in either store.
    assert_eq!((packs(&store1), packs(&store2)), before);

    // The source VM runs on, unchanged, at site 1.
    assert!(sip_answers(sip1, Duration::from_secs(5)));
    let src = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(src["active_site"], "site1", "{src}");
    assert_eq!(src["state"], "running", "{src}");

    // Kept by the controller: across a reload and a restart.
    lab.json(&["config", "reload"]);
    let vm = lab.json(&["vm", "status", "pbx2"]);
    assert_eq!(vm["active_host"], "site2-host1", "{vm}");
    lab.restart_server();
    let vm = lab.json(&["vm", "status", "pbx2"]);
    assert_eq!(vm["active_host"], "site2-host1", "{vm}");
    assert_eq!(vm["state"], "running", "{vm}");
    assert!(sip_answers(sip2, Duration::from_secs(5)));
    let vms = lab.json(&["vm", "list"]);
    assert_eq!(vms.as_array().unwrap().len(), 2, "{vms}");

    // Deleting: refused while it runs and for a VM of the file; once
    // stopped it goes (from the list, and for good: after a restart),
    // its disks left at its host.
    let refused = |lab: &QemuLab, args: &[&str], why: &str| {
        let out = lab.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
    };
    refused(&lab, &["vm", "delete", "pbx2"], "stop it first");
    refused(
        &lab,
        &["vm", "delete", "pbx1"],
        "declared in the configuration file",
    );
    lab.json(&["vm", "stop", "pbx2"]);
    let gone = lab.json(&["vm", "delete", "pbx2"]);
    assert_eq!(gone["host"], "site2-host1", "{gone}");
    assert!(disks.join("data.img").exists(), "the disks stay");
    lab.restart_server();
    let vms = lab.json(&["vm", "list"]);
    assert_eq!(vms.as_array().unwrap().len(), 1, "{vms}");
    refused(&lab, &["vm", "status", "pbx2"], "not found");
    eprintln!("template test: {:.1?}", test_started.elapsed());
}

/// The same with both hosts run by remote `standby agent`s and each
/// site's datastore served by its agent (a tmpfs only that agent sees):
/// the template is made by each agent in its own store from the point
/// the group copied there, and the site-2 agent writes the new VM's disks
/// from its store and boots it.
#[test]
fn hypervisor_template_at_remote_agents_is_made_and_deployed_where_the_data_is() {
    if !qemu_installed() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed; run: {INSTALL}");
        return;
    }
    let (kernel, initrd) = guest();
    let test_started = Instant::now();
    let (sip_port, http_port) = (free_port(), free_port());
    let lab = crate::agents::QemuSites::start(&kernel, &initrd, sip_port, http_port);
    let (s1, s2) = (lab.net.addr(2), lab.net.addr(6));
    let sip1: SocketAddr = format!("{s1}:{sip_port}").parse().unwrap();
    lab.json(&["vm", "start", "pbx1"]);
    assert!(
        sip_answers(sip1, Duration::from_secs(90)),
        "no SIP at {sip1}:\n{}",
        lab.console("site1-agent")
    );
    let mut acked = register(sip1, 0..5);
    lab.json(&["protect", "run", "gold"]);

    let made = lab.json(&["template", "create", "base", "--from", "pbx1"]);
    let copies = made["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{made}");
    for c in copies {
        assert!(c["error"].is_null(), "{made}");
        assert_eq!(c["chunks_copied"], 0, "{made}");
    }
    let list = lab.json(&["template", "list"]);
    assert_eq!(
        list[0]["datastores"],
        serde_json::json!(["site1-store", "site2-store"]),
        "{list}"
    );

    let sip_port2 = free_port();
    let http_port2 = free_port();
    let sip2: SocketAddr = format!("{s2}:{sip_port2}").parse().unwrap();
    let http2: SocketAddr = format!("{s2}:{http_port2}").parse().unwrap();
    let t = Instant::now();
    let made = lab.json(&[
        "vm",
        "create",
        "pbx2",
        "--template",
        "base",
        "--host",
        "site2-host1",
        "--forward",
        &format!("udp:{{site.addr}}:{sip_port2}:5060"),
        "--forward",
        &format!("tcp:{{site.addr}}:{http_port2}:8080"),
    ]);
    let _stop = StopAtEnd(lab.cfg.clone(), "pbx2");
    assert_eq!(made["datastore"], "site2-store", "{made}");
    assert!(
        sip_answers(sip2, Duration::from_secs(90)),
        "no SIP from pbx2 at {sip2}: {made}"
    );
    eprintln!(
        "at remote agents: deployed and answering at site 2 in {:.1?} ({} bytes written of {}); test {:.1?}",
        t.elapsed(),
        made["written"],
        made["bytes"],
        test_started.elapsed()
    );
    acked.sort();
    assert_eq!(bindings(http2), acked);
    // Deleted everywhere, by each agent.
    let gone = lab.json(&["template", "delete", "base"]);
    assert_eq!(gone, serde_json::json!(["site1-store", "site2-store"]));
    assert_eq!(lab.json(&["template", "list"]), serde_json::json!([]));
}
