//! The data-plane fuzzer (`cargo xtask fuzz`): runs seeded, partly mutated frames through the
//! real `failover` program and checks every output; exits non-zero on any violation.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use failover_tests::fuzz::{self, Options};

#[derive(Parser)]
#[command(about = "Fuzz the failover XDP program through BPF_PROG_TEST_RUN (needs root)")]
struct Arguments {
    /// Frames to run.
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// Seed, decimal or 0x-hex; a random one (printed) when absent.
    #[arg(long, value_parser = fuzz::parse_seed)]
    seed: Option<u64>,
    /// Violations to print in full; the rest are counted.
    #[arg(long, default_value_t = 20)]
    show: usize,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// True when the run found no violation.
fn run() -> Result<bool> {
    let arguments = Arguments::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fuzzer loads an XDP program and runs it with BPF_PROG_TEST_RUN: run it as root");
    }
    let seed = arguments.seed.unwrap_or_else(rand::random);
    println!("fuzz: {} frames, seed {seed:#x}", arguments.frames);
    let report = fuzz::run(&Options { frames: arguments.frames, seed, shown: arguments.show }).context("fuzz run")?;
    print!("{report}");
    Ok(report.violation_count() == 0)
}
