//! The lab the daemon tests run in: client, router, load-balancer and backend namespaces joined
//! by veth pairs, backend HTTP servers that can be killed and restarted, an HTTP client that
//! learns which backend answered, and a guard around the `failover-ctl run` process that stops
//! it, tears its pins down and deletes the namespaces, also when a test panics. The election
//! tests add a segment lab (two nodes, router, observer), keepalived, the wire's record and
//! counted traffic (election, keepalived, wire, traffic, scenario), the scale-out lab of
//! BIRD routers announcing VIPs over BGP (bgp) with real traffic through them (scale_out), and a
//! PostgreSQL primary and standby with a client for the role-probe test (postgres).
//!
//! Addresses only have to be unique inside one lab: every lab has its own namespaces.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support module"
)]

mod bgp;
mod daemon;
mod election;
mod http;
mod keepalived;
mod lab;
mod postgres;
mod scale_out;
mod scenario;
mod topology;
mod traffic;
mod wire;

// Re-exported whole so that a test reads `use support::*`; a binary that needs no lab or no
// HTTP would otherwise be warned about the unused re-export.
#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the support module"
)]
pub use {
    bgp::*, daemon::*, election::*, http::*, keepalived::*, lab::*, postgres::*, scale_out::*, scenario::*, topology::*,
    traffic::*, wire::*,
};
