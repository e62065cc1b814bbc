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
    maps::{names, FlowBucket, FlowKey, FlowValue, FLOW_WAYS},
};

use super::{mapping::Mapping, MapWriteError};

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
