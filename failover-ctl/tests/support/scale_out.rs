//! Real traffic through the BGP lab: backends behind the router with the decap program and the
//! VIP on lo (answering the client directly), a daemon per load-balancer node announcing the
//! lab's VIPs, and the two ways to tell which node carries a flow — the router's own ECMP choice
//! (`ip route get` with the flow's ports) and the flows a node's data plane recorded.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use failover_ctl::{address::format_mac, loader::Decap};
use netlab::{veth, Namespace};

use super::{
    bgp::*,
    daemon::{config_head, web_and_stream_vips, Daemon},
    topology::*,
};

/// The client behind the router.
pub const BGP_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 2);

/// Backend `index` behind the router, through the router's `rb{index}`.
pub fn bgp_backend(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 202, 100 + index as u8, 2)
}

impl BgpLab {
    /// Makes `count` backends that serve the lab's VIP as the topology's do (decap program on
    /// `b0`, the VIP on lo, replies straight to the client through the router), and readies the
    /// path for tunnelled traffic: NAPI on the router's side of every node link (XDP_TX on a veth
    /// needs an XDP program on the peer), no reverse-path filter anywhere (replies come from the
    /// VIP on another link than the requests), complete checksums from the client.
    pub fn serve(&mut self, count: usize) {
        for index in 0..count {
            let backend = Namespace::create("bgpbackend").unwrap();
            let router_interface = format!("rb{index}");
            veth(&backend, "b0", &self.router, &router_interface).unwrap();
            self.router.ip(&format!("addr add 10.202.{}.1/24 dev {router_interface}", 100 + index)).unwrap();
            backend.ip(&format!("addr add {}/24 dev b0", bgp_backend(index))).unwrap();
            backend.ip(&format!("route add default via 10.202.{}.1", 100 + index)).unwrap();
            backend.ip(&format!("addr add {VIP}/32 dev lo")).unwrap();
            let mut decap = Decap::load().unwrap();
            decap.add_vip(IpAddr::V4(VIP)).unwrap();
            backend.enter(|| decap.attach("b0", XdpMode::Driver)).unwrap().unwrap();
            self.decaps.push(decap);
            self.backends.push(backend);
        }
        for index in 0..self.lbs.len() {
            let mut napi = Decap::load().unwrap();
            self.router.enter(|| napi.attach(&format!("r{}", index + 1), XdpMode::Driver)).unwrap().unwrap();
            self.decaps.push(napi);
        }
        let all = [&self.client, &self.router].into_iter().chain(&self.lbs).chain(&self.backends);
        for namespace in all {
            namespace.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]).unwrap();
        }
        self.client.exec(&["ethtool", "-K", "c0", "tx", "off"]).unwrap();
    }

    /// Starts node `index`'s daemon: the lab's `web` (TCP 80) and `stream` (UDP) VIPs over every
    /// backend of [`BgpLab::serve`], announcing on (table 100, protocol 201, `grace`), the
    /// router's MAC on the node's link as the tunnel's next hop.
    pub fn start_node(&self, index: usize, grace: Duration) -> Daemon {
        let mac = format_mac(&self.router.mac(&format!("r{}", index + 1)).unwrap());
        let backends: Vec<Ipv4Addr> = (0..self.backends.len()).map(bgp_backend).collect();
        Daemon::start_with(&self.lbs[index], |instance| {
            let mut text = config_head(instance, 9650 + (unique() % 1000) as u16, &mac);
            text.push_str(&web_and_stream_vips(&backends));
            text.push_str(&format!(
                "\n[announce]\nenabled = true\ntable = {ANNOUNCE_TABLE}\nprotocol = {ANNOUNCE_PROTOCOL}\nwithdraw_grace = \"{}ms\"\n",
                grace.as_millis()
            ));
            text
        })
    }

    /// The node the router sends a client flow to, by its ECMP hash over the flow's ports
    /// (`netlab::bird::enable_ecmp`): `ip route get` as for a packet arriving on `r0`.
    pub fn router_choice(&self, protocol: &str, source_port: u16, destination_port: u16) -> Option<usize> {
        let output = self
            .router
            .exec(&[
                "ip", "route", "get", &VIP.to_string(), "from", &BGP_CLIENT.to_string(), "iif", "r0", "ipproto", protocol,
                "sport", &source_port.to_string(), "dport", &destination_port.to_string(),
            ])
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut words = text.split_whitespace().skip_while(|word| *word != "via").skip(1);
        let gateway: Ipv4Addr = words.next()?.parse().ok()?;
        (0..self.lbs.len()).find(|index| lb_side(*index) == gateway)
    }

    /// Polls every 10 ms until the router's route to the VIP has exactly the next hops of
    /// `nodes`; the time it took. Panics after `limit`.
    pub fn wait_nodes(&self, nodes: &[usize], limit: Duration) -> Duration {
        let start = Instant::now();
        let mut expected: Vec<IpAddr> = nodes.iter().map(|index| IpAddr::from(lb_side(*index))).collect();
        expected.sort();
        let prefix = format!("{VIP}/32");
        loop {
            let hops = self.router_next_hops(&prefix);
            if hops == expected {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "the router has {hops:?} for {prefix} after {limit:?}, expected {expected:?}\n{}",
                self.router_bird.birdc("show route all").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The client ports of the TCP flows to the `web` VIP that `daemon`'s data plane has recorded
/// (its flow table, read through the pins by `failover-ctl flows`).
pub fn recorded_ports(daemon: &Daemon) -> BTreeSet<u16> {
    let output = daemon.ctl(&["--json", "flows", "--vip", "web", "--limit", "100000"]);
    assert!(output.status.success(), "flows: {}", String::from_utf8_lossy(&output.stderr));
    let view: serde_json::Value = serde_json::from_slice(&output.stdout).expect("flows --json");
    let client = format!("{BGP_CLIENT}:");
    view["flows"]
        .as_array()
        .expect("flows array")
        .iter()
        .filter_map(|flow| flow["client"].as_str()?.strip_prefix(&client)?.parse().ok())
        .collect()
}

/// Every VIP's table digest on `daemon`, in VIP order.
pub fn table_digests(daemon: &Daemon) -> Vec<String> {
    daemon.status().expect("status").vips.iter().map(|vip| format!("{}={}", vip.name, vip.table_digest)).collect()
}
