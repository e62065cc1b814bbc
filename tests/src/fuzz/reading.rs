//! The reader the oracle uses on input frames: Ethernet, up to two VLAN tags, and the base IP
//! header, exactly as far as the README's data-plane section says the program reads before it
//! decides. Written here rather than taken from etherparse, whose slices refuse the lying
//! lengths and odd versions the mutations make, where the program must still decide.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The input's network layer, read as the data plane documents it.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// Offset of the IP header (the L2 length).
    pub l3: usize,
    pub v6: bool,
    pub protocol: u8,
    pub tos: u8,
    pub header_len: usize,
    pub total_len: usize,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub fragment: bool,
    pub dont_fragment: bool,
}

pub fn be16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

pub fn address(bytes: &[u8]) -> IpAddr {
    match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes"))),
        _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))),
    }
}

/// Ethernet, up to two 802.1Q / 802.1ad tags, then a whole base IP header of the version the
/// EtherType names; `None` when any of that is missing.
pub fn read(frame: &[u8]) -> Option<Reading> {
    let mut ethertype = be16(frame, 12);
    let mut l3 = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        if frame.len() < l3 + 4 {
            return None;
        }
        ethertype = be16(frame, l3 + 2);
        l3 += 4;
    }
    match ethertype {
        0x0800 if frame.len() >= l3 + 20 && frame[l3] >> 4 == 4 => {
            let flags = be16(frame, l3 + 6);
            Some(Reading {
                l3,
                v6: false,
                protocol: frame[l3 + 9],
                tos: frame[l3 + 1],
                header_len: usize::from(frame[l3] & 0x0f) * 4,
                total_len: usize::from(be16(frame, l3 + 2)),
                source: address(&frame[l3 + 12..l3 + 16]),
                destination: address(&frame[l3 + 16..l3 + 20]),
                fragment: flags & 0x3fff != 0,
                dont_fragment: flags & 0x4000 != 0,
            })
        }
        0x86dd if frame.len() >= l3 + 40 && frame[l3] >> 4 == 6 => Some(Reading {
            l3,
            v6: true,
            protocol: frame[l3 + 6],
            tos: ((u32::from_be_bytes([frame[l3], frame[l3 + 1], frame[l3 + 2], frame[l3 + 3]]) >> 20) & 0xff) as u8,
            header_len: 40,
            total_len: 40 + usize::from(be16(frame, l3 + 4)),
            source: address(&frame[l3 + 8..l3 + 24]),
            destination: address(&frame[l3 + 24..l3 + 40]),
            fragment: false,
            dont_fragment: false,
        }),
        _ => None,
    }
}
