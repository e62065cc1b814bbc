//! Pure decisions of the controller: stable ids, map encodings of a VIP, which backends serve,
//! and the Maglev table. Nothing here touches a map, so all of it is tested on the host.

use std::{collections::BTreeMap, net::IpAddr};

use failover_common::maps::{
    Backend, VipKey, VipMeta, HEALTH_DOWN, HEALTH_DRAINING, HEALTH_UP, MAX_BACKENDS,
    MAX_VIPS, PROTOCOL_ADDRESS, PROTOCOL_TCP, PROTOCOL_UDP, VIP_ALL_DOWN_PASS,
    VIP_HASH_SOURCE_ONLY, VIP_OWNED, with_vip_group,
};

use crate::{
    address,
    config::{self, AllDown, Config, HashMode, Protocol, Tier},
    maglev::{self, MaglevBackend, MaglevError},
};

/// The operator's say over a backend, independent of its probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// Serves while its probes say it is up.
    Enabled,
    /// No new flows; tracked flows continue (`failover-ctl drain`).
    Drained,
    /// Out entirely and not probed (`maintenance = true` or `failover-ctl maintenance`).
    Maintenance,
}

impl Admin {
    pub fn name(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Drained => "drained",
            Self::Maintenance => "maintenance",
        }
    }
}

/// The `HEALTH` map value of a backend.
pub fn health_bit(admin: Admin, up: bool) -> u32 {
    match (admin, up) {
        (Admin::Maintenance, _) | (_, false) => HEALTH_DOWN,
        (Admin::Drained, true) => HEALTH_DRAINING,
        (Admin::Enabled, true) => HEALTH_UP,
    }
}

/// The `VIPS` key of a configured VIP.
pub fn vip_key(vip: &config::Vip) -> VipKey {
    let (words, family) = address::to_words(vip.address);
    let protocol = match vip.protocol {
        Protocol::Tcp => PROTOCOL_TCP,
        Protocol::Udp => PROTOCOL_UDP,
    };
    VipKey { address: words, port: vip.port.to_be(), protocol, family }
}

/// The ownership group of the VIP named `vip` (its index in `OWNERSHIP`): the position of the
/// `[[election]]` it follows in `config.elections`, plus one; 0 when it follows none. The
/// configuration holds at most 255 elections. A reload that reorders the elections renumbers
/// their groups: the election task writes `OWNERSHIP` by the numbers of the configuration in
/// force.
pub fn group_index(config: &Config, vip: &str) -> u8 {
    config
        .elections
        .iter()
        .position(|election| election.vips.iter().any(|name| name == vip))
        .and_then(|position| u8::try_from(position + 1).ok())
        .unwrap_or(0)
}

/// The `VIP_*` flags of a configured VIP in ownership group `group` ([`group_index`]). A VIP
/// without a group is served by its `owned` setting (`VIP_OWNED`); a grouped one by its
/// group's `OWNERSHIP` entry alone, so `VIP_OWNED` stays clear: a program older than
/// elections, which ignores the group bits, then never serves it (rather than serving it on
/// every node at once).
pub fn vip_flags(vip: &config::Vip, group: u8) -> u32 {
    let mut flags = 0;
    if vip.hash == HashMode::Source {
        flags |= VIP_HASH_SOURCE_ONLY;
    }
    if vip.owned && group == 0 {
        flags |= VIP_OWNED;
    }
    if vip.all_down == AllDown::Pass {
        flags |= VIP_ALL_DOWN_PASS;
    }
    with_vip_group(flags, group)
}

/// The `BACKENDS` entry of a backend of VIP `vip_id`.
pub fn backend_entry(address: IpAddr, vip_id: u32) -> Backend {
    let (words, family) = address::to_words(address);
    Backend { address: words, vip_id, family, _padding: [0; 3] }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("more than {MAX_VIPS} VIPs")]
    VipsExhausted,
    #[error("more than {MAX_BACKENDS} backends")]
    BackendsExhausted,
}

/// Stable ids: a VIP keeps its id while its key exists, a backend (a VIP membership) keeps its
/// id while its VIP id and address exist, so tracked flows keep their backend across reloads and
/// restarts. Ids are read back from the maps when a restarted daemon adopts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    vips: BTreeMap<VipKey, u32>,
    backends: BTreeMap<(u32, IpAddr), u32>,
    /// Where the search for a free id starts: just after the last one handed out, so a freed id
    /// is reused as late as possible.
    next_vip: u32,
    next_backend: u32,
}

impl Ids {
    /// The ids found in the maps. Address entries (protocol 0) carry no id.
    pub fn from_maps(vips: &[(VipKey, VipMeta)], backends: &[(u32, Backend, u32)]) -> Self {
        let mut ids = Self::default();
        for (key, meta) in vips.iter().filter(|(key, _)| key.protocol != PROTOCOL_ADDRESS) {
            ids.vips.insert(*key, meta.vip_id);
            ids.next_vip = ids.next_vip.max(meta.vip_id + 1);
        }
        for (id, backend, _) in backends {
            if let Some(ip) = address::from_words(&backend.address, backend.family) {
                ids.backends.insert((backend.vip_id, ip), *id);
                ids.next_backend = ids.next_backend.max(id + 1);
            }
        }
        ids
    }

    /// The id of the VIP with `key`, allocating one if it has none.
    pub fn vip(&mut self, key: VipKey) -> Result<u32, IdError> {
        if let Some(id) = self.vips.get(&key) {
            return Ok(*id);
        }
        let used: Vec<u32> = self.vips.values().copied().collect();
        let id = free_id(&used, self.next_vip, MAX_VIPS).ok_or(IdError::VipsExhausted)?;
        self.vips.insert(key, id);
        self.next_vip = id + 1;
        Ok(id)
    }

    /// The id of the backend at `address` in VIP `vip_id`, allocating one if it has none.
    pub fn backend(&mut self, vip_id: u32, address: IpAddr) -> Result<u32, IdError> {
        if let Some(id) = self.backends.get(&(vip_id, address)) {
            return Ok(*id);
        }
        let used: Vec<u32> = self.backends.values().copied().collect();
        let id = free_id(&used, self.next_backend, MAX_BACKENDS).ok_or(IdError::BackendsExhausted)?;
        self.backends.insert((vip_id, address), id);
        self.next_backend = id + 1;
        Ok(id)
    }

    /// Keeps only the VIPs and backends in `keep_vips` / `keep_backends`.
    pub fn retain(&mut self, keep_vips: &[VipKey], keep_backends: &[u32]) {
        self.vips.retain(|key, _| keep_vips.contains(key));
        self.backends.retain(|_, id| keep_backends.contains(id));
    }
}

/// The first id in `1..limit` not in `used`, searching from `start` and wrapping around. Id 0 is
/// never handed out: it is the address entries' VIP id and an unset slot's backend id.
fn free_id(used: &[u32], start: u32, limit: u32) -> Option<u32> {
    let start = start.clamp(1, limit.saturating_sub(1).max(1));
    (start..limit).chain(1..start).find(|id| !used.contains(id))
}

/// One backend of a VIP as the table builder needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub id: u32,
    pub address: IpAddr,
    pub weight: u16,
    pub tier: Tier,
    pub admin: Admin,
    pub up: bool,
}

/// The backends that get new flows: the enabled, up primaries; while there is none, the
/// enabled, up backups (nginx / HAProxy `backup`). Empty when nothing can serve.
pub fn serving(members: &[Member]) -> Vec<u32> {
    let ready = |tier: Tier| -> Vec<u32> {
        members
            .iter()
            .filter(|member| member.tier == tier && member.admin == Admin::Enabled && member.up)
            .map(|member| member.id)
            .collect()
    };
    let primaries = ready(Tier::Primary);
    if primaries.is_empty() {
        ready(Tier::Backup)
    } else {
        primaries
    }
}

/// The Maglev table of a VIP: the serving backends by weight. With nothing serving, the table
/// holds every member that is not in maintenance (all of them when all are), so that the data
/// plane applies the VIP's all-down policy and the first backend to come up serves at once
/// through its health bit, before the next table is published.
pub fn table(members: &[Member], size: u32) -> Result<Vec<u32>, MaglevError> {
    maglev::build(&table_inputs(members), size)
}

/// What [`table`] builds from: every member in order, with its weight where it serves and 0
/// elsewhere. The table is a pure function of these and the size, so equal inputs name equal
/// tables (the ready failover tables are looked up by them).
pub fn table_inputs(members: &[Member]) -> Vec<MaglevBackend> {
    let serving = serving(members);
    let fallback: Vec<u32> = members.iter().filter(|m| m.admin != Admin::Maintenance).map(|m| m.id).collect();
    let chosen: Vec<u32> = if !serving.is_empty() {
        serving
    } else if !fallback.is_empty() {
        fallback
    } else {
        members.iter().map(|m| m.id).collect()
    };
    members
        .iter()
        .map(|member| MaglevBackend {
            id: member.id,
            key: maglev_key(member.address),
            weight: if chosen.contains(&member.id) { u32::from(member.weight) } else { 0 },
        })
        .collect()
}

/// The permutation seed of a backend: its address, so its slots stay put across rebuilds.
fn maglev_key(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_common::maps::{vip_group, FAMILY_IPV4, VIP_GROUP_SHIFT};

    fn member(id: u32, tier: Tier, up: bool) -> Member {
        Member {
            id,
            address: IpAddr::from([10, 0, 0, id as u8]),
            weight: 1,
            tier,
            admin: Admin::Enabled,
            up,
        }
    }

    #[test]
    fn health_bits_follow_admin_and_verdict() {
        assert_eq!(health_bit(Admin::Enabled, true), HEALTH_UP);
        assert_eq!(health_bit(Admin::Enabled, false), HEALTH_DOWN);
        assert_eq!(health_bit(Admin::Drained, true), HEALTH_DRAINING);
        assert_eq!(health_bit(Admin::Drained, false), HEALTH_DOWN);
        assert_eq!(health_bit(Admin::Maintenance, true), HEALTH_DOWN);
    }

    #[test]
    fn backups_serve_only_without_an_up_primary() {
        let mut members = vec![member(1, Tier::Primary, true), member(2, Tier::Primary, false), member(3, Tier::Backup, true)];
        assert_eq!(serving(&members), vec![1]);
        members[0].up = false;
        assert_eq!(serving(&members), vec![3]);
        members[0].up = true;
        members[0].admin = Admin::Drained;
        assert_eq!(serving(&members), vec![3], "a drained primary does not hold the backups back");
        members[2].up = false;
        assert!(serving(&members).is_empty());
    }

    #[test]
    fn tables_hold_the_serving_backends_by_weight() {
        let mut members = vec![member(1, Tier::Primary, true), member(2, Tier::Primary, true), member(3, Tier::Backup, true)];
        members[1].weight = 3;
        let table = table(&members, 65537).unwrap();
        let count = |id: u32| table.iter().filter(|slot| **slot == id).count() as f64;
        assert_eq!(count(3), 0.0);
        let share = count(2) / (count(1) + count(2));
        assert!((share - 0.75).abs() < 0.01, "weight 3 of 4 got {share}");
    }

    #[test]
    fn an_all_down_table_holds_every_member_outside_maintenance() {
        let mut members = vec![member(1, Tier::Primary, false), member(2, Tier::Backup, false), member(3, Tier::Primary, false)];
        members[2].admin = Admin::Maintenance;
        let table = table(&members, 257).unwrap();
        assert!(table.contains(&1) && table.contains(&2) && !table.contains(&3));
    }

    #[test]
    fn a_removed_backend_moves_only_its_own_slots() {
        let members: Vec<Member> = (1..=5).map(|id| member(id, Tier::Primary, true)).collect();
        let before = table(&members, 65537).unwrap();
        let after = table(&members[..4], 65537).unwrap();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a && **b != 5).count();
        assert!(moved < 65537 / 50, "{moved} slots of surviving backends moved");
    }

    #[test]
    fn ids_are_stable_and_freed_ids_are_reused_last() {
        let mut ids = Ids::default();
        let key = |port: u16| VipKey { address: [1, 0, 0, 0], port, protocol: PROTOCOL_TCP, family: FAMILY_IPV4 };
        let web = ids.vip(key(80)).unwrap();
        let dns = ids.vip(key(53)).unwrap();
        assert_ne!(web, 0);
        assert_ne!(web, dns);
        assert_eq!(ids.vip(key(80)).unwrap(), web);
        let a = ids.backend(web, "10.0.0.1".parse().unwrap()).unwrap();
        let b = ids.backend(web, "10.0.0.2".parse().unwrap()).unwrap();
        let c = ids.backend(dns, "10.0.0.1".parse().unwrap()).unwrap();
        assert!(a != b && b != c && a != c && a != 0);
        ids.retain(&[key(80)], &[b]);
        let d = ids.backend(web, "10.0.0.3".parse().unwrap()).unwrap();
        assert!(d != a && d != c, "a freed id is not handed out again at once");
        assert_eq!(ids.backend(web, "10.0.0.2".parse().unwrap()).unwrap(), b);
    }

    #[test]
    fn ids_come_back_from_the_maps() {
        let key = VipKey { address: [1, 0, 0, 0], port: 80u16.to_be(), protocol: PROTOCOL_TCP, family: FAMILY_IPV4 };
        let address_entry = VipKey { port: 0, protocol: PROTOCOL_ADDRESS, ..key };
        let meta = VipMeta { vip_id: 7, flags: 0, table_offset: 0, table_size: 13 };
        let backend = backend_entry("10.0.0.9".parse().unwrap(), 7);
        let mut ids = Ids::from_maps(&[(key, meta), (address_entry, VipMeta::default())], &[(42, backend, HEALTH_UP)]);
        assert_eq!(ids.vip(key).unwrap(), 7);
        assert_eq!(ids.backend(7, "10.0.0.9".parse().unwrap()).unwrap(), 42);
        assert_eq!(ids.backend(7, "10.0.0.10".parse().unwrap()).unwrap(), 43);
    }

    #[test]
    fn grouped_vips_carry_their_election_position_and_no_owned_bit() {
        let text = "\
interfaces = [\"eth0\"]
next_hop = { mac = \"02:00:00:00:00:01\" }
tunnel = { source_v4 = \"192.0.2.0/24\" }
[[vip]]
name = \"web\"
address = \"203.0.113.10\"
port = 80
protocol = \"tcp\"
backend = [{ address = \"198.51.100.1\" }]
[[vip]]
name = \"dns\"
address = \"203.0.113.11\"
port = 53
protocol = \"udp\"
backend = [{ address = \"198.51.100.2\", probe = { kind = \"icmp\" } }]
[[vip]]
name = \"alone\"
address = \"203.0.113.12\"
port = 80
protocol = \"tcp\"
hash = \"source\"
backend = [{ address = \"198.51.100.3\" }]
[[election]]
name = \"first\"
interface = \"eth1\"
vrid = 1
addresses = [\"10.0.0.1\"]
vips = [\"dns\"]
[[election]]
name = \"second\"
interface = \"eth1\"
vrid = 2
addresses = [\"10.0.0.2\"]
vips = [\"web\"]
";
        let config = config::parse(text, "test.toml").unwrap();
        let flags = |name: &str| {
            let vip = config.vips.iter().find(|vip| vip.name == name).unwrap();
            vip_flags(vip, group_index(&config, name))
        };
        assert_eq!(group_index(&config, "dns"), 1);
        assert_eq!(group_index(&config, "web"), 2);
        assert_eq!(group_index(&config, "alone"), 0);
        assert_eq!(flags("web"), 2 << VIP_GROUP_SHIFT, "a grouped VIP leaves VIP_OWNED to its group");
        assert_eq!(vip_group(flags("dns")), 1);
        assert_eq!(flags("alone"), VIP_OWNED | VIP_HASH_SOURCE_ONLY);
    }

    #[test]
    fn ids_run_out_with_an_error() {
        assert_eq!(free_id(&[1, 2, 3], 2, 4), None);
        assert_eq!(free_id(&[2, 3], 3, 4), Some(1));
    }
}
