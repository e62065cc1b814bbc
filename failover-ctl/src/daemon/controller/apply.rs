//! Applying a configuration: plan the whole state first (a plan that fails changes nothing),
//! then write backends, publish changed VIPs, remove what is gone, and restart changed probes.

use std::{collections::BTreeMap, sync::Arc};

use failover_common::maps::{self as common, VipKey};

use super::state::{members, BackendState, Controller, Links, VipState};
use crate::{
    address,
    config::{self, Config},
    maglev,
    daemon::{
        plan::{self, Admin, Ids},
        status::now_millis,
    },
    maps::VipSettings,
    probe::Health,
};

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
                table: Arc::from([]),
                inputs: Vec::new(),
                table_digest: String::new(),
            };
            state.inputs = plan::table_inputs(&members(&state, &backends));
            state.table = maglev::build(&state.inputs, vip.table_size)
                .map_err(|error| anyhow::anyhow!("VIP {}: {error}", vip.name))?
                .into();
            vips.push(state);
        }
        let keep_vips: Vec<VipKey> = vips.iter().map(|vip| vip.key).collect();
        let keep_backends: Vec<u32> = backends.keys().copied().collect();
        ids.retain(&keep_vips, &keep_backends);
        Ok(Plan { ids, vips, backends })
    }

    /// Applies `config`: plans everything first (a plan that fails changes nothing), then
    /// writes new backends, publishes changed VIPs, removes what is gone. Returns a summary.
    pub(super) fn apply(&mut self, config: Config, first: bool) -> anyhow::Result<String> {
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
            let flags = plan::vip_flags(&vip.config, plan::group_index(&config, &vip.config.name));
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
        // The tables one verdict away from each VIP's (those already prepared for an unchanged
        // table are kept).
        self.ready.retain(&keys);
        for vip in &self.vips {
            self.ready.published(vip.key, vip.table.clone(), &vip.inputs, &members(vip, &self.backends), None);
        }
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
}
