use std::time::Duration;

use standby_notify::deliver;
use standby_types::watch::{ReceiverConfig, SmtpTls};

use standby_testkit::mail::MailServer;

use crate::{free_port, notification};

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
