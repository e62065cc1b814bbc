//! Direct-server-return forwarding: push an IPv4 or IPv6 tunnel header in front of the
//! untouched client packet, address the frame to the next hop, and send it back out.

use aya_ebpf::programs::XdpContext;
use failover_common::{csum, maps::*, stats};
use failover_ebpf::{
    headers::*,
    l2::L2,
    packet::{adjust_head, adjust_tail, at, buffer_len, has_bytes_after},
    parse::L3,
    verdict::Verdict,
};


/// Encapsulates the packet to `backend`. `entropy` (the flow hash) varies per flow and fills
/// the low bits of the outer source address (and the IPv6 flow label) so that receivers spread
/// flows over queues.
///
/// Returns `transmit(TX_FORWARD)`, `needs_too_big(mtu)` (the caller answers with
/// `icmp::too_big`), `drop(DROP_TOO_BIG_NO_DF)`, `drop(DROP_NO_ROOM)` or `drop(DROP_MALFORMED)`.
#[inline(always)]
pub fn forward(ctx: &XdpContext, l3: &L3, backend: &Backend, entropy: u32, config: &Config) -> Verdict {
    let inner_len = l3.total_len;
    let outer_len = if backend.family == FAMILY_IPV4 { IPV4_LEN } else { IPV6_LEN };
    if config.flags & CONFIG_NO_MTU_CHECK == 0 && inner_len + outer_len > config.mtu as usize {
        if l3.family == FAMILY_IPV4 && l3.fragment_be & IPV4_DONT_FRAGMENT_BE == 0 {
            return Verdict::drop(stats::DROP_TOO_BIG_NO_DF);
        }
        return Verdict::needs_too_big((config.mtu as usize).saturating_sub(outer_len) as u32);
    }
    let Some(mut l2) = L2::read(ctx, l3.offset) else {
        return Verdict::drop(stats::DROP_MALFORMED);
    };
    // Ethernet padding after the IP packet would otherwise end up inside the tunnel.
    if has_bytes_after(ctx, l3.offset + inner_len) {
        let excess = buffer_len(ctx).saturating_sub(l3.offset + inner_len);
        if adjust_tail(ctx, -(excess as i32)).is_err() {
            return Verdict::drop(stats::DROP_NO_ROOM);
        }
    }
    if adjust_head(ctx, -(outer_len as i32)).is_err() {
        return Verdict::drop(stats::DROP_NO_ROOM);
    }
    l2.set_addresses(&config.next_hop_mac, &config.interface_mac);
    let inner_protocol = if l3.family == FAMILY_IPV4 { PROTOCOL_IPIP } else { PROTOCOL_IPV6_IN_IP };
    let written = if backend.family == FAMILY_IPV4 {
        l2.write(ctx, ETHERTYPE_IPV4_BE).and_then(|()| {
            write_ipv4(ctx, l2.header_len(), l3, inner_protocol, inner_len, backend.address[0], entropy, config)
        })
    } else {
        l2.write(ctx, ETHERTYPE_IPV6_BE).and_then(|()| {
            write_ipv6(ctx, l2.header_len(), l3, inner_protocol, inner_len, &backend.address, entropy, config)
        })
    };
    match written {
        Some(()) => Verdict::transmit(stats::TX_FORWARD),
        None => Verdict::drop(stats::DROP_NO_ROOM),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "one call site; a struct would only rename the arguments")]
fn write_ipv4(
    ctx: &XdpContext,
    offset: usize,
    l3: &L3,
    inner_protocol: u8,
    inner_len: usize,
    destination: u32,
    entropy: u32,
    config: &Config,
) -> Option<()> {
    let ip: *mut Ipv4Header = at(ctx, offset)?;
    let total = ((inner_len + IPV4_LEN) as u16).to_be();
    // Keep the client's DF; IPv6 inside must never be fragmented on the way.
    let fragment = if l3.family == FAMILY_IPV4 { l3.fragment_be & IPV4_DONT_FRAGMENT_BE } else { IPV4_DONT_FRAGMENT_BE };
    let source = config.source_v4_base | (entropy & config.source_v4_mask);
    let first = u16::from_ne_bytes([0x45, l3.tos]);
    let ttl_protocol = u16::from_ne_bytes([DEFAULT_TTL, inner_protocol]);
    let sum = first as u64
        + total as u64
        + fragment as u64
        + ttl_protocol as u64
        + source as u64
        + destination as u64;
    // SAFETY: checked by `at`.
    unsafe {
        (*ip).version_ihl = 0x45;
        (*ip).tos = l3.tos;
        (*ip).total_length = total;
        (*ip).identification = 0;
        (*ip).fragment = fragment;
        (*ip).ttl = DEFAULT_TTL;
        (*ip).protocol = inner_protocol;
        (*ip).checksum = csum::finish(sum);
        (*ip).source = source;
        (*ip).destination = destination;
    }
    Some(())
}

#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "one call site; a struct would only rename the arguments")]
fn write_ipv6(
    ctx: &XdpContext,
    offset: usize,
    l3: &L3,
    inner_protocol: u8,
    inner_len: usize,
    destination: &[u32; 4],
    entropy: u32,
    config: &Config,
) -> Option<()> {
    let ip: *mut Ipv6Header = at(ctx, offset)?;
    let mut source = config.source_v6_base;
    source[3] |= entropy & config.source_v6_mask;
    let first = (6u32 << 28) | ((l3.tos as u32) << 20) | (entropy & 0x000f_ffff);
    // SAFETY: checked by `at`.
    unsafe {
        (*ip).version_class_flow = first.to_be();
        (*ip).payload_length = (inner_len as u16).to_be();
        (*ip).next_header = inner_protocol;
        (*ip).hop_limit = DEFAULT_TTL;
        (*ip).source = source;
        (*ip).destination = *destination;
    }
    Some(())
}
