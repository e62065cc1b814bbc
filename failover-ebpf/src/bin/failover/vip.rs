//! Is this destination a VIP: the address filter, the address entry and the service lookup in
//! `VIPS`, and what to do with an unusable packet depending on the answer. Used by the service
//! path (`lb`) and the ICMP path (`icmp`) alike.

use core::ptr::{addr_of, read_volatile};

use failover_common::{hash, maps::*, stats};
use failover_ebpf::{parse::L3, verdict::Verdict};

use crate::maps::{ADDRESS_FILTER, OWNERSHIP, VIPS, VIP_INDEX, VIP_SLOTS};

/// The cheap pre-check: one inlined array load.
#[inline(always)]
pub fn may_be_vip_address(address: &[u32; 4]) -> bool {
    match ADDRESS_FILTER.get(hash::address_filter_index(address)) {
        Some(bit) => *bit != 0,
        None => false,
    }
}

/// The address entry of a VIP address (see `VipKey`), if the address is a VIP.
#[inline(always)]
pub fn address_entry(family: u8, address: &[u32; 4]) -> Option<VipMeta> {
    let key = VipKey { address: *address, port: 0, protocol: PROTOCOL_ADDRESS, family };
    // SAFETY: the value is copied out at once.
    VIPS.get_ptr(key).map(|meta| unsafe { *meta })
}

/// The VIP for (address, port, protocol), falling back to the all-ports VIP of that address.
/// `protocol` must be TCP or UDP: any other value could match an address entry.
#[inline(always)]
pub fn lookup_vip(family: u8, address: &[u32; 4], port: u16, protocol: u8) -> Option<VipMeta> {
    let mut key = VipKey { address: *address, port, protocol, family };
    if let Some(meta) = VIPS.get_ptr(key) {
        // SAFETY: copied out at once.
        return Some(unsafe { *meta });
    }
    key.port = 0;
    // SAFETY: copied out at once.
    VIPS.get_ptr(key).map(|meta| unsafe { *meta })
}

/// The VIP `vip_id` as `VIP_INDEX` has it, table included, if that is the very service `key`
/// is addressed to: same address, port, protocol and family (an all-ports VIP only for port 0,
/// so a flow to another port always asks `VIPS`, where a VIP of its own port would win).
#[inline(always)]
pub fn indexed(vip_id: u32, key: &FlowKey) -> Option<VipMeta> {
    let entry = VIP_INDEX.get_ptr(vip_id)?;
    // SAFETY: an array element, valid for this program run. The service word is loaded first
    // (contract rule 9): when it matches, the rest is the same identity's.
    unsafe {
        if read_volatile(addr_of!((*entry).service)) != service_word(key.destination_port, key.protocol, key.family) {
            return None;
        }
        let address = addr_of!((*entry).address) as *const u32;
        for word in 0..4 {
            if read_volatile(address.add(word)) != key.destination[word] {
                return None;
            }
        }
        let flags = read_volatile(addr_of!((*entry).flags));
        let table = read_volatile(addr_of!((*entry).table));
        if table == 0 {
            return None;
        }
        Some(VipMeta { vip_id, flags, table_offset: table as u32, table_size: (table >> 32) as u32 })
    }
}

/// The VIP of the service `key` is addressed to, through its slot in `VIP_SLOTS` (two array
/// loads), else `VIPS` (the exact service, then the all-ports one).
#[inline(always)]
pub fn service_vip(key: &FlowKey) -> Option<VipMeta> {
    let service = service_word(key.destination_port, key.protocol, key.family);
    if let Some(slot) = VIP_SLOTS.get(hash::service_slot(&key.destination, service)) {
        if let Some(meta) = slot.checked_sub(1).and_then(|vip_id| indexed(vip_id, key)) {
            return Some(meta);
        }
    }
    lookup_vip(key.family, &key.destination, key.destination_port, key.protocol)
}

/// Whether this node serves the VIP (service or address entry) `meta`: a VIP without a group
/// by its own `VIP_OWNED` flag, a grouped one by its group's `OWNERSHIP` entry (one inlined
/// array load). The only place that decides ownership.
#[inline(always)]
pub fn owns(meta: &VipMeta) -> bool {
    let group = vip_group(meta.flags);
    if group == 0 {
        return meta.flags & VIP_OWNED != 0;
    }
    match OWNERSHIP.get(group) {
        Some(owned) => *owned != 0,
        None => false,
    }
}

/// What to do with a packet that is unusable: drop it if it is traffic for a VIP this node
/// owns, otherwise leave it to the kernel as if we were not here.
#[inline(always)]
pub fn unusable(l3: &L3, reason: u32) -> Verdict {
    unusable_at(address_entry(l3.family, &l3.destination), reason)
}

/// `unusable` for a destination whose address entry (`address`) was already looked up.
#[inline(always)]
pub fn unusable_at(address: Option<VipMeta>, reason: u32) -> Verdict {
    match address {
        Some(meta) if owns(&meta) => Verdict::drop(reason),
        Some(_) => Verdict::pass(stats::PASS_NOT_OWNED),
        None => Verdict::pass(stats::PASS_NOT_VIP),
    }
}
