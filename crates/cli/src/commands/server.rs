use std::path::Path;

use anyhow::{Context, Result};
use standby_types::config::Config;

pub async fn run(config: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    // SIGHUP reloads the configuration. Taken from now on: a replica
    // waiting for the lease must not die of one (a SIGHUP's default), and
    // one received meanwhile is applied once it leads.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("unable to take SIGHUP")?;
    let server = standby_server::start(cfg)
        .await
        .context("unable to start the controller")?;
    server.ctl.set_config_file(config);
    eprintln!("standby controller listening on {}", server.url());
    crate::systemd::ready(&format!("controller listening on {}", server.url()));
    let cancelled = server.ctl.cancel.clone();
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = cancelled.cancelled() => break,
            _ = hup.recv() => reload(&server.ctl).await,
        }
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

/// SIGHUP: read the file again and apply it, or say why not (the log,
/// and the service manager's status line).
async fn reload(ctl: &std::sync::Arc<standby_server::Controller>) {
    crate::systemd::reloading();
    let status = match standby_server::reload_from_file(ctl).await {
        Ok(r) if r.changes.is_empty() => "configuration reloaded: no change".to_string(),
        Ok(r) => format!(
            "configuration reloaded in {} ms: {}",
            r.took_ms,
            r.changes.join("; ")
        ),
        Err(e) => {
            tracing::error!("SIGHUP: {e}");
            format!("configuration not reloaded: {e}")
        }
    };
    eprintln!("{status}");
    crate::systemd::reloaded(&status);
}

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
