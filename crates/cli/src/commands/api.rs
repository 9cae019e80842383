//! `standby api`: the controller's API described, offline.

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ApiCmd {
    /// Print the OpenAPI 3 document of the controller's API (JSON), as a
    /// controller of this version serves it at /api/v1/openapi.json.
    Spec,
}

pub fn run(cmd: &ApiCmd) -> Result<()> {
    match cmd {
        ApiCmd::Spec => {
            let doc = standby_server::openapi::openapi();
            let text = doc
                .to_pretty_json()
                .context("unable to encode the OpenAPI document")?;
            println!("{text}");
            Ok(())
        }
    }
}
