//! The configuration decoder under fuzzing: mutated and arbitrary files never panic the parser,
//! every refusal names a file and a line, and a reload of a refused file changes nothing in the
//! maps of a running controller (read back through the pins, not from the controller's memory).

use std::{collections::BTreeMap, net::IpAddr};

use failover_common::maps::{Backend, Config as DataplaneConfig, VipKey, VipMeta};
use failover_ctl::{
    address::from_words,
    config::{self, ConfigError},
    daemon::{
        controller::{Controller, Message},
        status::Request,
    },
    paths::InstancePaths,
    pin::PinnedView,
};
use pinned::PinnedInstance;
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};

#[path = "support/pinned.rs"]
mod pinned;

const FILE: &str = "fuzz.toml";

/// A valid configuration using most keys: two VIPs of each family, weights, a backup tier, a
/// maintenance flag, several probe kinds. Probe targets are documentation addresses: the reload
/// test runs in a network namespace of its own with no route anywhere.
const BASE: &str = r#"instance = "fuzz"
interfaces = ["lo"]
xdp_mode = "generic"
metrics_address = "127.0.0.1:9650"
[next_hop]
mac = "02:00:00:00:00:02"
[tunnel]
source_v4 = "192.0.2.128/25"
source_v6 = "2001:db8:ffff::/64"
mtu = 1500
[flows]
udp_idle_timeout = "30s"
insert_rate = 20000
insert_burst = 40000
capacity = 4096
[probe_defaults]
interval = "1m"
timeout = "1s"
rise = 2
fall = 3
jitter = "10%"
[[vip]]
name = "web"
address = "203.0.113.10"
port = 443
protocol = "tcp"
table_size = 251
hash = "five_tuple"
all_down = "drop"
owned = true
[[vip.backend]]
address = "198.51.100.11"
weight = 2
tier = "primary"
probe = { kind = "http", path = "/healthz", expect_status = 200, interval = "1m", timeout = "2s" }
[[vip.backend]]
address = "198.51.100.12"
probe = { kind = "tcp", port = 443 }
[[vip.backend]]
address = "198.51.100.13"
tier = "backup"
maintenance = false
[[vip]]
name = "dns"
address = "203.0.113.53"
port = 53
protocol = "udp"
table_size = 13
hash = "source"
all_down = "pass"
[[vip.backend]]
address = "198.51.100.21"
probe = { kind = "udp", port = 53, send = "ping", expect = "pong" }
[[vip.backend]]
address = "198.51.100.22"
maintenance = true
probe = { kind = "icmp" }
[[vip]]
name = "v6"
address = "2001:db8::80"
protocol = "tcp"
table_size = 31
[[vip.backend]]
address = "2001:db8:1::1"
probe = { kind = "redis", port = 6379, role = "master" }
[[vip.backend]]
address = "2001:db8:1::2"
probe = { kind = "postgres", port = 5432, user = "probe", database = "postgres", role = "primary" }
"#;

/// Values a mutation puts where a value was: edge numbers, wrong types, bad addresses, bad
/// durations, and valid values of other keys.
const VALUES: &[&str] = &[
    "0", "-1", "1", "2", "13", "65535", "65536", "4294967296", "1048573", "1048583", "9216", "1279", "1e9",
    "\"\"", "\"x\"", "true", "false", "[]", "[\"lo\", \"lo\"]", "{}", "{ kind = \"exec\" }", "\"1.2.3.4\"", "\"::\"",
    "\"999.1.1.1\"", "\"203.0.113.10\"", "\"2001:db8::80\"", "\"10.0.0.0/33\"", "\"192.0.2.0/24\"", "\"10ms\"",
    "\"0s\"", "\"-5s\"", "\"1h\"", "\"100%\"", "\"250%\"", "\"tcp\"", "\"udp\"", "\"sctp\"", "\"backup\"",
    "\"source\"", "\"pass\"", "\"native\"", "\"02:00:00:00:00:zz\"", "\"web\"", "\"dns\"", "\"UPPER\"",
    "\"a-very-long-instance-name-over-thirty-two-chars\"",
];

/// Lines a mutation inserts: table headers, keys that repeat or conflict, garbage.
const LINES: &[&str] = &[
    "[[vip]]", "[[vip.backend]]", "[vip]", "[next_hop]", "[tunnel]", "[flows]", "name = \"web\"",
    "address = \"203.0.113.10\"", "address = \"198.51.100.11\"", "protocol = \"udp\"", "port = 0",
    "weight = 0", "table_size = 4", "mac = \"02:00:00:00:00:03\"", "unknown_key = 1", "= 3", "[[", "\"",
    "instance = \"other\"", "probe = { kind = \"tcp\", port = 70000 }", "interfaces = []",
];

/// One edit of the text, chosen by `kind`, placed by `a` and `b` (taken modulo the sizes).
type Edit = (u8, u32, u32);

/// Applies `edits` to `base` line by line (and byte by byte for the byte edits).
fn mutate(base: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
    for &(kind, a, b) in edits {
        let count = lines.len().max(1);
        let at = a as usize % count;
        match kind % 8 {
            0 if !lines.is_empty() => {
                lines.remove(at);
            }
            1 if !lines.is_empty() => {
                let line = lines[at].clone();
                lines.insert(b as usize % count, line);
            }
            2 if !lines.is_empty() => lines.swap(at, b as usize % count),
            3 if !lines.is_empty() => {
                let value = VALUES[b as usize % VALUES.len()];
                let line = &mut lines[at];
                match line.find('=') {
                    Some(equals) => *line = format!("{} {value}", &line[..=equals]),
                    None => line.push_str(value),
                }
            }
            4 => lines.insert(at.min(lines.len()), LINES[b as usize % LINES.len()].to_owned()),
            5 if !lines.is_empty() => {
                // A byte changed inside a line (kept valid UTF-8: ASCII only).
                let line = &mut lines[at];
                let byte = (b % 95 + 32) as u8 as char;
                let position = (b as usize / 95) % (line.len() + 1);
                let mut text: String = line.chars().take(position).collect();
                text.push(byte);
                text.extend(line.chars().skip(position + 1));
                *line = text;
            }
            6 if !lines.is_empty() => {
                let line = &mut lines[at];
                let keep = b as usize % (line.len() + 1);
                *line = line.chars().take(keep).collect();
            }
            _ => lines.truncate(at),
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// Parses `text`, asserting what every outcome must satisfy: no panic (the caller's property),
/// the same answer twice, and a refusal that names this file and a line of it per problem.
fn parse_checked(text: &str) -> Result<config::Config, ConfigError> {
    let first = config::parse(text, FILE);
    let again = config::parse(text, FILE);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "parsing is deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "parsing is deterministic"),
        _ => panic!("the same text parsed once and was refused once:\n{text}"),
    }
    if let Err(error) = &first {
        let ConfigError::Invalid { problems } = error else {
            panic!("a parse that reads no file cannot fail to read one: {error}");
        };
        assert!(!problems.is_empty(), "a refusal names at least one problem");
        let last_line = text.lines().count() + 1;
        for problem in problems {
            assert_eq!(problem.file, FILE);
            assert!((1..=last_line).contains(&problem.line), "problem line {} outside 1..={last_line}: {problem}", problem.line);
            assert!(problem.to_string().starts_with(&format!("{FILE}:{}: ", problem.line)), "{problem}");
            assert!(!problem.message.is_empty(), "{problem}");
        }
    }
    first
}

#[test]
fn the_base_configuration_is_valid() {
    let config = parse_checked(BASE).expect("the fuzzing base parses");
    assert_eq!(config.vips.len(), 3);
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((any::<u8>(), any::<u32>(), any::<u32>()), 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configurations_never_panic_the_parser(edits in edits()) {
        let _ = parse_checked(&mutate(BASE, &edits));
    }

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in "\\PC{0,400}") {
        let _ = parse_checked(&text);
    }

    #[test]
    fn toml_shaped_noise_never_panics_the_parser(lines in prop::collection::vec("[a-z_\\[\\]\\.]{0,12} ?=? ?[\"0-9a-z:\\./%{}, =\\[\\]-]{0,24}", 0..30)) {
        let _ = parse_checked(&lines.join("\n"));
    }
}

/// What a reload must leave alone, read from the pinned maps by an independent reader.
#[derive(Debug, PartialEq)]
struct MapState {
    vips: Vec<(VipKey, VipMeta)>,
    tables: Vec<Option<Vec<u32>>>,
    backends: Vec<(u32, Backend, u32)>,
    config: Option<DataplaneConfig>,
}

fn map_state(paths: &InstancePaths) -> MapState {
    let view = PinnedView::open(paths).expect("open the pins");
    let vips = view.vips().expect("read VIPS");
    let tables = vips.iter().map(|(key, _)| view.table(key)).collect();
    MapState { vips, tables, backends: view.backends().expect("read BACKENDS"), config: view.config().expect("read CONFIG") }
}

/// What a configuration means in the maps, without what may differ between two publications
/// of it (table regions, and ids of backends and VIPs that were removed and added back):
/// per service, its flags, table size and members (address and health bit).
type Meaning = BTreeMap<VipKey, (u32, u32, Vec<(IpAddr, u32)>)>;

fn meaning(state: &MapState) -> Meaning {
    state
        .vips
        .iter()
        .map(|(key, meta)| {
            let mut members: Vec<(IpAddr, u32)> = state
                .backends
                .iter()
                .filter(|(_, backend, _)| backend.vip_id == meta.vip_id)
                .map(|(_, backend, health)| (from_words(&backend.address, backend.family).expect("a backend address"), *health))
                .collect();
            members.sort();
            (*key, (meta.flags, meta.table_size, members))
        })
        .collect()
}

/// Sends a reload to the state owner and returns its answer.
fn reload(controller: &mut Controller) -> (bool, String) {
    let (sender, mut receiver) = oneshot::channel();
    controller.handle(Message::Control(Request::Reload, sender));
    let response = receiver.try_recv().expect("the controller answers a reload at once");
    (response.ok, response.message)
}

#[test]
fn a_refused_reload_changes_nothing() {
    if !netlab::prerequisite::root("loads BPF programs, pins maps, creates a network namespace") {
        return;
    }
    // Probes of configurations that happen to be valid must reach nothing: this thread (and
    // the runtime threads it starts) moves to a new network namespace with no interface up.
    // SAFETY: unshare has no memory preconditions; it changes only this thread's namespace.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
    let instance = PinnedInstance::new("config-fuzz", "fuzz");
    let config_path = instance.paths.run_dir.join("failover.toml");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (probe_sender, mut probe_receiver) = mpsc::channel(4096);
    runtime.spawn(async move { while probe_receiver.recv().await.is_some() {} });
    let mut controller = instance.start_controller(BASE, &runtime, probe_sender);
    let mut current = map_state(&instance.paths);
    assert_eq!(current.vips.len(), 3, "three services published");
    let original = meaning(&current);

    let seed: u64 = std::env::var("FAILOVER_FUZZ_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(0x5eed_c0f1);
    let mut random = StdRng::seed_from_u64(seed);
    let (mut refused, mut accepted, mut changed) = (0, 0, 0);
    for round in 0..300 {
        let count = random.random_range(1..3);
        let edits: Vec<Edit> = (0..count).map(|_| (random.random(), random.random(), random.random())).collect();
        let text = mutate(BASE, &edits);
        std::fs::write(&config_path, &text).unwrap();
        let (ok, message) = reload(&mut controller);
        if ok {
            // A valid variant was applied (the reader sees the change when it touches the
            // maps); the original must then come back with the same meaning.
            accepted += 1;
            changed += usize::from(map_state(&instance.paths) != current);
            std::fs::write(&config_path, BASE).unwrap();
            let (ok, message) = reload(&mut controller);
            assert!(ok, "round {round} (seed {seed}): reloading the original failed: {message}");
            controller.handle(Message::Tick);
            current = map_state(&instance.paths);
            assert_eq!(meaning(&current), original, "round {round} (seed {seed}): the original after a valid variant:\n{text}");
        } else {
            refused += 1;
            assert!(message.starts_with("reload refused, nothing changed:") || message.starts_with("reload failed"), "{message}");
            assert_eq!(map_state(&instance.paths), current, "round {round} (seed {seed}): refused ({message}) but the maps changed:\n{text}");
        }
    }
    eprintln!("seed {seed}: {refused} files refused, {accepted} accepted ({changed} of them changed the maps)");
    assert!(refused >= 100 && accepted >= 5 && changed > 0, "a useful mix: {refused} refused, {accepted} accepted, {changed} changed the maps");
    controller.handle(Message::Shutdown);
    drop(controller);
    drop(runtime);
}
