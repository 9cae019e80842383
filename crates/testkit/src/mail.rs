//! A real SMTP server (Python's aiosmtpd) on a free loopback port, storing
//! each message in a maildir; killed on drop.

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An `aiosmtpd` server on 127.0.0.1 that stores mail in a maildir;
/// killed on drop.
pub struct MailServer {
    child: Child,
    pub port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl MailServer {
    pub fn start() -> MailServer {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("maildir");
        let port = crate::free_port();
        let mut child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unable to run python3 (needed with the aiosmtpd package for mail tests)");
        // Up to 15 s for the interpreter to start and listen.
        for _ in 0..150 {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!(
                    "aiosmtpd exited ({status}) before listening; install it with `pip install aiosmtpd`:\n{err}"
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return MailServer {
                    child,
                    port,
                    maildir,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("aiosmtpd did not listen on 127.0.0.1:{port} within 15 s");
    }

    /// The messages delivered so far, as raw text.
    pub fn mails(&self) -> Vec<String> {
        let new = self.maildir.join("new");
        let Ok(entries) = std::fs::read_dir(&new) else {
            return Vec::new();
        };
        entries
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
