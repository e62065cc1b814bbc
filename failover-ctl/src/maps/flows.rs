//! The controller's side of the flow cache (`FLOWS`, an array of buckets; layout and write
//! order in `failover_common::maps::FlowBucket`): list the tracked flows, find one, and forget
//! flows by clearing their ways. A bucket is read and written back whole; a flow the data plane
//! placed in the same bucket between the two is lost and tracked again by its next packet (which
//! the table sends to the same backend).

use aya::maps::{Array, MapData};
use failover_common::{
    hash,
    maps::{flow_tag, names, FlowBucket, FlowKey, FlowValue, FLOW_WAYS},
};

use super::{map_error, MapWriteError};

pub struct FlowTable {
    map: Array<MapData, FlowBucket>,
}

impl FlowTable {
    pub(super) fn new(map: Array<MapData, FlowBucket>) -> Self {
        Self { map }
    }

    /// Buckets in the map (a power of two).
    pub fn buckets(&self) -> u32 {
        self.map.len()
    }

    fn bucket_of(&self, key: &FlowKey) -> u32 {
        hash::flow_key_hash(key, false) & (self.buckets().max(1) - 1)
    }

    fn read(&self, index: u32) -> Result<FlowBucket, MapWriteError> {
        self.map.get(&index, 0).map_err(map_error(names::FLOWS))
    }

    /// Every tracked flow.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, MapWriteError> {
        let mut flows = Vec::new();
        for index in 0..self.buckets() {
            let bucket = self.read(index)?;
            for way in (0..FLOW_WAYS).filter(|way| bucket.tags[*way] != 0) {
                flows.push((bucket.entries[way].key, bucket.entries[way].value));
            }
        }
        Ok(flows)
    }

    /// The entry of `key`, if tracked.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        let bucket = self.read(self.bucket_of(key)).ok()?;
        let tag = flow_tag(hash::flow_key_hash(key, false));
        (0..FLOW_WAYS).find(|way| bucket.tags[*way] == tag && bucket.entries[*way].key == *key).map(|way| bucket.entries[way].value)
    }

    /// Forgets the flows of one bucket that `forget` picks; how many.
    fn forget_in(&mut self, index: u32, forget: impl Fn(&FlowKey) -> bool) -> Result<usize, MapWriteError> {
        let mut bucket = self.read(index)?;
        let mut forgotten = 0;
        for way in 0..FLOW_WAYS {
            if bucket.tags[way] != 0 && forget(&bucket.entries[way].key) {
                bucket.tags[way] = 0;
                forgotten += 1;
            }
        }
        if forgotten > 0 {
            self.map.set(index, bucket, 0).map_err(map_error(names::FLOWS))?;
        }
        Ok(forgotten)
    }

    /// Forgets a tracked flow; an error if it is not tracked.
    pub fn forget(&mut self, key: &FlowKey) -> Result<(), MapWriteError> {
        match self.forget_in(self.bucket_of(key), |stored| stored == key)? {
            0 => Err(MapWriteError::Corrupt(format!("{}: the flow {key:?} is not tracked", names::FLOWS))),
            _ => Ok(()),
        }
    }

    /// Forgets every tracked flow whose key `forget` picks; how many.
    pub fn forget_where(&mut self, forget: impl Fn(&FlowKey) -> bool) -> Result<usize, MapWriteError> {
        let mut total = 0;
        for index in 0..self.buckets() {
            total += self.forget_in(index, &forget)?;
        }
        Ok(total)
    }
}
