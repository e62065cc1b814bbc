//! Nodes starting to announce, and phase 1: the time from each daemon's route write to its next
//! hop on the router, and the spread of a burst of short connections over the nodes, counted
//! from each node's own flow table (and compared with the router's ECMP choice for the same
//! ports, which the later phases rely on).

use std::{collections::BTreeSet, time::Duration};

use anyhow::Result;
use netlab::Namespace;
use serde_json::{json, Map, Value};

use super::{
    flows,
    network::names,
    node::Node,
    stage::{is_route_write, wait_event, Stage},
    summary::{ms, Row},
    watch::watching,
};
use crate::lab::{
    control::{now_millis, say},
    topology::lb_name,
};

/// The route write to next hop bound the lab holds every node to (BIRD learns the table by
/// netlink, one eBGP update, the router's kernel route).
pub const ANNOUNCE_BOUND: Duration = Duration::from_secs(1);
/// Longest wait for a next hop to appear.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(10);
/// Short connections whose spread over the nodes is counted.
const BURST: usize = 1000;
const BURST_THREADS: usize = 16;
/// Each node's share must lie within this much (relative) of 1/N.
const SPREAD_TOLERANCE: f64 = 0.10;

/// How one node's first announcement reached the router.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub index: usize,
    /// When its daemon started, ms since the Unix epoch.
    pub started_ms: u64,
    /// Its `announce` event (the route written to table 100), ms.
    pub event_ms: Option<u64>,
    /// The first poll of the router that showed its next hop, µs.
    pub router_us: Option<u64>,
}

impl Announcement {
    /// Route written to next hop on the router, µs.
    pub fn latency_us(&self) -> Option<u64> {
        Some(self.router_us?.saturating_sub(self.event_ms? * 1000))
    }
}

/// Starts the daemons of `which` nodes with the router's table polled; waits for each one's
/// route write and for its next hop on the router.
pub fn start_and_announce(
    router: &Namespace,
    nodes: &mut [Node],
    which: &[usize],
) -> Result<Vec<Announcement>> {
    let (announcements, _) = watching(router, |samples| {
        let started_ms = now_millis();
        for node in nodes.iter_mut().filter(|node| which.contains(&node.index)) {
            say(format!(
                "lab: starting `failover-ctl run --config {}` on {}",
                node.daemon.config.display(),
                node.name()
            ));
            node.daemon.start()?;
        }
        let mut announcements = Vec::new();
        for node in nodes.iter_mut().filter(|node| which.contains(&node.index)) {
            let event = wait_event(&mut node.daemon, started_ms, |event| {
                is_route_write(event, "announced")
            })?;
            let index = node.index;
            let sample = samples.wait(started_ms * 1000, ANNOUNCE_WAIT, |hops| {
                hops.contains(&index)
            })?;
            let announcement = Announcement {
                index,
                started_ms,
                event_ms: event.map(|event| event.at),
                router_us: sample.map(|sample| sample.at_us),
            };
            say(format!("    {}: {}", node.name(), describe(&announcement)));
            announcements.push(announcement);
        }
        Ok(announcements)
    })?;
    Ok(announcements)
}

/// "route written 812 ms after the start, on the router 41.2 ms later".
pub fn describe(announcement: &Announcement) -> String {
    match (announcement.event_ms, announcement.latency_us()) {
        (Some(event), Some(latency)) => format!(
            "route written {} ms after the daemon started, next hop on the router {:.1} ms later",
            event.saturating_sub(announcement.started_ms),
            ms(latency)
        ),
        (Some(event), None) => format!(
            "route written {} ms after the daemon started, never on the router",
            event.saturating_sub(announcement.started_ms)
        ),
        (None, _) => "no route written (no `announce` event)".into(),
    }
}

/// Fills in `row` with the announcements: times, and the bound checked for each.
pub fn record(row: &mut Row, announcements: &[Announcement]) {
    let mut times = Map::new();
    for announcement in announcements {
        let name = lb_name(announcement.index);
        let latency = announcement.latency_us();
        times.insert(name.clone(), latency.map(ms).into());
        row.time(format!(
            "{name} {}",
            latency.map_or("-".into(), |latency| format!("{:.1} ms", ms(latency)))
        ));
        row.check(
            latency.is_some_and(|latency| latency <= ANNOUNCE_BOUND.as_micros() as u64),
            || {
                format!(
                    "{name}: {} (bound {ANNOUNCE_BOUND:?})",
                    describe(announcement)
                )
            },
        );
    }
    row.measure("announce_to_router_ms", Value::Object(times));
}

/// Phase 1: every node announces (`announcements`, measured at the start), the router has one
/// next hop per node, and 1000 new connections spread evenly over the nodes.
pub fn phase(stage: &mut Stage, announcements: &[Announcement]) -> Result<Row> {
    let active = stage.active();
    let start = stage.begin(format!(
        "1. every node announces the VIP; {BURST} short connections spread over {}",
        names(&active)
    ))?;
    let mut row = Row::new("1", format!("announce ({} nodes), spread", active.len()));
    record(&mut row, announcements);
    let hops = stage.network.next_hops()?;
    row.check_next_hops(&hops, &active);

    let burst = flows::burst(&stage.network.client, BURST, BURST_THREADS)?;
    let mut seen = Vec::new();
    for &index in &active {
        seen.push(flows::seen(&stage.node(index)?.daemon, &burst.ports)?);
    }
    let counts: Vec<usize> = seen.iter().map(BTreeSet::len).collect();
    let union: BTreeSet<u16> = seen.iter().flatten().copied().collect();
    let twice = counts.iter().sum::<usize>() - union.len();
    let (shares, even) = flows::spread(&counts, union.len(), SPREAD_TOLERANCE);
    // The router's ECMP choice for the same ports, as the later phases ask it.
    let predicted = stage
        .network
        .ecmp(&union.iter().copied().collect::<Vec<_>>())?;
    let agree = active
        .iter()
        .zip(&seen)
        .map(|(index, ports)| {
            ports
                .iter()
                .filter(|port| predicted.get(port) == Some(index))
                .count()
        })
        .sum::<usize>();
    let shown: Vec<String> = active
        .iter()
        .zip(&shares)
        .map(|(&index, share)| format!("{} {:.1}%", lb_name(index), share * 100.0))
        .collect();
    say(format!(
        "    {} of {BURST} connections answered in {:.2} s; the nodes' flow tables saw {} of them ({}), {twice} on two nodes; the router's ECMP choice agrees for {agree}",
        burst.ports.len(),
        burst.took.as_secs_f64(),
        union.len(),
        shown.join(", ")
    ));
    row.time(format!("spread {}", shown.join(" ")));
    row.measure(
        "spread",
        Value::Object(
            active
                .iter()
                .zip(&shares)
                .map(|(&index, share)| (lb_name(index), json!((share * 1000.0).round() / 1000.0)))
                .collect(),
        ),
    );
    row.measure("burst_answered", burst.ports.len());
    row.measure("burst_failed", burst.failed);
    row.measure("burst_seen", union.len());
    row.measure("ecmp_agrees", agree);
    row.check(burst.failed == 0, || {
        format!("{} of the {BURST} short connections failed", burst.failed)
    });
    row.check(union.len() == burst.ports.len() && twice == 0, || {
        format!(
            "the nodes' flow tables hold {} of the {} answered connections, {twice} on two nodes",
            union.len(),
            burst.ports.len()
        )
    });
    row.check(even, || {
        format!(
            "uneven spread {} (each within {:.0}% of 1/{})",
            shown.join(", "),
            SPREAD_TOLERANCE * 100.0,
            active.len()
        )
    });
    row.check(agree == union.len(), || {
        format!(
            "the router's ECMP choice (`ip route get`) matches the node that saw the flow for {agree} of {}",
            union.len()
        )
    });
    stage.finish(row, &start)
}
