//! `standby template`: templates made from VMs' points (kept in the
//! datastores, sharing the points' chunks), and `standby vm create
//! --template`'s forwards.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use standby_types::api::{ForwardSpec, TemplateCreated, TemplateInfo, TemplateRequest};

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// Make a template from a VM's point: `--from VM` (its newest point)
    /// or `--from VM@POINT-TIME`. Kept in every datastore holding the
    /// point and every datastore of the VM's groups; no data is copied
    /// where the point is.
    Create {
        name: String,
        #[arg(long)]
        from: String,
    },
    /// Every template with its source point, disks and datastores.
    List,
    /// One template.
    Show { name: String },
    /// Delete a template everywhere (its chunks go at each datastore's
    /// next gc; VMs made from it keep their disks).
    Delete { name: String },
}

pub async fn run(ctx: &Ctx, cmd: &TemplateCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        TemplateCmd::Create { name, from } => {
            let req = TemplateRequest {
                name: name.clone(),
                from: from.clone(),
            };
            let done: TemplateCreated = c.post("/api/v1/templates", &req).await?;
            if ctx.json {
                output::json(&done);
            } else {
                println!(
                    "template {} made from {} in {:.1}s",
                    done.template.name, done.template.source, done.seconds
                );
                for copy in &done.copies {
                    match &copy.error {
                        Some(e) => println!("  {}: not copied: {e}", copy.datastore),
                        None => println!(
                            "  {}: {} chunk(s) copied ({}), {} there already",
                            copy.datastore,
                            copy.chunks_copied,
                            output::bytes(copy.bytes_copied),
                            copy.chunks_skipped
                        ),
                    }
                }
            }
        }
        TemplateCmd::List => {
            let all: Vec<TemplateInfo> = c.get("/api/v1/templates").await?;
            if ctx.json {
                output::json(&all);
            } else {
                print_table(all);
            }
        }
        TemplateCmd::Show { name } => {
            let t: TemplateInfo = c.get(&format!("/api/v1/templates/{name}")).await?;
            if ctx.json {
                output::json(&t);
            } else {
                print_table(vec![t]);
            }
        }
        TemplateCmd::Delete { name } => {
            let gone: Vec<String> = c.delete(&format!("/api/v1/templates/{name}")).await?;
            if ctx.json {
                output::json(&gone);
            } else {
                println!("template {name} deleted from {}", gone.join(", "));
            }
        }
    }
    Ok(())
}

fn print_table(all: Vec<TemplateInfo>) {
    output::table(
        &[
            "TEMPLATE",
            "FROM",
            "DISKS",
            "MACHINE",
            "DATASTORES",
            "CREATED",
        ],
        all.into_iter()
            .map(|t| {
                vec![
                    t.name,
                    t.source,
                    t.disks
                        .iter()
                        .map(|d| format!("{} {} {}", d.name, output::bytes(d.size), d.format))
                        .collect::<Vec<_>>()
                        .join(", "),
                    match (t.memory_mib, t.cpus) {
                        (Some(m), Some(c)) => format!("{m} MiB, {c} cpu"),
                        _ => "process".into(),
                    },
                    t.datastores.join(", "),
                    output::age(t.created),
                ]
            })
            .collect(),
    );
}

/// A forward as `[vms.NAME.qemu] forwards` has it, either as its TOML
/// inline table (`{ protocol = "udp", host_addr = "{site.addr}",
/// host_port = 15060, guest_port = 5060 }`) or shorter as
/// `PROTOCOL:[HOST_ADDR:]HOST_PORT:GUEST_PORT` (`udp:{site.addr}:15060:5060`).
pub fn parse_forward(s: &str) -> Result<ForwardSpec> {
    let t = s.trim();
    if t.starts_with('{') {
        let doc: toml::Table = toml::from_str(&format!("f = {t}"))
            .with_context(|| format!("forward {s:?} is not a TOML inline table"))?;
        let value = serde_json::to_value(&doc["f"])?;
        return serde_json::from_value(value).with_context(|| {
            format!("forward {s:?}: expected protocol, host_addr (optional), host_port, guest_port")
        });
    }
    let parts: Vec<&str> = t.split(':').collect();
    let port = |p: &str| -> Result<u16> {
        p.parse()
            .with_context(|| format!("forward {s:?}: '{p}' is not a port"))
    };
    let (protocol, host_addr, host_port, guest_port) = match parts.as_slice() {
        [proto, hp, gp] => (proto, None, port(hp)?, port(gp)?),
        [proto, addr, hp, gp] => (proto, Some(addr.to_string()), port(hp)?, port(gp)?),
        _ => bail!("forward {s:?}: expected PROTOCOL:[HOST_ADDR:]HOST_PORT:GUEST_PORT"),
    };
    if !matches!(*protocol, "udp" | "tcp") {
        bail!("forward {s:?}: protocol '{protocol}' is neither udp nor tcp");
    }
    Ok(ForwardSpec {
        protocol: protocol.to_string(),
        host_addr,
        host_port,
        guest_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_read_as_config_tables_or_short() {
        let f = parse_forward("udp:{site.addr}:15060:5060").unwrap();
        assert_eq!(
            (
                f.protocol.as_str(),
                f.host_addr.as_deref(),
                f.host_port,
                f.guest_port
            ),
            ("udp", Some("{site.addr}"), 15060, 5060)
        );
        let f = parse_forward("tcp:8081:8080").unwrap();
        assert_eq!((f.host_addr, f.host_port), (None, 8081));
        let f = parse_forward(
            r#"{ protocol = "udp", host_addr = "{site.addr}", host_port = 15060, guest_port = 5060 }"#,
        )
        .unwrap();
        assert_eq!(f.host_addr.as_deref(), Some("{site.addr}"));
        for bad in ["udp:x:5060", "sctp:1:2", "udp", "{ protocol = \"udp\" }"] {
            assert!(parse_forward(bad).is_err(), "{bad}");
        }
    }
}
