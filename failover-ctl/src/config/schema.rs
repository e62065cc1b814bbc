//! The file as serde reads it: every key optional, durations, addresses and prefixes as
//! strings, unknown keys refused. Validation (`validate.rs`) turns it into a [`Config`].
//!
//! [`Config`]: super::Config

use serde::Deserialize;

use super::{AllDown, HashMode, PostgresRole, Protocol, RedisRole, Tier, XdpMode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) instance: Option<String>,
    pub(super) interfaces: Option<Vec<String>>,
    pub(super) xdp_mode: Option<XdpMode>,
    pub(super) metrics_address: Option<String>,
    pub(super) next_hop: Option<RawNextHop>,
    pub(super) tunnel: Option<RawTunnel>,
    pub(super) flows: Option<RawFlows>,
    pub(super) probe_defaults: Option<RawTiming>,
    pub(super) script_user: Option<String>,
    #[serde(default)]
    pub(super) vip: Vec<RawVip>,
    #[serde(default)]
    pub(super) election: Vec<RawElection>,
    pub(super) announce: Option<RawAnnounce>,
    pub(super) flow_sync: Option<RawFlowSync>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlowSync {
    pub(super) listen: Option<String>,
    pub(super) peers: Option<Vec<String>>,
    pub(super) interval: Option<String>,
    pub(super) idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    pub(super) enabled: Option<bool>,
    pub(super) table: Option<i64>,
    pub(super) protocol: Option<i64>,
    pub(super) withdraw_grace: Option<String>,
    pub(super) rejoin_delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawElection {
    pub(super) name: Option<String>,
    pub(super) interface: Option<String>,
    pub(super) vrid: Option<i64>,
    pub(super) priority: Option<i64>,
    pub(super) advert_interval: Option<String>,
    pub(super) preempt: Option<bool>,
    pub(super) preempt_delay: Option<String>,
    pub(super) addresses: Option<Vec<String>>,
    pub(super) vips: Option<Vec<String>>,
    pub(super) unicast_peers: Option<Vec<String>>,
    pub(super) checksum: Option<String>,
    pub(super) garp_master_delay: Option<String>,
    pub(super) garp_master_refresh: Option<String>,
    pub(super) garp_master_repeat: Option<i64>,
    pub(super) notify: Option<Vec<String>>,
    pub(super) notify_user: Option<String>,
    pub(super) release_on_stop: Option<bool>,
    #[serde(default)]
    pub(super) track: Vec<RawTrack>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrack {
    pub(super) interface: Option<String>,
    pub(super) address: Option<String>,
    pub(super) probe: Option<RawProbe>,
    pub(super) backends_up: Option<String>,
    pub(super) weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNextHop {
    pub(super) address: Option<String>,
    pub(super) mac: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTunnel {
    pub(super) source_v4: Option<String>,
    pub(super) source_v6: Option<String>,
    pub(super) mtu: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlows {
    pub(super) udp_idle_timeout: Option<String>,
    pub(super) insert_rate: Option<u32>,
    pub(super) insert_burst: Option<u32>,
    pub(super) capacity: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTiming {
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) rise: Option<i64>,
    pub(super) fall: Option<i64>,
    pub(super) jitter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub(super) name: Option<String>,
    pub(super) address: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) protocol: Option<Protocol>,
    pub(super) table_size: Option<i64>,
    pub(super) hash: Option<HashMode>,
    pub(super) all_down: Option<AllDown>,
    pub(super) owned: Option<bool>,
    pub(super) announce: Option<bool>,
    #[serde(default)]
    pub(super) backend: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Option<String>,
    pub(super) weight: Option<i64>,
    pub(super) tier: Option<Tier>,
    pub(super) maintenance: Option<bool>,
    pub(super) probe: Option<RawProbe>,
}

/// Declares a probe kind's raw fields next to the timing fields every kind shares; serde's
/// `flatten` cannot be combined with `deny_unknown_fields`, so the shared fields are repeated.
macro_rules! raw_probe {
    ($name:ident { $($field:ident: $type:ty),* $(,)? }) => {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            pub(super) interval: Option<String>,
            pub(super) timeout: Option<String>,
            pub(super) rise: Option<i64>,
            pub(super) fall: Option<i64>,
            pub(super) jitter: Option<String>,
            $(pub(super) $field: $type,)*
        }

        impl $name {
            pub(super) fn timing(&self) -> RawTiming {
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
raw_probe!(RawExecProbe { argv: Option<Vec<String>>, user: Option<String> });
raw_probe!(RawRedisProbe { port: Option<u16>, role: Option<RedisRole> });
raw_probe!(RawPostgresProbe {
    port: Option<u16>,
    user: Option<String>,
    database: Option<String>,
    role: Option<PostgresRole>,
});

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum RawProbe {
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
    pub(super) fn timing(&self) -> RawTiming {
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
