//! The backend-side decap program: which tunnel packets it strips (IPIP, IP6IP6, 4in6, 6in4,
//! with and without VLAN tags), which it leaves to the kernel, which it drops, and a round trip
//! from the load balancer's output back to the client's packet.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::{IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6Header, PacketBuilder};
use failover_common::{maps::*, stats};
use failover_ctl::loader::Decap;
use failover_tests::*;

const BACKEND_MAC: [u8; 6] = [0x02, 0xbe, 0x00, 0x00, 0x00, 0x01];

fn v4(address: Ipv4Addr) -> IpAddr {
    IpAddr::V4(address)
}

/// An Ethernet frame with `tags` carrying the IP packet `ip`; the EtherType follows its version.
fn frame(tags: Tags, ip: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if ip[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    let mut frame = Vec::new();
    frame.extend_from_slice(&BACKEND_MAC);
    frame.extend_from_slice(&NEXT_HOP_MAC);
    frame.extend_from_slice(&tags.bytes());
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(ip);
    frame
}

/// A client's TCP packet (IP and up).
fn client_packet(client: IpAddr, vip: IpAddr, payload: &[u8]) -> Vec<u8> {
    let headers = match (client, vip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            IpHeaders::Ipv4(Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets()).unwrap(), Ipv4Extensions::default())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header { hop_limit: 64, source: s.octets(), destination: d.octets(), ..Default::default() },
            Ipv6Extensions::default(),
        ),
        _ => panic!("mixed address families"),
    };
    let mut out = Vec::new();
    PacketBuilder::ip(headers).tcp(40000, 80, 1001, 64240).ack(5000).write(&mut out, payload).unwrap();
    out
}

/// `inner` behind a tunnel header from the load balancer to `backend` (IP and up). The outer
/// protocol is 4 for IPv4 inside and 41 for IPv6 inside, in either outer family. `options`
/// are outer IPv4 options.
fn tunnelled(backend: IpAddr, inner: &[u8], options: &[u8]) -> Vec<u8> {
    let protocol = if inner[0] >> 4 == 4 { IpNumber::IPV4 } else { IpNumber::IPV6 };
    let mut out = Vec::new();
    match backend {
        IpAddr::V4(backend) => {
            let mut header = Ipv4Header::new(0, 64, protocol, OUTER_SOURCE4.octets(), backend.octets()).unwrap();
            header.options = options.try_into().unwrap();
            header.set_payload_len(inner.len()).unwrap();
            header.write(&mut out).unwrap();
        }
        IpAddr::V6(backend) => {
            assert!(options.is_empty());
            let header = Ipv6Header {
                payload_length: inner.len() as u16,
                next_header: protocol,
                hop_limit: 64,
                source: OUTER_SOURCE6.octets(),
                destination: backend.octets(),
                ..Default::default()
            };
            header.write(&mut out).unwrap();
        }
    }
    out.extend_from_slice(inner);
    out
}

/// Runs `frame` through the decap program and asserts that exactly one packet was counted,
/// under `reason`.
fn check(decap: &Decap, case: &str, frame: &[u8], action: u32, expected: &[u8], reason: u32) {
    let before: Vec<u64> = (0..stats::REASON_COUNT).map(|r| decap.counter(r).unwrap().packets).collect();
    assert_frame(case, run(decap.program().unwrap(), frame), action, expected);
    for (index, old) in before.iter().enumerate() {
        let wanted = old + (index as u32 == reason) as u64;
        assert_eq!(
            decap.counter(index as u32).unwrap().packets,
            wanted,
            "{case}: counter {} (expected one packet under {})",
            stats::REASON_NAMES[index],
            stats::REASON_NAMES[reason as usize]
        );
    }
}

fn loaded() -> Decap {
    let mut decap = Decap::load().expect("load the decap program");
    decap.add_vip(IpAddr::V4(VIP4)).unwrap();
    decap.add_vip(IpAddr::V6(VIP6)).unwrap();
    decap
}

#[test]
fn tunnel_headers_to_vips_are_stripped() {
    if !root() {
        return;
    }
    let decap = loaded();
    let (c4, c6, vip4, vip6) = (v4(CLIENT4), IpAddr::V6(CLIENT6), v4(VIP4), IpAddr::V6(VIP6));
    let cases = [
        ("IPIP", Tags::None, backend4(1), c4, vip4, &[][..]),
        ("IPIP, 802.1Q", Tags::Single(42), backend4(1), c4, vip4, &[]),
        ("IPIP, 802.1ad + 802.1Q", Tags::Double(7, 42), backend4(1), c4, vip4, &[]),
        ("IPIP, outer header with options", Tags::None, backend4(1), c4, vip4, &[1, 1, 1, 0]),
        ("IP6IP6", Tags::None, backend6(1), c6, vip6, &[]),
        ("IP6IP6, 802.1Q", Tags::Single(42), backend6(1), c6, vip6, &[]),
        ("4in6", Tags::None, backend6(1), c4, vip4, &[]),
        ("4in6, 802.1ad + 802.1Q", Tags::Double(7, 42), backend6(1), c4, vip4, &[]),
        ("6in4", Tags::None, backend4(1), c6, vip6, &[]),
        ("6in4, 802.1Q", Tags::Single(42), backend4(1), c6, vip6, &[]),
    ];
    for (name, tags, backend, client, vip, options) in cases {
        let inner = client_packet(client, vip, b"through the tunnel");
        let packet = frame(tags, &tunnelled(backend, &inner, options));
        let expected = frame(tags, &inner);
        check(&decap, name, &packet, XDP_PASS, &expected, stats::DECAP_STRIPPED);
    }
}

#[test]
fn other_traffic_is_left_alone_and_cut_tunnels_are_dropped() {
    if !root() {
        return;
    }
    let mut decap = loaded();
    let (c4, c6, vip4, vip6) = (v4(CLIENT4), IpAddr::V6(CLIENT6), v4(VIP4), IpAddr::V6(VIP6));
    let not_vip = [
        ("IPIP to a non-VIP inner address", backend4(1), client_packet(c4, v4(OTHER4), b"x")),
        ("IP6IP6 to a non-VIP inner address", backend6(1), client_packet(c6, IpAddr::V6(OTHER6), b"x")),
        ("6in4 to a non-VIP inner address", backend4(1), client_packet(c6, IpAddr::V6(OTHER6), b"x")),
    ];
    for (name, backend, inner) in &not_vip {
        let packet = frame(Tags::None, &tunnelled(*backend, inner, &[]));
        check(&decap, name, &packet, XDP_PASS, &packet, stats::DECAP_NOT_VIP);
    }

    // Plain traffic, even to a VIP address, is not tunnel traffic.
    let plain = [
        ("plain v4 TCP to the backend", frame(Tags::None, &client_packet(c4, backend4(1), b"x"))),
        ("plain v4 TCP to a VIP", frame(Tags::Single(42), &client_packet(c4, vip4, b"x"))),
        ("plain v6 TCP to a VIP", frame(Tags::None, &client_packet(c6, vip6, b"x"))),
    ];
    for (name, packet) in &plain {
        check(&decap, name, packet, XDP_PASS, packet, stats::PASS_NOT_VIP);
    }
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&NEXT_HOP_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    check(&decap, "arp", &arp, XDP_PASS, &arp, stats::PASS_UNPARSED);

    // Cut inside the inner header: once with the outer length still claiming the whole inner
    // packet, once with an outer length that agrees with the cut.
    let inner4 = client_packet(c4, vip4, b"x");
    let inner6 = client_packet(c6, vip6, b"x");
    let whole4 = frame(Tags::None, &tunnelled(backend4(1), &inner4, &[]));
    let whole6 = frame(Tags::None, &tunnelled(backend6(1), &inner6, &[]));
    let cut = [
        ("IPIP cut inside the inner header", whole4[..14 + 20 + 12].to_vec()),
        ("IP6IP6 cut inside the inner header", whole6[..14 + 40 + 30].to_vec()),
        ("IPIP with a consistent outer length, inner header cut", frame(Tags::None, &tunnelled(backend4(1), &inner4[..12], &[]))),
        ("4in6 with a consistent outer length, inner header cut", frame(Tags::None, &tunnelled(backend6(1), &inner4[..16], &[]))),
        ("IP6IP6 with a consistent outer length, inner header cut", frame(Tags::None, &tunnelled(backend6(1), &inner6[..30], &[]))),
        ("6in4 with a consistent outer length, inner header cut, 802.1Q", frame(Tags::Single(42), &tunnelled(backend4(1), &inner6[..39], &[]))),
    ];
    for (name, packet) in &cut {
        check(&decap, name, packet, XDP_DROP, packet, stats::DECAP_MALFORMED);
    }

    // Removing the VIP stops the stripping.
    let expected = frame(Tags::None, &inner4);
    check(&decap, "IPIP before remove_vip", &whole4, XDP_PASS, &expected, stats::DECAP_STRIPPED);
    decap.remove_vip(vip4).unwrap();
    check(&decap, "IPIP after remove_vip", &whole4, XDP_PASS, &whole4, stats::DECAP_NOT_VIP);
    let expected = frame(Tags::None, &inner6);
    check(&decap, "IP6IP6 to the VIP still there", &whole6, XDP_PASS, &expected, stats::DECAP_STRIPPED);
}

#[test]
fn load_balancer_output_decapsulates_to_the_client_packet() {
    if !root() {
        return;
    }
    let decap = loaded();
    let mut harness = Harness::new();
    let (c4, c6, vip4, vip6) = (v4(CLIENT4), IpAddr::V6(CLIENT6), v4(VIP4), IpAddr::V6(VIP6));
    harness.simple_vip(vip4, 80, PROTOCOL_TCP, 1, backend4(1));
    harness.simple_vip(vip4, 443, PROTOCOL_TCP, 2, backend6(1));
    harness.simple_vip(vip6, 80, PROTOCOL_UDP, 3, backend6(2));
    harness.simple_vip(vip6, 443, PROTOCOL_UDP, 4, backend4(2));
    let cases = [
        ("IPIP", Tags::None, c4, vip4, Transport::TcpSyn, 80),
        ("IPIP, 802.1Q", Tags::Single(42), c4, vip4, Transport::TcpAck, 80),
        ("4in6", Tags::None, c4, vip4, Transport::TcpSyn, 443),
        ("IP6IP6", Tags::None, c6, vip6, Transport::Udp, 80),
        ("IP6IP6, 802.1ad + 802.1Q", Tags::Double(7, 42), c6, vip6, Transport::Udp, 80),
        ("6in4", Tags::Single(42), c6, vip6, Transport::Udp, 443),
    ];
    for (name, tags, client, vip, transport, port) in cases {
        let original = packet(tags, client, vip, transport, (40000, port), b"there and back");
        let (action, tunnelled) = harness.run(&original);
        assert_eq!(action, XDP_TX, "{name}: the load balancer forwards");
        let l2 = 14 + tags.len();
        let mut expected = Vec::new();
        expected.extend_from_slice(&NEXT_HOP_MAC);
        expected.extend_from_slice(&LB_MAC);
        expected.extend_from_slice(&original[12..l2]);
        expected.extend_from_slice(&original[l2..]);
        check(&decap, name, &tunnelled, XDP_PASS, &expected, stats::DECAP_STRIPPED);
    }
}

#[test]
fn cut_tunnel_in_a_padded_minimum_frame_is_dropped() {
    if !root() {
        return;
    }
    let decap = loaded();
    // A tunnel packet cut inside the inner IPv4 header whose outer length agrees with the cut,
    // in a minimum-size Ethernet frame: the zero padding is not part of the inner header.
    let inner = client_packet(v4(CLIENT4), v4(VIP4), b"x");
    let mut packet = frame(Tags::None, &tunnelled(backend4(1), &inner[..12], &[]));
    assert_eq!(packet.len(), 46);
    packet.resize(60, 0);
    check(&decap, "IPIP cut inside the inner header, padded", &packet, XDP_DROP, &packet, stats::DECAP_MALFORMED);
}
