//! keepalived 2.2.7 (Debian's) as the other implementation on the election segment: a generated
//! VRRPv3 configuration, the process in a node namespace with its log in a file that can be read
//! while it runs, a real crash (SIGKILL of its VRRP process, no priority-0 goodbye) and the
//! complaints it logs about adverts it refused.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use netlab::Namespace;

use super::topology::{terminate, unique, wait_for};

/// One `vrrp_instance` of keepalived.
#[derive(Debug, Clone)]
pub struct KeepalivedSpec {
    pub interface: &'static str,
    pub vrid: u8,
    pub priority: u8,
    /// `nopreempt` (keepalived then requires `state BACKUP`).
    pub nopreempt: bool,
    /// `state MASTER` instead of `state BACKUP`.
    pub start_master: bool,
    /// `preempt_delay`, seconds (keepalived's unit).
    pub preempt_delay_s: f64,
    /// The VRRP addresses, in the order keepalived advertises them.
    pub addresses: Vec<IpAddr>,
    /// `unicast_src_ip` and `unicast_peer {}`; empty: multicast.
    pub unicast_source: Option<IpAddr>,
    pub unicast_peers: Vec<IpAddr>,
}

impl KeepalivedSpec {
    /// A multicast backup with the tests' 0.1 s interval.
    pub fn new(vrid: u8, priority: u8, addresses: Vec<IpAddr>) -> Self {
        Self {
            interface: "l0",
            vrid,
            priority,
            nopreempt: false,
            start_master: false,
            preempt_delay_s: 0.0,
            addresses,
            unicast_source: None,
            unicast_peers: Vec::new(),
        }
    }

    pub fn render(&self) -> String {
        let family_prefix = |address: &IpAddr| if address.is_ipv4() { 32 } else { 64 };
        let addresses: String = self.addresses.iter().map(|address| format!("    {address}/{}\n", family_prefix(address))).collect();
        let mut text = format!(
            "global_defs {{\n  router_id node{}\n  vrrp_version 3\n  vrrp_garp_master_delay 1\n  vrrp_garp_master_repeat 3\n}}\n\
             vrrp_instance test {{\n  state {}\n  interface {}\n  virtual_router_id {}\n  priority {}\n  advert_int 0.1\n",
            unique(),
            if self.start_master { "MASTER" } else { "BACKUP" },
            self.interface,
            self.vrid,
            self.priority,
        );
        if self.nopreempt {
            text.push_str("  nopreempt\n");
        }
        if self.preempt_delay_s > 0.0 {
            text.push_str(&format!("  preempt_delay {}\n", self.preempt_delay_s));
        }
        if let Some(source) = self.unicast_source {
            text.push_str(&format!("  unicast_src_ip {source}\n  unicast_peer {{\n"));
            for peer in &self.unicast_peers {
                text.push_str(&format!("    {peer}\n"));
            }
            text.push_str("  }\n");
        }
        text.push_str(&format!("  virtual_ipaddress {{\n{addresses}  }}\n}}\n"));
        text
    }
}

/// keepalived running in a namespace (`--dont-fork --dont-respawn`, so a killed VRRP process
/// stays dead). Dropping it kills both processes and removes its directory.
pub struct Keepalived {
    child: Option<Child>,
    dir: PathBuf,
    pub config: String,
}

impl Keepalived {
    pub fn start(namespace: &Namespace, spec: &KeepalivedSpec) -> Self {
        let dir = std::env::temp_dir().join(format!("failover-ka-{}-{}", namespace.name(), unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = spec.render();
        std::fs::write(dir.join("keepalived.conf"), &config).unwrap();
        let log = std::fs::File::create(dir.join("keepalived.log")).unwrap();
        let child = namespace
            .command("keepalived")
            .args(["--dont-fork", "--dont-respawn", "--log-console", "--log-detail", "--vrrp", "--use-file"])
            .arg(dir.join("keepalived.conf"))
            .arg("--pid")
            .arg(dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(dir.join("vrrp.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start keepalived");
        let keepalived = Self { child: Some(child), dir, config };
        let started = wait_for(Duration::from_secs(5), || keepalived.vrrp_pid());
        assert!(started.is_some(), "keepalived's VRRP process did not start:\n{}", keepalived.log());
        keepalived
    }

    /// The VRRP child's pid, once it wrote its pid file.
    fn vrrp_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir.join("vrrp.pid")).ok()?;
        text.trim().parse().ok()
    }

    /// Everything keepalived logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }

    /// How often keepalived logged entering `state` ("MASTER", "BACKUP", "FAULT").
    pub fn entered(&self, state: &str) -> usize {
        self.log().matches(&format!("Entering {state} STATE")).count()
    }

    /// Waits until keepalived has logged entering `state` `times` times.
    pub fn wait_entered(&self, state: &str, times: usize, limit: Duration) {
        let reached = wait_for(limit, || (self.entered(state) >= times).then_some(()));
        assert!(reached.is_some(), "keepalived did not enter {state} ({times}x) within {limit:?}:\n{}", self.log());
    }

    /// Lines in which keepalived refused or questioned a received advert.
    pub fn complaints(&self) -> Vec<String> {
        const WORDS: [&str; 12] =
            ["invalid", "bogus", "mismatch", "wrong", "checksum", "not present", "doesn't match", "does not match", "too short", "dropping", "bad ", "error"];
        self.log()
            .lines()
            .filter(|line| {
                let lower = line.to_lowercase();
                WORDS.iter().any(|word| lower.contains(word))
            })
            .map(str::to_owned)
            .collect()
    }

    /// A crash: SIGKILL of the VRRP process (no priority-0 advert), then of the parent.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.vrrp_pid() {
            // SAFETY: signalling keepalived's VRRP child, started by this test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A clean stop (SIGTERM: a master sends priority 0 and removes its addresses).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- keepalived config:\n{}\n--- keepalived log:\n{}", self.config, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
