//! The scale-out lab: a router namespace running BIRD 2 with ECMP over eBGP sessions to N
//! load-balancer namespaces, each running BIRD 2 configured like contrib/bird-announce.conf
//! (kernel table 100, protocol 201, learned into its own table, exported with `next hop self`),
//! and a client behind the router. Generated configurations live in a scratch directory; every
//! BIRD runs in the foreground under a guard that resumes, kills and reaps it, and the lab
//! deletes its namespaces and directory when dropped, also when a test panics.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netlab::{veth, Namespace};

use super::topology::{unique, wait_for};

/// The kernel table and route protocol number the announcements use (the controller's defaults).
pub const ANNOUNCE_TABLE: u32 = 100;
pub const ANNOUNCE_PROTOCOL: u8 = 201;
/// The VIP the BGP tests announce.
pub const BGP_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
/// The backend [`BgpLab::add_backend`] makes.
pub const BGP_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 202, 100, 2);
/// BGP timers of every session: the router forgets a silent node after `HOLD`.
pub const HOLD: Duration = Duration::from_secs(3);
pub const KEEPALIVE: Duration = Duration::from_secs(1);
const ROUTER_AS: u32 = 65000;
const LB_AS: u32 = 65001;

/// True when the test may create namespaces and the programs the lab runs are installed.
pub fn bgp_prerequisites() -> bool {
    use netlab::prerequisite::{require_program, root};
    root("namespaces, BIRD")
        && require_program("ip", "iproute2")
        && require_program("sysctl", "procps")
        && require_program("bird", "bird2")
        && require_program("birdc", "bird2")
}

/// The router's address on load balancer `index`'s link (`index` from 0).
pub fn router_side(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 202, 1 + index as u8, 1)
}

/// Load balancer `index`'s address on its link to the router: its BGP next hop.
pub fn lb_side(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 202, 1 + index as u8, 2)
}

/// One `bird -f` process in a namespace, with its control socket and log.
pub struct Bird {
    pub name: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Child,
    stopped: bool,
}

impl Bird {
    /// Checks `config` with `bird -p`, then starts BIRD in the foreground in `namespace`.
    pub fn start(namespace: &Namespace, dir: &Path, name: &str, config: &str) -> Self {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config).unwrap();
        let check = Command::new("bird").arg("-p").arg("-c").arg(&path).output().unwrap();
        assert!(check.status.success(), "bird -p {name}: {}\n{config}", String::from_utf8_lossy(&check.stderr));
        let socket = dir.join(format!("{name}.ctl"));
        let log = dir.join(format!("{name}.log"));
        let output = std::fs::File::create(&log).unwrap();
        let child = namespace
            .command("bird")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(&socket)
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        Self { name: name.to_owned(), socket, log, child, stopped: false }
    }

    /// `birdc -s SOCKET <command>`'s output; `None` while the socket does not answer.
    pub fn birdc(&self, command: &str) -> Option<String> {
        let output = Command::new("birdc").arg("-s").arg(&self.socket).args(command.split_whitespace()).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Whether BGP session `protocol` is Established.
    pub fn established(&self, protocol: &str) -> bool {
        self.birdc(&format!("show protocols {protocol}")).is_some_and(|text| text.contains("Established"))
    }

    /// SIGSTOP: the host goes silent, its sessions are not closed.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    /// SIGCONT after [`Bird::pause`].
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
    }

    /// `ip netns exec` execs BIRD in place, so the child's pid is BIRD's.
    fn signal(&self, signal: i32) {
        // SAFETY: a signal to our own child, which has not been reaped.
        let result = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(result, 0, "signal {signal} to bird {}", self.name);
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if self.stopped {
            self.signal(libc::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- bird {} ---\n{}", self.name, self.logs());
        }
    }
}

/// The router's BIRD: an eBGP session per load balancer, every best route with equal attributes
/// merged into one multipath kernel route.
fn router_config(lbs: usize) -> String {
    let mut text = format!(
        "router id 10.202.0.1;\nprotocol device {{ scan time 10; }}\n\
         protocol kernel {{\n  ipv4 {{ import none; export all; }};\n  merge paths on;\n}}\n\
         template bgp lb {{\n  local as {ROUTER_AS};\n{}  ipv4 {{ import all; export none; }};\n}}\n",
        timers()
    );
    for index in 0..lbs {
        text.push_str(&format!("protocol bgp lb{index} from lb {{ neighbor {} as {LB_AS}; }}\n", lb_side(index)));
    }
    text
}

/// A load balancer's BIRD, as contrib/bird-announce.conf.
fn lb_config(index: usize) -> String {
    format!(
        "router id {};\nipv4 table announce4;\nprotocol device {{ scan time 10; }}\n\
         protocol kernel announce_kernel4 {{\n  kernel table {ANNOUNCE_TABLE};\n  learn;\n  scan time 10;\n\
         \x20 ipv4 {{ table announce4; import where krt_source = {ANNOUNCE_PROTOCOL}; export none; }};\n}}\n\
         protocol bgp upstream {{\n  local as {LB_AS};\n  neighbor {} as {ROUTER_AS};\n{}\
         \x20 ipv4 {{ table announce4; import none; export where net.len = 32; next hop self; }};\n}}\n",
        lb_side(index),
        router_side(index),
        timers()
    )
}

fn timers() -> String {
    format!(
        "  hold time {};\n  keepalive time {};\n  connect retry time 1;\n  connect delay time 1;\n  error wait time 1, 2;\n",
        HOLD.as_secs(),
        KEEPALIVE.as_secs()
    )
}

/// Router, client and load balancers, with BIRD running on the router and every load balancer.
/// Field order is drop order: the BIRDs stop before their namespaces go.
pub struct BgpLab {
    pub router_bird: Bird,
    pub lb_birds: Vec<Bird>,
    pub router: Namespace,
    pub client: Namespace,
    /// Load balancer `i` reaches the router through its `l0` (as in [`super::Topology`]), the
    /// router it through `r{i+1}`.
    pub lbs: Vec<Namespace>,
    pub dir: Scratch,
}

impl BgpLab {
    /// Builds the namespaces, starts every BIRD and waits until every session is Established.
    pub fn new(lbs: usize) -> Self {
        netlab::cleanup_stale().unwrap();
        let dir = std::env::temp_dir().join(format!("failover-bgp-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let scratch = Scratch(dir);
        let dir = &scratch.0;
        let router = Namespace::create("bgprouter").unwrap();
        let client = Namespace::create("bgpclient").unwrap();
        let lb_namespaces: Vec<Namespace> = (0..lbs).map(|_| Namespace::create("bgplb").unwrap()).collect();
        veth(&client, "c0", &router, "r0").unwrap();
        client.ip("addr add 10.202.0.2/24 dev c0").unwrap();
        client.ip("route add default via 10.202.0.1").unwrap();
        router.ip("addr add 10.202.0.1/24 dev r0").unwrap();
        for (index, lb) in lb_namespaces.iter().enumerate() {
            let router_interface = format!("r{}", index + 1);
            veth(lb, "l0", &router, &router_interface).unwrap();
            router.ip(&format!("addr add {}/24 dev {router_interface}", router_side(index))).unwrap();
            lb.ip(&format!("addr add {}/24 dev l0", lb_side(index))).unwrap();
            lb.ip(&format!("route add default via {}", router_side(index))).unwrap();
        }
        // Hash on ports too: one client's flows spread over the next hops.
        router
            .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1"])
            .unwrap();
        let router_bird = Bird::start(&router, dir, "router", &router_config(lbs));
        let lb_birds = lb_namespaces
            .iter()
            .enumerate()
            .map(|(index, lb)| Bird::start(lb, dir, &format!("lb{index}"), &lb_config(index)))
            .collect();
        let lab = Self { router_bird, lb_birds, router, client, lbs: lb_namespaces, dir: scratch };
        let up = wait_for(Duration::from_secs(15), || {
            (0..lbs).all(|index| lab.router_bird.established(&format!("lb{index}"))).then_some(())
        });
        assert!(up.is_some(), "BGP sessions not Established within 15 s:\n{}", lab.router_bird.birdc("show protocols").unwrap_or_default());
        lab
    }

    /// A backend namespace behind the router (`BGP_BACKEND`, through the router's `rb`): what
    /// the load balancers' daemons probe.
    pub fn add_backend(&self) -> Namespace {
        let backend = Namespace::create("bgpbackend").unwrap();
        veth(&backend, "b0", &self.router, "rb").unwrap();
        self.router.ip("addr add 10.202.100.1/24 dev rb").unwrap();
        backend.ip(&format!("addr add {BGP_BACKEND}/24 dev b0")).unwrap();
        backend.ip("route add default via 10.202.100.1").unwrap();
        backend
    }

    /// Adds the blackhole route the controller would write for `vip` in load balancer `index`.
    pub fn announce(&self, index: usize, vip: Ipv4Addr) {
        self.lbs[index]
            .ip(&format!("route add blackhole {vip}/32 table {ANNOUNCE_TABLE} proto {ANNOUNCE_PROTOCOL}"))
            .unwrap();
    }

    /// Deletes that route.
    pub fn withdraw(&self, index: usize, vip: Ipv4Addr) {
        self.lbs[index]
            .ip(&format!("route del blackhole {vip}/32 table {ANNOUNCE_TABLE} proto {ANNOUNCE_PROTOCOL}"))
            .unwrap();
    }

    /// The gateways of the router's route to `prefix` (`a.b.c.d/len`), sorted; empty without one.
    pub fn router_next_hops(&self, prefix: &str) -> Vec<IpAddr> {
        router_next_hops(&self.router, prefix)
    }

    /// Polls every 10 ms until the router's route to `prefix` has exactly `expected` next hops;
    /// the time it took. Panics after `limit`.
    pub fn wait_next_hops(&self, prefix: &str, expected: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let hops = self.router_next_hops(prefix);
            if hops.len() == expected {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "the router has {hops:?} for {prefix} after {limit:?}, expected {expected} next hops\n{}",
                self.router_bird.birdc("show route all").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A scratch directory removed when dropped: the lab's last field, so the BIRD guards have
/// printed their logs (on a panic) before it goes.
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The gateways of `namespace`'s main-table route to `prefix`, from `ip -j route show`: one
/// `gateway` for a single path, `nexthops[].gateway` for a multipath route.
pub fn router_next_hops(namespace: &Namespace, prefix: &str) -> Vec<IpAddr> {
    let output = namespace.exec(&["ip", "-j", "route", "show", "exact", prefix]).unwrap();
    let routes: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut hops: Vec<IpAddr> = Vec::new();
    for route in routes.as_array().into_iter().flatten() {
        let gateways = route["nexthops"].as_array().map_or_else(|| vec![&route["gateway"]], |hops| hops.iter().map(|hop| &hop["gateway"]).collect());
        hops.extend(gateways.into_iter().filter_map(|gateway| gateway.as_str()?.parse::<IpAddr>().ok()));
    }
    hops.sort();
    hops
}
