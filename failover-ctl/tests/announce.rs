//! Announcements through a kernel table, with the real daemon in a namespace: the VIP's
//! blackhole route (table 100, protocol 201) stands while a backend serves, is withdrawn when
//! the last backend fails (within fall x interval + 200 ms of the kill) and comes back with the
//! backends; kill -9 of the daemon never removes it and the restarted daemon writes no route;
//! `drain-node` removes it before it returns and waits the grace, `undrain-node` restores it.
//! The routing daemon that exports the table (BIRD) is tested in `bgp.rs`.

mod support;

use std::time::{Duration, Instant};

use netlab::Namespace;
use support::*;

const TABLE: u32 = 100;
const PROTOCOL: u8 = 201;
/// Longer than the default rejoin delay ((rise + 1) x (interval + jitter) = 330 ms): a drain
/// this long ends with an undrain that announces at once.
const GRACE: Duration = Duration::from_millis(500);

/// Whether `namespace` has the VIP's route in the announce table, with our protocol number.
fn announced(namespace: &Namespace) -> bool {
    let output = namespace
        .command("ip")
        .args(["-4", "route", "show", "table", &TABLE.to_string(), "proto", &PROTOCOL.to_string()])
        .output()
        .expect("run ip route show");
    if !output.status.success() {
        // A table that never held a route does not exist yet.
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(error.contains("FIB table does not exist"), "ip route show: {error}");
        return false;
    }
    String::from_utf8_lossy(&output.stdout).lines().any(|line| line.starts_with(&format!("blackhole {VIP}")))
}

/// Polls every 10 ms until the route is `present`; the time it took.
fn wait_route(namespace: &Namespace, present: bool, limit: Duration) -> Duration {
    let start = Instant::now();
    let found = wait_for(limit, || (announced(namespace) == present).then_some(()));
    assert!(found.is_some(), "the route is still {} after {limit:?}", if present { "missing" } else { "there" });
    start.elapsed()
}

#[test]
fn the_route_follows_the_backends_the_daemon_and_the_operator() {
    if !root() || !netlab::prerequisite::require_program("ip", "iproute2") {
        return;
    }
    let topology = Topology::new(2);
    let mut servers: Vec<Option<HttpServer>> =
        (0..2).map(|index| Some(HttpServer::start(&topology.backends[index], 80, &backend_name(index)))).collect();
    let mut spec = ConfigSpec {
        instance: String::new(),
        metrics_port: 9650 + (unique() % 1000) as u16,
        next_hop_mac: topology.next_hop_mac(),
        vip_name: "web",
        vip_port: 80,
        backends: (0..2).map(BackendSpec::http).collect(),
    };
    let mut daemon = Daemon::start_with(&topology.lb, |instance| {
        spec.instance = instance.to_owned();
        spec.render_announcing(TABLE, PROTOCOL, GRACE)
    });
    let lb = &topology.lb;
    let took = wait_route(lb, true, Duration::from_secs(10));
    eprintln!("announced {took:?} after the daemon answered");
    // Not at the first backend up: after the rejoin delay, when every backend has risen.
    let events = daemon.events();
    let first_up = events.iter().filter(|event| event.kind == "failover").map(|event| event.at).min().expect("a backend came up");
    let announced_at = events.iter().find(|event| event.kind == "announce").expect("an announce event").at;
    let rejoin_delay = (INTERVAL + INTERVAL / 10) * (RISE + 1);
    eprintln!("first backend up -> announced: {} ms (rejoin delay {rejoin_delay:?})", announced_at - first_up);
    assert!(announced_at - first_up >= rejoin_delay.as_millis() as u64, "announced before the rejoin delay: {events:?}");
    assert!(events.iter().filter(|event| event.kind == "failover").all(|event| event.at <= announced_at), "a backend rose after the announce: {events:?}");

    // The last backend fails: withdrawn in the step that publishes the table.
    let killed = Instant::now();
    for server in &mut servers {
        if let Some(mut server) = server.take() {
            server.kill();
        }
    }
    wait_route(lb, false, Duration::from_secs(5));
    let withdrawn = killed.elapsed();
    let bound = INTERVAL * FALL + Duration::from_millis(200);
    eprintln!("withdrawn {withdrawn:?} after the last backend was killed (bound {bound:?})");
    assert!(withdrawn <= bound, "withdrawn after {withdrawn:?}, bound {bound:?}");
    // The status (state.json, rewritten within a second) says why.
    let why = wait_for(Duration::from_secs(3), || {
        let vip = daemon.status()?.vips.into_iter().next()?;
        (!vip.announced && vip.announce_reason == "no_backend_up").then_some(vip)
    });
    assert!(why.is_some(), "the status says the VIP is withdrawn for want of a backend: {:?}", daemon.status().map(|status| status.vips));

    // Back: re-announced.
    for (index, server) in servers.iter_mut().enumerate() {
        *server = Some(HttpServer::start(&topology.backends[index], 80, &backend_name(index)));
    }
    let back = wait_route(lb, true, Duration::from_secs(5));
    eprintln!("re-announced {back:?} after the backends came back");

    // kill -9 and restart: the route never leaves, and the adopting daemon writes none.
    daemon.kill9();
    let gap = Instant::now();
    while gap.elapsed() < Duration::from_millis(500) {
        assert!(announced(lb), "the route left with the daemon");
        std::thread::sleep(Duration::from_millis(10));
    }
    let restarted_at = millis_now();
    daemon.spawn();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(1) {
        assert!(announced(lb), "the route left while the daemon restarted");
        std::thread::sleep(Duration::from_millis(10));
    }
    let writes: Vec<_> = daemon.events().into_iter().filter(|event| event.kind == "announce" && event.at >= restarted_at).collect();
    assert!(writes.is_empty(), "the adopting daemon rewrote routes: {writes:?}");

    // drain-node: gone before the command returns, which waits the grace.
    let started = Instant::now();
    let output = daemon.ctl(&["drain-node"]);
    assert!(output.status.success(), "drain-node: {}", String::from_utf8_lossy(&output.stderr));
    assert!(started.elapsed() >= GRACE, "drain-node returned before the grace");
    assert!(!announced(lb), "drain-node returned with the route still there");
    let view: serde_json::Value = serde_json::from_slice(&daemon.ctl(&["--json", "announcements"]).stdout).expect("announcements --json");
    assert_eq!(view["node_drained"], true, "{view}");
    assert_eq!(view["vips"][0]["reason"], "node_drained", "{view}");
    let output = daemon.ctl(&["undrain-node"]);
    assert!(output.status.success(), "undrain-node: {}", String::from_utf8_lossy(&output.stderr));
    assert!(announced(lb), "undrain-node announces again at once");
}
