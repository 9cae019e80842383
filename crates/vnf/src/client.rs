//! Real-packet client helpers for probes, demos and tests.
//!
//! SIP requests go out from an ephemeral UDP socket (on 127.0.0.1 for a
//! loopback target) and are retransmitted like SIP timer A: after 500 ms,
//! then doubling (capped at 4 s), until the caller's timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::VnfState;
use crate::sip::{self, StartLine};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// Timeout of [`state`].
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("unable to {action} {target}")]
    Io {
        action: &'static str,
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {target} within {waited:?}")]
    Timeout {
        target: SocketAddr,
        waited: Duration,
    },
    #[error("{target} answered {code} {reason}")]
    Rejected {
        target: SocketAddr,
        code: u16,
        reason: String,
    },
    #[error("bad answer from {target}: {detail}")]
    BadResponse { target: SocketAddr, detail: String },
}

impl ClientError {
    /// Whether trying again later can help (the service may come back).
    pub fn is_temporary(&self) -> bool {
        match self {
            ClientError::Io { .. } | ClientError::Timeout { .. } => true,
            ClientError::Rejected { code, .. } => *code >= 500,
            ClientError::BadResponse { .. } => false,
        }
    }
}

/// Send OPTIONS; the round-trip time of the `200` answer (measured from the
/// first transmission).
pub async fn options(target: SocketAddr, timeout: Duration) -> Result<Duration, ClientError> {
    let udp = socket_for(target).await?;
    let local = local_addr(&udp, target)?;
    let id = unique_id();
    let msg = format!(
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag={id}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: {id}@{ip}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        ip = local.ip(),
    );
    transaction(
        &udp,
        target,
        &msg,
        &format!("{id}@{}", local.ip()),
        "1 OPTIONS",
        timeout,
    )
    .await
    .map(|a| a.rtt)
}

/// Send REGISTER binding `aor` (e.g. `sip:alice@example.com`) to `contact`
/// (e.g. `sip:alice@127.0.0.1:5070`) for `expires` seconds (0 = unregister).
/// `Ok` only on `200`.
pub async fn register(
    target: SocketAddr,
    aor: &str,
    contact: &str,
    expires: u32,
    timeout: Duration,
) -> Result<(), ClientError> {
    register_answer(target, aor, contact, expires, timeout)
        .await
        .map(|_| ())
}

/// A `200` answer: how long it took and who sent it (the `Server` header,
/// `standby-vnf/<name>` from the sample VNF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rtt: Duration,
    pub server: Option<String>,
}

/// Like [`register`], returning the answer.
pub async fn register_answer(
    target: SocketAddr,
    aor: &str,
    contact: &str,
    expires: u32,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let udp = socket_for(target).await?;
    let local = local_addr(&udp, target)?;
    let id = unique_id();
    let contact = if contact == "*" || contact.starts_with('<') {
        contact.to_owned()
    } else {
        format!("<{contact}>")
    };
    let msg = format!(
        "REGISTER sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <{aor}>;tag={id}\r\n\
         To: <{aor}>\r\n\
         Call-ID: {id}@{ip}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: {contact}\r\n\
         Expires: {expires}\r\n\
         Content-Length: 0\r\n\r\n",
        ip = local.ip(),
    );
    transaction(
        &udp,
        target,
        &msg,
        &format!("{id}@{}", local.ip()),
        "1 REGISTER",
        timeout,
    )
    .await
}

/// `GET /state` from the VNF's HTTP endpoint (times out after
/// [`HTTP_TIMEOUT`]).
pub async fn state(http: SocketAddr) -> Result<VnfState, ClientError> {
    let body = tokio::time::timeout(HTTP_TIMEOUT, http_get(http, "/state"))
        .await
        .map_err(|_| ClientError::Timeout {
            target: http,
            waited: HTTP_TIMEOUT,
        })??;
    serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse {
        target: http,
        detail: format!("state is not valid JSON: {e}"),
    })
}

async fn http_get(target: SocketAddr, path: &str) -> Result<Vec<u8>, ClientError> {
    let io = |action| {
        move |source| ClientError::Io {
            action,
            target,
            source,
        }
    };
    let mut stream = TcpStream::connect(target).await.map_err(io("connect to"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(io("send a request to"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(io("read the answer of"))?;
    let bad = |detail: &str| ClientError::BadResponse {
        target,
        detail: detail.to_owned(),
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let status_line = head.lines().next().unwrap_or_default();
    let code: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    if code != 200 {
        return Err(ClientError::Rejected {
            target,
            code,
            reason: status_line.splitn(3, ' ').nth(2).unwrap_or("").to_owned(),
        });
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        dechunk(body).ok_or_else(|| bad("bad chunked encoding"))
    } else {
        Ok(body.to_vec())
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

async fn socket_for(target: SocketAddr) -> Result<UdpSocket, ClientError> {
    let ip: IpAddr = match target.ip() {
        IpAddr::V4(v) if v.is_loopback() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(v) if v.is_loopback() => Ipv6Addr::LOCALHOST.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let udp = UdpSocket::bind((ip, 0))
        .await
        .map_err(|source| ClientError::Io {
            action: "open a UDP socket for",
            target,
            source,
        })?;
    // Connected: the kernel drops datagrams from anyone else.
    udp.connect(target)
        .await
        .map_err(|source| ClientError::Io {
            action: "route to",
            target,
            source,
        })?;
    Ok(udp)
}

fn local_addr(udp: &UdpSocket, target: SocketAddr) -> Result<SocketAddr, ClientError> {
    udp.local_addr().map_err(|source| ClientError::Io {
        action: "open a UDP socket for",
        target,
        source,
    })
}

fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}{:x}", nanos, std::process::id(), n)
}

/// Send `msg`, retransmit on timer A, wait for the final answer matching
/// Call-ID and CSeq. `Ok(rtt)` on 200.
async fn transaction(
    udp: &UdpSocket,
    target: SocketAddr,
    msg: &str,
    call_id: &str,
    cseq: &str,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut interval = T1;
    let mut next_send = t0;
    let mut buf = vec![0u8; 65_535];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout {
                target,
                waited: timeout,
            });
        }
        if now >= next_send {
            // A refused send (ICMP port unreachable) is like a lost packet.
            if let Err(e) = udp.send(msg.as_bytes()).await {
                tracing::debug!(%target, error = %e, "SIP send failed, will retransmit");
            }
            next_send = now + interval;
            interval = (interval * 2).min(T2);
        }
        let wait_until = next_send.min(deadline);
        let n = match tokio::time::timeout_at(wait_until.into(), udp.recv(&mut buf)).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                tracing::debug!(%target, error = %e, "SIP receive failed");
                tokio::time::sleep_until(wait_until.into()).await;
                continue;
            }
            Ok(Ok(n)) => n,
        };
        let Ok(Some(resp)) = sip::parse(&buf[..n]) else {
            continue;
        };
        let StartLine::Response { code, reason } = &resp.start else {
            continue;
        };
        if resp.header("Call-ID") != Some(call_id)
            || resp
                .header("CSeq")
                .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
                != Some(cseq.to_owned())
        {
            continue;
        }
        match code {
            100..=199 => continue,
            200 => {
                return Ok(Answer {
                    rtt: t0.elapsed(),
                    server: resp.header("Server").map(str::to_owned),
                });
            }
            _ => {
                return Err(ClientError::Rejected {
                    target,
                    code: *code,
                    reason: reason.clone(),
                });
            }
        }
    }
}
