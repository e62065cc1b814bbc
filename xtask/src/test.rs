//! `cargo xtask test`: the project's test command — installs what is missing, runs `cargo test --workspace` (xtask with its `bench` feature), and ends with how many tests skipped for want of root.
//!
//! Tests that need root skip without it (outside CI) through `netlab::prerequisite`, which
//! appends one line per skip to the file named by `FAILOVER_TEST_SKIP_LOG`; this task points it
//! at a fresh file and counts the lines, so a skip is never a silent pass.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use netlab::prerequisite::SKIP_LOG;

use crate::{
    command,
    prerequisites::{ensure, Task},
};

#[derive(clap::Args)]
pub struct Arguments {
    /// Passed on to `cargo test`, e.g. `cargo xtask test -- maglev -- --nocapture`.
    #[arg(last = true)]
    cargo_arguments: Vec<OsString>,
}

pub fn run(arguments: Arguments) -> Result<()> {
    ensure(Task::Test)?;
    let log = skip_log()?;
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(&log, b"").with_context(|| format!("creating {}", log.display()))?;
    let result = command::run(
        command::cargo()?
            // With the benchmark's feature, so its pure logic (BTF layouts, map comparison,
            // ratios and scaling, worktree cleanup) is tested too; the toolchain it needs is
            // installed by then.
            .args(["test", "--workspace", "--features", "xtask/bench"])
            .args(&arguments.cargo_arguments)
            .env(SKIP_LOG, &log),
    );
    let skipped = read_skips(&log)?;
    for line in &skipped {
        println!("  {line}");
    }
    println!("{}", closing_line(skipped.len()));
    result
}

/// `target/xtask/test-skips.log` (or under CARGO_TARGET_DIR), emptied at every run.
fn skip_log() -> Result<PathBuf> {
    Ok(command::target_dir()?.join("xtask").join("test-skips.log"))
}

fn read_skips(log: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(skip_lines(&text))
}

/// The non-empty lines of the skip log.
fn skip_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The last line of every run, also when nothing skipped.
fn closing_line(skipped: usize) -> String {
    format!("{skipped} tests skipped: not root")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_skip_line() {
        let text = "pinning-1a2b adopted: skipped: not root (loads BPF programs)\n\n\
                    daemon-3c4d weights: skipped: not root (namespaces, BPF)\n";
        assert_eq!(skip_lines(text).len(), 2);
        assert!(skip_lines("").is_empty());
        assert_eq!(closing_line(0), "0 tests skipped: not root");
        assert_eq!(closing_line(7), "7 tests skipped: not root");
    }
}
