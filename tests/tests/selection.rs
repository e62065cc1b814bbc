//! Backend selection through the loaded data plane: health skips, draining, flow tracking, stale
//! backend ids, UDP idle expiry, the flow-insert limiter, source affinity, weights, ownership and
//! all-down policies, per-flow outer sources, Ethernet padding and the map writer's refusals.
//!
//! Every case sets map state through the real map writer, builds its packets with etherparse and
//! checks the XDP action, the exact output bytes and the counters. Where a case is about which
//! backend a flow gets, the backend is read from the outer destination of the output frame and
//! compared with a host-side model of the slot probe (`Service::predict`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::Duration,
};

use failover_common::{hash, maps::*, stats};
use failover_ctl::{
    address::to_words,
    maglev::{self, MaglevBackend},
    maps::{Counters, MapWriteError, MapWriter, VipSettings},
};
use failover_tests::*;

/// An address family's test addresses.
#[derive(Clone, Copy, Debug)]
struct Family {
    name: &'static str,
    vip: IpAddr,
    /// A second VIP address, for services that must not share the first one's address entry.
    other_vip: IpAddr,
    v6: bool,
}

const V4: Family = Family { name: "v4", vip: IpAddr::V4(VIP4), other_vip: IpAddr::V4(OTHER4), v6: false };
const V6: Family = Family { name: "v6", vip: IpAddr::V6(VIP6), other_vip: IpAddr::V6(OTHER6), v6: true };

impl Family {
    /// The nth client of this family (all inside the documentation range).
    fn client(self, n: u8) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, 0, n as u16))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, n))
        }
    }

    /// The nth backend address of this family.
    fn backend(self, n: u8) -> IpAddr {
        if self.v6 { backend6(n) } else { backend4(n) }
    }

    /// Backends 1..=count of this family.
    fn backends(self, count: u8) -> Vec<IpAddr> {
        (1..=count).map(|n| self.backend(n)).collect()
    }
}

/// Every (family, protocol) pair the selection cases run for.
fn pairs() -> [(Family, u8); 4] {
    [(V4, PROTOCOL_TCP), (V4, PROTOCOL_UDP), (V6, PROTOCOL_TCP), (V6, PROTOCOL_UDP)]
}

fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        PROTOCOL_TCP => "tcp",
        PROTOCOL_UDP => "udp",
        _ => "other",
    }
}

/// One client-to-VIP flow.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: IpAddr,
    vip: IpAddr,
    protocol: u8,
    /// (source, destination), host order.
    ports: (u16, u16),
}

impl Flow {
    /// The flow's first packet: a SYN for TCP.
    fn first(&self) -> Vec<u8> {
        self.frame(true)
    }

    /// A packet of the established flow: an ACK for TCP.
    fn later(&self) -> Vec<u8> {
        self.frame(false)
    }

    fn frame(&self, opening: bool) -> Vec<u8> {
        let transport = match (self.protocol, opening) {
            (PROTOCOL_TCP, true) => Transport::TcpSyn,
            (PROTOCOL_TCP, false) => Transport::TcpAck,
            (PROTOCOL_UDP, _) => Transport::Udp,
            (other, _) => panic!("no test packets for protocol {other}"),
        };
        packet(Tags::None, self.client, self.vip, transport, self.ports, b"which backend?")
    }

    /// The flow's key in `FLOWS`.
    fn key(&self) -> FlowKey {
        let (source, family) = to_words(self.client);
        let (destination, _) = to_words(self.vip);
        FlowKey {
            source,
            destination,
            source_port: self.ports.0.to_be(),
            destination_port: self.ports.1.to_be(),
            protocol: self.protocol,
            family,
            _padding: [0; 2],
        }
    }

    fn entropy(&self) -> u32 {
        entropy(self.client, self.vip, self.protocol, self.ports)
    }
}

/// A loaded data plane and the configuration last published to it (expected frames are built
/// with it).
struct Balancer {
    harness: Harness,
    config: Config,
}

impl Balancer {
    fn new() -> Self {
        // The tests below track up to ~1400 flows and require every one tracked: with the
        // default 4096-flow cache (1024 buckets) some bucket would overflow in about one run in
        // ten, whatever the hash (a full bucket forwards a new flow untracked, by design).
        Self { harness: Harness::with_flow_entries(65536), config: standard_config() }
    }

    fn writer(&mut self) -> &mut MapWriter {
        &mut self.harness.dataplane.writer
    }

    fn counters(&self) -> &Counters {
        &self.harness.dataplane.counters
    }

    fn set_config(&mut self, config: Config) {
        self.writer().set_config(&config).unwrap();
        self.config = config;
    }

    fn set_health(&mut self, id: u32, health: u32) {
        self.writer().set_health(id, health).unwrap();
    }

    fn reason(&self, reason: u32) -> u64 {
        self.harness.reason(reason)
    }

    /// The backend id `FLOWS` holds for `flow`, if it is tracked.
    fn tracked(&self, flow: &Flow) -> Option<u32> {
        self.counters().flow(&flow.key()).map(|value| value.backend_id)
    }

    /// Runs `frame` of `flow`, asserts that it is encapsulated byte for byte to a backend of
    /// `service` under the current configuration, and returns that backend's id.
    fn forward(&self, case: &str, service: &Service, flow: &Flow, frame: &[u8]) -> u32 {
        let (action, output) = self.harness.run(frame);
        assert_eq!(action, XDP_TX, "{case}: action {} instead of XDP_TX", action_name(action));
        let destination = outer_destination(&output);
        let Some(id) = service.id_of(destination) else {
            panic!("{case}: forwarded to {destination}, which is not a backend of {}", service.name);
        };
        let expected = encapsulated(frame, Tags::None, destination, flow.entropy(), &self.config);
        assert_frame(case, (action, output), XDP_TX, &expected);
        id
    }

    /// Runs `frame` and asserts `action` with the frame left as it came.
    fn untouched(&self, case: &str, frame: &[u8], action: u32) {
        assert_frame(case, self.harness.run(frame), action, frame);
    }
}

/// A VIP service as the tests set it up: its key, settings, backends and published table.
struct Service {
    name: String,
    key: VipKey,
    address: IpAddr,
    port: u16,
    protocol: u8,
    settings: VipSettings,
    /// Backend id -> tunnel address.
    backends: BTreeMap<u32, IpAddr>,
    table: Vec<u32>,
}

impl Service {
    /// Writes `addresses` as backends `vip_id * 100 + 1`, `+ 2`, ... (all up) through the map
    /// writer. Nothing is published yet.
    fn new(balancer: &mut Balancer, address: IpAddr, port: u16, protocol: u8, vip_id: u32, flags: u32, addresses: &[IpAddr]) -> Self {
        let mut backends = BTreeMap::new();
        for (n, backend) in (1..).zip(addresses) {
            let id = vip_id * 100 + n;
            balancer.harness.backend(id, vip_id, *backend, HEALTH_UP);
            backends.insert(id, *backend);
        }
        Self {
            name: format!("{address}:{port}/{}", protocol_name(protocol)),
            key: vip_key(address, port, protocol),
            address,
            port,
            protocol,
            settings: VipSettings { vip_id, flags },
            backends,
            table: Vec::new(),
        }
    }

    fn ids(&self) -> Vec<u32> {
        self.backends.keys().copied().collect()
    }

    /// Publishes `table` through the map writer.
    fn publish(&mut self, balancer: &mut Balancer, table: Vec<u32>) {
        balancer.writer().publish_vip(self.key, self.settings, &table).unwrap();
        self.table = table;
    }

    /// An equal-weight Maglev table over every backend.
    fn maglev(&self, size: u32) -> Vec<u32> {
        let weights: Vec<(u32, u32)> = self.ids().into_iter().map(|id| (id, 1)).collect();
        self.weighted(&weights, size)
    }

    /// A Maglev table from the controller's builder with (id, weight) pairs.
    fn weighted(&self, weights: &[(u32, u32)], size: u32) -> Vec<u32> {
        let members: Vec<MaglevBackend> = weights
            .iter()
            .map(|&(id, weight)| MaglevBackend { id, key: maglev_key(self.backends[&id]), weight })
            .collect();
        maglev::build(&members, size).unwrap()
    }

    fn flow(&self, client: IpAddr, source_port: u16) -> Flow {
        Flow { client, vip: self.address, protocol: self.protocol, ports: (source_port, self.port) }
    }

    fn id_of(&self, address: IpAddr) -> Option<u32> {
        self.backends.iter().find(|(_, backend)| **backend == address).map(|(id, _)| *id)
    }

    /// The host's model of the data plane's choice for a new flow: the flow's slot, or the first
    /// of the next `MAX_SLOT_PROBES` slots whose backend is `live`.
    fn predict(&self, flow: &Flow, live: impl Fn(u32) -> bool) -> Option<u32> {
        let source_only = self.settings.flags & VIP_HASH_SOURCE_ONLY != 0;
        let size = self.table.len();
        let first = hash::slot_of(hash::flow_key_hash(&flow.key(), source_only), size as u32) as usize;
        (0..MAX_SLOT_PROBES as usize).map(|step| self.table[(first + step) % size]).find(|id| live(*id))
    }
}

/// The permutation seed of a backend: its address as 16 bytes.
fn maglev_key(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

/// The tunnel destination of an untagged encapsulated frame.
fn outer_destination(frame: &[u8]) -> IpAddr {
    match ethertype(frame) {
        0x0800 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&frame[30..34]).unwrap())),
        0x86dd => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap())),
        other => panic!("output ethertype {other:#06x} is not IP"),
    }
}

/// The tunnel source of an untagged encapsulated frame.
fn outer_source(frame: &[u8]) -> IpAddr {
    match ethertype(frame) {
        0x0800 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&frame[26..30]).unwrap())),
        0x86dd => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).unwrap())),
        other => panic!("output ethertype {other:#06x} is not IP"),
    }
}

/// The flow label of an untagged frame with an outer IPv6 header.
fn outer_flow_label(frame: &[u8]) -> u32 {
    assert_eq!(ethertype(frame), 0x86dd, "outer header is not IPv6");
    u32::from_be_bytes([frame[14], frame[15], frame[16], frame[17]]) & 0x000f_ffff
}

/// How many of `ids` name each backend.
fn tally(ids: &[u32]) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(*id).or_default() += 1;
    }
    counts
}

/// Pins the calling thread to CPU 0. `BPF_PROG_TEST_RUN` runs the program on the CPU of the
/// calling thread, and the flow-insert limiter is one token bucket per CPU: unpinned, the test
/// could be moved between CPUs and spend two buckets. Each test runs on its own thread, so this
/// pins only the test that calls it.
fn pin_to_first_cpu() {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it, and
    // sched_setaffinity(0, ..) reads it for the calling thread only.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(result, 0, "sched_setaffinity to CPU 0: {}", std::io::Error::last_os_error());
}

/// The clock `bpf_ktime_get_coarse_ns` reads, for failure messages about the limiter.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) }, 0);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Longer than the coarse clock's tick (a few milliseconds) many times over.
const IDLE_PAUSE: Duration = Duration::from_millis(50);

#[test]
fn down_backend_moves_only_its_own_flows() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    for (index, (family, protocol)) in pairs().into_iter().enumerate() {
        let vip_id = index as u32 + 1;
        let mut service = Service::new(&mut balancer, family.vip, 80, protocol, vip_id, VIP_OWNED | VIP_NO_FLOW_TRACKING, &family.backends(4));
        service.publish(&mut balancer, service.maglev(1021));
        let flows: Vec<Flow> = (0..300).map(|n| service.flow(family.client(10), 20000 + n)).collect();
        let send = |balancer: &Balancer, phase: &str| -> Vec<u32> {
            flows
                .iter()
                .map(|flow| {
                    let case = format!("{} {phase}, port {}", service.name, flow.ports.0);
                    balancer.forward(&case, &service, flow, &flow.first())
                })
                .collect()
        };

        let before = send(&balancer, "all up");
        for (flow, id) in flows.iter().zip(&before) {
            assert_eq!(Some(*id), service.predict(flow, |_| true), "{}: all up, port {}", service.name, flow.ports.0);
        }
        assert_eq!(tally(&before).len(), 4, "{}: 300 flows use every backend", service.name);

        let dead = service.ids()[1];
        let dead_count = balancer.counters().backend(dead).unwrap().packets;
        balancer.set_health(dead, HEALTH_DOWN);
        let during = send(&balancer, &format!("backend {dead} down"));
        let mut moved = Vec::new();
        for ((flow, old), new) in flows.iter().zip(&before).zip(&during) {
            let case = format!("{} backend {dead} down, port {}", service.name, flow.ports.0);
            assert_ne!(*new, dead, "{case}: sent to the down backend");
            assert_eq!(Some(*new), service.predict(flow, |id| id != dead), "{case}");
            if *old == dead {
                moved.push(*new);
            } else {
                assert_eq!(new, old, "{case}: a flow of a live backend moved");
            }
        }
        let spread = tally(&moved);
        assert_eq!(
            spread.keys().copied().collect::<Vec<_>>(),
            service.ids().into_iter().filter(|id| *id != dead).collect::<Vec<_>>(),
            "{}: the {} moved flows reach every survivor: {spread:?}",
            service.name,
            moved.len()
        );
        assert_eq!(balancer.counters().backend(dead).unwrap().packets, dead_count, "{}: down backend counted nothing", service.name);

        balancer.set_health(dead, HEALTH_UP);
        let after = send(&balancer, "back up");
        assert_eq!(after, before, "{}: original mapping restored", service.name);
    }
    assert_eq!(balancer.reason(stats::TX_FORWARD), 4 * 900);
    assert!(balancer.counters().flows().unwrap().is_empty(), "VIP_NO_FLOW_TRACKING tracks nothing");
}

#[test]
fn draining_backend_keeps_tracked_flows_and_takes_no_new_ones() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    for (index, (family, protocol)) in pairs().into_iter().enumerate() {
        let vip_id = index as u32 + 1;
        let mut service = Service::new(&mut balancer, family.vip, 80, protocol, vip_id, VIP_OWNED, &family.backends(4));
        service.publish(&mut balancer, service.maglev(1021));
        let established: Vec<Flow> = (0..200).map(|n| service.flow(family.client(10), 30000 + n)).collect();
        let before: Vec<u32> = established
            .iter()
            .map(|flow| balancer.forward(&format!("{} open {}", service.name, flow.ports.0), &service, flow, &flow.first()))
            .collect();
        for (flow, id) in established.iter().zip(&before) {
            assert_eq!(Some(*id), service.predict(flow, |_| true), "{}: open {}", service.name, flow.ports.0);
            assert_eq!(balancer.tracked(flow), Some(*id), "{}: flow {} tracked", service.name, flow.ports.0);
        }

        let counts = tally(&before);
        let draining = *counts.iter().max_by_key(|(_, count)| **count).unwrap().0;
        balancer.set_health(draining, HEALTH_DRAINING);
        let reselected = balancer.reason(stats::EVENT_FLOW_RESELECTED);

        for (flow, id) in established.iter().zip(&before) {
            let case = format!("{} backend {draining} draining, established {}", service.name, flow.ports.0);
            assert_eq!(balancer.forward(&case, &service, flow, &flow.later()), *id, "{case}: tracked flow kept its backend");
            assert_eq!(balancer.tracked(flow), Some(*id), "{case}: entry unchanged");
        }
        assert!(counts[&draining] > 0);

        let fresh: Vec<Flow> = (0..200).map(|n| service.flow(family.client(10), 40000 + n)).collect();
        let mut would_have_drained = 0;
        for flow in &fresh {
            let case = format!("{} backend {draining} draining, new {}", service.name, flow.ports.0);
            let id = balancer.forward(&case, &service, flow, &flow.first());
            assert_ne!(id, draining, "{case}: a new flow went to the draining backend");
            assert_eq!(Some(id), service.predict(flow, |id| id != draining), "{case}");
            if service.predict(flow, |_| true) == Some(draining) {
                would_have_drained += 1;
            }
        }
        assert!(would_have_drained > 0, "{}: some new flows hash to the draining backend's slots", service.name);
        assert_eq!(balancer.reason(stats::EVENT_FLOW_RESELECTED), reselected, "{}: draining re-chose nothing", service.name);
    }
}

#[test]
fn tracked_flow_survives_a_new_table_and_is_rechosen_when_its_backend_dies() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    for (index, (family, protocol)) in pairs().into_iter().enumerate() {
        let vip_id = index as u32 + 1;
        let mut service = Service::new(&mut balancer, family.vip, 80, protocol, vip_id, VIP_OWNED, &family.backends(2));
        let (first, second) = (service.ids()[0], service.ids()[1]);
        service.publish(&mut balancer, vec![first; 13]);
        let old = service.flow(family.client(10), 41000);
        let name = service.name.clone();

        assert_eq!(balancer.forward(&format!("{name} old flow opens"), &service, &old, &old.first()), first);
        let listed = balancer.counters().flows().unwrap();
        assert!(
            listed.iter().any(|(key, value)| *key == old.key() && value.backend_id == first),
            "{name}: flows() lists the old flow on backend {first}: {listed:?}"
        );

        service.publish(&mut balancer, vec![second; 13]);
        assert_eq!(balancer.forward(&format!("{name} old flow, new table"), &service, &old, &old.later()), first, "{name}: tracked flow kept");
        let new = service.flow(family.client(10), 41001);
        assert_eq!(balancer.forward(&format!("{name} new flow, new table"), &service, &new, &new.first()), second, "{name}: new flow follows the table");
        assert_eq!(balancer.tracked(&new), Some(second));
        assert_eq!(balancer.tracked(&old), Some(first));

        let reselected = balancer.reason(stats::EVENT_FLOW_RESELECTED);
        balancer.set_health(first, HEALTH_DOWN);
        assert_eq!(balancer.forward(&format!("{name} old flow, backend down"), &service, &old, &old.later()), second, "{name}: re-chosen from the table");
        assert_eq!(balancer.reason(stats::EVENT_FLOW_RESELECTED), reselected + 1, "{name}: reselection counted");
        assert_eq!(balancer.tracked(&old), Some(second), "{name}: entry replaced with the new backend");

        // The replaced entry holds: the old backend's return does not pull the flow back.
        balancer.set_health(first, HEALTH_UP);
        assert_eq!(balancer.forward(&format!("{name} old flow, backend back"), &service, &old, &old.later()), second);
        assert_eq!(balancer.reason(stats::EVENT_FLOW_RESELECTED), reselected + 1);
    }
    assert_eq!(balancer.counters().flows().unwrap().len(), 8, "two flows per service");
}

#[test]
fn flow_entry_with_a_reused_backend_id_is_ignored() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    for (index, (family, protocol)) in pairs().into_iter().enumerate() {
        let vip_id = 2 * index as u32 + 1;
        let other_vip_id = vip_id + 1;
        let mut service = Service::new(&mut balancer, family.vip, 80, protocol, vip_id, VIP_OWNED, &[family.backend(1)]);
        let stale = service.ids()[0];
        service.publish(&mut balancer, vec![stale; 13]);
        let flow = service.flow(family.client(10), 42000);
        let name = service.name.clone();
        assert_eq!(balancer.forward(&format!("{name} before removal"), &service, &flow, &flow.first()), stale);
        assert_eq!(balancer.tracked(&flow), Some(stale));

        // The VIP goes away; its backend id is reused, up, for another VIP at another address.
        balancer.writer().remove_vip(service.key).unwrap();
        let mut other = Service { name: format!("{} (reused id {stale})", family.other_vip), ..Service::new(&mut balancer, family.other_vip, 80, protocol, other_vip_id, VIP_OWNED, &[]) };
        balancer.harness.backend(stale, other_vip_id, family.backend(3), HEALTH_UP);
        other.backends.insert(stale, family.backend(3));
        other.publish(&mut balancer, vec![stale; 13]);

        // The first VIP comes back with a new membership.
        let fresh = stale + 1;
        balancer.harness.backend(fresh, vip_id, family.backend(2), HEALTH_UP);
        service.backends = BTreeMap::from([(fresh, family.backend(2))]);
        service.publish(&mut balancer, vec![fresh; 13]);

        let reselected = balancer.reason(stats::EVENT_FLOW_RESELECTED);
        assert_eq!(balancer.tracked(&flow), Some(stale), "{name}: the stale entry is still there");
        assert_eq!(
            balancer.forward(&format!("{name} stale entry"), &service, &flow, &flow.later()),
            fresh,
            "{name}: an entry naming another VIP's backend is ignored"
        );
        assert_eq!(balancer.reason(stats::EVENT_FLOW_RESELECTED), reselected + 1, "{name}: counted as re-chosen");
        assert_eq!(balancer.tracked(&flow), Some(fresh), "{name}: entry replaced");

        let neighbour = other.flow(family.client(10), 42000);
        assert_eq!(balancer.forward(&format!("{name} reused id"), &other, &neighbour, &neighbour.first()), stale, "{name}: the reused id serves its new VIP");
    }
}

#[test]
fn udp_flow_expires_after_the_idle_timeout() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    let mut services = Vec::new();
    for (index, family) in [V4, V6].into_iter().enumerate() {
        let vip_id = 2 * index as u32 + 1;
        let udp = Service::new(&mut balancer, family.vip, 53, PROTOCOL_UDP, vip_id, VIP_OWNED, &family.backends(2));
        let tcp = Service::new(&mut balancer, family.vip, 53, PROTOCOL_TCP, vip_id + 1, VIP_OWNED, &family.backends(2));
        services.push((family, udp, tcp));
    }

    // Long timeout (the standard 30 s): an idle UDP flow keeps its backend.
    for (family, udp, _) in &mut services {
        let (a, b) = (udp.ids()[0], udp.ids()[1]);
        udp.publish(&mut balancer, vec![a; 13]);
        let flow = udp.flow(family.client(10), 43000);
        assert_eq!(balancer.forward(&format!("{} long timeout, first", udp.name), udp, &flow, &flow.first()), a);
        udp.publish(&mut balancer, vec![b; 13]);
    }
    thread::sleep(IDLE_PAUSE);
    for (family, udp, _) in &services {
        let flow = udp.flow(family.client(10), 43000);
        let case = format!("{} long timeout, after a pause", udp.name);
        assert_eq!(balancer.forward(&case, udp, &flow, &flow.later()), udp.ids()[0], "{case}: still tracked");
    }
    assert_eq!(balancer.reason(stats::EVENT_FLOW_EXPIRED), 0);

    // 1 ms timeout: the same sequence expires the UDP entry; TCP entries never expire.
    balancer.set_config(Config { udp_idle_timeout_ns: 1_000_000, ..standard_config() });
    for (family, udp, tcp) in &mut services {
        let (a, b) = (udp.ids()[0], udp.ids()[1]);
        udp.publish(&mut balancer, vec![a; 13]);
        let flow = udp.flow(family.client(10), 43001);
        assert_eq!(balancer.forward(&format!("{} short timeout, first", udp.name), udp, &flow, &flow.first()), a);
        udp.publish(&mut balancer, vec![b; 13]);
        let (a, b) = (tcp.ids()[0], tcp.ids()[1]);
        tcp.publish(&mut balancer, vec![a; 13]);
        let connection = tcp.flow(family.client(10), 43001);
        assert_eq!(balancer.forward(&format!("{} short timeout, syn", tcp.name), tcp, &connection, &connection.first()), a);
        tcp.publish(&mut balancer, vec![b; 13]);
    }
    thread::sleep(IDLE_PAUSE);
    for (expired, (family, udp, tcp)) in (1..).zip(&services) {
        let flow = udp.flow(family.client(10), 43001);
        let case = format!("{} short timeout, after a pause", udp.name);
        assert_eq!(balancer.forward(&case, udp, &flow, &flow.later()), udp.ids()[1], "{case}: expired, follows the table");
        assert_eq!(balancer.reason(stats::EVENT_FLOW_EXPIRED), expired, "{case}: expiry counted");
        assert_eq!(balancer.tracked(&flow), Some(udp.ids()[1]), "{case}: entry replaced");
        let connection = tcp.flow(family.client(10), 43001);
        let case = format!("{} short timeout, after a pause", tcp.name);
        assert_eq!(balancer.forward(&case, tcp, &connection, &connection.later()), tcp.ids()[0], "{case}: tcp does not expire");
    }
    assert_eq!(balancer.reason(stats::EVENT_FLOW_EXPIRED), 2);
    assert_eq!(balancer.reason(stats::EVENT_FLOW_RESELECTED), 0);
}

/// Sends 20 SYNs of distinct flows, alternating IPv4 and IPv6, and checks each goes to its
/// table backend; returns the flows in sending order.
fn syn_burst(balancer: &mut Balancer) -> Vec<Flow> {
    let mut services = Vec::new();
    for (index, family) in [V4, V6].into_iter().enumerate() {
        let mut service = Service::new(balancer, family.vip, 443, PROTOCOL_TCP, index as u32 + 1, VIP_OWNED, &family.backends(4));
        service.publish(balancer, service.maglev(251));
        services.push((family, service));
    }
    let mut sent = Vec::new();
    for n in 0..20u16 {
        let (family, service) = &services[n as usize % 2];
        let flow = service.flow(family.client(10), 44000 + n);
        let case = format!("{} syn {n}", service.name);
        let id = balancer.forward(&case, service, &flow, &flow.first());
        assert_eq!(Some(id), service.predict(&flow, |_| true), "{case}: table backend");
        sent.push(flow);
    }
    assert_eq!(balancer.reason(stats::TX_FORWARD), 20, "every SYN forwarded");
    sent
}

#[test]
fn flow_insert_limiter_tracks_only_the_burst() {
    if !root() {
        return;
    }
    pin_to_first_cpu();
    let mut balancer = Balancer::new();
    // Five inserts of credit and a refill of one insert per 1e15 ns (11.6 days): none in a test.
    balancer.set_config(Config { flow_insert_cost_ns: 1_000_000_000_000_000, flow_insert_burst_ns: 5_000_000_000_000_000, ..standard_config() });
    let sent = syn_burst(&mut balancer);
    let tracked: BTreeSet<FlowKey> = balancer.counters().flows().unwrap().into_iter().map(|(key, _)| key).collect();
    let untracked = balancer.reason(stats::EVENT_FLOW_NOT_TRACKED);
    assert_eq!(
        (tracked.len(), untracked),
        (5, 15),
        "a fresh bucket holds the whole burst: 5 tracked, 15 forwarded untracked (CLOCK_MONOTONIC now {} ns)",
        monotonic_ns()
    );
    let first: BTreeSet<FlowKey> = sent[..5].iter().map(Flow::key).collect();
    assert_eq!(tracked, first, "the first five flows spent the burst");
}

#[test]
fn unlimited_flow_inserts_track_every_flow() {
    if !root() {
        return;
    }
    pin_to_first_cpu();
    let mut balancer = Balancer::new();
    balancer.set_config(Config { flow_insert_cost_ns: 0, flow_insert_burst_ns: 0, ..standard_config() });
    let sent = syn_burst(&mut balancer);
    assert_eq!(balancer.reason(stats::EVENT_FLOW_NOT_TRACKED), 0);
    let tracked: BTreeSet<FlowKey> = balancer.counters().flows().unwrap().into_iter().map(|(key, _)| key).collect();
    assert_eq!(tracked, sent.iter().map(Flow::key).collect::<BTreeSet<_>>(), "all 20 tracked");
}

#[test]
fn source_affinity_keeps_a_client_on_one_backend() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    for (index, (family, protocol)) in pairs().into_iter().enumerate() {
        let vip_id = 2 * index as u32 + 1;
        let mut sticky = Service::new(&mut balancer, family.vip, 80, protocol, vip_id, VIP_OWNED | VIP_HASH_SOURCE_ONLY, &family.backends(4));
        sticky.publish(&mut balancer, sticky.maglev(1021));
        let mut plain = Service::new(&mut balancer, family.vip, 81, protocol, vip_id + 1, VIP_OWNED, &family.backends(4));
        plain.publish(&mut balancer, plain.maglev(1021));

        let ports = |service: &Service, client: IpAddr| -> Vec<u32> {
            (0..50)
                .map(|n| {
                    let flow = service.flow(client, 45000 + n);
                    let case = format!("{} client {client} port {}", service.name, flow.ports.0);
                    let id = balancer.forward(&case, service, &flow, &flow.first());
                    assert_eq!(Some(id), service.predict(&flow, |_| true), "{case}");
                    id
                })
                .collect()
        };
        let one_client = tally(&ports(&sticky, family.client(10)));
        assert_eq!(one_client.len(), 1, "{}: one client's ports land on one backend: {one_client:?}", sticky.name);

        let clients: Vec<u32> = (1..=64)
            .map(|n| {
                let flow = sticky.flow(family.client(n), 45000);
                let case = format!("{} client {}", sticky.name, flow.client);
                let id = balancer.forward(&case, &sticky, &flow, &flow.first());
                assert_eq!(Some(id), sticky.predict(&flow, |_| true), "{case}");
                id
            })
            .collect();
        let spread = tally(&clients);
        assert_eq!(spread.len(), 4, "{}: 64 clients spread over every backend: {spread:?}", sticky.name);

        let unpinned = tally(&ports(&plain, family.client(10)));
        assert_eq!(unpinned.len(), 4, "{}: without the flag one client's ports spread: {unpinned:?}", plain.name);
    }
}

#[test]
fn weighted_table_splits_flows_by_weight() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    for (index, (family, protocol)) in pairs().into_iter().enumerate() {
        let mut service = Service::new(&mut balancer, family.vip, 80, protocol, index as u32 + 1, VIP_OWNED, &family.backends(2));
        let (light, heavy) = (service.ids()[0], service.ids()[1]);
        let table = service.weighted(&[(light, 1), (heavy, 3)], maglev::DEFAULT_TABLE_SIZE);
        service.publish(&mut balancer, table);
        let chosen: Vec<u32> = (0..4000)
            .map(|n| {
                let flow = service.flow(family.client(10 + (n % 4) as u8), 10000 + n);
                balancer.forward(&format!("{} flow {n}", service.name), &service, &flow, &flow.first())
            })
            .collect();
        let counts = tally(&chosen);
        let share = counts[&heavy] as f64 / chosen.len() as f64;
        assert!((0.72..=0.78).contains(&share), "{}: weight 3 of 4 took {share:.3} of the flows: {counts:?}", service.name);
        assert_eq!(counts[&light] + counts[&heavy], 4000);
    }
}

#[test]
fn ownership_and_all_down_policies() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    for (index, (family, protocol)) in pairs().into_iter().enumerate() {
        let vip_id = 10 * index as u32 + 1;
        let client = family.client(10);

        let mut standby = Service::new(&mut balancer, family.vip, 80, protocol, vip_id, VIP_ALL_DOWN_PASS, &family.backends(2));
        standby.publish(&mut balancer, standby.maglev(13));
        let flow = standby.flow(client, 46000);
        let passed = balancer.reason(stats::PASS_NOT_OWNED);
        balancer.untouched(&format!("{} not owned", standby.name), &flow.first(), XDP_PASS);
        assert_eq!(balancer.reason(stats::PASS_NOT_OWNED), passed + 1, "{}: counted", standby.name);
        assert_eq!(balancer.tracked(&flow), None, "{}: not owned, not tracked", standby.name);
        for id in standby.ids() {
            assert_eq!(balancer.counters().backend(id).unwrap().packets, 0);
        }

        let mut dropping = Service::new(&mut balancer, family.vip, 81, protocol, vip_id + 1, VIP_OWNED, &family.backends(2));
        dropping.publish(&mut balancer, dropping.maglev(13));
        let established = dropping.flow(client, 46001);
        let id = balancer.forward(&format!("{} all up", dropping.name), &dropping, &established, &established.first());
        assert_eq!(balancer.tracked(&established), Some(id));
        for id in dropping.ids() {
            balancer.set_health(id, HEALTH_DOWN);
        }
        let dropped = balancer.reason(stats::DROP_ALL_DOWN);
        let reselected = balancer.reason(stats::EVENT_FLOW_RESELECTED);
        let fresh = dropping.flow(client, 46002);
        balancer.untouched(&format!("{} all down, new flow", dropping.name), &fresh.first(), XDP_DROP);
        balancer.untouched(&format!("{} all down, tracked flow", dropping.name), &established.later(), XDP_DROP);
        assert_eq!(balancer.reason(stats::DROP_ALL_DOWN), dropped + 2, "{}: both dropped as all down", dropping.name);
        assert_eq!(balancer.reason(stats::EVENT_FLOW_RESELECTED), reselected + 1, "{}: the tracked flow looked for another", dropping.name);
        // Draining backends take no new flows either.
        balancer.set_health(dropping.ids()[0], HEALTH_DRAINING);
        balancer.untouched(&format!("{} down and draining, new flow", dropping.name), &fresh.first(), XDP_DROP);
        assert_eq!(balancer.reason(stats::DROP_ALL_DOWN), dropped + 3);

        let mut passing = Service::new(&mut balancer, family.vip, 82, protocol, vip_id + 2, VIP_OWNED | VIP_ALL_DOWN_PASS, &family.backends(2));
        passing.publish(&mut balancer, passing.maglev(13));
        for id in passing.ids() {
            balancer.set_health(id, HEALTH_DOWN);
        }
        let passed = balancer.reason(stats::PASS_ALL_DOWN);
        let flow = passing.flow(client, 46003);
        balancer.untouched(&format!("{} all down, pass policy", passing.name), &flow.first(), XDP_PASS);
        assert_eq!(balancer.reason(stats::PASS_ALL_DOWN), passed + 1, "{}: counted", passing.name);
        assert_eq!(balancer.tracked(&flow), None);
    }
    assert_eq!(balancer.reason(stats::PASS_NOT_OWNED), 4);
    assert_eq!(balancer.reason(stats::DROP_ALL_DOWN), 12);
    assert_eq!(balancer.reason(stats::PASS_ALL_DOWN), 4);
    assert_eq!(balancer.reason(stats::TX_FORWARD), 4);
}

#[test]
fn outer_source_and_flow_label_vary_per_flow() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    let config = Config {
        source_v4_mask: u32::from_ne_bytes([0, 0, 0, 255]),
        source_v6_mask: u32::from_ne_bytes([0, 0, 255, 255]),
        ..standard_config()
    };
    balancer.set_config(config);
    // (client family, backend family): every tunnel kind.
    let kinds = [(V4, V4), (V6, V6), (V4, V6), (V6, V4)];
    for (index, (family, tunnel)) in kinds.into_iter().enumerate() {
        let mut service = Service::new(&mut balancer, family.vip, 80 + index as u16, PROTOCOL_UDP, index as u32 + 1, VIP_OWNED, &[tunnel.backend(1)]);
        service.publish(&mut balancer, service.ids().repeat(13));
        let mut sources = BTreeSet::new();
        let mut labels = BTreeSet::new();
        for n in 0..16 {
            let flow = service.flow(family.client(10), 47000 + n);
            let case = format!("{} to a {} backend, port {}", service.name, tunnel.name, flow.ports.0);
            // `forward` checks the bytes against `encapsulated` under the masked config.
            balancer.forward(&case, &service, &flow, &flow.first());
            let (_, output) = balancer.harness.run(&flow.first());
            let source = outer_source(&output);
            match source {
                IpAddr::V4(v4) => {
                    let expected = config.source_v4_base | (flow.entropy() & config.source_v4_mask);
                    assert_eq!(v4.octets(), expected.to_ne_bytes(), "{case}");
                    assert_eq!(v4.octets()[..3], OUTER_SOURCE4.octets()[..3], "{case}: inside 192.0.2.0/24");
                }
                IpAddr::V6(v6) => {
                    assert_eq!(v6.octets()[..14], OUTER_SOURCE6.octets()[..14], "{case}: inside the /112");
                    let low = u32::from_ne_bytes(v6.octets()[12..].try_into().unwrap());
                    assert_eq!(low, flow.entropy() & config.source_v6_mask, "{case}: base | (entropy & mask)");
                    labels.insert(outer_flow_label(&output));
                }
            }
            sources.insert(source);
        }
        assert!(sources.len() >= 8, "{} to {}: outer sources vary per flow: {sources:?}", service.name, tunnel.name);
        if tunnel.v6 {
            assert!(labels.len() >= 8, "{}: flow labels vary per flow: {labels:?}", service.name);
        }
    }
}

#[test]
fn ethernet_padding_stays_out_of_the_tunnel() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    let cases = [
        ("v4 udp, empty payload", V4, PROTOCOL_UDP, Tags::None, 60),
        ("v4 tcp syn, no payload", V4, PROTOCOL_TCP, Tags::None, 60),
        ("v4 udp, 802.1Q tag", V4, PROTOCOL_UDP, Tags::Single(42), 64),
        ("v6 udp, trailing zeros", V6, PROTOCOL_UDP, Tags::None, 68),
        ("v6 tcp syn, trailing zeros", V6, PROTOCOL_TCP, Tags::None, 80),
    ];
    for (index, (name, family, protocol, tags, padded_len)) in cases.into_iter().enumerate() {
        let vip_id = index as u32 + 1;
        let backend = family.backend(1);
        let mut service = Service::new(&mut balancer, family.vip, 1000 + index as u16, protocol, vip_id, VIP_OWNED, &[backend]);
        service.publish(&mut balancer, service.ids().repeat(13));
        let flow = service.flow(family.client(10), 48000);
        let transport = if protocol == PROTOCOL_TCP { Transport::TcpSyn } else { Transport::Udp };
        let mut frame = packet(tags, flow.client, flow.vip, transport, flow.ports, b"");
        let ip_len = frame.len() - 14 - tags.len();
        assert!(frame.len() < padded_len, "{name}: the frame needs padding");
        frame.resize(padded_len, 0);
        let expected = encapsulated(&frame, tags, backend, flow.entropy(), &balancer.config);
        let outer_len = if family.v6 { 40 } else { 20 };
        assert_eq!(expected.len(), 14 + tags.len() + outer_len + ip_len, "{name}: expectation holds no padding");
        assert_frame(name, balancer.harness.run(&frame), XDP_TX, &expected);
        let counted = balancer.counters().vip(vip_id).unwrap();
        assert_eq!((counted.packets, counted.bytes), (1, ip_len as u64), "{name}: vip counter counts the IP packet");
    }
    assert_eq!(balancer.reason(stats::TX_FORWARD), cases.len() as u64);
    assert_eq!(balancer.reason(stats::DROP_MALFORMED), 0);
}

/// Resends `flows` and asserts every output is byte for byte the `baseline`, and that the
/// writer's view of `service` is what was published.
fn assert_unchanged(balancer: &Balancer, after: &str, service: &Service, flows: &[Flow], baseline: &[Vec<u8>]) {
    for (flow, expected) in flows.iter().zip(baseline) {
        let case = format!("{} after {after}, port {}", service.name, flow.ports.0);
        assert_frame(&case, balancer.harness.run(&flow.first()), XDP_TX, expected);
    }
    let writer = &balancer.harness.dataplane.writer;
    assert_eq!(writer.table(&service.key).as_deref(), Some(&service.table[..]), "{} after {after}: table", service.name);
    let meta = writer.vip(&service.key).unwrap();
    assert_eq!((meta.vip_id, meta.flags), (service.settings.vip_id, service.settings.flags), "{} after {after}: settings", service.name);
}

#[test]
fn map_writer_refusals_change_nothing() {
    if !root() {
        return;
    }
    let mut balancer = Balancer::new();
    for (index, (family, protocol)) in pairs().into_iter().enumerate() {
        let vip_id = 2 * index as u32 + 1;
        let mut service = Service::new(&mut balancer, family.vip, 80, protocol, vip_id, VIP_OWNED | VIP_NO_FLOW_TRACKING, &family.backends(3));
        service.publish(&mut balancer, service.maglev(251));
        let mut neighbour = Service::new(&mut balancer, family.other_vip, 80, protocol, vip_id + 1, VIP_OWNED, &[family.backend(4)]);
        neighbour.publish(&mut balancer, neighbour.ids().repeat(13));

        let flows: Vec<Flow> = (0..40).map(|n| service.flow(family.client(10), 49000 + n)).collect();
        let baseline: Vec<Vec<u8>> = flows
            .iter()
            .map(|flow| {
                balancer.forward(&format!("{} baseline", service.name), &service, flow, &flow.first());
                balancer.harness.run(&flow.first()).1
            })
            .collect();
        let name = service.name.clone();
        let settings = service.settings;
        let refused = |balancer: &mut Balancer, what: &str, result: Result<(), MapWriteError>| {
            let Err(error) = result else { panic!("{name}: {what} must be refused") };
            eprintln!("{name}: {what}: {error}");
            assert_unchanged(balancer, what, &service, &flows, &baseline);
        };

        let mut unknown = service.table.clone();
        unknown[7] = 9999;
        let result = balancer.writer().publish_vip(service.key, settings, &unknown);
        refused(&mut balancer, "a table naming an unknown backend", result);

        let mut foreign = service.table.clone();
        foreign[7] = neighbour.ids()[0];
        let result = balancer.writer().publish_vip(service.key, settings, &foreign);
        refused(&mut balancer, "a table naming another VIP's backend", result);

        let table = service.table.clone();
        let result = balancer.writer().publish_vip(service.key, VipSettings { vip_id: MAX_VIPS, ..settings }, &table);
        refused(&mut balancer, "a vip id out of range", result);

        let result = balancer.writer().publish_vip(service.key, VipSettings { vip_id: neighbour.settings.vip_id, ..settings }, &table);
        refused(&mut balancer, "a vip id of another VIP", result);

        // Port 0 and protocol 0 is exactly the VIP address entry's key.
        let address_entry = VipKey { port: 0, protocol: PROTOCOL_ADDRESS, ..service.key };
        let result = balancer.writer().publish_vip(address_entry, VipSettings { vip_id: vip_id + 100, flags: VIP_OWNED }, &table);
        refused(&mut balancer, "protocol 0", result);

        let chosen = service.predict(&flows[0], |_| true).unwrap();
        let result = balancer.writer().set_health(chosen, 7);
        refused(&mut balancer, "health state 7", result);

        let result = balancer.writer().set_config(&Config { mtu: 100, next_hop_mac: [0x02, 0, 0, 0, 0, 0x99], ..standard_config() });
        refused(&mut balancer, "mtu 100", result);

        for id in service.ids() {
            let moved = Backend { address: to_words(family.backend(9)).0, vip_id, family: to_words(family.backend(9)).1, _padding: [0; 3] };
            let result = balancer.writer().set_backend(id, moved, HEALTH_UP);
            refused(&mut balancer, &format!("a new address for published backend {id}"), result);
            let (address, family_code) = to_words(service.backends[&id]);
            let rehomed = Backend { address, vip_id: vip_id + 1, family: family_code, _padding: [0; 3] };
            let result = balancer.writer().set_backend(id, rehomed, HEALTH_UP);
            refused(&mut balancer, &format!("another VIP for published backend {id}"), result);
        }

        // The writer is not wedged by what it refused.
        let result = balancer.writer().publish_vip(service.key, settings, &table);
        result.unwrap();
        assert_unchanged(&balancer, "republishing the same table", &service, &flows, &baseline);
    }
    assert_eq!(balancer.reason(stats::DROP_NOT_CONFIGURED), 0);
}
