//! The map writer's table publications on a loaded data plane: a table published whole or as
//! changes to the active one always reads back as the table meant, a reused standby takes only
//! its patch and the changes (counted in slots written), and bad changes are refused before
//! anything is written. Needs root (BPF); skips otherwise.

use std::net::{IpAddr, Ipv4Addr};

use failover_common::maps::*;
use failover_ctl::{
    address::to_words,
    loader::{Dataplane, LoadOptions},
    maps::{MapWriteError, VipSettings},
};

const SIZE: u32 = 251;
const SETTINGS: VipSettings = VipSettings { vip_id: 1, flags: VIP_OWNED };

fn root() -> bool {
    netlab::prerequisite::root("loads BPF programs")
}

fn web() -> VipKey {
    let (address, family) = to_words(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)));
    VipKey { address, port: 80u16.to_be(), protocol: PROTOCOL_TCP, family }
}

/// A data plane with backends 1..=6 of vip id 1 and backend 9 of vip id 2.
fn dataplane() -> Dataplane {
    let mut dataplane = Dataplane::load(LoadOptions { table_pool_slots: 8 * SIZE, flow_entries: 1024 }).unwrap();
    for (id, vip_id) in (1..=6).map(|id| (id, 1)).chain([(9, 2)]) {
        let (address, family) = to_words(IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8)));
        dataplane.writer.set_backend(id, Backend { address, vip_id, family, _padding: [0; 3] }, HEALTH_UP).unwrap();
    }
    dataplane
}

/// A deterministic stream of numbers (SplitMix64), so the test needs no random-number crate.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self, below: u32) -> u32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((value ^ (value >> 31)) % u64::from(below)) as u32
    }

    /// Changes to `table`: a few slots in ascending order, each to another backend of 1..=5.
    fn changes(&mut self, table: &[u32]) -> Vec<(u32, u32)> {
        let mut slots: Vec<u32> = (0..1 + self.next(12)).map(|_| self.next(SIZE)).collect();
        slots.sort_unstable();
        slots.dedup();
        slots.into_iter().map(|slot| (slot, 1 + (table[slot as usize] + self.next(4)) % 5)).collect()
    }
}

fn apply(table: &mut [u32], changes: &[(u32, u32)]) {
    for &(slot, id) in changes {
        table[slot as usize] = id;
    }
}

#[test]
fn changes_into_a_reused_standby_write_only_the_patch_and_the_changes() {
    if !root() {
        return;
    }
    let mut dataplane = dataplane();
    let writer = &mut dataplane.writer;
    let mut numbers = Numbers(7);
    let mut table: Vec<u32> = (0..SIZE).map(|slot| 1 + slot % 5).collect();
    writer.publish_vip(web(), SETTINGS, &table).unwrap();

    // The standby was active a moment ago: packets may read it, so a fresh region takes a copy.
    let first = numbers.changes(&table);
    let written = writer.table_slots_written();
    writer.publish_vip_changes(web(), SETTINGS, &first).unwrap();
    apply(&mut table, &first);
    assert_eq!(writer.table(&web()).unwrap(), table);
    assert_eq!(writer.table_slots_written() - written, u64::from(SIZE) + first.len() as u64);

    // After a grace period the standby (the table before `first`) is reused: its patch is
    // `first`, then the new changes.
    writer.reclaim().unwrap();
    let second = numbers.changes(&table);
    let written = writer.table_slots_written();
    writer.publish_vip_changes(web(), SETTINGS, &second).unwrap();
    apply(&mut table, &second);
    assert_eq!(writer.table(&web()).unwrap(), table);
    assert_eq!(writer.table_slots_written() - written, (first.len() + second.len()) as u64);

    // A whole table knows its changes too (read against the active region).
    writer.reclaim().unwrap();
    let mut whole = table.clone();
    let third = numbers.changes(&table);
    apply(&mut whole, &third);
    let written = writer.table_slots_written();
    writer.publish_vip(web(), SETTINGS, &whole).unwrap();
    assert_eq!(writer.table(&web()).unwrap(), whole);
    assert_eq!(writer.table_slots_written() - written, (second.len() + third.len()) as u64);
}

#[test]
fn any_sequence_of_publications_reads_back_as_meant() {
    if !root() {
        return;
    }
    let mut dataplane = dataplane();
    let writer = &mut dataplane.writer;
    let mut numbers = Numbers(11);
    let mut table: Vec<u32> = (0..SIZE).map(|_| 1 + numbers.next(5)).collect();
    writer.publish_vip(web(), SETTINGS, &table).unwrap();
    let (mut fresh, mut whole) = (0, 0);
    for step in 0..300 {
        match numbers.next(10) {
            // A grace period now and then, so standbys become reusable (the daemon's tick).
            0 => writer.reclaim().unwrap(),
            1 => {
                table = (0..SIZE).map(|_| 1 + numbers.next(5)).collect();
                writer.publish_vip(web(), SETTINGS, &table).unwrap();
                whole += 1;
            }
            _ => {
                let changes = numbers.changes(&table);
                let written = writer.table_slots_written();
                writer.publish_vip_changes(web(), SETTINGS, &changes).unwrap();
                apply(&mut table, &changes);
                fresh += usize::from(writer.table_slots_written() - written >= u64::from(SIZE));
            }
        }
        assert_eq!(writer.table(&web()).unwrap(), table, "step {step}");
    }
    assert!(fresh > 0 && fresh < 300 - whole, "both copies and patches happened: {fresh} copies");
    // Backend 6 was never in a table, so it is not referenced and can go.
    writer.remove_backend(6).unwrap();
}

#[test]
fn bad_changes_are_refused_and_change_nothing() {
    if !root() {
        return;
    }
    let mut dataplane = dataplane();
    let writer = &mut dataplane.writer;
    let refused = |result: Result<(), MapWriteError>, why: &str| {
        let error = result.expect_err(why).to_string();
        assert!(error.contains("203.0.113.10:80"), "{why}: {error}");
        error
    };
    refused(writer.publish_vip_changes(web(), SETTINGS, &[(0, 1)]), "a VIP never published");
    let table: Vec<u32> = (0..SIZE).map(|slot| 1 + slot % 6).collect();
    writer.publish_vip(web(), SETTINGS, &table).unwrap();
    let written = writer.table_slots_written();
    let error = refused(writer.publish_vip_changes(web(), SETTINGS, &[(SIZE, 1)]), "a slot beyond the table");
    assert!(error.contains("beyond"), "{error}");
    let error = refused(writer.publish_vip_changes(web(), SETTINGS, &[(5, 1), (3, 2)]), "slots out of order");
    assert!(error.contains("out of order"), "{error}");
    refused(writer.publish_vip_changes(web(), SETTINGS, &[(5, 1), (5, 2)]), "a slot twice");
    let error = refused(writer.publish_vip_changes(web(), SETTINGS, &[(5, 9)]), "a backend of another VIP");
    assert!(error.contains("vip id 2"), "{error}");
    refused(writer.publish_vip_changes(web(), SETTINGS, &[(5, 7)]), "a backend never written");
    refused(writer.publish_vip_changes(web(), SETTINGS, &[(5, MAX_BACKENDS)]), "an id beyond the map");
    assert_eq!(writer.table_slots_written(), written, "nothing written");
    assert_eq!(writer.table(&web()).unwrap(), table);
    // Membership follows the changes: backend 6 leaves when its last slot is taken over.
    assert!(writer.remove_backend(6).is_err(), "backend 6 is in the table");
    let away: Vec<(u32, u32)> =
        table.iter().enumerate().filter(|(_, id)| **id == 6).map(|(slot, _)| (slot as u32, 1)).collect();
    writer.publish_vip_changes(web(), SETTINGS, &away).unwrap();
    writer.remove_backend(6).unwrap();
}
