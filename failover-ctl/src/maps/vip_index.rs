//! The controller's side of `VIP_INDEX` (vip id -> the service it stands for and its flags):
//! stores through a mapping of the array in the order contract rule 9 of
//! `failover_common::maps` gives, so the data plane, which checks an established flow's VIP
//! here instead of looking it up in `VIPS`, sees a whole identity or one that matches nothing.

use std::{
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
    sync::atomic::{fence, Ordering},
};

use aya::maps::Map;
use failover_common::maps::{names, service_word, VipIdentity, VipKey};

use super::{mapping::Mapping, MapWriteError};

pub(super) struct VipIndex {
    entries: Mapping<VipIdentity>,
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

impl VipIndex {
    pub(super) fn new(map: Map) -> Result<Self, MapWriteError> {
        Ok(Self { entries: Mapping::new(map, names::VIP_INDEX)? })
    }

    pub(super) fn len(&self) -> u32 {
        self.entries.entries()
    }

    /// The identity at `vip_id` as the data plane reads it.
    pub(super) fn get(&self, vip_id: u32) -> VipIdentity {
        // SAFETY: inside the mapping; only this writer stores into it.
        unsafe { read_volatile(self.entries.entry(vip_id)) }
    }

    /// Makes `vip_id` stand for the service `key` with `flags`: one store of the flags when it
    /// already does; else the address and flags, then the service word.
    pub(super) fn set(&mut self, vip_id: u32, key: &VipKey, flags: u32) -> Found {
        let entry = self.entries.entry(vip_id);
        let service = service_word(key.port, key.protocol, key.family);
        let current = self.get(vip_id);
        // SAFETY: inside the mapping; aligned 4-byte stores, which the data plane's loads see
        // whole.
        unsafe {
            if current.service == service && current.address == key.address {
                write_volatile(addr_of_mut!((*entry).flags), flags);
                return Found::Written;
            }
            if current.service != 0 {
                return Found::Other;
            }
            let address = addr_of_mut!((*entry).address) as *mut u32;
            for (word, value) in key.address.iter().enumerate() {
                write_volatile(address.add(word), *value);
            }
            write_volatile(addr_of_mut!((*entry).flags), flags);
            // Everything above before the word that makes the identity match.
            fence(Ordering::Release);
            write_volatile(addr_of_mut!((*entry).service), service);
        }
        Found::Written
    }

    /// Makes `vip_id` stand for nothing: its service word matches no flow from the next packet
    /// on.
    pub(super) fn clear(&mut self, vip_id: u32) {
        let entry = self.entries.entry(vip_id);
        // SAFETY: inside the mapping, see `set`.
        unsafe {
            if read_volatile(addr_of!((*entry).service)) != 0 {
                write_volatile(addr_of_mut!((*entry).service), 0);
            }
        }
    }
}
