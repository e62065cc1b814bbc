//! `cargo xtask doctor`: every prerequisite of the lab, the tests and the benchmark, found or
//! missing, with its version; fails when anything is missing. Never installs anything.

use anyhow::{bail, Result};

use crate::prerequisites;

pub fn run() -> Result<()> {
    let findings = prerequisites::survey();
    for finding in &findings {
        println!("{}", finding.line());
    }
    let missing = findings
        .iter()
        .filter(|finding| finding.is_missing())
        .count();
    if missing == 0 {
        println!("doctor: everything is there");
        return Ok(());
    }
    for line in prerequisites::missing_summary(&findings) {
        println!("{line}");
    }
    bail!("{missing} of {} prerequisites missing", findings.len())
}
