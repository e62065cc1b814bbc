//! The state owner's announcements: after every step it decides which VIPs this node announces
//! (`crate::announce::decide`) and makes the kernel table match — a `blackhole` host route per
//! announced VIP address, with the configured table and route protocol — writing only what
//! changed. The first step reconciles with what the table holds (a restarted daemon adopts its
//! routes and writes nothing when nothing changed). An address announced anew first forgets the
//! flows tracked to it: the router's flows come back chosen by the shared table.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use super::state::{members, Controller};
use crate::{
    announce::{decide, Node, Reason},
    daemon::status::{now_millis, Event},
    netlink::Netlink,
};

/// What announcing needs: the rtnetlink handle of the daemon's namespace and a runtime to
/// drive it from the state owner's thread.
pub struct Announcing {
    pub netlink: Arc<Netlink>,
    pub runtime: tokio::runtime::Handle,
}

/// The announcement state the controller keeps.
#[derive(Debug, Default)]
pub(super) struct Announced {
    /// The addresses with a route in the table (as last written or found).
    pub(super) routes: Option<BTreeSet<IpAddr>>,
    /// Per VIP name: the decision and since when it holds.
    pub(super) vips: BTreeMap<String, (Reason, u64)>,
    pub(super) node_drained: bool,
    /// Withdrawn for a stop for good (SIGUSR1); never saved, unlike `node_drained`.
    pub(super) stopping: bool,
    pub(super) withdrawals: u64,
    /// Addresses the node could serve but does not announce: since when (the rejoin delay).
    pub(super) serviceable_since: BTreeMap<IpAddr, u64>,
}

impl Announced {
    fn node(&self) -> Node {
        if self.stopping {
            Node::Stopping
        } else if self.node_drained {
            Node::Drained
        } else {
            Node::Serving
        }
    }
}

impl Controller {
    /// Decides every VIP and writes the difference to the kernel table.
    pub(super) fn update_announcements(&mut self) {
        let Some(announcing) = &self.announcing else { return };
        if !self.config.announce.enabled {
            return;
        }
        let settings = self.config.announce;
        let elections = self.election_status();
        let now = now_millis();
        let mut wanted: BTreeMap<IpAddr, bool> = BTreeMap::new();
        let mut serviceable_addresses: BTreeMap<IpAddr, bool> = BTreeMap::new();
        let mut decisions = Vec::new();
        for vip in &self.vips {
            let owned = match self.config.election_of(&vip.config.name) {
                Some(election) => elections.iter().any(|status| status.name == election.name && status.owned),
                None => vip.config.owned,
            };
            let members = members(vip, &self.backends);
            let reason = decide(vip.config.announce, owned, vip.config.all_down, &members, self.announced.node());
            // Several services can share an address: its route stands while any is announced.
            *wanted.entry(vip.config.address).or_default() |= reason == Reason::Announced;
            let serviceable = decide(vip.config.announce, owned, vip.config.all_down, &members, Node::Serving) == Reason::Announced;
            *serviceable_addresses.entry(vip.config.address).or_default() |= serviceable;
            decisions.push((vip.config.name.clone(), vip.config.address, reason));
        }
        let present = match &self.announced.routes {
            Some(routes) => routes.clone(),
            None => match announcing.runtime.block_on(announcing.netlink.routes(settings.table, settings.protocol)) {
                Ok(found) => found.into_iter().collect(),
                Err(error) => {
                    tracing::warn!("reading announce table {}: {error}", settings.table);
                    return;
                }
            },
        };
        // An address to announce anew waits until the node could have served it for the
        // rejoin delay (whether drained or not): its backends finish rising, so it joins the
        // router's set with the table every other node has. An undrain after the delay, or a
        // restart that finds its route, announces at once.
        let delay = self.config.rejoin_delay().as_millis() as u64;
        let mut held = BTreeSet::new();
        for (address, serviceable) in &serviceable_addresses {
            if *serviceable && !present.contains(address) {
                let since = *self.announced.serviceable_since.entry(*address).or_insert(now);
                if now.saturating_sub(since) < delay {
                    held.insert(*address);
                }
            } else {
                self.announced.serviceable_since.remove(address);
            }
        }
        for (name, address, reason) in decisions {
            let reason = if reason == Reason::Announced && held.contains(&address) { Reason::RejoinDelay } else { reason };
            let entry = self.announced.vips.entry(name).or_insert((reason, now));
            if entry.0 != reason {
                *entry = (reason, now);
                self.dirty = true;
            }
        }
        let mut routes = present.clone();
        let mut events = Vec::new();
        for (address, want) in &wanted {
            if *want && !present.contains(address) && !held.contains(address) {
                // The node joins the router's ECMP set for this address: the flows the router
                // sends here were carried meanwhile by nodes that chose by the same table, so
                // the table is right for them and what this node tracked before it left is not
                // (a flow moved to another backend while some backends looked down from here
                // would be sent to that backend and reset). Forgotten before the route exists.
                let forgotten = match self.dataplane.counters.forget_flows_to(*address) {
                    Ok(count) => count,
                    Err(error) => {
                        tracing::warn!("forgetting the flows to {address} before announcing it: {error}");
                        0
                    }
                };
                match announcing.runtime.block_on(announcing.netlink.add_blackhole(*address, settings.table, settings.protocol)) {
                    Ok(()) => {
                        routes.insert(*address);
                        events.push(match forgotten {
                            0 => format!("announced {address}"),
                            count => format!("announced {address} (forgot {count} flows tracked before the node left the router's set)"),
                        });
                    }
                    Err(error) => tracing::warn!("announcing {address}: {error}"),
                }
            }
        }
        for address in &present {
            if !wanted.get(address).copied().unwrap_or(false) {
                match announcing.runtime.block_on(announcing.netlink.remove_blackhole(*address, settings.table, settings.protocol)) {
                    Ok(()) => {
                        routes.remove(address);
                        self.announced.withdrawals += 1;
                        events.push(format!("withdrew {address}"));
                    }
                    Err(error) => tracing::warn!("withdrawing {address}: {error}"),
                }
            }
        }
        self.announced.routes = Some(routes);
        for detail in events {
            self.record(Event { kind: "announce".into(), detail, ..Event::default() });
            self.dirty = true;
        }
    }

    /// `drain-node` / `undrain-node`.
    pub(super) fn set_node_drained(&mut self, drained: bool) -> anyhow::Result<String> {
        if !self.config.announce.enabled {
            anyhow::bail!("announcing is not enabled ([announce] enabled = true)");
        }
        self.announced.node_drained = drained;
        self.update_announcements();
        let verb = if drained { "drained: every VIP withdrawn" } else { "undrained: announceable VIPs announced" };
        self.record(Event { kind: if drained { "drain_node" } else { "undrain_node" }.into(), detail: verb.into(), ..Event::default() });
        Ok(format!("node {verb}"))
    }

    /// The stop signal (SIGUSR1, the systemd unit's `KillSignal=`): withdraws every VIP for the
    /// rest of this process, so the routers move the flows away while this node still forwards.
    /// Not saved as a drain: the next start announces again. The grace to wait before stopping,
    /// or `None` when there was nothing to withdraw (announcing off, or nothing announced).
    pub(super) fn withdraw_for_stop(&mut self) -> Option<std::time::Duration> {
        if self.announcing.is_none() || !self.config.announce.enabled {
            return None;
        }
        let announced = self.announced.routes.as_ref().is_some_and(|routes| !routes.is_empty());
        self.announced.stopping = true;
        self.update_announcements();
        let grace = self.config.announce.withdraw_grace;
        let detail = if announced {
            format!("stopping: every VIP withdrawn, stopping in {grace:?} (announce.withdraw_grace)")
        } else {
            "stopping: nothing was announced".to_owned()
        };
        self.record(Event { kind: "stopping".into(), detail, ..Event::default() });
        self.publish_status();
        announced.then_some(grace)
    }

    /// Whether `address` has a route in the announce table now.
    pub(super) fn is_announced(&self, address: &IpAddr) -> bool {
        self.announced.routes.as_ref().is_some_and(|routes| routes.contains(address))
    }
}
