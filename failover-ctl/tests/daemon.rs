//! The daemon end to end, on real packets, sockets and processes: `failover-ctl run` in a
//! load-balancer namespace in front of backend namespaces, a client namespace sending TCP
//! through the VIP (XDP_TX, IPIP, direct server return), backends killed and revived, the
//! daemon drained, reloaded and restarted through its real CLI and signals.
//!
//! Run as root: `cargo test -p failover-ctl --test daemon -- --test-threads=2`.

mod support;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use support::*;

/// Short connections per measurement: enough that a backend with a third of the table is
/// missed by chance with probability (2/3)^100, about 2e-18.
const SAMPLE: usize = 100;

fn assert_no_errors(what: &str, errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{what}: {} errors, first ones: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

#[test]
fn weights_split_new_connections() {
    if !root() {
        return;
    }
    let weights = [1u16, 1, 2];
    let lab = Lab::http(&[
        (weights[0], "primary"),
        (weights[1], "primary"),
        (weights[2], "primary"),
    ]);
    let n = 400;
    let tally = short_requests(&lab.topology.client, 80, n);
    assert_no_errors("short connections", &tally.errors);
    assert_eq!(tally.total(), n);
    let total_weight: u16 = weights.iter().sum();
    for (index, weight) in weights.iter().enumerate() {
        let p = f64::from(*weight) / f64::from(total_weight);
        let expected = n as f64 * p;
        // Five binomial standard deviations: a correct split fails this about once in 1.7
        // million runs; a wrong weight (e.g. 1/3 instead of 1/4) is 3 sigmas further off.
        let tolerance = binomial_tolerance(n, p, 5.0);
        let got = tally.count(&backend_name(index)) as f64;
        eprintln!("backend {index} weight {weight}: {got} of {n} (expected {expected:.0} ± {tolerance:.1})");
        assert!(
            (got - expected).abs() <= tolerance,
            "backend {index}: {got} connections, expected {expected} ± {tolerance:.1}: {:?}",
            tally.per_backend
        );
    }
}

#[test]
fn killed_backend_gets_no_new_connections_and_others_keep_theirs() {
    if !root() {
        return;
    }
    let mut lab = Lab::http(&[(1, "primary"), (1, "primary"), (1, "primary")]);
    let connections = connections_to(&lab.topology.client, 80, &["b1", "b2"], 2);
    let exerciser = Exerciser::start(connections, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));

    let killed_at_ms = millis_now();
    let killed_at = Instant::now();
    lab.kill_server(0);
    let detected = lab.daemon.wait_serving(
        &[backend_address(1), backend_address(2)],
        Duration::from_secs(5),
    );
    eprintln!(
        "state.json shows b0 out of the table {} ms after the kill",
        detected.as_millis()
    );
    // Probe bound: `fall` failed probes, one interval apart, plus the margin.
    let bound = INTERVAL * FALL + MARGIN;
    assert!(
        detected <= bound,
        "detection took {detected:?}, more than {bound:?}"
    );
    if let Some(rest) = bound.checked_sub(killed_at.elapsed()) {
        std::thread::sleep(rest);
    }

    let tally = short_requests(&lab.topology.client, 80, SAMPLE);
    assert_no_errors("new connections after the kill", &tally.errors);
    assert_eq!(tally.count("b0"), 0, "{:?}", tally.per_backend);
    assert_eq!(tally.total(), SAMPLE);

    std::thread::sleep(Duration::from_millis(500));
    let (connections, errors, rounds) = exerciser.finish();
    assert_no_errors("keep-alive connections to the surviving backends", &errors);
    assert!(rounds >= 10, "only {rounds} rounds of keep-alive requests");
    eprintln!(
        "{} keep-alive connections answered {rounds} rounds without an error",
        connections.len()
    );

    let events = failovers(&lab.daemon, backend_address(0), "down", killed_at_ms);
    assert_eq!(
        events.len(),
        1,
        "one failover event for b0 going down: {events:#?}"
    );
    let timings = events[0].timings.clone().unwrap();
    eprintln!(
        "failover event: probe verdict {} ms after the kill, event at +{} ms, health bit in {} us, table in {} us",
        timings.probe_at.saturating_sub(killed_at_ms),
        events[0].at.saturating_sub(killed_at_ms),
        timings.health_written_us,
        timings.table_published_us
    );
    assert!(
        timings.probe_at >= killed_at_ms
            && timings.probe_at <= killed_at_ms + bound.as_millis() as u64
    );
    assert!(timings.health_written_us <= timings.table_published_us);
    // The table without b0 was prepared in the background after the last publication (all
    // three up, seconds before the kill), so the failover published it instead of building.
    assert_eq!(timings.table, "ready", "{:?}", events[0].detail);
    let status = lab.daemon.backend(backend_address(0)).unwrap();
    assert_eq!((status.health.as_str(), status.serving), ("down", false));
}

#[test]
fn backup_serves_only_when_no_primary_is_up() {
    if !root() {
        return;
    }
    let mut lab = Lab::http(&[(1, "primary"), (1, "primary"), (1, "backup")]);
    // The lab waits for the primaries only; the backup's probes may still be rising.
    let backup = wait_for(Duration::from_secs(5), || {
        lab.daemon
            .backend(backend_address(2))
            .filter(|b| b.health == "up")
    })
    .expect("the backup's probes pass");
    assert_eq!(
        (backup.health.as_str(), backup.serving),
        ("up", false),
        "the backup is healthy but not serving"
    );
    let tally = short_requests(&lab.topology.client, 80, SAMPLE);
    assert_no_errors("with both primaries up", &tally.errors);
    assert_eq!(tally.count("b2"), 0, "{:?}", tally.per_backend);
    assert!(
        tally.count("b0") > 0 && tally.count("b1") > 0,
        "{:?}",
        tally.per_backend
    );

    lab.kill_server(0);
    lab.kill_server(1);
    let took = lab
        .daemon
        .wait_serving(&[backend_address(2)], Duration::from_secs(5));
    eprintln!(
        "backup serving {} ms after both primaries were killed",
        took.as_millis()
    );
    assert!(took <= INTERVAL * FALL + MARGIN, "{took:?}");
    let tally = short_requests(&lab.topology.client, 80, SAMPLE);
    assert_no_errors("with both primaries down", &tally.errors);
    assert_eq!(tally.count("b2"), SAMPLE, "{:?}", tally.per_backend);

    lab.restart_server(0);
    let took = lab
        .daemon
        .wait_serving(&[backend_address(0)], Duration::from_secs(5));
    eprintln!(
        "primary b0 serving again {} ms after its restart",
        took.as_millis()
    );
    assert!(took <= INTERVAL * RISE + MARGIN, "{took:?}");
    let tally = short_requests(&lab.topology.client, 80, SAMPLE);
    assert_no_errors("with one primary back", &tally.errors);
    assert_eq!(tally.count("b0"), SAMPLE, "{:?}", tally.per_backend);
}

#[test]
fn drain_keeps_tracked_connections_and_stops_new_ones() {
    if !root() {
        return;
    }
    let lab = Lab::http(&[(1, "primary"), (1, "primary"), (1, "primary")]);
    let mut connections = connections_to(&lab.topology.client, 80, &["b0"], 2);
    let b0 = backend_address(0).to_string();

    let output = lab.daemon.ctl(&["drain", "web", &b0]);
    assert!(
        output.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = lab.daemon.backend(backend_address(0)).unwrap();
    assert_eq!(
        (
            status.admin.as_str(),
            status.health.as_str(),
            status.serving
        ),
        ("drained", "up", false)
    );
    assert!(lab
        .daemon
        .events()
        .iter()
        .any(|event| event.kind == "drain" && event.backend.as_deref() == Some(&b0)));

    let tally = short_requests(&lab.topology.client, 80, SAMPLE);
    assert_no_errors("new connections while b0 is drained", &tally.errors);
    assert_eq!(tally.count("b0"), 0, "{:?}", tally.per_backend);
    for _ in 0..10 {
        for connection in &mut connections {
            connection
                .request()
                .expect("a tracked connection to the drained backend");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let output = lab.daemon.ctl(&["undrain", "web", &b0]);
    assert!(
        output.status.success(),
        "undrain: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = lab.daemon.backend(backend_address(0)).unwrap();
    assert_eq!((status.admin.as_str(), status.serving), ("enabled", true));
    let tally = short_requests(&lab.topology.client, 80, SAMPLE);
    assert_no_errors("new connections after the undrain", &tally.errors);
    assert!(tally.count("b0") > 0, "{:?}", tally.per_backend);
    for connection in &mut connections {
        connection
            .request()
            .expect("the tracked connection after the undrain");
    }
}

#[test]
fn restart_adopts_without_breaking_connections() {
    if !root() {
        return;
    }
    let mut lab = Lab::http(&[(1, "primary"), (1, "primary"), (1, "primary")]);
    let program = lab.daemon.attached_program_id();
    let connections = connections_to(&lab.topology.client, 80, &["b0", "b1", "b2"], 2);
    let exerciser = Exerciser::start(connections, Duration::from_millis(50));
    // New connections keep flowing too, on their own thread.
    let client = &lab.topology.client;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (restart_ms, took, tallies) = std::thread::scope(|scope| {
        let flow = scope.spawn(|| {
            let mut tallies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                tallies.push(short_requests(client, 80, 10));
                std::thread::sleep(Duration::from_millis(20));
            }
            tallies
        });
        std::thread::sleep(Duration::from_millis(500));
        let restart_ms = millis_now();
        let restart = Instant::now();
        lab.daemon.kill9();
        std::thread::sleep(Duration::from_millis(300));
        lab.daemon.spawn();
        let took = restart.elapsed();
        // Let the new daemon's probes run for a while.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Release);
        (restart_ms, took, flow.join().unwrap())
    });
    let (_connections, errors, rounds) = exerciser.finish();
    eprintln!(
        "daemon killed and running again in {} ms; {rounds} keep-alive rounds",
        took.as_millis()
    );
    assert_no_errors("keep-alive connections across the restart", &errors);
    let short_errors: Vec<String> = tallies.iter().flat_map(|t| t.errors.clone()).collect();
    let short_total: usize = tallies.iter().map(Tally::total).sum();
    eprintln!("{short_total} short connections across the restart");
    assert_no_errors("short connections across the restart", &short_errors);
    assert!(short_total >= 50);

    assert_eq!(
        lab.daemon.attached_program_id(),
        program,
        "the same program stays attached"
    );
    let status = lab.daemon.status().unwrap();
    assert!(status.adopted, "state.json: adopted");
    assert_eq!(status.pid, lab.daemon.pid());
    assert!(
        status.vips[0]
            .backends
            .iter()
            .all(|b| b.serving && b.health == "up"),
        "{:#?}",
        status.vips
    );
    let events = lab.daemon.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "adopted" && e.at >= restart_ms),
        "an adopted event"
    );
    let spurious: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "failover" && e.at >= restart_ms)
        .collect();
    assert!(
        spurious.is_empty(),
        "the restart caused failovers: {spurious:#?}"
    );
}

/// What must not change across a refused reload: each backend's id, address, admin, health and
/// whether it serves.
fn snapshot(daemon: &Daemon) -> Vec<(u32, String, String, String, bool)> {
    daemon
        .status()
        .unwrap()
        .vips
        .iter()
        .flat_map(|vip| &vip.backends)
        .map(|b| {
            (
                b.id,
                b.address.clone(),
                b.admin.clone(),
                b.health.clone(),
                b.serving,
            )
        })
        .collect()
}

#[test]
fn bad_reload_changes_nothing_and_good_reload_keeps_ids() {
    if !root() {
        return;
    }
    let mut lab = Lab::http(&[(1, "primary"), (1, "primary"), (1, "primary")]);
    // Start with b0 and b1 only; b2 runs but is not configured yet.
    let good = std::fs::read_to_string(lab.daemon.config_path()).unwrap();
    let without_b2 = {
        let marker = format!("\n[[vip.backend]]\naddress = \"{}\"", backend_address(2));
        let at = good.find(&marker).unwrap();
        good[..at].to_string()
    };
    std::fs::write(lab.daemon.config_path(), &without_b2).unwrap();
    let output = lab.daemon.ctl(&["reload"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    lab.daemon.wait_serving(
        &[backend_address(0), backend_address(1)],
        Duration::from_secs(5),
    );

    let connections = connections_to(&lab.topology.client, 80, &["b0", "b1"], 1);
    let exerciser = Exerciser::start(connections, Duration::from_millis(50));
    let before = snapshot(&lab.daemon);
    let config_file = lab.daemon.config_path().display().to_string();

    let duplicate = {
        let b1 = format!("\n[[vip.backend]]\naddress = \"{}\"", backend_address(1));
        let b0 = format!("\n[[vip.backend]]\naddress = \"{}\"", backend_address(0));
        without_b2.replace(&b1, &b0)
    };
    let broken = [
        (
            "a syntax error",
            format!("{without_b2}\n[[vip.backend]\naddress = \n"),
        ),
        (
            "weight 0",
            without_b2.replacen("weight = 1", "weight = 0", 1),
        ),
        ("a duplicate backend", duplicate),
    ];
    let started_ms = millis_now();
    for (what, text) in &broken {
        std::fs::write(lab.daemon.config_path(), text).unwrap();
        let output = lab.daemon.ctl(&["reload"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!("reload with {what}: {}", stderr.trim());
        assert!(!output.status.success(), "a reload with {what} succeeded");
        let located = stderr.lines().any(|line| {
            line.split_once(&format!("{config_file}:"))
                .is_some_and(|(_, rest)| {
                    rest.split(':')
                        .next()
                        .is_some_and(|n| n.parse::<usize>().is_ok())
                })
        });
        assert!(located, "the refusal of {what} names file:line: {stderr}");
        assert_eq!(
            snapshot(&lab.daemon),
            before,
            "state.json changed after a reload with {what}"
        );
    }
    let refused = lab
        .daemon
        .events()
        .iter()
        .filter(|e| e.kind == "reload_failed" && e.at >= started_ms)
        .count();
    assert_eq!(
        refused,
        broken.len(),
        "one reload_failed event per refused reload"
    );
    let tally = short_requests(&lab.topology.client, 80, SAMPLE);
    assert_no_errors("new connections after the refused reloads", &tally.errors);
    assert!(
        tally.count("b0") > 0 && tally.count("b1") > 0 && tally.count("b2") == 0,
        "{:?}",
        tally.per_backend
    );

    // A good reload: keep b0, remove b1, add b2.
    let id_of = |address: Ipv4Addr| lab.daemon.backend(address).unwrap().id;
    let b0_id = id_of(backend_address(0));
    let b1_marker = format!("\n[[vip.backend]]\naddress = \"{}\"", backend_address(1));
    let b2_marker = format!("\n[[vip.backend]]\naddress = \"{}\"", backend_address(2));
    let b1_at = good.find(&b1_marker).unwrap();
    let b2_at = good.find(&b2_marker).unwrap();
    let next = format!("{}{}", &good[..b1_at], &good[b2_at..]);
    std::fs::write(lab.daemon.config_path(), &next).unwrap();
    let output = lab.daemon.ctl(&["reload"]);
    assert!(
        output.status.success(),
        "a good reload: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "good reload: {}",
        String::from_utf8_lossy(&output.stdout).trim()
    );
    let took = lab.daemon.wait_serving(
        &[backend_address(0), backend_address(2)],
        Duration::from_secs(5),
    );
    eprintln!(
        "added backend serving {} ms after the reload",
        took.as_millis()
    );
    assert_eq!(
        id_of(backend_address(0)),
        b0_id,
        "the kept backend keeps its id"
    );
    assert!(
        lab.daemon.backend(backend_address(1)).is_none(),
        "the removed backend is gone from state.json"
    );
    assert!(lab
        .daemon
        .events()
        .iter()
        .any(|e| e.kind == "reloaded" && e.at >= started_ms));

    std::thread::sleep(Duration::from_millis(300));
    let (mut connections, errors, _) = exerciser.finish();
    // The connection to the removed backend b1 may break (its flow's backend is gone); the one
    // to the kept backend must not.
    let kept_errors: Vec<String> = errors
        .iter()
        .filter(|e| e.starts_with("b0 "))
        .cloned()
        .collect();
    let removed_errors = errors.len() - kept_errors.len();
    eprintln!("errors on the connection to the removed backend: {removed_errors}");
    assert_no_errors("the tracked connection to the kept backend", &kept_errors);
    for connection in connections.iter_mut().filter(|c| c.backend == "b0") {
        connection
            .request()
            .expect("the tracked connection to the kept backend after the reload");
    }
    let tally = short_requests(&lab.topology.client, 80, SAMPLE);
    assert_no_errors("new connections after the good reload", &tally.errors);
    assert!(
        tally.count("b0") > 0 && tally.count("b2") > 0 && tally.count("b1") == 0,
        "{:?}",
        tally.per_backend
    );
    lab.kill_server(1);
}

#[test]
fn control_socket_and_run_directory_are_root_only() {
    if !root() {
        return;
    }
    use std::os::unix::{fs::MetadataExt, process::CommandExt};
    // The control socket drains, reloads and stops the data plane: only root may reach it.
    let lab = Lab::http(&[(1, "primary")]);
    let paths = &lab.daemon.paths;
    let socket = paths.control_socket();
    for (path, expected) in [(&paths.run_dir, 0o700), (&socket, 0o600)] {
        let metadata = std::fs::metadata(path).unwrap();
        assert_eq!(
            metadata.mode() & 0o7777,
            expected,
            "{} has mode {:o}",
            path.display(),
            metadata.mode() & 0o7777
        );
        assert_eq!(metadata.uid(), 0, "{} is not root's", path.display());
    }
    // The same CLI, as `nobody`, is refused by the kernel before the daemon sees anything.
    let output = std::process::Command::new(DAEMON)
        .args(["--instance", &lab.daemon.instance, "status"])
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "nobody reached the control socket"
    );
    assert!(
        stderr.contains("Permission denied"),
        "nobody failed for another reason: {stderr}"
    );
    let output = lab.daemon.ctl(&["status"]);
    assert!(
        output.status.success(),
        "root's status: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
