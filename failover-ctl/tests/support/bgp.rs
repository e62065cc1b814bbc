//! The scale-out lab: a router namespace running BIRD 2 with ECMP over eBGP sessions to N
//! load-balancer namespaces, each running BIRD 2 configured like contrib/bird-announce.conf
//! (kernel table 100, protocol 201, learned into its own table, exported with `next hop self`),
//! and a client behind the router. Generated configurations live in a scratch directory; every
//! BIRD runs in the foreground under a guard that resumes, kills and reaps it, and the lab
//! deletes its namespaces and directory when dropped, also when a test panics.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use failover_ctl::loader::Decap;
use netlab::{
    bird::{enable_ecmp, next_hops, node_config, router_config, Bird, Timers},
    veth, Namespace,
};

use super::topology::{unique, wait_for};

/// The kernel table and route protocol number the announcements use (the controller's defaults).
pub const ANNOUNCE_TABLE: u32 = 100;
pub const ANNOUNCE_PROTOCOL: u8 = 201;
/// The VIP the BGP tests announce.
pub const BGP_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
/// BGP timers of every session: the router forgets a silent node after `HOLD`.
pub const HOLD: Duration = Timers::SHORT.hold;
pub const KEEPALIVE: Duration = Timers::SHORT.keepalive;

/// True when the test may create namespaces and the programs the lab runs are installed.
pub fn bgp_prerequisites() -> bool {
    use netlab::prerequisite::{require_program, root};
    root("namespaces, BIRD")
        && require_program("ip", "iproute2")
        && require_program("sysctl", "procps")
        && require_program("bird", "bird2")
        && require_program("birdc", "bird2")
        && require_program("ethtool", "ethtool")
}

/// The router's address on load balancer `index`'s link (`index` from 0).
pub fn router_side(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 202, 1 + index as u8, 1)
}

/// Load balancer `index`'s address on its link to the router: its BGP next hop.
pub fn lb_side(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 202, 1 + index as u8, 2)
}

/// Router, client and load balancers, with BIRD running on the router and every load balancer.
/// Field order is drop order: the BIRDs stop before their namespaces go.
pub struct BgpLab {
    pub router_bird: Bird,
    pub lb_birds: Vec<Bird>,
    /// Decap programs of the backends and the router's NAPI programs ([`BgpLab::serve`]).
    pub decaps: Vec<Decap>,
    /// Backend `i` is [`bgp_backend`]`(i)`, through the router's `rb{i}`.
    pub backends: Vec<Namespace>,
    pub router: Namespace,
    pub client: Namespace,
    /// Load balancer `i` reaches the router through its `l0` (as in [`super::Topology`]), the
    /// router it through `r{i+1}`.
    pub lbs: Vec<Namespace>,
    pub dir: Scratch,
}

impl BgpLab {
    /// Builds the namespaces, starts every BIRD and waits until every session is Established.
    pub fn new(lbs: usize) -> Self {
        netlab::cleanup_stale().unwrap();
        let dir = std::env::temp_dir().join(format!("failover-bgp-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let scratch = Scratch(dir);
        let dir = &scratch.0;
        let router = Namespace::create("bgprouter").unwrap();
        let client = Namespace::create("bgpclient").unwrap();
        let lb_namespaces: Vec<Namespace> = (0..lbs).map(|_| Namespace::create("bgplb").unwrap()).collect();
        veth(&client, "c0", &router, "r0").unwrap();
        client.ip("addr add 10.202.0.2/24 dev c0").unwrap();
        client.ip("route add default via 10.202.0.1").unwrap();
        router.ip("addr add 10.202.0.1/24 dev r0").unwrap();
        for (index, lb) in lb_namespaces.iter().enumerate() {
            let router_interface = format!("r{}", index + 1);
            veth(lb, "l0", &router, &router_interface).unwrap();
            router.ip(&format!("addr add {}/24 dev {router_interface}", router_side(index))).unwrap();
            lb.ip(&format!("addr add {}/24 dev l0", lb_side(index))).unwrap();
            lb.ip(&format!("route add default via {}", router_side(index))).unwrap();
        }
        // Hash on ports too: one client's flows spread over the next hops.
        enable_ecmp(&router).unwrap();
        let neighbors: Vec<(String, IpAddr)> = (0..lbs).map(|index| (format!("lb{index}"), lb_side(index).into())).collect();
        let router_bird = Bird::start(&router, dir, "router", &router_config("10.202.0.1", &neighbors, Timers::SHORT)).unwrap();
        let lb_birds = lb_namespaces
            .iter()
            .enumerate()
            .map(|(index, lb)| {
                let config = node_config(lb_side(index).into(), router_side(index).into(), ANNOUNCE_TABLE, ANNOUNCE_PROTOCOL, Timers::SHORT);
                Bird::start(lb, dir, &format!("lb{index}"), &config).unwrap()
            })
            .collect();
        let lab = Self { router_bird, lb_birds, decaps: Vec::new(), backends: Vec::new(), router, client, lbs: lb_namespaces, dir: scratch };
        let up = wait_for(Duration::from_secs(15), || {
            (0..lbs).all(|index| lab.router_bird.established(&format!("lb{index}"))).then_some(())
        });
        assert!(up.is_some(), "BGP sessions not Established within 15 s:\n{}", lab.router_bird.birdc("show protocols").unwrap_or_default());
        lab
    }

    /// Adds the blackhole route the controller would write for `vip` in load balancer `index`.
    pub fn announce(&self, index: usize, vip: Ipv4Addr) {
        self.lbs[index]
            .ip(&format!("route add blackhole {vip}/32 table {ANNOUNCE_TABLE} proto {ANNOUNCE_PROTOCOL}"))
            .unwrap();
    }

    /// Deletes that route.
    pub fn withdraw(&self, index: usize, vip: Ipv4Addr) {
        self.lbs[index]
            .ip(&format!("route del blackhole {vip}/32 table {ANNOUNCE_TABLE} proto {ANNOUNCE_PROTOCOL}"))
            .unwrap();
    }

    /// The gateways of the router's route to `prefix` (`a.b.c.d/len`), sorted; empty without one.
    pub fn router_next_hops(&self, prefix: &str) -> Vec<IpAddr> {
        next_hops(&self.router, prefix).unwrap()
    }

    /// Polls every 10 ms until the router's route to `prefix` has exactly `expected` next hops;
    /// the time it took. Panics after `limit`.
    pub fn wait_next_hops(&self, prefix: &str, expected: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let hops = self.router_next_hops(prefix);
            if hops.len() == expected {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "the router has {hops:?} for {prefix} after {limit:?}, expected {expected} next hops\n{}",
                self.router_bird.birdc("show route all").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A scratch directory removed when dropped: the lab's last field, so the BIRD guards have
/// printed their logs (on a panic) before it goes.
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

