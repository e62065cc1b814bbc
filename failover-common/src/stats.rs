//! Indexes of the per-reason counters (`REASON_STATS`, `DECAP_STATS`).
//!
//! Every verdict the data plane returns carries one of these; the entry point counts it. The
//! inspection CLI prints them by name, so a new reason is added here and in `REASON_NAMES`.

/// Not IPv4/IPv6, or a header too short to tell the destination: the kernel decides.
pub const PASS_UNPARSED: u32 = 0;
/// Destination is not a VIP (the cheap path).
pub const PASS_NOT_VIP: u32 = 1;
/// IPv6 with extension headers (incl. fragments): handed to the kernel.
pub const PASS_IPV6_EXTENSION: u32 = 2;
/// A VIP this node does not own (standby).
pub const PASS_NOT_OWNED: u32 = 3;
/// No live backend and the VIP's policy is to pass.
pub const PASS_ALL_DOWN: u32 = 4;
/// ICMP to a VIP address that is neither echo request nor a routed error.
pub const PASS_ICMP_OTHER: u32 = 5;
/// Encapsulated to a backend.
pub const TX_FORWARD: u32 = 6;
/// ICMP echo request answered.
pub const TX_ECHO_REPLY: u32 = 7;
/// ICMP fragmentation-needed / packet-too-big sent back to the client.
pub const TX_TOO_BIG: u32 = 8;
/// An ICMP error about a VIP flow, forwarded to that flow's backend.
pub const TX_ICMP_ERROR_FORWARD: u32 = 9;
/// VIP traffic whose headers are truncated or inconsistent.
pub const DROP_MALFORMED: u32 = 10;
/// IPv4 fragment addressed to a VIP.
pub const DROP_FRAGMENT: u32 = 11;
/// No live backend and the VIP's policy is to drop.
pub const DROP_ALL_DOWN: u32 = 12;
/// Too big once encapsulated, and IPv4 DF not set: cannot fragment in XDP.
pub const DROP_TOO_BIG_NO_DF: u32 = 13;
/// A packet-room helper (`bpf_xdp_adjust_head`/`_tail`) failed.
pub const DROP_NO_ROOM: u32 = 14;
/// No configuration published yet, or a table/backend entry missing (a writer bug).
pub const DROP_NOT_CONFIGURED: u32 = 15;
/// ICMP error about a VIP flow whose inner header is unusable.
pub const DROP_ICMP_ERROR_UNROUTABLE: u32 = 16;
/// Event counter (not a verdict): a new flow was forwarded but not tracked (insert limiter).
pub const EVENT_FLOW_NOT_TRACKED: u32 = 17;
/// Event counter: a tracked flow pointed at a down or stale backend and was re-chosen.
pub const EVENT_FLOW_RESELECTED: u32 = 18;
/// Event counter: a UDP flow entry expired and was re-chosen.
pub const EVENT_FLOW_EXPIRED: u32 = 19;
/// Decap program: tunnel header stripped.
pub const DECAP_STRIPPED: u32 = 20;
/// Decap program: a tunnel packet whose inner destination is not a configured VIP.
pub const DECAP_NOT_VIP: u32 = 21;
/// Decap program: truncated tunnel packet.
pub const DECAP_MALFORMED: u32 = 22;
/// Number of reason counters.
pub const REASON_COUNT: u32 = 23;

/// Names of the counters, indexed by reason.
pub const REASON_NAMES: [&str; REASON_COUNT as usize] = [
    "pass_unparsed",
    "pass_not_vip",
    "pass_ipv6_extension",
    "pass_not_owned",
    "pass_all_down",
    "pass_icmp_other",
    "tx_forward",
    "tx_echo_reply",
    "tx_too_big",
    "tx_icmp_error_forward",
    "drop_malformed",
    "drop_fragment",
    "drop_all_down",
    "drop_too_big_no_df",
    "drop_no_room",
    "drop_not_configured",
    "drop_icmp_error_unroutable",
    "event_flow_not_tracked",
    "event_flow_reselected",
    "event_flow_expired",
    "decap_stripped",
    "decap_not_vip",
    "decap_malformed",
];
