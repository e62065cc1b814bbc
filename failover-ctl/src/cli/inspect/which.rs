//! `which`: where a packet of a given flow goes — predicted from the maps and answered by the
//! pinned program itself on a crafted first packet (`BPF_PROG_TEST_RUN`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use anyhow::{bail, Context};
use aya::programs::{TestRun, TestRunOptions};
use failover_common::{
    hash,
    maps::{
        Backend, FlowKey, VipKey, VipMeta, HEALTH_DRAINING, HEALTH_UP, PROTOCOL_TCP, PROTOCOL_UDP,
        VIP_ALL_DOWN_PASS, VIP_HASH_SOURCE_ONLY, VIP_NO_FLOW_TRACKING,
    },
};
use serde::Serialize;

use super::{
    instance::{backend_address, backends_by_id, lookup_vip, monotonic_ns, open, vip_ref, State, VipRef},
    render::{emit, emit_json, fields, health_name, short_duration},
    Target,
};
use crate::{address, config::Protocol, maps::Counters};

/// XDP action codes (`enum xdp_action`).
const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;


#[derive(Serialize)]
struct BackendRef {
    /// None when the address is not a backend of the VIP.
    id: Option<u32>,
    address: String,
}

#[derive(Serialize)]
struct TrackedView {
    backend_id: u32,
    address: String,
    health_bit: String,
    age_ms: u64,
    /// Whether the entry still decides (its backend is up or draining, still of this VIP,
    /// and, for UDP, not expired); if not, the packet takes the table like a new flow.
    decides: bool,
}

#[derive(Serialize)]
struct NewFlowView {
    /// The flow's slot in the VIP's table.
    slot: u32,
    table_size: u32,
    /// The slot's backend or the next up one within `MAX_SLOT_PROBES` slots; none if all
    /// are down.
    backend: Option<BackendRef>,
}

#[derive(Serialize)]
struct WhichView {
    source: String,
    destination: String,
    protocol: String,
    vip: Option<VipRef>,
    /// The program's action: "XDP_TX", "XDP_PASS", "XDP_DROP", ...
    verdict: &'static str,
    /// Where the program sent the packet (XDP_TX of an encapsulated packet).
    backend: Option<BackendRef>,
    /// In words: why this verdict.
    explanation: String,
    /// The flow-table entry the packet found, if any.
    tracked: Option<TrackedView>,
    /// Where a new flow with this 5-tuple goes (from the table and the health bits).
    new_flow: Option<NewFlowView>,
    /// Whether the test run created a flow entry that was removed afterwards.
    flow_entry_removed: bool,
    /// The program's answer differs from what the maps predicted (they changed during the run).
    mismatch: Option<String>,
}

fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// The client's packet: a TCP SYN (the first packet of a new connection) or a UDP datagram,
/// from a locally administered MAC to the load balancer's interface MAC.
fn crafted_packet(
    source: SocketAddr,
    destination: SocketAddr,
    protocol: Protocol,
    interface_mac: [u8; 6],
) -> anyhow::Result<Vec<u8>> {
    const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    let ethernet = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, interface_mac);
    let ip = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ethernet.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => ethernet.ipv6(s.octets(), d.octets(), 64),
        _ => bail!("{source} and {destination} are of different address families"),
    };
    let mut frame = Vec::new();
    match protocol {
        Protocol::Tcp => ip.tcp(source.port(), destination.port(), 1, 64_240).syn().write(&mut frame, &[]),
        Protocol::Udp => ip.udp(source.port(), destination.port()).write(&mut frame, b"which"),
    }
    .context("building the test packet")?;
    Ok(frame)
}

/// The outer destination of an encapsulated frame (IPIP / 6in4 / 4in6 / IP6IP6), if it is one.
fn tunnel_destination(frame: &[u8]) -> Option<IpAddr> {
    let ether_type = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let ip = frame.get(14..)?;
    match ether_type {
        0x0800 if matches!(ip.get(9), Some(4 | 41)) => Some(IpAddr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?)),
        0x86dd if matches!(ip.get(6), Some(4 | 41)) => Some(IpAddr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?)),
        _ => None,
    }
}

/// The backend a new flow takes, as `probe_table` in the data plane picks it.
fn predict(
    table: &[u32],
    meta: &VipMeta,
    key: &FlowKey,
    backends: &BTreeMap<u32, (Backend, u32)>,
) -> (u32, Option<u32>) {
    let hash = hash::flow_key_hash(key, meta.flags & VIP_HASH_SOURCE_ONLY != 0);
    crate::maglev::lookup::pick(table, hash, |id| {
        backends.get(&id).is_some_and(|(backend, health)| *health == HEALTH_UP && backend.vip_id == meta.vip_id)
    })
}

/// Runs the pinned program on a crafted first packet of the flow and reports where it went.
///
/// Side effects, kept as small as the kernel allows: the run counts one packet in the VIP,
/// backend and reason counters and spends one flow-insert token; a flow entry the run created
/// (the flow was not tracked) is deleted again, so a new flow still takes the table. A flow that
/// was tracked keeps its entry, updated exactly as its next real packet would update it.
pub fn which(target: &Target, source: SocketAddr, destination: SocketAddr, protocol: Protocol) -> anyhow::Result<()> {
    let paths = &target.paths;
    let view = open(paths)?;
    let state = State::read(paths);
    state.warn();
    let (source_words, family) = address::to_words(source.ip());
    let (destination_words, destination_family) = address::to_words(destination.ip());
    if family != destination_family {
        bail!("{source} and {destination} are of different address families");
    }
    let protocol_number = match protocol {
        Protocol::Tcp => PROTOCOL_TCP,
        Protocol::Udp => PROTOCOL_UDP,
    };
    let key = FlowKey {
        source: source_words,
        destination: destination_words,
        source_port: source.port().to_be(),
        destination_port: destination.port().to_be(),
        protocol: protocol_number,
        family,
        _padding: [0; 2],
    };
    let vips: BTreeMap<VipKey, VipMeta> = view.vips()?.into_iter().collect();
    let found = lookup_vip(&vips, family, destination_words, key.destination_port, protocol_number);
    let backends = backends_by_id(&view)?;
    let config = view.config()?;
    let reference = |id: u32| BackendRef { id: Some(id), address: backend_address(&backends, id) };

    // What the maps say, before the run.
    let mut counters = Counters::open_pinned(paths).context("opening the flow table")?;
    if !counters.hashes_alike() {
        eprintln!(
            "note: the pinned data plane is older than this failover-ctl's flow hash, so the slot predicted below is not the one it picks; \
             its own answer (the test run) is. To run the new data plane: stop the daemon, `failover-ctl teardown`, start it again."
        );
    }
    let before = counters.flow(&key);
    let now = monotonic_ns();
    let tracking = found.is_some_and(|(_, meta)| meta.flags & VIP_NO_FLOW_TRACKING == 0);
    let tracked = match (found, before) {
        (Some((_, meta)), Some(value)) if tracking => {
            let usable = backends.get(&value.backend_id).is_some_and(|(backend, health)| {
                backend.vip_id == meta.vip_id && (*health == HEALTH_UP || *health == HEALTH_DRAINING)
            });
            let expired = protocol_number == PROTOCOL_UDP
                && config.is_some_and(|config| now.saturating_sub(value.last_seen_ns) > config.udp_idle_timeout_ns);
            Some(TrackedView {
                backend_id: value.backend_id,
                address: backend_address(&backends, value.backend_id),
                health_bit: backends
                    .get(&value.backend_id)
                    .map_or_else(|| "absent".into(), |(_, health)| health_name(*health)),
                age_ms: now.saturating_sub(value.last_seen_ns) / 1_000_000,
                decides: usable && !expired,
            })
        }
        _ => None,
    };
    let new_flow = match found {
        Some((vip_key, meta)) => {
            let table = view.table(&vip_key).filter(|table| !table.is_empty());
            table.map(|table| {
                let (slot, id) = predict(&table, &meta, &key, &backends);
                NewFlowView { slot, table_size: table.len() as u32, backend: id.map(reference) }
            })
        }
        None => None,
    };

    // The program's answer.
    let interface_mac = config.map_or([0x02, 0, 0, 0, 0, 0x02], |config| config.interface_mac);
    let frame = crafted_packet(source, destination, protocol, interface_mac)?;
    let mut out = vec![0u8; frame.len() + 256];
    let result = view
        .program()
        .test_run(TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..TestRunOptions::default() })
        .context("running the pinned program on the test packet (BPF_PROG_TEST_RUN)")?;
    out.truncate(result.data_size_out as usize);
    let mut flow_entry_removed = false;
    if before.is_none() && counters.flow(&key).is_some() {
        counters.forget_flow(&key).context("removing the flow entry the test packet created")?;
        flow_entry_removed = true;
    }

    let action = result.return_value;
    let outer = if action == XDP_TX { tunnel_destination(&out) } else { None };
    let sent_to = outer.map(|address| {
        let vip_id = found.map(|(_, meta)| meta.vip_id);
        let id = backends
            .iter()
            .filter(|(_, (backend, _))| Some(backend.vip_id) == vip_id)
            .find(|(_, (backend, _))| address::from_words(&backend.address, backend.family) == Some(address))
            .map(|(id, _)| *id);
        (address, id)
    });
    let expected = match (&tracked, &new_flow) {
        (Some(tracked), _) if tracked.decides => Some(tracked.backend_id),
        (_, Some(new_flow)) => new_flow.backend.as_ref().and_then(|backend| backend.id),
        _ => None,
    };
    let owned = match found {
        Some((_, meta)) => view.owned(&meta)?,
        None => false,
    };
    let explanation = match (found, action) {
        (None, _) => format!("{destination} {protocol} is not a VIP: the packet goes to the kernel"),
        (Some(_), _) if !owned => "this node does not own the VIP: the packet goes to the kernel".into(),
        (Some(_), XDP_TX) if sent_to.is_some() => match &tracked {
            Some(tracked) if tracked.decides => "an existing tracked flow: its entry decides".into(),
            Some(_) => "a tracked flow whose backend can no longer take it: re-chosen from the table".into(),
            None if !tracking => "flow tracking is off for this VIP: every packet takes the table".into(),
            None => "a new flow: its table slot (or the next up backend) decides".into(),
        },
        (Some((_, meta)), XDP_PASS | XDP_DROP) if expected.is_none() => format!(
            "no backend of the VIP is up: its policy is to {}",
            if meta.flags & VIP_ALL_DOWN_PASS != 0 { "pass to the kernel" } else { "drop" }
        ),
        (Some(_), _) => "see the reason counters (`failover-ctl stats`)".into(),
    };
    let mismatch = match (found, sent_to) {
        (Some(_), Some((address, id))) if id != expected => Some(format!(
            "the program sent the packet to {address} (id {}) but the maps predicted {}: did they change during the run?",
            id.map_or_else(|| "?".into(), |id| id.to_string()),
            expected.map_or_else(|| "no backend".into(), |id| format!("id {id}"))
        )),
        _ => None,
    };
    let report = WhichView {
        source: source.to_string(),
        destination: destination.to_string(),
        protocol: protocol.to_string(),
        vip: found.map(|(vip_key, meta)| vip_ref(&state, &vip_key, &meta)),
        verdict: action_name(action),
        backend: sent_to.map(|(address, id)| BackendRef { id, address: address.to_string() }),
        explanation,
        tracked,
        new_flow,
        flow_entry_removed,
        mismatch,
    };
    if target.json {
        return emit_json(&report);
    }
    let mut lines: Vec<(&str, String)> = vec![("flow", format!("{source} -> {destination} {protocol}"))];
    lines.push((
        "vip",
        report.vip.as_ref().map_or_else(
            || "none".into(),
            |vip| {
                format!(
                    "{} {} (vip id {})",
                    vip.name.clone().unwrap_or_else(|| format!("#{}", vip.vip_id)),
                    vip.address,
                    vip.vip_id
                )
            },
        ),
    ));
    let verdict = match &report.backend {
        Some(BackendRef { id: None, address }) => format!("XDP_TX to {address} (not a backend of the VIP)"),
        Some(BackendRef { id: Some(id), address }) => format!("XDP_TX to backend {address} (id {id})"),
        None => report.verdict.to_string(),
    };
    lines.push(("verdict", verdict));
    lines.push(("why", report.explanation.clone()));
    if report.vip.is_some() && tracking {
        lines.push((
            "tracked",
            match &report.tracked {
                Some(tracked) => format!(
                    "yes: backend {} (id {}, {}), {} old{}",
                    tracked.address,
                    tracked.backend_id,
                    tracked.health_bit,
                    short_duration(tracked.age_ms),
                    if tracked.decides { "" } else { "; no longer decides" }
                ),
                None => "no".into(),
            },
        ));
    }
    if let Some(new_flow) = &report.new_flow {
        lines.push((
            "new flow",
            format!(
                "slot {} of {} -> {}",
                new_flow.slot,
                new_flow.table_size,
                new_flow.backend.as_ref().map_or_else(
                    || "no backend up".into(),
                    |backend| format!("backend {} (id {})", backend.address, backend.id.unwrap_or_default()),
                )
            ),
        ));
    }
    if report.flow_entry_removed {
        lines.push(("note", "the flow entry the test packet created was removed again".into()));
    }
    if let Some(mismatch) = &report.mismatch {
        lines.push(("warning", mismatch.clone()));
    }
    emit(&fields(&lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_destination_reads_the_outer_header() {
        let mut frame = vec![0u8; 14 + 20];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame[14 + 9] = 4;
        frame[14 + 16..14 + 20].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(tunnel_destination(&frame), Some("192.0.2.7".parse().unwrap()));
        frame[14 + 9] = 6;
        assert_eq!(tunnel_destination(&frame), None);
        assert_eq!(tunnel_destination(&frame[..20]), None);
    }
}
