//! The oracle: what the data plane may do with a frame, worked out from the frame and the
//! scenario alone (never from the program's answer), and the check of what it did.
//!
//! The frame is read the way the README's data-plane section describes (`reading`, then the
//! transport header here); outputs are parsed with etherparse, replies checked in `replies`. Besides the verdict, the oracle keeps
//! the backend of every flow it saw forwarded: the map state is static during a run, so a flow
//! that moves is a violation.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::{IpNumber, Ipv4Header, Ipv4HeaderSlice, Ipv6Header, Ipv6HeaderSlice};
use failover_common::{
    hash,
    maps::{FlowKey, HEALTH_DOWN, HEALTH_DRAINING, PROTOCOL_TCP, PROTOCOL_UDP},
};

use super::{
    invariant::{violation, Invariant, Violation},
    reading::{address, be16, read, Reading},
    replies::{check_echo, check_too_big},
    scenario::{Member, Scenario},
};
use crate::{action_name, XDP_DROP, XDP_PASS, XDP_TX};

/// Whose rule a frame falls under, for naming the invariant a wrong action breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Unparsed,
    NotVip,
    NotOwned,
    Vip,
}

/// A forward the data plane may make.
#[derive(Debug)]
struct Forward {
    service: usize,
    key: FlowKey,
    /// Members the flow may go to (before the MTU is considered).
    live: Vec<Member>,
    /// An ICMP error about the flow, not a packet of it.
    error: bool,
}

/// Every outcome the data plane may choose for one frame.
#[derive(Debug)]
struct Expectation {
    class: Class,
    /// The oracle's reading of the frame, for messages.
    why: String,
    /// The service the frame belongs to, if any (even when nothing may be forwarded).
    service: Option<usize>,
    pass: bool,
    drop: bool,
    forward: Option<Forward>,
    /// MTUs a too-big reply may advertise.
    too_big: Vec<u16>,
    echo: bool,
}

impl Expectation {
    fn new(class: Class, why: impl Into<String>) -> Self {
        Self { class, why: why.into(), service: None, pass: false, drop: false, forward: None, too_big: Vec::new(), echo: false }
    }

    fn pass(class: Class, why: impl Into<String>) -> Self {
        Self { pass: true, ..Self::new(class, why) }
    }

    fn drop(why: impl Into<String>) -> Self {
        Self { drop: true, ..Self::new(Class::Vip, why) }
    }

    fn drop_or_pass(why: impl Into<String>) -> Self {
        Self { drop: true, pass: true, ..Self::new(Class::Vip, why) }
    }

    fn allowed(&self) -> String {
        let mut allowed = Vec::new();
        if self.pass {
            allowed.push("XDP_PASS".to_string());
        }
        if self.drop {
            allowed.push("XDP_DROP".to_string());
        }
        if let Some(forward) = &self.forward {
            let ids: Vec<String> = forward.live.iter().map(|m| m.address.to_string()).collect();
            allowed.push(format!("XDP_TX to one of [{}]", ids.join(", ")));
        }
        if !self.too_big.is_empty() {
            allowed.push(format!("XDP_TX too-big with MTU {:?}", self.too_big));
        }
        if self.echo {
            allowed.push("XDP_TX echo reply".to_string());
        }
        allowed.join(" or ")
    }
}

/// The checker, with what it remembers across frames.
pub struct Oracle<'a> {
    scenario: &'a Scenario,
    /// Flows tracked to a draining backend before the run.
    drained: HashSet<FlowKey>,
    /// Backend id of every flow seen forwarded (or tracked before the run).
    flows: HashMap<FlowKey, u32>,
    /// Backend id per (service, client address) of source-affinity services.
    affinity: HashMap<(usize, [u32; 4]), u32>,
}

impl<'a> Oracle<'a> {
    pub fn new(scenario: &'a Scenario) -> Self {
        Self {
            scenario,
            drained: scenario.drained_flows.iter().copied().collect(),
            flows: scenario.warm_flows.iter().copied().collect(),
            affinity: HashMap::new(),
        }
    }

    /// Checks one run of the program on `input`.
    pub fn check(&mut self, input: &[u8], action: u32, output: &[u8]) -> Result<(), Violation> {
        let expectation = self.expect(input);
        match action {
            XDP_PASS if expectation.pass => {
                if output == input {
                    Ok(())
                } else {
                    Err(violation(Invariant::PassUnchanged, format!("{}; XDP_PASS changed the frame", expectation.why)))
                }
            }
            XDP_DROP if expectation.drop => Ok(()),
            XDP_TX => self.check_transmit(input, output, &expectation),
            XDP_PASS | XDP_DROP => Err(self.wrong_action(&expectation, action, output)),
            _ => Err(violation(Invariant::NeverAborted, format!("{}; got {} ({action})", expectation.why, action_name(action)))),
        }
    }

    /// The invariant an action outside the expectation breaks, with what the output shows.
    fn wrong_action(&self, expectation: &Expectation, action: u32, output: &[u8]) -> Violation {
        let mut detail = format!("{}: expected {}, got {}", expectation.why, expectation.allowed(), action_name(action));
        let tunnelled = if action == XDP_TX { self.tunnel_destination(output) } else { None };
        if let Some((destination, service)) = tunnelled {
            detail.push_str(&format!(" to {destination}, a backend of '{}'", self.scenario.services[service].name));
        }
        let invariant = match (expectation.class, action) {
            (Class::Unparsed, _) => Invariant::UnparsedPasses,
            (Class::NotVip, _) => Invariant::NotVipPasses,
            (Class::NotOwned, _) => Invariant::NotOwnedPasses,
            (Class::Vip, XDP_DROP) => Invariant::DropOnlyWhenDue,
            (Class::Vip, XDP_PASS) => Invariant::PassOnlyWhenDue,
            (Class::Vip, _) => match tunnelled {
                // To the right VIP's backend, when none may take the packet.
                Some((_, service)) if Some(service) == expectation.service => Invariant::BackendAllowed,
                Some(_) => Invariant::RightVip,
                None => Invariant::TransmitOnlyWhenDue,
            },
        };
        violation(invariant, detail)
    }

    /// Works out every allowed outcome for `input`.
    fn expect(&self, input: &[u8]) -> Expectation {
        let scenario = self.scenario;
        let Some(r) = read(input) else {
            return Expectation::pass(Class::Unparsed, "not IPv4/IPv6, or too short to name a destination");
        };
        if !scenario.is_vip_address(r.destination) {
            let why = if scenario.collides(r.destination) {
                format!("{} is not a VIP address (it shares an address-filter slot with one)", r.destination)
            } else {
                format!("{} is not a VIP address", r.destination)
            };
            return Expectation::pass(Class::NotVip, why);
        }
        if !scenario.is_owned_address(r.destination) {
            return Expectation::pass(Class::NotOwned, format!("{} is a VIP address this node does not own", r.destination));
        }
        if r.v6 && !matches!(r.protocol, PROTOCOL_TCP | PROTOCOL_UDP | 58) {
            return Expectation::pass(Class::Vip, format!("IPv6 to {} with extension header {}", r.destination, r.protocol));
        }
        if r.header_len < 20 || r.total_len < r.header_len || r.l3 + r.total_len > input.len() {
            return Expectation::drop(format!(
                "to VIP address {}: header length {} / total length {} inconsistent with a {}-byte frame",
                r.destination,
                r.header_len,
                r.total_len,
                input.len()
            ));
        }
        if r.fragment {
            return Expectation::drop(format!("IPv4 fragment to VIP address {}", r.destination));
        }
        let l4 = r.l3 + r.header_len;
        let end = r.l3 + r.total_len;
        match (r.v6, r.protocol) {
            (_, PROTOCOL_TCP | PROTOCOL_UDP) => {
                let needed = if r.protocol == PROTOCOL_TCP { 20 } else { 8 };
                if l4 + needed > end {
                    return Expectation::drop(format!("to VIP address {}: transport header cut short", r.destination));
                }
                let (source_port, destination_port) = (be16(input, l4), be16(input, l4 + 2));
                let Some(service) = scenario.lookup(r.destination, destination_port, r.protocol) else {
                    return Expectation::pass(
                        Class::Vip,
                        format!("no service at {} port {destination_port} protocol {}", r.destination, r.protocol),
                    );
                };
                let key = flow_key(r.source, r.destination, (source_port, destination_port), r.protocol);
                self.forwarding(&r, service, key, false)
            }
            (false, 1) | (true, 58) => {
                if l4 + 8 > end {
                    return Expectation::drop(format!("to VIP address {}: ICMP header cut short", r.destination));
                }
                let kind = input[l4];
                let echo = if r.v6 { 128 } else { 8 };
                let errors: &[u8] = if r.v6 { &[1, 2, 3] } else { &[3, 11] };
                if kind == echo {
                    Expectation { echo: true, ..Expectation::new(Class::Vip, format!("echo request to VIP address {}", r.destination)) }
                } else if errors.contains(&kind) {
                    self.icmp_error(input, &r, l4 + 8, end)
                } else {
                    Expectation::pass(Class::Vip, format!("ICMP type {kind} to VIP address {}", r.destination))
                }
            }
            _ => Expectation::pass(Class::Vip, format!("protocol {} to VIP address {}: no VIP serves it", r.protocol, r.destination)),
        }
    }

    /// An ICMP error to an owned VIP address: it belongs to the flow it quotes, if that flow is
    /// one of a service at the address the error is sent to.
    fn icmp_error(&self, input: &[u8], r: &Reading, inner: usize, end: usize) -> Expectation {
        // The quoted header and the four port bytes must lie inside the ICMP packet.
        let quote = if r.v6 {
            (inner + 44 <= end && input[inner] >> 4 == 6).then(|| {
                let protocol = input[inner + 6];
                (address(&input[inner + 8..inner + 24]), address(&input[inner + 24..inner + 40]), inner + 40, protocol)
            })
        } else if inner + 20 <= end && input[inner] >> 4 == 4 {
            let header_len = usize::from(input[inner] & 0x0f) * 4;
            (header_len >= 20 && inner + header_len + 4 <= end).then(|| {
                let protocol = input[inner + 9];
                (address(&input[inner + 12..inner + 16]), address(&input[inner + 16..inner + 20]), inner + header_len, protocol)
            })
        } else {
            None
        };
        let usable = quote.filter(|&(.., protocol)| protocol == PROTOCOL_TCP || protocol == PROTOCOL_UDP);
        let Some((vip, client, ports, protocol)) = usable else {
            return Expectation::drop_or_pass(format!("ICMP error to VIP address {} whose quote names no TCP/UDP flow", r.destination));
        };
        if vip != r.destination {
            return Expectation::drop_or_pass(format!(
                "ICMP error to VIP address {} quoting a flow of {vip}, another address",
                r.destination
            ));
        }
        let (vip_port, client_port) = (be16(input, ports), be16(input, ports + 2));
        let Some(service) = self.scenario.lookup(vip, vip_port, protocol) else {
            return Expectation::pass(Class::Vip, format!("ICMP error about {vip} port {vip_port} protocol {protocol}: no service"));
        };
        let key = flow_key(client, vip, (client_port, vip_port), protocol);
        self.forwarding(r, service, key, true)
    }

    /// A packet of (or an ICMP error about) flow `key` of `service`.
    fn forwarding(&self, r: &Reading, service: usize, key: FlowKey, error: bool) -> Expectation {
        let s = &self.scenario.services[service];
        let what = if error { "ICMP error about a flow of" } else { "packet of" };
        let why = format!("{what} '{}'", s.name);
        let of_service = |expectation: Expectation| Expectation { service: Some(service), ..expectation };
        if !s.owned() {
            return of_service(Expectation::pass(Class::NotOwned, format!("{why}, a service this node does not own")));
        }
        let mut live: Vec<Member> = s.eligible().copied().collect();
        if self.drained.contains(&key) {
            live.extend(s.members.iter().filter(|m| m.health == HEALTH_DRAINING));
        }
        if live.is_empty() {
            let why = format!("{why}, which has no live backend");
            return of_service(if s.all_down_passes() { Expectation::pass(Class::Vip, why) } else { Expectation::drop(why) });
        }
        let mut expectation = of_service(Expectation::new(Class::Vip, why));
        let mtu = self.scenario.config.mtu;
        for member in &live {
            let outer = outer_len(member.address) as u16;
            if r.total_len + usize::from(outer) > usize::from(mtu) {
                if error || (!r.v6 && !r.dont_fragment) {
                    expectation.drop = true;
                } else if !expectation.too_big.contains(&(mtu - outer)) {
                    expectation.too_big.push(mtu - outer);
                }
            }
        }
        expectation.forward = Some(Forward { service, key, live, error });
        expectation
    }

    fn check_transmit(&mut self, input: &[u8], output: &[u8], expectation: &Expectation) -> Result<(), Violation> {
        let Some(r) = read(input) else { return Err(self.wrong_action(expectation, XDP_TX, output)) };
        let forward_shaped = output.len() >= 12 && output[..6] == self.scenario.config.next_hop_mac && output[6..12] == self.scenario.config.interface_mac;
        let mut problems = Vec::new();
        if let Some(forward) = &expectation.forward {
            match self.check_forward(input, &r, output, forward) {
                Ok(()) => return Ok(()),
                Err(problem) if forward_shaped => return Err(problem),
                Err(problem) => problems.push(problem),
            }
        }
        if !expectation.too_big.is_empty() {
            match check_too_big(input, &r, output, &expectation.too_big) {
                Ok(()) => return Ok(()),
                Err(problem) => problems.insert(0, problem),
            }
        }
        if expectation.echo {
            match check_echo(input, &r, output) {
                Ok(()) => return Ok(()),
                Err(problem) => problems.insert(0, problem),
            }
        }
        match problems.into_iter().next() {
            Some(mut problem) => {
                problem.detail = format!("{}: {}", expectation.why, problem.detail);
                Err(problem)
            }
            None => Err(self.wrong_action(expectation, XDP_TX, output)),
        }
    }

    /// The tunnel destination of an output shaped like a forward, if it is a scenario backend.
    fn tunnel_destination(&self, output: &[u8]) -> Option<(IpAddr, usize)> {
        let r = read(output)?;
        let (service, _) = self.scenario.backend_at(r.destination)?;
        Some((r.destination, service))
    }

    fn check_forward(&mut self, input: &[u8], r: &Reading, output: &[u8], forward: &Forward) -> Result<(), Violation> {
        let bad = |detail: String| violation(Invariant::Encapsulation, detail);
        let config = &self.scenario.config;
        let l2 = r.l3;
        if output.len() < l2 + 20 || output[..6] != config.next_hop_mac || output[6..12] != config.interface_mac {
            return Err(bad("the output is not addressed to the next hop from the interface".into()));
        }
        if output[12..l2 - 2] != input[12..l2 - 2] {
            return Err(bad("the VLAN tags were not kept".into()));
        }
        let outer = match be16(output, l2 - 2) {
            0x0800 => Outer::V4(Ipv4HeaderSlice::from_slice(&output[l2..]).map_err(|e| bad(format!("outer IPv4 header: {e}")))?.to_header()),
            0x86dd => Outer::V6(Ipv6HeaderSlice::from_slice(&output[l2..]).map_err(|e| bad(format!("outer IPv6 header: {e}")))?.to_header()),
            other => return Err(bad(format!("outer EtherType {other:#06x}"))),
        };
        let destination = outer.destination();
        let scenario = self.scenario;
        let Some((service, member)) = scenario.backend_at(destination) else {
            return Err(bad(format!("tunnelled to {destination}, which is no backend")));
        };
        let expected = &scenario.services[forward.service];
        if service != forward.service {
            let owner = if forward.error { "the VIP the error is addressed to" } else { "the VIP that owns it" };
            return Err(violation(
                Invariant::RightVip,
                format!("tunnelled to {destination}, a backend of '{}', but {owner} is '{}'", scenario.services[service].name, expected.name),
            ));
        }
        let member = expected.members[member];
        if !forward.live.iter().any(|m| m.id == member.id) {
            let state = match member.health {
                HEALTH_DOWN => "down",
                HEALTH_DRAINING => "draining and the flow was not tracked to it",
                _ if member.backup => "a backup while a primary is up",
                _ => "not eligible",
            };
            return Err(violation(Invariant::BackendAllowed, format!("tunnelled to {destination}, which is {state}")));
        }
        if let Some(&previous) = self.flows.get(&forward.key) {
            if previous != member.id {
                let was = expected.members.iter().find(|m| m.id == previous).map_or("?".to_string(), |m| m.address.to_string());
                return Err(violation(Invariant::FlowKeepsBackend, format!("the flow went to {was} before, now to {destination}")));
            }
        }
        if expected.source_only() {
            if let Some(&previous) = self.affinity.get(&(forward.service, forward.key.source)) {
                if previous != member.id {
                    return Err(violation(Invariant::SourceAffinity, format!("the client went to backend id {previous} before, now to {destination}")));
                }
            }
            self.affinity.insert((forward.service, forward.key.source), member.id);
        }
        self.flows.insert(forward.key, member.id);
        let outer_len = outer_len(destination);
        if r.total_len + outer_len > usize::from(config.mtu) {
            return Err(violation(Invariant::TooBig, format!("forwarded {} bytes + {outer_len} of tunnel over MTU {}", r.total_len, config.mtu)));
        }
        let entropy = hash::flow_key_hash(&forward.key, false);
        let inner_protocol = if r.v6 { IpNumber::IPV6 } else { IpNumber::IPV4 };
        match outer {
            Outer::V4(header) => {
                let source = (config.source_v4_base | (entropy & config.source_v4_mask)).to_ne_bytes();
                let checks = [
                    (header.ihl() == 5, "IHL is not 5"),
                    (usize::from(header.total_len) == 20 + r.total_len, "total length"),
                    (header.header_checksum == header.calc_header_checksum(), "header checksum"),
                    (header.time_to_live == 64, "TTL is not 64"),
                    (header.protocol == inner_protocol, "protocol"),
                    (header.dont_fragment == (r.v6 || r.dont_fragment), "DF"),
                    (!header.more_fragments && header.fragment_offset.value() == 0, "fragment fields"),
                    ((header.dscp.value() << 2 | header.ecn.value()) == r.tos, "TOS not copied"),
                    (header.source == source, "outer source (base | entropy & mask)"),
                ];
                if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
                    return Err(bad(format!("outer IPv4 header: {what}")));
                }
            }
            Outer::V6(header) => {
                let mut words = config.source_v6_base;
                words[3] |= entropy & config.source_v6_mask;
                let source: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
                let checks = [
                    (usize::from(header.payload_length) == r.total_len, "payload length"),
                    (header.next_header == inner_protocol, "next header"),
                    (header.hop_limit == 64, "hop limit is not 64"),
                    (header.traffic_class == r.tos, "traffic class not copied"),
                    (header.flow_label.value() == entropy & 0xf_ffff, "flow label is not the flow entropy"),
                    (header.source[..] == source[..], "outer source (base | entropy & mask)"),
                ];
                if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
                    return Err(bad(format!("outer IPv6 header: {what}")));
                }
            }
        }
        let inner = &input[r.l3..r.l3 + r.total_len];
        if output[l2 + outer_len..] != *inner {
            return Err(bad("the inner packet is not the input's IP packet byte for byte (without padding)".into()));
        }
        Ok(())
    }
}

enum Outer {
    V4(Ipv4Header),
    V6(Ipv6Header),
}

impl Outer {
    fn destination(&self) -> IpAddr {
        match self {
            Outer::V4(header) => IpAddr::V4(Ipv4Addr::from(header.destination)),
            Outer::V6(header) => IpAddr::V6(Ipv6Addr::from(header.destination)),
        }
    }
}

fn outer_len(backend: IpAddr) -> usize {
    if backend.is_ipv4() { 20 } else { 40 }
}

fn flow_key(client: IpAddr, vip: IpAddr, ports: (u16, u16), protocol: u8) -> FlowKey {
    crate::craft::flow_key(client, vip, protocol, ports)
}

