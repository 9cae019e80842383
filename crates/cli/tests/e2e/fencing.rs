//! Fencing with a remote host agent, on test hosts in network namespaces:
//! site 1's host is run by `standby agent` inside the site-1 namespace,
//! site 2's host is in-process with its VMs in the site-2 namespace. With
//! the controller cut off from site 1, a restore at site 2 is refused
//! until site 1 is fenced and the fence confirmed: once the link heals,
//! site 1's agent stops its stale copy, says so, and refuses to start it;
//! only then does the copy at site 2 start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Lab, LabOptions, STANDBY, free_port, kill_agent_vms};
use crate::netlab::NetLab;
use crate::watch::wait_until;

/// The agent process; on drop it is killed, and so is any VM it left
/// running (VMs outlive their agent by design).
struct HostAgent {
    child: Child,
    data: PathBuf,
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_agent_vms(&self.data);
    }
}

struct Fencing {
    // Dropped in this order: the agent (and its VMs), the lab (stops the
    // VM where it is active and the controller), then the namespaces.
    _agent: HostAgent,
    lab: Lab,
    net: NetLab,
    agent_port: u16,
}

fn ns_of(pid: u64) -> String {
    let out = Command::new("ip")
        .args(["netns", "identify", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn alive(pid: u64) -> bool {
    // A zombie is not running: look at the state in /proc.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
        .unwrap_or(false)
}

pub(crate) fn sip_answers(addr: SocketAddr) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(standby_vnf::client::options(
        addr,
        Duration::from_millis(300),
    ))
    .is_ok()
}

fn setup() -> Fencing {
    let net = NetLab::new();
    let agent_port = free_port();
    let watch = format!(
        r#"
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "https://{s1}:{agent_port}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[hosts.site2-ns]
site = "site2"
driver = "process"
disk_dir = "site2/ns-disks"
netns = "{ns2}"
"#,
        s1 = net.addr(2),
        ns2 = net.s2,
    );
    let lab = Lab::new(LabOptions {
        // The same VM configuration at both sites: each site's namespace
        // gives it its own addresses.
        vm: Some(
            r#"command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{disk.data}", "--sip", "0.0.0.0:5060", "--http", "0.0.0.0:8080"]"#
                .into(),
        ),
        listen_host: "0.0.0.0",
        watch,
        pki: true,
        ..LabOptions::default()
    });
    let data = lab.path("site1-agent");
    let log = std::fs::File::create(lab.path("site1-agent.log")).unwrap();
    let child = Command::new("ip")
        .args(net.in_ns(&net.s1))
        .args([
            STANDBY,
            "--config",
            lab.cfg.to_str().unwrap(),
            "agent",
            "--name",
            "site1-agent",
            "--controller",
            &lab.controller_for_agents(&net.addr(1)),
            "--listen",
            &format!("0.0.0.0:{agent_port}"),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env("STANDBY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent starts");
    Fencing {
        _agent: HostAgent { child, data },
        lab,
        net,
        agent_port,
    }
}

impl Fencing {
    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.lab.path("site1-agent.log")).unwrap_or_default()
    }

    /// POST to the agent's execution API from the root namespace, with
    /// the controller's certificate.
    fn agent_post(&self, op: &str, body: Value) -> (u16, Value) {
        crate::harness::agent_call(
            &self
                .lab
                .client_of_agent("site1-agent", Duration::from_secs(5)),
            &self.agent_base(),
            None,
            op,
            &body,
        )
    }

    fn agent_base(&self) -> String {
        format!("https://{}:{}", self.net.addr(2), self.agent_port)
    }

    fn agent_fenced(&self) -> Option<bool> {
        let client = self
            .lab
            .client_of_agent("site1-agent", Duration::from_secs(2));
        let url = format!("{}/agent/v1/state", self.agent_base());
        crate::qemu::rt().block_on(async {
            let v: Value = client.get(url).send().await.ok()?.json().await.ok()?;
            v["fenced"].as_bool()
        })
    }
}

#[test]
fn a_fenced_site_is_failed_over_and_its_stale_copy_stopped_on_reconnect() {
    let f = setup();
    let lab = &f.lab;

    // Started through the controller, the VNF runs under the agent, in
    // site 1's namespace.
    let mut last = String::new();
    let mut started = None;
    for _ in 0..100 {
        let out = lab.run(&["--json", "vm", "start", "pbx1"]);
        if out.status.success() {
            started = Some(serde_json::from_slice::<Value>(&out.stdout).unwrap());
            break;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = started.unwrap_or_else(|| {
        panic!(
            "the agent never ran pbx1: {last}\nagent log:\n{}",
            f.agent_log()
        )
    });
    assert_eq!(started["state"], "running", "{started}");
    let pid1 = started["pid"].as_u64().expect("a pid");
    assert_eq!(ns_of(pid1), f.net.s1);
    let site1_sip: SocketAddr = format!("{}:5060", f.net.addr(2)).parse().unwrap();
    wait_until("SIP at site 1", Duration::from_secs(15), || {
        sip_answers(site1_sip).then_some(())
    });

    // A point: the agent reads the disk into site 1's store itself.
    let run = lab.json(&["protect", "run", "gold"]);
    let id = run["vms"][0]["point"].as_str().unwrap().to_string();
    let points = lab.json(&["points", "list", "pbx1"]);
    let p = &points.as_array().unwrap()[0];
    assert_eq!(p["id"], id.as_str());
    assert_eq!(p["site"], "site1");
    assert_eq!(p["copies"], json!(["site1-store", "site2-store"]));
    assert!(f.agent_log().contains("point taken"), "{}", f.agent_log());

    // The controller loses site 1: it cannot know whether pbx1 still
    // runs there, so a restore at site 2 is refused, naming the fix.
    f.net.cut_controller_site1();
    let t0 = std::time::Instant::now();
    let err = lab.fails(&["restore", &id, "--site", "site2", "--host", "site2-ns"]);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "refusal took {:?}",
        t0.elapsed()
    );
    assert!(
        err.contains("site1") && err.contains("fence"),
        "refusal names the site to fence: {err}"
    );

    // Fencing it answers pending: the agent will stop pbx1 when it
    // reconnects.
    let fence = lab.json(&["site", "fence", "site1", "--reason", "link to site 1 lost"]);
    assert_eq!(fence["pending"], true, "{fence}");
    assert_eq!(
        fence["vms"],
        json!([{"vm": "pbx1", "host": "site1-host1", "result": "pending"}])
    );
    assert!(
        fence["hosts"][0]["result"]
            .as_str()
            .unwrap()
            .contains("site1-agent unreachable"),
        "{fence}"
    );
    let sites = lab.json(&["site", "list"]);
    let s1 = &sites.as_array().unwrap()[0];
    assert_eq!(
        (s1["name"].as_str(), s1["fenced"].as_bool()),
        (Some("site1"), Some(true))
    );
    assert_eq!(s1["fence_reason"], "link to site 1 lost");

    // Fenced but unconfirmed: site 1's agent never answered, so pbx1 may
    // still run there (it does: cut off, its agent cannot know). The
    // restore at site 2 is still refused, naming how to confirm.
    let err = lab.fails(&["restore", &id, "--site", "site2", "--host", "site2-ns"]);
    assert!(
        err.contains("not known that host site1-host1 runs nothing") && err.contains("--confirmed"),
        "{err}"
    );
    assert!(alive(pid1), "site 1's VNF stopped while cut off");

    // The link heals: within a few heartbeats the agent learns it is
    // fenced, stops its copy and says so in its next heartbeat; only then
    // does the restore at site 2 go ahead (refused until that report).
    let healed = std::time::Instant::now();
    f.net.heal();
    wait_until(
        "site 1's agent to stop pbx1",
        Duration::from_secs(15),
        || (!alive(pid1)).then_some(()),
    );
    let stopped = healed.elapsed();
    let restored = wait_until("the fence confirmed", Duration::from_secs(15), || {
        let out = lab.run(&[
            "--json", "restore", &id, "--site", "site2", "--host", "site2-ns",
        ]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    });
    eprintln!(
        "stale copy stopped {stopped:?} after the link healed; the copy at site 2 allowed {:?} after",
        healed.elapsed()
    );
    assert_eq!(restored["started"], true, "{restored}");
    let site2_sip: SocketAddr = format!("{}:5060", f.net.addr(6)).parse().unwrap();
    wait_until("SIP at site 2", Duration::from_secs(15), || {
        sip_answers(site2_sip).then_some(())
    });
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_host"], "site2-ns");
    let pid2 = vm["pid"].as_u64().unwrap();
    assert_eq!(ns_of(pid2), f.net.s2);
    assert!(!alive(pid1), "two copies of pbx1");
    let fence = lab.json(&["site", "fence", "site1", "--reason", "again"]);
    assert_eq!(
        fence["hosts"][0]["confirmed"], "its agent stopped every VM",
        "{fence}"
    );
    assert_eq!(f.agent_fenced(), Some(true));
    assert!(alive(pid2), "site 2's VNF must keep running");

    // While fenced, site 1 starts nothing: not through the controller...
    let err = lab.fails(&["restore", &id, "--site", "site1"]);
    assert!(err.contains("site site1 is fenced"), "{err}");
    // ...nor when its agent is asked directly.
    let spec = json!({"spec": {
        "name": "pbx1", "command": "/bin/sleep", "args": ["60"], "workdir": "/tmp",
    }});
    let (status, body) = f.agent_post("start", spec);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("fenced"),
        "{body}"
    );

    // Unfencing reaches the agent.
    let un = lab.json(&["site", "unfence", "site1"]);
    assert_eq!(un["was_fenced"], true);
    wait_until("the agent to be unfenced", Duration::from_secs(10), || {
        (f.agent_fenced() == Some(false)).then_some(())
    });
    let sites = lab.json(&["site", "list"]);
    assert_eq!(sites[0]["fenced"], false);
}
