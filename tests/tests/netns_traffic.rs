//! Real traffic through the load balancer and the decap program: a client, a router, a load
//! balancer and a backend in private network namespaces joined by veth pairs. The client talks
//! UDP and TCP to the VIP; the load balancer encapsulates with XDP_TX, the router forwards the
//! tunnel packet to the backend, whose decap program strips it; the backend answers the client
//! directly (DSR).

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use aya::programs::XdpMode;
use failover_common::{maps::*, stats};
use failover_ctl::{
    address::to_words,
    loader::{Dataplane, Decap, LoadOptions},
    maps::VipSettings,
};
use failover_tests::root;
use netlab::{veth, Namespace};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 100, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
const LB: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 201, 3, 2);

struct Topology {
    client: Namespace,
    router: Namespace,
    lb: Namespace,
    backend: Namespace,
}

fn topology() -> Topology {
    netlab::cleanup_stale().unwrap();
    let t = Topology {
        client: Namespace::create("client").unwrap(),
        router: Namespace::create("router").unwrap(),
        lb: Namespace::create("lb").unwrap(),
        backend: Namespace::create("backend").unwrap(),
    };
    veth(&t.client, "c0", &t.router, "r0").unwrap();
    veth(&t.lb, "l0", &t.router, "r1").unwrap();
    veth(&t.backend, "b0", &t.router, "r2").unwrap();
    t.client.ip("addr add 10.201.1.2/24 dev c0").unwrap();
    t.client.ip("route add default via 10.201.1.1").unwrap();
    t.router.ip("addr add 10.201.1.1/24 dev r0").unwrap();
    t.router.ip("addr add 10.201.2.1/24 dev r1").unwrap();
    t.router.ip("addr add 10.201.3.1/24 dev r2").unwrap();
    t.router.ip("route add 10.201.100.1/32 via 10.201.2.2").unwrap();
    t.router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    t.lb.ip("addr add 10.201.2.2/24 dev l0").unwrap();
    t.backend.ip("addr add 10.201.3.2/24 dev b0").unwrap();
    t.backend.ip("route add default via 10.201.3.1").unwrap();
    t.backend.ip("addr add 10.201.100.1/32 dev lo").unwrap();
    for ns in [&t.client, &t.router, &t.lb, &t.backend] {
        ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]).unwrap();
        ns.exec(&["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]).unwrap();
    }
    // Veth hands partially checksummed packets to its peer; a packet that leaves through an
    // XDP_TX tunnel must carry a complete checksum.
    t.client.exec(&["ethtool", "-K", "c0", "tx", "off"]).unwrap();
    t
}

#[test]
fn udp_and_tcp_through_encap_and_decap() {
    use netlab::prerequisite::require_program;
    if !root()
        || !require_program("ip", "iproute2")
        || !require_program("sysctl", "procps")
        || !require_program("ethtool", "ethtool")
    {
        return;
    }
    let t = topology();
    let router_mac = t.router.mac("r1").unwrap();
    let lb_mac = t.lb.mac("l0").unwrap();

    // Load balancer on l0 (native XDP); XDP_TX on veth needs NAPI on the peer, which an
    // attached XDP program provides: a decap program with no VIPs passes everything.
    let mut dataplane = Dataplane::load(LoadOptions { table_pool_slots: 1 << 18, flow_entries: 4096 }).unwrap();
    let config = Config {
        next_hop_mac: router_mac,
        interface_mac: lb_mac,
        mtu: 1500,
        source_v4_base: to_words(IpAddr::V4(LB)).0[0],
        udp_idle_timeout_ns: 30_000_000_000,
        ..Config::default()
    };
    dataplane.writer.set_config(&config).unwrap();
    let (backend_words, family) = to_words(IpAddr::V4(BACKEND));
    dataplane.writer.set_backend(1, Backend { address: backend_words, vip_id: 1, family, _padding: [0; 3] }, HEALTH_UP).unwrap();
    for port in [5353u16, 8080] {
        let protocol = if port == 5353 { PROTOCOL_UDP } else { PROTOCOL_TCP };
        let (vip_words, family) = to_words(IpAddr::V4(VIP));
        let key = VipKey { address: vip_words, port: port.to_be(), protocol, family };
        let vip_id = if port == 5353 { 1 } else { 2 };
        if vip_id == 2 {
            dataplane.writer.set_backend(2, Backend { address: backend_words, vip_id: 2, family, _padding: [0; 3] }, HEALTH_UP).unwrap();
        }
        dataplane.writer.publish_vip(key, VipSettings { vip_id, flags: VIP_OWNED }, &[vip_id; 251]).unwrap();
    }
    t.lb.enter(|| dataplane.attach("l0", XdpMode::Driver)).unwrap().unwrap();
    let mut napi = Decap::load().unwrap();
    t.router.enter(|| napi.attach("r1", XdpMode::Driver)).unwrap().unwrap();
    let mut decap = Decap::load().unwrap();
    decap.add_vip(IpAddr::V4(VIP)).unwrap();
    t.backend.enter(|| decap.attach("b0", XdpMode::Driver)).unwrap().unwrap();

    // Backend servers, bound to the VIP inside the backend namespace.
    let udp_server = t.backend.enter(|| UdpSocket::bind((VIP, 5353))).unwrap().unwrap();
    udp_server.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let tcp_server = t.backend.enter(|| TcpListener::bind((VIP, 8080))).unwrap().unwrap();

    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut buffer = [0u8; 512];
            for _ in 0..5 {
                let Ok((n, peer)) = udp_server.recv_from(&mut buffer) else { return };
                let mut reply = b"pong ".to_vec();
                reply.extend_from_slice(&buffer[..n]);
                udp_server.send_to(&reply, peer).unwrap();
            }
        });
        scope.spawn(|| {
            let (mut stream, peer) = tcp_server.accept().unwrap();
            assert_eq!(peer.ip(), IpAddr::V4(CLIENT), "backend sees the real client address");
            stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut buffer = [0u8; 64];
            let n = stream.read(&mut buffer).unwrap();
            stream.write_all(&buffer[..n]).unwrap();
        });

        let client = t.client.enter(|| UdpSocket::bind((CLIENT, 0))).unwrap().unwrap();
        client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        for i in 0..5 {
            let message = format!("ping {i}");
            client.send_to(message.as_bytes(), (VIP, 5353)).unwrap();
            let mut buffer = [0u8; 512];
            let (n, from) = client.recv_from(&mut buffer).expect("UDP reply through the VIP");
            assert_eq!(from, SocketAddr::from((VIP, 5353)), "reply comes from the VIP (DSR)");
            assert_eq!(&buffer[..n], format!("pong {message}").as_bytes());
        }

        let mut stream = t
            .client
            .enter(|| TcpStream::connect_timeout(&SocketAddr::from((VIP, 8080)), Duration::from_secs(3)))
            .unwrap()
            .expect("TCP connect through the VIP");
        stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        stream.write_all(b"hello over DSR").unwrap();
        let mut buffer = [0u8; 64];
        let n = stream.read(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"hello over DSR");
    });

    let reasons = dataplane.counters.reasons().unwrap();
    assert!(reasons[stats::TX_FORWARD as usize].packets >= 5 + 3, "forwarded {:?}", reasons[stats::TX_FORWARD as usize]);
    assert!(decap.counter(stats::DECAP_STRIPPED).unwrap().packets >= 5 + 3);
    assert_eq!(dataplane.counters.vip(1).unwrap().packets, 5, "five UDP requests through VIP 1");
    assert!(dataplane.counters.backend(2).unwrap().packets >= 3, "TCP handshake, data and close through backend 2");
    drop(dataplane);
    drop(decap);
    drop(napi);
}
