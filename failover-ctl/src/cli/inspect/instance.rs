//! The instance the views read: its pinned maps, the daemon's state file, and the lookups
//! every view shares (a VIP by name, id or label; backends by id; the VIP of a packet).

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use failover_common::maps::{Backend, VipKey, VipMeta};
use serde::Serialize;

use super::render::{ip, vip_label};
use crate::{
    daemon::status::{BackendStatus, Status, VipStatus},
    paths::InstancePaths,
    pin::PinnedView,
};


pub(super) fn missing_instance(paths: &InstancePaths) -> anyhow::Error {
    anyhow::anyhow!(
        "instance {} has no pinned data plane under {}: is it running, or was it torn down?",
        paths.instance,
        paths.pin_dir.display()
    )
}

pub(super) fn open(paths: &InstancePaths) -> anyhow::Result<PinnedView> {
    if !PinnedView::exists(paths) {
        return Err(missing_instance(paths));
    }
    PinnedView::open(paths).with_context(|| {
        format!("opening the pinned data plane of instance {} ({})", paths.instance, paths.pin_dir.display())
    })
}

/// The daemon's `state.json`, or why it is not there.
pub(super) struct State {
    pub(super) status: Option<Status>,
    /// "ok", "missing" or "unreadable" (the JSON field `state_file`).
    pub(super) file: &'static str,
    pub(super) problem: Option<String>,
}

impl State {
    pub(super) fn read(paths: &InstancePaths) -> Self {
        let path = paths.state();
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Status>(&bytes) {
                Ok(status) => Self { status: Some(status), file: "ok", problem: None },
                Err(error) => Self {
                    status: None,
                    file: "unreadable",
                    problem: Some(format!(
                        "the daemon's state file {} is unreadable ({error}): names, weights, tiers and probe verdicts are not shown",
                        path.display()
                    )),
                },
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Self {
                status: None,
                file: "missing",
                problem: Some(format!(
                    "the daemon's state file {} is missing: VIPs and backends are shown by id, without names, weights, tiers or probe verdicts",
                    path.display()
                )),
            },
            Err(error) => Self {
                status: None,
                file: "unreadable",
                problem: Some(format!("the daemon's state file {} is unreadable: {error}", path.display())),
            },
        }
    }

    /// Says on stderr (so that stdout stays parseable) what is missing.
    pub(super) fn warn(&self) {
        if let Some(problem) = &self.problem {
            eprintln!("note: {problem}");
        }
    }

    pub(super) fn vip(&self, vip_id: u32) -> Option<&VipStatus> {
        self.status.as_ref()?.vips.iter().find(|vip| vip.vip_id == vip_id)
    }

    pub(super) fn backend(&self, id: u32) -> Option<&BackendStatus> {
        self.status.as_ref()?.vips.iter().flat_map(|vip| &vip.backends).find(|backend| backend.id == id)
    }

    /// The VIP's name, or `#<vip id>` when the state file does not name it.
    pub(super) fn vip_name(&self, vip_id: u32) -> String {
        self.vip(vip_id).map_or_else(|| format!("#{vip_id}"), |vip| vip.name.clone())
    }
}


/// Finds the VIP the user named: a name from `state.json`, a vip id, or `ADDRESS:PORT/PROTO`
/// as `vips` prints it.
pub(super) fn resolve_vip(vips: &[(VipKey, VipMeta)], state: &State, name: &str) -> anyhow::Result<(VipKey, VipMeta)> {
    if let Some(status) = state.status.as_ref().and_then(|status| status.vips.iter().find(|vip| vip.name == name)) {
        return vips.iter().find(|(_, meta)| meta.vip_id == status.vip_id).copied().with_context(|| {
            format!("VIP {name} (vip id {}) is configured but not published in the maps", status.vip_id)
        });
    }
    let by_id = name.trim_start_matches('#').parse::<u32>().ok();
    if let Some(found) = vips.iter().find(|(key, meta)| Some(meta.vip_id) == by_id || vip_label(key) == name) {
        return Ok(*found);
    }
    let mut known: Vec<String> = match &state.status {
        Some(status) => status.vips.iter().map(|vip| vip.name.clone()).collect(),
        None => vips.iter().map(|(key, meta)| format!("#{} ({})", meta.vip_id, vip_label(key))).collect(),
    };
    if known.is_empty() {
        known.push("none".into());
    }
    let hint = if state.status.is_none() {
        "; without the daemon's state file give a vip id or ADDRESS:PORT/PROTO"
    } else {
        ""
    };
    bail!("unknown VIP {name:?}: known VIPs are {}{hint}", known.join(", "))
}

/// The backends of the instance by id, with their health bits.
pub(super) fn backends_by_id(view: &PinnedView) -> anyhow::Result<BTreeMap<u32, (Backend, u32)>> {
    Ok(view.backends()?.into_iter().map(|(id, backend, health)| (id, (backend, health))).collect())
}

/// `maglev::table_digest` of a table read from the maps, with the addresses of `BACKENDS`.
pub(super) fn table_digest(table: &[u32], backends: &BTreeMap<u32, (Backend, u32)>) -> String {
    crate::maglev::table_digest(table, |id| {
        backends.get(&id).and_then(|(backend, _)| crate::address::from_words(&backend.address, backend.family))
    })
}

pub(super) fn backend_address(backends: &BTreeMap<u32, (Backend, u32)>, id: u32) -> String {
    backends.get(&id).map_or_else(|| "?".into(), |(backend, _)| ip(&backend.address, backend.family))
}

/// The VIP a packet to (address, port, protocol) belongs to, as the data plane finds it: the
/// exact service first, then the all-ports service of the address.
pub(super) fn lookup_vip(
    vips: &BTreeMap<VipKey, VipMeta>,
    family: u8,
    address: [u32; 4],
    port_be: u16,
    protocol: u8,
) -> Option<(VipKey, VipMeta)> {
    let mut key = VipKey { address, port: port_be, protocol, family };
    if let Some(meta) = vips.get(&key) {
        return Some((key, *meta));
    }
    key.port = 0;
    vips.get(&key).map(|meta| (key, *meta))
}

#[derive(Serialize)]
pub(super) struct VipRef {
    pub(super) name: Option<String>,
    pub(super) vip_id: u32,
    pub(super) address: String,
}

pub(super) fn vip_ref(state: &State, key: &VipKey, meta: &VipMeta) -> VipRef {
    VipRef { name: state.vip(meta.vip_id).map(|vip| vip.name.clone()), vip_id: meta.vip_id, address: vip_label(key) }
}

/// The published VIPs ordered by vip id (the order every listing uses).
pub(super) fn sorted_vips(view: &PinnedView) -> anyhow::Result<Vec<(VipKey, VipMeta)>> {
    let mut vips = view.vips()?;
    vips.sort_by_key(|(_, meta)| meta.vip_id);
    Ok(vips)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_(coarse_)ns`.
pub(super) fn monotonic_ns() -> u64 {
    crate::sys::clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0)
}

/// The daemon's status: asked live when its control socket answers within `patience`, else read
/// from `state.json`; with where it came from ("daemon" or "state_file").
pub(super) fn live_or_saved_status(paths: &InstancePaths, patience: std::time::Duration) -> anyhow::Result<(Status, &'static str)> {
    let live = if paths.control_socket().exists() { super::status::ask_status(paths, patience).ok().flatten() } else { None };
    match live {
        Some(status) => Ok((status, "daemon")),
        None => State::read(paths).status.map(|status| (status, "state_file")).ok_or_else(|| missing_instance(paths)),
    }
}
