//! `standby`: the command-line face of the controller.

mod client;
mod commands;
mod output;
mod systemd;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "standby",
    version,
    long_version = build_info(),
    about = "Disaster recovery for VMs and VNFs"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "STANDBY_CONFIG",
        default_value = "standby.toml"
    )]
    pub config: PathBuf,
    /// Controller address (default: `controller.listen` of the config);
    /// several replicas comma-separated: the CLI talks to the one that serves.
    #[arg(long, global = true, env = "STANDBY_URL")]
    pub url: Option<String>,
    /// API token (default: `<data_dir>/admin.token` of the config, if
    /// readable).
    #[arg(long, global = true, env = "STANDBY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Write a commented example standby.toml.
    Init {
        #[arg(long)]
        force: bool,
    },
    /// Run the controller (with in-process agents for local hosts).
    Server,
    /// The configuration file: check it (offline, and against the running
    /// controller).
    #[command(subcommand)]
    Config(commands::configfile::ConfigCmd),
    /// Sites.
    #[command(subcommand)]
    Site(commands::site::SiteCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(commands::vm::VmCmd),
    /// Templates: a VM's point kept under a name, to make new VMs from.
    #[command(subcommand)]
    Template(commands::template::TemplateCmd),
    /// Services behind the front door and the site their clients go to.
    #[command(subcommand)]
    Service(commands::service::ServiceCmd),
    /// Protection groups.
    #[command(subcommand)]
    Protect(commands::protect::ProtectCmd),
    /// Recovery points.
    #[command(subcommand)]
    Points(commands::points::PointsCmd),
    /// Restore a recovery point at a site and start the VM there.
    Restore(commands::restore::RestoreArgs),
    /// Datastore maintenance.
    #[command(subcommand)]
    Store(commands::store::StoreCmd),
    /// Background jobs.
    #[command(subcommand)]
    Jobs(commands::jobs::JobsCmd),
    /// Runbooks: validate, run (or plan) and follow their jobs.
    #[command(subcommand)]
    Runbook(commands::runbook::RunbookCmd),
    /// Alerts, silences and the notification log.
    #[command(subcommand)]
    Alerts(commands::watch::AlertsCmd),
    /// Incidents and their timelines.
    #[command(subcommand)]
    Incidents(commands::watch::IncidentsCmd),
    /// Events: probe results, agent reports, alert and incident changes.
    #[command(subcommand)]
    Events(commands::watch::EventsCmd),
    /// Latest result of every probe at every vantage point.
    Probes,
    /// Alert rules.
    #[command(subcommand)]
    Rules(commands::watch::RulesCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(commands::auth::TokenCmd),
    /// Users of the portal and the API.
    #[command(subcommand)]
    User(commands::auth::UserCmd),
    /// Who the CLI acts as.
    Whoami,
    /// Run a remote agent: heartbeats and probes from another vantage
    /// point and, with --data-dir, the VMs of a hypervisor host.
    Agent {
        /// The agent's name, as declared under [agents] in standby.toml.
        #[arg(long)]
        name: String,
        /// Controller address (default: --url, then the config's listen address);
        /// several replicas comma-separated: the agent follows the leader.
        #[arg(long)]
        controller: Option<String>,
        /// Answer GET /health here, so other vantage points can probe this
        /// agent (and the host API under /agent/v1 with --data-dir).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Run a host's VMs: their state, work files and the fence flag live
        /// here (declare the agent with `host` and `url` in standby.toml).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Run the front door at another place (a site, the witness): forward
    /// every service to the site the leader decided, read from the
    /// controller replicas (--url A,B), and keep the last decision while
    /// none answers.
    Frontdoor {
        /// Listen on this address instead of each service's configured
        /// one (same ports).
        #[arg(long)]
        listen_host: Option<std::net::IpAddr>,
        /// How often to read the leader's decisions.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
    /// Two sites, a SIP VNF, points, a disaster and a restore: all in a
    /// temporary directory.
    Demo(commands::demo::DemoArgs),
    /// Measure point, incremental point and restore against restic and borg.
    Bench(commands::bench::BenchArgs),
    /// The controller's API: its OpenAPI document.
    #[command(subcommand)]
    Api(commands::api::ApiCmd),
    /// The CA and certificates of mutual TLS between the controller and
    /// agents: files in a directory (offline).
    #[command(subcommand)]
    Pki(commands::pki::PkiCmd),
    /// Write the man pages (`man1/`) and shell completions (`completions/`)
    /// of this command into a directory (for packages).
    #[command(hide = true)]
    Manual {
        /// Where to write them.
        out: PathBuf,
    },
}

/// `standby --version`: the version and the build's optional features
/// (a package never has `crash-hook`; see docs/faults.md).
const fn build_info() -> &'static str {
    match (standby_engine::crash::ENABLED, standby_hv::libvirt::ENABLED) {
        (true, true) => concat!(env!("CARGO_PKG_VERSION"), "\nfeatures: crash-hook libvirt"),
        (true, false) => concat!(env!("CARGO_PKG_VERSION"), "\nfeatures: crash-hook"),
        (false, true) => concat!(env!("CARGO_PKG_VERSION"), "\nfeatures: libvirt"),
        (false, false) => concat!(env!("CARGO_PKG_VERSION"), "\nfeatures: none"),
    }
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    use std::io::IsTerminal;
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STANDBY_LOG").unwrap_or_else(|_| {
                let default = if matches!(
                    cli.cmd,
                    Cmd::Server | Cmd::Agent { .. } | Cmd::Frontdoor { .. }
                ) {
                    "info"
                } else {
                    "warn"
                };
                tracing_subscriber::EnvFilter::new(default)
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(commands::run(cli))
}
