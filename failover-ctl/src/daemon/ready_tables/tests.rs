//! Tests of the ready failover tables: every table the worker prepares is the table a fresh
//! build gives (random backend sets, weights, tiers, admin states and verdicts), the table
//! back to the state before is kept at once, and lookups miss whenever the inputs differ.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::*;
use crate::{config::Tier, daemon::plan::Admin};

fn vip(port: u16) -> VipKey {
    VipKey { address: [0x0a00_0001, 0, 0, 0], port, protocol: 6, family: 4 }
}

fn member(id: u32, weight: u16, tier: Tier, admin: Admin, up: bool) -> Member {
    Member { id, address: IpAddr::V4(Ipv4Addr::new(10, 1, (id >> 8) as u8, id as u8)), weight, tier, admin, up }
}

fn equal_members(count: u32) -> Vec<Member> {
    (1..=count).map(|id| member(id, 1, Tier::Primary, Admin::Enabled, true)).collect()
}

/// Waits (bounded) until the worker has nothing left to prepare.
fn settle(ready: &ReadyTables) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.pending() {
        assert!(Instant::now() < deadline, "the worker did not finish within 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn apply(table: &[u32], changes: &[(u32, u32)]) -> Vec<u32> {
    let mut table = table.to_vec();
    for &(slot, id) in changes {
        table[slot as usize] = id;
    }
    table
}

/// Publishes `members` as the VIP's table, waits for the worker, and checks every single
/// verdict: its ready table, applied to the published one, is the table `plan::table` builds.
/// Returns how many verdicts had a ready table.
fn check_every_verdict(members: &[Member], size: u32) -> usize {
    let ready = ReadyTables::start();
    let key = vip(80);
    let inputs = plan::table_inputs(members);
    let table: Arc<[u32]> = plan::table(members, size).unwrap().into();
    ready.published(key, table.clone(), &inputs, members, None);
    settle(&ready);
    let mut found = 0;
    // Two verdicts may lead to the same inputs (one table serves both).
    let mut distinct = std::collections::HashSet::new();
    for index in 0..members.len() {
        let mut flipped = members.to_vec();
        flipped[index].up = !flipped[index].up;
        let wanted = plan::table_inputs(&flipped);
        let changes = ready.take(&key, size, &inputs, &wanted);
        // A verdict that changes no input has no table of its own, nor has one whose inputs
        // cannot be built (no weight left; the controller then keeps the table it has).
        let Ok(expected) = plan::table(&flipped, size).map_err(|_| ()).and_then(|table| (wanted != inputs).then_some(table).ok_or(())) else {
            assert!(changes.is_none(), "flipping member {index} has a table of its own");
            continue;
        };
        let changes = changes.unwrap_or_else(|| panic!("no ready table for flipping member {index}"));
        assert!(changes.windows(2).all(|pair| pair[0].0 < pair[1].0), "changes in ascending slot order");
        assert_eq!(apply(&table, &changes), expected, "flipping member {index}");
        found += 1;
        distinct.insert(wanted.iter().map(|backend| backend.weight).collect::<Vec<_>>());
    }
    assert_eq!(ready.count(), distinct.len());
    found
}

#[test]
fn one_backend_down_tables_equal_fresh_builds_at_100_backends() {
    let members = equal_members(100);
    assert_eq!(check_every_verdict(&members, maglev::DEFAULT_TABLE_SIZE), 100);
}

fn any_member() -> impl Strategy<Value = (u16, bool, u8, bool)> {
    (0u16..4, any::<bool>(), 0u8..6, any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random backend sets: weights 0-3, primaries and backups, enabled, drained and in
    /// maintenance, up and down; every prepared table equals a fresh build.
    #[test]
    fn prepared_tables_equal_fresh_builds(
        specs in prop::collection::vec(any_member(), 1..24),
        size in prop::sample::select(vec![13u32, 251, 4099]),
    ) {
        let members: Vec<Member> = specs
            .iter()
            .enumerate()
            .map(|(index, &(weight, backup, admin, up))| {
                let admin = match admin {
                    0 => Admin::Maintenance,
                    1 => Admin::Drained,
                    _ => Admin::Enabled,
                };
                let tier = if backup { Tier::Backup } else { Tier::Primary };
                member(index as u32 + 1, weight, tier, admin, up)
            })
            .collect();
        // A set with no weight anywhere cannot be built; the controller never publishes it.
        prop_assume!(plan::table(&members, size).is_ok());
        check_every_verdict(&members, size);
    }
}

#[test]
fn the_table_back_is_ready_at_once() {
    let ready = ReadyTables::start();
    let key = vip(80);
    let members = equal_members(10);
    let size = 251;
    let before = plan::table_inputs(&members);
    let old: Arc<[u32]> = plan::table(&members, size).unwrap().into();
    ready.published(key, old.clone(), &before, &members, None);
    settle(&ready);
    let mut down = members.clone();
    down[3].up = false;
    let after = plan::table_inputs(&down);
    let new = plan::table(&down, size).unwrap();
    let back = differences(&new, &old);
    ready.published(key, new.clone().into(), &after, &down, Some(WayBack { inputs: &before, changes: back }));
    // Whatever the worker has done by now, the way back is there.
    let changes = ready.take(&key, size, &after, &before).expect("the table back");
    assert_eq!(apply(&new, &changes), *old);
    settle(&ready);
    // Both bases are kept: the state before still has its tables, the state after has its own.
    let mut other = members.clone();
    other[5].up = false;
    let changes = ready.take(&key, size, &before, &plan::table_inputs(&other)).expect("the old base's table");
    assert_eq!(apply(&old, &changes), plan::table(&other, size).unwrap());
    let mut both = down.clone();
    both[5].up = false;
    let changes = ready.take(&key, size, &after, &plan::table_inputs(&both)).expect("the new base's table");
    assert_eq!(apply(&new, &changes), plan::table(&both, size).unwrap());
}

#[test]
fn lookups_miss_when_anything_else_differs() {
    let ready = ReadyTables::start();
    let key = vip(80);
    let members = equal_members(8);
    let size = 251;
    let inputs = plan::table_inputs(&members);
    ready.published(key, plan::table(&members, size).unwrap().into(), &inputs, &members, None);
    settle(&ready);
    let mut down = members.clone();
    down[0].up = false;
    let wanted = plan::table_inputs(&down);
    assert!(ready.take(&key, size, &inputs, &wanted).is_some());
    // Another VIP, another size, another base (a weight changed), another member set.
    assert!(ready.take(&vip(81), size, &inputs, &wanted).is_none());
    assert!(ready.take(&key, 13, &inputs, &wanted).is_none());
    let mut heavier = members.clone();
    heavier[7].weight = 2;
    assert!(ready.take(&key, size, &plan::table_inputs(&heavier), &wanted).is_none());
    let mut renamed = down.clone();
    renamed[2].address = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));
    assert!(ready.take(&key, size, &inputs, &plan::table_inputs(&renamed)).is_none());
    // Two verdicts away is not one verdict away.
    down[1].up = false;
    assert!(ready.take(&key, size, &inputs, &plan::table_inputs(&down)).is_none());
    // A reload that drops the VIP forgets it.
    ready.retain(&[vip(81)]);
    assert!(ready.take(&key, size, &inputs, &wanted).is_none());
    assert_eq!(ready.count(), 0);
}

#[test]
fn large_vips_are_not_prepared() {
    let ready = ReadyTables::start();
    let members = equal_members(MAX_MEMBERS as u32 + 1);
    let inputs = plan::table_inputs(&members);
    ready.published(vip(80), plan::table(&members, 4099).unwrap().into(), &inputs, &members, None);
    settle(&ready);
    assert_eq!(ready.count(), 0);
}

#[test]
fn the_budget_drops_the_oldest_base_first() {
    let mut store = Store::default();
    let members = equal_members(3);
    let base = plan::table_inputs(&members);
    let mut down = members.clone();
    down[0].up = false;
    let wanted = plan::table_inputs(&down);
    let quarter = MAX_CHANGED_SLOTS / 4;
    let changes = || -> Changes { (0..quarter as u32).map(|slot| (slot, 1)).collect::<Vec<_>>().into() };
    for port in 1..=4 {
        store.make_current(vip(port), 4099, &base);
        assert!(store.insert(&vip(port), 4099, &base, &wanted, changes()));
    }
    assert_eq!(store.slots, MAX_CHANGED_SLOTS);
    // The fifth VIP's table pushes out the first VIP's base, the least recently published.
    store.make_current(vip(5), 4099, &base);
    assert!(store.insert(&vip(5), 4099, &base, &wanted, changes()));
    assert!(store.lookup(&vip(1), 4099, &base, &wanted).is_none());
    assert!(store.lookup(&vip(2), 4099, &base, &wanted).is_some());
    assert_eq!(store.slots, MAX_CHANGED_SLOTS);
    // A table larger than the whole budget is never kept.
    let huge: Changes = (0..MAX_CHANGED_SLOTS as u32 + 1).map(|slot| (slot, 1)).collect::<Vec<_>>().into();
    assert!(!store.insert(&vip(5), 4099, &base, &wanted, huge));
}

#[test]
fn differences_name_changed_slots_with_new_ids() {
    assert_eq!(differences(&[1, 2, 3, 4], &[1, 5, 3, 6]), vec![(1, 5), (3, 6)]);
    assert!(differences(&[1, 2], &[1, 2]).is_empty());
}
