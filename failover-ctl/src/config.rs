//! Daemon configuration: the TOML schema, its defaults, and validation with file:line messages.
//!
//! The file is read in two passes. `toml` first parses it into a span-carrying tree
//! ([`toml::de::DeTable`]) used only to turn a key path such as `vip[1].backend[0].weight` into a
//! line number; serde then reads it into loosely typed `Raw*` structs (every key optional, strings
//! for durations, addresses and prefixes) so that validation can report every problem with its
//! key path instead of stopping at the first one. The result is [`Config`]: typed values with
//! every default applied.
//!
//! Overlapping VIPs: a VIP on port 0 (all ports) next to another VIP on the same address and
//! protocol is rejected, because which one a packet should hit would depend on lookup order.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::maglev::{is_prime, DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE};

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
    /// `[[vip]]`: the services, in file order.
    pub vips: Vec<Vip>,
}

impl Config {
    /// Number of backends over all VIPs.
    pub fn backend_count(&self) -> usize {
        self.vips.iter().map(|vip| vip.backends.len()).sum()
    }

    /// The VIP with this name.
    pub fn vip(&self, name: &str) -> Option<&Vip> {
        self.vips.iter().find(|vip| vip.name == name)
    }
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
    /// `capacity`: entries of the LRU flow table, fixed when the program is first loaded (an
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
    /// "exec": run a program (never through a shell); exit status 0 is success.
    Exec {
        /// `argv`: program and arguments; required, non-empty.
        argv: Vec<String>,
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

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates configuration `text`; `file_name` prefixes every message.
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
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
    let config = validator.config(raw);
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

/// Turns byte offsets into 1-based lines of one file.
struct Locator<'a> {
    text: &'a str,
    file_name: &'a str,
}

impl Locator<'_> {
    fn problem_at(&self, span: Option<Range<usize>>, path: String, message: &str) -> Problem {
        let offset = span.map_or(0, |span| span.start.min(self.text.len()));
        let line = self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count()
            + 1;
        Problem {
            file: self.file_name.to_owned(),
            line,
            path,
            message: message.to_owned(),
        }
    }
}

/// One step of a key path.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `vip[1].backend[0].weight` into keys and indexes.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next() {
            steps.push(Step::Key(key));
        }
        for index in pieces {
            if let Ok(index) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(index));
            }
        }
    }
    steps
}

/// Span of the deepest part of `path` present in the file: the key itself when it is there,
/// otherwise its nearest enclosing table or array element.
fn locate(tree: &Spanned<DeTable<'_>>, path: &str) -> Option<Range<usize>> {
    let mut table = Some(tree.get_ref());
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    let mut found = None;
    for step in steps(path) {
        let value = match step {
            Step::Key(name) => {
                let entry =
                    table.and_then(|table| table.iter().find(|(key, _)| key.get_ref() == name));
                let Some((key, value)) = entry else { break };
                found = Some(key.span());
                value
            }
            Step::Index(index) => {
                let Some(value) = array.and_then(|array| array.get(index)) else {
                    break;
                };
                found = Some(element_span(value));
                value
            }
        };
        table = value.get_ref().as_table();
        array = value.get_ref().as_array().map(|array| &array[..]);
    }
    found
}

/// Where an array element starts. The span toml gives an `[[array]]` element may not cover
/// its header, so the element's span is used only when it starts before its first key.
fn element_span(value: &Spanned<DeValue<'_>>) -> Range<usize> {
    let first_key = value.get_ref().as_table().and_then(|table| {
        table
            .iter()
            .map(|(key, _)| key.span())
            .min_by_key(|span| span.start)
    });
    match first_key {
        Some(key) if key.start < value.span().start => key,
        _ => value.span(),
    }
}

/// Key path of the deepest key or value whose span contains `offset`.
fn path_at(tree: &Spanned<DeTable<'_>>, offset: usize) -> Option<String> {
    let mut path = String::new();
    table_path(tree.get_ref(), offset, &mut path).then_some(path)
}

fn table_path(table: &DeTable<'_>, offset: usize, path: &mut String) -> bool {
    for (key, value) in table.iter() {
        let length = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        if value_path(value, offset, path) || key.span().contains(&offset) {
            return true;
        }
        path.truncate(length);
    }
    false
}

fn value_path(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => table_path(table, offset, path) || value.span().contains(&offset),
        DeValue::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                if value_path(element, offset, path) {
                    return true;
                }
                path.truncate(length);
            }
            value.span().contains(&offset)
        }
        _ => value.span().contains(&offset),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    instance: Option<String>,
    interfaces: Option<Vec<String>>,
    xdp_mode: Option<XdpMode>,
    metrics_address: Option<String>,
    next_hop: Option<RawNextHop>,
    tunnel: Option<RawTunnel>,
    flows: Option<RawFlows>,
    probe_defaults: Option<RawTiming>,
    #[serde(default)]
    vip: Vec<RawVip>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNextHop {
    address: Option<String>,
    mac: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    source_v4: Option<String>,
    source_v6: Option<String>,
    mtu: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlows {
    udp_idle_timeout: Option<String>,
    insert_rate: Option<u32>,
    insert_burst: Option<u32>,
    capacity: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiming {
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    jitter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<String>,
    address: Option<String>,
    port: Option<u16>,
    protocol: Option<Protocol>,
    table_size: Option<i64>,
    hash: Option<HashMode>,
    all_down: Option<AllDown>,
    owned: Option<bool>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    weight: Option<i64>,
    tier: Option<Tier>,
    maintenance: Option<bool>,
    probe: Option<RawProbe>,
}

/// Declares a probe kind's raw fields next to the timing fields every kind shares; serde's
/// `flatten` cannot be combined with `deny_unknown_fields`, so the shared fields are repeated.
macro_rules! raw_probe {
    ($name:ident { $($field:ident: $type:ty),* $(,)? }) => {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            interval: Option<String>,
            timeout: Option<String>,
            rise: Option<i64>,
            fall: Option<i64>,
            jitter: Option<String>,
            $($field: $type,)*
        }

        impl $name {
            fn timing(&self) -> RawTiming {
                RawTiming {
                    interval: self.interval.clone(),
                    timeout: self.timeout.clone(),
                    rise: self.rise,
                    fall: self.fall,
                    jitter: self.jitter.clone(),
                }
            }
        }
    };
}

raw_probe!(RawTcpProbe { port: Option<u16> });
raw_probe!(RawHttpProbe {
    port: Option<u16>,
    path: Option<String>,
    expect_status: Option<u16>,
    body_contains: Option<String>,
    host: Option<String>,
});
raw_probe!(RawUdpProbe { port: Option<u16>, send: Option<String>, expect: Option<String> });
raw_probe!(RawIcmpProbe {});
raw_probe!(RawExecProbe { argv: Option<Vec<String>> });
raw_probe!(RawRedisProbe { port: Option<u16>, role: Option<RedisRole> });
raw_probe!(RawPostgresProbe {
    port: Option<u16>,
    user: Option<String>,
    database: Option<String>,
    role: Option<PostgresRole>,
});

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RawProbe {
    Tcp(RawTcpProbe),
    Http(RawHttpProbe),
    Https(RawHttpProbe),
    Udp(RawUdpProbe),
    Icmp(RawIcmpProbe),
    Exec(RawExecProbe),
    Redis(RawRedisProbe),
    Postgres(RawPostgresProbe),
}

impl RawProbe {
    fn timing(&self) -> RawTiming {
        match self {
            Self::Tcp(probe) => probe.timing(),
            Self::Http(probe) | Self::Https(probe) => probe.timing(),
            Self::Udp(probe) => probe.timing(),
            Self::Icmp(probe) => probe.timing(),
            Self::Exec(probe) => probe.timing(),
            Self::Redis(probe) => probe.timing(),
            Self::Postgres(probe) => probe.timing(),
        }
    }
}

/// `jitter` as written: a share of the interval or a fixed duration.
#[derive(Debug, Clone, Copy)]
enum Jitter {
    Percent(u32),
    Fixed(Duration),
}

impl Jitter {
    fn resolve(self, interval: Duration) -> Duration {
        match self {
            Self::Percent(percent) => interval * percent / 100,
            Self::Fixed(duration) => duration,
        }
    }
}

/// `probe_defaults` after parsing, before a probe's overrides.
#[derive(Debug, Clone, Copy)]
struct Defaults {
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
    jitter: Jitter,
}

/// Collects (key path, message) problems while building a [`Config`] from raw values.
#[derive(Default)]
struct Validator {
    problems: Vec<(String, String)>,
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push((path.into(), message.into()));
    }

    /// Parses an optional value, recording a problem and using `default` when it is wrong.
    fn field<T>(
        &mut self,
        path: &str,
        raw: Option<&str>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match raw.map(parse) {
            None => default,
            Some(Ok(value)) => value,
            Some(Err(message)) => {
                self.problem(path, message);
                default
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let instance = self.field(
            "instance",
            raw.instance.as_deref(),
            DEFAULT_INSTANCE.to_owned(),
            |text| {
                let valid = (1..=MAX_INSTANCE_NAME).contains(&text.len())
                    && text.bytes().all(|byte| {
                        byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-'
                    });
                if valid {
                    Ok(text.to_owned())
                } else {
                    Err(format!("must be 1 to 32 of a-z, 0-9 and '-', got {text:?}"))
                }
            },
        );
        let interfaces = raw.interfaces.unwrap_or_default();
        if interfaces.is_empty() {
            self.problem("interfaces", "at least one interface is required");
        }
        for (index, name) in interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_INTERFACE_NAME || name.contains(['/', ' ']) {
                self.problem(
                    format!("interfaces[{index}]"),
                    format!("not a valid interface name: {name:?}"),
                );
            }
        }
        let metrics_default = SocketAddr::from(([127, 0, 0, 1], 9650));
        let metrics_address = self.field(
            "metrics_address",
            raw.metrics_address.as_deref(),
            metrics_default,
            |text| {
                text.parse().map_err(|_| {
                    format!("expected an address and port such as \"127.0.0.1:9650\", got {text:?}")
                })
            },
        );
        let next_hop = self.next_hop(raw.next_hop);
        let tunnel = self.tunnel(raw.tunnel.unwrap_or_default());
        let flows = self.flows(raw.flows.unwrap_or_default());
        let defaults = self.defaults(raw.probe_defaults.unwrap_or_default());
        let probe_defaults = ProbeTiming {
            interval: defaults.interval,
            timeout: defaults.timeout,
            rise: defaults.rise,
            fall: defaults.fall,
            jitter: defaults.jitter.resolve(defaults.interval),
        };
        let vips: Vec<Vip> = raw
            .vip
            .into_iter()
            .enumerate()
            .map(|(index, vip)| self.vip(index, vip, &tunnel, &defaults))
            .collect();
        self.across_vips(&vips);
        Config {
            instance,
            interfaces,
            xdp_mode: raw.xdp_mode.unwrap_or_default(),
            metrics_address,
            next_hop,
            tunnel,
            flows,
            probe_defaults,
            vips,
        }
    }

    fn next_hop(&mut self, raw: Option<RawNextHop>) -> NextHop {
        let unspecified = NextHop::Mac([0; 6]);
        let Some(raw) = raw else {
            self.problem(
                "next_hop",
                "a [next_hop] table with `address` or `mac` is required",
            );
            return unspecified;
        };
        match (raw.address, raw.mac) {
            (Some(address), None) => {
                let path = "next_hop.address";
                self.field(path, Some(&address), unspecified, |text| {
                    parse_address(text).map(NextHop::Address)
                })
            }
            (None, Some(mac)) => self.field("next_hop.mac", Some(&mac), unspecified, |text| {
                parse_mac(text).map(NextHop::Mac)
            }),
            (Some(_), Some(_)) => {
                self.problem("next_hop.mac", "give either `address` or `mac`, not both");
                unspecified
            }
            (None, None) => {
                self.problem("next_hop", "give either `address` or `mac`");
                unspecified
            }
        }
    }

    fn tunnel(&mut self, raw: RawTunnel) -> Tunnel {
        let source_v4 = raw.source_v4.as_deref().and_then(|text| {
            self.field("tunnel.source_v4", Some(text), None, |text| {
                let prefix = parse_prefix(text)?;
                if prefix.address.is_ipv4() {
                    Ok(Some(prefix))
                } else {
                    Err(format!("must be an IPv4 prefix, got {text:?}"))
                }
            })
        });
        let source_v6 = raw.source_v6.as_deref().and_then(|text| {
            self.field("tunnel.source_v6", Some(text), None, |text| {
                let prefix = parse_prefix(text)?;
                if prefix.address.is_ipv6() {
                    Ok(Some(prefix))
                } else {
                    Err(format!("must be an IPv6 prefix, got {text:?}"))
                }
            })
        });
        let mtu = match raw.mtu {
            None => DEFAULT_MTU,
            Some(mtu) => match u16::try_from(mtu) {
                Ok(mtu) if (MIN_MTU..=MAX_MTU).contains(&mtu) => mtu,
                _ => {
                    self.problem(
                        "tunnel.mtu",
                        format!("must be between {MIN_MTU} and {MAX_MTU}, got {mtu}"),
                    );
                    DEFAULT_MTU
                }
            },
        };
        Tunnel {
            source_v4,
            source_v6,
            mtu,
        }
    }

    fn flows(&mut self, raw: RawFlows) -> Flows {
        let path = "flows.udp_idle_timeout";
        let udp_idle_timeout = self.field(
            path,
            raw.udp_idle_timeout.as_deref(),
            DEFAULT_UDP_IDLE_TIMEOUT,
            parse_positive_duration,
        );
        let insert_rate = raw.insert_rate.unwrap_or(0);
        let default_burst = if insert_rate == 0 {
            DEFAULT_INSERT_BURST
        } else {
            insert_rate
        };
        let insert_burst = raw.insert_burst.unwrap_or(default_burst);
        if insert_burst == 0 {
            self.problem("flows.insert_burst", "must be at least 1");
        }
        let capacity = raw.capacity.unwrap_or(DEFAULT_FLOW_CAPACITY);
        if !(MIN_FLOW_CAPACITY..=MAX_FLOW_CAPACITY).contains(&capacity) {
            self.problem(
                "flows.capacity",
                format!("must be within {MIN_FLOW_CAPACITY}..={MAX_FLOW_CAPACITY}"),
            );
        }
        Flows {
            udp_idle_timeout,
            insert_rate,
            insert_burst,
            capacity,
        }
    }

    fn defaults(&mut self, raw: RawTiming) -> Defaults {
        let builtin = Defaults {
            interval: DEFAULT_PROBE_INTERVAL,
            timeout: DEFAULT_PROBE_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            jitter: Jitter::Percent(DEFAULT_JITTER_PERCENT),
        };
        self.timing("probe_defaults", &raw, &builtin)
    }

    /// Applies `raw` over `base` and checks the result; problems are reported under `path`.
    fn timing(&mut self, path: &str, raw: &RawTiming, base: &Defaults) -> Defaults {
        let interval = self.field(
            &format!("{path}.interval"),
            raw.interval.as_deref(),
            base.interval,
            parse_positive_duration,
        );
        let timeout = self.field(
            &format!("{path}.timeout"),
            raw.timeout.as_deref(),
            base.timeout,
            parse_positive_duration,
        );
        let jitter = self.field(
            &format!("{path}.jitter"),
            raw.jitter.as_deref(),
            base.jitter,
            parse_jitter,
        );
        let rise = self.count(&format!("{path}.rise"), raw.rise, base.rise);
        let fall = self.count(&format!("{path}.fall"), raw.fall, base.fall);
        let changed = raw.interval.is_some() || raw.timeout.is_some();
        if changed && timeout >= interval {
            let key = if raw.timeout.is_some() {
                "timeout"
            } else {
                "interval"
            };
            self.problem(
                format!("{path}.{key}"),
                format!("timeout ({timeout:?}) must be shorter than interval ({interval:?})"),
            );
        }
        if jitter.resolve(interval) > interval {
            self.problem(
                format!("{path}.jitter"),
                format!("must not exceed the interval ({interval:?})"),
            );
        }
        Defaults {
            interval,
            timeout,
            rise,
            fall,
            jitter,
        }
    }

    fn count(&mut self, path: &str, raw: Option<i64>, default: u32) -> u32 {
        match raw.map(u32::try_from) {
            None => default,
            Some(Ok(count)) if count >= 1 => count,
            _ => {
                self.problem(
                    path,
                    format!("must be at least 1, got {}", raw.unwrap_or_default()),
                );
                default
            }
        }
    }

    fn vip(&mut self, index: usize, raw: RawVip, tunnel: &Tunnel, defaults: &Defaults) -> Vip {
        let path = format!("vip[{index}]");
        let name = raw.name.unwrap_or_else(|| {
            self.problem(format!("{path}.name"), "is required");
            String::new()
        });
        let unspecified = IpAddr::from([0, 0, 0, 0]);
        let address = match raw.address {
            Some(text) => self.field(
                &format!("{path}.address"),
                Some(&text),
                unspecified,
                parse_address,
            ),
            None => {
                self.problem(format!("{path}.address"), "is required");
                unspecified
            }
        };
        let protocol = raw.protocol.unwrap_or_else(|| {
            self.problem(
                format!("{path}.protocol"),
                "is required (\"tcp\" or \"udp\")",
            );
            Protocol::Tcp
        });
        let port = raw.port.unwrap_or(0);
        let table_size = match raw.table_size {
            None => DEFAULT_TABLE_SIZE,
            Some(size) => match u32::try_from(size) {
                Ok(size) if (2..=MAX_TABLE_SIZE).contains(&size) && is_prime(size) => size,
                _ => {
                    self.problem(
                        format!("{path}.table_size"),
                        format!("must be a prime between 2 and {MAX_TABLE_SIZE}, got {size}"),
                    );
                    DEFAULT_TABLE_SIZE
                }
            },
        };
        if raw.backend.is_empty() {
            self.problem(path.clone(), "needs at least one [[vip.backend]]");
        }
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        let mut backends = Vec::with_capacity(raw.backend.len());
        for (number, backend) in raw.backend.into_iter().enumerate() {
            let backend_path = format!("{path}.backend[{number}]");
            let backend = self.backend(&backend_path, backend, port, tunnel, defaults);
            if let Some(first) = seen.insert(backend.address, number) {
                self.problem(
                    format!("{backend_path}.address"),
                    format!(
                        "duplicate backend {} (also {path}.backend[{first}])",
                        backend.address
                    ),
                );
            }
            backends.push(backend);
        }
        Vip {
            name,
            address,
            port,
            protocol,
            table_size,
            hash: raw.hash.unwrap_or_default(),
            all_down: raw.all_down.unwrap_or_default(),
            owned: raw.owned.unwrap_or(true),
            backends,
        }
    }

    fn backend(
        &mut self,
        path: &str,
        raw: RawBackend,
        vip_port: u16,
        tunnel: &Tunnel,
        defaults: &Defaults,
    ) -> Backend {
        let unspecified = IpAddr::from([0, 0, 0, 0]);
        let address = match raw.address {
            Some(text) => self.field(
                &format!("{path}.address"),
                Some(&text),
                unspecified,
                parse_address,
            ),
            None => {
                self.problem(format!("{path}.address"), "is required");
                unspecified
            }
        };
        let missing_source = match address {
            IpAddr::V4(_) if tunnel.source_v4.is_none() => Some("tunnel.source_v4"),
            IpAddr::V6(_) if tunnel.source_v6.is_none() => Some("tunnel.source_v6"),
            _ => None,
        };
        if let Some(key) = missing_source {
            self.problem(
                format!("{path}.address"),
                format!("backend {address} needs {key} to be set"),
            );
        }
        let weight = match raw.weight {
            None => 1,
            Some(weight) => match u16::try_from(weight) {
                Ok(weight) if weight >= 1 => weight,
                _ => {
                    self.problem(
                        format!("{path}.weight"),
                        format!("must be between 1 and 65535, got {weight}"),
                    );
                    1
                }
            },
        };
        let probe = self.probe(
            &format!("{path}.probe"),
            raw.probe,
            vip_port,
            defaults,
            path,
        );
        Backend {
            address,
            weight,
            tier: raw.tier.unwrap_or_default(),
            maintenance: raw.maintenance.unwrap_or(false),
            probe,
        }
    }

    fn probe(
        &mut self,
        path: &str,
        raw: Option<RawProbe>,
        vip_port: u16,
        defaults: &Defaults,
        backend: &str,
    ) -> Probe {
        let Some(raw) = raw else {
            if vip_port == 0 {
                self.problem(
                    backend,
                    "the VIP port is 0 (all ports), so a `probe` is required",
                );
            }
            return Probe {
                check: Check::Tcp { port: vip_port },
                timing: finish(defaults),
            };
        };
        let timing = finish(&self.timing(path, &raw.timing(), defaults));
        let port =
            |validator: &mut Self, port: Option<u16>| probe_port(validator, path, port, vip_port);
        let required = |validator: &mut Self, key: &str, value: Option<String>| {
            value.unwrap_or_else(|| {
                validator.problem(format!("{path}.{key}"), "is required");
                String::new()
            })
        };
        let check = match raw {
            RawProbe::Tcp(probe) => Check::Tcp {
                port: port(self, probe.port),
            },
            RawProbe::Http(probe) => Check::Http(self.http(path, probe, vip_port)),
            RawProbe::Https(probe) => Check::Https(self.http(path, probe, vip_port)),
            RawProbe::Udp(probe) => Check::Udp {
                port: port(self, probe.port),
                send: required(self, "send", probe.send),
                expect: required(self, "expect", probe.expect),
            },
            RawProbe::Icmp(_) => Check::Icmp,
            RawProbe::Exec(probe) => {
                let argv = probe.argv.unwrap_or_default();
                if argv.first().is_none_or(String::is_empty) {
                    self.problem(
                        format!("{path}.argv"),
                        "must name a program: a non-empty list",
                    );
                }
                Check::Exec { argv }
            }
            RawProbe::Redis(probe) => Check::Redis {
                port: port(self, Some(probe.port.unwrap_or(6379))),
                role: probe.role.unwrap_or_default(),
            },
            RawProbe::Postgres(probe) => Check::Postgres {
                port: port(self, Some(probe.port.unwrap_or(5432))),
                user: required(self, "user", probe.user),
                database: required(self, "database", probe.database),
                role: probe.role.unwrap_or_default(),
            },
        };
        Probe { check, timing }
    }

    fn http(&mut self, path: &str, raw: RawHttpProbe, vip_port: u16) -> HttpCheck {
        let expect_status = raw.expect_status.unwrap_or(200);
        if !(100..=599).contains(&expect_status) {
            self.problem(
                format!("{path}.expect_status"),
                format!("must be between 100 and 599, got {expect_status}"),
            );
        }
        let request_path = raw.path.unwrap_or_else(|| "/".to_owned());
        if !request_path.starts_with('/') {
            self.problem(
                format!("{path}.path"),
                format!("must start with '/', got {request_path:?}"),
            );
        }
        HttpCheck {
            port: probe_port(self, path, raw.port, vip_port),
            path: request_path,
            expect_status,
            body_contains: raw.body_contains,
            host: raw.host,
        }
    }

    /// Rules between VIPs: unique names, unique (address, port, protocol), no port-0 overlap.
    fn across_vips(&mut self, vips: &[Vip]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (index, vip) in vips.iter().enumerate() {
            if vip.name.is_empty() {
                continue;
            }
            if let Some(first) = names.insert(&vip.name, index) {
                self.problem(
                    format!("vip[{index}].name"),
                    format!("duplicate VIP name {:?} (also vip[{first}])", vip.name),
                );
            }
        }
        for (index, vip) in vips.iter().enumerate() {
            let earlier = vips[..index]
                .iter()
                .enumerate()
                .find(|(_, other)| other.address == vip.address && other.protocol == vip.protocol);
            let Some((first, other)) = earlier else {
                continue;
            };
            let endpoint = format!("{} {}", vip.address, vip.protocol);
            if other.port == vip.port {
                self.problem(
                    format!("vip[{index}].port"),
                    format!(
                        "{endpoint} port {} is already vip[{first}] ({:?})",
                        vip.port, other.name
                    ),
                );
            } else if other.port == 0 || vip.port == 0 {
                self.problem(
                    format!("vip[{index}].port"),
                    format!(
                        "{endpoint}: port {} overlaps vip[{first}] ({:?}) on port {}; port 0 (all ports) must be \
                         the only VIP on its address and protocol",
                        vip.port, other.name, other.port
                    ),
                );
            }
        }
    }
}

/// A probe's `port`, defaulting to the VIP port; required when the VIP port is 0.
fn probe_port(validator: &mut Validator, path: &str, port: Option<u16>, vip_port: u16) -> u16 {
    match port {
        Some(0) => {
            validator.problem(format!("{path}.port"), "must be between 1 and 65535, got 0");
            0
        }
        Some(port) => port,
        None if vip_port != 0 => vip_port,
        None => {
            validator.problem(
                format!("{path}.port"),
                "is required when the VIP port is 0 (all ports)",
            );
            0
        }
    }
}

/// Timing with the jitter resolved against the interval.
fn finish(timing: &Defaults) -> ProbeTiming {
    ProbeTiming {
        interval: timing.interval,
        timeout: timing.timeout,
        rise: timing.rise,
        fall: timing.fall,
        jitter: timing.jitter.resolve(timing.interval),
    }
}

/// Parses "500ms", "30s" or "2m": a whole number and one unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("expected a duration such as \"500ms\", \"30s\" or \"2m\", got {text:?}");
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let milliseconds = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        _ => None,
    };
    milliseconds.map(Duration::from_millis).ok_or_else(invalid)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("must be longer than zero, got {text:?}"));
    }
    Ok(duration)
}

fn parse_jitter(text: &str) -> Result<Jitter, String> {
    match text.strip_suffix('%') {
        Some(percent) => match percent.parse::<u32>() {
            Ok(percent) if percent <= 100 => Ok(Jitter::Percent(percent)),
            _ => Err(format!(
                "expected a percentage from \"0%\" to \"100%\" or a duration, got {text:?}"
            )),
        },
        None => parse_duration(text).map(Jitter::Fixed),
    }
}

fn parse_address(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("expected an IPv4 or IPv6 address, got {text:?}"))
}

/// Parses "192.0.2.0/24" or "2001:db8::/64"; host bits must be zero.
pub fn parse_prefix(text: &str) -> Result<Prefix, String> {
    let invalid =
        || format!("expected a prefix such as \"192.0.2.0/24\" or \"2001:db8::/64\", got {text:?}");
    let (address, length) = text.split_once('/').ok_or_else(invalid)?;
    let address: IpAddr = address.parse().map_err(|_| invalid())?;
    let length: u8 = length.parse().map_err(|_| invalid())?;
    let host_bits_set = match address {
        IpAddr::V4(address) => {
            if length > 32 {
                return Err(invalid());
            }
            u32::from(address)
                .checked_shl(u32::from(length))
                .unwrap_or(0)
                != 0
        }
        IpAddr::V6(address) => {
            if length > 128 {
                return Err(invalid());
            }
            u128::from(address)
                .checked_shl(u32::from(length))
                .unwrap_or(0)
                != 0
        }
    };
    if host_bits_set {
        return Err(format!(
            "host bits are set in {text:?}; give the network address"
        ));
    }
    Ok(Prefix { address, length })
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let invalid = || format!("expected a MAC address such as \"02:00:00:00:00:01\", got {text:?}");
    let mut mac = [0; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(invalid)?;
        if part.len() != 2 {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/failover.toml");

    /// Lines 1 to 6 of every test file; test text starts on line 7.
    const BASE: &str = "\
interfaces = [\"eth0\"]
[next_hop]
mac = \"02:00:00:00:00:01\"
[tunnel]
source_v4 = \"192.0.2.0/24\"
source_v6 = \"2001:db8::/64\"
";

    /// Seven lines: a TCP VIP with one backend at `198.51.100.1`.
    fn vip(name: &str, address: &str, port: u16) -> String {
        format!(
            "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"tcp\"\n\
             [[vip.backend]]\naddress = \"198.51.100.1\"\n"
        )
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text, "test.toml") {
            Ok(config) => panic!("expected an error, parsed {config:?}"),
            Err(ConfigError::Invalid { problems }) => {
                problems.iter().map(Problem::to_string).collect()
            }
            Err(error) => panic!("unexpected error {error}"),
        }
    }

    fn assert_problem(text: &str, expected: &str) {
        let problems = problems(text);
        assert!(
            problems.iter().any(|problem| problem == expected),
            "expected {expected:?} in {problems:#?}"
        );
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn example_parses_with_expected_values() {
        let config = parse(EXAMPLE, "failover.toml").unwrap();
        assert_eq!(config.instance, "edge-1");
        assert_eq!(config.interfaces, ["eth0", "eth1"]);
        assert_eq!(config.xdp_mode, XdpMode::Auto);
        assert_eq!(config.metrics_address, "127.0.0.1:9650".parse().unwrap());
        assert_eq!(config.next_hop, NextHop::Address(ip("192.0.2.1")));
        assert_eq!(
            config.tunnel.source_v4,
            Some(Prefix {
                address: ip("192.0.2.128"),
                length: 25
            })
        );
        assert_eq!(
            config.tunnel.source_v6,
            Some(Prefix {
                address: ip("2001:db8:ffff::"),
                length: 64
            })
        );
        assert_eq!(config.tunnel.mtu, 1500);
        assert_eq!(
            config.flows,
            Flows {
                udp_idle_timeout: Duration::from_secs(30),
                insert_rate: 20_000,
                insert_burst: 40_000,
                capacity: 65536
            }
        );
        let defaults = ProbeTiming {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: Duration::from_millis(200),
        };
        assert_eq!(config.probe_defaults, defaults);
        assert_eq!(config.vips.len(), 3);
        assert_eq!(config.backend_count(), 8);

        let web = config.vip("web").unwrap();
        assert_eq!(
            (web.address, web.port, web.protocol),
            (ip("203.0.113.10"), 443, Protocol::Tcp)
        );
        assert_eq!(
            (web.table_size, web.hash, web.all_down, web.owned),
            (65_537, HashMode::FiveTuple, AllDown::Drop, true)
        );
        let first = &web.backends[0];
        assert_eq!(
            (first.address, first.weight, first.tier, first.maintenance),
            (ip("198.51.100.11"), 2, Tier::Primary, false)
        );
        let https = HttpCheck {
            port: 443,
            path: "/healthz".to_owned(),
            expect_status: 200,
            body_contains: Some("ok".to_owned()),
            host: Some("www.example.com".to_owned()),
        };
        assert_eq!(first.probe.check, Check::Https(https));
        let overridden = ProbeTiming {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            jitter: Duration::from_millis(500),
            ..defaults
        };
        assert_eq!(first.probe.timing, overridden);
        let http = HttpCheck {
            port: 8080,
            path: "/status".to_owned(),
            expect_status: 200,
            body_contains: None,
            host: None,
        };
        assert_eq!(web.backends[1].address, ip("2001:db8:1::12"));
        assert_eq!(web.backends[1].probe.check, Check::Http(http));
        assert_eq!(web.backends[2].tier, Tier::Backup);
        assert_eq!(web.backends[2].probe.check, Check::Tcp { port: 443 });

        let dns = config.vip("dns").unwrap();
        assert_eq!(
            (dns.port, dns.protocol, dns.table_size),
            (0, Protocol::Udp, 251)
        );
        assert_eq!(
            (dns.hash, dns.all_down, dns.owned),
            (HashMode::Source, AllDown::Pass, false)
        );
        let udp = Check::Udp {
            port: 53,
            send: "ping".to_owned(),
            expect: "pong".to_owned(),
        };
        assert_eq!(dns.backends[0].probe.check, udp);
        assert_eq!(
            (
                dns.backends[0].probe.timing.rise,
                dns.backends[0].probe.timing.fall
            ),
            (1, 2)
        );
        assert!(dns.backends[1].maintenance);
        assert_eq!(dns.backends[1].probe.check, Check::Icmp);
        assert_eq!(
            dns.backends[1].probe.timing.jitter,
            Duration::from_millis(100)
        );

        let database = config.vip("db").unwrap();
        let postgres = Check::Postgres {
            port: 5432,
            user: "monitor".to_owned(),
            database: "postgres".to_owned(),
            role: PostgresRole::Primary,
        };
        assert_eq!(database.backends[0].probe.check, postgres);
        let argv = vec!["/usr/local/bin/check-db".to_owned(), "--standby".to_owned()];
        assert_eq!(database.backends[1].probe.check, Check::Exec { argv });
        assert_eq!(
            database.backends[2].probe.check,
            Check::Redis {
                port: 6379,
                role: RedisRole::Replica
            }
        );
        assert_eq!(database.backends[2].tier, Tier::Backup);
    }

    #[test]
    fn defaults_applied() {
        let config = parse(
            &format!("{BASE}{}", vip("web", "203.0.113.1", 80)),
            "test.toml",
        )
        .unwrap();
        assert_eq!(config.instance, "default");
        assert_eq!(config.xdp_mode, XdpMode::Auto);
        assert_eq!(config.metrics_address, "127.0.0.1:9650".parse().unwrap());
        assert_eq!(config.tunnel.mtu, 1500);
        assert_eq!(
            config.flows,
            Flows {
                udp_idle_timeout: Duration::from_secs(30),
                insert_rate: 0,
                insert_burst: 1000,
                capacity: DEFAULT_FLOW_CAPACITY
            }
        );
        let timing = ProbeTiming {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: Duration::from_millis(200),
        };
        assert_eq!(config.probe_defaults, timing);
        let web = &config.vips[0];
        assert_eq!(
            (web.table_size, web.hash, web.all_down, web.owned),
            (65_537, HashMode::FiveTuple, AllDown::Drop, true)
        );
        let backend = &web.backends[0];
        assert_eq!(
            (backend.weight, backend.tier, backend.maintenance),
            (1, Tier::Primary, false)
        );
        assert_eq!(
            backend.probe,
            Probe {
                check: Check::Tcp { port: 80 },
                timing
            }
        );

        let rated = format!(
            "{BASE}{}[flows]\ninsert_rate = 500\n",
            vip("web", "203.0.113.1", 80)
        );
        assert_eq!(parse(&rated, "test.toml").unwrap().flows.insert_burst, 500);
        let probe = format!(
            "{BASE}{}probe = {{ kind = \"redis\", interval = \"10s\" }}\n",
            vip("web", "203.0.113.1", 80)
        );
        let config = parse(&probe, "test.toml").unwrap();
        let timing = config.vips[0].backends[0].probe.timing;
        assert_eq!(
            (timing.interval, timing.jitter, timing.timeout),
            (
                Duration::from_secs(10),
                Duration::from_secs(1),
                Duration::from_secs(1)
            )
        );
    }

    #[test]
    fn weight_out_of_range() {
        let text = format!("{BASE}{}weight = 0\n", vip("web", "203.0.113.1", 80));
        assert_problem(
            &text,
            "test.toml:14: vip[0].backend[0].weight: must be between 1 and 65535, got 0",
        );
    }

    #[test]
    fn duplicate_vip_name() {
        let text = format!(
            "{BASE}{}{}",
            vip("web", "203.0.113.1", 80),
            vip("web", "203.0.113.2", 80)
        );
        assert_eq!(
            problems(&text),
            ["test.toml:15: vip[1].name: duplicate VIP name \"web\" (also vip[0])"]
        );
    }

    #[test]
    fn duplicate_vip_endpoint() {
        let text = format!(
            "{BASE}{}{}",
            vip("web", "203.0.113.1", 80),
            vip("api", "203.0.113.1", 80)
        );
        assert_eq!(
            problems(&text),
            ["test.toml:17: vip[1].port: 203.0.113.1 tcp port 80 is already vip[0] (\"web\")"]
        );
    }

    #[test]
    fn all_ports_vip_overlapping_another() {
        let mut text = format!(
            "{BASE}{}{}",
            vip("web", "203.0.113.1", 80),
            vip("all", "203.0.113.1", 0)
        );
        text.push_str("probe = { kind = \"icmp\" }\n");
        let expected = "test.toml:17: vip[1].port: 203.0.113.1 tcp: port 0 overlaps vip[0] (\"web\") on port 80; \
                        port 0 (all ports) must be the only VIP on its address and protocol";
        assert_eq!(problems(&text), [expected]);
        // Another protocol on the same address does not overlap.
        let udp = text.replace(
            "port = 0\nprotocol = \"tcp\"",
            "port = 0\nprotocol = \"udp\"",
        );
        assert!(parse(&udp, "test.toml").is_ok());
    }

    #[test]
    fn all_ports_vip_needs_a_probe() {
        let text = format!("{BASE}{}", vip("all", "203.0.113.1", 0));
        assert_eq!(problems(&text), ["test.toml:12: vip[0].backend[0]: the VIP port is 0 (all ports), so a `probe` is required"]);
        let tcp = format!("{text}probe = {{ kind = \"tcp\" }}\n");
        assert_eq!(problems(&tcp), ["test.toml:14: vip[0].backend[0].probe.port: is required when the VIP port is 0 (all ports)"]);
    }

    #[test]
    fn duplicate_backend() {
        let text = format!(
            "{BASE}{}[[vip.backend]]\naddress = \"198.51.100.1\"\n",
            vip("web", "203.0.113.1", 80)
        );
        assert_eq!(problems(&text), ["test.toml:15: vip[0].backend[1].address: duplicate backend 198.51.100.1 (also vip[0].backend[0])"]);
    }

    #[test]
    fn vip_without_backend() {
        let text = format!(
            "{BASE}[[vip]]\nname = \"web\"\naddress = \"203.0.113.1\"\nprotocol = \"udp\"\n"
        );
        assert_eq!(
            problems(&text),
            ["test.toml:7: vip[0]: needs at least one [[vip.backend]]"]
        );
    }

    #[test]
    fn backend_family_needs_tunnel_source() {
        let base = BASE.replace("source_v6 = \"2001:db8::/64\"\n", "mtu = 9000\n");
        let text = format!(
            "{base}{}[[vip.backend]]\naddress = \"2001:db8::1\"\n",
            vip("web", "203.0.113.1", 80)
        );
        assert_eq!(problems(&text), ["test.toml:15: vip[0].backend[1].address: backend 2001:db8::1 needs tunnel.source_v6 to be set"]);
        // An IPv6 VIP with an IPv4 backend (4in6) only needs the IPv4 source.
        let v6 = format!("{base}{}", vip("web", "2001:db8::80", 80));
        assert!(parse(&v6, "test.toml").is_ok());
    }

    #[test]
    fn tunnel_prefix_family_and_host_bits() {
        let wrong = BASE.replace(
            "source_v4 = \"192.0.2.0/24\"",
            "source_v4 = \"2001:db8::/64\"",
        );
        assert_problem(
            &format!("{wrong}{}", vip("web", "2001:db8::80", 80)),
            "test.toml:5: tunnel.source_v4: must be an IPv4 prefix, got \"2001:db8::/64\"",
        );
        let host = BASE.replace("192.0.2.0/24", "192.0.2.1/24");
        assert_problem(&format!("{host}{}", vip("web", "203.0.113.1", 80)), "test.toml:5: tunnel.source_v4: host bits are set in \"192.0.2.1/24\"; give the network address");
    }

    #[test]
    fn timeout_not_shorter_than_interval() {
        let text = format!(
            "{BASE}{}[probe_defaults]\ninterval = \"1s\"\ntimeout = \"1000ms\"\n",
            vip("web", "203.0.113.1", 80)
        );
        assert_eq!(problems(&text), ["test.toml:16: probe_defaults.timeout: timeout (1s) must be shorter than interval (1s)"]);
        let probe = format!(
            "{BASE}{}probe = {{ kind = \"icmp\", interval = \"500ms\" }}\n",
            vip("web", "203.0.113.1", 80)
        );
        assert_eq!(problems(&probe), ["test.toml:14: vip[0].backend[0].probe.interval: timeout (1s) must be shorter than interval (500ms)"]);
    }

    #[test]
    fn rise_and_fall_at_least_one() {
        let text = format!(
            "{BASE}{}probe = {{ kind = \"tcp\", rise = 0 }}\n[probe_defaults]\nfall = 0\n",
            vip("web", "203.0.113.1", 80)
        );
        assert_eq!(
            problems(&text),
            [
                "test.toml:14: vip[0].backend[0].probe.rise: must be at least 1, got 0",
                "test.toml:16: probe_defaults.fall: must be at least 1, got 0",
            ]
        );
    }

    #[test]
    fn bad_duration() {
        let text = format!(
            "{BASE}[flows]\nudp_idle_timeout = \"30 seconds\"\n{}",
            vip("web", "203.0.113.1", 80)
        );
        let expected = "test.toml:8: flows.udp_idle_timeout: expected a duration such as \"500ms\", \"30s\" or \"2m\", got \"30 seconds\"";
        assert_eq!(problems(&text), [expected]);
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn table_size_must_be_prime() {
        let text = format!("{BASE}{}", vip("web", "203.0.113.1", 80))
            .replace("port = 80\n", "port = 80\ntable_size = 65536\n");
        assert_eq!(
            problems(&text),
            ["test.toml:11: vip[0].table_size: must be a prime between 2 and 1048573, got 65536"]
        );
        let large = text.replace("65536", "1048583");
        assert_eq!(problems(&large), ["test.toml:11: vip[0].table_size: must be a prime between 2 and 1048573, got 1048583"]);
    }

    #[test]
    fn unknown_key_rejected_with_line() {
        let text = format!("{BASE}{}colour = \"red\"\n", vip("web", "203.0.113.1", 80));
        let problems = problems(&text);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .starts_with("test.toml:14: vip[0].backend[0].colour: unknown field `colour`"),
            "{problems:?}"
        );
        let probe = format!(
            "{BASE}{}probe = {{ kind = \"icmp\", port = 1 }}\n",
            vip("web", "203.0.113.1", 80)
        );
        let problems = self::problems(&probe);
        assert!(
            problems[0].starts_with("test.toml:14: vip[0].backend[0].probe: unknown field `port`"),
            "{problems:?}"
        );
    }

    #[test]
    fn probe_kind_checked() {
        let unknown = format!(
            "{BASE}{}probe = {{ kind = \"smtp\" }}\n",
            vip("web", "203.0.113.1", 80)
        );
        let problems = problems(&unknown);
        assert!(
            problems[0]
                .starts_with("test.toml:14: vip[0].backend[0].probe.kind: unknown variant `smtp`"),
            "{problems:?}"
        );
        let empty = format!(
            "{BASE}{}probe = {{ kind = \"exec\", argv = [] }}\n",
            vip("web", "203.0.113.1", 80)
        );
        assert_eq!(
            self::problems(&empty),
            ["test.toml:14: vip[0].backend[0].probe.argv: must name a program: a non-empty list"]
        );
        let postgres = format!(
            "{BASE}{}probe = {{ kind = \"postgres\", user = \"u\", port = 0 }}\n",
            vip("web", "203.0.113.1", 80)
        );
        assert_eq!(
            self::problems(&postgres),
            [
                "test.toml:14: vip[0].backend[0].probe.port: must be between 1 and 65535, got 0",
                "test.toml:14: vip[0].backend[0].probe.database: is required",
            ]
        );
    }

    #[test]
    fn toml_syntax_error_has_line() {
        let text = format!("{BASE}{}weight = = 2\n", vip("web", "203.0.113.1", 80));
        let problems = problems(&text);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("test.toml:14: "), "{problems:?}");
    }

    #[test]
    fn wrong_type_names_key() {
        let text = format!("{BASE}{}", vip("web", "203.0.113.1", 80))
            .replace("protocol = \"tcp\"", "protocol = \"sctp\"");
        let problems = problems(&text);
        assert!(
            problems[0].starts_with("test.toml:11: vip[0].protocol: unknown variant `sctp`"),
            "{problems:?}"
        );
    }

    #[test]
    fn next_hop_exactly_one() {
        let both = BASE.replace("[next_hop]\n", "[next_hop]\naddress = \"192.0.2.1\"\n");
        assert_eq!(
            problems(&format!("{both}{}", vip("web", "203.0.113.1", 80))),
            ["test.toml:4: next_hop.mac: give either `address` or `mac`, not both"]
        );
        let bad = BASE.replace("02:00:00:00:00:01", "02:00:00:00:01");
        assert_problem(&format!("{bad}{}", vip("web", "203.0.113.1", 80)), "test.toml:3: next_hop.mac: expected a MAC address such as \"02:00:00:00:00:01\", got \"02:00:00:00:01\"");
    }

    #[test]
    fn instance_and_mtu_checked() {
        let text = format!(
            "instance = \"Edge_1\"\n{BASE}{}[tunnel.extra]\n",
            vip("web", "203.0.113.1", 80)
        );
        let problems = problems(&text);
        assert!(
            problems[0].starts_with("test.toml:15: tunnel.extra: unknown field `extra`"),
            "{problems:?}"
        );
        let text = format!(
            "instance = \"Edge_1\"\n{BASE}{}",
            vip("web", "203.0.113.1", 80)
        )
        .replace("[tunnel]\n", "[tunnel]\nmtu = 1000\n");
        assert_eq!(
            self::problems(&text),
            [
                "test.toml:1: instance: must be 1 to 32 of a-z, 0-9 and '-', got \"Edge_1\"",
                "test.toml:6: tunnel.mtu: must be between 1280 and 9216, got 1000",
            ]
        );
    }

    #[test]
    fn every_problem_reported() {
        let text = format!(
            "{BASE}{}weight = 0\n{}",
            vip("web", "203.0.113.1", 80),
            vip("web", "203.0.113.2", 80)
        );
        assert_eq!(problems(&text).len(), 2);
    }

    #[test]
    fn load_names_missing_file() {
        let error = load(Path::new("/nonexistent/failover.toml")).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read configuration file /nonexistent/failover.toml"),
            "{error}"
        );
    }
}
