//! The packet monitor in the data plane: a filter set through the monitor's own user-side code
//! (`failover_ctl::monitor::Monitor`), frames run through `test_run`, and exactly the matching
//! ones must come out of the ring buffer, with the decision, backend, flow-table use and
//! 5-tuple the program actually took. Needs root (BPF); skips otherwise.

use std::net::{IpAddr, Ipv4Addr};

use aya::{
    maps::{Array, MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use failover_common::{
    maps::*,
    monitor::{MonitorFilter, MonitorRecord, FLOW_NEW, FLOW_NONE, FLOW_TRACKED, FLOW_UNTRACKED, MONITOR_ENABLED, MONITOR_NONE},
    stats,
};
use failover_ctl::{
    address::to_words,
    loader::Loaded,
    monitor::{Filter, Monitor, VipMatch},
};
use failover_tests::{craft::*, *};

/// A client outside CLIENT4's /24.
const STRANGER4: Ipv4Addr = Ipv4Addr::new(198, 51, 101, 10);

fn monitor(harness: &mut Harness) -> Monitor {
    let Loaded::Object(ebpf) = &mut harness.dataplane.loaded else { panic!("the harness loads the object itself") };
    Monitor::from_object(ebpf).expect("the monitor maps")
}

fn drain(monitor: &mut Monitor) -> Vec<MonitorRecord> {
    std::iter::from_fn(|| monitor.next_record()).collect()
}

fn words(address: IpAddr) -> [u32; 4] {
    to_words(address).0
}

/// Asserts the fields a record must have for a packet client:port -> destination:port.
#[allow(clippy::too_many_arguments, reason = "one line per expected field reads better at the call sites")]
fn assert_record(
    case: &str,
    record: &MonitorRecord,
    (action, reason): (u32, u32),
    (client, client_port): (IpAddr, u16),
    (destination, destination_port): (IpAddr, u16),
    protocol: u8,
    vip_id: u32,
    backend: Option<(u32, IpAddr, u8)>,
) {
    assert_eq!((record.action as u32, record.reason as u32), (action, reason), "{case}: action and reason");
    assert_eq!(record.source, words(client), "{case}: source");
    assert_eq!(record.destination, words(destination), "{case}: destination");
    assert_eq!(
        (u16::from_be(record.source_port), u16::from_be(record.destination_port)),
        (client_port, destination_port),
        "{case}: ports"
    );
    assert_eq!((record.protocol, record.family), (protocol, to_words(client).1), "{case}: protocol and family");
    assert_eq!(record.vip_id, vip_id, "{case}: vip id");
    match backend {
        Some((id, address, flow)) => {
            assert_eq!(record.flow, flow, "{case}: flow-table use");
            assert_eq!(record.backend_id, id, "{case}: backend id");
            assert_eq!(record.backend_address, words(address), "{case}: backend address");
        }
        None => {
            assert_eq!(record.flow, FLOW_NONE, "{case}: no backend chosen");
            assert_eq!(record.backend_id, MONITOR_NONE, "{case}: no backend id");
        }
    }
    assert!(record.time_ns > 0, "{case}: a time");
}

#[test]
fn only_packets_matching_vip_and_client_prefix_are_reported() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let (vip4, vip6, client) = (IpAddr::V4(VIP4), IpAddr::V6(VIP6), IpAddr::V4(CLIENT4));
    let web = harness.simple_vip(vip4, 80, PROTOCOL_TCP, 1, backend4(1));
    harness.simple_vip(vip6, 80, PROTOCOL_TCP, 2, backend6(1));
    harness.simple_vip(vip4, 53, PROTOCOL_UDP, 3, backend4(2));
    let mut monitor = monitor(&mut harness);
    let filter = Filter {
        vip: Some(VipMatch { address: vip4, port: Some(80), protocol: Some(PROTOCOL_TCP) }),
        client: Some((IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)), 24)),
        backend: None,
    };
    monitor.attach(&filter).unwrap();
    let frames = [
        ("first packet of a flow", packet(Tags::None, client, vip4, Transport::TcpSyn, (40000, 80), b"x"), true),
        ("next packet of the flow", packet(Tags::None, client, vip4, Transport::TcpAck, (40000, 80), b"x"), true),
        ("client outside the prefix", packet(Tags::None, IpAddr::V4(STRANGER4), vip4, Transport::TcpSyn, (40000, 80), b"x"), false),
        ("same address, udp service", packet(Tags::None, client, vip4, Transport::Udp, (40000, 53), b"x"), false),
        ("same address, other port", packet(Tags::None, client, vip4, Transport::TcpSyn, (40000, 81), b"x"), false),
        ("ipv6 vip", packet(Tags::None, IpAddr::V6(CLIENT6), vip6, Transport::TcpSyn, (40000, 80), b"x"), false),
        ("not a vip", packet(Tags::None, client, IpAddr::V4(OTHER4), Transport::TcpSyn, (40000, 80), b"x"), false),
        ("802.1Q, same flow", packet(Tags::Single(42), client, vip4, Transport::TcpAck, (40000, 80), b"x"), true),
    ];
    for (_, frame, _) in &frames {
        harness.run(frame);
    }
    let records = drain(&mut monitor);
    let matching: Vec<&str> = frames.iter().filter(|(_, _, matching)| *matching).map(|(name, _, _)| *name).collect();
    assert_eq!(records.len(), matching.len(), "one record per matching frame ({matching:?}), none else: {records:#?}");
    let tx = (XDP_TX, stats::TX_FORWARD);
    let flows = [FLOW_NEW, FLOW_TRACKED, FLOW_TRACKED];
    for ((name, record), flow) in matching.iter().zip(&records).zip(flows) {
        assert_record(name, record, tx, (client, 40000), (vip4, 80), PROTOCOL_TCP, 1, Some((web, backend4(1), flow)));
    }
    assert_eq!(records[0].frame_len as usize, frames[0].1.len(), "frame length");
    assert_eq!(records[2].frame_len as usize, frames[7].1.len(), "tagged frame length");
    assert_eq!(monitor.lost().unwrap(), 0);
}

#[test]
fn backend_filter_reports_packets_sent_to_that_backend() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let (vip4, client) = (IpAddr::V4(VIP4), IpAddr::V4(CLIENT4));
    harness.simple_vip(vip4, 80, PROTOCOL_TCP, 1, backend4(1));
    let api = harness.simple_vip(vip4, 443, PROTOCOL_TCP, 2, backend4(2));
    let mut monitor = monitor(&mut harness);
    monitor.attach(&Filter { backend: Some(backend4(2)), ..Filter::default() }).unwrap();
    for port in [80, 443, 80, 443] {
        harness.run(&packet(Tags::None, client, vip4, Transport::TcpSyn, (41000 + port, port), b"x"));
    }
    harness.run(&packet(Tags::None, client, IpAddr::V4(OTHER4), Transport::TcpSyn, (41000, 443), b"x"));
    let records = drain(&mut monitor);
    assert_eq!(records.len(), 2, "{records:#?}");
    for record in &records {
        assert_record("to the api backend", record, (XDP_TX, stats::TX_FORWARD), (client, 41443), (vip4, 443), PROTOCOL_TCP, 2, Some((api, backend4(2), record.flow)));
    }
    assert_eq!((records[0].flow, records[1].flow), (FLOW_NEW, FLOW_TRACKED), "the second SYN of the flow finds its entry");
}

#[test]
fn an_empty_filter_reports_every_decision() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let (vip4, client, router) = (IpAddr::V4(VIP4), IpAddr::V4(CLIENT4), IpAddr::V4(ROUTER4));
    let web = harness.simple_vip(vip4, 80, PROTOCOL_TCP, 1, backend4(1));
    // A VIP whose only backend is down: dropped after the service lookup, no backend chosen.
    harness.backend(20, 2, backend4(2), HEALTH_DOWN);
    harness.vip(vip4, 25, PROTOCOL_TCP, 2, VIP_OWNED, &[20; 13]);
    let mut monitor = monitor(&mut harness);
    monitor.attach(&Filter::default()).unwrap();

    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let syn = packet(Tags::None, client, vip4, Transport::TcpSyn, (40000, 80), b"x");
    let quote = reply_quote(ip4(VIP4, CLIENT4, &[], true), PROTOCOL_TCP, (80, 40000));
    let frames = [
        arp,
        packet(Tags::None, client, IpAddr::V4(OTHER4), Transport::Udp, (5353, 53), b"x"),
        syn,
        inbound(Tags::None, &echo_request(ip(client, vip4, 64), b"ping")),
        frame(Tags::None, LB_MAC, ROUTER_MAC, &icmp_error(router, vip4, ErrorKind::FragmentationNeeded, &quote)),
        packet(Tags::None, client, vip4, Transport::TcpSyn, (40001, 25), b"x"),
    ];
    for frame in &frames {
        harness.run(frame);
    }
    let records = drain(&mut monitor);
    assert_eq!(records.len(), frames.len(), "every packet: {records:#?}");
    let unparsed = &records[0];
    assert_eq!((unparsed.action as u32, unparsed.reason as u32, unparsed.family), (XDP_PASS, stats::PASS_UNPARSED, 0), "arp");
    assert_eq!((unparsed.source, unparsed.vip_id, unparsed.flow), ([0; 4], MONITOR_NONE, FLOW_NONE), "arp: no addresses");
    assert_record("not a vip", &records[1], (XDP_PASS, stats::PASS_NOT_VIP), (client, 5353), (IpAddr::V4(OTHER4), 53), PROTOCOL_UDP, MONITOR_NONE, None);
    assert_record("new flow", &records[2], (XDP_TX, stats::TX_FORWARD), (client, 40000), (vip4, 80), PROTOCOL_TCP, 1, Some((web, backend4(1), FLOW_NEW)));
    // The reply goes back to the client; the record names the request's direction.
    assert_record("echo", &records[3], (XDP_TX, stats::TX_ECHO_REPLY), (client, 0), (vip4, 0), PROTOCOL_ICMP, MONITOR_NONE, None);
    // An ICMP error is reported as the flow it is about, which it follows but never records.
    assert_record("icmp error", &records[4], (XDP_TX, stats::TX_ICMP_ERROR_FORWARD), (client, 40000), (vip4, 80), PROTOCOL_TCP, 1, Some((web, backend4(1), FLOW_TRACKED)));
    assert_record("all down", &records[5], (XDP_DROP, stats::DROP_ALL_DOWN), (client, 40001), (vip4, 25), PROTOCOL_TCP, 2, None);
}

#[test]
fn an_untracked_choice_is_reported_as_such() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let (vip4, client) = (IpAddr::V4(VIP4), IpAddr::V4(CLIENT4));
    harness.backend(10, 1, backend4(1), HEALTH_UP);
    harness.vip(vip4, 80, PROTOCOL_UDP, 1, VIP_OWNED | VIP_NO_FLOW_TRACKING, &[10; 13]);
    let mut monitor = monitor(&mut harness);
    monitor.attach(&Filter::default()).unwrap();
    harness.run(&packet(Tags::None, client, vip4, Transport::Udp, (40000, 80), b"x"));
    let records = drain(&mut monitor);
    assert_eq!(records.len(), 1);
    assert_record("stateless vip", &records[0], (XDP_TX, stats::TX_FORWARD), (client, 40000), (vip4, 80), PROTOCOL_UDP, 1, Some((10, backend4(1), FLOW_UNTRACKED)));
}

#[test]
fn a_detached_monitor_gets_nothing_and_a_full_ring_counts_what_it_lost() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let client = IpAddr::V4(CLIENT4);
    let not_vip = packet(Tags::None, client, IpAddr::V4(OTHER4), Transport::TcpAck, (40000, 80), b"x");
    let mut monitor = monitor(&mut harness);
    monitor.attach(&Filter::default()).unwrap();
    monitor.detach().unwrap();
    assert_eq!(monitor.current().unwrap().enabled, 0, "detach switches the filter off");
    harness.run(&not_vip);
    assert!(drain(&mut monitor).is_empty(), "no record once detached");

    // 3000 passes in one test run, nobody reading: the ring buffer (about 2900 records) fills.
    monitor.attach(&Filter::default()).unwrap();
    let runs = 3000u32;
    let mut out = vec![0u8; not_vip.len() + 64];
    let result = harness
        .program()
        .test_run(TestRunOptions { data_in: Some(&not_vip), data_out: Some(&mut out), repeat: runs, ..Default::default() })
        .unwrap();
    assert_eq!(result.return_value, XDP_PASS);
    let read = drain(&mut monitor).len() as u64;
    let lost = monitor.lost().unwrap();
    assert!(lost > 0, "a full ring buffer loses records ({read} read)");
    assert_eq!(read + lost, u64::from(runs), "every matched packet is either read or counted as lost");
}

#[test]
fn an_expired_filter_is_switched_off_by_the_next_packet() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let Loaded::Object(ebpf) = &mut harness.dataplane.loaded else { panic!("the harness loads the object itself") };
    // The maps directly, as a killed monitor would have left them: enabled, lease long over.
    let mut filter: Array<MapData, MonitorFilter> = ebpf.take_map(names::MONITOR_FILTER).unwrap().try_into().unwrap();
    let mut records: RingBuf<MapData> = ebpf.take_map(names::MONITOR_RECORDS).unwrap().try_into().unwrap();
    let stale = MonitorFilter { enabled: MONITOR_ENABLED, expires_ns: 1, owner_pid: u32::MAX, ..MonitorFilter::default() };
    filter.set(0, stale, 0).unwrap();
    harness.run(&packet(Tags::None, IpAddr::V4(CLIENT4), IpAddr::V4(OTHER4), Transport::TcpAck, (40000, 80), b"x"));
    assert_eq!(filter.get(&0, 0).unwrap(), MonitorFilter { enabled: 0, ..stale }, "only `enabled` changes");
    assert!(records.next().is_none(), "no record from an expired filter");
}
