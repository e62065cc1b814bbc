//! ICMP and ICMPv6 at a VIP: echo replies, errors routed to the backend that owns the flow
//! they are about, and fragmentation-needed / packet-too-big for packets that would not fit
//! once encapsulated.

use aya_ebpf::programs::XdpContext;
use failover_common::{csum, maps::*, stats};
use failover_ebpf::{
    headers::*,
    l2::L2,
    packet::{adjust_head, adjust_tail, at, buffer_len, sum_words},
    parse::{L3, L4},
    verdict::Verdict,
};

use crate::{flow::Routed, vip};

/// ICMP addressed to a VIP address.
///
/// Returns `transmit(TX_ECHO_REPLY)`, `needs_routing()` with `routed` filled in (an error about
/// a VIP flow), `drop(DROP_ICMP_ERROR_UNROUTABLE | DROP_MALFORMED)` or `pass(PASS_NOT_VIP |
/// PASS_NOT_OWNED | PASS_ICMP_OTHER)`.
// Not inlined: a separate BPF frame keeps the hot path's stack small.
#[inline(never)]
pub fn handle(ctx: &XdpContext, l3: &L3, l4: &L4, routed: &mut Routed) -> Verdict {
    let v4 = l3.family == FAMILY_IPV4;
    let kind = l4.icmp_type;
    let echo = if v4 { kind == ICMP_ECHO_REQUEST } else { kind == ICMPV6_ECHO_REQUEST };
    if echo {
        return match vip::address_entry(l3.family, &l3.destination) {
            Some(meta) if vip::owns(&meta) => echo_reply(ctx, l3),
            Some(_) => Verdict::pass(stats::PASS_NOT_OWNED),
            None => Verdict::pass(stats::PASS_NOT_VIP),
        };
    }
    let error = if v4 {
        kind == ICMP_DESTINATION_UNREACHABLE || kind == ICMP_TIME_EXCEEDED
    } else {
        kind == ICMPV6_DESTINATION_UNREACHABLE || kind == ICMPV6_PACKET_TOO_BIG || kind == ICMPV6_TIME_EXCEEDED
    };
    if error {
        return route_error(ctx, l3, routed);
    }
    match vip::address_entry(l3.family, &l3.destination) {
        Some(_) => Verdict::pass(stats::PASS_ICMP_OTHER),
        None => Verdict::pass(stats::PASS_NOT_VIP),
    }
}

/// Turns an echo request into its reply in place.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, l3: &L3) -> Verdict {
    const NO_ROOM: Verdict = Verdict::drop(stats::DROP_MALFORMED);
    let Some(l2) = L2::read(ctx, l3.offset) else { return NO_ROOM };
    let ethertype = if l3.family == FAMILY_IPV4 { ETHERTYPE_IPV4_BE } else { ETHERTYPE_IPV6_BE };
    if l2.reversed().write(ctx, ethertype).is_none() {
        return NO_ROOM;
    }
    let Some(icmp) = at::<IcmpHeader>(ctx, l3.l4_offset()) else { return NO_ROOM };
    // SAFETY: checked by `at`.
    unsafe {
        let old = u16::from_ne_bytes([(*icmp).kind, (*icmp).code]);
        let reply = if l3.family == FAMILY_IPV4 { ICMP_ECHO_REPLY } else { ICMPV6_ECHO_REPLY };
        (*icmp).kind = reply;
        let new = u16::from_ne_bytes([reply, (*icmp).code]);
        (*icmp).checksum = csum::replace_u16((*icmp).checksum, old, new);
    }
    if l3.family == FAMILY_IPV4 {
        let Some(ip) = at::<Ipv4Header>(ctx, l3.offset) else { return NO_ROOM };
        // SAFETY: checked by `at`. Swapping addresses leaves the header checksum unchanged.
        // Field by field: `mem::swap` would take references to possibly misaligned packet fields.
        #[allow(clippy::manual_swap, reason = "see above")]
        unsafe {
            let address = (*ip).source;
            (*ip).source = (*ip).destination;
            (*ip).destination = address;
            let old = u16::from_ne_bytes([(*ip).ttl, (*ip).protocol]);
            (*ip).ttl = DEFAULT_TTL;
            let new = u16::from_ne_bytes([DEFAULT_TTL, (*ip).protocol]);
            (*ip).checksum = csum::replace_u16((*ip).checksum, old, new);
        }
    } else {
        let Some(ip) = at::<Ipv6Header>(ctx, l3.offset) else { return NO_ROOM };
        // SAFETY: checked by `at`. The pseudo-header sum does not change when source and
        // destination swap.
        #[allow(clippy::manual_swap, reason = "`mem::swap` would reference misaligned packet fields")]
        unsafe {
            let address = (*ip).source;
            (*ip).source = (*ip).destination;
            (*ip).destination = address;
            (*ip).hop_limit = DEFAULT_TTL;
        }
    }
    Verdict::transmit(stats::TX_ECHO_REPLY)
}

/// Finds the VIP flow an ICMP error is about. The quoted packet is the backend's reply
/// (source = VIP), so the flow is the quote's tuple reversed.
///
/// The error must be addressed to a VIP address (the address filter has false positives:
/// anything else goes to the kernel untouched), and the quoted flow must belong to that very
/// address: an error sent to VIP A that quotes a flow of VIP B is not A's to route, and goes
/// to the kernel like any ICMP about a flow that is not A's.
///
/// Returns `needs_routing()`, `drop(DROP_ICMP_ERROR_UNROUTABLE)` or `pass(PASS_NOT_VIP |
/// PASS_NOT_OWNED | PASS_ICMP_OTHER)`.
#[inline(always)]
fn route_error(ctx: &XdpContext, l3: &L3, routed: &mut Routed) -> Verdict {
    let address = vip::address_entry(l3.family, &l3.destination);
    if address.is_none() {
        return Verdict::pass(stats::PASS_NOT_VIP);
    }
    // Dropped at a VIP address this node owns; otherwise the kernel decides, as for any of its
    // traffic.
    let unroutable = vip::unusable_at(address, stats::DROP_ICMP_ERROR_UNROUTABLE);
    let inner = l3.l4_offset() + ICMP_LEN;
    let (protocol, vip, client, ports_offset) = if l3.family == FAMILY_IPV4 {
        let Some(ip) = at::<Ipv4Header>(ctx, inner) else { return unroutable };
        // SAFETY: checked by `at`.
        let (version_ihl, protocol, source, destination) =
            unsafe { ((*ip).version_ihl, (*ip).protocol, (*ip).source, (*ip).destination) };
        let header_len = ((version_ihl & 0x0f) as usize) * 4;
        if version_ihl >> 4 != 4 || header_len < IPV4_LEN {
            return unroutable;
        }
        (protocol, [source, 0, 0, 0], [destination, 0, 0, 0], inner + header_len)
    } else {
        let Some(ip) = at::<Ipv6Header>(ctx, inner) else { return unroutable };
        // SAFETY: checked by `at`.
        let (first, protocol, source, destination) =
            unsafe { ((*ip).version_class_flow, (*ip).next_header, (*ip).source, (*ip).destination) };
        if u32::from_be(first) >> 28 != 6 {
            return unroutable;
        }
        (protocol, source, destination, inner + IPV6_LEN)
    };
    if protocol != PROTOCOL_TCP && protocol != PROTOCOL_UDP {
        return unroutable;
    }
    // About another address's flow (another VIP's included): not a flow of this VIP.
    if vip != l3.destination {
        return Verdict::pass(stats::PASS_ICMP_OTHER);
    }
    // The quote must lie inside the ICMP packet, not in the frame's padding.
    if ports_offset + core::mem::size_of::<Ports>() > l3.offset + l3.total_len {
        return unroutable;
    }
    let Some(ports) = at::<Ports>(ctx, ports_offset) else { return unroutable };
    // SAFETY: checked by `at`.
    let (vip_port, client_port) = unsafe { ((*ports).source, (*ports).destination) };
    let Some(meta) = vip::lookup_vip(l3.family, &vip, vip_port, protocol) else {
        return Verdict::pass(stats::PASS_ICMP_OTHER);
    };
    routed.meta = meta;
    routed.key = FlowKey {
        source: client,
        destination: vip,
        source_port: client_port,
        destination_port: vip_port,
        protocol,
        family: l3.family,
        _padding: [0; 2],
    };
    Verdict::needs_routing()
}

/// Bytes of the offending packet quoted in an ICMPv6 packet-too-big: its header and the first
/// eight bytes after it (ports), like IPv4's RFC 792 minimum. Enough for the client's stack to
/// find the socket; a fixed size keeps the checksum loop bounded.
const IPV6_QUOTE: usize = IPV6_LEN + 8;

/// Replies to the client that its packet is too big to forward once encapsulated: ICMP
/// fragmentation-needed (RFC 792, RFC 1191) or ICMPv6 packet-too-big (RFC 4443 §3.2), sent
/// from the VIP, advertising `mtu` (the configured MTU less the tunnel header).
///
/// Returns `Transmit(TX_TOO_BIG)`, `Drop(DROP_NO_ROOM)` or `Drop(DROP_MALFORMED)`.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, l3: &L3, mtu: usize) -> Verdict {
    let Some(l2) = L2::read(ctx, l3.offset) else {
        return Verdict::drop(stats::DROP_MALFORMED);
    };
    let v4 = l3.family == FAMILY_IPV4;
    // New headers go between L2 and the offending packet, which stays where it is and is then
    // cut after the quoted bytes: no copy of the quote.
    let (headers, quote) = if v4 { (IPV4_LEN + ICMP_LEN, l3.header_len + 8) } else { (IPV6_LEN + ICMP_LEN, IPV6_QUOTE) };
    if adjust_head(ctx, -(headers as i32)).is_err() {
        return Verdict::drop(stats::DROP_NO_ROOM);
    }
    let l2_len = l2.header_len();
    // The quote is summed before the tail is cut: the offending packet is longer than any
    // quote, so the widest read is in bounds.
    let quote_offset = l2_len + headers;
    let quoted = if v4 {
        sum_words::<{ (60 + 8) / 4 }>(ctx, quote_offset, quote / 4)
    } else {
        sum_words::<{ IPV6_QUOTE / 4 }>(ctx, quote_offset, IPV6_QUOTE / 4)
    };
    let Some(quoted) = quoted else {
        return Verdict::drop(stats::DROP_MALFORMED);
    };
    let wanted = quote_offset + quote;
    let delta = wanted as i32 - buffer_len(ctx) as i32;
    if adjust_tail(ctx, delta).is_err() {
        return Verdict::drop(stats::DROP_NO_ROOM);
    }
    let reply = l2.reversed();
    let written = if v4 {
        reply.write(ctx, ETHERTYPE_IPV4_BE).and_then(|()| write_too_big_v4(ctx, l2_len, l3, quote, quoted, mtu))
    } else {
        reply.write(ctx, ETHERTYPE_IPV6_BE).and_then(|()| write_too_big_v6(ctx, l2_len, l3, quoted, mtu))
    };
    match written {
        Some(()) => Verdict::transmit(stats::TX_TOO_BIG),
        None => Verdict::drop(stats::DROP_NO_ROOM),
    }
}

#[inline(always)]
fn write_too_big_v4(ctx: &XdpContext, offset: usize, l3: &L3, quote: usize, quoted: u64, mtu: usize) -> Option<()> {
    let ip: *mut Ipv4Header = at(ctx, offset)?;
    let icmp: *mut IcmpHeader = at(ctx, offset + IPV4_LEN)?;
    let total = ((IPV4_LEN + ICMP_LEN + quote) as u16).to_be();
    let source = l3.destination[0];
    let destination = l3.source[0];
    let ttl_protocol = u16::from_ne_bytes([DEFAULT_TTL, PROTOCOL_ICMP]);
    let ip_sum = u16::from_ne_bytes([0x45, 0]) as u64 + total as u64 + ttl_protocol as u64 + source as u64 + destination as u64;
    let kind = u16::from_ne_bytes([ICMP_DESTINATION_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED]);
    let rest = u32::from_ne_bytes([0, 0, (mtu >> 8) as u8, mtu as u8]);
    // SAFETY: checked by `at`.
    unsafe {
        (*ip).version_ihl = 0x45;
        (*ip).tos = 0;
        (*ip).total_length = total;
        (*ip).identification = 0;
        (*ip).fragment = 0;
        (*ip).ttl = DEFAULT_TTL;
        (*ip).protocol = PROTOCOL_ICMP;
        (*ip).checksum = csum::finish(ip_sum);
        (*ip).source = source;
        (*ip).destination = destination;
        (*icmp).kind = ICMP_DESTINATION_UNREACHABLE;
        (*icmp).code = ICMP_FRAGMENTATION_NEEDED;
        (*icmp).rest = rest;
        (*icmp).checksum = csum::finish(kind as u64 + rest as u64 + quoted);
    }
    Some(())
}

#[inline(always)]
fn write_too_big_v6(ctx: &XdpContext, offset: usize, l3: &L3, quoted: u64, mtu: usize) -> Option<()> {
    let ip: *mut Ipv6Header = at(ctx, offset)?;
    let icmp: *mut IcmpHeader = at(ctx, offset + IPV6_LEN)?;
    let length = (ICMP_LEN + IPV6_QUOTE) as u32;
    let rest = (mtu as u32).to_be();
    let kind = u16::from_ne_bytes([ICMPV6_PACKET_TOO_BIG, 0]);
    let mut sum = quoted + kind as u64 + rest as u64 + length.to_be() as u64 + (PROTOCOL_ICMPV6 as u32).to_be() as u64;
    for i in 0..4 {
        sum += l3.source[i] as u64 + l3.destination[i] as u64;
    }
    // SAFETY: checked by `at`.
    unsafe {
        (*ip).version_class_flow = (6u32 << 28).to_be();
        (*ip).payload_length = (length as u16).to_be();
        (*ip).next_header = PROTOCOL_ICMPV6;
        (*ip).hop_limit = DEFAULT_TTL;
        (*ip).source = l3.destination;
        (*ip).destination = l3.source;
        (*icmp).kind = ICMPV6_PACKET_TOO_BIG;
        (*icmp).code = 0;
        (*icmp).rest = rest;
        (*icmp).checksum = csum::finish(sum);
    }
    Some(())
}
