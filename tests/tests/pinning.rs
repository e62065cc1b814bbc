//! Pinned instances and hitless restart: maps, program and XDP links pinned on bpffs outlive
//! the process that made them, and a new process adopts them (writer mirror rebuilt from the
//! maps, the same packets reach the same backends).
//!
//! Every test makes its own instance under `/sys/fs/bpf/failover-test-<pid>-<n>/` and tears it
//! down on drop, so tests run in parallel and never touch a real instance.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::XdpMode,
};
use failover_common::maps::*;
use failover_ctl::{
    address::to_words,
    loader::{self, Dataplane, LoadError, LoadOptions},
    maps::{MapWriteError, VipSettings},
    paths::InstancePaths,
    pin::PinnedView,
};
use failover_tests::*;
use netlab::Namespace;

const POOL_SLOTS: u32 = 4096;
const OPTIONS: LoadOptions = LoadOptions { table_pool_slots: POOL_SLOTS, flow_entries: 1024 };

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// A private instance whose pins are removed on drop (also when the test panics).
struct Instance {
    root: PathBuf,
    paths: InstancePaths,
}

impl Instance {
    fn new() -> Self {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let root = PathBuf::from(format!("/sys/fs/bpf/failover-test-{}-{n}", std::process::id()));
        let paths = InstancePaths {
            instance: "test".to_string(),
            pin_dir: root.join("test"),
            run_dir: std::env::temp_dir().join(format!("failover-test-{}-{n}", std::process::id())),
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

fn settings(vip_id: u32) -> VipSettings {
    // No flow tracking: every packet takes the table, so a packet shows the live table.
    VipSettings { vip_id, flags: VIP_OWNED | VIP_NO_FLOW_TRACKING }
}

fn set_backend(dataplane: &mut Dataplane, id: u32, vip_id: u32, n: u8) {
    let (address, family) = to_words(backend4(n));
    let backend = Backend { address, vip_id, family, _padding: [0; 3] };
    dataplane.writer.set_backend(id, backend, HEALTH_UP).unwrap();
}

/// The backend (by address suffix n of `backend4(n)`) an IPv4-in-IPv4 output frame goes to.
fn destination(out: &[u8]) -> u32 {
    u32::from_ne_bytes(out[30..34].try_into().unwrap())
}

fn tcp_to(vip: IpAddr, port: u16) -> Vec<u8> {
    packet(Tags::None, IpAddr::V4(CLIENT4), vip, Transport::TcpSyn, (40000, port), b"")
}

fn udp_to(vip: IpAddr, port: u16) -> Vec<u8> {
    packet(Tags::None, IpAddr::V4(CLIENT4), vip, Transport::Udp, (40000, port), b"")
}

fn sorted(mut vips: Vec<(VipKey, VipMeta)>) -> Vec<(VipKey, VipMeta)> {
    vips.sort_by_key(|(key, _)| *key);
    vips
}

/// Asserts that the published VIPs' regions are inside the pool and pairwise disjoint, and
/// that each VIP's table reads back as `expected`.
fn assert_regions(dataplane: &Dataplane, expected: &BTreeMap<VipKey, Vec<u32>>) {
    let mut regions: Vec<(u32, u32)> = Vec::new();
    for (key, table) in expected {
        let meta = dataplane.writer.vip(key).expect("published");
        assert_eq!(meta.table_size as usize, table.len());
        assert!(meta.table_offset + meta.table_size <= POOL_SLOTS);
        regions.push((meta.table_offset, meta.table_size));
        assert_eq!(&dataplane.writer.table(key).unwrap(), table, "table of {key:?} was overwritten");
    }
    regions.sort();
    for pair in regions.windows(2) {
        assert!(pair[0].0 + pair[0].1 <= pair[1].0, "regions {pair:?} overlap");
    }
}

#[test]
fn adopted_instance_keeps_state_and_forwarding() {
    if !root() {
        return;
    }
    let instance = Instance::new();
    let paths = &instance.paths;
    let web = vip_key(IpAddr::V4(VIP4), 80, PROTOCOL_TCP);
    let dns = vip_key(IpAddr::V4(OTHER4), 53, PROTOCOL_UDP);

    let mut dataplane = Dataplane::create_pinned(paths, OPTIONS).unwrap();
    dataplane.writer.set_config(&standard_config()).unwrap();
    for id in 10..13 {
        set_backend(&mut dataplane, id, 1, id as u8);
    }
    set_backend(&mut dataplane, 20, 2, 20);
    let first: Vec<u32> = (0..251).map(|slot| 10 + slot % 3).collect();
    dataplane.writer.publish_vip(web, settings(1), &[11; 251]).unwrap();
    // A second publish leaves a standby region that the adopter must treat as free.
    dataplane.writer.publish_vip(web, settings(1), &first).unwrap();
    dataplane.writer.publish_vip(dns, settings(2), &[20; 13]).unwrap();

    let web_frame = tcp_to(IpAddr::V4(VIP4), 80);
    let dns_frame = udp_to(IpAddr::V4(OTHER4), 53);
    let (action, before) = run(dataplane.program().unwrap(), &web_frame);
    assert_eq!(action, XDP_TX, "{}", action_name(action));
    let vips = dataplane.writer.published_vips();
    let backends = dataplane.writer.backend_entries();
    let config = dataplane.writer.config();
    // The writer fills in the flow cache's shape, which is the map's.
    let published = Config { flow_bucket_mask: flow_buckets(OPTIONS.flow_entries) - 1, ..standard_config() };
    assert_eq!(config, Some(published));
    drop(dataplane);

    // The pins outlive the process's handles.
    assert!(paths.program().exists());
    for name in [names::VIPS, names::TABLES, names::BACKENDS, names::FLOWS, names::REASON_STATS] {
        assert!(paths.map(name).exists(), "{name} pin is gone");
    }
    assert!(PinnedView::exists(paths));

    let mut adopted = Dataplane::adopt(paths).unwrap();
    assert_eq!(sorted(adopted.writer.published_vips()), sorted(vips.clone()));
    assert_eq!(adopted.writer.backend_entries(), backends);
    assert_eq!(adopted.writer.config(), config);
    assert_eq!(adopted.writer.table(&web).unwrap(), first);
    // Only the active regions are allocated: the dead writer's standby is free again.
    assert_eq!(adopted.writer.free_table_slots(), POOL_SLOTS - 251 - 13);
    let (action, after) = run(adopted.program().unwrap(), &web_frame);
    assert_eq!(action, XDP_TX, "{}", action_name(action));
    assert_eq!(after, before, "{}", hex_diff(&before, &after));

    // The inspection view reads the same state.
    let view = PinnedView::open(paths).unwrap();
    assert_eq!(sorted(view.vips().unwrap()), sorted(vips));
    assert_eq!(view.table(&web).unwrap(), first);
    assert_eq!(view.backends().unwrap(), backends);
    assert_eq!(view.config().unwrap(), Some(published));
    assert!(view.counters().vip(1).unwrap().packets >= 2);
    let (action, through_view) = run(view.program(), &web_frame);
    assert_eq!((action, through_view), (XDP_TX, before.clone()));

    // The adopted writer changes the data plane: a new table, a removed VIP.
    adopted.writer.publish_vip(web, settings(1), &[12; 251]).unwrap();
    let (action, out) = run(adopted.program().unwrap(), &web_frame);
    assert_eq!(action, XDP_TX);
    assert_eq!(destination(&out), to_words(backend4(12)).0[0]);
    assert_eq!(run(adopted.program().unwrap(), &dns_frame).0, XDP_TX);
    adopted.writer.remove_vip(dns).unwrap();
    assert_eq!(run(adopted.program().unwrap(), &dns_frame).0, XDP_PASS, "removed VIP still served");
    assert_eq!(view.vips().unwrap().len(), 1);
    adopted.writer.remove_backend(20).unwrap();

    // Many publishes through the adopted writer: freed regions are reused (the pool holds
    // only a few tables), never overlapping a live one.
    let mut expected = BTreeMap::from([(web, vec![12; 251])]);
    let extra = vip_key(IpAddr::V4(OTHER4), 443, PROTOCOL_TCP);
    set_backend(&mut adopted, 30, 3, 30);
    for round in 0..200u32 {
        let size = [251, 509, 13, 1021][round as usize % 4];
        let table: Vec<u32> = (0..size).map(|slot| 10 + (slot + round) % 3).collect();
        adopted.writer.publish_vip(web, settings(1), &table).unwrap();
        expected.insert(web, table);
        if round % 3 == 0 {
            adopted.writer.publish_vip(extra, settings(3), &vec![30; 509]).unwrap();
            expected.insert(extra, vec![30; 509]);
        } else if expected.remove(&extra).is_some() {
            adopted.writer.remove_vip(extra).unwrap();
        }
        assert_regions(&adopted, &expected);
        let (action, out) = run(adopted.program().unwrap(), &web_frame);
        assert_eq!(action, XDP_TX);
        let table = &expected[&web];
        let live: Vec<u32> = table.iter().map(|id| to_words(backend4(*id as u8)).0[0]).collect();
        assert!(live.contains(&destination(&out)));
    }
    for key in expected.keys() {
        adopted.writer.remove_vip(*key).unwrap();
    }
    // Retired regions return to the pool at the next reclaim (the controller's tick).
    adopted.writer.reclaim().unwrap();
    assert!(!adopted.writer.has_retired());
    assert_eq!(adopted.writer.free_table_slots(), POOL_SLOTS, "regions leaked");
    assert!(view.vips().unwrap().is_empty());
}

fn has_xdp(namespace: &Namespace, interface: &str) -> bool {
    let output = namespace.exec(&["ip", "-j", "link", "show", "dev", interface]).unwrap();
    String::from_utf8_lossy(&output.stdout).contains("\"xdp\"")
}

/// Waits for the kernel to finish a detach (link release is asynchronous).
fn wait_detached(namespace: &Namespace, interface: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !has_xdp(namespace, interface) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn pinned_links_outlive_the_process_until_teardown() {
    if !root() || !netlab::prerequisite::require_program("ip", "iproute2") {
        return;
    }
    netlab::cleanup_stale().unwrap();
    let namespace = Namespace::create("pin").unwrap();
    namespace.ip("link add p0 type veth peer name p1").unwrap();
    namespace.ip("link set p0 up").unwrap();
    namespace.ip("link set p1 up").unwrap();
    let instance = Instance::new();
    let paths = &instance.paths;

    let mut dataplane = Dataplane::create_pinned(paths, OPTIONS).unwrap();
    for interface in ["p0", "p1"] {
        namespace.enter(|| dataplane.attach_pinned(paths, interface, XdpMode::Driver)).unwrap().unwrap();
    }
    assert_eq!(loader::attached_interfaces(paths), ["p0", "p1"]);
    drop(dataplane);
    assert!(has_xdp(&namespace, "p0"), "p0 lost its program with the process's handles");
    assert!(has_xdp(&namespace, "p1"));

    // A restarted daemon adopts and attaches again: the pinned link is kept.
    let mut adopted = Dataplane::adopt(paths).unwrap();
    namespace.enter(|| adopted.attach_pinned(paths, "p0", XdpMode::Driver)).unwrap().unwrap();
    assert_eq!(loader::attached_interfaces(paths), ["p0", "p1"]);
    drop(adopted);
    assert!(has_xdp(&namespace, "p0"));

    assert!(Dataplane::detach_pinned(paths, "p1").unwrap());
    assert!(!Dataplane::detach_pinned(paths, "p1").unwrap());
    assert!(wait_detached(&namespace, "p1"), "p1 still has a program after detach_pinned");
    assert!(has_xdp(&namespace, "p0"));
    assert_eq!(loader::attached_interfaces(paths), ["p0"]);

    loader::teardown(paths).unwrap();
    assert!(wait_detached(&namespace, "p0"), "p0 still has a program after teardown");
    assert!(!paths.pin_dir.exists());
    assert!(!PinnedView::exists(paths));
    // Idempotent.
    loader::teardown(paths).unwrap();
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(paths: &InstancePaths, name: &str) -> T {
    T::try_from(Map::from_map_data(MapData::from_pin(paths.map(name)).unwrap()).unwrap()).unwrap()
}

/// Adopts and expects an inconsistency error whose message contains `why`.
fn assert_corrupt(paths: &InstancePaths, why: &str) {
    match Dataplane::adopt(paths) {
        Err(LoadError::Maps(MapWriteError::Corrupt(message))) => {
            assert!(message.contains(why), "{message:?} does not mention {why:?}")
        }
        Err(other) => panic!("expected an inconsistency mentioning {why:?}, got {other}"),
        Ok(_) => panic!("adopted corrupted pins ({why})"),
    }
}

#[test]
fn corrupted_or_mismatched_pins_are_refused() {
    if !root() {
        return;
    }
    let instance = Instance::new();
    let paths = &instance.paths;
    let web = vip_key(IpAddr::V4(VIP4), 80, PROTOCOL_TCP);
    let dns = vip_key(IpAddr::V4(OTHER4), 53, PROTOCOL_UDP);
    let mut dataplane = Dataplane::create_pinned(paths, OPTIONS).unwrap();
    dataplane.writer.set_config(&standard_config()).unwrap();
    set_backend(&mut dataplane, 10, 1, 10);
    set_backend(&mut dataplane, 20, 2, 20);
    dataplane.writer.publish_vip(web, settings(1), &[10; 251]).unwrap();
    dataplane.writer.publish_vip(dns, settings(2), &[20; 13]).unwrap();
    drop(dataplane);

    let mut vips: HashMap<MapData, VipKey, VipMeta> = open(paths, names::VIPS);
    let good = vips.get(&web, 0).unwrap();

    // A region beyond the end of the pool.
    vips.insert(web, VipMeta { table_offset: POOL_SLOTS - 100, ..good }, 0).unwrap();
    assert_corrupt(paths, "outside the pool");
    // Overflowing offset + size.
    vips.insert(web, VipMeta { table_offset: u32::MAX - 10, ..good }, 0).unwrap();
    assert_corrupt(paths, "outside the pool");
    // Two VIPs sharing slots.
    let dns_meta = vips.get(&dns, 0).unwrap();
    vips.insert(web, VipMeta { table_offset: dns_meta.table_offset + 5, ..good }, 0).unwrap();
    assert_corrupt(paths, "overlap");
    // Two VIPs with the same vip id.
    vips.insert(web, VipMeta { vip_id: 2, ..good }, 0).unwrap();
    assert_corrupt(paths, "share vip id");
    vips.insert(web, good, 0).unwrap();

    // A table naming a backend that is not there.
    let mut backends: Array<MapData, Backend> = open(paths, names::BACKENDS);
    let backend = backends.get(&10, 0).unwrap();
    backends.set(10, Backend::default(), 0).unwrap();
    assert_corrupt(paths, "does not exist");
    backends.set(10, backend, 0).unwrap();

    // Restored: adoption works again, and repairs a missing address entry and filter bit (what
    // a writer killed between the service entry and the address entry leaves).
    let address = VipKey { port: 0, protocol: PROTOCOL_ADDRESS, ..web };
    vips.remove(&address).unwrap();
    let adopted = Dataplane::adopt(paths).unwrap();
    assert_eq!(vips.get(&address, 0).unwrap().flags, VIP_OWNED);
    assert_eq!(adopted.writer.table(&web).unwrap(), vec![10; 251]);
    drop(adopted);

    // A map pin replaced by a map of another shape.
    let config_path = paths.map(names::CONFIG);
    std::fs::remove_file(&config_path).unwrap();
    MapData::from_pin(paths.map(names::HEALTH)).unwrap().pin(&config_path).unwrap();
    let error = Dataplane::adopt(paths).err().expect("adopted a HEALTH map as CONFIG");
    assert!(error.to_string().contains(names::CONFIG), "{error}");
    // A missing pin.
    std::fs::remove_file(&config_path).unwrap();
    let error = Dataplane::adopt(paths).err().expect("adopted without a CONFIG pin");
    assert!(error.to_string().contains(&config_path.display().to_string()), "{error}");
    assert!(PinnedView::open(paths).is_err());
    // A missing program pin.
    std::fs::remove_file(paths.program()).unwrap();
    assert!(matches!(Dataplane::adopt(paths), Err(LoadError::PinnedProgram { .. })));
}

#[test]
fn create_pinned_refuses_existing_pins_and_non_bpffs() {
    if !root() {
        return;
    }
    let instance = Instance::new();
    let paths = &instance.paths;
    let mut dataplane = Dataplane::create_pinned(paths, OPTIONS).unwrap();
    set_backend(&mut dataplane, 10, 1, 10);
    let web = vip_key(IpAddr::V4(VIP4), 80, PROTOCOL_TCP);
    dataplane.writer.publish_vip(web, settings(1), &[10; 13]).unwrap();

    // While the first process runs, and after it is gone.
    assert!(matches!(Dataplane::create_pinned(paths, OPTIONS), Err(LoadError::AlreadyPinned(_))));
    drop(dataplane);
    let error = Dataplane::create_pinned(paths, OPTIONS).err().expect("created over existing pins");
    assert!(matches!(error, LoadError::AlreadyPinned(_)), "{error}");
    assert!(error.to_string().contains("adopt"), "{error}");
    // The refused attempts left the instance intact.
    let adopted = Dataplane::adopt(paths).unwrap();
    assert_eq!(adopted.writer.table(&web).unwrap(), vec![10; 13]);

    // Not on bpffs.
    let elsewhere = InstancePaths {
        instance: "test".into(),
        pin_dir: std::env::temp_dir().join(format!("failover-not-bpffs-{}", std::process::id())),
        run_dir: std::env::temp_dir(),
    };
    let error = Dataplane::create_pinned(&elsewhere, OPTIONS).err().expect("pinned outside bpffs");
    assert!(matches!(error, LoadError::NotBpffs(_)), "{error}");
    assert!(error.to_string().contains("mount -t bpf bpf /sys/fs/bpf"), "{error}");
    assert!(!elsewhere.pin_dir.exists());
}
