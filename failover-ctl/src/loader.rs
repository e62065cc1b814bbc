//! Loading the embedded XDP objects and attaching them to interfaces.

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use failover_common::maps::{names, Counter, VipKey, DEFAULT_FLOW_ENTRIES, DEFAULT_TABLE_POOL_SLOTS, PROTOCOL_ADDRESS};
use thiserror::Error;

use crate::{
    maps::{Counters, MapWriteError, MapWriter},
    objects,
};

/// Name of the load-balancer program in its object.
pub const PROGRAM: &str = "failover";
/// Name of the decap program in its object.
pub const DECAP_PROGRAM: &str = "failover_decap";

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("loading the eBPF object failed: {0}")]
    Object(#[from] EbpfError),
    #[error("program {name}: {source}")]
    Program { name: &'static str, #[source] source: ProgramError },
    #[error("program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error(transparent)]
    Maps(#[from] MapWriteError),
    #[error("map {name}: {source}")]
    Map { name: &'static str, #[source] source: MapError },
}

/// Sizes fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Slots in the table pool: at least twice the sum of all VIPs' table sizes.
    pub table_pool_slots: u32,
    /// Entries in the LRU flow table.
    pub flow_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { table_pool_slots: DEFAULT_TABLE_POOL_SLOTS, flow_entries: DEFAULT_FLOW_ENTRIES }
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

fn program<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Xdp, LoadError> {
    ebpf.program(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// The loaded load balancer: its program, the map writer and the read-side counters.
pub struct Dataplane {
    pub ebpf: Ebpf,
    pub writer: MapWriter,
    pub counters: Counters,
}

impl Dataplane {
    /// Loads and verifies the load-balancer program (not attached anywhere yet).
    pub fn load(options: LoadOptions) -> Result<Self, LoadError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::TABLES, options.table_pool_slots)
            .map_max_entries(names::FLOWS, options.flow_entries)
            .load(objects::FAILOVER)?;
        program_mut(&mut ebpf, PROGRAM)?
            .load()
            .map_err(|source| LoadError::Program { name: PROGRAM, source })?;
        let writer = MapWriter::new(&mut ebpf)?;
        let counters = Counters::new(&mut ebpf)?;
        Ok(Self { ebpf, writer, counters })
    }

    /// The loaded program, for `test_run` and attaching.
    pub fn program(&self) -> Result<&Xdp, LoadError> {
        program(&self.ebpf, PROGRAM)
    }

    /// Attaches to `interface` (by name, in the calling thread's network namespace).
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), LoadError> {
        program_mut(&mut self.ebpf, PROGRAM)?
            .attach(interface, mode)
            .map(drop)
            .map_err(|source| LoadError::Program { name: PROGRAM, source })
    }
}

/// The loaded decap program and its VIP list.
pub struct Decap {
    pub ebpf: Ebpf,
    vips: HashMap<MapData, VipKey, u32>,
    stats: PerCpuArray<MapData, Counter>,
}

impl Decap {
    pub fn load() -> Result<Self, LoadError> {
        let mut ebpf = Ebpf::load(objects::DECAP)?;
        program_mut(&mut ebpf, DECAP_PROGRAM)?
            .load()
            .map_err(|source| LoadError::Program { name: DECAP_PROGRAM, source })?;
        let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(MapWriteError::Missing(name));
        let vips = take(&mut ebpf, names::DECAP_VIPS)?
            .try_into()
            .map_err(|source| LoadError::Map { name: names::DECAP_VIPS, source })?;
        let stats = take(&mut ebpf, names::DECAP_STATS)?
            .try_into()
            .map_err(|source| LoadError::Map { name: names::DECAP_STATS, source })?;
        Ok(Self { ebpf, vips, stats })
    }

    pub fn program(&self) -> Result<&Xdp, LoadError> {
        program(&self.ebpf, DECAP_PROGRAM)
    }

    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), LoadError> {
        program_mut(&mut self.ebpf, DECAP_PROGRAM)?
            .attach(interface, mode)
            .map(drop)
            .map_err(|source| LoadError::Program { name: DECAP_PROGRAM, source })
    }

    /// Decapsulates tunnel packets whose inner destination is `address`.
    pub fn add_vip(&mut self, address: std::net::IpAddr) -> Result<(), LoadError> {
        let (address, family) = crate::address::to_words(address);
        let key = VipKey { address, port: 0, protocol: PROTOCOL_ADDRESS, family };
        self.vips.insert(key, 1, 0).map_err(|source| LoadError::Map { name: names::DECAP_VIPS, source })
    }

    pub fn remove_vip(&mut self, address: std::net::IpAddr) -> Result<(), LoadError> {
        let (address, family) = crate::address::to_words(address);
        let key = VipKey { address, port: 0, protocol: PROTOCOL_ADDRESS, family };
        self.vips.remove(&key).map_err(|source| LoadError::Map { name: names::DECAP_VIPS, source })
    }

    /// A decap reason counter summed over CPUs.
    pub fn counter(&self, reason: u32) -> Result<Counter, LoadError> {
        let values = self.stats.get(&reason, 0).map_err(|source| LoadError::Map { name: names::DECAP_STATS, source })?;
        Ok(crate::maps::total(&values))
    }
}
