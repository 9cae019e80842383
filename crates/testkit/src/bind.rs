//! A real BIND9 (`named`, Debian package `bind9`) serving one zone on a
//! free loopback port (UDP and TCP), taking dynamic updates signed with a
//! TSIG key made by `tsig-keygen`; killed on drop.
//!
//! The zone (`svc.example.test.` unless told) holds an SOA, an NS and the
//! NS's A record. Two keys are known to the server: [`Bind::KEY`], which
//! the zone's `update-policy` lets change A and AAAA records (only), and
//! [`Bind::OTHER_KEY`], valid but not allowed to (its updates are
//! REFUSED).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

/// A `named` on 127.0.0.1 (and one more address if asked); killed on
/// drop.
pub struct Bind {
    child: Child,
    /// The server, UDP and TCP.
    pub addr: SocketAddr,
    /// The zone, absolute (`svc.example.test.`).
    pub zone: String,
    dir: tempfile::TempDir,
}

impl Bind {
    /// The key allowed to update the zone.
    pub const KEY: &'static str = "standby-key";
    /// A key the server knows but does not let update the zone.
    pub const OTHER_KEY: &'static str = "other-key";

    /// `named` serving `svc.example.test.` with keys of `hmac-sha256`.
    pub fn start() -> Bind {
        Bind::start_with("svc.example.test.", "hmac-sha256")
    }

    /// `named` serving `zone`, its keys of `algorithm` (`hmac-sha512`...).
    pub fn start_with(zone: &str, algorithm: &str) -> Bind {
        Bind::start_on(zone, algorithm, None)
    }

    /// Like [`Bind::start_with`], also listening on `also` (an address of
    /// a test host, e.g. the root namespace's side of a lab's link), at
    /// the same port.
    pub fn start_on(zone: &str, algorithm: &str, also: Option<Ipv4Addr>) -> Bind {
        let named = sbin_program("named");
        let keygen = sbin_program("tsig-keygen");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let zone = if zone.ends_with('.') {
            zone.to_string()
        } else {
            format!("{zone}.")
        };
        for key in [Bind::KEY, Bind::OTHER_KEY] {
            let out = Command::new(&keygen)
                .args(["-a", algorithm, key])
                .output()
                .expect("unable to run tsig-keygen");
            assert!(
                out.status.success(),
                "tsig-keygen -a {algorithm} {key}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(d.join(format!("{key}.conf")), &out.stdout).unwrap();
        }
        std::fs::write(
            d.join("zone.db"),
            format!(
                "$TTL 60\n@ IN SOA ns1.{zone} hostmaster.{zone} 1 60 60 3600 5\n@ IN NS ns1.{zone}\nns1 IN A 127.0.0.1\n"
            ),
        )
        .unwrap();
        let mut last_err = String::new();
        // A port free for UDP and TCP may be taken before named binds it:
        // a few tries.
        for _ in 0..5 {
            let port = crate::free_port();
            let conf = d.join("named.conf");
            std::fs::write(&conf, named_conf(d, &zone, port, also)).unwrap();
            let log = d.join("named.log");
            let mut child = Command::new(&named)
                // Foreground, one worker, IPv4 only; as root it stays root
                // (no -u): the files are the test's.
                .args(["-g", "-4", "-n", "1", "-c"])
                .arg(&conf)
                .args(["-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("unable to run named");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    last_err = format!("named exited ({status}):\n{}", read(&log));
                    break;
                }
                // "running" is logged once every zone is loaded.
                if read(&log).lines().any(|l| l.ends_with(" running"))
                    && TcpStream::connect(addr).is_ok()
                {
                    return Bind {
                        child,
                        addr,
                        zone,
                        dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "named did not answer on {addr} within 10 s:\n{}",
                        read(&log)
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("named did not start:\n{last_err}");
    }

    /// The BIND key file (`key "NAME" { algorithm ...; secret "..."; };`)
    /// of `key` ([`Bind::KEY`] or [`Bind::OTHER_KEY`]).
    pub fn key_file(&self, key: &str) -> PathBuf {
        self.dir.path().join(format!("{key}.conf"))
    }

    /// The base64 secret of `key`.
    pub fn secret(&self, key: &str) -> String {
        let text = std::fs::read_to_string(self.key_file(key)).unwrap();
        let at = text.find("secret \"").expect("a secret line") + "secret \"".len();
        text[at..].split('"').next().unwrap().to_string()
    }

    /// What named logged so far.
    pub fn log(&self) -> String {
        read(&self.dir.path().join("named.log"))
    }

    /// The temporary directory of the server's files (secrets may go here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn named_conf(d: &Path, zone: &str, port: u16, also: Option<Ipv4Addr>) -> String {
    let d = d.display();
    let listen = match also {
        Some(ip) => format!("127.0.0.1; {ip};"),
        None => "127.0.0.1;".to_string(),
    };
    let key = Bind::KEY;
    let other = Bind::OTHER_KEY;
    format!(
        r#"include "{d}/{key}.conf";
include "{d}/{other}.conf";
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ {listen} }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    max-journal-size 1m;
}};
controls {{ }};
zone "{zone}" {{
    type primary;
    file "{d}/zone.db";
    update-policy {{ grant {key} subdomain {zone} A AAAA; }};
}};
"#
    )
}

/// The IPv4 addresses `server` answers for `name` (one A query over
/// UDP, as a stub resolver asks), or `None` without an answer within
/// `timeout`.
pub fn lookup_a(server: SocketAddr, name: &str, timeout: Duration) -> Option<Vec<Ipv4Addr>> {
    let mut query = Message::query();
    // Any id: the answer is matched on it.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let id = (std::process::id() as u16) ^ (nanos as u16);
    query.metadata.id = id;
    query.add_query(Query::query(
        Name::from_ascii(name).expect("a DNS name"),
        RecordType::A,
    ));
    let sock = UdpSocket::bind(if server.ip().is_loopback() {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    })
    .ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    sock.send_to(&query.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        let Ok(answer) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if from != server || answer.metadata.id != id {
            continue;
        }
        return Some(
            answer
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect(),
        );
    }
    None
}

fn read(p: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// A program of the bind9 package: on PATH or in the sbin directories
/// (not on a user's PATH), else a failure naming the package.
fn sbin_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found: the DNS tests run a real BIND9; install Debian's package with \
         `apt-get install --no-install-recommends bind9` (scripts/test does this)"
    );
}
