//! The web portal in a real browser: a lab with the VNF, a front-door
//! service and a SIP probe; `tests/browser/portal.mjs` (headless chromium
//! through playwright-core) logs in, sees the dashboard, takes a point,
//! runs a drill and watches it finish live, and acknowledges the alert
//! that killing the VNF raises. Screenshots (laptop and phone) go to
//! `target/artifacts/portal/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Lab, LabOptions, free_port};
use crate::watch::{probe_ok, wait_until};

const INSTALL_HINT: &str = "install the browser test's tools: \
     `apt-get install chromium nodejs npm` and `npm install --prefix tests/browser` \
     (scripts/test does both)";

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub(crate) fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// node, chromium and playwright-core are there, or the test fails saying
/// how to install them.
pub(crate) fn check_tools(root: &Path) {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: {INSTALL_HINT}"
    );
    assert!(
        Path::new(&chromium()).exists(),
        "{} is missing: {INSTALL_HINT}",
        chromium()
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in tests/browser: {INSTALL_HINT}"
    );
}

/// An operator's login for the browser, made with `standby user add`
/// (the CLI authenticates with the lab's admin token).
fn operator_login(lab: &Lab) -> Option<(String, String)> {
    let help = lab.run(&["user", "--help"]);
    if !help.status.success() {
        return None;
    }
    let (user, password) = ("e2e-operator".to_string(), "portal-e2e-secret".to_string());
    let mut child = Command::new(crate::harness::STANDBY)
        .args(["--config", lab.cfg.to_str().unwrap()])
        .args([
            "user",
            "add",
            &user,
            "--role",
            "operator",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "standby user add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((user, password))
}

#[test]
fn portal_in_a_real_browser() {
    let root = root();
    check_tools(&root);
    let front = free_port();
    let lab = Lab::new(LabOptions {
        // `{sip}` in `watch` is the VNF's address.
        watch: format!(
            r#"
[services.pbx]
vm = "pbx1"
listen = "127.0.0.1:{front}"
protocols = ["udp"]
backends = {{ site1 = "{{sip}}", site2 = "{{sip}}" }}
probe = "sip"

[probes.pbx1-sip]
kind = "sip"
target = "{{sip}}"
interval = "1s"
timeout = "500ms"
labels = {{ vm = "pbx1", site = "site1", scope = "service" }}
"#
        ),
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.json(&["protect", "run", "gold"]);
    wait_until("the SIP probe to pass", Duration::from_secs(15), || {
        (probe_ok(&lab, "pbx1-sip", "controller") == Some(true)).then_some(())
    });
    let pid = lab.json(&["vm", "status", "pbx1"])["pid"]
        .as_u64()
        .expect("the running VNF has a pid");

    let artifacts = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("artifacts/portal");
    let mut cmd = Command::new("node");
    cmd.arg(root.join("tests/browser/portal.mjs"))
        .current_dir(&root)
        .env("PORTAL_URL", format!("http://127.0.0.1:{}", lab.api))
        .env("PORTAL_VM", "pbx1")
        .env("PORTAL_SERVICE", "pbx")
        .env("PORTAL_SITE", "site1")
        .env("PORTAL_KILL_PID", pid.to_string())
        .env("PORTAL_ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium());
    if let Some((user, password)) = operator_login(&lab) {
        cmd.env("PORTAL_USER", user)
            .env("PORTAL_PASSWORD", password);
    }
    // Bounded: the script's own steps time out well within this.
    let (log_out, log_err) = (lab.path("browser.out"), lab.path("browser.err"));
    let mut child = Node(
        cmd.stdout(std::fs::File::create(&log_out).unwrap())
            .stderr(std::fs::File::create(&log_err).unwrap())
            .spawn()
            .expect("node runs"),
    );
    let status = wait_until("the browser test to end", Duration::from_secs(480), || {
        child.0.try_wait().unwrap()
    });
    let stdout = std::fs::read_to_string(&log_out).unwrap_or_default();
    eprintln!("{stdout}");
    assert!(
        status.success(),
        "the browser test failed:\n{stdout}\n{}\nserver log (end):\n{}",
        std::fs::read_to_string(&log_err).unwrap_or_default(),
        tail(
            &std::fs::read_to_string(lab.path("server.log")).unwrap_or_default(),
            40
        )
    );
    assert!(stdout.contains("portal: done"), "{stdout}");
    for shot in [
        "dashboard-laptop",
        "dashboard-phone",
        "vm-phone",
        "drill-job-laptop",
    ] {
        assert!(
            artifacts.join(format!("{shot}.png")).exists(),
            "no screenshot {shot}"
        );
    }
}

/// Run `tests/browser/SCRIPT.mjs` in Chromium against `lab`, logged in
/// as `user` with `password`, with `env` besides; it must end well and
/// print `SCRIPT: done`. Its output, and where its screenshots went.
pub(crate) fn run_browser(
    lab: &Lab,
    script: &str,
    (user, password): (&str, &str),
    env: &[(&str, &str)],
    limit: Duration,
) -> (String, PathBuf) {
    let root = root();
    check_tools(&root);
    let artifacts = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join(format!("artifacts/{script}"));
    let (log_out, log_err) = (lab.path("browser.out"), lab.path("browser.err"));
    let mut child = Node(
        Command::new("node")
            .arg(root.join(format!("tests/browser/{script}.mjs")))
            .current_dir(&root)
            .env("PORTAL_URL", format!("http://127.0.0.1:{}", lab.api))
            .env("PORTAL_USER", user)
            .env("PORTAL_PASSWORD", password)
            .envs(env.iter().copied())
            .env("PORTAL_ARTIFACTS", &artifacts)
            .env("CHROMIUM", chromium())
            .stdout(std::fs::File::create(&log_out).unwrap())
            .stderr(std::fs::File::create(&log_err).unwrap())
            .spawn()
            .expect("node runs"),
    );
    let status = wait_until("the browser test to end", limit, || {
        child.0.try_wait().unwrap()
    });
    let stdout = std::fs::read_to_string(&log_out).unwrap_or_default();
    eprintln!("{stdout}");
    assert!(
        status.success() && stdout.contains(&format!("{script}: done")),
        "the browser test failed:\n{stdout}\n{}\nserver log (end):\n{}",
        std::fs::read_to_string(&log_err).unwrap_or_default(),
        tail(
            &std::fs::read_to_string(lab.path("server.log")).unwrap_or_default(),
            40
        )
    );
    (stdout, artifacts)
}

pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The browser test's process, killed if the test panics first.
pub(crate) struct Node(pub(crate) std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
