//! The lab the daemon tests run in: client, router, load-balancer and backend namespaces joined
//! by veth pairs, backend HTTP servers that can be killed and restarted, an HTTP client that
//! learns which backend answered, and a guard around the `failover-ctl run` process that stops
//! it, tears its pins down and deletes the namespaces, also when a test panics.
//!
//! Addresses only have to be unique inside one lab: every lab has its own namespaces.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support module"
)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use failover_ctl::{
    daemon::{
        events,
        status::{BackendStatus, Event, Status},
    },
    loader::Decap,
    paths::InstancePaths,
};
use netlab::{veth, Namespace};

/// The daemon binary under test.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_failover-ctl");

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 100, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
pub const LB: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 2);
pub const ROUTER_LB_SIDE: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 1);
/// Outer sources of the tunnel: a prefix no namespace owns (a router would drop a forwarded
/// packet whose source is one of its own addresses).
pub const TUNNEL_SOURCE: &str = "10.201.50.0/24";

/// Probe timing the tests use, and the margins derived from it.
pub const INTERVAL: Duration = Duration::from_millis(100);
pub const TIMEOUT: Duration = Duration::from_millis(80);
pub const RISE: u32 = 2;
pub const FALL: u32 = 2;
/// Slack for jitter, scheduling on 2 vCPUs and a map update.
pub const MARGIN: Duration = Duration::from_millis(500);

/// How long a client waits for a connect or an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this test process.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// True when the test may create namespaces and load BPF programs, and the programs
/// [`Topology`] runs are installed; skips without root (fails in CI), see [`netlab::prerequisite`].
pub fn root() -> bool {
    use netlab::prerequisite::{require_program, root};
    root("namespaces, BPF")
        && require_program("ip", "iproute2")
        && require_program("sysctl", "procps")
        && require_program("ethtool", "ethtool")
}

/// The address of backend `index` (each backend has its own link to the router).
pub fn backend_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, 11 + index as u8, 2)
}

/// The name backend `index`'s server answers with.
pub fn backend_name(index: usize) -> String {
    format!("b{index}")
}

pub fn millis_now() -> u64 {
    failover_ctl::daemon::status::now_millis()
}

/// Polls `check` every 20 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Client, router, load balancer and backends, with decap programs on the backends and on the
/// router's side of the load-balancer link (XDP_TX on a veth needs NAPI on the peer, which an
/// attached XDP program provides).
pub struct Topology {
    /// Kept loaded for as long as the namespaces live.
    decaps: Vec<Decap>,
    pub client: Namespace,
    pub router: Namespace,
    pub lb: Namespace,
    pub backends: Vec<Namespace>,
}

impl Topology {
    pub fn new(backends: usize) -> Self {
        netlab::cleanup_stale().unwrap();
        let mut t = Self {
            decaps: Vec::new(),
            client: Namespace::create("client").unwrap(),
            router: Namespace::create("router").unwrap(),
            lb: Namespace::create("lb").unwrap(),
            backends: (0..backends)
                .map(|_| Namespace::create("backend").unwrap())
                .collect(),
        };
        veth(&t.client, "c0", &t.router, "r0").unwrap();
        veth(&t.lb, "l0", &t.router, "r1").unwrap();
        t.client.ip("addr add 10.201.1.2/24 dev c0").unwrap();
        t.client.ip("route add default via 10.201.1.1").unwrap();
        t.router.ip("addr add 10.201.1.1/24 dev r0").unwrap();
        t.router.ip("addr add 10.201.2.1/24 dev r1").unwrap();
        t.router
            .ip(&format!("route add {VIP}/32 via {LB}"))
            .unwrap();
        t.router
            .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .unwrap();
        t.lb.ip("addr add 10.201.2.2/24 dev l0").unwrap();
        t.lb.ip("route add default via 10.201.2.1").unwrap();
        for (index, backend) in t.backends.iter().enumerate() {
            let router_side = format!("r{}", index + 2);
            veth(backend, "b0", &t.router, &router_side).unwrap();
            let subnet = 11 + index;
            t.router
                .ip(&format!("addr add 10.201.{subnet}.1/24 dev {router_side}"))
                .unwrap();
            backend
                .ip(&format!("addr add 10.201.{subnet}.2/24 dev b0"))
                .unwrap();
            backend
                .ip(&format!("route add default via 10.201.{subnet}.1"))
                .unwrap();
            backend.ip(&format!("addr add {VIP}/32 dev lo")).unwrap();
        }
        let all: Vec<&Namespace> = [&t.client, &t.router, &t.lb]
            .into_iter()
            .chain(&t.backends)
            .collect();
        for ns in all {
            ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])
                .unwrap();
            ns.exec(&["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"])
                .unwrap();
        }
        // Veth hands partially checksummed packets to its peer; a packet that leaves through an
        // XDP_TX tunnel must carry a complete checksum.
        t.client
            .exec(&["ethtool", "-K", "c0", "tx", "off"])
            .unwrap();
        let mut napi = Decap::load().unwrap();
        t.router
            .enter(|| napi.attach("r1", XdpMode::Driver))
            .unwrap()
            .unwrap();
        t.decaps.push(napi);
        for backend in &t.backends {
            let mut decap = Decap::load().unwrap();
            decap.add_vip(IpAddr::V4(VIP)).unwrap();
            backend
                .enter(|| decap.attach("b0", XdpMode::Driver))
                .unwrap()
                .unwrap();
            t.decaps.push(decap);
        }
        t
    }

    /// The router's MAC on the load-balancer link: the next hop of every tunnel packet.
    pub fn next_hop_mac(&self) -> String {
        self.router
            .mac("r1")
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

// ---------------------------------------------------------------------------------------------
// Backend HTTP servers.

/// An HTTP server on port `port` of every address of a backend namespace: answers every GET
/// with `200` and its name, keeps connections alive. Killing it closes the listener (new
/// connects get a reset) and every open connection.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(ns: &Namespace, port: u16, name: &str) -> Self {
        let listener = ns
            .enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let stop = stop.clone();
            let connections = connections.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            if let Ok(copy) = stream.try_clone() {
                                connections.lock().unwrap().push(copy);
                            }
                            let name = name.clone();
                            std::thread::spawn(move || serve_connection(stream, &name));
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                // The listener closes here: connects get a reset from now on.
            })
        };
        Self {
            stop,
            connections,
            accept: Some(accept),
        }
    }

    /// Closes the listener, then every connection.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve_connection(stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        // Read one request head; bodies are not expected.
        let mut close = false;
        let mut first = true;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                if first {
                    continue;
                }
                break;
            }
            first = false;
            if line.to_ascii_lowercase().starts_with("connection:")
                && line.to_ascii_lowercase().contains("close")
            {
                close = true;
            }
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{name}",
            name.len()
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// A keep-alive HTTP connection through the VIP.
pub struct Connection {
    reader: BufReader<TcpStream>,
    /// The backend that answered the first request.
    pub backend: String,
}

/// Sends one GET on `reader`'s stream and returns the body.
fn get(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    reader
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    let n = reader
        .read_line(&mut status)
        .map_err(|e| format!("read status: {e}"))?;
    if n == 0 {
        return Err("connection closed before the answer".into());
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {status:?}"));
    }
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .map_err(|e| format!("read header: {e}"))?
            == 0
        {
            return Err("connection closed in the head".into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.ok_or("no content-length")?];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    String::from_utf8(body).map_err(|e| e.to_string())
}

impl Connection {
    /// Connects from the client namespace to the VIP and makes a first request.
    pub fn open(client: &Namespace, port: u16) -> Result<Self, String> {
        let stream = client
            .enter(|| TcpStream::connect_timeout(&SocketAddr::from((VIP, port)), IO_TIMEOUT))
            .unwrap()
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut reader = BufReader::new(stream);
        let backend = get(&mut reader)?;
        Ok(Self { reader, backend })
    }

    /// One more request on the same connection; the answer must come from the same backend.
    pub fn request(&mut self) -> Result<(), String> {
        let body = get(&mut self.reader)?;
        if body != self.backend {
            return Err(format!("answered by {body}, expected {}", self.backend));
        }
        Ok(())
    }
}

/// Opens keep-alive connections until there are `per_backend` to each backend in `wanted`.
pub fn connections_to(
    client: &Namespace,
    port: u16,
    wanted: &[&str],
    per_backend: usize,
) -> Vec<Connection> {
    let mut found: Vec<Connection> = Vec::new();
    for _ in 0..400 {
        let missing = wanted
            .iter()
            .any(|name| found.iter().filter(|c| c.backend == *name).count() < per_backend);
        if !missing {
            return found;
        }
        let connection = Connection::open(client, port).unwrap();
        if wanted.contains(&connection.backend.as_str())
            && found
                .iter()
                .filter(|c| c.backend == connection.backend)
                .count()
                < per_backend
        {
            found.push(connection);
        }
    }
    panic!("could not open {per_backend} connections to each of {wanted:?} in 400 tries");
}

/// The outcome of `count` short connections (one GET each, distinct source ports).
#[derive(Debug, Default)]
pub struct Tally {
    pub per_backend: BTreeMap<String, usize>,
    pub errors: Vec<String>,
}

impl Tally {
    pub fn count(&self, name: &str) -> usize {
        self.per_backend.get(name).copied().unwrap_or(0)
    }
    pub fn total(&self) -> usize {
        self.per_backend.values().sum()
    }
}

/// Opens `count` short connections from the client namespace, one GET each.
pub fn short_requests(client: &Namespace, port: u16, count: usize) -> Tally {
    client
        .enter(|| {
            let mut tally = Tally::default();
            for _ in 0..count {
                let result = TcpStream::connect_timeout(&SocketAddr::from((VIP, port)), IO_TIMEOUT)
                    .map_err(|e| format!("connect: {e}"))
                    .and_then(|stream| {
                        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                        get(&mut BufReader::new(stream))
                    });
                match result {
                    Ok(name) => *tally.per_backend.entry(name).or_default() += 1,
                    Err(error) => tally.errors.push(error),
                }
            }
            tally
        })
        .unwrap()
}

/// Sends a request on every connection every `period` on a thread until stopped; collects errors.
pub struct Exerciser {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(Vec<Connection>, Vec<String>, u64)>>,
}

impl Exerciser {
    pub fn start(mut connections: Vec<Connection>, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut rounds = 0;
            while !flag.load(Ordering::Acquire) {
                for connection in &mut connections {
                    if let Err(error) = connection.request() {
                        errors.push(format!(
                            "{} at {}: {error}",
                            connection.backend,
                            millis_now()
                        ));
                    }
                }
                rounds += 1;
                std::thread::sleep(period);
            }
            (connections, errors, rounds)
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread; returns the connections, the errors and the number of rounds.
    pub fn finish(mut self) -> (Vec<Connection>, Vec<String>, u64) {
        self.stop.store(true, Ordering::Release);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Exerciser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon.

/// One backend line of a generated configuration.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub address: Ipv4Addr,
    pub weight: u16,
    pub tier: &'static str,
    /// The probe table, e.g. `{ kind = "http", path = "/" }`, without the timing keys.
    pub probe: String,
}

impl BackendSpec {
    pub fn http(index: usize) -> Self {
        Self {
            address: backend_address(index),
            weight: 1,
            tier: "primary",
            probe: "kind = \"http\", path = \"/\"".into(),
        }
    }
}

/// A generated configuration file for one VIP.
#[derive(Debug, Clone)]
pub struct ConfigSpec {
    pub instance: String,
    pub metrics_port: u16,
    pub next_hop_mac: String,
    pub vip_name: &'static str,
    pub vip_port: u16,
    pub backends: Vec<BackendSpec>,
}

impl ConfigSpec {
    pub fn render(&self) -> String {
        let mut text = format!(
            "instance = \"{}\"\ninterfaces = [\"l0\"]\nxdp_mode = \"native\"\nmetrics_address = \"127.0.0.1:{}\"\n\n\
             [next_hop]\nmac = \"{}\"\n\n[tunnel]\nsource_v4 = \"{TUNNEL_SOURCE}\"\n\n[flows]\ncapacity = 4096\n\n\
             [probe_defaults]\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {RISE}\nfall = {FALL}\njitter = \"10%\"\n\n\
             [[vip]]\nname = \"{}\"\naddress = \"{VIP}\"\nport = {}\nprotocol = \"tcp\"\ntable_size = 65537\n",
            self.instance,
            self.metrics_port,
            self.next_hop_mac,
            INTERVAL.as_millis(),
            TIMEOUT.as_millis(),
            self.vip_name,
            self.vip_port,
        );
        for backend in &self.backends {
            text.push_str(&format!(
                "\n[[vip.backend]]\naddress = \"{}\"\nweight = {}\ntier = \"{}\"\nprobe = {{ {} }}\n",
                backend.address, backend.weight, backend.tier, backend.probe
            ));
        }
        text
    }
}

/// The `failover-ctl run` process of one test, its configuration and runtime files. Dropping it
/// stops the daemon (SIGTERM, SIGKILL after 5 s), tears the instance down (detach, unpin) and
/// removes the run and scratch directories.
pub struct Daemon {
    pub instance: String,
    pub paths: InstancePaths,
    pub namespace: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    starts: u32,
}

/// Instance names of this suite: `dt-<pid>-<n>`.
const INSTANCE_PREFIX: &str = "dt-";

/// Tears down instances of this suite left by a crashed earlier run (their pid is gone).
fn cleanup_stale_instances() {
    let root = InstancePaths::new("x")
        .pin_dir
        .parent()
        .unwrap()
        .to_path_buf();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(INSTANCE_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            let _ = Command::new(DAEMON)
                .args(["--instance", &name, "teardown"])
                .output();
        }
    }
}

impl Daemon {
    /// A new instance name and scratch directory; writes `spec` (with that instance) and starts
    /// the daemon in `lb`.
    pub fn start(lb: &Namespace, spec: &mut ConfigSpec) -> Self {
        cleanup_stale_instances();
        let n = unique();
        let instance = format!("{INSTANCE_PREFIX}{}-{n}", std::process::id());
        spec.instance = instance.clone();
        let dir = std::env::temp_dir().join(format!("failover-daemon-test-{instance}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("failover.toml");
        std::fs::write(&config, spec.render()).unwrap();
        let mut daemon = Self {
            paths: InstancePaths::new(&instance),
            instance,
            namespace: lb.name().to_string(),
            dir,
            config,
            child: None,
            starts: 0,
        };
        daemon.spawn();
        daemon
    }

    /// Starts `failover-ctl run` and waits until its control socket answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("daemon-{}.log", self.starts))).unwrap();
        let child = Command::new(DAEMON)
            .args(["--netns", &self.namespace, "run", "--config"])
            .arg(&self.config)
            .env("FAILOVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.child = Some(child);
        let ready = wait_for(Duration::from_secs(20), || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the daemon exited with {status} while starting:\n{}",
                    self.logs()
                );
            }
            let status = self.status()?;
            (status.pid == pid && self.paths.control_socket().exists()).then_some(())
        });
        assert!(
            ready.is_some(),
            "the daemon did not start within 20 s:\n{}",
            self.logs()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL when the daemon has not stopped within 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling a child we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let stopped = wait_for(Duration::from_secs(5), || child.try_wait().ok().flatten());
        if stopped.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every log the daemon wrote, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for start in 1..=self.starts {
            let path = self.dir.join(format!("daemon-{start}.log"));
            text.push_str(&format!("--- {}\n", path.display()));
            text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
        text
    }

    /// The last `state.json`, if readable.
    pub fn status(&self) -> Option<Status> {
        let bytes = std::fs::read(self.paths.state()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn events(&self) -> Vec<Event> {
        events::read(&self.paths.events()).unwrap()
    }

    /// The backend with this address in `state.json`.
    pub fn backend(&self, address: Ipv4Addr) -> Option<BackendStatus> {
        let status = self.status()?;
        status
            .vips
            .iter()
            .flat_map(|vip| &vip.backends)
            .find(|b| b.address == address.to_string())
            .cloned()
    }

    /// Waits until `state.json` says exactly `serving` (addresses) serve and returns how long it took.
    pub fn wait_serving(&self, serving: &[Ipv4Addr], limit: Duration) -> Duration {
        let start = Instant::now();
        let mut expected: Vec<String> = serving.iter().map(|a| a.to_string()).collect();
        expected.sort();
        let found = wait_for(limit, || {
            let status = self.status()?;
            let mut now: Vec<String> = status
                .vips
                .iter()
                .flat_map(|vip| &vip.backends)
                .filter(|b| b.serving)
                .map(|b| b.address.clone())
                .collect();
            now.sort();
            (now == expected).then_some(())
        });
        assert!(
            found.is_some(),
            "state.json did not show {expected:?} serving within {limit:?}: {:#?}\n{}",
            self.status().map(|s| s.vips),
            self.logs()
        );
        start.elapsed()
    }

    /// Runs `failover-ctl --instance <instance> <args>` (the control commands need no namespace).
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(DAEMON)
            .args(["--instance", &self.instance])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The id of the XDP program attached to `l0` in the load-balancer namespace.
    pub fn attached_program_id(&self) -> u64 {
        let output = Command::new("ip")
            .args(["-j", "-n", &self.namespace, "link", "show", "dev", "l0"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        fn find(value: &serde_json::Value) -> Option<u64> {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(id) = map
                        .get("prog")
                        .and_then(|p| p.get("id"))
                        .and_then(|id| id.as_u64())
                    {
                        return Some(id);
                    }
                    map.values().find_map(find)
                }
                serde_json::Value::Array(items) => items.iter().find_map(find),
                _ => None,
            }
        }
        find(&value).unwrap_or_else(|| panic!("no XDP program on l0: {value}"))
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let output = Command::new(DAEMON)
            .args(["--instance", &self.instance, "teardown"])
            .output();
        if let Ok(output) = output {
            if !output.status.success() {
                eprintln!(
                    "teardown of {}: {}",
                    self.instance,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.paths.run_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A whole lab: the daemon is dropped first (stopped, torn down), then the servers, then the
/// namespaces.
pub struct Lab {
    pub daemon: Daemon,
    pub servers: Vec<Option<HttpServer>>,
    pub topology: Topology,
}

impl Lab {
    /// `backends` HTTP backends on port 80 with the given weights and tiers, all up.
    pub fn http(weights_and_tiers: &[(u16, &'static str)]) -> Self {
        let topology = Topology::new(weights_and_tiers.len());
        let servers = (0..weights_and_tiers.len())
            .map(|index| {
                Some(HttpServer::start(
                    &topology.backends[index],
                    80,
                    &backend_name(index),
                ))
            })
            .collect();
        let mut spec = ConfigSpec {
            instance: String::new(),
            metrics_port: 9650 + (unique() % 1000) as u16,
            next_hop_mac: topology.next_hop_mac(),
            vip_name: "web",
            vip_port: 80,
            backends: weights_and_tiers
                .iter()
                .enumerate()
                .map(|(index, (weight, tier))| BackendSpec {
                    weight: *weight,
                    tier,
                    ..BackendSpec::http(index)
                })
                .collect(),
        };
        let daemon = Daemon::start(&topology.lb, &mut spec);
        let lab = Self {
            daemon,
            servers,
            topology,
        };
        let all: Vec<Ipv4Addr> = weights_and_tiers
            .iter()
            .enumerate()
            .filter(|(_, (_, tier))| *tier == "primary")
            .map(|(index, _)| backend_address(index))
            .collect();
        lab.daemon.wait_serving(&all, Duration::from_secs(10));
        lab
    }

    pub fn kill_server(&mut self, index: usize) {
        if let Some(mut server) = self.servers[index].take() {
            server.kill();
        }
    }

    pub fn restart_server(&mut self, index: usize) {
        assert!(self.servers[index].is_none());
        self.servers[index] = Some(HttpServer::start(
            &self.topology.backends[index],
            80,
            &backend_name(index),
        ));
    }
}

/// The allowed deviation of a count from `n * p`: `sigmas` binomial standard deviations.
pub fn binomial_tolerance(n: usize, p: f64, sigmas: f64) -> f64 {
    sigmas * (n as f64 * p * (1.0 - p)).sqrt()
}
