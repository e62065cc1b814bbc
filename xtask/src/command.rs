//! Running the programs xtask drives (cargo, rustup, bpf-linker), echoing each command first.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// The workspace root; xtask lives in its `xtask/` directory.
pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

/// cargo's target directory (CARGO_TARGET_DIR and configuration included), from `cargo
/// metadata`.
pub fn target_dir() -> Result<PathBuf> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .cargo_path(cargo_program())
        .current_dir(workspace_root()?)
        .no_deps()
        .exec()
        .context("`cargo metadata` failed")?;
    Ok(metadata.target_directory.into_std_path_buf())
}

/// The cargo that runs xtask (`cargo run` sets CARGO), so every task uses the caller's toolchain.
pub fn cargo_program() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// A cargo command started in the workspace root.
pub fn cargo() -> Result<Command> {
    let mut command = Command::new(cargo_program());
    command.current_dir(workspace_root()?);
    Ok(command)
}

/// Runs `command` with the terminal as its output; fails unless it exits successfully.
pub fn run(command: &mut Command) -> Result<()> {
    let text = describe(command);
    eprintln!("$ {text}");
    let status = command
        .status()
        .with_context(|| format!("failed to start `{text}`"))?;
    if !status.success() {
        bail!("`{text}` failed ({status})");
    }
    Ok(())
}

/// The standard output of `command`, or `None` when it cannot start or exits unsuccessfully: for
/// probing whether a tool is installed.
pub fn probe(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8(output.stdout).ok()
}

/// `command` as one would type it, for messages.
pub fn describe(command: &Command) -> String {
    let program = Path::new(command.get_program())
        .file_name()
        .unwrap_or(command.get_program())
        .to_string_lossy()
        .into_owned();
    command.get_args().fold(program, |mut text, argument| {
        text.push(' ');
        text.push_str(&argument.to_string_lossy());
        text
    })
}
