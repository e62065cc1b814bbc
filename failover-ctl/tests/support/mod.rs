//! The lab the daemon tests run in: client, router, load-balancer and backend namespaces joined
//! by veth pairs, backend HTTP servers that can be killed and restarted, an HTTP client that
//! learns which backend answered, and a guard around the `failover-ctl run` process that stops
//! it, tears its pins down and deletes the namespaces, also when a test panics.
//!
//! Addresses only have to be unique inside one lab: every lab has its own namespaces.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support module"
)]

mod daemon;
mod http;
mod lab;
mod topology;

// Re-exported whole so that a test reads `use support::*`; a binary that needs no lab or no
// HTTP would otherwise be warned about the unused re-export.
#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the support module"
)]
pub use {daemon::*, http::*, lab::*, topology::*};
