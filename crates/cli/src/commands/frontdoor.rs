//! `standby frontdoor`: the front door at another place (a site, the
//! witness): it forwards every configured service like the controller's
//! own front door, to the site the leader decided, which it reads from
//! any controller replica every `--interval`. While no replica answers it
//! keeps the last decision, so clients behind it keep their service
//! through a controller's loss or a leader change.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use standby_frontdoor::{Forwarder, TrafficTarget};
use standby_types::api::ServiceView;
use standby_types::config::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::Client;

/// Every replica in `addrs` (comma-separated), each a client of its own.
fn clients(addrs: &str, token: Option<String>) -> Vec<Client> {
    addrs
        .split(',')
        .filter(|a| !a.trim().is_empty())
        .map(|a| Client::new(a.trim()).with_token(token.clone()))
        .collect()
}

/// The services' decisions from the first replica that answers (it
/// serves them, or forwards to the leader); `current` moves to it.
async fn decisions(all: &[Client], current: &mut usize) -> Result<Vec<ServiceView>> {
    let mut last = None;
    for k in 0..all.len() {
        let i = (*current + k) % all.len();
        match all[i].get::<Vec<ServiceView>>("/api/v1/services").await {
            Ok(v) => {
                *current = i;
                return Ok(v);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no controller address given")))
}

pub async fn run(
    config: &std::path::Path,
    addrs: &str,
    token: Option<String>,
    listen_host: Option<IpAddr>,
    interval: Duration,
) -> Result<()> {
    let cfg = Config::load(config)?;
    anyhow::ensure!(
        !cfg.services.is_empty(),
        "{} declares no [services]: a front door has nothing to forward",
        config.display()
    );
    let all = clients(addrs, token);
    let mut current = 0;
    // The first decision: a front door that does not know where the
    // clients go forwards nothing.
    let first = loop {
        match decisions(&all, &mut current).await {
            Ok(v) => break v,
            Err(e) => {
                tracing::warn!("waiting for a controller to say where the services are: {e:#}");
                tokio::select! {
                    _ = crate::commands::server::shutdown_signal() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let sites: BTreeMap<String, String> = first
        .iter()
        .map(|v| (v.name.clone(), v.active_site.clone()))
        .collect();
    let fwd = Forwarder::following(&cfg, &sites)
        .context("the controller's services differ from the configuration's")?;
    let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
    fwd.start(&cfg, listen_host, &tasks, &cancel).await?;
    eprintln!(
        "standby front door forwarding {} service(s), following {}",
        cfg.services.len(),
        all[current].base()
    );
    crate::systemd::ready("front door forwarding");
    let mut lost = false;
    loop {
        tokio::select! {
            _ = crate::commands::server::shutdown_signal() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        match decisions(&all, &mut current).await {
            Ok(views) => {
                if lost {
                    tracing::warn!(
                        controller = all[current].base(),
                        "following the controller again"
                    );
                    lost = false;
                }
                for v in views {
                    let Some(backend) = cfg
                        .services
                        .get(&v.name)
                        .and_then(|s| s.backend(&v.active_site))
                    else {
                        continue;
                    };
                    if fwd.site_of(&v.name).as_deref() != Some(v.active_site.as_str()) {
                        tracing::warn!(service = %v.name, site = %v.active_site, %backend, "front door switched, as the leader decided");
                        fwd.point(&v.name, &v.active_site, backend).await?;
                    }
                }
            }
            Err(e) if !lost => {
                tracing::warn!("no controller answers ({e:#}): keeping the last decision");
                lost = true;
            }
            Err(_) => {}
        }
    }
    crate::systemd::stopping();
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}
