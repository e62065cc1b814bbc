//! Tests of `[[election]]`, `[announce]` and `[flow_sync]` (how a node shares VIPs with others): defaults, the parsed values, and one test per rule with the exact
//! file:line message.

use std::time::Duration;

use super::{tests::problems, *};
use crate::election::codec::ChecksumForm;

/// Lines 1 to 13: the base keys and a VIP "web" (probes every 200 ms, rise 3) with one backend.
const BASE: &str = "\
interfaces = [\"eth0\"]
[next_hop]
mac = \"02:00:00:00:00:01\"
[tunnel]
source_v4 = \"192.0.2.0/24\"
[[vip]]
name = \"web\"
address = \"203.0.113.10\"
port = 80
protocol = \"tcp\"
[[vip.backend]]
address = \"198.51.100.1\"
probe = { kind = \"tcp\", interval = \"200ms\", timeout = \"100ms\", rise = 3 }
";

fn assert_problem(extra: &str, expected: &str) {
    let problems = problems(&format!("{BASE}{extra}"));
    assert!(problems.iter().any(|problem| problem == expected), "expected {expected:?} in {problems:#?}");
}

/// Lines 14 to 18 of a test file: a minimal group.
const GROUP: &str = "\
[[election]]
name = \"edge\"
interface = \"eth1\"
vrid = 51
addresses = [\"10.0.0.1\"]
";

#[test]
fn a_minimal_group_gets_keepalived_defaults() {
    let config = parse(&format!("{BASE}{GROUP}vips = [\"web\"]\n"), "test.toml").unwrap();
    let election = &config.elections[0];
    assert_eq!(election.name, "edge");
    assert_eq!(election.interface, "eth1");
    assert_eq!(election.vrid, 51);
    assert_eq!(election.priority, 100);
    assert_eq!(election.advert_interval, Duration::from_secs(1));
    assert!(election.preempt);
    // Twice the longest rise x interval of the group's backends: 2 x 3 x 200 ms.
    assert_eq!(election.preempt_delay, Duration::from_millis(1200));
    assert_eq!(election.addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(election.checksum, ChecksumForm::PseudoHeader);
    assert_eq!(election.garp_master_delay, Duration::from_secs(5));
    assert_eq!(election.garp_master_refresh, None);
    assert_eq!(election.garp_master_repeat, 5);
    assert!(!election.release_on_stop);
    assert!(election.tracks.is_empty());
    assert_eq!(config.election_of("web").map(|e| e.name.as_str()), Some("edge"));
}

#[test]
fn every_key_of_a_group_and_its_tracks() {
    let text = format!(
        "{BASE}{GROUP}priority = 255\nadvert_interval = \"100ms\"\npreempt = false\npreempt_delay = \"2s\"\nvips = [\"web\"]\n\
         unicast_peers = [\"10.0.0.2\", \"10.0.0.3\"]\nchecksum = \"rfc9568\"\ngarp_master_delay = \"1s\"\ngarp_master_refresh = \"30s\"\n\
         garp_master_repeat = 3\nnotify = [\"/usr/local/bin/notify\", \"--quiet\"]\nrelease_on_stop = true\n\
         [[election.track]]\ninterface = \"eth2\"\nweight = -50\n\
         [[election.track]]\naddress = \"192.0.2.254\"\nprobe = {{ kind = \"icmp\", interval = \"300ms\", timeout = \"100ms\" }}\n\
         [[election.track]]\nbackends_up = \"50%\"\nweight = -100\n"
    );
    let config = parse(&text, "test.toml").unwrap();
    let election = &config.elections[0];
    assert_eq!(election.priority, 255);
    assert_eq!(election.advert_interval, Duration::from_millis(100));
    assert!(!election.preempt);
    assert_eq!(election.preempt_delay, Duration::from_secs(2));
    assert_eq!(election.unicast_peers.len(), 2);
    assert_eq!(election.checksum, ChecksumForm::Rfc9568);
    assert_eq!(election.garp_master_refresh, Some(Duration::from_secs(30)));
    assert_eq!(election.garp_master_repeat, 3);
    assert_eq!(election.notify, ["/usr/local/bin/notify", "--quiet"]);
    assert!(election.release_on_stop);
    assert_eq!(election.tracks[0], Track { kind: TrackKind::Interface("eth2".into()), weight: -50 });
    let TrackKind::Probe { address, probe } = &election.tracks[1].kind else { panic!("a probe track") };
    assert_eq!(address.to_string(), "192.0.2.254");
    assert_eq!(probe.check, Check::Icmp);
    assert_eq!(probe.timing.interval, Duration::from_millis(300));
    assert_eq!(election.tracks[1].weight, 0, "weight 0 (fault) by default");
    assert_eq!(election.tracks[2], Track { kind: TrackKind::BackendsUp { percent: 50 }, weight: -100 });
}

#[test]
fn required_keys() {
    assert_problem("[[election]]\n", "test.toml:14: election[0].name: is required");
    assert_problem("[[election]]\n", "test.toml:14: election[0].interface: is required");
    assert_problem("[[election]]\n", "test.toml:14: election[0].vrid: is required (1 to 255)");
    assert_problem("[[election]]\n", "test.toml:14: election[0].addresses: at least one address is required");
}

#[test]
fn values_out_of_range() {
    assert_problem(&GROUP.replace("vrid = 51", "vrid = 0"), "test.toml:17: election[0].vrid: must be between 1 and 255, got 0");
    assert_problem(&GROUP.replace("vrid = 51", "vrid = 256"), "test.toml:17: election[0].vrid: must be between 1 and 255, got 256");
    assert_problem(
        &format!("{GROUP}priority = 0\n"),
        "test.toml:19: election[0].priority: must be between 1 and 255 (255: the address owner; 0 is resigning, not a setting), got 0",
    );
    for interval in ["5ms", "15ms", "41s"] {
        assert_problem(
            &format!("{GROUP}advert_interval = \"{interval}\"\n"),
            &format!("test.toml:19: election[0].advert_interval: must be a multiple of 10ms from 10ms to 40.95s (VRRP carries centiseconds), got \"{interval}\""),
        );
    }
    assert_problem(&format!("{GROUP}checksum = \"crc\"\n"), "test.toml:19: election[0].checksum: must be \"pseudo-header\" or \"rfc9568\", got \"crc\"");
    assert_problem(&format!("{GROUP}garp_master_repeat = 0\n"), "test.toml:19: election[0].garp_master_repeat: must be between 1 and 100, got 0");
    assert_problem(&format!("{GROUP}notify = [\"\"]\n"), "test.toml:19: election[0].notify: must name a program: a non-empty list, run without a shell");
}

#[test]
fn addresses_of_one_family_once_each() {
    assert_problem(
        &GROUP.replace("[\"10.0.0.1\"]", "[\"10.0.0.1\", \"2001:db8::1\"]"),
        "test.toml:18: election[0].addresses[1]: 2001:db8::1 is not of the family of 10.0.0.1",
    );
    assert_problem(&GROUP.replace("[\"10.0.0.1\"]", "[\"10.0.0.1\", \"10.0.0.1\"]"), "test.toml:18: election[0].addresses[1]: 10.0.0.1 is listed twice");
    assert_problem(
        &format!("{GROUP}unicast_peers = [\"2001:db8::2\"]\n"),
        "test.toml:19: election[0].unicast_peers[0]: 2001:db8::2 is not of the family of the group's addresses",
    );
}

#[test]
fn vips_exist_and_follow_one_group() {
    assert_problem(&format!("{GROUP}vips = [\"api\"]\n"), "test.toml:19: election[0].vips[0]: no VIP is named \"api\"");
    let second = GROUP.replace("\"edge\"", "\"other\"").replace("vrid = 51", "vrid = 52");
    assert_problem(&format!("{GROUP}vips = [\"web\"]\n{second}vips = [\"web\"]\n"), "test.toml:25: election[1].vips[0]: VIP \"web\" already follows election[0]");
}

#[test]
fn every_vip_at_one_address_follows_the_same_election() {
    // Lines 14 to 21: a second VIP at web's address.
    let api = "[[vip]]\nname = \"api\"\naddress = \"203.0.113.10\"\nport = 443\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.51.100.2\"\nprobe = { kind = \"icmp\" }\n";
    assert!(parse(&format!("{BASE}{api}{GROUP}vips = [\"web\", \"api\"]\n"), "test.toml").is_ok());
    assert!(parse(&format!("{BASE}{api}"), "test.toml").is_ok(), "no election at all");
    assert_problem(
        &format!("{api}{GROUP}vips = [\"web\"]\n"),
        "test.toml:27: election[0].vips[0]: VIP \"api\" follows no election but VIP \"web\" at the same address 203.0.113.10 follows election[0]: every VIP at one address follows the same election",
    );
    let second = GROUP.replace("\"edge\"", "\"other\"").replace("vrid = 51", "vrid = 52");
    assert_problem(
        &format!("{api}{GROUP}vips = [\"web\"]\n{second}vips = [\"api\"]\n"),
        "test.toml:33: election[1].vips[0]: VIP \"api\" follows election[1] but VIP \"web\" at the same address 203.0.113.10 follows election[0]: every VIP at one address follows the same election",
    );
}

#[test]
fn at_most_255_elections() {
    let groups: String = (0..256)
        .map(|n| format!("[[election]]\nname = \"g{n}\"\ninterface = \"eth{}\"\nvrid = {}\naddresses = [\"10.0.0.1\"]\n", n / 200, n % 200 + 1))
        .collect();
    let problems = problems(&format!("{BASE}{groups}"));
    assert!(problems.iter().any(|problem| problem.ends_with("election[255]: at most 255 elections, got 256")), "{problems:#?}");
}

#[test]
fn names_and_vrids_are_unique() {
    assert_problem(&format!("{GROUP}{}", GROUP.replace("vrid = 51", "vrid = 52")), "test.toml:20: election[1].name: duplicate election name \"edge\" (also election[0])");
    assert_problem(
        &format!("{GROUP}{}", GROUP.replace("\"edge\"", "\"other\"")),
        "test.toml:22: election[1].vrid: VRID 51 on eth1 is already election[0] for this address family",
    );
    // The same VRID for the other family is another group (RFC 9568 §7.3).
    let v6 = GROUP.replace("\"edge\"", "\"edge6\"").replace("[\"10.0.0.1\"]", "[\"fe80::1\"]");
    assert!(parse(&format!("{BASE}{GROUP}{v6}"), "test.toml").is_ok());
}

#[test]
fn tracks_name_one_thing() {
    assert_problem(
        &format!("{GROUP}[[election.track]]\ninterface = \"eth2\"\nbackends_up = \"50%\"\n"),
        "test.toml:19: election[0].track[0]: needs exactly one of `interface`, `address` (with `probe`) or `backends_up`",
    );
    assert_problem(
        &format!("{GROUP}[[election.track]]\nbackends_up = \"150%\"\n"),
        "test.toml:20: election[0].track[0].backends_up: must be a share such as \"50%\" (1% to 100%), got \"150%\"",
    );
    assert_problem(
        &format!("{GROUP}[[election.track]]\ninterface = \"eth2\"\nweight = -300\n"),
        "test.toml:21: election[0].track[0].weight: must be between -254 and 254 (0: fault), got -300",
    );
    assert_problem(
        &format!("{GROUP}[[election.track]]\nprobe = {{ kind = \"icmp\" }}\n"),
        "test.toml:20: election[0].track[0].probe: goes with `address`: the address to probe",
    );
    assert_problem(&format!("{GROUP}[[election.track]]\nfoo = 1\n"), "test.toml:20: election[0].track[0].foo: unknown field `foo`, expected one of `interface`, `address`, `probe`, `backends_up`, `weight`");
}

#[test]
fn announce_defaults_and_rules() {
    let config = parse(BASE, "test.toml").unwrap();
    assert_eq!(config.announce, Announce::default());
    assert!(!config.announce.enabled && config.vips[0].announce);
    // The default rejoin delay: (rise + 1) intervals with jitter of the slowest backend.
    let timing = config.vips[0].backends[0].probe.timing;
    assert_eq!(config.rejoin_delay(), (timing.interval + timing.jitter) * (timing.rise + 1));
    let text = format!("{BASE}[announce]\nenabled = true\ntable = 200\nprotocol = 99\nwithdraw_grace = \"2s\"\nrejoin_delay = \"750ms\"\n");
    let config = parse(&text, "test.toml").unwrap();
    let expected = Announce { enabled: true, table: 200, protocol: 99, withdraw_grace: Duration::from_secs(2), rejoin_delay: Some(Duration::from_millis(750)) };
    assert_eq!(config.announce, expected);
    assert_eq!(config.rejoin_delay(), Duration::from_millis(750));
    assert_problem("[announce]\nrejoin_delay = \"11m\"\n", "test.toml:15: announce.rejoin_delay: at most 10m, got 11m");
    for table in [0, 253, 254, 255] {
        assert_problem(
            &format!("[announce]\ntable = {table}\n"),
            &format!("test.toml:15: announce.table: must be a table of its own: 1 to 4294967295 except 253, 254 and 255, got {table}"),
        );
    }
    assert_problem("[announce]\nprotocol = 2\n", "test.toml:15: announce.protocol: must be a route protocol number from 5 to 254 (0-4 are the kernel's), got 2");
    let off = BASE.replace("port = 80\n", "port = 80\nannounce = false\n");
    assert!(!parse(&off, "test.toml").unwrap().vips[0].announce);
}

/// Three lines of flow sync between this node and one peer (lines 20 to 22 after a group's
/// `vips` line).
const FLOW_SYNC: &str = "\
[flow_sync]
listen = \"10.0.0.2:7946\"
peers = [\"10.0.0.3:7946\"]
";

#[test]
fn flow_sync_parses_with_its_default_interval() {
    let config = parse(&format!("{BASE}{GROUP}vips = [\"web\"]\n{FLOW_SYNC}"), "test.toml").unwrap();
    let sync = config.flow_sync.unwrap();
    assert_eq!(sync.listen, "10.0.0.2:7946".parse().unwrap());
    assert_eq!(sync.peers, vec!["10.0.0.3:7946".parse().unwrap()]);
    assert_eq!(sync.interval, Duration::from_secs(1));
    assert_eq!(sync.idle_timeout, Duration::from_secs(60));
    assert!(parse(&format!("{BASE}{GROUP}"), "test.toml").unwrap().flow_sync.is_none());
}

#[test]
fn flow_sync_refuses_what_cannot_work() {
    let with = |text: &str| format!("{GROUP}vips = [\"web\"]\n{text}");
    assert_problem(&with("[flow_sync]\n"), "test.toml:20: flow_sync.listen: required: the address and UDP port to receive on, such as \"10.0.0.1:7946\"");
    assert_problem(&with("[flow_sync]\n"), "test.toml:20: flow_sync.peers: at least one peer (another load balancer's flow_sync.listen)");
    assert_problem(
        &with("[flow_sync]\nlisten = \"10.0.0.2\"\npeers = [\"10.0.0.3:7946\"]\n"),
        "test.toml:21: flow_sync.listen: expected an address and port such as \"10.0.0.1:7946\", got \"10.0.0.2\"",
    );
    assert_problem(
        &with("[flow_sync]\nlisten = \"0.0.0.0:7946\"\npeers = [\"10.0.0.3:7946\"]\n"),
        "test.toml:21: flow_sync.listen: must be one unicast address with a port, got \"0.0.0.0:7946\"",
    );
    assert_problem(
        &with("[flow_sync]\nlisten = \"10.0.0.2:7946\"\npeers = [\"[2001:db8::3]:7946\"]\n"),
        "test.toml:22: flow_sync.peers[0]: [2001:db8::3]:7946 is not of flow_sync.listen's family (10.0.0.2:7946)",
    );
    assert_problem(
        &with("[flow_sync]\nlisten = \"10.0.0.2:7946\"\npeers = [\"10.0.0.2:7946\"]\n"),
        "test.toml:22: flow_sync.peers[0]: 10.0.0.2:7946 is this node's own flow_sync.listen",
    );
    assert_problem(
        &with("[flow_sync]\nlisten = \"10.0.0.2:7946\"\npeers = [\"10.0.0.3:7946\", \"10.0.0.3:7946\"]\n"),
        "test.toml:22: flow_sync.peers[1]: 10.0.0.3:7946 is listed twice",
    );
    assert_problem(&with(&format!("{FLOW_SYNC}interval = \"5ms\"\n")), "test.toml:23: flow_sync.interval: must be from 10ms to 60s, got 5ms");
    assert_problem(&with(&format!("{FLOW_SYNC}idle_timeout = \"2h\"\n")), "test.toml:23: flow_sync.idle_timeout: must be from 1s to 1h, got 2h");
    assert_problem(FLOW_SYNC, "test.toml:14: flow_sync: needs [[election]] groups: it sends the flows of their VIPs from the master to the other nodes");
    assert_problem(&with("[flow_sync]\nport = 1\n"), "test.toml:21: flow_sync.port: unknown field `port`, expected one of `listen`, `peers`, `interval`, `idle_timeout`");
}
