//! A private `libvirtd` (Debian's `libvirt-daemon` with its QEMU driver)
//! for tests: no systemd, nothing shared with a libvirtd of the machine;
//! killed on drop together with every QEMU it started.
//!
//! A libvirtd running as root keeps its state under fixed paths
//! (`/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`, `/var/cache/libvirt`,
//! `/var/log/libvirt`). Each lab runs its daemon in a mount namespace of
//! its own (`unshare --mount --propagation private`) where those five
//! paths are bind mounts of the lab's directories, so two labs (two
//! "hosts", e.g. one per site namespace for migration) never see each
//! other's domains. Outside the namespace the host paths stay empty (they
//! are created if missing, as mount points). The daemon's socket is in
//! the lab directory; clients use [`Libvirtd::uri`]
//! (`qemu+unix:///system?socket=…`). Each lab has its own `host_uuid`.
//!
//! `qemu.conf`: QEMU runs as root with no security driver, no cgroups
//! and no private `/dev` (none of them work without systemd in a
//! container), and logs to files (no virtlogd).
//!
//! libvirt's privileged QEMU driver looks up the `libvirt-qemu` user and
//! group at start even when told to run QEMU as root; Debian's
//! `libvirt-daemon-system` creates them, and `scripts/test` creates them
//! when it installs the lighter packages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const INSTALL: &str = "apt-get install -y libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils (and the libvirt-qemu user: adduser --system --group libvirt-qemu)";

/// The paths a privileged libvirtd uses, each replaced by a lab directory.
const MOUNTS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
];

/// Lab directories are `/tmp/<PREFIX>XXXXXX`.
const PREFIX: &str = "standby-libvirtd-";
/// File of a lab directory holding the pid of the test process.
const OWNER: &str = "owner.pid";

/// Kill what labs of dead test processes left (a test binary that
/// aborts runs no destructor): their QEMUs and daemon, then the
/// directory.
fn reap_stale() {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in rd.flatten() {
        let d = e.path();
        let owned = e.file_name().to_string_lossy().starts_with(PREFIX);
        let Some(owner) = owned
            .then(|| std::fs::read_to_string(d.join(OWNER)).ok())
            .flatten()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let kill_if = |pid_file: PathBuf, needle: &str| {
            if let Ok(t) = std::fs::read_to_string(&pid_file)
                && let Ok(pid) = t.trim().parse::<i32>()
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        };
        if let Ok(pids) = std::fs::read_dir(d.join("run/qemu")) {
            for p in pids.flatten() {
                if p.path().extension().is_some_and(|x| x == "pid") {
                    kill_if(p.path(), "qemu-system");
                }
            }
        }
        kill_if(d.join("libvirtd.pid"), &d.to_string_lossy());
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// Options of a lab daemon.
#[derive(Debug, Clone, Default)]
pub struct LibvirtdOptions {
    /// Run the daemon (and so its QEMUs) in this network namespace.
    pub netns: Option<String>,
    /// The daemon's `host_uuid` (random when not given).
    pub host_uuid: Option<String>,
    /// Also listen on TCP port 16509 of this address, without
    /// authentication (`qemu+tcp://ADDR/system`), for peer-to-peer
    /// migration between two labs: for a private test lab only (a real
    /// deployment uses `qemu+tls` or `qemu+ssh`). The daemon then also
    /// runs in a UTS namespace of its own with a hostname of its own
    /// (libvirt refuses a migration between two daemons of one hostname).
    pub tcp_listen: Option<String>,
}

/// A running private libvirtd; killed on drop with its QEMUs.
pub struct Libvirtd {
    child: Child,
    dir: tempfile::TempDir,
    uri: String,
    pub host_uuid: String,
}

impl Libvirtd {
    pub fn start() -> Libvirtd {
        Libvirtd::start_with(LibvirtdOptions::default())
    }

    pub fn start_with(opts: LibvirtdOptions) -> Libvirtd {
        let libvirtd = ["/usr/sbin/libvirtd", "/usr/bin/libvirtd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("libvirtd is not installed; run: {INSTALL}"));
        reap_stale();
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::write(d.join(OWNER), std::process::id().to_string()).unwrap();
        for (sub, target) in MOUNTS {
            std::fs::create_dir_all(d.join(sub)).unwrap();
            std::fs::create_dir_all(target)
                .unwrap_or_else(|e| panic!("unable to create the mount point {target}: {e}"));
        }
        std::fs::create_dir_all(d.join("sock")).unwrap();
        let host_uuid = opts.host_uuid.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/uuid")
                .unwrap()
                .trim()
                .to_owned()
        });
        std::fs::write(
            d.join("etc/libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\nhost_uuid = \"{host_uuid}\"\nlog_outputs = \"3:file:{}\"\n",
                d.join("sock").display(),
                d.join("libvirtd.log").display(),
            ),
        )
        .unwrap();
        if let Some(addr) = &opts.tcp_listen {
            let mut conf = std::fs::read_to_string(d.join("etc/libvirtd.conf")).unwrap();
            conf += &format!(
                "listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\nlisten_addr = \"{addr}\"\n"
            );
            std::fs::write(d.join("etc/libvirtd.conf"), conf).unwrap();
        }
        std::fs::write(
            d.join("etc/qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
             security_driver = \"none\"\nnamespaces = []\ncgroup_controllers = []\n\
             stdio_handler = \"file\"\n",
        )
        .unwrap();
        let mut script = String::from("set -e\n");
        for (sub, target) in MOUNTS {
            script += &format!("mount --bind '{}' '{target}'\n", d.join(sub).display());
        }
        // Its own pid file: the default /run/libvirtd.pid is outside the
        // bind mounts, shared by every lab.
        if opts.tcp_listen.is_some() {
            script += &format!("hostname 'lab-{}'\n", &host_uuid[..8]);
        }
        script += &format!(
            "exec '{}' {}-f '{}' -p '{}'\n",
            libvirtd.display(),
            if opts.tcp_listen.is_some() {
                "--listen "
            } else {
                ""
            },
            d.join("etc/libvirtd.conf").display(),
            d.join("libvirtd.pid").display()
        );
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "unshare"]);
                c
            }
            None => Command::new("unshare"),
        };
        if opts.tcp_listen.is_some() {
            cmd.arg("--uts");
        }
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("libvirtd.out")).unwrap())
            .stderr(std::fs::File::create(d.join("libvirtd.err")).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("unable to run unshare/libvirtd: {e}"));
        let uri = format!(
            "qemu+unix:///system?socket={}",
            d.join("sock/libvirt-sock").display()
        );
        let mut lab = Libvirtd {
            child,
            dir,
            uri,
            host_uuid,
        };
        lab.wait_ready(Duration::from_secs(60));
        lab
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("libvirtd exited at start ({st}): {}", self.logs());
            }
            if self.dir.path().join("sock/libvirt-sock").exists()
                && Command::new("virsh")
                    .args(["-q", "-c", &self.uri, "uri"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd not ready within {within:?}: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URI clients use: `qemu+unix:///system?socket=<lab>/sock/libvirt-sock`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The lab directory (`etc/`, `run/`, `lib/`, `log/`, `sock/`, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's own log and QEMU's logs, for a failing test.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["libvirtd.err", "libvirtd.log"] {
            if let Ok(t) = std::fs::read_to_string(self.dir().join(f)) {
                s += &format!("--- {f}\n{}\n", tail(&t, 3000));
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.dir().join("log/qemu")) {
            for e in rd.flatten() {
                if let Ok(t) = std::fs::read_to_string(e.path()) {
                    s += &format!("--- {}\n{}\n", e.path().display(), tail(&t, 2000));
                }
            }
        }
        s
    }

    /// `virsh -c <uri> ARGS`: its stdout; panics with stderr on failure.
    pub fn virsh(&self, args: &[&str]) -> String {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("unable to run virsh: {e}; install: {INSTALL}"));
        assert!(
            out.status.success(),
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Pids of the QEMUs the daemon runs (its `run/qemu/<domain>.pid`).
    pub fn qemu_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.dir().join("run/qemu")) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "pid")
                    && let Ok(t) = std::fs::read_to_string(&p)
                    && let Ok(pid) = t.trim().parse::<u32>()
                    && alive(pid)
                    // `driver.pid` is libvirtd's own.
                    && std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
                {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // QEMUs are libvirtd's grandchildren (it daemonizes them): they
        // outlive the daemon unless killed by pid.
        let qemus = self.qemu_pids();
        for pid in &qemus {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while qemus
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
