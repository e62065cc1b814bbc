//! Tables republished in a loop while another thread runs packets through the program: every
//! packet must go to a backend of a table that was live while it ran, never elsewhere (a torn
//! table or a region rewritten under a reader would show up as another table's backend).

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use failover_common::maps::*;
use failover_ctl::{address::to_words, loader::Dataplane, maps::VipSettings};
use failover_tests::*;

const BACKENDS: u32 = 5;
const TABLE_SIZE: usize = 4093;
const MAX_PUBLISHES: usize = 300;
const MAX_PACKETS: usize = 300_000;
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// Publish k puts backend `k % BACKENDS + 1` in every slot.
fn backend_of(publish: usize) -> u32 {
    (publish as u32 % BACKENDS) + 1
}

#[test]
fn republishing_never_exposes_a_foreign_backend() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    for id in 1..=BACKENDS {
        harness.backend(id, 1, backend4(id as u8), HEALTH_UP);
    }
    let key = vip_key(IpAddr::V4(VIP4), 80, PROTOCOL_TCP);
    // Flow tracking off: every packet reads the table.
    let settings = VipSettings { vip_id: 1, flags: VIP_OWNED | VIP_NO_FLOW_TRACKING };
    harness.dataplane.writer.publish_vip(key, settings, &[backend_of(0); TABLE_SIZE]).unwrap();

    // `started` = index of the newest publish begun; `finished` = publishes completed.
    let started = AtomicUsize::new(0);
    let finished = AtomicUsize::new(1);
    let stop = AtomicBool::new(false);
    let Dataplane { loaded, writer, .. } = &mut harness.dataplane;
    let program: &aya::programs::Xdp = loaded.xdp().unwrap();
    let deadline = Instant::now() + TIME_LIMIT;

    let (packets, seen) = std::thread::scope(|scope| {
        let writer_thread = scope.spawn(|| {
            for k in 1..=MAX_PUBLISHES {
                if Instant::now() > deadline {
                    break;
                }
                started.store(k, Ordering::SeqCst);
                writer.publish_vip(key, settings, &[backend_of(k); TABLE_SIZE]).unwrap();
                finished.store(k + 1, Ordering::SeqCst);
            }
            stop.store(true, Ordering::SeqCst);
        });
        let mut packets = 0usize;
        let mut seen = BTreeSet::new();
        while !stop.load(Ordering::SeqCst) && packets < MAX_PACKETS && Instant::now() < deadline {
            let port = 1024 + (packets % 60000) as u16;
            let frame = packet(Tags::None, IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), Transport::TcpSyn, (port, 80), b"");
            let oldest = finished.load(Ordering::SeqCst) - 1;
            let (action, out) = run(program, &frame);
            let newest = started.load(Ordering::SeqCst);
            assert_eq!(action, XDP_TX, "packet {packets}: {}", action_name(action));
            let destination = u32::from_ne_bytes(out[30..34].try_into().unwrap());
            let allowed: Vec<u32> = (oldest..=newest).map(backend_of).collect();
            let got = (1..=BACKENDS).find(|id| to_words(backend4(*id as u8)).0[0] == destination);
            assert!(
                got.is_some_and(|id| allowed.contains(&id)),
                "packet {packets} went to {got:?} while publishes {oldest}..={newest} (backends {allowed:?}) were live"
            );
            seen.insert(got.unwrap());
            packets += 1;
        }
        stop.store(true, Ordering::SeqCst);
        writer_thread.join().unwrap();
        (packets, seen)
    });
    let publishes = finished.load(Ordering::SeqCst) - 1;
    eprintln!("{packets} packets across {publishes} publishes, backends seen {seen:?}");
    assert!(publishes >= 20, "only {publishes} publishes happened");
    assert!(packets >= 1000, "only {packets} packets ran");
    assert!(seen.len() >= 2, "packets never saw a table switch: {seen:?}");
}
