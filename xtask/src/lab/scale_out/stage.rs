//! What every scale-out phase acts on and how it ends: the network, the nodes and the traffic;
//! where the router sends the long-lived connections; each node's table digest; the phase's
//! window closed into its summary row.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use netlab::bird::Bird;
use serde::Deserialize;

use super::{flows, network::Network, node::Node, summary::Row};
use crate::lab::{
    config::VIP_NAME,
    control::{say, sleep, Daemon, Event, Programs},
    faults,
    traffic::{Snapshot, Stats},
};

/// What the phases act on and watch.
pub struct Stage<'a> {
    pub network: &'a Network,
    pub router_bird: &'a Bird,
    pub nodes: &'a mut Vec<Node>,
    pub stats: &'a Stats,
    pub programs: &'a Programs,
    pub pid: u32,
    pub dir: &'a Path,
    /// How long each phase watches the traffic after acting.
    pub phase: Duration,
}

/// A phase's starting point: the traffic counters and where the router sent each long-lived
/// connection.
pub struct Start {
    pub traffic: Snapshot,
    pub choices: BTreeMap<u16, usize>,
}

impl Stage<'_> {
    /// The nodes in service, by index.
    pub fn active(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|node| !node.removed)
            .map(|node| node.index)
            .collect()
    }

    pub fn node(&mut self, index: usize) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|node| node.index == index)
            .with_context(|| format!("no load balancer {index}"))
    }

    pub fn daemon(&self, index: usize) -> Result<&Daemon> {
        self.nodes
            .iter()
            .find(|node| node.index == index)
            .map(|node| &node.daemon)
            .with_context(|| format!("no load balancer {index}"))
    }

    /// The node the router sends each long-lived connection to now.
    pub fn choices(&self) -> Result<BTreeMap<u16, usize>> {
        self.network.ecmp(&self.stats.long_ports())
    }

    /// Waits until the traffic is quiet, then takes the phase's starting point.
    pub fn begin(&mut self, title: impl std::fmt::Display) -> Result<Start> {
        say(format!("==> {title}"));
        for node in self.nodes.iter_mut().filter(|node| !node.removed) {
            node.check()?;
        }
        faults::quiet(self.stats)?;
        Ok(Start {
            traffic: self.stats.snapshot(),
            choices: self.choices()?,
        })
    }

    /// Watches the traffic for the phase's window, then fills in the row: the window's
    /// traffic, the next hops, the flows that changed node since `start`, and the checks every
    /// phase shares (no established connection broken; every announcing node publishes the
    /// same table).
    pub fn finish(&mut self, mut row: Row, start: &Start) -> Result<Row> {
        sleep(self.phase)?;
        row.window = self.stats.snapshot().since(&start.traffic);
        row.next_hops = self.network.next_hops()?;
        let after = self.choices()?;
        let (of, moved) = flows::moved(&start.choices, &after);
        row.moved = Some((moved, of));
        let broken = row.window.broken;
        row.check(broken == 0, || {
            format!("{broken} established connections broken, expected none")
        });
        let mut digests = Vec::new();
        for &index in &row.next_hops {
            let node = self.node(index)?;
            let digest = digest(&node.daemon).unwrap_or_else(|error| format!("? ({error:#})"));
            digests.push((node.name(), digest));
        }
        let equal = digests.windows(2).all(|pair| pair[0].1 == pair[1].1)
            && digests.iter().all(|(_, digest)| !digest.starts_with('?'));
        let shown: Vec<String> = digests
            .iter()
            .map(|(name, digest)| format!("{name} {digest}"))
            .collect();
        say(format!(
            "    tables of {VIP_NAME} on the announcing nodes: {} ({})",
            shown.join(", "),
            if equal { "equal" } else { "DIFFERENT" }
        ));
        row.measure(
            "table_digests",
            serde_json::Value::Object(
                digests
                    .into_iter()
                    .map(|(name, digest)| (name, digest.into()))
                    .collect(),
            ),
        );
        row.measure("tables_equal", equal);
        row.check(equal, || {
            format!("the announcing nodes' tables differ: {}", shown.join(", "))
        });
        say(format!(
            "    {}: next hops {}, {moved} of {of} long-lived connections changed node, {broken} broken, {} short requests failed",
            row.what,
            super::network::names(&row.next_hops),
            row.window.failed
        ));
        Ok(row)
    }
}

/// `vips --json`: the fields the lab reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VipsView {
    vips: Vec<VipView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VipView {
    name: Option<String>,
    table_digest: Option<String>,
}

/// The digest of the lab VIP's published table on `daemon`'s node (over slot -> backend
/// address: equal on nodes that send every flow to the same backend).
pub fn digest(daemon: &Daemon) -> Result<String> {
    let text = daemon.ctl(&["vips", "--json"])?;
    let view: VipsView = serde_json::from_str(&text)
        .with_context(|| format!("parsing `vips --json` of {}", daemon.name))?;
    view.vips
        .into_iter()
        .find(|vip| vip.name.as_deref() == Some(VIP_NAME))
        .and_then(|vip| vip.table_digest)
        .with_context(|| format!("{} publishes no table for {VIP_NAME}", daemon.name))
}

/// `stats --json`: the fields the lab reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatsView {
    reasons: Vec<ReasonView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReasonView {
    reason: String,
    packets: u64,
}

/// How many packets of tracked flows `daemon`'s data plane sent elsewhere because the flow's
/// backend was down there (`event_flow_reselected`), since it was loaded.
pub fn reselected(daemon: &Daemon) -> Result<u64> {
    let text = daemon.ctl(&["stats", "--json"])?;
    let view: StatsView = serde_json::from_str(&text)
        .with_context(|| format!("parsing `stats --json` of {}", daemon.name))?;
    view.reasons
        .iter()
        .find(|reason| reason.reason == "event_flow_reselected")
        .map(|reason| reason.packets)
        .with_context(|| {
            format!(
                "`stats --json` of {} has no event_flow_reselected",
                daemon.name
            )
        })
}

/// The first event of `daemon` from `since` (ms) on that `wanted` accepts, within 10 s.
pub fn wait_event(
    daemon: &mut Daemon,
    since: u64,
    wanted: impl Fn(&Event) -> bool,
) -> Result<Option<Event>> {
    faults::wait_event(daemon, since, wanted)
}

/// `daemon`'s events from `since` (ms) on.
pub fn events_since(daemon: &Daemon, since: u64) -> Result<Vec<Event>> {
    Ok(daemon
        .events()?
        .into_iter()
        .filter(|event| event.at >= since)
        .collect())
}

/// Whether `event` is the daemon writing the VIP's route (`announced`) or deleting it
/// (`withdrew`).
pub fn is_route_write(event: &Event, verb: &str) -> bool {
    event.kind == "announce" && event.detail.starts_with(verb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_digest_and_route_writes() {
        let text = r#"{"instance":"lab-1-lb1","state_file":"ok","vips":[{"name":"web","label":"10.100.0.10:80/tcp","table_digest":"00ab"}]}"#;
        let view: VipsView = serde_json::from_str(text).unwrap();
        assert_eq!(view.vips[0].table_digest.as_deref(), Some("00ab"));
        let text = r#"{"at":"x","interval_seconds":null,"reasons":[{"reason":"tx_forward","index":6,"packets":90,"bytes":1},
            {"reason":"event_flow_reselected","index":18,"packets":7,"bytes":0}],"vips":[],"backends":[]}"#;
        let view: StatsView = serde_json::from_str(text).unwrap();
        assert_eq!(view.reasons[1].packets, 7);
        let event = Event {
            kind: "announce".into(),
            detail: "withdrew 10.100.0.10".into(),
            ..Event::default()
        };
        assert!(is_route_write(&event, "withdrew"));
        assert!(!is_route_write(&event, "announced"));
    }
}
