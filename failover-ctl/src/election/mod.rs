//! Elections between load-balancer nodes: VRRP version 3 (RFC 9568), interoperable with
//! keepalived. `codec` encodes and decodes adverts (no sockets); the state machine, the socket
//! task and the groups build on it.

pub mod codec;
