//! The map writer: the only code that changes the data plane's maps. It implements the
//! publication contract written down in `failover_common::maps` and keeps a mirror of what it
//! published, so that every change is validated before the first map is touched.

use std::{collections::{BTreeMap, BTreeSet}, os::fd::AsFd};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    Ebpf,
};
use failover_common::{
    hash,
    maps::{names, *},
    stats::REASON_COUNT,
};
use thiserror::Error;

use crate::{
    grace::GracePeriod,
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
    /// The previously active region and the grace epoch in which it was retired.
    standby: Option<(Region, u64)>,
    members: BTreeSet<u32>,
}

#[derive(Debug, Default)]
struct AddressState {
    services: u32,
    owned: u32,
}

fn describe(key: &VipKey) -> String {
    let address = crate::address::from_words(&key.address, key.family)
        .map_or_else(|| "?".to_string(), |a| a.to_string());
    format!("{address}:{}/{}", u16::from_be(key.port), key.protocol)
}

/// Typed handles on the writable maps plus the mirror of what was published.
pub struct MapWriter {
    vips: HashMap<MapData, VipKey, VipMeta>,
    filter: Array<MapData, u8>,
    backends: Array<MapData, Backend>,
    health: Array<MapData, u32>,
    config: Array<MapData, Config>,
    config_active: Array<MapData, u32>,
    pool: TablePool,
    grace: GracePeriod,
    grace_epoch: u64,
    published: BTreeMap<VipKey, PublishedVip>,
    addresses: BTreeMap<(u8, [u32; 4]), AddressState>,
    filter_counts: BTreeMap<u32, u32>,
    backend_entries: BTreeMap<u32, Backend>,
    active_config: Option<u32>,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapWriteError> {
    let map = ebpf.take_map(name).ok_or(MapWriteError::Missing(name))?;
    T::try_from(map).map_err(map_error(name))
}

impl MapWriter {
    /// Takes the writable maps out of a loaded load-balancer object.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        let tables = ebpf.take_map(names::TABLES).ok_or(MapWriteError::Missing(names::TABLES))?;
        let aya::maps::Map::Array(tables) = tables else {
            return Err(MapWriteError::Missing(names::TABLES));
        };
        let capacity = tables.info().map_err(map_error(names::TABLES))?.max_entries();
        let pool = TablePool::map(&tables.fd().as_fd(), capacity)?;
        Ok(Self {
            vips: take(ebpf, names::VIPS)?,
            filter: take(ebpf, names::ADDRESS_FILTER)?,
            backends: take(ebpf, names::BACKENDS)?,
            health: take(ebpf, names::HEALTH)?,
            config: take(ebpf, names::CONFIG)?,
            config_active: take(ebpf, names::CONFIG_ACTIVE)?,
            pool,
            grace: GracePeriod::new().map_err(MapWriteError::Grace)?,
            grace_epoch: 0,
            published: BTreeMap::new(),
            addresses: BTreeMap::new(),
            filter_counts: BTreeMap::new(),
            backend_entries: BTreeMap::new(),
            active_config: None,
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
            Some(active) => 1 - active,
            None => 0,
        };
        self.config.set(slot, config, 0).map_err(map_error(names::CONFIG))?;
        self.config_active.set(0, slot, 0).map_err(map_error(names::CONFIG_ACTIVE))?;
        self.active_config = Some(slot);
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
            if *existing != backend && self.referenced(id) {
                return Err(MapWriteError::Backend(id, "is in a published table; cannot change its address or VIP".into()));
            }
        }
        self.backends.set(id, backend, 0).map_err(map_error(names::BACKENDS))?;
        self.health.set(id, health, 0).map_err(map_error(names::HEALTH))?;
        self.backend_entries.insert(id, backend);
        Ok(())
    }

    /// The instant failover path: one map update.
    pub fn set_health(&mut self, id: u32, health: u32) -> Result<(), MapWriteError> {
        check_health(id, health)?;
        if !self.backend_entries.contains_key(&id) {
            return Err(MapWriteError::Backend(id, "unknown backend".into()));
        }
        self.health.set(id, health, 0).map_err(map_error(names::HEALTH))
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
        self.published.values().any(|vip| vip.members.contains(&id))
    }

    /// Publishes `table` (slot -> backend id) for the VIP `key`: the table is written into a
    /// region no packet reads, then the VIP entry is switched in one update.
    pub fn publish_vip(&mut self, key: VipKey, settings: VipSettings, table: &[u32]) -> Result<(), MapWriteError> {
        let name = describe(&key);
        let invalid = |why: String| MapWriteError::Vip(name.clone(), why);
        if key.protocol == PROTOCOL_ADDRESS {
            return Err(invalid("protocol 0 is reserved for address entries".into()));
        }
        if key.family != FAMILY_IPV4 && key.family != FAMILY_IPV6 {
            return Err(invalid(format!("unknown address family {}", key.family)));
        }
        if settings.vip_id >= MAX_VIPS {
            return Err(invalid(format!("vip id {} is beyond {MAX_VIPS}", settings.vip_id)));
        }
        if let Some(other) = self.published.iter().find(|(k, v)| **k != key && v.meta.vip_id == settings.vip_id) {
            return Err(invalid(format!("vip id {} is already used by {}", settings.vip_id, describe(other.0))));
        }
        if table.is_empty() || table.len() > self.pool.capacity() as usize {
            return Err(invalid(format!("table of {} slots does not fit a pool of {}", table.len(), self.pool.capacity())));
        }
        let members: BTreeSet<u32> = table.iter().copied().collect();
        for id in &members {
            match self.backend_entries.get(id) {
                Some(backend) if backend.vip_id == settings.vip_id => {}
                Some(backend) => {
                    return Err(invalid(format!("backend {id} belongs to vip id {}, not {}", backend.vip_id, settings.vip_id)));
                }
                None => return Err(invalid(format!("backend {id} was never written"))),
            }
        }
        let len = table.len() as u32;
        // Pick the region to write: the retired standby if it fits (after a grace period if
        // it was retired since the last one), else a fresh one.
        let previous = self.published.get(&key);
        let was_owned = previous.map(|vip| vip.meta.flags & VIP_OWNED != 0);
        let reuse = match previous.and_then(|vip| vip.standby) {
            Some((region, retired)) if region.len == len => {
                if retired == self.grace_epoch {
                    self.wait_grace()?;
                }
                Some(region)
            }
            _ => None,
        };
        let target = match reuse {
            Some(region) => region,
            None => self.pool.allocate(len)?,
        };
        self.pool.write(target, table);
        let meta = VipMeta { vip_id: settings.vip_id, flags: settings.flags, table_offset: target.offset, table_size: len };
        if let Err(source) = self.vips.insert(key, meta, 0) {
            if reuse.is_none() {
                self.pool.release(target);
            }
            return Err(MapWriteError::Map { name: names::VIPS, source });
        }
        // Published. Bring the address entry and filter up to date, then the mirror.
        let owned = settings.flags & VIP_OWNED != 0;
        self.address_changed(key.family, key.address, was_owned, Some(owned))?;
        let epoch = self.grace_epoch;
        match self.published.remove(&key) {
            Some(mut vip) => {
                let dropped_standby = match (vip.standby, reuse) {
                    (Some((region, _)), None) => Some(region),
                    _ => None,
                };
                vip.standby = Some((vip.active, epoch));
                vip.active = target;
                vip.meta = meta;
                vip.members = members;
                self.published.insert(key, vip);
                if let Some(region) = dropped_standby {
                    // A standby of the wrong size: retired before this publish, but maybe not a
                    // whole grace period ago.
                    self.wait_grace()?;
                    self.pool.release(region);
                }
            }
            None => {
                self.published.insert(key, PublishedVip { meta, active: target, standby: None, members });
            }
        }
        Ok(())
    }

    /// Removes a VIP: its entry first, then (after a grace period) its regions.
    pub fn remove_vip(&mut self, key: VipKey) -> Result<(), MapWriteError> {
        let Some(vip) = self.published.get(&key) else {
            return Err(MapWriteError::Vip(describe(&key), "is not published".into()));
        };
        let owned = vip.meta.flags & VIP_OWNED != 0;
        self.vips.remove(&key).map_err(map_error(names::VIPS))?;
        let Some(vip) = self.published.remove(&key) else { return Ok(()) };
        self.address_changed(key.family, key.address, Some(owned), None)?;
        self.wait_grace()?;
        self.pool.release(vip.active);
        if let Some((region, _)) = vip.standby {
            self.pool.release(region);
        }
        Ok(())
    }

    /// Keeps the address entry (owned if any service at the address is) and the filter bit in
    /// step with the services at `address`. `before`/`after`: the ownership of the service that
    /// changed, `None` where it does not exist.
    fn address_changed(&mut self, family: u8, address: [u32; 4], before: Option<bool>, after: Option<bool>) -> Result<(), MapWriteError> {
        let state = self.addresses.entry((family, address)).or_default();
        let (old_services, old_owned) = (state.services, state.owned);
        if let Some(owned) = before {
            state.services -= 1;
            state.owned -= owned as u32;
        }
        if let Some(owned) = after {
            state.services += 1;
            state.owned += owned as u32;
        }
        let (services, owned) = (state.services, state.owned);
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
        if old_services == 0 || (old_owned > 0) != (owned > 0) {
            let flags = if owned > 0 { VIP_OWNED } else { 0 };
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

    fn wait_grace(&mut self) -> Result<(), MapWriteError> {
        self.grace.wait().map_err(MapWriteError::Grace)?;
        self.grace_epoch += 1;
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
    flows: HashMap<MapData, FlowKey, FlowValue>,
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
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        Ok(Self {
            reasons: take(ebpf, names::REASON_STATS)?,
            vips: take(ebpf, names::VIP_STATS)?,
            backends: take(ebpf, names::BACKEND_STATS)?,
            flows: take(ebpf, names::FLOWS)?,
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
        self.flows.iter().map(|entry| entry.map_err(map_error(names::FLOWS))).collect()
    }

    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flows.get(key, 0).ok()
    }

    /// Forgets a tracked flow.
    pub fn forget_flow(&mut self, key: &FlowKey) -> Result<(), MapWriteError> {
        self.flows.remove(key).map_err(map_error(names::FLOWS))
    }
}
