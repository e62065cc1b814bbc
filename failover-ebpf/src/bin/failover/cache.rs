//! The flow cache (`FLOWS`): find a flow's way in the bucket its hash names, refresh it, and
//! place a new flow — array loads and stores the verifier inlines, no helper call and no lock.
//! Layout, write order and the replacement rule are `failover_common::maps::FlowBucket`'s.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use failover_common::maps::{
    flow_tag, Config, FlowBucket, FlowKey, FLOW_EVICT_IDLE_NS, FLOW_REFRESH_NS, FLOW_SEEN_RECENTLY, FLOW_SEEN_SHIFT, FLOW_WAYS,
};

use crate::maps::FLOWS;

/// A tracked flow: its bucket and way, for reading and refreshing in place.
pub struct Slot {
    bucket: *mut FlowBucket,
    way: usize,
}

/// The bucket of a flow hash.
#[inline(always)]
pub fn bucket(hash: u32, config: &Config) -> Option<*mut FlowBucket> {
    FLOWS.get_ptr_mut(hash & config.flow_bucket_mask)
}

/// `FLOW_SEEN_SHIFT` units of the coarse clock.
#[inline(always)]
fn units(now: u64) -> u32 {
    (now >> FLOW_SEEN_SHIFT) as u32
}

/// Word by word: a derived comparison of the arrays could become a `bcmp` call, which BPF has
/// not.
#[inline(always)]
fn same_key(stored: *const FlowKey, key: &FlowKey) -> bool {
    let stored = stored as *const u32;
    let key = key as *const FlowKey as *const u32;
    for word in 0..(core::mem::size_of::<FlowKey>() / 4) {
        // SAFETY: both point to a whole FlowKey (40 bytes, u32-aligned). Word by word with an
        // early exit: loading every word first would spill them all to the stack.
        if unsafe { read_volatile(stored.add(word)) != *key.add(word) } {
            return false;
        }
    }
    true
}

/// The way of `key` in `bucket`, or `FLOW_WAYS` when the flow is not tracked.
#[inline(always)]
pub fn find(bucket: *mut FlowBucket, key: &FlowKey, hash: u32) -> u32 {
    find_way(bucket, key, flow_tag(hash))
}

/// The tracked flow in `way` of `bucket`, if [`find`] found one there.
#[inline(always)]
pub fn slot(bucket: *mut FlowBucket, way: u32) -> Option<Slot> {
    (way < FLOW_WAYS as u32).then_some(Slot { bucket, way: way as usize })
}

/// The way whose tag and key match, or `FLOW_WAYS`. Inlined into the entry function (which
/// looks flows up before the service path): a BPF-to-BPF call costs more than its body here
/// (every return goes through the kernel's return thunk), ~8 ns of an established packet.
#[inline(always)]
fn find_way(bucket: *mut FlowBucket, key: &FlowKey, tag: u32) -> u32 {
    for way in 0..FLOW_WAYS {
        // SAFETY: `bucket` is a live array element for this program run; `way` < FLOW_WAYS.
        let matches = unsafe { read_volatile(addr_of!((*bucket).tags[way])) == tag && same_key(addr_of!((*bucket).entries[way].key), key) };
        if matches {
            return way as u32;
        }
    }
    FLOW_WAYS as u32
}

impl Slot {
    /// The VIP the flow was placed for (check it: `vip::indexed`).
    pub fn vip_id(&self) -> u32 {
        // SAFETY: see `find`.
        unsafe { read_volatile(addr_of!((*self.bucket).entries[self.way & (FLOW_WAYS - 1)].value.vip_id)) }
    }

    pub fn backend_id(&self) -> u32 {
        // SAFETY: see `find`.
        unsafe { read_volatile(addr_of!((*self.bucket).entries[self.way & (FLOW_WAYS - 1)].value.backend_id)) }
    }

    /// When the flow was created (TCP) or last refreshed (UDP).
    pub fn last_seen_ns(&self) -> u64 {
        // SAFETY: see `find`.
        unsafe { read_volatile(addr_of!((*self.bucket).entries[self.way & (FLOW_WAYS - 1)].value.last_seen_ns)) }
    }

    /// Marks the flow active for replacement without a clock read (TCP): one store of
    /// `FLOW_SEEN_RECENTLY`, only when it is not there already (a write per packet would bounce
    /// the line between CPUs). Reading the coarse clock is a helper call, about a sixth of an
    /// established packet's cost.
    #[inline(always)]
    pub fn mark_seen(&self) {
        let way = self.way & (FLOW_WAYS - 1);
        // SAFETY: see `find`; a racing writer stores a value just as good.
        unsafe {
            let seen = addr_of_mut!((*self.bucket).seen[way]);
            if read_volatile(seen) != FLOW_SEEN_RECENTLY {
                write_volatile(seen, FLOW_SEEN_RECENTLY);
            }
        }
    }

    /// Marks the flow active at `now` and refreshes its idle clock (UDP, whose expiry reads the
    /// clock anyway), at most once per `FLOW_REFRESH_NS`.
    #[inline(always)]
    pub fn refresh(&self, now: u64) {
        let way = self.way & (FLOW_WAYS - 1);
        // SAFETY: see `find`; a racing writer on another CPU stores a time just as good.
        unsafe {
            let seen = addr_of_mut!((*self.bucket).seen[way]);
            let last = read_volatile(seen);
            if last == FLOW_SEEN_RECENTLY || u64::from(units(now).wrapping_sub(last)) > FLOW_REFRESH_NS >> FLOW_SEEN_SHIFT {
                write_volatile(seen, units(now));
                write_volatile(addr_of_mut!((*self.bucket).entries[way].value.last_seen_ns), now);
            }
        }
    }
}

/// Tracks `key` on `backend_id`: in its own way `own` if the flow is there (a re-choice: what
/// [`find`] returned for this packet, so the bucket is not scanned twice), else an
/// empty way, else the way idle longest if it has been idle `FLOW_EVICT_IDLE_NS`. False when
/// every way holds a flow seen more recently than that: the new flow stays untracked.
#[inline(always)]
pub fn place(bucket: *mut FlowBucket, key: &FlowKey, hash: u32, own: u32, vip_id: u32, backend_id: u32, now: u64) -> bool {
    let ids = u64::from(backend_id) | (u64::from(vip_id) << 32);
    place_in(bucket, key, u64::from(flow_tag(hash)) | (u64::from(own) << 32), ids, now)
}

/// [`place`]'s choice and writes, with the flow's own way (or `FLOW_WAYS`) already found and
/// packed above its tag and the VIP id above the backend id: five arguments at most, and a loop over the bucket's first line only,
/// which keeps this function's frame, the last of the service path's call chain, small.
#[inline(never)]
fn place_in(bucket: *mut FlowBucket, key: &FlowKey, tag_and_own: u64, ids: u64, now: u64) -> bool {
    let tag = tag_and_own as u32;
    // Loaded as a value of its own: compiled as a compare of the packed word, the bound below
    // would not reach the register the verifier checks the store's index in.
    let own = (tag_and_own >> 32) as usize;
    // SAFETY: a local.
    let own = unsafe { read_volatile(&own) };
    let now_units = units(now);
    let mut empty = FLOW_WAYS;
    let mut idle_way = FLOW_WAYS;
    let mut idle_longest = 0u32;
    for way in 0..FLOW_WAYS {
        // SAFETY: `bucket` is a live array element for this program run; `way` < FLOW_WAYS.
        unsafe {
            if read_volatile(addr_of!((*bucket).tags[way])) == 0 {
                if empty == FLOW_WAYS {
                    empty = way;
                }
            } else {
                let seen = addr_of_mut!((*bucket).seen[way]);
                let last = read_volatile(seen);
                let mut idle = now_units.wrapping_sub(last);
                if last == FLOW_SEEN_RECENTLY {
                    // Seen since the last look: from now on it ages from this insert's time.
                    write_volatile(seen, now_units);
                    idle = 0;
                }
                if idle > idle_longest {
                    idle_longest = idle;
                    idle_way = way;
                }
            }
        }
    }
    let way = if own < FLOW_WAYS {
        own
    } else if empty < FLOW_WAYS {
        empty
    } else if u64::from(idle_longest) >= FLOW_EVICT_IDLE_NS >> FLOW_SEEN_SHIFT && idle_way < FLOW_WAYS {
        idle_way
    } else {
        return false;
    };
    let way = way & (FLOW_WAYS - 1);
    // SAFETY: as above; the order is the one `FlowBucket` documents.
    unsafe {
        write_volatile(addr_of_mut!((*bucket).tags[way]), 0);
        let entry = addr_of_mut!((*bucket).entries[way]);
        let target = addr_of_mut!((*entry).key) as *mut u32;
        let source = key as *const FlowKey as *const u32;
        for word in 0..(core::mem::size_of::<FlowKey>() / 4) {
            write_volatile(target.add(word), *source.add(word));
        }
        write_volatile(addr_of_mut!((*entry).value.backend_id), ids as u32);
        write_volatile(addr_of_mut!((*entry).value.vip_id), (ids >> 32) as u32);
        write_volatile(addr_of_mut!((*entry).value.last_seen_ns), now);
        write_volatile(addr_of_mut!((*bucket).seen[way]), now_units);
        write_volatile(addr_of_mut!((*bucket).tags[way]), tag);
    }
    true
}
