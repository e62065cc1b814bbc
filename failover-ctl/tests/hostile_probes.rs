//! Probes against hostile backends on real loopback sockets: servers that never answer, stream
//! endless bodies, headers or lines, answer byte by byte, send garbage or reset. Each test runs
//! the daemon's probe task (`probe::spawn`) against the hostile server next to a healthy backend
//! probed on the same single-threaded runtime, and checks three things: every hostile attempt
//! fails within its timeout, memory stays bounded (the process's peak RSS and the bytes the
//! server got out), and the healthy probe keeps its pace.
//!
//! No root needed: `cargo test -p failover-ctl --test hostile_probes`. The tests run one at a
//! time (a lock), so the process's memory is measured for one hostile server at a time.

use std::{
    net::{SocketAddr, TcpListener},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use failover_ctl::{
    config::RedisRole,
    probe::{self, HttpSpec, ProbeEvent, ProbeSettings, ProbeSpec, RedisSpec, Thresholds},
};
use tokio::sync::mpsc;

#[path = "hostile_probes/server.rs"]
mod server;

use server::{Behaviour, Hostile};

/// The hostile probe's timeout.
const TIMEOUT: Duration = Duration::from_millis(500);
/// How late after its timeout a failed attempt may end: the timer's granularity plus scheduling
/// on a loaded 2-core machine. An attempt that waits for the end of an endless stream never ends.
const TIMEOUT_MARGIN: Duration = Duration::from_millis(250);
/// The healthy probe's interval.
const HEALTHY_INTERVAL: Duration = Duration::from_millis(50);
/// How much longer than its interval the healthy probe may take between two results (its own
/// loopback request included). Below [`TIMEOUT`]: a hostile attempt that held the runtime until
/// its timeout would show as a gap of at least 500 ms.
const HEALTHY_SLACK: Duration = Duration::from_millis(250);
/// How long the two probes run side by side: three or more hostile attempts.
const RUN: Duration = Duration::from_millis(2000);
/// Peak RSS growth allowed over one run. The Redis probe before its reply cap grew by 75 MiB
/// (endless line) and 0.6-1.9 GiB (`$999999999`) here; the bounded probes grow by 0.5-2 MiB (the
/// HTTP client, hyper's 400 KiB head buffer, 64 KiB of body or Redis reply).
const MEMORY_BOUND: u64 = 8 << 20;
/// Bytes one hostile connection may get out before the probe closes it: what the probe reads
/// (at most ~400 KiB) plus what the kernel buffers on both ends of a loopback connection (4-6
/// MiB measured). The uncapped Redis probe took 83 MiB (endless line) to 987 MiB.
const SENT_BOUND: u64 = 16 << 20;

/// Runs `test` on a fresh single-threaded runtime (the strictest case: a probe that held the
/// thread would stop every other one), one test at a time: the RSS measured is the process's.
fn alone(test: impl std::future::Future<Output = ()>) {
    static SERIAL: Mutex<()> = Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (proc(5), clear_refs 5).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM through clear_refs");
}

fn http(address: SocketAddr, body_contains: Option<&str>) -> ProbeSpec {
    ProbeSpec::Http(HttpSpec {
        address,
        host: None,
        path: "/health".into(),
        tls: false,
        accept_invalid_certificates: false,
        expect_status: 200,
        body_contains: body_contains.map(str::to_owned),
    })
}

/// An HTTP probe that checks the status only.
fn status_only(address: SocketAddr) -> ProbeSpec {
    http(address, None)
}

fn redis(address: SocketAddr) -> ProbeSpec {
    ProbeSpec::Redis(RedisSpec {
        address,
        role: RedisRole::Master,
    })
}

fn settings(interval: Duration, timeout: Duration) -> ProbeSettings {
    ProbeSettings {
        interval,
        timeout,
        thresholds: Thresholds::new(1, 1).unwrap(),
        jitter: 0.0,
    }
}

const HOSTILE: u32 = 1;
const HEALTHY: u32 = 2;

/// What one side-by-side run observed.
struct Run {
    /// The hostile probe's results.
    hostile: Vec<ProbeEvent>,
    /// The healthy probe's results and when each arrived.
    healthy: Vec<(Instant, ProbeEvent)>,
    started: Instant,
    /// Peak RSS over the run minus RSS before it.
    peak_growth: u64,
}

impl Run {
    /// The longest time between two healthy results, the run's start counting as one.
    fn largest_healthy_gap(&self) -> Duration {
        let mut previous = self.started;
        let mut largest = Duration::ZERO;
        for (at, _) in &self.healthy {
            largest = largest.max(at.duration_since(previous));
            previous = *at;
        }
        largest
    }
}

/// Probes `hostile` (every `interval`, cut at `timeout`) and a healthy HTTP backend (every
/// [`HEALTHY_INTERVAL`]) as the daemon does, on one single-threaded runtime, for [`RUN`]; then
/// stops both probe tasks.
async fn side_by_side(hostile: ProbeSpec, interval: Duration, timeout: Duration) -> Run {
    let healthy_server = Hostile::start(Behaviour::Healthy);
    // One attempt first, so that what the process sets up once (TLS roots, the resolver, thread
    // locals) is not counted as the run's growth.
    let warm = probe::probe_once(
        &http(healthy_server.address, Some("ok")),
        Duration::from_secs(1),
    )
    .await;
    assert!(warm.success, "the healthy backend: {}", warm.detail);
    let (sender, mut receiver) = mpsc::channel(1024);
    let before = status_bytes("VmRSS:");
    reset_peak_rss();
    let started = Instant::now();
    let hostile_task = probe::spawn(
        HOSTILE,
        hostile,
        settings(interval, timeout),
        sender.clone(),
    );
    let healthy_task = probe::spawn(
        HEALTHY,
        http(healthy_server.address, Some("ok")),
        settings(HEALTHY_INTERVAL, Duration::from_secs(1)),
        sender,
    );
    let mut run = Run {
        hostile: Vec::new(),
        healthy: Vec::new(),
        started,
        peak_growth: 0,
    };
    while let Ok(Some(event)) =
        tokio::time::timeout(RUN.saturating_sub(started.elapsed()), receiver.recv()).await
    {
        match event.id {
            HOSTILE => run.hostile.push(event),
            _ => run.healthy.push((Instant::now(), event)),
        }
    }
    run.peak_growth = status_bytes("VmHWM:").saturating_sub(before);
    drop(receiver);
    tokio::time::timeout(Duration::from_secs(5), async {
        hostile_task.await.unwrap();
        healthy_task.await.unwrap();
    })
    .await
    .expect("the probe tasks kept running without a receiver");
    run
}

/// The checks every hostile target shares: each attempt failed within `limit`, the healthy probe
/// kept up, memory and the bytes sent stayed bounded, and no connection outlived the probe.
/// Returns the hostile results' details.
async fn assert_contained(
    what: &str,
    run: &Run,
    server: Option<&Hostile>,
    limit: Duration,
) -> Vec<String> {
    let latencies: Vec<_> = run
        .hostile
        .iter()
        .map(|event| event.result.latency)
        .collect();
    let details: Vec<_> = run
        .hostile
        .iter()
        .map(|event| event.result.detail.clone())
        .collect();
    let gap = run.largest_healthy_gap();
    eprintln!(
        "{what}: {} hostile attempts, latencies {latencies:?}; {} healthy results, largest gap {gap:?}; \
         peak RSS growth {} KiB; server: {} connections, largest sent {} KiB; first detail: {:?}",
        run.hostile.len(),
        run.healthy.len(),
        run.peak_growth >> 10,
        server.map_or(0, Hostile::accepted),
        server.map_or(0, Hostile::largest_sent) >> 10,
        details.first(),
    );
    assert!(
        run.hostile.len() >= 2,
        "{what}: too few hostile attempts in {RUN:?}: {details:?}"
    );
    for event in &run.hostile {
        assert!(
            !event.result.success,
            "{what}: a hostile attempt succeeded: {}",
            event.result.detail
        );
        assert!(
            event.result.latency <= limit,
            "{what}: an attempt took {:?}, more than {limit:?}: {}",
            event.result.latency,
            event.result.detail
        );
    }
    for (_, event) in &run.healthy {
        assert!(
            event.result.success,
            "{what}: the healthy probe failed: {}",
            event.result.detail
        );
    }
    assert!(
        gap <= HEALTHY_INTERVAL + HEALTHY_SLACK,
        "{what}: the healthy probe went {gap:?} without a result (interval {HEALTHY_INTERVAL:?})"
    );
    // Each healthy round is its interval plus one loopback request: at least a third of the
    // ideal count arrives even on a loaded machine, none if the runtime were blocked.
    let expected = (RUN.as_millis() / HEALTHY_INTERVAL.as_millis()) as usize / 3;
    assert!(
        run.healthy.len() >= expected,
        "{what}: {} healthy results, expected >= {expected}",
        run.healthy.len()
    );
    assert!(
        run.peak_growth < MEMORY_BOUND,
        "{what}: peak RSS grew by {} KiB",
        run.peak_growth >> 10
    );
    if let Some(server) = server {
        assert!(
            server.accepted() >= 2,
            "{what}: the server saw {} connections",
            server.accepted()
        );
        assert!(
            server.largest_sent() < SENT_BOUND,
            "{what}: one connection got {} KiB out",
            server.largest_sent() >> 10
        );
        // The probe tasks have ended: a connection still open would be a reader left behind.
        assert!(
            server.wait_all_closed(Duration::from_secs(2)).await,
            "{what}: connections stayed open after the probes stopped"
        );
    }
    details
}

/// Runs `hostile_spec` against a server behaving as `behaviour` and checks [`assert_contained`]
/// with the timeout bound.
async fn hostile_run(
    what: &str,
    behaviour: Behaviour,
    spec: impl FnOnce(SocketAddr) -> ProbeSpec,
) -> Vec<String> {
    let server = Hostile::start(behaviour);
    let run = side_by_side(spec(server.address), Duration::from_millis(100), TIMEOUT).await;
    assert_contained(what, &run, Some(&server), TIMEOUT + TIMEOUT_MARGIN).await
}

#[test]
fn http_that_never_answers_fails_at_the_timeout() {
    alone(async {
        let details = hostile_run("http silent", Behaviour::Silent, status_only).await;
        assert!(
            details
                .iter()
                .all(|detail| detail.contains("no answer within") || detail.contains("timed out")),
            "{details:?}"
        );
    });
}

#[test]
fn http_endless_body_fails_at_the_body_limit() {
    alone(async {
        // The expected text never comes: the probe stops at its body limit, long before the timeout.
        let details = hostile_run("http endless body", Behaviour::EndlessBody, |address| {
            http(address, Some("ready"))
        })
        .await;
        assert!(
            details
                .iter()
                .all(|detail| detail.contains("does not contain")),
            "{details:?}"
        );
    });
}

#[test]
fn http_endless_body_without_body_check_is_decided_by_the_status() {
    alone(async {
        // Without `body_contains` the status decides: 200 is healthy, and the body is never read.
        let server = Hostile::start(Behaviour::EndlessBody);
        let result = probe::probe_once(&http(server.address, None), TIMEOUT).await;
        assert!(result.success, "{}", result.detail);
        assert!(result.latency < TIMEOUT, "{:?}", result.latency);
        assert!(
            server.wait_all_closed(Duration::from_secs(2)).await,
            "the probe left its connection open"
        );
        eprintln!(
            "endless body, status only: {:?}, server sent {} KiB",
            result.latency,
            server.largest_sent() >> 10
        );
        assert!(
            server.largest_sent() < SENT_BOUND,
            "{} KiB",
            server.largest_sent() >> 10
        );
    });
}

#[test]
fn http_endless_headers_fail_at_the_head_limit() {
    alone(async {
        hostile_run(
            "http endless headers",
            Behaviour::EndlessHeaders,
            status_only,
        )
        .await;
        hostile_run(
            "http endless header line",
            Behaviour::EndlessHeaderLine,
            |address| http(address, None),
        )
        .await;
    });
}

#[test]
fn http_slowloris_fails_at_the_timeout() {
    alone(async {
        hostile_run("http slowloris", Behaviour::Slowloris, |address| {
            http(address, Some("ok"))
        })
        .await;
    });
}

#[test]
fn redis_garbage_fails() {
    alone(async {
        hostile_run("redis random bytes", Behaviour::Garbage, redis).await;
    });
}

#[test]
fn redis_huge_bulk_string_fails_at_the_reply_limit() {
    alone(async {
        hostile_run("redis $999999999", Behaviour::HugeBulkString, redis).await;
    });
}

#[test]
fn redis_endless_line_fails_at_the_reply_limit() {
    alone(async {
        hostile_run("redis endless line", Behaviour::EndlessLine, redis).await;
    });
}

/// A reset must be reported at once, not at the timeout: 2 s of timeout, 250 ms allowed.
const RESET_TIMEOUT: Duration = Duration::from_secs(2);
const RESET_BOUND: Duration = Duration::from_millis(250);

#[test]
fn tcp_probe_of_a_resetting_port_fails_at_once() {
    alone(async {
        // A closed port answers the SYN with a reset: the connect fails at once.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let run = side_by_side(
            ProbeSpec::Tcp { address: closed },
            Duration::from_millis(100),
            RESET_TIMEOUT,
        )
        .await;
        assert_contained("tcp closed port", &run, None, RESET_BOUND).await;

        // A port that accepts and then resets has completed the handshake, which is all a connect
        // check asks: it is up, and each attempt is over at once.
        let server = Hostile::start(Behaviour::Reset);
        let result = probe::probe_once(
            &ProbeSpec::Tcp {
                address: server.address,
            },
            RESET_TIMEOUT,
        )
        .await;
        assert!(result.success, "{}", result.detail);
        assert!(result.latency < RESET_BOUND, "{:?}", result.latency);
    });
}

#[test]
fn http_and_redis_probes_of_a_resetting_port_fail_at_once() {
    alone(async {
        for (what, spec) in [
            ("http reset", status_only as fn(SocketAddr) -> ProbeSpec),
            ("redis reset", redis),
        ] {
            let server = Hostile::start(Behaviour::Reset);
            let run = side_by_side(
                spec(server.address),
                Duration::from_millis(100),
                RESET_TIMEOUT,
            )
            .await;
            let details = assert_contained(what, &run, Some(&server), RESET_BOUND).await;
            assert!(
                details
                    .iter()
                    .all(|detail| !detail.contains("no answer within")),
                "{what}: {details:?}"
            );
        }
    });
}
