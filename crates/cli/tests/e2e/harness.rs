use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const STANDBY: &str = env!("CARGO_BIN_EXE_standby");

pub use standby_testkit::free_port;

/// A two-site installation in a temporary directory with a running
/// controller (`standby server`).
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub api: u16,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    server: Option<Child>,
    env: Vec<(String, String)>,
    /// With `LabOptions::pki`: the port of the controller's mutual-TLS
    /// listener for agents (`[controller] agent_listen`).
    pub agent_api: Option<u16>,
}

pub struct LabOptions {
    /// Replaces the VM's command and args (default: the sample VNF).
    pub vm: Option<String>,
    pub disk_size: &'static str,
    pub retention: &'static str,
    pub schedule: &'static str,
    /// Appended to the configuration (e.g. more disks for pbx1).
    pub extra: &'static str,
    /// Lines added under `[controller]` (e.g. `rules = [...]`).
    pub controller: String,
    /// Appended after `extra` (probes, agents, receivers, routes).
    pub watch: String,
    /// Address the controller listens on (default 127.0.0.1).
    pub listen_host: &'static str,
    /// Files written into the lab directory before the controller starts.
    pub files: Vec<(&'static str, String)>,
    /// The protection group's datastores (TOML list items).
    pub group_datastores: &'static str,
    /// Lines added under `[groups.gold]` (e.g. `replica = "warm"`).
    pub group: &'static str,
    /// Environment of the controller (credentials of object stores).
    pub env: Vec<(String, String)>,
    /// Lines added under `[hosts.site1-host1]` and `[hosts.site2-host1]`.
    pub hosts: [String; 2],
    /// Lines added under `[datastores.site1-store]` and
    /// `[datastores.site2-store]` (their `path` included when given here).
    pub stores: [String; 2],
    /// Lines added under `[sites.site1]` and `[sites.site2]`.
    pub sites: [String; 2],
    /// Mutual TLS between the controller and agents: `standby pki` makes
    /// a CA in `pki/` with the controller's and every declared agent's
    /// certificates, `[pki]` and `agent_listen` are set, and agents get
    /// no tokens (their URLs must be `https://`).
    pub pki: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            vm: None,
            disk_size: "16MiB",
            retention: "keep_last = 10",
            schedule: "every 1h",
            extra: "",
            controller: String::new(),
            watch: String::new(),
            listen_host: "127.0.0.1",
            files: Vec::new(),
            group_datastores: r#""site1-store", "site2-store""#,
            group: "",
            env: Vec::new(),
            hosts: Default::default(),
            stores: Default::default(),
            sites: Default::default(),
            pki: false,
        }
    }
}

impl Lab {
    pub fn new(opts: LabOptions) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("standby-e2e-")
            .tempdir()
            .unwrap();
        let (api, sip, http) = (free_port(), free_port(), free_port());
        let agent_api = opts.pki.then(free_port);
        let controller = match agent_api {
            Some(port) => format!(
                "{}\nagent_listen = \"{}:{port}\"\n",
                opts.controller, opts.listen_host
            ),
            None => opts.controller.clone(),
        };
        let vm = opts.vm.unwrap_or_else(|| {
            format!(
                r#"command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{{disk.data}}", "--sip", "127.0.0.1:{sip}", "--http", "127.0.0.1:{http}"]"#
            )
        });
        let text = format!(
            r#"[controller]
listen = "{listen_host}:{api}"
data_dir = "controller"
{controller}
[sites.site1]
{site1}
[sites.site2]
{site2}
[hosts.site1-host1]
site = "site1"
driver = "process"
disk_dir = "site1/disks"
{host1}
[hosts.site2-host1]
site = "site2"
driver = "process"
disk_dir = "site2/disks"
{host2}
[datastores.site1-store]
site = "site1"
{store1}
[datastores.site2-store]
site = "site2"
{store2}
[vms.pbx1]
host = "site1-host1"
dr_site = "site2"
shutdown_timeout = "5s"
{vm}
[[vms.pbx1.disks]]
name = "data"
size = "{disk}"
[groups.gold]
members = ["pbx1"]
schedule = "{schedule}"
datastores = [{group_datastores}]
{group}
[groups.gold.retention]
{retention}
{extra}
{watch}
"#,
            listen_host = opts.listen_host,
            group_datastores = opts.group_datastores,
            group = opts.group,
            // `{sip}` in watch text is the VNF's SIP address.
            watch = opts.watch.replace("{sip}", &format!("127.0.0.1:{sip}")),
            disk = opts.disk_size,
            schedule = opts.schedule,
            retention = opts.retention,
            extra = opts.extra,
            site1 = opts.sites[0],
            site2 = opts.sites[1],
            host1 = opts.hosts[0],
            host2 = opts.hosts[1],
            store1 = store_lines(&opts.stores[0], "site1/store"),
            store2 = store_lines(&opts.stores[1], "site2/store"),
        );
        // Every declared agent gets its secret (see `Lab::agent_token`),
        // unless the lab has certificates ([pki]).
        let with_pki = opts.pki || text.lines().any(|l| l.trim() == "[pki]");
        if opts.pki {
            let pki = dir.path().join("pki");
            pki_run(&pki, &["init"]);
            pki_run(&pki, &["issue", "controller", "controller"]);
            for a in text.lines().filter_map(|l| {
                l.trim()
                    .strip_prefix("[agents.")
                    .and_then(|r| r.strip_suffix(']'))
            }) {
                pki_run(&pki, &["issue", "agent", a]);
            }
        }
        let text = match opts.pki {
            true => format!("{text}\n[pki]\ndir = \"pki\"\n"),
            false => text,
        };
        let text: String = text
            .lines()
            .flat_map(|l| {
                let agent = l
                    .trim()
                    .strip_prefix("[agents.")
                    .and_then(|r| r.strip_suffix(']'))
                    .filter(|_| !with_pki);
                std::iter::once(l.to_string())
                    .chain(agent.map(|a| format!("token = \"{}\"", agent_secret(a, api))))
            })
            .map(|l| l + "\n")
            .collect();
        let cfg = dir.path().join("standby.toml");
        std::fs::write(&cfg, text).unwrap();
        for (name, content) in &opts.files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        Lab::started(dir, cfg, (api, sip, http), opts.env.clone(), agent_api)
    }

    /// The lab in `dir` with configuration `cfg`, its controller started.
    fn started(
        dir: tempfile::TempDir,
        cfg: PathBuf,
        (api, sip, http): (u16, u16, u16),
        env: Vec<(String, String)>,
        agent_api: Option<u16>,
    ) -> Lab {
        let mut lab = Lab {
            dir,
            cfg,
            api,
            sip: ([127, 0, 0, 1], sip).into(),
            http: ([127, 0, 0, 1], http).into(),
            server: None,
            env,
            agent_api,
        };
        lab.start_server();
        lab
    }

    /// A lab with configuration `text` written as is (its VM `pbx1`
    /// answering SIP at `sip` and HTTP at `http`, its API at `api`), with
    /// its controller started.
    pub fn from_text(text: &str, api: u16, sip: u16, http: u16) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("standby-e2e-")
            .tempdir()
            .unwrap();
        let cfg = dir.path().join("standby.toml");
        std::fs::write(&cfg, text).unwrap();
        Lab::started(dir, cfg, (api, sip, http), Vec::new(), None)
    }

    /// A lab laid out in `dir` already (its configuration in
    /// `standby.toml`, its API at `api`, no VNF addresses), with its
    /// controller started.
    pub fn from_dir(dir: tempfile::TempDir, api: u16) -> Lab {
        let cfg = dir.path().join("standby.toml");
        Lab::started(dir, cfg, (api, 0, 0), Vec::new(), None)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Where an agent reaches the controller from `addr` (the controller's
    /// address as the agent sees it): its mutual-TLS agent listener in a
    /// lab with `pki`, else its API.
    pub fn controller_for_agents(&self, addr: &str) -> String {
        match self.agent_api {
            Some(port) => format!("https://{addr}:{port}"),
            None => format!("http://{addr}:{}", self.api),
        }
    }

    /// A client calling agent `agent` as the controller does: with the
    /// controller's certificate in a lab with `pki` (then `agent_token`
    /// is not needed), else plain HTTP.
    pub fn client_of_agent(&self, agent: &str, timeout: Duration) -> reqwest::Client {
        if self.agent_api.is_none() {
            return plain_client(timeout);
        }
        let m = standby_tls::Material::from_dir(
            &self.path("pki"),
            &standby_tls::Identity::controller("controller").unwrap(),
        )
        .unwrap();
        let b = plain_client_builder(timeout);
        standby_tls::reqwest_client(m, vec![standby_tls::Identity::agent(agent).unwrap()], b)
            .unwrap()
    }

    /// `http` or, in a lab with `pki`, `https`: the scheme of agent URLs.
    pub fn agent_scheme(pki: bool) -> &'static str {
        if pki { "https" } else { "http" }
    }

    /// The admin token the controller wrote at its first start (the CLI
    /// run with `--config` reads it by itself).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.path("controller/admin.token"))
            .expect("the controller wrote controller/admin.token")
            .trim()
            .to_string()
    }

    /// The secret of agent `name` written into the configuration.
    pub fn agent_token(&self, name: &str) -> String {
        agent_secret(name, self.api)
    }

    /// The id of the first job of runbook `name`, waiting up to `limit`
    /// for one to start; the job list last seen when none did.
    pub fn wait_runbook_job(&self, name: &str, limit: Duration) -> Result<i64, Value> {
        let deadline = Instant::now() + limit;
        loop {
            let jobs = self.json(&["jobs", "list"]);
            if let Some(j) = jobs
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["kind"] == "runbook" && j["target"] == name)
            {
                return Ok(j["id"].as_i64().unwrap());
            }
            if Instant::now() >= deadline {
                return Err(jobs);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET `path` of the API as the admin; (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        self.call(reqwest::Method::GET, path, None)
    }

    /// POST `body` to `path` of the API as the admin; (status, body).
    pub fn post(&self, path: &str, body: Value) -> (u16, String) {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut req = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap()
                .request(method, format!("http://127.0.0.1:{}{path}", self.api))
                .bearer_auth(self.token());
            if let Some(b) = body {
                req = req.json(&b);
            }
            let r = req.send().await.expect("controller answers");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        })
    }

    pub fn start_server(&mut self) {
        let log = std::fs::File::create(self.path("server.log")).unwrap();
        let child = Command::new(STANDBY)
            .args(["--config", self.cfg.to_str().unwrap(), "server"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("standby server starts");
        // Set first: a lab dropped by a failed wait still kills it.
        self.server = Some(child);
        let (log, api) = (self.path("server.log"), self.api);
        let child = self.server.as_mut().expect("just set");
        wait_listening(child, &log, api, Duration::from_secs(20));
    }

    /// Set (or with None, remove) an environment variable of the
    /// controller from its next start on.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// Wait up to `timeout` for the controller to exit by itself; true if
    /// it did.
    pub fn wait_server_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(c) = self.server.as_mut() {
            if c.try_wait().unwrap().is_some() {
                self.server = None;
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// The configuration of another controller replica of this lab, in
    /// `NAME.toml`: the lab's, listening on `port`, with its own
    /// `data_dir`, `name` and, if given, the `url` it advertises.
    pub fn replica_config(
        &self,
        name: &str,
        port: u16,
        data_dir: &str,
        url: Option<&str>,
    ) -> PathBuf {
        let text = std::fs::read_to_string(&self.cfg).unwrap();
        let url = url.map(|u| format!("\nurl = \"{u}\"")).unwrap_or_default();
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(
            &path,
            text.replacen(&format!(":{}\"", self.api), &format!(":{port}\""), 1)
                .replacen(
                    "data_dir = \"controller\"",
                    &format!("data_dir = \"{data_dir}\"\nname = \"{name}\"{url}"),
                    1,
                ),
        )
        .unwrap();
        path
    }

    /// The controller's process id, while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|c| c.id())
    }

    /// SIGKILL the controller (a crash, not a shutdown).
    pub fn kill_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM the controller and wait for it to exit.
    pub fn stop_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(STANDBY)
            .args(["--config", self.cfg.to_str().unwrap()])
            .args(args)
            // The lab's environment (e.g. STANDBY_CA_CERT of a TLS lab).
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    /// Run a CLI command with `--json`; panics with its stderr on failure.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        assert!(
            out.status.success(),
            "standby {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "standby {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Run a CLI command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "standby {args:?} unexpectedly succeeded"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn wait_sip(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        rt.block_on(async {
            while standby_vnf::client::options(self.sip, Duration::from_millis(300))
                .await
                .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "VNF never answered SIP at {}",
                    self.sip
                );
            }
        });
    }

    pub fn register(&self, users: std::ops::Range<u32>) {
        register_at(self.sip, users)
    }

    pub fn bindings(&self) -> Vec<String> {
        bindings_at(self.http)
    }
}

fn store_lines(lines: &str, path: &str) -> String {
    if lines.contains("path =") {
        lines.to_string()
    } else {
        format!("path = \"{path}\"\n{lines}")
    }
}

/// REGISTER `user<n>` for each n at the VNF answering SIP at `sip`.
pub fn register_at(sip: SocketAddr, users: std::ops::Range<u32>) {
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for n in users {
                standby_vnf::client::register(
                    sip,
                    &format!("sip:user{n}@e2e.invalid"),
                    &format!("sip:user{n}@198.18.0.1:5060"),
                    3600,
                    Duration::from_secs(3),
                )
                .await
                .unwrap_or_else(|e| panic!("REGISTER user{n}: {e}"));
            }
        });
    }
}

/// The AORs registered at the VNF whose HTTP API answers at `http`.
pub fn bindings_at(http: SocketAddr) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let st = rt
        .block_on(standby_vnf::client::state(http))
        .expect("VNF state");
    let mut v: Vec<String> = st.bindings.into_iter().map(|b| b.aor).collect();
    v.sort();
    v
}

impl Drop for Lab {
    fn drop(&mut self) {
        // VMs outlive the controller by design: stop the lab's own first.
        if self.server.is_some() {
            let _ = self.run(&["vm", "stop", "pbx1"]);
        }
        self.stop_server();
        // And whatever still runs from the in-process agents' hosts (a VM
        // a runbook restarted as the lab ended) is killed.
        for dir in ["controller", "controller-b"] {
            let hosts = self.path(&format!("{dir}/hosts"));
            for e in std::fs::read_dir(hosts).into_iter().flatten().flatten() {
                kill_agent_vms(&e.path());
            }
        }
    }
}

/// The secret of agent `name` in a lab whose API listens on `api`.
pub fn agent_secret(name: &str, api: u16) -> String {
    format!("e2e-agent-secret-{name}-{api}")
}

pub fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p, ext));
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Fill `path` with `len` bytes of incompressible data (xorshift).
pub fn write_random(path: &Path, len: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ len as u64;
    for _ in 0..len / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).unwrap();
    }
    f.flush().unwrap();
}

/// Wait until the controller `child` (its stderr in `log`) says it listens
/// and its port `api` answers; panic with its log when it exits or takes
/// longer than `limit`. A bare connect is not enough: a connect to a port
/// of the ephemeral range may reach another socket (or itself) before the
/// controller has bound, and the caller then reads an admin token that is
/// not written yet.
pub fn wait_listening(child: &mut Child, log: &Path, api: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    let said = || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("standby controller listening on"))
    };
    while !(said() && std::net::TcpStream::connect(("127.0.0.1", api)).is_ok()) {
        let text = || std::fs::read_to_string(log).unwrap_or_default();
        if let Some(st) = child.try_wait().unwrap() {
            panic!("controller exited ({st}): {}", text());
        }
        assert!(
            Instant::now() < deadline,
            "controller did not listen within {limit:?}: {}",
            text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A program of the Python venv `scripts/test` installs the PyPI tools in
/// (`STANDBY_VENV`, default `~/.cache/standby/venv`), else `name` on the
/// PATH.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var("STANDBY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/standby/venv")
        });
    let p = venv.join("bin").join(name);
    if p.exists() {
        return p;
    }
    PathBuf::from(name)
}

/// Kill (SIGKILL) the VMs a host agent with data dir `data` left running:
/// VMs outlive their agent by design, a test's must not outlive the test.
pub fn kill_agent_vms(data: &Path) {
    let pids = std::fs::read_dir(data.join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| t.split_whitespace().next()?.parse::<u32>().ok());
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

/// `standby pki ARGS --dir DIR`, which must succeed.
pub fn pki_run(dir: &Path, args: &[&str]) {
    let out = Command::new(STANDBY)
        .arg("pki")
        .args(args)
        .args(["--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "standby pki {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// POST to an agent's `/agent/v1/<op>` as the controller does: ask for the
/// agent's session, then send the call with it and a fresh counter.
/// `client` carries the caller's credential (a client certificate);
/// `token` a bearer token if any. The status and the JSON answer.
pub fn agent_call(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    op: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    agent_call_at(client, base, token, op, body, u64::MAX)
}

/// [`agent_call`] carrying leader epoch `epoch` (`u64::MAX`: the epoch
/// the agent has seen, as the current leader's commands do).
pub fn agent_call_at(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    op: &str,
    body: &serde_json::Value,
    epoch: u64,
) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let auth = |r: reqwest::RequestBuilder| match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        let epoch = if epoch == u64::MAX {
            let st: serde_json::Value = auth(client.get(format!("{base}/agent/v1/state")))
                .send()
                .await
                .expect("agent answers")
                .json()
                .await
                .expect("a state");
            st["epoch"].as_u64().unwrap_or(0)
        } else {
            epoch
        };
        let s: serde_json::Value = auth(client.get(format!("{base}/agent/v1/session")))
            .send()
            .await
            .expect("agent answers")
            .json()
            .await
            .expect("a session");
        let resp = auth(client.post(format!("{base}/agent/v1/{op}")))
            .header(
                "x-standby-session",
                s["session"].as_str().unwrap_or_default(),
            )
            // Ahead of the counters the controller itself is about to use
            // (it is the same caller): inside the window, never taken twice.
            .header(
                "x-standby-seq",
                (s["next"].as_u64().unwrap_or(1) + 64).to_string(),
            )
            .header("x-standby-epoch", epoch.to_string())
            .json(body)
            .send()
            .await
            .expect("agent answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    })
}

/// A plain HTTP client for the tests' own calls to agents.
pub fn plain_client(timeout: Duration) -> reqwest::Client {
    plain_client_builder(timeout).build().unwrap()
}

fn plain_client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().timeout(timeout)
}
