//! `vips`: every published VIP with its table, flags, backends up and traffic.

use failover_common::maps::{vip_group, HEALTH_UP, VIP_ALL_DOWN_PASS, VIP_HASH_SOURCE_ONLY, VIP_NO_FLOW_TRACKING, VIP_OWNED};
use serde::Serialize;

use super::{
    instance::{backends_by_id, open, table_digest, State},
    render::{emit, emit_json, human_bytes, ip, protocol_name, vip_label, yes_no, Table},
    Target,
};


#[derive(Serialize)]
struct VipRow {
    name: Option<String>,
    /// `ADDRESS:PORT/PROTO` as the commands accept it in place of a name.
    label: String,
    address: String,
    port: u16,
    protocol: String,
    vip_id: u32,
    table_size: u32,
    /// Whether the data plane serves it now: its flag, or its group's `OWNERSHIP` entry.
    owned: bool,
    /// The ownership group (an `[[election]]`'s position + 1); absent without one.
    group: Option<u32>,
    flags: Vec<&'static str>,
    /// `maglev::table_digest` of the active table; absent if its region is outside the pool.
    table_digest: Option<String>,
    backends_up: usize,
    backends_total: usize,
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct VipsView {
    instance: String,
    state_file: &'static str,
    vips: Vec<VipRow>,
}

fn flag_list(flags: u32) -> Vec<&'static str> {
    let mut list = Vec::new();
    if flags & VIP_OWNED != 0 {
        list.push("owned");
    }
    if flags & VIP_HASH_SOURCE_ONLY != 0 {
        list.push("source_hash");
    }
    if flags & VIP_ALL_DOWN_PASS != 0 {
        list.push("all_down_pass");
    }
    if flags & VIP_NO_FLOW_TRACKING != 0 {
        list.push("no_flow_tracking");
    }
    list
}

pub fn vips(target: &Target) -> anyhow::Result<()> {
    let view = open(&target.paths)?;
    let state = State::read(&target.paths);
    state.warn();
    let backends = backends_by_id(&view)?;
    let mut rows = Vec::new();
    for (key, meta) in view.vips()? {
        let members: Vec<u32> = backends
            .iter()
            .filter(|(_, (backend, _))| backend.vip_id == meta.vip_id)
            .map(|(_, (_, health))| *health)
            .collect();
        let counter = view.counters().vip(meta.vip_id)?;
        rows.push(VipRow {
            name: state.vip(meta.vip_id).map(|vip| vip.name.clone()),
            label: vip_label(&key),
            address: ip(&key.address, key.family),
            port: u16::from_be(key.port),
            protocol: protocol_name(key.protocol),
            vip_id: meta.vip_id,
            table_size: meta.table_size,
            owned: view.owned(&meta)?,
            group: Some(vip_group(meta.flags)).filter(|group| *group != 0),
            flags: flag_list(meta.flags),
            table_digest: view.table(&key).map(|table| table_digest(&table, &backends)),
            backends_up: members.iter().filter(|health| **health == HEALTH_UP).count(),
            backends_total: members.len(),
            packets: counter.packets,
            bytes: counter.bytes,
        });
    }
    rows.sort_by_key(|row| row.vip_id);
    if target.json {
        return emit_json(&VipsView { instance: target.paths.instance.clone(), state_file: state.file, vips: rows });
    }
    let mut table = Table::new(&["NAME", "VIP", ">ID", ">TABLE", "OWNED", "FLAGS", ">UP/TOTAL", ">PACKETS", ">BYTES", "DIGEST"]);
    for row in &rows {
        let mut flags: Vec<String> = row.flags.iter().filter(|flag| **flag != "owned").map(|flag| flag.to_string()).collect();
        flags.extend(row.group.map(|group| format!("group {group}")));
        table.row(vec![
            row.name.clone().unwrap_or_else(|| format!("#{}", row.vip_id)),
            row.label.clone(),
            row.vip_id.to_string(),
            row.table_size.to_string(),
            yes_no(row.owned),
            if flags.is_empty() { "-".into() } else { flags.join(",") },
            format!("{}/{}", row.backends_up, row.backends_total),
            row.packets.to_string(),
            human_bytes(row.bytes as f64),
            row.table_digest.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if rows.is_empty() {
        return emit("no VIPs published\n");
    }
    emit(&table.render())
}
