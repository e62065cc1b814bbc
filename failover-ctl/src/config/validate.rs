//! Validation: builds a [`Config`] from the raw file, applying defaults and collecting every
//! problem with its key path rather than stopping at the first.

use std::collections::HashMap;
use std::time::Duration;

use super::schema::{
    RawBackend, RawConfig, RawFlows, RawHttpProbe, RawNextHop, RawProbe, RawTiming, RawTunnel,
    RawVip,
};
use super::values::{parse_address, parse_jitter, parse_positive_duration, Jitter};

mod announce;
mod election;
mod flow_sync;
mod script;
use super::*;
use crate::maglev::{is_prime, DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE};

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
pub(super) struct Validator {
    pub(super) problems: Vec<(String, String)>,
    /// The global `script_user`, resolved before any probe (`validate/script.rs`).
    script_user: Option<ScriptUser>,
    /// Why the default `script_user` cannot be used, told at each exec probe relying on it.
    script_user_problem: Option<String>,
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

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
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
        let script_user = self.script_user(raw.script_user);
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
        let elections = self.elections(raw.election, &vips, &defaults);
        let announce = self.announce(raw.announce.unwrap_or_default());
        let flow_sync = raw.flow_sync.map(|raw| self.flow_sync(raw, &elections));
        Config {
            instance,
            interfaces,
            xdp_mode: raw.xdp_mode.unwrap_or_default(),
            metrics_address,
            next_hop,
            tunnel,
            flows,
            probe_defaults,
            script_user,
            vips,
            elections,
            announce,
            flow_sync,
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
            announce: raw.announce.unwrap_or(true),
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
                let user = self.exec_user(&format!("{path}.user"), probe.user);
                Check::Exec { argv, user }
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
