//! The inspection commands run as the binary against a private pinned instance: the data plane
//! is built in-process through the real loader and map writer, `state.json` and `events.jsonl`
//! are written as the daemon writes them, and the outputs are compared with the maps and with
//! the program's own choices (`test_run`). Needs root (BPF); skips otherwise.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr},
    os::unix::net::UnixListener,
    process::Output,
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions};
use failover_common::maps::*;
use failover_ctl::{
    address::to_words,
    daemon::status::{
        BackendStatus, Event, FailoverTimings, InterfaceStatus, ProbeStatus, Request, Response, Status, VipStatus,
    },
    loader::{Dataplane, LoadOptions},
    maglev::{self, MaglevBackend},
    maps::VipSettings,
};
use pinned::PinnedInstance;
use serde_json::Value;

#[path = "support/pinned.rs"]
mod pinned;

const OPTIONS: LoadOptions = LoadOptions { table_pool_slots: 4096, flow_entries: 1024 };
const TABLE_SIZE: u32 = 251;
const INSTANCE: &str = "lab";
const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x01];
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0x4e, 0, 0, 0, 0xfe];
const WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const API: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// True when the test may pin BPF programs; skips without root (fails in CI).
fn root() -> bool {
    netlab::prerequisite::root("loads and pins BPF programs")
}

/// Private pin and runtime roots; everything is removed on drop (also when a test panics).
struct Instance(PinnedInstance);

impl std::ops::Deref for Instance {
    type Target = PinnedInstance;
    fn deref(&self) -> &PinnedInstance {
        &self.0
    }
}

impl Instance {
    fn new() -> Self {
        Self(PinnedInstance::new("inspect", INSTANCE))
    }

    /// Runs `failover-ctl --instance lab ARGS` against this instance's roots.
    fn ctl(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run failover-ctl")
    }

    /// Runs a command that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.ctl(args);
        assert!(
            output.status.success(),
            "failover-ctl {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{args:?}: not JSON ({error}):\n{text}"))
    }
}


fn ip(address: Ipv4Addr) -> IpAddr {
    IpAddr::V4(address)
}

fn backend_address(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, n)
}

fn vip_key(address: Ipv4Addr, port: u16, protocol: u8) -> VipKey {
    let (words, family) = to_words(ip(address));
    VipKey { address: words, port: port.to_be(), protocol, family }
}

/// One backend of the fixture: (id, address, weight, health bit, in the table).
struct Member {
    id: u32,
    address: Ipv4Addr,
    weight: u32,
    health: u32,
    serving: bool,
}

/// The fixture: `web` (203.0.113.10:80/tcp, vip id 1) with ids 10 and 11 up (weights 100 and
/// 50, in the table) and 12 draining (not in the table); `api` (203.0.113.11:8080/tcp, vip id 2)
/// with 20 up and 21 down, both in the table. Flow tracking is on for both.
struct Fixture {
    instance: Instance,
    dataplane: Dataplane,
    web: Vec<Member>,
    api: Vec<Member>,
}

fn members_web() -> Vec<Member> {
    vec![
        Member { id: 10, address: backend_address(101), weight: 100, health: HEALTH_UP, serving: true },
        Member { id: 11, address: backend_address(102), weight: 50, health: HEALTH_UP, serving: true },
        Member { id: 12, address: backend_address(103), weight: 100, health: HEALTH_DRAINING, serving: false },
    ]
}

fn members_api() -> Vec<Member> {
    vec![
        Member { id: 20, address: backend_address(201), weight: 1, health: HEALTH_UP, serving: true },
        Member { id: 21, address: backend_address(202), weight: 1, health: HEALTH_DOWN, serving: true },
    ]
}

fn publish(dataplane: &mut Dataplane, key: VipKey, vip_id: u32, members: &[Member]) {
    for member in members {
        let (address, family) = to_words(ip(member.address));
        let backend = Backend { address, vip_id, family, _padding: [0; 3] };
        dataplane.writer.set_backend(member.id, backend, member.health).unwrap();
    }
    let maglev: Vec<MaglevBackend> = members
        .iter()
        .map(|member| {
            let mut identity = [0u8; 16];
            identity[..4].copy_from_slice(&member.address.octets());
            MaglevBackend { id: member.id, key: identity, weight: if member.serving { member.weight } else { 0 } }
        })
        .collect();
    let table = maglev::build(&maglev, TABLE_SIZE).unwrap();
    dataplane.writer.publish_vip(key, VipSettings { vip_id, flags: VIP_OWNED }, &table).unwrap();
}

fn vip_status(name: &str, address: Ipv4Addr, port: u16, vip_id: u32, members: &[Member]) -> VipStatus {
    VipStatus {
        name: name.into(),
        address: address.to_string(),
        port,
        protocol: "tcp".into(),
        vip_id,
        table_size: TABLE_SIZE,
        owned: true,
        all_down: "drop".into(),
        hash: "five_tuple".into(),
        published_at: 1_795_328_000_000,
        table_digest: String::new(),
        election: None,
        announced: false,
        announce_reason: String::new(),
        announced_since: 0,
        backends: members
            .iter()
            .map(|member| BackendStatus {
                id: member.id,
                address: member.address.to_string(),
                weight: member.weight as u16,
                tier: "primary".into(),
                admin: if member.health == HEALTH_DRAINING { "drained" } else { "enabled" }.into(),
                health: if member.health == HEALTH_DOWN { "down" } else { "up" }.into(),
                serving: member.serving,
                probe: "tcp".into(),
                last_probe: Some(ProbeStatus {
                    at: 1_795_328_500_000,
                    success: member.health != HEALTH_DOWN,
                    latency_us: 1_250,
                    detail: if member.health == HEALTH_DOWN { "connection refused" } else { "" }.into(),
                }),
                probes: 10,
                probe_failures: 0,
            })
            .collect(),
    }
}

fn events() -> Vec<Event> {
    vec![
        Event {
            at: 1_795_328_000_000,
            kind: "started".into(),
            detail: "loaded a new data plane".into(),
            ..Event::default()
        },
        Event {
            at: 1_795_328_523_123,
            kind: "failover".into(),
            vip: Some("api".into()),
            backend: Some("192.0.2.202".into()),
            detail: "down after 3 failed probes".into(),
            timings: Some(FailoverTimings {
                probe_at: 1_795_328_523_100,
                to: "down".into(),
                health_written_us: 85,
                table_published_us: 1_200,
                table: "built".into(),
            }),
        },
        Event {
            at: 1_795_328_600_000,
            kind: "drain".into(),
            vip: Some("web".into()),
            backend: Some("192.0.2.103".into()),
            detail: "drained by the operator".into(),
            timings: None,
        },
    ]
}

impl Fixture {
    /// The pinned data plane, with or without the daemon's runtime files.
    fn new(runtime_files: bool) -> Self {
        let instance = Instance::new();
        let mut dataplane = Dataplane::create_pinned(&instance.paths, OPTIONS).expect("create the pinned data plane");
        let config = Config {
            next_hop_mac: NEXT_HOP_MAC,
            interface_mac: LB_MAC,
            mtu: 1500,
            source_v4_base: u32::from_ne_bytes([192, 0, 2, 0]),
            udp_idle_timeout_ns: 30_000_000_000,
            ..Config::default()
        };
        dataplane.writer.set_config(&config).unwrap();
        let (web, api) = (members_web(), members_api());
        publish(&mut dataplane, vip_key(WEB, 80, PROTOCOL_TCP), 1, &web);
        publish(&mut dataplane, vip_key(API, 8080, PROTOCOL_TCP), 2, &api);
        if runtime_files {
            let status = Status {
                instance: INSTANCE.into(),
                // This test process: alive, but not a failover-ctl daemon.
                pid: std::process::id(),
                started_at: 1_795_328_000_000,
                config_path: "/etc/failover/lab.toml".into(),
                config_loaded_at: 1_795_328_000_000,
                adopted: false,
                interfaces: vec![InterfaceStatus {
                    name: "eth-lab".into(),
                    ifindex: 7,
                    mac: "02:1b:00:00:00:01".into(),
                    mode: "native".into(),
                }],
                node_drained: false,
                withdraw_grace_ms: 0,
                withdrawals: 0,
                flow_sync: None,
                elections: Vec::new(),
                next_hop_mac: "02:4e:00:00:00:fe".into(),
                vips: vec![vip_status("web", WEB, 80, 1, &web), vip_status("api", API, 8080, 2, &api)],
                failovers: Default::default(),
                updated_at: 1_795_328_600_000,
            };
            std::fs::write(instance.paths.state(), serde_json::to_vec_pretty(&status).unwrap()).unwrap();
            let lines: String = events().iter().map(|event| serde_json::to_string(event).unwrap() + "\n").collect();
            std::fs::write(instance.paths.events(), lines).unwrap();
        }
        Self { instance, dataplane, web, api }
    }

    /// Runs a TCP SYN of the flow through the program in-process: (action, outer destination).
    fn run(&self, source_port: u16, vip: Ipv4Addr, port: u16) -> (u32, Option<Ipv4Addr>) {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 9], LB_MAC)
            .ipv4(CLIENT.octets(), vip.octets(), 64)
            .tcp(source_port, port, 1, 64_240)
            .syn()
            .write(&mut frame, &[])
            .unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let program = self.dataplane.program().unwrap();
        let result = program
            .test_run(TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..TestRunOptions::default() })
            .unwrap();
        out.truncate(result.data_size_out as usize);
        let outer = (result.return_value == 3 && out.len() >= 34 && out[23] == 4)
            .then(|| Ipv4Addr::new(out[30], out[31], out[32], out[33]));
        (result.return_value, outer)
    }

    fn id_of(&self, address: Ipv4Addr) -> u32 {
        self.web.iter().chain(&self.api).find(|member| member.address == address).unwrap().id
    }
}

fn array<'a>(value: &'a Value, field: &str) -> &'a Vec<Value> {
    value[field].as_array().unwrap_or_else(|| panic!("{field} is not an array in {value:#}"))
}

#[test]
fn vips_backends_and_table_match_the_maps() {
    if !root() {
        return;
    }
    let fixture = Fixture::new(true);
    let instance = &fixture.instance;

    let vips = instance.json(&["vips"]);
    assert_eq!(vips["state_file"], "ok");
    let list = array(&vips, "vips");
    assert_eq!(list.len(), 2, "{vips:#}");
    let web = list.iter().find(|vip| vip["name"] == "web").expect("web listed");
    assert_eq!(web["vip_id"], 1);
    assert_eq!(web["table_size"], TABLE_SIZE);
    assert_eq!(web["address"], "203.0.113.10");
    assert_eq!(web["port"], 80);
    assert_eq!(web["protocol"], "tcp");
    assert_eq!(web["owned"], true);
    assert_eq!((web["backends_up"].as_u64(), web["backends_total"].as_u64()), (Some(2), Some(3)));
    let text = instance.ok(&["vips"]);
    assert!(text.contains("web") && text.contains("203.0.113.10:80/tcp") && text.contains("2/3"), "{text}");

    // The table: the command's counts are the real table's, and sum to its size.
    let table = instance.json(&["table", "web"]);
    let real = fixture.dataplane.writer.table(&vip_key(WEB, 80, PROTOCOL_TCP)).unwrap();
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for id in &real {
        *counts.entry(u64::from(*id)).or_default() += 1;
    }
    let rows = array(&table, "backends");
    let shown: BTreeMap<u64, u64> = rows
        .iter()
        .filter(|row| row["slots"].as_u64().unwrap() > 0)
        .map(|row| (row["id"].as_u64().unwrap(), row["slots"].as_u64().unwrap()))
        .collect();
    assert_eq!(shown, counts, "{table:#}");
    assert_eq!(rows.iter().map(|row| row["slots"].as_u64().unwrap()).sum::<u64>(), u64::from(TABLE_SIZE));
    assert_eq!(table["table_size"], TABLE_SIZE);
    let draining = rows.iter().find(|row| row["id"] == 12).expect("the draining backend is listed");
    assert_eq!((draining["slots"].as_u64(), draining["ideal_percent"].as_f64()), (Some(0), Some(0.0)));
    let heavy = rows.iter().find(|row| row["id"] == 10).unwrap();
    assert!((heavy["ideal_percent"].as_f64().unwrap() - 66.67).abs() < 0.01, "{heavy}");
    let deviation = heavy["share_percent"].as_f64().unwrap() - heavy["ideal_percent"].as_f64().unwrap();
    assert!((heavy["deviation_points"].as_f64().unwrap() - deviation).abs() < 0.02, "{heavy}");
    // By vip id and by ADDRESS:PORT/PROTO too.
    assert_eq!(instance.json(&["table", "1"])["backends"], table["backends"]);
    assert_eq!(instance.json(&["table", "203.0.113.10:80/tcp"])["backends"], table["backends"]);
    let text = instance.ok(&["table", "web"]);
    assert!(text.contains("251 slots") && text.contains("66.67%"), "{text}");
    // The digest over slot -> backend address, the same in `table` and `vips`.
    let addresses: BTreeMap<u32, IpAddr> =
        members_web().into_iter().chain(members_api()).map(|member| (member.id, ip(member.address))).collect();
    let digest = maglev::table_digest(&real, |id| addresses.get(&id).copied());
    assert_eq!(table["digest"], digest.as_str(), "{table:#}");
    assert_eq!(web["table_digest"], digest.as_str());
    assert!(text.contains(&format!("digest {digest}")), "{text}");
    assert!(instance.ok(&["vips"]).contains(&digest), "the vips view shows the digest");

    // Backends: the health bits from the map, the rest from the state file.
    let backends = instance.json(&["backends"]);
    let rows = array(&backends, "backends");
    assert_eq!(rows.len(), 5, "{backends:#}");
    let bits: BTreeMap<u64, &str> =
        rows.iter().map(|row| (row["id"].as_u64().unwrap(), row["health_bit"].as_str().unwrap())).collect();
    assert_eq!(bits, BTreeMap::from([(10, "up"), (11, "up"), (12, "draining"), (20, "up"), (21, "down")]));
    let drained = rows.iter().find(|row| row["id"] == 12).unwrap();
    assert_eq!((drained["admin"].as_str(), drained["serving"].as_bool()), (Some("drained"), Some(false)));
    assert_eq!(drained["vip"], "web");
    assert_eq!(drained["address"], "192.0.2.103");
    assert_eq!(drained["last_probe"]["latency_us"], 1_250);
    let only_api = instance.json(&["backends", "api"]);
    let ids: Vec<u64> = array(&only_api, "backends").iter().map(|row| row["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [20, 21]);
    let text = instance.ok(&["backends"]);
    assert!(text.contains("draining") && text.contains("connection refused"), "{text}");

    // An unknown VIP is a clear error.
    let output = instance.ctl(&["table", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("unknown VIP \"nope\"") && error.contains("web"), "{error}");
    // A bad address too.
    let output = instance.ctl(&["flows", "--backend", "not-an-address"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not an IP address"));
}

#[test]
fn which_names_the_backend_the_program_picks() {
    if !root() {
        return;
    }
    let fixture = Fixture::new(true);
    let instance = &fixture.instance;

    // api: 21 is down, so every flow goes to 20, whatever its slot.
    for port in [40_000u16, 40_001, 40_002, 40_003, 51_234] {
        let source = format!("{CLIENT}:{port}");
        let which = instance.json(&["which", &source, "203.0.113.11:8080", "tcp"]);
        assert_eq!(which["verdict"], "XDP_TX", "{which:#}");
        assert_eq!(which["backend"]["id"], 20, "{which:#}");
        assert_eq!(which["backend"]["address"], "192.0.2.201");
        assert_eq!(which["new_flow"]["backend"]["id"], 20);
        assert_eq!(which["tracked"], Value::Null);
        assert_eq!(which["flow_entry_removed"], true);
        assert_eq!(which["mismatch"], Value::Null);
    }
    // The test runs left no flow behind.
    assert_eq!(instance.json(&["flows"])["total"], 0);

    // web: two live backends; `which` must agree with the program run here, for new flows
    // and, once the run here tracked them, for existing ones.
    let mut seen = BTreeMap::new();
    for port in 41_000u16..41_012 {
        let source = format!("{CLIENT}:{port}");
        let before = instance.json(&["which", &source, "203.0.113.10:80", "tcp"]);
        let (action, outer) = fixture.run(port, WEB, 80);
        assert_eq!(action, 3, "XDP_TX");
        let id = fixture.id_of(outer.unwrap());
        assert_eq!(before["backend"]["id"], id, "new flow {source}: {before:#}");
        assert_eq!(before["new_flow"]["backend"]["id"], id);
        *seen.entry(id).or_insert(0) += 1;
        let after = instance.json(&["which", &source, "203.0.113.10:80", "tcp"]);
        assert_eq!(after["backend"]["id"], id, "tracked flow {source}: {after:#}");
        assert_eq!(after["tracked"]["backend_id"], id);
        assert_eq!(after["tracked"]["decides"], true);
        assert_eq!(after["flow_entry_removed"], false);
    }
    assert!(!seen.contains_key(&12), "the draining backend takes no new flows");

    // The flows tracked by the runs here, and the filters.
    let flows = instance.json(&["flows"]);
    assert_eq!(flows["total"], 12, "{flows:#}");
    let first = &array(&flows, "flows")[0];
    assert_eq!(first["vip_name"], "web");
    assert_eq!(first["state"], "live");
    assert!(first["age_ms"].as_u64().unwrap() < 60_000, "{first}");
    let to_ten = instance.json(&["flows", "--vip", "web", "--backend", "192.0.2.101"]);
    assert_eq!(to_ten["matching"], seen.get(&10).copied().unwrap_or(0), "{to_ten:#}");
    assert_eq!(instance.json(&["flows", "--vip", "api"])["matching"], 0);
    assert_eq!(instance.json(&["flows", "--limit", "3"])["shown"], 3);

    // Not a VIP: the kernel gets it.
    let other = instance.json(&["which", "198.51.100.7:1", "203.0.113.99:80", "tcp"]);
    assert_eq!((other["verdict"].as_str(), other["vip"].is_null()), (Some("XDP_PASS"), true), "{other:#}");
    let text = instance.ok(&["which", "198.51.100.7:40000", "203.0.113.11:8080", "tcp"]);
    assert!(text.contains("XDP_TX to backend 192.0.2.201 (id 20)"), "{text}");
}

#[test]
fn events_and_status_without_a_daemon() {
    if !root() {
        return;
    }
    let fixture = Fixture::new(true);
    let instance = &fixture.instance;

    let events = instance.json(&["events"]);
    assert_eq!(events["total"], 3);
    let list = array(&events, "events");
    assert_eq!(list.len(), 3);
    assert_eq!(list[1]["kind"], "failover");
    assert_eq!(list[1]["time"], "2026-11-22T06:22:03.123Z");
    assert_eq!(list[1]["timings"]["table_published_us"], 1_200);
    assert_eq!(list[1]["vip"], "api");
    let last_two = instance.json(&["events", "--limit", "2"]);
    let kinds: Vec<&str> = array(&last_two, "events").iter().map(|event| event["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["failover", "drain"]);
    let text = instance.ok(&["events"]);
    assert!(text.contains("2026-11-22T06:22:03.123Z") && text.contains("table +1.2ms"), "{text}");

    let status = instance.json(&["status"]);
    assert_eq!(status["daemon"]["running"], false, "{status:#}");
    assert_eq!(status["instance"], INSTANCE);
    assert_eq!(status["vips"], 2);
    assert_eq!(status["next_hop_mac"], "02:4e:00:00:00:fe");
    let backends = &status["backends"];
    assert_eq!((backends["total"].as_u64(), backends["up"].as_u64()), (Some(5), Some(3)));
    assert_eq!((backends["down"].as_u64(), backends["draining"].as_u64()), (Some(1), Some(1)));
    assert_eq!(status["interfaces"][0]["name"], "eth-lab");
    assert_eq!(status["last_event"]["kind"], "drain");
    let text = instance.ok(&["status"]);
    assert!(text.contains("not running"), "{text}");

    // A daemon whose control socket answers is running, and its answer is the status shown.
    let listener = UnixListener::bind(instance.paths.control_socket()).unwrap();
    let answering = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&request).unwrap(), Request::Status);
        let status = Status { instance: INSTANCE.into(), pid: 4242, adopted: true, ..Status::default() };
        let response = Response { ok: true, message: "ok".into(), status: Some(status) };
        let mut line = serde_json::to_string(&response).unwrap();
        line.push('\n');
        (&stream).write_all(line.as_bytes()).unwrap();
        listener
    });
    let status = instance.json(&["status"]);
    let listener = answering.join().unwrap();
    assert_eq!(status["daemon"]["running"], true, "{status:#}");
    assert_eq!((status["daemon"]["pid"].as_u64(), status["adopted"].as_bool()), (Some(4242), Some(true)));

    // One that accepts but never answers does not hold the command for long.
    let silent = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let started = Instant::now();
    let status = instance.json(&["status"]);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(status["daemon"]["running"], false, "{status:#}");
    assert!(status["daemon"]["detail"].as_str().unwrap().contains("did not answer"), "{status:#}");
    drop(silent.join());
}

#[test]
fn without_the_state_file_the_maps_alone_are_shown() {
    if !root() {
        return;
    }
    let fixture = Fixture::new(false);
    let instance = &fixture.instance;
    let output = instance.ctl(&["vips"]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("state file") && stderr.contains("missing"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("#1") && stdout.contains("203.0.113.10:80/tcp"), "{stdout}");
    let vips = instance.json(&["vips"]);
    assert_eq!(vips["state_file"], "missing");
    assert_eq!(vips["vips"][0]["name"], Value::Null);
    assert_eq!(instance.json(&["table", "1"])["table_size"], TABLE_SIZE);
    let status = instance.json(&["status"]);
    assert_eq!((status["state_file"].as_str(), status["daemon"]["running"].as_bool()), (Some("missing"), Some(false)));
    assert_eq!(instance.json(&["events"])["total"], 0);
    // Names need the state file; the error says what to give instead.
    let output = instance.ctl(&["table", "web"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ADDRESS:PORT/PROTO"));
}

#[test]
fn stats_watch_prints_count_times_with_rates() {
    if !root() {
        return;
    }
    let fixture = Fixture::new(true);
    let instance = &fixture.instance;
    fixture.run(42_000, API, 8080);

    let once = instance.json(&["stats"]);
    let forward = array(&once, "reasons").iter().find(|row| row["reason"] == "tx_forward").unwrap().clone();
    assert_eq!(forward["packets"], 1, "{once:#}");
    let api = array(&once, "vips").iter().find(|row| row["vip"]["name"] == "api").unwrap().clone();
    assert_eq!(api["packets"], 1);
    let twenty = array(&once, "backends").iter().find(|row| row["id"] == 20).unwrap().clone();
    assert_eq!(twenty["packets"], 1);

    let started = Instant::now();
    let text = instance.ok(&["stats", "--watch", "0.2", "--count", "2"]);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(text.matches("== ").count(), 2, "{text}");
    assert_eq!(text.matches("tx_forward").count(), 2, "{text}");
    assert!(text.contains("PKT/S"), "the second print has rates:\n{text}");

    let lines = instance.ok(&["--json", "stats", "--watch", "0.2", "--count", "2"]);
    let samples: Vec<Value> = lines.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0]["interval_seconds"], Value::Null);
    assert!(samples[1]["interval_seconds"].as_f64().unwrap() >= 0.15);
    assert_eq!(samples[1]["reasons"][6]["packets_per_second"], 0.0);
}

#[test]
fn a_missing_instance_is_a_clear_error() {
    let instance = Instance::new();
    for command in [&["status"][..], &["vips"], &["backends"], &["table", "web"], &["flows"], &["stats"], &["events"]] {
        let output = instance.ctl(command);
        assert_eq!(output.status.code(), Some(1), "{command:?}");
        let error = String::from_utf8_lossy(&output.stderr);
        let expected = format!(
            "instance lab has no pinned data plane under {}: is it running, or was it torn down?",
            instance.paths.pin_dir.display()
        );
        assert!(error.contains(&expected), "{command:?}: {error}");
        assert!(!error.contains("panicked"), "{error}");
    }
    let output = instance.ctl(&["which", "198.51.100.7:1", "203.0.113.10:80", "tcp"]);
    assert_eq!(output.status.code(), Some(1));
}
