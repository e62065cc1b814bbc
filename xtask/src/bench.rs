//! `cargo xtask bench`: times the load balancer's paths against a `return XDP_TX` floor and prints a table (or JSON lines) with the method behind every number.
//!
//! The harness loads the data plane, so it depends on failover-ctl, whose build script needs
//! the eBPF toolchain; plain `cargo xtask` must build without it. So the harness sits behind
//! the `bench` feature: without it, this task installs the toolchain where missing and runs
//! itself again with the feature, in release. Scenarios, methods and checks are described in
//! `bench/harness.rs` and printed with the results.

use anyhow::Result;

#[cfg(feature = "bench")]
mod harness;
#[cfg(feature = "bench")]
mod lab;
#[cfg(feature = "bench")]
mod measure;
#[cfg(feature = "bench")]
mod raw;
#[cfg(feature = "bench")]
mod report;
#[cfg(feature = "bench")]
mod setup;

#[derive(clap::Args)]
pub struct Arguments {
    /// Print the results as JSON, one object per line (the notes go to standard error).
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "bench")]
pub fn run(arguments: Arguments) -> Result<()> {
    harness::run(arguments.json)
}

#[cfg(not(feature = "bench"))]
pub fn run(arguments: Arguments) -> Result<()> {
    crate::ebpf::ensure_ebpf_toolchain()?;
    let mut command = crate::command::cargo()?;
    command.args(["run", "--release", "--package", "xtask", "--features", "bench", "--", "bench"]);
    if arguments.json {
        command.arg("--json");
    }
    crate::command::run(&mut command)
}
