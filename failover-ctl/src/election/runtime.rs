//! The election task: runs every VRRP group of the daemon on its own tokio task, apart from the
//! state owner, so probes, table builds and grace periods never delay an advert. It owns the
//! groups' state machines and timers, the sockets (one per interface and family, shared by the
//! groups there), the announcers and the interface / probe tracks; it writes the ownership of
//! the groups' VIPs (one map write per group, the only writer of that map) and the VRRP
//! addresses, and reports transitions to the state owner.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::{
    announce::Announcer,
    codec::Discard,
    fsm::{Action, Event, State},
    group::{self, Group, GroupSpec},
    socket::{Datagram, VrrpSocket},
};
use crate::{
    config,
    daemon::status::{now_millis, ElectionStatus, ElectionTransition},
    netlink::Netlink,
    probe::{self, Health, ProbeEvent},
};

/// How often interface tracks read the link state.
const LINK_POLL: Duration = Duration::from_millis(100);

/// Where the ownership of each group's VIPs is written: one entry per group index.
pub trait OwnershipStore: Send {
    fn set(&mut self, group: u8, owned: bool) -> anyhow::Result<()>;
    fn get(&self, group: u8) -> anyhow::Result<bool>;
}

/// A group as the daemon resolved it: the configuration plus what the interface gave.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The group's slot in the ownership map (its position in the configuration, plus one).
    pub index: u8,
    pub spec: GroupSpec,
    pub election: config::Election,
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// Where adverts come from: the interface's first address of the group's family (for IPv6
    /// its link-local address).
    pub source: IpAddr,
    /// Every address of this node on the interface: adverts from them are our own.
    pub ours: Vec<IpAddr>,
    pub link_local: Option<Ipv6Addr>,
}

/// What the election task is told.
#[derive(Debug)]
pub enum Command {
    /// The named group's master resigns.
    Resign(String),
    /// The named group advertises this priority (`None`: its configured one again).
    Priority(String, Option<u8>),
    /// A `backends_up` track of a group failed or recovered (computed by the state owner).
    Track { group: String, track: usize, failed: bool },
    /// Whether every probed backend has a verdict.
    Eligible(bool),
    /// Stop every group (the daemon stops): release only with `release_on_stop`.
    Stop,
}

/// What the election task tells the state owner.
#[derive(Debug, Clone)]
pub enum Report {
    Transition { group: String, transition: ElectionTransition, priority: u8 },
    /// Forget the flows tracked for the group's VIPs ([`Action::ForgetFlows`]): the state
    /// owner, which knows their addresses in the configuration in force, clears them.
    ForgetFlows { group: String },
    Error { group: String, detail: String },
}

/// A running group with what its actions need.
struct Running {
    resolved: Resolved,
    group: Group,
    /// Track descriptions, in track order.
    track_names: Vec<String>,
    /// When the last transition was carried out (ms since the epoch).
    last_transition_at: u64,
}

/// The socket key: interface index and family.
type SocketKey = (u32, bool);

/// Everything the task owns.
pub struct Runtime {
    groups: Vec<Running>,
    sockets: BTreeMap<SocketKey, Arc<VrrpSocket>>,
    announcers: BTreeMap<u32, Announcer>,
    ownership: Box<dyn OwnershipStore>,
    netlink: Arc<Netlink>,
    reports: mpsc::UnboundedSender<Report>,
    status: Arc<Mutex<Vec<ElectionStatus>>>,
    /// Discards that no group could take (an unknown VRID, an unusable header), per interface.
    orphans: BTreeMap<u32, BTreeMap<&'static str, u64>>,
}

impl Runtime {
    /// Opens the sockets and announcers of `groups` (inside a tokio runtime, in the network
    /// namespace of the interfaces).
    pub fn new(
        groups: Vec<Resolved>,
        ownership: Box<dyn OwnershipStore>,
        netlink: Arc<Netlink>,
        reports: mpsc::UnboundedSender<Report>,
        status: Arc<Mutex<Vec<ElectionStatus>>>,
    ) -> io::Result<Self> {
        let mut sockets = BTreeMap::new();
        let mut announcers = BTreeMap::new();
        let mut running = Vec::new();
        for resolved in groups {
            let key = (resolved.ifindex, resolved.source.is_ipv4());
            if let std::collections::btree_map::Entry::Vacant(slot) = sockets.entry(key) {
                slot.insert(Arc::new(VrrpSocket::open(&resolved.spec.interface, resolved.ifindex, resolved.source)?));
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = announcers.entry(resolved.ifindex) {
                slot.insert(Announcer::open(&resolved.spec.interface, resolved.ifindex, resolved.mac, resolved.link_local)?);
            }
            let group = Group::new(resolved.spec.clone(), resolved.source, resolved.ours.clone());
            let track_names = resolved.election.tracks.iter().map(describe_track).collect();
            running.push(Running { resolved, group, track_names, last_transition_at: 0 });
        }
        Ok(Self { groups: running, sockets, announcers, ownership, netlink, reports, status, orphans: BTreeMap::new() })
    }

    /// Runs until `Command::Stop` (or the command channel closes).
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let (datagram_sender, mut datagrams) = mpsc::channel::<(SocketKey, io::Result<Result<Datagram, Discard>>)>(1024);
        let mut readers = Vec::new();
        for (key, socket) in &self.sockets {
            let (key, socket, sender) = (*key, socket.clone(), datagram_sender.clone());
            readers.push(tokio::spawn(async move {
                loop {
                    let result = socket.recv().await;
                    let failed = result.is_err();
                    if sender.send((key, result)).await.is_err() || failed {
                        break;
                    }
                }
            }));
        }
        let (probe_sender, mut probe_events) = mpsc::channel::<ProbeEvent>(256);
        let probe_tracks = self.start_probe_tracks(&probe_sender);
        let mut link_poll = tokio::time::interval(LINK_POLL);
        link_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

        let now = Instant::now();
        for index in 0..self.groups.len() {
            // A probe track counts as failed until its probe has `rise` successes: a node that
            // never saw its witness must not take over (and with weight 0 it starts in Fault).
            let tracks = self.groups[index].resolved.election.tracks.clone();
            for (number, track) in tracks.iter().enumerate() {
                if matches!(track.kind, config::TrackKind::Probe { .. }) {
                    self.groups[index].group.track(number, true, now);
                }
            }
            // No mastership until the state owner says every backend has a verdict.
            self.groups[index].group.handle(Event::Eligible(false), now);
            let slot = self.groups[index].resolved.index;
            let adopted = self.ownership.get(slot).unwrap_or(false);
            let actions = self.groups[index].group.handle(Event::Start { adopted }, now);
            self.carry_out(index, actions).await;
        }
        self.publish();
        loop {
            let deadline = self.groups.iter().filter_map(|running| running.group.machine().deadline()).min();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((key, result)) = datagrams.recv() => self.on_datagram(key, result).await,
                command = commands.recv() => {
                    match command {
                        Some(Command::Stop) | None => {
                            self.stop().await;
                            break;
                        }
                        Some(command) => self.on_command(command).await,
                    }
                }
                Some(event) = probe_events.recv() => self.on_probe_track(&probe_tracks, event).await,
                _ = link_poll.tick() => self.poll_links().await,
                _ = sleep => self.on_timers().await,
            }
            self.publish();
        }
        for reader in readers {
            reader.abort();
        }
        for (handle, ..) in probe_tracks.into_values() {
            handle.abort();
        }
        self.publish();
    }

    async fn on_datagram(&mut self, key: SocketKey, result: io::Result<Result<Datagram, Discard>>) {
        let datagram = match result {
            Ok(Ok(datagram)) => datagram,
            Ok(Err(discard)) => return self.orphan(key.0, discard),
            Err(error) => {
                tracing::error!("VRRP socket on interface {} failed: {error}", key.0);
                return;
            }
        };
        let vrid = group::vrid_of(&datagram);
        let target = self.groups.iter().position(|running| {
            (running.resolved.ifindex, running.resolved.source.is_ipv4()) == key && Some(running.resolved.spec.vrid) == vrid
        });
        let Some(index) = target else {
            // Our own adverts of another VRID never come back (no multicast loop), so this is a
            // stranger's group.
            return self.orphan(key.0, if vrid.is_some() { Discard::VrId } else { Discard::PacketLength });
        };
        match self.groups[index].group.receive(&datagram, Instant::now()) {
            Ok(Some(actions)) => self.carry_out(index, actions).await,
            Ok(None) => {}
            Err(discard) => tracing::debug!("group {}: discarded an advert from {}: {discard}", self.groups[index].resolved.spec.name, datagram.source),
        }
    }

    fn orphan(&mut self, ifindex: u32, discard: Discard) {
        *self.orphans.entry(ifindex).or_default().entry(discard.name()).or_default() += 1;
    }

    async fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Resign(name) => {
                if let Some(index) = self.find(&name) {
                    let actions = self.groups[index].group.handle(Event::Resign, now);
                    self.carry_out(index, actions).await;
                }
            }
            Command::Priority(name, priority) => {
                if let Some(index) = self.find(&name) {
                    let actions = self.groups[index].group.set_priority(priority, now);
                    self.carry_out(index, actions).await;
                }
            }
            Command::Track { group, track, failed } => {
                if let Some(index) = self.find(&group) {
                    let actions = self.groups[index].group.track(track, failed, now);
                    self.carry_out(index, actions).await;
                }
            }
            Command::Eligible(eligible) => {
                for index in 0..self.groups.len() {
                    let actions = self.groups[index].group.handle(Event::Eligible(eligible), now);
                    self.carry_out(index, actions).await;
                }
            }
            Command::Stop => {}
        }
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        for index in 0..self.groups.len() {
            if self.groups[index].group.machine().deadline().is_some_and(|at| at <= now) {
                let actions = self.groups[index].group.handle(Event::Timer, now);
                self.carry_out(index, actions).await;
            }
        }
    }

    async fn stop(&mut self) {
        let now = Instant::now();
        for index in 0..self.groups.len() {
            let actions = self.groups[index].group.handle(Event::Stop, now);
            self.carry_out(index, actions).await;
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|running| running.resolved.spec.name == name)
    }

    /// The group's own interface and the interface tracks: the link must be up with a carrier.
    async fn poll_links(&mut self) {
        let now = Instant::now();
        for index in 0..self.groups.len() {
            let own = self.groups[index].resolved.spec.interface.clone();
            let up = matches!(self.netlink.interface(&own).await, Ok(interface) if interface.running);
            let actions = self.groups[index].group.link(up, now);
            self.carry_out(index, actions).await;
            let tracks = self.groups[index].resolved.election.tracks.clone();
            for (number, track) in tracks.iter().enumerate() {
                let config::TrackKind::Interface(name) = &track.kind else { continue };
                let failed = match self.netlink.interface(name).await {
                    Ok(interface) => !interface.running,
                    Err(_) => true,
                };
                let actions = self.groups[index].group.track(number, failed, now);
                self.carry_out(index, actions).await;
            }
        }
    }

    /// Starts one probe task per probe track; their results come back tagged with a token.
    fn start_probe_tracks(&self, sender: &mpsc::Sender<ProbeEvent>) -> BTreeMap<u32, (tokio::task::JoinHandle<()>, usize, usize)> {
        let mut tracks = BTreeMap::new();
        let mut token = 1;
        for (index, running) in self.groups.iter().enumerate() {
            for (number, track) in running.resolved.election.tracks.iter().enumerate() {
                let config::TrackKind::Probe { address, probe } = &track.kind else { continue };
                match probe::from_config(probe, *address) {
                    Ok((spec, settings)) => {
                        let handle = probe::spawn_from(token, spec, settings, Health::Down, sender.clone());
                        tracks.insert(token, (handle, index, number));
                        token += 1;
                    }
                    Err(error) => tracing::error!("group {}: track {number}: {error}", running.resolved.spec.name),
                }
            }
        }
        tracks
    }

    async fn on_probe_track(&mut self, tracks: &BTreeMap<u32, (tokio::task::JoinHandle<()>, usize, usize)>, event: ProbeEvent) {
        let Some((_, index, number)) = tracks.get(&event.id) else { return };
        let Some(change) = event.transition else { return };
        let failed = change.to == Health::Down;
        let actions = self.groups[*index].group.track(*number, failed, Instant::now());
        self.carry_out(*index, actions).await;
    }

    /// Carries out a group's actions, in order.
    async fn carry_out(&mut self, index: usize, actions: Vec<Action>) {
        for action in actions {
            let running = &mut self.groups[index];
            let name = running.resolved.spec.name.clone();
            let result: anyhow::Result<()> = match action {
                Action::Own(owned) => self.ownership.set(running.resolved.index, owned),
                Action::ForgetFlows => {
                    let _ = self.reports.send(Report::ForgetFlows { group: name.clone() });
                    Ok(())
                }
                Action::Addresses(add) => {
                    let mut result = Ok(());
                    for address in &running.resolved.spec.addresses {
                        let outcome = if add {
                            let prefix = if address.is_ipv4() { 32 } else { 128 };
                            self.netlink.add_address(running.resolved.ifindex, *address, prefix).await
                        } else {
                            self.netlink.remove_address(running.resolved.ifindex, *address).await
                        };
                        if let Err(error) = outcome {
                            result = Err(error.into());
                        }
                    }
                    result
                }
                Action::SendAdvert { priority } => {
                    let key = (running.resolved.ifindex, running.resolved.source.is_ipv4());
                    let socket = self.sockets.get(&key).cloned();
                    let mut result = Ok(());
                    for (destination, message) in running.group.advert(priority) {
                        if let Some(socket) = &socket {
                            if let Err(error) = socket.send(destination, &message).await {
                                result = Err(anyhow::anyhow!("sending an advert to {destination}: {error}"));
                            }
                        }
                    }
                    result
                }
                Action::Garp => match self.announcers.get(&running.resolved.ifindex) {
                    Some(announcer) => (0..running.resolved.spec.garp_repeat)
                        .try_for_each(|_| announcer.announce(&running.resolved.spec.addresses))
                        .map_err(|error| anyhow::anyhow!("gratuitous ARP / NA: {error}")),
                    None => Ok(()),
                },
                Action::Transition { from, to, reason } => {
                    running.last_transition_at = now_millis();
                    let priority = running.group.effective_priority();
                    tracing::info!("election {name}: {} -> {} ({reason:?}, priority {priority})", from.name(), to.name());
                    notify(&running.resolved.election, to, priority);
                    let transition = ElectionTransition {
                        at: running.last_transition_at,
                        from: from.name().into(),
                        to: to.name().into(),
                        reason: reason.name().into(),
                    };
                    let _ = self.reports.send(Report::Transition { group: name.clone(), transition, priority });
                    Ok(())
                }
            };
            if let Err(error) = result {
                tracing::warn!("election {name}: {error:#}");
                let _ = self.reports.send(Report::Error { group: name, detail: format!("{error:#}") });
            }
        }
    }

    /// Writes every group's status where the state owner reads it.
    fn publish(&self) {
        let statuses: Vec<ElectionStatus> = self
            .groups
            .iter()
            .map(|running| {
                let machine = running.group.machine();
                let mut counters = running.group.counters().clone();
                if let Some(orphans) = self.orphans.get(&running.resolved.ifindex) {
                    for (name, count) in orphans {
                        *counters.discarded.entry((*name).to_owned()).or_default() += count;
                    }
                }
                ElectionStatus {
                    name: running.resolved.spec.name.clone(),
                    interface: running.resolved.spec.interface.clone(),
                    vrid: running.resolved.spec.vrid,
                    state: machine.state().name().into(),
                    priority: running.resolved.spec.priority,
                    effective_priority: running.group.effective_priority(),
                    master: machine.master().map(|address| address.to_string()).unwrap_or_default(),
                    advert_interval_ms: u64::from(machine.master_interval_cs()) * 10,
                    addresses: running.resolved.spec.addresses.iter().map(ToString::to_string).collect(),
                    vips: running.resolved.election.vips.clone(),
                    owned: machine.owns(),
                    last_transition: running.group.last_transition().map(|transition| ElectionTransition {
                        at: running.last_transition_at,
                        from: transition.from.name().into(),
                        to: transition.to.name().into(),
                        reason: transition.reason.name().into(),
                    }),
                    failed_tracks: running
                        .group
                        .link_down()
                        .then(|| format!("interface {} (the group's own)", running.resolved.spec.interface))
                        .into_iter()
                        .chain(running.group.failed_tracks(&running.track_names).into_iter().map(str::to_owned))
                        .collect(),
                    counters,
                }
            })
            .collect();
        if let Ok(mut status) = self.status.lock() {
            *status = statuses;
        }
    }
}

/// keepalived's notify convention: `program args... GROUP name STATE priority`, no shell, as
/// the group's `notify_user` (default `script_user`); reaped in the background.
fn notify(election: &config::Election, state: State, priority: u8) {
    let (Some((program, arguments)), Some(user)) = (election.notify.split_first(), &election.notify_user) else { return };
    let group = &election.name;
    let state = state.name().to_uppercase();
    let mut command = tokio::process::Command::new(program);
    command.args(arguments).args(["GROUP", group, &state, &priority.to_string()]).stdin(std::process::Stdio::null());
    probe::exec::run_as(&mut command, user);
    let spawned = command.spawn();
    match spawned {
        Ok(mut child) => {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(error) => tracing::warn!("election {group}: notify {program}: {error}"),
    }
}

/// How a track is named in the status.
pub fn describe_track(track: &config::Track) -> String {
    match &track.kind {
        config::TrackKind::Interface(name) => format!("interface {name}"),
        config::TrackKind::Probe { address, .. } => format!("probe {address}"),
        config::TrackKind::BackendsUp { percent } => format!("backends_up {percent}%"),
    }
}

/// The group's settings from its configuration.
pub fn group_spec(election: &config::Election) -> GroupSpec {
    GroupSpec {
        name: election.name.clone(),
        interface: election.interface.clone(),
        vrid: election.vrid,
        priority: election.priority,
        interval_cs: (election.advert_interval.as_millis() / 10) as u16,
        preempt: election.preempt,
        preempt_delay: election.preempt_delay,
        addresses: election.addresses.clone(),
        unicast_peers: election.unicast_peers.clone(),
        checksum: election.checksum,
        garp_master_delay: election.garp_master_delay,
        garp_master_refresh: election.garp_master_refresh,
        garp_repeat: election.garp_master_repeat,
        release_on_stop: election.release_on_stop,
        track_weights: election.tracks.iter().map(|track| track.weight).collect(),
    }
}
