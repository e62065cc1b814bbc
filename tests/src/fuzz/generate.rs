//! Valid frames of every kind the load balancer meets, built with etherparse from a seeded
//! random source: service traffic (TCP SYN/ACK, UDP) to every VIP and to addresses that are not
//! VIPs or only collide with one, ICMP echo, ICMP errors quoting VIP flows (of the VIP they are
//! addressed to, of another VIP, from colliding addresses), packets too big for the tunnel,
//! jumbo frames, IPv4 options and fragments, IPv6 extension headers, VLAN and QinQ stacks,
//! other protocols, non-IP frames and random bytes. `mutate` then breaks some of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6FlowLabel,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, Ipv6RoutingExtensions, PacketBuilder,
};
use failover_common::maps::{PROTOCOL_TCP, PROTOCOL_UDP};
use failover_ctl::address::from_words;
use rand::{rngs::StdRng, seq::IndexedRandom, Rng};

use super::scenario::{Scenario, Service, CLIENT_PORTS, FIRST_CLIENT_PORT};
use crate::{
    craft::{ROUTER4, ROUTER6, ROUTER_MAC},
    CLIENT_MAC, LB_MAC,
};

/// Where the headers of a generated frame start, for mutations that aim at header fields.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Offset of the IP header (the end of L2 for non-IP frames).
    pub l3: usize,
    /// Offset of the transport header (`l3` for non-IP frames).
    pub l4: usize,
}

/// A generated frame and what it was meant to be.
pub struct Generated {
    pub frame: Vec<u8>,
    pub layout: Layout,
    pub kind: &'static str,
}

/// One frame, of a kind drawn by weight.
pub fn frame(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let roll = rng.random_range(0..100);
    match roll {
        0..30 => service(rng, scenario),
        30..33 => drained(rng, scenario),
        33..40 => to_other_address(rng, scenario),
        40..48 => echo(rng, scenario),
        48..68 => icmp_error(rng, scenario),
        68..73 => too_big(rng, scenario),
        73..74 => jumbo(rng, scenario),
        74..78 => fragment(rng, scenario),
        78..82 => ipv6_extension(rng, scenario),
        82..89 => other_protocol(rng, scenario),
        89..93 => other_icmp(rng, scenario),
        93..96 => non_ip(rng),
        _ => random_bytes(rng, scenario),
    }
}

fn service(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let service = scenario.services.choose(rng).expect("services");
    let client = client(rng, scenario, service.address.is_ipv6());
    let ports = (client_port(rng), service_port(rng, service));
    let protocol = if rng.random_bool(0.92) { service.protocol } else { other_transport(service.protocol) };
    let length = payload_length(rng);
    transport_frame(rng, "service", client, service.address, protocol, ports, length)
}

/// A packet of a flow that was tracked to a backend before it was set draining.
fn drained(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let Some(key) = scenario.drained_flows.choose(rng) else { return service(rng, scenario) };
    let client = from_words(&key.source, key.family).expect("family");
    let vip = from_words(&key.destination, key.family).expect("family");
    let ports = (u16::from_be(key.source_port), u16::from_be(key.destination_port));
    let length = payload_length(rng);
    transport_frame(rng, "drained flow", client, vip, key.protocol, ports, length)
}

/// Service-shaped traffic to an address that is not a VIP, or only collides with one.
fn to_other_address(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let service = scenario.services.choose(rng).expect("services");
    let v6 = service.address.is_ipv6();
    let destination = if rng.random_bool(0.6) { collider(rng, scenario, v6) } else { non_vip(rng, scenario, v6) };
    let client = client(rng, scenario, v6);
    let ports = (client_port(rng), service_port(rng, service));
    let length = payload_length(rng);
    transport_frame(rng, "to a non-VIP address", client, destination, service.protocol, ports, length)
}

/// A TCP or UDP frame of `length` payload bytes (clamped to what the frame limit leaves).
fn transport_frame(rng: &mut StdRng, kind: &'static str, source: IpAddr, destination: IpAddr, protocol: u8, ports: (u16, u16), length: usize) -> Generated {
    let headers = ip_headers(rng, source, destination);
    let payload = bytes(rng, length);
    let packet = transport(rng, headers, protocol, ports, &payload);
    ethernet(rng, kind, CLIENT_MAC, &packet)
}

fn echo(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let v6 = rng.random_bool(0.5);
    let destination = destination(rng, scenario, v6);
    let source = client(rng, scenario, v6);
    let headers = ip_headers(rng, source, destination);
    let payload = payload(rng);
    let (id, sequence) = (rng.random(), rng.random());
    let code = if rng.random_bool(0.05) { rng.random() } else { 0 };
    let builder = PacketBuilder::ip(headers);
    let mut packet = Vec::new();
    if v6 {
        builder.icmpv6_raw(128, code, echo_fields(id, sequence)).write(&mut packet, &payload)
    } else {
        builder.icmpv4_raw(8, code, echo_fields(id, sequence)).write(&mut packet, &payload)
    }
    .expect("build an echo request");
    ethernet(rng, "echo request", CLIENT_MAC, &packet)
}

fn echo_fields(id: u16, sequence: u16) -> [u8; 4] {
    let (i, s) = (id.to_be_bytes(), sequence.to_be_bytes());
    [i[0], i[1], s[0], s[1]]
}

/// An ICMP or ICMPv6 error from a router, quoting a packet of a backend's reply.
fn icmp_error(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let v6 = rng.random_bool(0.5);
    let addressed = destination(rng, scenario, v6);
    let (quoted_source, quoted_destination, ports, protocol) = quoted_flow(rng, scenario, v6, addressed);
    let quote_headers = ip_headers(rng, quoted_source, quoted_destination);
    let big = rng.random_bool(0.05);
    let length = if big { rng.random_range(1300..1500) } else { payload_length(rng) };
    let body = bytes(rng, length);
    let reply = transport(rng, quote_headers.clone(), protocol, ports, &body);
    let header_len = ip_header_len(&quote_headers);
    let mut quote = match rng.random_range(0..10) {
        // RFC 792: the header and the first eight bytes; RFC 4443: as much as fits.
        0..6 if !v6 => reply[..header_len + 8].to_vec(),
        0..3 if v6 => reply[..48].to_vec(),
        _ => reply,
    };
    if rng.random_bool(0.1) {
        garble(rng, &mut quote, v6);
    }
    let router = if rng.random_bool(0.85) {
        if v6 { IpAddr::V6(ROUTER6) } else { IpAddr::V4(ROUTER4) }
    } else {
        destination(rng, scenario, v6)
    };
    let headers = ip_headers(rng, router, addressed);
    let (kind, code, rest) = error_type(rng, v6);
    let builder = PacketBuilder::ip(headers);
    let mut packet = Vec::new();
    if v6 {
        builder.icmpv6_raw(kind, code, rest).write(&mut packet, &quote)
    } else {
        builder.icmpv4_raw(kind, code, rest).write(&mut packet, &quote)
    }
    .expect("build an ICMP error");
    ethernet(rng, "icmp error", ROUTER_MAC, &packet)
}

/// The flow an error quotes, as the reply direction (source = the VIP side): mostly a flow of
/// a service at the address the error is sent to, else another VIP's, a drained flow, or a
/// flow of an address that is not a VIP.
fn quoted_flow(rng: &mut StdRng, scenario: &Scenario, v6: bool, addressed: IpAddr) -> (IpAddr, IpAddr, (u16, u16), u8) {
    let family: Vec<&Service> = scenario.services.iter().filter(|s| s.address.is_ipv6() == v6).collect();
    let at_address: Vec<&Service> = family.iter().copied().filter(|s| s.address == addressed).collect();
    let roll = rng.random_range(0..100);
    if roll < 8 {
        if let Some(key) = scenario.drained_flows.choose(rng).filter(|key| (key.family == 6) == v6) {
            let client = from_words(&key.source, key.family).expect("family");
            let vip = from_words(&key.destination, key.family).expect("family");
            return (vip, client, (u16::from_be(key.destination_port), u16::from_be(key.source_port)), key.protocol);
        }
    }
    let service = match (roll, at_address.choose(rng)) {
        (8..70, Some(service)) => Some(*service),
        (_, _) if roll < 88 => family.choose(rng).copied(),
        _ => None,
    };
    let client = client(rng, scenario, v6);
    match service {
        Some(service) => {
            let protocol = if rng.random_bool(0.95) { service.protocol } else { other_transport(service.protocol) };
            (service.address, client, (service_port(rng, service), client_port(rng)), protocol)
        }
        None => {
            let source = if rng.random_bool(0.5) { collider(rng, scenario, v6) } else { non_vip(rng, scenario, v6) };
            let protocol = if rng.random_bool(0.5) { PROTOCOL_TCP } else { PROTOCOL_UDP };
            (source, client, (rng.random(), client_port(rng)), protocol)
        }
    }
}

/// The IP header's length (IPv4 with options, or 40).
fn ip_header_len(headers: &IpHeaders) -> usize {
    match headers {
        IpHeaders::Ipv4(header, _) => header.header_len(),
        IpHeaders::Ipv6(..) => 40,
    }
}

/// Spoils a quote the way broken routers and attackers do.
fn garble(rng: &mut StdRng, quote: &mut Vec<u8>, v6: bool) {
    match rng.random_range(0..4) {
        0 => quote.truncate(rng.random_range(0..quote.len())),
        1 => quote[0] = (rng.random_range(0..16u8) << 4) | (quote[0] & 0x0f),
        2 if !v6 => quote[0] = (quote[0] & 0xf0) | rng.random_range(0..5u8),
        _ => {
            let at = if v6 { 6 } else { 9 };
            quote[at] = rng.random();
        }
    }
}

/// (type, code, bytes 5..8) of an error: mostly kinds the data plane routes, some it does not.
fn error_type(rng: &mut StdRng, v6: bool) -> (u8, u8, [u8; 4]) {
    let mtu = rng.random_range(552..1500u16).to_be_bytes();
    let roll = rng.random_range(0..100);
    if v6 {
        match roll {
            0..40 => (2, 0, (rng.random_range(1280..1500u32)).to_be_bytes()),
            40..65 => (1, rng.random_range(0..8), [0; 4]),
            65..85 => (3, rng.random_range(0..2), [0; 4]),
            85..95 => (4, rng.random_range(0..3), rng.random()),
            _ => (rng.random(), rng.random(), rng.random()),
        }
    } else {
        match roll {
            0..45 => (3, 4, [0, 0, mtu[0], mtu[1]]),
            45..65 => (3, rng.random_range(0..16), [0; 4]),
            65..85 => (11, rng.random_range(0..2), [0; 4]),
            85..95 => (*[4u8, 5, 12].choose(rng).expect("types"), rng.random_range(0..2), rng.random()),
            _ => (rng.random(), rng.random(), rng.random()),
        }
    }
}

/// Service traffic around the tunnel MTU: some fits, some needs a too-big reply or a drop.
fn too_big(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let mtu = scenario.config.mtu as usize;
    let total = if rng.random_bool(0.8) { rng.random_range(mtu - 60..mtu + 60) } else { rng.random_range(mtu..3000) };
    sized_service(rng, scenario, "around the MTU", total)
}

/// Service traffic as large as a test run takes.
fn jumbo(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let total = scenario.frame_limit - 26 - rng.random_range(0..32);
    sized_service(rng, scenario, "jumbo", total)
}

/// A service packet whose IP packet is about `total` bytes (within the frame limit).
fn sized_service(rng: &mut StdRng, scenario: &Scenario, kind: &'static str, total: usize) -> Generated {
    let service = scenario.services.choose(rng).expect("services");
    let client = client(rng, scenario, service.address.is_ipv6());
    let ports = (client_port(rng), service_port(rng, service));
    let mut headers = ip_headers(rng, client, service.address);
    if let IpHeaders::Ipv4(header, _) = &mut headers {
        header.dont_fragment = rng.random_bool(0.5);
    }
    let overhead = ip_header_len(&headers) + if service.protocol == PROTOCOL_TCP { 20 } else { 8 };
    let total = total.min(scenario.frame_limit - 26);
    let payload = bytes(rng, total.saturating_sub(overhead));
    let packet = transport(rng, headers, service.protocol, ports, &payload);
    ethernet(rng, kind, CLIENT_MAC, &packet)
}

/// An IPv4 fragment (first, middle or last) to a VIP address or another address.
fn fragment(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let destination = destination(rng, scenario, false);
    let source = client(rng, scenario, false);
    let mut header = Ipv4Header::new(0, 64, IpNumber::TCP, octets4(source), octets4(destination)).expect("header");
    header.identification = rng.random();
    header.dont_fragment = false;
    let position = rng.random_range(0..3);
    header.more_fragments = position < 2;
    let packet = if position == 0 {
        let ports = (client_port(rng), 80);
        let payload = bytes(rng, 64);
        transport(rng, IpHeaders::Ipv4(header, Ipv4Extensions::default()), PROTOCOL_TCP, ports, &payload)
    } else {
        header.fragment_offset = IpFragOffset::try_new(rng.random_range(1..8000)).expect("offset");
        header.protocol = IpNumber(*[PROTOCOL_TCP, PROTOCOL_UDP, 1].choose(rng).expect("protocols"));
        let length = 8 * rng.random_range(1..20);
        raw_ip(header, &bytes(rng, length))
    };
    ethernet(rng, "ipv4 fragment", CLIENT_MAC, &packet)
}

/// IPv6 with extension headers to a VIP or another address.
fn ipv6_extension(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let destination = destination(rng, scenario, true);
    let source = client(rng, scenario, true);
    let protocol = if rng.random_bool(0.5) { PROTOCOL_TCP } else { PROTOCOL_UDP };
    let next = IpNumber(protocol);
    let padding = [1u8, 4, 0, 0, 0, 0];
    let extensions = match rng.random_range(0..4) {
        0 => Ipv6Extensions { hop_by_hop_options: Some(Ipv6RawExtHeader::new_raw(next, &padding).expect("ext")), ..Default::default() },
        1 => Ipv6Extensions { destination_options: Some(Ipv6RawExtHeader::new_raw(next, &padding).expect("ext")), ..Default::default() },
        2 => Ipv6Extensions {
            routing: Some(Ipv6RoutingExtensions {
                routing: Ipv6RawExtHeader::new_raw(next, &[0, 0, 0, 0, 0, 0]).expect("ext"),
                final_destination_options: None,
            }),
            ..Default::default()
        },
        _ => Ipv6Extensions {
            fragment: Some(Ipv6FragmentHeader {
                next_header: next,
                fragment_offset: IpFragOffset::try_new(rng.random_range(0..100)).expect("offset"),
                more_fragments: rng.random(),
                identification: rng.random(),
            }),
            ..Default::default()
        },
    };
    let IpHeaders::Ipv6(header, _) = ip_headers(rng, source, destination) else { unreachable!("an IPv6 pair") };
    let ports = (client_port(rng), *[80u16, 443, 53].choose(rng).expect("ports"));
    let payload = payload(rng);
    let packet = transport(rng, IpHeaders::Ipv6(header, extensions), protocol, ports, &payload);
    ethernet(rng, "ipv6 extension header", CLIENT_MAC, &packet)
}

/// A protocol the load balancer does not serve (0 often), to VIP and other addresses.
fn other_protocol(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let v6 = rng.random_bool(0.5);
    let destination = destination(rng, scenario, v6);
    let source = client(rng, scenario, v6);
    let protocol = match rng.random_range(0..10) {
        0..3 => 0,
        3..6 => *[4u8, 41, 47, 50, 132, 255, 1, 58].choose(rng).expect("protocols"),
        _ => rng.random(),
    };
    let payload = payload(rng);
    let packet = match ip_headers(rng, source, destination) {
        IpHeaders::Ipv4(mut header, _) => {
            header.protocol = IpNumber(protocol);
            raw_ip(header, &payload)
        }
        IpHeaders::Ipv6(mut header, _) => {
            header.next_header = IpNumber(protocol);
            header.payload_length = payload.len() as u16;
            let mut packet = header.to_bytes().to_vec();
            packet.extend_from_slice(&payload);
            packet
        }
    };
    ethernet(rng, "other protocol", CLIENT_MAC, &packet)
}

/// ICMP that is neither an echo request nor an error the data plane routes.
fn other_icmp(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let v6 = rng.random_bool(0.5);
    let destination = destination(rng, scenario, v6);
    let source = client(rng, scenario, v6);
    let headers = ip_headers(rng, source, destination);
    let payload = payload(rng);
    let builder = PacketBuilder::ip(headers);
    let mut packet = Vec::new();
    if v6 {
        let kind = *[129u8, 133, 134, 135, 136, 4, 130, 143].choose(rng).expect("types");
        builder.icmpv6_raw(kind, rng.random_range(0..2), rng.random()).write(&mut packet, &payload)
    } else {
        let kind = *[0u8, 5, 9, 10, 12, 13, 14, 17].choose(rng).expect("types");
        builder.icmpv4_raw(kind, rng.random_range(0..2), rng.random()).write(&mut packet, &payload)
    }
    .expect("build ICMP");
    ethernet(rng, "other icmp", CLIENT_MAC, &packet)
}

/// ARP or an unknown EtherType.
fn non_ip(rng: &mut StdRng) -> Generated {
    let ethertype: u16 = if rng.random_bool(0.5) { 0x0806 } else { rng.random() };
    let mut frame = [LB_MAC, CLIENT_MAC].concat();
    frame.extend_from_slice(&ethertype.to_be_bytes());
    let length = rng.random_range(0..80);
    frame.extend_from_slice(&bytes(rng, length));
    Generated { frame, layout: Layout { l3: 14, l4: 14 }, kind: "non-IP" }
}

/// Random bytes, half of them behind an IP EtherType and a VIP destination.
fn random_bytes(rng: &mut StdRng, scenario: &Scenario) -> Generated {
    let length = rng.random_range(14..200);
    let mut frame = bytes(rng, length);
    if rng.random_bool(0.5) {
        let v6 = rng.random_bool(0.5);
        frame[12..14].copy_from_slice(&if v6 { 0x86ddu16 } else { 0x0800 }.to_be_bytes());
        let vip = destination(rng, scenario, v6);
        match vip {
            IpAddr::V4(address) if frame.len() >= 34 => {
                frame[14] = 0x40 | (frame[14] & 0x0f);
                frame[30..34].copy_from_slice(&address.octets());
            }
            IpAddr::V6(address) if frame.len() >= 54 => {
                frame[14] = 0x60 | (frame[14] & 0x0f);
                frame[38..54].copy_from_slice(&address.octets());
            }
            _ => {}
        }
    }
    Generated { frame, layout: Layout { l3: 14, l4: 34 }, kind: "random bytes" }
}

/// IP headers with random TTL, TOS, identification, DF and (sometimes) IPv4 options.
fn ip_headers(rng: &mut StdRng, source: IpAddr, destination: IpAddr) -> IpHeaders {
    let ttl = rng.random_range(1..=255);
    let tos: u8 = if rng.random_bool(0.2) { rng.random() } else { 0 };
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut header = Ipv4Header::new(0, ttl, IpNumber::TCP, s.octets(), d.octets()).expect("header");
            header.dscp = Ipv4Dscp::try_new(tos >> 2).expect("dscp");
            header.ecn = Ipv4Ecn::try_new(tos & 3).expect("ecn");
            header.identification = rng.random();
            header.dont_fragment = rng.random_bool(0.8);
            if rng.random_bool(0.15) {
                let length = 4 * rng.random_range(1..=10);
                let mut bytes = if rng.random_bool(0.5) { vec![1u8; length] } else { self::bytes(rng, length) };
                if rng.random_bool(0.5) {
                    bytes[length - 1] = 0;
                }
                header.options = bytes[..].try_into().expect("options");
            }
            IpHeaders::Ipv4(header, Ipv4Extensions::default())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let header = Ipv6Header {
                traffic_class: tos,
                flow_label: Ipv6FlowLabel::try_new(rng.random_range(0..1 << 20)).expect("label"),
                payload_length: 0,
                next_header: IpNumber::TCP,
                hop_limit: ttl,
                source: s.octets(),
                destination: d.octets(),
            };
            IpHeaders::Ipv6(header, Ipv6Extensions::default())
        }
        _ => panic!("mixed address families: {source} -> {destination}"),
    }
}

/// A TCP (SYN or ACK) or UDP packet, IP and up.
fn transport(rng: &mut StdRng, headers: IpHeaders, protocol: u8, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ip(headers);
    let mut packet = Vec::new();
    if protocol == PROTOCOL_TCP {
        let tcp = builder.tcp(ports.0, ports.1, rng.random(), rng.random());
        if rng.random_bool(0.4) { tcp.syn() } else { tcp.ack(rng.random()) }.write(&mut packet, payload)
    } else {
        builder.udp(ports.0, ports.1).write(&mut packet, payload)
    }
    .expect("build a transport packet");
    packet
}

/// An IPv4 header (lengths and checksum filled in) followed by `payload`.
fn raw_ip(mut header: Ipv4Header, payload: &[u8]) -> Vec<u8> {
    header.set_payload_len(payload.len()).expect("length");
    header.header_checksum = header.calc_header_checksum();
    let mut packet = header.to_bytes().to_vec();
    packet.extend_from_slice(payload);
    packet
}

/// Wraps an IP packet in Ethernet with random VLAN tags (none, 802.1Q, QinQ, sometimes three,
/// which the data plane does not parse) and, for short frames, the minimum-size padding.
fn ethernet(rng: &mut StdRng, kind: &'static str, source_mac: [u8; 6], packet: &[u8]) -> Generated {
    let destination_mac = if rng.random_bool(0.97) { LB_MAC } else { [0xff; 6] };
    let mut frame = [destination_mac, source_mac].concat();
    let tags = match rng.random_range(0..100) {
        0..60 => 0,
        60..80 => 1,
        80..96 => 2,
        _ => 3,
    };
    for n in 0..tags {
        let tpid: u16 = if n == 0 && tags > 1 && rng.random_bool(0.7) { 0x88a8 } else { 0x8100 };
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&(rng.random::<u16>()).to_be_bytes());
    }
    let ethertype: u16 = if packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    frame.extend_from_slice(&ethertype.to_be_bytes());
    let l3 = frame.len();
    frame.extend_from_slice(packet);
    if frame.len() < 60 && rng.random_bool(0.6) {
        frame.resize(60, 0);
    } else if rng.random_bool(0.03) {
        let length = rng.random_range(1..32);
        let trailer = bytes(rng, length);
        frame.extend_from_slice(&trailer);
    }
    let header_len = if packet[0] >> 4 == 6 { 40 } else { usize::from(packet[0] & 0x0f) * 4 };
    Generated { frame, layout: Layout { l3, l4: l3 + header_len }, kind }
}

fn bytes(rng: &mut StdRng, length: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; length];
    rng.fill(&mut bytes[..]);
    bytes
}

/// A payload of a typical length: mostly short, some medium, a few long.
fn payload(rng: &mut StdRng) -> Vec<u8> {
    let length = payload_length(rng);
    bytes(rng, length)
}

fn payload_length(rng: &mut StdRng) -> usize {
    match rng.random_range(0..100) {
        0..70 => rng.random_range(0..=32),
        70..95 => rng.random_range(33..=256),
        _ => rng.random_range(257..=1000),
    }
}

/// A client: mostly from the pool (flows repeat), sometimes a fresh address.
fn client(rng: &mut StdRng, scenario: &Scenario, v6: bool) -> IpAddr {
    if rng.random_bool(0.85) {
        let pool = if v6 { &scenario.clients6 } else { &scenario.clients4 };
        *pool.choose(rng).expect("clients")
    } else if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, rng.random(), rng.random(), rng.random(), rng.random()))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, rng.random()))
    }
}

fn client_port(rng: &mut StdRng) -> u16 {
    if rng.random_bool(0.85) {
        FIRST_CLIENT_PORT + rng.random_range(0..CLIENT_PORTS)
    } else {
        rng.random()
    }
}

/// A destination port for `service`: its own mostly; any for every-port services.
fn service_port(rng: &mut StdRng, service: &Service) -> u16 {
    if service.port == 0 {
        return match rng.random_range(0..10) {
            0..6 => *[80u16, 443, 22, 8080, 8443].choose(rng).expect("ports"),
            _ => rng.random(),
        };
    }
    if rng.random_bool(0.9) { service.port } else { rng.random() }
}

fn other_transport(protocol: u8) -> u8 {
    if protocol == PROTOCOL_TCP { PROTOCOL_UDP } else { PROTOCOL_TCP }
}

/// A destination of the family: VIP addresses (owned or not) mostly, else colliding and other
/// addresses.
fn destination(rng: &mut StdRng, scenario: &Scenario, v6: bool) -> IpAddr {
    match rng.random_range(0..100) {
        0..65 => {
            let vips: Vec<IpAddr> = scenario.vip_addresses().into_iter().filter(|a| a.is_ipv6() == v6).collect();
            *vips.choose(rng).expect("VIP addresses of both families")
        }
        65..85 => collider(rng, scenario, v6),
        _ => non_vip(rng, scenario, v6),
    }
}

fn collider(rng: &mut StdRng, scenario: &Scenario, v6: bool) -> IpAddr {
    let of_family: Vec<IpAddr> = scenario.colliders.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
    *of_family.choose(rng).expect("colliding addresses of both families")
}

fn non_vip(rng: &mut StdRng, scenario: &Scenario, v6: bool) -> IpAddr {
    if rng.random_bool(0.3) {
        return client(rng, scenario, v6);
    }
    let of_family: Vec<IpAddr> = scenario.non_vips.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
    *of_family.choose(rng).expect("non-VIP addresses of both families")
}

fn octets4(address: IpAddr) -> [u8; 4] {
    match address {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => panic!("{address} is not IPv4"),
    }
}
