//! BIRD 2 exporting the announce table over eBGP to a router with ECMP: the harness in
//! support/bgp.rs proven with routes written by hand (as the controller writes them, table 100,
//! protocol 201), timed from the kernel write to the router's multipath route; a route with
//! another protocol number is never announced; a silent node (BIRD stopped with SIGSTOP) leaves
//! the router's route after the hold time. With the real daemons: kill -9 and restart never
//! take the route off the router, `drain-node` does before it returns.

mod support;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use support::*;

#[test]
fn hand_written_routes_reach_the_router_as_ecmp_and_a_silent_node_leaves_after_the_hold_time() {
    if !bgp_prerequisites() {
        return;
    }
    let mut lab = BgpLab::new(2);
    let prefix = format!("{BGP_VIP}/32");
    assert!(lab.router_next_hops(&prefix).is_empty(), "announced before any route was written");

    // Both nodes announce: one multipath route over both.
    lab.announce(0, BGP_VIP);
    let first = lab.wait_next_hops(&prefix, 1, Duration::from_secs(3));
    lab.announce(1, BGP_VIP);
    let second = lab.wait_next_hops(&prefix, 2, Duration::from_secs(3));
    let both: Vec<IpAddr> = vec![lb_side(0).into(), lb_side(1).into()];
    assert_eq!(lab.router_next_hops(&prefix), both);
    eprintln!("route write -> router next hop: first node {first:?}, second node {second:?}");
    assert!(first < Duration::from_secs(1) && second < Duration::from_secs(1), "netlink learning is immediate: {first:?}, {second:?}");

    // A route of another protocol number in the same table is not the controller's: never sent.
    let other = "10.100.0.11";
    lab.lbs[0].ip(&format!("route add blackhole {other}/32 table {ANNOUNCE_TABLE} proto static")).unwrap();

    // One node withdraws.
    lab.withdraw(0, BGP_VIP);
    let withdrawn = lab.wait_next_hops(&prefix, 1, Duration::from_secs(3));
    assert_eq!(lab.router_next_hops(&prefix), vec![IpAddr::from(lb_side(1))]);
    eprintln!("route delete -> router next hop gone: {withdrawn:?}");
    assert!(withdrawn < Duration::from_secs(1), "withdraw took {withdrawn:?}");
    assert!(lab.router_next_hops(&format!("{other}/32")).is_empty(), "a route of protocol static was announced");

    // Back on both, then node 1's host goes silent: the router drops it after the hold time,
    // not before the keepalive that was due, and within hold + one keepalive + polling.
    lab.announce(0, BGP_VIP);
    lab.wait_next_hops(&prefix, 2, Duration::from_secs(3));
    lab.lb_birds[1].pause().unwrap();
    let paused = Instant::now();
    let silent = lab.wait_next_hops(&prefix, 1, HOLD + KEEPALIVE + Duration::from_secs(2));
    assert_eq!(lab.router_next_hops(&prefix), vec![IpAddr::from(lb_side(0))]);
    eprintln!("SIGSTOP of a node's BIRD -> its next hop gone: {silent:?} (hold {HOLD:?}, keepalive {KEEPALIVE:?})");
    assert!(silent >= HOLD - KEEPALIVE, "removed after {silent:?}, before the hold time could expire");
    assert!(paused.elapsed() <= HOLD + KEEPALIVE + Duration::from_secs(1));

    // Resumed: the session comes back within the error wait and the connect retry, and the
    // route with it.
    lab.lb_birds[1].resume().unwrap();
    let back = lab.wait_next_hops(&prefix, 2, Duration::from_secs(15));
    eprintln!("SIGCONT -> next hop back: {back:?}");
}

/// The withdraw grace the daemons wait in `drain-node`.
const GRACE: Duration = Duration::from_secs(1);

/// Two load balancers each running the daemon (announce on, table 100, protocol 201) and BIRD,
/// sharing one backend: both announce; kill -9 of one daemon and its restart never take the
/// route off the router (polled every 10 ms) and the restarted daemon writes no route;
/// `drain-node` takes the node's next hop off the router before it returns.
#[test]
fn daemons_announce_through_bird_survive_kill9_and_drain_before_returning() {
    if !bgp_prerequisites() {
        return;
    }
    let lab = BgpLab::new(2);
    let backend = lab.add_backend();
    let _server = HttpServer::start(&backend, 80, "b0");
    let prefix = format!("{VIP}/32");
    let mut daemons: Vec<Daemon> = (0..2)
        .map(|index| {
            let mut spec = ConfigSpec {
                instance: String::new(),
                metrics_port: 9650 + (unique() % 1000) as u16,
                next_hop_mac: failover_ctl::address::format_mac(&lab.router.mac(&format!("r{}", index + 1)).unwrap()),
                vip_name: "web",
                vip_port: 80,
                backends: vec![BackendSpec { address: BGP_BACKEND, ..BackendSpec::http(0) }],
            };
            Daemon::start_with(&lab.lbs[index], |instance| {
                spec.instance = instance.to_owned();
                format!(
                    "{}\n[announce]\nenabled = true\ntable = {ANNOUNCE_TABLE}\nprotocol = {ANNOUNCE_PROTOCOL}\nwithdraw_grace = \"{}ms\"\n",
                    spec.render(),
                    GRACE.as_millis()
                )
            })
        })
        .collect();
    let both: Vec<IpAddr> = vec![lb_side(0).into(), lb_side(1).into()];
    let announced = lab.wait_next_hops(&prefix, 2, Duration::from_secs(10));
    assert_eq!(lab.router_next_hops(&prefix), both);
    eprintln!("both daemons announced through BIRD {announced:?} after the second started");

    // kill -9 of node 0's daemon and its restart: the router keeps both next hops throughout.
    daemons[0].kill9();
    let watch = |limit: Duration| {
        let start = Instant::now();
        let mut polls = 0;
        while start.elapsed() < limit {
            assert_eq!(lab.router_next_hops(&prefix), both, "the router lost a next hop while the daemon was down or restarting");
            polls += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        polls
    };
    let mut polls = watch(Duration::from_millis(500));
    let restarted_at = millis_now();
    daemons[0].spawn();
    polls += watch(Duration::from_secs(1));
    let writes: Vec<_> = daemons[0].events().into_iter().filter(|event| event.kind == "announce" && event.at >= restarted_at).collect();
    assert!(writes.is_empty(), "the adopting daemon rewrote routes: {writes:?}");
    eprintln!("kill -9 and restart: 2 next hops in all {polls} polls, 0 route writes after adoption");

    // drain-node on node 0: its next hop leaves the router before the command returns.
    let started = Instant::now();
    let output = daemons[0].ctl(&["drain-node"]);
    let returned = started.elapsed();
    assert!(output.status.success(), "drain-node: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(lab.router_next_hops(&prefix), vec![IpAddr::from(lb_side(1))], "drain-node returned with the node still a next hop");
    assert!(returned >= GRACE, "drain-node returned after {returned:?}, before the grace");
    eprintln!("drain-node returned after {returned:?} (grace {GRACE:?}) with the node's next hop gone");
    let output = daemons[0].ctl(&["undrain-node"]);
    assert!(output.status.success(), "undrain-node: {}", String::from_utf8_lossy(&output.stderr));
    let back = lab.wait_next_hops(&prefix, 2, Duration::from_secs(3));
    eprintln!("undrain-node -> next hop back on the router: {back:?}");
}
