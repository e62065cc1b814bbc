//! Publishing a VIP's table: validate it, write it into a region no packet reads, switch the
//! `VIPS` entry, and remember how the two regions of the VIP differ, so the next publication
//! writes only the slots that need it.
//!
//! A VIP has an active region and, once republished, a standby: the region it used before. The
//! standby holds the table before the active one. After a publication that knew its changes
//! (the slots where the new table differs from the one before), the standby differs from the
//! active table exactly at those slots, so the writer keeps them as the standby's patch: the
//! next publication into the standby writes the patch, then its own changes, instead of a
//! whole table (a few hundred slots where a 65537-slot table would be rewritten).

use std::collections::BTreeMap;

use failover_common::maps::*;

use super::{describe, map_error, vip_index::Found, MapWriteError, MapWriter, VipSettings};
use crate::table_pool::Region;

/// The region a VIP used before its active one.
#[derive(Debug)]
pub(super) struct Standby {
    pub(super) region: Region,
    /// The grace epoch in which it stopped being active: reusable once the epoch has passed.
    pub(super) retired: u64,
    /// `(slot, id)` writes that make it hold the active table; `None` when not known.
    pub(super) patch: Option<Vec<(u32, u32)>>,
}

/// What a publication knows of its new table.
enum Content<'a> {
    /// All of it, and where it differs from the active table when that has the same size.
    Whole { table: &'a [u32], changes: Option<Vec<(u32, u32)>> },
    /// Only where it differs from the table in the `active` region.
    Changes { changes: &'a [(u32, u32)], active: Region },
}

impl Content<'_> {
    fn changes(&self) -> Option<&[(u32, u32)]> {
        match self {
            Self::Whole { changes, .. } => changes.as_deref(),
            Self::Changes { changes, .. } => Some(changes),
        }
    }
}

impl MapWriter {
    /// Publishes `table` (slot -> backend id) for the VIP `key`: the table is written into a
    /// region no packet reads, then the VIP entry is switched in one update.
    ///
    /// The address entry at the VIP's address takes this VIP's ownership group: services at one
    /// address share a group (the configuration requires it), so they differ only while a
    /// reload moves the address to another group, one service after the other.
    pub fn publish_vip(&mut self, key: VipKey, settings: VipSettings, table: &[u32]) -> Result<(), MapWriteError> {
        let name = describe(&key);
        self.check_vip(&key, settings, &name)?;
        if table.is_empty() || table.len() > self.pool.capacity() as usize {
            return Err(MapWriteError::Vip(
                name,
                format!("table of {} slots does not fit a pool of {}", table.len(), self.pool.capacity()),
            ));
        }
        // A count per possible id: inserting all 65537 slots into a map would cost more than
        // the Maglev build on the failover path.
        let mut counts = vec![0u32; MAX_BACKENDS as usize];
        for &id in table {
            let Some(count) = counts.get_mut(id as usize) else {
                return Err(MapWriteError::Vip(name, format!("backend id {id} is beyond {MAX_BACKENDS}")));
            };
            *count += 1;
        }
        let counts: BTreeMap<u32, u32> =
            counts.iter().enumerate().filter(|(_, count)| **count > 0).map(|(id, count)| (id as u32, *count)).collect();
        self.check_members(&counts, settings.vip_id, &name)?;
        // What differs from the active table of the same size: it lets a reused standby take
        // only those slots, and becomes the next standby's patch.
        let changes = self
            .published
            .get(&key)
            .filter(|vip| vip.active.len as usize == table.len())
            .map(|vip| self.pool.differences(vip.active, table));
        let content = Content::Whole { table, changes };
        self.switch(key, settings, table.len() as u32, content, counts)
    }

    /// Publishes, for the published VIP `key`, its active table with the `(slot, id)` changes
    /// applied: the failover path of a ready table, which never holds the whole table. The
    /// changes name each slot once, in ascending order.
    pub fn publish_vip_changes(
        &mut self,
        key: VipKey,
        settings: VipSettings,
        changes: &[(u32, u32)],
    ) -> Result<(), MapWriteError> {
        let name = describe(&key);
        self.check_vip(&key, settings, &name)?;
        let invalid = |why: String| MapWriteError::Vip(name.clone(), why);
        let Some(vip) = self.published.get(&key) else {
            return Err(invalid("is not published, so there is no table to change".into()));
        };
        let active = vip.active;
        // Slot count changes per id in a dense array: a map update per changed slot cost more
        // than the rest of the failover path (~47 of 75 us at ~1000 changed slots).
        let mut delta = vec![0i64; MAX_BACKENDS as usize];
        let mut touched = Vec::new();
        let mut previous = None;
        for &(slot, id) in changes {
            if slot >= active.len {
                return Err(invalid(format!("slot {slot} is beyond the table's {} slots", active.len)));
            }
            if previous.is_some_and(|previous| previous >= slot) {
                return Err(invalid(format!("slot {slot} is changed out of order or twice")));
            }
            previous = Some(slot);
            if id >= MAX_BACKENDS {
                return Err(invalid(format!("backend id {id} is beyond {MAX_BACKENDS}")));
            }
            let old = self.pool.read_slot(active, slot);
            for (id, step) in [(old, -1), (id, 1)] {
                // Every id in a region was checked when written (or adopted); only another
                // writer of the pinned map could have put one out of range there.
                let Some(entry) = delta.get_mut(id as usize) else {
                    return Err(invalid(format!("the active table holds backend id {id}, beyond {MAX_BACKENDS}")));
                };
                *entry += step;
                touched.push(id as usize);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        let mut counts = vip.counts.clone();
        let mut joined = BTreeMap::new();
        for id in touched {
            let (step, id) = (delta[id], id as u32);
            let count = i64::from(counts.get(&id).copied().unwrap_or(0)) + step;
            if count > 0 {
                if !counts.contains_key(&id) {
                    joined.insert(id, 0);
                }
                // At most the table's size, which is a u32.
                counts.insert(id, count as u32);
            } else {
                counts.remove(&id);
            }
        }
        // Only backends new to the table need the membership check.
        self.check_members(&joined, settings.vip_id, &name)?;
        self.switch(key, settings, active.len, Content::Changes { changes, active }, counts)
    }

    /// What every publication checks of the key and the settings.
    fn check_vip(&self, key: &VipKey, settings: VipSettings, name: &str) -> Result<(), MapWriteError> {
        let invalid = |why: String| MapWriteError::Vip(name.to_string(), why);
        if key.protocol == PROTOCOL_ADDRESS {
            return Err(invalid("protocol 0 is reserved for address entries".into()));
        }
        if key.family != FAMILY_IPV4 && key.family != FAMILY_IPV6 {
            return Err(invalid(format!("unknown address family {}", key.family)));
        }
        if settings.vip_id >= MAX_VIPS {
            return Err(invalid(format!("vip id {} is beyond {MAX_VIPS}", settings.vip_id)));
        }
        if let Some(other) = self.published.iter().find(|(k, v)| *k != key && v.meta.vip_id == settings.vip_id) {
            return Err(invalid(format!("vip id {} is already used by {}", settings.vip_id, describe(other.0))));
        }
        Ok(())
    }

    /// Every id a table names must be a written backend of this VIP.
    fn check_members(&self, counts: &BTreeMap<u32, u32>, vip_id: u32, name: &str) -> Result<(), MapWriteError> {
        for id in counts.keys() {
            match self.backend_entries.get(id) {
                Some(entry) if entry.backend.vip_id == vip_id => {}
                Some(entry) => {
                    return Err(MapWriteError::Vip(
                        name.to_string(),
                        format!("backend {id} belongs to vip id {}, not {vip_id}", entry.backend.vip_id),
                    ));
                }
                None => return Err(MapWriteError::Vip(name.to_string(), format!("backend {id} was never written"))),
            }
        }
        Ok(())
    }

    /// Writes the table into a region no packet reads and switches the VIP entry to it.
    fn switch(
        &mut self,
        key: VipKey,
        settings: VipSettings,
        len: u32,
        content: Content<'_>,
        counts: BTreeMap<u32, u32>,
    ) -> Result<(), MapWriteError> {
        // Pick the region to write: the retired standby if it has the right size and a grace
        // period has passed since it was retired, else a fresh region. Only a full pool makes
        // a publish wait for a grace period; otherwise retired regions are reclaimed later
        // ([`MapWriter::reclaim`]), off the failover path.
        let previous = self.published.get(&key);
        let previous_flags = previous.map(|vip| vip.meta.flags);
        let previous_id = previous.map(|vip| vip.meta.vip_id);
        let standby = previous.and_then(|vip| vip.standby.as_ref()).filter(|standby| standby.region.len == len);
        let standby_region = standby.map(|standby| standby.region);
        let mut reuse = standby.filter(|standby| standby.retired < self.grace_epoch).map(|standby| standby.region);
        let mut patch = standby.and_then(|standby| standby.patch.clone());
        let target = match reuse {
            Some(region) => region,
            None => match self.pool.allocate(len) {
                Ok(region) => region,
                Err(_) => {
                    // Full: one grace period frees every retired region and the standby.
                    self.wait_grace()?;
                    self.release_retired();
                    reuse = standby_region;
                    match reuse {
                        Some(region) => region,
                        None => self.pool.allocate(len)?,
                    }
                }
            },
        };
        if reuse.is_none() {
            patch = None;
        }
        // The fewest writes that leave the target holding the new table.
        match (patch, content.changes(), &content) {
            (Some(patch), Some(changes), _) => {
                self.pool.write_slots(target, &patch);
                self.pool.write_slots(target, changes);
            }
            (_, _, Content::Whole { table, .. }) => self.pool.write(target, table),
            (_, _, Content::Changes { changes, active }) => {
                self.pool.copy(*active, target);
                self.pool.write_slots(target, changes);
            }
        }
        let meta = VipMeta { vip_id: settings.vip_id, flags: settings.flags, table_offset: target.offset, table_size: len };
        if let Err(source) = self.vips.insert(key, meta, 0) {
            if reuse.is_none() {
                self.pool.release(target);
            }
            return Err(MapWriteError::Map { name: names::VIPS, source });
        }
        // Published. The index follows (the VIP's id may have changed: the old one names
        // nothing any more), then the address entry and filter, then the mirror.
        if let Some(old) = previous_id.filter(|old| *old != settings.vip_id) {
            self.unindex_vip(old);
        }
        self.index_vip(&key, &meta)?;
        self.address_changed(key.family, key.address, previous_flags, Some(settings.flags))?;
        let epoch = self.grace_epoch;
        match self.published.get_mut(&key) {
            Some(vip) => {
                if let Some(standby) = vip.standby.take() {
                    if reuse != Some(standby.region) {
                        self.retired.push((standby.region, standby.retired));
                    }
                }
                // The old active region differs from the new one exactly at the changes.
                let patch = content.changes().map(<[(u32, u32)]>::to_vec);
                vip.standby = Some(Standby { region: vip.active, retired: epoch, patch });
                vip.active = target;
                vip.meta = meta;
                vip.counts = counts;
            }
            None => {
                self.published.insert(key, super::PublishedVip { meta, active: target, standby: None, counts });
            }
        }
        Ok(())
    }

    /// Removes a VIP: its entry first, then (after a grace period) its regions.
    pub fn remove_vip(&mut self, key: VipKey) -> Result<(), MapWriteError> {
        let Some(vip) = self.published.get(&key) else {
            return Err(MapWriteError::Vip(describe(&key), "is not published".into()));
        };
        let (flags, vip_id) = (vip.meta.flags, vip.meta.vip_id);
        self.vips.remove(&key).map_err(map_error(names::VIPS))?;
        self.unindex_vip(vip_id);
        let Some(vip) = self.published.remove(&key) else { return Ok(()) };
        self.address_changed(key.family, key.address, Some(flags), None)?;
        self.wait_grace()?;
        self.pool.release(vip.active);
        if let Some(standby) = vip.standby {
            self.pool.release(standby.region);
        }
        Ok(())
    }

    /// Makes `VIP_INDEX` name `key` as published in `meta` (contract rule 9): if the id still
    /// names another service, it is cleared and a grace period passes first.
    pub(super) fn index_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), MapWriteError> {
        let Some(index) = self.index.as_mut() else { return Ok(()) };
        let (vip_id, flags, table) = (meta.vip_id, meta.flags, table_word(meta.table_offset, meta.table_size));
        if vip_id >= index.len() {
            return Err(MapWriteError::Vip(describe(key), format!("vip id {vip_id} is beyond {}'s {} entries", names::VIP_INDEX, index.len())));
        }
        if index.set(vip_id, key, flags, table) == Found::Written {
            return Ok(());
        }
        index.clear(vip_id);
        self.wait_grace()?;
        match self.index.as_mut().map(|index| index.set(vip_id, key, flags, table)) {
            Some(Found::Other) => Err(MapWriteError::Corrupt(format!("{} entry {vip_id} changed under the writer", names::VIP_INDEX))),
            _ => Ok(()),
        }
    }

    /// Makes `vip_id` name no VIP in `VIP_INDEX`.
    pub(super) fn unindex_vip(&mut self, vip_id: u32) {
        if let Some(index) = self.index.as_mut().filter(|index| vip_id < index.len()) {
            index.clear(vip_id);
        }
    }

    /// Frees the regions retired before the last grace period.
    pub(super) fn release_retired(&mut self) {
        let epoch = self.grace_epoch;
        let (free, keep): (Vec<_>, Vec<_>) = self.retired.drain(..).partition(|(_, retired)| *retired < epoch);
        self.retired = keep;
        for (region, _) in free {
            self.pool.release(region);
        }
    }

    /// Whether retired regions wait for [`MapWriter::reclaim`].
    pub fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// Waits one grace period and returns the regions retired before it to the pool; the
    /// standbys retired before it become reusable, so the next publication of their VIPs
    /// writes a patch into the standby instead of a whole table into a fresh region. The
    /// controller calls it when idle, so that publications do not wait.
    pub fn reclaim(&mut self) -> Result<(), MapWriteError> {
        let epoch = self.grace_epoch;
        let standby_waits =
            self.published.values().any(|vip| vip.standby.as_ref().is_some_and(|standby| standby.retired >= epoch));
        if self.retired.is_empty() && !standby_waits {
            return Ok(());
        }
        self.wait_grace()?;
        self.release_retired();
        Ok(())
    }

    pub(super) fn wait_grace(&mut self) -> Result<(), MapWriteError> {
        self.grace.wait().map_err(MapWriteError::Grace)?;
        self.grace_epoch += 1;
        Ok(())
    }

    /// Slots written into the table pool since the writer started: what publications cost.
    pub fn table_slots_written(&self) -> u64 {
        self.pool.written()
    }
}
