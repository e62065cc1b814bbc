//! The state owner: the one place that holds the desired state and the map writer. Probe
//! results, control requests and ticks arrive as [`Message`]s, one at a time, on a dedicated
//! thread (map updates may wait for a kernel grace period, which must not stall the runtime).
//!
//! One concern per file, in layers, each using only those below it: `state` (the records and
//! the [`Controller`] itself); `report` (events, `state.json`) and `probes` (probe tasks);
//! `apply` (configurations) and `verdict` (probe results, failovers); `requests` (the control
//! socket); and this file, which starts the controller and dispatches messages.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use failover_common::maps::{self as common, HEALTH_DOWN, HEALTH_DRAINING};
use tokio::sync::{mpsc, oneshot};

use super::{
    events::EventLog,
    plan::{Admin, Ids},
    ready_tables::ReadyTables,
    status::{now_millis, Event, FailoverStats, Request, Response, Status, LATENCY_BUCKETS_US},
};
use crate::{
    address,
    config::{self, Check, Config, Tier},
    loader::Dataplane,
    probe::ProbeEvent,
};
use state::{placeholder_vip, BackendState, VipState};

mod announce;
mod apply;
mod elections;
mod flow_sync;
mod probes;
mod report;
mod requests;
mod state;
mod verdict;

pub use apply::data_plane_config;
pub use announce::Announcing;
pub use elections::Elections;
pub use flow_sync::FlowSync;
pub use state::{Controller, Links, LinksFn};

/// What the state owner is told.
pub enum Message {
    /// A probe result, with the verdict change it caused.
    Probe(ProbeEvent),
    /// A control request and where to answer it.
    Control(Request, oneshot::Sender<Response>),
    /// A transition or an error of the election task.
    Election(crate::election::runtime::Report),
    /// A tick or a datagram of the flow-sync task.
    FlowSync(crate::flow_sync::Input),
    /// Once a second: refresh the published status if it changed.
    Tick,
    /// The stop signal: withdraw every VIP before stopping; answers the grace to wait, if any.
    Withdraw(oneshot::Sender<Option<std::time::Duration>>),
    /// Stop: probes end, the maps stay as they are.
    Shutdown,
}

/// Everything the controller starts from.
pub struct Start {
    pub dataplane: Dataplane,
    pub config_path: PathBuf,
    pub config: Config,
    pub links: LinksFn,
    pub adopted: bool,
    pub events: EventLog,
    pub state_path: PathBuf,
    pub shared: Arc<Mutex<Status>>,
    pub probe_sender: mpsc::Sender<ProbeEvent>,
    pub runtime: tokio::runtime::Handle,
    /// The status an earlier daemon left, to keep operator decisions (drain, maintenance)
    /// across a restart.
    pub previous: Option<Status>,
    /// The election task, when the configuration has `[[election]]` groups.
    pub elections: Option<Elections>,
    /// Announcing through the kernel table, when the daemon runs with `[announce]`.
    pub announcing: Option<Announcing>,
    /// Flow sync, when the configuration has `[flow_sync]`.
    pub flow_sync: Option<FlowSync>,
}

impl Controller {
    /// Builds the controller and applies `config` to the maps. With `adopted`, the ids and
    /// health found in the maps are kept, so a restart moves no flow.
    pub fn start(start: Start) -> anyhow::Result<Self> {
        let Start {
            dataplane,
            config_path,
            config,
            links,
            adopted,
            events,
            state_path,
            shared,
            probe_sender,
            runtime,
            previous,
            elections,
            announcing,
            flow_sync,
        } = start;
        let mut backends = BTreeMap::new();
        let ids = if adopted {
            let found_vips = dataplane.writer.published_vips();
            let found_backends = dataplane.writer.backend_entries();
            // Seed each adopted backend with the health found in the map, so probes continue
            // from it instead of failing everything over.
            for (id, entry, health) in &found_backends {
                if let Some(address) = address::from_words(&entry.address, entry.family) {
                    backends.insert(
                        *id,
                        BackendState {
                            vip: String::new(),
                            address,
                            weight: 1,
                            tier: Tier::Primary,
                            admin: if *health == HEALTH_DRAINING { Admin::Drained } else { Admin::Enabled },
                            admin_runtime: *health == HEALTH_DRAINING,
                            up: *health != HEALTH_DOWN,
                            probe: config::Probe {
                                check: Check::Icmp,
                                timing: config.probe_defaults,
                            },
                            last: None,
                            probes: 0,
                            failures: 0,
                        },
                    );
                }
            }
            // Operator decisions the earlier daemon recorded (the health bit alone cannot tell a
            // drained backend that went down from one that is simply down).
            for backend in previous.iter().flat_map(|status| &status.vips).flat_map(|vip| &vip.backends) {
                let Some(state) = backends.get_mut(&backend.id) else { continue };
                if state.address.to_string() != backend.address {
                    continue;
                }
                let admin = match backend.admin.as_str() {
                    "drained" => Admin::Drained,
                    "maintenance" => Admin::Maintenance,
                    _ => continue,
                };
                state.admin = admin;
                state.admin_runtime = true;
            }
            Ids::from_maps(&found_vips, &found_backends)
        } else {
            Ids::default()
        };
        let now = now_millis();
        let status = Status {
            instance: config.instance.clone(),
            pid: std::process::id(),
            started_at: now,
            config_path: config_path.display().to_string(),
            config_loaded_at: now,
            adopted,
            ..Status::default()
        };
        let mut controller = Self {
            dataplane,
            config_path,
            config: config.clone(),
            links,
            current_links: None,
            ids,
            vips: Vec::new(),
            backends,
            probes: BTreeMap::new(),
            tokens: BTreeMap::new(),
            next_token: 1,
            probe_sender,
            runtime,
            events,
            failovers: FailoverStats {
                latency_buckets: LATENCY_BUCKETS_US.iter().map(|bound| (*bound, 0)).collect(),
                ..FailoverStats::default()
            },
            status,
            shared,
            state_path,
            dirty: true,
            elections,
            election_sent: Default::default(),
            announcing,
            announced: Default::default(),
            flow_sync,
            ready: ReadyTables::start(),
        };
        // A drained node stays drained across a restart.
        controller.announced.node_drained = previous.as_ref().is_some_and(|status| status.node_drained);
        if adopted {
            // The adopted VIPs are known by key only until the config names them.
            let published = controller.dataplane.writer.published_vips();
            controller.vips = published
                .iter()
                .filter(|(key, _)| key.protocol != common::PROTOCOL_ADDRESS)
                .filter_map(|(key, meta)| {
                    let table = controller.dataplane.writer.table(key)?;
                    Some(VipState {
                        config: placeholder_vip(key),
                        key: *key,
                        vip_id: meta.vip_id,
                        members: controller.backends_of(meta.vip_id),
                        published_at: 0,
                        table: table.into(),
                        inputs: Vec::new(),
                        table_digest: String::new(),
                    })
                })
                .collect();
        }
        controller.apply(config, true)?;
        controller.record(Event {
            kind: if adopted { "adopted" } else { "started" }.into(),
            detail: format!(
                "{} with {} VIPs and {} backends",
                if adopted { "adopted the pinned data plane" } else { "loaded a new data plane" },
                controller.vips.len(),
                controller.backends.len()
            ),
            ..Event::default()
        });
        controller.update_elections();
        controller.update_announcements();
        controller.publish_status();
        Ok(controller)
    }

    fn backends_of(&self, vip_id: u32) -> Vec<u32> {
        self.dataplane.writer
            .backend_entries()
            .iter()
            .filter(|(_, entry, _)| entry.vip_id == vip_id)
            .map(|(id, _, _)| *id)
            .collect()
    }

    /// Handles one message; false when the controller should stop.
    pub fn handle(&mut self, message: Message) -> bool {
        let running = self.dispatch(message);
        // In the same step: a VIP whose last backend failed is withdrawn with the table that
        // says so; then the status that shows both.
        if running {
            self.update_announcements();
            if self.dirty {
                self.publish_status();
            }
        }
        running
    }

    fn dispatch(&mut self, message: Message) -> bool {
        match message {
            Message::Probe(event) => {
                self.on_probe(event);
                self.update_elections();
            }
            Message::Election(report) => self.on_election(report),
            Message::FlowSync(input) => self.on_flow_sync(input),
            Message::Control(request, reply) => {
                let response = self.on_request(request);
                let _ = reply.send(response);
            }
            Message::Withdraw(reply) => {
                let _ = reply.send(self.withdraw_for_stop());
            }
            Message::Tick => {
                // Retired table regions go back to the pool here, off the failover path.
                if let Err(error) = self.dataplane.writer.reclaim() {
                    tracing::warn!("reclaiming table regions failed: {error}");
                }
                self.refresh_flow_sync_status();
                if self.dirty {
                    self.publish_status();
                }
            }
            Message::Shutdown => {
                self.stop_probes();
                self.record(Event {
                    kind: "stopped".into(),
                    detail: "controller stopped; the data plane keeps forwarding with the last published state".into(),
                    ..Event::default()
                });
                self.publish_status();
                return false;
            }
        }
        true
    }
}
