//! The scale-out lab's network: a client and three backends behind a router, and up to three
//! load balancers, each on a link of its own to the router. Every address is private to these
//! namespaces.
//!
//! ```text
//!  client c0 ── r0 router (BIRD: eBGP to every load balancer, ECMP over their next hops)
//!  10.100.1.2      │ rl1, rl2, rl3 ── l0 lb1, lb2, lb3 (10.100.21.2, .22.2, .23.2; XDP, BIRD)
//!                  │ rb1, rb2, rb3 ── b0 backend1..3 (10.100.11.2, .12.2, .13.2; VIP on lo)
//! ```
//! The router learns the VIP from every load balancer that announces it and hashes each flow
//! (its 5-tuple, see `netlab::bird::enable_ecmp`) to one of them; that one encapsulates
//! (IPIP) to a backend through the router; the backend strips the tunnel and answers the client
//! directly (DSR).

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    process::Stdio,
};

use anyhow::{bail, Context as _, Result};
use netlab::{veth, Namespace};

use super::flows;
use crate::lab::topology::{
    backend_name, create_namespace, lb_name, link_backends, link_client,
    quiet_sysctls, BACKENDS, CLIENT,
    LB_INTERFACE, PORT, VIP,
};

/// Load balancers at the start; one more joins in the last phase.
pub const START_LBS: usize = 2;
pub const MAX_LBS: usize = 3;
/// The router's address on the client's link: its BGP router id.
pub const ROUTER_ID: &str = "10.100.1.1";
/// Every backend's subnet (10.100.11-13.0/24) and no other address of the lab.
pub const BACKEND_PREFIX: &str = "10.100.8.0/21";
/// Outer sources of the tunnel: a prefix no namespace owns (a router drops a forwarded packet
/// whose source is one of its own addresses).
pub const TUNNEL_SOURCE: &str = "10.100.250.0/24";

/// The router's address on load balancer `index`'s link.
pub fn router_side(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 21 + index as u8, 1)
}

/// Load balancer `index`'s address on its link: its BGP next hop.
pub fn lb_side(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 21 + index as u8, 2)
}

/// The router's interface towards load balancer `index`.
pub fn router_port(index: usize) -> String {
    format!("rl{}", index + 1)
}

/// Which load balancer a next hop is.
pub fn lb_of(address: IpAddr) -> Option<usize> {
    (0..MAX_LBS).find(|&index| IpAddr::V4(lb_side(index)) == address)
}

/// The router's prefix for the VIP.
pub fn vip_prefix() -> String {
    format!("{VIP}/32")
}

/// "lb1 lb2", or "none".
pub fn names(lbs: &[usize]) -> String {
    if lbs.is_empty() {
        return "none".into();
    }
    lbs.iter()
        .map(|&index| lb_name(index))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Client, router and backends; the load balancers' namespaces are added one by one.
pub struct Network {
    pub client: Namespace,
    pub router: Namespace,
    pub backends: Vec<Namespace>,
}

impl Network {
    /// Builds the namespaces, links, addresses and routes of run `pid` (no load balancer yet).
    pub fn build(pid: u32) -> Result<Self> {
        let create = |role: &str| create_namespace(role, pid);
        // One by one, so that a failure drops (deletes) the ones made so far.
        let client = create("client")?;
        let router = create("router")?;
        let mut backends = Vec::new();
        for index in 0..BACKENDS {
            backends.push(create(&backend_name(index))?);
        }
        let network = Self {
            client,
            router,
            backends,
        };
        network
            .configure()
            .context("configuring the scale-out network")?;
        Ok(network)
    }

    fn configure(&self) -> Result<()> {
        let Self {
            client,
            router,
            backends,
        } = self;
        for namespace in [client, router].into_iter().chain(backends) {
            quiet_sysctls(namespace)?;
        }
        // The local ports stop below the ports the bursts bind to.
        link_client(client, router, flows::BURST_PORTS.start() - 1)?;
        // Hash each packet's 5-tuple, so that one client's flows spread over the next hops and
        // each stays on its node (and `ip route get` says which).
        netlab::bird::enable_ecmp(router)?;
        link_backends(router, backends, |index| format!("rb{}", index + 1))?;
        Ok(())
    }

    /// Load balancer `index`'s namespace, linked to the router (`l0` to `rl<index+1>`), with a
    /// default route through it (its probes reach the backends there).
    pub fn add_lb(&self, pid: u32, index: usize) -> Result<Namespace> {
        let lb = create_namespace(&lb_name(index), pid)?;
        quiet_sysctls(&lb)?;
        let port = router_port(index);
        veth(&lb, LB_INTERFACE, &self.router, &port)?;
        self.router
            .ip(&format!("addr add {}/24 dev {port}", router_side(index)))?;
        lb.ip(&format!(
            "addr add {}/24 dev {LB_INTERFACE}",
            lb_side(index)
        ))?;
        lb.ip(&format!("route add default via {}", router_side(index)))?;
        Ok(lb)
    }

    /// The load balancers the router's route to the VIP leads to now, sorted.
    pub fn next_hops(&self) -> Result<Vec<usize>> {
        hops_of(&self.router)
    }

    /// The load balancer the router sends each of the client's flows `ports` to (TCP to
    /// `VIP:PORT`): `ip route get ... iif r0 ipproto tcp sport P dport 80`, the kernel's own
    /// multipath choice for such a packet, all in one `ip -batch`.
    pub fn ecmp(&self, ports: &[u16]) -> Result<BTreeMap<u16, usize>> {
        if ports.is_empty() {
            return Ok(BTreeMap::new());
        }
        let commands: String = ports
            .iter()
            .map(|port| {
                format!(
                    "route get {VIP} from {CLIENT} iif r0 ipproto tcp sport {port} dport {PORT}\n"
                )
            })
            .collect();
        let mut child = self
            .router
            .command("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting `ip -batch -` in the router")?;
        let mut stdin = child.stdin.take().context("no stdin pipe")?;
        // Small enough for the pipe; written before reading, then closed so that ip ends.
        let written = stdin.write_all(commands.as_bytes());
        drop(stdin);
        let output = child
            .wait_with_output()
            .context("waiting for `ip -batch -`")?;
        written.context("writing to `ip -batch -`")?;
        if !output.status.success() {
            bail!(
                "`ip route get` in the router failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let gateways = parse_route_get(&String::from_utf8_lossy(&output.stdout))?;
        if gateways.len() != ports.len() {
            bail!(
                "`ip route get` answered {} of {} lookups",
                gateways.len(),
                ports.len()
            );
        }
        ports
            .iter()
            .zip(gateways)
            .map(|(&port, gateway)| {
                let lb = lb_of(gateway).with_context(|| {
                    format!("the router sends port {port} to {gateway}, not a load balancer")
                })?;
                Ok((port, lb))
            })
            .collect()
    }

    /// Gives up the guards: the namespaces stay after this (removed by the run's cleanup, or
    /// kept with `--keep`).
    pub fn keep(self) -> Vec<String> {
        let Self {
            client,
            router,
            backends,
        } = self;
        [client, router]
            .into_iter()
            .chain(backends)
            .map(Namespace::keep)
            .collect()
    }
}

/// The load balancers `router`'s route to the VIP leads to, sorted.
pub fn hops_of(router: &Namespace) -> Result<Vec<usize>> {
    let hops = netlab::bird::next_hops(router, &vip_prefix())?;
    hops.into_iter()
        .map(|hop| lb_of(hop).with_context(|| format!("next hop {hop} is no load balancer")))
        .collect()
}

/// The gateway of each answer of `ip route get` (one line starting with the destination, then
/// indented lines), in order.
fn parse_route_get(text: &str) -> Result<Vec<IpAddr>> {
    text.lines()
        .filter(|line| !line.starts_with(char::is_whitespace) && !line.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            words
                .find(|&word| word == "via")
                .and_then(|_| words.next())
                .with_context(|| format!("no gateway in {line:?}"))?
                .parse()
                .with_context(|| format!("bad gateway in {line:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_router_answers() {
        let text = "10.100.0.10 from 10.100.1.2 via 10.100.21.2 dev rl1 \n    cache iif r0 \n\
                    10.100.0.10 from 10.100.1.2 via 10.100.22.2 dev rl2 \n    cache iif r0 \n";
        let gateways = parse_route_get(text).unwrap();
        assert_eq!(gateways, [IpAddr::V4(lb_side(0)), IpAddr::V4(lb_side(1))]);
        assert_eq!(
            gateways.iter().map(|&hop| lb_of(hop)).collect::<Vec<_>>(),
            [Some(0), Some(1)]
        );
        assert!(parse_route_get("10.100.0.10 dev r0 \n").is_err());
    }

    #[test]
    fn names_load_balancers_by_address() {
        assert_eq!(lb_of(IpAddr::V4(lb_side(2))), Some(2));
        assert_eq!(lb_of(IpAddr::V4(router_side(0))), None);
        assert_eq!(router_port(2), "rl3");
        assert_eq!(names(&[0, 2]), "lb1 lb3");
        assert_eq!(names(&[]), "none");
    }
}
