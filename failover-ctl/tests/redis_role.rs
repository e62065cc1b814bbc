//! The Redis role probe end to end: two `redis-server`s behind a VIP whose probe asks for the
//! master role; a switchover (promote the replica, demote the old master) moves the VIP to the
//! new master within the probe bound, with one failover event each way.
//!
//! Run as root, with `redis-server` installed (`cargo xtask test` installs it).

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Stdio},
    time::Duration,
};

use support::*;

/// A `redis-server` in a backend namespace, killed when dropped.
struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One RESP command over a fresh connection to `address` (from the calling thread's namespace);
/// returns the bulk or simple string answer.
fn redis_command(address: SocketAddr, argv: &[&str]) -> Result<String, String> {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut request = format!("*{}\r\n", argv.len());
    for arg in argv {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut writer = stream.try_clone().unwrap();
    writer
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    match line.as_bytes().first() {
        Some(b'+') => Ok(line[1..].trim_end().to_string()),
        Some(b'$') => {
            let length: usize = line[1..]
                .trim_end()
                .parse()
                .map_err(|_| format!("bad length {line:?}"))?;
            let mut body = vec![0; length + 2];
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
            body.truncate(length);
            String::from_utf8(body).map_err(|e| e.to_string())
        }
        _ => Err(format!("unexpected answer {line:?}")),
    }
}

fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines().find_map(|line| {
        line.strip_prefix(&format!("{key}:"))
            .map(|value| value.trim().to_string())
    })
}

#[test]
fn redis_master_role_follows_a_switchover() {
    if !root() || !netlab::prerequisite::require_program("redis-server", "redis-server") {
        return;
    }
    let topology = Topology::new(2);
    let port = "6379";
    let start_redis = |index: usize, replica_of: Option<Ipv4Addr>| {
        let mut command = topology.backends[index].command("redis-server");
        command.args([
            "--port",
            port,
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if let Some(master) = replica_of {
            command.args(["--replicaof", &master.to_string(), port]);
        }
        Redis(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _servers = [
        start_redis(0, None),
        start_redis(1, Some(backend_address(0))),
    ];
    let at = |index: usize| SocketAddr::from((backend_address(index), 6379));
    // Ask each server directly (from the LB namespace, as the probes do) for its run id.
    let run_id = |index: usize| {
        let found = wait_for(Duration::from_secs(10), || {
            topology
                .lb
                .enter(|| redis_command(at(index), &["INFO", "server"]))
                .unwrap()
                .ok()
        });
        info_field(&found.expect("redis-server answers"), "run_id").unwrap()
    };
    let run_ids = [run_id(0), run_id(1)];
    let role = |index: usize| {
        topology
            .lb
            .enter(|| redis_command(at(index), &["INFO", "replication"]))
            .unwrap()
            .ok()
            .and_then(|i| info_field(&i, "role"))
    };
    assert!(wait_for(Duration::from_secs(10), || (role(1).as_deref()
        == Some("slave"))
    .then_some(()))
    .is_some());

    let probe = "kind = \"redis\", role = \"master\"".to_string();
    let mut spec = ConfigSpec {
        instance: String::new(),
        metrics_port: 9650 + (unique() % 1000) as u16,
        next_hop_mac: topology.next_hop_mac(),
        vip_name: "write",
        vip_port: 6379,
        backends: (0..2)
            .map(|index| BackendSpec {
                probe: probe.clone(),
                ..BackendSpec::http(index)
            })
            .collect(),
    };
    let daemon = Daemon::start(&topology.lb, &mut spec);
    daemon.wait_serving(&[backend_address(0)], Duration::from_secs(10));
    let replica = daemon.backend(backend_address(1)).unwrap();
    assert_eq!(
        (replica.health.as_str(), replica.serving),
        ("down", false),
        "{replica:?}"
    );
    // Through the VIP, every connection reaches the master.
    let through_vip = |count: usize| -> Vec<String> {
        topology
            .client
            .enter(|| {
                (0..count)
                    .map(|_| {
                        let info =
                            redis_command(SocketAddr::from((VIP, 6379)), &["INFO", "server"])
                                .expect("INFO through the VIP");
                        info_field(&info, "run_id").unwrap()
                    })
                    .collect()
            })
            .unwrap()
    };
    assert!(
        through_vip(20).iter().all(|id| *id == run_ids[0]),
        "the VIP reaches the master only"
    );

    // Switch over: promote the replica, then demote the old master.
    let switched_ms = millis_now();
    let promoted = topology
        .lb
        .enter(|| redis_command(at(1), &["REPLICAOF", "NO", "ONE"]))
        .unwrap();
    assert_eq!(promoted.as_deref(), Ok("OK"));
    let new_master = backend_address(1).to_string();
    let demoted = topology
        .lb
        .enter(|| redis_command(at(0), &["REPLICAOF", &new_master, port]))
        .unwrap();
    assert_eq!(demoted.as_deref(), Ok("OK"));
    let took = daemon.wait_serving(&[backend_address(1)], Duration::from_secs(5));
    let bound = INTERVAL * RISE.max(FALL) + MARGIN;
    eprintln!(
        "serving switched to the new master {} ms after the switchover (bound {} ms)",
        took.as_millis(),
        bound.as_millis()
    );
    assert!(took <= bound, "{took:?} > {bound:?}");
    assert!(
        through_vip(20).iter().all(|id| *id == run_ids[1]),
        "the VIP reaches the new master only"
    );

    let up = failovers(&daemon, backend_address(1), "up", switched_ms);
    let down = failovers(&daemon, backend_address(0), "down", switched_ms);
    assert_eq!(
        (up.len(), down.len()),
        (1, 1),
        "failover events: up {up:#?}, down {down:#?}"
    );
    for event in up.iter().chain(&down) {
        let timings = event.timings.as_ref().unwrap();
        eprintln!(
            "failover {} -> {}: verdict +{} ms after the switchover, health bit {} us, table {} us",
            event.backend.as_deref().unwrap_or_default(),
            timings.to,
            timings.probe_at.saturating_sub(switched_ms),
            timings.health_written_us,
            timings.table_published_us
        );
    }
    drop(daemon);
}
