use std::path::Path;

use anyhow::{Context, Result};
use standby_types::config::Config;

pub async fn run(config: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    let server = standby_server::start(cfg)
        .await
        .context("unable to start the controller")?;
    eprintln!("standby controller listening on {}", server.url());
    crate::systemd::ready(&format!("controller listening on {}", server.url()));
    shutdown_signal().await;
    crate::systemd::stopping();
    eprintln!("stopping: shutting down local VMs");
    server.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
