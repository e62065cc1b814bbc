//! The state owner's side of the elections: it tells the election task when every backend has
//! a verdict and how many of a group's backends are up (the `backends_up` tracks), forwards the
//! operator's requests, records the task's transitions as events, and merges the groups' status
//! into its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc;

use super::state::Controller;
use crate::{
    config::TrackKind,
    daemon::{
        plan::Admin,
        status::{ElectionStatus, Event},
    },
    election::runtime::{Command, Report},
};

/// The handle the state owner keeps on the election task.
pub struct Elections {
    pub commands: mpsc::Sender<Command>,
    /// Written by the election task after every change, read when the status is published.
    pub status: Arc<Mutex<Vec<ElectionStatus>>>,
}

/// What was last sent, so only changes are.
#[derive(Debug, Default)]
pub(super) struct Sent {
    eligible: Option<bool>,
    /// (group, track) -> failed.
    backends_up: BTreeMap<(String, usize), bool>,
}

impl Controller {
    /// Records a transition or an error of the election task; forgets a group's flows.
    pub(super) fn on_election(&mut self, report: Report) {
        let event = match report {
            Report::ForgetFlows { group } => {
                self.forget_group_flows(&group);
                return;
            }
            Report::Transition { group, transition, priority } => Event {
                kind: "election".into(),
                detail: format!("{group}: {} -> {} ({}), priority {priority}", transition.from, transition.to, transition.reason),
                ..Event::default()
            },
            Report::Error { group, detail } => Event { kind: "error".into(), detail: format!("election {group}: {detail}"), ..Event::default() },
        };
        self.record(event);
        self.dirty = true;
    }

    /// Forgets every flow tracked to an address of the group's VIPs (any port and protocol):
    /// one scan of the flow table, which the data plane sees at once. An event says how many
    /// when there were any.
    fn forget_group_flows(&mut self, group: &str) {
        let Some(election) = self.config.elections.iter().find(|election| election.name == group) else { return };
        let addresses: BTreeSet<IpAddr> =
            self.config.vips.iter().filter(|vip| election.vips.contains(&vip.name)).map(|vip| vip.address).collect();
        let words: Vec<([u32; 4], u8)> = addresses.iter().map(|address| crate::address::to_words(*address)).collect();
        match self.dataplane.counters.forget_flows_where(|key| words.contains(&(key.destination, key.family))) {
            Ok(0) => {}
            Ok(count) => {
                let detail = format!("{group}: forgot {count} flows of its VIPs (another node serves them, choosing by the table)");
                self.record(Event { kind: "election".into(), detail, ..Event::default() });
                self.dirty = true;
            }
            Err(error) => {
                let detail = format!("election {group}: forgetting its flows: {error}");
                self.record(Event { kind: "error".into(), detail, ..Event::default() });
            }
        }
    }

    /// `election resign GROUP` / `election priority GROUP N`.
    pub(super) fn election_request(&mut self, group: &str, command: Command, what: &str) -> anyhow::Result<String> {
        if !self.config.elections.iter().any(|election| election.name == group) {
            anyhow::bail!("no election named {group:?}");
        }
        let Some(elections) = &self.elections else {
            anyhow::bail!("the election task is not running");
        };
        elections.commands.try_send(command).map_err(|error| anyhow::anyhow!("the election task did not take the request: {error}"))?;
        self.record(Event { kind: "election".into(), detail: format!("{group}: {what} requested by the operator"), ..Event::default() });
        Ok(format!("{group}: {what}"))
    }

    /// Sends the eligibility and the `backends_up` tracks when they changed. A backend has a
    /// verdict once it is up or has been probed `fall` times; one in maintenance needs none.
    pub(super) fn update_elections(&mut self) {
        let Some(elections) = &self.elections else { return };
        let eligible = self
            .backends
            .values()
            .all(|backend| backend.admin == Admin::Maintenance || backend.up || backend.probes >= u64::from(backend.probe.timing.fall));
        let mut commands = Vec::new();
        if self.election_sent.eligible != Some(eligible) {
            self.election_sent.eligible = Some(eligible);
            commands.push(Command::Eligible(eligible));
        }
        for election in &self.config.elections {
            for (number, track) in election.tracks.iter().enumerate() {
                let TrackKind::BackendsUp { percent } = track.kind else { continue };
                let (mut up, mut total) = (0u64, 0u64);
                for vip in self.vips.iter().filter(|vip| election.vips.contains(&vip.config.name)) {
                    for backend in vip.members.iter().filter_map(|id| self.backends.get(id)) {
                        if backend.admin == Admin::Enabled {
                            total += 1;
                            up += u64::from(backend.up);
                        }
                    }
                }
                let failed = up * 100 < u64::from(percent) * total || total == 0;
                let key = (election.name.clone(), number);
                if self.election_sent.backends_up.get(&key) != Some(&failed) {
                    self.election_sent.backends_up.insert(key, failed);
                    commands.push(Command::Track { group: election.name.clone(), track: number, failed });
                }
            }
        }
        for command in commands {
            if let Err(error) = elections.commands.try_send(command) {
                tracing::warn!("the election task did not take an update: {error}");
            }
        }
    }

    /// The groups' status as the election task last wrote it.
    pub(super) fn election_status(&self) -> Vec<ElectionStatus> {
        self.elections.as_ref().and_then(|elections| elections.status.lock().ok().map(|status| status.clone())).unwrap_or_default()
    }
}
