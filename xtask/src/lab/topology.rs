//! The lab's network: client, router, two load balancers and three backends in private
//! namespaces. The load balancers share one segment with the router (a bridge in the router's
//! namespace); every other link is a veth pair. Every address is private to these namespaces.
//!
//! ```text
//!  client c0 ── r0 router ── seg bridge 10.100.2.1 ─┬─ seg1 ── l0 lb1 10.100.2.2 (XDP failover)
//!  10.100.1.2       │                                └─ seg2 ── l0 lb2 10.100.2.3 (XDP failover)
//!                   │ r2,r3,r4         the master of VRRP group "edge" holds 10.100.2.100
//!                   └── b0 backend1..3 (10.100.11.2, .12.2, .13.2; VIP on lo; decap on b0)
//! ```
//! The router sends the VIP to the VRRP address 10.100.2.100, held by whichever load balancer
//! is master; that one encapsulates (IPIP) to a backend through the router; the backend strips
//! the tunnel and answers the client directly (DSR). Each load balancer's XDP program sits on a
//! veth of its own (native mode); the bridge ports on the router's side are veths too.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use netlab::{veth, Namespace};

/// The service under test: `VIP:PORT/tcp`.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
pub const PORT: u16 = 80;
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 2);
/// The load balancers: `lb1` (priority 150, the master while it is up) and `lb2`.
pub const LBS: usize = 2;
/// The router's address on the load balancers' segment.
pub const SEGMENT_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 1);
/// The VRRP address: the router's next hop for the VIP, held by the group's master.
pub const VRRP_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 100);
/// Each load balancer's interface on the segment, where its daemon attaches XDP.
pub const LB_INTERFACE: &str = "l0";
/// The segment: a bridge in the router's namespace, with a port per load balancer.
pub const SEGMENT_BRIDGE: &str = "seg";
/// The bridge's MAC, fixed so that the load balancers' configured next hop never goes stale
/// (a bridge without one takes its ports' lowest, which changes as ports come and go).
pub const SEGMENT_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x64, 0x02, 0x01];
/// Each backend's interface, where its decap program sits.
pub const BACKEND_INTERFACE: &str = "b0";
/// Outer source addresses of the tunnel (host bits vary per flow).
pub const TUNNEL_SOURCE: &str = "10.100.2.128/25";
/// XDP_TX on a load balancer's veth reaches the peer (the router's bridge port) only when the
/// peer runs NAPI, which an attached XDP program provides (GRO on does not, on Linux 6.18). The
/// router runs the decap program on each port for this one address, which is nobody's: it
/// strips nothing and passes every packet on to the bridge.
pub const ROUTER_DECAP_PLACEHOLDER: Ipv4Addr = Ipv4Addr::new(10, 100, 255, 255);
pub const BACKENDS: usize = 3;

/// Backend `index` (0-based) is `backend<index+1>` at `10.100.<11+index>.2`.
pub fn backend_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 11 + index as u8, 2)
}

pub fn backend_name(index: usize) -> String {
    format!("backend{}", index + 1)
}

/// Load balancer `index` (0-based) is `lb<index+1>` at `10.100.2.<2+index>`.
pub fn lb_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 2, 2 + index as u8)
}

pub fn lb_name(index: usize) -> String {
    format!("lb{}", index + 1)
}

/// The router's bridge port towards load balancer `index`.
pub fn segment_port(index: usize) -> String {
    format!("{SEGMENT_BRIDGE}{}", index + 1)
}

/// Which load balancer `address` is, if it is one.
pub fn lb_index(address: Ipv4Addr) -> Option<usize> {
    (0..LBS).find(|&index| lb_address(index) == address)
}

/// Lab namespaces are `folab-<role>-<pid>`: not netlab's `fo-` prefix, so that
/// `netlab::cleanup_stale` (run by every test) leaves a lab kept with `--keep` alone.
pub const NAMESPACE_PREFIX: &str = "folab";

pub fn namespace_name(role: &str, pid: u32) -> String {
    format!("{NAMESPACE_PREFIX}-{role}-{pid}")
}

/// The namespace of `role` in run `pid`, deleted when dropped.
pub fn create_namespace(role: &str, pid: u32) -> Result<Namespace> {
    Namespace::create_named(&namespace_name(role, pid)).with_context(|| format!("creating the {role} namespace"))
}

/// The sysctls every lab namespace gets: IPv6 chatter (router solicitations, MLD) off, the lab
/// is IPv4; no reverse-path filter (tunnelled packets come from a prefix nobody routes back).
pub fn quiet_sysctls(namespace: &Namespace) -> Result<()> {
    namespace
        .exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ])
        .map(drop)
}

/// The client's link to the router (`c0` - `r0`, 10.100.1.2 and 10.100.1.1), its default route,
/// and its sockets: the short requests open a connection each, so ports in TIME_WAIT are reused
/// and the local ports run from 1024 to `last_port`.
pub fn link_client(client: &Namespace, router: &Namespace, last_port: u16) -> Result<()> {
    veth(client, "c0", router, "r0")?;
    client.ip("addr add 10.100.1.2/24 dev c0")?;
    client.ip("route add default via 10.100.1.1")?;
    client.exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", &format!("net.ipv4.ip_local_port_range=1024 {last_port}")])?;
    // Veth hands partially checksummed packets to its peer; a packet that a load balancer
    // sends on through an XDP_TX tunnel must carry a complete checksum.
    client.exec(&["ethtool", "-K", "c0", "tx", "off"])?;
    router.ip("addr add 10.100.1.1/24 dev r0")
}

/// Backend `i`'s link to the router (its `b0` to the router's `router_interface(i)`, subnet
/// 10.100.(11+i).0/24), its default route, and the VIP on its lo: the decapsulated packet is
/// addressed to the VIP, so the backend must own it.
pub fn link_backends(router: &Namespace, backends: &[Namespace], router_interface: impl Fn(usize) -> String) -> Result<()> {
    for (index, backend) in backends.iter().enumerate() {
        let port = router_interface(index);
        veth(backend, BACKEND_INTERFACE, router, &port)?;
        let subnet = 11 + index;
        router.ip(&format!("addr add 10.100.{subnet}.1/24 dev {port}"))?;
        backend.ip(&format!("addr add {}/24 dev {BACKEND_INTERFACE}", backend_address(index)))?;
        backend.ip(&format!("route add default via 10.100.{subnet}.1"))?;
        backend.ip(&format!("addr add {VIP}/32 dev lo"))?;
    }
    Ok(())
}

/// The pid in a lab namespace's name, if it is one.
pub fn namespace_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAMESPACE_PREFIX)?.strip_prefix('-')?;
    rest.rsplit('-').next()?.parse().ok()
}

pub struct Topology {
    pub client: Namespace,
    pub router: Namespace,
    pub lbs: Vec<Namespace>,
    pub backends: Vec<Namespace>,
}

impl Topology {
    /// Builds the namespaces, links, addresses and routes of run `pid`.
    pub fn build(pid: u32) -> Result<Self> {
        let create = |role: &str| create_namespace(role, pid);
        // Created one by one so that a failure drops (deletes) the ones made so far.
        let client = create("client")?;
        let router = create("router")?;
        let mut lbs = Vec::new();
        for index in 0..LBS {
            lbs.push(create(&lb_name(index))?);
        }
        let mut backends = Vec::new();
        for index in 0..BACKENDS {
            backends.push(create(&backend_name(index))?);
        }
        let topology = Self {
            client,
            router,
            lbs,
            backends,
        };
        topology
            .configure()
            .context("configuring the lab network")?;
        Ok(topology)
    }

    fn all(&self) -> impl Iterator<Item = &Namespace> {
        [&self.client, &self.router]
            .into_iter()
            .chain(&self.lbs)
            .chain(&self.backends)
    }

    fn configure(&self) -> Result<()> {
        let Self {
            client,
            router,
            lbs,
            backends,
        } = self;
        for namespace in self.all() {
            quiet_sysctls(namespace)?;
        }
        link_client(client, router, 65000)?;
        let mac = SEGMENT_MAC.map(|byte| format!("{byte:02x}")).join(":");
        // No STP and no forwarding delay: a port forwards as soon as its link is up, so a load
        // balancer that comes back is heard at once.
        router.ip(&format!(
            "link add {SEGMENT_BRIDGE} address {mac} type bridge stp_state 0 forward_delay 0"
        ))?;
        router.ip(&format!("link set {SEGMENT_BRIDGE} up"))?;
        router.ip(&format!(
            "addr add {SEGMENT_ROUTER}/24 dev {SEGMENT_BRIDGE}"
        ))?;
        for (index, lb) in lbs.iter().enumerate() {
            let port = segment_port(index);
            veth(lb, LB_INTERFACE, router, &port)?;
            router.ip(&format!("link set {port} master {SEGMENT_BRIDGE}"))?;
            lb.ip(&format!(
                "addr add {}/24 dev {LB_INTERFACE}",
                lb_address(index)
            ))?;
            // Health probes reach the backends through the router.
            lb.ip(&format!("route add default via {SEGMENT_ROUTER}"))?;
        }
        router.ip(&format!("route add {VIP}/32 via {VRRP_ADDRESS}"))?;
        router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;

        link_backends(router, backends, |index| format!("r{}", index + 2))?;
        Ok(())
    }

    /// Takes load balancer `lb`'s link down or up, in its namespace: a node failure that
    /// neither its daemon nor its XDP program can help. The kernel drops the routes through a
    /// link that goes down; coming up restores the default route as a node's network
    /// configuration would, so that its probes reach the backends again.
    pub fn set_link(&self, lb: usize, up: bool) -> Result<()> {
        let namespace = &self.lbs[lb];
        let state = if up { "up" } else { "down" };
        namespace.ip(&format!("link set {LB_INTERFACE} {state}"))?;
        if up {
            namespace.ip(&format!("route replace default via {SEGMENT_ROUTER}"))?;
        }
        Ok(())
    }

    /// Gives up the guards: the namespaces stay after this process (`--keep`).
    pub fn keep(self) -> Vec<String> {
        let Self {
            client,
            router,
            lbs,
            backends,
        } = self;
        [client, router]
            .into_iter()
            .chain(lbs)
            .chain(backends)
            .map(Namespace::keep)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_pid() {
        assert_eq!(namespace_pid(&namespace_name("backend2", 4242)), Some(4242));
        assert_eq!(namespace_pid("folab-lb2-17"), Some(17));
        assert_eq!(namespace_pid("fo-lb-17-0"), None);
        assert_eq!(namespace_pid("folab-lb-x"), None);
    }

    #[test]
    fn load_balancers_are_known_by_address() {
        assert_eq!(lb_index(lb_address(1)), Some(1));
        assert_eq!(lb_index(VRRP_ADDRESS), None);
        assert_eq!(segment_port(0), "seg1");
        assert_eq!(lb_name(1), "lb2");
    }
}
