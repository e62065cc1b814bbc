//! What every election scenario checks and prints: the numbers (takeover time from the wire
//! against its bound, connections broken, requests failed, UDP packets lost) as one
//! `election-result` line for the README and the closing note, and the checks that a role is
//! held quietly (no discards on our side, no complaint in keepalived's log).

use std::time::Duration;

use failover_ctl::daemon::status::ElectionStatus;

use super::{
    keepalived::Keepalived,
    traffic::{LoadResult, UdpResult},
};

/// One scenario's numbers.
#[derive(Debug, Default)]
pub struct Row<'a> {
    pub takeover: Option<Duration>,
    /// The bound the takeover is held to (e.g. Master_Down_Interval + one interval).
    pub bound: Option<Duration>,
    /// What the bound is, in words.
    pub bound_name: &'a str,
    pub load: Option<&'a LoadResult>,
    /// UDP packets lost and sent over the scenario's phase.
    pub udp_lost: Option<(u64, u64)>,
}

/// Prints `election-result <scenario>: ...` (grep for it with `--nocapture`).
pub fn report(scenario: &str, row: Row<'_>) {
    let mut text = format!("election-result {scenario}:");
    if let Some(took) = row.takeover {
        text.push_str(&format!(" takeover {:.1} ms", took.as_secs_f64() * 1000.0));
    }
    if let Some(bound) = row.bound {
        text.push_str(&format!(" (bound {:.1} ms = {})", bound.as_secs_f64() * 1000.0, row.bound_name));
    }
    if let Some(load) = row.load {
        text.push_str(&format!(
            ", {} of {} connections broken, {} of {} requests failed, slowest answer {} ms",
            load.broken().len(),
            load.connections.len(),
            load.failed(),
            load.requests(),
            load.slowest().as_millis()
        ));
    }
    if let Some((lost, sent)) = row.udp_lost {
        text.push_str(&format!(", UDP {lost} of {sent} lost"));
    }
    eprintln!("{text}");
}

/// No keep-alive connection broke (failed or answered from another backend) and no request
/// failed.
pub fn assert_unbroken(what: &str, load: &LoadResult) {
    let broken: Vec<String> = load.broken().iter().map(|record| format!("{}: {}", record.backend, record.broken.as_deref().unwrap_or(""))).collect();
    assert!(broken.is_empty(), "{what}: {} of {} keep-alive connections broke: {broken:?}", broken.len(), load.connections.len());
    assert!(load.short_failed.is_empty(), "{what}: {} new connections failed: {:?}", load.short_failed.len(), load.short_failed);
    assert!(load.requests() > 0 && load.short_ok > 0, "{what}: no traffic went through: {load:?}");
}

/// The UDP flow stayed on one backend: the node that carried it after a move chose as the
/// other did.
pub fn assert_one_backend(what: &str, udp: &UdpResult) {
    assert!(udp.one_backend(), "{what}: the UDP flow moved between backends: {:?}", udp.runs);
}

/// Our group counted no discarded advert.
pub fn assert_no_discards(what: &str, group: &ElectionStatus) {
    let discarded: Vec<(&String, &u64)> = group.counters.discarded.iter().filter(|(_, count)| **count > 0).collect();
    assert!(discarded.is_empty(), "{what}: our node discarded adverts: {discarded:?} ({group:#?})");
}

/// keepalived logged no complaint about what it received.
pub fn assert_keepalived_content(what: &str, keepalived: &Keepalived) {
    let complaints = keepalived.complaints();
    assert!(complaints.is_empty(), "{what}: keepalived complained:\n{}\n--- full log:\n{}", complaints.join("\n"), keepalived.log());
}
