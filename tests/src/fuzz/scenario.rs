//! The map state the fuzzer runs against: eighteen VIP services covering every policy the data
//! plane knows, written through the real map writer, plus the addresses around them (clients,
//! non-VIP addresses, addresses that collide with a VIP in the address filter). Two services
//! follow ownership groups: one whose group this node owns (`OWNERSHIP` written through the
//! election task's handle), one whose group it does not (its `VIP_OWNED` flag set, and ignored).
//!
//! The state is static during a run, which is what lets the oracle demand that a flow keeps its
//! backend. Tables come from the daemon's own planner (`plan::table`), so tiers are laid out
//! exactly as `failover-ctl run` lays them out. One VIP is left in the state between the two
//! failover stages (health bits already flipped, table not yet rebuilt), so the data plane's
//! own skipping of down and draining backends is exercised, not only the planner's.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{ensure, Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use failover_common::{
    hash, stats,
    maps::{
        Backend, Config, FlowKey, ADDRESS_FILTER_SLOTS, HEALTH_DOWN, HEALTH_DRAINING, HEALTH_UP, MAX_SLOT_PROBES,
        PROTOCOL_TCP, PROTOCOL_UDP, VIP_ALL_DOWN_PASS, VIP_HASH_SOURCE_ONLY, VIP_OWNED, vip_group, with_vip_group,
    },
};
use failover_ctl::{
    address::to_words,
    config::Tier,
    daemon::plan::{self, Admin},
    loader::{Dataplane, LoadOptions},
    maps::VipSettings,
};

use crate::{
    craft::{ROUTER4, ROUTER6},
    packet, run, standard_config, vip_key, Tags, Transport, XDP_TX,
};

/// Slots of every VIP's Maglev table (prime; small, so a run covers every slot many times).
pub const TABLE_SIZE: u32 = 251;
/// Source ports the client pool uses (40000..40000 + this), so flows repeat often enough for the
/// oracle to see each one many times.
pub const CLIENT_PORTS: u16 = 32;
pub const FIRST_CLIENT_PORT: u16 = 40000;
/// Clients per address family.
const CLIENTS: u8 = 32;
/// Flows opened to the drain VIP before its backends' health changes.
const WARM_FLOWS: u16 = 256;
/// Flow table entries: far more than a run's distinct tracked flows, so the LRU never evicts
/// one (an evicted flow of a draining backend would rightly move, and look like a violation).
const FLOW_ENTRIES: u32 = 1 << 20;

/// One backend of a service, as written to the maps.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub id: u32,
    pub address: IpAddr,
    /// `HEALTH_*` value during the run.
    pub health: u32,
    pub backup: bool,
}

/// One VIP service `(address, port, protocol)` and everything the oracle needs to judge its
/// packets.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: &'static str,
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: u8,
    pub flags: u32,
    /// Whether this node serves it: by `VIP_OWNED`, or for a grouped service by its group's
    /// `OWNERSHIP` entry as the scenario wrote it.
    pub owned: bool,
    pub members: Vec<Member>,
    pub table: Vec<u32>,
}

impl Service {
    pub fn owned(&self) -> bool {
        self.owned
    }

    pub fn source_only(&self) -> bool {
        self.flags & VIP_HASH_SOURCE_ONLY != 0
    }

    pub fn all_down_passes(&self) -> bool {
        self.flags & VIP_ALL_DOWN_PASS != 0
    }

    /// The members a new flow may get: up, and not a backup while a primary is up.
    pub fn eligible(&self) -> impl Iterator<Item = &Member> {
        let primary_up = self.members.iter().any(|m| !m.backup && m.health == HEALTH_UP);
        self.members.iter().filter(move |m| m.health == HEALTH_UP && !(m.backup && primary_up))
    }
}

/// Everything the generator and the oracle know about the loaded data plane.
pub struct Scenario {
    pub config: Config,
    pub services: Vec<Service>,
    pub clients4: Vec<IpAddr>,
    pub clients6: Vec<IpAddr>,
    /// Addresses no VIP has, that do not collide with one either.
    pub non_vips: Vec<IpAddr>,
    /// Addresses that are not VIPs but share an address-filter slot with one (of either family).
    pub colliders: Vec<IpAddr>,
    /// Flows tracked to a backend that was then set draining: the only flows it may still take.
    pub drained_flows: Vec<FlowKey>,
    /// Flows opened before the run whose backend is still usable, with that backend's id.
    pub warm_flows: Vec<(FlowKey, u32)>,
    /// The largest frame `BPF_PROG_TEST_RUN` accepts for this program.
    pub frame_limit: usize,
    backend_index: HashMap<IpAddr, (usize, usize)>,
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// 2001:db8:<group>::<host>
fn v6(group: u16, host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, group, 0, 0, 0, 0, host))
}

fn vip4(host: u8) -> IpAddr {
    v4(203, 0, 113, host)
}

fn vip6(host: u16) -> IpAddr {
    v6(0x80, host)
}

fn backend4(host: u8) -> IpAddr {
    v4(192, 0, 2, host)
}

fn backend6(host: u16) -> IpAddr {
    v6(0xb0, host)
}

/// How a service is declared below: members as (address, health, backup).
struct Declared {
    name: &'static str,
    address: IpAddr,
    port: u16,
    protocol: u8,
    flags: u32,
    members: Vec<(IpAddr, u32, bool)>,
    /// Build the table as if every member were up and a primary (the first failover stage:
    /// health bits flipped, table not yet rebuilt).
    stale_table: bool,
}

fn declare(name: &'static str, address: IpAddr, port: u16, protocol: u8, flags: u32, members: Vec<(IpAddr, u32, bool)>) -> Declared {
    Declared { name, address, port, protocol, flags, members, stale_table: false }
}

const UP: u32 = HEALTH_UP;
const DOWN: u32 = HEALTH_DOWN;
const OWNED: u32 = VIP_OWNED;
/// Ownership groups: this node owns the first (`OWNERSHIP[3] = 1`), not the second (0).
const GROUP_OWNED: u8 = 3;
const GROUP_RELEASED: u8 = 4;

/// The VIP services, in vip id order (id = index + 1).
fn declarations() -> Vec<Declared> {
    let (tcp, udp) = (PROTOCOL_TCP, PROTOCOL_UDP);
    let primary = |address, health| (address, health, false);
    let backup = |address, health| (address, health, true);
    let mut drain = declare(
        "drain and down (stale table)",
        vip4(14),
        80,
        tcp,
        OWNED,
        vec![primary(backend4(121), UP), primary(backend4(122), UP), primary(backend4(123), HEALTH_DRAINING), primary(backend4(124), DOWN)],
    );
    drain.stale_table = true;
    vec![
        declare("v4 tcp", vip4(10), 80, tcp, OWNED, (11..=14).map(|h| primary(backend4(h), UP)).collect()),
        declare("v4 udp", vip4(10), 53, udp, OWNED, (21..=23).map(|h| primary(backend4(h), UP)).collect()),
        declare("v6 tcp", vip6(0x10), 443, tcp, OWNED, (0x31..=0x33).map(|h| primary(backend6(h), UP)).collect()),
        declare("v6 udp", vip6(0x10), 53, udp, OWNED, (0x41..=0x42).map(|h| primary(backend6(h), UP)).collect()),
        declare("v4 every port", vip4(11), 0, tcp, OWNED, (51..=53).map(|h| primary(backend4(h), UP)).collect()),
        declare("v4 port 8080 over every port", vip4(11), 8080, tcp, OWNED, (61..=62).map(|h| primary(backend4(h), UP)).collect()),
        declare(
            "v6 source hash",
            vip6(0x11),
            80,
            tcp,
            OWNED | VIP_HASH_SOURCE_ONLY,
            (0x71..=0x74).map(|h| primary(backend6(h), UP)).collect(),
        ),
        declare("v4 vip, v6 backends", vip4(12), 443, tcp, OWNED, (0x81..=0x82).map(|h| primary(backend6(h), UP)).collect()),
        declare("v6 vip, v4 backends", vip6(0x12), 53, udp, OWNED, (91..=92).map(|h| primary(backend4(h), UP)).collect()),
        declare(
            "tiers, primaries up",
            vip4(13),
            80,
            tcp,
            OWNED,
            vec![primary(backend4(101), UP), primary(backend4(102), UP), backup(backend4(103), UP)],
        ),
        declare(
            "tiers, backups serving",
            vip6(0x13),
            80,
            tcp,
            OWNED,
            vec![primary(backend6(0x111), DOWN), primary(backend6(0x112), DOWN), backup(backend6(0x113), UP), backup(backend6(0x114), UP)],
        ),
        drain,
        declare("not owned v4", vip4(15), 80, tcp, 0, vec![primary(backend4(131), UP)]),
        declare("not owned v6", vip6(0x15), 53, udp, 0, vec![primary(backend6(0x141), UP)]),
        declare("all down, drop", vip4(16), 53, udp, OWNED, vec![primary(backend4(151), DOWN), primary(backend4(152), DOWN)]),
        declare(
            "all down, pass",
            vip6(0x16),
            80,
            tcp,
            OWNED | VIP_ALL_DOWN_PASS,
            vec![primary(backend6(0x161), DOWN), primary(backend6(0x162), DOWN)],
        ),
        declare(
            "grouped, group owned",
            vip6(0x17),
            53,
            udp,
            with_vip_group(0, GROUP_OWNED),
            (0x171..=0x172).map(|h| primary(backend6(h), UP)).collect(),
        ),
        declare(
            "grouped, group not owned (VIP_OWNED ignored)",
            vip4(17),
            80,
            tcp,
            with_vip_group(OWNED, GROUP_RELEASED),
            vec![primary(backend4(171), UP)],
        ),
    ]
}

impl Scenario {
    /// Loads nothing: writes the scenario into `dataplane` (configuration, backends, tables),
    /// opens the warm flows of the drain VIP, then flips its health bits, and measures the
    /// frame size limit. Frames run here are counted by the data plane; callers take their
    /// counter baseline afterwards.
    pub fn install(dataplane: &mut Dataplane) -> Result<Self> {
        let config = fuzz_config();
        dataplane.writer.set_config(&config).context("write the configuration")?;
        let mut services = Vec::new();
        let mut flips = Vec::new();
        for (index, declared) in declarations().into_iter().enumerate() {
            let vip_id = index as u32 + 1;
            let members: Vec<Member> = (1..)
                .zip(&declared.members)
                .map(|(n, &(address, health, backup))| Member { id: vip_id * 10 + n, address, health, backup })
                .collect();
            for member in &members {
                // The stale-table VIP starts all up; its real health is written after warm-up.
                let written = if declared.stale_table { HEALTH_UP } else { member.health };
                if written != member.health {
                    flips.push((member.id, member.health));
                }
                let (address, family) = to_words(member.address);
                let backend = Backend { address, vip_id, family, _padding: [0; 3] };
                dataplane.writer.set_backend(member.id, backend, written).with_context(|| format!("write backend {}", member.id))?;
            }
            let planned: Vec<plan::Member> = members
                .iter()
                .map(|m| plan::Member {
                    id: m.id,
                    address: m.address,
                    weight: 1,
                    tier: if m.backup && !declared.stale_table { Tier::Backup } else { Tier::Primary },
                    admin: Admin::Enabled,
                    up: declared.stale_table || m.health == HEALTH_UP,
                })
                .collect();
            let table = plan::table(&planned, TABLE_SIZE).with_context(|| format!("plan the table of {}", declared.name))?;
            let key = vip_key(declared.address, declared.port, declared.protocol);
            dataplane
                .writer
                .publish_vip(key, VipSettings { vip_id, flags: declared.flags }, &table)
                .with_context(|| format!("publish {}", declared.name))?;
            let owned = match vip_group(declared.flags) {
                0 => declared.flags & VIP_OWNED != 0,
                group => group == u32::from(GROUP_OWNED),
            };
            services.push(Service {
                name: declared.name,
                address: declared.address,
                port: declared.port,
                protocol: declared.protocol,
                flags: declared.flags,
                owned,
                members,
                table,
            });
        }
        let mut ownership = dataplane.ownership().context("the OWNERSHIP map")?;
        ownership.set(GROUP_OWNED, true).context("take over the owned group")?;
        ownership.set(GROUP_RELEASED, false).context("release the other group")?;
        let clients4 = (1..=CLIENTS).map(|n| v4(198, 51, 100, n)).collect();
        let clients6 = (1..=CLIENTS).map(|n| v6(0xc1, n as u16)).collect();
        let mut scenario = Scenario {
            config,
            backend_index: HashMap::new(),
            colliders: Vec::new(),
            non_vips: vec![vip4(200), vip6(0x200), IpAddr::V4(ROUTER4), IpAddr::V6(ROUTER6)],
            clients4,
            clients6,
            drained_flows: Vec::new(),
            warm_flows: Vec::new(),
            frame_limit: 0,
            services,
        };
        for (s, service) in scenario.services.iter().enumerate() {
            for (m, member) in service.members.iter().enumerate() {
                let previous = scenario.backend_index.insert(member.address, (s, m));
                ensure!(previous.is_none(), "backend address {} is used twice: the oracle names backends by address", member.address);
            }
        }
        scenario.check_probe_windows()?;
        scenario.colliders = colliders(&scenario)?;
        scenario.non_vips = scenario.non_vips.iter().copied().filter(|address| !scenario.collides(*address)).collect();
        scenario.warm_up(dataplane, &flips)?;
        scenario.frame_limit = frame_limit(dataplane)?;
        Ok(scenario)
    }

    /// Every window of `MAX_SLOT_PROBES` slots must hold an eligible member when the service
    /// has one: then "a live backend exists" and "the data plane finds it" are the same thing.
    fn check_probe_windows(&self) -> Result<()> {
        for service in &self.services {
            let eligible: Vec<u32> = service.eligible().map(|m| m.id).collect();
            if eligible.is_empty() {
                continue;
            }
            let size = service.table.len();
            for first in 0..size {
                let found = (0..MAX_SLOT_PROBES as usize).any(|step| eligible.contains(&service.table[(first + step) % size]));
                ensure!(found, "{}: slots {first}..+{MAX_SLOT_PROBES} hold no eligible backend; pick another table size", service.name);
            }
        }
        Ok(())
    }

    /// Opens flows to the stale-table VIP while all its members are up, then writes their real
    /// health: flows tracked to the now draining member are the ones it may keep.
    fn warm_up(&mut self, dataplane: &mut Dataplane, flips: &[(u32, u32)]) -> Result<()> {
        let Some(index) = self.services.iter().position(|s| s.members.iter().any(|m| m.health == HEALTH_DRAINING)) else {
            return Ok(());
        };
        let service = self.services[index].clone();
        let program = dataplane.program().context("the load-balancer program")?;
        for n in 0..WARM_FLOWS {
            let client = self.clients4[n as usize % self.clients4.len()];
            let ports = (FIRST_CLIENT_PORT + n / self.clients4.len() as u16, service.port);
            let frame = packet(Tags::None, client, service.address, Transport::TcpSyn, ports, b"warm");
            let (action, output) = run(program, &frame);
            ensure!(action == XDP_TX, "warm-up flow {n} to {} was not forwarded", service.name);
            let outer = outer_destination(&output).context("warm-up output has no outer header")?;
            let (_, member) = self.backend_index[&outer];
            let member = service.members[member];
            let key = crate::craft::flow_key(client, service.address, PROTOCOL_TCP, ports);
            if member.health == HEALTH_DRAINING {
                self.drained_flows.push(key);
            }
            if member.health != HEALTH_DOWN {
                self.warm_flows.push((key, member.id));
            }
        }
        ensure!(!self.drained_flows.is_empty(), "no warm-up flow reached the draining backend of {}", service.name);
        for &(id, health) in flips {
            dataplane.writer.set_health(id, health).with_context(|| format!("set health of backend {id}"))?;
        }
        Ok(())
    }

    /// The services at `address` (same family).
    pub fn services_at(&self, address: IpAddr) -> impl Iterator<Item = (usize, &Service)> {
        self.services.iter().enumerate().filter(move |(_, s)| s.address == address)
    }

    pub fn is_vip_address(&self, address: IpAddr) -> bool {
        self.services_at(address).next().is_some()
    }

    /// The address answers as a VIP of this node: some service at it is owned.
    pub fn is_owned_address(&self, address: IpAddr) -> bool {
        self.services_at(address).any(|(_, s)| s.owned())
    }

    /// The service for `(address, port, protocol)`, falling back to the address's every-port
    /// service of that protocol.
    pub fn lookup(&self, address: IpAddr, port: u16, protocol: u8) -> Option<usize> {
        let at = |port: u16| self.services_at(address).find(|(_, s)| s.port == port && s.protocol == protocol).map(|(i, _)| i);
        at(port).or_else(|| at(0))
    }

    /// (service index, member index) of the backend at `address`.
    pub fn backend_at(&self, address: IpAddr) -> Option<(usize, usize)> {
        self.backend_index.get(&address).copied()
    }

    /// Distinct VIP addresses.
    pub fn vip_addresses(&self) -> Vec<IpAddr> {
        let mut addresses: Vec<IpAddr> = self.services.iter().map(|s| s.address).collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// The address shares an address-filter slot with a VIP address.
    pub fn collides(&self, address: IpAddr) -> bool {
        let index = filter_index(address);
        self.vip_addresses().iter().any(|vip| filter_index(*vip) == index)
    }
}

/// The standard fixture configuration with per-flow outer sources (the low byte of the IPv4
/// source and the low 16 bits of the IPv6 source vary), so the oracle checks the entropy too.
pub fn fuzz_config() -> Config {
    Config {
        source_v4_mask: u32::from_ne_bytes([0, 0, 0, 0xff]),
        source_v6_mask: u32::from_ne_bytes([0, 0, 0xff, 0xff]),
        ..standard_config()
    }
}

/// Loads the program with room for every flow of a run and installs the scenario.
pub fn load() -> Result<(Dataplane, Scenario)> {
    let mut dataplane = Dataplane::load(LoadOptions { table_pool_slots: 1 << 16, flow_entries: FLOW_ENTRIES })
        .context("load the load-balancer program (needs root)")?;
    let scenario = Scenario::install(&mut dataplane)?;
    Ok((dataplane, scenario))
}


pub fn filter_index(address: IpAddr) -> u32 {
    hash::address_filter_index(&to_words(address).0)
}

/// For every VIP address, one IPv4 and one IPv6 address that is no VIP but lands in the same
/// address-filter slot (the filter does not look at the family).
fn colliders(scenario: &Scenario) -> Result<Vec<IpAddr>> {
    let vips = scenario.vip_addresses();
    let wanted: Vec<u32> = vips.iter().map(|a| filter_index(*a)).collect();
    let mut found = Vec::new();
    // 10.0.0.0/8 and 2001:db8:ff::/96 hold 2^24 candidates each: about 256 per filter slot.
    let candidates4 = (0..1u32 << 24).map(|n| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n)));
    let candidates6 = (0..1u32 << 24).map(|n| IpAddr::V6(Ipv6Addr::from((0x2001_0db8_00ff_u128 << 80) | n as u128)));
    for candidates in [Box::new(candidates4) as Box<dyn Iterator<Item = IpAddr>>, Box::new(candidates6)] {
        let mut missing: Vec<u32> = wanted.clone();
        missing.sort();
        missing.dedup();
        for candidate in candidates {
            if missing.is_empty() {
                break;
            }
            let index = filter_index(candidate);
            if let Some(position) = missing.iter().position(|i| *i == index) {
                if !vips.contains(&candidate) {
                    found.push(candidate);
                    missing.remove(position);
                }
            }
        }
        ensure!(missing.is_empty(), "no colliding address found for filter slots {missing:?} (of {ADDRESS_FILTER_SLOTS})");
    }
    Ok(found)
}

/// The largest frame the program sees whole. `BPF_PROG_TEST_RUN` takes bigger ones (up to 17
/// fragments of a page) even for this program, which is not frags-aware, and then shows it only
/// the first buffer; no attached program of this kind ever gets such a frame (drivers refuse
/// the MTU, generic XDP linearises), so the fuzzer stays below. The size is measured by the
/// bytes the program counts for a non-IP frame: the length it sees.
fn frame_limit(dataplane: &Dataplane) -> Result<usize> {
    let program = dataplane.program().context("the load-balancer program")?;
    let seen = |size: usize| -> Result<bool> {
        let mut frame = vec![0u8; size];
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        let before = dataplane.counters.reasons().context("read counters")?[stats::PASS_UNPARSED as usize].bytes;
        let mut out = vec![0u8; size + 512];
        if program.test_run(TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..Default::default() }).is_err() {
            return Ok(false);
        }
        let after = dataplane.counters.reasons().context("read counters")?[stats::PASS_UNPARSED as usize].bytes;
        Ok(after - before == size as u64)
    };
    ensure!(seen(64)?, "the program does not see a 64-byte test frame whole");
    let (mut good, mut bad) = (64usize, 1usize << 17);
    while bad - good > 1 {
        let middle = (good + bad) / 2;
        if seen(middle)? {
            good = middle;
        } else {
            bad = middle;
        }
    }
    Ok(good)
}

/// The tunnel destination of an untagged encapsulated frame.
fn outer_destination(frame: &[u8]) -> Option<IpAddr> {
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(frame.get(30..34)?).ok()?))),
        0x86dd => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(frame.get(38..54)?).ok()?))),
        _ => None,
    }
}
