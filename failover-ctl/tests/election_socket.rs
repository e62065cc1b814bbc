//! The VRRP socket on real interfaces: two network namespaces joined by a veth pair, adverts
//! sent by one side and read by the other (multicast and unicast, IPv4 and IPv6), with the TTL /
//! hop limit and the destination the receive checks need, and keepalived 2.2.7 decoding what we
//! send (it logs nothing against our adverts and stays backup under a higher priority); and
//! gratuitous ARP / unsolicited NA moving a neighbour's cache entry to our MAC.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use failover_ctl::election::{
    announce::Announcer,
    codec::{self, Advert, ChecksumForm, MULTICAST_V4, MULTICAST_V6},
    socket::{Datagram, VrrpSocket},
};
use netlab::{prerequisite, veth, Namespace};

const A4: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 2);
const VIRTUAL4: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 100);

/// Two namespaces, `a` and `b`, joined by veth `va` <-> `vb` with 10.211.0.1/24 and .2/24 and
/// fixed link-local addresses fe80::a and fe80::b.
struct Pair {
    a: Namespace,
    b: Namespace,
}

impl Pair {
    fn new() -> Self {
        let a = Namespace::create("vrrpa").unwrap();
        let b = Namespace::create("vrrpb").unwrap();
        veth(&a, "va", &b, "vb").unwrap();
        a.ip(&format!("addr add {A4}/24 dev va")).unwrap();
        b.ip(&format!("addr add {B4}/24 dev vb")).unwrap();
        a.ip("addr add fe80::a/64 dev va nodad").unwrap();
        b.ip("addr add fe80::b/64 dev vb nodad").unwrap();
        Self { a, b }
    }

    fn socket(namespace: &Namespace, interface: &str, source: IpAddr, runtime: &tokio::runtime::Runtime) -> VrrpSocket {
        let index = namespace.if_index(interface).unwrap();
        let handle = runtime.handle().clone();
        namespace
            .enter(move || {
                let _guard = handle.enter();
                VrrpSocket::open(interface, index, source)
            })
            .unwrap()
            .expect("open the VRRP socket")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn receive(socket: &VrrpSocket) -> Datagram {
    tokio::time::timeout(Duration::from_secs(3), socket.recv())
        .await
        .expect("a packet within 3 s")
        .expect("recv")
        .expect("a usable packet")
}

fn advert(addresses: Vec<IpAddr>) -> Advert {
    Advert { vrid: 42, priority: 150, interval_cs: 10, addresses }
}

#[test]
fn ipv4_adverts_cross_the_link_multicast_and_unicast() {
    if !prerequisite::root("network namespaces, raw sockets") || !prerequisite::require_program("ip", "iproute2") {
        return;
    }
    let pair = Pair::new();
    let runtime = runtime();
    let a = Pair::socket(&pair.a, "va", A4.into(), &runtime);
    let b = Pair::socket(&pair.b, "vb", B4.into(), &runtime);
    runtime.block_on(async {
        let sent = advert(vec![VIRTUAL4.into()]);
        for destination in [IpAddr::V4(MULTICAST_V4), IpAddr::V4(B4)] {
            let message = sent.encode(A4.into(), destination, ChecksumForm::PseudoHeader);
            a.send(destination, &message).await.unwrap();
            let got = receive(&b).await;
            assert_eq!(got, Datagram { source: A4.into(), destination, ttl: 255, message: message.clone() }, "to {destination}");
            assert_eq!(codec::decode(&got.received(), ChecksumForm::PseudoHeader), Ok(sent.clone()));
        }
        // The sender does not hear its own multicast.
        let echo = tokio::time::timeout(Duration::from_millis(300), a.recv()).await;
        assert!(echo.is_err(), "no loopback of our own advert: {echo:?}");
    });
}

#[test]
fn ipv6_adverts_carry_hop_limit_and_destination() {
    if !prerequisite::root("network namespaces, raw sockets") || !prerequisite::require_program("ip", "iproute2") {
        return;
    }
    let pair = Pair::new();
    let runtime = runtime();
    let a_source: Ipv6Addr = "fe80::a".parse().unwrap();
    let a = Pair::socket(&pair.a, "va", a_source.into(), &runtime);
    let b = Pair::socket(&pair.b, "vb", "fe80::b".parse::<Ipv6Addr>().unwrap().into(), &runtime);
    runtime.block_on(async {
        let sent = advert(vec!["fe80::100".parse().unwrap(), "2001:db8::100".parse().unwrap()]);
        for destination in [IpAddr::V6(MULTICAST_V6), "fe80::b".parse().unwrap()] {
            let message = sent.encode(a_source.into(), destination, ChecksumForm::PseudoHeader);
            a.send(destination, &message).await.unwrap();
            let got = receive(&b).await;
            assert_eq!(got, Datagram { source: a_source.into(), destination, ttl: 255, message: message.clone() }, "to {destination}");
            assert_eq!(codec::decode(&got.received(), ChecksumForm::Rfc9568), Ok(sent.clone()));
        }
    });
}

/// keepalived in namespace `b` as a VRRPv3 backup of VRID 42 (priority 100, 0.1 s adverts)
/// protecting 10.211.0.100; killed on drop.
struct Keepalived {
    child: Child,
    dir: std::path::PathBuf,
}

impl Keepalived {
    fn start(namespace: &Namespace) -> Self {
        let dir = std::env::temp_dir().join(format!("failover-ka-{}", namespace.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global_defs {{\n  router_id test\n  vrrp_version 3\n}}\nvrrp_instance test {{\n  state BACKUP\n  interface vb\n  virtual_router_id 42\n  priority 100\n  advert_int 0.1\n  virtual_ipaddress {{\n    {VIRTUAL4}/32\n  }}\n}}\n"
        );
        std::fs::write(dir.join("keepalived.conf"), config).unwrap();
        let child = namespace
            .command("keepalived")
            .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp", "--use-file"])
            .arg(dir.join("keepalived.conf"))
            .arg("--pid")
            .arg(dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(dir.join("vrrp.pid"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keepalived");
        Self { child, dir }
    }

    /// Stops keepalived and returns what it logged.
    fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let output = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn keepalived_accepts_our_adverts_and_stays_backup() {
    if !prerequisite::root("network namespaces, raw sockets")
        || !prerequisite::require_program("ip", "iproute2")
        || !prerequisite::require_program("keepalived", "keepalived")
    {
        return;
    }
    let pair = Pair::new();
    let runtime = runtime();
    let ours = Pair::socket(&pair.a, "va", A4.into(), &runtime);
    let keepalived = Keepalived::start(&pair.b);
    let sent = Advert { vrid: 42, priority: 200, interval_cs: 10, addresses: vec![VIRTUAL4.into()] };
    let message = sent.encode(A4.into(), MULTICAST_V4.into(), ChecksumForm::PseudoHeader);
    runtime.block_on(async {
        // Two seconds of adverts at 0.1 s: keepalived's down interval is ~0.36 s, so it would be
        // master long before the end if it rejected them.
        for _ in 0..20 {
            ours.send(MULTICAST_V4.into(), &message).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let log = keepalived.stop();
    assert!(log.contains("Entering BACKUP STATE"), "keepalived started as backup:\n{log}");
    assert!(!log.contains("Entering MASTER STATE"), "keepalived took over, so it rejected our adverts:\n{log}");
    for complaint in ["checksum", "invalid", "bad", "mismatch", "received lower"] {
        assert!(!log.to_lowercase().contains(complaint), "keepalived complained ({complaint}):\n{log}");
    }
}

/// The MAC `namespace` has in its neighbour table for `address` on `interface`.
fn neighbour_mac(namespace: &Namespace, interface: &str, address: IpAddr) -> Option<String> {
    let family = if address.is_ipv4() { "-4" } else { "-6" };
    let output = namespace.exec(&["ip", family, "neigh", "show", "to", &address.to_string(), "dev", interface]).unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|word| *word == "lladdr").and(words.next()).map(str::to_owned)
}

#[test]
fn announcements_move_a_neighbours_cache_entry_to_our_mac() {
    if !prerequisite::root("network namespaces, raw sockets") || !prerequisite::require_program("ip", "iproute2") {
        return;
    }
    let pair = Pair::new();
    let virtual6: IpAddr = "2001:db8::100".parse().unwrap();
    // The "router" (b) still has the old master's MAC for both addresses.
    for address in [IpAddr::V4(VIRTUAL4), virtual6] {
        pair.b.ip(&format!("neigh replace {address} lladdr 02:00:00:00:00:99 dev vb nud stale")).unwrap();
        assert_eq!(neighbour_mac(&pair.b, "vb", address).as_deref(), Some("02:00:00:00:00:99"));
    }
    let mac = pair.a.mac("va").unwrap();
    let index = pair.a.if_index("va").unwrap();
    let announcer = pair
        .a
        .enter(move || Announcer::open("va", index, mac, Some("fe80::a".parse().unwrap())))
        .unwrap()
        .expect("open the announcer");
    announcer.announce(&[IpAddr::V4(VIRTUAL4), virtual6]).unwrap();
    let ours = mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":");
    let deadline = Instant::now() + Duration::from_secs(3);
    for address in [IpAddr::V4(VIRTUAL4), virtual6] {
        loop {
            let seen = neighbour_mac(&pair.b, "vb", address);
            if seen.as_deref() == Some(ours.as_str()) {
                break;
            }
            assert!(Instant::now() < deadline, "{address}: the neighbour entry still says {seen:?}, not {ours}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
