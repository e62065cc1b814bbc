//! `flows`: the tracked flows, newest first, with the backend each is pinned to and whether
//! that entry still decides.

use std::{collections::BTreeMap, net::IpAddr};

use failover_common::maps::{
    Backend, Config, FlowKey, FlowValue, VipKey, VipMeta, HEALTH_DRAINING, HEALTH_UP, PROTOCOL_UDP,
};
use serde::Serialize;

use super::{
    instance::{backends_by_id, lookup_vip, monotonic_ns, open, resolve_vip, State},
    render::{emit, emit_json, endpoint, protocol_name, short_duration, Table},
    Target,
};
use crate::address;


#[derive(Serialize)]
struct FlowRow {
    client: String,
    vip: String,
    vip_name: Option<String>,
    protocol: String,
    backend_id: u32,
    backend: String,
    /// Since the entry was created (TCP) or last refreshed (UDP, at most once a second).
    age_ms: u64,
    /// "live", "backend_down" (the next packet re-chooses), "stale" (the backend id now
    /// belongs to another VIP or to none) or "expired" (UDP idle beyond the timeout).
    state: &'static str,
}

#[derive(Serialize)]
struct FlowsView {
    total: usize,
    matching: usize,
    shown: usize,
    flows: Vec<FlowRow>,
}

fn flow_state(
    key: &FlowKey,
    value: &FlowValue,
    vip: Option<&VipMeta>,
    backends: &BTreeMap<u32, (Backend, u32)>,
    config: Option<&Config>,
    now: u64,
) -> &'static str {
    let Some((backend, health)) = backends.get(&value.backend_id) else { return "stale" };
    if vip.is_some_and(|meta| meta.vip_id != backend.vip_id) {
        return "stale";
    }
    if key.protocol == PROTOCOL_UDP
        && config.is_some_and(|config| now.saturating_sub(value.last_seen_ns) > config.udp_idle_timeout_ns)
    {
        return "expired";
    }
    if *health == HEALTH_UP || *health == HEALTH_DRAINING {
        "live"
    } else {
        "backend_down"
    }
}

pub fn flows(target: &Target, vip: Option<&str>, backend: Option<&str>, limit: usize) -> anyhow::Result<()> {
    let view = open(&target.paths)?;
    let state = State::read(&target.paths);
    state.warn();
    let published = view.vips()?;
    let only_vip = match vip {
        Some(name) => Some(resolve_vip(&published, &state, name)?.0),
        None => None,
    };
    let only_backend = match backend {
        Some(text) => {
            Some(text.parse::<IpAddr>().map_err(|_| anyhow::anyhow!("--backend {text:?}: not an IP address"))?)
        }
        None => None,
    };
    let vips: BTreeMap<VipKey, VipMeta> = published.into_iter().collect();
    let backends = backends_by_id(&view)?;
    let config = view.config()?;
    let now = monotonic_ns();
    let all = view.flows()?;
    let total = all.len();
    let mut rows: Vec<FlowRow> = Vec::new();
    for (key, value) in all {
        let found = lookup_vip(&vips, key.family, key.destination, key.destination_port, key.protocol);
        if only_vip.is_some() && found.map(|(vip, _)| vip) != only_vip {
            continue;
        }
        let backend_ip = backends
            .get(&value.backend_id)
            .and_then(|(backend, _)| address::from_words(&backend.address, backend.family));
        if only_backend.is_some() && backend_ip != only_backend {
            continue;
        }
        rows.push(FlowRow {
            client: endpoint(&key.source, key.family, key.source_port),
            vip: format!(
                "{}/{}",
                endpoint(&key.destination, key.family, key.destination_port),
                protocol_name(key.protocol)
            ),
            vip_name: found.map(|(_, meta)| state.vip_name(meta.vip_id)),
            protocol: protocol_name(key.protocol),
            backend_id: value.backend_id,
            backend: backend_ip.map_or_else(|| "?".into(), |ip| ip.to_string()),
            age_ms: now.saturating_sub(value.last_seen_ns) / 1_000_000,
            state: flow_state(&key, &value, found.as_ref().map(|(_, meta)| meta), &backends, config.as_ref(), now),
        });
    }
    let matching = rows.len();
    // Most recent first; then a stable order.
    rows.sort_by(|a, b| a.age_ms.cmp(&b.age_ms).then_with(|| a.client.cmp(&b.client)).then_with(|| a.vip.cmp(&b.vip)));
    rows.truncate(limit);
    let report = FlowsView { total, matching, shown: rows.len(), flows: rows };
    if target.json {
        return emit_json(&report);
    }
    let mut table = Table::new(&["CLIENT", "VIP", "NAME", "BACKEND", ">ID", ">AGE", "STATE"]);
    for row in &report.flows {
        table.row(vec![
            row.client.clone(),
            row.vip.clone(),
            row.vip_name.clone().unwrap_or_else(|| "-".into()),
            row.backend.clone(),
            row.backend_id.to_string(),
            short_duration(row.age_ms),
            row.state.replace('_', " "),
        ]);
    }
    let mut text = if report.flows.is_empty() { String::new() } else { table.render() };
    text.push_str(&format!(
        "{} shown of {} matching, {} tracked in all (age: TCP since the first packet, UDP since the last refresh)\n",
        report.shown, report.matching, report.total
    ));
    emit(&text)
}
