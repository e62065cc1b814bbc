//! `table`: one VIP's Maglev table — slots per backend against the share its weight asks for.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use serde::Serialize;

use super::{
    instance::{backend_address, backends_by_id, open, resolve_vip, table_digest, vip_ref, State, VipRef},
    render::{emit, emit_json, health_name, round2, yes_no, Table},
    Target,
};


#[derive(Serialize)]
struct TableRow {
    id: u32,
    address: String,
    health_bit: String,
    serving: Option<bool>,
    weight: Option<u16>,
    slots: u32,
    share_percent: f64,
    /// Weight share among the serving backends (needs the state file).
    ideal_percent: Option<f64>,
    /// `share_percent - ideal_percent`, in percentage points.
    deviation_points: Option<f64>,
}

#[derive(Serialize)]
struct TableView {
    vip: VipRef,
    table_size: u32,
    table_offset: u32,
    /// Over slot -> backend address (`maglev::table_digest`): equal on nodes that send every
    /// flow of the VIP to the same backend.
    digest: String,
    state_file: &'static str,
    backends: Vec<TableRow>,
    max_deviation_points: Option<f64>,
}

pub fn table(target: &Target, vip: &str) -> anyhow::Result<()> {
    let view = open(&target.paths)?;
    let state = State::read(&target.paths);
    state.warn();
    let (key, meta) = resolve_vip(&view.vips()?, &state, vip)?;
    let slots = view.table(&key).with_context(|| {
        format!(
            "VIP {vip}: its table region (offset {}, {} slots) is outside the pool",
            meta.table_offset, meta.table_size
        )
    })?;
    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    for id in &slots {
        *counts.entry(*id).or_default() += 1;
    }
    let backends = backends_by_id(&view)?;
    let status = state.vip(meta.vip_id);
    let mut ids: BTreeSet<u32> = counts.keys().copied().collect();
    ids.extend(backends.iter().filter(|(_, (backend, _))| backend.vip_id == meta.vip_id).map(|(id, _)| *id));
    ids.extend(status.iter().flat_map(|vip| &vip.backends).map(|backend| backend.id));
    let weight_sum: u64 = status
        .iter()
        .flat_map(|vip| &vip.backends)
        .filter(|backend| backend.serving)
        .map(|backend| u64::from(backend.weight))
        .sum();
    let size = slots.len().max(1) as f64;
    let rows: Vec<TableRow> = ids
        .into_iter()
        .map(|id| {
            let member = status.and_then(|vip| vip.backends.iter().find(|backend| backend.id == id));
            let slots = counts.get(&id).copied().unwrap_or(0);
            let share = 100.0 * f64::from(slots) / size;
            let ideal = match (status, member) {
                (Some(_), _) if weight_sum == 0 => None,
                (Some(_), Some(member)) if member.serving => Some(100.0 * f64::from(member.weight) / weight_sum as f64),
                (Some(_), _) => Some(0.0),
                (None, _) => None,
            };
            TableRow {
                id,
                address: member.map_or_else(|| backend_address(&backends, id), |member| member.address.clone()),
                health_bit: backends.get(&id).map_or_else(|| "absent".into(), |(_, health)| health_name(*health)),
                serving: member.map(|member| member.serving),
                weight: member.map(|member| member.weight),
                slots,
                share_percent: round2(share),
                ideal_percent: ideal.map(round2),
                deviation_points: ideal.map(|ideal| round2(share - ideal)),
            }
        })
        .collect();
    let max_deviation = rows
        .iter()
        .filter_map(|row| row.deviation_points)
        .map(f64::abs)
        .fold(None, |max: Option<f64>, value| Some(max.map_or(value, |max| max.max(value))));
    let report = TableView {
        vip: vip_ref(&state, &key, &meta),
        table_size: meta.table_size,
        table_offset: meta.table_offset,
        digest: table_digest(&slots, &backends),
        state_file: state.file,
        backends: rows,
        max_deviation_points: max_deviation,
    };
    if target.json {
        return emit_json(&report);
    }
    let mut text = format!(
        "VIP {} {} (vip id {}): {} slots at offset {}, digest {}\n",
        state.vip_name(meta.vip_id),
        report.vip.address,
        meta.vip_id,
        meta.table_size,
        meta.table_offset,
        report.digest
    );
    let mut table =
        Table::new(&[">ID", "ADDRESS", "BIT", "SERVING", ">WEIGHT", ">SLOTS", ">SHARE", ">IDEAL", ">DEVIATION"]);
    let unknown = || "-".to_string();
    for row in &report.backends {
        table.row(vec![
            row.id.to_string(),
            row.address.clone(),
            row.health_bit.clone(),
            row.serving.map_or_else(unknown, yes_no),
            row.weight.map_or_else(unknown, |weight| weight.to_string()),
            row.slots.to_string(),
            format!("{:.2}%", row.share_percent),
            row.ideal_percent.map_or_else(unknown, |ideal| format!("{ideal:.2}%")),
            row.deviation_points.map_or_else(unknown, |deviation| format!("{deviation:+.2}")),
        ]);
    }
    text.push_str(&table.render());
    if let Some(max) = report.max_deviation_points {
        text.push_str(&format!("largest deviation from the weights: {max:.2} percentage points\n"));
    }
    emit(&text)
}
