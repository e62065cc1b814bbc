//! VRRP version 3 adverts (RFC 9568, which obsoletes RFC 5798): encoding and decoding, with
//! both IPv4 checksum forms. No sockets: the socket task hands in what it received and sends
//! what this module builds.
//!
//! The receive checks here are the packet's own (RFC 9568 §7.1 steps 1-4 and the type field);
//! whether the VRID, the address list and the sender are ours is the group's business.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use failover_common::csum;

/// IP protocol number of VRRP.
pub const PROTOCOL: u8 = 112;
/// The only version we speak.
pub const VERSION: u8 = 3;
/// The only message type VRRP defines.
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Adverts are sent, and must arrive, with TTL / hop limit 255 (RFC 9568 §5.1.1.3, §7.1).
pub const TTL: u8 = 255;
/// The IPv4 multicast group of VRRP (RFC 9568 §5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group of VRRP (RFC 9568 §5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// Version, type, VRID, priority, count, interval and checksum.
pub const HEADER_LEN: usize = 8;
/// The advert interval field is 12 bits of centiseconds.
pub const MAX_INTERVAL_CS: u16 = 0x0fff;

/// How IPv4 adverts are checksummed. IPv6 always includes its pseudo-header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumForm {
    /// The VRRP message plus the IPv4 pseudo-header, as keepalived (2.2.7, Debian's) and FRR
    /// send it: RFC 5798 §5.2.8 read literally.
    PseudoHeader,
    /// The VRRP message alone, as RFC 9568 §5.2.8 clarifies for IPv4 (Cisco, Juniper).
    Rfc9568,
}

/// One VRRPv3 advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub vrid: u8,
    /// 255: the address owner; 0: the master resigns.
    pub priority: u8,
    /// Maximum advert interval in centiseconds (12 bits).
    pub interval_cs: u16,
    /// The protected addresses, all of the packet's family.
    pub addresses: Vec<IpAddr>,
}

/// What arrived, as the socket layer saw it: the IP addresses, the TTL or hop limit, and the
/// VRRP message (the IP payload, with the IPv4 header already taken off by [`split_ipv4`]).
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub ttl: u8,
    pub message: &'a [u8],
}

/// Why a received packet was discarded. The names follow the VRRPv3-MIB (RFC 6527) statistics
/// where it has one; none of them changes any state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Discard {
    /// TTL / hop limit other than 255 (`vrrpv3StatisticsIpTtlErrors`).
    #[error("TTL or hop limit is not 255")]
    IpTtl,
    /// Version other than 3 (`vrrpv3RouterVersionErrors`).
    #[error("not VRRP version 3")]
    Version,
    /// Type other than advertisement (`vrrpv3StatisticsRcvdInvalidTypePackets`).
    #[error("not an advertisement")]
    InvalidType,
    /// Shorter or longer than 8 + count x address size, or an IPv4 header that does not add up
    /// (`vrrpv3StatisticsPacketLengthErrors`).
    #[error("length does not match the address count")]
    PacketLength,
    /// Checksum wrong under both forms (`vrrpv3RouterChecksumErrors`).
    #[error("bad checksum")]
    Checksum,
    /// Checksum right only under the IPv4 form this group does not use: the peer is configured
    /// for the other form (ours; no MIB counter).
    #[error("checksum valid only under the other IPv4 checksum form")]
    ChecksumFormMismatch,
    /// A VRID this interface has no group for (`vrrpv3RouterVrIdErrors`).
    #[error("VRID not configured here")]
    VrId,
    /// Address list differs from the group's (`vrrpv3StatisticsAddressListErrors`).
    #[error("address list differs from ours")]
    AddressList,
    /// A unicast advert from an address not in the group's peer list (ours).
    #[error("sender is not a configured unicast peer")]
    UnknownPeer,
    /// The source and destination families differ from the message's (ours).
    #[error("address family mismatch")]
    Family,
}

impl Discard {
    /// Every reason, in counter order.
    pub const ALL: [Discard; 10] = [
        Discard::IpTtl,
        Discard::Version,
        Discard::InvalidType,
        Discard::PacketLength,
        Discard::Checksum,
        Discard::ChecksumFormMismatch,
        Discard::VrId,
        Discard::AddressList,
        Discard::UnknownPeer,
        Discard::Family,
    ];

    /// The counter name (metrics label, `elections` view).
    pub fn name(self) -> &'static str {
        match self {
            Discard::IpTtl => "ip_ttl_errors",
            Discard::Version => "version_errors",
            Discard::InvalidType => "invalid_type",
            Discard::PacketLength => "packet_length_errors",
            Discard::Checksum => "checksum_errors",
            Discard::ChecksumFormMismatch => "checksum_form_mismatch",
            Discard::VrId => "vrid_errors",
            Discard::AddressList => "address_list_errors",
            Discard::UnknownPeer => "unknown_peer",
            Discard::Family => "family_errors",
        }
    }
}

impl Advert {
    /// The VRRP message for `source` -> `destination` (both of the addresses' family), with its
    /// checksum. `form` matters for IPv4 only.
    ///
    /// Panics if the addresses are of mixed families, there are more than 255 of them, or the
    /// interval does not fit 12 bits: the group validates all three from the configuration.
    pub fn encode(&self, source: IpAddr, destination: IpAddr, form: ChecksumForm) -> Vec<u8> {
        assert!(self.interval_cs <= MAX_INTERVAL_CS, "advert interval {} cs over 12 bits", self.interval_cs);
        let count = u8::try_from(self.addresses.len()).expect("at most 255 addresses");
        let mut message = Vec::with_capacity(HEADER_LEN + self.addresses.len() * 16);
        message.push((VERSION << 4) | TYPE_ADVERTISEMENT);
        message.push(self.vrid);
        message.push(self.priority);
        message.push(count);
        message.extend_from_slice(&self.interval_cs.to_be_bytes());
        message.extend_from_slice(&[0, 0]);
        for address in &self.addresses {
            assert_eq!(address.is_ipv4(), source.is_ipv4(), "address {address} of another family than {source}");
            match address {
                IpAddr::V4(a) => message.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => message.extend_from_slice(&a.octets()),
            }
        }
        let sum = checksum(&message, source, destination, form);
        message[6..8].copy_from_slice(&sum.to_ne_bytes());
        message
    }
}

/// Decodes and checks a received advert, in the order of RFC 9568 §7.1: TTL, version, type,
/// length, checksum (`form` for IPv4; an advert valid under the other form is
/// [`Discard::ChecksumFormMismatch`]).
pub fn decode(received: &Received<'_>, form: ChecksumForm) -> Result<Advert, Discard> {
    let message = received.message;
    let v4 = received.source.is_ipv4();
    if received.destination.is_ipv4() != v4 {
        return Err(Discard::Family);
    }
    if received.ttl != TTL {
        return Err(Discard::IpTtl);
    }
    let Some(&first) = message.first() else {
        return Err(Discard::PacketLength);
    };
    if first >> 4 != VERSION {
        return Err(Discard::Version);
    }
    if first & 0x0f != TYPE_ADVERTISEMENT {
        return Err(Discard::InvalidType);
    }
    if message.len() < HEADER_LEN {
        return Err(Discard::PacketLength);
    }
    let count = usize::from(message[3]);
    let size = if v4 { 4 } else { 16 };
    if message.len() != HEADER_LEN + count * size {
        return Err(Discard::PacketLength);
    }
    if checksum(message, received.source, received.destination, form) != 0 {
        let other = match form {
            ChecksumForm::PseudoHeader => ChecksumForm::Rfc9568,
            ChecksumForm::Rfc9568 => ChecksumForm::PseudoHeader,
        };
        if v4 && checksum(message, received.source, received.destination, other) == 0 {
            return Err(Discard::ChecksumFormMismatch);
        }
        return Err(Discard::Checksum);
    }
    let addresses = message[HEADER_LEN..]
        .chunks_exact(size)
        .map(|bytes| match bytes.len() {
            4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
            _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))),
        })
        .collect();
    Ok(Advert {
        vrid: message[1],
        priority: message[2],
        interval_cs: u16::from_be_bytes([message[4], message[5]]) & MAX_INTERVAL_CS,
        addresses,
    })
}

/// The checksum over `message` (with its checksum field as it is): 0 when it verifies, the
/// field value to store when that field is zero.
fn checksum(message: &[u8], source: IpAddr, destination: IpAddr, form: ChecksumForm) -> u16 {
    let mut sum = csum::sum_bytes(message);
    let length = message.len() as u32;
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) if form == ChecksumForm::PseudoHeader => {
            // RFC 768-style pseudo-header: source, destination, zero, protocol, length.
            sum += csum::sum_bytes(&s.octets()) + csum::sum_bytes(&d.octets());
            sum += csum::sum_bytes(&[0, PROTOCOL]) + csum::sum_bytes(&(length as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // RFC 8200 §8.1: source, destination, upper-layer length (32 bits), next header.
            sum += csum::sum_bytes(&s.octets()) + csum::sum_bytes(&d.octets());
            sum += csum::sum_bytes(&length.to_be_bytes()) + csum::sum_bytes(&[0, 0, 0, PROTOCOL]);
        }
        _ => {}
    }
    csum::finish(sum)
}

/// What an IPv4 header says about a received VRRP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub ttl: u8,
}

/// Splits a packet read from an IPv4 raw socket (which delivers the IP header) into its header
/// facts and the VRRP message. The header length comes from IHL (options are allowed); the
/// message ends where the header's total length says (trailing bytes are ignored).
pub fn split_ipv4(packet: &[u8]) -> Result<(Ipv4Header, &[u8]), Discard> {
    let Some(&version_ihl) = packet.first() else {
        return Err(Discard::PacketLength);
    };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 || packet.len() < header_len {
        return Err(Discard::PacketLength);
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < header_len || total > packet.len() || packet[9] != PROTOCOL {
        return Err(Discard::PacketLength);
    }
    let header = Ipv4Header {
        ttl: packet[8],
        source: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        destination: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
    };
    Ok((header, &packet[header_len..total]))
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
