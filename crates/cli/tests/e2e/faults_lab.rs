//! The fault lab of `faults.rs`: a controller, two site agents (real
//! processes) with the sample VNF as the VM, the sites' datastores on a
//! tmpfs, a datastore on Azurite; the operations a trial interrupts and
//! the means to kill, restart and watch what runs. Every process and the
//! mount are gone when the lab is dropped, a failed test included.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use standby_testkit::objects::{AZURITE_KEY, Kind, Server};

use crate::harness::{Lab, LabOptions, STANDBY, free_port, kill_agent_vms, write_random};

pub(crate) const BULK: usize = 32 << 20;
/// New data before each point: 16 MiB of random bytes.
pub(crate) const DIRTY: usize = 16 << 20;
pub(crate) const STORES: [&str; 3] = ["site1-store", "site2-store", "cloud-store"];

/// What a trial does to the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    /// SIGKILL of the controller or an agent.
    Kill,
    /// The datastore's filesystem fills up in the middle of a point.
    DiskFull,
    /// The object store stops in the middle of a copy to it.
    ObjectStoreDown,
}

/// The operation a trial interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Op {
    /// `protect run`: a point, then its copy to the other site's store.
    Point,
    /// `store sync site1-store --to cloud-store`.
    Copy,
    Prune,
    Gc,
    Restore,
}

pub(crate) const OPS: [Op; 5] = [Op::Point, Op::Copy, Op::Prune, Op::Gc, Op::Restore];

/// A `standby agent` on loopback; killed (SIGKILL), with the VMs it
/// left running, when dropped.
pub(crate) struct FaultAgent {
    name: String,
    port: u16,
    data: PathBuf,
    child: Option<Child>,
}

impl FaultAgent {
    pub(crate) fn start(lab: &Lab, name: &str, port: u16) -> FaultAgent {
        let mut a = FaultAgent {
            name: name.into(),
            port,
            data: lab.path(name),
            child: None,
        };
        a.spawn(lab);
        a
    }

    pub(crate) fn spawn(&mut self, lab: &Lab) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(lab.path(&format!("{}.log", self.name)))
            .unwrap();
        let child = Command::new(STANDBY)
            .args(["--config", lab.cfg.to_str().unwrap(), "agent"])
            .args(["--name", &self.name])
            .args(["--controller", &format!("http://127.0.0.1:{}", lab.api)])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--data-dir", self.data.to_str().unwrap()])
            .env("STANDBY_LOG", "info")
            .env("E2E_AZURE_KEY", AZURITE_KEY)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let c = self.child.as_mut().unwrap();
            if let Some(st) = c.try_wait().unwrap() {
                panic!("agent {} exited ({st})", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "agent {} did not listen",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the agent (its VMs run on, as they do when an agent dies).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for FaultAgent {
    fn drop(&mut self) {
        self.kill();
        kill_agent_vms(&self.data);
    }
}

/// A tmpfs mounted at a path; unmounted when dropped.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "standby-faults",
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount a tmpfs at {} (needs root)",
            path.display()
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A CLI command running in the background; killed if still running
/// when dropped.
pub(crate) struct Bg(Option<Child>);

impl Bg {
    pub(crate) fn start(lab: &Lab, args: &[&str]) -> Bg {
        let child = Command::new(STANDBY)
            .args(["--config", lab.cfg.to_str().unwrap(), "--json"])
            .args(args)
            .env("E2E_AZURE_KEY", AZURITE_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Bg(Some(child))
    }

    pub(crate) fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Its outcome: the JSON it printed, or its error output; an error
    /// when it has not ended within `limit` (it is killed).
    pub(crate) fn wait(mut self, limit: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + limit;
        while self.running() {
            if Instant::now() > deadline {
                return Err(format!("did not end within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        if out.status.success() {
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The fault lab. Dropped in this order: the VM stopped, agents (and
/// VMs) killed, controller killed, the tmpfs unmounted, the lab's
/// directory removed, Azurite stopped.
pub(crate) struct FaultLab {
    pub(crate) agents: Vec<FaultAgent>,
    pub(crate) tmpfs: Option<Tmpfs>,
    pub(crate) lab: Lab,
    pub(crate) azurite: Server,
    /// How long each operation took when last run whole.
    pub(crate) took: std::collections::BTreeMap<Op, Duration>,
    /// What the current trial's checks noticed (not failures).
    pub(crate) notes: Vec<String>,
}

impl Drop for FaultLab {
    fn drop(&mut self) {
        let _ = self.lab.run(&["vm", "stop", "pbx1"]);
        self.agents.clear();
        self.lab.kill_server();
        self.tmpfs.take();
    }
}

impl FaultLab {
    pub(crate) fn new() -> FaultLab {
        let azurite = Server::start(Kind::Azurite);
        azurite.create_bucket("standby");
        let (p1, p2) = (free_port(), free_port());
        let watch = format!(
            r#"
[[vms.pbx1.disks]]
name = "bulk"
size = "32MiB"

[sites.cloud]
[datastores.cloud-store]
site = "cloud"
kind = "azure"
account = "devstoreaccount1"
container = "standby"
prefix = "faults"
endpoint = "{endpoint}"
access_key_env = "E2E_AZURE_KEY"

[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "http://127.0.0.1:{p1}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[agents.site2-agent]
site = "site2"
host = "site2-host1"
url = "http://127.0.0.1:{p2}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]
"#,
            endpoint = azurite.endpoint()
        );
        let lab = Lab::new(LabOptions {
            // Port 0: a second copy of the VM would run (and be counted),
            // not fail on a taken port.
            vm: Some(
                r#"command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{disk.data}", "--sip", "127.0.0.1:0", "--http", "127.0.0.1:0"]"#
                    .into(),
            ),
            retention: "keep_last = 3",
            schedule: "every 24h",
            watch,
            env: vec![("E2E_AZURE_KEY".into(), AZURITE_KEY.into())],
            stores: [
                "path = \"fs/site1-store\"\nagent = \"site1-agent\"".into(),
                "path = \"fs/site2-store\"\nagent = \"site2-agent\"".into(),
            ],
            ..LabOptions::default()
        });
        let tmpfs = Tmpfs::mount(&lab.path("fs"), "512m");
        let agents = vec![
            FaultAgent::start(&lab, "site1-agent", p1),
            FaultAgent::start(&lab, "site2-agent", p2),
        ];
        let mut fl = FaultLab {
            agents,
            tmpfs: Some(tmpfs),
            lab,
            azurite,
            took: Default::default(),
            notes: Vec::new(),
        };
        fl.wait_ok("pbx1 to start at site 1", &["vm", "start", "pbx1"]);
        // One of each operation, timed: the instants of the faults are
        // drawn over these durations.
        for op in OPS {
            let (args, pre) = fl.op_args(op, &mut StdRng::seed_from_u64(0));
            pre(&fl);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let t = Instant::now();
            fl.ok(&refs);
            fl.took.insert(op, t.elapsed());
        }
        eprintln!("faults: operations take {:?}", fl.took);
        fl
    }

    pub(crate) fn ok(&self, args: &[&str]) -> Value {
        match self.try_json(args) {
            Ok(v) => v,
            Err(e) => panic!("standby {args:?}: {e}\n{}", self.logs()),
        }
    }

    pub(crate) fn try_json(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.lab.run(&[&["--json"], args].concat());
        if out.status.success() {
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Retry `args` for a while (an agent just restarted is not yet
    /// heard from).
    pub(crate) fn wait_ok(&self, what: &str, args: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_json(args) {
                Ok(v) => return v,
                Err(e) if Instant::now() > deadline => {
                    panic!("{what}: {e}\n{}", self.logs())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub(crate) fn logs(&self) -> String {
        let tail = |f: &str| {
            let t = std::fs::read_to_string(self.lab.path(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "controller:\n{}\nsite1-agent:\n{}\nsite2-agent:\n{}",
            tail("server.log"),
            tail("site1-agent.log"),
            tail("site2-agent.log")
        )
    }

    /// The site where pbx1 is active.
    pub(crate) fn active_site(&self) -> String {
        self.ok(&["vm", "status", "pbx1"])["active_site"]
            .as_str()
            .unwrap_or("site1")
            .to_string()
    }

    /// New data on pbx1's bulk disk where it is active, so the next
    /// point has `len` bytes to read, write and copy.
    pub(crate) fn dirty(&self, rng: &mut StdRng, len: usize) {
        use std::io::{Seek, SeekFrom, Write};
        let site = self.active_site();
        let path = self.lab.path(&format!("{site}/disks/pbx1/bulk.img"));
        let tmp = self.lab.path("dirty.tmp");
        write_random(&tmp, len);
        let mut data = std::fs::read(&tmp).unwrap();
        // Different bytes every time (write_random depends on len only).
        let salt: u64 = rng.random();
        for (i, b) in data.iter_mut().enumerate().step_by(4096) {
            *b ^= (salt >> (i % 64)) as u8 | 1;
        }
        let off = rng.random_range(0..=(BULK - len) as u64) & !0xffff;
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }

    /// The newest point of pbx1 in the catalog.
    pub(crate) fn newest_point(&self) -> Option<Value> {
        self.ok(&["points", "list", "pbx1"])
            .as_array()
            .and_then(|a| a.last().cloned())
    }

    /// The command of `op`, and what to do just before it.
    #[allow(clippy::type_complexity)]
    pub(crate) fn op_args(
        &self,
        op: Op,
        rng: &mut StdRng,
    ) -> (Vec<String>, Box<dyn Fn(&FaultLab)>) {
        let store = ["site1-store", "site2-store"][rng.random_range(0..2)].to_string();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match op {
            Op::Point => {
                let seed: u64 = rng.random();
                (
                    s(&["protect", "run", "gold"]),
                    Box::new(move |fl: &FaultLab| {
                        fl.dirty(&mut StdRng::seed_from_u64(seed), DIRTY)
                    }),
                )
            }
            Op::Copy => (
                s(&["store", "sync", "site1-store", "--to", "cloud-store"]),
                Box::new(|_: &FaultLab| {}),
            ),
            Op::Prune => (s(&["store", "prune", &store]), Box::new(|_: &FaultLab| {})),
            Op::Gc => (
                s(&["store", "gc", &store, "--grace", "0s"]),
                Box::new(|_: &FaultLab| {}),
            ),
            Op::Restore => {
                let site = ["site1", "site2"][rng.random_range(0..2)];
                let point = self
                    .newest_point()
                    .and_then(|p| p["id"].as_str().map(str::to_string))
                    .unwrap_or_default();
                (
                    s(&["restore", &point, "--site", site]),
                    Box::new(|fl: &FaultLab| {
                        fl.ok(&["vm", "stop", "pbx1"]);
                    }),
                )
            }
        }
    }

    /// The processes of the VM (its disk is in this lab), with their
    /// state letter (R, S, T: stopped).
    pub(crate) fn vm_processes(&self) -> Vec<(u32, char)> {
        let needle = self.lab.dir.path().to_string_lossy().into_owned();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(c) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains("standby-vnf") && c.contains("--name pbx1") && c.contains(&needle) {
                let state = std::fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
                    .unwrap_or('?');
                // A zombie is a VM that ended and was not reaped yet.
                if state != 'Z' {
                    found.push((pid, state));
                }
            }
        }
        found
    }

    /// Free bytes on the datastores' filesystem.
    pub(crate) fn fs_free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.lab.path("fs")).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    }

    /// The used fraction of the datastores' filesystem.
    pub(crate) fn fs_used(&self) -> f64 {
        let st = nix::sys::statvfs::statvfs(&self.lab.path("fs")).unwrap();
        1.0 - st.blocks_available() as f64 / st.blocks().max(1) as f64
    }

    /// Wait until no job is queued or running; the ones still running
    /// after `limit`.
    pub(crate) fn settle(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let jobs = self.try_json(&["jobs", "list", "--limit", "50"]);
            let busy: Vec<String> = match &jobs {
                Ok(j) => j
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|j| j["status"] == "running" || j["status"] == "queued")
                    .map(|j| format!("{} {} {}", j["id"], j["kind"], j["target"]))
                    .collect(),
                Err(e) => vec![e.clone()],
            };
            if busy.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("still running after {limit:?}: {busy:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn kill(&mut self, victim: &str) {
        match victim {
            "controller" => self.lab.kill_server(),
            a => self.agents.iter_mut().find(|x| x.name == a).unwrap().kill(),
        }
    }

    pub(crate) fn restart(&mut self, victim: &str) {
        match victim {
            "controller" => self.lab.start_server(),
            a => {
                let lab = &self.lab;
                self.agents
                    .iter_mut()
                    .find(|x| x.name == a)
                    .unwrap()
                    .spawn(lab);
            }
        }
    }

    /// Who may be killed during `op` (whose death matters to it).
    pub(crate) fn victims(&self, op: Op) -> Vec<&'static str> {
        match op {
            Op::Copy => vec!["controller", "site1-agent"],
            _ => vec!["controller", "site1-agent", "site2-agent"],
        }
    }

    /// Run `args` until it succeeds: an agent just restarted, or a
    /// resumed job still holding the group, are answered with a
    /// retryable error for a moment; anything else is the outcome.
    pub(crate) fn retry(&self, args: &[&str]) -> Result<Value, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_json(args) {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(e) if e.contains("unreachable") || e.contains("not heard") => {
                    std::thread::sleep(Duration::from_millis(300))
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn vm_should_run(&self) -> bool {
        self.try_json(&["vm", "status", "pbx1"])
            .map(|v| v["state"] != "stopped")
            .unwrap_or(true)
    }

    pub(crate) fn last_job(&self) -> i64 {
        self.try_json(&["jobs", "list", "--limit", "1"])
            .ok()
            .and_then(|j| j[0]["id"].as_i64())
            .unwrap_or(0)
    }
}

/// Take `more` bytes of the filesystem of `path` (or as many as there
/// are) by growing the file `path` with fallocate, a MiB at a time: fast,
/// and a write racing it gets the space or a clean "no space".
pub(crate) fn fill(path: &Path, more: u64) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let start = f.metadata().unwrap().len() as i64;
    let (mut off, end) = (start, start + more as i64);
    while off < end {
        let n = (end - off).min(1 << 20);
        if nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), off, n).is_err() {
            break;
        }
        off += n;
    }
}
