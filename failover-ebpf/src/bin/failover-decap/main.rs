//! The backend-side XDP program: strips the IPIP / 6in4 / 4in6 / IP6IP6 header of packets whose
//! inner destination is a configured VIP and hands the inner packet to the kernel, so hosts
//! without tunnel modules can be backends.
#![no_std]
#![no_main]

mod maps;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use failover_common::{
    maps::{VipKey, FAMILY_IPV4, FAMILY_IPV6, PROTOCOL_ADDRESS},
    stats,
};
use failover_ebpf::{
    headers::*,
    l2::L2,
    packet::{adjust_head, at, frame_len},
    parse,
    verdict::Verdict,
};

use maps::{DECAP_STATS, DECAP_VIPS};

#[xdp]
pub fn failover_decap(ctx: XdpContext) -> u32 {
    let bytes = frame_len(&ctx);
    let verdict = decap(&ctx);
    if let Some(counter) = DECAP_STATS.get_ptr_mut(verdict.reason()) {
        // SAFETY: per-CPU value; this program is not preempted.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
    verdict.action()
}

/// Returns `Pass(DECAP_STRIPPED)` after removing the tunnel header; `Pass(PASS_UNPARSED |
/// PASS_NOT_VIP)` for packets that are not tunnel traffic; `Pass(DECAP_NOT_VIP)` for tunnel
/// packets to other addresses or fragmented ones (the kernel's business); `Drop(DECAP_MALFORMED)`
/// for tunnel packets cut short; `Drop(DROP_NO_ROOM)` if the header cannot be removed.
#[inline(always)]
fn decap(ctx: &XdpContext) -> Verdict {
    let outer = match parse::l3(ctx, |_| true) {
        Ok(l3) => l3,
        Err(verdict) => return verdict,
    };
    let inner_v4 = outer.protocol == PROTOCOL_IPIP;
    if !inner_v4 && outer.protocol != PROTOCOL_IPV6_IN_IP {
        return Verdict::pass(stats::PASS_NOT_VIP);
    }
    if outer.fragment_be & IPV4_FRAGMENT_MASK_BE != 0 {
        return Verdict::pass(stats::DECAP_NOT_VIP);
    }
    if parse::check_lengths(ctx, &outer).is_err() {
        return Verdict::drop(stats::DECAP_MALFORMED);
    }
    let inner = outer.l4_offset();
    // The inner header must lie inside the outer packet, not in the frame's padding.
    let needed = if inner_v4 { IPV4_LEN } else { IPV6_LEN };
    if inner + needed > outer.offset + outer.total_len {
        return Verdict::drop(stats::DECAP_MALFORMED);
    }
    let key = if inner_v4 {
        let Some(ip) = at::<Ipv4Header>(ctx, inner) else { return Verdict::drop(stats::DECAP_MALFORMED) };
        // SAFETY: checked by `at`.
        let destination = unsafe { (*ip).destination };
        VipKey { address: [destination, 0, 0, 0], port: 0, protocol: PROTOCOL_ADDRESS, family: FAMILY_IPV4 }
    } else {
        let Some(ip) = at::<Ipv6Header>(ctx, inner) else { return Verdict::drop(stats::DECAP_MALFORMED) };
        // SAFETY: checked by `at`.
        let destination = unsafe { (*ip).destination };
        VipKey { address: destination, port: 0, protocol: PROTOCOL_ADDRESS, family: FAMILY_IPV6 }
    };
    if DECAP_VIPS.get_ptr(key).is_none() {
        return Verdict::pass(stats::DECAP_NOT_VIP);
    }
    let Some(l2) = L2::read(ctx, outer.offset) else { return Verdict::drop(stats::DECAP_MALFORMED) };
    if adjust_head(ctx, outer.header_len as i32).is_err() {
        return Verdict::drop(stats::DROP_NO_ROOM);
    }
    let ethertype = if inner_v4 { ETHERTYPE_IPV4_BE } else { ETHERTYPE_IPV6_BE };
    match l2.write(ctx, ethertype) {
        Some(()) => Verdict::pass(stats::DECAP_STRIPPED),
        None => Verdict::drop(stats::DROP_NO_ROOM),
    }
}
