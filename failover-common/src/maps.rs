//! Keys and values of every BPF map, and the publication contract between writer and readers.
//!
//! # Byte order
//! Addresses are `[u32; 4]` whose bytes are the address in network order, exactly as they sit in
//! the packet (IPv4: word 0, words 1..=3 zero). Ports are network order too. Everything else
//! (ids, sizes, flags, times) is host order.
//!
//! # Writers
//! Two writers in the daemon, each the only one of its maps. The election task writes `OWNERSHIP`
//! and nothing else; the state owner (the map writer, `failover-ctl/src/maps.rs`) writes every
//! other controller map and never `OWNERSHIP`. The XDP program only reads, except the flow table
//! and the per-CPU counters and limiter, which the data plane owns (and the monitor filter's
//! `enabled`, see `monitor`).
//!
//! # Publication contract (atomic failover)
//! Rules 1 to 7 order the state owner's writes.
//! 1. Backends (`BACKENDS`) and their health (`HEALTH`) are written before any table refers to
//!    their id. A backend id names one (VIP, backend address) membership and stays the same for
//!    as long as that membership exists, so flow entries remain valid across rebuilds, reloads
//!    and controller restarts.
//! 2. A VIP's Maglev table is written completely into a region of `TABLES` that no packet reads:
//!    every VIP owns two regions and only the inactive one is written.
//! 3. The VIP's entry in `VIPS` (a no-prealloc hash map, replaced under RCU, so a reader sees the
//!    old value or the new one and never a mix) is then updated in one `bpf_map_update_elem` with
//!    the new region's offset and size. That entry is the VIP's active generation: written last.
//! 4. The region that was active before is rewritten only after a kernel RCU grace period (the
//!    controller waits for one), so no packet that read the old `VIPS` value still reads it.
//! 5. Health is the instant path: one byte-sized change of a `HEALTH` entry. A down backend is
//!    skipped at once by the slot probe (see `MAX_SLOT_PROBES`); the rebuilt table follows.
//! 6. The address filter bit of a VIP address is set after its `VIPS` entries exist and cleared
//!    after they are gone; a stale set bit costs one hash lookup, never a wrong verdict.
//! 7. `CONFIG` has two entries; the controller writes the one `CONFIG_ACTIVE` does not name and
//!    then flips `CONFIG_ACTIVE` (whose value only changes in its low byte).
//! 8. Ownership: a VIP whose flags name a group (`vip_group`, 1..`MAX_GROUPS`) is served while
//!    `OWNERSHIP[group]` is non-zero; its `VIP_OWNED` bit is ignored. So a VRRP takeover or
//!    release of every VIP of a group, and of the address entries at their addresses, is one
//!    `OWNERSHIP` write by the election task: the next packet sees the new owner. Group 0 means
//!    no group: the VIP's own `VIP_OWNED` bit decides, as it always did. Every service at one
//!    VIP address carries the same group (the configuration requires it), and so does the
//!    address entry, which answers for ICMP echo, ICMP errors and unusable packets at the address.
//! 9. `VIP_INDEX` (an mmap-able array, vip id -> `VipIdentity`) names the service each id
//!    stands for, so a tracked flow, which carries its VIP's id, finds its VIP without the
//!    `VIPS` hash lookup. The state owner stores through its mapping, word by word, in this
//!    order: an id's address words and flags while its service word is 0 (matching nothing),
//!    then the service word, after its `VIPS` entry is written; a flags change is one store;
//!    a removal stores 0 into the service word after the `VIPS` entry is gone, and the id is
//!    given to another VIP only after a grace period (rule 4's wait). A reader loads the
//!    service word first (x86 keeps loads in order, as it keeps stores), so it sees a whole
//!    identity or a service word that matches no flow. The identity's table word follows the
//!    `VIPS` entry: stored right after each switch (rule 3), so rule 4's wait covers readers of
//!    either. `VIP_SLOTS` names an id only while the id names that VIP: a slot is set after
//!    the identity and cleared before it.
//!
//! What the data plane reads of a VIP is therefore the same whichever way it found it: `VIPS`
//! (always), a flow entry's vip id, or the service's slot in `VIP_SLOTS`; the last two are
//! confirmed against the packet's own destination.

/// Address family values in `family` fields.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Protocol value of a VIP "address entry" (see `VipKey`): no real packet carries it.
pub const PROTOCOL_ADDRESS: u8 = 0;
pub const PROTOCOL_ICMP: u8 = 1;
pub const PROTOCOL_TCP: u8 = 6;
pub const PROTOCOL_UDP: u8 = 17;
pub const PROTOCOL_ICMPV6: u8 = 58;

/// Entries of the VIP address pre-filter (a power of two; one byte each).
pub const ADDRESS_FILTER_SLOTS: u32 = 1 << 16;
/// How many consecutive table slots a new flow may look at to find a live backend.
pub const MAX_SLOT_PROBES: u32 = 32;
/// Entries of `OWNERSHIP`: group indexes 0..=255 (0 = no group, never read), one per
/// `[[election]]` in configuration order from 1.
pub const MAX_GROUPS: u32 = 256;
/// Default capacities; the loader may override them (`set_max_entries`).
pub const MAX_VIPS: u32 = 1024;
pub const MAX_BACKENDS: u32 = 16384;
pub const DEFAULT_TABLE_POOL_SLOTS: u32 = 1 << 22;
pub const DEFAULT_FLOW_ENTRIES: u32 = 1 << 20;

/// Key of `VIPS`: (address, port, protocol). Port 0 means every port of that protocol.
///
/// Besides the service entries, the controller writes one *address entry* per distinct VIP
/// address, with `port == 0` and `protocol == PROTOCOL_ADDRESS`: it answers "is this address a
/// VIP" for ICMP echo and fragments. Its flags: `VIP_OWNED` when some service at the address
/// has it, and the group of the services there.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VipKey {
    /// Address bytes, network order.
    pub address: [u32; 4],
    /// Destination port, network order; 0 = every port.
    pub port: u16,
    /// IP protocol number (TCP, UDP) or `PROTOCOL_ADDRESS`.
    pub protocol: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// `VipMeta::flags`: hash the source address only (session affinity).
pub const VIP_HASH_SOURCE_ONLY: u32 = 1 << 0;
/// `VipMeta::flags`: this node owns the VIP (else its packets pass to the kernel). Read only
/// for a VIP without a group; a grouped VIP follows `OWNERSHIP` (contract rule 8).
pub const VIP_OWNED: u32 = 1 << 1;
/// `VipMeta::flags`: when no backend is live, pass to the local stack (else drop).
pub const VIP_ALL_DOWN_PASS: u32 = 1 << 2;
/// `VipMeta::flags`: do not track flows (every packet takes the table; for tests and stateless
/// UDP services).
pub const VIP_NO_FLOW_TRACKING: u32 = 1 << 3;

/// `VipMeta::flags` bits 16..=23: the ownership group of the VIP (see contract rule 8); 0 = no
/// group. In bits an older program never looked at, so `VipMeta` keeps its layout and size.
pub const VIP_GROUP_SHIFT: u32 = 16;
pub const VIP_GROUP_MASK: u32 = 0xff << VIP_GROUP_SHIFT;
const _: () = assert!(MAX_GROUPS == (VIP_GROUP_MASK >> VIP_GROUP_SHIFT) + 1);

/// The ownership group in `VipMeta::flags` (0 = none): an index into `OWNERSHIP`.
#[inline(always)]
pub const fn vip_group(flags: u32) -> u32 {
    (flags & VIP_GROUP_MASK) >> VIP_GROUP_SHIFT
}

/// `flags` with its group bits set to `group`.
#[inline(always)]
pub const fn with_vip_group(flags: u32, group: u8) -> u32 {
    (flags & !VIP_GROUP_MASK) | ((group as u32) << VIP_GROUP_SHIFT)
}

/// Values of `OWNERSHIP` entries (a `u32` per group; the data plane tests `!= 0`).
pub const OWNERSHIP_RELEASED: u32 = 0;
pub const OWNERSHIP_OWNED: u32 = 1;

/// Value of `VIPS`: the VIP's id and its active table generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipMeta {
    /// Index into the per-VIP counters; stable while the VIP exists.
    pub vip_id: u32,
    /// `VIP_*` flags, and the ownership group in `VIP_GROUP_MASK`.
    pub flags: u32,
    /// First slot of the active Maglev table in `TABLES`.
    pub table_offset: u32,
    /// Number of slots (a prime); 0 for address entries.
    pub table_size: u32,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 16);

/// Value of `VIP_INDEX`, indexed by vip id: the service that id stands for and its flags
/// (contract rule 9). `service` is the `port`, `protocol` and `family` of its `VipKey` as one
/// word ([`service_word`]); 0 while the id names no VIP (protocol 0 matches no flow).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipIdentity {
    pub service: u32,
    /// `VipMeta::flags` of the VIP.
    pub flags: u32,
    /// `VipKey::address`.
    pub address: [u32; 4],
    /// The active table, as its `VIPS` entry has it: `table_offset | table_size << 32`
    /// ([`table_word`]), one 8-byte store after each switch of the `VIPS` entry; 0 = none.
    pub table: u64,
}
const _: () = assert!(core::mem::size_of::<VipIdentity>() == 32);

/// `VipIdentity::table` for a table at `offset` of `size` slots.
#[inline(always)]
pub const fn table_word(offset: u32, size: u32) -> u64 {
    offset as u64 | (size as u64) << 32
}

/// Entries of `VIP_SLOTS` (a power of two): service hash -> vip id + 1 (0 = none), so that a
/// packet no flow entry answers for finds its VIP with two array loads instead of the `VIPS`
/// hash lookup. A slot holds one VIP; a VIP whose slot another one holds is found in `VIPS`.
pub const VIP_SLOTS: u32 = 1 << 14;

/// `VipKey`'s port (network order), protocol and family as the one word they occupy in memory
/// (`VipKey` bytes 16..20), which is what `VipIdentity::service` holds.
#[inline(always)]
pub const fn service_word(port: u16, protocol: u8, family: u8) -> u32 {
    let port = port.to_ne_bytes();
    u32::from_ne_bytes([port[0], port[1], protocol, family])
}

/// Value of `BACKENDS`, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Tunnel destination address, network order.
    pub address: [u32; 4],
    /// The VIP this membership belongs to: a flow entry whose backend has another `vip_id` is
    /// stale (the id was reused) and is ignored.
    pub vip_id: u32,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`: IPIP/6in4 or IP6IP6/4in6 tunnel.
    pub family: u8,
    pub _padding: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Backend>() == 24);

/// Values of `HEALTH` entries (a `u32` per backend id; only the low byte ever changes).
pub const HEALTH_DOWN: u32 = 0;
pub const HEALTH_UP: u32 = 1;
/// Draining: no new flows; tracked flows continue.
pub const HEALTH_DRAINING: u32 = 2;

/// A flow's key in `FLOWS`: the 5-tuple in the client-to-VIP direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FlowKey {
    /// Client address, network order.
    pub source: [u32; 4],
    /// VIP address, network order.
    pub destination: [u32; 4],
    /// Network order.
    pub source_port: u16,
    /// Network order.
    pub destination_port: u16,
    pub protocol: u8,
    pub family: u8,
    pub _padding: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// What `FLOWS` keeps of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub backend_id: u32,
    /// The VIP the flow was placed for: its `VIP_INDEX` entry answers for an established flow
    /// instead of a `VIPS` lookup (contract rule 9). Checked against the flow's destination, so
    /// a stale or foreign id is only a missed shortcut.
    pub vip_id: u32,
    /// `bpf_ktime_get_coarse_ns` when the flow was created or, for UDP, last refreshed
    /// (refreshed at most once per `FLOW_REFRESH_NS`).
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 16);

/// Ways of a `FLOWS` bucket: a flow can sit in any of the ways of the bucket its hash names.
pub const FLOW_WAYS: usize = 8;

/// One way of a `FLOWS` bucket: a cache line holding the whole key, so a lookup never trusts a
/// hash alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEntry {
    pub key: FlowKey,
    pub value: FlowValue,
    pub _padding: u64,
}
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 64);

/// Value of `FLOWS`, an array of buckets (a set-associative flow cache shared by every CPU).
/// The first cache line says which ways hold which flow and how recently each was seen, so a
/// lookup reads it and at most the one entry whose tag matches.
///
/// Writes follow one order, which readers on other CPUs see in program order (x86 stores are
/// not reordered with stores): the way's tag is cleared, the entry written, its `seen` set, and
/// the tag written last. A reader that matched the old tag and then reads a half-written entry
/// fails the key comparison and treats the packet as untracked.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowBucket {
    /// Per way: [`flow_tag`] of the flow's hash, 0 = empty.
    pub tags: [u32; FLOW_WAYS],
    /// Per way: when the flow was last seen, in units of `1 << FLOW_SEEN_SHIFT` ns of the coarse
    /// clock, wrapping, or `FLOW_SEEN_RECENTLY`. What replacement reads. A UDP packet writes
    /// the time (at most once per `FLOW_REFRESH_NS`: its expiry reads the clock anyway); a TCP
    /// packet writes `FLOW_SEEN_RECENTLY` unless it is there already, without a clock read, and
    /// the next insert into the bucket that looks at the way turns it into its own time.
    pub seen: [u32; FLOW_WAYS],
    pub entries: [FlowEntry; FLOW_WAYS],
}
const _: () = assert!(core::mem::size_of::<FlowBucket>() == 64 * (1 + FLOW_WAYS));

/// `FlowBucket::seen`: a packet came since an insert last looked at the way. Replacement
/// reads it as "seen now", so a flow is never older than it looks: an idle one at most looks
/// younger, until the first insert after its last packet (then it ages from that insert's
/// time). A time that happens to equal it reads the same way.
pub const FLOW_SEEN_RECENTLY: u32 = u32::MAX;

/// `FlowBucket::seen` units: 2^20 ns, about a millisecond; a u32 wraps after 52 days.
pub const FLOW_SEEN_SHIFT: u32 = 20;

/// A new flow replaces a way only if that way's flow has not been seen for this long (two
/// refresh periods: a flow that sends at all is refreshed more often). With no such way the
/// new flow is forwarded by the table but not tracked: a SYN flood never evicts an active flow.
pub const FLOW_EVICT_IDLE_NS: u64 = 2 * FLOW_REFRESH_NS;

/// The tag a flow's hash leaves in its bucket: never 0, which marks an empty way.
#[inline(always)]
pub const fn flow_tag(hash: u32) -> u32 {
    hash | 1
}

/// The number of `FLOWS` buckets for a capacity of `entries` flows: a power of two (the bucket
/// is the hash's low bits) with twice the ways the capacity needs. Flows fall into buckets at
/// random, so some buckets fill long before the cache does: with `entries` flows tracked (half
/// the ways), 0.84 % of new flows find their bucket full and stay untracked; at half that, 0.015 %.
pub const fn flow_buckets(entries: u32) -> u32 {
    let buckets = (entries / FLOW_WAYS as u32).saturating_mul(2);
    if buckets <= 1 {
        1
    } else {
        buckets.next_power_of_two()
    }
}

/// UDP flow entries are refreshed at most this often (a write per packet would bounce the
/// entry's cache line between cores).
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;

/// `Config::flags`: encapsulation does not check the MTU (for tests of huge frames).
pub const CONFIG_NO_MTU_CHECK: u32 = 1 << 0;

/// Value of `CONFIG` (two entries, see the contract).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Destination MAC of encapsulated packets (the next hop towards the backends).
    pub next_hop_mac: [u8; 6],
    /// Source MAC of encapsulated packets (the interface's own).
    pub interface_mac: [u8; 6],
    /// Largest IP packet the outer link carries; encapsulated packets above it are refused
    /// with ICMP fragmentation-needed / packet-too-big.
    pub mtu: u16,
    pub _padding: u16,
    /// `CONFIG_*` flags.
    pub flags: u32,
    /// Outer IPv4 source = `source_v4_base | (flow hash & source_v4_mask)`, network order.
    pub source_v4_base: u32,
    pub source_v4_mask: u32,
    /// Outer IPv6 source = `source_v6_base` with word 3 `| (flow hash & source_v6_mask)`.
    pub source_v6_base: [u32; 4],
    pub source_v6_mask: u32,
    /// UDP flow entries idle longer than this are ignored and replaced.
    pub udp_idle_timeout_ns: u64,
    /// Flow-insert limiter (per CPU token bucket): nanoseconds of credit one insert costs
    /// (`1e9 / rate`); 0 = unlimited.
    pub flow_insert_cost_ns: u64,
    /// Bucket depth in nanoseconds of credit (`burst * cost`).
    pub flow_insert_burst_ns: u64,
    /// `FLOWS` buckets - 1 (a power of two minus one); the map writer sets it from the map's
    /// size, whatever the caller gave.
    pub flow_bucket_mask: u32,
    pub _padding_end: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 80);

/// Value of `FLOW_LIMITER` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LimiterState {
    /// Credit in nanoseconds, at most `Config::flow_insert_burst_ns`.
    pub credit_ns: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<LimiterState>() == 16);

/// A packets-and-bytes counter (per-CPU map values).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// Map names as they appear in the object file (the loader and inspection CLI use these).
pub mod names {
    pub const VIPS: &str = "VIPS";
    pub const ADDRESS_FILTER: &str = "ADDRESS_FILTER";
    pub const BACKENDS: &str = "BACKENDS";
    pub const HEALTH: &str = "HEALTH";
    pub const TABLES: &str = "TABLES";
    pub const FLOWS: &str = "FLOWS";
    pub const CONFIG: &str = "CONFIG";
    pub const CONFIG_ACTIVE: &str = "CONFIG_ACTIVE";
    pub const FLOW_LIMITER: &str = "FLOW_LIMITER";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const REASON_STATS: &str = "REASON_STATS";
    pub const MONITOR_FILTER: &str = "MONITOR_FILTER";
    pub const MONITOR_RECORDS: &str = "MONITOR_RECORDS";
    pub const MONITOR_LOST: &str = "MONITOR_LOST";
    pub const OWNERSHIP: &str = "OWNERSHIP";
    pub const VIP_INDEX: &str = "VIP_INDEX";
    pub const VIP_SLOTS: &str = "VIP_SLOTS";
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    pub const DECAP_STATS: &str = "DECAP_STATS";
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is repr(C), Copy, with explicit padding fields and no implicit holes
    // (the size assertions above pin the layouts).
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for VipIdentity {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FlowBucket {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for LimiterState {}
    unsafe impl aya::Pod for Counter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_word_is_the_keys_last_word() {
        let key = VipKey { address: [0x0a00_0001, 0, 0, 0], port: 443u16.to_be(), protocol: PROTOCOL_TCP, family: FAMILY_IPV4 };
        // SAFETY: VipKey is repr(C), 20 bytes, u32-aligned; its fifth word is bytes 16..20.
        let word = unsafe { *(&key as *const VipKey as *const u32).add(4) };
        assert_eq!(service_word(key.port, key.protocol, key.family), word);
        assert_eq!(service_word(0, PROTOCOL_ADDRESS, 0), 0, "an empty identity matches no flow");
        assert_ne!(service_word(0, PROTOCOL_TCP, FAMILY_IPV6), service_word(0, PROTOCOL_UDP, FAMILY_IPV6));
    }
}
