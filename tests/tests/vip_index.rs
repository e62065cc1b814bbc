//! An established flow finds its VIP through `VIP_INDEX` (contract rule 9 of
//! `failover_common::maps`) instead of a `VIPS` lookup. On the real program: the shortcut is
//! taken, and it answers as `VIPS` would whatever happens to the VIP meanwhile — removed, its id
//! given to another VIP, republished under another id, released, shadowed by a VIP of its own
//! port, or its backend down.

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
        let not_vip = harness.reason(stats::PASS_NOT_VIP);
        assert_eq!(send(&harness, client, vip, (40001, 80), Transport::TcpSyn), Err("XDP_PASS"), "{vip}: a new flow asks VIPS");
        assert_eq!(send(&harness, client, vip, (40002, 80), Transport::TcpAck), Err("XDP_PASS"), "{vip}: so does an untracked one");
        assert_eq!(harness.reason(stats::PASS_NOT_VIP), not_vip + 2);
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
