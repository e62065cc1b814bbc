//! The state owner: the one place that holds the desired state and the map writer. Probe
//! results, control requests and ticks arrive as [`Message`]s, one at a time, on a dedicated
//! thread (map updates may wait for a kernel grace period, which must not stall the runtime).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use failover_common::maps::{self as common, VipKey, HEALTH_DOWN, HEALTH_DRAINING};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{
    events::EventLog,
    plan::{self, Admin, Ids, Member},
    status::{
        now_millis, BackendStatus, Event, FailoverStats, FailoverTimings, InterfaceStatus, ProbeStatus, Request,
        Response, Status, VipStatus, LATENCY_BUCKETS_US,
    },
};
use crate::{
    address,
    config::{self, Check, Config, Tier},
    loader::Dataplane,
    maps::VipSettings,
    probe::{self, Health, ProbeEvent},
};

/// What the state owner is told.
pub enum Message {
    /// A probe result, with the verdict change it caused.
    Probe(ProbeEvent),
    /// A control request and where to answer it.
    Control(Request, oneshot::Sender<Response>),
    /// Once a second: refresh the published status if it changed.
    Tick,
    /// Stop: probes end, the maps stay as they are.
    Shutdown,
}

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
struct BackendState {
    vip: String,
    address: IpAddr,
    weight: u16,
    tier: Tier,
    admin: Admin,
    /// Whether the operator (not the config file) set `admin`; survives reloads.
    admin_runtime: bool,
    up: bool,
    probe: config::Probe,
    last: Option<ProbeStatus>,
    probes: u64,
    failures: u64,
}

impl BackendState {
    fn health_bit(&self) -> u32 {
        plan::health_bit(self.admin, self.up)
    }
}

#[derive(Debug, Clone)]
struct VipState {
    config: config::Vip,
    key: VipKey,
    vip_id: u32,
    /// Backend ids in file order.
    members: Vec<u32>,
    published_at: u64,
    /// The table last published, to skip identical publications.
    table: Vec<u32>,
}

struct ProbeTask {
    token: u32,
    handle: JoinHandle<()>,
}

/// The controller: desired state, map writer, probes and event log.
pub struct Controller {
    dataplane: Dataplane,
    config_path: PathBuf,
    config: Config,
    links: LinksFn,
    current_links: Option<Links>,
    ids: Ids,
    vips: Vec<VipState>,
    backends: BTreeMap<u32, BackendState>,
    /// Probe task per backend id; a task reports with its token, so results of a task that
    /// was replaced are recognised and ignored.
    probes: BTreeMap<u32, ProbeTask>,
    tokens: BTreeMap<u32, u32>,
    next_token: u32,
    probe_sender: mpsc::Sender<ProbeEvent>,
    runtime: tokio::runtime::Handle,
    events: EventLog,
    failovers: FailoverStats,
    status: Status,
    shared: Arc<Mutex<Status>>,
    state_path: PathBuf,
    dirty: bool,
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
}

fn probe_kind(check: &Check) -> &'static str {
    match check {
        Check::Tcp { .. } => "tcp",
        Check::Http(_) => "http",
        Check::Https(_) => "https",
        Check::Udp { .. } => "udp",
        Check::Icmp => "icmp",
        Check::Exec { .. } => "exec",
        Check::Redis { .. } => "redis",
        Check::Postgres { .. } => "postgres",
    }
}

/// The data-plane `Config` entry for `config` and the resolved MACs.
pub fn data_plane_config(config: &Config, links: &Links) -> common::Config {
    let mut entry = common::Config {
        next_hop_mac: links.next_hop_mac,
        interface_mac: links.interface_mac,
        mtu: config.tunnel.mtu,
        udp_idle_timeout_ns: config.flows.udp_idle_timeout.as_nanos() as u64,
        ..common::Config::default()
    };
    if let Some(prefix) = config.tunnel.source_v4 {
        let (words, _) = address::to_words(prefix.address);
        entry.source_v4_base = words[0];
        entry.source_v4_mask = u32::MAX.checked_shr(u32::from(prefix.length)).unwrap_or(0).to_be();
    }
    if let Some(prefix) = config.tunnel.source_v6 {
        let (words, _) = address::to_words(prefix.address);
        entry.source_v6_base = words;
        let host_bits_in_last_word = 128u32.saturating_sub(u32::from(prefix.length)).min(32);
        entry.source_v6_mask =
            if host_bits_in_last_word == 0 { 0 } else { (u32::MAX >> (32 - host_bits_in_last_word)).to_be() };
    }
    if config.flows.insert_rate > 0 {
        let cost = 1_000_000_000 / u64::from(config.flows.insert_rate);
        entry.flow_insert_cost_ns = cost.max(1);
        entry.flow_insert_burst_ns = entry.flow_insert_cost_ns * u64::from(config.flows.insert_burst);
    }
    entry
}

/// A plan for a whole configuration, computed before anything is written.
struct Plan {
    ids: Ids,
    vips: Vec<VipState>,
    backends: BTreeMap<u32, BackendState>,
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
        };
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
                        table,
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
        match message {
            Message::Probe(event) => self.on_probe(event),
            Message::Control(request, reply) => {
                let response = self.on_request(request);
                let _ = reply.send(response);
            }
            Message::Tick => {
                // Retired table regions go back to the pool here, off the failover path.
                if let Err(error) = self.dataplane.writer.reclaim() {
                    tracing::warn!("reclaiming table regions failed: {error}");
                }
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

    fn stop_probes(&mut self) {
        for (_, task) in std::mem::take(&mut self.probes) {
            task.handle.abort();
        }
        self.tokens.clear();
    }

    fn on_probe(&mut self, event: ProbeEvent) {
        let received = Instant::now();
        let Some(id) = self.tokens.get(&event.id).copied() else { return };
        let Some(backend) = self.backends.get_mut(&id) else { return };
        backend.probes += 1;
        backend.failures += u64::from(!event.result.success);
        backend.last = Some(ProbeStatus {
            at: event.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            success: event.result.success,
            latency_us: event.result.latency.as_micros() as u64,
            detail: event.result.detail.clone(),
        });
        self.dirty = true;
        let Some(transition) = event.transition else { return };
        let probe_at = event.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.apply_verdict(id, transition.to == Health::Up, probe_at, &event.result.detail, received);
    }

    /// Applies a verdict change of backend `id` in two stages (health bit, then the VIP's
    /// table) and records the failover event. `received`: when the verdict reached the state
    /// owner, the start of the measured latencies. Returns the timings, `None` when nothing
    /// changed.
    pub fn apply_verdict(
        &mut self,
        id: u32,
        up: bool,
        probe_at: u64,
        why: &str,
        received: Instant,
    ) -> Option<FailoverTimings> {
        let backend = self.backends.get_mut(&id)?;
        if backend.up == up {
            return None;
        }
        backend.up = up;
        let vip_name = backend.vip.clone();
        let address = backend.address;
        // Stage 1: the health bit, one map update.
        let bit = backend.health_bit();
        let stage_one = self.dataplane.writer.set_health(id, bit);
        let health_written = received.elapsed();
        // Stage 2: the tables of the VIP, rebuilt from the surviving weights.
        let stage_two = self.republish(&vip_name);
        let published = received.elapsed();
        let mut detail = format!(
            "{vip_name}: backend {address} is {} ({why}): health bit in {} us, table in {} us",
            if up { "up" } else { "down" },
            health_written.as_micros(),
            published.as_micros()
        );
        if let Err(error) = stage_one {
            detail.push_str(&format!("; writing the health bit failed: {error}"));
        }
        if let Err(error) = stage_two {
            detail.push_str(&format!("; publishing the table failed: {error:#}"));
        }
        self.count_failover(published);
        let timings = FailoverTimings {
            probe_at,
            to: if up { "up" } else { "down" }.into(),
            health_written_us: health_written.as_micros() as u64,
            table_published_us: published.as_micros() as u64,
        };
        self.record(Event {
            kind: "failover".into(),
            vip: Some(vip_name),
            backend: Some(address.to_string()),
            detail,
            timings: Some(timings.clone()),
            ..Event::default()
        });
        self.publish_status();
        Some(timings)
    }

    /// The backend ids of the VIP named `vip`, in file order.
    pub fn backend_ids(&self, vip: &str) -> Vec<u32> {
        self.vips.iter().find(|state| state.config.name == vip).map(|state| state.members.clone()).unwrap_or_default()
    }

    fn count_failover(&mut self, latency: Duration) {
        let micros = latency.as_micros() as u64;
        self.failovers.count += 1;
        self.failovers.latency_sum_us += micros;
        for (bound, count) in &mut self.failovers.latency_buckets {
            if micros <= *bound {
                *count += 1;
            }
        }
    }

    /// Rebuilds the table of the VIP named `name` and publishes it if it changed.
    fn republish(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(index) = self.vips.iter().position(|vip| vip.config.name == name) else {
            return Ok(());
        };
        let vip = &self.vips[index];
        let members = members(vip, &self.backends);
        let table = plan::table(&members, vip.config.table_size)?;
        if table != vip.table {
            let settings = VipSettings { vip_id: vip.vip_id, flags: plan::vip_flags(&vip.config) };
            self.dataplane.writer.publish_vip(vip.key, settings, &table)?;
            let vip = &mut self.vips[index];
            vip.table = table;
            vip.published_at = now_millis();
        }
        Ok(())
    }

    fn on_request(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Status => {
                self.refresh_status();
                return Response { ok: true, message: "ok".into(), status: Some(self.status.clone()) };
            }
            Request::Reload => self.reload(),
            Request::Drain { vip, backend } => self.set_admin(&vip, &backend, Admin::Drained, "drain"),
            Request::Undrain { vip, backend } => self.set_admin(&vip, &backend, Admin::Enabled, "undrain"),
            Request::Maintenance { vip, backend, on } => {
                let admin = if on { Admin::Maintenance } else { Admin::Enabled };
                self.set_admin(&vip, &backend, admin, "maintenance")
            }
        };
        self.publish_status();
        match result {
            Ok(message) => Response { ok: true, message, status: None },
            Err(error) => Response { ok: false, message: format!("{error:#}"), status: None },
        }
    }

    fn reload(&mut self) -> anyhow::Result<String> {
        let loaded = config::load(&self.config_path);
        let config = match loaded {
            Ok(config) => config,
            Err(error) => {
                let message = format!("reload refused, nothing changed: {error}");
                self.record(Event { kind: "reload_failed".into(), detail: message.clone(), ..Event::default() });
                anyhow::bail!(message);
            }
        };
        if config.instance != self.config.instance {
            let message = format!(
                "reload refused, nothing changed: instance changed from {} to {} (restart instead)",
                self.config.instance, config.instance
            );
            self.record(Event { kind: "reload_failed".into(), detail: message.clone(), ..Event::default() });
            anyhow::bail!(message);
        }
        match self.apply(config, false) {
            Ok(summary) => {
                self.status.config_loaded_at = now_millis();
                self.record(Event { kind: "reloaded".into(), detail: summary.clone(), ..Event::default() });
                Ok(summary)
            }
            Err(error) => {
                let message = format!("reload failed: {error:#}");
                self.record(Event { kind: "reload_failed".into(), detail: message.clone(), ..Event::default() });
                Err(error.context("reload failed"))
            }
        }
    }

    fn find(&self, vip: &str, backend: &str) -> anyhow::Result<u32> {
        let address: IpAddr = backend.parse().map_err(|_| anyhow::anyhow!("{backend:?} is not an IP address"))?;
        let state = self
            .vips
            .iter()
            .find(|state| state.config.name == vip)
            .ok_or_else(|| anyhow::anyhow!("no VIP named {vip:?}"))?;
        state
            .members
            .iter()
            .copied()
            .find(|id| self.backends.get(id).is_some_and(|b| b.address == address))
            .ok_or_else(|| anyhow::anyhow!("VIP {vip} has no backend {address}"))
    }

    fn set_admin(&mut self, vip: &str, backend: &str, admin: Admin, verb: &str) -> anyhow::Result<String> {
        let id = self.find(vip, backend)?;
        let state = self.backends.get_mut(&id).expect("found above");
        if state.admin == admin {
            return Ok(format!("{vip}: backend {backend} is already {}", admin.name()));
        }
        let was = state.admin;
        state.admin = admin;
        state.admin_runtime = true;
        if admin == Admin::Maintenance {
            // Out entirely: the verdict is unknown until probes run again.
            state.up = false;
        }
        let bit = state.health_bit();
        self.dataplane.writer.set_health(id, bit)?;
        if admin == Admin::Maintenance {
            self.stop_probe(id);
        } else if was == Admin::Maintenance {
            self.start_probe(id, Health::Down);
        }
        self.republish(vip)?;
        let message = format!("{vip}: backend {backend} is {} (was {})", admin.name(), was.name());
        self.record(Event {
            kind: verb.into(),
            vip: Some(vip.into()),
            backend: Some(backend.into()),
            detail: message.clone(),
            ..Event::default()
        });
        Ok(message)
    }

    fn stop_probe(&mut self, id: u32) {
        if let Some(task) = self.probes.remove(&id) {
            task.handle.abort();
            self.tokens.remove(&task.token);
        }
    }

    fn start_probe(&mut self, id: u32, initial: Health) {
        self.stop_probe(id);
        let Some(backend) = self.backends.get(&id) else { return };
        if backend.admin == Admin::Maintenance {
            return;
        }
        let (spec, settings) = match probe::from_config(&backend.probe, backend.address) {
            Ok(converted) => converted,
            Err(error) => {
                tracing::error!("backend {}: {error}", backend.address);
                return;
            }
        };
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        let _guard = self.runtime.enter();
        let handle = probe::spawn_from(token, spec, settings, initial, self.probe_sender.clone());
        self.tokens.insert(token, id);
        self.probes.insert(id, ProbeTask { token, handle });
    }

    /// Computes the whole state for `config` without writing anything.
    fn plan(&self, config: &Config) -> anyhow::Result<Plan> {
        let mut ids = self.ids.clone();
        let mut vips = Vec::new();
        let mut backends = BTreeMap::new();
        for vip in &config.vips {
            let key = plan::vip_key(vip);
            let vip_id = ids.vip(key)?;
            let mut ids_of_vip = Vec::new();
            for backend in &vip.backends {
                let id = ids.backend(vip_id, backend.address)?;
                let previous = self.backends.get(&id);
                let (admin, admin_runtime) = match previous {
                    _ if backend.maintenance => (Admin::Maintenance, false),
                    Some(previous) if previous.admin_runtime => (previous.admin, true),
                    _ => (Admin::Enabled, false),
                };
                let up = admin != Admin::Maintenance && previous.is_some_and(|previous| previous.up);
                backends.insert(
                    id,
                    BackendState {
                        vip: vip.name.clone(),
                        address: backend.address,
                        weight: backend.weight,
                        tier: backend.tier,
                        admin,
                        admin_runtime,
                        up,
                        probe: backend.probe.clone(),
                        last: previous.and_then(|previous| previous.last.clone()),
                        probes: previous.map_or(0, |previous| previous.probes),
                        failures: previous.map_or(0, |previous| previous.failures),
                    },
                );
                ids_of_vip.push(id);
            }
            let previous = self.vips.iter().find(|state| state.key == key);
            let mut state = VipState {
                config: vip.clone(),
                key,
                vip_id,
                members: ids_of_vip,
                published_at: previous.map_or(0, |previous| previous.published_at),
                table: Vec::new(),
            };
            state.table = plan::table(&members(&state, &backends), vip.table_size)
                .map_err(|error| anyhow::anyhow!("VIP {}: {error}", vip.name))?;
            vips.push(state);
        }
        let keep_vips: Vec<VipKey> = vips.iter().map(|vip| vip.key).collect();
        let keep_backends: Vec<u32> = backends.keys().copied().collect();
        ids.retain(&keep_vips, &keep_backends);
        Ok(Plan { ids, vips, backends })
    }

    /// Applies `config`: plans everything first (a plan that fails changes nothing), then
    /// writes new backends, publishes changed VIPs, removes what is gone. Returns a summary.
    fn apply(&mut self, config: Config, first: bool) -> anyhow::Result<String> {
        let plan = self.plan(&config)?;
        // Enough free pool for every VIP that gets a new table (each publish may need a fresh
        // region while the old one waits for its grace period).
        let needed: u64 = plan
            .vips
            .iter()
            .filter(|vip| self.vips.iter().find(|old| old.key == vip.key).is_none_or(|old| old.table != vip.table))
            .map(|vip| u64::from(vip.config.table_size))
            .sum();
        let mut free = u64::from(self.dataplane.writer.free_table_slots());
        if needed > free && self.dataplane.writer.has_retired() {
            self.dataplane.writer.reclaim()?;
            free = u64::from(self.dataplane.writer.free_table_slots());
        }
        if needed > free {
            anyhow::bail!("the tables need {needed} free pool slots but only {free} are free");
        }
        let links_changed = first
            || config.interfaces != self.config.interfaces
            || config.xdp_mode != self.config.xdp_mode
            || config.next_hop != self.config.next_hop;
        let links = if links_changed {
            (self.links)(&mut self.dataplane, &config)?
        } else {
            self.current_links.clone().expect("links resolved at start")
        };
        let entry = data_plane_config(&config, &links);
        if first || links_changed || config.tunnel != self.config.tunnel || config.flows != self.config.flows {
            self.dataplane.writer.set_config(&entry)?;
        }
        self.status.interfaces = links.interfaces.clone();
        self.status.next_hop_mac = address::format_mac(&links.next_hop_mac);
        self.current_links = Some(links);

        // Backends first (new ids, changed health), so every table names written entries.
        let existing: BTreeMap<u32, (common::Backend, u32)> =
            self.dataplane.writer.backend_entries().into_iter().map(|(id, entry, health)| (id, (entry, health))).collect();
        let (mut added, mut changed_vips, mut removed_vips) = (0, 0, 0);
        for (id, backend) in &plan.backends {
            let vip_id = plan.vips.iter().find(|vip| vip.members.contains(id)).map_or(0, |vip| vip.vip_id);
            let entry = plan::backend_entry(backend.address, vip_id);
            let bit = backend.health_bit();
            if existing.get(id) != Some(&(entry, bit)) {
                if !existing.contains_key(id) {
                    added += 1;
                }
                self.dataplane.writer.set_backend(*id, entry, bit)?;
            }
        }
        for vip in &plan.vips {
            let old = self.vips.iter().find(|old| old.key == vip.key);
            let flags = plan::vip_flags(&vip.config);
            let published = self.dataplane.writer.vip(&vip.key);
            let same = published.is_some_and(|meta| meta.flags == flags && meta.vip_id == vip.vip_id)
                && old.is_some_and(|old| old.table == vip.table);
            if !same {
                self.dataplane.writer.publish_vip(vip.key, VipSettings { vip_id: vip.vip_id, flags }, &vip.table)?;
                changed_vips += 1;
            }
        }
        let keys: Vec<VipKey> = plan.vips.iter().map(|vip| vip.key).collect();
        for old in self.vips.iter().filter(|old| !keys.contains(&old.key)) {
            if self.dataplane.writer.vip(&old.key).is_some() {
                self.dataplane.writer.remove_vip(old.key)?;
                removed_vips += 1;
            }
        }
        let mut removed_backends = 0;
        for (id, _) in existing.iter().filter(|(id, _)| !plan.backends.contains_key(id)) {
            self.dataplane.writer.remove_backend(*id)?;
            removed_backends += 1;
        }
        // The maps hold the plan now.
        let now = now_millis();
        let previous: BTreeMap<u32, (config::Probe, bool)> =
            self.backends.iter().map(|(id, b)| (*id, (b.probe.clone(), b.admin == Admin::Maintenance))).collect();
        self.ids = plan.ids;
        self.backends = plan.backends;
        self.vips = plan.vips;
        for vip in &mut self.vips {
            if vip.published_at == 0 {
                vip.published_at = now;
            }
        }
        self.config = config;
        // Probes: stop those of removed backends, (re)start new or changed ones.
        let stale: Vec<u32> = self.probes.keys().copied().filter(|id| !self.backends.contains_key(id)).collect();
        for id in stale {
            self.stop_probe(id);
        }
        let ids: Vec<u32> = self.backends.keys().copied().collect();
        for id in ids {
            let backend = &self.backends[&id];
            let unchanged = previous.get(&id).is_some_and(|(probe, maintenance)| {
                *probe == backend.probe && *maintenance == (backend.admin == Admin::Maintenance)
            }) && self.probes.contains_key(&id);
            if !unchanged {
                let initial = if backend.up { Health::Up } else { Health::Down };
                self.start_probe(id, initial);
            }
        }
        self.dirty = true;
        Ok(format!(
            "{} VIPs ({changed_vips} published, {removed_vips} removed), {} backends ({added} added, {removed_backends} removed)",
            self.vips.len(),
            self.backends.len()
        ))
    }

    fn record(&mut self, mut event: Event) {
        event.at = now_millis();
        self.events.record(event);
    }

    fn refresh_status(&mut self) {
        let vips = self
            .vips
            .iter()
            .map(|vip| {
                let serving = plan::serving(&members(vip, &self.backends));
                VipStatus {
                    name: vip.config.name.clone(),
                    address: vip.config.address.to_string(),
                    port: vip.config.port,
                    protocol: vip.config.protocol.to_string(),
                    vip_id: vip.vip_id,
                    table_size: vip.config.table_size,
                    owned: vip.config.owned,
                    all_down: match vip.config.all_down {
                        config::AllDown::Drop => "drop",
                        config::AllDown::Pass => "pass",
                    }
                    .into(),
                    hash: match vip.config.hash {
                        config::HashMode::FiveTuple => "five_tuple",
                        config::HashMode::Source => "source",
                    }
                    .into(),
                    published_at: vip.published_at,
                    backends: vip
                        .members
                        .iter()
                        .filter_map(|id| {
                            let backend = self.backends.get(id)?;
                            Some(BackendStatus {
                                id: *id,
                                address: backend.address.to_string(),
                                weight: backend.weight,
                                tier: match backend.tier {
                                    Tier::Primary => "primary",
                                    Tier::Backup => "backup",
                                }
                                .into(),
                                admin: backend.admin.name().into(),
                                health: if backend.up { "up" } else { "down" }.into(),
                                serving: serving.contains(id),
                                probe: probe_kind(&backend.probe.check).into(),
                                last_probe: backend.last.clone(),
                                probes: backend.probes,
                                probe_failures: backend.failures,
                            })
                        })
                        .collect(),
                }
            })
            .collect();
        self.status.vips = vips;
        self.status.failovers = self.failovers.clone();
        self.status.updated_at = now_millis();
    }

    /// Rewrites `state.json` (write, then rename) and the snapshot the metrics endpoint reads.
    fn publish_status(&mut self) {
        self.refresh_status();
        if let Ok(mut shared) = self.shared.lock() {
            *shared = self.status.clone();
        }
        match serde_json::to_vec_pretty(&self.status) {
            Ok(bytes) => {
                let temporary = self.state_path.with_extension("json.tmp");
                let written = std::fs::write(&temporary, bytes).and_then(|()| std::fs::rename(&temporary, &self.state_path));
                if let Err(error) = written {
                    tracing::warn!("writing {} failed: {error}", self.state_path.display());
                }
            }
            Err(error) => tracing::warn!("encoding the status failed: {error}"),
        }
        self.dirty = false;
    }
}

fn members(vip: &VipState, backends: &BTreeMap<u32, BackendState>) -> Vec<Member> {
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
fn placeholder_vip(key: &VipKey) -> config::Vip {
    config::Vip {
        name: format!("adopted-{}", u16::from_be(key.port)),
        address: address::from_words(&key.address, key.family).unwrap_or(IpAddr::from([0, 0, 0, 0])),
        port: u16::from_be(key.port),
        protocol: if key.protocol == common::PROTOCOL_UDP { config::Protocol::Udp } else { config::Protocol::Tcp },
        table_size: 0,
        hash: config::HashMode::FiveTuple,
        all_down: config::AllDown::Drop,
        owned: true,
        backends: Vec::new(),
    }
}

