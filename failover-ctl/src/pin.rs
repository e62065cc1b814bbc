//! Read-only access to a pinned instance, for the inspection CLI: it works while the daemon
//! runs (it reads the same maps the data plane does) and after it stopped (the pins outlive it).

use aya::{
    maps::{Array, HashMap, MapData},
    programs::Xdp,
};
use failover_common::maps::{names, vip_group, Backend, Config, FlowKey, FlowValue, VipKey, VipMeta, VIP_OWNED};

use crate::{
    loader::{self, LoadError},
    maps::{Counters, MapSource, MapWriteError},
    ownership::{Ownership, OwnershipError},
    paths::InstancePaths,
    table_pool::{Region, TablePool},
};

/// Handles on every pinned map and the pinned program of an instance. Nothing here writes
/// (the table pool is mapped read-only).
pub struct PinnedView {
    program: Xdp,
    vips: HashMap<MapData, VipKey, VipMeta>,
    backends: Array<MapData, Backend>,
    health: Array<MapData, u32>,
    config: Array<MapData, Config>,
    config_active: Array<MapData, u32>,
    pool: TablePool,
    counters: Counters,
    /// `None` for pins of a program older than elections.
    ownership: Option<Ownership>,
}

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> MapWriteError {
    move |source| MapWriteError::Map { name, source }
}

impl PinnedView {
    /// Whether the instance has pins (its program and its maps directory).
    pub fn exists(paths: &InstancePaths) -> bool {
        paths.program().exists() && paths.maps_dir().exists()
    }

    pub fn open(paths: &InstancePaths) -> Result<Self, LoadError> {
        let program = loader::open_pinned_program(paths)?;
        let mut source = MapSource::Pinned(paths);
        Ok(Self {
            program,
            vips: source.typed(names::VIPS)?,
            backends: source.typed(names::BACKENDS)?,
            health: source.typed(names::HEALTH)?,
            config: source.typed(names::CONFIG)?,
            config_active: source.typed(names::CONFIG_ACTIVE)?,
            pool: source.pool(false)?,
            counters: Counters::open_pinned(paths)?,
            ownership: match Ownership::open_pinned(paths) {
                Ok(ownership) => Some(ownership),
                Err(OwnershipError::MissingPin(_)) => None,
                Err(error) => return Err(error.into()),
            },
        })
    }

    /// Whether the data plane serves the VIP `meta` now: as the program decides (`vip::owns`),
    /// by its own flag without a group, by its group's `OWNERSHIP` entry with one. A program
    /// older than elections (no `OWNERSHIP` pin) reads the flag alone.
    pub fn owned(&self, meta: &VipMeta) -> Result<bool, OwnershipError> {
        let group = vip_group(meta.flags);
        match &self.ownership {
            Some(ownership) if group != 0 => ownership.get(group as u8),
            _ => Ok(meta.flags & VIP_OWNED != 0),
        }
    }

    /// The pinned program (for `test_run`).
    pub fn program(&self) -> &Xdp {
        &self.program
    }

    /// Every published VIP: service entries, not address entries.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, MapWriteError> {
        let mut vips = Vec::new();
        for entry in self.vips.iter() {
            let (key, meta) = entry.map_err(map_error(names::VIPS))?;
            if key.protocol != failover_common::maps::PROTOCOL_ADDRESS {
                vips.push((key, meta));
            }
        }
        vips.sort_by_key(|(key, _)| *key);
        Ok(vips)
    }

    /// The active table of a VIP (slot -> backend id); `None` if the VIP is not published or
    /// its entry names a region outside the pool.
    pub fn table(&self, key: &VipKey) -> Option<Vec<u32>> {
        let meta = self.vips.get(key, 0).ok()?;
        let region = Region { offset: meta.table_offset, len: meta.table_size };
        self.pool.check(region).ok()?;
        Some(self.pool.read(region))
    }

    /// Every backend entry in use (an address family set): (id, backend, health).
    pub fn backends(&self) -> Result<Vec<(u32, Backend, u32)>, MapWriteError> {
        let mut backends = Vec::new();
        for id in 0..self.backends.len() {
            let backend = self.backends.get(&id, 0).map_err(map_error(names::BACKENDS))?;
            if backend.family == 0 {
                continue;
            }
            let health = self.health.get(&id, 0).map_err(map_error(names::HEALTH))?;
            backends.push((id, backend, health));
        }
        Ok(backends)
    }

    /// The active configuration; `None` if none was ever published (an all-zero entry).
    pub fn config(&self) -> Result<Option<Config>, MapWriteError> {
        let slot = self.config_active.get(&0, 0).map_err(map_error(names::CONFIG_ACTIVE))?;
        let config = self.config.get(&slot, 0).map_err(map_error(names::CONFIG))?;
        Ok((config != Config::default()).then_some(config))
    }

    /// Reason, VIP and backend counters (read-only use).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Every tracked flow.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, MapWriteError> {
        self.counters.flows()
    }
}
