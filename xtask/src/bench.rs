//! `cargo xtask bench`: times the load balancer's paths against a `return XDP_TX` floor (on one CPU and on two at once), optionally against another revision's program in the same run (`--against REV`), counts its JITed instructions (`--jited`), times the control plane (Maglev build, probes' CPU, verdict to published table), and prints tables (or JSON lines) with the method behind every number.
//!
//! The harness loads the data plane, so it depends on failover-ctl, whose build script needs
//! the eBPF toolchain; plain `cargo xtask` must build without it. So the harness sits behind
//! the `bench` feature: without it, this task installs what is missing (packages, bpffs, the toolchain) and runs
//! itself again with the feature, in release. Scenarios, methods and checks are described in
//! `bench/harness.rs` and printed with the results.

use anyhow::Result;

#[cfg(feature = "bench")]
mod btf;
#[cfg(feature = "bench")]
mod control;
#[cfg(feature = "bench")]
mod failover;
#[cfg(feature = "bench")]
mod harness;
#[cfg(feature = "bench")]
mod jit;
#[cfg(feature = "bench")]
mod lab;
#[cfg(feature = "bench")]
mod layout;
#[cfg(feature = "bench")]
mod measure;
#[cfg(feature = "bench")]
mod notes;
#[cfg(feature = "bench")]
mod raw;
#[cfg(feature = "bench")]
mod report;
#[cfg(feature = "bench")]
mod revision;
#[cfg(feature = "bench")]
mod rows;
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
    /// Also measure the load balancer of this git revision (anything `git rev-parse` takes:
    /// HEAD~3, a tag, a hash) in the same run, interleaved with this tree's, and print both
    /// and their ratio. Its eBPF object is built in a temporary worktree and cached by commit;
    /// refused when its maps are laid out differently.
    #[arg(long, value_name = "REV")]
    pub against: Option<String>,
    /// Print only the JITed instruction counts of the load balancer, per BPF function (with
    /// --against, of both programs); no timing.
    #[arg(long)]
    pub jited: bool,
    /// Time only the data-plane scenarios whose names start with one of these (comma-separated
    /// or repeated), and the floors they are measured against: for profiling one path
    /// (`perf record` during the run) or a quicker comparison. All of them by default.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub scenario: Vec<String>,
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
    #[cfg_attr(feature = "bench", allow(dead_code, reason = "used by the run without the feature; built with it too so its test runs in `cargo xtask test`"))]
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
    harness::run(harness::Options { json: arguments.json, groups: &groups, against: arguments.against.as_deref(), jited: arguments.jited, scenarios: &arguments.scenario })
}

#[cfg(not(feature = "bench"))]
pub fn run(arguments: Arguments) -> Result<()> {
    crate::prerequisites::ensure(crate::prerequisites::Task::Bench)?;
    let mut command = crate::command::cargo()?;
    command.args(["run", "--release", "--package", "xtask", "--features", "bench", "--", "bench"]);
    command.args(forwarded(&arguments));
    crate::command::run(&mut command)
}

/// The arguments again, for the run with the feature on.
#[cfg_attr(feature = "bench", allow(dead_code, reason = "used by the run without the feature; built with it too so its test runs in `cargo xtask test`"))]
fn forwarded(arguments: &Arguments) -> Vec<String> {
    let mut words = Vec::new();
    if arguments.json {
        words.push("--json".to_string());
    }
    if !arguments.only.is_empty() {
        let names: Vec<&str> = arguments.only.iter().map(|group| group.name()).collect();
        words.extend(["--only".to_string(), names.join(",")]);
    }
    if let Some(revision) = &arguments.against {
        // One word with `=`, so a revision starting with '-' cannot pass for an option.
        words.push(format!("--against={revision}"));
    }
    if arguments.jited {
        words.push("--jited".to_string());
    }
    for name in &arguments.scenario {
        words.push(format!("--scenario={name}"));
    }
    words
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        arguments: Arguments,
    }

    fn parse(words: &[&str]) -> Arguments {
        Command::try_parse_from(std::iter::once("bench").chain(words.iter().copied())).unwrap().arguments
    }

    #[test]
    fn every_argument_reaches_the_run_with_the_feature() {
        let arguments = parse(&["--json", "--only", "dataplane", "--against", "HEAD~3", "--jited", "--scenario", "v4_est,v6"]);
        let words = forwarded(&arguments);
        assert_eq!(words, ["--json", "--only", "dataplane", "--against=HEAD~3", "--jited", "--scenario=v4_est", "--scenario=v6"]);
        let again = parse(&words.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(again.against.as_deref(), Some("HEAD~3"));
        assert!(again.jited && again.json);
        assert_eq!(again.only, [Group::Dataplane]);
        assert_eq!(again.scenario, ["v4_est", "v6"]);
    }

    #[test]
    fn against_needs_a_revision() {
        assert!(Command::try_parse_from(["bench", "--against"]).is_err());
        assert!(forwarded(&parse(&[])).is_empty());
    }
}
