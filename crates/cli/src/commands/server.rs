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
    let cancelled = server.ctl.cancel.clone();
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = cancelled.cancelled() => {}
    }
    crate::systemd::stopping();
    if server.ctl.leader.deposed() {
        // Another replica leads: stop acting at once, come back as one.
        // Whatever still waits (on a database that does not answer, say)
        // gets a moment, not the usual 30 s: the process exits anyway.
        let name = server.ctl.leader.name.clone();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server.stop()).await;
        anyhow::bail!(
            "controller {name} stepped down: it no longer holds the leader lease (another replica took it, or the database did not answer in time; see the log)"
        );
    }
    eprintln!("stopping: shutting down local VMs");
    server.stop().await;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
