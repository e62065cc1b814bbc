//! What a check of the host found, and the text made from it: the doctor's lines, the one
//! message that names what is missing and the command that installs it. No host access here,
//! so all of it is tested on the host.

use std::fmt;

/// Where bpffs must be mounted: the daemon and the tests pin programs and maps under it.
pub const BPFFS: &str = "/sys/fs/bpf";

/// The command that mounts bpffs, for messages.
pub const MOUNT_BPFFS: &str = "mount -t bpf bpf /sys/fs/bpf";

/// What a build from scratch writes under target/: `cargo xtask lab` (release) and `cargo
/// xtask test` (debug, line tables only) measured 1.0 + 2.0 GB on a fresh clone; with room to
/// spare for the eBPF build and the tests' temporary files.
pub const BUILD_BYTES: u64 = 4 << 30;

/// The disk finding: enough room for a build from scratch, or how much there is.
pub fn disk_status(free_bytes: u64, directory: &str) -> Status {
    let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
    let text = format!("{:.1} GiB free under {directory}", gib(free_bytes));
    if free_bytes >= BUILD_BYTES {
        Status::Found(text)
    } else {
        Status::Missing(format!(
            "{text}; a build from scratch writes ~{:.0} GiB there (free some, or set CARGO_TARGET_DIR)",
            gib(BUILD_BYTES)
        ))
    }
}

/// What one prerequisite is, for grouping and for the doctor's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Debian package, proved by a program it installs.
    Package,
    /// A mounted file system.
    Mount,
    /// A kernel feature: cannot be installed, only reported.
    Kernel,
    /// The eBPF toolchain (nightly, rust-src, bpf-linker), installed without root.
    Toolchain,
    /// Free space where cargo builds: reported, never made.
    Disk,
}

impl fmt::Display for Kind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Kind::Package => "package",
            Kind::Mount => "mount",
            Kind::Kernel => "kernel",
            Kind::Toolchain => "toolchain",
            Kind::Disk => "disk",
        })
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Present; the text is its version or what proved it.
    Found(String),
    /// Absent; the text says what was looked for.
    Missing(String),
    /// Could not be checked (say, loading a BPF program without root); the text says why.
    Unchecked(String),
}

/// One prerequisite and what its check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    /// The package's or feature's name, as the messages name it.
    pub name: String,
    pub status: Status,
}

impl Finding {
    pub fn new(kind: Kind, name: impl Into<String>, status: Status) -> Self {
        Self {
            kind,
            name: name.into(),
            status,
        }
    }

    pub fn is_missing(&self) -> bool {
        matches!(self.status, Status::Missing(_))
    }

    /// The doctor's line: state, kind, name, then the version or the reason.
    pub fn line(&self) -> String {
        let (state, text) = match &self.status {
            Status::Found(text) => ("found", text),
            Status::Missing(text) => ("missing", text),
            Status::Unchecked(text) => ("unchecked", text),
        };
        format!(
            "{state:<9} {:<9} {:<14} {text}",
            self.kind.to_string(),
            self.name
        )
    }
}

/// What root could install: missing Debian packages and the bpffs mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missing {
    /// Debian package names, in the order of the prerequisite list.
    pub packages: Vec<String>,
    pub bpffs: bool,
}

/// Why xtask cannot install what is missing itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    NotRoot,
    /// Root, but no apt-get (not a Debian-like system).
    NoAptGet,
}

impl Missing {
    /// The installable part of `findings`: missing packages and an unmounted bpffs.
    pub fn from_findings(findings: &[Finding]) -> Self {
        let missing = |kind| {
            findings
                .iter()
                .filter(move |finding| finding.kind == kind && finding.is_missing())
        };
        Self {
            packages: missing(Kind::Package)
                .map(|finding| finding.name.clone())
                .collect(),
            bpffs: missing(Kind::Mount).next().is_some(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && !self.bpffs
    }

    /// `ethtool, redis-server (Debian packages), bpffs at /sys/fs/bpf`.
    pub fn list(&self) -> String {
        let mut parts = Vec::new();
        if !self.packages.is_empty() {
            let noun = if self.packages.len() == 1 {
                "Debian package"
            } else {
                "Debian packages"
            };
            parts.push(format!("{} ({noun})", self.packages.join(", ")));
        }
        if self.bpffs {
            parts.push(format!("bpffs at {BPFFS}"));
        }
        parts.join(", ")
    }

    /// The shell command that installs everything missing, as root on a Debian system.
    pub fn install_command(&self) -> String {
        let mut steps = Vec::new();
        if !self.packages.is_empty() {
            steps.push("apt-get update".to_owned());
            steps.push(format!("apt-get install -y {}", self.packages.join(" ")));
        }
        if self.bpffs {
            steps.push(MOUNT_BPFFS.to_owned());
        }
        steps.join(" && ")
    }

    /// The one message for a user whom `blocker` stops: what is missing, and how to get it.
    pub fn message(&self, blocker: Blocker) -> String {
        let list = self.list();
        match blocker {
            Blocker::NotRoot => format!(
                "missing: {list}; as root run: {} (cargo xtask lab, test and bench do it themselves as root)",
                self.install_command()
            ),
            Blocker::NoAptGet => {
                let mount = if self.bpffs { format!(", then {MOUNT_BPFFS}") } else { String::new() };
                format!(
                    "missing: {list}; apt-get is not available here: install the packages ({}) with this system's package manager{mount}",
                    self.packages.join(" ")
                )
            }
        }
    }
}

/// The error for kernel features that are missing (they cannot be installed).
pub fn kernel_message(findings: &[Finding]) -> Option<String> {
    let missing: Vec<String> = findings
        .iter()
        .filter(|finding| finding.kind == Kind::Kernel && finding.is_missing())
        .map(|finding| match &finding.status {
            Status::Missing(why) => format!("{} ({why})", finding.name),
            _ => finding.name.clone(),
        })
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "the kernel lacks {}; kernel features cannot be installed: use a kernel that has them",
        missing.join(", ")
    ))
}

/// Parses `dpkg-query -W -f='${Status}\t${Version}'`: the version when the package is
/// installed (status `install ok installed`), `None` otherwise (removed, config files only,
/// half-installed, unknown).
pub fn parse_dpkg_status(output: &str) -> Option<String> {
    let (status, version) = output.trim_end_matches('\n').split_once('\t')?;
    let mut words = status.split_whitespace();
    let (_want, _error, state) = (words.next()?, words.next()?, words.next()?);
    (state == "installed" && !version.is_empty()).then(|| version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, status: Status) -> Finding {
        Finding::new(Kind::Package, name, status)
    }

    fn survey() -> Vec<Finding> {
        vec![
            package("iproute2", Status::Found("6.1.0-3".into())),
            package("ethtool", Status::Missing("no ethtool on PATH".into())),
            package(
                "redis-server",
                Status::Missing("no redis-server on PATH".into()),
            ),
            Finding::new(Kind::Mount, "bpffs", Status::Missing("not mounted".into())),
            Finding::new(Kind::Kernel, "XDP", Status::Unchecked("needs root".into())),
            Finding::new(
                Kind::Toolchain,
                "bpf-linker",
                Status::Missing("not on PATH".into()),
            ),
        ]
    }

    #[test]
    fn collects_what_root_can_install() {
        let missing = Missing::from_findings(&survey());
        assert_eq!(missing.packages, ["ethtool", "redis-server"]);
        assert!(missing.bpffs);
        assert!(!missing.is_empty());
        let nothing = Missing::from_findings(&survey()[..1]);
        assert!(nothing.is_empty());
    }

    #[test]
    fn one_message_names_everything_and_the_command() {
        let missing = Missing::from_findings(&survey());
        assert_eq!(
            missing.message(Blocker::NotRoot),
            "missing: ethtool, redis-server (Debian packages), bpffs at /sys/fs/bpf; as root run: \
             apt-get update && apt-get install -y ethtool redis-server && mount -t bpf bpf /sys/fs/bpf \
             (cargo xtask lab, test and bench do it themselves as root)"
        );
        let only_mount = Missing {
            packages: Vec::new(),
            bpffs: true,
        };
        assert_eq!(only_mount.install_command(), "mount -t bpf bpf /sys/fs/bpf");
        assert_eq!(only_mount.list(), "bpffs at /sys/fs/bpf");
        let one = Missing {
            packages: vec!["ethtool".into()],
            bpffs: false,
        };
        assert_eq!(one.list(), "ethtool (Debian package)");
        assert_eq!(
            one.install_command(),
            "apt-get update && apt-get install -y ethtool"
        );
        let message = missing.message(Blocker::NoAptGet);
        assert!(message.contains("apt-get is not available"), "{message}");
        assert!(message.contains("(ethtool redis-server)"), "{message}");
        assert!(
            message.ends_with(", then mount -t bpf bpf /sys/fs/bpf"),
            "{message}"
        );
    }

    #[test]
    fn kernel_features_are_reported_not_installed() {
        assert_eq!(kernel_message(&survey()), None, "unchecked is not missing");
        let findings = [
            Finding::new(
                Kind::Kernel,
                "BTF",
                Status::Missing("no /sys/kernel/btf/vmlinux".into()),
            ),
            Finding::new(Kind::Kernel, "veth", Status::Found("created a pair".into())),
        ];
        assert_eq!(
            kernel_message(&findings).unwrap(),
            "the kernel lacks BTF (no /sys/kernel/btf/vmlinux); kernel features cannot be installed: use a kernel that has them"
        );
    }

    #[test]
    fn reads_dpkg_status() {
        assert_eq!(
            parse_dpkg_status("install ok installed\t1:6.1.0-3\n").as_deref(),
            Some("1:6.1.0-3")
        );
        assert_eq!(
            parse_dpkg_status("install ok installed\t5:7.0.15-1~deb12u1").as_deref(),
            Some("5:7.0.15-1~deb12u1")
        );
        assert_eq!(
            parse_dpkg_status("deinstall ok config-files\t1:6.1.0-3"),
            None
        );
        assert_eq!(parse_dpkg_status("install ok half-installed\t1.0"), None);
        assert_eq!(parse_dpkg_status("unknown ok not-installed\t"), None);
        assert_eq!(parse_dpkg_status(""), None);
        assert_eq!(parse_dpkg_status("garbage"), None);
    }

    #[test]
    fn doctor_lines_show_state_name_and_version() {
        let line = package("ethtool", Status::Found("1:6.1-1".into())).line();
        assert!(line.starts_with("found "), "{line}");
        assert!(
            line.contains("ethtool") && line.ends_with("1:6.1-1"),
            "{line}"
        );
        let line = survey()[4].line();
        assert!(line.starts_with("unchecked kernel"), "{line}");
    }

    #[test]
    fn disk_is_enough_from_the_build_size_on() {
        let directory = "/work/target";
        match disk_status(BUILD_BYTES, directory) {
            Status::Found(text) => assert_eq!(text, "4.0 GiB free under /work/target"),
            other => panic!("{other:?}"),
        }
        match disk_status((3 << 30) / 2, directory) {
            Status::Missing(text) => {
                assert!(text.starts_with("1.5 GiB free under /work/target; "), "{text}");
                assert!(text.contains("~4 GiB"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }
}
