//! `standby-vnf`: run the sample SIP registrar VNF.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use standby_vnf::server::DEFAULT_DISK_SIZE;
use standby_vnf::{Config, Vnf};
use tokio::signal::unix::{SignalKind, signal};

/// Minimal SIP registrar with a durable journal on a raw disk image.
#[derive(Debug, Parser)]
#[command(name = "standby-vnf", version)]
struct Args {
    /// Raw disk image or block device (e.g. /dev/vdb in a VM) holding the
    /// journal; an image file is created sparse if missing.
    #[arg(long)]
    disk: PathBuf,
    /// UDP address for SIP.
    #[arg(long, default_value = "127.0.0.1:5060")]
    sip: SocketAddr,
    /// TCP address for the HTTP state endpoint.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Name reported in /state.
    #[arg(long, default_value = "vnf")]
    name: String,
    /// Size in bytes of the disk image when it has to be created.
    #[arg(long, default_value_t = DEFAULT_DISK_SIZE)]
    disk_size: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut term = signal(SignalKind::terminate()).context("unable to catch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("unable to catch SIGINT")?;

    let config = Config {
        name: args.name,
        disk: args.disk,
        disk_size: args.disk_size,
        sip: args.sip,
        http: args.http,
    };
    let vnf = Vnf::start(&config)
        .await
        .with_context(|| format!("unable to start vnf '{}'", config.name))?;
    // One machine-readable line on stdout, so callers that asked for port 0
    // learn the real addresses.
    println!("ready sip={} http={}", vnf.sip_addr(), vnf.http_addr());

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    vnf.shutdown().await;
    Ok(())
}
