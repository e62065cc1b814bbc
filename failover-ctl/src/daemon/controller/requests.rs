//! Control requests: status, reload, drain, undrain, maintenance and the elections' resign and
//! priority.

use std::net::IpAddr;

use super::state::Controller;
use crate::election::runtime::Command;
use crate::{
    config,
    daemon::{
        plan::Admin,
        status::{now_millis, Event, Request, Response},
    },
    probe::Health,
};

impl Controller {
    pub(super) fn on_request(&mut self, request: Request) -> Response {
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
            Request::ElectionResign { group } => self.election_request(&group, Command::Resign(group.clone()), "resign"),
            Request::ElectionPriority { group, priority } => {
                if (1..=254).contains(&priority) {
                    self.election_request(&group, Command::Priority(group.clone(), Some(priority)), &format!("priority {priority}"))
                } else {
                    Err(anyhow::anyhow!("priority must be between 1 and 254, got {priority}"))
                }
            }
            Request::DrainNode => self.set_node_drained(true),
            Request::UndrainNode => self.set_node_drained(false),
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
        if config.elections != self.config.elections {
            let message = "reload refused, nothing changed: the [[election]] groups changed (restart instead: a restart is hitless and keeps the ownership until another master is heard)".to_owned();
            self.record(Event { kind: "reload_failed".into(), detail: message.clone(), ..Event::default() });
            anyhow::bail!(message);
        }
        if config.flow_sync != self.config.flow_sync {
            let message = "reload refused, nothing changed: [flow_sync] changed (restart instead: a restart is hitless)".to_owned();
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
}
