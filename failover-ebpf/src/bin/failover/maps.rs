//! Every map of the load-balancer program. Key and value types come from `failover_common::maps`,
//! whose module documentation holds the publication contract that orders the writes.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use failover_common::{maps::*, stats::REASON_COUNT};

use crate::flow::Routed;

/// (address, port, protocol) -> VIP id, flags and active table region. Controller writes;
/// no-prealloc so a replaced value is freed after an RCU grace period, never recycled under a
/// reader. Written last when a table is published.
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS * 2, BPF_F_NO_PREALLOC);

/// hash(address) -> 1 if some VIP may have that address. Controller writes. The non-VIP path
/// reads only this (an inlined array load) before passing a packet on.
#[map]
pub static ADDRESS_FILTER: Array<u8> = Array::with_max_entries(ADDRESS_FILTER_SLOTS, 0);

/// backend id -> tunnel address, family, owning VIP. Controller writes, before any table names
/// the id.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// backend id -> HEALTH_UP / HEALTH_DOWN / HEALTH_DRAINING. Controller writes (the instant
/// failover path).
#[map]
pub static HEALTH: Array<u32> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Pool of Maglev slots -> backend id; each VIP owns two regions (double buffer). Controller
/// writes the inactive region through mmap.
#[map]
pub static TABLES: Array<u32> = Array::with_max_entries(DEFAULT_TABLE_POOL_SLOTS, BPF_F_MMAPABLE);

/// 5-tuple -> backend id and last-seen time. Data plane writes; the controller only reads and
/// deletes.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

/// Two configuration slots; `CONFIG_ACTIVE[0]` names the live one. Controller writes.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(2, 0);

/// 0 -> index of the live `CONFIG` entry. Controller writes, after the entry it names.
#[map]
pub static CONFIG_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// 0 -> this CPU's flow-insert token bucket. Data plane writes.
#[map]
pub static FLOW_LIMITER: PerCpuArray<LimiterState> = PerCpuArray::with_max_entries(1, 0);

/// VIP id -> packets and IP bytes forwarded. Data plane writes.
#[map]
pub static VIP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Backend id -> packets and IP bytes forwarded. Data plane writes.
#[map]
pub static BACKEND_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// `failover_common::stats` reason -> packets and frame bytes. Data plane writes.
#[map]
pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// 0 -> this CPU's scratch space for the flow being forwarded. Data plane only: keeps 56 bytes
/// off the entry function's stack, which the 512-byte limit of a call chain needs.
#[map]
pub static SCRATCH: PerCpuArray<Routed> = PerCpuArray::with_max_entries(1, 0);
