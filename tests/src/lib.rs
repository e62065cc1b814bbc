//! Shared support for the integration tests: a loaded data plane with a standard
//! configuration, packet builders (etherparse), the expected-output builders for encapsulation,
//! and `test_run` with a hex diff on mismatch; `craft` builds fixture packets, `fuzz` is the
//! data-plane fuzzer (`cargo xtask fuzz`, `tests/fuzz.rs`).

pub mod craft;
pub mod fuzz;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder};
use failover_common::{
    hash,
    maps::*,
};
use failover_ctl::{
    address::to_words,
    loader::{Dataplane, LoadOptions},
    maps::VipSettings,
};


/// XDP action codes.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0x00, 0x00, 0x00, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0x1b, 0x00, 0x00, 0x00, 0x01];
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0x4e, 0x00, 0x00, 0x00, 0xfe];

// Documentation ranges: these addresses only ever live inside test packets.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
pub const OTHER4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 81);
pub const OUTER_SOURCE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, 0, 0x10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x80, 0, 0, 0, 0, 0x80);
pub const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x80, 0, 0, 0, 0, 0x81);
pub const OUTER_SOURCE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe0, 0, 0, 0, 0, 0);

/// The nth IPv4 / IPv6 backend address.
pub fn backend4(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100 + n))
}
pub fn backend6(n: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb0, 0, 0, 0, 0, 100 + n as u16))
}

pub const MTU: u16 = 1500;

/// True when the test may load BPF programs; skips without root (fails in CI), see
/// [`netlab::prerequisite::root`].
pub fn root() -> bool {
    netlab::prerequisite::root("loads BPF programs")
}

/// The configuration fixtures use: fixed outer sources (mask 0) so expected bytes are simple.
pub fn standard_config() -> Config {
    Config {
        next_hop_mac: NEXT_HOP_MAC,
        interface_mac: LB_MAC,
        mtu: MTU,
        source_v4_base: to_words(IpAddr::V4(OUTER_SOURCE4)).0[0],
        source_v6_base: to_words(IpAddr::V6(OUTER_SOURCE6)).0,
        udp_idle_timeout_ns: 30_000_000_000,
        ..Config::default()
    }
}

/// A loaded load balancer with the standard configuration.
pub struct Harness {
    pub dataplane: Dataplane,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::with_flow_entries(4096)
    }

    /// A harness whose flow cache is sized for `flow_entries` flows. Buckets fill at random: a
    /// test that needs every one of its flows tracked keeps them far below that (see
    /// `flow_buckets`: at the capacity 0.84 % of new flows find their bucket full, at half of
    /// it 0.015 %).
    pub fn with_flow_entries(flow_entries: u32) -> Self {
        let mut dataplane = Dataplane::load(LoadOptions { table_pool_slots: 1 << 20, flow_entries })
            .expect("load the load-balancer program");
        dataplane.writer.set_config(&standard_config()).expect("set config");
        Self { dataplane }
    }

    /// Writes backend `id` of `vip_id` at `address`.
    pub fn backend(&mut self, id: u32, vip_id: u32, address: IpAddr, health: u32) {
        let (words, family) = to_words(address);
        let backend = Backend { address: words, vip_id, family, _padding: [0; 3] };
        self.dataplane.writer.set_backend(id, backend, health).expect("set backend");
    }

    /// Publishes a VIP with `table`; returns its key.
    pub fn vip(&mut self, address: IpAddr, port: u16, protocol: u8, vip_id: u32, flags: u32, table: &[u32]) -> VipKey {
        let key = vip_key(address, port, protocol);
        self.dataplane.writer.publish_vip(key, VipSettings { vip_id, flags }, table).expect("publish vip");
        key
    }

    /// A VIP served by one backend (id = vip_id * 10) at `backend`, all slots.
    pub fn simple_vip(&mut self, address: IpAddr, port: u16, protocol: u8, vip_id: u32, backend: IpAddr) -> u32 {
        let id = vip_id * 10;
        self.backend(id, vip_id, backend, HEALTH_UP);
        self.vip(address, port, protocol, vip_id, VIP_OWNED, &[id; 13]);
        id
    }

    pub fn program(&self) -> &Xdp {
        self.dataplane.program().expect("program")
    }

    /// Runs one frame through the program: (action, output frame).
    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        run(self.program(), frame)
    }

    /// A reason counter (packets).
    pub fn reason(&self, reason: u32) -> u64 {
        self.dataplane.counters.reasons().expect("read counters")[reason as usize].packets
    }
}

/// Runs one frame through `program` once: (action, output frame).
pub fn run(program: &Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 512];
    let result = program
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

pub fn vip_key(address: IpAddr, port: u16, protocol: u8) -> VipKey {
    let (words, family) = to_words(address);
    VipKey { address: words, port: port.to_be(), protocol, family }
}

pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// A side-by-side hex dump of two frames, marking differing 16-byte rows.
pub fn hex_diff(expected: &[u8], got: &[u8]) -> String {
    let mut text = format!("expected {} bytes, got {} bytes\n", expected.len(), got.len());
    let rows = expected.len().max(got.len()).div_ceil(16);
    for row in 0..rows {
        let line = |bytes: &[u8]| {
            (row * 16..row * 16 + 16)
                .map(|i| bytes.get(i).map_or("  ".to_string(), |b| format!("{b:02x}")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (e, g) = (line(expected), line(got));
        let mark = if e == g { ' ' } else { '!' };
        text.push_str(&format!("{mark} {:04x}  {e}  |  {g}\n", row * 16));
    }
    text
}

/// Asserts the action and exact output bytes, printing a hex diff on mismatch.
pub fn assert_frame(case: &str, got: (u32, Vec<u8>), action: u32, expected: &[u8]) {
    assert_eq!(
        got.0,
        action,
        "{case}: action {} instead of {}",
        action_name(got.0),
        action_name(action)
    );
    assert!(got.1 == expected, "{case}: output differs\n{}", hex_diff(expected, &got.1));
}

/// How the frame is tagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tags {
    None,
    Single(u16),
    Double(u16, u16),
}

impl Tags {
    pub fn len(self) -> usize {
        match self {
            Tags::None => 0,
            Tags::Single(_) => 4,
            Tags::Double(..) => 8,
        }
    }

    pub fn is_empty(self) -> bool {
        self == Tags::None
    }

    /// The tag bytes as on the wire (TPID + TCI per tag).
    pub fn bytes(self) -> Vec<u8> {
        let tag = |tpid: u16, id: u16| [tpid.to_be_bytes(), id.to_be_bytes()].concat();
        match self {
            Tags::None => vec![],
            Tags::Single(id) => tag(0x8100, id),
            Tags::Double(outer, inner) => [tag(0x88a8, outer), tag(0x8100, inner)].concat(),
        }
    }
}

/// Transport of a test packet.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    TcpSyn,
    TcpAck,
    Udp,
}

/// A client packet: Ethernet (+ tags), IP, TCP or UDP, `payload`.
pub fn packet(tags: Tags, source: IpAddr, destination: IpAddr, transport: Transport, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let ethernet = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let ip = |step: etherparse::PacketBuilderStep<etherparse::Ethernet2Header>| match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => step.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => step.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let step = match tags {
        Tags::None => ip(ethernet),
        Tags::Single(id) => {
            let vlan = ethernet.single_vlan(id.try_into().unwrap());
            match (source, destination) {
                (IpAddr::V4(s), IpAddr::V4(d)) => vlan.ipv4(s.octets(), d.octets(), 64),
                (IpAddr::V6(s), IpAddr::V6(d)) => vlan.ipv6(s.octets(), d.octets(), 64),
                _ => panic!("mixed families"),
            }
        }
        Tags::Double(outer, inner) => {
            let vlan = ethernet.double_vlan(outer.try_into().unwrap(), inner.try_into().unwrap());
            match (source, destination) {
                (IpAddr::V4(s), IpAddr::V4(d)) => vlan.ipv4(s.octets(), d.octets(), 64),
                (IpAddr::V6(s), IpAddr::V6(d)) => vlan.ipv6(s.octets(), d.octets(), 64),
                _ => panic!("mixed families"),
            }
        }
    };
    let mut frame = Vec::new();
    match transport {
        Transport::TcpSyn => step.tcp(ports.0, ports.1, 1000, 64240).syn().write(&mut frame, payload),
        Transport::TcpAck => step.tcp(ports.0, ports.1, 1001, 64240).ack(5000).write(&mut frame, payload),
        Transport::Udp => step.udp(ports.0, ports.1).write(&mut frame, payload),
    }
    .expect("build packet");
    // etherparse writes the QinQ outer TPID as 0x8100 for both tags; use 802.1ad outside.
    if let Tags::Double(..) = tags {
        frame[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
    }
    frame
}

/// The per-flow entropy the data plane puts in outer sources and IPv6 flow labels: the hash of
/// the flow client:ports.0 -> vip:ports.1 over `protocol`.
pub fn entropy(client: IpAddr, vip: IpAddr, protocol: u8, ports: (u16, u16)) -> u32 {
    hash::flow_key_hash(&craft::flow_key(client, vip, protocol, ports), false)
}

/// The entropy of the flow a client's TCP or UDP `frame` (with `tags`) belongs to.
pub fn frame_entropy(frame: &[u8], tags: Tags) -> u32 {
    let ip = etherparse::IpSlice::from_slice(&frame[14 + tags.len()..]).expect("an IP packet");
    let (source, destination) = match &ip {
        etherparse::IpSlice::Ipv4(v4) => (IpAddr::V4(v4.header().source_addr()), IpAddr::V4(v4.header().destination_addr())),
        etherparse::IpSlice::Ipv6(v6) => (IpAddr::V6(v6.header().source_addr()), IpAddr::V6(v6.header().destination_addr())),
    };
    let payload = ip.payload();
    let protocol = payload.ip_number.0;
    assert!(protocol == PROTOCOL_TCP || protocol == PROTOCOL_UDP, "frame_entropy is for TCP and UDP frames");
    let ports = (u16::from_be_bytes([payload.payload[0], payload.payload[1]]), u16::from_be_bytes([payload.payload[2], payload.payload[3]]));
    entropy(source, destination, protocol, ports)
}

/// What the load balancer must send for `frame` (an untagged/tagged client packet with
/// `tags`) forwarded to `backend`: Ethernet to the next hop with the same tags, the outer
/// header, then the client's IP packet byte for byte (without Ethernet padding).
pub fn encapsulated(frame: &[u8], tags: Tags, backend: IpAddr, entropy: u32, config: &Config) -> Vec<u8> {
    let l2 = 14 + tags.len();
    let inner_v4 = frame[l2] >> 4 == 4;
    let inner_len = if inner_v4 {
        u16::from_be_bytes([frame[l2 + 2], frame[l2 + 3]]) as usize
    } else {
        40 + u16::from_be_bytes([frame[l2 + 4], frame[l2 + 5]]) as usize
    };
    let inner = &frame[l2..l2 + inner_len];
    let tos = if inner_v4 { inner[1] } else { ((u16::from_be_bytes([inner[0], inner[1]]) >> 4) & 0xff) as u8 };
    let mut out = Vec::new();
    out.extend_from_slice(&config.next_hop_mac);
    out.extend_from_slice(&config.interface_mac);
    out.extend_from_slice(&tags.bytes());
    let protocol = if inner_v4 { IpNumber(4) } else { IpNumber(41) };
    match backend {
        IpAddr::V4(destination) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let source = config.source_v4_base | (entropy & config.source_v4_mask);
            let mut header = Ipv4Header::new(inner_len as u16, 64, protocol, source.to_ne_bytes(), destination.octets()).unwrap();
            header.dscp = (tos >> 2).try_into().unwrap();
            header.ecn = (tos & 3).try_into().unwrap();
            header.dont_fragment = if inner_v4 { inner[6] & 0x40 != 0 } else { true };
            header.header_checksum = header.calc_header_checksum();
            out.extend_from_slice(&header.to_bytes());
        }
        IpAddr::V6(destination) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut source = config.source_v6_base;
            source[3] |= entropy & config.source_v6_mask;
            let source: Vec<u8> = source.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let header = Ipv6Header {
                traffic_class: tos,
                flow_label: Ipv6FlowLabel::try_new(entropy & 0xf_ffff).unwrap(),
                payload_length: inner_len as u16,
                next_header: protocol,
                hop_limit: 64,
                source: source.try_into().unwrap(),
                destination: destination.octets(),
            };
            out.extend_from_slice(&header.to_bytes());
        }
    }
    out.extend_from_slice(inner);
    out
}
