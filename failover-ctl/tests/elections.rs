//! Elections on real packets and processes: two load-balancer nodes on one segment (our daemon
//! on both, or ours against keepalived 2.2.7), a router that routes the VIP to the VRRP address,
//! backends behind it, and an observer that records every advert. Mastership is judged from the
//! wire and from keepalived's log, not only from our own status; traffic through the VIP (keep-
//! alive HTTP connections, new connections, a 1 kHz UDP sequence stream) is counted exactly
//! across every move. Each test prints an `election-result` line with its numbers.
//!
//! Run as root: `cargo test -p failover-ctl --test elections -- --nocapture`.

mod support;

use std::{net::IpAddr, time::Duration};

use support::*;

/// The group's VRID in every IPv4 scenario.
const VRID: u8 = 51;
/// Long enough for a returning node's probes to settle (rise x interval plus a timeout and the
/// router's neighbour entry after a link flap), short enough for the suite.
const PREEMPT_DELAY: Duration = Duration::from_secs(1);
/// Slack for scheduling on 2 vCPUs where a check is about an interval, not an RFC bound.
const SLACK: Duration = Duration::from_millis(30);
/// How long a role must hold for a scenario to call it stable.
const STEADY: Duration = Duration::from_millis(1500);
const SETTLE: Duration = Duration::from_secs(10);

fn prerequisites() -> bool {
    root() && netlab::prerequisite::require_program("keepalived", "keepalived") && netlab::prerequisite::require_program("bridge", "iproute2")
}

fn node(index: usize) -> IpAddr {
    ElectionLab::source(index)
}

/// Two of ours: node 0 at priority 150, node 1 at 100; node 0 is the steady master.
fn two_of_ours() -> ElectionLab {
    let mut lab = ElectionLab::new();
    lab.start_ours(0, &GroupSpec::v4(150, PREEMPT_DELAY));
    lab.start_ours(1, &GroupSpec::v4(100, PREEMPT_DELAY));
    lab.observer.wait_sole_master(VRID, node(0), Duration::ZERO, Duration::from_secs(1), SETTLE);
    lab.assert_same_tables();
    lab
}


fn traffic(lab: &ElectionLab) -> (Load, UdpStream) {
    let load = Load::start(&lab.segment.client, 80, &["b0", "b1", "b2"], 2);
    let stream = UdpStream::start(&lab.segment.client);
    std::thread::sleep(Duration::from_millis(300));
    (load, stream)
}


/// Scenario 1, kill -9 of the master's daemon: its data plane keeps forwarding with its
/// ownership, so nothing is lost while the backup takes over (its down timer runs out: nobody
/// advertises); the restarted daemon adopts, follows without a gratuitous ARP, and preempts back
/// after its delay, breaking nothing.
#[test]
fn kill9_of_the_master_daemon_loses_nothing() {
    if !prerequisites() {
        return;
    }
    let mut lab = two_of_ours();
    let (load, stream) = traffic(&lab);
    let killed = wall_now();
    lab.kill9(0);
    let takeover = lab.observer.takeover(VRID, node(0), node(1), killed, Duration::from_secs(3));
    lab.wait_neighbour(1);
    std::thread::sleep(Duration::from_millis(500));
    let (load, udp) = (load.finish(), stream.finish(&lab.sinks));
    let bound = master_down_interval(100) + ADVERT_INTERVAL;
    report(
        "1 kill -9 of the master daemon",
        Row { takeover: Some(takeover.took), bound: Some(bound), bound_name: "MDI + 1 interval", load: Some(&load), udp_lost: Some((udp.lost, udp.sent)) },
    );
    assert!(takeover.took <= bound, "takeover {:?} over {bound:?}", takeover.took);
    assert_unbroken("across the kill", &load);
    assert_one_backend("across the kill", &udp);
    assert_eq!(udp.lost, 0, "the killed node's data plane forwards until the router moves: nothing may be lost");

    let (load, stream) = traffic(&lab);
    let restarted = wall_now();
    lab.ours_mut(0).spawn();
    let back = lab.observer.takeover(VRID, node(1), node(0), restarted, PREEMPT_DELAY + Duration::from_secs(3));
    let waited = back.first_new.at.saturating_sub(restarted);
    let mac = lab.segment.nodes[0].mac("l0").unwrap();
    let early: Vec<ArpSeen> = lab.observer.arps().into_iter().filter(|arp| arp.sender_mac == mac && arp.sender == VRRP_ADDRESS && arp.at >= restarted && arp.at < back.first_new.at).collect();
    assert!(early.is_empty(), "the restarted daemon announced before it was master: {early:?}");
    lab.wait_neighbour(0);
    std::thread::sleep(Duration::from_millis(300));
    let (load, udp) = (load.finish(), stream.finish(&lab.sinks));
    report("1 restarted daemon preempts back", Row { takeover: Some(back.took), load: Some(&load), udp_lost: Some((udp.lost, udp.sent)), ..Row::default() });
    eprintln!("election-result 1 restarted daemon: master again {} ms after its start (preempt_delay {} ms)", waited.as_millis(), PREEMPT_DELAY.as_millis());
    assert!(waited >= PREEMPT_DELAY, "the restarted node preempted after {waited:?}, before its delay");
    assert_unbroken("across the restart and preemption", &load);
    assert_one_backend("across the restart and preemption", &udp);
    let group = lab.group(0);
    assert_eq!((group.state.as_str(), group.owned), ("master", true));
}

/// Scenarios 2 and 4: the master's link goes down and the backup takes over within
/// Master_Down_Interval + one interval (on the wire); when the link is back the node preempts
/// only after its delay. No established connection breaks across both moves and the UDP flow
/// never changes backend, which only identical tables on both nodes allow.
#[test]
fn link_down_takeover_then_preempt_back_after_the_delay() {
    if !prerequisites() {
        return;
    }
    let lab = two_of_ours();
    let (load, stream) = traffic(&lab);
    let down = wall_now();
    lab.segment.set_link(0, false);
    let takeover = lab.observer.takeover(VRID, node(0), node(1), down, Duration::from_secs(3));
    lab.wait_neighbour(1);
    std::thread::sleep(STEADY);

    let up = wall_now();
    lab.segment.set_link(0, true);
    let back = lab.observer.takeover(VRID, node(1), node(0), up, PREEMPT_DELAY + Duration::from_secs(3));
    let waited = back.first_new.at.saturating_sub(up);
    lab.wait_neighbour(0);
    std::thread::sleep(Duration::from_millis(500));
    let end = wall_now();
    let (load, udp) = (load.finish(), stream.finish(&lab.sinks));
    let bound = master_down_interval(100) + ADVERT_INTERVAL;
    report(
        "2 master's link down",
        Row {
            takeover: Some(takeover.took),
            bound: Some(bound),
            bound_name: "MDI + 1 interval",
            load: Some(&load),
            udp_lost: Some((udp.lost_between(down, up), udp.sent_between(down, up))),
        },
    );
    report(
        "4 preempt back after the delay",
        Row { takeover: Some(back.took), udp_lost: Some((udp.lost_between(up, end), udp.sent_between(up, end))), ..Row::default() },
    );
    eprintln!("election-result 4: node 0 master again {} ms after its link came back (preempt_delay {} ms)", waited.as_millis(), PREEMPT_DELAY.as_millis());
    assert!(takeover.took <= bound, "takeover {:?} over {bound:?}", takeover.took);
    assert!(waited >= PREEMPT_DELAY, "node 0 preempted {waited:?} after its link came back, before its delay: the wire {}", lab.observer.describe(VRID, up));
    assert_unbroken("across both moves", &load);
    assert_one_backend("across both moves", &udp);
}

/// Scenario 3, `election resign`: the backup takes over within Skew_Time + 20 ms of the
/// priority-0 advert, and the resigned node does not preempt back.
#[test]
fn resign_hands_over_within_skew() {
    if !prerequisites() {
        return;
    }
    let lab = two_of_ours();
    let (load, stream) = traffic(&lab);
    let resigned = wall_now();
    let output = lab.ours(0).ctl(&["election", "resign", "edge"]);
    assert!(output.status.success(), "election resign: {}", String::from_utf8_lossy(&output.stderr));
    let takeover = lab.observer.takeover(VRID, node(0), node(1), resigned, Duration::from_secs(3));
    assert_eq!(takeover.last_old.priority, 0, "the old master's last advert resigns: {:?}", takeover.last_old);
    lab.wait_neighbour(1);
    lab.observer.wait_sole_master(VRID, node(1), takeover.first_new.at, STEADY, STEADY + Duration::from_secs(1));
    let (load, udp) = (load.finish(), stream.finish(&lab.sinks));
    let bound = skew(100) + Duration::from_millis(20);
    report(
        "3 election resign",
        Row { takeover: Some(takeover.took), bound: Some(bound), bound_name: "skew + 20 ms", load: Some(&load), udp_lost: Some((udp.lost, udp.sent)) },
    );
    assert!(takeover.took <= bound, "takeover {:?} over {bound:?}", takeover.took);
    assert_unbroken("across the resign", &load);
    assert_one_backend("across the resign", &udp);
    let group = lab.group(0);
    assert_eq!((group.state.as_str(), group.owned, group.counters.priority_zero_sent), ("backup", false, 1), "{group:#?}");
    // The notify command ran with keepalived's four arguments on both nodes, as nobody (the
    // default script_user), never as root.
    let notified = |index: usize| std::fs::read_to_string(notify_log(&lab.ours(index).instance)).unwrap_or_default();
    let (old, new) = (notified(0), notified(1));
    let nobody = failover_ctl::config::ScriptUser::lookup("nobody").unwrap().expect("user nobody").uid;
    for line in old.lines().chain(new.lines()) {
        assert!(line.ends_with(&format!(" {nobody}")), "a notify ran as another user than nobody (uid {nobody}): {line:?}");
    }
    assert!(old.lines().any(|line| line.starts_with("GROUP edge MASTER ")) && old.lines().last().is_some_and(|line| line.starts_with("GROUP edge BACKUP ")), "node 0 notify log:\n{old}");
    assert!(new.lines().last().is_some_and(|line| line.starts_with("GROUP edge MASTER ")), "node 1 notify log:\n{new}");
}

/// A node that serves a group again must not follow what it tracked before: a client port used
/// while a backend was out (the flow placed on another backend), reused for a new connection
/// while the other node was master (placed by the full table, as that node chose), would be sent
/// to the old backend when mastership comes back, and reset. Node 0 forgets the group's flows
/// when it lets go; the connection opened through node 1 carries on through node 0, on the
/// same backend.
#[test]
fn a_returning_master_follows_the_table_not_its_old_flows() {
    if !prerequisites() {
        return;
    }
    const PORT: u16 = 45_000;
    let lab = two_of_ours();
    let client = &lab.segment.client;
    // Node 0 keeps the port's entry on another backend than the table's after the connection.
    let (chosen, connection) = lab.connection_off_the_table(PORT);
    let elsewhere = connection.backend.clone();
    connection.reset();

    // Node 1 takes over; a new connection from the same port is placed by the table.
    let resigned = wall_now();
    assert!(lab.ours(0).ctl(&["election", "resign", "edge"]).status.success());
    lab.observer.takeover(VRID, node(0), node(1), resigned, Duration::from_secs(3));
    lab.wait_neighbour(1);
    lab.wait_state(0, "backup", Duration::from_secs(3));
    let forgot = wait_for(Duration::from_secs(3), || lab.ours(0).events().into_iter().find(|event| event.detail.contains("forgot")));
    let mut connection = Connection::open_from(client, 80, PORT).unwrap();
    assert_eq!(connection.backend, chosen, "through node 1 the port goes where the table says");

    // Node 0 back: node 1 resigns. The connection must carry on with its backend.
    let handed_back = wall_now();
    assert!(lab.ours(1).ctl(&["election", "resign", "edge"]).status.success());
    lab.observer.takeover(VRID, node(1), node(0), handed_back, Duration::from_secs(3));
    lab.wait_neighbour(0);
    std::thread::sleep(Duration::from_millis(300));
    let outcome = (0..5).map(|_| connection.request()).collect::<Result<Vec<()>, String>>();
    eprintln!(
        "election-result stale flows: port {PORT} on {chosen}, on {elsewhere} while {chosen} was out; node 0 on letting go: {:?}; through node 0 again: {outcome:?}",
        forgot.as_ref().map(|event| event.detail.as_str())
    );
    assert!(forgot.is_some(), "node 0 recorded no forgetting: {:#?}", lab.ours(0).events());
    assert_eq!(outcome, Ok(vec![(); 5]), "the connection broke when node 0 served again (its old entry sent it to {elsewhere})");
    connection.reset();
}

/// `election priority`: the backup raised above the master preempts it (its delay has long
/// passed) within a down interval, on the wire; the master hears it and follows; both report
/// the priorities they advertise.
#[test]
fn a_temporary_priority_moves_the_master() {
    if !prerequisites() {
        return;
    }
    let lab = two_of_ours();
    let raised = wall_now();
    let output = lab.ours(1).ctl(&["election", "priority", "edge", "200"]);
    assert!(output.status.success(), "election priority: {}", String::from_utf8_lossy(&output.stderr));
    let takeover = lab.observer.takeover(VRID, node(0), node(1), raised, Duration::from_secs(3));
    assert_eq!(takeover.first_new.priority, 200, "the new master advertises the operator's priority: {:?}", takeover.first_new);
    lab.observer.wait_sole_master(VRID, node(1), takeover.first_new.at, STEADY, STEADY + Duration::from_secs(1));
    // Preemption: the master's adverts at 150 are ignored until the down interval at 200 runs out.
    let bound = master_down_interval(200) + Duration::from_millis(100) + SLACK;
    assert!(takeover.took <= bound, "preempted after {:?}, bound {bound:?}", takeover.took);
    let (new, old) = (lab.group(1), lab.group(0));
    assert_eq!((new.state.as_str(), new.priority, new.effective_priority), ("master", 100, 200), "{new:#?}");
    assert_eq!((old.state.as_str(), old.effective_priority), ("backup", 150), "{old:#?}");
    let refused = lab.ours(1).ctl(&["election", "priority", "edge", "255"]);
    assert!(!refused.status.success(), "255 is the owner's, not a temporary priority");
    let unknown = lab.ours(1).ctl(&["election", "resign", "nosuch"]);
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("no election named"), "{unknown:?}");
}

/// Scenario 12, split brain: with the nodes cut off from each other (both still reach the
/// router) both become master and traffic keeps flowing; after the heal there is exactly one
/// master and the router's neighbour entry for the VRRP address is on its MAC.
#[test]
fn split_brain_keeps_serving_and_heals_to_one_master() {
    if !prerequisites() {
        return;
    }
    let lab = two_of_ours();
    let (load, stream) = traffic(&lab);
    let cut = wall_now();
    lab.segment.partition(true);
    let second = wait_for(Duration::from_secs(3), || lab.observer.first_from(VRID, node(1), cut));
    let second = second.unwrap_or_else(|| panic!("node 1 never became master in the partition: {}", lab.observer.describe(VRID, cut)));
    lab.wait_neighbour(1);
    std::thread::sleep(Duration::from_millis(800));
    let split = lab.observer.masters_between(VRID, second.at, wall_now());
    assert_eq!(split, vec![node(0), node(1)], "both nodes master during the partition");

    let healed = wall_now();
    lab.segment.partition(false);
    lab.observer.wait_sole_master(VRID, node(0), healed, Duration::from_secs(1), Duration::from_secs(4));
    lab.wait_neighbour(0);
    let loser_last = lab.observer.last_before(VRID, node(1), wall_now()).expect("node 1 advertised");
    let (load, udp) = (load.finish(), stream.finish(&lab.sinks));
    report(
        "12 split brain",
        Row {
            takeover: Some(second.at.saturating_sub(cut)),
            bound: Some(master_down_interval(100) + ADVERT_INTERVAL),
            bound_name: "second master after MDI + 1 interval",
            load: Some(&load),
            udp_lost: Some((udp.lost, udp.sent)),
        },
    );
    eprintln!("election-result 12: one master again {} ms after the heal (node 1's last advert)", loser_last.at.saturating_sub(healed).as_millis());
    assert_unbroken("through the split brain and its heal", &load);
    assert_one_backend("through the split brain and its heal", &udp);
    let loser = lab.group(1);
    assert_eq!((loser.state.as_str(), loser.owned), ("backup", false), "{loser:#?}");
}

/// Our group's address and its state as our status gives it, with the quiet-role checks.
fn assert_quiet_backup(lab: &ElectionLab, index: usize, master: IpAddr) {
    let group = lab.group(index);
    assert_eq!((group.state.as_str(), group.owned, group.master.as_str()), ("backup", false, master.to_string().as_str()), "{group:#?}");
    assert!(group.counters.adverts_received >= 10, "our backup hears the master: {group:#?}");
    assert_no_discards("our backup", &group);
}

/// Scenario 5: keepalived master, ours backup; each keeps its role with nothing refused on
/// either side, and ours takes over when keepalived is killed.
#[test]
fn keepalived_master_and_ours_backup() {
    if !prerequisites() {
        return;
    }
    let mut lab = ElectionLab::new();
    let group = GroupSpec::v4(100, PREEMPT_DELAY);
    lab.start_keepalived(1, &group.keepalived(150));
    lab.observer.wait_sole_master(VRID, node(1), Duration::ZERO, Duration::from_millis(500), SETTLE);
    lab.start_ours(0, &group);
    let joined = wall_now();
    lab.observer.wait_sole_master(VRID, node(1), joined, STEADY, STEADY + SETTLE);
    assert_quiet_backup(&lab, 0, node(1));
    assert_eq!((lab.keepalived(1).entered("MASTER"), lab.keepalived(1).entered("BACKUP")), (1, 1), "{}", lab.keepalived(1).log());
    assert_keepalived_content("keepalived master", lab.keepalived(1));

    let killed = wall_now();
    lab.kill9(1);
    let takeover = lab.observer.takeover(VRID, node(1), node(0), killed, Duration::from_secs(3));
    let bound = master_down_interval(100) + ADVERT_INTERVAL;
    report(
        "5 keepalived master killed, ours takes over",
        Row { takeover: Some(takeover.took), bound: Some(bound), bound_name: "MDI + 1 interval", ..Row::default() },
    );
    assert!(takeover.took <= bound, "takeover {:?} over {bound:?}", takeover.took);
    let group = lab.wait_state(0, "master", Duration::from_secs(1));
    assert!(group.owned && group.counters.master_transitions == 1, "{group:#?}");
    // The router had no entry for the VRRP address (keepalived's node serves nothing): it
    // resolves it now, and ours answers for it and serves the VIP.
    let serving = wait_for(Duration::from_secs(3), || short_requests(&lab.segment.client, 80, 1).errors.is_empty().then_some(()));
    assert!(serving.is_some(), "ours does not serve the VIP after taking over");
    let tally = short_requests(&lab.segment.client, 80, 20);
    assert!(tally.errors.is_empty() && tally.total() == 20, "ours serves the VIP once master: {tally:?}");
    lab.wait_neighbour(0);
}

/// Scenario 6: ours master, keepalived backup; keepalived accepts our adverts (stays backup,
/// logs nothing against them) and takes over when our daemon is killed.
#[test]
fn ours_master_and_keepalived_backup() {
    if !prerequisites() {
        return;
    }
    let mut lab = ElectionLab::new();
    let group = GroupSpec::v4(150, PREEMPT_DELAY);
    lab.start_ours(0, &group);
    lab.observer.wait_sole_master(VRID, node(0), Duration::ZERO, Duration::from_millis(500), SETTLE);
    lab.start_keepalived(1, &group.keepalived(100));
    let joined = wall_now();
    lab.keepalived(1).wait_entered("BACKUP", 1, Duration::from_secs(5));
    lab.observer.wait_sole_master(VRID, node(0), joined, STEADY, STEADY + SETTLE);
    assert_eq!(lab.keepalived(1).entered("MASTER"), 0, "keepalived took over, so it refused our adverts:\n{}", lab.keepalived(1).log());
    assert_keepalived_content("keepalived backup", lab.keepalived(1));
    let ours = lab.group(0);
    assert_eq!((ours.state.as_str(), ours.owned), ("master", true), "{ours:#?}");
    assert_no_discards("our master", &ours);

    let killed = wall_now();
    lab.kill9(0);
    let takeover = lab.observer.takeover(VRID, node(0), node(1), killed, Duration::from_secs(3));
    let bound = master_down_interval(100) + ADVERT_INTERVAL;
    report(
        "6 ours master killed, keepalived takes over",
        Row { takeover: Some(takeover.took), bound: Some(bound), bound_name: "MDI + 1 interval", ..Row::default() },
    );
    assert!(takeover.took <= bound, "takeover {:?} over {bound:?}", takeover.took);
    lab.keepalived(1).wait_entered("MASTER", 1, Duration::from_secs(1));
}

/// One tie: ours on node `ours`, keepalived on the other, both at priority 100; `ours_first`
/// starts first. A node that hears a master of equal priority follows it (RFC 9568 §6.4.2), so
/// the tie rule is between two masters: the second starts behind a partition and both are
/// master when it heals; the wire must then show node 1 (the higher address) alone.
fn tie(ours: usize, ours_first: bool) {
    let theirs = 1 - ours;
    let mut lab = ElectionLab::new();
    let group = GroupSpec::v4(100, Duration::ZERO);
    let start = |lab: &mut ElectionLab, index: usize| {
        if index == ours {
            lab.start_ours(index, &group);
        } else {
            lab.start_keepalived(index, &group.keepalived(100));
        }
    };
    let (first, second) = if ours_first { (ours, theirs) } else { (theirs, ours) };
    start(&mut lab, first);
    lab.observer.wait_sole_master(VRID, node(first), Duration::ZERO, Duration::from_millis(500), SETTLE);
    lab.segment.partition(true);
    let since = wall_now();
    start(&mut lab, second);
    let found = wait_for(SETTLE, || lab.observer.first_from(VRID, node(second), since));
    assert!(found.is_some(), "node {second} never became master behind the partition: {}", lab.observer.describe(VRID, since));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.observer.masters_between(VRID, wall_now() - Duration::from_millis(250), wall_now()), vec![node(0), node(1)], "two masters");
    let healed = wall_now();
    lab.segment.partition(false);
    // Node 1 has the higher address (10.201.2.3).
    lab.observer.wait_sole_master(VRID, node(1), healed, STEADY, STEADY + Duration::from_secs(3));
    let loser_last = lab.observer.last_before(VRID, node(0), wall_now()).expect("node 0 advertised");
    eprintln!(
        "election-result 7 tie, ours on node {ours}, {} first: one master (the higher address) {} ms after the heal",
        if ours_first { "ours" } else { "keepalived" },
        loser_last.at.saturating_sub(healed).as_millis()
    );
    let status = lab.group(ours);
    let expected = if ours == 1 { "master" } else { "backup" };
    assert_eq!(status.state, expected, "{status:#?}");
    assert_no_discards("ours in the tie", &status);
    let keepalived = lab.keepalived(theirs);
    assert_keepalived_content("keepalived in the tie", keepalived);
    let last_state = if keepalived.log().rfind("Entering MASTER STATE") > keepalived.log().rfind("Entering BACKUP STATE") { "master" } else { "backup" };
    assert_eq!(last_state, if theirs == 1 { "master" } else { "backup" }, "keepalived's last state:\n{}", keepalived.log());
}

/// Scenario 7, priority tie with ours on the lower address: keepalived (higher) wins, whoever
/// started first.
#[test]
fn tie_goes_to_the_higher_address_keepalived() {
    if !prerequisites() {
        return;
    }
    tie(0, true);
    tie(0, false);
}

/// Scenario 7, priority tie with ours on the higher address: ours wins, whoever started first.
#[test]
fn tie_goes_to_the_higher_address_ours() {
    if !prerequisites() {
        return;
    }
    tie(1, true);
    tie(1, false);
}

/// Scenario 8, our side: with `preempt = false` a higher-priority node of ours stays backup
/// under keepalived's lower master; with preempt it takes over after its delay.
#[test]
fn our_nopreempt_then_preempt_against_keepalived() {
    if !prerequisites() {
        return;
    }
    let mut lab = ElectionLab::new();
    let mut group = GroupSpec::v4(200, Duration::from_millis(500));
    lab.start_keepalived(1, &group.keepalived(100));
    lab.observer.wait_sole_master(VRID, node(1), Duration::ZERO, Duration::from_millis(500), SETTLE);
    group.preempt = false;
    lab.start_ours(0, &group);
    let joined = wall_now();
    lab.observer.wait_sole_master(VRID, node(1), joined, STEADY, STEADY + SETTLE);
    assert_quiet_backup(&lab, 0, node(1));

    lab.remove(0);
    group.preempt = true;
    let started = wall_now();
    lab.start_ours(0, &group);
    let takeover = lab.observer.takeover(VRID, node(1), node(0), started, Duration::from_secs(5));
    let waited = takeover.first_new.at.saturating_sub(started);
    eprintln!("election-result 8 ours preempts keepalived {} ms after its start (preempt_delay 500 ms)", waited.as_millis());
    assert!(waited >= group.preempt_delay, "preempted after {waited:?}, before the delay");
    lab.keepalived(1).wait_entered("BACKUP", 2, Duration::from_secs(2));
    lab.observer.wait_sole_master(VRID, node(0), takeover.first_new.at, Duration::from_secs(1), Duration::from_secs(3));
    assert_keepalived_content("keepalived preempted", lab.keepalived(1));
    assert_no_discards("ours", &lab.group(0));
}

/// Scenario 8, keepalived's side: with `nopreempt` (and `state BACKUP`, which it requires) a
/// higher-priority keepalived stays backup under our lower master; without, it takes over.
#[test]
fn keepalived_nopreempt_then_preempt_against_ours() {
    if !prerequisites() {
        return;
    }
    let mut lab = ElectionLab::new();
    let group = GroupSpec::v4(100, PREEMPT_DELAY);
    lab.start_ours(0, &group);
    lab.observer.wait_sole_master(VRID, node(0), Duration::ZERO, Duration::from_millis(500), SETTLE);
    let mut theirs = group.keepalived(200);
    theirs.nopreempt = true;
    lab.start_keepalived(1, &theirs);
    let joined = wall_now();
    lab.keepalived(1).wait_entered("BACKUP", 1, Duration::from_secs(5));
    lab.observer.wait_sole_master(VRID, node(0), joined, STEADY, STEADY + SETTLE);
    assert_eq!(lab.keepalived(1).entered("MASTER"), 0, "{}", lab.keepalived(1).log());
    assert_keepalived_content("keepalived nopreempt", lab.keepalived(1));

    lab.remove(1);
    theirs.nopreempt = false;
    let started = wall_now();
    lab.start_keepalived(1, &theirs);
    let takeover = lab.observer.takeover(VRID, node(0), node(1), started, Duration::from_secs(5));
    eprintln!("election-result 8 keepalived preempts ours {} ms after its start", takeover.first_new.at.saturating_sub(started).as_millis());
    let ours = lab.wait_state(0, "backup", Duration::from_secs(1));
    assert_eq!(ours.last_transition.as_ref().map(|transition| transition.reason.as_str()), Some("higher_priority"), "{ours:#?}");
    assert_no_discards("ours preempted", &ours);
    assert_keepalived_content("keepalived preempting", lab.keepalived(1));
}

/// Scenario 9: unicast adverts with keepalived (`unicast_src_ip`, `unicast_peer {}`), in both
/// directions. The observer is a third peer of both, so the wire record sees every advert.
#[test]
fn unicast_peers_with_keepalived_both_ways() {
    if !prerequisites() {
        return;
    }
    let mut lab = ElectionLab::new();
    let mut group = GroupSpec::v4(100, PREEMPT_DELAY);
    group.unicast_peers = vec![node(1), IpAddr::V4(OBSERVER)];
    let theirs = |priority| {
        let mut spec = group.keepalived(priority);
        spec.unicast_source = Some(node(1));
        spec.unicast_peers = vec![node(0), IpAddr::V4(OBSERVER)];
        spec
    };
    let begin = wall_now();
    lab.start_keepalived(1, &theirs(150));
    lab.observer.wait_sole_master(VRID, node(1), Duration::ZERO, Duration::from_millis(500), SETTLE);
    lab.start_ours(0, &group);
    let joined = wall_now();
    lab.observer.wait_sole_master(VRID, node(1), joined, STEADY, STEADY + SETTLE);
    assert_quiet_backup(&lab, 0, node(1));
    assert_keepalived_content("keepalived unicast master", lab.keepalived(1));

    let killed = wall_now();
    lab.kill9(1);
    let takeover = lab.observer.takeover(VRID, node(1), node(0), killed, Duration::from_secs(3));
    let bound = master_down_interval(100) + ADVERT_INTERVAL;
    report(
        "9 unicast: keepalived master killed, ours takes over",
        Row { takeover: Some(takeover.took), bound: Some(bound), bound_name: "MDI + 1 interval", ..Row::default() },
    );
    assert!(takeover.took <= bound, "takeover {:?} over {bound:?}", takeover.took);

    lab.remove(1);
    lab.start_keepalived(1, &theirs(50));
    let joined = wall_now();
    lab.keepalived(1).wait_entered("BACKUP", 1, Duration::from_secs(5));
    lab.observer.wait_sole_master(VRID, node(0), joined, STEADY, STEADY + SETTLE);
    assert_eq!(lab.keepalived(1).entered("MASTER"), 0, "keepalived refused our unicast adverts:\n{}", lab.keepalived(1).log());
    assert_keepalived_content("keepalived unicast backup", lab.keepalived(1));
    let killed = wall_now();
    lab.kill9(0);
    let takeover = lab.observer.takeover(VRID, node(0), node(1), killed, Duration::from_secs(3));
    let bound = master_down_interval(50) + ADVERT_INTERVAL;
    report(
        "9 unicast: ours master killed, keepalived takes over",
        Row { takeover: Some(takeover.took), bound: Some(bound), bound_name: "MDI + 1 interval", ..Row::default() },
    );
    assert!(takeover.took <= bound, "takeover {:?} over {bound:?}", takeover.took);
    let multicast: Vec<Seen> = lab.observer.adverts().into_iter().filter(|seen| seen.at >= begin && seen.destination != IpAddr::V4(OBSERVER)).collect();
    assert!(multicast.is_empty(), "only unicast adverts to the observer's address: {multicast:?}");
}

/// The Internet checksum of `bytes` (RFC 1071), for hand-built VRRPv2 adverts.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Scenario 10: hostile adverts at priority 254 from the observer; each is counted under its
/// reason on both nodes and changes nothing (the master keeps advertising, nobody moves); a
/// valid advert behind IPv4 options is read past its options and obeyed.
#[test]
fn hostile_adverts_are_counted_and_change_nothing() {
    use failover_ctl::election::codec::{Advert, ChecksumForm, MULTICAST_V4};
    if !prerequisites() {
        return;
    }
    let lab = two_of_ours();
    let injector = lab.injector();
    let observer = IpAddr::V4(OBSERVER);
    let group = IpAddr::V4(MULTICAST_V4);
    let valid = Advert { vrid: VRID, priority: 254, interval_cs: 10, addresses: vec![IpAddr::V4(VRRP_ADDRESS)] };
    let encode = |advert: &Advert, form| advert.encode(observer, group, form);
    let mut bad_checksum = encode(&valid, ChecksumForm::PseudoHeader);
    bad_checksum[6] ^= 0x5a;
    let mut version2 = vec![0x21, VRID, 254, 1, 0, 1, 0, 0];
    version2.extend_from_slice(&VRRP_ADDRESS.octets());
    version2.extend_from_slice(&[0; 8]);
    let sum = internet_checksum(&version2);
    version2[6..8].copy_from_slice(&sum.to_be_bytes());
    let mut truncated = encode(&valid, ChecksumForm::PseudoHeader);
    truncated.truncate(truncated.len() - 2);
    let hostile: Vec<(&str, u8, Vec<u8>)> = vec![
        ("vrid_errors", 255, encode(&Advert { vrid: VRID + 1, ..valid.clone() }, ChecksumForm::PseudoHeader)),
        ("ip_ttl_errors", 254, encode(&valid, ChecksumForm::PseudoHeader)),
        ("checksum_errors", 255, bad_checksum),
        ("checksum_form_mismatch", 255, encode(&valid, ChecksumForm::Rfc9568)),
        ("version_errors", 255, version2),
        ("address_list_errors", 255, encode(&Advert { addresses: vec!["10.201.2.101".parse().unwrap()], ..valid.clone() }, ChecksumForm::PseudoHeader)),
        ("packet_length_errors", 255, truncated),
    ];
    let begin = wall_now();
    for (reason, ttl, message) in &hostile {
        let before = [lab.group(0), lab.group(1)];
        injector.send(OBSERVER, MULTICAST_V4, *ttl, &[], message);
        std::thread::sleep(Duration::from_millis(150));
        for (index, before) in before.iter().enumerate() {
            let after = lab.group(index);
            let count = |group: &failover_ctl::daemon::status::ElectionStatus, name: &str| group.counters.discarded.get(name).copied().unwrap_or(0);
            for name in
                ["vrid_errors", "ip_ttl_errors", "checksum_errors", "checksum_form_mismatch", "version_errors", "address_list_errors", "packet_length_errors"]
            {
                let expected = count(before, name) + u64::from(name == *reason);
                assert_eq!(count(&after, name), expected, "node {index}, {reason} advert: counter {name}: {:?}", after.counters);
            }
            assert_eq!(
                (after.state.as_str(), after.counters.master_transitions),
                (before.state.as_str(), before.counters.master_transitions),
                "node {index} moved on a {reason} advert"
            );
        }
        eprintln!("election-result 10 hostile {reason}: counted +1 on both nodes, no state change");
    }
    let end = wall_now();
    let adverts: Vec<Seen> = lab.observer.master_adverts(VRID, begin).into_iter().filter(|seen| seen.at < end).collect();
    assert!(adverts.iter().all(|seen| seen.source == node(0)), "only node 0 advertised: {}", lab.observer.describe(VRID, begin));
    let longest = adverts.windows(2).map(|pair| pair[1].at - pair[0].at).max().unwrap();
    assert!(longest <= ADVERT_INTERVAL + SLACK, "node 0 kept advertising every interval (longest gap {longest:?})");

    // Router Alert (RFC 2113): a real option, so the kernel delivers the packet; IHL = 6.
    let before = lab.group(0).counters;
    let sent = wall_now();
    injector.send(OBSERVER, MULTICAST_V4, 255, &[0x94, 0x04, 0x00, 0x00], &encode(&valid, ChecksumForm::PseudoHeader));
    // Node 0 steps down (one last advert), stays silent for its Master_Down_Interval, and is
    // master again: nobody else advertises.
    lab.observer.wait_sole_master(VRID, node(0), sent, Duration::from_millis(500), Duration::from_secs(3));
    let resumed: Vec<Seen> = lab.observer.master_adverts(VRID, sent - ADVERT_INTERVAL).into_iter().filter(|seen| seen.source == node(0)).collect();
    let silent = resumed.windows(2).map(|pair| pair[1].at - pair[0].at).max().unwrap();
    let group0 = lab.group(0);
    eprintln!("election-result 10 advert with IPv4 options: obeyed, node 0 silent {} ms then master again", silent.as_millis());
    assert_eq!(group0.counters.adverts_received, before.adverts_received + 1, "{group0:#?}");
    assert_eq!(group0.counters.discarded, before.discarded, "the advert with options was not discarded");
    assert!(silent >= master_down_interval(150) - SLACK, "node 0 followed the higher-priority advert for a Master_Down_Interval ({silent:?})");
    let followed = lab.ours(0).events().into_iter().any(|event| event.kind == "election" && event.detail.contains("master -> backup (higher_priority)"));
    assert!(followed, "node 0 stepped down for the advert with options: {:?}", lab.ours(0).events());
}

/// Scenario 11: an IPv6 group against keepalived (link-local address first, sources are the
/// nodes' link-locals): keepalived master, ours preempts after its delay and keepalived stays
/// quiet as backup; keepalived takes over again when ours is killed.
#[test]
fn ipv6_group_against_keepalived() {
    if !prerequisites() {
        return;
    }
    let mut lab = ElectionLab::new();
    let group = GroupSpec {
        vrid: 52,
        priority: 150,
        preempt: true,
        preempt_delay: Duration::from_millis(500),
        addresses: vec![IpAddr::V6(VRRP_LINK_LOCAL), IpAddr::V6(VRRP_GLOBAL_V6)],
        unicast_peers: Vec::new(),
        carries_vips: false,
        flow_sync: None,
    };
    let (ours, theirs) = (IpAddr::V6(node_link_local(0)), IpAddr::V6(node_link_local(1)));
    lab.start_keepalived(1, &group.keepalived(100));
    lab.observer.wait_sole_master(52, theirs, Duration::ZERO, Duration::from_millis(500), SETTLE);
    let started = wall_now();
    lab.start_ours(0, &group);
    let takeover = lab.observer.takeover(52, theirs, ours, started, Duration::from_secs(5));
    assert!(takeover.first_new.at.saturating_sub(started) >= group.preempt_delay, "preempted before the delay");
    lab.keepalived(1).wait_entered("BACKUP", 2, Duration::from_secs(2));
    lab.observer.wait_sole_master(52, ours, takeover.first_new.at, STEADY, STEADY + Duration::from_secs(2));
    let status = lab.group(0);
    assert_eq!((status.state.as_str(), status.master.as_str()), ("master", "fe80::2"), "{status:#?}");
    assert_no_discards("ours over IPv6", &status);
    assert_keepalived_content("keepalived over IPv6", lab.keepalived(1));
    let hop_limits: Vec<u8> = lab.observer.adverts().iter().filter(|seen| seen.vrid == 52).map(|seen| seen.ttl).collect();
    assert!(hop_limits.iter().all(|limit| *limit == 255), "hop limit 255 on every advert: {hop_limits:?}");

    let killed = wall_now();
    lab.kill9(0);
    let back = lab.observer.takeover(52, ours, theirs, killed, Duration::from_secs(3));
    let bound = master_down_interval(100) + ADVERT_INTERVAL;
    report(
        "11 IPv6: ours killed, keepalived takes over",
        Row { takeover: Some(back.took), bound: Some(bound), bound_name: "MDI + 1 interval", ..Row::default() },
    );
    assert!(back.took <= bound, "takeover {:?} over {bound:?}", back.took);
    lab.keepalived(1).wait_entered("MASTER", 2, Duration::from_secs(1));

    // Restarted after the crash, ours finds the group's link-local address still on its
    // interface (nobody removed it); it must advertise from its own link-local, not from it.
    let restarted = wall_now();
    lab.ours_mut(0).spawn();
    let again = lab.observer.takeover(52, theirs, ours, restarted, Duration::from_secs(5));
    lab.observer.wait_sole_master(52, ours, again.first_new.at, Duration::from_millis(500), Duration::from_secs(2));
    let sources: Vec<IpAddr> = lab.observer.adverts().iter().filter(|seen| seen.vrid == 52 && seen.at >= restarted).map(|seen| seen.source).collect();
    assert!(sources.iter().all(|source| *source == ours || *source == theirs), "adverts only from the nodes' own link-locals: {sources:?}");
    assert_keepalived_content("keepalived after our restart", lab.keepalived(1));
}
