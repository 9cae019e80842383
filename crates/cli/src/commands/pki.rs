//! `standby pki`: the CA and the certificates standby's processes use
//! for mutual TLS (controller ↔ agents, agent → agent). Offline: files in
//! a directory, no controller involved (see docs/pki.md).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use standby_tls::{Identity, Role, pki};

use crate::output;

#[derive(Subcommand)]
pub enum PkiCmd {
    /// Make the CA: ca.pem (the trust bundle, for every host) and ca.key
    /// (the CA's key, stays here). With --rotate, start a CA rotation.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// Start a CA rotation: a new CA key replaces ca.key and its
        /// certificate is added to ca.pem; the old CA stays trusted until
        /// `standby pki retire`.
        #[arg(long)]
        rotate: bool,
    },
    /// Issue or reissue a certificate from the current CA. An agent gets
    /// two: agent-NAME (its API, its heartbeats) and peer-NAME (its copies
    /// into other agents' datastores).
    Issue {
        role: IssueRole,
        /// The name in standby.toml: `[agents.NAME]`, or the controller's.
        name: String,
        #[command(flatten)]
        dir: DirArg,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = pki::LEAF_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// End a CA rotation: ca.pem keeps only the current CA. Run it once
    /// every certificate has been reissued and copied to its host.
    Retire {
        #[command(flatten)]
        dir: DirArg,
        /// Retire even if a certificate in the directory is still of an
        /// old CA (it will be refused).
        #[arg(long)]
        force: bool,
    },
    /// The CAs of the trust bundle and the certificates in the directory.
    Show {
        #[command(flatten)]
        dir: DirArg,
    },
}

#[derive(Args)]
pub struct DirArg {
    /// The PKI directory (relative to the current directory; standby.toml
    /// has no setting for it yet).
    #[arg(long, default_value = "pki")]
    pub dir: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum IssueRole {
    Controller,
    Agent,
}

pub fn run(cmd: &PkiCmd, json: bool) -> Result<()> {
    match cmd {
        PkiCmd::Init { dir, rotate } => init(&dir.dir, *rotate),
        PkiCmd::Issue {
            role,
            name,
            dir,
            days,
        } => issue(&dir.dir, *role, name, *days),
        PkiCmd::Retire { dir, force } => retire(&dir.dir, *force),
        PkiCmd::Show { dir } => show(&dir.dir, json),
    }
}

fn init(dir: &Path, rotate: bool) -> Result<()> {
    if rotate {
        let ca = pki::init_rotate(dir)
            .with_context(|| format!("unable to start a CA rotation in {}", dir.display()))?;
        println!(
            "wrote {} (new CA {}) and added its certificate to {} ({} CAs trusted)",
            ca.key.display(),
            ca.fingerprint,
            ca.bundle.display(),
            ca.trusted
        );
        println!(
            "next: reissue every certificate, copy ca.pem and them to their hosts, then `standby pki retire`"
        );
        return Ok(());
    }
    let ca = match pki::init(dir) {
        Err(e @ standby_tls::Error::CaExists { .. }) => {
            return Err(anyhow::Error::new(e).context(
                "not making a new CA (`standby pki init --rotate` starts a CA rotation)",
            ));
        }
        r => r.with_context(|| format!("unable to make a CA in {}", dir.display()))?,
    };
    println!(
        "wrote {} and {} (CA {})",
        ca.bundle.display(),
        ca.key.display(),
        ca.fingerprint
    );
    println!(
        "next: `standby pki issue controller NAME`, `standby pki issue agent NAME`; ca.key stays here"
    );
    Ok(())
}

fn issue(dir: &Path, role: IssueRole, name: &str, days: u32) -> Result<()> {
    let roles: &[Role] = match role {
        IssueRole::Controller => &[Role::Controller],
        IssueRole::Agent => &[Role::Agent, Role::Peer],
    };
    for &role in roles {
        let who = Identity::new(role, name)?;
        let issued = pki::issue(dir, &who, days)
            .with_context(|| format!("unable to issue the certificate of {who}"))?;
        println!(
            "wrote {} and {}: {}, until {}, {}",
            issued.cert.display(),
            issued.key.display(),
            who,
            date(Some(issued.not_after)),
            issued.fingerprint
        );
    }
    Ok(())
}

fn retire(dir: &Path, force: bool) -> Result<()> {
    let retired = match pki::retire(dir, force) {
        Err(e @ standby_tls::Error::NotReissued { .. }) => {
            return Err(anyhow::Error::new(e).context(
                "old CAs kept (`--force` retires them anyway: those certificates are then refused)",
            ));
        }
        r => r.with_context(|| format!("unable to retire old CAs in {}", dir.display()))?,
    };
    println!(
        "wrote {}: CA {} only ({} retired{})",
        pki::bundle_path(dir).display(),
        retired.kept,
        retired.removed.len(),
        retired
            .removed
            .iter()
            .map(|f| format!(", {f}"))
            .collect::<String>()
    );
    Ok(())
}

fn show(dir: &Path, json: bool) -> Result<()> {
    let status =
        pki::status(dir).with_context(|| format!("unable to read the PKI in {}", dir.display()))?;
    if json {
        let cas: Vec<_> = status
            .cas
            .iter()
            .map(|c| {
                serde_json::json!({
                    "fingerprint": c.fingerprint,
                    "not_after": c.not_after.map(rfc3339),
                    "current": c.current,
                })
            })
            .collect();
        let leaves: Vec<_> = status
            .leaves
            .iter()
            .map(|l| {
                serde_json::json!({
                    "file": l.file,
                    "role": l.identity.as_ref().map(|i| i.role.as_str()),
                    "name": l.identity.as_ref().map(|i| &i.name),
                    "fingerprint": l.fingerprint,
                    "not_after": l.not_after.map(rfc3339),
                    "issuer": l.issuer.as_ref().ok(),
                    "error": l.issuer.as_ref().err(),
                })
            })
            .collect();
        output::json(&serde_json::json!({ "cas": cas, "certificates": leaves }));
        return Ok(());
    }
    let ca_label = |fp: &str| match status.cas.iter().position(|c| c.fingerprint == fp) {
        Some(i) if status.cas[i].current => format!("CA {} (current)", i + 1),
        Some(i) => format!("CA {}", i + 1),
        None => "?".into(),
    };
    let mut rows = Vec::new();
    for (i, ca) in status.cas.iter().enumerate() {
        rows.push(vec![
            format!("{} #{}", pki::BUNDLE, i + 1),
            if ca.current {
                format!("CA {} (current)", i + 1)
            } else {
                format!("CA {}", i + 1)
            },
            ca.fingerprint.clone(),
            date(ca.not_after),
            String::new(),
        ]);
    }
    for leaf in &status.leaves {
        rows.push(vec![
            leaf.file
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            leaf.identity
                .as_ref()
                .map_or("?".into(), |i| format!("{} {}", i.role, i.name)),
            leaf.fingerprint.clone(),
            date(leaf.not_after),
            match &leaf.issuer {
                Ok(fp) => ca_label(fp),
                Err(e) => format!("refused: {e}"),
            },
        ]);
    }
    output::table(
        &["FILE", "IDENTITY", "SHA-256", "NOT AFTER", "ISSUED BY"],
        rows,
    );
    Ok(())
}

fn date(t: Option<SystemTime>) -> String {
    t.map_or("?".into(), |t| {
        chrono::DateTime::<chrono::Utc>::from(t)
            .format("%Y-%m-%d %H:%M UTC")
            .to_string()
    })
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
