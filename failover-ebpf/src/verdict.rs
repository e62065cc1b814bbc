//! The verdict every data-plane function returns; only entry points turn it into an action.

use aya_ebpf::bindings::xdp_action;

/// What to do with a packet (pass, drop, transmit) and the `failover_common::stats` reason to
/// count it under.
///
/// A `u32` (action in the high half, reason in the low half) rather than an enum with data:
/// it must come back from BPF-to-BPF calls in a register, and the verifier refuses the stack
/// slot an aggregate return would use.
// Continuation codes share the action field; XDP actions are 0..=4.
const NEEDS_TOO_BIG: u32 = 0xfe;
const NEEDS_ROUTING: u32 = 0xfd;

#[must_use]
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Verdict(u32);

impl Verdict {
    /// Hand the packet to the kernel (`XDP_PASS`).
    #[inline(always)]
    pub const fn pass(reason: u32) -> Self {
        Self(xdp_action::XDP_PASS << 16 | reason)
    }

    /// Drop it (`XDP_DROP`).
    #[inline(always)]
    pub const fn drop(reason: u32) -> Self {
        Self(xdp_action::XDP_DROP << 16 | reason)
    }

    /// Send it back out of the interface it came in on (`XDP_TX`).
    #[inline(always)]
    pub const fn transmit(reason: u32) -> Self {
        Self(xdp_action::XDP_TX << 16 | reason)
    }

    /// Internal continuation, resolved by the orchestrating function and never returned by an
    /// entry point: answer with ICMP too-big advertising `mtu`.
    #[inline(always)]
    pub const fn needs_too_big(mtu: u32) -> Self {
        Self(NEEDS_TOO_BIG << 16 | (mtu & 0xffff))
    }

    /// Internal continuation: an ICMP error whose flow was written to the caller's out-parameter
    /// must be forwarded like a packet of that flow.
    #[inline(always)]
    pub const fn needs_routing() -> Self {
        Self(NEEDS_ROUTING << 16)
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
        self.0 & 0xffff
    }

    #[inline(always)]
    pub const fn action(self) -> u32 {
        self.0 >> 16
    }

    #[inline(always)]
    pub const fn is_transmit(self) -> bool {
        self.action() == xdp_action::XDP_TX
    }
}
