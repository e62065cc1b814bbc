//! `announcements`: per VIP, whether this node announces it (its route is in the announce
//! table), why or why not, and since when; whether the node is drained.

use std::time::Duration;

use serde::Serialize;

use super::{
    instance::live_or_saved_status,
    render::{emit, emit_json, utc, Table},
    Target,
};

/// How long to wait for a live daemon before reading `state.json` instead.
const PATIENCE: Duration = Duration::from_millis(500);

#[derive(Serialize)]
struct AnnouncementsView {
    instance: String,
    node_drained: bool,
    withdrawals: u64,
    vips: Vec<AnnouncementView>,
}

#[derive(Serialize)]
struct AnnouncementView {
    vip: String,
    address: String,
    announced: bool,
    reason: String,
    /// Since when the decision holds (ms since the epoch), and as UTC.
    since: u64,
    since_utc: String,
}

pub fn announcements(target: &Target) -> anyhow::Result<()> {
    let paths = &target.paths;
    let (status, _) = live_or_saved_status(paths, PATIENCE)?;
    let view = AnnouncementsView {
        instance: paths.instance.clone(),
        node_drained: status.node_drained,
        withdrawals: status.withdrawals,
        vips: status
            .vips
            .iter()
            .map(|vip| AnnouncementView {
                vip: vip.name.clone(),
                address: vip.address.clone(),
                announced: vip.announced,
                reason: if vip.announce_reason.is_empty() { "announcing off".into() } else { vip.announce_reason.clone() },
                since: vip.announced_since,
                since_utc: if vip.announced_since == 0 { String::new() } else { utc(vip.announced_since) },
            })
            .collect(),
    };
    if target.json {
        return emit_json(&view);
    }
    let mut table = Table::new(&["VIP", "ADDRESS", "ANNOUNCED", "REASON", "SINCE"]);
    for vip in &view.vips {
        table.row(vec![
            vip.vip.clone(),
            vip.address.clone(),
            if vip.announced { "yes" } else { "no" }.into(),
            vip.reason.clone(),
            if vip.since_utc.is_empty() { "-".into() } else { vip.since_utc.clone() },
        ]);
    }
    let mut text = table.render();
    text.push_str(&format!("node {}; {} withdrawals since the daemon started\n", if view.node_drained { "drained" } else { "not drained" }, view.withdrawals));
    emit(&text)
}
