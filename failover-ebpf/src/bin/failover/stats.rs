//! Per-CPU counters: no locks, no atomics, summed by the controller.

use aya_ebpf::btf_maps::PerCpuArray;
use failover_common::maps::Counter;

use crate::maps::{BACKEND_STATS, REASON_STATS, VIP_STATS};

#[inline(always)]
fn add<const ENTRIES: usize>(map: &PerCpuArray<Counter, ENTRIES>, index: u32, bytes: usize) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU value is only touched by this CPU, and this program is not preempted.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}

/// Counts a verdict or event under its `failover_common::stats` reason.
#[inline(always)]
pub fn reason(index: u32, bytes: usize) {
    add(&REASON_STATS, index, bytes);
}

/// Counts a packet forwarded for a VIP to a backend.
#[inline(always)]
pub fn forwarded(vip_id: u32, backend_id: u32, bytes: usize) {
    add(&VIP_STATS, vip_id, bytes);
    add(&BACKEND_STATS, backend_id, bytes);
}
