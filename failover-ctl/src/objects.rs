//! The eBPF objects built by `build.rs` from failover-ebpf, embedded 8-byte aligned so aya can parse them in place.

/// The load balancer's XDP program (failover-ebpf binary `failover`).
pub static FAILOVER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/failover"));

/// The decapsulating XDP program for backends (failover-ebpf binary `failover-decap`).
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/failover-decap"));
