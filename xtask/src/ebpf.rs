//! The eBPF toolchain — nightly with rust-src (for `-Z build-std=core`) and bpf-linker — checked and installed where missing.
//!
//! failover-ctl's build script only checks for these and says what to run; installing them is
//! this module's job, so a fresh machine needs nothing but `cargo xtask build-ebpf` or
//! `cargo xtask test`.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::command::{self, probe, run};

/// The toolchain failover-ctl's build script builds failover-ebpf with.
const TOOLCHAIN: &str = "nightly";
const LINKER: &str = "bpf-linker";
/// The bpf-linker version the project is built and tested with.
const LINKER_VERSION: &str = "0.10.4";
/// bpf-linker 0.10.4 drives the LLVM inside the Rust toolchain through LLVM 22's C API (its
/// default `rust-llvm-22` feature), so a nightly on another LLVM major cannot link with it.
const LINKER_LLVM_MAJOR: &str = "22";

/// Makes sure nightly, its rust-src component and bpf-linker 0.10.4 are installed, installing
/// whatever is missing. Every task that builds failover-ctl calls this first.
pub fn ensure_ebpf_toolchain() -> Result<()> {
    if nightly_rustc(&["--version"]).is_none() {
        eprintln!("xtask: the {TOOLCHAIN} toolchain is missing; installing it");
        run(rustup().args(["toolchain", "install", TOOLCHAIN, "--profile", "minimal"]))?;
    }
    let sysroot = nightly_rustc(&["--print", "sysroot"]).with_context(|| {
        format!(
            "`rustup run {TOOLCHAIN} rustc --print sysroot` failed after installing {TOOLCHAIN}"
        )
    })?;
    // `-Z build-std=core` compiles `core` from these sources.
    let core_sources =
        PathBuf::from(sysroot.trim()).join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core_sources.is_file() {
        eprintln!("xtask: rust-src is missing from {TOOLCHAIN}; installing it");
        run(rustup().args(["component", "add", "rust-src", "--toolchain", TOOLCHAIN]))?;
    }
    warn_on_llvm_mismatch();

    let installed = linker_version();
    if installed.as_deref() != Some(LINKER_VERSION) {
        install_linker(installed)?;
    }
    Ok(())
}

/// Installs bpf-linker LINKER_VERSION with cargo, replacing the `installed` version if any.
fn install_linker(installed: Option<String>) -> Result<()> {
    match installed {
        Some(version) => {
            eprintln!("xtask: {LINKER} {version} is installed; replacing it with {LINKER_VERSION}")
        }
        None => eprintln!(
            "xtask: {LINKER} is missing; installing {LINKER_VERSION} (this compiles it, which takes a few minutes)"
        ),
    }
    run(command::cargo()?.args(["install", LINKER, "--version", LINKER_VERSION, "--locked"]))?;
    match linker_version() {
        Some(version) if version == LINKER_VERSION => Ok(()),
        Some(version) => bail!(
            "installed {LINKER} {LINKER_VERSION}, but the {LINKER} first on PATH is still {version}; \
             remove that one or put cargo's bin directory (~/.cargo/bin) first on PATH"
        ),
        None => bail!(
            "installed {LINKER} {LINKER_VERSION}, but it is not on PATH; \
             add cargo's bin directory (~/.cargo/bin) to PATH"
        ),
    }
}

fn rustup() -> Command {
    let mut command = Command::new("rustup");
    // Only the commands above install anything; a probe must not start a download.
    command.env("RUSTUP_AUTO_INSTALL", "0");
    command
}

/// The output of nightly's rustc with `arguments`, or `None` when nightly is not installed.
fn nightly_rustc(arguments: &[&str]) -> Option<String> {
    probe(rustup().args(["run", TOOLCHAIN, "rustc"]).args(arguments))
}

/// The version bpf-linker reports (`bpf-linker 0.10.4`), or `None` when it is not on PATH.
fn linker_version() -> Option<String> {
    let text = probe(Command::new(LINKER).arg("--version"))?;
    text.split_whitespace().nth(1).map(str::to_owned)
}

/// Warns when nightly's LLVM is not the one bpf-linker was built for: the link would fail later
/// with an obscure error, so say why now.
fn warn_on_llvm_mismatch() {
    let Some(version) = nightly_rustc(&["--version", "--verbose"]) else {
        return;
    };
    let Some(llvm) = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
    else {
        return;
    };
    if llvm.split('.').next() != Some(LINKER_LLVM_MAJOR) {
        eprintln!(
            "xtask: warning: {TOOLCHAIN} uses LLVM {llvm}, but {LINKER} {LINKER_VERSION} needs LLVM {LINKER_LLVM_MAJOR}; \
             linking the eBPF programs will likely fail (use a {TOOLCHAIN} on LLVM {LINKER_LLVM_MAJOR}, or a {LINKER} built for LLVM {llvm})"
        );
    }
}
