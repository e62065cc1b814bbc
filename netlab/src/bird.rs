//! BIRD 2 in namespaces, for the scale-out tests and `cargo xtask lab --scale-out`: the
//! configurations of an ECMP router and of a load-balancer node (the node's as
//! contrib/bird-announce.conf: kernel table learned by netlink, exported with `next hop self`),
//! a guard around one `bird -f` process (resumed, killed and reaped on drop), and the router's
//! next hops for a prefix read from its kernel table.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::Namespace;

/// The AS numbers of the router and of every load balancer (one AS for all nodes, eBGP to the
/// router).
pub const ROUTER_AS: u32 = 65000;
pub const NODE_AS: u32 = 65001;

/// BGP timers of every session: the router forgets a silent node after `hold`; a broken session
/// is retried within one to two seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub hold: Duration,
    pub keepalive: Duration,
}

impl Timers {
    /// The smallest the protocol allows besides 0: a test converges in seconds.
    pub const SHORT: Self = Self { hold: Duration::from_secs(3), keepalive: Duration::from_secs(1) };

    fn render(self) -> String {
        format!(
            "  hold time {};\n  keepalive time {};\n  connect retry time 1;\n  connect delay time 1;\n  error wait time 1, 2;\n",
            self.hold.as_secs(),
            self.keepalive.as_secs()
        )
    }
}

/// Makes `router` forward and spread flows over a multipath route by a hash of each packet's
/// 5-tuple read from its headers (`fib_multipath_hash_policy=3` with the five fields), as a router
/// does for a remote client. Policy 1 would take the hash the client's TCP socket left on the
/// packet, which crosses a veth pair intact (and which TCP changes after a retransmission
/// timeout): flows would hop between next hops, and `ip route get` could not tell where one goes.
pub fn enable_ecmp(router: &Namespace) -> Result<()> {
    router
        .exec(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.fib_multipath_hash_policy=3",
            "net.ipv4.fib_multipath_hash_fields=0x0037",
        ])
        .map(drop)
}

/// The router's BIRD: an eBGP session per neighbor (`(name, address)`), every best route with
/// equal attributes merged into one multipath kernel route (`merge paths on`).
pub fn router_config(router_id: &str, neighbors: &[(String, IpAddr)], timers: Timers) -> String {
    let mut text = format!(
        "router id {router_id};\nprotocol device {{ scan time 10; }}\n\
         protocol kernel {{\n  ipv4 {{ import none; export all; }};\n  merge paths on;\n}}\n\
         template bgp node {{\n  local as {ROUTER_AS};\n{}  ipv4 {{ import all; export none; }};\n}}\n",
        timers.render()
    );
    for (name, address) in neighbors {
        text.push_str(&format!("protocol bgp {name} from node {{ neighbor {address} as {NODE_AS}; }}\n"));
    }
    text
}

/// A load-balancer node's BIRD, as contrib/bird-announce.conf: learns the controller's routes
/// (protocol `protocol`) from kernel table `table` and exports them to `router` with
/// `next hop self`.
pub fn node_config(router_id: IpAddr, router: IpAddr, table: u32, protocol: u8, timers: Timers) -> String {
    format!(
        "router id {router_id};\nipv4 table announce4;\nprotocol device {{ scan time 10; }}\n\
         protocol kernel announce_kernel4 {{\n  kernel table {table};\n  learn;\n  scan time 10;\n\
         \x20 ipv4 {{ table announce4; import where krt_source = {protocol}; export none; }};\n}}\n\
         protocol bgp upstream {{\n  local as {NODE_AS};\n  neighbor {router} as {ROUTER_AS};\n{}\
         \x20 ipv4 {{ table announce4; import none; export where net.len = 32; next hop self; }};\n}}\n",
        timers.render()
    )
}

/// One `bird -f` process in a namespace, with its control socket and log in a directory the
/// caller owns.
pub struct Bird {
    pub name: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Child,
    stopped: bool,
}

impl Bird {
    /// Checks `config` with `bird -p`, then starts BIRD in the foreground in `namespace`.
    pub fn start(namespace: &Namespace, dir: &Path, name: &str, config: &str) -> Result<Self> {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let check = Command::new("bird").arg("-p").arg("-c").arg(&path).output().context("running bird -p (package bird2)")?;
        if !check.status.success() {
            bail!("bird -p {name}: {}\n{config}", String::from_utf8_lossy(&check.stderr).trim());
        }
        let socket = dir.join(format!("{name}.ctl"));
        let log = dir.join(format!("{name}.log"));
        let output = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = namespace
            .command("bird")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(&socket)
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting bird {name}"))?;
        Ok(Self { name: name.to_owned(), socket, log, child, stopped: false })
    }

    /// `birdc -s SOCKET <command>`'s output; `None` while the socket does not answer.
    pub fn birdc(&self, command: &str) -> Option<String> {
        let output = Command::new("birdc").arg("-s").arg(&self.socket).args(command.split_whitespace()).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Whether BGP session `protocol` is Established.
    pub fn established(&self, protocol: &str) -> bool {
        self.birdc(&format!("show protocols {protocol}")).is_some_and(|text| text.contains("Established"))
    }

    /// SIGSTOP: the host goes silent, its sessions are not closed.
    pub fn pause(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)?;
        self.stopped = true;
        Ok(())
    }

    /// SIGCONT after [`Bird::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)?;
        self.stopped = false;
        Ok(())
    }

    /// `ip netns exec` execs BIRD in place, so the child's pid is BIRD's.
    fn signal(&self, signal: i32) -> Result<()> {
        // SAFETY: a signal to our own child, which has not been reaped.
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            bail!("signal {signal} to bird {}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if self.stopped {
            let _ = self.signal(libc::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- bird {} ---\n{}", self.name, self.logs());
        }
    }
}

/// The gateways of `namespace`'s main-table route to `prefix` (`a.b.c.d/len`), sorted; empty
/// without one. Reads `ip route show exact`: `via A` for a single path, one `nexthop via A` line
/// per path of a multipath route.
pub fn next_hops(namespace: &Namespace, prefix: &str) -> Result<Vec<IpAddr>> {
    let output = namespace.exec(&["ip", "route", "show", "exact", prefix])?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut hops = Vec::new();
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word == "via" {
            let address = words.next().context("`via` without an address")?;
            // `via inet6 ADDRESS` for a gateway of the other family.
            let address = if address == "inet" || address == "inet6" { words.next().context("`via inet6` without an address")? } else { address };
            hops.push(address.parse().with_context(|| format!("next hop {address:?} in {text:?}"))?);
        }
    }
    hops.sort();
    Ok(hops)
}
