//! Ownership groups: VIPs whose flags name a group follow `OWNERSHIP[group]`, so one
//! `Ownership::set` takes over or releases every VIP of the group and the address entries at
//! their addresses — services, ICMP echo, ICMP errors and unusable packets alike. VIPs without
//! a group keep following their own `VIP_OWNED` flag; another group is unaffected.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::{HashMap, Map, MapData};
use etherparse::IpNumber;
use failover_common::{maps::*, stats};
use failover_ctl::{
    loader::{self, Dataplane, LoadOptions},
    maps::VipSettings,
    ownership::{Ownership, OwnershipError},
    paths::InstancePaths,
};
use failover_tests::{craft::*, *};

/// The group of the two VIPs under test, and another one.
const GROUP: u8 = 7;
const OTHER_GROUP: u8 = 9;
const OTHER_GROUP_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 90);
const PORTS4: (u16, u16) = (40000, 80);
const PORTS6: (u16, u16) = (40001, 53);

/// The VIPs of the fixtures, each served by one backend (id = vip_id * 10).
fn install(dataplane: &mut Dataplane) {
    let mut vip = |address: IpAddr, port: u16, protocol: u8, vip_id: u32, flags: u32, backend: IpAddr| {
        let (words, family) = failover_ctl::address::to_words(backend);
        let entry = Backend { address: words, vip_id, family, _padding: [0; 3] };
        dataplane.writer.set_backend(vip_id * 10, entry, HEALTH_UP).unwrap();
        let settings = VipSettings { vip_id, flags };
        dataplane.writer.publish_vip(vip_key(address, port, protocol), settings, &[vip_id * 10; 13]).unwrap();
    };
    // VIP_OWNED on a grouped VIP is ignored: the group decides.
    vip(v4(VIP4), 80, PROTOCOL_TCP, 1, with_vip_group(VIP_OWNED, GROUP), backend4(1));
    vip(v6(VIP6), 53, PROTOCOL_UDP, 2, with_vip_group(0, GROUP), backend6(1));
    vip(v4(OTHER4), 80, PROTOCOL_TCP, 3, VIP_OWNED, backend4(3));
    vip(v6(OTHER6), 80, PROTOCOL_TCP, 4, 0, backend6(4));
    vip(v4(OTHER_GROUP_VIP), 80, PROTOCOL_TCP, 5, with_vip_group(VIP_OWNED, OTHER_GROUP), backend4(5));
}

fn tcp4(destination: Ipv4Addr) -> Vec<u8> {
    packet(Tags::None, v4(CLIENT4), v4(destination), Transport::TcpSyn, PORTS4, b"request")
}

fn udp6() -> Vec<u8> {
    packet(Tags::None, v6(CLIENT6), v6(VIP6), Transport::Udp, PORTS6, b"query")
}

fn echo(client: IpAddr, vip: IpAddr) -> Vec<u8> {
    inbound(Tags::None, &echo_request(ip(client, vip, 57), b"ping"))
}

/// An ICMP error from a router about the backend's reply of the group's flow at `vip`.
fn error_about_flow(vip: IpAddr) -> Vec<u8> {
    let (router, client, kind, protocol, ports) = match vip {
        IpAddr::V4(_) => (v4(ROUTER4), v4(CLIENT4), ErrorKind::FragmentationNeeded, PROTOCOL_TCP, PORTS4),
        IpAddr::V6(_) => (v6(ROUTER6), v6(CLIENT6), ErrorKind::PacketTooBig, PROTOCOL_UDP, PORTS6),
    };
    let quote = reply_quote(ip(vip, client, 64), protocol, (ports.1, ports.0));
    frame(Tags::None, LB_MAC, ROUTER_MAC, &icmp_error(router, vip, kind, &quote))
}

/// An IPv4 fragment (more fragments set) to `vip`:80.
fn fragment(vip: Ipv4Addr) -> Vec<u8> {
    let mut headers = ip(v4(CLIENT4), v4(vip), 64);
    if let etherparse::IpHeaders::Ipv4(header, _) = &mut headers {
        header.more_fragments = true;
        header.protocol = IpNumber::TCP;
    }
    inbound(Tags::None, &transport(headers, PROTOCOL_TCP, PORTS4, b"first fragment"))
}

/// Runs `frame` and asserts the action, the exact output and one count under `reason`.
fn expect(harness: &Harness, case: &str, frame: &[u8], action: u32, expected: &[u8], reason: u32) {
    let before = reasons(harness);
    assert_frame(case, harness.run(frame), action, expected);
    assert_counted_once(case, harness, &before, reason);
}

fn expect_pass(harness: &Harness, case: &str, frame: &[u8], reason: u32) {
    expect(harness, case, frame, XDP_PASS, frame, reason);
}

fn forwarded(frame: &[u8], backend: IpAddr) -> Vec<u8> {
    encapsulated(frame, Tags::None, backend, frame_entropy(frame, Tags::None), &standard_config())
}

/// The frames of the group's two VIPs and their addresses, all passed while not owned.
fn assert_group_released(harness: &Harness, when: &str) {
    let not_owned = stats::PASS_NOT_OWNED;
    expect_pass(harness, &format!("{when}: v4 tcp"), &tcp4(VIP4), not_owned);
    expect_pass(harness, &format!("{when}: v6 udp"), &udp6(), not_owned);
    expect_pass(harness, &format!("{when}: v4 echo"), &echo(v4(CLIENT4), v4(VIP4)), not_owned);
    expect_pass(harness, &format!("{when}: v6 echo"), &echo(v6(CLIENT6), v6(VIP6)), not_owned);
    expect_pass(harness, &format!("{when}: v4 icmp error"), &error_about_flow(v4(VIP4)), not_owned);
    expect_pass(harness, &format!("{when}: v6 icmp error"), &error_about_flow(v6(VIP6)), not_owned);
    expect_pass(harness, &format!("{when}: v4 fragment"), &fragment(VIP4), not_owned);
}

/// VIPs outside the group: the ungrouped ones by their flag, the other group not owned.
fn assert_others_unaffected(harness: &Harness, when: &str) {
    let frame = tcp4(OTHER4);
    let expected = forwarded(&frame, backend4(3));
    expect(harness, &format!("{when}: ungrouped owned VIP"), &frame, XDP_TX, &expected, stats::TX_FORWARD);
    let frame = packet(Tags::None, v6(CLIENT6), v6(OTHER6), Transport::TcpSyn, PORTS4, b"request");
    expect_pass(harness, &format!("{when}: ungrouped VIP not owned"), &frame, stats::PASS_NOT_OWNED);
    expect_pass(harness, &format!("{when}: other group"), &tcp4(OTHER_GROUP_VIP), stats::PASS_NOT_OWNED);
    expect_pass(harness, &format!("{when}: other group's echo"), &echo(v4(CLIENT4), v4(OTHER_GROUP_VIP)), stats::PASS_NOT_OWNED);
}

#[test]
fn one_write_takes_over_and_releases_a_whole_group() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    install(&mut harness.dataplane);
    let ownership = harness.dataplane.ownership().unwrap();
    assert!(!ownership.get(GROUP).unwrap(), "a fresh data plane owns no group");

    assert_group_released(&harness, "before the takeover");
    assert_others_unaffected(&harness, "before the takeover");
    assert_eq!(flow_count(&harness), 1, "only the ungrouped owned VIP tracked a flow");

    // The election task's handle works from its own thread: one write.
    let mut handle = harness.dataplane.ownership().unwrap();
    std::thread::spawn(move || handle.set(GROUP, true).unwrap()).join().unwrap();
    assert!(ownership.get(GROUP).unwrap(), "every handle sees the takeover");
    assert!(!ownership.get(OTHER_GROUP).unwrap());

    let frame = tcp4(VIP4);
    let expected = forwarded(&frame, backend4(1));
    expect(&harness, "owned: v4 tcp", &frame, XDP_TX, &expected, stats::TX_FORWARD);
    let frame = udp6();
    let expected = forwarded(&frame, backend6(1));
    expect(&harness, "owned: v6 udp", &frame, XDP_TX, &expected, stats::TX_FORWARD);
    for (case, client, vip) in [("owned: v4 echo", v4(CLIENT4), v4(VIP4)), ("owned: v6 echo", v6(CLIENT6), v6(VIP6))] {
        let before = reasons(&harness);
        let (action, out) = harness.run(&echo(client, vip));
        assert_eq!(action, XDP_TX, "{case}: answered");
        assert_counted_once(case, &harness, &before, stats::TX_ECHO_REPLY);
        assert_eq!(&out[..6], &CLIENT_MAC, "{case}: the reply goes back to the client");
    }
    for (case, vip, client, protocol, ports, backend) in [
        ("owned: v4 icmp error", v4(VIP4), v4(CLIENT4), PROTOCOL_TCP, PORTS4, backend4(1)),
        ("owned: v6 icmp error", v6(VIP6), v6(CLIENT6), PROTOCOL_UDP, PORTS6, backend6(1)),
    ] {
        let error = error_about_flow(vip);
        let expected = encapsulated(&error, Tags::None, backend, entropy(client, vip, protocol, ports), &standard_config());
        expect(&harness, case, &error, XDP_TX, &expected, stats::TX_ICMP_ERROR_FORWARD);
    }
    let frame = fragment(VIP4);
    expect(&harness, "owned: v4 fragment", &frame, XDP_DROP, &frame, stats::DROP_FRAGMENT);
    assert_others_unaffected(&harness, "group owned");

    // The other group by its own write; then the first one released again.
    let mut ownership = ownership;
    ownership.set(OTHER_GROUP, true).unwrap();
    let frame = tcp4(OTHER_GROUP_VIP);
    let expected = forwarded(&frame, backend4(5));
    expect(&harness, "other group owned", &frame, XDP_TX, &expected, stats::TX_FORWARD);
    ownership.set(GROUP, false).unwrap();
    assert_group_released(&harness, "after the release");
    assert!(ownership.get(OTHER_GROUP).unwrap(), "releasing one group leaves the other");
}

#[test]
fn group_zero_is_not_a_group() {
    if !root() {
        return;
    }
    let harness = Harness::new();
    let mut ownership = harness.dataplane.ownership().unwrap();
    assert!(matches!(ownership.set(0, true), Err(OwnershipError::NoGroup)));
    assert!(matches!(ownership.get(0), Err(OwnershipError::NoGroup)));
    ownership.set(255, true).unwrap();
    assert!(ownership.get(255).unwrap(), "the last group fits the map");
}

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// A private pinned instance, torn down on drop.
struct Instance {
    root: PathBuf,
    paths: InstancePaths,
}

impl Instance {
    fn new() -> Self {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let root = PathBuf::from(format!("/sys/fs/bpf/failover-ownership-test-{}-{n}", std::process::id()));
        let paths = InstancePaths {
            instance: "test".to_string(),
            pin_dir: root.join("test"),
            run_dir: std::env::temp_dir().join(format!("failover-ownership-test-{}-{n}", std::process::id())),
        };
        Self { root, paths }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = loader::teardown(&self.paths);
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// The flags of the address entry at `address`, read through the pins.
fn address_entry_flags(paths: &InstancePaths, address: IpAddr) -> u32 {
    let data = MapData::from_pin(paths.map(names::VIPS)).unwrap();
    let vips: HashMap<MapData, VipKey, VipMeta> = HashMap::try_from(Map::from_map_data(data).unwrap()).unwrap();
    vips.get(&vip_key(address, 0, PROTOCOL_ADDRESS), 0).unwrap().flags
}

#[test]
fn ownership_is_pinned_and_survives_adoption() {
    if !root() {
        return;
    }
    let instance = Instance::new();
    let options = LoadOptions { table_pool_slots: 4096, flow_entries: 1024 };
    let mut dataplane = Dataplane::create_pinned(&instance.paths, options).unwrap();
    dataplane.writer.set_config(&standard_config()).unwrap();
    install(&mut dataplane);
    assert_eq!(address_entry_flags(&instance.paths, v4(VIP4)), with_vip_group(VIP_OWNED, GROUP), "the v4 address entry");
    assert_eq!(address_entry_flags(&instance.paths, v6(VIP6)), with_vip_group(0, GROUP), "the v6 address entry");
    drop(dataplane);

    // The election task of a restarted daemon, through the pins.
    Ownership::open_pinned(&instance.paths).unwrap().set(GROUP, true).unwrap();
    let adopted = Dataplane::adopt(&instance.paths).unwrap();
    assert!(adopted.ownership().unwrap().get(GROUP).unwrap(), "what the pins hold is what a new daemon reads");
    let frame = tcp4(VIP4);
    let (action, out) = run(adopted.program().unwrap(), &frame);
    assert_eq!(action, XDP_TX, "the adopted program serves the owned group");
    assert_eq!(out, forwarded(&frame, backend4(1)));
    assert_eq!(address_entry_flags(&instance.paths, v4(VIP4)), with_vip_group(VIP_OWNED, GROUP), "adoption keeps the entry");
    drop(adopted);

    // Pins of a program older than elections have no OWNERSHIP: they still adopt, and the
    // election task is told what to do.
    std::fs::remove_file(instance.paths.map(names::OWNERSHIP)).unwrap();
    let adopted = Dataplane::adopt(&instance.paths).unwrap();
    assert!(matches!(adopted.ownership(), Err(OwnershipError::Missing)));
    match Ownership::open_pinned(&instance.paths) {
        Err(error @ OwnershipError::MissingPin(_)) => assert!(error.to_string().contains("teardown"), "{error}"),
        Err(error) => panic!("unexpected error {error}"),
        Ok(_) => panic!("opened a map that is not pinned"),
    }
}
