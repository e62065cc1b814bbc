//! Tests of the decoder: the shipped example, defaults, and one test per rule with the exact
//! file:line message.

use super::*;

const EXAMPLE: &str = include_str!("../../examples/failover.toml");

/// Lines 1 to 6 of every test file; test text starts on line 7 (the security tests use it too).
pub(super) const BASE: &str = "\
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

pub(super) fn problems(text: &str) -> Vec<String> {
    match parse(text, "test.toml") {
        Ok(config) => panic!("expected an error, parsed {config:?}"),
        Err(ConfigError::Invalid { problems }) => problems.iter().map(Problem::to_string).collect(),
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
    let user = ScriptUser::lookup(DEFAULT_SCRIPT_USER).unwrap().unwrap();
    assert_eq!(database.backends[1].probe.check, Check::Exec { argv, user });
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
    let expected =
        "test.toml:17: vip[1].port: 203.0.113.1 tcp: port 0 overlaps vip[0] (\"web\") on port 80; \
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
    let text =
        format!("{BASE}[[vip]]\nname = \"web\"\naddress = \"203.0.113.1\"\nprotocol = \"udp\"\n");
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
    assert_eq!(
        problems(&text),
        ["test.toml:16: probe_defaults.timeout: timeout (1s) must be shorter than interval (1s)"]
    );
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
        "{BASE}[flows]\nudp_idle_timeout = \"30 parsecs\"\n{}",
        vip("web", "203.0.113.1", 80)
    );
    let expected = "test.toml:8: flows.udp_idle_timeout: expected a duration such as \"500ms\", \"30s\" or \"2m\", got \"30 parsecs\"";
    assert_eq!(problems(&text), [expected]);
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert!(parse_duration("s").is_err());
    // humantime's grammar, wider than the whole-number-and-one-unit form it replaced.
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("30 seconds"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("2m 30s"), Ok(Duration::from_secs(150)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    // No unit, no number, a sign, an unknown unit, an overflow, and one past u64::MAX ms.
    for text in [
        "",
        "30",
        "ms",
        "-5s",
        "1.s",
        "5 parsecs",
        "600000000000y",
        "18446744073709552s",
    ] {
        assert!(parse_duration(text).is_err(), "{text:?}");
    }
    assert!(parse_duration("18446744073709551s").is_ok());
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
    assert_eq!(
        problems(&large),
        ["test.toml:11: vip[0].table_size: must be a prime between 2 and 1048573, got 1048583"]
    );
}

#[test]
fn unknown_key_rejected_with_line() {
    let text = format!("{BASE}{}colour = \"red\"\n", vip("web", "203.0.113.1", 80));
    let problems = problems(&text);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("test.toml:14: vip[0].backend[0].colour: unknown field `colour`"),
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
