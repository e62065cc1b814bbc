//! The controller's side of the flow cache (`FLOWS`, an mmap-able array of buckets; layout and
//! write order in `failover_common::maps::FlowBucket`): list the tracked flows, find one, and
//! forget flows by clearing their ways' tags. The array is mapped into this process, so a scan is
//! a walk over memory (151 MB for the default capacity, tens of milliseconds) instead of one
//! system call per bucket, and forgetting is one 4-byte store per way, which the data plane sees
//! at once and which cannot undo a flow it placed meanwhile in another way of the bucket.

use std::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya::maps::Map;
use failover_common::{
    hash,
    maps::{
        flow_tag, names, FlowBucket, FlowEntry, FlowKey, FlowValue, FLOW_EVICT_IDLE_NS, FLOW_SEEN_RECENTLY, FLOW_SEEN_SHIFT,
        FLOW_WAYS,
    },
};

use super::{mapping::Mapping, MapWriteError};

/// What [`FlowTable::place`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Tracked now, in an empty way or one idle long enough.
    New,
    /// Tracked before on another backend (or for another VIP id): on this one now.
    Moved,
    /// Tracked already on this backend: its times refreshed.
    Refreshed,
    /// Every way of the bucket holds a flow seen recently: not tracked (as the data plane
    /// never evicts an active flow).
    Full,
    /// The program hashes flows otherwise (pins of an older release): not placed.
    OtherHash,
}

pub struct FlowTable {
    buckets: Mapping<FlowBucket>,
    /// Whether the program places flows by this controller's `hash::flow_key_hash`; if not
    /// (the pins of an older release), a flow is looked for in every bucket.
    hashes_alike: bool,
}

impl FlowTable {
    pub(super) fn new(map: Map, hashes_alike: bool) -> Result<Self, MapWriteError> {
        Ok(Self { buckets: Mapping::new(map, names::FLOWS)?, hashes_alike })
    }

    pub(super) fn hashes_alike(&self) -> bool {
        self.hashes_alike
    }

    /// The buckets that may hold `key`: its own, or all of them when the program hashes
    /// otherwise.
    fn buckets_of(&self, key: &FlowKey) -> std::ops::Range<u32> {
        if self.hashes_alike {
            let index = self.bucket_of(key);
            index..index + 1
        } else {
            0..self.buckets.entries()
        }
    }

    fn bucket(&self, index: u32) -> *mut FlowBucket {
        self.buckets.entry(index)
    }

    fn bucket_of(&self, key: &FlowKey) -> u32 {
        hash::flow_key_hash(key, false) & (self.buckets.entries().max(1) - 1)
    }

    /// The occupied ways of bucket `index`: (way, key, value).
    fn occupied(&self, index: u32) -> impl Iterator<Item = (usize, FlowKey, FlowValue)> + '_ {
        let bucket = self.bucket(index);
        (0..FLOW_WAYS).filter_map(move |way| {
            // SAFETY: inside the mapping; the data plane may be writing the way, which at worst
            // yields a stale or mixed entry for this inspection.
            unsafe {
                if read_volatile(addr_of!((*bucket).tags[way])) == 0 {
                    return None;
                }
                let entry = read_volatile(addr_of!((*bucket).entries[way]));
                Some((way, entry.key, entry.value))
            }
        })
    }

    fn clear(&self, index: u32, way: usize) {
        // SAFETY: inside the mapping; a 4-byte aligned store the data plane reads atomically.
        unsafe { write_volatile(addr_of_mut!((*self.bucket(index)).tags[way]), 0) }
    }

    /// Every tracked flow.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, MapWriteError> {
        Ok((0..self.buckets.entries()).flat_map(|index| self.occupied(index).map(|(_, key, value)| (key, value))).collect())
    }

    /// The entry of `key`, if tracked.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.buckets_of(key).find_map(|index| self.occupied(index).find(|(_, stored, _)| stored == key).map(|(_, _, value)| value))
    }

    /// Forgets a tracked flow; an error if it is not tracked.
    pub fn forget(&mut self, key: &FlowKey) -> Result<(), MapWriteError> {
        let mut found = false;
        for index in self.buckets_of(key) {
            let ways: Vec<usize> = self.occupied(index).filter(|(_, stored, _)| stored == key).map(|(way, _, _)| way).collect();
            for way in ways {
                self.clear(index, way);
                found = true;
            }
        }
        if !found {
            return Err(MapWriteError::Corrupt(format!("{}: the flow {key:?} is not tracked", names::FLOWS)));
        }
        Ok(())
    }

    /// Tracks `key` on `value` as the data plane places a flow (`cache::place`): in the way that
    /// holds the flow already, else an empty way, else the way idle longest if it has been idle
    /// `FLOW_EVICT_IDLE_NS`; in the write order `FlowBucket` documents. `now_ns` is the coarse
    /// monotonic clock (the data plane's). A flow already there on the same backend only has its
    /// times refreshed, so a UDP flow kept by another node does not expire here.
    pub fn place(&mut self, key: &FlowKey, value: FlowValue, now_ns: u64) -> Placed {
        if !self.hashes_alike {
            return Placed::OtherHash;
        }
        let hash = hash::flow_key_hash(key, false);
        let tag = flow_tag(hash);
        let bucket = self.bucket(self.bucket_of(key));
        let now_units = (now_ns >> FLOW_SEEN_SHIFT) as u32;
        let (mut own, mut empty, mut idle_way, mut idle_longest) = (None, None, None, 0u32);
        for way in 0..FLOW_WAYS {
            // SAFETY: inside the mapping; 4-byte aligned loads the data plane also makes.
            unsafe {
                let stored = read_volatile(addr_of!((*bucket).tags[way]));
                if stored == 0 {
                    empty = empty.or(Some(way));
                    continue;
                }
                if stored == tag && read_volatile(addr_of!((*bucket).entries[way].key)) == *key {
                    own = Some(way);
                }
                let last = read_volatile(addr_of!((*bucket).seen[way]));
                let idle = if last == FLOW_SEEN_RECENTLY { 0 } else { now_units.wrapping_sub(last) };
                if idle > idle_longest {
                    (idle_longest, idle_way) = (idle, Some(way));
                }
            }
        }
        let evictable = (u64::from(idle_longest) >= FLOW_EVICT_IDLE_NS >> FLOW_SEEN_SHIFT).then_some(idle_way).flatten();
        let (way, placed) = match (own, empty, evictable) {
            (Some(way), _, _) => {
                // SAFETY: inside the mapping.
                let stored = unsafe { read_volatile(addr_of!((*bucket).entries[way].value)) };
                if stored.backend_id == value.backend_id && stored.vip_id == value.vip_id {
                    // SAFETY: inside the mapping; aligned stores of single words.
                    unsafe {
                        write_volatile(addr_of_mut!((*bucket).entries[way].value.last_seen_ns), now_ns);
                        write_volatile(addr_of_mut!((*bucket).seen[way]), now_units);
                    }
                    return Placed::Refreshed;
                }
                (way, Placed::Moved)
            }
            (None, Some(way), _) => (way, Placed::New),
            (None, None, Some(way)) => (way, Placed::New),
            (None, None, None) => return Placed::Full,
        };
        let entry = FlowEntry { key: *key, value: FlowValue { last_seen_ns: now_ns, ..value }, _padding: 0 };
        // SAFETY: inside the mapping; the order is the one `FlowBucket` documents: a reader that
        // matched the old tag and reads a half-written entry fails the key comparison.
        unsafe {
            write_volatile(addr_of_mut!((*bucket).tags[way]), 0);
            write_volatile(addr_of_mut!((*bucket).entries[way]), entry);
            write_volatile(addr_of_mut!((*bucket).seen[way]), now_units);
            write_volatile(addr_of_mut!((*bucket).tags[way]), tag);
        }
        placed
    }

    /// The tracked flows `pick` picks among those with a packet within `idle_ns` of `now_ns`
    /// (read as an insert reads the way's `seen` word, without writing it), by a scan of every
    /// bucket.
    pub fn active_flows_where(
        &self,
        now_ns: u64,
        idle_ns: u64,
        pick: impl Fn(&FlowKey, &FlowValue) -> bool,
    ) -> Vec<(FlowKey, FlowValue)> {
        let now_units = (now_ns >> FLOW_SEEN_SHIFT) as u32;
        let limit = idle_ns >> FLOW_SEEN_SHIFT;
        let mut found = Vec::new();
        for index in 0..self.buckets.entries() {
            let bucket = self.bucket(index);
            for (way, key, value) in self.occupied(index) {
                // SAFETY: inside the mapping; an aligned 4-byte load.
                let last = unsafe { read_volatile(addr_of!((*bucket).seen[way])) };
                let active = last == FLOW_SEEN_RECENTLY || u64::from(now_units.wrapping_sub(last)) <= limit;
                if active && pick(&key, &value) {
                    found.push((key, value));
                }
            }
        }
        found
    }

    /// The entry of `key` and how long its flow has been idle, as the data plane's insert sees
    /// it, looking at the way as an insert does: a mark left by a packet since the last look
    /// (`FLOW_SEEN_RECENTLY`) becomes `now_ns` (idle 0), so the next look measures from it.
    pub fn look(&mut self, key: &FlowKey, now_ns: u64) -> Option<(FlowValue, u64)> {
        let now_units = (now_ns >> FLOW_SEEN_SHIFT) as u32;
        for index in self.buckets_of(key) {
            let found = self.occupied(index).find(|(_, stored, _)| stored == key);
            if let Some((way, _, value)) = found {
                let bucket = self.bucket(index);
                // SAFETY: inside the mapping; aligned 4-byte accesses, as the data plane makes.
                let (seen, last) = unsafe {
                    let seen = addr_of_mut!((*bucket).seen[way]);
                    (seen, read_volatile(seen))
                };
                if last == FLOW_SEEN_RECENTLY {
                    // SAFETY: as above.
                    unsafe { write_volatile(seen, now_units) };
                    return Some((value, 0));
                }
                return Some((value, u64::from(now_units.wrapping_sub(last)) << FLOW_SEEN_SHIFT));
            }
        }
        None
    }

    /// Forgets every tracked flow whose key `forget` picks; how many.
    pub fn forget_where(&mut self, forget: impl Fn(&FlowKey) -> bool) -> Result<usize, MapWriteError> {
        let mut total = 0;
        for index in 0..self.buckets.entries() {
            let ways: Vec<usize> = self.occupied(index).filter(|(_, key, _)| forget(key)).map(|(way, _, _)| way).collect();
            for way in ways {
                self.clear(index, way);
                total += 1;
            }
        }
        Ok(total)
    }
}
