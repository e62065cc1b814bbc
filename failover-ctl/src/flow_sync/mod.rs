//! Flow sync: a group's master sends its peers the tracked flows of the group's VIPs that the
//! table would place on another backend (placed while a backend was out, or on a drained
//! one), so the node that takes over keeps them where they are. Every node builds the same
//! table, so a flow the table places needs no sync: only these exceptions do.
//!
//! Three parts, as for the elections: the datagram ([`codec`]), the state owner's side
//! (`daemon/controller/flow_sync.rs`: which flows, and placing what arrives) and a thin socket
//! task ([`task`]) that sends what the state owner hands it, forwards what arrives and ticks.

pub mod codec;
pub mod task;

use std::net::SocketAddr;

pub use codec::{Datagram, Discard, SyncedFlow};

/// What the socket task tells the state owner.
#[derive(Debug)]
pub enum Input {
    /// Time to send: every `interval`.
    Tick,
    /// A datagram from a configured peer: its part of the peer's set, or why it was discarded.
    Received { from: SocketAddr, datagram: Result<Datagram, Discard> },
    /// A datagram from an address that is not a configured peer (discarded unread).
    Stranger { from: SocketAddr },
}
