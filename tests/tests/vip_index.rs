//! A packet finds its VIP through `VIP_INDEX` (contract rule 9 of `failover_common::maps`):
//! an established flow by the vip id its entry carries, a new one by its service's slot in
//! `VIP_SLOTS`, instead of a `VIPS` lookup. On the real program: the shortcuts are taken, and
//! they answer as `VIPS` would whatever happens to the VIP meanwhile — removed, its id given to
//! another VIP, republished under another id or with another table, released, shadowed by a VIP
//! of its own port, sharing a slot, or its backend down.

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData};
use failover_common::{maps::*, stats};
use failover_ctl::maps::VipSettings;
use failover_tests::{craft::flow_key, *};

/// Sends one packet of client:port -> vip:vip_port; the backend it was tunnelled to, or the
/// action when it was not forwarded.
fn send(harness: &Harness, client: IpAddr, vip: IpAddr, ports: (u16, u16), transport: Transport) -> Result<IpAddr, &'static str> {
    let frame = packet(Tags::None, client, vip, transport, ports, b"x");
    let (action, out) = harness.run(&frame);
    if action != XDP_TX {
        return Err(action_name(action));
    }
    Ok(match u16::from_be_bytes([out[12], out[13]]) {
        0x0800 => IpAddr::from(<[u8; 4]>::try_from(&out[30..34]).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(&out[38..54]).unwrap()),
    })
}

/// The program's `VIPS` map, opened by id behind the map writer's back.
fn vips_map(harness: &Harness) -> HashMap<MapData, VipKey, VipMeta> {
    let ids = harness.program().info().expect("program info").map_ids().expect("map ids").expect("the kernel lists map ids");
    for id in ids {
        let map = MapData::from_id(id).expect("open a map of the program");
        if map.info().expect("map info").name_as_str() == Some(names::VIPS) {
            return HashMap::try_from(Map::HashMap(map)).expect("VIPS is a hash map");
        }
    }
    panic!("the program has no VIPS map");
}

#[test]
fn an_established_flow_is_forwarded_without_its_vips_entry() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    for (vip_id, client, vip, backend) in
        [(1, IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), backend4(1)), (2, IpAddr::V6(CLIENT6), IpAddr::V6(VIP6), backend6(1))]
    {
        harness.simple_vip(vip, 80, PROTOCOL_TCP, vip_id, backend);
        assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpSyn), Ok(backend), "{vip}: opened");
        // With the VIPS entry gone (the index still names the VIP), only the index can answer.
        vips_map(&harness).remove(&vip_key(vip, 80, PROTOCOL_TCP)).expect("remove the VIPS entry");
        assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpAck), Ok(backend), "{vip}: the established flow, by its index");
        // Nor do the others: a new flow and an untracked one find it through its slot.
        assert_eq!(send(&harness, client, vip, (40001, 80), Transport::TcpSyn), Ok(backend), "{vip}: a new flow, by its slot");
        assert_eq!(send(&harness, client, vip, (40002, 80), Transport::TcpAck), Ok(backend), "{vip}: an untracked one, by its slot");
        // Port 81 has no service, so no slot: VIPS answers, and has nothing.
        let not_vip = harness.reason(stats::PASS_NOT_VIP);
        assert_eq!(send(&harness, client, vip, (40003, 81), Transport::TcpSyn), Err("XDP_PASS"), "{vip}: no service at port 81");
        assert_eq!(harness.reason(stats::PASS_NOT_VIP), not_vip + 1);
    }
}

#[test]
fn a_removed_vip_and_its_reused_id_forward_no_stale_flow() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let (client, vip, other) = (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), IpAddr::V4(OTHER4));
    let key = vip_key(vip, 80, PROTOCOL_TCP);
    harness.simple_vip(vip, 80, PROTOCOL_TCP, 1, backend4(1));
    // Another service keeps the address a VIP address (its filter bit set), so the flows below
    // reach the lookups instead of passing at the filter.
    harness.simple_vip(vip, 443, PROTOCOL_TCP, 3, backend4(3));
    assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpSyn), Ok(backend4(1)));
    harness.dataplane.writer.remove_vip(key).expect("remove the VIP");
    harness.dataplane.writer.remove_backend(10).expect("remove its backend");
    assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpAck), Err("XDP_PASS"), "removed: the tracked flow passes");

    // Id 1 now stands for a VIP at another address; its backend gets the removed one's id too.
    harness.simple_vip(other, 80, PROTOCOL_TCP, 1, backend4(2));
    assert_eq!(harness.dataplane.counters.flow(&flow_key(client, vip, PROTOCOL_TCP, (40000, 80))).map(|value| value.vip_id), Some(1));
    let not_vip = harness.reason(stats::PASS_NOT_VIP);
    assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpAck), Err("XDP_PASS"), "the old flow names id 1, which is another VIP now");
    assert_eq!(harness.reason(stats::PASS_NOT_VIP), not_vip + 1);
    assert_eq!(send(&harness, client, other, (40000, 80), Transport::TcpSyn), Ok(backend4(2)));
    assert_eq!(send(&harness, client, other, (40000, 80), Transport::TcpAck), Ok(backend4(2)), "the new VIP's own flow");
}

#[test]
fn a_vip_republished_under_another_id_or_released_is_what_its_flows_see() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let (client, vip) = (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4));
    harness.simple_vip(vip, 80, PROTOCOL_TCP, 1, backend4(1));
    assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpSyn), Ok(backend4(1)));

    // Under id 2 with its own backend: the flow's backend is no member of id 2, so it is chosen
    // anew from id 2's table and tracked under id 2.
    harness.backend(20, 2, backend4(2), HEALTH_UP);
    harness.vip(vip, 80, PROTOCOL_TCP, 2, VIP_OWNED, &[20; 13]);
    assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpAck), Ok(backend4(2)));
    let tracked = harness.dataplane.counters.flow(&flow_key(client, vip, PROTOCOL_TCP, (40000, 80))).expect("tracked");
    assert_eq!((tracked.vip_id, tracked.backend_id), (2, 20));

    // Released (no group, VIP_OWNED off): the established flow passes to the kernel.
    let not_owned = harness.reason(stats::PASS_NOT_OWNED);
    harness.dataplane.writer.publish_vip(vip_key(vip, 80, PROTOCOL_TCP), VipSettings { vip_id: 2, flags: 0 }, &[20; 13]).expect("release");
    assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpAck), Err("XDP_PASS"));
    assert_eq!(harness.reason(stats::PASS_NOT_OWNED), not_owned + 1);
    harness.vip(vip, 80, PROTOCOL_TCP, 2, VIP_OWNED, &[20; 13]);
    assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpAck), Ok(backend4(2)), "owned again");
}

#[test]
fn a_flow_of_an_all_ports_vip_follows_a_vip_of_its_own_port() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let (client, vip) = (IpAddr::V6(CLIENT6), IpAddr::V6(VIP6));
    harness.simple_vip(vip, 0, PROTOCOL_TCP, 1, backend6(1));
    assert_eq!(send(&harness, client, vip, (40000, 8080), Transport::TcpSyn), Ok(backend6(1)));
    assert_eq!(send(&harness, client, vip, (40000, 8080), Transport::TcpAck), Ok(backend6(1)));
    // VIPS gives a port its own VIP before the all-ports one; the index must not keep the flow
    // on the all-ports VIP.
    harness.simple_vip(vip, 8080, PROTOCOL_TCP, 2, backend6(2));
    assert_eq!(send(&harness, client, vip, (40000, 8080), Transport::TcpAck), Ok(backend6(2)));
    assert_eq!(send(&harness, client, vip, (40001, 9090), Transport::TcpSyn), Ok(backend6(1)), "other ports stay with the all-ports VIP");
}

#[test]
fn an_established_flow_whose_backend_is_down_is_chosen_anew_from_the_table() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let (client, vip) = (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4));
    harness.backend(10, 1, backend4(1), HEALTH_UP);
    harness.backend(11, 1, backend4(2), HEALTH_UP);
    let table: Vec<u32> = (0..13).map(|slot| 10 + slot % 2).collect();
    harness.vip(vip, 80, PROTOCOL_TCP, 1, VIP_OWNED, &table);
    let first = send(&harness, client, vip, (40000, 80), Transport::TcpSyn).expect("forwarded");
    let (down, other, other_id) = if first == backend4(1) { (10, backend4(2), 11) } else { (11, backend4(1), 10) };
    harness.dataplane.writer.set_health(down, HEALTH_DOWN).expect("mark down");
    let reselected = harness.reason(stats::EVENT_FLOW_RESELECTED);
    assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpAck), Ok(other));
    assert_eq!(harness.reason(stats::EVENT_FLOW_RESELECTED), reselected + 1);
    let tracked = harness.dataplane.counters.flow(&flow_key(client, vip, PROTOCOL_TCP, (40000, 80))).expect("tracked");
    assert_eq!((tracked.vip_id, tracked.backend_id), (1, other_id), "tracked again, on the live backend");
    assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpAck), Ok(other));
}

#[test]
fn a_new_flow_finds_its_vip_through_its_slot_and_its_current_table() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    for (vip_id, client, vip, first, second) in [
        (1, IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), backend4(1), backend4(2)),
        (2, IpAddr::V6(CLIENT6), IpAddr::V6(VIP6), backend6(1), backend6(2)),
    ] {
        let (first_id, second_id) = (vip_id * 10, vip_id * 10 + 1);
        harness.backend(first_id, vip_id, first, HEALTH_UP);
        harness.backend(second_id, vip_id, second, HEALTH_UP);
        let key = harness.vip(vip, 80, PROTOCOL_TCP, vip_id, VIP_OWNED, &[first_id; 13]);
        harness.vip(vip, 80, PROTOCOL_TCP, vip_id, VIP_OWNED, &[second_id; 13]);
        // Without the VIPS entry only the slot and the index can answer, with the table
        // published last.
        vips_map(&harness).remove(&key).expect("remove the VIPS entry");
        assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpSyn), Ok(second), "{vip}: a SYN, by its slot");
        assert_eq!(send(&harness, client, vip, (40001, 80), Transport::Udp), Err("XDP_PASS"), "{vip}: UDP has no VIP here");
    }
}

#[test]
fn services_sharing_a_slot_are_found_and_the_slot_passes_on_when_one_leaves() {
    if !root() {
        return;
    }
    let mut harness = Harness::new();
    let (client, vip) = (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4));
    let slot = |port: u16| {
        let key = vip_key(vip, port, PROTOCOL_TCP);
        failover_common::hash::service_slot(&key.address, service_word(key.port, key.protocol, key.family))
    };
    let other_port = (81..u16::MAX).find(|port| slot(*port) == slot(80)).expect("a port whose service shares port 80's slot");
    harness.backend(10, 1, backend4(1), HEALTH_UP);
    let first = harness.vip(vip, 80, PROTOCOL_TCP, 1, VIP_OWNED, &[10; 13]);
    harness.simple_vip(vip, other_port, PROTOCOL_TCP, 2, backend4(2));
    assert_eq!(send(&harness, client, vip, (40000, 80), Transport::TcpSyn), Ok(backend4(1)));
    assert_eq!(send(&harness, client, vip, (40000, other_port), Transport::TcpSyn), Ok(backend4(2)), "port {other_port}, by VIPS");

    // The second service does not hold the slot: without its VIPS entry it is not found.
    let second = vip_key(vip, other_port, PROTOCOL_TCP);
    let meta = vips_map(&harness).get(&second, 0).expect("the second service's VIPS entry");
    vips_map(&harness).remove(&second).expect("remove it");
    assert_eq!(send(&harness, client, vip, (40001, other_port), Transport::TcpSyn), Err("XDP_PASS"));
    vips_map(&harness).insert(second, meta, 0).expect("put it back");

    // The first leaves: its slot goes to the second, which is then found without VIPS.
    harness.dataplane.writer.remove_vip(first).expect("remove the first VIP");
    assert_eq!(send(&harness, client, vip, (40002, 80), Transport::TcpSyn), Err("XDP_PASS"), "port 80 has no VIP now");
    vips_map(&harness).remove(&second).expect("remove the second's VIPS entry");
    assert_eq!(send(&harness, client, vip, (40003, other_port), Transport::TcpSyn), Ok(backend4(2)), "port {other_port}, by the slot it took over");
}
