//! Developer tasks for failover, run as `cargo xtask <task>`: check the host, build the eBPF objects, run the tests, run the benchmarks, run the live lab, fuzz the data plane, build a distribution directory.

mod bench;
mod bpf_abi;
mod build_ebpf;
mod command;
mod dist;
mod doctor;
mod fuzz;
mod lab;
mod prerequisites;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "Developer tasks for failover")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install nightly, rust-src and bpf-linker where missing, then build the eBPF objects
    /// (through failover-ctl's build script) and print where they are.
    BuildEbpf(build_ebpf::Arguments),
    /// Run the test suite (`cargo test --workspace`), installing what is missing first (packages,
    /// bpffs, the eBPF toolchain); reports how many tests skipped for want of root.
    Test(test::Arguments),
    /// Run the benchmarks, installing what is missing first.
    Bench(bench::Arguments),
    /// The live demo: the load balancer on real packets in private namespaces, with faults
    /// injected in turn (needs root; installs what is missing first). Fails when a check of
    /// what it demonstrates fails.
    Lab(lab::Arguments),
    /// Fuzz the XDP program: seeded frames (valid, mutated, random) through
    /// `BPF_PROG_TEST_RUN`, every output checked against the README's rules (needs root;
    /// installs what is missing first). Fails on any violation.
    Fuzz(fuzz::Arguments),
    /// Build failover-ctl in release and write what a package needs into target/dist/: the
    /// binary, its man pages, bash / zsh / fish completions and the systemd units (installs the
    /// eBPF toolchain where missing).
    Dist(dist::Arguments),
    /// List every prerequisite (packages, bpffs, kernel features, eBPF toolchain) as found or
    /// missing, with versions; fails when anything is missing. Installs nothing.
    Doctor,
}

fn main() -> ExitCode {
    let result = match Xtask::parse().task {
        Task::BuildEbpf(arguments) => build_ebpf::run(arguments),
        Task::Test(arguments) => test::run(arguments),
        Task::Bench(arguments) => bench::run(arguments),
        Task::Lab(arguments) => lab::run(arguments),
        Task::Fuzz(arguments) => fuzz::run(arguments),
        Task::Dist(arguments) => dist::run(arguments),
        Task::Doctor => doctor::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The message chain alone: returning the error from `main` would add a backtrace
            // whenever RUST_BACKTRACE is set, as it is in CI.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
