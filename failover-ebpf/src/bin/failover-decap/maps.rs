//! Every map of the decap program.

use aya_ebpf::{macros::map, maps::{HashMap, PerCpuArray}};
use failover_common::{maps::{Counter, VipKey, MAX_VIPS}, stats::REASON_COUNT};

/// VIP address entry (port 0, `PROTOCOL_ADDRESS`) -> unused. Controller writes. Only tunnel
/// packets whose inner destination is listed here are decapsulated.
#[map]
pub static DECAP_VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// `failover_common::stats` reason -> packets and frame bytes. Data plane writes.
#[map]
pub static DECAP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);
