//! `cargo xtask fuzz`: the data-plane fuzzer — installs what is missing, then runs the release
//! build of `failover-tests`' `fuzz` binary, which drives seeded, partly mutated frames through
//! the real `failover` program and checks every output (see `tests/src/fuzz/`).
//!
//! The binary lives in the tests crate, which depends on failover-ctl (and so on the eBPF
//! toolchain); xtask only starts it, so plain `cargo xtask` still builds without the toolchain.

use anyhow::Result;

use crate::{
    command,
    prerequisites::{self, Task},
};

#[derive(clap::Args)]
pub struct Arguments {
    /// Frames to run, one `BPF_PROG_TEST_RUN` each.
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// Seed, decimal or 0x-hex (a violation report names it); a random one when absent.
    #[arg(long)]
    seed: Option<String>,
    /// Violations to print in full (both frames in hex); the rest are counted.
    #[arg(long, default_value_t = 20)]
    show: usize,
}

pub fn run(arguments: Arguments) -> Result<()> {
    prerequisites::ensure(Task::Fuzz)?;
    let mut command = command::cargo()?;
    command.args([
        "run",
        "--release",
        "--package",
        "failover-tests",
        "--bin",
        "fuzz",
        "--",
    ]);
    command.args([
        "--frames",
        &arguments.frames.to_string(),
        "--show",
        &arguments.show.to_string(),
    ]);
    if let Some(seed) = &arguments.seed {
        command.args(["--seed", seed]);
    }
    command::run(&mut command)
}
