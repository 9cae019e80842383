use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;
use standby_hv::libvirt;
use standby_types::api::{VmCreateRequest, VmCreated, VmDeleted, VmView};
use standby_types::config::{Config, DriverKind};

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum VmCmd {
    /// Every VM with its site, state and newest point.
    List,
    /// One VM in detail.
    Status { name: String },
    /// Start a VM where it is active (blank disks are created on first start at home).
    Start { name: String },
    /// Graceful shutdown: SIGTERM (or ACPI), then a forced stop after the timeout.
    Shutdown {
        name: String,
        /// Seconds before the forced stop (default: the VM's shutdown_timeout).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Forced stop.
    Stop { name: String },
    /// Make a VM from a template at a host of any site: its disks written
    /// from the template (sparse), its machine the template's, kept by
    /// the controller (its database) and started.
    Create {
        name: String,
        #[arg(long)]
        template: String,
        #[arg(long)]
        host: String,
        /// A port forward, repeatable: `udp:{site.addr}:15060:5060`
        /// (PROTOCOL:[HOST_ADDR:]HOST_PORT:GUEST_PORT) or a `forwards`
        /// entry of standby.toml (`{ protocol = "udp", host_port = 15060,
        /// guest_port = 5060 }`). The template's forwards are not taken.
        #[arg(long = "forward")]
        forwards: Vec<String>,
        /// Write its disks but do not start it.
        #[arg(long)]
        no_start: bool,
    },
    /// Delete a VM made from a template (stopped first, in no group); its
    /// disks stay on its host. A VM of standby.toml is removed there.
    Delete { name: String },
    /// List the libvirt domains of a host and print their `[vms]`
    /// entries (adopted as they are, disks included) for standby.toml.
    /// Talks to the host's libvirtd from here: its `libvirt_uri`, or
    /// `--uri` (e.g. qemu+ssh://root@h1/system).
    Import {
        /// A host of the configuration with driver = "libvirt".
        #[arg(long)]
        host: String,
        /// The libvirtd to ask instead of the host's `libvirt_uri`.
        #[arg(long)]
        uri: Option<String>,
    },
}

pub async fn run(ctx: &Ctx, cmd: &VmCmd, config: &Path) -> Result<()> {
    let c = &ctx.client;
    let one = match cmd {
        VmCmd::Import { host, uri } => return import(ctx, config, host, uri.as_deref()).await,
        VmCmd::Create {
            name,
            template,
            host,
            forwards,
            no_start,
        } => {
            let req = VmCreateRequest {
                name: name.clone(),
                template: template.clone(),
                host: host.clone(),
                forwards: forwards
                    .iter()
                    .map(|f| super::template::parse_forward(f))
                    .collect::<Result<_>>()?,
                start: !no_start,
            };
            let done: VmCreated = c.post("/api/v1/vms", &req).await?;
            if ctx.json {
                output::json(&done);
            } else {
                println!(
                    "vm {} made from template {} at {} (site {}) from datastore {}: {} of disks, {} written{} in {:.1}s",
                    done.vm,
                    done.template,
                    done.host,
                    done.site,
                    done.datastore,
                    output::bytes(done.bytes),
                    output::bytes(done.written),
                    if done.started { ", started" } else { "" },
                    done.seconds
                );
            }
            return Ok(());
        }
        VmCmd::Delete { name } => {
            let done: VmDeleted = c.delete(&format!("/api/v1/vms/{name}")).await?;
            if ctx.json {
                output::json(&done);
            } else {
                println!(
                    "vm {} deleted; its disks stay at {}: {}",
                    done.vm,
                    done.host,
                    done.disks_left.join(", ")
                );
            }
            return Ok(());
        }
        VmCmd::List => {
            let vms: Vec<VmView> = c.get("/api/v1/vms").await?;
            if ctx.json {
                output::json(&vms);
            } else {
                print_table(vms);
            }
            return Ok(());
        }
        VmCmd::Status { name } => c.get::<VmView>(&format!("/api/v1/vms/{name}")).await?,
        VmCmd::Start { name } => {
            c.post(&format!("/api/v1/vms/{name}/start"), &json!({}))
                .await?
        }
        VmCmd::Shutdown { name, timeout } => {
            c.post(
                &format!("/api/v1/vms/{name}/shutdown"),
                &json!({"timeout_secs": timeout}),
            )
            .await?
        }
        VmCmd::Stop { name } => {
            c.post(&format!("/api/v1/vms/{name}/stop"), &json!({}))
                .await?
        }
    };
    if ctx.json {
        output::json(&one);
    } else {
        print_table(vec![one]);
    }
    Ok(())
}

/// `standby vm import`: the host's domains as `[vms]` entries.
async fn import(ctx: &Ctx, config: &Path, host: &str, uri: Option<&str>) -> Result<()> {
    let cfg = Config::load(config)
        .with_context(|| format!("unable to read the configuration {}", config.display()))?;
    let h = cfg
        .hosts
        .get(host)
        .with_context(|| format!("no host '{host}' in {}", config.display()))?;
    if h.driver != DriverKind::Libvirt {
        bail!(
            "host '{host}' uses the {} driver; import lists libvirt hosts",
            h.driver
        );
    }
    let uri = match (uri, &h.libvirt_uri, cfg.remote_agent_of(host)) {
        (Some(u), _, _) => u.to_owned(),
        // A local URI names the libvirtd of the machine this runs on,
        // which is not the remote agent's.
        (None, u, Some((agent, _)))
            if !u
                .as_deref()
                .is_some_and(|u| u.contains("://") && !u.contains(":///")) =>
        {
            bail!(
                "host '{host}' is run by agent '{agent}': run `standby vm import --host {host}` on that machine, or pass --uri with a remote libvirt URI (e.g. qemu+ssh://root@{host}/system); the agent API has no listing route yet"
            )
        }
        (None, Some(u), _) => u.clone(),
        (None, None, _) => libvirt::DEFAULT_URI.to_owned(),
    };
    let vms = libvirt::list_domains(&uri)
        .await
        .with_context(|| format!("unable to list the domains of host '{host}' at {uri}"))?;
    if ctx.json {
        output::json(&vms);
    } else {
        print!("{}", libvirt::import_toml(host, &vms));
    }
    Ok(())
}

fn print_table(vms: Vec<VmView>) {
    output::table(
        &[
            "VM",
            "STATE",
            "ACTIVE SITE",
            "HOST",
            "HOME",
            "DR SITE",
            "GROUPS",
            "NEWEST POINT",
        ],
        vms.into_iter()
            .map(|v| {
                let state = match (&v.pid, &v.exit) {
                    (Some(pid), _) => format!("{} (pid {pid})", v.state),
                    (None, Some(exit)) => format!("{} ({exit})", v.state),
                    _ => v.state.clone(),
                };
                vec![
                    v.record.name,
                    state,
                    v.record.active_site,
                    v.record.active_host,
                    v.record.home_site,
                    v.record.dr_site.unwrap_or_else(|| "-".into()),
                    v.groups.join(", "),
                    v.last_point
                        .map(|p| format!("{} ({})", p.id, output::age(p.time)))
                        .unwrap_or_else(|| "none".into()),
                ]
            })
            .collect(),
    );
}
