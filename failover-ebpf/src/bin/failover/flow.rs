//! The flow a packet is forwarded as: below every other module of the program, so the maps,
//! the VIP lookups and the ICMP and service paths can all name it without importing each other.

use failover_common::maps::{FlowKey, VipMeta};
use failover_ebpf::parse::{L3, L4};

/// The flow to forward: a service packet's own, or the one an ICMP error is about (filled in
/// by `icmp::handle` for `needs_routing`). Lives in the per-CPU `SCRATCH` entry.
#[derive(Clone, Copy)]
pub struct Routed {
    /// The VIP, from `VIP_INDEX` (by the flow entry's vip id or the service's slot) or `VIPS`.
    pub meta: VipMeta,
    pub key: FlowKey,
    /// `hash::flow_key_hash(key)`: the flow's bucket and, unless the VIP hashes the source
    /// alone, its table slot.
    pub hash: u32,
    /// The flow's way in its bucket; `FLOW_WAYS`: not tracked.
    pub way: u32,
}

/// The flow-table key of a service packet, in the client-to-VIP direction.
#[inline(always)]
pub fn flow_key(l3: &L3, l4: &L4) -> FlowKey {
    FlowKey {
        source: l3.source,
        destination: l3.destination,
        source_port: l4.source_port,
        destination_port: l4.destination_port,
        protocol: l3.protocol,
        family: l3.family,
        _padding: [0; 2],
    }
}
