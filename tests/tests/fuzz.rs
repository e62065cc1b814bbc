//! The data-plane fuzzer as part of `cargo xtask test`: 100 000 seeded frames (valid, mutated
//! and random) through the real program, every output checked by the oracle, and every path
//! of the README's table reached; and checks that the oracle objects when the maps hold what
//! it was not told (health, tracked flows, group ownership). `FAILOVER_FUZZ_SEED` (decimal or 0x-hex) picks another seed.

use failover_common::maps::{vip_group, HEALTH_DOWN, HEALTH_DRAINING, HEALTH_UP};
use failover_tests::{
    fuzz::{self, Invariant},
    root,
};

const FRAMES: u64 = 100_000;

#[test]
fn a_hundred_thousand_fuzzed_frames_break_no_invariant() {
    if !root() {
        return;
    }
    let seed = match std::env::var("FAILOVER_FUZZ_SEED") {
        Ok(text) => fuzz::parse_seed(&text).unwrap_or_else(|error| panic!("FAILOVER_FUZZ_SEED: {error}")),
        Err(_) => fuzz::DEFAULT_SEED,
    };
    let report = fuzz::run(&fuzz::Options { frames: FRAMES, seed, shown: 20 }).expect("fuzz run");
    println!("{report}");
    assert_eq!(report.frames, FRAMES);
    assert_eq!(report.violation_count(), 0, "violations:\n{report}");
    // Every verdict the generator is meant to reach, reached: a generator that silently stopped
    // making some kind of frame would otherwise pass unnoticed.
    let reached = [
        "pass_unparsed",
        "pass_not_vip",
        "pass_ipv6_extension",
        "pass_not_owned",
        "pass_all_down",
        "pass_icmp_other",
        "tx_forward",
        "tx_echo_reply",
        "tx_too_big",
        "tx_icmp_error_forward",
        "drop_malformed",
        "drop_fragment",
        "drop_all_down",
        "drop_too_big_no_df",
        "drop_icmp_error_unroutable",
    ];
    for reason in reached {
        assert!(report.reason(reason) > 0, "no frame was counted as {reason}:\n{report}");
    }
    for reason in ["drop_no_room", "drop_not_configured"] {
        assert_eq!(report.reason(reason), 0, "{reason} means a data-plane or writer bug:\n{report}");
    }
}

/// The oracle has teeth: map state changed behind its back (a down backend brought up, a
/// backend of an all-down VIP brought up, the flows tracked to a draining backend forgotten)
/// must show up as violations of exactly the invariants that state breaks.
#[test]
fn the_oracle_objects_to_map_state_it_was_not_told_about() {
    if !root() {
        return;
    }
    let (mut dataplane, scenario) = fuzz::load().expect("load the data plane and install the scenario");
    let drain = scenario.services.iter().find(|s| s.members.iter().any(|m| m.health == HEALTH_DRAINING)).expect("a drain VIP");
    let down = drain.members.iter().find(|m| m.health == HEALTH_DOWN).expect("a down backend in it");
    dataplane.writer.set_health(down.id, HEALTH_UP).unwrap();
    let all_down = scenario
        .services
        .iter()
        .find(|s| s.owned() && !s.all_down_passes() && s.eligible().next().is_none())
        .expect("an all-down VIP that drops");
    dataplane.writer.set_health(all_down.members[0].id, HEALTH_UP).unwrap();
    for key in &scenario.drained_flows {
        dataplane.counters.forget_flow(key).unwrap();
    }
    let report = fuzz::run_on(&dataplane, &scenario, &fuzz::Options { frames: 20_000, seed: fuzz::DEFAULT_SEED, shown: 3 }).expect("fuzz run");
    println!("{report}");
    for invariant in [Invariant::BackendAllowed, Invariant::FlowKeepsBackend] {
        assert!(report.violations.get(&invariant).copied().unwrap_or(0) > 0, "{invariant} did not fire:\n{report}");
    }
    // Besides: too-big replies from the VIP that should have no live backend (a reply, not a
    // tunnel, so it is a transmit that was not due rather than a backend that was not allowed).
    let expected = [Invariant::BackendAllowed, Invariant::FlowKeepsBackend, Invariant::TransmitOnlyWhenDue];
    let others: Vec<_> = report.violations.keys().filter(|invariant| !expected.contains(invariant)).collect();
    assert!(others.is_empty(), "unrelated invariants fired: {others:?}\n{report}");
}

/// The oracle knows who owns which group: the owned group released and the other one taken
/// over behind its back show up as passes that were not due and as service of a VIP this node
/// does not own, and as nothing else.
#[test]
fn the_oracle_objects_to_ownership_it_was_not_told_about() {
    if !root() {
        return;
    }
    let (dataplane, scenario) = fuzz::load().expect("load the data plane and install the scenario");
    let group_of = |owned: bool| {
        let service = scenario.services.iter().find(|s| vip_group(s.flags) != 0 && s.owned() == owned).expect("a grouped service");
        u8::try_from(vip_group(service.flags)).unwrap()
    };
    let mut ownership = dataplane.ownership().unwrap();
    ownership.set(group_of(true), false).unwrap();
    ownership.set(group_of(false), true).unwrap();
    let report = fuzz::run_on(&dataplane, &scenario, &fuzz::Options { frames: 20_000, seed: fuzz::DEFAULT_SEED, shown: 3 }).expect("fuzz run");
    println!("{report}");
    let expected = [Invariant::NotOwnedPasses, Invariant::PassOnlyWhenDue];
    for invariant in expected {
        assert!(report.violations.get(&invariant).copied().unwrap_or(0) > 0, "{invariant} did not fire:\n{report}");
    }
    let others: Vec<_> = report.violations.keys().filter(|invariant| !expected.contains(invariant)).collect();
    assert!(others.is_empty(), "unrelated invariants fired: {others:?}\n{report}");
}
