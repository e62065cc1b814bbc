//! A generated configuration and the guard around the `failover-ctl run` process: it stops the
//! daemon, tears its pins down and removes its files, also when a test panics.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use failover_ctl::{
    daemon::{
        events,
        status::{BackendStatus, Event, Status},
    },
    paths::InstancePaths,
};
use netlab::Namespace;

use super::{topology::*, traffic::UDP_PORT};

/// One backend line of a generated configuration.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub address: Ipv4Addr,
    pub weight: u16,
    pub tier: &'static str,
    /// The probe table, e.g. `{ kind = "http", path = "/" }`, without the timing keys.
    pub probe: String,
}

impl BackendSpec {
    pub fn http(index: usize) -> Self {
        Self {
            address: backend_address(index),
            weight: 1,
            tier: "primary",
            probe: "kind = \"http\", path = \"/\"".into(),
        }
    }
}

/// A generated configuration file for one VIP.
#[derive(Debug, Clone)]
pub struct ConfigSpec {
    pub instance: String,
    pub metrics_port: u16,
    pub next_hop_mac: String,
    pub vip_name: &'static str,
    pub vip_port: u16,
    pub backends: Vec<BackendSpec>,
}

impl ConfigSpec {
    pub fn render(&self) -> String {
        let mut text = config_head(&self.instance, self.metrics_port, &self.next_hop_mac);
        text.push_str(&format!(
            "\n[[vip]]\nname = \"{}\"\naddress = \"{VIP}\"\nport = {}\nprotocol = \"tcp\"\ntable_size = 65537\n",
            self.vip_name, self.vip_port,
        ));
        for backend in &self.backends {
            text.push_str(&format!(
                "\n[[vip.backend]]\naddress = \"{}\"\nweight = {}\ntier = \"{}\"\nprobe = {{ {} }}\n",
                backend.address, backend.weight, backend.tier, backend.probe
            ));
        }
        text
    }
}

impl ConfigSpec {
    /// [`ConfigSpec::render`] with announcing on: the routes in `table` with `protocol`, and
    /// `drain-node` waiting `grace`.
    pub fn render_announcing(&self, table: u32, protocol: u8, grace: Duration) -> String {
        format!(
            "{}\n[announce]\nenabled = true\ntable = {table}\nprotocol = {protocol}\nwithdraw_grace = \"{}ms\"\n",
            self.render(),
            grace.as_millis()
        )
    }
}

/// The top of every generated configuration: instance, the `l0` interface in native XDP mode,
/// metrics on loopback, the tunnel's next hop and source, and the tests' probe timing.
pub fn config_head(instance: &str, metrics_port: u16, next_hop_mac: &str) -> String {
    format!(
        "instance = \"{instance}\"\ninterfaces = [\"l0\"]\nxdp_mode = \"native\"\nmetrics_address = \"127.0.0.1:{metrics_port}\"\n\n\
         [next_hop]\nmac = \"{next_hop_mac}\"\n\n[tunnel]\nsource_v4 = \"{TUNNEL_SOURCE}\"\n\n[flows]\ncapacity = 4096\n\n\
         [probe_defaults]\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {RISE}\nfall = {FALL}\njitter = \"10%\"\n",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis(),
    )
}

/// The lab's two VIPs on one address, `web` (TCP 80) and `stream` (UDP [`UDP_PORT`]), each over
/// `backends` with HTTP probes on port 80.
pub fn web_and_stream_vips(backends: &[Ipv4Addr]) -> String {
    let mut text = String::new();
    for (name, port, protocol) in [("web", 80, "tcp"), ("stream", UDP_PORT, "udp")] {
        text.push_str(&format!("\n[[vip]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{protocol}\"\ntable_size = 65537\n"));
        for address in backends {
            text.push_str(&format!("\n[[vip.backend]]\naddress = \"{address}\"\nprobe = {{ kind = \"http\", path = \"/\", port = 80 }}\n"));
        }
    }
    text
}

/// The `failover-ctl run` process of one test, its configuration and runtime files. Dropping it
/// stops the daemon (SIGTERM, SIGKILL after 5 s), tears the instance down (detach, unpin) and
/// removes the run and scratch directories.
pub struct Daemon {
    pub instance: String,
    pub paths: InstancePaths,
    pub namespace: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    starts: u32,
}

/// Instance names of this suite: `dt-<pid>-<n>`.
const INSTANCE_PREFIX: &str = "dt-";

/// Tears down instances of this suite left by a crashed earlier run (their pid is gone).
fn cleanup_stale_instances() {
    let root = InstancePaths::new("x")
        .pin_dir
        .parent()
        .unwrap()
        .to_path_buf();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(INSTANCE_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            let _ = Command::new(DAEMON)
                .args(["--instance", &name, "teardown"])
                .output();
        }
    }
}

impl Daemon {
    /// A new instance name and scratch directory; writes `spec` (with that instance) and starts
    /// the daemon in `lb`.
    pub fn start(lb: &Namespace, spec: &mut ConfigSpec) -> Self {
        Self::start_with(lb, |instance| {
            spec.instance = instance.to_owned();
            spec.render()
        })
    }

    /// A new instance name and scratch directory; writes the configuration `render` makes for
    /// that instance name and starts the daemon in `lb`.
    pub fn start_with(lb: &Namespace, render: impl FnOnce(&str) -> String) -> Self {
        cleanup_stale_instances();
        let n = unique();
        let instance = format!("{INSTANCE_PREFIX}{}-{n}", std::process::id());
        let dir = daemon_dir(&instance);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("failover.toml");
        std::fs::write(&config, render(&instance)).unwrap();
        let mut daemon = Self {
            paths: InstancePaths::new(&instance),
            instance,
            namespace: lb.name().to_string(),
            dir,
            config,
            child: None,
            starts: 0,
        };
        daemon.spawn();
        daemon
    }

    /// Starts `failover-ctl run` and waits until its control socket answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("daemon-{}.log", self.starts))).unwrap();
        let child = Command::new(DAEMON)
            .args(["--netns", &self.namespace, "run", "--config"])
            .arg(&self.config)
            .env("FAILOVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.child = Some(child);
        let ready = wait_for(Duration::from_secs(20), || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the daemon exited with {status} while starting:\n{}",
                    self.logs()
                );
            }
            let status = self.status()?;
            (status.pid == pid && self.paths.control_socket().exists()).then_some(())
        });
        assert!(
            ready.is_some(),
            "the daemon did not start within 20 s:\n{}",
            self.logs()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL when the daemon has not stopped within 5 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }

    /// Every log the daemon wrote, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for start in 1..=self.starts {
            let path = self.dir.join(format!("daemon-{start}.log"));
            text.push_str(&format!("--- {}\n", path.display()));
            text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
        text
    }

    /// The last `state.json`, if readable.
    pub fn status(&self) -> Option<Status> {
        let bytes = std::fs::read(self.paths.state()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn events(&self) -> Vec<Event> {
        events::read(&self.paths.events()).unwrap()
    }

    /// The backend with this address in `state.json`.
    pub fn backend(&self, address: Ipv4Addr) -> Option<BackendStatus> {
        let status = self.status()?;
        status
            .vips
            .iter()
            .flat_map(|vip| &vip.backends)
            .find(|b| b.address == address.to_string())
            .cloned()
    }

    /// Waits until `state.json` says exactly `serving` (addresses) serve and returns how long it took.
    pub fn wait_serving(&self, serving: &[Ipv4Addr], limit: Duration) -> Duration {
        let start = Instant::now();
        let mut expected: Vec<String> = serving.iter().map(|a| a.to_string()).collect();
        expected.sort();
        let found = wait_for(limit, || {
            let status = self.status()?;
            let mut now: Vec<String> = status
                .vips
                .iter()
                .flat_map(|vip| &vip.backends)
                .filter(|b| b.serving)
                .map(|b| b.address.clone())
                .collect();
            now.sort();
            (now == expected).then_some(())
        });
        assert!(
            found.is_some(),
            "state.json did not show {expected:?} serving within {limit:?}: {:#?}\n{}",
            self.status().map(|s| s.vips),
            self.logs()
        );
        start.elapsed()
    }

    /// Runs `failover-ctl --instance <instance> <args>` (the control commands need no namespace).
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(DAEMON)
            .args(["--instance", &self.instance])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The id of the XDP program attached to `l0` in the load-balancer namespace.
    pub fn attached_program_id(&self) -> u64 {
        let output = Command::new("ip")
            .args(["-j", "-n", &self.namespace, "link", "show", "dev", "l0"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        fn find(value: &serde_json::Value) -> Option<u64> {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(id) = map
                        .get("prog")
                        .and_then(|p| p.get("id"))
                        .and_then(|id| id.as_u64())
                    {
                        return Some(id);
                    }
                    map.values().find_map(find)
                }
                serde_json::Value::Array(items) => items.iter().find_map(find),
                _ => None,
            }
        }
        find(&value).unwrap_or_else(|| panic!("no XDP program on l0: {value}"))
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

/// The directory of a test daemon's configuration, logs and files, removed with it.
pub fn daemon_dir(instance: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("failover-daemon-test-{instance}"))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let output = Command::new(DAEMON)
            .args(["--instance", &self.instance, "teardown"])
            .output();
        if let Ok(output) = output {
            if !output.status.success() {
                eprintln!(
                    "teardown of {}: {}",
                    self.instance,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.paths.run_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The failover events of `address` logged at or after `since` (ms since the epoch).
pub fn failovers(daemon: &Daemon, address: Ipv4Addr, to: &str, since: u64) -> Vec<Event> {
    daemon
        .events()
        .into_iter()
        .filter(|event| {
            event.kind == "failover"
                && event.at >= since
                && event.backend.as_deref() == Some(&address.to_string())
                && event
                    .timings
                    .as_ref()
                    .is_some_and(|timings| timings.to == to)
        })
        .collect()
}
