//! One VRRP group as the daemon runs it: its settings, the receive checks that are the group's
//! (VRID, address list, unicast peers, our own adverts), the effective priority from its
//! tracks, its counters, and the adverts it sends. Pure like the state machine it wraps: the
//! socket task hands it datagrams and carries out what it returns.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    codec::{self, Advert, ChecksumForm, Discard, MULTICAST_V4, MULTICAST_V6},
    fsm::{Action, Event, Machine, Reason, Settings, State},
    socket::Datagram,
};

/// What the configuration says about a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    /// Base priority, 1..=255 (255: the address owner).
    pub priority: u8,
    pub interval_cs: u16,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// The VRRP addresses the master holds (all of one family).
    pub addresses: Vec<IpAddr>,
    /// Unicast peers; empty: multicast.
    pub unicast_peers: Vec<IpAddr>,
    pub checksum: ChecksumForm,
    pub garp_master_delay: Duration,
    pub garp_master_refresh: Option<Duration>,
    /// Gratuitous ARP / NA packets per burst.
    pub garp_repeat: u32,
    pub release_on_stop: bool,
    /// Track weights, in track order: added to the priority while the track fails; 0: a failed
    /// track puts the group in Fault.
    pub track_weights: Vec<i32>,
}

/// Counters of one group (RFC 6527 names where it has them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub adverts_received: u64,
    pub adverts_sent: u64,
    pub priority_zero_received: u64,
    pub priority_zero_sent: u64,
    pub master_transitions: u64,
    /// Discarded adverts by reason name (`Discard::name`).
    pub discarded: BTreeMap<String, u64>,
}

/// The last transition, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

/// A group: its settings, its state machine, its tracks and counters.
#[derive(Debug, Clone)]
pub struct Group {
    spec: GroupSpec,
    machine: Machine,
    /// Our own address on the interface (the advert source), and every address of ours there:
    /// adverts from any of them are our own.
    source: IpAddr,
    ours: Vec<IpAddr>,
    failed_tracks: Vec<bool>,
    /// The group's own interface has no link: always tracked, as keepalived tracks a VRRP
    /// instance's interface, and a fault like a failed track of weight 0.
    link_down: bool,
    /// The operator's temporary priority (`election priority`), in place of the base.
    override_priority: Option<u8>,
    counters: Counters,
    last_transition: Option<Transition>,
}

impl Group {
    /// A group about to start, sending from `source` (`ours`: every address of this node on the
    /// interface, `source` among them).
    pub fn new(spec: GroupSpec, source: IpAddr, ours: Vec<IpAddr>) -> Self {
        let settings = Settings {
            interval_cs: spec.interval_cs,
            preempt: spec.preempt,
            preempt_delay: spec.preempt_delay,
            garp_master_delay: spec.garp_master_delay,
            garp_master_refresh: spec.garp_master_refresh,
            primary: source,
            release_on_stop: spec.release_on_stop,
        };
        let machine = Machine::new(settings, spec.priority);
        let failed_tracks = vec![false; spec.track_weights.len()];
        Self {
            spec,
            machine,
            source,
            ours,
            failed_tracks,
            link_down: false,
            override_priority: None,
            counters: Counters::default(),
            last_transition: None,
        }
    }

    pub fn spec(&self) -> &GroupSpec {
        &self.spec
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn last_transition(&self) -> Option<&Transition> {
        self.last_transition.as_ref()
    }

    /// The effective priority: base plus the weights of failed tracks, clamped to 1..=254 when
    /// any track fails (an owner with a failed track is an owner no more).
    pub fn effective_priority(&self) -> u8 {
        let base = self.override_priority.unwrap_or(self.spec.priority);
        let failed: Vec<i32> = self.failed_weights().collect();
        if failed.is_empty() {
            return base;
        }
        let priority = i32::from(base) + failed.iter().sum::<i32>();
        priority.clamp(1, 254) as u8
    }

    /// Advertise `priority` in place of the configured base (`None`: the base again), until
    /// the group is reconfigured.
    pub fn set_priority(&mut self, priority: Option<u8>, now: Instant) -> Vec<Action> {
        self.override_priority = priority;
        self.handle(Event::Priority(self.effective_priority()), now)
    }

    /// Descriptions of the failed tracks, in track order, given each track's description.
    pub fn failed_tracks<'a>(&self, names: &'a [String]) -> Vec<&'a str> {
        names.iter().zip(&self.failed_tracks).filter(|(_, failed)| **failed).map(|(name, _)| name.as_str()).collect()
    }

    fn failed_weights(&self) -> impl Iterator<Item = i32> + '_ {
        self.spec.track_weights.iter().zip(&self.failed_tracks).filter(|(_, failed)| **failed).map(|(weight, _)| *weight)
    }

    /// Whether the group is in Fault: its interface has no link, or a failed track has weight 0.
    fn faulted(&self) -> bool {
        self.link_down || self.failed_weights().any(|weight| weight == 0)
    }

    /// Whether the group's own interface has no link.
    pub fn link_down(&self) -> bool {
        self.link_down
    }

    /// The group's own interface has its link (true) or lost it: a node cut off from the
    /// segment goes to Fault (gives up its ownership and addresses) instead of staying master
    /// on its own, and on its return preempts only after `preempt_delay`.
    pub fn link(&mut self, up: bool, now: Instant) -> Vec<Action> {
        if self.link_down != up {
            return Vec::new();
        }
        self.link_down = !up;
        self.handle(Event::Fault(self.faulted()), now)
    }

    /// Feeds the state machine; counts what it sends and records its transitions.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let actions = self.machine.handle(event, now);
        for action in &actions {
            match action {
                Action::SendAdvert { priority } => {
                    self.counters.adverts_sent += 1;
                    if *priority == 0 {
                        self.counters.priority_zero_sent += 1;
                    }
                }
                Action::Transition { from, to, reason } => {
                    if *to == State::Master {
                        self.counters.master_transitions += 1;
                    }
                    self.last_transition = Some(Transition { from: *from, to: *to, reason: *reason });
                }
                _ => {}
            }
        }
        actions
    }

    /// Track `index` failed (true) or recovered; feeds the new priority or fault state.
    pub fn track(&mut self, index: usize, failed: bool, now: Instant) -> Vec<Action> {
        let Some(slot) = self.failed_tracks.get_mut(index) else { return Vec::new() };
        if *slot == failed {
            return Vec::new();
        }
        *slot = failed;
        let mut actions = self.handle(Event::Priority(self.effective_priority()), now);
        actions.extend(self.handle(Event::Fault(self.faulted()), now));
        actions
    }

    /// Checks a datagram that the socket of this group's interface received for this group's
    /// VRID and feeds it to the state machine. `Ok(None)`: our own advert, ignored.
    pub fn receive(&mut self, datagram: &Datagram, now: Instant) -> Result<Option<Vec<Action>>, Discard> {
        let result = self.check(datagram);
        match result {
            Err(discard) => {
                *self.counters.discarded.entry(discard.name().to_owned()).or_default() += 1;
                Err(discard)
            }
            Ok(None) => Ok(None),
            Ok(Some(advert)) => {
                self.counters.adverts_received += 1;
                if advert.priority == 0 {
                    self.counters.priority_zero_received += 1;
                }
                let event = Event::Advert { source: datagram.source, priority: advert.priority, interval_cs: advert.interval_cs };
                Ok(Some(self.handle(event, now)))
            }
        }
    }

    fn check(&self, datagram: &Datagram) -> Result<Option<Advert>, Discard> {
        if self.ours.contains(&datagram.source) {
            return Ok(None);
        }
        let advert = codec::decode(&datagram.received(), self.spec.checksum)?;
        if advert.vrid != self.spec.vrid {
            return Err(Discard::VrId);
        }
        let mut theirs = advert.addresses.clone();
        let mut ours = self.spec.addresses.clone();
        theirs.sort();
        ours.sort();
        if theirs != ours {
            return Err(Discard::AddressList);
        }
        if !self.spec.unicast_peers.is_empty() && !self.spec.unicast_peers.contains(&datagram.source) {
            return Err(Discard::UnknownPeer);
        }
        Ok(Some(advert))
    }

    /// The advert to send with `priority`, and where: the multicast group or every unicast peer.
    pub fn advert(&self, priority: u8) -> Vec<(IpAddr, Vec<u8>)> {
        let advert = Advert {
            vrid: self.spec.vrid,
            priority,
            interval_cs: self.spec.interval_cs,
            addresses: self.spec.addresses.clone(),
        };
        let destinations: Vec<IpAddr> = if self.spec.unicast_peers.is_empty() {
            vec![if self.source.is_ipv4() { IpAddr::V4(MULTICAST_V4) } else { IpAddr::V6(MULTICAST_V6) }]
        } else {
            self.spec.unicast_peers.clone()
        };
        destinations.into_iter().map(|destination| (destination, advert.encode(self.source, destination, self.spec.checksum))).collect()
    }
}

/// The VRID a datagram names, to pick its group among those sharing a socket (`None`: too
/// short to say; the packet-length check of any group will count it).
pub fn vrid_of(datagram: &Datagram) -> Option<u8> {
    datagram.message.get(1).copied()
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
