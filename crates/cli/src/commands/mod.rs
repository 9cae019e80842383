pub mod api;
pub mod auth;
pub mod bench;
pub mod configfile;
pub mod demo;
pub mod frontdoor;
pub mod jobs;
pub mod manual;
pub mod pki;
pub mod points;
pub mod protect;
pub mod restore;
pub mod runbook;
pub mod server;
pub mod service;
pub mod site;
pub mod store;
pub mod template;
pub mod vm;
pub mod watch;

use anyhow::{Context, Result};
use standby_types::config::{self, Config};

use crate::client::Client;
use crate::{Cli, Cmd};

/// Everything a command needs: how to reach the controller and how to print.
pub struct Ctx {
    pub client: Client,
    pub json: bool,
}

impl Ctx {
    fn new(cli: &Cli) -> Ctx {
        let addr = controller_addr(cli);
        Ctx {
            client: Client::new(&addr)
                .with_token(auth::cli_token(cli.token.as_deref(), &cli.config)),
            json: cli.json,
        }
    }
}

/// The controller (or replicas, comma-separated) the CLI talks to:
/// `--url`, else the config's listen address, else the default.
fn controller_addr(cli: &Cli) -> String {
    cli.url.clone().unwrap_or_else(|| {
        // A readable config names the controller; otherwise the default.
        Config::load(&cli.config)
            .map(|c| match c.controller.tls_cert {
                Some(_) => format!("https://{}", c.controller.listen),
                None => c.controller.listen,
            })
            .unwrap_or_else(|_| config::DEFAULT_LISTEN.to_string())
    })
}

pub async fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Init { force } => init(&cli, *force),
        Cmd::Server => server::run(&cli.config).await,
        Cmd::Frontdoor {
            listen_host,
            interval,
        } => {
            frontdoor::run(
                &cli.config,
                &controller_addr(&cli),
                auth::cli_token(cli.token.as_deref(), &cli.config),
                *listen_host,
                *interval,
            )
            .await
        }
        Cmd::Demo(args) => demo::run(args, cli.json).await,
        Cmd::Bench(args) => bench::run(args, cli.json).await,
        Cmd::Api(c) => api::run(c),
        Cmd::Manual { out } => manual::write(out),
        Cmd::Pki(c) => pki::run(c, cli.json),
        Cmd::Rules(c @ watch::RulesCmd::Check { .. }) => {
            let ctx = Ctx::new(&cli);
            watch::rules(&ctx, c).await
        }
        cmd => {
            let ctx = Ctx::new(&cli);
            match cmd {
                Cmd::Site(c) => site::run(&ctx, c).await,
                Cmd::Config(c) => configfile::run(&ctx, c, &cli.config).await,
                Cmd::Vm(c) => vm::run(&ctx, c, &cli.config).await,
                Cmd::Template(c) => template::run(&ctx, c).await,
                Cmd::Service(c) => service::run(&ctx, c).await,
                Cmd::Protect(c) => protect::run(&ctx, c).await,
                Cmd::Points(c) => points::run(&ctx, c).await,
                Cmd::Restore(a) => restore::run(&ctx, a).await,
                Cmd::Store(c) => store::run(&ctx, c, &cli.config).await,
                Cmd::Jobs(c) => jobs::run(&ctx, c).await,
                Cmd::Runbook(c) => runbook::run(&ctx, c).await,
                Cmd::Alerts(c) => watch::alerts(&ctx, c).await,
                Cmd::Incidents(c) => watch::incidents(&ctx, c).await,
                Cmd::Events(c) => watch::events(&ctx, c).await,
                Cmd::Probes => watch::probes(&ctx).await,
                Cmd::Rules(c) => watch::rules(&ctx, c).await,
                Cmd::Token(c) => auth::token(&ctx, c).await,
                Cmd::User(c) => auth::user(&ctx, c).await,
                Cmd::Whoami => auth::whoami(&ctx).await,
                Cmd::Agent {
                    name,
                    controller,
                    listen,
                    data_dir,
                } => {
                    let addr = controller
                        .clone()
                        .or_else(|| auth::agent_listen_url(&cli.config))
                        .unwrap_or_else(|| ctx.client.base().to_string());
                    // A host agent's policy is its own configuration file.
                    // An agent declared without `host` is a vantage point
                    // only, whatever its unit passes as --data-dir.
                    let (data_dir, policy) = match data_dir {
                        Some(d) => match auth::agent_policy(&cli.config, name)? {
                            Some(p) => (Some(d.clone()), Some(p)),
                            None => {
                                eprintln!(
                                    "agent {name} has no 'host' in {}: it runs no VMs (--data-dir unused)",
                                    cli.config.display()
                                );
                                (None, None)
                            }
                        },
                        None => (None, None),
                    };
                    let creds = auth::agent_auth(&cli.config, name, policy.is_some())?;
                    watch::agent(name, &addr, *listen, data_dir, creds, policy).await
                }
                Cmd::Init { .. }
                | Cmd::Server
                | Cmd::Frontdoor { .. }
                | Cmd::Demo(_)
                | Cmd::Bench(_)
                | Cmd::Api(_)
                | Cmd::Pki(_)
                | Cmd::Manual { .. } => {
                    unreachable!()
                }
            }
        }
    }
}

fn init(cli: &Cli, force: bool) -> Result<()> {
    if cli.config.exists() && !force {
        anyhow::bail!(
            "{} already exists; pass --force to overwrite it",
            cli.config.display()
        );
    }
    std::fs::write(&cli.config, config::EXAMPLE)
        .with_context(|| format!("unable to write {}", cli.config.display()))?;
    println!(
        "wrote {}; then:\n  standby server &                 # the controller, with in-process agents\n  standby vm start pbx1            # the sample VNF at site1\n  standby protect run gold         # a recovery point, copied to site2\n  standby runbook run drill -p vm=pbx1 --wait   # a DR drill at site2, isolated (root)",
        cli.config.display()
    );
    Ok(())
}
