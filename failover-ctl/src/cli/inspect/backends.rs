//! `backends`: every backend (of one VIP or all) with its health bit, the probes' verdict,
//! admin state, weight, traffic and last probe.

use serde::Serialize;

use super::{
    instance::{open, resolve_vip, State},
    render::{emit, emit_json, health_name, human_bytes, ip, micros, short_duration, utc, yes_no, Table},
    Target,
};
use crate::daemon::status::now_millis;


#[derive(Serialize)]
struct BackendRow {
    vip: Option<String>,
    vip_id: u32,
    address: String,
    id: u32,
    /// The HEALTH map's bit: "up", "down" or "draining".
    health_bit: String,
    /// From the state file: the probes' verdict, admin state, tier, weight, table membership.
    verdict: Option<String>,
    admin: Option<String>,
    tier: Option<String>,
    weight: Option<u16>,
    serving: Option<bool>,
    packets: u64,
    bytes: u64,
    last_probe: Option<ProbeView>,
}

#[derive(Serialize)]
struct ProbeView {
    at: String,
    age_ms: u64,
    success: bool,
    latency_us: u64,
    detail: String,
}

#[derive(Serialize)]
struct BackendsView {
    instance: String,
    state_file: &'static str,
    backends: Vec<BackendRow>,
}

pub fn backends(target: &Target, vip: Option<&str>) -> anyhow::Result<()> {
    let view = open(&target.paths)?;
    let state = State::read(&target.paths);
    state.warn();
    let only = match vip {
        Some(name) => Some(resolve_vip(&view.vips()?, &state, name)?.1.vip_id),
        None => None,
    };
    let now = now_millis();
    let mut rows = Vec::new();
    for (id, backend, health) in view.backends()? {
        if only.is_some_and(|vip_id| vip_id != backend.vip_id) {
            continue;
        }
        let status = state.backend(id).filter(|status| status.address == ip(&backend.address, backend.family));
        let counter = view.counters().backend(id)?;
        rows.push(BackendRow {
            vip: state.vip(backend.vip_id).map(|vip| vip.name.clone()),
            vip_id: backend.vip_id,
            address: ip(&backend.address, backend.family),
            id,
            health_bit: health_name(health),
            verdict: status.map(|status| status.health.clone()),
            admin: status.map(|status| status.admin.clone()),
            tier: status.map(|status| status.tier.clone()),
            weight: status.map(|status| status.weight),
            serving: status.map(|status| status.serving),
            packets: counter.packets,
            bytes: counter.bytes,
            last_probe: status.and_then(|status| status.last_probe.as_ref()).map(|probe| ProbeView {
                at: utc(probe.at),
                age_ms: now.saturating_sub(probe.at),
                success: probe.success,
                latency_us: probe.latency_us,
                detail: probe.detail.clone(),
            }),
        });
    }
    rows.sort_by_key(|row| (row.vip_id, row.id));
    if target.json {
        return emit_json(&BackendsView {
            instance: target.paths.instance.clone(),
            state_file: state.file,
            backends: rows,
        });
    }
    if rows.is_empty() {
        return emit("no backends\n");
    }
    let mut table = Table::new(&[
        "VIP",
        "ADDRESS",
        ">ID",
        "BIT",
        "VERDICT",
        "ADMIN",
        "TIER",
        ">WEIGHT",
        "SERVING",
        ">PACKETS",
        ">BYTES",
        "LAST PROBE",
    ]);
    let unknown = || "-".to_string();
    for row in &rows {
        table.row(vec![
            row.vip.clone().unwrap_or_else(|| format!("#{}", row.vip_id)),
            row.address.clone(),
            row.id.to_string(),
            row.health_bit.clone(),
            row.verdict.clone().unwrap_or_else(unknown),
            row.admin.clone().unwrap_or_else(unknown),
            row.tier.clone().unwrap_or_else(unknown),
            row.weight.map_or_else(unknown, |weight| weight.to_string()),
            row.serving.map_or_else(unknown, yes_no),
            row.packets.to_string(),
            human_bytes(row.bytes as f64),
            row.last_probe.as_ref().map_or_else(unknown, |probe| {
                let outcome = if probe.success { "ok".to_string() } else { format!("failed ({})", probe.detail) };
                format!("{outcome} in {}, {} ago", micros(probe.latency_us), short_duration(probe.age_ms))
            }),
        ]);
    }
    emit(&table.render())
}
