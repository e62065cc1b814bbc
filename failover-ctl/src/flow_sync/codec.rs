//! The flow-sync datagram: which backend a node sends some of its tracked flows to. No sockets:
//! the socket task hands in what it received and sends what this module builds.
//!
//! Version 1, big-endian, one UDP datagram of at most [`MAX_DATAGRAM`] bytes:
//!
//! ```text
//! header  magic "FOFS" (4) | version 1 (1) | kind 1 = flows (1) | record count (2)
//!         | sequence (4) | total (4)
//! record  family 4|6 (1) | protocol 6|17 (1) | backend family 4|6 (1) | 0 (1)
//!         client port (2) | VIP port (2) | client address (16) | VIP address (16)
//!         | backend address (16)
//! ```
//!
//! A sender sends its whole set every tick, under one sequence number, split over as many
//! datagrams as it takes; `total` is the set's size, so a receiver knows when it has all of it
//! (and may then drop what it kept from the sender's earlier sets), and an empty set is one
//! datagram with no record.
//!
//! The client and the VIP share the record's family; the backend's may differ (6in4 and 4in6
//! tunnels). An IPv4 address takes the first 4 bytes of its 16; the rest must be zero. A datagram with
//! any record that does not decode is discarded whole, with the reason counted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use failover_common::maps::{PROTOCOL_TCP, PROTOCOL_UDP};

pub const MAGIC: [u8; 4] = *b"FOFS";
pub const VERSION: u8 = 1;
pub const KIND_FLOWS: u8 = 1;
pub const HEADER_LEN: usize = 16;
pub const RECORD_LEN: usize = 56;
/// Under every path MTU a segment of load balancers has (1500 less IPv6 and UDP headers).
pub const MAX_DATAGRAM: usize = 1400;
/// Records in a full datagram.
pub const RECORDS_PER_DATAGRAM: usize = (MAX_DATAGRAM - HEADER_LEN) / RECORD_LEN;
/// The largest set a sender sends, and a receiver takes, in one tick.
pub const MAX_SET: usize = 65_536;

/// One received datagram: part `flows` of the sender's set `sequence` of `total` flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub sequence: u32,
    pub total: u32,
    pub flows: Vec<SyncedFlow>,
}

/// One tracked flow and its backend, by addresses (backend ids are each node's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncedFlow {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    /// `PROTOCOL_TCP` or `PROTOCOL_UDP`. [`encode`] takes the client's family from `vip`.
    pub protocol: u8,
    pub backend: IpAddr,
}

/// Why a received datagram was discarded; none changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Discard {
    #[error("shorter than the header")]
    Short,
    #[error("not a flow-sync datagram (magic)")]
    Magic,
    #[error("unknown version")]
    Version,
    #[error("unknown kind")]
    Kind,
    #[error("length does not match the record count")]
    Length,
    #[error("the set's total is smaller than the records or larger than the limit")]
    Total,
    #[error("a record's address family is not 4 or 6, or its address does not fit it")]
    Family,
    #[error("a record's protocol is not TCP or UDP")]
    Protocol,
    #[error("a record's reserved byte is not zero")]
    Reserved,
}

impl Discard {
    /// The name in the status and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Discard::Short => "short",
            Discard::Magic => "magic",
            Discard::Version => "version",
            Discard::Kind => "kind",
            Discard::Length => "length",
            Discard::Total => "total",
            Discard::Family => "family",
            Discard::Protocol => "protocol",
            Discard::Reserved => "reserved",
        }
    }
}

/// The datagrams that carry set `sequence`, `flows` (at most [`MAX_SET`]: the rest is left
/// out), [`RECORDS_PER_DATAGRAM`] records each; one datagram with none for an empty set.
pub fn encode(sequence: u32, flows: &[SyncedFlow]) -> Vec<Vec<u8>> {
    let flows = &flows[..flows.len().min(MAX_SET)];
    let total = flows.len() as u32;
    let chunks: Vec<&[SyncedFlow]> = if flows.is_empty() { vec![&[]] } else { flows.chunks(RECORDS_PER_DATAGRAM).collect() };
    chunks
        .into_iter()
        .map(|chunk| {
            let mut datagram = Vec::with_capacity(HEADER_LEN + chunk.len() * RECORD_LEN);
            datagram.extend_from_slice(&MAGIC);
            datagram.push(VERSION);
            datagram.push(KIND_FLOWS);
            datagram.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            datagram.extend_from_slice(&sequence.to_be_bytes());
            datagram.extend_from_slice(&total.to_be_bytes());
            for flow in chunk {
                datagram.push(family(flow.vip.ip()));
                datagram.push(flow.protocol);
                datagram.push(family(flow.backend));
                datagram.push(0);
                datagram.extend_from_slice(&flow.client.port().to_be_bytes());
                datagram.extend_from_slice(&flow.vip.port().to_be_bytes());
                for address in [flow.client.ip(), flow.vip.ip(), flow.backend] {
                    datagram.extend_from_slice(&octets(address));
                }
            }
            datagram
        })
        .collect()
}

/// One datagram's part of its set, or why it is discarded.
pub fn decode(datagram: &[u8]) -> Result<Datagram, Discard> {
    let header = datagram.get(..HEADER_LEN).ok_or(Discard::Short)?;
    if header[..4] != MAGIC {
        return Err(Discard::Magic);
    }
    if header[4] != VERSION {
        return Err(Discard::Version);
    }
    if header[5] != KIND_FLOWS {
        return Err(Discard::Kind);
    }
    let count = usize::from(u16::from_be_bytes([header[6], header[7]]));
    if datagram.len() != HEADER_LEN + count * RECORD_LEN {
        return Err(Discard::Length);
    }
    let sequence = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    let total = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    if (total as usize) < count || total as usize > MAX_SET {
        return Err(Discard::Total);
    }
    let flows = datagram[HEADER_LEN..].chunks_exact(RECORD_LEN).map(record).collect::<Result<_, _>>()?;
    Ok(Datagram { sequence, total, flows })
}

fn record(bytes: &[u8]) -> Result<SyncedFlow, Discard> {
    let protocol = bytes[1];
    if protocol != PROTOCOL_TCP && protocol != PROTOCOL_UDP {
        return Err(Discard::Protocol);
    }
    if bytes[3] != 0 {
        return Err(Discard::Reserved);
    }
    let client_port = u16::from_be_bytes([bytes[4], bytes[5]]);
    let vip_port = u16::from_be_bytes([bytes[6], bytes[7]]);
    let client = address(bytes[0], &bytes[8..24])?;
    let vip = address(bytes[0], &bytes[24..40])?;
    let backend = address(bytes[2], &bytes[40..56])?;
    Ok(SyncedFlow { client: SocketAddr::new(client, client_port), vip: SocketAddr::new(vip, vip_port), protocol, backend })
}

fn family(address: IpAddr) -> u8 {
    if address.is_ipv4() {
        4
    } else {
        6
    }
}

fn octets(address: IpAddr) -> [u8; 16] {
    let mut bytes = [0; 16];
    match address {
        IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => bytes = v6.octets(),
    }
    bytes
}

fn address(family: u8, bytes: &[u8]) -> Result<IpAddr, Discard> {
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| Discard::Length)?;
    match family {
        4 if bytes[4..].iter().all(|byte| *byte == 0) => Ok(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
        _ => Err(Discard::Family),
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
