//! `cargo xtask bench`: the benchmarks (not written yet).

use anyhow::Result;

#[derive(clap::Args)]
pub struct Arguments {
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_arguments: Arguments) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
