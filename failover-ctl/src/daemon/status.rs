//! The daemon's published view (`state.json`), its events (`events.jsonl`) and the control
//! protocol. These types are the contract between the daemon, the CLI and the metrics endpoint.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = u64;

pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Everything the daemon knows that is not in the maps, rewritten (atomically, by rename) on
/// every change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    pub pid: u32,
    pub started_at: UnixMillis,
    pub config_path: String,
    pub config_loaded_at: UnixMillis,
    /// Whether this daemon adopted pinned state left by an earlier one.
    pub adopted: bool,
    pub interfaces: Vec<InterfaceStatus>,
    pub next_hop_mac: String,
    pub vips: Vec<VipStatus>,
    pub failovers: FailoverStats,
    /// The VRRP groups (`[[election]]`), in configuration order.
    #[serde(default)]
    pub elections: Vec<ElectionStatus>,
    /// `drain-node`: every VIP withdrawn (kept across a restart).
    #[serde(default)]
    pub node_drained: bool,
    /// `announce.withdraw_grace`, for `drain-node` to wait.
    #[serde(default)]
    pub withdraw_grace_ms: u64,
    /// Withdrawals of announced VIPs since the daemon started.
    #[serde(default)]
    pub withdrawals: u64,
    /// `[flow_sync]`, when configured.
    #[serde(default)]
    pub flow_sync: Option<FlowSyncStatus>,
    pub updated_at: UnixMillis,
}

/// Flow sync (`[flow_sync]`): what this node sends as a master and what it placed of what its
/// peers sent. Counters count since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowSyncStatus {
    pub listen: String,
    pub peers: Vec<String>,
    /// The flows this node sends every interval: tracked flows of the VIPs of the groups it
    /// serves that the table would place elsewhere.
    pub sending: u64,
    /// Full scans of the flow table (after a table, health or ownership change).
    pub scans: u64,
    pub sent_records: u64,
    pub sent_datagrams: u64,
    /// Intervals whose datagrams did not fit the socket task's queue.
    pub send_queue_full: u64,
    pub received_datagrams: u64,
    pub received_records: u64,
    /// Received flows by outcome: "new", "moved", "refreshed" (placed); "bucket_full",
    /// "other_hash", "served_here", "unknown_vip", "ungrouped_vip", "unknown_backend" (not).
    pub placed: BTreeMap<String, u64>,
    /// Flows a peer's complete set no longer named, forgotten here.
    pub expired: u64,
    /// Datagrams discarded, by reason ("not_a_peer" and the datagram's own reasons).
    pub discarded: BTreeMap<String, u64>,
}

/// One VRRP group as the daemon runs it (`failover-ctl elections`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ElectionStatus {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    /// "initialize", "backup", "master" or "fault".
    pub state: String,
    /// The configured priority, and the one advertised (after tracks and an operator's
    /// temporary `election priority`).
    pub priority: u8,
    pub effective_priority: u8,
    /// The master as last heard (this node's own address while master); empty if none yet.
    pub master: String,
    /// The advert interval in force (the master's while backup), milliseconds.
    pub advert_interval_ms: u64,
    /// The VRRP addresses and the VIPs whose ownership follows the group.
    pub addresses: Vec<String>,
    pub vips: Vec<String>,
    /// Whether this node holds the group's ownership in the data plane.
    pub owned: bool,
    pub last_transition: Option<ElectionTransition>,
    /// Failed tracks, by description ("interface eth1", "probe 192.0.2.254", "backends_up 50%").
    pub failed_tracks: Vec<String>,
    pub counters: crate::election::group::Counters,
}

/// The last state change of a group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ElectionTransition {
    pub at: UnixMillis,
    pub from: String,
    pub to: String,
    /// "owner", "startup", "master_down", "higher_priority", "resigned", "fault",
    /// "fault_cleared", "stopped".
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub mac: String,
    /// "native" or "generic".
    pub mode: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub address: String,
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
    pub vip_id: u32,
    pub table_size: u32,
    pub owned: bool,
    /// "drop" or "pass".
    pub all_down: String,
    /// "five_tuple" or "source".
    pub hash: String,
    /// When the VIP's table was last published.
    pub published_at: UnixMillis,
    /// Digest of the published table over slot -> backend address (not ids): equal on every
    /// node that would send each flow to the same backend.
    #[serde(default)]
    pub table_digest: String,
    /// The election the VIP's ownership follows, if any.
    #[serde(default)]
    pub election: Option<String>,
    /// Whether the VIP's route is in the announce table, why (or why not), and since when.
    #[serde(default)]
    pub announced: bool,
    #[serde(default)]
    pub announce_reason: String,
    #[serde(default)]
    pub announced_since: UnixMillis,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// The backend id (index into BACKENDS / HEALTH / BACKEND_STATS).
    pub id: u32,
    pub address: String,
    pub weight: u16,
    /// "primary" or "backup".
    pub tier: String,
    /// "enabled", "drained" or "maintenance".
    pub admin: String,
    /// The probes' verdict: "up" or "down".
    pub health: String,
    /// Whether the backend is in the VIP's published table (gets new flows).
    pub serving: bool,
    /// Probe kind ("tcp", "http", ...).
    pub probe: String,
    pub last_probe: Option<ProbeStatus>,
    /// Probe attempts and failures since the daemon started.
    pub probes: u64,
    pub probe_failures: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub at: UnixMillis,
    pub success: bool,
    pub latency_us: u64,
    pub detail: String,
}

/// Failover counts and latencies (verdict to published table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverStats {
    /// Health transitions applied to the maps.
    pub count: u64,
    /// Sum of verdict-to-published latencies, microseconds.
    pub latency_sum_us: u64,
    /// Cumulative histogram: (upper bound in microseconds, count at or below it).
    pub latency_buckets: Vec<(u64, u64)>,
}

/// The upper bounds (microseconds) of [`FailoverStats::latency_buckets`].
pub const LATENCY_BUCKETS_US: [u64; 10] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000];

/// One line of `events.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: UnixMillis,
    /// "started", "adopted", "reloaded", "reload_failed", "failover", "drain", "undrain",
    /// "maintenance", "published", "error", "stopped".
    pub kind: String,
    pub vip: Option<String>,
    pub backend: Option<String>,
    pub detail: String,
    /// For "failover": the stages of the transition.
    pub timings: Option<FailoverTimings>,
}

/// When each stage of one failover happened (ms since the epoch, microsecond latencies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverTimings {
    /// The probe result that completed the verdict.
    pub probe_at: UnixMillis,
    /// "up" or "down".
    pub to: String,
    /// Verdict received by the state owner -> health bit written.
    pub health_written_us: u64,
    /// Verdict received by the state owner -> tables of the affected VIPs published.
    pub table_published_us: u64,
    /// Where the table came from: "ready" (prepared before the verdict), "built" (on the
    /// failover path), "unchanged" (the verdict left the table as it was) or "failed".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub table: String,
}

/// A request on the control socket (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Re-read the configuration file and apply the difference.
    Reload,
    /// No new flows to `backend` of `vip`; tracked flows continue.
    Drain { vip: String, backend: String },
    /// Undo `drain`.
    Undrain { vip: String, backend: String },
    /// Take the backend out without probing it (`on`), or put it back.
    Maintenance { vip: String, backend: String, on: bool },
    /// The current [`Status`].
    Status,
    /// The group's master resigns now (a priority-0 advert; manual failover); it does not
    /// preempt its successor until it is master again.
    ElectionResign { group: String },
    /// Advertise `priority` (1..=254) until the next reload or restart.
    ElectionPriority { group: String, priority: u8 },
    /// Withdraw every VIP (a planned stop); kept across restarts until `UndrainNode`.
    DrainNode,
    /// Announce what is announceable again.
    UndrainNode,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    pub status: Option<Status>,
}
