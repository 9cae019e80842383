use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use standby_notify::{ReplayGuard, Signed, deliver, verify};
use standby_types::watch::{Notification, ReceiverConfig};

use crate::{free_port, notification};

/// One request as the receiver saw it.
struct Received {
    headers: HeaderMap,
    body: Bytes,
    /// `verify` with the receiver's secret; `None` without a secret.
    signature_ok: Option<bool>,
}

#[derive(Clone)]
struct Shared {
    secret: Option<Vec<u8>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    got: Arc<Mutex<Vec<Received>>>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the request is signed with `secret`, with a timestamp within
/// five minutes and a nonce a fresh receiver accepts.
fn checked(secret: &[u8], h: &HeaderMap, body: &[u8]) -> bool {
    let signed = Signed {
        timestamp: header(h, "x-standby-timestamp"),
        nonce: header(h, "x-standby-nonce"),
        signature: header(h, "x-standby-signature"),
    };
    ReplayGuard::new()
        .check("hook", secret, signed, body, chrono::Utc::now().timestamp())
        .is_ok()
}

/// Whether `sig` signs `body` under `secret` with the request's
/// timestamp and nonce.
fn signs(secret: &[u8], h: &HeaderMap, body: &[u8], sig: &str) -> bool {
    let ts = header(h, "x-standby-timestamp").and_then(|t| t.parse().ok());
    let nonce = header(h, "x-standby-nonce").unwrap_or("");
    ts.is_some_and(|ts| verify(secret, ts, nonce, body, sig))
}

/// A webhook receiver on 127.0.0.1 that records requests and answers
/// `status` after `delay_ms`.
struct Receiver {
    url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let signature_ok = s
        .secret
        .as_ref()
        .map(|secret| checked(secret, &headers, &body));
    s.got.lock().unwrap().push(Received {
        headers,
        body,
        signature_ok,
    });
    StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap()
}

impl Receiver {
    async fn start(secret: Option<&[u8]>) -> Receiver {
        let shared = Shared {
            secret: secret.map(<[u8]>::to_vec),
            status: Arc::new(AtomicU16::new(204)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            got: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, shared, task }
    }

    fn answer(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    fn count(&self) -> usize {
        self.shared.got.lock().unwrap().len()
    }
}

fn webhook(
    url: &str,
    secret_env: Option<&str>,
    secret_file: Option<&std::path::Path>,
) -> ReceiverConfig {
    ReceiverConfig::Webhook {
        url: url.to_string(),
        secret_env: secret_env.map(str::to_string),
        secret_file: secret_file.map(ToOwned::to_owned),
        timeout: Duration::from_secs(5),
        max_attempts: 3,
    }
}

#[tokio::test]
async fn signed_delivery_arrives_once_with_json_and_headers() {
    let rx = Receiver::start(Some(b"topsecret")).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hook.key");
    // The file's trailing newline is not part of the secret.
    std::fs::write(&key, "topsecret\n").unwrap();
    let n = notification(41);

    deliver("ops-hook", &webhook(&rx.url, None, Some(&key)), &n)
        .await
        .unwrap();

    let got = rx.shared.got.lock().unwrap();
    assert_eq!(got.len(), 1, "delivered once");
    let r = &got[0];
    assert_eq!(
        r.signature_ok,
        Some(true),
        "signature verifies with the secret"
    );
    let header = |name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(
        header("user-agent"),
        format!("standby/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(header("x-standby-delivery"), "41");
    assert!(!signs(
        b"topsecret\n",
        &r.headers,
        &r.body,
        &header("x-standby-signature")
    ));
    assert!(!signs(
        b"other",
        &r.headers,
        &r.body,
        &header("x-standby-signature")
    ));
    assert!(signs(
        b"topsecret",
        &r.headers,
        &r.body,
        &header("x-standby-signature")
    ));
    assert_eq!(header("x-standby-nonce").len(), 32);
    let ts: i64 = header("x-standby-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    let sent: Notification = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(sent, n);
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["status"], "firing");
    assert_eq!(json["group_labels"]["site"], "site1");
    assert_eq!(json["alerts"][0]["rule"], "site-down");
    assert_eq!(json["incident"]["id"], 3);
}

#[tokio::test]
async fn secret_from_environment() {
    // Cargo sets CARGO_PKG_NAME for the test process; tests cannot set
    // variables themselves (set_var is unsafe and the workspace denies it).
    let secret =
        std::env::var("CARGO_PKG_NAME").expect("cargo sets CARGO_PKG_NAME when running tests");
    let rx = Receiver::start(Some(secret.as_bytes())).await;
    deliver(
        "env-hook",
        &webhook(&rx.url, Some("CARGO_PKG_NAME"), None),
        &notification(1),
    )
    .await
    .unwrap();
    let got = rx.shared.got.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].signature_ok, Some(true));
}

#[tokio::test]
async fn unsigned_without_secret() {
    let rx = Receiver::start(None).await;
    deliver("plain", &webhook(&rx.url, None, None), &notification(2))
        .await
        .unwrap();
    let got = rx.shared.got.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].headers.get("x-standby-signature").is_none());
}

#[tokio::test]
async fn server_errors_are_retryable_client_errors_permanent() {
    let rx = Receiver::start(None).await;
    let cfg = webhook(&rx.url, None, None);
    for (status, retryable) in [
        (500, true),
        (503, true),
        (408, true),
        (429, true),
        (400, false),
        (404, false),
    ] {
        rx.answer(status);
        let e = deliver("ops-hook", &cfg, &notification(5))
            .await
            .unwrap_err();
        assert_eq!(e.retryable, retryable, "HTTP {status}: {e}");
        assert!(e.message.contains("ops-hook"), "names the receiver: {e}");
        assert!(e.message.contains(&rx.url), "names the URL: {e}");
        assert!(
            e.message.contains(&status.to_string()),
            "names the status: {e}"
        );
    }
    assert_eq!(rx.count(), 6, "each attempt reached the receiver once");
}

#[tokio::test]
async fn nothing_listening_is_retryable() {
    let url = format!("http://127.0.0.1:{}/hook", free_port());
    let e = deliver("gone", &webhook(&url, None, None), &notification(6))
        .await
        .unwrap_err();
    assert!(e.retryable, "{e}");
    assert!(
        e.message.contains("gone") && e.message.contains(&url),
        "{e}"
    );
}

#[tokio::test]
async fn slow_receiver_times_out_retryably() {
    let rx = Receiver::start(None).await;
    rx.shared.delay_ms.store(3_000, Ordering::SeqCst);
    let cfg = ReceiverConfig::Webhook {
        url: rx.url.clone(),
        secret_env: None,
        secret_file: None,
        timeout: Duration::from_millis(300),
        max_attempts: 3,
    };
    let started = std::time::Instant::now();
    let e = deliver("slow", &cfg, &notification(7)).await.unwrap_err();
    assert!(e.retryable, "{e}");
    assert!(e.message.contains("timed out"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the config's timeout applies"
    );
}

#[tokio::test]
async fn missing_secret_is_permanent_and_named() {
    let rx = Receiver::start(Some(b"x")).await;
    let var = "STANDBY_NOTIFY_TEST_SECRET_THAT_IS_NOT_SET";
    let e = deliver(
        "ops-hook",
        &webhook(&rx.url, Some(var), None),
        &notification(8),
    )
    .await
    .unwrap_err();
    assert!(!e.retryable, "{e}");
    assert!(e.message.contains(var), "names the variable: {e}");

    let e = deliver(
        "ops-hook",
        &webhook(&rx.url, None, Some("/nonexistent/hook.key".as_ref())),
        &notification(8),
    )
    .await
    .unwrap_err();
    assert!(!e.retryable, "{e}");
    assert!(
        e.message.contains("/nonexistent/hook.key"),
        "names the file: {e}"
    );
    assert_eq!(rx.count(), 0, "nothing is sent unsigned");
}
