//! Sites run themselves: real `standby agent` processes run their host's
//! driver (process or qemu) with every operation of an in-process host,
//! drills included, and run only what their own configuration allows.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{STANDBY, free_port, wait_listening};
use crate::netlab::NetLab;
use crate::qemu::{
    INSTALL, bindings, guest, processes_with, qemu_installed, register, rt, sip_answers,
};

const TOKEN1: &str = "site1-agent-secret-0123456789";
const TOKEN2: &str = "site2-agent-secret-0123456789";

/// A `standby agent --data-dir` process, killed when dropped.
pub(crate) struct AgentProc {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl AgentProc {
    pub(crate) fn start(
        cfg: &Path,
        name: &str,
        controller: &str,
        port: u16,
        data: &Path,
    ) -> AgentProc {
        AgentProc::start_in(cfg, name, controller, port, data, None, None)
    }

    /// With `fs`: in a mount namespace of its own where `fs` is a tmpfs
    /// (its site's datastore lives there, out of everyone else's sight);
    /// with `site`: in that network namespace, listening on that address.
    pub(crate) fn start_in(
        cfg: &Path,
        name: &str,
        controller: &str,
        port: u16,
        data: &Path,
        fs: Option<&Path>,
        site: Option<(&str, &str)>,
    ) -> AgentProc {
        let log = data.with_extension("log");
        let addr = site.map(|(_, a)| a).unwrap_or("127.0.0.1");
        let mut cmd = match fs {
            None => Command::new(STANDBY),
            Some(fs) => {
                std::fs::create_dir_all(fs).unwrap();
                let mut c = match site {
                    Some((ns, _)) => {
                        let mut c = Command::new("ip");
                        c.args(["netns", "exec", ns, "unshare"]);
                        c
                    }
                    None => Command::new("unshare"),
                };
                c.args(["--mount", "--propagation", "private", "sh", "-c"]);
                c.arg(format!(
                    "mount -t tmpfs -o size=1g standby-{name} '{}' && exec \"$0\" \"$@\"",
                    fs.display()
                ));
                c.arg(STANDBY);
                c
            }
        };
        let child = cmd
            .args(["--config", cfg.to_str().unwrap(), "agent", "--name", name])
            .args(["--controller", controller])
            // In a site namespace: on every address there (the
            // controller's link and the other site's).
            .args([
                "--listen",
                &format!("{}:{port}", if site.is_some() { "0.0.0.0" } else { addr }),
            ])
            .args(["--data-dir", data.to_str().unwrap()])
            .env("STANDBY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("agent starts");
        let mut a = AgentProc { child, log, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((addr, port)).is_err() {
            if let Some(st) = a.child.try_wait().unwrap() {
                panic!("agent {name} exited ({st}): {}", a.log_text());
            }
            assert!(Instant::now() < deadline, "agent {name} did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        a
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the agent's log has `text`; the log.
    pub(crate) fn logged(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "'{text}' not in the agent's log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// POST `/agent/v1/<op>` with `token`: the status and the JSON answer.
    fn post(&self, op: &str, token: &str, body: Value) -> (u16, Value) {
        crate::harness::agent_call(
            &crate::harness::plain_client(Duration::from_secs(30)),
            &format!("http://127.0.0.1:{}", self.port),
            Some(token),
            op,
            &body,
        )
    }

    fn state(&self, token: &str) -> Value {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("http://127.0.0.1:{}/agent/v1/state", self.port);
        rt().block_on(async {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("agent answers")
                .json()
                .await
                .unwrap()
        })
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An agent refuses what its own configuration does not allow, with an
/// error naming the agent, the VM, the value and the setting; nothing is
/// started or created; an allowed VM starts. A host agent without its
/// configuration file does not start at all.
#[test]
fn agents_refuse_commands_and_disks_outside_their_policy() {
    let dir = tempfile::Builder::new()
        .prefix("standby-agents-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let port = free_port();
    let cfg = d.join("standby.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[controller]
listen = "127.0.0.1:{api}"
data_dir = "controller"
[sites.site1]
[hosts.site1-host1]
site = "site1"
driver = "process"
disk_dir = "disks"
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "http://127.0.0.1:{port}"
token = "{TOKEN1}"
allowed_commands = ["/bin/sleep"]
"#,
            api = free_port()
        ),
    )
    .unwrap();

    // Without a readable configuration a host agent refuses to start.
    let out = Command::new(STANDBY)
        .args(["--config", d.join("missing.toml").to_str().unwrap()])
        .args([
            "agent",
            "--name",
            "site1-agent",
            "--controller",
            "127.0.0.1:1",
        ])
        .args(["--data-dir", d.join("nowhere").to_str().unwrap()])
        .env("STANDBY_AGENT_TOKEN", TOKEN1)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("agent site1-agent runs a host") && err.contains("missing.toml"),
        "{err}"
    );

    // No controller needed: the agent answers its API on its own.
    let agent = AgentProc::start(
        &cfg,
        "site1-agent",
        "http://127.0.0.1:1",
        port,
        &d.join("agent"),
    );
    let canary = d.join("pwned");
    let outside = d.join("outside/data.img");
    let inside = d.join("disks/pbx1/data.img");
    let spec = |command: &str, args: Vec<String>, disk: &Path, env: Value| {
        json!({"spec": {
            "name": "pbx1", "command": command, "args": args, "env": env,
            "disks": [{"name": "data", "path": disk, "size": 1 << 20}],
            "workdir": "/tmp",
        }})
    };
    let refused = |op: &str, body: Value, names: &[&str]| {
        let (status, v) = agent.post(op, TOKEN1, body);
        assert_eq!(status, 403, "{op}: {v}");
        assert_eq!(v["code"], "forbidden", "{v}");
        assert_eq!(v["retryable"], false, "{v}");
        let m = v["message"].as_str().unwrap();
        for n in ["agent site1-agent", "vm pbx1"].iter().chain(names) {
            assert!(m.contains(n), "{op}: '{n}' not in: {m}");
        }
    };
    // A program not allowed (a shell that would leave a canary).
    let sh = vec!["-c".to_string(), format!("touch {}", canary.display())];
    refused(
        "start",
        spec("/bin/sh", sh.clone(), &inside, json!({})),
        &["/bin/sh", "[agents.site1-agent] allowed_commands"],
    );
    // A bare name resolving elsewhere than the allowed one.
    refused(
        "start",
        spec("sh", sh, &inside, json!({})),
        &["allowed_commands"],
    );
    // An allowed program with a disk outside disk_dir, or escaping it.
    let sleep = || vec!["60".to_string()];
    for disk in [
        outside.clone(),
        d.join("disks/../outside/data.img"),
        PathBuf::from("/etc/passwd"),
    ] {
        for op in ["provision", "start"] {
            refused(
                op,
                spec("/bin/sleep", sleep(), &disk, json!({})),
                &[disk.to_str().unwrap(), "disk_dir"],
            );
        }
    }
    // A symlink in disk_dir leading out of it.
    std::fs::create_dir_all(d.join("disks")).unwrap();
    std::fs::create_dir_all(d.join("outside")).unwrap();
    std::os::unix::fs::symlink(d.join("outside"), d.join("disks/link")).unwrap();
    refused(
        "provision",
        spec(
            "/bin/sleep",
            sleep(),
            &d.join("disks/link/x.img"),
            json!({}),
        ),
        &["leads out of disk_dir"],
    );
    // The loader's environment.
    refused(
        "start",
        spec(
            "/bin/sleep",
            sleep(),
            &inside,
            json!({"LD_PRELOAD": "/tmp/evil.so"}),
        ),
        &["LD_PRELOAD"],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!canary.exists(), "a refused command ran");
    assert!(!outside.exists(), "a disk was created outside disk_dir");
    assert!(!d.join("outside/x.img").exists());
    assert_eq!(agent.state(TOKEN1)["vms"], json!([]), "something started");

    // What the policy allows starts, its disk under disk_dir.
    let ok = spec("/bin/sleep", sleep(), &inside, json!({"SIP": "x"}));
    let (status, v) = agent.post("provision", TOKEN1, ok.clone());
    assert_eq!(status, 200, "{v}");
    assert!(inside.exists());
    let (status, v) = agent.post("start", TOKEN1, ok);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "running", "{v}");
    let pid = v["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"/bin/sleep\x0060"), "{cmdline:?}");
    // The controller asks for every VM's status in one call: the same
    // answer as one call each, a crash included.
    let statuses = |vms: Value| agent.post("statuses", TOKEN1, json!({ "vms": vms }));
    let (status, v) = statuses(json!(["pbx1", "ghost"]));
    assert_eq!(status, 200, "{v}");
    let of = |v: &Value, vm: &str| {
        v["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["vm"] == vm)
            .map(|l| l["status"].clone())
            .unwrap_or_else(|| panic!("no {vm} in {v}"))
    };
    assert_eq!(of(&v, "pbx1")["state"], "running", "{v}");
    assert_eq!(of(&v, "pbx1")["pid"], pid, "{v}");
    let (_, one) = agent.post("status", TOKEN1, json!({"vm": "ghost"}));
    assert_eq!(of(&v, "ghost")["state"], one["state"], "{v} vs {one}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let crashed = crate::watch::wait_until("the crash seen", Duration::from_secs(10), || {
        let (_, v) = statuses(json!(["pbx1"]));
        (of(&v, "pbx1")["state"] == "crashed").then_some(v)
    });
    assert!(
        of(&crashed, "pbx1")["exit"]
            .as_str()
            .is_some_and(|e| e.contains("signal")),
        "{crashed}"
    );
    // A name that is not a VM's, or too many at once, is refused.
    let (status, v) = statuses(json!(["../etc"]));
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let many: Vec<String> = (0..=10_000).map(|i| format!("vm-{i}")).collect();
    let (status, v) = statuses(json!(many));
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("at most 10000"),
        "{v}"
    );
    let (status, v) = agent.post("stop", TOKEN1, json!({"vm": "pbx1"}));
    assert_eq!(status, 200, "{v}");
    assert_ne!(v["state"], "running", "{v}");
}

/// Two sites, each a network namespace whose qemu host is run by a
/// remote agent, and the controller in the root namespace; each site's
/// datastore is a tmpfs in its agent's own mount namespace, which no one
/// else (the controller included) can open.
pub(crate) struct QemuSites {
    dir: tempfile::TempDir,
    pub(crate) cfg: PathBuf,
    server: Option<Child>,
    pub(crate) agents: Vec<AgentProc>,
    /// The lab's VM, stopped when the lab is dropped.
    vm: String,
    /// The port of the `sip` service's front door ([`QemuSites::start`]).
    pub(crate) door: u16,
    /// The controller's API port.
    api: u16,
    /// Dropped last: the sites' network namespaces.
    pub(crate) net: NetLab,
}

/// `standby server` on `cfg`, listening on `api`, its log appended to
/// `server.log` beside `cfg`, with `STANDBY_CRASH_AT=crash_at` if given.
fn start_server(cfg: &Path, api: u16, crash_at: Option<&str>) -> Child {
    let log = cfg.with_file_name("server.log");
    let mut cmd = Command::new(STANDBY);
    cmd.args(["--config", cfg.to_str().unwrap(), "server"])
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        );
    if let Some(at) = crash_at {
        cmd.env("STANDBY_CRASH_AT", at);
    }
    let mut server = cmd.spawn().expect("standby server starts");
    wait_listening(&mut server, &log, api, Duration::from_secs(20));
    server
}

impl QemuSites {
    /// The lab with pbx1, the SIP VNF guest, and its `sip` service (its
    /// front door at 127.0.0.1:[`QemuSites::door`]).
    pub(crate) fn start(kernel: &Path, initrd: &Path, sip: u16, http: u16) -> QemuSites {
        let door = free_port();
        let mut lab = QemuSites::start_with("pbx1", |s1, s2| {
            format!(
                r#"[vms.pbx1]
host = "site1-host1"
dr_site = "site2"
shutdown_timeout = "15s"
[vms.pbx1.qemu]
memory_mib = 256
accel = "tcg"
kernel = "{kernel}"
initrd = "{initrd}"
append = "console=ttyS0 quiet vnf.name={{vm}}"
forwards = [
  {{ protocol = "udp", host_addr = "{{site.addr}}", host_port = {sip}, guest_port = 5060 }},
  {{ protocol = "tcp", host_addr = "{{site.addr}}", host_port = {http}, guest_port = 8080 }},
]
[[vms.pbx1.disks]]
name = "system"
size = "16MiB"
format = "qcow2"
[[vms.pbx1.disks]]
name = "data"
size = "64MiB"
[groups.gold]
members = ["pbx1"]
schedule = "every 1h"
datastores = ["site1-store", "site2-store"]
[services.sip]
vm = "pbx1"
listen = "127.0.0.1:{door}"
protocols = ["udp"]
backends = {{ site1 = "{s1}:{sip}", site2 = "{s2}:{sip}" }}
probe = "sip"
"#,
                kernel = kernel.display(),
                initrd = initrd.display(),
            )
        });
        lab.door = door;
        lab
    }

    /// Two qemu hosts (`site1-host1`, `site2-host1`), each run by its
    /// site's agent, and their datastores (`site1-store`, `site2-store`);
    /// `vms` (given site 1's and site 2's addresses) adds the VM `vm`,
    /// its groups and services.
    pub(crate) fn start_with(vm: &str, vms: impl FnOnce(&str, &str) -> String) -> QemuSites {
        let dir = tempfile::Builder::new()
            .prefix("standby-qagents-")
            .tempdir()
            .unwrap();
        let net = NetLab::new();
        let (s1, s2, s2_for_s1, s1_for_s2) = (net.addr(2), net.addr(6), net.addr(9), net.addr(10));
        let (api, a1, a2) = (free_port(), free_port(), free_port());
        let vms = vms(&s1, &s2);
        let text = format!(
            r#"[controller]
listen = "0.0.0.0:{api}"
data_dir = "controller"
[sites.site1]
vars = {{ addr = "{s1}" }}
[sites.site2]
vars = {{ addr = "{s2}" }}
[hosts.site1-host1]
site = "site1"
driver = "qemu"
disk_dir = "site1/disks"
# Live moves onto site 1: its address on the link from site 2.
migration = {{ address = "{s1_for_s2}" }}
[hosts.site2-host1]
site = "site2"
driver = "qemu"
disk_dir = "site2/disks"
# Live moves onto site 2: its address on the link from site 1.
migration = {{ address = "{s2_for_s1}" }}
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "http://{s1}:{a1}"
peer_url = "http://{s1_for_s2}:{a1}"
token = "{TOKEN1}"
[agents.site2-agent]
site = "site2"
host = "site2-host1"
url = "http://{s2}:{a2}"
peer_url = "http://{s2_for_s1}:{a2}"
token = "{TOKEN2}"
[datastores.site1-store]
site = "site1"
path = "site1/fs/store"
agent = "site1-agent"
[datastores.site2-store]
site = "site2"
path = "site2/fs/store"
agent = "site2-agent"
{vms}"#
        );
        let cfg = dir.path().join("standby.toml");
        std::fs::write(&cfg, text).unwrap();
        let server = start_server(&cfg, api, None);
        // Each site's agent in the site's network namespace, its
        // datastore in a mount namespace of its own.
        let agents = vec![
            AgentProc::start_in(
                &cfg,
                "site1-agent",
                &format!("http://{}:{api}", net.addr(1)),
                a1,
                &dir.path().join("agent1"),
                Some(&dir.path().join("site1/fs")),
                Some((&net.s1, &s1)),
            ),
            AgentProc::start_in(
                &cfg,
                "site2-agent",
                &format!("http://{}:{api}", net.addr(5)),
                a2,
                &dir.path().join("agent2"),
                Some(&dir.path().join("site2/fs")),
                Some((&net.s2, &s2)),
            ),
        ];
        QemuSites {
            dir,
            cfg,
            server: Some(server),
            agents,
            vm: vm.to_string(),
            door: 0,
            api,
            net,
        }
    }

    /// Kill the controller and start it again, with `STANDBY_CRASH_AT`
    /// set to `crash_at` if given.
    pub(crate) fn restart_server(&mut self, crash_at: Option<&str>) {
        if let Some(mut c) = self.server.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        self.server = Some(start_server(&self.cfg, self.api, crash_at));
        // Listening is not leading yet (the old leader's lease runs out
        // first): wait until it answers.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while let Err(e) = self.try_json(&["vm", "list"]) {
            assert!(
                std::time::Instant::now() < deadline,
                "the restarted controller does not answer: {e}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the controller exited (a crash hook fired) within `within`.
    pub(crate) fn wait_server_exit(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let Some(c) = self.server.as_mut() else {
            return true;
        };
        while std::time::Instant::now() < deadline {
            if c.try_wait().ok().flatten().is_some() {
                self.server = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        self.try_json(args).unwrap_or_else(|e| {
            panic!(
                "standby {args:?} failed: {e}\nserver log: {}\nagents:\n{}",
                std::fs::read_to_string(self.path("server.log")).unwrap_or_default(),
                self.agents
                    .iter()
                    .map(AgentProc::log_text)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })
    }

    /// `standby --json ARGS`: its output, or its error output.
    pub(crate) fn try_json(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(STANDBY)
            .args(["--config", self.cfg.to_str().unwrap(), "--json"])
            .args(args)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The serial console of the lab's VM as run by `agent`.
    pub(crate) fn console(&self, agent: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{agent}/vms/{}.console.log", self.vm)))
            .unwrap_or_default()
    }
}

impl Drop for QemuSites {
    fn drop(&mut self) {
        // VMs outlive their agents by design: stop the lab's own.
        let _ = Command::new(STANDBY)
            .args([
                "--config",
                self.cfg.to_str().unwrap(),
                "vm",
                "stop",
                &self.vm,
            ])
            .output();
        self.agents.clear();
        if let Some(mut c) = self.server.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        // Whatever QEMU of this lab is left (a failed assertion midway).
        for p in processes_with(&self.dir.path().to_string_lossy()) {
            if let Some(pid) = p.split(':').next() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
}

/// A QEMU VM whose hosts are run by two remote `standby agent`s: started
/// through the controller at site 1's agent, protected twice (the second
/// point reads only what the dirty bitmaps say changed), drilled at site
/// 2's agent in a namespace of its own there (torn down verified), then
/// restored and booted at site 2's agent with every registration of the
/// point.
#[test]
fn agents_run_a_qemu_vm_protected_restored_and_drilled() {
    if !qemu_installed() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed; run: {INSTALL}");
        return;
    }
    let (kernel, initrd) = guest();
    let (sip_port, http_port) = (free_port(), free_port());
    let lab = QemuSites::start(&kernel, &initrd, sip_port, http_port);
    let (s1, s2) = (lab.net.addr(2), lab.net.addr(6));
    let sip1: SocketAddr = format!("{s1}:{sip_port}").parse().unwrap();
    let http1: SocketAddr = format!("{s1}:{http_port}").parse().unwrap();
    let sip2: SocketAddr = format!("{s2}:{sip_port}").parse().unwrap();
    let http2: SocketAddr = format!("{s2}:{http_port}").parse().unwrap();

    let t = Instant::now();
    let st = lab.json(&["vm", "start", "pbx1"]);
    assert!(
        sip_answers(sip1, Duration::from_secs(90)),
        "no SIP at {sip1}: {st}\n{}\n{}",
        lab.console("agent1"),
        lab.agents[0].log_text()
    );
    eprintln!("site 1 agent: boot to SIP {:.1?}", t.elapsed());
    // QEMU runs under the agent: its QMP socket in the agent's data dir.
    let run1 = lab.path("agent1/run");
    assert!(
        !processes_with(&run1.to_string_lossy()).is_empty(),
        "no QEMU of agent 1"
    );
    assert!(!lab.path("controller/hosts/site1-host1/pbx1.pid").exists());
    let sys = lab.path("site1/disks/pbx1/system.img");
    assert_eq!(&std::fs::read(&sys).unwrap()[..4], b"QFI\xfb");

    let mut acked = register(sip1, 0..20);
    let full = lab.json(&["protect", "run", "gold"]);
    let full = &full["vms"][0];
    acked.extend(register(sip1, 20..40));
    let incr = lab.json(&["protect", "run", "gold"]);
    let incr = &incr["vms"][0];
    let size = incr["size"].as_u64().unwrap();
    assert_eq!(size, 80 << 20);
    let (read1, read2) = (
        full["bytes_read"].as_u64().unwrap(),
        incr["bytes_read"].as_u64().unwrap(),
    );
    assert_eq!(read1, size, "the first point reads everything");
    assert!(
        read2 > 0 && read2 <= 8 * 65536,
        "incremental point at the agent read {read2} bytes"
    );
    eprintln!(
        "points at the agent: full {read1} bytes in {}s, incremental {read2} bytes in {}s",
        full["seconds"], incr["seconds"]
    );
    let id = incr["point"].as_str().unwrap().to_string();
    // Written by site 1's agent, copied to site 2 by the agents.
    assert_eq!(incr["datastore"], "site1-store", "{incr}");
    assert_eq!(incr["synced"][0]["datastore"], "site2-store", "{incr}");
    assert_eq!(incr["synced"][0]["by_agent"], "site1-agent", "{incr}");
    for fs in ["site1/fs", "site2/fs"] {
        let seen = std::fs::read_dir(lab.path(fs)).unwrap().count();
        assert_eq!(
            seen, 0,
            "the controller sees {fs}: the agent's store leaked"
        );
    }
    let points = lab.json(&["points", "list", "pbx1"]);
    assert_eq!(points[1]["id"].as_str(), Some(id.as_str()));
    assert_eq!(points[1]["bytes_read"].as_u64(), Some(read2));
    acked.sort();

    // The drill of site 1 boots its copy at site 2's agent.
    let t = Instant::now();
    let job = lab.json(&["runbook", "run", "drill", "--param", "site=site1"]);
    let job = job["job"].as_i64().expect("a job id");
    let deadline = Instant::now() + Duration::from_secs(300);
    let drill = loop {
        let v = lab.json(&["runbook", "steps", &job.to_string()]);
        if matches!(v["job"]["status"].as_str(), Some("succeeded" | "failed")) {
            break v;
        }
        assert!(Instant::now() < deadline, "the drill did not end: {v:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let wall = t.elapsed();
    assert_eq!(
        drill["job"]["status"],
        "succeeded",
        "{drill:#}\nagent 2: {}",
        lab.agents[1].log_text()
    );
    let step = |name: &str| {
        drill["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {drill:#}"))
            .clone()
    };
    let report = step("report")["output"].clone();
    assert_eq!(report["ok"], true, "{report:#}");
    let vm = &report["vms"][0];
    assert_eq!(
        (vm["vm"].as_str(), vm["site"].as_str()),
        (Some("pbx1"), Some("site2"))
    );
    assert_eq!(vm["point"].as_str(), Some(id.as_str()), "{report:#}");
    assert_eq!(vm["verified"], true, "{report:#}");
    let boot = step("boot")["output"].clone();
    let boot = if boot.is_array() {
        boot[0].clone()
    } else {
        boot
    };
    assert_eq!(boot["kind"], "qemu", "{boot:#}");
    // The copy lived at site 2's agent, in its own namespace.
    let drills2 = lab.path("agent2/drills");
    assert!(
        boot["dir"]
            .as_str()
            .unwrap()
            .starts_with(&*drills2.to_string_lossy()),
        "{boot:#}"
    );
    let netns = boot["netns"].as_str().unwrap();
    assert_eq!(netns, format!("sbd-{job}-pbx1"));
    assert!(
        !Path::new("/run/netns").join(netns).exists(),
        "{netns} left"
    );
    assert!(processes_with(&drills2.to_string_lossy()).is_empty());
    let left: Vec<_> = std::fs::read_dir(&drills2).unwrap().flatten().collect();
    assert!(left.is_empty(), "drill files left at the agent: {left:?}");
    let records: Vec<_> = std::fs::read_dir(lab.path("controller/drills"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(records.is_empty(), "drill records left: {records:?}");
    eprintln!(
        "qemu drill at the remote agent: restore {:.2} s, RTO {:.1} s, whole runbook {wall:.1?}",
        vm["restore_seconds"].as_f64().unwrap(),
        vm["rto_seconds"].as_f64().unwrap()
    );
    // Production answered through the drill and kept everything.
    assert_eq!(bindings(http1), acked);

    // Acknowledged after the point: must not come back.
    register(sip1, 40..45);
    // Site 1 is lost: its agent, its QEMU and its store (in the agent's
    // mount namespace) are gone; fenced, the copy starts at site 2.
    let mut lab = lab;
    lab.net.cut_site1();
    let agent1 = lab.agents.remove(0);
    drop(agent1);
    for p in processes_with(&run1.to_string_lossy()) {
        if let Some(pid) = p.split(':').next() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let fence = lab.json(&[
        "site",
        "fence",
        "site1",
        "--reason",
        "site 1 lost",
        "--confirmed",
    ]);
    assert_eq!(fence["pending"], true, "{fence}");
    let t = Instant::now();
    let r = lab.json(&["restore", &id, "--site", "site2"]);
    assert_eq!(r["site"], "site2");
    assert_eq!(r["datastore"], "site2-store", "{r}");
    let restore_s = t.elapsed();
    assert_eq!(
        &std::fs::read(lab.path("site2/disks/pbx1/system.img")).unwrap()[..4],
        b"QFI\xfb",
        "restored system disk is not qcow2"
    );
    assert!(
        sip_answers(sip2, Duration::from_secs(90)),
        "no SIP at {sip2}: {}\n{}",
        lab.console("agent2"),
        lab.agents[0].log_text()
    );
    eprintln!(
        "site 2 agent: restore {}s ({restore_s:.1?} with start), restore + boot to SIP {:.1?}",
        r["restore_seconds"],
        t.elapsed()
    );
    assert!(
        !processes_with(&lab.path("agent2/run").to_string_lossy()).is_empty(),
        "no QEMU of agent 2"
    );
    assert_eq!(bindings(http2), acked);
    assert_eq!(lab.json(&["vm", "status", "pbx1"])["active_site"], "site2");
}
