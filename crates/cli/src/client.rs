//! A small typed client of the controller's API.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use standby_types::api::{ApiError, JobRef};
use standby_types::model::{Job, JobStatus};

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer` on every call.
    token: Option<String>,
}

/// An HTTP client builder that also trusts the PEM certificates in
/// `STANDBY_CA_CERT` (a controller with a self-signed certificate).
fn builder() -> reqwest::ClientBuilder {
    let mut b = standby_http::builder(standby_http::Reach::External);
    if let Ok(path) = std::env::var("STANDBY_CA_CERT") {
        match standby_http::pem_certificates(std::path::Path::new(&path)) {
            Ok(certs) => {
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
            Err(e) => tracing::warn!("STANDBY_CA_CERT {e}"),
        }
    }
    b
}

/// `addr` as a base URL (`http://` when it names none).
fn base_url(addr: &str) -> String {
    let addr = addr.trim();
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Of several controller replicas (comma-separated), the first that
/// accepts a connection: the leader serves, a waiting replica forwards to
/// it. None answering: the first, whose error the call then names.
fn leader_of(addrs: &str) -> String {
    let bases: Vec<String> = addrs
        .split(',')
        .filter(|a| !a.trim().is_empty())
        .map(base_url)
        .collect();
    if bases.len() < 2 {
        return bases.into_iter().next().unwrap_or_else(|| base_url(addrs));
    }
    let accepts = |base: &str| {
        let Some(authority) = base.split("://").nth(1).and_then(|r| r.split('/').next()) else {
            return false;
        };
        let Ok(mut addrs) = std::net::ToSocketAddrs::to_socket_addrs(authority) else {
            return false;
        };
        addrs.any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
    };
    bases
        .iter()
        .find(|b| accepts(b))
        .unwrap_or(&bases[0])
        .clone()
}

impl Client {
    /// A client of the controller at `addr`; of several replicas
    /// (comma-separated), the first that answers.
    pub fn new(addr: &str) -> Client {
        let base = leader_of(addr);
        Client {
            base,
            http: builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client with the ring provider builds"),
            token: None,
        }
    }

    /// Send `token` as the bearer token of every call.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn handle<T: DeserializeOwned>(&self, resp: reqwest::Response, what: &str) -> Result<T> {
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("reading answer to {what}"))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("unexpected answer to {what}"));
        }
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(e) => Err(anyhow!(e.message.clone()).context(format!("{what} failed ({})", e.code))),
            Err(_) => Err(anyhow!(
                "{what} failed: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            )),
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(e).context(format!(
            "unable to reach the standby controller at {} (is `standby server` running?)",
            self.base
        ))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.handle(resp, &format!("GET {path}")).await
    }

    /// A GET whose answer is text (TOML, CSV), not JSON.
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let resp = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            return resp
                .text()
                .await
                .with_context(|| format!("reading answer to GET {path}"));
        }
        self.handle::<serde_json::Value>(resp, &format!("GET {path}"))
            .await
            .map(|_| String::new())
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.handle(resp, &format!("POST {path}")).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .auth(self.http.delete(format!("{}{path}", self.base)))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.handle(resp, &format!("DELETE {path}")).await
    }

    /// Follow a server-sent-event stream, calling `f` with each event's
    /// data until the stream ends or `f` returns false.
    pub async fn stream(&self, path: &str, mut f: impl FnMut(&str, &str) -> bool) -> Result<()> {
        let http = builder()
            .build()
            .context("building the HTTP client of the event stream")?;
        let mut resp = self
            .auth(http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return self
                .handle::<serde_json::Value>(resp, &format!("GET {path}"))
                .await
                .map(|_| ());
        }
        let mut buf = String::new();
        let (mut kind, mut data) = (String::new(), String::new());
        while let Some(chunk) = resp.chunk().await.context("reading the event stream")? {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(nl) = buf.find('\n') {
                let line = buf[..nl].trim_end_matches('\r').to_string();
                buf.drain(..=nl);
                if line.is_empty() {
                    if !data.is_empty() && !f(&kind, &data) {
                        return Ok(());
                    }
                    kind.clear();
                    data.clear();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
        }
        Ok(())
    }

    /// Poll a job until it ends. With `bar`, show a progress bar with
    /// throughput on stderr.
    pub async fn wait_job(&self, job: JobRef, bar: bool) -> Result<Job> {
        let pb = if bar {
            let pb = ProgressBar::new(0);
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .expect("valid template"),
            );
            Some(pb)
        } else {
            None
        };
        let mut last_msg = String::new();
        loop {
            let j: Job = self.get(&format!("/api/v1/jobs/{}", job.job)).await?;
            if let Some(pb) = &pb {
                if j.message != last_msg {
                    // A new stage restarts the count.
                    pb.reset();
                    pb.set_message(j.message.clone());
                    last_msg = j.message.clone();
                }
                pb.set_length(j.progress_total.max(j.progress_done));
                pb.set_position(j.progress_done);
            }
            if j.status.is_finished() {
                if let Some(pb) = pb {
                    pb.finish_and_clear();
                }
                return match j.status {
                    JobStatus::Succeeded => Ok(j),
                    _ => Err(anyhow!(
                        "job {} ({} {}) failed: {}",
                        j.id,
                        j.kind,
                        j.target,
                        j.error.clone().unwrap_or_default()
                    )),
                };
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_several_replicas_the_one_that_listens_is_taken() {
        let serving = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let port = serving.local_addr().unwrap().port();
        let list = format!("127.0.0.1:{closed_port}, http://127.0.0.1:{port}/");
        assert_eq!(leader_of(&list), format!("http://127.0.0.1:{port}"));
        assert_eq!(
            leader_of(&format!("127.0.0.1:{closed_port}")),
            format!("http://127.0.0.1:{closed_port}")
        );
        assert_eq!(
            leader_of("https://a.example:7780"),
            "https://a.example:7780"
        );
    }
}
