//! Everything the lab, the tests and the benchmark need from the host, in one list: Debian
//! packages, the bpffs mount, kernel features and the eBPF toolchain. `ensure` checks them all
//! and installs what is missing (or says in one message what to run); `survey` is what
//! `cargo xtask doctor` prints.

mod kernel;
mod report;
mod system;
mod toolchain;

use anyhow::{bail, Result};

use crate::command;

pub use report::Finding;
use report::{kernel_message, Blocker, Missing};
use system::Package;
pub use toolchain::ensure as ensure_ebpf_toolchain;

/// The Debian packages, one line each; a new tool the tests or the lab use is one more line.
const PACKAGES: &[Package] = &[
    Package {
        name: "iproute2",
        program: "ip",
        used_for: "namespaces, veth pairs, routes",
    },
    Package {
        name: "procps",
        program: "sysctl",
        used_for: "per-namespace sysctls",
    },
    Package {
        name: "ethtool",
        program: "ethtool",
        used_for: "checksum offload off on veth",
    },
    Package {
        name: "bpftool",
        program: "bpftool",
        used_for: "inspecting loaded programs and maps",
    },
    Package {
        name: "redis-server",
        program: "redis-server",
        used_for: "the Redis role-probe tests",
    },
    Package {
        name: "prometheus",
        program: "promtool",
        used_for: "checking the metrics, the alert rules and their unit tests",
    },
    Package {
        name: "groff-base",
        program: "groff",
        used_for: "checking the man pages cargo xtask dist writes",
    },
    Package {
        name: "keepalived",
        program: "keepalived",
        used_for: "the VRRP peer our elections are proven against",
    },
    Package {
        name: "bird2",
        program: "bird",
        used_for: "BGP announcements of VIPs (the LB nodes and the router of the scale-out tests)",
    },
    // Debian keeps the server's programs off PATH (/usr/lib/postgresql/VERSION/bin); its
    // cluster tools, installed with every server version, are on it.
    Package {
        name: "postgresql",
        program: "pg_ctlcluster",
        used_for: "the PostgreSQL failover test (initdb, pg_ctl, postgres, pg_basebackup from /usr/lib/postgresql/VERSION/bin)",
    },
];

/// The task about to run, which decides what may be missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Lab,
    Test,
    /// Ensured by the plain `cargo xtask bench`, before it re-runs itself with the feature on.
    #[cfg_attr(feature = "bench", allow(dead_code, reason = "the bench build is the re-run, past the check"))]
    Bench,
    Fuzz,
}

/// Every prerequisite and its state, in the order the doctor prints them. Never installs.
pub fn survey() -> Vec<Finding> {
    let root = is_root();
    let mut findings: Vec<Finding> = PACKAGES.iter().map(system::check_package).collect();
    findings.push(system::check_bpffs());
    if let Ok(target) = command::target_dir() {
        findings.push(system::check_disk(&target));
    }
    findings.extend(kernel::check(root));
    findings.extend(toolchain::check());
    findings
}

/// What is missing and how to get it, one line per group (installable by root, kernel,
/// toolchain), for the doctor's end.
pub fn missing_summary(findings: &[Finding]) -> Vec<String> {
    let mut lines = Vec::new();
    let missing = Missing::from_findings(findings);
    if !missing.is_empty() {
        lines.push(missing.message(Blocker::NotRoot));
    }
    lines.extend(kernel_message(findings));
    let toolchain: Vec<&str> = findings
        .iter()
        .filter(|finding| finding.kind == report::Kind::Toolchain && finding.is_missing())
        .map(|finding| finding.name.as_str())
        .collect();
    if !toolchain.is_empty() {
        lines.push(format!(
            "missing from the eBPF toolchain: {}; `cargo xtask build-ebpf` installs it (no root needed)",
            toolchain.join(", ")
        ));
    }
    lines
}

/// Makes the host ready for `task`: installs missing packages (`apt-get update` once, then one
/// `apt-get install`), mounts bpffs, checks the kernel's features, then installs the eBPF
/// toolchain where missing. Without root (or apt-get) it stops with one message naming what is
/// missing and the command that installs it; except the tests, which run without root when
/// every package is there (the tests that need root then skip, and are counted).
pub fn ensure(task: Task) -> Result<()> {
    let root = is_root();
    let packages: Vec<&Package> = PACKAGES
        .iter()
        .filter(|package| system::check_package(package).is_missing())
        .collect();
    let bpffs = system::check_bpffs();
    let missing = Missing {
        packages: packages
            .iter()
            .map(|package| package.name.to_owned())
            .collect(),
        bpffs: bpffs.is_missing(),
    };
    let tolerated = task == Task::Test && !root && missing.packages.is_empty();
    if !missing.is_empty() && !tolerated {
        if !root {
            bail!("{}", missing.message(Blocker::NotRoot));
        }
        if !packages.is_empty() && !system::has_apt_get() {
            bail!("{}", missing.message(Blocker::NoAptGet));
        }
        if !packages.is_empty() {
            system::install(&packages)?;
        }
        if missing.bpffs {
            system::mount_bpffs()?;
        }
    }
    // Not a refusal: a build already there needs little more. But a full disk shows up as an
    // LLVM or linker crash in the middle of the build, so say it first.
    let disk = system::check_disk(&command::target_dir()?);
    if disk.is_missing() {
        eprintln!("xtask: warning: {}", disk.line());
    }
    if let Some(message) = kernel_message(&kernel::check(root)) {
        bail!("{message}");
    }
    if !root {
        eprintln!(
            "xtask: not root: tests that need root skip and are counted at the end (with CI set they fail)"
        );
    }
    toolchain::ensure()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_package_names_a_program() {
        for package in PACKAGES {
            assert!(!package.name.is_empty() && !package.program.is_empty());
            assert!(
                !package.program.contains('/'),
                "{}: a name looked up on PATH",
                package.name
            );
        }
        let names: std::collections::BTreeSet<&str> =
            PACKAGES.iter().map(|package| package.name).collect();
        assert_eq!(names.len(), PACKAGES.len(), "a package is listed twice");
    }

    #[test]
    fn the_doctor_summary_names_each_group() {
        use report::{Kind, Status};
        let findings = [
            Finding::new(
                Kind::Package,
                "ethtool",
                Status::Missing("no ethtool".into()),
            ),
            Finding::new(Kind::Kernel, "BTF", Status::Missing("no vmlinux".into())),
            Finding::new(
                Kind::Toolchain,
                "bpf-linker",
                Status::Missing("not on PATH".into()),
            ),
            Finding::new(
                Kind::Toolchain,
                "nightly",
                Status::Found("rustc 1.97.0-nightly".into()),
            ),
        ];
        let lines = missing_summary(&findings);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("missing: ethtool (Debian package); as root run: "),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("the kernel lacks BTF"), "{lines:?}");
        assert!(
            lines[2].contains("bpf-linker") && !lines[2].contains("nightly"),
            "{lines:?}"
        );
        assert!(missing_summary(&findings[3..]).is_empty());
    }
}
