//! A private pinned instance for tests that build the data plane in-process: pin and runtime
//! roots of their own (the binary finds them through FAILOVER_BPF_ROOT / FAILOVER_RUN_ROOT),
//! removed on drop also when a test panics; and a state owner started on it as `run` would.
//!
//! Included with `#[path = "support/pinned.rs"] mod pinned;` by the test binaries that need no
//! namespaces (the rest of `support` builds networks).

#![allow(dead_code, reason = "each test binary uses a different part of this module")]

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
};

use failover_ctl::{
    config,
    daemon::{
        controller::{Controller, Links, Start},
        events::EventLog,
        status::Status,
    },
    loader::{self, Dataplane, LoadOptions},
    paths::InstancePaths,
};
use tokio::sync::mpsc;

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// Pin and runtime roots named `failover-<tag>-<pid>-<n>` holding instance `name`.
pub struct PinnedInstance {
    pub bpf_root: PathBuf,
    pub run_root: PathBuf,
    pub paths: InstancePaths,
}

impl PinnedInstance {
    pub fn new(tag: &str, name: &str) -> Self {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let root = format!("failover-{tag}-{}-{n}", std::process::id());
        let bpf_root = PathBuf::from("/sys/fs/bpf").join(&root);
        let run_root = std::env::temp_dir().join(&root);
        let paths = InstancePaths { instance: name.into(), pin_dir: bpf_root.join(name), run_dir: run_root.join(name) };
        std::fs::create_dir_all(&paths.run_dir).unwrap();
        Self { bpf_root, run_root, paths }
    }

    /// `failover-ctl --instance NAME` with this instance's roots.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_failover-ctl"));
        command
            .args(["--instance", &self.paths.instance])
            .env("FAILOVER_BPF_ROOT", &self.bpf_root)
            .env("FAILOVER_RUN_ROOT", &self.run_root)
            .env_remove("FAILOVER_LOG");
        command
    }

    /// The state owner of a daemon on a freshly pinned data plane, configured with `text`
    /// (written to the instance's run directory); no interface is attached. Its probe results
    /// go to `probe_sender`.
    pub fn start_controller(
        &self,
        text: &str,
        runtime: &tokio::runtime::Runtime,
        probe_sender: mpsc::Sender<failover_ctl::probe::ProbeEvent>,
    ) -> Controller {
        let config_path = self.paths.run_dir.join("failover.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = config::parse(text, "failover.toml").expect("the test configuration parses");
        let dataplane = Dataplane::create_pinned(&self.paths, LoadOptions { table_pool_slots: 1 << 16, flow_entries: 4096 })
            .expect("load and pin the data plane");
        let links = Box::new(|_: &mut Dataplane, _: &config::Config| {
            Ok(Links { interfaces: Vec::new(), interface_mac: [2, 0, 0, 0, 0, 1], next_hop_mac: [2, 0, 0, 0, 0, 2] })
        });
        Controller::start(Start {
            dataplane,
            config_path,
            config,
            links,
            adopted: false,
            events: EventLog::open(&self.paths.run_dir.join("events.jsonl")).unwrap(),
            state_path: self.paths.run_dir.join("state.json"),
            shared: Arc::new(Mutex::new(Status::default())),
            probe_sender,
            runtime: runtime.handle().clone(),
            previous: None,
            elections: None,
            announcing: None,
            flow_sync: None,
        })
        .expect("start the controller")
    }
}

impl Drop for PinnedInstance {
    fn drop(&mut self) {
        let _ = loader::teardown(&self.paths);
        let _ = std::fs::remove_dir(&self.bpf_root);
        let _ = std::fs::remove_dir_all(&self.run_root);
    }
}
