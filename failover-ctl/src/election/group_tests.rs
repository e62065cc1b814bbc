//! The group's own checks, tracks and counters, on hand-made datagrams.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use super::*;

const OURS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
const VIRTUAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100));

fn spec() -> GroupSpec {
    GroupSpec {
        name: "edge".into(),
        interface: "eth0".into(),
        vrid: 42,
        priority: 100,
        interval_cs: 10,
        preempt: true,
        preempt_delay: Duration::ZERO,
        addresses: vec![VIRTUAL],
        unicast_peers: Vec::new(),
        checksum: ChecksumForm::PseudoHeader,
        garp_master_delay: Duration::from_secs(5),
        garp_master_refresh: None,
        garp_repeat: 5,
        release_on_stop: false,
        track_weights: vec![-30, -80, 0],
    }
}

fn started(spec: GroupSpec, now: Instant) -> Group {
    let mut group = Group::new(spec, OURS, vec![OURS]);
    group.handle(Event::Start { adopted: false }, now);
    group
}

/// A datagram carrying `advert` from `source` to the multicast group, TTL 255.
fn datagram(advert: &Advert, source: IpAddr, form: ChecksumForm) -> Datagram {
    let destination = IpAddr::V4(MULTICAST_V4);
    Datagram { source, destination, ttl: 255, message: advert.encode(source, destination, form) }
}

fn advert(priority: u8) -> Advert {
    Advert { vrid: 42, priority, interval_cs: 10, addresses: vec![VIRTUAL] }
}

#[test]
fn tracks_lower_the_priority_and_a_zero_weight_faults() {
    let now = Instant::now();
    let mut group = started(spec(), now);
    assert_eq!(group.effective_priority(), 100);
    group.track(0, true, now);
    assert_eq!(group.effective_priority(), 70);
    assert_eq!(group.machine().priority(), 70, "the machine advertises the effective priority");
    group.track(1, true, now);
    assert_eq!(group.effective_priority(), 1, "clamped to 1");
    group.track(0, false, now);
    group.track(1, false, now);
    assert_eq!(group.effective_priority(), 100);
    let actions = group.track(2, true, now);
    assert_eq!(group.machine().state(), State::Fault, "{actions:?}");
    group.track(2, false, now);
    assert_eq!(group.machine().state(), State::Backup);

    // The operator's temporary priority replaces the base; tracks still apply.
    group.track(0, true, now);
    group.set_priority(Some(200), now);
    assert_eq!(group.effective_priority(), 170);
    group.set_priority(None, now);
    assert_eq!(group.effective_priority(), 70);
    group.track(0, false, now);

    let mut owner = spec();
    owner.priority = 255;
    let mut owner = started(owner, now);
    assert_eq!(owner.effective_priority(), 255);
    owner.track(0, true, now);
    assert_eq!(owner.effective_priority(), 225, "an owner with a failed track is an owner no more");
}

#[test]
fn the_groups_own_link_is_always_tracked() {
    let now = Instant::now();
    let mut spec = spec();
    spec.track_weights.clear();
    let mut group = started(spec, now);
    group.handle(Event::Timer, now + group.machine().master_down_interval());
    assert_eq!(group.machine().state(), State::Master);
    assert_eq!(group.link(true, now), vec![], "a link that stays up changes nothing");
    let actions = group.link(false, now + Duration::from_secs(1));
    assert_eq!(group.machine().state(), State::Fault, "{actions:?}");
    assert!(actions.contains(&Action::Own(false)) && actions.contains(&Action::Addresses(false)), "{actions:?}");
    assert!(group.link_down());
    assert_eq!(group.link(false, now + Duration::from_secs(2)), vec![]);
    group.link(true, now + Duration::from_secs(3));
    assert_eq!(group.machine().state(), State::Backup);
    assert!(!group.link_down());
}

#[test]
fn every_group_check_counts_and_changes_nothing() {
    let now = Instant::now();
    let mut group = started(spec(), now);
    let deadline = group.machine().deadline();
    let wrong_vrid = Advert { vrid: 43, ..advert(254) };
    let wrong_list = Advert { addresses: vec![VIRTUAL, STRANGER], ..advert(254) };
    let mut cases = vec![
        ("wrong VRID", datagram(&wrong_vrid, PEER, ChecksumForm::PseudoHeader), Discard::VrId),
        ("other address list", datagram(&wrong_list, PEER, ChecksumForm::PseudoHeader), Discard::AddressList),
        ("other checksum form", datagram(&advert(254), PEER, ChecksumForm::Rfc9568), Discard::ChecksumFormMismatch),
    ];
    let mut low_ttl = datagram(&advert(254), PEER, ChecksumForm::PseudoHeader);
    low_ttl.ttl = 254;
    cases.push(("TTL 254", low_ttl, Discard::IpTtl));
    let mut truncated = datagram(&advert(254), PEER, ChecksumForm::PseudoHeader);
    truncated.message.truncate(10);
    cases.push(("truncated", truncated, Discard::PacketLength));
    let mut version2 = datagram(&advert(254), PEER, ChecksumForm::PseudoHeader);
    version2.message[0] = 0x21;
    cases.push(("version 2", version2, Discard::Version));
    let mut bad_sum = datagram(&advert(254), PEER, ChecksumForm::PseudoHeader);
    bad_sum.message[6] ^= 0xff;
    cases.push(("bad checksum", bad_sum, Discard::Checksum));
    for (name, datagram, reason) in cases {
        assert_eq!(group.receive(&datagram, now + Duration::from_millis(10)), Err(reason), "{name}");
        assert_eq!(group.counters().discarded.get(reason.name()), Some(&1), "{name}: counted once");
        assert_eq!(group.machine().state(), State::Backup, "{name}");
        assert_eq!(group.machine().deadline(), deadline, "{name}: the down timer is untouched");
        assert_eq!(group.counters().adverts_received, 0, "{name}");
    }
}

#[test]
fn adverts_from_ourselves_are_ignored_without_a_count() {
    let now = Instant::now();
    let mut group = started(spec(), now);
    assert_eq!(group.receive(&datagram(&advert(254), OURS, ChecksumForm::PseudoHeader), now), Ok(None));
    assert_eq!(group.counters(), &Counters::default());
}

#[test]
fn a_valid_advert_reaches_the_state_machine() {
    let now = Instant::now();
    let mut group = started(spec(), now);
    // Listed in another order: the same set of addresses.
    let mut two = spec();
    two.addresses = vec![VIRTUAL, STRANGER];
    let mut group_two = started(two, now);
    let reordered = Advert { addresses: vec![STRANGER, VIRTUAL], ..advert(150) };
    assert!(group_two.receive(&datagram(&reordered, PEER, ChecksumForm::PseudoHeader), now).is_ok());

    assert!(group.receive(&datagram(&advert(150), PEER, ChecksumForm::PseudoHeader), now).unwrap().is_some());
    assert_eq!(group.machine().master(), Some(PEER));
    assert!(group.receive(&datagram(&advert(0), PEER, ChecksumForm::PseudoHeader), now).is_ok());
    assert_eq!(group.counters().adverts_received, 2);
    assert_eq!(group.counters().priority_zero_received, 1);
}

#[test]
fn unicast_groups_hear_only_their_peers_and_send_to_each() {
    let now = Instant::now();
    let mut unicast = spec();
    unicast.unicast_peers = vec![PEER, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))];
    let mut group = started(unicast, now);
    assert_eq!(group.receive(&datagram(&advert(150), STRANGER, ChecksumForm::PseudoHeader), now), Err(Discard::UnknownPeer));
    assert!(group.receive(&datagram(&advert(150), PEER, ChecksumForm::PseudoHeader), now).is_ok());
    let sent = group.advert(100);
    assert_eq!(sent.iter().map(|(to, _)| *to).collect::<Vec<_>>(), group.spec().unicast_peers);
    for (destination, message) in &sent {
        let received = codec::Received { source: OURS, destination: *destination, ttl: 255, message };
        assert_eq!(codec::decode(&received, ChecksumForm::PseudoHeader), Ok(advert(100)));
    }
    let multicast = started(spec(), now).advert(100);
    assert_eq!(multicast.len(), 1);
    assert_eq!(multicast[0].0, IpAddr::V4(MULTICAST_V4));
}

#[test]
fn counters_follow_what_is_sent_and_the_transitions() {
    let now = Instant::now();
    let mut group = started(spec(), now);
    let down = group.machine().deadline().unwrap();
    group.handle(Event::Timer, down);
    assert_eq!(group.machine().state(), State::Master);
    assert_eq!(group.counters().master_transitions, 1);
    assert_eq!(group.counters().adverts_sent, 1);
    assert_eq!(group.last_transition().map(|t| t.reason), Some(Reason::MasterDown));
    group.handle(Event::Resign, down + Duration::from_secs(1));
    assert_eq!(group.counters().priority_zero_sent, 1);
    assert_eq!(group.last_transition().map(|t| t.to), Some(State::Backup));
}

#[test]
fn the_vrid_of_a_datagram_picks_its_group() {
    let datagram = datagram(&advert(100), PEER, ChecksumForm::PseudoHeader);
    assert_eq!(vrid_of(&datagram), Some(42));
    assert_eq!(vrid_of(&Datagram { message: vec![0x31], ..datagram }), None);
}
