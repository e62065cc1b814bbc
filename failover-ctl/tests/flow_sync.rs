//! Flow sync on real packets and processes: the election lab's two nodes with `[flow_sync]`
//! between them. A connection that the table would place elsewhere (opened while its table
//! backend was out) lives only in the master's flow table; the master sends it to the backup,
//! which keeps it where it is when it takes over. The judgement is the connection itself: its
//! requests keep being answered by the same backend across each change of master.
//!
//! Run as root: `cargo test -p failover-ctl --test flow_sync -- --nocapture`.

mod support;

use std::{
    net::{SocketAddrV4, SocketAddr},
    time::Duration,
};

use failover_ctl::{
    daemon::status::FlowSyncStatus,
    flow_sync::{codec, SyncedFlow},
};
use support::*;

const VRID: u8 = 51;
const PREEMPT_DELAY: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_secs(10);
const SYNC_INTERVAL: Duration = Duration::from_millis(100);

fn prerequisites() -> bool {
    root() && netlab::prerequisite::require_program("bridge", "iproute2")
}

/// Two of ours with flow sync: node 0 at priority 150 is master, node 1 at 100.
fn synced_pair() -> ElectionLab {
    let mut lab = ElectionLab::new();
    let group = |priority| GroupSpec { flow_sync: Some(SYNC_INTERVAL), ..GroupSpec::v4(priority, PREEMPT_DELAY) };
    lab.start_ours(0, &group(150));
    lab.start_ours(1, &group(100));
    lab.observer.wait_sole_master(VRID, ElectionLab::source(0), Duration::ZERO, Duration::from_secs(1), SETTLE);
    lab.assert_same_tables();
    lab
}

fn sync_status(lab: &ElectionLab, index: usize) -> FlowSyncStatus {
    let status = lab.ours(index).status().expect("status");
    status.flow_sync.unwrap_or_else(|| panic!("node {index} reports no flow sync"))
}

fn placed(status: &FlowSyncStatus, outcome: &str) -> u64 {
    status.placed.get(outcome).copied().unwrap_or(0)
}

/// Hands the group from node `from` to the other node by `election resign`, on the wire.
fn hand_over(lab: &ElectionLab, from: usize) {
    let to = 1 - from;
    let resigned = wall_now();
    assert!(lab.ours(from).ctl(&["election", "resign", "edge"]).status.success());
    lab.observer.takeover(VRID, ElectionLab::source(from), ElectionLab::source(to), resigned, Duration::from_secs(3));
    lab.wait_neighbour(to);
    lab.wait_state(from, "backup", Duration::from_secs(3));
    // The new master's first sends reach the old one, which let go (and forgot) meanwhile.
    std::thread::sleep(SYNC_INTERVAL * 5);
}

/// The scenario the soak counted as "stale flows": a connection opened while its table backend
/// was out stays on its fallback, and survives two changes of master (node 0 -> 1 -> 0); when
/// its fallback goes, the backup forgets the entry it was sent.
#[test]
fn a_connection_off_the_table_survives_changes_of_master() {
    if !prerequisites() {
        return;
    }
    const PORT: u16 = 45_100;
    let lab = synced_pair();
    let (table, mut connection) = lab.connection_off_the_table(PORT);
    let fallback = connection.backend.clone();

    // Node 0 sends the flow (the table says `table`, the flow is on `fallback`); node 1 places it.
    let sent = wait_for(Duration::from_secs(3), || {
        let (master, backup) = (sync_status(&lab, 0), sync_status(&lab, 1));
        (master.sending >= 1 && placed(&backup, "new") >= 1).then_some((master, backup))
    });
    let (master, backup) = sent.unwrap_or_else(|| {
        panic!("no flow synced: node 0 {:#?}, node 1 {:#?}\n{}", sync_status(&lab, 0), sync_status(&lab, 1), lab.ours(0).logs())
    });
    assert_eq!(master.sending, 1, "one flow is off the table: {master:#?}");
    assert!(backup.discarded.is_empty(), "{backup:#?}");

    hand_over(&lab, 0);
    let through_node_1 = (0..5).map(|_| connection.request()).collect::<Result<Vec<()>, String>>();
    // Node 1 now serves: it sends the flow back to node 0, which forgot it when it let go.
    let back = wait_for(Duration::from_secs(3), || (sync_status(&lab, 1).sending >= 1 && placed(&sync_status(&lab, 0), "new") >= 1).then_some(()));
    hand_over(&lab, 1);
    let through_node_0 = (0..5).map(|_| connection.request()).collect::<Result<Vec<()>, String>>();
    eprintln!(
        "flow-sync-result port {PORT}: table {table}, on {fallback}; through node 1: {through_node_1:?}; back through node 0: {through_node_0:?}; node 0 {:?}, node 1 {:?}",
        sync_status(&lab, 0).placed,
        sync_status(&lab, 1).placed
    );
    assert_eq!(through_node_1, Ok(vec![(); 5]), "the connection broke when node 1 took over");
    assert!(back.is_some(), "node 1 never sent the flow back: node 0 {:#?}, node 1 {:#?}", sync_status(&lab, 0), sync_status(&lab, 1));
    assert_eq!(through_node_0, Ok(vec![(); 5]), "the connection broke when node 0 took over again");

    // The fallback goes too: the master re-places the flow by the table on its next packet and
    // stops sending it; node 1's next complete set lacks it, so node 1 forgets its copy.
    lab.maintenance(&fallback, "on");
    let _ = connection.request();
    let expired = wait_for(Duration::from_secs(3), || (sync_status(&lab, 1).expired >= 1).then_some(()));
    assert!(expired.is_some(), "node 1 kept the flow its peer no longer sends: {:#?}", sync_status(&lab, 1));
    assert_eq!(sync_status(&lab, 0).sending, 0);
    connection.reset();
}

/// Datagrams that are not flow sync, or not from the peer, or whose records name what this
/// node does not have: each is counted by reason and places nothing.
#[test]
fn hostile_sync_datagrams_are_counted_and_change_nothing() {
    if !prerequisites() {
        return;
    }
    let lab = synced_pair();
    let injector = lab.injector();
    let to_backup = SocketAddrV4::new(node_address(1), FLOW_SYNC_PORT);
    let as_master = SocketAddrV4::new(node_address(0), FLOW_SYNC_PORT);
    let flow = |vip: SocketAddr, backend: &str| SyncedFlow {
        client: "10.201.1.2:45200".parse().unwrap(),
        vip,
        protocol: failover_common::maps::PROTOCOL_TCP,
        backend: backend.parse().unwrap(),
    };
    let vip: SocketAddr = SocketAddr::new(VIP.into(), 80);
    let valid = codec::encode(1, &[flow(vip, &backend_address(0).to_string())]).remove(0);
    let mut bad_magic = valid.clone();
    bad_magic[0] = b'X';
    let mut bad_version = valid.clone();
    bad_version[4] = 9;
    let mut truncated = valid.clone();
    truncated.pop();
    let mut bad_family = valid.clone();
    bad_family[codec::HEADER_LEN] = 5;
    let before = sync_status(&lab, 1);
    let sends: Vec<(&str, SocketAddrV4, Vec<u8>)> = vec![
        ("magic", as_master, bad_magic),
        ("version", as_master, bad_version),
        ("length", as_master, truncated),
        ("family", as_master, bad_family),
        ("not_a_peer", SocketAddrV4::new(OBSERVER, FLOW_SYNC_PORT), valid.clone()),
    ];
    for (_, source, payload) in &sends {
        injector.send_udp(*source, to_backup, payload);
    }
    // Well-formed, from the peer, but naming what node 1 does not have.
    let strangers = codec::encode(
        2,
        &[
            flow(SocketAddr::new("10.201.100.9".parse().unwrap(), 80), &backend_address(0).to_string()),
            flow(vip, "10.201.99.2"),
        ],
    )
    .remove(0);
    injector.send_udp(as_master, to_backup, &strangers);
    let counted = wait_for(Duration::from_secs(3), || {
        let now = sync_status(&lab, 1);
        let discards = sends.iter().all(|(reason, _, _)| now.discarded.get(*reason).copied().unwrap_or(0) > before.discarded.get(*reason).copied().unwrap_or(0));
        let refused = placed(&now, "unknown_vip") > placed(&before, "unknown_vip") && placed(&now, "unknown_backend") > placed(&before, "unknown_backend");
        (discards && refused).then_some(now)
    });
    let after = counted.unwrap_or_else(|| panic!("not every hostile datagram was counted: before {before:#?}, after {:#?}", sync_status(&lab, 1)));
    eprintln!("flow-sync-result hostile: discarded {:?}, placed {:?}", after.discarded, after.placed);
    assert_eq!(placed(&after, "new"), placed(&before, "new"), "a hostile datagram placed a flow: {after:#?}");
    // Nothing else moved: node 0 still the sole master, both tables equal.
    lab.observer.wait_sole_master(VRID, ElectionLab::source(0), Duration::ZERO, Duration::from_millis(500), SETTLE);
    lab.assert_same_tables();
}
