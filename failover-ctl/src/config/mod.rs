//! Daemon configuration: the TOML schema, its defaults, and validation with file:line messages.
//!
//! The file is read in two passes. `toml` first parses it into a span-carrying tree
//! ([`toml::de::DeTable`]) used only to turn a key path such as `vip[1].backend[0].weight` into a
//! line number; serde then reads it into loosely typed `Raw*` structs (every key optional, strings
//! for durations, addresses and prefixes) so that validation can report every problem with its
//! key path instead of stopping at the first one. The result is [`Config`]: typed values with
//! every default applied.
//!
//! Files: `schema.rs` (the raw serde types), `validate.rs` (rules and defaults), `values.rs`
//! (durations through humantime, prefixes, MACs), `location.rs` (key path to line),
//! `account.rs` (script users), `security.rs` (what [`load`] checks on the host: who may change
//! the file and the programs it runs), `tests.rs`, `security_tests.rs`.
//!
//! Overlapping VIPs: a VIP on port 0 (all ports) next to another VIP on the same address and
//! protocol is rejected, because which one a packet should hit would depend on lookup order.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;

pub use account::{effective_uid, ScriptUser};
use location::{locate, path_at, Locator};
use schema::RawConfig;
use validate::Validator;
pub use values::{parse_duration, parse_mac, parse_prefix};

mod account;
#[cfg(test)]
mod election_tests;
mod location;
mod schema;
mod security;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
mod validate;
mod values;

/// Default `instance`.
pub const DEFAULT_INSTANCE: &str = "default";
/// Default `metrics_address`.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9650";
/// Default `tunnel.mtu`.
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest `tunnel.mtu`: the IPv6 minimum link MTU.
pub const MIN_MTU: u16 = 1280;
/// Largest `tunnel.mtu`: the usual jumbo-frame limit.
pub const MAX_MTU: u16 = 9216;
/// Default `flows.capacity`.
pub const DEFAULT_FLOW_CAPACITY: u32 = 1 << 20;
const MIN_FLOW_CAPACITY: u32 = 1024;
const MAX_FLOW_CAPACITY: u32 = 1 << 24;
/// Default `flows.udp_idle_timeout`.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `flows.insert_burst` when `flows.insert_rate` is 0 (unlimited).
pub const DEFAULT_INSERT_BURST: u32 = 1000;
/// Default probe `interval`.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Default probe `timeout`.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default probe `rise`: consecutive successes that mark a backend up.
pub const DEFAULT_RISE: u32 = 2;
/// Default probe `fall`: consecutive failures that mark a backend down.
pub const DEFAULT_FALL: u32 = 3;
/// Default probe `jitter`, in percent of the interval.
pub const DEFAULT_JITTER_PERCENT: u32 = 10;
/// Default `script_user`: who exec probes run as.
pub const DEFAULT_SCRIPT_USER: &str = "nobody";
/// Longest interface name Linux accepts (IFNAMSIZ less the terminating zero).
const MAX_INTERFACE_NAME: usize = 15;
/// Longest `instance` name.
const MAX_INSTANCE_NAME: usize = 32;

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file asked for.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file was read but is not valid TOML or breaks a rule; one line per problem.
    #[error("{}", describe(problems))]
    Invalid {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

/// One problem in a configuration file, located by line and key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file name as given to [`parse`] or [`load`].
    pub file: String,
    /// 1-based line of the offending key (or of the nearest enclosing table when it is missing).
    pub line: usize,
    /// Key path such as `vip[1].backend[0].weight`; empty when the file is not valid TOML.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(formatter, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                formatter,
                "{}:{}: {}: {}",
                self.file, self.line, self.path, self.message
            )
        }
    }
}

fn describe(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// A validated configuration with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `instance`: names this load balancer's pinned maps and metrics; `[a-z0-9-]{1,32}`.
    pub instance: String,
    /// `interfaces`: where the XDP program attaches; at least one.
    pub interfaces: Vec<String>,
    /// `xdp_mode`: how the program attaches.
    pub xdp_mode: XdpMode,
    /// `metrics_address`: where the metrics endpoint listens.
    pub metrics_address: SocketAddr,
    /// `next_hop`: where encapsulated packets are sent.
    pub next_hop: NextHop,
    /// `tunnel`: outer header policy.
    pub tunnel: Tunnel,
    /// `flows`: flow table policy.
    pub flows: Flows,
    /// `probe_defaults`: timing every probe starts from.
    pub probe_defaults: ProbeTiming,
    /// `script_user`: the user exec probes run as unless a probe names its own `user`; default
    /// [`DEFAULT_SCRIPT_USER`]. Each exec probe carries the user resolved.
    pub script_user: String,
    /// `[[vip]]`: the services, in file order.
    pub vips: Vec<Vip>,
    /// `[[election]]`: the VRRP groups whose mastership decides which VIPs this node serves.
    pub elections: Vec<Election>,
    /// `[announce]`: routes in a kernel table for a routing daemon to announce.
    pub announce: Announce,
    /// `[flow_sync]`: the flows the election groups' masters send their peers.
    pub flow_sync: Option<FlowSync>,
}

/// `[flow_sync]`: a master sends its peers the tracked flows of its groups' VIPs that the table
/// would place elsewhere, so a node that takes over keeps them on their backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSync {
    /// `listen`: the address and UDP port this node receives on and sends from.
    pub listen: SocketAddr,
    /// `peers`: the other load balancers' `listen` addresses; datagrams from anywhere else are
    /// discarded.
    pub peers: Vec<SocketAddr>,
    /// `interval`: how often a master sends (every flow each time), default 1 s.
    pub interval: Duration,
    /// `idle_timeout`: a flow without a packet for this long is not sent (a closed TCP
    /// connection's entry stays in the flow table until evicted), default 60 s.
    pub idle_timeout: Duration,
}

/// `[announce]`: a `blackhole` host route per announceable VIP in one kernel table, marked with
/// one route protocol number, for a routing daemon (BIRD, FRR) to export over BGP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// `enabled`: default false.
    pub enabled: bool,
    /// `table`: the kernel table the controller owns, default 100 (not 0, 253, 254 or 255).
    pub table: u32,
    /// `protocol`: the route protocol number of its routes, 5..=254, default 201.
    pub protocol: u8,
    /// `withdraw_grace`: how long `drain-node` waits after withdrawing, default 5 s.
    pub withdraw_grace: Duration,
    /// `rejoin_delay`: how long a VIP must stay announceable before it is announced anew (at
    /// start, after a withdraw); `None` = [`Config::rejoin_delay`]'s default.
    pub rejoin_delay: Option<Duration>,
}

impl Default for Announce {
    fn default() -> Self {
        Self { enabled: false, table: 100, protocol: 201, withdraw_grace: Duration::from_secs(5), rejoin_delay: None }
    }
}

impl Config {
    /// `announce.rejoin_delay`, by default the time every backend needs to complete its rise:
    /// (rise + 1) probe intervals (with jitter) of the slowest backend. A node that announced a
    /// VIP at its first backend up would take flows with a table the other nodes do not have,
    /// and reset the flows of the backends still rising.
    pub fn rejoin_delay(&self) -> Duration {
        self.announce.rejoin_delay.unwrap_or_else(|| {
            let backends = self.vips.iter().flat_map(|vip| &vip.backends);
            backends.map(|backend| backend.probe.timing).map(|timing| (timing.interval + timing.jitter) * (timing.rise + 1)).max().unwrap_or_default()
        })
    }

    /// Number of backends over all VIPs.
    pub fn backend_count(&self) -> usize {
        self.vips.iter().map(|vip| vip.backends.len()).sum()
    }

    /// The VIP with this name.
    pub fn vip(&self, name: &str) -> Option<&Vip> {
        self.vips.iter().find(|vip| vip.name == name)
    }

    /// The election a VIP's ownership follows, if any.
    pub fn election_of(&self, vip: &str) -> Option<&Election> {
        self.elections.iter().find(|election| election.vips.iter().any(|name| name == vip))
    }
}

/// `[[election]]`: one VRRP group (RFC 9568) on one interface and address family.
#[derive(Debug, Clone, PartialEq)]
pub struct Election {
    /// `name`: unique among elections; names the group in the CLI, events and metrics.
    pub name: String,
    /// `interface`: where adverts are sent and the VRRP addresses live.
    pub interface: String,
    /// `vrid`: 1..=255, unique per interface and family.
    pub vrid: u8,
    /// `priority`: 1..=255 (255: the owner of the addresses), default 100.
    pub priority: u8,
    /// `advert_interval`: a multiple of 10 ms from 10 ms to 40.95 s, default 1 s.
    pub advert_interval: Duration,
    /// `preempt`: take over from a lower-priority master, default true.
    pub preempt: bool,
    /// `preempt_delay`: no preemption this long after start (or a fault); default twice the
    /// longest rise x interval of the group's backends' probes.
    pub preempt_delay: Duration,
    /// `addresses`: the VRRP addresses the master holds, one family, at least one.
    pub addresses: Vec<IpAddr>,
    /// `vips`: the names of the VIPs whose ownership follows this group.
    pub vips: Vec<String>,
    /// `unicast_peers`: send to these instead of the multicast group, and hear only them.
    pub unicast_peers: Vec<IpAddr>,
    /// `checksum`: the IPv4 advert checksum form, default pseudo-header (keepalived, FRR).
    pub checksum: crate::election::codec::ChecksumForm,
    /// `garp_master_delay`: the second gratuitous ARP burst after becoming master, default 5 s.
    pub garp_master_delay: Duration,
    /// `garp_master_refresh`: further bursts while master; `None` (the default, "0s"): none.
    pub garp_master_refresh: Option<Duration>,
    /// `garp_master_repeat`: packets per burst, 1..=100, default 5.
    pub garp_master_repeat: u32,
    /// `notify`: a program run (no shell) on every transition with keepalived's four
    /// arguments appended: `GROUP`, the name, the new state in capitals, the priority.
    pub notify: Vec<String>,
    /// `notify_user`: who `notify` runs as, default `script_user` (`None` without `notify`).
    pub notify_user: Option<ScriptUser>,
    /// `release_on_stop`: on SIGTERM a master resigns (priority 0) and gives up ownership;
    /// default false (the data plane keeps forwarding: hitless restart).
    pub release_on_stop: bool,
    /// `[[election.track]]`: what lowers the priority or faults the group.
    pub tracks: Vec<Track>,
}

/// `[[election.track]]`: while the tracked thing fails, `weight` is added to the priority
/// (keepalived's semantics; weight 0: the group goes to Fault and gives up ownership).
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub kind: TrackKind,
    /// -254..=254, default 0 (fault).
    pub weight: i32,
}

/// What a track watches.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackKind {
    /// `interface`: fails while the link is down.
    Interface(String),
    /// `address` + `probe`: fails while the probe's verdict is down (the upstream gateway, a
    /// witness address).
    Probe { address: IpAddr, probe: Probe },
    /// `backends_up`: fails while fewer than this share (percent) of the group's backends are
    /// up.
    BackendsUp { percent: u32 },
}

/// `xdp_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// Driver mode only; fail if the driver cannot.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
    /// Native, falling back to generic when the driver refuses (the default).
    #[default]
    Auto,
}

/// `next_hop`: exactly one of `address` or `mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// `address`: a gateway IP whose MAC is resolved through the neighbour table.
    Address(IpAddr),
    /// `mac`: a fixed MAC address.
    Mac([u8; 6]),
}

/// An address prefix such as `192.0.2.0/24`, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// The network address.
    pub address: IpAddr,
    /// Prefix length in bits.
    pub length: u8,
}

/// `tunnel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// `source_v4`: outer IPv4 source prefix for IPv4 backends; the host bits vary per flow.
    /// Required when any backend is IPv4. No default.
    pub source_v4: Option<Prefix>,
    /// `source_v6`: outer IPv6 source prefix for IPv6 backends. Required when any backend is IPv6.
    pub source_v6: Option<Prefix>,
    /// `mtu`: link MTU towards the backends, 1280..=9216, default 1500.
    pub mtu: u16,
}

/// `flows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flows {
    /// `udp_idle_timeout`: a UDP flow unused this long is forgotten; default 30s.
    pub udp_idle_timeout: Duration,
    /// `insert_rate`: new flows per second per CPU; 0 (the default) means unlimited.
    pub insert_rate: u32,
    /// `insert_burst`: token bucket depth; default `insert_rate`, or 1000 when that is 0.
    pub insert_burst: u32,
    /// `capacity`: flows the flow cache is sized for, fixed when the program is first loaded (an
    /// adopted data plane keeps its size); 1024..=16777216, default 1048576.
    pub capacity: u32,
}

/// Probe timing: `interval`, `timeout`, `rise`, `fall`, `jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// `interval`: time between probes; default 2s.
    pub interval: Duration,
    /// `timeout`: a probe slower than this fails; must be shorter than `interval`; default 1s.
    pub timeout: Duration,
    /// `rise`: consecutive successes to mark a backend up; at least 1, default 2.
    pub rise: u32,
    /// `fall`: consecutive failures to mark a backend down; at least 1, default 3.
    pub fall: u32,
    /// `jitter`: random delay added to each interval, resolved from a percentage of the
    /// interval ("10%", the default) or a duration ("200ms"); at most the interval.
    pub jitter: Duration,
}

/// `[[vip]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vip {
    /// `name`: unique among VIPs; required.
    pub name: String,
    /// `address`: the virtual IP; required.
    pub address: IpAddr,
    /// `port`: 0 (the default) means every port.
    pub port: u16,
    /// `protocol`: "tcp" or "udp"; required.
    pub protocol: Protocol,
    /// `table_size`: Maglev table size, a prime up to 1048573; default 65537.
    pub table_size: u32,
    /// `hash`: which fields pick the backend; default "five_tuple".
    pub hash: HashMode,
    /// `all_down`: what to do with packets when no backend is up; default "drop".
    pub all_down: AllDown,
    /// `owned`: whether this node serves the VIP; default true (the election sets it later).
    pub owned: bool,
    /// `announce`: whether the VIP is announced (when `[announce]` is enabled); default true.
    pub announce: bool,
    /// `[[vip.backend]]`: at least one, unique addresses.
    pub backends: Vec<Backend>,
}

/// `vip.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// `vip.hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashMode {
    /// Source and destination address and port, and protocol (the default).
    #[default]
    FiveTuple,
    /// Source address only: one client always reaches one backend.
    Source,
}

/// `vip.all_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllDown {
    /// Drop the packet (the default).
    #[default]
    Drop,
    /// Hand the packet to the local kernel.
    Pass,
}

/// `[[vip.backend]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// `address`: IPv4 or IPv6 regardless of the VIP's family; required.
    pub address: IpAddr,
    /// `weight`: 1..=65535, default 1.
    pub weight: u16,
    /// `tier`: default "primary"; backups serve only when no primary is up.
    pub tier: Tier,
    /// `maintenance`: drain the backend (no new flows); default false.
    pub maintenance: bool,
    /// `probe`: the health check; default a TCP connect to the VIP port.
    pub probe: Probe,
}

/// `backend.tier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Serves traffic while up (the default).
    #[default]
    Primary,
    /// Serves only when no primary backend of the VIP is up.
    Backup,
}

/// A health check with its resolved timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What to check.
    pub check: Check,
    /// How often and how strictly, after `probe_defaults` and per-probe overrides.
    pub timing: ProbeTiming,
}

/// `probe.kind` and the fields of that kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// "tcp": connect succeeds. `port` defaults to the VIP port.
    Tcp {
        /// `port`.
        port: u16,
    },
    /// "http": a plain HTTP GET.
    Http(HttpCheck),
    /// "https": an HTTP GET over TLS.
    Https(HttpCheck),
    /// "udp": send `send`, expect a reply containing `expect`.
    Udp {
        /// `port`: defaults to the VIP port.
        port: u16,
        /// `send`: the request payload; required.
        send: String,
        /// `expect`: text the reply must contain; required.
        expect: String,
    },
    /// "icmp": an echo request is answered.
    Icmp,
    /// "exec": run a program (never through a shell) as an unprivileged user, in a process
    /// group of its own; exit status 0 is success.
    Exec {
        /// `argv`: program and arguments; required, non-empty. [`load`] replaces a bare program
        /// name with the absolute path PATH gives, the file it checked.
        argv: Vec<String>,
        /// `user`: who runs it; default the global `script_user`.
        user: ScriptUser,
    },
    /// "redis": PING answers and the server has the given role.
    Redis {
        /// `port`: default 6379.
        port: u16,
        /// `role`: default "master".
        role: RedisRole,
    },
    /// "postgres": a connection succeeds and the server has the given role.
    Postgres {
        /// `port`: default 5432.
        port: u16,
        /// `user`: required.
        user: String,
        /// `database`: required.
        database: String,
        /// `role`: default "primary".
        role: PostgresRole,
    },
}

/// Fields of an "http" or "https" probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// `port`: defaults to the VIP port.
    pub port: u16,
    /// `path`: default "/".
    pub path: String,
    /// `expect_status`: 100..=599, default 200.
    pub expect_status: u16,
    /// `body_contains`: text the body must contain; optional.
    pub body_contains: Option<String>,
    /// `host`: Host header (and TLS server name); default the backend address.
    pub host: Option<String>,
}

/// `probe.role` of a "redis" probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisRole {
    /// The default.
    #[default]
    Master,
    /// A replica.
    Replica,
}

/// `probe.role` of a "postgres" probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresRole {
    /// Accepts writes (the default).
    #[default]
    Primary,
    /// A hot standby in recovery.
    Standby,
}

/// Reads and validates the configuration file at `path`, as the daemon does at start and reload
/// and `failover-ctl check` does: [`parse`]'s rules, then the host's (`security.rs`): the file
/// and every exec probe's program, and each directory on the way to them, can be changed by root
/// alone; each program exists and its user may run it; and a daemon that is not root runs
/// programs only as itself.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&text, &path.display().to_string(), |config| {
        security::check(config, path, effective_uid())
    })
}

/// Parses and validates configuration `text`; `file_name` prefixes every message. Users are
/// looked up, but no file is looked at: [`load`] checks those.
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
    decode(text, file_name, |_| Vec::new())
}

/// [`parse`], with `host` adding the (key path, message) problems of the checks on the host.
fn decode(
    text: &str,
    file_name: &str,
    host: impl FnOnce(&mut Config) -> Vec<(String, String)>,
) -> Result<Config, ConfigError> {
    let locator = Locator { text, file_name };
    let tree = DeTable::parse(text).map_err(|error| ConfigError::Invalid {
        problems: vec![locator.problem_at(error.span(), String::new(), error.message())],
    })?;
    let raw: RawConfig = toml::from_str(text).map_err(|error| {
        let path = error
            .span()
            .and_then(|span| path_at(&tree, span.start))
            .unwrap_or_default();
        ConfigError::Invalid {
            problems: vec![locator.problem_at(error.span(), path, error.message())],
        }
    })?;
    let mut validator = Validator::default();
    let mut config = validator.config(raw);
    validator.problems.extend(host(&mut config));
    if validator.problems.is_empty() {
        return Ok(config);
    }
    let mut problems: Vec<Problem> = validator
        .problems
        .into_iter()
        .map(|(path, message)| {
            let span = locate(&tree, &path);
            locator.problem_at(span, path, &message)
        })
        .collect();
    problems.sort_by_key(|problem| problem.line);
    Err(ConfigError::Invalid { problems })
}
