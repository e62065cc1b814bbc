//! `cargo xtask dist`: what a package of failover needs, in one directory (`target/dist/` by
//! default): the release `failover-ctl`, its man pages, shell completions for bash, zsh and fish,
//! and the systemd units.
//!
//! The pages and completions come from the built binary itself (its hidden `man` subcommand and
//! `completions SHELL`): xtask must not depend on failover-ctl (see xtask/Cargo.toml), and what
//! the binary prints is by construction what it accepts.

use std::{
    fs,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use cargo_metadata::Message;

use crate::{
    command::{self, describe},
    prerequisites::ensure_ebpf_toolchain,
};

const PACKAGE: &str = "failover-ctl";
const BINARY: &str = "failover-ctl";
/// Where the systemd units are, relative to the workspace root.
const UNIT_DIRECTORY: &str = "contrib";
/// The systemd units: the controller, and the one its `OnFailure=` starts to withdraw the VIPs.
const UNITS: [&str; 2] = ["failover-ctl.service", "failover-ctl-flush.service"];
/// Shells and the file name each one's completion loader looks for.
const COMPLETIONS: [(&str, &str); 3] = [("bash", "failover-ctl.bash"), ("zsh", "_failover-ctl"), ("fish", "failover-ctl.fish")];

#[derive(clap::Args)]
pub struct Arguments {
    /// Where to write; default `dist/` in cargo's target directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Where each part goes inside the output directory (the layout of `/usr/share` and friends, so
/// a packager copies subtrees).
pub struct Layout {
    pub binary: PathBuf,
    pub man: PathBuf,
    pub completions: PathBuf,
    /// The directory of the systemd units.
    pub units: PathBuf,
}

impl Layout {
    pub fn new(out: &Path) -> Self {
        Self {
            binary: out.join("bin").join(BINARY),
            man: out.join("man").join("man1"),
            completions: out.join("completions"),
            units: out.join("systemd"),
        }
    }
}

pub fn run(arguments: Arguments) -> Result<()> {
    ensure_ebpf_toolchain()?;
    let root = command::workspace_root()?;
    let out = match arguments.out {
        Some(out) => out,
        None => command::target_dir()?.join("dist"),
    };
    let built = build_release()?;
    let layout = Layout::new(&out);
    // Only the parts this task writes are replaced, so pages of removed commands do not linger
    // and nothing else in a user-given directory is touched.
    for directory in [&layout.man, &layout.completions] {
        match fs::remove_dir_all(directory) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("clearing {}", directory.display()))
            }
            _ => {}
        }
    }
    for directory in [layout.binary.parent(), Some(layout.man.as_path()), Some(layout.completions.as_path()), Some(layout.units.as_path())]
        .into_iter()
        .flatten()
    {
        fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    }
    copy(&built, &layout.binary)?;
    command::run(Command::new(&layout.binary).arg("man").arg("--dir").arg(&layout.man))?;
    let pages = fs::read_dir(&layout.man).with_context(|| format!("reading {}", layout.man.display()))?.count();
    if pages == 0 {
        bail!("{BINARY} man wrote no page into {}", layout.man.display());
    }
    for (shell, name) in COMPLETIONS {
        let script = output(Command::new(&layout.binary).args(["completions", shell]))?;
        let path = layout.completions.join(name);
        fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    }
    for unit in UNITS {
        copy(&root.join(UNIT_DIRECTORY).join(unit), &layout.units.join(unit))?;
    }
    println!("{}:", out.display());
    println!("  {}", layout.binary.display());
    println!("  {} ({pages} pages)", layout.man.display());
    for (_, name) in COMPLETIONS {
        println!("  {}", layout.completions.join(name).display());
    }
    for unit in UNITS {
        println!("  {}", layout.units.join(unit).display());
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The standard output of a command that must succeed.
fn output(command: &mut Command) -> Result<Vec<u8>> {
    let text = describe(command);
    let result = command.stderr(Stdio::inherit()).output().with_context(|| format!("failed to start `{text}`"))?;
    if !result.status.success() {
        bail!("`{text}` failed ({})", result.status);
    }
    Ok(result.stdout)
}

/// Builds failover-ctl in release and returns the binary's path, from cargo's JSON messages.
fn build_release() -> Result<PathBuf> {
    let mut command = command::cargo()?;
    command.args(["build", "--release", "--package", PACKAGE, "--bin", BINARY, "--message-format=json-render-diagnostics"]);
    let text = describe(&command);
    eprintln!("$ {text}");
    let mut child = command.stdout(Stdio::piped()).spawn().with_context(|| format!("failed to start `{text}`"))?;
    let stdout = child.stdout.take().context("cargo's standard output was not captured")?;
    let mut binary = None;
    for message in Message::parse_stream(BufReader::new(stdout)) {
        let message = message.with_context(|| format!("failed to read the output of `{text}`"))?;
        if let Message::CompilerArtifact(artifact) = message {
            if artifact.target.name.as_str() == BINARY {
                if let Some(executable) = artifact.executable {
                    binary = Some(executable.into_std_path_buf());
                }
            }
        }
    }
    let status = child.wait().with_context(|| format!("failed to wait for `{text}`"))?;
    if !status.success() {
        bail!("`{text}` failed ({status})");
    }
    binary.with_context(|| format!("`{text}` reported no {BINARY} binary"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_follows_the_usr_share_tree() {
        let layout = Layout::new(Path::new("/tmp/dist"));
        assert_eq!(layout.binary, Path::new("/tmp/dist/bin/failover-ctl"));
        assert_eq!(layout.man, Path::new("/tmp/dist/man/man1"));
        assert_eq!(layout.completions, Path::new("/tmp/dist/completions"));
        assert_eq!(layout.units, Path::new("/tmp/dist/systemd"));
    }

    /// Every unit in contrib/ is shipped, so a new one cannot be forgotten, and every unit another
    /// one starts (`OnFailure=`) is among them.
    #[test]
    fn every_contributed_unit_is_shipped() {
        let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(UNIT_DIRECTORY);
        let mut found: Vec<String> = fs::read_dir(&contrib)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".service"))
            .collect();
        found.sort();
        let mut shipped = UNITS.map(str::to_owned).to_vec();
        shipped.sort();
        assert_eq!(found, shipped);
        for unit in UNITS {
            let text = fs::read_to_string(contrib.join(unit)).unwrap();
            for line in text.lines().filter_map(|line| line.strip_prefix("OnFailure=")) {
                for started in line.split_whitespace() {
                    assert!(UNITS.contains(&started), "{unit} starts {started}, which dist does not ship");
                }
            }
        }
    }
}
