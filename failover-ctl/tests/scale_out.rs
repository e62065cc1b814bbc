//! Scale-out with real traffic: N load balancers running the daemon and BIRD announce the VIP
//! over eBGP to a BIRD router with ECMP; a client behind the router keeps long-lived connections
//! (a request every 20 ms each), opens short ones and streams UDP through whichever node the
//! router's hash picks; the backends answer it directly. Judged from the router (its kernel
//! routes, its ECMP choice per flow), from what each node's data plane recorded, and from the
//! client: the spread of 1000 new flows, the withdraw of a node cut off from its backends and its
//! return, kill -9 of a controller, `drain-node`, a node joining and one leaving — and not one
//! connection broken, because every node builds the same table.

mod support;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use failover_ctl::daemon::status::Event;
use support::*;

/// The withdraw grace the daemons wait in `drain-node`.
const GRACE: Duration = Duration::from_secs(1);
const NODE_BACKENDS: usize = 3;
/// Keep-alive connections per backend.
const PER_BACKEND: usize = 4;

/// A running scale-out lab. Field order is drop order: daemons first, the namespaces last.
struct ScaleOut {
    daemons: Vec<Option<Daemon>>,
    sinks: Sinks,
    _servers: Vec<HttpServer>,
    lab: BgpLab,
}

impl ScaleOut {
    /// `nodes` load balancers with BIRD, three backends with HTTP servers and UDP sinks; the
    /// daemons of `running` started and announcing.
    fn start(nodes: usize, running: &[usize]) -> Self {
        let mut lab = BgpLab::new(nodes);
        lab.serve(NODE_BACKENDS);
        let names: Vec<String> = (0..NODE_BACKENDS).map(backend_name).collect();
        let servers = lab.backends.iter().zip(&names).map(|(backend, name)| HttpServer::start(backend, 80, name)).collect();
        let sinks = Sinks::start(&lab.backends, &names);
        let mut scale_out = Self { daemons: (0..nodes).map(|_| None).collect(), sinks, _servers: servers, lab };
        for index in running {
            scale_out.daemons[*index] = Some(scale_out.lab.start_node(*index, GRACE));
        }
        scale_out
    }

    fn daemon(&self, index: usize) -> &Daemon {
        self.daemons[index].as_ref().expect("the node's daemon runs")
    }

    /// The node the router sends each keep-alive connection to.
    fn placement(&self, ports: &[u16]) -> Vec<usize> {
        ports.iter().map(|port| self.lab.router_choice("tcp", *port, 80).expect("the router has a route for the VIP")).collect()
    }

    /// Polls the router every 10 ms until every node of `nodes` is a next hop of the VIP; when
    /// each appeared (ms since the epoch).
    fn wait_announced(&self, nodes: &[usize], limit: Duration) -> Vec<u64> {
        let start = Instant::now();
        let mut seen: Vec<Option<u64>> = vec![None; nodes.len()];
        let prefix = format!("{VIP}/32");
        while seen.iter().any(Option::is_none) {
            assert!(start.elapsed() < limit, "the router has {:?} after {limit:?}, expected nodes {nodes:?}", self.lab.router_next_hops(&prefix));
            let hops = self.lab.router_next_hops(&prefix);
            for (slot, index) in seen.iter_mut().zip(nodes) {
                if slot.is_none() && hops.contains(&IpAddr::from(lb_side(*index))) {
                    *slot = Some(millis_now());
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        seen.into_iter().map(Option::unwrap).collect()
    }
}

/// When `daemon` last wrote (`announced`) or removed (`withdrew`) the VIP's route.
fn route_event(daemon: &Daemon, verb: &str) -> u64 {
    let wanted = format!("{verb} {VIP}");
    let events = daemon.events();
    events
        .iter()
        .rev()
        .find(|event| event.kind == "announce" && event.detail.starts_with(&wanted))
        .unwrap_or_else(|| panic!("no `{wanted}` event in {events:?}"))
        .at
}

/// The probe result that completed the last down verdict since `since` (ms since the epoch).
fn last_down_verdict(daemon: &Daemon, since: u64) -> u64 {
    let down = |event: &Event| event.kind == "failover" && event.at >= since && event.timings.as_ref().is_some_and(|timings| timings.to == "down");
    daemon.events().iter().filter(|event| down(event)).filter_map(|event| Some(event.timings.as_ref()?.probe_at)).max().expect("a down verdict")
}

fn moved(before: &[usize], after: &[usize]) -> usize {
    before.iter().zip(after).filter(|(a, b)| a != b).count()
}

/// Scenarios 1 to 4 of the issue on two nodes.
#[test]
fn ecmp_spreads_flows_and_a_node_cut_off_from_its_backends_withdraws_and_returns_without_breaking_a_connection() {
    if !(bgp_prerequisites() && root()) {
        return;
    }
    let mut scale_out = ScaleOut::start(2, &[]);

    // 1. Both nodes announce: the router has two next hops, each within moments of its route.
    for index in 0..2 {
        scale_out.daemons[index] = Some(scale_out.lab.start_node(index, GRACE));
        let nodes: Vec<usize> = (0..=index).collect();
        let seen = scale_out.wait_announced(&nodes, Duration::from_secs(15))[index];
        let latency = seen.saturating_sub(route_event(scale_out.daemon(index), "announced"));
        eprintln!("scale-out-result: scenario=announce node={index} route_to_next_hop_ms={latency}");
        assert!(latency < 1000, "node {index}: the route reached the router {latency} ms after it was written");
    }

    // 1000 new flows spread within +-10 % of 1/N, as each node's data plane recorded them; the
    // router's own choice for a sample of them names the same node.
    let before: Vec<BTreeSet<u16>> = (0..2).map(|index| recorded_ports(scale_out.daemon(index))).collect();
    let tally = short_requests(&scale_out.lab.client, 80, 1000);
    assert!(tally.errors.is_empty(), "short requests failed: {:?}", tally.errors);
    let new: Vec<BTreeSet<u16>> =
        (0..2).map(|index| recorded_ports(scale_out.daemon(index)).difference(&before[index]).copied().collect()).collect();
    let total: usize = new.iter().map(BTreeSet::len).sum();
    assert!(total >= 990, "the nodes recorded {total} of 1000 new flows");
    assert!(new[0].is_disjoint(&new[1]), "a flow recorded by both nodes");
    for (index, ports) in new.iter().enumerate() {
        let share = ports.len() as f64 / total as f64;
        eprintln!("scale-out-result: scenario=spread node={index} flows={} share={share:.3}", ports.len());
        assert!((share - 0.5).abs() <= 0.05, "node {index} carried {share:.3} of the new flows, not 0.5 +- 10 %");
        for port in ports.iter().step_by(20) {
            assert_eq!(scale_out.lab.router_choice("tcp", *port, 80), Some(index), "port {port}: recorded by node {index}, the router's choice differs");
        }
    }

    // Long-lived connections on both nodes, and a UDP stream.
    let names: Vec<String> = (0..NODE_BACKENDS).map(backend_name).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let load = Load::start(&scale_out.lab.client, 80, &names, PER_BACKEND);
    let udp = UdpStream::start(&scale_out.lab.client);
    std::thread::sleep(Duration::from_millis(300));
    let placed = scale_out.placement(&load.ports);
    assert!(placed.contains(&0) && placed.contains(&1), "every connection on one node: {placed:?}");

    // 2. Every backend unreachable from node 0 only, as when its link towards them is lost: its
    // own stack has no route to them (its probes fail at once) and the router drops what it
    // forwards them (its tunnelled packets). Node 0 withdraws within fall x interval + 200 ms,
    // its connections move to node 1, which picks their backends.
    let cut = |verb: &str| {
        scale_out.lab.lbs[0].ip(&format!("route {verb} unreachable 10.202.100.0/22")).unwrap();
        scale_out.lab.router.ip(&format!("rule {verb} iif r1 to 10.202.100.0/22 priority 100 blackhole")).unwrap();
    };
    let cut_at = millis_now();
    cut("add");
    let gone = scale_out.lab.wait_nodes(&[1], Duration::from_secs(3));
    let gone_at = millis_now();
    let verdict = last_down_verdict(scale_out.daemon(0), cut_at);
    let withdrew = route_event(scale_out.daemon(0), "withdrew");
    let bound = INTERVAL * FALL + Duration::from_millis(200);
    eprintln!(
        "scale-out-result: scenario=backends_unreachable_from_one_node fault_to_router_ms={} verdict_to_route_deleted_ms={} verdict_to_router_ms={} bound_ms={}",
        gone.as_millis(),
        withdrew.saturating_sub(verdict),
        gone_at.saturating_sub(verdict),
        bound.as_millis()
    );
    assert!(gone <= bound, "node 0 left the router {gone:?} after its backends became unreachable (bound {bound:?})");
    std::thread::sleep(Duration::from_millis(1000));
    let during = scale_out.placement(&load.ports);
    assert!(during.iter().all(|node| *node == 1), "connections still sent to node 0: {during:?}");
    let carried = recorded_ports(scale_out.daemon(1));
    let moved_ports: Vec<u16> = load.ports.iter().zip(&placed).filter(|(_, node)| **node == 0).map(|(port, _)| *port).collect();
    assert!(moved_ports.iter().all(|port| carried.contains(port)), "node 1 never carried some moved connections");

    // 3. Reachable again: node 0 announces again, its connections come back to it; none reset.
    cut("del");
    let back = scale_out.lab.wait_nodes(&[0, 1], Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1000));
    let after = scale_out.placement(&load.ports);
    eprintln!(
        "scale-out-result: scenario=backends_back heal_to_router_ms={} connections_moved_away={} connections_moved_back={}",
        back.as_millis(),
        moved_ports.len(),
        moved(&during, &after)
    );
    assert_eq!(after, placed, "the connections did not return to the nodes they started on");
    let result = load.finish();
    let udp = udp.finish(&scale_out.sinks);
    eprintln!(
        "scale-out-result: scenario=withdraw_and_return connections={} broken={} requests={} short_failed={} udp_sent={} udp_lost={}",
        result.connections.len(),
        result.broken().len(),
        result.requests(),
        result.short_failed.len(),
        udp.sent,
        udp.lost
    );
    assert!(result.broken().is_empty(), "connections broken: {:?}", result.broken());
    assert!(udp.one_backend(), "the UDP flow changed backend: {:?}", udp.backends);

    // 4. kill -9 of each node's controller in turn, and its restart: the router keeps both next
    // hops in every 10 ms poll, the data plane drops nothing, the restarted daemon writes no route.
    let load = Load::start(&scale_out.lab.client, 80, &names, 1);
    let udp = UdpStream::start(&scale_out.lab.client);
    let both: Vec<IpAddr> = vec![lb_side(0).into(), lb_side(1).into()];
    let prefix = format!("{VIP}/32");
    let mut polls = 0;
    for index in 0..2 {
        let watch = |limit: Duration, polls: &mut usize| {
            let start = Instant::now();
            while start.elapsed() < limit {
                assert_eq!(scale_out.lab.router_next_hops(&prefix), both, "the router lost a next hop while node {index}'s daemon was down or restarting");
                *polls += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        scale_out.daemons[index].as_mut().unwrap().kill9();
        watch(Duration::from_millis(500), &mut polls);
        let restarted_at = millis_now();
        scale_out.daemons[index].as_mut().unwrap().spawn();
        watch(Duration::from_millis(800), &mut polls);
        let writes: Vec<Event> = scale_out.daemon(index).events().into_iter().filter(|event| event.kind == "announce" && event.at >= restarted_at).collect();
        assert!(writes.is_empty(), "node {index}'s adopting daemon rewrote routes: {writes:?}");
    }
    let result = load.finish();
    let udp = udp.finish(&scale_out.sinks);
    eprintln!(
        "scale-out-result: scenario=kill9_and_restart polls_with_both_next_hops={polls} route_writes_after_adoption=0 broken={} failed={} udp_sent={} udp_lost={}",
        result.broken().len(),
        result.failed(),
        udp.sent,
        udp.lost
    );
    assert!(result.broken().is_empty(), "connections broken across kill -9: {:?}", result.broken());
    assert_eq!(result.failed(), 0, "requests failed across kill -9: {:?}", result.short_failed);
    assert_eq!(udp.lost, 0, "UDP packets lost across kill -9: {:?}", udp.lost_sequences);
}

/// Scenarios 5 and 6 on three nodes: a node joins, one drains and leaves, while connections run.
#[test]
fn nodes_join_drain_and_leave_under_load_with_identical_tables_and_no_broken_connection() {
    if !(bgp_prerequisites() && root()) {
        return;
    }
    let mut scale_out = ScaleOut::start(3, &[0, 1]);
    scale_out.wait_announced(&[0, 1], Duration::from_secs(15));
    let names: Vec<String> = (0..NODE_BACKENDS).map(backend_name).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let load = Load::start(&scale_out.lab.client, 80, &names, PER_BACKEND);
    std::thread::sleep(Duration::from_millis(300));
    let on_two = scale_out.placement(&load.ports);

    // 6a. Node 2 joins: its route reaches the router, the router moves some connections to it,
    // and it sends them to the backends they had (its table is the others').
    let joined_at = millis_now();
    scale_out.daemons[2] = Some(scale_out.lab.start_node(2, GRACE));
    let seen = scale_out.wait_announced(&[0, 1, 2], Duration::from_secs(15));
    let route = seen[2].saturating_sub(route_event(scale_out.daemon(2), "announced"));
    std::thread::sleep(Duration::from_millis(1000));
    let on_three = scale_out.placement(&load.ports);
    let digests: Vec<Vec<String>> = (0..3).map(|index| table_digests(scale_out.daemon(index))).collect();
    assert!(digests.iter().all(|digest| *digest == digests[0]), "the nodes' tables differ: {digests:?}");
    let joined: Vec<u16> = load.ports.iter().zip(&on_three).filter(|(_, node)| **node == 2).map(|(port, _)| *port).collect();
    let carried = recorded_ports(scale_out.daemon(2));
    assert!(joined.iter().all(|port| carried.contains(port)), "node 2 never carried connections the router gave it");
    eprintln!(
        "scale-out-result: scenario=node_joins start_to_router_ms={} route_to_next_hop_ms={route} connections={} moved={} digests_equal=true",
        seen[2].saturating_sub(joined_at),
        load.ports.len(),
        moved(&on_two, &on_three)
    );

    // 5. drain-node on node 0: its next hop is off the router when the command returns, and new
    // flows go to the other nodes.
    let started = Instant::now();
    let output = scale_out.daemon(0).ctl(&["drain-node"]);
    let returned = started.elapsed();
    assert!(output.status.success(), "drain-node: {}", String::from_utf8_lossy(&output.stderr));
    let hops = scale_out.lab.router_next_hops(&format!("{VIP}/32"));
    assert_eq!(hops, vec![IpAddr::from(lb_side(1)), IpAddr::from(lb_side(2))], "drain-node returned with node 0 still a next hop");
    assert!(returned >= GRACE, "drain-node returned after {returned:?}, before the grace");
    let before: Vec<BTreeSet<u16>> = (0..3).map(|index| recorded_ports(scale_out.daemon(index))).collect();
    let tally = short_requests(&scale_out.lab.client, 80, 200);
    assert!(tally.errors.is_empty(), "short requests failed after drain-node: {:?}", tally.errors);
    let new: Vec<usize> =
        (0..3).map(|index| recorded_ports(scale_out.daemon(index)).difference(&before[index]).count()).collect();
    eprintln!("scale-out-result: scenario=drain_node returned_ms={} grace_ms={} new_flows_per_node={new:?}", returned.as_millis(), GRACE.as_millis());
    assert_eq!(new[0], 0, "node 0 took new flows after drain-node");
    assert!(new[1] + new[2] >= 198, "the other nodes recorded {new:?} of 200 new flows");

    // 6b. Node 0 leaves (its daemon stops after the drain): its connections moved to the
    // others at the drain, and none broke.
    let drained = scale_out.placement(&load.ports);
    scale_out.daemons[0] = None;
    std::thread::sleep(Duration::from_millis(1000));
    let result = load.finish();
    eprintln!(
        "scale-out-result: scenario=node_leaves connections={} moved={} broken={} failed={} requests={}",
        result.connections.len(),
        moved(&on_three, &drained),
        result.broken().len(),
        result.failed(),
        result.requests()
    );
    assert!(drained.iter().all(|node| *node != 0), "connections still sent to the drained node: {drained:?}");
    assert!(result.broken().is_empty(), "connections broken as nodes joined and left: {:?}", result.broken());
    assert_eq!(result.failed(), 0, "requests failed as nodes joined and left: {:?}", result.short_failed);
}
