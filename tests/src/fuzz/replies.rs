//! The replies the program builds itself, checked byte for byte: ICMP echo replies (the request
//! turned around) and too-big replies (fragmentation-needed / packet-too-big, built here with
//! etherparse for comparison).

use etherparse::{
    icmpv4::DestUnreachableHeader, Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, IpHeaders, IpNumber, Ipv4Extensions,
    Ipv4Header, Ipv4HeaderSlice, Ipv6Header, PacketBuilder,
};

use super::{
    invariant::{violation, Invariant, Violation},
    reading::{be16, Reading},
};

/// L2 of a reply to `input`: addresses swapped, tags kept, `ethertype`.
fn reply_l2(input: &[u8], l3: usize, ethertype: u16) -> Vec<u8> {
    let mut l2 = input[6..12].to_vec();
    l2.extend_from_slice(&input[..6]);
    l2.extend_from_slice(&input[12..l3 - 2]);
    l2.extend_from_slice(&ethertype.to_be_bytes());
    l2
}

/// An echo reply is the request with MACs and addresses swapped, TTL 64 and the reply type;
/// every other byte (padding too) is the request's, and each checksum is valid exactly when the
/// request's was (the program updates them incrementally and never verifies them).
pub fn check_echo(input: &[u8], r: &Reading, output: &[u8]) -> Result<(), Violation> {
    let bad = |detail: &str| Err(violation(Invariant::EchoReply, detail.to_string()));
    if output.len() != input.len() {
        return bad("the reply's length differs from the request's");
    }
    let (l3, l4, end) = (r.l3, r.l3 + r.header_len, r.l3 + r.total_len);
    if output[..l3] != reply_l2(input, l3, be16(input, l3 - 2))[..] {
        return bad("L2 is not the request's turned around (tags kept)");
    }
    if r.v6 {
        if output[l3..l3 + 7] != input[l3..l3 + 7] || output[l3 + 7] != 64 {
            return bad("IPv6 header: only the hop limit (64) and the addresses may change");
        }
        if output[l3 + 8..l3 + 24] != input[l3 + 24..l3 + 40] || output[l3 + 24..l3 + 40] != input[l3 + 8..l3 + 24] {
            return bad("IPv6 addresses not swapped");
        }
    } else {
        let same = |range: std::ops::Range<usize>| output[l3 + range.start..l3 + range.end] == input[l3 + range.start..l3 + range.end];
        if !same(0..8) || output[l3 + 8] != 64 || !same(9..10) || !same(20..r.header_len) {
            return bad("IPv4 header: only TTL (64), checksum and addresses may change");
        }
        if output[l3 + 12..l3 + 16] != input[l3 + 16..l3 + 20] || output[l3 + 16..l3 + 20] != input[l3 + 12..l3 + 16] {
            return bad("IPv4 addresses not swapped");
        }
        if ipv4_checksum_valid(&output[l3..]) != ipv4_checksum_valid(&input[l3..]) {
            return bad("IPv4 header checksum validity differs from the request's");
        }
    }
    let reply = if r.v6 { 129 } else { 0 };
    if output[l4] != reply || output[l4 + 1] != input[l4 + 1] || output[l4 + 4..] != input[l4 + 4..] {
        return bad("ICMP: only the type (reply) and the checksum may change");
    }
    if icmp_checksum_valid(&output[l3..end], r.v6) != icmp_checksum_valid(&input[l3..end], r.v6) {
        return bad("ICMP checksum validity differs from the request's");
    }
    Ok(())
}

fn ipv4_checksum_valid(ip: &[u8]) -> bool {
    Ipv4HeaderSlice::from_slice(ip).is_ok_and(|header| header.to_header().calc_header_checksum() == header.header_checksum())
}

/// The ICMP (IPv4) or ICMPv6 checksum of the IP packet `ip` (header lengths already checked).
fn icmp_checksum_valid(ip: &[u8], v6: bool) -> bool {
    if v6 {
        let (source, destination): ([u8; 16], [u8; 16]) = (ip[8..24].try_into().expect("16"), ip[24..40].try_into().expect("16"));
        Icmpv6Slice::from_slice(&ip[40..]).is_ok_and(|icmp| icmp.is_checksum_valid(source, destination))
    } else {
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        Icmpv4Slice::from_slice(&ip[header_len..]).is_ok_and(|icmp| icmp.icmp_type().calc_checksum(icmp.payload()) == icmp.checksum())
    }
}

/// A too-big reply: from the VIP to the client, quoting the IPv4 header and 8 bytes or the
/// IPv6 header and 8 bytes, advertising one of `mtus`, checksums valid.
pub fn check_too_big(input: &[u8], r: &Reading, output: &[u8], mtus: &[u16]) -> Result<(), Violation> {
    let mut first = None;
    for &mtu in mtus {
        let expected = too_big_reply(input, r, mtu);
        if output == expected {
            return Ok(());
        }
        first.get_or_insert(expected);
    }
    let expected = first.expect("at least one MTU");
    Err(violation(Invariant::TooBig, format!("the too-big reply differs from the expected one\n{}", crate::hex_diff(&expected, output))))
}

fn too_big_reply(input: &[u8], r: &Reading, mtu: u16) -> Vec<u8> {
    let mut out = reply_l2(input, r.l3, if r.v6 { 0x86dd } else { 0x0800 });
    let ip = &input[r.l3..];
    let mut packet = Vec::new();
    if r.v6 {
        let header = Ipv6Header {
            hop_limit: 64,
            source: ip[24..40].try_into().expect("16"),
            destination: ip[8..24].try_into().expect("16"),
            ..Default::default()
        };
        PacketBuilder::ip(IpHeaders::Ipv6(header, Default::default()))
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: u32::from(mtu) })
            .write(&mut packet, &ip[..48])
            .expect("build packet-too-big");
    } else {
        let mut header = Ipv4Header::new(0, 64, IpNumber::ICMP, ip[16..20].try_into().expect("4"), ip[12..16].try_into().expect("4")).expect("header");
        header.dont_fragment = false;
        PacketBuilder::ip(IpHeaders::Ipv4(header, Ipv4Extensions::default()))
            .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu }))
            .write(&mut packet, &ip[..r.header_len + 8])
            .expect("build fragmentation-needed");
    }
    out.extend_from_slice(&packet);
    out
}
