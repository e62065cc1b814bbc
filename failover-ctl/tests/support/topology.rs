//! The bottom of the support module: addresses, probe timing, small helpers, and the
//! namespaces joined by veth pairs.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use failover_ctl::loader::Decap;
use netlab::{veth, Namespace};

/// The daemon binary under test.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_failover-ctl");

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 100, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
pub const LB: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 2);
pub const ROUTER_LB_SIDE: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 1);
/// Outer sources of the tunnel: a prefix no namespace owns (a router would drop a forwarded
/// packet whose source is one of its own addresses).
pub const TUNNEL_SOURCE: &str = "10.201.50.0/24";

/// Probe timing the tests use, and the margins derived from it.
pub const INTERVAL: Duration = Duration::from_millis(100);
pub const TIMEOUT: Duration = Duration::from_millis(80);
pub const RISE: u32 = 2;
pub const FALL: u32 = 2;
/// Slack for jitter, scheduling on 2 vCPUs and a map update.
pub const MARGIN: Duration = Duration::from_millis(500);

/// How long a client waits for a connect or an answer.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(2);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this test process.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// True when the test may create namespaces and load BPF programs, and the programs
/// [`Topology`] runs are installed; skips without root (fails in CI), see [`netlab::prerequisite`].
pub fn root() -> bool {
    use netlab::prerequisite::{require_program, root};
    root("namespaces, BPF")
        && require_program("ip", "iproute2")
        && require_program("sysctl", "procps")
        && require_program("ethtool", "ethtool")
}

/// The address of backend `index` (each backend has its own link to the router).
pub fn backend_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, 11 + index as u8, 2)
}

/// The name backend `index`'s server answers with.
pub fn backend_name(index: usize) -> String {
    format!("b{index}")
}

pub fn millis_now() -> u64 {
    failover_ctl::daemon::status::now_millis()
}

/// Polls `check` every 20 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops `child` with SIGTERM, then SIGKILL when it has not exited within `patience`; reaps it.
pub fn terminate(child: &mut std::process::Child, patience: Duration) {
    // SAFETY: signalling a child we own and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if wait_for(patience, || child.try_wait().ok().flatten()).is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Client, router, load balancer and backends, with decap programs on the backends and on the
/// router's side of the load-balancer link (XDP_TX on a veth needs NAPI on the peer, which an
/// attached XDP program provides).
pub struct Topology {
    /// Kept loaded for as long as the namespaces live.
    decaps: Vec<Decap>,
    pub client: Namespace,
    pub router: Namespace,
    pub lb: Namespace,
    pub backends: Vec<Namespace>,
}

impl Topology {
    pub fn new(backends: usize) -> Self {
        netlab::cleanup_stale().unwrap();
        let mut t = Self {
            decaps: Vec::new(),
            client: Namespace::create("client").unwrap(),
            router: Namespace::create("router").unwrap(),
            lb: Namespace::create("lb").unwrap(),
            backends: (0..backends)
                .map(|_| Namespace::create("backend").unwrap())
                .collect(),
        };
        veth(&t.client, "c0", &t.router, "r0").unwrap();
        veth(&t.lb, "l0", &t.router, "r1").unwrap();
        t.client.ip("addr add 10.201.1.2/24 dev c0").unwrap();
        t.client.ip("route add default via 10.201.1.1").unwrap();
        t.router.ip("addr add 10.201.1.1/24 dev r0").unwrap();
        t.router.ip("addr add 10.201.2.1/24 dev r1").unwrap();
        t.router
            .ip(&format!("route add {VIP}/32 via {LB}"))
            .unwrap();
        t.router
            .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .unwrap();
        t.lb.ip("addr add 10.201.2.2/24 dev l0").unwrap();
        t.lb.ip("route add default via 10.201.2.1").unwrap();
        for (index, backend) in t.backends.iter().enumerate() {
            let router_side = format!("r{}", index + 2);
            veth(backend, "b0", &t.router, &router_side).unwrap();
            let subnet = 11 + index;
            t.router
                .ip(&format!("addr add 10.201.{subnet}.1/24 dev {router_side}"))
                .unwrap();
            backend
                .ip(&format!("addr add 10.201.{subnet}.2/24 dev b0"))
                .unwrap();
            backend
                .ip(&format!("route add default via 10.201.{subnet}.1"))
                .unwrap();
            backend.ip(&format!("addr add {VIP}/32 dev lo")).unwrap();
        }
        let all: Vec<&Namespace> = [&t.client, &t.router, &t.lb]
            .into_iter()
            .chain(&t.backends)
            .collect();
        for ns in all {
            ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])
                .unwrap();
            ns.exec(&["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"])
                .unwrap();
        }
        // Veth hands partially checksummed packets to its peer; a packet that leaves through an
        // XDP_TX tunnel must carry a complete checksum.
        t.client
            .exec(&["ethtool", "-K", "c0", "tx", "off"])
            .unwrap();
        let mut napi = Decap::load().unwrap();
        t.router
            .enter(|| napi.attach("r1", XdpMode::Driver))
            .unwrap()
            .unwrap();
        t.decaps.push(napi);
        for backend in &t.backends {
            let mut decap = Decap::load().unwrap();
            decap.add_vip(IpAddr::V4(VIP)).unwrap();
            backend
                .enter(|| decap.attach("b0", XdpMode::Driver))
                .unwrap()
                .unwrap();
            t.decaps.push(decap);
        }
        t
    }

    /// A second VIP address beside [`VIP`], for a test whose two VIPs need the same port:
    /// routed to the load balancer, held on every backend's loopback and decapsulated there.
    pub fn add_vip(&mut self, address: Ipv4Addr) {
        self.router
            .ip(&format!("route add {address}/32 via {LB}"))
            .unwrap();
        // The first decap program is the router's NAPI one; the rest are the backends', in order.
        for (backend, decap) in self.backends.iter().zip(&mut self.decaps[1..]) {
            backend
                .ip(&format!("addr add {address}/32 dev lo"))
                .unwrap();
            decap.add_vip(IpAddr::V4(address)).unwrap();
        }
    }

    /// The router's MAC on the load-balancer link: the next hop of every tunnel packet.
    pub fn next_hop_mac(&self) -> String {
        self.router
            .mac("r1")
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The allowed deviation of a count from `n * p`: `sigmas` binomial standard deviations.
pub fn binomial_tolerance(n: usize, p: f64, sigmas: f64) -> f64 {
    sigmas * (n as f64 * p * (1.0 - p)).sqrt()
}
