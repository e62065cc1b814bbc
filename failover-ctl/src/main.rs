//! failover-ctl command line: `check FILE` validates a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use failover_ctl::config;

/// Control program of the failover XDP load balancer.
#[derive(Parser)]
#[command(version, about)]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and print a summary.
    Check {
        /// The TOML configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Arguments::parse().command {
        Command::Check { file } => match config::load(&file) {
            Ok(config) => {
                println!(
                    "{}: ok ({} VIPs, {} backends)",
                    file.display(),
                    config.vips.len(),
                    config.backend_count()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
    }
}
