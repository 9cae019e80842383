//! Azurite and moto on free loopback ports; stopped on drop. A missing
//! server program fails the test with the command that installs it.

use crate::free_port;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Azurite's well-known development account and key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Azurite,
    Moto,
}

/// A server process on 127.0.0.1:port.
pub struct Server {
    pub kind: Kind,
    pub port: u16,
    child: Option<Child>,
    /// Azurite's data directory (kept across restarts); moto keeps memory.
    data: tempfile::TempDir,
}

/// The program on PATH, or a failure saying how to install it.
fn program(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found on PATH: these tests need it; install it with `{install}` \
         (scripts/test does this)"
    );
}

impl Server {
    pub fn start(kind: Kind) -> Server {
        let mut s = Server {
            kind,
            port: free_port(),
            child: None,
            data: tempfile::tempdir().unwrap(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let log = std::fs::File::create(self.data.path().join("server.log")).unwrap();
        let mut cmd = match self.kind {
            Kind::Azurite => {
                let mut c = Command::new(program("azurite-blob", "npm install -g azurite"));
                c.args(["--blobHost", "127.0.0.1", "--blobPort", &port, "--location"])
                    .arg(self.data.path().join("azurite"))
                    .args(["--skipApiVersionCheck", "--loose", "--disableTelemetry"])
                    .env("AZURITE_DISABLE_TELEMETRY", "true");
                c
            }
            Kind::Moto => {
                let mut c = Command::new(program(
                    "moto_server",
                    "python3 -m pip install 'moto[server]'",
                ));
                c.args(["-H", "127.0.0.1", "-p", &port]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the object server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{:?} exited with {status} before listening: {}",
                    self.kind,
                    std::fs::read_to_string(self.data.path().join("server.log"))
                        .unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not listen within 60 s",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill the server (its data stays for Azurite). SIGTERM: Azurite
    /// saves its metadata on a signal, while SIGKILL could lose the
    /// last seconds of it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn endpoint(&self) -> String {
        match self.kind {
            Kind::Azurite => format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port),
            Kind::Moto => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// Create a container (Azure) or bucket (S3).
    pub fn create_bucket(&self, name: &str) {
        let (path, headers) = match self.kind {
            Kind::Azurite => {
                let date = chrono::Utc::now()
                    .format("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string();
                let version = "2021-08-06";
                let to_sign = format!(
                    "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
                     /{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container"
                );
                use base64::Engine;
                let key = base64::engine::general_purpose::STANDARD
                    .decode(AZURITE_KEY)
                    .unwrap();
                let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
                mac.update(to_sign.as_bytes());
                let sig =
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                (
                    format!("/{AZURITE_ACCOUNT}/{name}?restype=container"),
                    format!(
                        "x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
                         Authorization: SharedKey {AZURITE_ACCOUNT}:{sig}\r\n"
                    ),
                )
            }
            Kind::Moto => (format!("/{name}"), String::new()),
        };
        let status = http_put(self.port, &path, &headers);
        assert!(
            status.starts_with("HTTP/1.1 20"),
            "creating bucket {name} on {:?}: {status}",
            self.kind
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bodiless PUT; the status line of the answer. A server that has
/// just opened its port may still reset the first connections: retry
/// those for a while.
fn http_put(port: u16, path: &str, headers: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match try_put(port, path, headers) {
            Ok(status) if !status.is_empty() => return status,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(status) => return status,
            Err(e) => panic!("PUT {path} to 127.0.0.1:{port}: {e}"),
        }
    }
}

fn try_put(port: u16, path: &str, headers: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}
