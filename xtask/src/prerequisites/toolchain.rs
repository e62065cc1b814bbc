//! The eBPF toolchain — nightly with rust-src (for `-Z build-std=core`) and bpf-linker — checked and installed where missing.
//!
//! failover-ctl's build script only checks for these and says what to run; installing them is
//! this module's job (no root needed), so a fresh machine needs nothing but `cargo xtask
//! build-ebpf` or `cargo xtask test`. `check` reports the same things for `cargo xtask doctor`.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use super::report::{Finding, Kind, Status};
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
pub fn ensure() -> Result<()> {
    if nightly_rustc(&["--version"]).is_none() {
        eprintln!("xtask: the {TOOLCHAIN} toolchain is missing; installing it");
        run(rustup().args(["toolchain", "install", TOOLCHAIN, "--profile", "minimal"]))?;
    }
    let core_sources = core_sources().with_context(|| {
        format!(
            "`rustup run {TOOLCHAIN} rustc --print sysroot` failed after installing {TOOLCHAIN}"
        )
    })?;
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

/// Nightly, rust-src, bpf-linker and nightly's LLVM as the doctor reports them; never installs.
pub fn check() -> Vec<Finding> {
    let finding = |name: &str, status| Finding::new(Kind::Toolchain, name, status);
    let Some(version) = nightly_rustc(&["--version"]) else {
        let missing = || Status::Missing(format!("no {TOOLCHAIN} toolchain (rustup)"));
        return vec![
            finding(TOOLCHAIN, missing()),
            finding("rust-src", missing()),
            finding(LINKER, linker_status()),
        ];
    };
    let rust_src = match core_sources() {
        Some(path) if path.is_file() => Status::Found(format!("in {TOOLCHAIN}'s sysroot")),
        _ => Status::Missing(format!(
            "rustup component add rust-src --toolchain {TOOLCHAIN}"
        )),
    };
    let mut findings = vec![
        finding(TOOLCHAIN, Status::Found(version.trim().to_owned())),
        finding("rust-src", rust_src),
        finding(LINKER, linker_status()),
    ];
    if let Some(llvm) = nightly_llvm() {
        let status = if llvm.split('.').next() == Some(LINKER_LLVM_MAJOR) {
            Status::Found(llvm)
        } else {
            Status::Missing(format!(
                "LLVM {llvm}, but {LINKER} {LINKER_VERSION} needs LLVM {LINKER_LLVM_MAJOR}"
            ))
        };
        findings.push(finding("nightly LLVM", status));
    }
    findings
}

fn linker_status() -> Status {
    match linker_version() {
        Some(version) if version == LINKER_VERSION => Status::Found(version),
        Some(version) => Status::Missing(format!("{version} on PATH, {LINKER_VERSION} needed")),
        None => Status::Missing(format!("not on PATH ({LINKER_VERSION} needed)")),
    }
}

/// Where nightly keeps `core`'s sources, which `-Z build-std=core` compiles; `None` without
/// nightly.
fn core_sources() -> Option<PathBuf> {
    let sysroot = nightly_rustc(&["--print", "sysroot"])?;
    Some(PathBuf::from(sysroot.trim()).join("lib/rustlib/src/rust/library/core/Cargo.toml"))
}

/// The LLVM version nightly's rustc was built with.
fn nightly_llvm() -> Option<String> {
    let version = nightly_rustc(&["--version", "--verbose"])?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .map(str::to_owned)
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
    let Some(llvm) = nightly_llvm() else {
        return;
    };
    if llvm.split('.').next() != Some(LINKER_LLVM_MAJOR) {
        eprintln!(
            "xtask: warning: {TOOLCHAIN} uses LLVM {llvm}, but {LINKER} {LINKER_VERSION} needs LLVM {LINKER_LLVM_MAJOR}; \
             linking the eBPF programs will likely fail (use a {TOOLCHAIN} on LLVM {LINKER_LLVM_MAJOR}, or a {LINKER} built for LLVM {llvm})"
        );
    }
}
