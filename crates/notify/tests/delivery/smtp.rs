use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use standby_notify::deliver;
use standby_types::watch::{ReceiverConfig, SmtpTls};

use crate::{free_port, notification};

/// An `aiosmtpd` server on 127.0.0.1 that stores mail in a maildir;
/// killed on drop.
struct MailServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl MailServer {
    fn start() -> MailServer {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("maildir");
        let port = free_port();
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
    fn mails(&self) -> Vec<String> {
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

fn smtp(server: String, tls: SmtpTls) -> ReceiverConfig {
    ReceiverConfig::Smtp {
        server,
        tls,
        from: "standby@dr.example.com".into(),
        to: vec!["noc@example.com".into(), "oncall@example.com".into()],
        username: None,
        password_env: None,
        password_file: None,
        timeout: Duration::from_secs(5),
        max_attempts: 3,
    }
}

/// A header's value, unfolded.
fn header(mail: &str, name: &str) -> Option<String> {
    let head = mail.split("\n\n").next().unwrap_or("");
    let unfolded = head.replace("\n ", " ").replace("\n\t", " ");
    unfolded
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(": "))
        })
        .map(str::to_string)
}

#[tokio::test]
async fn mail_lands_in_the_mailbox() {
    let server = MailServer::start();
    let n = notification(77);
    deliver(
        "noc-mail",
        &smtp(format!("127.0.0.1:{}", server.port), SmtpTls::None),
        &n,
    )
    .await
    .unwrap();

    // aiosmtpd stores the message before it answers 250, so it is there.
    let mails = server.mails();
    assert_eq!(mails.len(), 1, "one mail: {mails:?}");
    let mail = mails[0].replace("\r\n", "\n");
    assert_eq!(
        header(&mail, "Subject").as_deref(),
        Some("[FIRING] site-down site=site1"),
        "{mail}"
    );
    assert_eq!(
        header(&mail, "From").as_deref(),
        Some("standby@dr.example.com"),
        "{mail}"
    );
    assert_eq!(
        header(&mail, "To").as_deref(),
        Some("noc@example.com, oncall@example.com"),
        "{mail}"
    );
    let rcpt = header(&mail, "X-RcptTo").unwrap_or_default();
    assert!(
        rcpt.contains("noc@example.com") && rcpt.contains("oncall@example.com"),
        "envelope: {rcpt}"
    );
    assert!(
        header(&mail, "Content-Type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{mail}"
    );
    for piece in [
        "FIRING: 1 alert",
        "Group: site=site1",
        "Alert #11: site-down (critical, firing)",
        "probe=sip-front",
        "summary: site1 does not answer SIP",
        "Fired:    2025-03-01T12:00:00Z",
        "Incident #3: site1 down (new, critical)",
        "standby delivery 77",
    ] {
        assert!(mail.contains(piece), "missing {piece:?} in:\n{mail}");
    }
}

#[tokio::test]
async fn server_down_is_retryable() {
    let e = deliver(
        "noc-mail",
        &smtp(format!("127.0.0.1:{}", free_port()), SmtpTls::None),
        &notification(78),
    )
    .await
    .unwrap_err();
    assert!(e.retryable, "{e}");
    assert!(e.message.contains("noc-mail"), "{e}");
}

#[tokio::test]
async fn missing_password_is_permanent_and_named() {
    let server = MailServer::start();
    let ReceiverConfig::Smtp {
        server: addr,
        tls,
        from,
        to,
        timeout,
        max_attempts,
        ..
    } = smtp(format!("127.0.0.1:{}", server.port), SmtpTls::None)
    else {
        unreachable!()
    };
    let cfg = ReceiverConfig::Smtp {
        server: addr,
        tls,
        from,
        to,
        username: Some("standby".into()),
        password_env: Some("STANDBY_NOTIFY_TEST_SMTP_PASSWORD_NOT_SET".into()),
        password_file: None,
        timeout,
        max_attempts,
    };
    let e = deliver("noc-mail", &cfg, &notification(79))
        .await
        .unwrap_err();
    assert!(!e.retryable, "{e}");
    assert!(
        e.message
            .contains("STANDBY_NOTIFY_TEST_SMTP_PASSWORD_NOT_SET"),
        "{e}"
    );
    assert!(server.mails().is_empty());
}

#[tokio::test]
async fn starttls_refused_by_plain_server_is_permanent() {
    // aiosmtpd without a certificate does not offer STARTTLS; mail must not
    // then go out in the clear.
    let server = MailServer::start();
    let e = deliver(
        "noc-mail",
        &smtp(format!("127.0.0.1:{}", server.port), SmtpTls::Starttls),
        &notification(80),
    )
    .await
    .unwrap_err();
    assert!(!e.retryable, "{e}");
    assert!(server.mails().is_empty());
}
