//! The controller's side of `VIP_INDEX` (vip id -> the service it stands for, its flags and its
//! table) and `VIP_SLOTS` (service hash -> vip id + 1): stores through mappings of the arrays
//! in the order contract rule 9 of `failover_common::maps` gives, so the data plane, which finds
//! VIPs here instead of in `VIPS`, sees a whole identity or one that matches nothing, and a slot
//! only names an id while the id names that service.

use std::{
    collections::BTreeMap,
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
    sync::atomic::{fence, Ordering},
};

use aya::maps::Map;
use failover_common::{
    hash,
    maps::{names, service_word, VipIdentity, VipKey},
};

use super::{mapping::Mapping, MapWriteError};

pub(super) struct VipIndex {
    entries: Mapping<VipIdentity>,
    slots: Mapping<u32>,
    /// What each id names, as written here: the services a freed slot may go to.
    named: BTreeMap<u32, VipKey>,
}

/// What [`VipIndex::set`] found at the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// The id named no service, or this one: written.
    Written,
    /// The id still names another service: nothing written. Clear it and wait a grace period
    /// first, so no packet can pair the other service's words with this one's.
    Other,
}

fn slot_of(key: &VipKey) -> u32 {
    hash::service_slot(&key.address, service_word(key.port, key.protocol, key.family))
}

impl VipIndex {
    pub(super) fn new(entries: Map, slots: Map) -> Result<Self, MapWriteError> {
        Ok(Self { entries: Mapping::new(entries, names::VIP_INDEX)?, slots: Mapping::new(slots, names::VIP_SLOTS)?, named: BTreeMap::new() })
    }

    pub(super) fn len(&self) -> u32 {
        self.entries.entries()
    }

    /// The identity at `vip_id` as the data plane reads it.
    pub(super) fn get(&self, vip_id: u32) -> VipIdentity {
        // SAFETY: inside the mapping; only this writer stores into it.
        unsafe { read_volatile(self.entries.entry(vip_id)) }
    }

    /// The id + 1 in `slot` (0: none), if the slot exists.
    fn slot(&self, slot: u32) -> Option<u32> {
        // SAFETY: inside the mapping.
        (slot < self.slots.entries()).then(|| unsafe { read_volatile(self.slots.entry(slot)) })
    }

    fn set_slot(&mut self, slot: u32, value: u32) {
        if slot < self.slots.entries() {
            // SAFETY: inside the mapping; an aligned 4-byte store.
            unsafe { write_volatile(self.slots.entry(slot), value) };
        }
    }

    /// Makes `vip_id` stand for the service `key` with `flags` and the table `table`
    /// (`table_word`): the flags and the table, one store each, when it already does; else the
    /// address, flags and table, then the service word. Then takes the service's slot if no
    /// other service holds it.
    pub(super) fn set(&mut self, vip_id: u32, key: &VipKey, flags: u32, table: u64) -> Found {
        let entry = self.entries.entry(vip_id);
        let service = service_word(key.port, key.protocol, key.family);
        let current = self.get(vip_id);
        // SAFETY: inside the mapping; aligned 4- and 8-byte stores, which the data plane's
        // loads see whole.
        unsafe {
            if current.service == service && current.address == key.address {
                write_volatile(addr_of_mut!((*entry).flags), flags);
                write_volatile(addr_of_mut!((*entry).table), table);
            } else if current.service != 0 {
                return Found::Other;
            } else {
                let address = addr_of_mut!((*entry).address) as *mut u32;
                for (word, value) in key.address.iter().enumerate() {
                    write_volatile(address.add(word), *value);
                }
                write_volatile(addr_of_mut!((*entry).flags), flags);
                write_volatile(addr_of_mut!((*entry).table), table);
                // Everything above before the word that makes the identity match.
                fence(Ordering::Release);
                write_volatile(addr_of_mut!((*entry).service), service);
            }
        }
        self.named.insert(vip_id, *key);
        let slot = slot_of(key);
        if self.slot(slot) == Some(0) {
            fence(Ordering::Release);
            self.set_slot(slot, vip_id + 1);
        }
        Found::Written
    }

    /// Makes `vip_id` stand for nothing: its slot is freed first (and given to another service
    /// that hashes there), then its service word matches no flow from the next packet on.
    pub(super) fn clear(&mut self, vip_id: u32) {
        let current = self.get(vip_id);
        let key = VipKey { address: current.address, port: 0, protocol: 0, family: 0 };
        // The service word holds port, protocol and family in VipKey's own layout.
        let [port_low, port_high, protocol, family] = current.service.to_ne_bytes();
        let key = VipKey { port: u16::from_ne_bytes([port_low, port_high]), protocol, family, ..key };
        self.named.remove(&vip_id);
        if current.service == 0 {
            return;
        }
        let slot = slot_of(&key);
        if self.slot(slot) == Some(vip_id + 1) {
            self.set_slot(slot, 0);
            if let Some(other) = self.named.iter().find(|(_, other)| slot_of(other) == slot).map(|(id, _)| *id) {
                self.set_slot(slot, other + 1);
            }
        }
        fence(Ordering::Release);
        let entry = self.entries.entry(vip_id);
        // SAFETY: inside the mapping, see `set`.
        unsafe {
            if read_volatile(addr_of!((*entry).service)) != 0 {
                write_volatile(addr_of_mut!((*entry).service), 0);
            }
        }
    }

    /// Frees every slot that does not name an id standing for a service that hashes there, and
    /// gives free slots to the services that hash there: after an adoption, whatever an
    /// interrupted writer left.
    pub(super) fn repair_slots(&mut self) {
        for slot in 0..self.slots.entries() {
            let value = self.slot(slot).unwrap_or(0);
            let valid = value.checked_sub(1).and_then(|id| self.named.get(&id)).is_some_and(|key| slot_of(key) == slot);
            if value != 0 && !valid {
                self.set_slot(slot, 0);
            }
        }
        let wanted: Vec<(u32, u32)> = self.named.iter().map(|(id, key)| (slot_of(key), *id)).collect();
        for (slot, id) in wanted {
            if self.slot(slot) == Some(0) {
                self.set_slot(slot, id + 1);
            }
        }
    }
}
