//! `elections`: the VRRP groups as the daemon runs them — state, priorities, the master, the
//! interval in force, what the group owns, the last transition, failed tracks, counters, and the
//! table digests of its VIPs (equal on every node that would choose the same backends).

use std::time::Duration;

use serde::Serialize;

use super::{
    instance::live_or_saved_status,
    render::{emit, emit_json, utc, Table},
    Target,
};
use crate::daemon::status::{ElectionStatus, Status};

/// How long to wait for a live daemon before reading `state.json` instead.
const PATIENCE: Duration = Duration::from_millis(500);

#[derive(Serialize)]
struct ElectionsView {
    instance: String,
    /// "daemon" (asked live) or "state_file".
    source: &'static str,
    elections: Vec<ElectionView>,
}

#[derive(Serialize)]
struct ElectionView {
    #[serde(flatten)]
    election: ElectionStatus,
    /// VIP name -> table digest, for the VIPs that follow the group.
    digests: Vec<(String, String)>,
}

pub fn elections(target: &Target) -> anyhow::Result<()> {
    let paths = &target.paths;
    let (status, source) = live_or_saved_status(paths, PATIENCE)?;
    let view = ElectionsView { instance: paths.instance.clone(), source, elections: views(&status) };
    if target.json {
        return emit_json(&view);
    }
    if view.elections.is_empty() {
        return emit("no elections configured\n");
    }
    let mut table = Table::new(&[
        "GROUP", "INTERFACE", "VRID", "STATE", "PRIORITY", "MASTER", "INTERVAL", "OWNED", "LAST TRANSITION", "FAILED TRACKS", "RX", "TX", "DISCARDED",
    ]);
    for view in &view.elections {
        let election = &view.election;
        let priority = if election.effective_priority == election.priority {
            election.priority.to_string()
        } else {
            format!("{} (base {})", election.effective_priority, election.priority)
        };
        let transition = election.last_transition.as_ref().map_or_else(
            || "-".to_owned(),
            |transition| format!("{} -> {} ({}) at {}", transition.from, transition.to, transition.reason, utc(transition.at)),
        );
        let discarded = election.counters.discarded.iter().map(|(reason, count)| format!("{reason}={count}")).collect::<Vec<_>>().join(" ");
        table.row(vec![
            election.name.clone(),
            election.interface.clone(),
            election.vrid.to_string(),
            election.state.clone(),
            priority,
            if election.master.is_empty() { "-".into() } else { election.master.clone() },
            format!("{}ms", election.advert_interval_ms),
            if election.owned { "yes" } else { "no" }.into(),
            transition,
            if election.failed_tracks.is_empty() { "-".into() } else { election.failed_tracks.join(", ") },
            election.counters.adverts_received.to_string(),
            election.counters.adverts_sent.to_string(),
            if discarded.is_empty() { "-".into() } else { discarded },
        ]);
    }
    let mut text = table.render();
    for view in &view.elections {
        for (vip, digest) in &view.digests {
            text.push_str(&format!("{}: VIP {vip} table digest {digest}\n", view.election.name));
        }
    }
    emit(&text)
}

fn views(status: &Status) -> Vec<ElectionView> {
    status
        .elections
        .iter()
        .map(|election| ElectionView {
            election: election.clone(),
            digests: status
                .vips
                .iter()
                .filter(|vip| vip.election.as_deref() == Some(election.name.as_str()))
                .map(|vip| (vip.name.clone(), vip.table_digest.clone()))
                .collect(),
        })
        .collect()
}
