//! The properties the fuzzer checks on every output, and a broken one with its details.

use std::fmt;

/// The properties the fuzzer checks on every output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// Never XDP_ABORTED (or any action the program does not use).
    NeverAborted,
    /// XDP_PASS hands the frame on byte for byte.
    PassUnchanged,
    /// A frame that is not IPv4/IPv6, or too short to name its destination, is passed.
    UnparsedPasses,
    /// A destination that is not a VIP address (colliding ones included) is passed.
    NotVipPasses,
    /// Traffic of a VIP (or service) this node does not own is passed.
    NotOwnedPasses,
    /// XDP_DROP only where the README's table says so.
    DropOnlyWhenDue,
    /// XDP_PASS of VIP traffic only where the README's table says so.
    PassOnlyWhenDue,
    /// XDP_TX only for a forward, an echo reply or a too-big reply.
    TransmitOnlyWhenDue,
    /// A forward goes to a backend of the VIP that owns the packet (for an ICMP error: of the
    /// VIP the error is addressed to).
    RightVip,
    /// The backend is up (draining only for a flow tracked to it before; a backup only while no
    /// primary is up).
    BackendAllowed,
    /// A flow keeps its backend for the whole run.
    FlowKeepsBackend,
    /// A source-affinity VIP sends every flow of a client to one backend.
    SourceAffinity,
    /// The encapsulation is valid: L2, outer header, inner packet byte for byte.
    Encapsulation,
    /// An echo reply is the request turned around, checksums as valid as the request's.
    EchoReply,
    /// A too-big reply is exact, and only packets too big for the tunnel get one.
    TooBig,
    /// The kernel runs every frame the fuzzer makes (a failure is a harness bug).
    KernelAccepts,
    /// The reason counters add up to the frames run, action by action.
    CountersAddUp,
}

impl Invariant {
    pub fn describe(self) -> &'static str {
        match self {
            Self::NeverAborted => "never XDP_ABORTED or an unknown action",
            Self::PassUnchanged => "XDP_PASS leaves the frame byte-identical",
            Self::UnparsedPasses => "frames that are not IP or too short to name a destination are passed",
            Self::NotVipPasses => "a destination that is not a VIP address (colliding ones included) is passed",
            Self::NotOwnedPasses => "traffic of a VIP this node does not own is passed",
            Self::DropOnlyWhenDue => "XDP_DROP only for VIP traffic the README says to drop",
            Self::PassOnlyWhenDue => "VIP traffic is passed only where the README says so",
            Self::TransmitOnlyWhenDue => "XDP_TX only as a forward, an echo reply or a too-big reply",
            Self::RightVip => "forwarded to a backend of the VIP the packet (or ICMP error) is addressed to",
            Self::BackendAllowed => "the backend is up (draining: tracked flows only; backup: no primary up)",
            Self::FlowKeepsBackend => "a flow keeps its backend during the run",
            Self::SourceAffinity => "a source-hash VIP sends a client to one backend",
            Self::Encapsulation => "the encapsulation is valid",
            Self::EchoReply => "an echo reply is the request turned around",
            Self::TooBig => "too-big replies are exact and only for packets too big for the tunnel",
            Self::KernelAccepts => "BPF_PROG_TEST_RUN accepts every generated frame",
            Self::CountersAddUp => "the reason counters add up to the frames run",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self)
    }
}

/// A broken invariant and what exactly was wrong.
#[derive(Debug)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

pub fn violation(invariant: Invariant, detail: impl Into<String>) -> Violation {
    Violation { invariant, detail: detail.into() }
}
