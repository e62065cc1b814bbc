//! Elections between load-balancer nodes: VRRP version 3 (RFC 9568), interoperable with
//! keepalived. `codec` encodes and decodes adverts and `fsm` is the pure state machine of one
//! group (neither touches a socket or a clock); the socket task and the groups build on them.

pub mod announce;
pub mod codec;
pub mod fsm;
pub mod group;
pub mod runtime;
pub mod socket;
