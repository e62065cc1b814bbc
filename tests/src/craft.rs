//! Packets for fixtures, built with etherparse: Ethernet frames around IP packets, TCP / UDP /
//! ICMP echo packets, the ICMP errors a router sends about a backend's reply, and the counter
//! checks that go with them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
    icmpv6::DestUnreachableCode,
    Icmpv4Type, Icmpv6Type, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6Header, PacketBuilder,
};
use failover_common::{maps::*, stats};
use failover_ctl::address::to_words;

use crate::{Harness, Tags, CLIENT_MAC, LB_MAC};

pub const ROUTER_MAC: [u8; 6] = [0x02, 0x52, 0x00, 0x00, 0x00, 0x01];
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfe, 0, 0, 0, 0, 1);
pub const ECHO_ID: u16 = 0x1234;
pub const ECHO_SEQUENCE: u16 = 7;

pub fn v4(address: Ipv4Addr) -> IpAddr {
    IpAddr::V4(address)
}

pub fn v6(address: Ipv6Addr) -> IpAddr {
    IpAddr::V6(address)
}

/// An Ethernet frame with `tags` carrying the IP packet `ip`; the EtherType follows its version.
pub fn frame(tags: Tags, destination: [u8; 6], source: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if ip[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    let mut frame = Vec::new();
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&tags.bytes());
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(ip);
    frame
}

/// A frame from the client to the load balancer.
pub fn inbound(tags: Tags, ip: &[u8]) -> Vec<u8> {
    frame(tags, LB_MAC, CLIENT_MAC, ip)
}

/// A frame from the load balancer back to the client.
pub fn outbound(tags: Tags, ip: &[u8]) -> Vec<u8> {
    frame(tags, CLIENT_MAC, LB_MAC, ip)
}

/// IP headers with etherparse's defaults (IPv4: DF set, identification 0, no options).
pub fn ip(source: IpAddr, destination: IpAddr, ttl: u8) -> IpHeaders {
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            IpHeaders::Ipv4(Ipv4Header::new(0, ttl, IpNumber::TCP, s.octets(), d.octets()).unwrap(), Ipv4Extensions::default())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header { hop_limit: ttl, source: s.octets(), destination: d.octets(), ..Default::default() },
            Ipv6Extensions::default(),
        ),
        _ => panic!("mixed address families"),
    }
}

/// IPv4 headers with `options` (IHL = 5 + options / 4) and the DF bit as given.
pub fn ip4(source: Ipv4Addr, destination: Ipv4Addr, options: &[u8], dont_fragment: bool) -> IpHeaders {
    let mut header = Ipv4Header::new(0, 64, IpNumber::TCP, source.octets(), destination.octets()).unwrap();
    header.options = options.try_into().unwrap();
    header.dont_fragment = dont_fragment;
    IpHeaders::Ipv4(header, Ipv4Extensions::default())
}

pub fn header_len(headers: &IpHeaders) -> usize {
    match headers {
        IpHeaders::Ipv4(header, _) => header.header_len(),
        IpHeaders::Ipv6(..) => 40,
    }
}

/// A TCP (ACK) or UDP packet (IP and up) with `ports` and `payload`.
pub fn transport(headers: IpHeaders, protocol: u8, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let builder = PacketBuilder::ip(headers);
    match protocol {
        PROTOCOL_TCP => builder.tcp(ports.0, ports.1, 1001, 64240).ack(5000).write(&mut out, payload),
        PROTOCOL_UDP => builder.udp(ports.0, ports.1).write(&mut out, payload),
        _ => panic!("protocol {protocol} is not a transport"),
    }
    .unwrap();
    out
}

/// A TCP packet whose IP total length is exactly `total`.
pub fn sized_tcp(headers: IpHeaders, ports: (u16, u16), total: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..total - header_len(&headers) - 20).map(|i| i as u8).collect();
    let packet = transport(headers, PROTOCOL_TCP, ports, &payload);
    assert_eq!(packet.len(), total);
    packet
}

pub fn echo_request(headers: IpHeaders, payload: &[u8]) -> Vec<u8> {
    let v4 = matches!(headers, IpHeaders::Ipv4(..));
    let builder = PacketBuilder::ip(headers);
    let mut out = Vec::new();
    if v4 {
        builder.icmpv4_echo_request(ECHO_ID, ECHO_SEQUENCE).write(&mut out, payload).unwrap();
    } else {
        builder.icmpv6_echo_request(ECHO_ID, ECHO_SEQUENCE).write(&mut out, payload).unwrap();
    }
    out
}

pub fn echo_reply(headers: IpHeaders, payload: &[u8]) -> Vec<u8> {
    let v4 = matches!(headers, IpHeaders::Ipv4(..));
    let builder = PacketBuilder::ip(headers);
    let mut out = Vec::new();
    if v4 {
        builder.icmpv4_echo_reply(ECHO_ID, ECHO_SEQUENCE).write(&mut out, payload).unwrap();
    } else {
        builder.icmpv6_echo_reply(ECHO_ID, ECHO_SEQUENCE).write(&mut out, payload).unwrap();
    }
    out
}

/// Kinds of ICMP errors a router sends about a packet of the backend's reply.
#[derive(Clone, Copy, Debug)]
pub enum ErrorKind {
    FragmentationNeeded,
    TimeExceeded,
    PacketTooBig,
    Unreachable6,
}

/// An ICMP error (IP and up) from `router` to `vip` quoting `quote`.
pub fn icmp_error(router: IpAddr, vip: IpAddr, kind: ErrorKind, quote: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ip(ip(router, vip, 61));
    let mut out = Vec::new();
    match kind {
        ErrorKind::FragmentationNeeded => builder
            .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }))
            .write(&mut out, quote),
        ErrorKind::TimeExceeded => {
            builder.icmpv4(Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)).write(&mut out, quote)
        }
        ErrorKind::PacketTooBig => builder.icmpv6(Icmpv6Type::PacketTooBig { mtu: 1400 }).write(&mut out, quote),
        ErrorKind::Unreachable6 => {
            builder.icmpv6(Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port)).write(&mut out, quote)
        }
    }
    .unwrap();
    out
}

/// The backend's reply (VIP:vip_port -> client:client_port) as a router quotes it: for IPv4
/// the header and the first eight transport bytes (RFC 792), for IPv6 the whole packet.
pub fn reply_quote(headers: IpHeaders, protocol: u8, ports: (u16, u16)) -> Vec<u8> {
    let v4 = matches!(headers, IpHeaders::Ipv4(..));
    let length = header_len(&headers);
    let reply = transport(headers, protocol, ports, b"the backend's answer");
    if v4 {
        reply[..length + 8].to_vec()
    } else {
        reply
    }
}


/// The flow table key of client:port -> VIP:port.
pub fn flow_key(client: IpAddr, vip: IpAddr, protocol: u8, ports: (u16, u16)) -> FlowKey {
    let (source, family) = to_words(client);
    FlowKey {
        source,
        destination: to_words(vip).0,
        source_port: ports.0.to_be(),
        destination_port: ports.1.to_be(),
        protocol,
        family,
        _padding: [0; 2],
    }
}

pub fn flow_count(harness: &Harness) -> usize {
    harness.dataplane.counters.flows().unwrap().len()
}

/// Every reason counter (packets), to compare before and after a step.
pub fn reasons(harness: &Harness) -> Vec<u64> {
    harness.dataplane.counters.reasons().unwrap().iter().map(|counter| counter.packets).collect()
}

/// Asserts that between `before` and now exactly one packet was counted, under `reason`.
pub fn assert_counted_once(case: &str, harness: &Harness, before: &[u64], reason: u32) {
    let after = reasons(harness);
    for (index, (old, new)) in before.iter().zip(&after).enumerate() {
        let wanted = old + (index as u32 == reason) as u64;
        assert_eq!(*new, wanted, "{case}: counter {} (expected one packet under {})", stats::REASON_NAMES[index], stats::REASON_NAMES[reason as usize]);
    }
}
