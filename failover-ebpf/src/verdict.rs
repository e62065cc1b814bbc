//! The verdict every data-plane function returns; only entry points turn it into an action.

use aya_ebpf::bindings::xdp_action;

// Continuation codes share the action field; XDP actions are 0..=4.
const NEEDS_TOO_BIG: u32 = 0xfe;
const NEEDS_ROUTING: u32 = 0xfd;
/// The decision itself: action and reason.
const DECISION: u64 = 0xffff_ffff;
/// Detail: the backend id (24 bits, `MAX_BACKENDS` is 16384).
const BACKEND_SHIFT: u32 = 32;
const BACKEND_MASK: u64 = 0xff_ffff;
/// Detail: a `failover_common::monitor::FLOW_*` value (4 bits).
const FLOW_SHIFT: u32 = 56;
const FLOW_MASK: u64 = 0xf;
/// Detail: the per-CPU scratch entry holds this packet's flow (VIP and 5-tuple).
const ROUTED: u64 = 1 << 63;

/// What to do with a packet (pass, drop, transmit) and the `failover_common::stats` reason to
/// count it under; for the packet monitor also the backend chosen and how the flow table was
/// used, and whether the per-CPU scratch entry holds the packet's flow.
///
/// A `u64` (low half: action in bits 16..32, reason in bits 0..16; high half: the monitor's
/// detail) rather than an enum with data: it must come back from BPF-to-BPF calls in a
/// register, and the verifier refuses the stack slot an aggregate return would use. The detail
/// rides along in the register for free; nothing on the packet path reads it.
#[must_use]
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Verdict(u64);

impl Verdict {
    /// Hand the packet to the kernel (`XDP_PASS`).
    #[inline(always)]
    pub const fn pass(reason: u32) -> Self {
        Self(((xdp_action::XDP_PASS << 16) | reason) as u64)
    }

    /// Drop it (`XDP_DROP`).
    #[inline(always)]
    pub const fn drop(reason: u32) -> Self {
        Self(((xdp_action::XDP_DROP << 16) | reason) as u64)
    }

    /// Send it back out of the interface it came in on (`XDP_TX`).
    #[inline(always)]
    pub const fn transmit(reason: u32) -> Self {
        Self(((xdp_action::XDP_TX << 16) | reason) as u64)
    }

    /// Internal continuation, resolved by the orchestrating function and never returned by an
    /// entry point: answer with ICMP too-big advertising `mtu`.
    #[inline(always)]
    pub const fn needs_too_big(mtu: u32) -> Self {
        Self(((NEEDS_TOO_BIG << 16) | (mtu & 0xffff)) as u64)
    }

    /// Internal continuation: an ICMP error whose flow was written to the caller's out-parameter
    /// must be forwarded like a packet of that flow.
    #[inline(always)]
    pub const fn needs_routing() -> Self {
        Self((NEEDS_ROUTING << 16) as u64)
    }

    /// The MTU to advertise, if this is a `needs_too_big` continuation.
    #[inline(always)]
    pub const fn too_big_mtu(self) -> Option<u32> {
        if self.action() == NEEDS_TOO_BIG { Some(self.reason()) } else { None }
    }

    #[inline(always)]
    pub const fn is_needs_routing(self) -> bool {
        self.action() == NEEDS_ROUTING
    }

    #[inline(always)]
    pub const fn reason(self) -> u32 {
        (self.0 & 0xffff) as u32
    }

    #[inline(always)]
    pub const fn action(self) -> u32 {
        ((self.0 >> 16) & 0xffff) as u32
    }

    #[inline(always)]
    pub const fn is_transmit(self) -> bool {
        self.action() == xdp_action::XDP_TX
    }

    /// The same decision, noting that `backend_id` was chosen and how the flow table was used
    /// (`failover_common::monitor::FLOW_*`).
    #[inline(always)]
    pub const fn with_backend(self, backend_id: u32, flow: u8) -> Self {
        Self(
            (self.0 & !((BACKEND_MASK << BACKEND_SHIFT) | (FLOW_MASK << FLOW_SHIFT)))
                | ((backend_id as u64 & BACKEND_MASK) << BACKEND_SHIFT)
                | ((flow as u64 & FLOW_MASK) << FLOW_SHIFT),
        )
    }

    /// `decision` (action and reason) with this verdict's detail: for a verdict that replaces
    /// a continuation.
    #[inline(always)]
    pub const fn with_detail_of(decision: Self, detail: Self) -> Self {
        Self((decision.0 & DECISION) | (detail.0 & !DECISION))
    }

    /// The same verdict, noting that the per-CPU scratch entry holds the packet's flow.
    #[inline(always)]
    pub const fn routed(self) -> Self {
        Self(self.0 | ROUTED)
    }

    #[inline(always)]
    pub const fn is_routed(self) -> bool {
        self.0 & ROUTED != 0
    }

    /// The backend id noted by `with_backend` (meaningful when `flow()` is not `FLOW_NONE`).
    #[inline(always)]
    pub const fn backend_id(self) -> u32 {
        ((self.0 >> BACKEND_SHIFT) & BACKEND_MASK) as u32
    }

    /// The `FLOW_*` value noted by `with_backend`; `FLOW_NONE` (0) when there was no choice.
    #[inline(always)]
    pub const fn flow(self) -> u8 {
        ((self.0 >> FLOW_SHIFT) & FLOW_MASK) as u8
    }
}
