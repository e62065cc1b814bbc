//! The map writer: the only code that changes the data plane's maps. It implements the
//! publication contract written down in `failover_common::maps` and keeps a mirror of what it
//! published, so that every change is validated before the first map is touched.

mod address_entry;
mod flows;
mod mapping;
mod publish;
mod vip_index;

pub use flows::Placed;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::fd::AsFd,
    path::PathBuf,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    Ebpf,
};
use failover_common::{
    hash,
    maps::{names, *},
    stats::REASON_COUNT,
};
use thiserror::Error;

use address_entry::AddressState;
use publish::Standby;
use crate::{
    grace::GracePeriod,
    paths::InstancePaths,
    table_pool::{PoolError, Region, TablePool},
};

#[derive(Debug, Error)]
pub enum MapWriteError {
    #[error("map {name}: {source}")]
    Map { name: &'static str, #[source] source: MapError },
    #[error("map {0} is missing from the loaded object")]
    Missing(&'static str),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("waiting for a grace period failed: {0}")]
    Grace(#[source] std::io::Error),
    #[error("VIP {0}: {1}")]
    Vip(String, String),
    #[error("backend {0}: {1}")]
    Backend(u32, String),
    #[error("config: {0}")]
    Config(String),
    #[error("pinned map {}: {source}", path.display())]
    Pinned { path: PathBuf, #[source] source: MapError },
    #[error("pinned maps are inconsistent, refusing to adopt them: {0}")]
    Corrupt(String),
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> MapWriteError {
    move |source| MapWriteError::Map { name, source }
}

/// How a VIP is published: its counter id and `VIP_*` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipSettings {
    pub vip_id: u32,
    pub flags: u32,
}

#[derive(Debug)]
struct PublishedVip {
    meta: VipMeta,
    active: Region,
    /// The previously active region, while it is not freed.
    standby: Option<Standby>,
    /// Slots per backend id in the active table; the keys are the backends it names.
    counts: BTreeMap<u32, u32>,
}

/// A backend entry as written, with its last written health.
#[derive(Clone, Copy, Debug)]
struct BackendEntry {
    backend: Backend,
    health: u32,
}

fn describe(key: &VipKey) -> String {
    let address = crate::address::from_words(&key.address, key.family)
        .map_or_else(|| "?".to_string(), |a| a.to_string());
    format!("{address}:{}/{}", u16::from_be(key.port), key.protocol)
}

/// Maps the writer fills when the program has them and leaves out when it does not (the
/// pins or object of an older release, whose program never reads them).
pub const OPTIONAL_MAPS: &[&str] = &[names::VIP_INDEX, names::VIP_SLOTS];

/// Typed handles on the writable maps plus the mirror of what was published.
pub struct MapWriter {
    vips: HashMap<MapData, VipKey, VipMeta>,
    filter: Array<MapData, u8>,
    backends: Array<MapData, Backend>,
    health: Array<MapData, u32>,
    config: Array<MapData, Config>,
    config_active: Array<MapData, u32>,
    /// `VIP_INDEX` and `VIP_SLOTS`; `None` for the pins of a program older than them (which
    /// never reads them).
    index: Option<vip_index::VipIndex>,
    /// `FLOWS` buckets - 1, written into every published `Config`.
    flow_bucket_mask: u32,
    pool: TablePool,
    grace: GracePeriod,
    grace_epoch: u64,
    published: BTreeMap<VipKey, PublishedVip>,
    addresses: BTreeMap<(u8, [u32; 4]), AddressState>,
    filter_counts: BTreeMap<u32, u32>,
    backend_entries: BTreeMap<u32, BackendEntry>,
    /// The `CONFIG` slot `CONFIG_ACTIVE` names and what it holds.
    active_config: Option<(u32, Config)>,
    /// Regions no VIP entry names any more, with the grace epoch in which they were retired;
    /// packets may still read them until a grace period has passed.
    retired: Vec<(Region, u64)>,
}

/// Where map handles come from: a freshly loaded object (taken out of it) or an instance's
/// pins on bpffs.
pub(crate) enum MapSource<'a> {
    Object(&'a mut Ebpf),
    Pinned(&'a InstancePaths),
}

impl MapSource<'_> {
    fn map(&mut self, name: &'static str) -> Result<Map, MapWriteError> {
        match self {
            Self::Object(ebpf) => ebpf.take_map(name).ok_or(MapWriteError::Missing(name)),
            Self::Pinned(paths) => {
                let path = paths.map(name);
                let pinned = |source| MapWriteError::Pinned { path: path.clone(), source };
                Map::from_map_data(MapData::from_pin(&path).map_err(pinned)?).map_err(pinned)
            }
        }
    }

    /// A map that the programs of older releases do not have: `None` when this object or
    /// these pins lack it.
    fn optional_map(&mut self, name: &'static str) -> Result<Option<Map>, MapWriteError> {
        if !self.has(name) {
            return Ok(None);
        }
        self.map(name).map(Some)
    }

    /// Whether the object or the pins have map `name` (without taking it).
    fn has(&self, name: &'static str) -> bool {
        match self {
            Self::Object(ebpf) => ebpf.map(name).is_some(),
            Self::Pinned(paths) => paths.map(name).exists(),
        }
    }

    /// A typed handle; the conversion checks the map type and the key and value sizes.
    pub(crate) fn typed<T: TryFrom<Map, Error = MapError>>(&mut self, name: &'static str) -> Result<T, MapWriteError> {
        T::try_from(self.map(name)?).map_err(map_error(name))
    }

    /// The size a map was created with, without taking it out of the object.
    fn max_entries(&mut self, name: &'static str) -> Result<u32, MapWriteError> {
        let info = match self {
            Self::Object(ebpf) => {
                let map = ebpf.map(name).ok_or(MapWriteError::Missing(name))?;
                let data = match map {
                    Map::Array(data) => data,
                    _ => return Err(MapWriteError::Corrupt(format!("map {name} is not an array"))),
                };
                data.info()
            }
            Self::Pinned(paths) => {
                let path = paths.map(name);
                MapData::from_pin(&path).map_err(|source| MapWriteError::Pinned { path: path.clone(), source })?.info()
            }
        };
        Ok(info.map_err(map_error(name))?.max_entries())
    }

    /// The `TABLES` pool, mapped writable or for reading only.
    pub(crate) fn pool(&mut self, writable: bool) -> Result<TablePool, MapWriteError> {
        let Map::Array(tables) = self.map(names::TABLES)? else {
            return Err(MapWriteError::Corrupt(format!("map {} is not an array", names::TABLES)));
        };
        let capacity = tables.info().map_err(map_error(names::TABLES))?.max_entries();
        // The mapping holds its own reference to the map: `tables` may be dropped.
        let fd = tables.fd().as_fd();
        Ok(if writable { TablePool::map(&fd, capacity)? } else { TablePool::map_read_only(&fd, capacity)? })
    }
}

impl MapWriter {
    /// Takes the writable maps out of a loaded load-balancer object.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        Self::open(MapSource::Object(ebpf))
    }

    /// Opens the pinned maps of an instance written by an earlier process and rebuilds the
    /// mirror from their contents: VIP entries give the active regions (the only allocated
    /// ones), their members and the address ownership; `BACKENDS` entries with a family are in
    /// use; `CONFIG_ACTIVE` names the config. Address entries and filter bits left behind by
    /// an interrupted change are repaired; anything else inconsistent (a region outside the
    /// pool, overlapping regions, a table naming a backend that does not exist) is an error.
    ///
    /// The dead writer's standby regions become free; one grace period is waited for before
    /// returning, so no packet that read an older `VIPS` value still reads one of them.
    pub fn adopt(paths: &InstancePaths) -> Result<Self, MapWriteError> {
        let mut writer = Self::open(MapSource::Pinned(paths))?;
        writer.rebuild()?;
        writer.wait_grace()?;
        Ok(writer)
    }

    fn open(mut source: MapSource<'_>) -> Result<Self, MapWriteError> {
        let pool = source.pool(true)?;
        let flow_buckets = source.max_entries(names::FLOWS)?;
        if !flow_buckets.is_power_of_two() {
            return Err(MapWriteError::Corrupt(format!("map {} has {flow_buckets} buckets, not a power of two", names::FLOWS)));
        }
        Ok(Self {
            flow_bucket_mask: flow_buckets - 1,
            vips: source.typed(names::VIPS)?,
            filter: source.typed(names::ADDRESS_FILTER)?,
            backends: source.typed(names::BACKENDS)?,
            health: source.typed(names::HEALTH)?,
            config: source.typed(names::CONFIG)?,
            config_active: source.typed(names::CONFIG_ACTIVE)?,
            index: match (source.optional_map(names::VIP_INDEX)?, source.optional_map(names::VIP_SLOTS)?) {
                (Some(entries), Some(slots)) => Some(vip_index::VipIndex::new(entries, slots)?),
                (None, None) => None,
                _ => return Err(MapWriteError::Corrupt(format!("{} and {} come together, and only one is here", names::VIP_INDEX, names::VIP_SLOTS))),
            },
            pool,
            grace: GracePeriod::new().map_err(MapWriteError::Grace)?,
            grace_epoch: 0,
            published: BTreeMap::new(),
            addresses: BTreeMap::new(),
            filter_counts: BTreeMap::new(),
            backend_entries: BTreeMap::new(),
            active_config: None,
            retired: Vec::new(),
        })
    }

    /// Publishes a configuration: writes the inactive `CONFIG` slot, then flips `CONFIG_ACTIVE`.
    pub fn set_config(&mut self, config: &Config) -> Result<(), MapWriteError> {
        if config.flags & CONFIG_NO_MTU_CHECK == 0 && !(1280..=65535).contains(&config.mtu) {
            return Err(MapWriteError::Config(format!("mtu {} is below the IPv6 minimum of 1280", config.mtu)));
        }
        if config.flow_insert_cost_ns != 0 && config.flow_insert_burst_ns < config.flow_insert_cost_ns {
            return Err(MapWriteError::Config("flow insert burst is smaller than one insert".into()));
        }
        let slot = match self.active_config {
            Some((active, _)) => 1 - active,
            None => 0,
        };
        // The flow cache's shape is the map's, not the caller's to choose.
        let config = &Config { flow_bucket_mask: self.flow_bucket_mask, ..*config };
        self.config.set(slot, config, 0).map_err(map_error(names::CONFIG))?;
        self.config_active.set(0, slot, 0).map_err(map_error(names::CONFIG_ACTIVE))?;
        self.active_config = Some((slot, *config));
        Ok(())
    }

    /// Creates backend `id` (a VIP membership) with its initial health. An id that is in a
    /// published table cannot change its address or VIP: give the new membership a new id.
    pub fn set_backend(&mut self, id: u32, backend: Backend, health: u32) -> Result<(), MapWriteError> {
        if id >= self.backends.len() {
            return Err(MapWriteError::Backend(id, format!("id is beyond the map's {} entries", self.backends.len())));
        }
        if backend.family != FAMILY_IPV4 && backend.family != FAMILY_IPV6 {
            return Err(MapWriteError::Backend(id, format!("unknown address family {}", backend.family)));
        }
        check_health(id, health)?;
        if let Some(existing) = self.backend_entries.get(&id) {
            if existing.backend != backend && self.referenced(id) {
                return Err(MapWriteError::Backend(id, "is in a published table; cannot change its address or VIP".into()));
            }
        }
        self.backends.set(id, backend, 0).map_err(map_error(names::BACKENDS))?;
        self.health.set(id, health, 0).map_err(map_error(names::HEALTH))?;
        self.backend_entries.insert(id, BackendEntry { backend, health });
        Ok(())
    }

    /// The instant failover path: one map update.
    pub fn set_health(&mut self, id: u32, health: u32) -> Result<(), MapWriteError> {
        check_health(id, health)?;
        let Some(entry) = self.backend_entries.get_mut(&id) else {
            return Err(MapWriteError::Backend(id, "unknown backend".into()));
        };
        self.health.set(id, health, 0).map_err(map_error(names::HEALTH))?;
        entry.health = health;
        Ok(())
    }

    /// Removes a backend that no published table names any more.
    pub fn remove_backend(&mut self, id: u32) -> Result<(), MapWriteError> {
        if self.referenced(id) {
            return Err(MapWriteError::Backend(id, "is still in a published table".into()));
        }
        if self.backend_entries.remove(&id).is_some() {
            self.health.set(id, HEALTH_DOWN, 0).map_err(map_error(names::HEALTH))?;
            self.backends.set(id, Backend::default(), 0).map_err(map_error(names::BACKENDS))?;
        }
        Ok(())
    }

    fn referenced(&self, id: u32) -> bool {
        self.published.values().any(|vip| vip.counts.contains_key(&id))
    }

    /// Keeps the address entry (owned if any service at the address is, the group of the
    /// service that changed last) and the filter bit in step with the services at `address`.
    /// `before`/`after`: the flags of the service that changed, `None` where it does not exist.
    fn address_changed(&mut self, family: u8, address: [u32; 4], before: Option<u32>, after: Option<u32>) -> Result<(), MapWriteError> {
        let state = self.addresses.entry((family, address)).or_default();
        let (old_services, old_flags) = (state.services, state.flags());
        if let Some(flags) = before {
            state.remove(flags);
        }
        if let Some(flags) = after {
            state.add(flags);
            state.group = vip_group(flags);
        }
        state.settle_group();
        let (services, flags) = (state.services, state.flags());
        let key = VipKey { address, port: 0, protocol: PROTOCOL_ADDRESS, family };
        let index = hash::address_filter_index(&address);
        if services == 0 {
            self.addresses.remove(&(family, address));
            self.vips.remove(&key).map_err(map_error(names::VIPS))?;
            let count = self.filter_counts.entry(index).or_default();
            *count -= 1;
            if *count == 0 {
                self.filter_counts.remove(&index);
                self.filter.set(index, 0, 0).map_err(map_error(names::ADDRESS_FILTER))?;
            }
            return Ok(());
        }
        if old_services == 0 || flags != old_flags {
            self.vips.insert(key, VipMeta { vip_id: 0, flags, table_offset: 0, table_size: 0 }, 0).map_err(map_error(names::VIPS))?;
        }
        if old_services == 0 {
            let count = self.filter_counts.entry(index).or_default();
            *count += 1;
            if *count == 1 {
                self.filter.set(index, 1, 0).map_err(map_error(names::ADDRESS_FILTER))?;
            }
        }
        Ok(())
    }

    /// The active table of a published VIP, read back from the pool.
    pub fn table(&self, key: &VipKey) -> Option<Vec<u32>> {
        self.published.get(key).map(|vip| self.pool.read(vip.active))
    }

    /// The published meta of a VIP.
    pub fn vip(&self, key: &VipKey) -> Option<VipMeta> {
        self.published.get(key).map(|vip| vip.meta)
    }

    /// Pool slots not allocated to any VIP.
    pub fn free_table_slots(&self) -> u32 {
        self.pool.free_slots()
    }

    /// Every published VIP (service entries only, not address entries).
    pub fn published_vips(&self) -> Vec<(VipKey, VipMeta)> {
        self.published.iter().map(|(key, vip)| (*key, vip.meta)).collect()
    }

    /// Every backend entry in use: (id, backend, last written health).
    pub fn backend_entries(&self) -> Vec<(u32, Backend, u32)> {
        self.backend_entries.iter().map(|(id, entry)| (*id, entry.backend, entry.health)).collect()
    }

    /// The active configuration, if one was ever published.
    pub fn config(&self) -> Option<Config> {
        self.active_config.map(|(_, config)| config)
    }

    /// Rebuilds the mirror of a fresh writer from the maps (see `adopt`).
    fn rebuild(&mut self) -> Result<(), MapWriteError> {
        let corrupt = MapWriteError::Corrupt;
        for id in 0..self.backends.len() {
            let backend = self.backends.get(&id, 0).map_err(map_error(names::BACKENDS))?;
            if backend.family == 0 {
                continue;
            }
            if backend.family != FAMILY_IPV4 && backend.family != FAMILY_IPV6 {
                return Err(corrupt(format!("backend {id} has unknown address family {}", backend.family)));
            }
            let health = self.health.get(&id, 0).map_err(map_error(names::HEALTH))?;
            if health > HEALTH_DRAINING {
                return Err(corrupt(format!("backend {id} has unknown health state {health}")));
            }
            self.backend_entries.insert(id, BackendEntry { backend, health });
        }

        let entries: Vec<(VipKey, VipMeta)> =
            self.vips.iter().collect::<Result<_, _>>().map_err(map_error(names::VIPS))?;
        let mut address_entries = BTreeMap::new();
        let mut regions = Vec::new();
        for (key, meta) in entries {
            let name = describe(&key);
            if key.family != FAMILY_IPV4 && key.family != FAMILY_IPV6 {
                return Err(corrupt(format!("VIP {name} has unknown address family {}", key.family)));
            }
            if key.protocol == PROTOCOL_ADDRESS {
                if key.port != 0 {
                    return Err(corrupt(format!("address entry {name} has a port")));
                }
                address_entries.insert((key.family, key.address), meta.flags);
                continue;
            }
            if meta.vip_id >= MAX_VIPS {
                return Err(corrupt(format!("VIP {name} has vip id {} beyond {MAX_VIPS}", meta.vip_id)));
            }
            if let Some((other, _)) = self.published.iter().find(|(_, vip)| vip.meta.vip_id == meta.vip_id) {
                return Err(corrupt(format!("VIPs {} and {name} share vip id {}", describe(other), meta.vip_id)));
            }
            if meta.table_size == 0 {
                return Err(corrupt(format!("VIP {name} has an empty table")));
            }
            let region = Region { offset: meta.table_offset, len: meta.table_size };
            self.pool.check(region).map_err(|error| corrupt(format!("VIP {name}: {error}")))?;
            let mut counts = BTreeMap::new();
            for id in self.pool.read(region) {
                *counts.entry(id).or_default() += 1;
            }
            regions.push(region);
            self.addresses.entry((key.family, key.address)).or_default().add(meta.flags);
            self.published.insert(key, PublishedVip { meta, active: region, standby: None, counts });
        }
        self.pool.set_allocated(&regions).map_err(|error| {
            let owner = |region: Region| {
                self.published.iter().find(|(_, vip)| vip.active == region).map_or_else(|| "?".into(), |(key, _)| describe(key))
            };
            match error {
                PoolError::Overlap { first, second } => {
                    corrupt(format!("the tables of VIPs {} and {} overlap", owner(first), owner(second)))
                }
                other => corrupt(other.to_string()),
            }
        })?;
        // Regions are sound; now what they hold.
        for (key, vip) in &self.published {
            for id in vip.counts.keys() {
                match self.backend_entries.get(id) {
                    Some(entry) if entry.backend.vip_id == vip.meta.vip_id => {}
                    Some(entry) => {
                        return Err(corrupt(format!(
                            "VIP {} (vip id {}) names backend {id} of vip id {}",
                            describe(key),
                            vip.meta.vip_id,
                            entry.backend.vip_id
                        )));
                    }
                    None => {
                        return Err(corrupt(format!("VIP {} names backend {id}, which does not exist", describe(key))));
                    }
                }
            }
        }

        // Repair what an interrupted change left behind, in the order of the contract: address
        // entries first, filter bits after them. An entry keeps its group while a service at
        // the address has it (a reload moving the address between groups was interrupted).
        for ((family, address), state) in &mut self.addresses {
            let written = address_entries.remove(&(*family, *address));
            state.group = written.map_or(0, vip_group);
            state.settle_group();
            let flags = state.flags();
            if written != Some(flags) {
                let key = VipKey { address: *address, port: 0, protocol: PROTOCOL_ADDRESS, family: *family };
                let meta = VipMeta { vip_id: 0, flags, table_offset: 0, table_size: 0 };
                self.vips.insert(key, meta, 0).map_err(map_error(names::VIPS))?;
            }
        }
        for (family, address) in address_entries.into_keys() {
            let key = VipKey { address, port: 0, protocol: PROTOCOL_ADDRESS, family };
            self.vips.remove(&key).map_err(map_error(names::VIPS))?;
        }
        for (_, address) in self.addresses.keys() {
            *self.filter_counts.entry(hash::address_filter_index(address)).or_default() += 1;
        }
        for index in 0..self.filter.len() {
            let wanted = u8::from(self.filter_counts.contains_key(&index));
            if self.filter.get(&index, 0).map_err(map_error(names::ADDRESS_FILTER))? != wanted {
                self.filter.set(index, wanted, 0).map_err(map_error(names::ADDRESS_FILTER))?;
            }
        }

        // The index names exactly the published VIPs (an interrupted change may have left an
        // id naming a VIP that is gone, or not yet naming a new one).
        let wanted: BTreeMap<u32, (VipKey, VipMeta)> = self.published.iter().map(|(key, vip)| (vip.meta.vip_id, (*key, vip.meta))).collect();
        for id in 0..self.index.as_ref().map_or(0, vip_index::VipIndex::len) {
            match wanted.get(&id) {
                Some((key, meta)) => self.index_vip(key, meta)?,
                None => self.unindex_vip(id),
            }
        }
        if let Some(index) = self.index.as_mut() {
            index.repair_slots();
        }

        let slot = self.config_active.get(&0, 0).map_err(map_error(names::CONFIG_ACTIVE))?;
        if slot > 1 {
            return Err(corrupt(format!("{} names config slot {slot}", names::CONFIG_ACTIVE)));
        }
        let config = self.config.get(&slot, 0).map_err(map_error(names::CONFIG))?;
        // An all-zero config was never published (its MTU would have been refused).
        self.active_config = (config != Config::default()).then_some((slot, config));
        Ok(())
    }
}

fn check_health(id: u32, health: u32) -> Result<(), MapWriteError> {
    if health > HEALTH_DRAINING {
        return Err(MapWriteError::Backend(id, format!("unknown health state {health}")));
    }
    Ok(())
}

/// Read-side handles on the counters and the flow table.
pub struct Counters {
    reasons: PerCpuArray<MapData, Counter>,
    vips: PerCpuArray<MapData, Counter>,
    backends: PerCpuArray<MapData, Counter>,
    flows: flows::FlowTable,
}

/// A per-CPU counter summed over CPUs.
pub fn total(values: &[Counter]) -> Counter {
    values.iter().fold(Counter::default(), |total, value| Counter {
        packets: total.packets + value.packets,
        bytes: total.bytes + value.bytes,
    })
}

fn sum(map: &PerCpuArray<MapData, Counter>, index: u32, name: &'static str) -> Result<Counter, MapWriteError> {
    Ok(total(&map.get(&index, 0).map_err(map_error(name))?))
}

impl Counters {
    /// Handles on the counters and flow table of a loaded object, after `writer` took its maps
    /// (`VIP_INDEX` among them, whose presence says how the program hashes flows).
    pub fn new(ebpf: &mut Ebpf, writer: &MapWriter) -> Result<Self, MapWriteError> {
        Self::open(MapSource::Object(ebpf), writer.index.is_some())
    }

    /// Handles on the pinned counters and flow table of an instance.
    pub fn open_pinned(paths: &InstancePaths) -> Result<Self, MapWriteError> {
        let indexed = MapSource::Pinned(paths).has(names::VIP_INDEX);
        Self::open(MapSource::Pinned(paths), indexed)
    }

    /// `indexed`: the program has `VIP_INDEX`; one without it is older than the flow hash (both
    /// came at once).
    fn open(mut source: MapSource<'_>, indexed: bool) -> Result<Self, MapWriteError> {
        Ok(Self {
            reasons: source.typed(names::REASON_STATS)?,
            vips: source.typed(names::VIP_STATS)?,
            backends: source.typed(names::BACKEND_STATS)?,
            flows: flows::FlowTable::new(source.map(names::FLOWS)?, indexed)?,
        })
    }

    /// Every reason counter, summed over CPUs, indexed by `failover_common::stats` reason.
    pub fn reasons(&self) -> Result<Vec<Counter>, MapWriteError> {
        (0..REASON_COUNT).map(|reason| sum(&self.reasons, reason, names::REASON_STATS)).collect()
    }

    pub fn vip(&self, vip_id: u32) -> Result<Counter, MapWriteError> {
        sum(&self.vips, vip_id, names::VIP_STATS)
    }

    pub fn backend(&self, id: u32) -> Result<Counter, MapWriteError> {
        sum(&self.backends, id, names::BACKEND_STATS)
    }

    /// Every tracked flow.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, MapWriteError> {
        self.flows.flows()
    }

    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flows.flow(key)
    }

    /// Whether the program hashes flows as this controller does (false for the pins of a
    /// release older than the current flow hash: its slot choices cannot be predicted here).
    pub fn hashes_alike(&self) -> bool {
        self.flows.hashes_alike()
    }

    /// Forgets a tracked flow.
    pub fn forget_flow(&mut self, key: &FlowKey) -> Result<(), MapWriteError> {
        self.flows.forget(key)
    }

    /// Forgets every tracked flow to `destination` (any port and protocol); how many were
    /// removed.
    pub fn forget_flows_to(&mut self, destination: IpAddr) -> Result<usize, MapWriteError> {
        let (words, family) = crate::address::to_words(destination);
        self.forget_flows_where(|key| key.destination == words && key.family == family)
    }

    /// Forgets every tracked flow whose key `forget` picks, by a scan of every bucket (so it
    /// needs no flow hash: it works on a program that hashes otherwise); how many.
    pub fn forget_flows_where(&mut self, forget: impl Fn(&FlowKey) -> bool) -> Result<usize, MapWriteError> {
        self.flows.forget_where(forget)
    }

    /// The tracked flows `pick` picks among those with a packet within `idle_ns`
    /// ([`FlowTable::active_flows_where`]).
    pub fn active_flows_where(&self, now_ns: u64, idle_ns: u64, pick: impl Fn(&FlowKey, &FlowValue) -> bool) -> Vec<(FlowKey, FlowValue)> {
        self.flows.active_flows_where(now_ns, idle_ns, pick)
    }

    /// A tracked flow's entry and how long it has been idle ([`FlowTable::look`]).
    pub fn look_flow(&mut self, key: &FlowKey, now_ns: u64) -> Option<(FlowValue, u64)> {
        self.flows.look(key, now_ns)
    }

    /// Tracks a flow as the data plane would have placed it ([`FlowTable::place`]): what
    /// another node tracks, so this one sends the flow there too once it serves the VIP.
    pub fn place_flow(&mut self, key: &FlowKey, value: FlowValue, now_ns: u64) -> Placed {
        self.flows.place(key, value, now_ns)
    }
}
