//! The packet monitor's filter and records (`failover-ctl monitor`): what the CLI writes into
//! `MONITOR_FILTER` and what the program writes into the `MONITOR_RECORDS` ring buffer.
//!
//! # Who writes the filter
//! Unlike every other controller-side map, `MONITOR_FILTER` is written by the `monitor` CLI, not
//! by the daemon: it is a debugging switch that changes no forwarding decision. The program also
//! writes it, once: a filter whose `expires_ns` has passed (its monitor was killed without
//! clearing it) is switched off by the first packet that sees it, so a stale filter costs the
//! gate's one array load and branch again from then on.
//!
//! # Write order
//! An array value is copied without a lock, so a packet on another CPU can see a half-written
//! entry. The monitor therefore writes the match fields with `enabled == 0` first and then the
//! same fields with `enabled == MONITOR_ENABLED`; renewals change only `expires_ns` (either value
//! is in the future), and the last write clears `enabled`.
//!
//! Addresses and ports are in network order as in `maps` (addresses as `[u32; 4]` words holding
//! the address bytes).

/// `MonitorFilter::enabled` when a monitor is attached.
pub const MONITOR_ENABLED: u32 = 1;

/// `MonitorFilter::matches`: the destination must be the VIP (`vip_*` fields).
pub const MATCH_VIP: u32 = 1 << 0;
/// `MonitorFilter::matches`: the source must lie in `client_address` / `client_mask`.
pub const MATCH_CLIENT: u32 = 1 << 1;
/// `MonitorFilter::matches`: the chosen backend must be `backend_address`.
pub const MATCH_BACKEND: u32 = 1 << 2;
/// Every `MATCH_*` bit.
pub const MATCH_ALL: u32 = MATCH_VIP | MATCH_CLIENT | MATCH_BACKEND;

/// Value of `MONITOR_FILTER` (one entry). With `matches == 0` every packet is reported.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MonitorFilter {
    /// `MONITOR_ENABLED`, or 0: the program reads only this field while it is 0.
    pub enabled: u32,
    /// `MATCH_*` bits: the conditions a packet must meet, all of them.
    pub matches: u32,
    /// `CLOCK_MONOTONIC_COARSE` (the program's `bpf_ktime_get_coarse_ns`) after which the filter
    /// is stale; the monitor renews it while it runs.
    pub expires_ns: u64,
    /// VIP address (`MATCH_VIP`).
    pub vip_address: [u32; 4],
    /// Client prefix (`MATCH_CLIENT`), host bits already cleared.
    pub client_address: [u32; 4],
    /// Client prefix mask, network order.
    pub client_mask: [u32; 4],
    /// Backend address (`MATCH_BACKEND`): the tunnel destination of the chosen backend.
    pub backend_address: [u32; 4],
    /// VIP port, network order; 0 = every port.
    pub vip_port: u16,
    /// VIP protocol; 0 = every protocol.
    pub vip_protocol: u8,
    pub vip_family: u8,
    pub client_family: u8,
    pub backend_family: u8,
    pub _padding: [u8; 2],
    /// The process that wrote the filter: a second monitor refuses to take over a live one.
    pub owner_pid: u32,
    pub _padding2: u32,
}
const _: () = assert!(core::mem::size_of::<MonitorFilter>() == 96);

/// `MonitorRecord::flow`: no backend was chosen (the packet was passed, dropped or answered
/// before the choice).
pub const FLOW_NONE: u8 = 0;
/// The flow table named the backend.
pub const FLOW_TRACKED: u8 = 1;
/// The Maglev table chose the backend and the flow was recorded.
pub const FLOW_NEW: u8 = 2;
/// The Maglev table chose the backend and the flow was not recorded: the insert limiter
/// refused, the VIP does not track flows, or the packet is an ICMP error (never recorded).
pub const FLOW_UNTRACKED: u8 = 3;
/// Names of the `FLOW_*` values, indexed by value.
pub const FLOW_NAMES: [&str; 4] = ["none", "tracked", "new", "untracked"];

/// `MonitorRecord::vip_id` / `backend_id` when there is none.
pub const MONITOR_NONE: u32 = u32::MAX;

/// One record of `MONITOR_RECORDS`: one packet's decision.
///
/// The flow is the packet's own, except for an ICMP error routed to a backend (reason
/// `tx_icmp_error_forward`, or a drop on that path): then it is the flow the error is about,
/// client to VIP, as the flow table holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MonitorRecord {
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub time_ns: u64,
    pub source: [u32; 4],
    pub destination: [u32; 4],
    /// The chosen backend's tunnel address (zero without one).
    pub backend_address: [u32; 4],
    /// Network order; 0 for ICMP and for what has no ports.
    pub source_port: u16,
    pub destination_port: u16,
    pub protocol: u8,
    /// `FAMILY_IPV4`, `FAMILY_IPV6`, or 0 for a frame that is not IP (`pass_unparsed`).
    pub family: u8,
    /// The XDP action (`XDP_PASS`, `XDP_DROP`, `XDP_TX`).
    pub action: u8,
    /// The `failover_common::stats` reason it was counted under.
    pub reason: u8,
    /// `FLOW_*`.
    pub flow: u8,
    pub backend_family: u8,
    pub _padding: [u8; 2],
    /// The VIP whose service handled the packet, or `MONITOR_NONE`.
    pub vip_id: u32,
    /// The chosen backend's id, or `MONITOR_NONE`.
    pub backend_id: u32,
    /// Frame length as received.
    pub frame_len: u32,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// CPU that handled it.
    pub cpu: u32,
}
const _: () = assert!(core::mem::size_of::<MonitorRecord>() == 88);

/// Bytes of the `MONITOR_RECORDS` ring buffer (a power of two, a multiple of the page size):
/// about 2 900 records of 88 bytes plus the kernel's 8-byte header each.
pub const MONITOR_RING_BYTES: u32 = 256 * 1024;

/// Whether `address` lies in the prefix `network` / `mask` (all network-order words).
#[inline(always)]
pub fn in_prefix(address: &[u32; 4], network: &[u32; 4], mask: &[u32; 4]) -> bool {
    (address[0] & mask[0]) == network[0]
        && (address[1] & mask[1]) == network[1]
        && (address[2] & mask[2]) == network[2]
        && (address[3] & mask[3]) == network[3]
}

/// The network-order mask words of a prefix of `length` bits (clamped to 128).
pub fn prefix_mask(length: u8) -> [u32; 4] {
    let mut mask = [0u32; 4];
    let mut left = length.min(128) as u32;
    for word in &mut mask {
        let bits = left.min(32);
        let host_order = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
        *word = host_order.to_be();
        left -= bits;
    }
    mask
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), Copy, explicit padding fields, sizes asserted above.
    unsafe impl aya::Pod for MonitorFilter {}
    unsafe impl aya::Pod for MonitorRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_the_prefix_bits_in_network_order() {
        assert_eq!(prefix_mask(0), [0; 4]);
        assert_eq!(prefix_mask(24)[0].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(prefix_mask(32), [u32::MAX, 0, 0, 0]);
        let mask = prefix_mask(68);
        assert_eq!(mask[..2], [u32::MAX, u32::MAX]);
        assert_eq!(mask[2].to_ne_bytes(), [0xf0, 0, 0, 0]);
        assert_eq!(prefix_mask(200), [u32::MAX; 4]);
    }

    #[test]
    fn prefix_membership() {
        let network = [u32::from_ne_bytes([198, 51, 100, 0]), 0, 0, 0];
        let mask = prefix_mask(24);
        assert!(in_prefix(&[u32::from_ne_bytes([198, 51, 100, 7]), 0, 0, 0], &network, &mask));
        assert!(!in_prefix(&[u32::from_ne_bytes([198, 51, 101, 7]), 0, 0, 0], &network, &mask));
    }
}
