//! The one way standby builds an HTTP client.
//!
//! Every client (the CLI, probes, webhooks, the `http` runbook action,
//! agents and object stores) is reqwest over rustls with the ring provider
//! only (see the workspace `Cargo.toml`): reqwest brings no provider of
//! its own and panics without a process default, so [`builder`] installs
//! ring once per process before anything is built.
//!
//! Proxies: traffic between standby's own parts (controller, agents,
//! probes of the sites) never goes through a proxy from the environment
//! ([`Reach::Internal`]); traffic to the outside (webhook receivers, the
//! `http` action, the CLI to its controller) honours the environment's
//! proxy settings ([`Reach::External`]).

/// Where a client's requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// standby's own parts: never through a proxy.
    Internal,
    /// Elsewhere: the environment's proxies apply.
    External,
}

/// Install ring as rustls's process-wide provider (idempotent).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder for `reach`, with the TLS provider installed; callers
/// add their timeouts and pool settings.
pub fn builder(reach: Reach) -> reqwest::ClientBuilder {
    install_tls_provider();
    let b = reqwest::Client::builder();
    match reach {
        Reach::Internal => b.no_proxy(),
        Reach::External => b,
    }
}

/// The most of an answer's body standby reads where a body is only
/// looked at (a probe's `body_contains`, the `http` action's answer).
pub const MAX_BODY: usize = 1 << 20;

/// `resp`'s body, at most `limit` bytes: a larger one (announced or
/// sent) is refused as soon as it is known, without reading the rest.
pub async fn body_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let too_large = || format!("the answer's body is larger than {limit} bytes");
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The certificates of the PEM file at `path` (a CA, or a self-signed
/// server certificate), to trust with `add_root_certificate`; why not,
/// when the file cannot be read or holds no valid certificate.
pub fn pem_certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server on loopback answering every request with `len`
    /// bytes, announced (`Content-Length`) or chunked.
    async fn server(len: usize, chunked: bool) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = if chunked {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
            } else {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")
            };
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let block = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                let n = block.len().min(len - sent);
                let ok = if chunked {
                    let mut c = format!("{n:x}\r\n").into_bytes();
                    c.extend_from_slice(&block[..n]);
                    c.extend_from_slice(b"\r\n");
                    s.write_all(&c).await
                } else {
                    s.write_all(&block[..n]).await
                };
                if ok.is_err() {
                    return;
                }
                sent += n;
            }
            if chunked {
                let _ = s.write_all(b"0\r\n\r\n").await;
            }
        });
        format!("http://{addr}/")
    }

    /// A probe or the `http` action used to read whatever the other end
    /// sent, however large: now at most MAX_BODY, with a clear error.
    #[tokio::test]
    async fn hardening_a_body_is_read_up_to_its_limit() {
        let client = super::builder(super::Reach::Internal).build().unwrap();
        for chunked in [false, true] {
            let url = server(super::MAX_BODY + 1, chunked).await;
            let resp = client.get(&url).send().await.unwrap();
            let e = super::body_limited(resp, super::MAX_BODY)
                .await
                .unwrap_err();
            assert!(e.contains("larger than 1048576 bytes"), "{e}");
            let url = server(1000, chunked).await;
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(
                super::body_limited(resp, super::MAX_BODY)
                    .await
                    .unwrap()
                    .len(),
                1000
            );
        }
    }
}
