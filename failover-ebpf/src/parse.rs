//! Packet parsing: Ethernet, up to two VLAN tags, IPv4 (with options) or IPv6, then TCP, UDP,
//! ICMP or ICMPv6. Parsing stops as early as the caller allows: `l3` reads just enough to know
//! the destination, so non-VIP traffic is dismissed before the L4 header is touched.

use aya_ebpf::programs::XdpContext;
use failover_common::{maps::{FAMILY_IPV4, FAMILY_IPV6, PROTOCOL_ICMP, PROTOCOL_ICMPV6, PROTOCOL_TCP, PROTOCOL_UDP}, stats};

use crate::{headers::*, packet::{at, has_bytes_after}, verdict::Verdict};

/// Network-layer facts of a packet. Addresses are network-order words (IPv4 in word 0).
#[derive(Clone, Copy)]
pub struct L3 {
    /// Offset of the IP header (14, 18 or 22).
    pub offset: usize,
    pub family: u8,
    /// IPv4 protocol or IPv6 next header.
    pub protocol: u8,
    /// IPv4 TOS or IPv6 traffic class.
    pub tos: u8,
    /// IPv4 `fragment` field as on the wire (0 for IPv6).
    pub fragment_be: u16,
    pub source: [u32; 4],
    pub destination: [u32; 4],
    /// IP header length (IHL * 4, or 40).
    pub header_len: usize,
    /// Whole IP packet length claimed by the header (not yet checked against the frame).
    pub total_len: usize,
}

impl L3 {
    /// IPv6 whose next header is not TCP, UDP or ICMPv6: an extension header follows.
    #[inline(always)]
    pub fn has_ipv6_extension(&self) -> bool {
        self.family == FAMILY_IPV6
            && self.protocol != PROTOCOL_TCP
            && self.protocol != PROTOCOL_UDP
            && self.protocol != PROTOCOL_ICMPV6
    }

    #[inline(always)]
    pub fn l4_offset(&self) -> usize {
        self.offset + self.header_len
    }
}

/// Parses L2 and the IP header. `wanted` sees the destination address first, before any other
/// IP field is read: if it says no, parsing stops with `Err(pass(PASS_NOT_VIP))`, which keeps
/// traffic that is not ours on the cheapest path.
///
/// Returns `Err(pass(PASS_UNPARSED))` for anything that is not IPv4/IPv6 or is too short to
/// name a destination: the kernel decides what to do with it, as it would without us.
#[inline(always)]
pub fn l3(ctx: &XdpContext, wanted: impl Fn(&[u32; 4]) -> bool) -> Result<L3, Verdict> {
    const UNPARSED: Verdict = Verdict::pass(stats::PASS_UNPARSED);
    const NOT_WANTED: Verdict = Verdict::pass(stats::PASS_NOT_VIP);
    let ethernet: *mut EthernetHeader = at(ctx, 0).ok_or(UNPARSED)?;
    // SAFETY: checked by `at`.
    let mut ethertype = unsafe { (*ethernet).ethertype };
    let mut offset = ETHERNET_LEN;
    if ethertype == ETHERTYPE_VLAN_BE || ethertype == ETHERTYPE_QINQ_BE {
        let tag: *mut VlanTag = at(ctx, offset).ok_or(UNPARSED)?;
        // SAFETY: checked by `at`.
        ethertype = unsafe { (*tag).ethertype };
        offset += VLAN_LEN;
        if ethertype == ETHERTYPE_VLAN_BE || ethertype == ETHERTYPE_QINQ_BE {
            let tag: *mut VlanTag = at(ctx, offset).ok_or(UNPARSED)?;
            // SAFETY: checked by `at`.
            ethertype = unsafe { (*tag).ethertype };
            offset += VLAN_LEN;
        }
    }
    if ethertype == ETHERTYPE_IPV4_BE {
        let ip: *mut Ipv4Header = at(ctx, offset).ok_or(UNPARSED)?;
        // SAFETY: checked by `at`.
        let (version_ihl, destination) = unsafe { ((*ip).version_ihl, (*ip).destination) };
        if version_ihl >> 4 != 4 {
            return Err(UNPARSED);
        }
        let destination = [destination, 0, 0, 0];
        if !wanted(&destination) {
            return Err(NOT_WANTED);
        }
        // SAFETY: checked by `at`.
        let (tos, total, fragment, protocol, source) =
            unsafe { ((*ip).tos, (*ip).total_length, (*ip).fragment, (*ip).protocol, (*ip).source) };
        Ok(L3 {
            offset,
            family: FAMILY_IPV4,
            protocol,
            tos,
            fragment_be: fragment,
            source: [source, 0, 0, 0],
            destination,
            header_len: ((version_ihl & 0x0f) as usize) * 4,
            total_len: u16::from_be(total) as usize,
        })
    } else if ethertype == ETHERTYPE_IPV6_BE {
        let ip: *mut Ipv6Header = at(ctx, offset).ok_or(UNPARSED)?;
        // SAFETY: checked by `at`.
        let (first, destination) = unsafe { ((*ip).version_class_flow, (*ip).destination) };
        let first = u32::from_be(first);
        if first >> 28 != 6 {
            return Err(UNPARSED);
        }
        if !wanted(&destination) {
            return Err(NOT_WANTED);
        }
        // SAFETY: checked by `at`.
        let (payload, next, source) = unsafe { ((*ip).payload_length, (*ip).next_header, (*ip).source) };
        Ok(L3 {
            offset,
            family: FAMILY_IPV6,
            protocol: next,
            tos: (first >> 20) as u8,
            fragment_be: 0,
            source,
            destination,
            header_len: IPV6_LEN,
            total_len: IPV6_LEN + u16::from_be(payload) as usize,
        })
    } else {
        Err(UNPARSED)
    }
}

/// Checks the IP lengths of a packet already known to be VIP traffic: header length sane,
/// claimed length covers the header and fits in the frame. Trailing bytes beyond the claimed
/// length (Ethernet padding) are allowed; the encapsulation trims them.
#[inline(always)]
pub fn check_lengths(ctx: &XdpContext, l3: &L3) -> Result<(), Verdict> {
    const MALFORMED: Verdict = Verdict::drop(stats::DROP_MALFORMED);
    if l3.header_len < IPV4_LEN || l3.total_len < l3.header_len {
        return Err(MALFORMED);
    }
    if !has_bytes_after(ctx, l3.offset + l3.total_len - 1) {
        return Err(MALFORMED);
    }
    Ok(())
}

/// Transport facts: ports (network order, 0 for ICMP) and, for ICMP, type and code.
#[derive(Clone, Copy)]
pub struct L4 {
    pub source_port: u16,
    pub destination_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// TCP's flags byte (`TCP_SYN`, `TCP_ACK`, ...); 0 for other protocols.
    pub tcp_flags: u8,
}

impl L4 {
    /// A TCP connection's first packet: SYN without ACK.
    #[inline(always)]
    pub fn opens_connection(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// Reads the transport header of VIP traffic. A header cut short is `Drop(DROP_MALFORMED)`;
/// other protocols get zero ports (no VIP matches them, so they pass).
#[inline(always)]
pub fn l4(ctx: &XdpContext, l3: &L3) -> Result<L4, Verdict> {
    const MALFORMED: Verdict = Verdict::drop(stats::DROP_MALFORMED);
    let offset = l3.l4_offset();
    let mut l4 = L4 { source_port: 0, destination_port: 0, icmp_type: 0, icmp_code: 0, tcp_flags: 0 };
    if l3.protocol == PROTOCOL_TCP {
        let tcp: *mut TcpHeader = at(ctx, offset).ok_or(MALFORMED)?;
        // SAFETY: checked by `at`.
        unsafe {
            l4.source_port = (*tcp).ports.source;
            l4.destination_port = (*tcp).ports.destination;
            // Data offset in the first byte, the flags in the second.
            l4.tcp_flags = (*tcp).offset_flags.to_ne_bytes()[1];
        }
        if offset + core::mem::size_of::<TcpHeader>() > l3.offset + l3.total_len {
            return Err(MALFORMED);
        }
    } else if l3.protocol == PROTOCOL_UDP {
        let udp: *mut UdpHeader = at(ctx, offset).ok_or(MALFORMED)?;
        // SAFETY: checked by `at`.
        unsafe {
            l4.source_port = (*udp).ports.source;
            l4.destination_port = (*udp).ports.destination;
        }
        if offset + core::mem::size_of::<UdpHeader>() > l3.offset + l3.total_len {
            return Err(MALFORMED);
        }
    } else if (l3.protocol == PROTOCOL_ICMP && l3.family == FAMILY_IPV4)
        || (l3.protocol == PROTOCOL_ICMPV6 && l3.family == FAMILY_IPV6)
    {
        let icmp: *mut IcmpHeader = at(ctx, offset).ok_or(MALFORMED)?;
        // SAFETY: checked by `at`.
        unsafe {
            l4.icmp_type = (*icmp).kind;
            l4.icmp_code = (*icmp).code;
        }
        if offset + ICMP_LEN > l3.offset + l3.total_len {
            return Err(MALFORMED);
        }
    }
    Ok(l4)
}
