//! `standby-sipload`: a SIP client that registers new users one after
//! another against a target (a VNF or the front door) and writes one JSON
//! line per attempt, so a test or benchmark can tell which registrations
//! were acknowledged, when, and by whom (the `Server` header), across a
//! failover. Bounded by `--duration` and `--max`; stops early on SIGTERM,
//! SIGINT or when `--stop-file` appears.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Parser;
use serde::Serialize;
use standby_vnf::client;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(name = "standby-sipload", version)]
struct Args {
    /// Where to send REGISTER (address:port, UDP).
    #[arg(long)]
    target: SocketAddr,
    /// Stop after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Start a new registration this often (when the previous one is done).
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Give up on one registration after this long (retransmissions included).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Stop after this many attempts.
    #[arg(long, default_value_t = 100_000)]
    max: u64,
    /// User names are PREFIX0, PREFIX1, … at example.com.
    #[arg(long, default_value = "user")]
    prefix: String,
    /// JSON lines go here (default stdout).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stop when this file exists.
    #[arg(long)]
    stop_file: Option<PathBuf>,
}

/// One attempt, as written to the output.
#[derive(Debug, Serialize)]
struct Attempt {
    n: u64,
    aor: String,
    sent: chrono::DateTime<Utc>,
    /// When the 200 arrived; absent when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    acked: Option<chrono::DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(
            std::fs::File::create(p)
                .with_context(|| format!("unable to create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut term = signal(SignalKind::terminate()).context("unable to catch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("unable to catch SIGINT")?;
    let start = Instant::now();
    let (mut acked, mut failed) = (0u64, 0u64);
    for n in 0..args.max {
        if start.elapsed() >= args.duration || args.stop_file.as_ref().is_some_and(|p| p.exists()) {
            break;
        }
        let next = Instant::now() + args.interval;
        let aor = format!("sip:{}{n}@example.com", args.prefix);
        let contact = format!("sip:{}{n}@198.18.255.1:5070", args.prefix);
        let sent = Utc::now();
        let result = tokio::select! {
            r = client::register_answer(args.target, &aor, &contact, 3600, args.timeout) => r,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let attempt = match result {
            Ok(a) => {
                acked += 1;
                Attempt {
                    n,
                    aor,
                    sent,
                    acked: Some(Utc::now()),
                    server: a.server,
                    error: None,
                }
            }
            Err(e) => {
                failed += 1;
                Attempt {
                    n,
                    aor,
                    sent,
                    acked: None,
                    server: None,
                    error: Some(e.to_string()),
                }
            }
        };
        serde_json::to_writer(&mut out, &attempt).context("unable to write a result")?;
        out.write_all(b"\n").context("unable to write a result")?;
        out.flush().context("unable to write a result")?;
        tokio::time::sleep_until(next.into()).await;
    }
    eprintln!(
        "standby-sipload: {acked} acknowledged, {failed} failed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
