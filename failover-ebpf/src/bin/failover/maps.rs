//! Every map of the load-balancer program. Key and value types come from `failover_common::maps`,
//! whose module documentation holds the publication contract that orders the writes.
//!
//! BTF map definitions (`#[btf_map]`): the kernel then knows each key and value type, so
//! `bpftool map dump` prints field names. Capacities are const generics here; the loader
//! overrides `TABLES` and `FLOWS` (`set_max_entries`; `FLOWS` in buckets) before the maps are
//! created.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::{Array, HashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use failover_common::{
    maps::{VIP_SLOTS as VIP_SLOTS_COUNT, *},
    monitor::{MonitorFilter, MonitorRecord, MONITOR_RING_BYTES},
    stats::REASON_COUNT,
};

use crate::flow::Routed;

/// (address, port, protocol) -> VIP id, flags and active table region. Controller writes;
/// no-prealloc so a replaced value is freed after an RCU grace period, never recycled under a
/// reader. Written last when a table is published.
#[btf_map]
pub static VIPS: HashMap<VipKey, VipMeta, { MAX_VIPS as usize * 2 }, { BPF_F_NO_PREALLOC as usize }> = HashMap::new();

/// hash(address) -> 1 if some VIP may have that address. Controller writes. The non-VIP path
/// reads only this (an inlined array load) before passing a packet on.
#[btf_map]
pub static ADDRESS_FILTER: Array<u8, { ADDRESS_FILTER_SLOTS as usize }> = Array::new();

/// group index -> OWNERSHIP_OWNED (this node serves the group's VIPs) or OWNERSHIP_RELEASED.
/// The election task writes it, nobody else: a takeover or release of a whole group is one
/// write. Read for VIPs whose flags name a group (`vip::owns`).
#[btf_map]
pub static OWNERSHIP: Array<u32, { MAX_GROUPS as usize }> = Array::new();

/// vip id -> the service it stands for and its flags (contract rule 9): how an established
/// flow, whose entry carries its VIP's id, is checked without the `VIPS` hash lookup (an
/// inlined array load). Controller writes, through its mapping, in the documented order.
#[btf_map]
pub static VIP_INDEX: Array<VipIdentity, { MAX_VIPS as usize }, { BPF_F_MMAPABLE as usize }> = Array::new();

/// `hash::service_slot` of a service -> its vip id + 1 (0 = none), confirmed in `VIP_INDEX`: a
/// packet that no flow entry answers for finds its VIP with two array loads; a service whose
/// slot another holds is looked up in `VIPS`. Controller writes, through its mapping.
#[btf_map]
pub static VIP_SLOTS: Array<u32, { VIP_SLOTS_COUNT as usize }, { BPF_F_MMAPABLE as usize }> = Array::new();

/// backend id -> tunnel address, family, owning VIP. Controller writes, before any table names
/// the id.
#[btf_map]
pub static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// backend id -> HEALTH_UP / HEALTH_DOWN / HEALTH_DRAINING. Controller writes (the instant
/// failover path).
#[btf_map]
pub static HEALTH: Array<u32, { MAX_BACKENDS as usize }> = Array::new();

/// Pool of Maglev slots -> backend id; each VIP owns two regions (double buffer). Controller
/// writes the inactive region through mmap.
#[btf_map]
pub static TABLES: Array<u32, { DEFAULT_TABLE_POOL_SLOTS as usize }, { BPF_F_MMAPABLE as usize }> = Array::new();

/// The flow cache: flow hash -> bucket of `FLOW_WAYS` flows (key, backend id, last-seen time),
/// shared by every CPU, so a flow keeps its backend whichever CPU its packets reach. An array:
/// lookups and inserts are inlined loads and stores, no helper call, no lock (see `FlowBucket`
/// for the write order). Mmap-able: the controller scans it in memory. Data plane writes; the
/// controller only reads and clears ways' tags.
#[btf_map]
pub static FLOWS: Array<FlowBucket, { flow_buckets(DEFAULT_FLOW_ENTRIES) as usize }, { BPF_F_MMAPABLE as usize }> = Array::new();

/// Two configuration slots; `CONFIG_ACTIVE[0]` names the live one. Controller writes.
#[btf_map]
pub static CONFIG: Array<Config, 2> = Array::new();

/// 0 -> index of the live `CONFIG` entry. Controller writes, after the entry it names.
#[btf_map]
pub static CONFIG_ACTIVE: Array<u32, 1> = Array::new();

/// 0 -> this CPU's flow-insert token bucket. Data plane writes.
#[btf_map]
pub static FLOW_LIMITER: PerCpuArray<LimiterState, 1> = PerCpuArray::new();

/// VIP id -> packets and IP bytes forwarded. Data plane writes.
#[btf_map]
pub static VIP_STATS: PerCpuArray<Counter, { MAX_VIPS as usize }> = PerCpuArray::new();

/// Backend id -> packets and IP bytes forwarded. Data plane writes.
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<Counter, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// `failover_common::stats` reason -> packets and frame bytes. Data plane writes.
#[btf_map]
pub static REASON_STATS: PerCpuArray<Counter, { REASON_COUNT as usize }> = PerCpuArray::new();

/// 0 -> this CPU's scratch space for the flow being forwarded. Data plane only: keeps it
/// off the entry function's stack, which the 512-byte limit of a call chain needs.
#[btf_map]
pub static SCRATCH: PerCpuArray<Routed, 1> = PerCpuArray::new();

/// 0 -> this CPU's monitor record under construction. Data plane only: keeps the record off
/// the monitor's stack frame, which is added to the entry function's in the 512-byte limit.
#[btf_map]
pub static MONITOR_SCRATCH: PerCpuArray<MonitorRecord, 1> = PerCpuArray::new();

/// 0 -> the packet monitor's filter (`failover_common::monitor`). Written by `failover-ctl
/// monitor`, not the daemon (a debugging switch that changes no decision); the program clears
/// `enabled` once the filter has expired. Every packet reads `enabled` (the monitor's gate).
#[btf_map]
pub static MONITOR_FILTER: Array<MonitorFilter, 1> = Array::new();

/// One record per packet the monitor filter matched. Data plane writes; `failover-ctl monitor`
/// reads.
#[btf_map]
pub static MONITOR_RECORDS: RingBuf<MonitorRecord, { MONITOR_RING_BYTES as usize }> = RingBuf::new();

/// 0 -> matched packets whose record found the ring buffer full. Data plane writes.
#[btf_map]
pub static MONITOR_LOST: PerCpuArray<u64, 1> = PerCpuArray::new();
