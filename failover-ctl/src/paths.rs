//! Where an instance keeps its pinned objects and its runtime files.
//!
//! Pinned (bpffs, survives the daemon): `/sys/fs/bpf/failover/<instance>/`
//! - `maps/<NAME>` for every map of the load-balancer object (names in `failover_common::maps::names`)
//! - `program`: the loaded `failover` program
//! - `link-<interface>`: the XDP link of each attached interface
//!
//! Runtime (tmpfs, written by the daemon, read by the CLI): `/run/failover/<instance>/`
//! - `control.sock`: the control socket (one JSON request per line, one JSON response per line)
//! - `state.json`: the daemon's last published view ([`crate::daemon::status::Status`])
//! - `events.jsonl`: the event log, one [`crate::daemon::status::Event`] per line
//!
//! Both roots can be moved with the environment variables `FAILOVER_BPF_ROOT` and
//! `FAILOVER_RUN_ROOT` (used by tests to stay out of the way of a real instance).

use std::path::PathBuf;

/// Default root of the pinned objects.
pub const BPF_ROOT: &str = "/sys/fs/bpf/failover";
/// Default root of the runtime files.
pub const RUN_ROOT: &str = "/run/failover";

fn root(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// The paths of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePaths {
    pub instance: String,
    /// `<bpf root>/<instance>`.
    pub pin_dir: PathBuf,
    /// `<run root>/<instance>`.
    pub run_dir: PathBuf,
}

impl InstancePaths {
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_string(),
            pin_dir: root("FAILOVER_BPF_ROOT", BPF_ROOT).join(instance),
            run_dir: root("FAILOVER_RUN_ROOT", RUN_ROOT).join(instance),
        }
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.pin_dir.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn program(&self) -> PathBuf {
        self.pin_dir.join("program")
    }

    pub fn link(&self, interface: &str) -> PathBuf {
        self.pin_dir.join(format!("link-{interface}"))
    }

    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join("control.sock")
    }

    pub fn state(&self) -> PathBuf {
        self.run_dir.join("state.json")
    }

    pub fn events(&self) -> PathBuf {
        self.run_dir.join("events.jsonl")
    }
}
