//! The election lab: two load-balancer nodes, a router and an observer on one segment (a bridge
//! in its own namespace), a client behind the router and backends behind it too. The router
//! routes the VIP to the VRRP address; whichever node holds it (and announced it) gets the
//! traffic. Either node runs our daemon or keepalived; the segment can cut a node's link (its
//! switch port goes down) or isolate the two nodes from each other (split brain) while both
//! still reach the router and the observer.
//!
//! Addresses: segment 10.201.2.0/24 (router .1, nodes .2 and .3, observer .9, VRRP address
//! .100; link-locals fe80::1, ::2, ::3, ::9), client 10.201.1.2, backends 10.201.11+i.2.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::programs::XdpMode;
use failover_ctl::{daemon::status::ElectionStatus, loader::Decap};
use netlab::{veth, Namespace};

use super::{
    daemon::{config_head, web_and_stream_vips, Daemon},
    http::{Connection, HttpServer},
    keepalived::{Keepalived, KeepalivedSpec},
    topology::*,
    traffic::Sinks,
    wire::{Injector, Observer},
};

/// The VRRP address the router routes the VIP to.
pub const VRRP_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 100);
/// The IPv6 group's addresses: link-local first, as VRRPv3 over IPv6 wants (RFC 9568 §7.4).
pub const VRRP_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x100);
pub const VRRP_GLOBAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x100);
pub const OBSERVER: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 9);
/// The tests' advert interval.
pub const ADVERT_INTERVAL: Duration = Duration::from_millis(100);
/// How many backends every lab has.
pub const BACKENDS: usize = 3;

/// Node `index`'s address on the segment (0: 10.201.2.2, 1: 10.201.2.3).
pub fn node_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, 2, 2 + index as u8)
}

/// Node `index`'s link-local address (fe80::2, fe80::3).
pub fn node_link_local(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2 + index as u16)
}

/// Skew_Time at the tests' interval: (256 - priority) x interval / 256 (RFC 9568 §6.1).
pub fn skew(priority: u8) -> Duration {
    Duration::from_micros((256 - u64::from(priority)) * ADVERT_INTERVAL.as_micros() as u64 / 256)
}

/// Master_Down_Interval at the tests' interval: 3 x interval + skew.
pub fn master_down_interval(priority: u8) -> Duration {
    3 * ADVERT_INTERVAL + skew(priority)
}

/// `aa:bb:..` for a MAC.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":")
}

/// The namespaces, links and decap programs of one lab.
pub struct Segment {
    /// Kept loaded for as long as the namespaces live.
    decaps: Vec<Decap>,
    pub client: Namespace,
    pub router: Namespace,
    /// The bridge `br0` with ports p0 (router), p1 and p2 (nodes), p3 (observer).
    pub switch: Namespace,
    pub nodes: [Namespace; 2],
    pub observer: Namespace,
    pub backends: Vec<Namespace>,
}

impl Segment {
    pub fn new() -> Self {
        netlab::cleanup_stale().unwrap();
        let mut segment = Self {
            decaps: Vec::new(),
            client: Namespace::create("client").unwrap(),
            router: Namespace::create("router").unwrap(),
            switch: Namespace::create("switch").unwrap(),
            nodes: [Namespace::create("node").unwrap(), Namespace::create("node").unwrap()],
            observer: Namespace::create("observer").unwrap(),
            backends: (0..BACKENDS).map(|_| Namespace::create("backend").unwrap()).collect(),
        };
        let everyone: Vec<&Namespace> =
            [&segment.client, &segment.router, &segment.switch, &segment.observer].into_iter().chain(&segment.nodes).chain(&segment.backends).collect();
        for namespace in everyone {
            // Fixed link-local addresses only (no generated ones racing DAD), kept across a
            // link flap; no reverse-path filter in the way of tunnels and direct return.
            for setting in [
                "net.ipv6.conf.all.addr_gen_mode=1",
                "net.ipv6.conf.default.addr_gen_mode=1",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.keep_addr_on_down=1",
                "net.ipv6.conf.default.keep_addr_on_down=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ] {
                namespace.exec(&["sysctl", "-qw", setting]).unwrap();
            }
        }
        let switch = &segment.switch;
        switch.ip("link add br0 type bridge mcast_snooping 0").unwrap();
        switch.ip("link set br0 up").unwrap();
        veth(&segment.router, "r1", switch, "p0").unwrap();
        veth(&segment.nodes[0], "l0", switch, "p1").unwrap();
        veth(&segment.nodes[1], "l0", switch, "p2").unwrap();
        veth(&segment.observer, "o0", switch, "p3").unwrap();
        for port in ["p0", "p1", "p2", "p3"] {
            switch.ip(&format!("link set {port} master br0")).unwrap();
        }
        let router = &segment.router;
        veth(&segment.client, "c0", router, "r0").unwrap();
        segment.client.ip("addr add 10.201.1.2/24 dev c0").unwrap();
        segment.client.ip("route add default via 10.201.1.1").unwrap();
        router.ip("addr add 10.201.1.1/24 dev r0").unwrap();
        router.ip("addr add 10.201.2.1/24 dev r1").unwrap();
        router.ip("addr add fe80::1/64 dev r1 nodad").unwrap();
        router.ip(&format!("route add {VIP}/32 via {VRRP_ADDRESS}")).unwrap();
        router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
        for (index, node) in segment.nodes.iter().enumerate() {
            node.ip(&format!("addr add {}/24 dev l0", node_address(index))).unwrap();
            node.ip(&format!("addr add {}/64 dev l0 nodad", node_link_local(index))).unwrap();
            node.ip("route add default via 10.201.2.1").unwrap();
        }
        segment.observer.ip(&format!("addr add {OBSERVER}/24 dev o0")).unwrap();
        segment.observer.ip("addr add fe80::9/64 dev o0 nodad").unwrap();
        for (index, backend) in segment.backends.iter().enumerate() {
            let router_side = format!("r{}", index + 2);
            veth(backend, "b0", router, &router_side).unwrap();
            let subnet = 11 + index;
            router.ip(&format!("addr add 10.201.{subnet}.1/24 dev {router_side}")).unwrap();
            backend.ip(&format!("addr add 10.201.{subnet}.2/24 dev b0")).unwrap();
            backend.ip(&format!("route add default via 10.201.{subnet}.1")).unwrap();
            backend.ip(&format!("addr add {VIP}/32 dev lo")).unwrap();
        }
        // Veth hands partially checksummed packets to its peer; a packet that leaves through an
        // XDP_TX tunnel must carry a complete checksum.
        segment.client.exec(&["ethtool", "-K", "c0", "tx", "off"]).unwrap();
        // XDP_TX on a node's l0 needs NAPI on its peer, which an attached program provides (the
        // decap program without VIPs passes everything on to the bridge).
        for port in ["p1", "p2"] {
            let mut napi = Decap::load().unwrap();
            segment.switch.enter(|| napi.attach(port, XdpMode::Driver)).unwrap().unwrap();
            segment.decaps.push(napi);
        }
        for backend in &segment.backends {
            let mut decap = Decap::load().unwrap();
            decap.add_vip(IpAddr::V4(VIP)).unwrap();
            backend.enter(|| decap.attach("b0", XdpMode::Driver)).unwrap().unwrap();
            segment.decaps.push(decap);
        }
        segment
    }

    /// The switch port of node `index`.
    fn port(index: usize) -> &'static str {
        ["p1", "p2"][index]
    }

    /// Node `index`'s link goes down (its switch port: the node sees its carrier go) or up.
    pub fn set_link(&self, index: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.switch.ip(&format!("link set {} {state}", Self::port(index))).unwrap();
    }

    /// Isolates the two nodes from each other (bridge port isolation: each still reaches the
    /// router and the observer), or heals the partition.
    pub fn partition(&self, isolated: bool) {
        let state = if isolated { "on" } else { "off" };
        for index in 0..2 {
            self.switch.exec(&["bridge", "link", "set", "dev", Self::port(index), "isolated", state]).unwrap();
        }
    }

    pub fn node_mac(&self, index: usize) -> String {
        mac_text(self.nodes[index].mac("l0").unwrap())
    }

    /// The router's MAC on the segment: the next hop of every tunnel packet.
    pub fn router_mac(&self) -> String {
        mac_text(self.router.mac("r1").unwrap())
    }

    /// The MAC the router's neighbour table holds for the VRRP address (`ip neigh show`).
    pub fn router_neighbour(&self) -> Option<String> {
        let output = self.router.exec(&["ip", "-4", "neigh", "show", "to", &VRRP_ADDRESS.to_string(), "dev", "r1"]).unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut words = text.split_whitespace();
        words.find(|word| *word == "lladdr").and(words.next()).map(str::to_owned)
    }
}

/// Our `[[election]]` group as a test configures it.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub vrid: u8,
    pub priority: u8,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub addresses: Vec<IpAddr>,
    pub unicast_peers: Vec<IpAddr>,
    /// Whether the group carries the lab's VIPs (an IPv6 group carries none).
    pub carries_vips: bool,
    /// `[flow_sync]` between the two nodes (port [`FLOW_SYNC_PORT`]) at this interval.
    pub flow_sync: Option<Duration>,
}

/// The UDP port of `[flow_sync]` on both nodes.
pub const FLOW_SYNC_PORT: u16 = 7946;

impl GroupSpec {
    /// The IPv4 group of the lab: VRID 51, the VRRP address, both VIPs, preempt after `delay`.
    pub fn v4(priority: u8, delay: Duration) -> Self {
        Self {
            vrid: 51,
            priority,
            preempt: true,
            preempt_delay: delay,
            addresses: vec![IpAddr::V4(VRRP_ADDRESS)],
            unicast_peers: Vec::new(),
            carries_vips: true,
            flow_sync: None,
        }
    }

    /// keepalived's side of the same group.
    pub fn keepalived(&self, priority: u8) -> KeepalivedSpec {
        KeepalivedSpec::new(self.vrid, priority, self.addresses.clone())
    }
}

/// A node's whole configuration: the lab's TCP and UDP VIPs over the backends, and the group.
fn render(instance: &str, index: usize, metrics_port: u16, router_mac: &str, group: &GroupSpec) -> String {
    let quoted = |addresses: &[IpAddr]| addresses.iter().map(|address| format!("\"{address}\"")).collect::<Vec<_>>().join(", ");
    let backends: Vec<Ipv4Addr> = (0..BACKENDS).map(backend_address).collect();
    let mut text = config_head(instance, metrics_port, router_mac);
    text.push_str(&web_and_stream_vips(&backends));
    text.push_str(&format!(
        "\n[[election]]\nname = \"edge\"\ninterface = \"l0\"\nvrid = {}\npriority = {}\nadvert_interval = \"{}ms\"\n\
         preempt = {}\npreempt_delay = \"{}ms\"\naddresses = [{}]\nvips = [{}]\nunicast_peers = [{}]\n\
         garp_master_delay = \"1s\"\ngarp_master_repeat = 3\n\
         notify = [\"/bin/sh\", \"-c\", \"echo \\\"$* $(id -u)\\\" >> {}\", \"notify\"]\n",
        group.vrid,
        group.priority,
        ADVERT_INTERVAL.as_millis(),
        group.preempt,
        group.preempt_delay.as_millis(),
        quoted(&group.addresses),
        if group.carries_vips { "\"web\", \"stream\"" } else { "" },
        quoted(&group.unicast_peers),
        notify_log(instance).display(),
    ));
    if let Some(interval) = group.flow_sync {
        text.push_str(&format!(
            "\n[flow_sync]\nlisten = \"{}:{FLOW_SYNC_PORT}\"\npeers = [\"{}:{FLOW_SYNC_PORT}\"]\ninterval = \"{}ms\"\n",
            node_address(index),
            node_address(1 - index),
            interval.as_millis()
        ));
    }
    text
}

/// Where the node's notify command (keepalived's convention) appends its arguments and the uid
/// it ran as: in a directory of the daemon's that its user (`script_user`, nobody) may write,
/// removed with the daemon.
pub fn notify_log(instance: &str) -> std::path::PathBuf {
    super::daemon::daemon_dir(instance).join("notify").join("notify.log")
}

/// Makes [`notify_log`]'s directory, writable by anyone (the program runs as nobody).
fn make_notify_dir(instance: &str) {
    use std::os::unix::fs::PermissionsExt;
    let directory = super::daemon::daemon_dir(instance).join("notify");
    std::fs::create_dir_all(&directory).unwrap();
    std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// What runs on a node.
pub enum Node {
    Empty,
    Ours(Daemon),
    Keepalived(Keepalived),
}

/// A lab: the nodes' processes are dropped first, then the traffic ends, then the observer,
/// then the namespaces.
pub struct ElectionLab {
    pub nodes: [Node; 2],
    pub servers: Vec<HttpServer>,
    pub sinks: Sinks,
    pub observer: Observer,
    pub segment: Segment,
}

impl ElectionLab {
    pub fn new() -> Self {
        let segment = Segment::new();
        let names: Vec<String> = (0..BACKENDS).map(backend_name).collect();
        let servers = segment.backends.iter().zip(&names).map(|(namespace, name)| HttpServer::start(namespace, 80, name)).collect();
        let sinks = Sinks::start(&segment.backends, &names);
        let observer = Observer::start(&segment.observer, "o0");
        Self { nodes: [Node::Empty, Node::Empty], servers, sinks, observer, segment }
    }

    /// Starts our daemon on node `index` with `group`.
    pub fn start_ours(&mut self, index: usize, group: &GroupSpec) {
        assert!(matches!(self.nodes[index], Node::Empty), "node {index} already runs something");
        let router_mac = self.segment.router_mac();
        let metrics_port = 9100 + (unique() % 800) as u16;
        let daemon = Daemon::start_with(&self.segment.nodes[index], |instance| {
            make_notify_dir(instance);
            render(instance, index, metrics_port, &router_mac, group)
        });
        self.nodes[index] = Node::Ours(daemon);
    }

    pub fn start_keepalived(&mut self, index: usize, spec: &KeepalivedSpec) {
        assert!(matches!(self.nodes[index], Node::Empty), "node {index} already runs something");
        self.nodes[index] = Node::Keepalived(Keepalived::start(&self.segment.nodes[index], spec));
    }

    pub fn ours(&self, index: usize) -> &Daemon {
        match &self.nodes[index] {
            Node::Ours(daemon) => daemon,
            _ => panic!("node {index} does not run our daemon"),
        }
    }

    pub fn ours_mut(&mut self, index: usize) -> &mut Daemon {
        match &mut self.nodes[index] {
            Node::Ours(daemon) => daemon,
            _ => panic!("node {index} does not run our daemon"),
        }
    }

    pub fn keepalived(&self, index: usize) -> &Keepalived {
        match &self.nodes[index] {
            Node::Keepalived(keepalived) => keepalived,
            _ => panic!("node {index} does not run keepalived"),
        }
    }

    /// A crash of whatever runs on node `index`: SIGKILL, no goodbye. Our daemon's data plane
    /// stays attached with its ownership (it is pinned); the process guard stays for a restart.
    pub fn kill9(&mut self, index: usize) {
        match &mut self.nodes[index] {
            Node::Ours(daemon) => daemon.kill9(),
            Node::Keepalived(keepalived) => keepalived.kill9(),
            Node::Empty => panic!("nothing runs on node {index}"),
        }
    }

    /// Stops and forgets whatever runs on node `index` (our daemon is torn down).
    pub fn remove(&mut self, index: usize) {
        self.nodes[index] = Node::Empty;
    }

    /// Our group's status on node `index`, from `failover-ctl elections --json`.
    pub fn group(&self, index: usize) -> ElectionStatus {
        self.group_view(index).0
    }

    /// Our group's status and its VIPs' table digests (VIP name -> digest) on node `index`.
    pub fn group_view(&self, index: usize) -> (ElectionStatus, Vec<(String, String)>) {
        let daemon = self.ours(index);
        let output = daemon.ctl(&["--json", "elections"]);
        assert!(output.status.success(), "elections --json: {}\n{}", String::from_utf8_lossy(&output.stderr), daemon.logs());
        let view: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("elections --json: {error}: {}", String::from_utf8_lossy(&output.stdout)));
        let group = view["elections"].get(0).unwrap_or_else(|| panic!("no group in {view}")).clone();
        let digests = serde_json::from_value(group["digests"].clone()).unwrap_or_else(|error| panic!("digests in {group}: {error}"));
        let status = serde_json::from_value(group).unwrap_or_else(|error| panic!("elections --json: {error}: {view}"));
        (status, digests)
    }

    /// Both nodes publish the same table digest for every VIP of the group (once both have
    /// settled: a node still probing publishes another table for a moment).
    pub fn assert_same_tables(&self) {
        let same = wait_for(Duration::from_secs(3), || {
            let (first, second) = (self.group_view(0).1, self.group_view(1).1);
            let published = first.len() == 2 && first.iter().all(|(_, digest)| !digest.is_empty());
            (published && first == second).then_some(())
        });
        assert!(same.is_some(), "both nodes' tables pick the same backends: node 0 {:?}, node 1 {:?}", self.group_view(0).1, self.group_view(1).1);
    }

    /// `failover-ctl maintenance web ADDRESS on|off` on both nodes for the backend that answers
    /// as `name`.
    pub fn maintenance(&self, name: &str, state: &str) {
        let index = (0..BACKENDS).find(|index| backend_name(*index) == name).unwrap_or_else(|| panic!("no backend {name}"));
        let address = backend_address(index).to_string();
        for node in 0..2 {
            let output = self.ours(node).ctl(&["maintenance", "web", &address, state]);
            assert!(output.status.success(), "maintenance {state} on node {node}: {}", String::from_utf8_lossy(&output.stderr));
        }
    }

    /// A connection from client port `port` that the table would place elsewhere: the port's
    /// table backend goes into maintenance on both nodes, a new connection from the port lands
    /// on another backend (and stays there), and the table backend comes back. The table
    /// backend's name and the connection, on its fallback.
    pub fn connection_off_the_table(&self, port: u16) -> (String, Connection) {
        let client = &self.segment.client;
        let first = Connection::open_from(client, 80, port).unwrap();
        let table = first.backend.clone();
        first.reset();
        self.maintenance(&table, "on");
        let connection = wait_for(Duration::from_secs(3), || {
            let connection = Connection::open_from(client, 80, port).unwrap();
            if connection.backend != table {
                return Some(connection);
            }
            connection.reset();
            None
        })
        .unwrap_or_else(|| panic!("the port's connections still reach {table} with it in maintenance"));
        self.maintenance(&table, "off");
        // Back in the table only once probed up again (rise): wait for it on both nodes.
        let serving = wait_for(Duration::from_secs(5), || {
            (0..2)
                .all(|node| {
                    let status = self.ours(node).status();
                    let web = status.as_ref().and_then(|status| status.vips.iter().find(|vip| vip.name == "web").cloned());
                    web.is_some_and(|web| web.backends.iter().all(|backend| backend.serving))
                })
                .then_some(())
        });
        assert!(serving.is_some(), "{table} did not serve again on both nodes");
        self.assert_same_tables();
        (table, connection)
    }

    /// Waits until the router's neighbour entry for the VRRP address is node `index`'s MAC.
    pub fn wait_neighbour(&self, index: usize) {
        let mac = self.segment.node_mac(index);
        let found = wait_for(Duration::from_secs(2), || (self.segment.router_neighbour().as_deref() == Some(&mac)).then_some(()));
        assert!(found.is_some(), "the router's entry for the VRRP address is {:?}, not node {index}'s {mac}", self.segment.router_neighbour());
    }

    /// Waits until our group on node `index` is in `state`.
    pub fn wait_state(&self, index: usize, state: &str, limit: Duration) -> ElectionStatus {
        let found = wait_for(limit, || Some(self.group(index)).filter(|group| group.state == state));
        found.unwrap_or_else(|| panic!("node {index} not {state} within {limit:?}: {:#?}\n{}", self.group(index), self.ours(index).logs()))
    }

    pub fn injector(&self) -> Injector {
        Injector::open(&self.segment.observer, "o0")
    }

    /// The address node `index` sends adverts from.
    pub fn source(index: usize) -> IpAddr {
        IpAddr::V4(node_address(index))
    }
}

impl Default for ElectionLab {
    fn default() -> Self {
        Self::new()
    }
}
