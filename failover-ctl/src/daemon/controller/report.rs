//! What the controller tells the world: the event log, `state.json` and the status snapshot
//! the control socket and the metrics endpoint read.

use super::state::{members, Controller};
use crate::{
    config::{self, Check, Tier},
    daemon::{
        plan,
        status::{now_millis, BackendStatus, Event, VipStatus},
    },
    maglev,
};

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

impl Controller {
    pub(super) fn record(&mut self, mut event: Event) {
        event.at = now_millis();
        self.events.record(event);
    }

    pub(super) fn refresh_status(&mut self) {
        // Digests of tables published since the last refresh: by backend address, so equal on
        // every node that sends each flow to the same backend.
        let backends = &self.backends;
        for vip in self.vips.iter_mut().filter(|vip| vip.table_digest.is_empty() && !vip.table.is_empty()) {
            vip.table_digest = maglev::table_digest(&vip.table, |id| backends.get(&id).map(|backend| backend.address));
        }
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
                    table_digest: vip.table_digest.clone(),
                    election: self.config.election_of(&vip.config.name).map(|election| election.name.clone()),
                    announced: self.is_announced(&vip.config.address),
                    announce_reason: self.announced.vips.get(&vip.config.name).map_or("", |(reason, _)| reason.name()).into(),
                    announced_since: self.announced.vips.get(&vip.config.name).map_or(0, |(_, since)| *since),
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
        self.status.elections = self.election_status();
        // A VIP that follows a group is owned when the group holds the ownership.
        for vip in &mut self.status.vips {
            if let Some(group) = &vip.election {
                vip.owned = self.status.elections.iter().any(|election| &election.name == group && election.owned);
            }
        }
        self.status.failovers = self.failovers.clone();
        self.status.node_drained = self.announced.node_drained;
        self.status.withdraw_grace_ms = self.config.announce.withdraw_grace.as_millis() as u64;
        self.status.withdrawals = self.announced.withdrawals;
        self.status.updated_at = now_millis();
    }

    /// Rewrites `state.json` (write, then rename) and the snapshot the metrics endpoint reads.
    pub(super) fn publish_status(&mut self) {
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
