//! Every map of the decap program, as BTF map definitions (typed keys and values for bpftool,
//! like the load balancer's).

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuArray},
    macros::btf_map,
};
use failover_common::{maps::{Counter, VipKey, MAX_VIPS}, stats::REASON_COUNT};

/// VIP address entry (port 0, `PROTOCOL_ADDRESS`) -> unused. Controller writes. Only tunnel
/// packets whose inner destination is listed here are decapsulated.
#[btf_map]
pub static DECAP_VIPS: HashMap<VipKey, u32, { MAX_VIPS as usize }> = HashMap::new();

/// `failover_common::stats` reason -> packets and frame bytes. Data plane writes.
#[btf_map]
pub static DECAP_STATS: PerCpuArray<Counter, { REASON_COUNT as usize }> = PerCpuArray::new();
