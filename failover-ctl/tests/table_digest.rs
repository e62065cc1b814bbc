//! Two daemons' state owners, each with its own pinned data plane, given the same VIPs and
//! backends but different backend ids (the backends listed in another order, the VIPs too, and
//! an extra backend that a reload removes): their published tables differ slot by slot in ids,
//! yet have equal digests (`VipStatus::table_digest`, the same as computed from the pins), and
//! their programs send the same flows to the same backend addresses.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use etherparse::PacketBuilder;
use failover_ctl::{
    address::from_words,
    daemon::{
        controller::{Controller, Message},
        status::{Request, Status},
    },
    maglev,
    pin::PinnedView,
};
use pinned::PinnedInstance;
use tokio::sync::{mpsc, oneshot};

#[path = "support/pinned.rs"]
mod pinned;

const XDP_TX: u32 = 3;

/// The configuration's start; VIPs follow. Probe targets are documentation addresses, and the
/// test runs in a network namespace of its own with no route anywhere.
const HEAD: &str = r#"interfaces = ["lo"]
xdp_mode = "generic"
[next_hop]
mac = "02:00:00:00:00:02"
[tunnel]
source_v4 = "192.0.2.128/25"
source_v6 = "2001:db8:ffff::/64"
[probe_defaults]
interval = "1h"
timeout = "1s"
"#;

/// Web's backends as (last byte of 198.51.100.x, weight).
const WEB: [(u8, u16); 5] = [(1, 1), (2, 2), (3, 1), (4, 3), (5, 1)];
/// DNS's backends: 2001:db8:b::n.
const DNS: [u16; 3] = [1, 2, 3];
/// The web backend both nodes see down.
const DOWN: u8 = 3;

fn web(backends: &[(u8, u16)]) -> String {
    let mut text = String::from("[[vip]]\nname = \"web\"\naddress = \"203.0.113.10\"\nport = 443\nprotocol = \"tcp\"\ntable_size = 8191\n");
    for (host, weight) in backends {
        text.push_str(&format!("[[vip.backend]]\naddress = \"198.51.100.{host}\"\nweight = {weight}\n"));
    }
    text
}

fn dns(backends: &[u16]) -> String {
    let mut text = String::from("[[vip]]\nname = \"dns\"\naddress = \"2001:db8:80::53\"\nport = 53\nprotocol = \"udp\"\ntable_size = 4093\n");
    for host in backends {
        text.push_str(&format!("[[vip.backend]]\naddress = \"2001:db8:b::{host:x}\"\nprobe = {{ kind = \"icmp\" }}\n"));
    }
    text
}

/// One daemon's state owner on a pinned data plane, started with `text`.
struct Node {
    instance: PinnedInstance,
    controller: Controller,
}

impl Node {
    fn start(name: &str, text: &str, runtime: &tokio::runtime::Runtime) -> Self {
        let instance = PinnedInstance::new("digest-test", name);
        let (probe_sender, mut probe_receiver) = mpsc::channel(1024);
        // Probe results are not applied: the test decides the verdicts.
        runtime.spawn(async move { while probe_receiver.recv().await.is_some() {} });
        let controller = instance.start_controller(text, runtime, probe_sender);
        Self { instance, controller }
    }

    fn request(&mut self, request: Request) -> (bool, String, Option<Status>) {
        let (sender, mut receiver) = oneshot::channel();
        self.controller.handle(Message::Control(request, sender));
        let response = receiver.try_recv().expect("the controller answers at once");
        (response.ok, response.message, response.status)
    }

    fn reload(&mut self, text: &str) {
        std::fs::write(self.instance.paths.run_dir.join("failover.toml"), text).unwrap();
        let (ok, message, _) = self.request(Request::Reload);
        assert!(ok, "{}: reload refused: {message}", self.instance.paths.instance);
    }

    fn status(&mut self) -> Status {
        self.request(Request::Status).2.expect("a status")
    }

    /// Backend id by address, per VIP, from the status.
    fn ids(&mut self) -> BTreeMap<(String, String), u32> {
        let status = self.status();
        status
            .vips
            .iter()
            .flat_map(|vip| vip.backends.iter().map(move |backend| ((vip.name.clone(), backend.address.clone()), backend.id)))
            .collect()
    }

    /// Every backend up except web's `DOWN`, the verdicts applied in reverse order if asked:
    /// the tables depend on the verdicts, not on their history.
    fn set_verdicts(&mut self, reverse: bool) {
        let mut ids: Vec<((String, String), u32)> = self.ids().into_iter().collect();
        if reverse {
            ids.reverse();
        }
        for ((_, address), id) in ids {
            let up = address != format!("198.51.100.{DOWN}");
            self.controller.apply_verdict(id, up, 0, "test", Instant::now());
        }
    }

    /// The digest of each VIP's published table computed from the pins, and the raw table.
    fn pinned_tables(&self) -> BTreeMap<String, (String, Vec<u32>)> {
        let view = PinnedView::open(&self.instance.paths).unwrap();
        let backends: BTreeMap<u32, IpAddr> = view
            .backends()
            .unwrap()
            .into_iter()
            .map(|(id, backend, _)| (id, from_words(&backend.address, backend.family).unwrap()))
            .collect();
        let names = [(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)), "web"), ("2001:db8:80::53".parse().unwrap(), "dns")];
        view.vips()
            .unwrap()
            .into_iter()
            .map(|(key, _)| {
                let address = from_words(&key.address, key.family).unwrap();
                let name = names.iter().find(|(vip, _)| *vip == address).expect("a known VIP").1;
                let table = view.table(&key).unwrap();
                (name.to_string(), (maglev::table_digest(&table, |id| backends.get(&id).copied()), table))
            })
            .collect()
    }

    /// The pinned program and maps, as `failover-ctl which` opens them.
    fn view(&self) -> PinnedView {
        PinnedView::open(&self.instance.paths).unwrap()
    }
}

/// The tunnel destination of an encapsulated frame (untagged, IPv4 or IPv6 outer header).
fn outer_destination(frame: &[u8]) -> IpAddr {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&frame[30..34]).unwrap())),
        0x86dd => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap())),
        other => panic!("not an IP frame: ethertype {other:#06x}"),
    }
}

fn run(program: &Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 512];
    let result = program
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Client packets: TCP SYNs to web from 200 (address, port) pairs, UDP to DNS from 100.
fn flows() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for n in 0..200u32 {
        let client = [198, 18, (n / 7) as u8, (n * 37 % 251) as u8];
        let builder = PacketBuilder::ethernet2([2, 0xc1, 0, 0, 0, 1], [2, 0, 0, 0, 0, 1]).ipv4(client, [203, 0, 113, 10], 64);
        let mut frame = Vec::new();
        builder.tcp(30000 + (n * 131 % 20000) as u16, 443, n, 64240).syn().write(&mut frame, b"hello").unwrap();
        frames.push(frame);
    }
    for n in 0..100u16 {
        let client = Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, n / 3, n.wrapping_mul(97)).octets();
        let builder =
            PacketBuilder::ethernet2([2, 0xc1, 0, 0, 0, 1], [2, 0, 0, 0, 0, 1]).ipv6(client, "2001:db8:80::53".parse::<Ipv6Addr>().unwrap().octets(), 64);
        let mut frame = Vec::new();
        builder.udp(40000 + n * 13, 53).write(&mut frame, b"query").unwrap();
        frames.push(frame);
    }
    frames
}

#[test]
fn equal_tables_by_address_have_equal_digests_and_route_alike() {
    if !netlab::prerequisite::root("loads BPF programs, pins maps, creates a network namespace") {
        return;
    }
    // SAFETY: unshare has no memory preconditions; it changes only this thread's namespace (and
    // that of the runtime threads started below), so probes reach nothing.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();

    let first_text = format!("{HEAD}{}{}", web(&WEB), dns(&DNS));
    let mut first = Node::start("first", &first_text, &runtime);
    // The second node: DNS before web, web's backends in reverse order after an extra one that
    // a reload removes, DNS's in reverse order.
    let mut reversed: Vec<(u8, u16)> = WEB.iter().rev().copied().collect();
    let mut dns_reversed = DNS.to_vec();
    dns_reversed.reverse();
    reversed.insert(0, (9, 4));
    let mut second = Node::start("second", &format!("{HEAD}{}{}", dns(&dns_reversed), web(&reversed)), &runtime);
    reversed.remove(0);
    second.reload(&format!("{HEAD}{}{}", dns(&dns_reversed), web(&reversed)));

    first.set_verdicts(false);
    second.set_verdicts(true);

    // The setting is what it claims: the same addresses under other ids.
    let (first_ids, second_ids) = (first.ids(), second.ids());
    assert_eq!(first_ids.keys().collect::<Vec<_>>(), second_ids.keys().collect::<Vec<_>>(), "the same backends");
    let differing = first_ids.iter().filter(|(key, id)| second_ids[*key] != **id).count();
    assert!(differing >= 6, "most ids differ: {first_ids:?} / {second_ids:?}");

    let (first_tables, second_tables) = (first.pinned_tables(), second.pinned_tables());
    let (first_status, second_status) = (first.status(), second.status());
    for name in ["web", "dns"] {
        let digest = |status: &Status| status.vips.iter().find(|vip| vip.name == name).unwrap().table_digest.clone();
        let (one, two) = (digest(&first_status), digest(&second_status));
        assert_eq!(one.len(), 16, "{name}: a 16-digit digest, got {one:?}");
        assert_eq!(one, two, "{name}: equal digests on both nodes");
        assert_eq!(first_tables[name].0, one, "{name}: the status digest is the published table's (first node)");
        assert_eq!(second_tables[name].0, two, "{name}: the status digest is the published table's (second node)");
        assert_ne!(first_tables[name].1, second_tables[name].1, "{name}: the tables differ in ids");
    }
    let web_down = first_status.vips.iter().find(|vip| vip.name == "web").unwrap();
    assert!(web_down.backends.iter().any(|backend| !backend.serving), "a backend is out of web's table");

    let (first_view, second_view) = (first.view(), second.view());
    let mut destinations = BTreeMap::new();
    for (index, frame) in flows().iter().enumerate() {
        let (one, out_one) = run(first_view.program(), frame);
        let (two, out_two) = run(second_view.program(), frame);
        assert_eq!((one, two), (XDP_TX, XDP_TX), "flow {index}: forwarded by both");
        let (to_one, to_two) = (outer_destination(&out_one), outer_destination(&out_two));
        assert_eq!(to_one, to_two, "flow {index}: the same backend on both nodes");
        assert_ne!(to_one, IpAddr::V4(Ipv4Addr::new(198, 51, 100, DOWN)), "flow {index}: never the down backend");
        *destinations.entry(to_one).or_insert(0) += 1;
    }
    assert!(destinations.len() >= 6, "the flows reach most backends: {destinations:?}");

    // A change on one node only shows in the digests.
    let id = second.ids()[&("web".to_string(), "198.51.100.4".to_string())];
    second.controller.apply_verdict(id, false, 0, "test", Instant::now());
    let digest = |node: &mut Node| node.status().vips.iter().find(|vip| vip.name == "web").unwrap().table_digest.clone();
    assert_ne!(digest(&mut first), digest(&mut second), "a backend down on one node only");
    first.controller.handle(Message::Shutdown);
    second.controller.handle(Message::Shutdown);
}
