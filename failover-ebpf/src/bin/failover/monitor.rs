//! The packet monitor (`failover-ctl monitor`): after the verdict, a packet that matches the
//! filter in `MONITOR_FILTER` is reported as one `MonitorRecord` in the `MONITOR_RECORDS` ring
//! buffer. With no monitor attached the cost is the gate: one inlined array load and a branch.
//!
//! What the record says comes from the verdict (action, reason, backend id, flow-table use) and,
//! for packets that reached a VIP service, from the per-CPU scratch entry the service path filled
//! (VIP id, 5-tuple). Every other verdict leaves the packet as it arrived (passes, and drops
//! before any rewrite) or turned around (echo replies), so its addresses are read again here.

use aya_ebpf::{
    helpers::generated::{bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::XdpContext,
};
use failover_common::{
    maps::{FAMILY_IPV4, PROTOCOL_TCP, PROTOCOL_UDP},
    monitor::*,
    stats,
};
use failover_ebpf::{
    headers::{Ports, IPV4_FRAGMENT_MASK_BE},
    packet::at,
    parse,
    verdict::Verdict,
};

use crate::maps::{BACKENDS, MONITOR_FILTER, MONITOR_LOST, MONITOR_RECORDS, MONITOR_SCRATCH, SCRATCH};

/// The gate, run for every packet after its verdict: reports it only while a monitor is
/// attached.
#[inline(always)]
pub fn report(ctx: &XdpContext, verdict: Verdict, bytes: usize) {
    if let Some(filter) = MONITOR_FILTER.get(0) {
        if filter.enabled != 0 {
            // Used, so that the compiler keeps the return value (see `record`).
            core::hint::black_box(record(ctx, verdict, bytes));
        }
    }
}

/// Builds the packet's record, checks it against the filter and writes it.
///
/// Its own BPF function: its frame (the record) is not added to the packet path's, and the
/// verifier sees it as one call on a cold branch.
///
/// Returns 1 when a record was written. A value, and one the caller uses: a BPF function must
/// not return a pointer to its stack, which the return register may hold when the function
/// returns nothing (or a constant, which the compiler then drops).
#[inline(never)]
fn record(ctx: &XdpContext, verdict: Verdict, bytes: usize) -> u32 {
    u32::from(build_and_write(ctx, verdict, bytes))
}

#[inline(always)]
fn build_and_write(ctx: &XdpContext, verdict: Verdict, bytes: usize) -> bool {
    let Some(filter) = MONITOR_FILTER.get_ptr_mut(0) else { return false };
    // SAFETY: the entry of a one-entry array, read field by field (see the write order in
    // `failover_common::monitor`); no reference to it is held across the write below.
    if unsafe { bpf_ktime_get_coarse_ns() > (*filter).expires_ns } {
        // The monitor stopped renewing it (killed): switch the gate off for everyone.
        // SAFETY: as above; a racing renewal writes `enabled` again with a later expiry.
        unsafe { (*filter).enabled = 0 };
        return false;
    }
    // SAFETY: only read from here on.
    let filter = unsafe { &*filter };
    // Every field is written, the zeroes and addresses with volatile stores: a struct literal
    // or an array copy from a map value becomes a compiler-builtins `memset` / `memmove` call.
    let Some(record) = MONITOR_SCRATCH.get_ptr_mut(0) else { return false };
    // SAFETY: `record` points at this CPU's scratch entry, which nothing else uses while this
    // program runs; every field is written before it is read.
    unsafe {
        volatile(&raw mut (*record).time_ns, 0);
        volatile(&raw mut (*record).source_port, 0);
        volatile(&raw mut (*record).destination_port, 0);
        volatile(&raw mut (*record).protocol, 0);
        volatile(&raw mut (*record).family, 0);
        volatile(&raw mut (*record).backend_family, 0);
        volatile(&raw mut (*record)._padding, [0; 2]);
        volatile(&raw mut (*record).cpu, 0);
        clear_address(&raw mut (*record).source);
        clear_address(&raw mut (*record).destination);
        clear_address(&raw mut (*record).backend_address);
        (*record).action = verdict.action() as u8;
        (*record).reason = verdict.reason() as u8;
        (*record).flow = verdict.flow();
        (*record).vip_id = MONITOR_NONE;
        (*record).backend_id = MONITOR_NONE;
        (*record).frame_len = bytes as u32;
        (*record).ifindex = ctx.ingress_ifindex() as u32;
    }
    // SAFETY: every field was written above.
    let record = unsafe { &mut *record };
    if verdict.is_routed() {
        let Some(routed) = SCRATCH.get(0) else { return false };
        record.vip_id = routed.meta.vip_id;
        // SAFETY: fields of a live record.
        unsafe {
            copy_address(&raw mut record.source, &routed.key.source);
            copy_address(&raw mut record.destination, &routed.key.destination);
        }
        record.source_port = routed.key.source_port;
        record.destination_port = routed.key.destination_port;
        record.protocol = routed.key.protocol;
        record.family = routed.key.family;
    } else {
        read_addresses(ctx, verdict, record);
    }
    if record.flow != FLOW_NONE {
        let id = verdict.backend_id();
        record.backend_id = id;
        if let Some(backend) = BACKENDS.get(id) {
            // SAFETY: a field of a live record.
            unsafe { copy_address(&raw mut record.backend_address, &backend.address) };
            record.backend_family = backend.family;
        }
    }
    if !matches(filter, record) {
        return false;
    }
    // SAFETY: no arguments.
    record.time_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: no arguments.
    record.cpu = unsafe { bpf_get_smp_processor_id() };
    if MONITOR_RECORDS.output(&*record, 0).is_err() {
        if let Some(lost) = MONITOR_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU value; this program is not preempted.
            unsafe { *lost += 1 };
        }
        return false;
    }
    true
}

/// Copies an address word by word with volatile stores, which LLVM cannot merge into a
/// `memmove` call.
///
/// # Safety
/// `to` must be valid for writes.
#[inline(always)]
unsafe fn copy_address(to: *mut [u32; 4], from: &[u32; 4]) {
    for (index, word) in from.iter().enumerate() {
        // SAFETY: the caller's promise; `index` < 4.
        unsafe { volatile(to.cast::<u32>().add(index), core::ptr::read_volatile(word)) };
    }
}

/// Zeroes an address word by word (see `copy_address`; a constant zero address would also
/// land in a `.rodata` section, which aya turns into a map that cannot be pinned).
///
/// # Safety
/// `to` must be valid for writes.
#[inline(always)]
unsafe fn clear_address(to: *mut [u32; 4]) {
    for index in 0..4 {
        // SAFETY: the caller's promise; `index` < 4.
        unsafe { volatile(to.cast::<u32>().add(index), 0) };
    }
}

/// One volatile store, which LLVM neither merges with its neighbours into a `memset` call nor
/// drops.
///
/// # Safety
/// `to` must be valid for writes and aligned.
#[inline(always)]
unsafe fn volatile<T>(to: *mut T, value: T) {
    // SAFETY: the caller's promise.
    unsafe { core::ptr::write_volatile(to, value) };
}

/// Addresses and ports of a packet the service path did not route, read from the frame (left
/// as it arrived, or turned around for an echo reply). A frame that is not IP keeps zeroes.
#[inline(always)]
fn read_addresses(ctx: &XdpContext, verdict: Verdict, record: &mut MonitorRecord) {
    let Ok(l3) = parse::l3(ctx, |_| true) else { return };
    record.family = l3.family;
    record.protocol = l3.protocol;
    let (source, destination) =
        if verdict.reason() == stats::TX_ECHO_REPLY { (&l3.destination, &l3.source) } else { (&l3.source, &l3.destination) };
    // SAFETY: fields of a live record.
    unsafe {
        copy_address(&raw mut record.source, source);
        copy_address(&raw mut record.destination, destination);
    }
    let whole = l3.family != FAMILY_IPV4 || l3.fragment_be & IPV4_FRAGMENT_MASK_BE == 0;
    if whole && (l3.protocol == PROTOCOL_TCP || l3.protocol == PROTOCOL_UDP) {
        if let Some(ports) = at::<Ports>(ctx, l3.l4_offset()) {
            // SAFETY: checked by `at`.
            unsafe {
                record.source_port = (*ports).source;
                record.destination_port = (*ports).destination;
            }
        }
    }
}

/// Whether the record meets every condition of the filter.
#[inline(always)]
fn matches(filter: &MonitorFilter, record: &MonitorRecord) -> bool {
    if filter.matches & MATCH_VIP != 0
        && (record.family != filter.vip_family
            || record.destination != filter.vip_address
            || (filter.vip_port != 0 && record.destination_port != filter.vip_port)
            || (filter.vip_protocol != 0 && record.protocol != filter.vip_protocol))
    {
        return false;
    }
    if filter.matches & MATCH_CLIENT != 0
        && (record.family != filter.client_family
            || !in_prefix(&record.source, &filter.client_address, &filter.client_mask))
    {
        return false;
    }
    if filter.matches & MATCH_BACKEND != 0
        && (record.flow == FLOW_NONE
            || record.backend_family != filter.backend_family
            || record.backend_address != filter.backend_address)
    {
        return false;
    }
    true
}
