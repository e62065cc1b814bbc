//! ICMP at a VIP (echo replies, errors routed to the flow's backend, too-big replies) and what
//! the load balancer does with IPv4 options, fragments, IPv6 extension headers, truncated frames
//! and corrupt header fields. Map state goes through the real writer; packets and expected
//! outputs are built with etherparse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{
    icmpv4::DestUnreachableHeader,
    Icmpv4Type, Icmpv6Type, IpFragOffset, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header,
    Ipv4HeaderSlice, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header, Ipv6HeaderSlice, Ipv6RawExtHeader,
    Ipv6RoutingExtensions, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};
use failover_common::{maps::*, stats};
use failover_tests::{craft::*, *};

/// VIP addresses whose only service this node does not own (a standby).
const STANDBY4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 90);
const STANDBY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x80, 0, 0, 0, 0, 0x90);

/// What an ICMP reply frame says, after its checksums were verified from scratch.
struct Icmp {
    kind: u8,
    code: u8,
    /// Bytes 4..8 of the ICMP header.
    rest: [u8; 4],
    payload: Vec<u8>,
    /// IPv4 TTL or IPv6 hop limit.
    ttl: u8,
    source: IpAddr,
    destination: IpAddr,
}

/// Re-parses an ICMP or ICMPv6 frame with etherparse and checks its IPv4 header checksum and
/// its ICMP checksum (with the IPv6 pseudo-header for ICMPv6).
fn checked_icmp(frame: &[u8]) -> Icmp {
    let packet = SlicedPacket::from_ethernet(frame).expect("the reply parses");
    match (packet.net, packet.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
            let header = ip.header();
            assert_eq!(header.to_header().calc_header_checksum(), header.header_checksum(), "IPv4 header checksum");
            assert_eq!(icmp.icmp_type().calc_checksum(icmp.payload()), icmp.checksum(), "ICMP checksum");
            Icmp {
                kind: icmp.type_u8(),
                code: icmp.code_u8(),
                rest: icmp.bytes5to8(),
                payload: icmp.payload().to_vec(),
                ttl: header.ttl(),
                source: v4(header.source_addr()),
                destination: v4(header.destination_addr()),
            }
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
            let header = ip.header();
            assert!(icmp.is_checksum_valid(header.source(), header.destination()), "ICMPv6 checksum");
            Icmp {
                kind: icmp.type_u8(),
                code: icmp.code_u8(),
                rest: icmp.bytes5to8(),
                payload: icmp.payload().to_vec(),
                ttl: header.hop_limit(),
                source: v6(header.source_addr()),
                destination: v6(header.destination_addr()),
            }
        }
        _ => panic!("not an ICMP packet"),
    }
}


#[test]
fn echo_requests_to_owned_vip_addresses_are_answered() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    harness.simple_vip(v4(VIP4), 80, PROTOCOL_TCP, 1, backend4(1));
    harness.simple_vip(v6(VIP6), 443, PROTOCOL_UDP, 2, backend6(1));
    harness.backend(30, 3, backend4(3), HEALTH_UP);
    harness.vip(v4(STANDBY4), 80, PROTOCOL_TCP, 3, 0, &[30; 13]);
    harness.backend(40, 4, backend6(4), HEALTH_UP);
    harness.vip(v6(STANDBY6), 80, PROTOCOL_TCP, 4, 0, &[40; 13]);
    // Odd length: the checksum's last word is padded.
    let payload = b"ping payload, odd length";
    let replies = [
        ("v4 echo", Tags::None, v4(CLIENT4), v4(VIP4)),
        ("v4 echo, 802.1Q", Tags::Single(42), v4(CLIENT4), v4(VIP4)),
        ("v6 echo", Tags::None, v6(CLIENT6), v6(VIP6)),
        ("v6 echo, 802.1Q", Tags::Single(42), v6(CLIENT6), v6(VIP6)),
        ("v6 echo, 802.1ad + 802.1Q", Tags::Double(7, 42), v6(CLIENT6), v6(VIP6)),
    ];
    for (name, tags, client, vip) in replies {
        // TTL 57: the reply must not inherit it.
        let request = inbound(tags, &echo_request(ip(client, vip, 57), payload));
        let expected = outbound(tags, &echo_reply(ip(vip, client, 64), payload));
        let before = reasons(&harness);
        let got = harness.run(&request);
        assert_frame(name, got.clone(), XDP_TX, &expected);
        assert_counted_once(name, &harness, &before, stats::TX_ECHO_REPLY);
        let reply = checked_icmp(&got.1);
        let reply_type = if client.is_ipv4() { 0 } else { 129 };
        assert_eq!((reply.kind, reply.code), (reply_type, 0), "{name}: type and code");
        assert_eq!(reply.rest, [0x12, 0x34, 0x00, 0x07], "{name}: identifier and sequence kept");
        assert_eq!((reply.source, reply.destination, reply.ttl), (vip, client, 64), "{name}: addresses and TTL");
        assert_eq!(reply.payload, payload, "{name}: payload");
        assert_eq!(&got.1[..6], &CLIENT_MAC, "{name}: to the client's MAC");
        assert_eq!(&got.1[6..12], &LB_MAC, "{name}: from our MAC");
    }

    let passes = [
        ("v4 echo to a standby VIP", v4(CLIENT4), v4(STANDBY4), stats::PASS_NOT_OWNED),
        ("v6 echo to a standby VIP", v6(CLIENT6), v6(STANDBY6), stats::PASS_NOT_OWNED),
        ("v4 echo to a non-VIP address", v4(CLIENT4), v4(OTHER4), stats::PASS_NOT_VIP),
        ("v6 echo to a non-VIP address", v6(CLIENT6), v6(OTHER6), stats::PASS_NOT_VIP),
    ];
    for (name, client, destination, reason) in passes {
        let request = inbound(Tags::None, &echo_request(ip(client, destination, 57), payload));
        let before = reasons(&harness);
        assert_frame(name, harness.run(&request), XDP_PASS, &request);
        assert_counted_once(name, &harness, &before, reason);
    }

    // Other ICMP to a VIP address (here a unicast neighbour solicitation) is the kernel's.
    let mut solicitation = Vec::new();
    PacketBuilder::ip(ip(v6(CLIENT6), v6(VIP6), 255))
        .icmpv6_raw(135, 0, [0; 4])
        .write(&mut solicitation, &VIP6.octets())
        .unwrap();
    let solicitation = inbound(Tags::None, &solicitation);
    let before = reasons(&harness);
    assert_frame("neighbour solicitation", harness.run(&solicitation), XDP_PASS, &solicitation);
    assert_counted_once("neighbour solicitation", &harness, &before, stats::PASS_ICMP_OTHER);
}

/// comparing the program's output with the expected encapsulation to each.
fn backend_of(harness: &Harness, frame: &[u8], tags: Tags, candidates: &[IpAddr]) -> IpAddr {
    let (action, out) = harness.run(frame);
    assert_eq!(action, XDP_TX, "the flow's packet is forwarded");
    *candidates
        .iter()
        .find(|backend| encapsulated(frame, tags, **backend, frame_entropy(frame, tags), &standard_config()) == out)
        .expect("forwarded to one of the VIP's backends")
}

/// A VIP served by `backends` (ids vip_id * 10 + n) spread over a 13-slot table.
fn spread_vip(harness: &mut Harness, address: IpAddr, port: u16, protocol: u8, vip_id: u32, backends: &[IpAddr]) {
    let ids: Vec<u32> = (0..backends.len() as u32).map(|n| vip_id * 10 + n).collect();
    for (id, backend) in ids.iter().zip(backends) {
        harness.backend(*id, vip_id, *backend, HEALTH_UP);
    }
    let table: Vec<u32> = (0..13).map(|slot| ids[slot % ids.len()]).collect();
    harness.vip(address, port, protocol, vip_id, VIP_OWNED, &table);
}

struct ErrorCase {
    name: &'static str,
    tags: Tags,
    client: IpAddr,
    vip: IpAddr,
    router: IpAddr,
    protocol: u8,
    vip_port: u16,
    client_port: u16,
    kind: ErrorKind,
    /// IPv4 options of the quoted header.
    quote_options: &'static [u8],
    /// Send a packet of the flow before the error.
    established: bool,
}

#[test]
fn icmp_errors_about_vip_flows_go_to_the_flows_backend() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let tcp4 = [backend4(1), backend4(2), backend4(3)];
    let udp4 = [backend4(4), backend4(5), backend4(6)];
    let tcp6 = [backend6(1), backend6(2), backend6(3)];
    let udp6 = [backend6(4), backend6(5), backend6(6)];
    spread_vip(&mut harness, v4(VIP4), 80, PROTOCOL_TCP, 1, &tcp4);
    spread_vip(&mut harness, v4(VIP4), 53, PROTOCOL_UDP, 2, &udp4);
    spread_vip(&mut harness, v6(VIP6), 80, PROTOCOL_TCP, 3, &tcp6);
    spread_vip(&mut harness, v6(VIP6), 53, PROTOCOL_UDP, 4, &udp6);
    let candidates = |vip: IpAddr, protocol: u8| match (vip.is_ipv4(), protocol) {
        (true, PROTOCOL_TCP) => tcp4,
        (true, _) => udp4,
        (false, PROTOCOL_TCP) => tcp6,
        (false, _) => udp6,
    };
    let (c4, c6, r4, r6) = (v4(CLIENT4), v6(CLIENT6), v4(ROUTER4), v6(ROUTER6));
    let case = |name, tags, client, vip, router, protocol, vip_port, client_port, kind, quote_options, established| ErrorCase {
        name, tags, client, vip, router, protocol, vip_port, client_port, kind, quote_options, established,
    };
    use ErrorKind::*;
    let cases = [
        case("v4 tcp fragmentation needed", Tags::None, c4, v4(VIP4), r4, PROTOCOL_TCP, 80, 40001, FragmentationNeeded, &[][..], true),
        case("v4 tcp fragmentation needed, other port", Tags::None, c4, v4(VIP4), r4, PROTOCOL_TCP, 80, 40002, FragmentationNeeded, &[], true),
        case("v4 udp fragmentation needed", Tags::None, c4, v4(VIP4), r4, PROTOCOL_UDP, 53, 40003, FragmentationNeeded, &[], true),
        case("v4 udp fragmentation needed, 802.1Q", Tags::Single(42), c4, v4(VIP4), r4, PROTOCOL_UDP, 53, 40004, FragmentationNeeded, &[], true),
        case("v4 tcp time exceeded", Tags::None, c4, v4(VIP4), r4, PROTOCOL_TCP, 80, 40005, TimeExceeded, &[], true),
        case("v4 tcp, quoted header with options", Tags::None, c4, v4(VIP4), r4, PROTOCOL_TCP, 80, 40006, FragmentationNeeded, &[1, 1, 1, 1, 1, 1, 1, 0], true),
        case("v6 tcp packet too big", Tags::None, c6, v6(VIP6), r6, PROTOCOL_TCP, 80, 40007, PacketTooBig, &[], true),
        case("v6 tcp packet too big, other port", Tags::None, c6, v6(VIP6), r6, PROTOCOL_TCP, 80, 40008, PacketTooBig, &[], true),
        case("v6 udp packet too big", Tags::None, c6, v6(VIP6), r6, PROTOCOL_UDP, 53, 40009, PacketTooBig, &[], true),
        case("v6 udp packet too big, 802.1ad + 802.1Q", Tags::Double(7, 42), c6, v6(VIP6), r6, PROTOCOL_UDP, 53, 40010, PacketTooBig, &[], true),
        case("v6 tcp destination unreachable", Tags::None, c6, v6(VIP6), r6, PROTOCOL_TCP, 80, 40011, Unreachable6, &[], true),
        case("v4 tcp error before any packet of the flow", Tags::None, c4, v4(VIP4), r4, PROTOCOL_TCP, 80, 40012, FragmentationNeeded, &[], false),
        case("v6 udp error before any packet of the flow", Tags::None, c6, v6(VIP6), r6, PROTOCOL_UDP, 53, 40013, PacketTooBig, &[], false),
    ];
    let mut chosen = Vec::new();
    for case in &cases {
        let name = case.name;
        let ports = (case.client_port, case.vip_port);
        let client_frame = inbound(case.tags, &transport(ip(case.client, case.vip, 64), case.protocol, ports, b"request"));
        let reply_headers = match (case.vip, case.client) {
            (IpAddr::V4(vip), IpAddr::V4(client)) => ip4(vip, client, case.quote_options, true),
            (vip, client) => ip(vip, client, 64),
        };
        let quote = reply_quote(reply_headers, case.protocol, (case.vip_port, case.client_port));
        let error = frame(case.tags, LB_MAC, ROUTER_MAC, &icmp_error(case.router, case.vip, case.kind, &quote));
        let candidates = candidates(case.vip, case.protocol);
        let backend = if case.established {
            backend_of(&harness, &client_frame, case.tags, &candidates)
        } else {
            // Where the table sends the flow; checked against the flow's packet below.
            let (_, out) = harness.run(&error);
            *candidates
                .iter()
                .find(|backend| out == encapsulated(&error, case.tags, **backend, entropy(case.client, case.vip, case.protocol, ports), &standard_config()))
                .unwrap_or_else(|| panic!("{name}: the error is forwarded to one of the VIP's backends"))
        };
        let flows = flow_count(&harness);
        let expected = encapsulated(&error, case.tags, backend, entropy(case.client, case.vip, case.protocol, ports), &standard_config());
        let before = reasons(&harness);
        assert_frame(name, harness.run(&error), XDP_TX, &expected);
        assert_counted_once(name, &harness, &before, stats::TX_ICMP_ERROR_FORWARD);
        assert_eq!(flow_count(&harness), flows, "{name}: the ICMP error creates no flow entry");
        if !case.established {
            assert!(harness.dataplane.counters.flow(&flow_key(case.client, case.vip, case.protocol, ports)).is_none(), "{name}: no entry yet");
            assert_eq!(
                backend_of(&harness, &client_frame, case.tags, &candidates),
                backend,
                "{name}: the flow's first packet goes where its error went"
            );
        }
        chosen.push(backend);
    }
    chosen.sort();
    chosen.dedup();
    assert!(chosen.len() > 2, "the fixtures reach several backends, so the backend comparison means something: {chosen:?}");

    // Errors that are not about a VIP flow, or that cannot be routed.
    let quote4 = reply_quote(ip(v4(VIP4), c4, 64), PROTOCOL_TCP, (80, 40001));
    let quote6 = reply_quote(ip(v6(VIP6), c6, 64), PROTOCOL_TCP, (80, 40007));
    let mut bad_version = quote4.clone();
    bad_version[0] = 0x65;
    let mut short_ihl = quote4.clone();
    short_ihl[0] = 0x43;
    let passes = [
        ("quotes a flow of a non-VIP address", r4, v4(VIP4), FragmentationNeeded, reply_quote(ip(v4(OTHER4), c4, 64), PROTOCOL_TCP, (80, 40001)), stats::PASS_ICMP_OTHER),
        ("quotes a VIP address on a port without a service", r4, v4(VIP4), FragmentationNeeded, reply_quote(ip(v4(VIP4), c4, 64), PROTOCOL_TCP, (81, 40001)), stats::PASS_ICMP_OTHER),
        ("quotes UDP where the VIP port is TCP only", r4, v4(VIP4), FragmentationNeeded, reply_quote(ip(v4(VIP4), c4, 64), PROTOCOL_UDP, (80, 40001)), stats::PASS_ICMP_OTHER),
        ("v6 quotes a flow of a non-VIP address", r6, v6(VIP6), PacketTooBig, reply_quote(ip(v6(OTHER6), c6, 64), PROTOCOL_TCP, (80, 40007)), stats::PASS_ICMP_OTHER),
        ("sent to a non-VIP address", r4, v4(OTHER4), FragmentationNeeded, quote4.clone(), stats::PASS_NOT_VIP),
    ];
    for (name, router, destination, kind, quote, reason) in passes {
        let error = frame(Tags::None, LB_MAC, ROUTER_MAC, &icmp_error(router, destination, kind, &quote));
        let flows = flow_count(&harness);
        let before = reasons(&harness);
        assert_frame(name, harness.run(&error), XDP_PASS, &error);
        assert_counted_once(name, &harness, &before, reason);
        assert_eq!(flow_count(&harness), flows, "{name}: no flow entry");
    }
    let unroutable = [
        ("quote cut inside the IPv4 header", r4, FragmentationNeeded, quote4[..12].to_vec()),
        ("quote cut after the IPv4 header", r4, FragmentationNeeded, quote4[..20].to_vec()),
        ("quote cut inside the ports", r4, FragmentationNeeded, quote4[..22].to_vec()),
        ("quoted IHL below 5", r4, FragmentationNeeded, short_ihl),
        ("quoted version not 4", r4, FragmentationNeeded, bad_version),
        ("v6 quote cut inside the IPv6 header", r6, PacketTooBig, quote6[..30].to_vec()),
        ("v6 quote cut inside the ports", r6, PacketTooBig, quote6[..43].to_vec()),
    ];
    for (name, router, kind, quote) in unroutable {
        let vip = if router.is_ipv4() { v4(VIP4) } else { v6(VIP6) };
        let error = frame(Tags::None, LB_MAC, ROUTER_MAC, &icmp_error(router, vip, kind, &quote));
        let before = reasons(&harness);
        assert_frame(name, harness.run(&error), XDP_DROP, &error);
        assert_counted_once(name, &harness, &before, stats::DROP_ICMP_ERROR_UNROUTABLE);
    }
}

/// The expected too-big reply to `packet` (IP and up, as the client sent it): ICMP
/// fragmentation-needed quoting the header and eight bytes, or ICMPv6 packet-too-big quoting
/// the 40-byte header and eight bytes, from the VIP to the client.
fn too_big_reply(tags: Tags, packet: &[u8], mtu: u16) -> Vec<u8> {
    let mut out = Vec::new();
    if packet[0] >> 4 == 4 {
        let original = Ipv4HeaderSlice::from_slice(packet).unwrap();
        let quote = &packet[..original.slice().len() + 8];
        let mut header = Ipv4Header::new(0, 64, IpNumber::ICMP, original.destination(), original.source()).unwrap();
        header.dont_fragment = false;
        PacketBuilder::ip(IpHeaders::Ipv4(header, Ipv4Extensions::default()))
            .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu }))
            .write(&mut out, quote)
            .unwrap();
    } else {
        let original = Ipv6HeaderSlice::from_slice(packet).unwrap();
        let quote = &packet[..48];
        PacketBuilder::ip(ip(v6(original.destination_addr()), v6(original.source_addr()), 64))
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: mtu as u32 })
            .write(&mut out, quote)
            .unwrap();
    }
    outbound(tags, &out)
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Forward(IpAddr),
    TooBig(u16),
    DropNoDontFragment,
}

#[test]
fn packets_too_big_for_the_tunnel_get_too_big_replies() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    // Port 80: same-family tunnel; port 443: the other family's tunnel.
    harness.simple_vip(v4(VIP4), 80, PROTOCOL_TCP, 1, backend4(1));
    harness.simple_vip(v4(VIP4), 443, PROTOCOL_TCP, 2, backend6(1));
    harness.simple_vip(v6(VIP6), 80, PROTOCOL_TCP, 3, backend6(1));
    harness.simple_vip(v6(VIP6), 443, PROTOCOL_TCP, 4, backend4(1));
    let options6 = [1, 1, 1, 0];
    let options15 = {
        let mut options = [1u8; 40];
        options[39] = 0;
        options
    };
    let (c4, c6) = (v4(CLIENT4), v6(CLIENT6));
    use Outcome::*;
    let cases: Vec<(&str, Tags, IpHeaders, u16, usize, Outcome)> = vec![
        ("v4 DF 1490 + 20 > 1500", Tags::None, ip4(CLIENT4, VIP4, &[], true), 80, 1490, TooBig(1480)),
        ("v4 DF 1490 + 20 > 1500, 802.1Q", Tags::Single(42), ip4(CLIENT4, VIP4, &[], true), 80, 1490, TooBig(1480)),
        ("v4 DF, one byte over", Tags::None, ip4(CLIENT4, VIP4, &[], true), 80, 1481, TooBig(1480)),
        ("v4 DF with options (IHL 6)", Tags::None, ip4(CLIENT4, VIP4, &options6, true), 80, 1490, TooBig(1480)),
        ("v4 DF with options (IHL 15)", Tags::Single(42), ip4(CLIENT4, VIP4, &options15, true), 80, 1490, TooBig(1480)),
        ("v4 without DF", Tags::None, ip4(CLIENT4, VIP4, &[], false), 80, 1490, DropNoDontFragment),
        ("v4 without DF, with options", Tags::None, ip4(CLIENT4, VIP4, &options6, false), 80, 1490, DropNoDontFragment),
        ("v4 at the limit (1480 + 20)", Tags::None, ip4(CLIENT4, VIP4, &[], true), 80, 1480, Forward(backend4(1))),
        ("v4 at the limit without DF", Tags::None, ip4(CLIENT4, VIP4, &[], false), 80, 1480, Forward(backend4(1))),
        ("v4 over a v6 tunnel, one byte over", Tags::None, ip4(CLIENT4, VIP4, &[], true), 443, 1461, TooBig(1460)),
        ("v4 over a v6 tunnel at the limit", Tags::None, ip4(CLIENT4, VIP4, &[], true), 443, 1460, Forward(backend6(1))),
        ("v6 1480 + 40 > 1500", Tags::None, ip(c6, v6(VIP6), 64), 80, 1480, TooBig(1460)),
        ("v6 one byte over, 802.1Q", Tags::Single(42), ip(c6, v6(VIP6), 64), 80, 1461, TooBig(1460)),
        ("v6 too big, 802.1ad + 802.1Q", Tags::Double(7, 42), ip(c6, v6(VIP6), 64), 80, 1500, TooBig(1460)),
        ("v6 at the limit (1460 + 40)", Tags::None, ip(c6, v6(VIP6), 64), 80, 1460, Forward(backend6(1))),
        ("v6 over a v4 tunnel, one byte over", Tags::None, ip(c6, v6(VIP6), 64), 443, 1481, TooBig(1480)),
        ("v6 over a v4 tunnel at the limit", Tags::None, ip(c6, v6(VIP6), 64), 443, 1480, Forward(backend4(1))),
    ];
    for (name, tags, headers, port, total, outcome) in cases {
        let client = if matches!(headers, IpHeaders::Ipv4(..)) { c4 } else { c6 };
        let ports = (40000, port);
        let packet = sized_tcp(headers, ports, total);
        let request = inbound(tags, &packet);
        let before = reasons(&harness);
        let got = harness.run(&request);
        match outcome {
            Forward(backend) => {
                let expected = encapsulated(&request, tags, backend, frame_entropy(&request, tags), &standard_config());
                assert_eq!(expected.len() - 14 - tags.len(), usize::from(MTU), "{name}: exactly at the MTU");
                assert_frame(name, got, XDP_TX, &expected);
                assert_counted_once(name, &harness, &before, stats::TX_FORWARD);
            }
            DropNoDontFragment => {
                assert_frame(name, got, XDP_DROP, &request);
                assert_counted_once(name, &harness, &before, stats::DROP_TOO_BIG_NO_DF);
            }
            TooBig(mtu) => {
                let expected = too_big_reply(tags, &packet, mtu);
                assert_frame(name, got.clone(), XDP_TX, &expected);
                assert_counted_once(name, &harness, &before, stats::TX_TOO_BIG);
                let reply = checked_icmp(&got.1);
                let vip = if client.is_ipv4() { v4(VIP4) } else { v6(VIP6) };
                assert_eq!((reply.source, reply.destination, reply.ttl), (vip, client, 64), "{name}: from the VIP to the client");
                if client.is_ipv4() {
                    assert_eq!((reply.kind, reply.code), (3, 4), "{name}: fragmentation needed");
                    assert_eq!(reply.rest, [0, 0, (mtu >> 8) as u8, mtu as u8], "{name}: next-hop MTU");
                    let quoted = Ipv4HeaderSlice::from_slice(&reply.payload).unwrap();
                    let length = quoted.slice().len();
                    assert_eq!(length, header_len_of(&packet), "{name}: the whole header is quoted");
                    assert_eq!(reply.payload, packet[..length + 8], "{name}: header and eight bytes quoted");
                } else {
                    assert_eq!((reply.kind, reply.code), (2, 0), "{name}: packet too big");
                    assert_eq!(reply.rest, u32::from(mtu).to_be_bytes(), "{name}: MTU");
                    assert_eq!(reply.payload, packet[..48], "{name}: header and eight bytes quoted");
                }
                assert_eq!(&got.1[12..12 + tags.len()], &tags.bytes()[..], "{name}: tags kept");
            }
        }
    }
}

fn header_len_of(packet: &[u8]) -> usize {
    usize::from(packet[0] & 0x0f) * 4
}

#[test]
fn ipv4_options_move_the_transport_header() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    harness.simple_vip(v4(VIP4), 80, PROTOCOL_TCP, 1, backend4(1));
    harness.simple_vip(v4(VIP4), 81, PROTOCOL_TCP, 2, backend4(2));
    let client = v4(CLIENT4);
    // Options whose first four bytes, read as ports, name the *other* service (NOP, NOP, EOL,
    // then padding): a parser that ignored the IHL would forward to the other backend.
    let cases = [
        ("to port 80, options read as port 81", 80, [1, 1, 0, 81, 0, 0, 0, 0], backend4(1), 1),
        ("to port 81, options read as port 80", 81, [1, 1, 0, 80, 0, 0, 0, 0], backend4(2), 2),
    ];
    for (name, port, options, backend, vip_id) in cases {
        let ports = (40000, port);
        let packet = transport(ip4(CLIENT4, VIP4, &options, true), PROTOCOL_TCP, ports, b"with options");
        assert_eq!(packet[0], 0x47, "{name}: IHL 7");
        let request = inbound(Tags::None, &packet);
        let expected = encapsulated(&request, Tags::None, backend, frame_entropy(&request, Tags::None), &standard_config());
        let before = reasons(&harness);
        let vip_before = harness.dataplane.counters.vip(vip_id).unwrap().packets;
        assert_frame(name, harness.run(&request), XDP_TX, &expected);
        assert_counted_once(name, &harness, &before, stats::TX_FORWARD);
        assert_eq!(harness.dataplane.counters.vip(vip_id).unwrap().packets, vip_before + 1, "{name}: counted for the right VIP");
    }

    // The largest header (IHL 15) and a padded minimum frame: padding is not tunnelled.
    let mut options = [1u8; 40];
    options[39] = 0;
    let ports = (40001, 80);
    let request = inbound(Tags::None, &transport(ip4(CLIENT4, VIP4, &options, true), PROTOCOL_TCP, ports, b"x"));
    let expected = encapsulated(&request, Tags::None, backend4(1), frame_entropy(&request, Tags::None), &standard_config());
    assert_frame("IHL 15", harness.run(&request), XDP_TX, &expected);
    let ports = (40002, 80);
    let mut padded = inbound(Tags::None, &transport(ip(client, v4(VIP4), 64), PROTOCOL_TCP, ports, b""));
    assert_eq!(padded.len(), 54);
    padded.resize(60, 0);
    let expected = encapsulated(&padded, Tags::None, backend4(1), frame_entropy(&padded, Tags::None), &standard_config());
    assert_eq!(expected.len(), 14 + 20 + 40, "the expected output has no padding");
    assert_frame("padded minimum frame", harness.run(&padded), XDP_TX, &expected);
}

/// An IPv4 TCP fragment (IP and up): the first carries the TCP header, later ones carry data.
fn fragment4(destination: Ipv4Addr, offset: u16, more: bool) -> Vec<u8> {
    let mut header = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT4.octets(), destination.octets()).unwrap();
    header.dont_fragment = false;
    header.more_fragments = more;
    header.fragment_offset = IpFragOffset::try_new(offset).unwrap();
    header.identification = 0x5151;
    if offset == 0 {
        let payload = [0x42u8; 64];
        return transport(IpHeaders::Ipv4(header, Ipv4Extensions::default()), PROTOCOL_TCP, (40000, 80), &payload);
    }
    let payload = [0x43u8; 24];
    header.set_payload_len(payload.len()).unwrap();
    let mut out = Vec::new();
    header.write(&mut out).unwrap();
    out.extend_from_slice(&payload);
    out
}

#[test]
fn ipv4_fragments_to_a_vip_are_dropped() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    harness.simple_vip(v4(VIP4), 80, PROTOCOL_TCP, 1, backend4(1));
    let fragments = [("first fragment", 0, true), ("middle fragment", 185, true), ("last fragment", 370, false)];
    for (name, offset, more) in fragments {
        let to_vip = inbound(Tags::None, &fragment4(VIP4, offset, more));
        let before = reasons(&harness);
        assert_frame(name, harness.run(&to_vip), XDP_DROP, &to_vip);
        assert_counted_once(name, &harness, &before, stats::DROP_FRAGMENT);
        let to_other = inbound(Tags::None, &fragment4(OTHER4, offset, more));
        let before = reasons(&harness);
        assert_frame(name, harness.run(&to_other), XDP_PASS, &to_other);
        assert_counted_once(name, &harness, &before, stats::PASS_NOT_VIP);
    }
    // A tagged first fragment is still a fragment.
    let tagged = inbound(Tags::Single(42), &fragment4(VIP4, 0, true));
    assert_frame("tagged first fragment", harness.run(&tagged), XDP_DROP, &tagged);
    assert_eq!(harness.reason(stats::DROP_FRAGMENT), 4);
    assert_eq!(harness.reason(stats::TX_FORWARD), 0);
}

#[test]
fn ipv6_extension_headers_go_to_the_kernel() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    harness.simple_vip(v6(VIP6), 80, PROTOCOL_TCP, 1, backend6(1));
    let padding = [1u8, 4, 0, 0, 0, 0];
    let with = |extensions: Ipv6Extensions, destination: Ipv6Addr| {
        let headers = IpHeaders::Ipv6(
            Ipv6Header { hop_limit: 64, source: CLIENT6.octets(), destination: destination.octets(), ..Default::default() },
            extensions,
        );
        inbound(Tags::None, &transport(headers, PROTOCOL_TCP, (40000, 80), b"extended"))
    };
    let hop_by_hop = Ipv6Extensions {
        hop_by_hop_options: Some(Ipv6RawExtHeader::new_raw(IpNumber::TCP, &padding).unwrap()),
        ..Default::default()
    };
    let destination_options = Ipv6Extensions {
        destination_options: Some(Ipv6RawExtHeader::new_raw(IpNumber::TCP, &padding).unwrap()),
        ..Default::default()
    };
    let routing = Ipv6Extensions {
        routing: Some(Ipv6RoutingExtensions {
            routing: Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[0, 0, 0, 0, 0, 0]).unwrap(),
            final_destination_options: None,
        }),
        ..Default::default()
    };
    let fragment = Ipv6Extensions {
        fragment: Some(Ipv6FragmentHeader {
            next_header: IpNumber::TCP,
            fragment_offset: IpFragOffset::ZERO,
            more_fragments: true,
            identification: 0x5151,
        }),
        ..Default::default()
    };
    // A later fragment: the fragment header (next header 44) is followed by data only.
    let later_fragment = {
        let mut ip_packet = Ipv6Header {
            payload_length: 8 + 16,
            next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
            hop_limit: 64,
            source: CLIENT6.octets(),
            destination: VIP6.octets(),
            ..Default::default()
        }
        .to_bytes()
        .to_vec();
        Ipv6FragmentHeader {
            next_header: IpNumber::TCP,
            fragment_offset: IpFragOffset::try_new(100).unwrap(),
            more_fragments: false,
            identification: 0x5151,
        }
        .write(&mut ip_packet)
        .unwrap();
        ip_packet.extend_from_slice(&[0x43; 16]);
        inbound(Tags::None, &ip_packet)
    };
    let cases = [
        ("hop-by-hop options", with(hop_by_hop.clone(), VIP6)),
        ("destination options", with(destination_options, VIP6)),
        ("routing header", with(routing, VIP6)),
        ("first fragment", with(fragment, VIP6)),
        ("later fragment", later_fragment),
    ];
    for (name, frame) in &cases {
        let before = reasons(&harness);
        assert_frame(name, harness.run(frame), XDP_PASS, frame);
        assert_counted_once(name, &harness, &before, stats::PASS_IPV6_EXTENSION);
    }
    let other = with(hop_by_hop, OTHER6);
    let before = reasons(&harness);
    assert_frame("hop-by-hop to a non-VIP address", harness.run(&other), XDP_PASS, &other);
    assert_counted_once("hop-by-hop to a non-VIP address", &harness, &before, stats::PASS_NOT_VIP);
}

/// A valid VIP frame, what the program must send for it, and the frame length from which the
/// IP header (up to and including the destination address) is readable.
struct Fixture {
    name: &'static str,
    frame: Vec<u8>,
    expected: Vec<u8>,
    destination_readable: usize,
}

#[test]
fn truncated_frames_are_never_transmitted() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    harness.simple_vip(v4(VIP4), 80, PROTOCOL_TCP, 1, backend4(1));
    harness.simple_vip(v4(VIP4), 53, PROTOCOL_UDP, 2, backend4(2));
    harness.simple_vip(v6(VIP6), 80, PROTOCOL_TCP, 3, backend6(1));
    harness.simple_vip(v6(VIP6), 53, PROTOCOL_UDP, 4, backend6(2));
    let (c4, c6) = (v4(CLIENT4), v6(CLIENT6));
    let config = standard_config();
    let forwarded = |name, tags: Tags, headers: IpHeaders, protocol, port, backend| {
        let client = if matches!(headers, IpHeaders::Ipv4(..)) { c4 } else { c6 };
        let ip_len = header_len(&headers);
        let ports = (40000, port);
        let frame = inbound(tags, &transport(headers, protocol, ports, b"abc"));
        let expected = encapsulated(&frame, tags, backend, frame_entropy(&frame, tags), &config);
        // The program reads the base header (20 / 40 bytes) before it knows the destination.
        let base = if client.is_ipv4() { 20 } else { 40 };
        assert!(ip_len >= base);
        Fixture { name, frame, expected, destination_readable: 14 + tags.len() + base }
    };
    let echo = |name, client: IpAddr, vip: IpAddr| Fixture {
        name,
        frame: inbound(Tags::None, &echo_request(ip(client, vip, 64), b"ping")),
        expected: outbound(Tags::None, &echo_reply(ip(vip, client, 64), b"ping")),
        destination_readable: 14 + if client.is_ipv4() { 20 } else { 40 },
    };
    let fixtures = [
        forwarded("v4 tcp", Tags::None, ip(c4, v4(VIP4), 64), PROTOCOL_TCP, 80, backend4(1)),
        forwarded("v4 udp, 802.1Q", Tags::Single(42), ip(c4, v4(VIP4), 64), PROTOCOL_UDP, 53, backend4(2)),
        forwarded("v4 tcp with options", Tags::None, ip4(CLIENT4, VIP4, &[1, 1, 1, 1, 1, 1, 1, 0], true), PROTOCOL_TCP, 80, backend4(1)),
        forwarded("v6 tcp", Tags::None, ip(c6, v6(VIP6), 64), PROTOCOL_TCP, 80, backend6(1)),
        forwarded("v6 udp, 802.1ad + 802.1Q", Tags::Double(7, 42), ip(c6, v6(VIP6), 64), PROTOCOL_UDP, 53, backend6(2)),
        echo("v4 icmp echo", c4, v4(VIP4)),
        echo("v6 icmpv6 echo", c6, v6(VIP6)),
    ];
    for fixture in &fixtures {
        let name = fixture.name;
        for length in 0..fixture.frame.len() {
            let cut = &fixture.frame[..length];
            if length < 14 {
                let mut out = vec![0u8; 64];
                let refused = harness
                    .program()
                    .test_run(TestRunOptions { data_in: Some(cut), data_out: Some(&mut out), ..Default::default() });
                assert!(refused.is_err(), "{name} cut to {length}: the kernel refuses frames shorter than Ethernet");
                continue;
            }
            let case = format!("{name} cut to {length} of {}", fixture.frame.len());
            let before = reasons(&harness);
            let got = harness.run(cut);
            assert!(got.0 != XDP_TX && got.0 != 0, "{case}: {}", action_name(got.0));
            if length < fixture.destination_readable {
                assert_frame(&case, got, XDP_PASS, cut);
                assert_counted_once(&case, &harness, &before, stats::PASS_UNPARSED);
            } else {
                assert_frame(&case, got, XDP_DROP, cut);
                assert_counted_once(&case, &harness, &before, stats::DROP_MALFORMED);
            }
        }
        assert_frame(&format!("{name} whole"), harness.run(&fixture.frame), XDP_TX, &fixture.expected);
    }
}

#[test]
fn corrupt_header_fields() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    harness.simple_vip(v4(VIP4), 80, PROTOCOL_TCP, 1, backend4(1));
    harness.simple_vip(v6(VIP6), 80, PROTOCOL_UDP, 2, backend6(1));
    harness.simple_vip(v4(VIP4), 53, PROTOCOL_UDP, 3, backend4(2));
    let tcp4 = inbound(Tags::None, &transport(ip(v4(CLIENT4), v4(VIP4), 64), PROTOCOL_TCP, (40000, 80), b"abcdefgh"));
    let udp6 = inbound(Tags::None, &transport(ip(v6(CLIENT6), v6(VIP6), 64), PROTOCOL_UDP, (40000, 80), b"abcdefgh"));
    let edit = |frame: &[u8], at: usize, bytes: &[u8]| {
        let mut frame = frame.to_vec();
        frame[at..at + bytes.len()].copy_from_slice(bytes);
        frame
    };
    // Checksums are left stale: the program does not verify them, and the kernel would.
    let drops = [
        ("IHL 4", edit(&tcp4, 14, &[0x44])),
        ("IHL 0", edit(&tcp4, 14, &[0x40])),
        ("total length 19 < header", edit(&tcp4, 16, &19u16.to_be_bytes())),
        ("total length 0", edit(&tcp4, 16, &0u16.to_be_bytes())),
        ("total length one byte beyond the frame", edit(&tcp4, 16, &((tcp4.len() - 14 + 1) as u16).to_be_bytes())),
        ("IHL 7 and total length 24", edit(&edit(&tcp4, 14, &[0x47]), 16, &24u16.to_be_bytes())),
        ("IHL 15 beyond the frame", edit(&edit(&tcp4, 14, &[0x4f]), 16, &60u16.to_be_bytes())),
        ("TCP header cut inside the IP length", edit(&tcp4[..14 + 30], 16, &30u16.to_be_bytes())),
        (
            "TCP header cut inside the IP length, padded frame",
            {
                let mut frame = edit(&tcp4[..14 + 30], 16, &30u16.to_be_bytes());
                frame.resize(tcp4.len(), 0);
                frame
            },
        ),
        ("UDP header cut inside the IP length", edit(&udp6[..14 + 44], 18, &4u16.to_be_bytes())),
        ("v6 payload length one byte beyond the frame", edit(&udp6, 18, &((udp6.len() - 54 + 1) as u16).to_be_bytes())),
    ];
    for (name, frame) in &drops {
        let before = reasons(&harness);
        assert_frame(name, harness.run(frame), XDP_DROP, frame);
        assert_counted_once(name, &harness, &before, stats::DROP_MALFORMED);
    }
    let mut echo_cut = inbound(Tags::None, &echo_request(ip(v4(CLIENT4), v4(VIP4), 64), b""));
    echo_cut.truncate(14 + 20 + 4);
    echo_cut[16..18].copy_from_slice(&24u16.to_be_bytes());
    let before = reasons(&harness);
    assert_frame("ICMP header cut inside the IP length", harness.run(&echo_cut), XDP_DROP, &echo_cut);
    assert_counted_once("ICMP header cut inside the IP length", &harness, &before, stats::DROP_MALFORMED);

    let passes = [
        ("version 6 in an IPv4 frame", edit(&tcp4, 14, &[0x65])),
        ("version 5 in an IPv4 frame", edit(&tcp4, 14, &[0x55])),
        ("version 4 in an IPv6 frame", edit(&udp6, 14, &[0x40])),
        ("IHL 4 to a non-VIP address", edit(&edit(&tcp4, 14, &[0x44]), 30, &OTHER4.octets())),
    ];
    for (index, (name, frame)) in passes.iter().enumerate() {
        let reason = if index == 3 { stats::PASS_NOT_VIP } else { stats::PASS_UNPARSED };
        let before = reasons(&harness);
        assert_frame(name, harness.run(frame), XDP_PASS, frame);
        assert_counted_once(name, &harness, &before, reason);
    }
}

#[test]
fn icmp_errors_too_big_for_the_tunnel_get_no_icmp_error_back() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    harness.simple_vip(v4(VIP4), 80, PROTOCOL_TCP, 1, backend4(1));
    harness.simple_vip(v6(VIP6), 80, PROTOCOL_TCP, 2, backend6(1));
    // RFC 1122 §3.2.2 and RFC 4443 §2.4 (e): no ICMP error is ever sent about an ICMP error.
    // These errors about VIP flows are too big to tunnel (IP length + tunnel > 1500), so they
    // cannot be forwarded; answering the router with fragmentation-needed / packet-too-big
    // would be an ICMP error about an ICMP error.
    let quote4 = sized_tcp(ip4(VIP4, CLIENT4, &[], true), (80, 40000), 1490 - 28);
    let quote6 = sized_tcp(ip(v6(VIP6), v6(CLIENT6), 64), (80, 40000), 1500 - 48);
    let cases = [
        ("v4 fragmentation needed with DF, 1490 bytes", icmp_error(v4(ROUTER4), v4(VIP4), ErrorKind::FragmentationNeeded, &quote4)),
        ("v6 packet too big, 1500 bytes", icmp_error(v6(ROUTER6), v6(VIP6), ErrorKind::PacketTooBig, &quote6)),
    ];
    for (name, packet) in &cases {
        let error = frame(Tags::None, LB_MAC, ROUTER_MAC, packet);
        let before = reasons(&harness);
        assert_frame(name, harness.run(&error), XDP_DROP, &error);
        assert_counted_once(name, &harness, &before, stats::DROP_TOO_BIG_NO_DF);
    }
}
