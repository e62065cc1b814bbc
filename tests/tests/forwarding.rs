//! Fixture table for forwarding: each case sets map state through the real map writer,
//! builds its packet with etherparse and asserts the action and the exact output bytes.

use std::net::IpAddr;

use failover_common::{maps::*, stats};
use failover_tests::*;

struct Case {
    name: &'static str,
    tags: Tags,
    client: IpAddr,
    vip: IpAddr,
    backend: IpAddr,
    transport: Transport,
    protocol: u8,
    /// VIP port (0 = every port).
    vip_port: u16,
}

fn cases() -> Vec<Case> {
    let v4 = IpAddr::V4(VIP4);
    let v6 = IpAddr::V6(VIP6);
    let c4 = IpAddr::V4(CLIENT4);
    let c6 = IpAddr::V6(CLIENT6);
    let case = |name, tags, client, vip, backend, transport, protocol, vip_port| Case { name, tags, client, vip, backend, transport, protocol, vip_port };
    vec![
        case("v4 tcp syn -> ipip", Tags::None, c4, v4, backend4(1), Transport::TcpSyn, PROTOCOL_TCP, 80),
        case("v4 tcp ack -> ipip", Tags::None, c4, v4, backend4(1), Transport::TcpAck, PROTOCOL_TCP, 80),
        case("v4 udp -> ipip", Tags::None, c4, v4, backend4(1), Transport::Udp, PROTOCOL_UDP, 80),
        case("v6 tcp -> ip6ip6", Tags::None, c6, v6, backend6(1), Transport::TcpSyn, PROTOCOL_TCP, 80),
        case("v6 udp -> ip6ip6", Tags::None, c6, v6, backend6(1), Transport::Udp, PROTOCOL_UDP, 80),
        case("v4 vip -> v6 backend (4in6)", Tags::None, c4, v4, backend6(2), Transport::TcpSyn, PROTOCOL_TCP, 80),
        case("v6 vip -> v4 backend (6in4)", Tags::None, c6, v6, backend4(2), Transport::Udp, PROTOCOL_UDP, 80),
        case("802.1Q tag kept", Tags::Single(42), c4, v4, backend4(1), Transport::TcpSyn, PROTOCOL_TCP, 80),
        case("802.1ad + 802.1Q tags kept", Tags::Double(7, 42), c6, v6, backend6(1), Transport::Udp, PROTOCOL_UDP, 80),
        case("all-ports vip (port 0)", Tags::None, c4, v4, backend4(3), Transport::Udp, PROTOCOL_UDP, 0),
    ]
}

#[test]
fn forwards_every_family_and_tagging() {
    if !root() {
        return;
    }
    for case in cases() {
        let mut harness = Harness::new();
        let backend = harness.simple_vip(case.vip, case.vip_port, case.protocol, 1, case.backend);
        let ports = (40000, 80);
        let frame = packet(case.tags, case.client, case.vip, case.transport, ports, b"hello, backend");
        let expected = encapsulated(&frame, case.tags, case.backend, frame_entropy(&frame, case.tags), &standard_config());
        assert_frame(case.name, harness.run(&frame), XDP_TX, &expected);
        assert_eq!(harness.reason(stats::TX_FORWARD), 1, "{}: tx_forward counted", case.name);
        let inner_len = frame.len() - 14 - case.tags.len();
        let vip = harness.dataplane.counters.vip(1).unwrap();
        assert_eq!((vip.packets, vip.bytes), (1, inner_len as u64), "{}: vip counter", case.name);
        let counted = harness.dataplane.counters.backend(backend).unwrap();
        assert_eq!((counted.packets, counted.bytes), (1, inner_len as u64), "{}: backend counter", case.name);
    }
}

#[test]
fn non_vip_traffic_passes_untouched() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    harness.simple_vip(IpAddr::V4(VIP4), 80, PROTOCOL_TCP, 1, backend4(1));
    harness.simple_vip(IpAddr::V6(VIP6), 80, PROTOCOL_TCP, 2, backend6(1));
    let frames = [
        ("other v4 address", packet(Tags::None, IpAddr::V4(CLIENT4), IpAddr::V4(OTHER4), Transport::TcpSyn, (1, 80), b"x")),
        ("other v6 address", packet(Tags::None, IpAddr::V6(CLIENT6), IpAddr::V6(OTHER6), Transport::Udp, (1, 80), b"x")),
        ("vip address, other port", packet(Tags::None, IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), Transport::TcpSyn, (1, 81), b"x")),
        ("vip address, other protocol", packet(Tags::None, IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), Transport::Udp, (1, 80), b"x")),
        ("tagged other address", packet(Tags::Single(5), IpAddr::V4(CLIENT4), IpAddr::V4(OTHER4), Transport::Udp, (1, 80), b"x")),
    ];
    for (name, frame) in &frames {
        assert_frame(name, harness.run(frame), XDP_PASS, frame);
    }
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_frame("arp", harness.run(&arp), XDP_PASS, &arp);
    assert_eq!(harness.reason(stats::PASS_NOT_VIP), 5);
    assert_eq!(harness.reason(stats::PASS_UNPARSED), 1);
    assert_eq!(harness.reason(stats::TX_FORWARD), 0);
}
