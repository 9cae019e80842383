//! standby as operators install it: the Debian package (`scripts/package`,
//! cargo-deb) installed with `apt-get`, its systemd units checked with
//! `systemd-analyze verify` and run exactly as they say (user, working
//! directory, environment, command line; readiness, watchdog and stop
//! notifications on a `NOTIFY_SOCKET` this test provides, since systemd is
//! not PID 1 here), a point taken through the packaged controller, and the
//! package purged.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{STANDBY, free_port};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `[Service]` settings of a unit file (the last value of a key wins,
/// as systemd reads them; `Environment=` lines add up).
fn service_section(unit: &str) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let mut keys = BTreeMap::new();
    let mut env = Vec::new();
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        if k == "Environment" {
            let (ek, ev) = v.split_once('=').expect("NAME=value");
            env.push((ek.to_string(), ev.to_string()));
        } else {
            keys.insert(k.to_string(), v.to_string());
        }
    }
    (keys, env)
}

/// The package, installed; purged (and what it ran killed) when dropped,
/// so a failing test leaves the machine as it found it.
struct Installed {
    children: Vec<Child>,
    purged: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.purged {
            return;
        }
        // The VMs the packaged controller started run as its user.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", "standby"])
            .status();
        let _ = Command::new("apt-get")
            .args(["purge", "-y", "-qq", "standby"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
}

/// A unit's `[Service]` run as systemd would run it: its user (through
/// `setpriv`), working directory and environment only, `NOTIFY_SOCKET`
/// and `WATCHDOG_USEC` from `WatchdogSec=`.
fn start_unit(
    unit_file: &Path,
    instance: Option<&str>,
    notify: &Path,
    log: &Path,
) -> (Child, Duration) {
    let text = std::fs::read_to_string(unit_file).unwrap();
    let (svc, env) = service_section(&text);
    assert_eq!(svc["Type"], "notify", "{}", unit_file.display());
    let expand = |s: &str| match instance {
        Some(i) => s.replace("%i", i),
        None => s.to_string(),
    };
    let mut vars: BTreeMap<String, String> = env.into_iter().collect();
    if let Some(file) = svc.get("EnvironmentFile") {
        let file = expand(file.trim_start_matches('-'));
        if let Ok(t) = std::fs::read_to_string(&file) {
            for l in t.lines().filter(|l| l.contains('=') && !l.starts_with('#')) {
                let (k, v) = l.split_once('=').unwrap();
                vars.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    // `$VAR` alone is split into words, as systemd does.
    let argv: Vec<String> = expand(&svc["ExecStart"])
        .split_whitespace()
        .flat_map(|w| match w.strip_prefix('$') {
            Some(var) => vars
                .get(var)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            None => vec![w.to_string()],
        })
        .collect();
    let watchdog = humantime::parse_duration(&svc["WatchdogSec"]).unwrap();
    let user = svc.get("User").map(String::as_str).unwrap_or("root");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .args(&argv)
        .env_clear()
        .envs(&vars)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .current_dir(svc.get("WorkingDirectory").map_or("/", String::as_str))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    (
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}")),
        watchdog,
    )
}

/// Wait for a datagram on `sock` that contains `want`; the ones before it.
fn wait_notify(sock: &UnixDatagram, want: &str, limit: Duration, log: &Path) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return seen;
            }
        }
    }
    panic!(
        "no {want} within {limit:?} (got {seen:?}); log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn ecosystem_the_debian_package_installs_runs_as_its_units_and_purges() {
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "installing a package needs root"
    );
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "standby"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&installed.stdout).contains("installed"),
        "a standby package is installed already: this test installs and purges its own"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // Built from the binaries this test runs (the dev profile).
    let t = Instant::now();
    run(Command::new(repo().join("scripts/package"))
        .args(["--profile", "dev", "--out"])
        .arg(dir.path())
        .env(
            "CARGO_TARGET_DIR",
            Path::new(STANDBY).parent().unwrap().parent().unwrap(),
        ));
    let deb = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("scripts/package wrote a .deb");
    let size = std::fs::metadata(&deb).unwrap().len();
    let built = t.elapsed();

    let t = Instant::now();
    let mut guard = Installed {
        children: Vec::new(),
        purged: false,
    };
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    let install = t.elapsed();
    eprintln!(
        "package: {:.1} MiB (dev binaries), built in {:.1} s, installed in {:.1} s",
        size as f64 / 1048576.0,
        built.as_secs_f64(),
        install.as_secs_f64()
    );
    for f in [
        "/usr/bin/standby",
        "/usr/bin/standby-vnf",
        "/etc/standby/standby.toml",
        "/usr/share/man/man1/standby.1.gz",
        "/usr/share/bash-completion/completions/standby",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    run(Command::new("id").arg("standby"));

    // The units, checked by systemd itself (an instance for the template).
    let units = Path::new("/lib/systemd/system");
    let agent_unit = dir.path().join("standby-agent@site1-agent.service");
    std::fs::copy(units.join("standby-agent@.service"), &agent_unit).unwrap();
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(units.join("standby.service"))
        .arg(&agent_unit));
    assert!(
        String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A configuration with one VM to protect, in the package's paths.
    let (api, sip, agent_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        "/etc/standby/standby.toml",
        format!(
            r#"[controller]
listen = "127.0.0.1:{api}"
data_dir = "/var/lib/standby/controller"
[sites.site1]
[hosts.site1-host1]
site = "site1"
driver = "process"
disk_dir = "/var/lib/standby/site1/disks"
[datastores.site1-store]
site = "site1"
path = "/var/lib/standby/site1/store"
[vms.pbx1]
host = "site1-host1"
command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{{disk.data}}", "--sip", "127.0.0.1:{sip}"]
shutdown_timeout = "5s"
[[vms.pbx1.disks]]
name = "data"
size = "4MiB"
[groups.gold]
members = ["pbx1"]
schedule = "every 24h"
datastores = ["site1-store"]
[agents.site1-agent]
site = "site1"
token = "packaged-agent-secret"
"#
        ),
    )
    .unwrap();
    std::fs::write(
        "/etc/standby/agent-site1-agent.env",
        format!(
            "STANDBY_AGENT_ARGS=--listen 127.0.0.1:{agent_port} --controller http://127.0.0.1:{api}\n"
        ),
    )
    .unwrap();

    // The controller, as standby.service runs it.
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let log = dir.path().join("controller.log");
    let (child, watchdog) = start_unit(&units.join("standby.service"), None, &sock_path, &log);
    let pid = child.id();
    guard.children.push(child);
    let t = Instant::now();
    let seen = wait_notify(&sock, "READY=1", Duration::from_secs(60), &log);
    eprintln!(
        "controller ready in {:.1} s: {seen:?}",
        t.elapsed().as_secs_f64()
    );
    let ps = run(Command::new("ps").args(["-o", "user=", "-p", &pid.to_string()]));
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "standby");
    wait_notify(&sock, "WATCHDOG=1", watchdog, &log);

    // The VM started (its disk made) and a point taken, through the
    // packaged controller with the packaged CLI.
    run(Command::new("/usr/bin/standby").args([
        "--config",
        "/etc/standby/standby.toml",
        "vm",
        "start",
        "pbx1",
    ]));
    let ps = run(Command::new("ps").args(["-o", "user=,args=", "-C", "standby-vnf"]));
    let ps = String::from_utf8_lossy(&ps.stdout);
    let vm = ps
        .lines()
        .find(|l| l.contains("/var/lib/standby/site1/disks"))
        .unwrap_or_else(|| panic!("the VM does not run: {ps}"));
    assert!(
        vm.starts_with("standby "),
        "the VM runs as the controller's user: {vm}"
    );
    let out = run(Command::new("/usr/bin/standby").args([
        "--config",
        "/etc/standby/standby.toml",
        "--json",
        "protect",
        "run",
        "gold",
    ]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v.to_string();
    assert!(text.contains("pbx1@"), "no point in {text}");
    let out = run(Command::new("/usr/bin/standby").args([
        "--config",
        "/etc/standby/standby.toml",
        "--json",
        "points",
        "list",
    ]));
    let points: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        points.to_string().contains("\"site1-store\""),
        "no point in site1-store: {points}"
    );

    // `systemctl reload standby`: the unit's ExecReload, the changed file
    // applied in place, said to the service manager.
    let text = std::fs::read_to_string("/etc/standby/standby.toml").unwrap();
    std::fs::write(
        "/etc/standby/standby.toml",
        text.replace("every 24h", "every 12h"),
    )
    .unwrap();
    let (svc, _) =
        service_section(&std::fs::read_to_string(units.join("standby.service")).unwrap());
    let reload = svc["ExecReload"].replace("$MAINPID", &pid.to_string());
    run(Command::new("sh").args(["-c", &reload]));
    wait_notify(&sock, "RELOADING=1", Duration::from_secs(10), &log);
    let seen = wait_notify(&sock, "READY=1", Duration::from_secs(10), &log);
    assert!(
        seen.last()
            .is_some_and(|m| m.contains("group gold: changed (schedule)")),
        "{seen:?}"
    );

    // The agent, as standby-agent@site1-agent.service runs it.
    let agent_log = dir.path().join("agent.log");
    let (agent, _) = start_unit(
        &units.join("standby-agent@.service"),
        Some("site1-agent"),
        &sock_path,
        &agent_log,
    );
    let agent_pid = agent.id();
    guard.children.push(agent);
    wait_notify(&sock, "READY=1", Duration::from_secs(30), &agent_log);

    // Both stop on SIGTERM, saying so.
    for (pid, log) in [(agent_pid, &agent_log), (pid, &log)] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        wait_notify(&sock, "STOPPING=1", Duration::from_secs(30), log);
    }
    for c in &mut guard.children {
        let st = c.wait().unwrap();
        assert!(st.success(), "a unit's process exited with {st}");
    }
    guard.children.clear();

    // Purged: its files, its state and its user are gone.
    let _ = Command::new("pkill")
        .args(["-KILL", "-u", "standby"])
        .status();
    let t = Instant::now();
    run(Command::new("apt-get")
        .args(["purge", "-y", "-qq", "standby"])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    guard.purged = true;
    eprintln!("purged in {:.1} s", t.elapsed().as_secs_f64());
    for f in ["/usr/bin/standby", "/etc/standby", "/var/lib/standby"] {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
    let id = Command::new("id").arg("standby").output().unwrap();
    assert!(!id.status.success(), "user standby left after purge");
}

/// `standby config check` validates a file as the controller would load it
/// (the TOML, then the rule and runbook files it names), each problem with
/// its file, line and field, and lists what a valid one changes against
/// the running controller, entry by entry.
#[test]
fn ecosystem_config_check_validates_offline_and_compares_with_the_running_controller() {
    let mut lab = crate::harness::Lab::new(crate::harness::LabOptions::default());
    let current = std::fs::read_to_string(&lab.cfg).unwrap();
    let check = |lab: &crate::harness::Lab, name: &str, text: &str| {
        let f = lab.path(name);
        std::fs::write(&f, text).unwrap();
        lab.run(&["config", "check", f.to_str().unwrap()])
    };

    // Unchanged: valid, and nothing would change.
    let out = check(&lab, "same.toml", &current);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("no change against the running controller"),
        "{stdout}"
    );

    // A group's schedule changed and a VM added: named, entry by entry.
    let changed = current.replace("schedule = \"every 1h\"", "schedule = \"every 2h\"")
        + "\n[vms.pbx2]\nhost = \"site1-host1\"\ncommand = \"sleep\"\nargs = [\"60\"]\n";
    let out = check(&lab, "changed.toml", &changed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("group gold: changed (schedule)"),
        "{stdout}"
    );
    assert!(stdout.contains("vm pbx2: added"), "{stdout}");

    // A broken file: its line and field.
    let out = check(
        &lab,
        "broken.toml",
        &current.replace("dr_site = \"site2\"", "dr_site = \"site9\""),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("broken.toml:") && stderr.contains("vms.pbx1.dr_site"),
        "{stderr}"
    );

    // A rule file it names that would not load: the rule file's place.
    std::fs::write(
        lab.path("bad-rules.yaml"),
        "rules:\n  - name: x\n    severity: loud\n",
    )
    .unwrap();
    let out = check(
        &lab,
        "rules.toml",
        &current.replacen(
            "[controller]\n",
            "[controller]\nrules = [\"bad-rules.yaml\"]\n",
            1,
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad-rules.yaml"), "{stderr}");

    // With the controller down, the file is still checked.
    lab.stop_server();
    let out = check(&lab, "offline.toml", &current);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("checked offline only"), "{stdout}");
}
