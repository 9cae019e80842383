use anyhow::Result;
use clap::Args;

#[derive(Args, Clone)]
pub struct BenchArgs {}

pub async fn run(_args: &BenchArgs, _json: bool) -> Result<()> {
    anyhow::bail!("not built yet")
}
