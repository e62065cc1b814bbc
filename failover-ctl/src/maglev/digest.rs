//! A digest of a published Maglev table that names backends by address, not by id: two nodes
//! (or two daemons, or one daemon before and after a restart) that would send every flow to the
//! same backend address print the same digest, whatever ids their backends got.
//!
//! The table is a pure function of the backends' addresses, weights and health and the table
//! size (the builder orders backends by their address key, never by id; see `build`), so equal
//! configurations and verdicts give equal digests, and a digest that differs means some slot
//! sends its flows elsewhere.

use std::{collections::HashMap, net::IpAddr};

use sha2::{Digest, Sha256};

/// Hex digits of the digest as printed: 64 bits, plenty to tell tables apart by eye and in
/// metrics labels.
const PRINTED_DIGITS: usize = 16;

/// Slots hashed per `update` call (16 bytes each): one call per slot would cost more than the
/// hashing.
const SLOTS_PER_UPDATE: usize = 256;

/// SHA-256 over every slot's backend address in slot order, each as 16 bytes (IPv4 as its
/// IPv6-mapped form `::ffff:a.b.c.d`), printed as the first 16 hex digits. `address_of` maps a
/// slot's backend id to its address; an id without one counts as `::`, which no backend has.
pub fn table_digest(table: &[u32], address_of: impl Fn(u32) -> Option<IpAddr>) -> String {
    let mut addresses: HashMap<u32, [u8; 16]> = HashMap::new();
    let mut hasher = Sha256::new();
    let mut buffer = Vec::with_capacity(SLOTS_PER_UPDATE * 16);
    for chunk in table.chunks(SLOTS_PER_UPDATE) {
        buffer.clear();
        for id in chunk {
            let bytes = addresses.entry(*id).or_insert_with(|| address_of(*id).map_or([0; 16], mapped));
            buffer.extend_from_slice(bytes);
        }
        hasher.update(&buffer);
    }
    let digest = hasher.finalize();
    let mut text: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    text.truncate(PRINTED_DIGITS);
    text
}

fn mapped(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::{build, MaglevBackend};

    fn address(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    /// Backends 1..=5 at 192.0.2.n with ids `first_id + n`, listed in `order`.
    fn backends(first_id: u32, order: &[u8]) -> Vec<MaglevBackend> {
        order
            .iter()
            .map(|n| MaglevBackend { id: first_id + u32::from(*n), key: mapped(address(*n)), weight: u32::from(*n % 2) + 1 })
            .collect()
    }

    fn digest_of(table: &[u32], first_id: u32) -> String {
        table_digest(table, |id| id.checked_sub(first_id).and_then(|n| u8::try_from(n).ok()).map(address))
    }

    #[test]
    fn other_ids_for_the_same_addresses_give_the_same_digest() {
        let one = build(&backends(100, &[1, 2, 3, 4, 5]), 65537).unwrap();
        let two = build(&backends(7000, &[4, 2, 5, 1, 3]), 65537).unwrap();
        assert_ne!(one, two, "the ids differ, so the tables do");
        let (first, second) = (digest_of(&one, 100), digest_of(&two, 7000));
        assert_eq!(first, second);
        assert_eq!(first.len(), 16);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{first}");
    }

    #[test]
    fn one_moved_slot_changes_the_digest() {
        let table = build(&backends(100, &[1, 2, 3]), 251).unwrap();
        let before = digest_of(&table, 100);
        let mut moved = table.clone();
        moved[17] = if moved[17] == 101 { 102 } else { 101 };
        assert_ne!(digest_of(&moved, 100), before);
        // Same slots, one address changed: the digest names addresses.
        let elsewhere = table_digest(&table, |id| Some(if id == 101 { address(9) } else { address((id - 100) as u8) }));
        assert_ne!(elsewhere, before);
        // An unknown id counts as `::`, not as any backend.
        assert_ne!(table_digest(&table, |_| None), before);
    }

    #[test]
    fn ipv4_backends_count_as_their_mapped_form() {
        let v4 = table_digest(&[1, 1, 2], |id| Some(IpAddr::from([10, 0, 0, id as u8])));
        let v6 = table_digest(&[1, 1, 2], |id| Some(IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, id as u8).to_ipv6_mapped())));
        assert_eq!(v4, v6);
    }
}
