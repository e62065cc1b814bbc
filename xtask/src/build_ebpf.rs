//! `cargo xtask build-ebpf`: installs the eBPF toolchain where missing, builds failover-ctl (whose build script compiles the eBPF programs) and prints where the objects are.

use std::{
    io::BufReader,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use cargo_metadata::{Message, MetadataCommand};

use crate::{
    command::{self, describe},
    prerequisites::ensure_ebpf_toolchain,
};

/// The package whose build script builds and embeds the eBPF objects.
const PACKAGE: &str = "failover-ctl";
/// The objects that build script leaves in its OUT_DIR.
const OBJECTS: [&str; 2] = ["failover", "failover-decap"];

#[derive(clap::Args)]
pub struct Arguments {
    /// Build failover-ctl with the release profile (the eBPF programs are always optimised).
    #[arg(long)]
    release: bool,
}

pub fn run(arguments: Arguments) -> Result<()> {
    ensure_ebpf_toolchain()?;

    let mut command = command::cargo()?;
    command.args([
        "build",
        "--package",
        PACKAGE,
        "--message-format=json-render-diagnostics",
    ]);
    if arguments.release {
        command.arg("--release");
    }
    let out_dir = build_script_out_dir(&mut command)?;

    println!("eBPF objects:");
    for object in OBJECTS {
        let path = out_dir.join(object);
        if !path.is_file() {
            bail!(
                "{PACKAGE}'s build script succeeded but left no {}",
                path.display()
            );
        }
        println!("  {}", path.display());
    }
    Ok(())
}

/// Runs the cargo build `command` and returns the OUT_DIR of failover-ctl's build script, read
/// from cargo's JSON messages (the directory name has a hash that only cargo knows).
fn build_script_out_dir(command: &mut Command) -> Result<PathBuf> {
    let package_id = package_id()?;
    let text = describe(command);
    eprintln!("$ {text}");
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start `{text}`"))?;
    let stdout = child
        .stdout
        .take()
        .context("cargo's standard output was not captured")?;

    let mut out_dir = None;
    for message in Message::parse_stream(BufReader::new(stdout)) {
        let message = message.with_context(|| format!("failed to read the output of `{text}`"))?;
        if let Message::BuildScriptExecuted(script) = message {
            if script.package_id == package_id {
                out_dir = Some(script.out_dir.into_std_path_buf());
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("failed to wait for `{text}`"))?;
    if !status.success() {
        bail!("`{text}` failed ({status})");
    }
    out_dir.with_context(|| format!("`{text}` did not report {PACKAGE}'s build script"))
}

/// failover-ctl's package id, as cargo's messages name it.
fn package_id() -> Result<cargo_metadata::PackageId> {
    let metadata = MetadataCommand::new()
        .cargo_path(command::cargo_program())
        .current_dir(command::workspace_root()?)
        .no_deps()
        .exec()
        .context("`cargo metadata` failed")?;
    metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == PACKAGE)
        .map(|package| package.id)
        .with_context(|| format!("the workspace has no package {PACKAGE}"))
}
