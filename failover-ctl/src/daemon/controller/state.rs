//! The controller's state: the backend and VIP records it plans and publishes from, and the
//! [`Controller`] that owns them. The other files add its behaviour, each one concern.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use failover_common::maps::{self as common, VipKey};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    address,
    config::{self, Config, Tier},
    daemon::{
        events::EventLog,
        plan::{self, Admin, Ids, Member},
        ready_tables::ReadyTables,
        status::{FailoverStats, InterfaceStatus, ProbeStatus, Status},
    },
    loader::Dataplane,
    maglev::MaglevBackend,
    probe::ProbeEvent,
};

/// What the links callback found for a configuration: the interfaces the program is attached
/// to and the MACs of the encapsulated frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Links {
    pub interfaces: Vec<InterfaceStatus>,
    pub interface_mac: [u8; 6],
    pub next_hop_mac: [u8; 6],
}

/// Attaches the program as `config` says (interfaces, mode) and resolves the MACs.
pub type LinksFn = Box<dyn FnMut(&mut Dataplane, &Config) -> anyhow::Result<Links> + Send>;

#[derive(Debug)]
pub(super) struct BackendState {
    pub(super) vip: String,
    pub(super) address: IpAddr,
    pub(super) weight: u16,
    pub(super) tier: Tier,
    pub(super) admin: Admin,
    /// Whether the operator (not the config file) set `admin`; survives reloads.
    pub(super) admin_runtime: bool,
    pub(super) up: bool,
    pub(super) probe: config::Probe,
    pub(super) last: Option<ProbeStatus>,
    pub(super) probes: u64,
    pub(super) failures: u64,
}

impl BackendState {
    pub(super) fn health_bit(&self) -> u32 {
        plan::health_bit(self.admin, self.up)
    }
}

#[derive(Debug, Clone)]
pub(super) struct VipState {
    pub(super) config: config::Vip,
    pub(super) key: VipKey,
    pub(super) vip_id: u32,
    /// Backend ids in file order.
    pub(super) members: Vec<u32>,
    pub(super) published_at: u64,
    /// The table last published, to skip identical publications; shared with the worker that
    /// prepares the tables one verdict away from it.
    pub(super) table: Arc<[u32]>,
    /// What `table` was built from (`plan::table_inputs`), the key of its ready tables; empty
    /// for an adopted table until the first publication.
    pub(super) inputs: Vec<MaglevBackend>,
    /// `maglev::table_digest` of `table`; empty until the status computes it (cleared when the
    /// table changes, so the digest costs nothing on the failover path).
    pub(super) table_digest: String,
}

pub(super) struct ProbeTask {
    pub(super) token: u32,
    pub(super) handle: JoinHandle<()>,
}

/// The controller: desired state, map writer, probes and event log.
pub struct Controller {
    pub(super) dataplane: Dataplane,
    pub(super) config_path: PathBuf,
    pub(super) config: Config,
    pub(super) links: LinksFn,
    pub(super) current_links: Option<Links>,
    pub(super) ids: Ids,
    pub(super) vips: Vec<VipState>,
    pub(super) backends: BTreeMap<u32, BackendState>,
    /// Probe task per backend id; a task reports with its token, so results of a task that
    /// was replaced are recognised and ignored.
    pub(super) probes: BTreeMap<u32, ProbeTask>,
    pub(super) tokens: BTreeMap<u32, u32>,
    pub(super) next_token: u32,
    pub(super) probe_sender: mpsc::Sender<ProbeEvent>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) events: EventLog,
    pub(super) failovers: FailoverStats,
    pub(super) status: Status,
    pub(super) shared: Arc<Mutex<Status>>,
    pub(super) state_path: PathBuf,
    pub(super) dirty: bool,
    pub(super) elections: Option<super::Elections>,
    pub(super) election_sent: super::elections::Sent,
    pub(super) announcing: Option<super::Announcing>,
    pub(super) announced: super::announce::Announced,
    pub(super) flow_sync: Option<super::FlowSync>,
    /// The tables one verdict away from each published one, prepared off this thread.
    pub(super) ready: ReadyTables,
}


pub(super) fn members(vip: &VipState, backends: &BTreeMap<u32, BackendState>) -> Vec<Member> {
    vip.members
        .iter()
        .filter_map(|id| {
            let backend = backends.get(id)?;
            Some(Member {
                id: *id,
                address: backend.address,
                weight: backend.weight,
                tier: backend.tier,
                admin: backend.admin,
                up: backend.up,
            })
        })
        .collect()
}

/// A stand-in for an adopted VIP the config no longer names (it is removed by the apply).
pub(super) fn placeholder_vip(key: &VipKey) -> config::Vip {
    config::Vip {
        name: format!("adopted-{}", u16::from_be(key.port)),
        address: address::from_words(&key.address, key.family).unwrap_or(IpAddr::from([0, 0, 0, 0])),
        port: u16::from_be(key.port),
        protocol: if key.protocol == common::PROTOCOL_UDP { config::Protocol::Udp } else { config::Protocol::Tcp },
        table_size: 0,
        hash: config::HashMode::FiveTuple,
        all_down: config::AllDown::Drop,
        owned: true,
        announce: false,
        backends: Vec::new(),
    }
}

