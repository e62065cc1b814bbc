//! The flow cache's two promises, on the real program: an established flow keeps its backend
//! across a table change whichever CPU its packets arrive on (the cache is shared, not per
//! CPU), and a flood of new flows never evicts a flow that is active (a new flow takes only an
//! empty way or one idle for `FLOW_EVICT_IDLE_NS`; otherwise it is forwarded untracked). And
//! the flows the controller places (flow sync) follow the same rule and are followed.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use failover_common::{maps::*, stats};
use failover_tests::{craft::flow_key, *};

/// Runs `f` on a thread pinned to `cpu`: `BPF_PROG_TEST_RUN` runs the program on the calling
/// thread's CPU.
fn on_cpu<T: Send>(cpu: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it, and
                // sched_setaffinity(0, ..) applies it to this thread only.
                let result = unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
                };
                assert_eq!(result, 0, "sched_setaffinity to CPU {cpu}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the pinned thread panicked")
    })
}

/// The outer destination of an encapsulated frame (IPv4 in IPv4 or IPv6 in IPv6, no VLAN).
fn outer_destination(frame: &[u8]) -> IpAddr {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => IpAddr::from(<[u8; 4]>::try_from(&frame[30..34]).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap()),
    }
}

/// A harness whose insert limiter allows every insert: the cache's own rule is what is under
/// test, not the limiter.
fn unlimited_harness() -> Harness {
    let mut harness = Harness::new();
    harness.dataplane.writer.set_config(&Config { flow_insert_cost_ns: 0, flow_insert_burst_ns: 0, ..standard_config() }).unwrap();
    harness
}

/// VIP `vip_id` at VIP4:80 over `protocol`, served by backends 1 to 4 (ids vip_id * 10 + 0..4),
/// spread over a 251-slot table.
fn four_backends(harness: &mut Harness, protocol: u8, vip_id: u32) {
    let first = vip_id * 10;
    for n in 0..4u8 {
        harness.backend(first + u32::from(n), vip_id, backend4(n + 1), HEALTH_UP);
    }
    let table: Vec<u32> = (0..251).map(|slot| first + slot % 4).collect();
    harness.vip(IpAddr::V4(VIP4), 80, protocol, vip_id, VIP_OWNED, &table);
}

/// Sends `transport` of client:port -> vip:80 and returns the backend address it was tunnelled to.
fn forward(harness: &Harness, client: IpAddr, vip: IpAddr, port: u16, transport: Transport) -> IpAddr {
    let frame = packet(Tags::None, client, vip, transport, (port, 80), b"x");
    let (action, out) = harness.run(&frame);
    assert_eq!(action, XDP_TX, "{client}:{port} -> {vip}: {}", action_name(action));
    outer_destination(&out)
}

#[test]
fn an_established_flow_keeps_its_backend_on_every_cpu_across_a_table_change() {
    if !root() {
        return;
    }
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    assert!(cpus >= 2, "this test needs two CPUs, the machine has {cpus}");
    let mut harness = Harness::new();
    for (vip_id, (client, vip, first, second)) in [
        (1, (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), backend4(1), backend4(2))),
        (2, (IpAddr::V6(CLIENT6), IpAddr::V6(VIP6), backend6(1), backend6(2))),
    ] {
        let (first_id, second_id) = (vip_id * 10, vip_id * 10 + 1);
        harness.backend(first_id, vip_id, first, HEALTH_UP);
        harness.backend(second_id, vip_id, second, HEALTH_UP);
        harness.vip(vip, 80, PROTOCOL_TCP, vip_id, VIP_OWNED, &[first_id; 13]);

        // Opened on CPU 0 (and one on CPU 1), then the table moves every slot to the second.
        let opened = on_cpu(0, || forward(&harness, client, vip, 40000, Transport::TcpSyn));
        let other = on_cpu(1, || forward(&harness, client, vip, 40001, Transport::TcpSyn));
        assert_eq!((opened, other), (first, first), "{vip}: both opened on the table's backend");
        harness.vip(vip, 80, PROTOCOL_TCP, vip_id, VIP_OWNED, &[second_id; 13]);

        // Each flow's later packets, on the CPU that did not open it and on the one that did.
        for cpu in [1, 0] {
            let later = on_cpu(cpu, || forward(&harness, client, vip, 40000, Transport::TcpAck));
            assert_eq!(later, first, "{vip}: the flow opened on CPU 0 kept its backend on CPU {cpu}");
        }
        for cpu in [0, 1] {
            let later = on_cpu(cpu, || forward(&harness, client, vip, 40001, Transport::TcpAck));
            assert_eq!(later, first, "{vip}: the flow opened on CPU 1 kept its backend on CPU {cpu}");
        }
        let new = on_cpu(1, || forward(&harness, client, vip, 40002, Transport::TcpSyn));
        assert_eq!(new, second, "{vip}: a new flow follows the new table");
        let tracked = harness.dataplane.counters.flow(&flow_key(client, vip, PROTOCOL_TCP, (40000, 80)));
        assert_eq!(tracked.map(|value| value.backend_id), Some(first_id), "{vip}: one entry, seen from both CPUs");
    }
}

#[test]
fn a_flood_of_new_flows_never_evicts_an_active_flow() {
    if !root() {
        return;
    }
    let mut harness = unlimited_harness();
    four_backends(&mut harness, PROTOCOL_TCP, 1);
    let client = IpAddr::V4(CLIENT4);
    let vip = IpAddr::V4(VIP4);
    let slots = flow_buckets(4096) as usize * FLOW_WAYS;

    let started = Instant::now();
    let established: Vec<(u16, IpAddr)> = (0..500u16).map(|n| (1000 + n, forward(&harness, client, vip, 1000 + n, Transport::TcpSyn))).collect();
    let tracked_before = established.iter().filter(|(port, _)| harness.dataplane.counters.flow(&flow_key(client, vip, PROTOCOL_TCP, (*port, 80))).is_some()).count();
    assert_eq!(tracked_before, established.len(), "500 flows in {slots} ways: all tracked");

    // A flood of twice as many new flows as the cache has ways, from other clients.
    let refused = harness.reason(stats::EVENT_FLOW_NOT_TRACKED);
    for n in 0..(2 * slots) as u32 {
        let source = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        forward(&harness, source, vip, 20000 + (n % 1000) as u16, Transport::TcpSyn);
    }
    let flood_took = started.elapsed();
    assert!(
        flood_took < Duration::from_nanos(FLOW_EVICT_IDLE_NS),
        "the flood took {flood_took:?}: the established flows went idle long enough to be evicted, the test proves nothing"
    );
    let refused = harness.reason(stats::EVENT_FLOW_NOT_TRACKED) - refused;
    let tracked = harness.dataplane.counters.flows().unwrap().len();
    assert!(refused > 0, "the flood never found a full bucket ({tracked} tracked of {slots} ways)");
    assert!(tracked <= slots);

    // Every established flow is still tracked on its backend, and its packets go there.
    for (port, backend) in &established {
        let key = flow_key(client, vip, PROTOCOL_TCP, (*port, 80));
        assert!(harness.dataplane.counters.flow(&key).is_some(), "port {port}: evicted by the flood");
        assert_eq!(forward(&harness, client, vip, *port, Transport::TcpAck), *backend, "port {port}: its backend");
    }
    eprintln!("flood of {} new flows into {slots} ways: {refused} forwarded untracked, {tracked} tracked, 500 established kept, in {flood_took:?}", 2 * slots);
}

#[test]
fn a_flood_evicts_flows_gone_silent_and_keeps_those_still_sending() {
    if !root() {
        return;
    }
    let mut harness = unlimited_harness();
    four_backends(&mut harness, PROTOCOL_TCP, 1);
    four_backends(&mut harness, PROTOCOL_UDP, 2);
    let (client, vip) = (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4));
    let slots = flow_buckets(4096) as usize * FLOW_WAYS;

    // 1000 flows (TCP and UDP): the even ones keep sending every 200 ms for longer than the
    // eviction threshold, the odd ones go silent after their first packet.
    let opened: Vec<(u16, Transport, IpAddr)> = (0..1000u16)
        .map(|n| {
            let transport = if n % 4 < 2 { Transport::TcpSyn } else { Transport::Udp };
            (1000 + n, transport, forward(&harness, client, vip, 1000 + n, transport))
        })
        .collect();
    let later = |transport| if matches!(transport, Transport::TcpSyn) { Transport::TcpAck } else { Transport::Udp };
    let started = Instant::now();
    let threshold = Duration::from_nanos(FLOW_EVICT_IDLE_NS);
    while started.elapsed() < threshold + Duration::from_millis(500) {
        for (port, transport, backend) in opened.iter().step_by(2) {
            assert_eq!(forward(&harness, client, vip, *port, later(*transport)), *backend, "port {port}: its backend");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // A flood of twice as many new flows as the cache has ways.
    for n in 0..(2 * slots) as u32 {
        let source = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        forward(&harness, source, vip, 20000 + (n % 1000) as u16, Transport::TcpSyn);
    }
    let protocol = |transport| if matches!(transport, Transport::Udp) { PROTOCOL_UDP } else { PROTOCOL_TCP };
    let tracked = |port: u16, transport| harness.dataplane.counters.flow(&flow_key(client, vip, protocol(transport), (port, 80))).is_some();
    let active_kept = opened.iter().step_by(2).filter(|(port, transport, _)| tracked(*port, *transport)).count();
    let silent_kept = opened.iter().skip(1).step_by(2).filter(|(port, transport, _)| tracked(*port, *transport)).count();
    assert_eq!(active_kept, 500, "every flow that kept sending is still tracked");
    assert!(silent_kept < 50, "{silent_kept} of the 500 silent flows kept: the flood should have taken their ways");
    for (port, transport, backend) in opened.iter().step_by(2) {
        assert_eq!(forward(&harness, client, vip, *port, later(*transport)), *backend, "port {port}: its backend after the flood");
    }
    eprintln!("after {:?} and a flood of {} flows into {slots} ways: 500 of 500 active flows kept, {silent_kept} of 500 silent", started.elapsed(), 2 * slots);
}

/// An IPv4 TCP VIP over four backends (ids 10 to 13), as the controller's flow tests use it.
fn controller_harness() -> (Harness, IpAddr, IpAddr) {
    let mut harness = unlimited_harness();
    four_backends(&mut harness, PROTOCOL_TCP, 1);
    (harness, IpAddr::V4(CLIENT4), IpAddr::V4(VIP4))
}

/// The data plane's coarse clock (`bpf_ktime_get_coarse_ns`), which flow times are in.
fn now() -> u64 {
    failover_ctl::sys::coarse_now_ns().unwrap()
}

/// What the controller places (`Counters::place_flow`, as flow sync does with a peer's flows)
/// the program follows, for every backend, whatever the table says; placing is idempotent; and
/// a bucket whose eight ways all hold recently seen flows takes no ninth, as the program's own
/// insert never evicts an active flow.
#[test]
fn flows_the_controller_places_are_followed_and_never_evict_an_active_flow() {
    use failover_ctl::maps::Placed;
    if !root() {
        return;
    }
    let (mut harness, client, vip) = controller_harness();
    let key = flow_key(client, vip, PROTOCOL_TCP, (3000, 80));
    // The table sends the port to one backend; a placed entry sends it to each of the four.
    for (n, id) in (10..14u32).enumerate() {
        let value = FlowValue { backend_id: id, vip_id: 1, last_seen_ns: 0 };
        let placed = harness.dataplane.counters.place_flow(&key, value, now());
        assert_eq!(placed, if n == 0 { Placed::New } else { Placed::Moved });
        assert_eq!(harness.dataplane.counters.place_flow(&key, value, now()), Placed::Refreshed);
        let to = forward(&harness, client, vip, 3000, Transport::TcpAck);
        assert_eq!(to, backend4(n as u8 + 1), "placed on id {id}");
    }

    // Nine flows of one bucket: eight take its ways, the ninth finds every way active.
    let mask = flow_buckets(4096) - 1;
    let bucket_of = |port: u16| failover_common::hash::flow_key_hash(&flow_key(client, vip, PROTOCOL_TCP, (port, 80)), false) & mask;
    // A bucket the first flow is not in.
    let target = (4000..u16::MAX).map(bucket_of).find(|bucket| *bucket != bucket_of(3000)).unwrap();
    let same: Vec<u16> = (4000..u16::MAX).filter(|port| bucket_of(*port) == target).take(FLOW_WAYS + 1).collect();
    assert_eq!(same.len(), FLOW_WAYS + 1, "nine ports of one bucket");
    let value = FlowValue { backend_id: 10, vip_id: 1, last_seen_ns: 0 };
    for (n, port) in same.iter().enumerate() {
        let placed = harness.dataplane.counters.place_flow(&flow_key(client, vip, PROTOCOL_TCP, (*port, 80)), value, now());
        let expected = if n < FLOW_WAYS { Placed::New } else { Placed::Full };
        assert_eq!(placed, expected, "port {port}, flow {n} of the bucket");
    }
    for port in &same[..FLOW_WAYS] {
        assert!(harness.dataplane.counters.flow(&flow_key(client, vip, PROTOCOL_TCP, (*port, 80))).is_some(), "port {port} kept");
    }
}

/// How long a flow has been idle, as the controller reads it (`Counters::look_flow`, which flow
/// sync uses to leave out flows without a packet for `idle_timeout`): 0 after a packet, then the
/// time since that look, until the next packet.
#[test]
fn a_look_measures_a_flows_idleness_from_its_last_packet() {
    if !root() {
        return;
    }
    let (mut harness, client, vip) = controller_harness();
    let key = flow_key(client, vip, PROTOCOL_TCP, (5000, 80));
    assert!(harness.dataplane.counters.look_flow(&key, now()).is_none(), "not tracked yet");
    forward(&harness, client, vip, 5000, Transport::TcpSyn);
    forward(&harness, client, vip, 5000, Transport::TcpAck);
    let (value, idle) = harness.dataplane.counters.look_flow(&key, now()).expect("tracked");
    assert_eq!((value.vip_id, idle), (1, 0), "a packet since the last look: idle 0");
    std::thread::sleep(Duration::from_millis(300));
    let (_, idle) = harness.dataplane.counters.look_flow(&key, now()).unwrap();
    let idle = Duration::from_nanos(idle);
    assert!(idle >= Duration::from_millis(250) && idle < Duration::from_secs(2), "idle {idle:?} after 300 ms without a packet");
    forward(&harness, client, vip, 5000, Transport::TcpAck);
    assert_eq!(harness.dataplane.counters.look_flow(&key, now()).unwrap().1, 0, "a packet again: idle 0");
}
