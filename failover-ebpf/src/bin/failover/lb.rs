//! The service path of VIP traffic: parse what the VIP lookup needs, hand ICMP to `icmp`, then
//! choose the backend (flow table first, then the VIP's Maglev table, skipping backends that are
//! not live) and forward.

use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, programs::XdpContext};
use failover_common::{
    hash,
    maps::*,
    monitor::{FLOW_NEW, FLOW_TRACKED, FLOW_UNTRACKED},
    stats,
};
use failover_ebpf::{
    headers::IPV4_FRAGMENT_MASK_BE,
    parse::{self, L3},
    verdict::Verdict,
};

use crate::{
    cache, encap,
    flow::{flow_key, Routed},
    icmp,
    maps::*,
    stats as count,
    vip::{indexed, may_be_vip_address, owns, service_vip, unusable},
};

/// Handles one packet.
///
/// Returns `pass(PASS_UNPARSED | PASS_IPV6_EXTENSION | PASS_NOT_VIP | PASS_NOT_OWNED |
/// PASS_ALL_DOWN | PASS_ICMP_OTHER)`, `drop(DROP_MALFORMED | DROP_FRAGMENT | DROP_ALL_DOWN |
/// DROP_NOT_CONFIGURED | DROP_NO_ROOM | DROP_TOO_BIG_NO_DF | DROP_ICMP_ERROR_UNROUTABLE)` or
/// `transmit(TX_FORWARD | TX_ECHO_REPLY | TX_TOO_BIG | TX_ICMP_ERROR_FORWARD)`; never a
/// continuation.
#[inline(always)]
pub fn process(ctx: &XdpContext) -> Verdict {
    let l3 = match parse::l3(ctx, may_be_vip_address) {
        Ok(l3) => l3,
        Err(verdict) => return verdict,
    };
    if l3.has_ipv6_extension() {
        return Verdict::pass(stats::PASS_IPV6_EXTENSION);
    }
    vip_traffic(ctx, &l3)
}

#[inline(always)]
fn vip_traffic(ctx: &XdpContext, l3: &L3) -> Verdict {
    if parse::check_lengths(ctx, l3).is_err() {
        return unusable(l3, stats::DROP_MALFORMED);
    }
    if l3.fragment_be & IPV4_FRAGMENT_MASK_BE != 0 {
        return unusable(l3, stats::DROP_FRAGMENT);
    }
    let l4 = match parse::l4(ctx, l3) {
        Ok(l4) => l4,
        Err(verdict) => return unusable(l3, verdict.reason()),
    };
    // One out-parameter for both routes keeps a single service() call site.
    let Some(routed) = SCRATCH.get_ptr_mut(0) else {
        return Verdict::drop(stats::DROP_NOT_CONFIGURED);
    };
    // SAFETY: this CPU's scratch entry; this program is not preempted and nothing else uses it.
    let routed = unsafe { &mut *routed };
    let config = config();
    let mut track = true;
    if is_icmp(l3) {
        let verdict = icmp::handle(ctx, l3, &l4, routed);
        if !verdict.is_needs_routing() {
            return verdict;
        }
        track = false;
        find_flow(routed, config);
    } else {
        // Only TCP and UDP have services. Any other protocol must not reach the VIP lookup: an
        // IPv4 protocol 0 (HOPOPT) would match the address entry (`PROTOCOL_ADDRESS`), which has
        // no table, and be dropped as if no backend were live.
        if l3.protocol != PROTOCOL_TCP && l3.protocol != PROTOCOL_UDP {
            return Verdict::pass(stats::PASS_NOT_VIP);
        }
        routed.key = flow_key(l3, &l4);
        // A connection's first packet needs its VIP's table: the VIP first, as before any flow
        // existed, so the bucket's cache miss overlaps the table lookups after it.
        let opening = l4.opens_connection();
        if opening {
            let Some(meta) = service_vip(&routed.key) else {
                return Verdict::pass(stats::PASS_NOT_VIP);
            };
            routed.meta = meta;
        }
        let bucket = find_flow(routed, config);
        if !opening {
            // A tracked flow names its VIP: `VIP_INDEX` confirms it with one array load.
            let slot = bucket.and_then(|bucket| cache::slot(bucket, routed.way));
            let Some(meta) = slot.and_then(|slot| indexed(slot.vip_id(), &routed.key)).or_else(|| service_vip(&routed.key)) else {
                return Verdict::pass(stats::PASS_NOT_VIP);
            };
            routed.meta = meta;
        }
    }
    // From here on the scratch entry holds this packet's flow: the monitor may read it.
    forward_routed(ctx, l3, routed, config, track).routed()
}

/// Hashes the flow in `routed` and finds its way in its bucket (`FLOW_WAYS`: not tracked, or
/// no configuration yet); returns the bucket.
#[inline(always)]
fn find_flow(routed: &mut Routed, config: Option<&Config>) -> Option<*mut FlowBucket> {
    routed.hash = hash::flow_key_hash(&routed.key, false);
    routed.way = FLOW_WAYS as u32;
    let bucket = cache::bucket(routed.hash, config?)?;
    routed.way = cache::find(bucket, &routed.key, routed.hash);
    Some(bucket)
}

/// Forwards the flow in `routed` and resolves the service path's continuations; the verdict
/// keeps the backend detail `service` noted.
#[inline(always)]
fn forward_routed(ctx: &XdpContext, l3: &L3, routed: &Routed, config: Option<&Config>, track: bool) -> Verdict {
    let verdict = service(ctx, l3, routed, config, track);
    if let Some(mtu) = verdict.too_big_mtu() {
        // Never an ICMP error about an ICMP error (RFC 1122 §3.2.2, RFC 4443 §2.4 e).
        if !track {
            return Verdict::with_detail_of(Verdict::drop(stats::DROP_TOO_BIG_NO_DF), verdict);
        }
        return Verdict::with_detail_of(icmp::too_big(ctx, l3, mtu as usize), verdict);
    }
    if verdict.is_transmit() && !track {
        return Verdict::with_detail_of(Verdict::transmit(stats::TX_ICMP_ERROR_FORWARD), verdict);
    }
    verdict
}

/// ICMP of the packet's own family (ICMP in IPv4, ICMPv6 in IPv6).
#[inline(always)]
fn is_icmp(l3: &L3) -> bool {
    (l3.family == FAMILY_IPV4 && l3.protocol == PROTOCOL_ICMP) || (l3.family == FAMILY_IPV6 && l3.protocol == PROTOCOL_ICMPV6)
}

/// Forwards a packet of a VIP service flow. `track` is false for ICMP errors, which must
/// follow a flow but never create one. A verdict after a backend was chosen carries it and how
/// the flow table was used (`Verdict::with_backend`), for the monitor.
///
/// Inlined into the entry function (one call site, shared by the service and ICMP-error
/// paths): a BPF-to-BPF call and its return (through the SRSO safe-RET thunk on this CPU) cost
/// ~9 ns of an established packet. The entry function's frame then holds this path's locals;
/// what keeps every call chain within 512 bytes is that the functions it still calls are small
/// (the monitor builds its record in a per-CPU map, not on its stack).
#[inline(always)]
fn service(ctx: &XdpContext, l3: &L3, routed: &Routed, config: Option<&Config>, track: bool) -> Verdict {
    let (meta, key) = (&routed.meta, &routed.key);
    if !owns(meta) {
        return Verdict::pass(stats::PASS_NOT_OWNED);
    }
    let Some(config) = config else {
        return Verdict::drop(stats::DROP_NOT_CONFIGURED);
    };
    let tracking = meta.flags & VIP_NO_FLOW_TRACKING == 0;
    let flow_hash = routed.hash;
    let bucket = if tracking { cache::bucket(flow_hash, config) } else { None };
    // The flow's way, found once for the lookup and for the insert of a re-chosen flow.
    let own = if tracking { routed.way } else { FLOW_WAYS as u32 };
    let mut choice = None;
    if let Some(bucket) = bucket {
        if let Some(slot) = cache::slot(bucket, own) {
            choice = tracked(meta, key, &slot, config);
        }
    }
    let (choice, flow) = match choice {
        Some(choice) => (choice, FLOW_TRACKED),
        None => {
            let hash = if meta.flags & VIP_HASH_SOURCE_ONLY != 0 { hash::source_hash(&key.source) } else { flow_hash };
            match from_table(meta, hash) {
                Some(choice) => {
                    let mut flow = FLOW_UNTRACKED;
                    if let (true, Some(bucket)) = (track, bucket) {
                        flow = remember(key, bucket, flow_hash, own, meta.vip_id, choice.0, config);
                    }
                    (choice, flow)
                }
                None if meta.flags & VIP_ALL_DOWN_PASS != 0 => return Verdict::pass(stats::PASS_ALL_DOWN),
                None => return Verdict::drop(stats::DROP_ALL_DOWN),
            }
        }
    };
    let (backend_id, backend) = choice;
    // The flow's hash is its entropy: it varies per flow and is already computed.
    let verdict = encap::forward(ctx, l3, &backend, flow_hash, config);
    if verdict.is_transmit() {
        count::forwarded(meta.vip_id, backend_id, l3.total_len);
    }
    verdict.with_backend(backend_id, flow)
}

/// The live configuration slot.
#[inline(always)]
fn config() -> Option<&'static Config> {
    let active = *CONFIG_ACTIVE.get(0)?;
    CONFIG.get(active & 1)
}

/// The backend `id` if it may take this packet: up (or draining, for tracked flows) and still
/// a member of `vip_id`.
#[inline(always)]
fn live_backend(id: u32, vip_id: u32, draining_ok: bool) -> Option<Backend> {
    let health = *HEALTH.get(id)?;
    if health != HEALTH_UP && !(draining_ok && health == HEALTH_DRAINING) {
        return None;
    }
    let backend = *BACKENDS.get(id)?;
    if backend.vip_id != vip_id {
        return None;
    }
    Some(backend)
}

/// True if backend `id` is up and a member of `vip_id`; reads the entry in place (a copy
/// would cost the probe loop's frame 24 bytes of stack).
#[inline(always)]
fn is_up(id: u32, vip_id: u32) -> bool {
    match (HEALTH.get(id), BACKENDS.get(id)) {
        (Some(health), Some(backend)) => *health == HEALTH_UP && backend.vip_id == vip_id,
        _ => false,
    }
}

/// The tracked backend of this flow, if there is one and it may still take the flow.
#[inline(always)]
fn tracked(meta: &VipMeta, key: &FlowKey, slot: &cache::Slot, config: &Config) -> Option<(u32, Backend)> {
    let id = slot.backend_id();
    if key.protocol == PROTOCOL_UDP {
        let now = now_ns();
        if now.saturating_sub(slot.last_seen_ns()) > config.udp_idle_timeout_ns {
            count::reason(stats::EVENT_FLOW_EXPIRED, 0);
            return None;
        }
        slot.refresh(now);
    } else {
        slot.mark_seen();
    }
    match live_backend(id, meta.vip_id, true) {
        Some(backend) => Some((id, backend)),
        None => {
            count::reason(stats::EVENT_FLOW_RESELECTED, 0);
            None
        }
    }
}

/// Maglev lookup: the backend of the flow's slot, or of the next slot whose backend is up.
#[inline(always)]
fn from_table(meta: &VipMeta, hash: u32) -> Option<(u32, Backend)> {
    let picked = probe_table(meta.table_offset, meta.table_size, meta.vip_id, hash);
    if picked == NO_BACKEND {
        return None;
    }
    let id = picked as u32;
    Some((id, *BACKENDS.get(id)?))
}

const NO_BACKEND: u64 = u64::MAX;

/// Looks at most `MAX_SLOT_PROBES` slots from the flow's slot on and returns the first backend
/// id that is up (draining backends take no new flows), or `NO_BACKEND`.
///
/// A separate BPF function returning a scalar: every way out of the loop then leaves the
/// caller in the same verifier state, instead of each exit re-verifying the forwarding path.
#[inline(never)]
fn probe_table(offset: u32, size: u32, vip_id: u32, hash: u32) -> u64 {
    if size == 0 {
        return NO_BACKEND;
    }
    let mut slot = hash::slot_of(hash, size);
    for _ in 0..MAX_SLOT_PROBES {
        let Some(id) = TABLES.get(offset.wrapping_add(slot)) else {
            return NO_BACKEND;
        };
        let id = *id;
        if is_up(id, vip_id) {
            return id as u64;
        }
        slot += 1;
        if slot >= size {
            slot = 0;
        }
    }
    NO_BACKEND
}

/// Tracks a new flow, unless this CPU's insert budget is spent (SYN-flood policy: the flow is
/// still forwarded by the table, which sends it to the same backend while the table stands) or
/// every way of its bucket holds a recently active flow (which a new one never evicts).
/// Returns `FLOW_NEW`, or `FLOW_UNTRACKED` when the limiter or the cache refused the entry.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "inlined at its one call site; a struct would only rename them")]
fn remember(key: &FlowKey, bucket: *mut FlowBucket, hash: u32, own: u32, vip_id: u32, backend_id: u32, config: &Config) -> u8 {
    let now = now_ns();
    if !insert_allowed(config, now) || !cache::place(bucket, key, hash, own, vip_id, backend_id, now) {
        count::reason(stats::EVENT_FLOW_NOT_TRACKED, 0);
        return FLOW_UNTRACKED;
    }
    FLOW_NEW
}

/// Per-CPU token bucket, in nanoseconds of credit: one insert costs `flow_insert_cost_ns`,
/// credit refills at one nanosecond per nanosecond up to `flow_insert_burst_ns`.
#[inline(always)]
fn insert_allowed(config: &Config, now: u64) -> bool {
    let cost = config.flow_insert_cost_ns;
    if cost == 0 {
        return true;
    }
    let Some(state) = FLOW_LIMITER.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU value, this program is not preempted.
    unsafe {
        // A bucket never used on this CPU starts full (its time is 0, not "long ago").
        let mut credit = if (*state).last_ns == 0 {
            config.flow_insert_burst_ns
        } else {
            (*state).credit_ns.saturating_add(now.saturating_sub((*state).last_ns))
        };
        if credit > config.flow_insert_burst_ns {
            credit = config.flow_insert_burst_ns;
        }
        (*state).last_ns = now;
        let allowed = credit >= cost;
        if allowed {
            credit -= cost;
        }
        (*state).credit_ns = credit;
        allowed
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: no arguments; the coarse clock is enough for idle timeouts and the limiter.
    unsafe { bpf_ktime_get_coarse_ns() }
}
