//! Network probes. One run has `spec.timeout` in all; its attempts share
//! that budget equally and the run stops at the first attempt that is ok.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use standby_types::watch::{ProbeCheck, ProbeResult, ProbeSpec};
use tokio::net::{TcpStream, UdpSocket};

/// What one run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// Time of the whole run.
    pub latency: Duration,
    /// e.g. `connected`, `200 OK`, `connection refused`, `timed out`.
    pub detail: String,
}

/// Runs a probe: every attempt gets `timeout / attempts`; the whole run
/// never takes longer than `timeout`.
pub async fn run(spec: &ProbeSpec) -> Outcome {
    let start = Instant::now();
    let attempts = spec.attempts.max(1);
    let per_attempt = spec.timeout / attempts;
    let all = async {
        let mut last = String::from("no attempt");
        for _ in 0..attempts {
            match tokio::time::timeout(per_attempt, attempt(&spec.check)).await {
                Ok(Ok(detail)) => return (true, detail),
                Ok(Err(detail)) => last = detail,
                Err(_) => {
                    last = format!(
                        "timed out after {}",
                        humantime::format_duration(per_attempt)
                    )
                }
            }
        }
        (false, last)
    };
    let (ok, detail) = match tokio::time::timeout(spec.timeout, all).await {
        Ok(r) => r,
        Err(_) => (
            false,
            format!(
                "timed out after {}",
                humantime::format_duration(spec.timeout)
            ),
        ),
    };
    tracing::debug!(probe = %spec.name, ok, %detail, "probe ran");
    Outcome {
        ok,
        latency: start.elapsed(),
        detail,
    }
}

/// The result to store for a run at `vantage`.
pub fn result(spec: &ProbeSpec, vantage: &str, at: DateTime<Utc>, o: &Outcome) -> ProbeResult {
    let mut labels = spec.labels.clone();
    labels.insert("probe".into(), spec.name.clone());
    labels.insert("kind".into(), spec.check.kind().into());
    labels.insert("vantage".into(), vantage.into());
    ProbeResult {
        probe: spec.name.clone(),
        vantage: vantage.into(),
        at,
        ok: o.ok,
        latency_ms: u64::try_from(o.latency.as_millis()).unwrap_or(u64::MAX),
        detail: o.detail.clone(),
        labels,
        stale_after: spec.interval * 3 + spec.timeout,
    }
}

/// One attempt: Ok(detail) when the check passed, Err(detail) when not.
async fn attempt(check: &ProbeCheck) -> Result<String, String> {
    match check {
        ProbeCheck::Tcp { target } => {
            let addr = resolve(target).await?;
            TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            Ok("connected".into())
        }
        ProbeCheck::Http {
            url,
            status,
            body_contains,
        } => http(url, *status, body_contains.as_deref()).await,
        ProbeCheck::Udp {
            target,
            send,
            expect,
        } => {
            let sock = udp_socket(target).await?;
            sock.send(send.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 65536];
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            let answer = String::from_utf8_lossy(&buf[..n]);
            match expect {
                Some(want) if !answer.contains(want.as_str()) => {
                    Err(format!("answer lacks \"{want}\""))
                }
                _ => Ok(format!("answer of {n} bytes")),
            }
        }
        ProbeCheck::Sip { target } => sip_options(target).await,
    }
}

async fn resolve(target: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("cannot resolve '{target}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{target}' resolves to no address"))
}

/// A UDP socket connected to `target`, bound to the unspecified address
/// of the target's family.
async fn udp_socket(target: &str) -> Result<UdpSocket, String> {
    let addr = resolve(target).await?;
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal address")
    } else {
        "[::]:0".parse().expect("literal address")
    };
    let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    sock.connect(addr).await.map_err(|e| e.to_string())?;
    Ok(sock)
}

async fn http(url: &str, want: Option<u16>, body_contains: Option<&str>) -> Result<String, String> {
    // One client per call: a cached client's pooled connections belong to
    // the runtime that opened them.
    let client = standby_http::builder(standby_http::Reach::Internal)
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| standby_types::error_chain(&e))?;
    let status = resp.status();
    let good = match want {
        Some(w) => status.as_u16() == w,
        None => status.is_success(),
    };
    if !good {
        return Err(format!("status {}", status.as_u16()));
    }
    if let Some(needle) = body_contains {
        let body = standby_http::body_limited(resp, standby_http::MAX_BODY).await?;
        if !String::from_utf8_lossy(&body).contains(needle) {
            return Err(format!("body lacks \"{needle}\""));
        }
    }
    Ok(status.to_string())
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The value of a header (full or compact name) in a SIP message.
fn sip_header<'a>(msg: &'a str, name: &str, compact: &str) -> Option<&'a str> {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .find_map(|line| {
            let (k, v) = line.split_once(':')?;
            let k = k.trim();
            (k.eq_ignore_ascii_case(name) || k.eq_ignore_ascii_case(compact)).then(|| v.trim())
        })
}

/// RFC 3261 OPTIONS over UDP; ok on a final `200` for our Call-ID.
async fn sip_options(target: &str) -> Result<String, String> {
    let sock = udp_socket(target).await?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let local_host = match local {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let local_hostport = format!("{local_host}:{}", local.port());
    let call_id = format!("{}@{local_host}", token());
    let request = format!(
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local_hostport};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:standby-probe@{local_host}>;tag={tag}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Contact: <sip:standby-probe@{local_hostport}>\r\n\
         Accept: application/sdp\r\n\
         User-Agent: standby-probe\r\n\
         Content-Length: 0\r\n\
         \r\n",
        branch = token(),
        tag = token(),
    );
    sock.send(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        match sip_reply(&buf[..n], &call_id) {
            // Not a response, another call's, or provisional.
            None => continue,
            Some((200, status_line)) => return Ok(status_line),
            Some((_, status_line)) => return Err(status_line),
        }
    }
}

/// A datagram read as the answer to the OPTIONS of `call_id`: its code
/// and status line when it is a final response (200–699) to that call,
/// `None` for anything else (not SIP, another call's, provisional).
pub fn sip_reply(datagram: &[u8], call_id: &str) -> Option<(u16, String)> {
    let msg = String::from_utf8_lossy(datagram);
    let status_line = msg.split("\r\n").next().unwrap_or("");
    let code = status_line
        .strip_prefix("SIP/2.0 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok())?;
    if sip_header(&msg, "Call-ID", "i") != Some(call_id) || code < 200 {
        return None;
    }
    Some((code, status_line.to_owned()))
}

/// Runs a probe from inside network namespace `netns` (a name under
/// `/run/netns`, as `ip netns add` makes): for checks of a copy that is
/// isolated from every other network, such as a DR drill's.
///
/// The probe runs on a thread of its own that joins the namespace; a
/// thread's network namespace is its own, so the rest of the process is
/// untouched, and the sockets it opens stay in the namespace.
pub async fn run_in_netns(netns: &str, spec: &ProbeSpec) -> Result<Outcome, std::io::Error> {
    let path = std::path::Path::new("/run/netns").join(netns);
    let ns = std::fs::File::open(&path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("network namespace {netns} ({}): {e}", path.display()),
        )
    })?;
    let spec = spec.clone();
    let netns = netns.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("probe-{netns}"))
        .spawn(move || {
            let out = (|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    std::io::Error::other(format!("unable to enter network namespace {netns}: {e}"))
                })?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(rt.block_on(run(&spec)))
            })();
            let _ = tx.send(out);
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("the probe thread ended without an answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_headers_full_and_compact() {
        let m = "SIP/2.0 200 OK\r\nVia: x\r\ni: abc@h\r\n\r\nbody: no";
        assert_eq!(sip_header(m, "Call-ID", "i"), Some("abc@h"));
        let m = "SIP/2.0 200 OK\r\ncall-id:  def\r\n\r\n";
        assert_eq!(sip_header(m, "Call-ID", "i"), Some("def"));
        assert_eq!(sip_header(m, "CSeq", "cseq"), None);
    }

    #[test]
    fn sip_replies_final_for_our_call_only() {
        let ok = b"SIP/2.0 200 OK\r\nCall-ID: c1\r\n\r\n";
        assert_eq!(sip_reply(ok, "c1"), Some((200, "SIP/2.0 200 OK".into())));
        assert_eq!(sip_reply(ok, "c2"), None);
        assert_eq!(
            sip_reply(b"SIP/2.0 100 Trying\r\ni: c1\r\n\r\n", "c1"),
            None
        );
        let busy = b"SIP/2.0 486 Busy Here\r\ni: c1\r\n\r\n";
        assert_eq!(sip_reply(busy, "c1").map(|r| r.0), Some(486));
        assert_eq!(
            sip_reply(b"OPTIONS sip:x SIP/2.0\r\ni: c1\r\n\r\n", "c1"),
            None
        );
        assert_eq!(sip_reply(b"SIP/2.0 2\xc3\xa9 \r\ni: c1\r\n", "c1"), None);
    }
}
