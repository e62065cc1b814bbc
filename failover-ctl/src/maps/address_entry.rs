//! The address entry of a VIP address (`failover_common::maps::VipKey`): what the services at
//! the address add up to — whether any is owned, and their ownership group.

use std::collections::BTreeMap;

use failover_common::maps::{vip_group, VIP_GROUP_SHIFT, VIP_OWNED};

/// The services at one VIP address, as its address entry sums them up.
#[derive(Debug, Default)]
pub(super) struct AddressState {
    pub(super) services: u32,
    /// Services with `VIP_OWNED`.
    owned: u32,
    /// Services per ownership group (0 = none).
    groups: BTreeMap<u32, u32>,
    /// The group the address entry carries.
    pub(super) group: u32,
}

impl AddressState {
    /// The address entry's flags: owned if any service is, and the group.
    pub(super) fn flags(&self) -> u32 {
        let owned = if self.owned > 0 { VIP_OWNED } else { 0 };
        owned | (self.group << VIP_GROUP_SHIFT)
    }

    pub(super) fn add(&mut self, flags: u32) {
        self.services += 1;
        self.owned += u32::from(flags & VIP_OWNED != 0);
        *self.groups.entry(vip_group(flags)).or_default() += 1;
    }

    pub(super) fn remove(&mut self, flags: u32) {
        self.services -= 1;
        self.owned -= u32::from(flags & VIP_OWNED != 0);
        let group = vip_group(flags);
        if let Some(count) = self.groups.get_mut(&group) {
            *count -= 1;
            if *count == 0 {
                self.groups.remove(&group);
            }
        }
    }

    /// Keeps the entry's group if a service still has it, else takes the lowest one there.
    pub(super) fn settle_group(&mut self) {
        if !self.groups.contains_key(&self.group) {
            self.group = self.groups.keys().next().copied().unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use failover_common::maps::with_vip_group;

    use super::*;

    #[test]
    fn the_entry_is_owned_when_any_service_is() {
        let mut state = AddressState::default();
        state.add(0);
        assert_eq!(state.flags(), 0);
        state.add(VIP_OWNED);
        assert_eq!(state.flags(), VIP_OWNED);
        state.remove(VIP_OWNED);
        assert_eq!(state.flags(), 0);
        assert_eq!(state.services, 1);
    }

    #[test]
    fn the_entry_follows_the_group_a_reload_moves_the_address_to() {
        let (one, two) = (with_vip_group(0, 1), with_vip_group(0, 2));
        let mut state = AddressState::default();
        for _ in 0..2 {
            state.add(one);
            state.group = 1;
        }
        state.settle_group();
        assert_eq!(state.flags(), 1 << VIP_GROUP_SHIFT);
        // The first service moves to group 2: the entry goes with it.
        state.remove(one);
        state.add(two);
        state.group = 2;
        state.settle_group();
        assert_eq!(vip_group(state.flags()), 2);
        // Group 1's last service goes away while the entry is in group 2: no change.
        state.remove(one);
        state.settle_group();
        assert_eq!(vip_group(state.flags()), 2);
        // An entry whose group no service has any more takes the lowest one left.
        state.add(0);
        state.remove(two);
        state.settle_group();
        assert_eq!(state.flags(), 0);
    }
}
