//! Which load balancer carries which flow: bursts of short connections whose client ports are
//! kept, each node's own flow table (`flows --json`) for those ports, the router's ECMP choice
//! for the long-lived connections, and how many flows changed node between two moments.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use netlab::Namespace;
use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};

use crate::lab::{
    config::VIP_NAME,
    control::Daemon,
    topology::{CLIENT, PORT, VIP},
};

/// Connect, read and write timeout of a burst's requests.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The client ports of the bursts: above the client's ephemeral range (see `network`), each
/// used once in a run, so that a node's flow-table entry for such a port is that connection's
/// (an ephemeral port may have carried an earlier flow, tracked on some node since).
pub const BURST_PORTS: std::ops::RangeInclusive<u16> = 50_000..=65_000;

/// How many burst ports this run has used.
static USED: AtomicUsize = AtomicUsize::new(0);
/// Consecutive burst ports are this far apart (modulo the range; coprime to its size, so that
/// every port comes once): a burst samples ports from the whole range, as clients' random
/// ephemeral ports would, rather than one stretch of it.
const STRIDE: usize = 4099;

/// The `index`-th burst port of this run. A run starts at an offset of its own: the router's
/// hash of given ports is the same in every run (its seed is the host's), so that each run
/// samples other ports.
fn burst_port(index: usize) -> u16 {
    let span = usize::from(BURST_PORTS.end() - BURST_PORTS.start()) + 1;
    let offset = std::process::id() as usize;
    BURST_PORTS.start() + ((offset + index * STRIDE) % span) as u16
}

/// Reserves `count` burst ports; the index of the first.
fn take_ports(count: usize) -> Result<usize> {
    let first = USED.fetch_add(count, Ordering::Relaxed);
    if first + count > BURST_PORTS.len() {
        bail!("the bursts of this run used up the client ports {BURST_PORTS:?}");
    }
    Ok(first)
}

/// A burst of short connections, each answered or not.
#[derive(Debug, Default)]
pub struct Burst {
    /// The client ports of the answered connections.
    pub ports: BTreeSet<u16>,
    pub failed: usize,
    pub took: Duration,
}

/// `count` short connections to the VIP (a GET each, then closed) from the client namespace,
/// on `threads` threads, each from a burst port of its own.
pub fn burst(client: &Namespace, count: usize, threads: usize) -> Result<Burst> {
    let first = take_ports(count)?;
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let ports = Mutex::new(BTreeSet::new());
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    client.enter(|| loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count {
                            break;
                        }
                        let port = burst_port(first + index);
                        match get_from(port) {
                            Ok(()) => {
                                if let Ok(mut ports) = ports.lock() {
                                    ports.insert(port);
                                }
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a burst thread panicked"))??;
        }
        anyhow::Ok(())
    })?;
    Ok(Burst {
        ports: ports.into_inner().unwrap_or_default(),
        failed: failed.into_inner(),
        took: started.elapsed(),
    })
}

/// One `GET /` to the VIP from the client's `port`, answered with 200; the server closes.
fn get_from(port: u16) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from((CLIENT, port)).into())?;
    socket.connect_timeout(&SocketAddr::from((VIP, PORT)).into(), TIMEOUT)?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nhost: {VIP}:{PORT}\r\nconnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    if !answer.starts_with(b"HTTP/1.1 200 ") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a 200 answer",
        ));
    }
    Ok(())
}

/// `flows --json` (failover-ctl/src/cli/inspect/flows.rs): the fields the lab reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FlowsView {
    flows: Vec<FlowRow>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FlowRow {
    /// `ADDRESS:PORT` of the client.
    client: String,
}

/// Which of the client's `ports` `daemon`'s node tracks a flow for: the bursts' connections
/// that node carried.
pub fn seen(daemon: &Daemon, ports: &BTreeSet<u16>) -> Result<BTreeSet<u16>> {
    let text = daemon.ctl(&["flows", "--json", "--vip", VIP_NAME, "--limit", "10000000"])?;
    let view: FlowsView = serde_json::from_str(&text)
        .with_context(|| format!("parsing `flows --json` of {}", daemon.name))?;
    Ok(client_ports(&view)
        .into_iter()
        .filter(|port| ports.contains(port))
        .collect())
}

/// The client's ports among the tracked flows.
fn client_ports(view: &FlowsView) -> BTreeSet<u16> {
    let prefix = format!("{CLIENT}:");
    view.flows
        .iter()
        .filter_map(|flow| flow.client.strip_prefix(&prefix)?.parse().ok())
        .collect()
}

/// Of the flows known at both moments, how many there are and how many changed node.
pub fn moved(before: &BTreeMap<u16, usize>, after: &BTreeMap<u16, usize>) -> (usize, usize) {
    let common: Vec<(usize, usize)> = before
        .iter()
        .filter_map(|(port, lb)| after.get(port).map(|other| (*lb, *other)))
        .collect();
    let changed = common.iter().filter(|(lb, other)| lb != other).count();
    (common.len(), changed)
}

/// Each node's share of `total`, and whether every share lies within `tolerance` (relative)
/// of an even split.
pub fn spread(counts: &[usize], total: usize, tolerance: f64) -> (Vec<f64>, bool) {
    let even = 1.0 / counts.len().max(1) as f64;
    let shares: Vec<f64> = counts
        .iter()
        .map(|&count| count as f64 / total.max(1) as f64)
        .collect();
    let even_enough = total > 0
        && shares
            .iter()
            .all(|share| (share - even).abs() <= even * tolerance);
    (shares, even_enough)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_clients_flows() {
        let text = r#"{"total":4,"matching":4,"shown":4,"flows":[
            {"client":"10.100.1.2:40000","vip":"10.100.0.10:80/tcp","vip_name":"web","protocol":"tcp","backend_id":1,"backend":"10.100.11.2","age_ms":20,"state":"live"},
            {"client":"10.100.1.2:40001","age_ms":900},
            {"client":"10.100.1.22:40002","age_ms":10}]}"#;
        let view: FlowsView = serde_json::from_str(text).unwrap();
        assert_eq!(client_ports(&view), BTreeSet::from([40000, 40001]));
    }

    #[test]
    fn burst_ports_cover_the_range_once() {
        let ports: BTreeSet<u16> = (0..BURST_PORTS.len()).map(burst_port).collect();
        assert_eq!(ports.len(), BURST_PORTS.len());
        assert!(ports.iter().all(|port| BURST_PORTS.contains(port)));
        let step = burst_port(1).abs_diff(burst_port(0));
        assert!(step > 1000, "consecutive burst ports are far apart: {step}");
    }

    #[test]
    fn moved_flows_and_spread() {
        let before = BTreeMap::from([(1, 0), (2, 1), (3, 0), (4, 1)]);
        let after = BTreeMap::from([(1, 0), (2, 2), (3, 1), (5, 2)]);
        assert_eq!(moved(&before, &after), (3, 2));
        let (shares, even) = spread(&[520, 480], 1000, 0.1);
        assert_eq!(shares, [0.52, 0.48]);
        assert!(even);
        assert!(
            !spread(&[560, 440], 1000, 0.1).1,
            "56% is beyond 50% +- 5 points"
        );
        assert!(spread(&[350, 320, 330], 1000, 0.1).1);
        assert!(!spread(&[0, 0], 0, 0.1).1, "nothing counted is no spread");
    }
}
