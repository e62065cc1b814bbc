//! Verdicts that depend on the destination really being the VIP. The address filter has false
//! positives, so traffic to an address sharing a filter slot with a VIP must reach the kernel
//! untouched; an ICMP error is routed only if it is about a flow of the VIP it is addressed to;
//! and only TCP and UDP have services, so no other protocol can meet "no live backend". Each
//! case here was a wrong verdict found by fuzzing the loaded program.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{IpNumber, Ipv4Header};
use failover_common::{hash, maps::*, stats};
use failover_ctl::address::to_words;
use failover_tests::{craft::*, *};

/// An address other than `vip` in the same address-filter slot, searched from `first` upwards
/// (the filter hash is known, so a collision is found in about 65536 steps).
fn colliding(vip: IpAddr, first: IpAddr) -> IpAddr {
    let slot = hash::address_filter_index(&to_words(vip).0);
    let next = |address: IpAddr| match address {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + 1)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + 1)),
    };
    let mut address = first;
    for _ in 0..(ADDRESS_FILTER_SLOTS * 64) {
        if address != vip && hash::address_filter_index(&to_words(address).0) == slot {
            return address;
        }
        address = next(address);
    }
    panic!("no address colliding with {vip} after {first}");
}

/// A VIP (TCP, port 80) served by `backends`, ids vip_id * 10 + n, spread over 13 slots.
fn web_vip(harness: &mut Harness, address: IpAddr, vip_id: u32, backends: &[IpAddr]) {
    let ids: Vec<u32> = (0..backends.len() as u32).map(|n| vip_id * 10 + n).collect();
    for (id, backend) in ids.iter().zip(backends) {
        harness.backend(*id, vip_id, *backend, HEALTH_UP);
    }
    let table: Vec<u32> = (0..13).map(|slot| ids[slot % ids.len()]).collect();
    harness.vip(address, 80, PROTOCOL_TCP, vip_id, VIP_OWNED, &table);
}

/// Runs `frame` and asserts it passes unchanged, counted once under `reason`, creating no flow.
fn assert_passes(harness: &Harness, case: &str, frame: &[u8], reason: u32) {
    let flows = flow_count(harness);
    let before = reasons(harness);
    assert_frame(case, harness.run(frame), XDP_PASS, frame);
    assert_counted_once(case, harness, &before, reason);
    assert_eq!(flow_count(harness), flows, "{case}: no flow entry");
}

/// The client's TCP packet to `vip`:80 from `port`.
fn request(client: IpAddr, vip: IpAddr, port: u16) -> Vec<u8> {
    inbound(Tags::None, &transport(ip(client, vip, 64), PROTOCOL_TCP, (port, 80), b"request"))
}

/// An ICMP error from the router to `destination` quoting the reply of `vip`:80 to the client.
fn error_about(destination: IpAddr, vip: IpAddr, client: IpAddr, client_port: u16) -> Vec<u8> {
    let (router, kind) = match vip {
        IpAddr::V4(_) => (IpAddr::V4(ROUTER4), ErrorKind::FragmentationNeeded),
        IpAddr::V6(_) => (IpAddr::V6(ROUTER6), ErrorKind::PacketTooBig),
    };
    let quote = reply_quote(ip(vip, client, 64), PROTOCOL_TCP, (80, client_port));
    icmp_error_frame(router, destination, kind, &quote)
}

fn icmp_error_frame(router: IpAddr, destination: IpAddr, kind: ErrorKind, quote: &[u8]) -> Vec<u8> {
    frame(Tags::None, LB_MAC, ROUTER_MAC, &icmp_error(router, destination, kind, quote))
}

#[test]
fn traffic_to_an_address_colliding_with_a_vip_goes_to_the_kernel() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let families = [
        (IpAddr::V4(VIP4), IpAddr::V4(CLIENT4), [backend4(1), backend4(2)], IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0))),
        (IpAddr::V6(VIP6), IpAddr::V6(CLIENT6), [backend6(1), backend6(2)], IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc0, 0, 0, 0, 0, 0))),
    ];
    for (n, (vip, client, backends, search_from)) in families.into_iter().enumerate() {
        web_vip(&mut harness, vip, n as u32 + 1, &backends);
        let other = colliding(vip, search_from);
        let name = |what: &str| format!("{other} (shares {vip}'s filter slot): {what}");
        // The flow the errors quote exists, so a wrong routing would find its backend.
        let (action, _) = harness.run(&request(client, vip, 40001));
        assert_eq!(action, XDP_TX, "the VIP's own flow is forwarded");

        assert_passes(&harness, &name("TCP to port 80"), &request(client, other, 40001), stats::PASS_NOT_VIP);
        let echo = inbound(Tags::None, &echo_request(ip(client, other, 64), b"ping"));
        assert_passes(&harness, &name("echo request"), &echo, stats::PASS_NOT_VIP);
        // Before the fix: tunnelled to the VIP flow's backend.
        let error = error_about(other, vip, client, 40001);
        assert_passes(&harness, &name("ICMP error quoting a flow of the VIP"), &error, stats::PASS_NOT_VIP);
        let error = error_about(other, other, client, 40001);
        assert_passes(&harness, &name("ICMP error quoting its own flow"), &error, stats::PASS_NOT_VIP);
        // Before the fix: dropped as drop_icmp_error_unroutable.
        let quote = reply_quote(ip(vip, client, 64), PROTOCOL_TCP, (80, 40001));
        let (router, kind) = if vip.is_ipv4() {
            (IpAddr::V4(ROUTER4), ErrorKind::FragmentationNeeded)
        } else {
            (IpAddr::V6(ROUTER6), ErrorKind::PacketTooBig)
        };
        let garbled = icmp_error_frame(router, other, kind, &quote[..12]);
        assert_passes(&harness, &name("ICMP error with a garbled quote"), &garbled, stats::PASS_NOT_VIP);
        // The same garbled error to the VIP itself is its traffic: dropped and counted.
        let garbled = icmp_error_frame(router, vip, kind, &quote[..12]);
        let before = reasons(&harness);
        assert_frame(&format!("{vip}: ICMP error with a garbled quote"), harness.run(&garbled), XDP_DROP, &garbled);
        assert_counted_once("garbled quote to the VIP", &harness, &before, stats::DROP_ICMP_ERROR_UNROUTABLE);
    }
}

#[test]
fn an_icmp_error_is_routed_only_to_the_vip_it_is_addressed_to() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let families = [
        (IpAddr::V4(VIP4), IpAddr::V4(OTHER4), IpAddr::V4(CLIENT4), [backend4(1), backend4(2)], backend4(3)),
        (IpAddr::V6(VIP6), IpAddr::V6(OTHER6), IpAddr::V6(CLIENT6), [backend6(1), backend6(2)], backend6(3)),
    ];
    for (n, (a, b, client, a_backends, b_backend)) in families.into_iter().enumerate() {
        let vip_id = 2 * n as u32 + 1;
        web_vip(&mut harness, a, vip_id, &a_backends);
        web_vip(&mut harness, b, vip_id + 1, &[b_backend]);
        let ports = (40002, 80);
        let to_b = request(client, b, ports.0);
        let (action, _) = harness.run(&to_b);
        assert_eq!(action, XDP_TX, "the flow to {b} is forwarded");

        // Control: addressed to B, the error follows B's flow to B's backend.
        let to_b_error = error_about(b, b, client, ports.0);
        let expected = encapsulated(&to_b_error, Tags::None, b_backend, entropy(client, b, PROTOCOL_TCP, ports), &standard_config());
        assert_frame(&format!("error to {b} about its flow"), harness.run(&to_b_error), XDP_TX, &expected);

        // Before the fix: addressed to A, still tunnelled to B's backend.
        let to_a_error = error_about(a, b, client, ports.0);
        assert_passes(&harness, &format!("error to {a} about a flow of {b}"), &to_a_error, stats::PASS_ICMP_OTHER);
    }
}

/// An IPv4 packet with protocol `protocol` and a few payload bytes.
fn ipv4_protocol(client: Ipv4Addr, vip: Ipv4Addr, protocol: u8) -> Vec<u8> {
    let payload = [0u8, 80, 0, 80, 0, 0, 0, 0];
    let header = Ipv4Header::new(payload.len() as u16, 64, IpNumber(protocol), client.octets(), vip.octets()).unwrap();
    let mut packet = header.to_bytes().to_vec();
    packet.extend_from_slice(&payload);
    inbound(Tags::None, &packet)
}

#[test]
fn only_tcp_and_udp_meet_a_vip_service() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    // VIP4 serves every TCP and UDP port and has no live backend: "no live backend" applies to
    // TCP and UDP, and must never be reported for any other protocol.
    for (vip_id, protocol) in [(1, PROTOCOL_TCP), (2, PROTOCOL_UDP)] {
        harness.backend(vip_id * 10, vip_id, backend4(vip_id as u8), HEALTH_DOWN);
        harness.vip(IpAddr::V4(VIP4), 0, protocol, vip_id, VIP_OWNED, &[vip_id * 10; 13]);
    }
    let tcp = inbound(Tags::None, &transport(ip(IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), 64), PROTOCOL_TCP, (40003, 80), b""));
    let before = reasons(&harness);
    assert_frame("TCP with no live backend", harness.run(&tcp), XDP_DROP, &tcp);
    assert_counted_once("TCP with no live backend", &harness, &before, stats::DROP_ALL_DOWN);

    for protocol in 0..=255u8 {
        if [PROTOCOL_TCP, PROTOCOL_UDP, PROTOCOL_ICMP].contains(&protocol) {
            continue;
        }
        // Before the fix, protocol 0 (HOPOPT) matched the address entry and was dropped as
        // drop_all_down.
        let frame = ipv4_protocol(CLIENT4, VIP4, protocol);
        assert_passes(&harness, &format!("IPv4 protocol {protocol} to a VIP address"), &frame, stats::PASS_NOT_VIP);
    }
}
