//! The daemon's published view (`state.json`), its events (`events.jsonl`) and the control
//! protocol. These types are the contract between the daemon, the CLI and the metrics endpoint.

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
    pub updated_at: UnixMillis,
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
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    pub status: Option<Status>,
}
