//! `standby token`, `standby user`, `standby whoami`, and how the CLI finds
//! its credentials.
//!
//! Every command sends `--token` (or `STANDBY_TOKEN`) as a bearer token.
//! Without one, it reads `<data_dir>/admin.token` of the configuration
//! (`--config`): the admin token the controller wrote at its first start,
//! readable by root only. An agent (`standby agent`) sends its own secret:
//! `STANDBY_AGENT_TOKEN`, else `[agents.NAME] token`/`token_file` of the
//! configuration.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use standby_agent::daemon::AgentAuth;
use standby_server::auth::{ADMIN_TOKEN_FILE, Role};
use standby_types::config::Config;

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create an API token; its secret is printed once, keep it.
    Create {
        /// What the token is for (e.g. "grafana", "ci").
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: Role,
        /// The tenant it acts for (default: yours; none for the operators' side).
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime, e.g. 30d or 12h (default: until revoked).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Tokens (never their secrets).
    List,
    /// Revoke a token at once.
    Revoke {
        /// The token's id (see `standby token list`).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user of the portal and the API; the password is read from
    /// standard input.
    Add {
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: Role,
        #[arg(long)]
        tenant: Option<String>,
        /// Read the password from standard input (one line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Users.
    List,
    /// Remove a user and end its sessions.
    Remove { name: String },
}

/// The token the CLI sends: the given one, else the bootstrap admin token
/// of the configuration's data directory, if readable.
pub fn cli_token(given: Option<&str>, config: &Path) -> Option<String> {
    if let Some(t) = given.map(str::trim).filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    let cfg = Config::load(config).ok()?;
    let t = std::fs::read_to_string(cfg.controller.data_dir.join(ADMIN_TOKEN_FILE)).ok()?;
    Some(t.trim().to_string()).filter(|t| !t.is_empty())
}

/// The secret of agent `name`: `STANDBY_AGENT_TOKEN`, else its
/// `[agents.NAME]` entry of the configuration (if there is one).
pub fn agent_token(config: &Path, name: &str) -> Result<Option<String>> {
    if let Ok(t) = std::env::var("STANDBY_AGENT_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(Some(t.trim().to_string()));
    }
    if !config.exists() {
        return Ok(None);
    }
    let cfg = Config::load(config)?;
    match cfg.agents.get(name) {
        Some(a) => a
            .secret()
            .with_context(|| format!("reading the token of agent {name}")),
        None => Ok(None),
    }
}

/// How agent `name` proves itself and checks its callers: with `[pki]` in
/// its configuration, its certificates (`agent-NAME`, and `peer-NAME` for
/// a host agent) and the controllers it takes calls from; else its token.
pub fn agent_auth(config: &Path, name: &str, host: bool) -> Result<AgentAuth> {
    let cfg = if config.exists() {
        Some(Config::load(config)?)
    } else {
        None
    };
    let Some((cfg, pki)) = cfg.as_ref().and_then(|c| c.pki.as_ref().map(|p| (c, p))) else {
        return Ok(AgentAuth::Token(agent_token(config, name)?));
    };
    use standby_agent::creds::{Role, identity, material};
    let agent = material(pki, &identity(Role::Agent, name)?).with_context(|| {
        format!("agent {name}: its certificate (standby pki issue agent {name})")
    })?;
    let peer = if host {
        Some(
            material(pki, &identity(Role::Peer, name)?).with_context(|| {
                format!("agent {name}: its peer certificate (standby pki issue agent {name})")
            })?,
        )
    } else {
        None
    };
    Ok(AgentAuth::Tls {
        agent,
        peer,
        controllers: standby_agent::creds::controllers(cfg)?,
    })
}

/// The controller's agent-facing address of a configuration with `[pki]`
/// (`https://[controller] agent_listen`).
pub fn agent_listen_url(config: &Path) -> Option<String> {
    let cfg = Config::load(config).ok()?;
    cfg.pki.as_ref()?;
    cfg.controller.agent_listen.map(|a| format!("https://{a}"))
}

/// The policy of host agent `name` from its own configuration file: the
/// file must exist, be readable and declare `[agents.NAME]`; `None` when
/// it is declared without `host` (a vantage point, running no VMs).
pub fn agent_policy(config: &Path, name: &str) -> Result<Option<standby_agent::policy::Policy>> {
    let cfg = Config::load(config).with_context(|| {
        format!(
            "agent {name} runs a host (--data-dir): it checks every VM against its own configuration, and {} cannot be read",
            config.display()
        )
    })?;
    if cfg.agents.get(name).is_some_and(|a| a.host.is_none()) {
        return Ok(None);
    }
    standby_agent::policy::Policy::from_config(&cfg, name)
        .map(Some)
        .with_context(|| format!("agent {name}: its policy in {}", config.display()))
}

fn when(v: &Value) -> String {
    v.as_str()
        .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_string()
}

pub async fn token(ctx: &Ctx, cmd: &TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            name,
            role,
            tenant,
            expires_in,
        } => {
            let t: Value = ctx
                .client
                .post(
                    "/api/v1/tokens",
                    &json!({"name": name, "role": role, "tenant": tenant, "expires_in": expires_in}),
                )
                .await?;
            if ctx.json {
                output::json(&t);
            } else {
                println!(
                    "token {} ({}, {}) created; its secret, shown only now:",
                    text(&t["id"]),
                    text(&t["role"]),
                    t["tenant"].as_str().unwrap_or("all tenants"),
                );
                println!("{}", text(&t["secret"]));
            }
        }
        TokenCmd::List => {
            let list: Vec<Value> = ctx.client.get("/api/v1/tokens?limit=1000").await?;
            if ctx.json {
                output::json(&list);
                return Ok(());
            }
            output::table(
                &[
                    "ID",
                    "NAME",
                    "ROLE",
                    "TENANT",
                    "CREATED",
                    "EXPIRES",
                    "REVOKED",
                    "LAST USED",
                ],
                list.iter()
                    .map(|t| {
                        vec![
                            text(&t["id"]),
                            text(&t["name"]),
                            text(&t["role"]),
                            text(&t["tenant"]),
                            when(&t["created"]),
                            when(&t["expires"]),
                            when(&t["revoked"]),
                            when(&t["last_used"]),
                        ]
                    })
                    .collect(),
            );
        }
        TokenCmd::Revoke { id } => {
            let t: Value = ctx.client.delete(&format!("/api/v1/tokens/{id}")).await?;
            if ctx.json {
                output::json(&t);
            } else {
                println!("token {id} revoked");
            }
        }
    }
    Ok(())
}

pub async fn user(ctx: &Ctx, cmd: &UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Add {
            name, role, tenant, ..
        } => {
            let mut pw = String::new();
            std::io::stdin()
                .read_to_string(&mut pw)
                .context("reading the password from standard input")?;
            let pw = pw.lines().next().unwrap_or_default().to_string();
            if pw.is_empty() {
                bail!("no password on standard input");
            }
            let u: Value = ctx
                .client
                .post(
                    "/api/v1/users",
                    &json!({"name": name, "password": pw, "role": role, "tenant": tenant}),
                )
                .await?;
            if ctx.json {
                output::json(&u);
            } else {
                println!("user {} added ({})", text(&u["name"]), text(&u["role"]));
            }
        }
        UserCmd::List => {
            let list: Vec<Value> = ctx.client.get("/api/v1/users?limit=1000").await?;
            if ctx.json {
                output::json(&list);
                return Ok(());
            }
            output::table(
                &["USER", "ROLE", "TENANT", "CREATED"],
                list.iter()
                    .map(|u| {
                        vec![
                            text(&u["name"]),
                            text(&u["role"]),
                            text(&u["tenant"]),
                            when(&u["created"]),
                        ]
                    })
                    .collect(),
            );
        }
        UserCmd::Remove { name } => {
            let u: Value = ctx.client.delete(&format!("/api/v1/users/{name}")).await?;
            if ctx.json {
                output::json(&u);
            } else {
                println!("user {name} removed");
            }
        }
    }
    Ok(())
}

pub async fn whoami(ctx: &Ctx) -> Result<()> {
    let p: Value = ctx.client.get("/api/v1/whoami").await?;
    if ctx.json {
        output::json(&p);
    } else {
        println!(
            "{} ({}, {})",
            text(&p["name"]),
            text(&p["role"]),
            p["tenant"].as_str().unwrap_or("all tenants")
        );
    }
    Ok(())
}
