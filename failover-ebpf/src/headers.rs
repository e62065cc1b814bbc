//! Wire header layouts. Multi-byte fields hold network-order bytes and are compared against
//! network-order constants (`*_BE`), never converted on the packet path unless arithmetic needs it.

/// EtherType values as they read from the wire into a native `u16`.
pub const ETHERTYPE_IPV4_BE: u16 = 0x0800u16.to_be();
pub const ETHERTYPE_IPV6_BE: u16 = 0x86ddu16.to_be();
pub const ETHERTYPE_VLAN_BE: u16 = 0x8100u16.to_be();
pub const ETHERTYPE_QINQ_BE: u16 = 0x88a8u16.to_be();

pub const PROTOCOL_IPIP: u8 = 4;
pub const PROTOCOL_IPV6_IN_IP: u8 = 41;

pub const ETHERNET_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const ICMP_LEN: usize = 8;

/// IPv4 `fragment` field bits, network order.
pub const IPV4_DONT_FRAGMENT_BE: u16 = 0x4000u16.to_be();
pub const IPV4_FRAGMENT_MASK_BE: u16 = 0x3fffu16.to_be();

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DESTINATION_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_FRAGMENTATION_NEEDED: u8 = 4;
pub const ICMPV6_DESTINATION_UNREACHABLE: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// TTL / hop limit of packets the load balancer originates (tunnel headers, ICMP replies).
pub const DEFAULT_TTL: u8 = 64;

#[repr(C)]
pub struct EthernetHeader {
    pub destination: [u8; 6],
    pub source: [u8; 6],
    pub ethertype: u16,
}

#[repr(C)]
pub struct VlanTag {
    pub control: u16,
    pub ethertype: u16,
}

#[repr(C)]
pub struct Ipv4Header {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_length: u16,
    pub identification: u16,
    pub fragment: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub checksum: u16,
    pub source: u32,
    pub destination: u32,
}

#[repr(C)]
pub struct Ipv6Header {
    pub version_class_flow: u32,
    pub payload_length: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub source: [u32; 4],
    pub destination: [u32; 4],
}

/// The first four bytes of TCP and UDP headers.
#[repr(C)]
pub struct Ports {
    pub source: u16,
    pub destination: u16,
}

/// Bits of TCP's flags byte (the header's 14th byte).
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// The part of the TCP header the load balancer needs to see intact (20 bytes).
#[repr(C)]
pub struct TcpHeader {
    pub ports: Ports,
    pub sequence: u32,
    pub acknowledgement: u32,
    pub offset_flags: u16,
    pub window: u16,
    pub checksum: u16,
    pub urgent: u16,
}

#[repr(C)]
pub struct UdpHeader {
    pub ports: Ports,
    pub length: u16,
    pub checksum: u16,
}

#[repr(C)]
pub struct IcmpHeader {
    pub kind: u8,
    pub code: u8,
    pub checksum: u16,
    pub rest: u32,
}
