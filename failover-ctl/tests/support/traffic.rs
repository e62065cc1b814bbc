//! Traffic through the VIP while the mastership moves, counted exactly: keep-alive HTTP
//! connections (a request every 20 ms each; a connection is broken at its first failed request or
//! answer from another backend), new short connections, and a 1 kHz UDP sequence stream whose
//! packets the backends' sinks record, so packets lost is a count, not an estimate.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use netlab::Namespace;

use super::{
    http::{connections_to, Connection},
    topology::{IO_TIMEOUT, VIP},
};

/// The UDP VIP's port.
pub const UDP_PORT: u16 = 6000;
/// A request on every keep-alive connection, and a new connection, this often.
pub const REQUEST_PERIOD: Duration = Duration::from_millis(20);
/// The UDP stream's rate: one packet per millisecond.
pub const UDP_PERIOD: Duration = Duration::from_millis(1);

/// Received sequence numbers per backend (name -> set).
type Received = Arc<Mutex<BTreeMap<String, BTreeSet<u64>>>>;

/// UDP sinks on port [`UDP_PORT`] of the backends, recording every sequence number of the
/// current stream (tagged with its run id).
pub struct Sinks {
    received: Received,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Sinks {
    pub fn start(backends: &[Namespace], names: &[String]) -> Self {
        let received: Received = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = backends
            .iter()
            .zip(names)
            .map(|(namespace, name)| {
                let socket = namespace.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT))).unwrap().unwrap();
                socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let (received, stop, name) = (received.clone(), stop.clone(), name.clone());
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 64];
                    while !stop.load(Ordering::Acquire) {
                        if let Ok(16) = socket.recv(&mut buffer) {
                            let sequence = u64::from_be_bytes(buffer[8..16].try_into().unwrap());
                            let tag = u64::from_be_bytes(buffer[..8].try_into().unwrap());
                            received.lock().unwrap().entry(format!("{tag}:{name}")).or_default().insert(sequence);
                        }
                    }
                })
            })
            .collect();
        Self { received, stop, threads }
    }

    /// What the sinks received of stream `tag`: per backend name.
    fn of(&self, tag: u64) -> BTreeMap<String, BTreeSet<u64>> {
        let prefix = format!("{tag}:");
        self.received.lock().unwrap().iter().filter_map(|(key, set)| key.strip_prefix(&prefix).map(|name| (name.to_owned(), set.clone()))).collect()
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

static STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A 1 kHz stream of numbered UDP packets from the client to the VIP (one 5-tuple).
pub struct UdpStream {
    tag: u64,
    /// When packet 0 was due (since the epoch): packet n is due n ms later.
    pub started: Duration,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Instant>>>,
}

impl UdpStream {
    pub fn start(client: &Namespace) -> Self {
        let tag = u64::from(std::process::id()) << 20 | STREAMS.fetch_add(1, Ordering::Relaxed);
        let socket = client.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))).unwrap().unwrap();
        socket.connect(SocketAddr::from((VIP, UDP_PORT))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let _ = sender.send(super::wire::wall_now());
            let mut sent = Vec::new();
            // Bounded: a stream never outlives ten minutes.
            for sequence in 0..600_000u64 {
                if flag.load(Ordering::Acquire) {
                    break;
                }
                let due = start + UDP_PERIOD * sequence as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let mut packet = [0u8; 16];
                packet[..8].copy_from_slice(&tag.to_be_bytes());
                packet[8..].copy_from_slice(&sequence.to_be_bytes());
                // A refused send (no route for a moment) is a lost packet like any other.
                let _ = socket.send(&packet);
                sent.push(Instant::now());
            }
            sent
        });
        let started = receiver.recv().unwrap();
        Self { tag, started, stop, thread: Some(thread) }
    }

    /// Stops the stream, lets the last packets arrive and counts.
    pub fn finish(mut self, sinks: &Sinks) -> UdpResult {
        self.stop.store(true, Ordering::Release);
        let sent = self.thread.take().unwrap().join().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let received = sinks.of(self.tag);
        let mut all = BTreeSet::new();
        for set in received.values() {
            all.extend(set.iter().copied());
        }
        let lost: Vec<u64> = (0..sent.len() as u64).filter(|sequence| !all.contains(sequence)).collect();
        // The longest run of consecutive lost packets: the outage as the stream saw it.
        let mut longest = 0;
        let mut run = 0;
        let mut previous = None;
        for sequence in &lost {
            run = if previous == Some(sequence - 1) { run + 1 } else { 1 };
            longest = longest.max(run);
            previous = Some(*sequence);
        }
        // Which backend got which stretch of the stream, in sequence order.
        let mut owners: BTreeMap<u64, &str> = BTreeMap::new();
        for (name, set) in &received {
            for sequence in set {
                owners.insert(*sequence, name);
            }
        }
        let mut runs: Vec<(String, u64, u64)> = Vec::new();
        for (sequence, name) in owners {
            match runs.last_mut() {
                Some((last_name, _, end)) if last_name == name => *end = sequence,
                _ => runs.push((name.to_owned(), sequence, sequence)),
            }
        }
        UdpResult {
            started: self.started,
            runs,
            sent: sent.len() as u64,
            lost: lost.len() as u64,
            lost_sequences: lost,
            longest_gap: longest,
            backends: received.iter().map(|(name, set)| (name.clone(), set.len() as u64)).collect(),
        }
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a UDP stream's packets met.
#[derive(Debug, Clone)]
pub struct UdpResult {
    /// When packet 0 was due (since the epoch).
    pub started: Duration,
    /// Backend, first and last sequence number of each stretch received by one backend.
    pub runs: Vec<(String, u64, u64)>,
    pub sent: u64,
    pub lost: u64,
    pub lost_sequences: Vec<u64>,
    /// Longest run of consecutive lost packets (milliseconds at 1 kHz).
    pub longest_gap: u64,
    /// Packets received per backend: more than one backend means the flow moved.
    pub backends: BTreeMap<String, u64>,
}

impl UdpResult {
    /// Packets lost among those due in `[from, to)` (times since the epoch).
    pub fn lost_between(&self, from: Duration, to: Duration) -> u64 {
        let due = |sequence: u64| self.started + UDP_PERIOD * sequence as u32;
        self.lost_sequences.iter().filter(|sequence| (from..to).contains(&due(**sequence))).count() as u64
    }

    /// Packets due in `[from, to)`.
    pub fn sent_between(&self, from: Duration, to: Duration) -> u64 {
        let due = |sequence: u64| self.started + UDP_PERIOD * sequence as u32;
        (0..self.sent).filter(|sequence| (from..to).contains(&due(*sequence))).count() as u64
    }

    /// Whether every received packet went to one backend (the flow never moved).
    pub fn one_backend(&self) -> bool {
        self.backends.len() == 1
    }
}

/// One keep-alive connection's record.
#[derive(Debug, Clone, Default)]
pub struct ConnectionRecord {
    pub backend: String,
    pub requests: u64,
    /// The first error, after which the connection is not used again.
    pub broken: Option<String>,
    pub slowest: Duration,
}

/// Keep-alive connections (each on its own thread) and a thread of new short connections, all
/// at [`REQUEST_PERIOD`], until finished.
pub struct Load {
    /// The client port of every keep-alive connection, in order.
    pub ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    keepalive: Vec<JoinHandle<ConnectionRecord>>,
    short: Option<JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    /// Opens `per_backend` keep-alive connections to each of `backends` (by name), then starts.
    pub fn start(client: &Namespace, port: u16, backends: &[&str], per_backend: usize) -> Self {
        let connections = connections_to(client, port, backends, per_backend);
        let ports = connections.iter().map(Connection::local_port).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let keepalive = connections
            .into_iter()
            .map(|mut connection: Connection| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut record = ConnectionRecord { backend: connection.backend.clone(), ..Default::default() };
                    while !stop.load(Ordering::Acquire) {
                        let began = Instant::now();
                        match connection.request() {
                            Ok(()) => record.requests += 1,
                            Err(error) => {
                                record.broken = Some(format!("after {} requests: {error}", record.requests));
                                break;
                            }
                        }
                        record.slowest = record.slowest.max(began.elapsed());
                        std::thread::sleep(REQUEST_PERIOD);
                    }
                    record
                })
            })
            .collect();
        let short = {
            let stop = stop.clone();
            let socket_namespace = client.name().to_owned();
            let file = std::fs::File::open(format!("/var/run/netns/{socket_namespace}")).unwrap();
            std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on this thread only, with a namespace fd we own.
                assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Acquire) {
                    match short_get(port) {
                        Ok(_) => ok += 1,
                        Err(error) => failed.push(error),
                    }
                    std::thread::sleep(REQUEST_PERIOD);
                }
                (ok, failed)
            })
        };
        Self { ports, stop, keepalive, short: Some(short) }
    }

    pub fn finish(mut self) -> LoadResult {
        self.stop.store(true, Ordering::Release);
        let connections = self.keepalive.drain(..).map(|thread| thread.join().unwrap()).collect();
        let (short_ok, short_failed) = self.short.take().unwrap().join().unwrap();
        LoadResult { connections, short_ok, short_failed }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.keepalive.drain(..) {
            let _ = thread.join();
        }
        if let Some(thread) = self.short.take() {
            let _ = thread.join();
        }
    }
}

/// One GET on a new connection (the calling thread is in the client namespace). The answer is
/// read by its length: the test server keeps a copy of every connection, so none ends in EOF.
fn short_get(port: u16) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from((VIP, port)), IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).map_err(|e| format!("read status: {e}"))?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {status:?}"));
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| format!("read header: {e}"))? == 0 {
            return Err("closed in the head".into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().map_err(|e| format!("content-length: {e}"))?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| format!("read body: {e}"))
}

/// What the HTTP load met.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub connections: Vec<ConnectionRecord>,
    pub short_ok: u64,
    pub short_failed: Vec<String>,
}

impl LoadResult {
    pub fn broken(&self) -> Vec<&ConnectionRecord> {
        self.connections.iter().filter(|record| record.broken.is_some()).collect()
    }

    /// Failed requests: a broken connection's failing request and every failed short one.
    pub fn failed(&self) -> usize {
        self.broken().len() + self.short_failed.len()
    }

    pub fn requests(&self) -> u64 {
        self.connections.iter().map(|record| record.requests).sum::<u64>() + self.short_ok + self.short_failed.len() as u64
    }

    pub fn slowest(&self) -> Duration {
        self.connections.iter().map(|record| record.slowest).max().unwrap_or_default()
    }
}
