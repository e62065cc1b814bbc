//! The lab's traffic, from the client namespace to the VIP: short requests (a new connection
//! each, at a capped rate) that show each backend's share and the success rate, and long-lived
//! keep-alive connections that show whether established flows survive a fault.
//!
//! Every loop ends on the stop flag or at a deadline, and every socket has timeouts.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use netlab::http::Client;

use super::topology::{backend_name, BACKENDS, PORT, VIP};

/// Connect, read and write timeout of every request.
const TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Threads issuing short requests.
    pub workers: usize,
    /// Short requests per second, over all workers.
    pub rate: u32,
    /// Long-lived keep-alive connections.
    pub connections: usize,
    /// A long-lived connection sends a request this often.
    pub long_period: Duration,
    /// The traffic stops by itself after this long, whatever happens.
    pub limit: Duration,
}

/// Counters shared by the traffic threads and the reporter.
#[derive(Default)]
pub struct Stats {
    /// Short requests answered, per backend.
    answered: [AtomicU64; BACKENDS],
    /// Short requests that failed (connect, reset, timeout, bad answer).
    failed: AtomicU64,
    /// Requests on long-lived connections answered.
    long_answered: AtomicU64,
    /// Established long-lived connections broken (error, reset, or answered by another backend).
    broken: AtomicU64,
    /// Long-lived connections that could not be established.
    long_connect_failed: AtomicU64,
    /// Long-lived connections established now.
    established: AtomicU64,
    /// Long-lived connections established now, per backend.
    established_on: [AtomicU64; BACKENDS],
    /// When the last request failed or connection broke (ms since the Unix epoch; 0: never).
    last_trouble: AtomicU64,
    /// The client port of each long-lived connection established now, by connection: what the
    /// scale-out lab asks the router's ECMP about.
    long_ports: Mutex<BTreeMap<usize, u16>>,
    /// Every broken long-lived connection (the first `BREAKS_KEPT`): which backend it was on and
    /// when, so that the soak can tell a connection of a killed backend from a healthy one.
    breaks: Mutex<Vec<Break>>,
}

/// At most this many breaks are kept (a soak breaks a few per backend kill).
const BREAKS_KEPT: usize = 100_000;

/// One established long-lived connection that broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Break {
    /// The backend that answered its first request (and every one until the break).
    pub backend: usize,
    /// When it was established and when it broke, ms since the Unix epoch.
    pub established_ms: u64,
    pub broken_ms: u64,
    /// Its client port (its flow's 5-tuple is client:port -> VIP:PORT/tcp).
    pub port: Option<u16>,
}

/// A copy of the counters at one moment; differences of two give a window.
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    pub answered: [u64; BACKENDS],
    pub failed: u64,
    pub long_answered: u64,
    pub broken: u64,
    pub long_connect_failed: u64,
    pub established: u64,
    pub established_on: [u64; BACKENDS],
}

impl Stats {
    fn trouble(&self) {
        self.last_trouble.store(now_ms(), Ordering::Relaxed);
    }

    /// When a request last failed or a connection last broke (ms since the Unix epoch), if ever.
    pub fn last_trouble(&self) -> Option<u64> {
        Some(self.last_trouble.load(Ordering::Relaxed)).filter(|&at| at != 0)
    }

    /// The client ports of the long-lived connections established now.
    pub fn long_ports(&self) -> Vec<u16> {
        self.long_ports
            .lock()
            .map(|ports| ports.values().copied().collect())
            .unwrap_or_default()
    }

    fn set_long_port(&self, connection: usize, port: Option<u16>) {
        if let Ok(mut ports) = self.long_ports.lock() {
            match port {
                Some(port) => ports.insert(connection, port),
                None => ports.remove(&connection),
            };
        }
    }

    /// The broken connections so far, in the order they broke.
    pub fn breaks(&self) -> Vec<Break> {
        self.breaks
            .lock()
            .map(|breaks| breaks.clone())
            .unwrap_or_default()
    }

    fn record_break(&self, record: Break) {
        if let Ok(mut breaks) = self.breaks.lock() {
            if breaks.len() < BREAKS_KEPT {
                breaks.push(record);
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Snapshot {
            answered: std::array::from_fn(|index| load(&self.answered[index])),
            failed: load(&self.failed),
            long_answered: load(&self.long_answered),
            broken: load(&self.broken),
            long_connect_failed: load(&self.long_connect_failed),
            established: load(&self.established),
            established_on: std::array::from_fn(|index| load(&self.established_on[index])),
        }
    }
}

impl Snapshot {
    /// Counters from `earlier` to `self` (the gauges stay as in `self`).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            answered: std::array::from_fn(|index| self.answered[index] - earlier.answered[index]),
            failed: self.failed - earlier.failed,
            long_answered: self.long_answered - earlier.long_answered,
            broken: self.broken - earlier.broken,
            long_connect_failed: self.long_connect_failed - earlier.long_connect_failed,
            ..*self
        }
    }

    pub fn ok(&self) -> u64 {
        self.answered.iter().sum()
    }

    /// One table row: each backend's share of the answered short requests, the success rate,
    /// and the long-lived connections.
    pub fn line(&self, label: &str, connections: usize) -> String {
        let ok = self.ok();
        let total = ok + self.failed;
        let mut line = format!("{label:>7}");
        for (index, answered) in self.answered.iter().enumerate() {
            let share = if ok == 0 {
                0.0
            } else {
                100.0 * *answered as f64 / ok as f64
            };
            line.push_str(&format!("  {} {share:5.1}%", backend_name(index)));
        }
        let rate = if total == 0 {
            0.0
        } else {
            100.0 * ok as f64 / total as f64
        };
        let per_backend: Vec<String> = self.established_on.iter().map(u64::to_string).collect();
        line.push_str(&format!(
            " | ok {rate:5.1}% ({ok}/{total}) | long {}/{connections} up ({}), {} broken",
            self.established,
            per_backend.join("/"),
            self.broken
        ));
        line
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Which backend answered: the body is `<name>\n`.
fn backend_of(body: &[u8]) -> Option<usize> {
    let name = std::str::from_utf8(body).ok()?.trim();
    (0..BACKENDS).find(|&index| backend_name(index) == name)
}

fn vip() -> SocketAddr {
    SocketAddr::from((VIP, PORT))
}

/// Runs until `stop` or `settings.limit`: the short-request workers and the long-lived
/// connections, each on its own thread inside the client namespace.
pub fn run(
    client: &netlab::Namespace,
    settings: Settings,
    stats: &Stats,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + settings.limit;
    let period = Duration::from_secs_f64(settings.workers as f64 / f64::from(settings.rate.max(1)));
    std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for worker in 0..settings.workers {
            // Spread the workers' first requests over one period.
            let offset = period.mul_f64(worker as f64 / settings.workers as f64);
            threads.push(scope.spawn(move || {
                client.enter(|| short_requests(stats, stop, deadline, period, offset))
            }));
        }
        for connection in 0..settings.connections {
            let period = settings.long_period;
            threads.push(scope.spawn(move || {
                client.enter(|| long_connection(connection, period, stats, stop, deadline))
            }));
        }
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a traffic thread panicked"))??;
        }
        Ok(())
    })
}

fn running(stop: &AtomicBool, deadline: Instant) -> bool {
    !stop.load(Ordering::Relaxed) && Instant::now() < deadline
}

/// Sleeps until `until`, waking every 50 ms to check `stop`.
fn sleep_until(until: Instant, stop: &AtomicBool, deadline: Instant) {
    while running(stop, deadline) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// One request per `period`, each on a new connection.
fn short_requests(
    stats: &Stats,
    stop: &AtomicBool,
    deadline: Instant,
    period: Duration,
    offset: Duration,
) {
    let mut next = Instant::now() + offset;
    while running(stop, deadline) {
        sleep_until(next, stop, deadline);
        next += period;
        // After a stall (timeouts), do not burst to catch up.
        next = next.max(Instant::now());
        let answer = Client::connect(vip(), TIMEOUT).and_then(|mut client| client.get("/", false));
        match answer
            .ok()
            .filter(|response| response.status == 200)
            .and_then(|response| backend_of(&response.body))
        {
            Some(index) => {
                stats.answered[index].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                stats.trouble();
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Keep-alive connection number `connection`, asking every `period`; a broken one is counted
/// and replaced.
fn long_connection(
    connection: usize,
    period: Duration,
    stats: &Stats,
    stop: &AtomicBool,
    deadline: Instant,
) {
    while running(stop, deadline) {
        let mut next = Instant::now();
        let connected = Client::connect(vip(), TIMEOUT).and_then(|mut client| {
            let first = client.get("/", true)?;
            Ok((client, first))
        });
        let (mut client, first) = match connected {
            Ok(connected) => connected,
            Err(_) => {
                stats.long_connect_failed.fetch_add(1, Ordering::Relaxed);
                sleep_until(next + period, stop, deadline);
                continue;
            }
        };
        let Some(backend) = backend_of(&first.body) else {
            stats.long_connect_failed.fetch_add(1, Ordering::Relaxed);
            sleep_until(next + period, stop, deadline);
            continue;
        };
        let port = client
            .stream()
            .local_addr()
            .ok()
            .map(|address| address.port());
        stats.set_long_port(connection, port);
        let established_ms = now_ms();
        stats.long_answered.fetch_add(1, Ordering::Relaxed);
        stats.established.fetch_add(1, Ordering::Relaxed);
        stats.established_on[backend].fetch_add(1, Ordering::Relaxed);
        while running(stop, deadline) {
            next += period;
            sleep_until(next, stop, deadline);
            if !running(stop, deadline) {
                break;
            }
            let same = client
                .get("/", true)
                .ok()
                .and_then(|response| backend_of(&response.body))
                == Some(backend);
            if !same {
                stats.trouble();
                stats.record_break(Break {
                    backend,
                    established_ms,
                    broken_ms: now_ms(),
                    port,
                });
                stats.broken.fetch_add(1, Ordering::Relaxed);
                break;
            }
            stats.long_answered.fetch_add(1, Ordering::Relaxed);
        }
        stats.set_long_port(connection, None);
        stats.established.fetch_sub(1, Ordering::Relaxed);
        stats.established_on[backend].fetch_sub(1, Ordering::Relaxed);
        sleep_until(Instant::now() + period, stop, deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_backends_and_rows() {
        assert_eq!(backend_of(b"backend2\n"), Some(1));
        assert_eq!(backend_of(b"nobody\n"), None);
        let snapshot = Snapshot {
            answered: [1, 1, 2],
            failed: 0,
            established: 3,
            ..Snapshot::default()
        };
        let line = snapshot.line("1s", 3);
        assert!(line.contains("backend3  50.0%"), "{line}");
        assert!(line.contains("ok 100.0% (4/4)"), "{line}");
    }
}
