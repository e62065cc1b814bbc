//! `cargo xtask test`: the project's test command — installs the eBPF toolchain where missing, then runs `cargo test --workspace`.

use std::ffi::OsString;

use anyhow::Result;

use crate::{command, ebpf::ensure_ebpf_toolchain};

#[derive(clap::Args)]
pub struct Arguments {
    /// Passed on to `cargo test`, e.g. `cargo xtask test -- maglev -- --nocapture`.
    #[arg(last = true)]
    cargo_arguments: Vec<OsString>,
}

pub fn run(arguments: Arguments) -> Result<()> {
    ensure_ebpf_toolchain()?;
    if !is_root() {
        eprintln!(
            "xtask: warning: not running as root; tests that load XDP programs or create network namespaces will skip themselves"
        );
    }
    command::run(
        command::cargo()?
            .args(["test", "--workspace"])
            .args(&arguments.cargo_arguments),
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
