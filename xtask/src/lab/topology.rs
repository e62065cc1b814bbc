//! The lab's network: client, router, load balancer and three backends in private namespaces,
//! joined to the router by veth pairs. Every address is private to these namespaces.
//!
//! ```text
//!  client c0 ── r0 router r1 ── l0 lb (XDP failover)
//!  10.100.1.2       │ r2,r3,r4
//!                   └── b0 backend1..3 (10.100.11.2, .12.2, .13.2; VIP on lo; decap on b0)
//! ```
//! The router sends the VIP to the load balancer, which encapsulates (IPIP) to a backend through
//! the router; the backend strips the tunnel and answers the client directly (DSR).

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use netlab::{veth, Namespace};

/// The service under test: `VIP:PORT/tcp`.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
pub const PORT: u16 = 80;
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 2);
pub const LB: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 2);
/// The load balancer's interface, where the daemon attaches XDP.
pub const LB_INTERFACE: &str = "l0";
/// The router's side of the load balancer's link.
pub const ROUTER_LB_INTERFACE: &str = "r1";
/// Each backend's interface, where its decap program sits.
pub const BACKEND_INTERFACE: &str = "b0";
/// Outer source addresses of the tunnel (host bits vary per flow).
pub const TUNNEL_SOURCE: &str = "10.100.2.128/25";
/// XDP_TX on the load balancer's veth reaches the peer (the router's `r1`) only when the peer
/// runs NAPI, which an attached XDP program provides (GRO on does not, on Linux 6.18). The
/// router runs the decap program for this one address, which is nobody's: it strips nothing
/// and passes every packet.
pub const ROUTER_DECAP_PLACEHOLDER: Ipv4Addr = Ipv4Addr::new(10, 100, 255, 255);
pub const BACKENDS: usize = 3;

/// Backend `index` (0-based) is `backend<index+1>` at `10.100.<11+index>.2`.
pub fn backend_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 11 + index as u8, 2)
}

pub fn backend_name(index: usize) -> String {
    format!("backend{}", index + 1)
}

/// Lab namespaces are `folab-<role>-<pid>`: not netlab's `fo-` prefix, so that
/// `netlab::cleanup_stale` (run by every test) leaves a lab kept with `--keep` alone.
pub const NAMESPACE_PREFIX: &str = "folab";

pub fn namespace_name(role: &str, pid: u32) -> String {
    format!("{NAMESPACE_PREFIX}-{role}-{pid}")
}

/// The pid in a lab namespace's name, if it is one.
pub fn namespace_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAMESPACE_PREFIX)?.strip_prefix('-')?;
    rest.rsplit('-').next()?.parse().ok()
}

pub struct Topology {
    pub client: Namespace,
    pub router: Namespace,
    pub lb: Namespace,
    pub backends: Vec<Namespace>,
}

impl Topology {
    /// Builds the namespaces, links, addresses and routes of run `pid`.
    pub fn build(pid: u32) -> Result<Self> {
        let create = |role: &str| {
            Namespace::create_named(&namespace_name(role, pid))
                .with_context(|| format!("creating the {role} namespace"))
        };
        // Created one by one so that a failure drops (deletes) the ones made so far.
        let client = create("client")?;
        let router = create("router")?;
        let lb = create("lb")?;
        let mut backends = Vec::new();
        for index in 0..BACKENDS {
            backends.push(create(&backend_name(index))?);
        }
        let topology = Self {
            client,
            router,
            lb,
            backends,
        };
        topology
            .configure()
            .context("configuring the lab network")?;
        Ok(topology)
    }

    fn all(&self) -> impl Iterator<Item = &Namespace> {
        [&self.client, &self.router, &self.lb]
            .into_iter()
            .chain(&self.backends)
    }

    fn configure(&self) -> Result<()> {
        let Self {
            client,
            router,
            lb,
            backends,
        } = self;
        for namespace in self.all() {
            // IPv6 chatter (router solicitations, MLD) is noise here; the lab is IPv4.
            namespace.exec(&[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ])?;
        }
        veth(client, "c0", router, "r0")?;
        veth(lb, LB_INTERFACE, router, ROUTER_LB_INTERFACE)?;
        client.ip("addr add 10.100.1.2/24 dev c0")?;
        client.ip("route add default via 10.100.1.1")?;
        // The short requests open a connection each: reuse ports in TIME_WAIT, and use many.
        client.exec(&[
            "sysctl",
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65000",
        ])?;
        // Veth hands partially checksummed packets to its peer; a packet that the load
        // balancer sends on through an XDP_TX tunnel must carry a complete checksum.
        client.exec(&["ethtool", "-K", "c0", "tx", "off"])?;

        router.ip("addr add 10.100.1.1/24 dev r0")?;
        router.ip("addr add 10.100.2.1/24 dev r1")?;
        router.ip(&format!("route add {VIP}/32 via {LB}"))?;
        router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;

        lb.ip(&format!("addr add {LB}/24 dev {LB_INTERFACE}"))?;
        // Health probes reach the backends through the router.
        lb.ip("route add default via 10.100.2.1")?;

        for (index, backend) in backends.iter().enumerate() {
            let router_interface = format!("r{}", index + 2);
            veth(backend, BACKEND_INTERFACE, router, &router_interface)?;
            let subnet = 11 + index;
            router.ip(&format!(
                "addr add 10.100.{subnet}.1/24 dev {router_interface}"
            ))?;
            backend.ip(&format!(
                "addr add {}/24 dev {BACKEND_INTERFACE}",
                backend_address(index)
            ))?;
            backend.ip(&format!("route add default via 10.100.{subnet}.1"))?;
            // The decapsulated packet is addressed to the VIP: the backend must own it.
            backend.ip(&format!("addr add {VIP}/32 dev lo"))?;
        }
        Ok(())
    }

    /// Gives up the guards: the namespaces stay after this process (`--keep`).
    pub fn keep(self) -> Vec<String> {
        let Self {
            client,
            router,
            lb,
            backends,
        } = self;
        [client, router, lb]
            .into_iter()
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
        assert_eq!(namespace_pid("folab-lb-17"), Some(17));
        assert_eq!(namespace_pid("fo-lb-17-0"), None);
        assert_eq!(namespace_pid("folab-lb-x"), None);
    }
}
