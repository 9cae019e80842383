//! Probes against real sockets on 127.0.0.1.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use standby_monitor::probe::{self, Outcome};
use standby_types::watch::{Labels, ProbeCheck, ProbeSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

fn spec(check: ProbeCheck, timeout_ms: u64, attempts: u32) -> ProbeSpec {
    ProbeSpec {
        name: "p".into(),
        check,
        interval: Duration::from_secs(5),
        timeout: Duration::from_millis(timeout_ms),
        attempts,
        labels: Labels::new(),
    }
}

async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn closed_udp_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.local_addr().unwrap()
}

#[tokio::test]
async fn tcp_open_and_closed() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    let o = probe::run(&spec(
        ProbeCheck::Tcp {
            target: addr.to_string(),
        },
        1000,
        1,
    ))
    .await;
    assert!(o.ok, "{o:?}");
    assert_eq!(o.detail, "connected");

    let closed = closed_port().await;
    let o = probe::run(&spec(
        ProbeCheck::Tcp {
            target: closed.to_string(),
        },
        1000,
        1,
    ))
    .await;
    assert!(!o.ok);
    assert!(o.detail.contains("refused"), "{o:?}");
}

/// Serves one canned response to every connection.
async fn http_server(status: &'static str, body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

fn http(addr: SocketAddr, status: Option<u16>, body_contains: Option<&str>) -> ProbeSpec {
    spec(
        ProbeCheck::Http {
            url: format!("http://{addr}/health"),
            status,
            body_contains: body_contains.map(str::to_owned),
        },
        2000,
        1,
    )
}

#[tokio::test]
async fn http_status_and_body() {
    let up = http_server("200 OK", "status: ready\n").await;
    let o = probe::run(&http(up, None, None)).await;
    assert!(o.ok, "{o:?}");
    assert_eq!(o.detail, "200 OK");
    assert!(probe::run(&http(up, Some(200), Some("ready"))).await.ok);

    let o = probe::run(&http(up, None, Some("healthy"))).await;
    assert!(!o.ok);
    assert_eq!(o.detail, "body lacks \"healthy\"");

    let o = probe::run(&http(up, Some(204), None)).await;
    assert!(!o.ok);
    assert_eq!(o.detail, "status 200");

    let down = http_server("503 Service Unavailable", "starting").await;
    let o = probe::run(&http(down, None, None)).await;
    assert!(!o.ok);
    assert_eq!(o.detail, "status 503");
    let o = probe::run(&http(down, Some(503), Some("start"))).await;
    assert!(o.ok, "{o:?}");

    let o = probe::run(&http(closed_port().await, None, None)).await;
    assert!(!o.ok);
}

/// Answers datagrams after ignoring the first `skip` of them.
async fn udp_server(skip: usize, prefix: &'static str) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut n_seen = 0;
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            n_seen += 1;
            if n_seen <= skip {
                continue;
            }
            let mut answer = prefix.as_bytes().to_vec();
            answer.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&answer, from).await;
        }
    });
    addr
}

fn udp(addr: SocketAddr, expect: Option<&str>, timeout_ms: u64, attempts: u32) -> ProbeSpec {
    spec(
        ProbeCheck::Udp {
            target: addr.to_string(),
            send: "ping".into(),
            expect: expect.map(str::to_owned),
        },
        timeout_ms,
        attempts,
    )
}

#[tokio::test]
async fn udp_echo() {
    let echo = udp_server(0, "").await;
    assert!(probe::run(&udp(echo, None, 1000, 1)).await.ok);
    assert!(probe::run(&udp(echo, Some("ping"), 1000, 1)).await.ok);
    let o = probe::run(&udp(echo, Some("pong"), 1000, 1)).await;
    assert!(!o.ok);
    assert_eq!(o.detail, "answer lacks \"pong\"");
}

async fn silent_udp() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

#[tokio::test]
async fn timeouts_are_honoured() {
    let (_keep, addr) = silent_udp().await;
    for attempts in [1, 3] {
        let start = Instant::now();
        let o = probe::run(&udp(addr, None, 400, attempts)).await;
        let took = start.elapsed();
        assert!(!o.ok);
        assert!(o.detail.contains("timed out"), "{o:?}");
        assert!(took >= Duration::from_millis(390), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        assert!(o.latency < Duration::from_millis(500));
    }
    let start = Instant::now();
    let o = probe::run(&spec(
        ProbeCheck::Sip {
            target: addr.to_string(),
        },
        300,
        1,
    ))
    .await;
    assert!(!o.ok);
    assert!(start.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn attempts_share_the_budget_and_stop_at_the_first_ok() {
    // Ignores the first datagram: one attempt fails, a second succeeds.
    let addr = udp_server(1, "").await;
    let o = probe::run(&udp(addr, None, 600, 1)).await;
    assert!(!o.ok, "{o:?}");
    let start = Instant::now();
    let o: Outcome = probe::run(&udp(addr, None, 900, 3)).await;
    assert!(o.ok, "{o:?}");
    // The second attempt answered at once: about one 300ms slice.
    assert!(
        start.elapsed() < Duration::from_millis(550),
        "{:?}",
        start.elapsed()
    );
}

/// A fake SIP server: answers 100 Trying, a 200 for another call, then
/// `final_status` for the probe's call.
async fn fake_sip(final_status: &'static str) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                req.starts_with(&format!("OPTIONS sip:{addr} SIP/2.0\r\n")),
                "{req}"
            );
            assert!(req.ends_with("Content-Length: 0\r\n\r\n"), "{req}");
            for h in [
                "Via: SIP/2.0/UDP 127.0.0.1:",
                ";branch=z9hG4bK",
                ";rport",
                "Max-Forwards: 70",
                "CSeq: 1 OPTIONS",
                "User-Agent: standby-probe",
                "Accept: application/sdp",
                "Contact: <sip:",
                "From: <sip:",
                ";tag=",
            ] {
                assert!(req.contains(h), "{h} missing in {req}");
            }
            let call_id = req
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Call-ID: "))
                .unwrap()
                .to_owned();
            let reply = |status: &str, cid: &str| {
                format!(
                    "SIP/2.0 {status}\r\nCall-ID: {cid}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                )
            };
            for m in [
                reply("100 Trying", &call_id),
                reply("200 OK", "someone-else"),
                reply(final_status, &call_id),
            ] {
                let _ = s.send_to(m.as_bytes(), from).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn sip_waits_for_the_final_answer_to_its_own_call() {
    let ok = fake_sip("200 OK").await;
    let o = probe::run(&spec(
        ProbeCheck::Sip {
            target: ok.to_string(),
        },
        1000,
        1,
    ))
    .await;
    assert!(o.ok, "{o:?}");
    assert_eq!(o.detail, "SIP/2.0 200 OK");

    let busy = fake_sip("486 Busy Here").await;
    let o = probe::run(&spec(
        ProbeCheck::Sip {
            target: busy.to_string(),
        },
        1000,
        1,
    ))
    .await;
    assert!(!o.ok);
    assert_eq!(o.detail, "SIP/2.0 486 Busy Here");
}

#[tokio::test]
async fn sip_options_against_sipp() {
    let port = closed_udp_port().await.port();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/options_uas.xml");
    let mut sipp = tokio::process::Command::new("sipp")
        .args([
            "-sf",
            scenario,
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-nostdin",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("sipp is installed (Debian package sip-tester)");
    let target = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let o = loop {
        let o = probe::run(&spec(
            ProbeCheck::Sip {
                target: target.clone(),
            },
            500,
            1,
        ))
        .await;
        if o.ok || Instant::now() > deadline {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sipp.kill().await.unwrap();
    assert!(o.ok, "{o:?}");
    assert_eq!(o.detail, "SIP/2.0 200 OK");

    // Nothing listens there now.
    let o = probe::run(&spec(ProbeCheck::Sip { target }, 500, 2)).await;
    assert!(!o.ok, "{o:?}");
}

#[tokio::test]
async fn result_carries_labels_and_staleness() {
    let mut s = spec(
        ProbeCheck::Tcp {
            target: "127.0.0.1:1".into(),
        },
        2000,
        1,
    );
    s.labels.insert("site".into(), "a".into());
    s.labels.insert("scope".into(), "service".into());
    let o = Outcome {
        ok: false,
        latency: Duration::from_millis(12),
        detail: "connection refused".into(),
    };
    let at = chrono::Utc::now();
    let r = probe::result(&s, "agent:h1", at, &o);
    assert_eq!(r.labels["probe"], "p");
    assert_eq!(r.labels["kind"], "tcp");
    assert_eq!(r.labels["vantage"], "agent:h1");
    assert_eq!(r.labels["site"], "a");
    assert_eq!(r.vantage, "agent:h1");
    assert_eq!(r.latency_ms, 12);
    assert_eq!(r.stale_after, Duration::from_secs(17));
    assert_eq!(r.at, at);
}
