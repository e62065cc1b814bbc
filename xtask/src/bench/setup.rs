//! The load balancer under test, configured as in production (two VIPs of 100 backends each, Maglev tables of 65 537 slots, a 1 Mi-entry flow table), and the packets the scenarios send it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, OwnedFd},
};

use anyhow::{ensure, Context as _, Result};
use aya::{programs::Xdp, Ebpf, EbpfLoader};
use etherparse::PacketBuilder;
use failover_common::{
    hash,
    maps::{names, Backend, Config, FlowKey, VipKey, HEALTH_UP, PROTOCOL_TCP, VIP_OWNED},
    stats::REASON_COUNT,
};
use failover_ctl::{
    address::to_words,
    loader::{Dataplane, LoadOptions, Loaded, PROGRAM},
    maglev::{self, MaglevBackend, DEFAULT_TABLE_SIZE},
    maps::{Counters, MapWriter, VipSettings},
};

pub const BACKENDS_PER_VIP: u32 = 100;
pub const VIP_PORT: u16 = 80;

// Documentation and benchmarking ranges: these addresses only ever live inside test frames.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
pub const OTHER4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 81);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, 0, 0x10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x80, 0, 0, 0, 0, 0x80);
pub const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x80, 0, 0, 0, 0, 0x81);
const OUTER_SOURCE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);
const OUTER_SOURCE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe0, 0, 0, 0, 0, 0);
const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0x00, 0x00, 0x00, 0x01];

/// Bytes the tunnel header adds in front of the client's frame: an IPv4 / IPv6 outer header.
pub const PUSHED_IPV4: u16 = 20;
pub const PUSHED_IPV6: u16 = 40;
/// Offset of the client's source address in an untagged frame (IPv4), and of the last word of
/// it (IPv6): where the peer writes a fresh number to make each frame a new flow.
pub const SOURCE_WORD_IPV4: u16 = 14 + 12;
pub const SOURCE_WORD_IPV6: u16 = 14 + 8 + 12;
/// The last byte of the client's IPv4 source address, where the two-CPU established scenario's
/// peer writes `PER_CPU_CLIENT_BASE` + the CPU number: client 198.51.100.(20 + CPU), one
/// tracked flow per CPU.
pub const SOURCE_LAST_BYTE_IPV4: u16 = 14 + 12 + 3;
pub const PER_CPU_CLIENT_BASE: u8 = 20;

/// The client of CPU `cpu` in the two-CPU established scenario.
pub fn per_cpu_client(cpu: usize) -> Ipv4Addr {
    let [a, b, c, _] = CLIENT4.octets();
    Ipv4Addr::new(a, b, c, PER_CPU_CLIENT_BASE + cpu as u8)
}
/// The client payload: long enough that every frame has at least 56 bytes to restore.
const PAYLOAD: &[u8] = b"failover benchmark";

/// The load balancer, loaded and configured, and the keys the checks look at.
pub struct LoadBalancer {
    /// Keeps the loaded object alive; the maps were taken out of it into `writer` and
    /// `counters`.
    _object: Loaded,
    /// The program, as a descriptor of our own that any thread may borrow.
    pub program: OwnedFd,
    pub writer: MapWriter,
    pub counters: Counters,
    /// The flows the established scenarios track; kept when new flows are cleared.
    pub established: BTreeSet<FlowKey>,
}

/// A program's descriptor, duplicated so the object that holds it can be moved.
fn duplicate(program: &Xdp) -> Result<OwnedFd> {
    program.fd().context("the load-balancer program's fd")?.as_fd().try_clone_to_owned().context("duplicating the program fd")
}

impl LoadBalancer {
    /// This tree's program, loaded the way the daemon loads it (default map sizes), with
    /// both VIPs published.
    pub fn current(interface_mac: [u8; 6], next_hop_mac: [u8; 6]) -> Result<Self> {
        let dataplane = Dataplane::load(LoadOptions::default()).context("loading the load balancer")?;
        let program = duplicate(dataplane.program()?)?;
        let Dataplane { loaded, writer, counters, .. } = dataplane;
        Self { _object: loaded, program, writer, counters, established: BTreeSet::new() }.configure(interface_mac, next_hop_mac)
    }

    /// Another revision's object (`--against`), loaded as `Dataplane::load` loads this tree's
    /// (the same map sizes), its maps written by this tree's writer with the same contents.
    /// The caller has checked that the maps are laid out alike (`layout::check`).
    pub fn from_object(object: &[u8], interface_mac: [u8; 6], next_hop_mac: [u8; 6]) -> Result<Self> {
        let options = LoadOptions::default();
        let mut ebpf: Ebpf = EbpfLoader::new()
            .map_max_entries(names::TABLES, options.table_pool_slots)
            .map_max_entries(names::FLOWS, failover_common::maps::flow_buckets(options.flow_entries))
            .load(object)
            .context("loading the other revision's object")?;
        let xdp: &mut Xdp = ebpf.program_mut(PROGRAM).with_context(|| format!("the object has no program {PROGRAM}"))?.try_into()?;
        xdp.load().context("the kernel rejected the other revision's program")?;
        let program = duplicate(xdp)?;
        let writer = MapWriter::new(&mut ebpf).context("taking the other revision's maps")?;
        let counters = Counters::new(&mut ebpf, &writer).context("taking the other revision's counters")?;
        Self { _object: Loaded::Object(ebpf), program, writer, counters, established: BTreeSet::new() }.configure(interface_mac, next_hop_mac)
    }

    /// Publishes the configuration and both VIPs.
    fn configure(mut self, interface_mac: [u8; 6], next_hop_mac: [u8; 6]) -> Result<Self> {
        self.writer.set_config(&config(interface_mac, next_hop_mac)).context("publishing the configuration")?;
        self.publish(IpAddr::V4(VIP4), 1, |n| IpAddr::V4(Ipv4Addr::new(198, 18, 0, n as u8 + 1)))?;
        self.publish(IpAddr::V6(VIP6), 2, |n| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, n as u16 + 1)))?;
        for (vip, other) in [(IpAddr::V4(VIP4), IpAddr::V4(OTHER4)), (IpAddr::V6(VIP6), IpAddr::V6(OTHER6))] {
            // The non-VIP scenarios measure the address-filter miss, not a VIPS lookup.
            ensure!(
                hash::address_filter_index(&to_words(vip).0) != hash::address_filter_index(&to_words(other).0),
                "{other} shares an address-filter slot with {vip}; pick another non-VIP address"
            );
        }
        Ok(self)
    }

    /// Publishes the TCP service `vip`:80 with backends `backend(0..100)`, ids `vip_id * 1000 + n`.
    fn publish(&mut self, vip: IpAddr, vip_id: u32, backend: impl Fn(u32) -> IpAddr) -> Result<()> {
        let mut members = Vec::new();
        for n in 0..BACKENDS_PER_VIP {
            let id = vip_id * 1000 + n;
            let address = backend(n);
            let (words, family) = to_words(address);
            let entry = Backend { address: words, vip_id, family, _padding: [0; 3] };
            self.writer.set_backend(id, entry, HEALTH_UP).with_context(|| format!("writing backend {address}"))?;
            let key = match address {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            members.push(MaglevBackend { id, key, weight: 1 });
        }
        let table = maglev::build(&members, DEFAULT_TABLE_SIZE).with_context(|| format!("building the Maglev table of {vip}"))?;
        let (address, family) = to_words(vip);
        let key = VipKey { address, port: VIP_PORT.to_be(), protocol: PROTOCOL_TCP, family };
        self.writer
            .publish_vip(key, VipSettings { vip_id, flags: VIP_OWNED }, &table)
            .with_context(|| format!("publishing {vip}"))?;
        Ok(())
    }

    /// Packets counted under each reason so far, summed over CPUs.
    pub fn reasons(&self) -> Result<Vec<u64>> {
        let counters = self.counters.reasons().context("reading the reason counters")?;
        ensure!(counters.len() == REASON_COUNT as usize, "expected {REASON_COUNT} reason counters");
        Ok(counters.iter().map(|counter| counter.packets).collect())
    }

    /// Deletes every tracked flow except the established scenarios' ones; returns how many
    /// were deleted and over how many distinct backends they were spread.
    pub fn clear_new_flows(&mut self) -> Result<(usize, usize)> {
        let flows = self.counters.flows().context("listing the flow table")?;
        let mut backends = BTreeSet::new();
        // A flow two CPUs placed at the same instant (the first, unchanged frames of both CPUs'
        // pages are one flow) can hold two ways; forgetting it clears both, and it counts once.
        let mut keys = BTreeSet::new();
        for (key, value) in flows {
            if self.established.contains(&key) {
                continue;
            }
            backends.insert(value.backend_id);
            keys.insert(key);
        }
        // By a scan, not by the flow hash: an `--against` program may hash differently.
        let established = &self.established;
        self.counters.forget_flows_where(|key| !established.contains(key)).context("deleting the benchmark's flows")?;
        Ok((keys.len(), backends.len()))
    }
}

fn config(interface_mac: [u8; 6], next_hop_mac: [u8; 6]) -> Config {
    Config {
        next_hop_mac,
        interface_mac,
        mtu: 1500,
        source_v4_base: to_words(IpAddr::V4(OUTER_SOURCE4)).0[0],
        // Per-flow entropy in the last octet / last 16 bits of the outer source, as deployed.
        source_v4_mask: u32::from_ne_bytes([0, 0, 0, 0xff]),
        source_v6_base: to_words(IpAddr::V6(OUTER_SOURCE6)).0,
        source_v6_mask: u32::from_ne_bytes([0, 0, 0xff, 0xff]),
        udp_idle_timeout_ns: 30_000_000_000,
        // The insert limiter is on, as it would be in production, at a rate no benchmark
        // reaches (one insert per nanosecond): new flows pay for its bookkeeping, and every
        // one of them is still tracked (the checks require it).
        flow_insert_cost_ns: 1,
        flow_insert_burst_ns: 1_000_000,
        ..Config::default()
    }
}

/// What a benchmark frame carries.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    TcpSyn,
    TcpAck,
    EchoRequest,
}

/// An untagged client frame from `source` to `destination`, `destination_mac` being the load
/// balancer's interface.
pub fn frame(destination_mac: [u8; 6], source: IpAddr, destination: IpAddr, kind: Kind, source_port: u16) -> Result<Vec<u8>> {
    let ethernet = PacketBuilder::ethernet2(CLIENT_MAC, destination_mac);
    let mut frame = Vec::new();
    match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            let ip = ethernet.ipv4(source.octets(), destination.octets(), 64);
            match kind {
                Kind::TcpSyn => ip.tcp(source_port, VIP_PORT, 1000, 64240).syn().write(&mut frame, PAYLOAD),
                Kind::TcpAck => ip.tcp(source_port, VIP_PORT, 1001, 64240).ack(5000).write(&mut frame, PAYLOAD),
                Kind::EchoRequest => ip.icmpv4_echo_request(0x4242, 1).write(&mut frame, PAYLOAD),
            }
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            let ip = ethernet.ipv6(source.octets(), destination.octets(), 64);
            match kind {
                Kind::TcpSyn => ip.tcp(source_port, VIP_PORT, 1000, 64240).syn().write(&mut frame, PAYLOAD),
                Kind::TcpAck => ip.tcp(source_port, VIP_PORT, 1001, 64240).ack(5000).write(&mut frame, PAYLOAD),
                Kind::EchoRequest => ip.icmpv6_echo_request(0x4242, 1).write(&mut frame, PAYLOAD),
            }
        }
        _ => anyhow::bail!("{source} and {destination} are of different families"),
    }
    .context("building a benchmark frame")?;
    Ok(frame)
}

/// The flow-table key of a TCP frame built by `frame`.
pub fn flow_key(source: IpAddr, destination: IpAddr, source_port: u16) -> FlowKey {
    let (source, family) = to_words(source);
    let (destination, _) = to_words(destination);
    FlowKey {
        source,
        destination,
        source_port: source_port.to_be(),
        destination_port: VIP_PORT.to_be(),
        protocol: PROTOCOL_TCP,
        family,
        _padding: [0; 2],
    }
}
