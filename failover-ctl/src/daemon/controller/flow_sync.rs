//! Flow sync, the state owner's side (the datagram and the socket task are `crate::flow_sync`).
//!
//! Sending, every interval, while this node serves a group: the tracked flows of the group's
//! VIPs whose backend is not the one the table gives (the exceptions) and that had a packet
//! within `idle_timeout` (a closed TCP connection's entry stays in the flow table until
//! evicted: without the bound, the set would only grow), found by a scan of the flow table when
//! the tables, the backends' health or the groups served changed, and else checked one by one
//! (a flow that went idle, ended or moved drops out). The whole set goes each time, so a peer
//! that restarted or forgot has it again one interval later.
//!
//! Receiving, for groups this node does not serve: each flow is placed in the flow table on the
//! backend of the same address (ids are each node's own), as the data plane would place it.
//! When a peer's set is complete, what its previous set placed here and this one no longer
//! names is forgotten: the peer's flow ended or follows the table now, and an entry kept here
//! would send a later connection on the same ports to the old backend.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use failover_common::{
    hash,
    maps::{FlowKey, FlowValue, HEALTH_DRAINING, HEALTH_UP},
};

use super::state::{Controller, VipState};
use crate::{
    address,
    config::{self, HashMode},
    daemon::status::FlowSyncStatus,
    flow_sync::{codec, task::Outgoing, Datagram, Discard, Input, SyncedFlow},
    maglev::lookup,
    maps::Placed,
};

/// The state owner's flow-sync state.
pub struct FlowSync {
    outgoing: Outgoing,
    idle_timeout_ns: u64,
    sequence: u32,
    /// What `exceptions` was found for; a change means a new scan.
    basis: Vec<Basis>,
    exceptions: BTreeMap<FlowKey, FlowValue>,
    peers: BTreeMap<SocketAddr, PeerSets>,
    status: FlowSyncStatus,
}

impl FlowSync {
    pub fn new(settings: &config::FlowSync, outgoing: Outgoing) -> Self {
        let status = FlowSyncStatus {
            listen: settings.listen.to_string(),
            peers: settings.peers.iter().map(ToString::to_string).collect(),
            ..FlowSyncStatus::default()
        };
        let idle_timeout_ns = settings.idle_timeout.as_nanos() as u64;
        Self { outgoing, idle_timeout_ns, sequence: 0, basis: Vec::new(), exceptions: BTreeMap::new(), peers: BTreeMap::new(), status }
    }
}

/// A served VIP as the exceptions were computed: its table and its members' health.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Basis {
    vip_id: u32,
    table: Arc<[u32]>,
    health: Vec<(u32, u32)>,
}

/// What one peer's sets placed here.
#[derive(Debug, Default)]
struct PeerSets {
    /// The set arriving: its sequence, size, records so far and what they placed.
    sequence: Option<u32>,
    total: u32,
    records: usize,
    arriving: BTreeMap<FlowKey, (u32, u32)>,
    /// What the last complete set placed: flow -> (VIP id, backend id).
    placed: BTreeMap<FlowKey, (u32, u32)>,
}

impl Controller {
    pub(super) fn on_flow_sync(&mut self, input: Input) {
        let Some(mut sync) = self.flow_sync.take() else { return };
        match input {
            Input::Tick => self.send_exceptions(&mut sync),
            Input::Received { from, datagram } => self.take_part(&mut sync, from, datagram),
            Input::Stranger { .. } => {
                sync.status.received_datagrams += 1;
                *sync.status.discarded.entry("not_a_peer".into()).or_default() += 1;
            }
        }
        self.flow_sync = Some(sync);
    }

    /// Copies the flow-sync counters into the status when they changed: called once a second,
    /// so the status (and `state.json`) is not rewritten at every interval.
    pub(super) fn refresh_flow_sync_status(&mut self) {
        let Some(sync) = &self.flow_sync else { return };
        if self.status.flow_sync.as_ref() != Some(&sync.status) {
            self.status.flow_sync = Some(sync.status.clone());
            self.dirty = true;
        }
    }

    /// The names of the groups this node serves now.
    fn served_groups(&self) -> BTreeSet<String> {
        self.election_status().into_iter().filter(|group| group.owned).map(|group| group.name).collect()
    }

    /// The VIPs of the groups this node serves.
    fn served_vips(&self) -> Vec<&VipState> {
        let groups = self.served_groups();
        self.vips
            .iter()
            .filter(|vip| self.config.election_of(&vip.config.name).is_some_and(|election| groups.contains(&election.name)))
            .collect()
    }

    fn health(&self, id: u32) -> u32 {
        self.backends.get(&id).map_or(0, |backend| backend.health_bit())
    }

    fn send_exceptions(&mut self, sync: &mut FlowSync) {
        if !self.dataplane.counters.hashes_alike() {
            return;
        }
        let served = self.served_vips();
        if served.is_empty() {
            sync.basis.clear();
            sync.exceptions.clear();
            sync.status.sending = 0;
            return;
        }
        let basis: Vec<Basis> = served
            .iter()
            .map(|vip| Basis { vip_id: vip.vip_id, table: vip.table.clone(), health: vip.members.iter().map(|id| (*id, self.health(*id))).collect() })
            .collect();
        let now = crate::sys::coarse_now_ns().unwrap_or(0);
        if basis != sync.basis {
            sync.exceptions = self.scan_exceptions(&served, now, sync.idle_timeout_ns);
            sync.basis = basis;
            sync.status.scans += 1;
        }
        let vips: BTreeMap<u32, IpAddr> = served.iter().map(|vip| (vip.vip_id, vip.config.address)).collect();
        // Each flow as the table holds it now, if it is still there, on the same backend, and
        // had a packet within the timeout (the look also starts its next idle measure).
        let counters = &mut self.dataplane.counters;
        let timeout = sync.idle_timeout_ns;
        sync.exceptions.retain(|key, value| match counters.look_flow(key, now) {
            Some((found, idle)) if found.backend_id == value.backend_id && found.vip_id == value.vip_id && idle <= timeout => {
                *value = found;
                true
            }
            _ => false,
        });
        let flows: Vec<SyncedFlow> = sync
            .exceptions
            .iter()
            .filter_map(|(key, value)| {
                let vip_address = vips.get(&value.vip_id)?;
                let backend = self.backends.get(&value.backend_id)?.address;
                let client = address::from_words(&key.source, key.family)?;
                Some(SyncedFlow {
                    client: SocketAddr::new(client, u16::from_be(key.source_port)),
                    vip: SocketAddr::new(*vip_address, u16::from_be(key.destination_port)),
                    protocol: key.protocol,
                    backend,
                })
            })
            .collect();
        sync.sequence = sync.sequence.wrapping_add(1);
        let datagrams = codec::encode(sync.sequence, &flows);
        let count = datagrams.len() as u64;
        if sync.outgoing.send(datagrams) {
            sync.status.sent_datagrams += count;
            sync.status.sent_records += flows.len().min(codec::MAX_SET) as u64;
        } else {
            sync.status.send_queue_full += 1;
        }
        sync.status.sending = flows.len() as u64;
    }

    /// The tracked flows of `served` VIPs on a live member that the table would place on
    /// another backend.
    fn scan_exceptions(&self, served: &[&VipState], now: u64, idle_ns: u64) -> BTreeMap<FlowKey, FlowValue> {
        let vips: BTreeMap<u32, &VipState> = served.iter().map(|vip| (vip.vip_id, *vip)).collect();
        // Decided inside the scan, so only the active exceptions are collected: the flow table
        // holds every connection ever opened (closed ones too, until evicted), and a vector of
        // all of them at every scan grew the heap for good.
        let exception = |key: &FlowKey, value: &FlowValue| {
            let Some(vip) = vips.get(&value.vip_id) else { return false };
            let (vip_address, family) = address::to_words(vip.config.address);
            let live = |id: u32| vip.members.contains(&id) && self.health(id) == HEALTH_UP;
            let kept = matches!(self.health(value.backend_id), HEALTH_UP | HEALTH_DRAINING) && vip.members.contains(&value.backend_id);
            let same_vip = key.destination == vip_address && key.family == family && key.protocol == vip.key.protocol;
            let hash = hash::flow_key_hash(key, vip.config.hash == HashMode::Source);
            same_vip && kept && lookup::pick(&vip.table, hash, live).1 != Some(value.backend_id)
        };
        self.dataplane.counters.active_flows_where(now, idle_ns, exception).into_iter().collect()
    }

    fn take_part(&mut self, sync: &mut FlowSync, from: SocketAddr, datagram: Result<Datagram, Discard>) {
        sync.status.received_datagrams += 1;
        let part = match datagram {
            Ok(part) => part,
            Err(reason) => {
                *sync.status.discarded.entry(reason.name().into()).or_default() += 1;
                return;
            }
        };
        let served = self.served_groups();
        let now = crate::sys::coarse_now_ns().unwrap_or(0);
        let peer = sync.peers.entry(from).or_default();
        if peer.sequence != Some(part.sequence) || peer.total != part.total {
            peer.sequence = Some(part.sequence);
            peer.total = part.total;
            peer.records = 0;
            peer.arriving.clear();
        }
        peer.records += part.flows.len();
        for flow in &part.flows {
            sync.status.received_records += 1;
            let outcome = match self.place_synced(flow, &served, now) {
                Ok((key, ids, placed)) => {
                    peer.arriving.insert(key, ids);
                    match placed {
                        Placed::New => "new",
                        Placed::Moved => "moved",
                        Placed::Refreshed => "refreshed",
                        Placed::Full => "bucket_full",
                        Placed::OtherHash => "other_hash",
                    }
                }
                Err(reason) => reason,
            };
            *sync.status.placed.entry(outcome.into()).or_default() += 1;
        }
        if peer.records < peer.total as usize {
            return;
        }
        // The set is complete: what the previous one placed and this one does not name goes,
        // where it is still as placed and its group is not served here.
        let arrived = std::mem::take(&mut peer.arriving);
        let gone: Vec<(FlowKey, (u32, u32))> = peer.placed.iter().filter(|(key, _)| !arrived.contains_key(key)).map(|(key, ids)| (*key, *ids)).collect();
        peer.placed = arrived;
        peer.sequence = None;
        for (key, (vip_id, backend_id)) in gone {
            let still = self.dataplane.counters.flow(&key).is_some_and(|value| value.vip_id == vip_id && value.backend_id == backend_id);
            let group_served = self
                .vips
                .iter()
                .find(|vip| vip.vip_id == vip_id)
                .and_then(|vip| self.config.election_of(&vip.config.name))
                .is_some_and(|election| served.contains(&election.name));
            if still && !group_served && self.dataplane.counters.forget_flow(&key).is_ok() {
                sync.status.expired += 1;
            }
        }
    }

    /// Places one received flow on the backend of its address; the flow, its (VIP id, backend
    /// id) and what the table did, or why it was not placed.
    fn place_synced(&mut self, flow: &SyncedFlow, served: &BTreeSet<String>, now: u64) -> Result<(FlowKey, (u32, u32), Placed), &'static str> {
        let protocol = |vip: &VipState| vip.key.protocol == flow.protocol;
        let vip = self
            .vips
            .iter()
            .filter(|vip| vip.config.address == flow.vip.ip() && protocol(vip))
            .min_by_key(|vip| if vip.config.port == flow.vip.port() { 0 } else if vip.config.port == 0 { 1 } else { 2 })
            .filter(|vip| vip.config.port == flow.vip.port() || vip.config.port == 0)
            .ok_or("unknown_vip")?;
        let election = self.config.election_of(&vip.config.name).ok_or("ungrouped_vip")?;
        if served.contains(&election.name) {
            return Err("served_here");
        }
        let backend_id =
            *vip.members.iter().find(|id| self.backends.get(id).is_some_and(|backend| backend.address == flow.backend)).ok_or("unknown_backend")?;
        let (source, family) = address::to_words(flow.client.ip());
        let (destination, _) = address::to_words(flow.vip.ip());
        let key = FlowKey {
            source,
            destination,
            source_port: flow.client.port().to_be(),
            destination_port: flow.vip.port().to_be(),
            protocol: flow.protocol,
            family,
            _padding: [0; 2],
        };
        let vip_id = vip.vip_id;
        let placed = self.dataplane.counters.place_flow(&key, FlowValue { backend_id, vip_id, last_seen_ns: now }, now);
        Ok((key, (vip_id, backend_id), placed))
    }
}
