//! `cargo xtask bench`: times the load balancer's paths against a `return XDP_TX` floor, and two control-plane costs (Maglev build time, CPU of 1000 probes), and prints tables (or JSON lines) with the method behind every number.
//!
//! The harness loads the data plane, so it depends on failover-ctl, whose build script needs
//! the eBPF toolchain; plain `cargo xtask` must build without it. So the harness sits behind
//! the `bench` feature: without it, this task installs what is missing (packages, bpffs, the toolchain) and runs
//! itself again with the feature, in release. Scenarios, methods and checks are described in
//! `bench/harness.rs` and printed with the results.

use anyhow::Result;

#[cfg(feature = "bench")]
mod control;
#[cfg(feature = "bench")]
mod failover;
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
#[cfg(feature = "bench")]
mod statistics;

#[derive(clap::Args)]
pub struct Arguments {
    /// Print the results as JSON, one object per line (the notes go to standard error).
    #[arg(long)]
    pub json: bool,
    /// Run only these groups (comma-separated or repeated); all of them by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Group>,
}

/// The benchmark's groups of scenarios, for `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// The XDP program's paths against the floor (needs root).
    Dataplane,
    /// Maglev table build time at 10, 100 and 1000 backends.
    Maglev,
    /// CPU used by 1000 TCP probes at a 100 ms interval.
    Probes,
    /// Verdict to published table through the controller (needs root).
    Failover,
}

impl Group {
    #[cfg(feature = "bench")]
    const ALL: [Group; 4] = [Group::Dataplane, Group::Maglev, Group::Probes, Group::Failover];

    /// As `--only` spells it, for the run with the feature on.
    #[cfg(not(feature = "bench"))]
    fn name(self) -> &'static str {
        match self {
            Group::Dataplane => "dataplane",
            Group::Maglev => "maglev",
            Group::Probes => "probes",
            Group::Failover => "failover",
        }
    }
}

#[cfg(feature = "bench")]
pub fn run(arguments: Arguments) -> Result<()> {
    let groups = if arguments.only.is_empty() { Group::ALL.to_vec() } else { arguments.only };
    harness::run(arguments.json, &groups)
}

#[cfg(not(feature = "bench"))]
pub fn run(arguments: Arguments) -> Result<()> {
    crate::prerequisites::ensure(crate::prerequisites::Task::Bench)?;
    let mut command = crate::command::cargo()?;
    command.args(["run", "--release", "--package", "xtask", "--features", "bench", "--", "bench"]);
    if arguments.json {
        command.arg("--json");
    }
    if !arguments.only.is_empty() {
        let names: Vec<&str> = arguments.only.iter().map(|group| group.name()).collect();
        command.args(["--only", &names.join(",")]);
    }
    crate::command::run(&mut command)
}
