//! BIRD 2 exporting the announce table over eBGP to a router with ECMP: the harness in
//! support/bgp.rs proven with routes written by hand (as the controller writes them, table 100,
//! protocol 201), timed from the kernel write to the router's multipath route; a route with
//! another protocol number is never announced; a silent node (BIRD stopped with SIGSTOP) leaves
//! the router's route after the hold time. The daemons announcing with traffic through the
//! router: tests/scale_out.rs.

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
