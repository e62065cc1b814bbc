//! Loading the embedded XDP objects and attaching them to interfaces; pinning the load
//! balancer's maps, program and links on bpffs and adopting them again after a restart (the
//! layout is in [`crate::paths`]).

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray},
    pin::PinError,
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use aya_obj::programs::XdpAttachType;
use failover_common::maps::{flow_buckets, names, Counter, VipKey, DEFAULT_FLOW_ENTRIES, DEFAULT_TABLE_POOL_SLOTS, PROTOCOL_ADDRESS};
use thiserror::Error;

use crate::{
    maps::{Counters, MapWriteError, MapWriter},
    objects,
    ownership::{Ownership, OwnershipError},
    paths::InstancePaths,
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
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    #[error("map {name}: {source}")]
    Map { name: &'static str, #[source] source: MapError },
    #[error("{} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` (inside `ip netns exec`, which remounts /sys, use `failover-ctl --netns NAME` instead)", .0.display())]
    NotBpffs(PathBuf),
    #[error("{} is already pinned: adopt the running instance or tear it down first", .0.display())]
    AlreadyPinned(PathBuf),
    #[error("pinning {}: {source}", path.display())]
    Pin { path: PathBuf, #[source] source: PinError },
    #[error("opening the pinned program {}: {source}", path.display())]
    PinnedProgram { path: PathBuf, #[source] source: ProgramError },
    #[error("{} holds program {found:?}, not {PROGRAM:?}", path.display())]
    WrongProgram { path: PathBuf, found: String },
    #[error("link of {interface}: {source}")]
    Link { interface: String, #[source] source: LinkError },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, #[source] source: io::Error },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io { path: path.to_path_buf(), source }
}

/// Sizes fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Slots in the table pool: at least twice the sum of all VIPs' table sizes.
    pub table_pool_slots: u32,
    /// Flows the flow cache is sized for (it gets twice as many ways, see `flow_buckets`).
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

/// Where a data plane's program handle comes from.
pub enum Loaded {
    /// This process loaded the object (`Dataplane::load`, `Dataplane::create_pinned`).
    Object(Ebpf),
    /// Opened from its pin (`Dataplane::adopt`): loaded by an earlier process.
    Pinned(Box<Xdp>),
}

impl Loaded {
    /// The load-balancer program.
    pub fn xdp(&self) -> Result<&Xdp, LoadError> {
        match self {
            Self::Object(ebpf) => program(ebpf, PROGRAM),
            Self::Pinned(xdp) => Ok(xdp),
        }
    }

    pub fn xdp_mut(&mut self) -> Result<&mut Xdp, LoadError> {
        match self {
            Self::Object(ebpf) => program_mut(ebpf, PROGRAM),
            Self::Pinned(xdp) => Ok(xdp),
        }
    }
}

/// The loaded load balancer: its program, the map writer and the read-side counters.
pub struct Dataplane {
    pub loaded: Loaded,
    pub writer: MapWriter,
    pub counters: Counters,
    /// `OWNERSHIP`, which the writer never writes; handed out by [`Dataplane::ownership`].
    /// `None` for adopted pins of a program older than elections.
    ownership: Option<Ownership>,
}

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Checks that `path`, or its closest existing ancestor, is on a bpffs.
fn check_bpffs(path: &Path) -> Result<(), LoadError> {
    let existing = path.ancestors().find(|ancestor| ancestor.exists()).unwrap_or(Path::new("/"));
    let name = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(existing.as_os_str()))
        .map_err(|_| LoadError::NotBpffs(path.to_path_buf()))?;
    // SAFETY: `statfs` is plain old data; all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the name is a valid C string and `stat` a struct we own for the call.
    if unsafe { libc::statfs(name.as_ptr(), &mut stat) } != 0 {
        return Err(io_error(existing)(io::Error::last_os_error()));
    }
    if stat.f_type as i64 != BPF_FS_MAGIC {
        return Err(LoadError::NotBpffs(path.to_path_buf()));
    }
    Ok(())
}

/// Removes a pin; a missing one is not an error.
fn unpin(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// The interfaces with a pinned link, from the `link-<interface>` pins.
pub fn attached_interfaces(paths: &InstancePaths) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(&paths.pin_dir) else { return Vec::new() };
    let mut interfaces: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok()?.strip_prefix("link-").map(str::to_string))
        .collect();
    interfaces.sort();
    interfaces
}

/// Removes every pin of the instance: links first (which detaches the program from their
/// interfaces once no process holds them), then the program and the maps, then the
/// directories. Removing what is already gone is not an error.
pub fn teardown(paths: &InstancePaths) -> io::Result<()> {
    for interface in attached_interfaces(paths) {
        unpin(&paths.link(&interface))?;
    }
    unpin(&paths.program())?;
    match std::fs::read_dir(paths.maps_dir()) {
        Ok(entries) => {
            for entry in entries {
                unpin(&entry?.path())?;
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    for directory in [paths.maps_dir(), paths.pin_dir.clone()] {
        match std::fs::remove_dir(&directory) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Opens the pinned load-balancer program and checks that it is one.
pub(crate) fn open_pinned_program(paths: &InstancePaths) -> Result<Xdp, LoadError> {
    let path = paths.program();
    let pinned = |source| LoadError::PinnedProgram { path: path.clone(), source };
    let xdp = Xdp::from_pin(&path, XdpAttachType::Interface).map_err(pinned)?;
    let info = xdp.info().map_err(pinned)?;
    let found = info.name_as_str().unwrap_or_default();
    if found != PROGRAM {
        return Err(LoadError::WrongProgram { path, found: found.to_string() });
    }
    Ok(xdp)
}

/// Loads the load-balancer object with the sizes of `options` and verifies its program.
fn load_object(options: LoadOptions) -> Result<Ebpf, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::TABLES, options.table_pool_slots)
        .map_max_entries(names::FLOWS, flow_buckets(options.flow_entries))
        .load(objects::FAILOVER)?;
    program_mut(&mut ebpf, PROGRAM)?
        .load()
        .map_err(|source| LoadError::Program { name: PROGRAM, source })?;
    Ok(ebpf)
}

impl Dataplane {
    /// Loads and verifies the load-balancer program (not attached anywhere yet).
    pub fn load(options: LoadOptions) -> Result<Self, LoadError> {
        let ebpf = load_object(options)?;
        Self::from_object(ebpf)
    }

    fn from_object(mut ebpf: Ebpf) -> Result<Self, LoadError> {
        let ownership = Ownership::from_object(&ebpf)?;
        let writer = MapWriter::new(&mut ebpf)?;
        let counters = Counters::new(&mut ebpf, &writer)?;
        Ok(Self { loaded: Loaded::Object(ebpf), writer, counters, ownership: Some(ownership) })
    }

    /// Loads as [`Dataplane::load`] does and pins every map under `paths.maps_dir()` and the
    /// program at `paths.program()`, so that they outlive this process. Existing pins are an
    /// error: the instance is running (or was), adopt it instead.
    pub fn create_pinned(paths: &InstancePaths, options: LoadOptions) -> Result<Self, LoadError> {
        check_bpffs(&paths.pin_dir)?;
        if paths.program().exists() {
            return Err(LoadError::AlreadyPinned(paths.program()));
        }
        if let Some(Ok(entry)) = std::fs::read_dir(paths.maps_dir()).ok().and_then(|mut entries| entries.next()) {
            return Err(LoadError::AlreadyPinned(entry.path()));
        }
        let mut ebpf = load_object(options)?;
        let maps_dir = paths.maps_dir();
        std::fs::create_dir_all(&maps_dir).map_err(io_error(&maps_dir))?;
        let mut pinned = Vec::new();
        if let Err(error) = Self::pin_object(&mut ebpf, paths, &mut pinned) {
            // Do not leave half an instance behind; only remove what this call pinned.
            for path in pinned {
                let _ = unpin(&path);
            }
            let _ = std::fs::remove_dir(&maps_dir);
            return Err(error);
        }
        Self::from_object(ebpf)
    }

    /// Pins the maps and the program, recording each pin made in `pinned`.
    fn pin_object(ebpf: &mut Ebpf, paths: &InstancePaths, pinned: &mut Vec<PathBuf>) -> Result<(), LoadError> {
        for (name, map) in ebpf.maps() {
            let path = paths.map(name);
            map.pin(&path).map_err(|source| LoadError::Pin { path: path.clone(), source })?;
            pinned.push(path);
        }
        let path = paths.program();
        program_mut(ebpf, PROGRAM)?.pin(&path).map_err(|source| LoadError::Pin { path: path.clone(), source })?;
        pinned.push(path);
        Ok(())
    }

    /// Opens the pinned program and maps of an instance loaded by an earlier process and
    /// rebuilds the writer's mirror from the maps ([`MapWriter::adopt`]). Interfaces stay
    /// attached through their pinned links; nothing the data plane reads changes.
    pub fn adopt(paths: &InstancePaths) -> Result<Self, LoadError> {
        check_bpffs(&paths.pin_dir)?;
        let program = open_pinned_program(paths)?;
        let writer = MapWriter::adopt(paths)?;
        let counters = Counters::open_pinned(paths)?;
        // Pins of a program older than elections have no OWNERSHIP: that program serves by
        // `VIP_OWNED` alone, and only an election task needs the map (see DESIGN.md).
        let ownership = match Ownership::open_pinned(paths) {
            Ok(ownership) => Some(ownership),
            Err(OwnershipError::MissingPin(_)) => None,
            Err(error) => return Err(error.into()),
        };
        Ok(Self { loaded: Loaded::Pinned(Box::new(program)), writer, counters, ownership })
    }

    /// A handle on `OWNERSHIP` for the election task, with its own file descriptor (it may
    /// move to another thread). Fails for adopted pins of a program older than elections.
    pub fn ownership(&self) -> Result<Ownership, OwnershipError> {
        self.ownership.as_ref().ok_or(OwnershipError::Missing)?.try_clone()
    }

    /// The loaded program, for `test_run` and attaching.
    pub fn program(&self) -> Result<&Xdp, LoadError> {
        self.loaded.xdp()
    }

    /// Attaches to `interface` (by name, in the calling thread's network namespace) for as long
    /// as this data plane lives.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), LoadError> {
        self.loaded
            .xdp_mut()?
            .attach(interface, mode)
            .map(drop)
            .map_err(|source| LoadError::Program { name: PROGRAM, source })
    }

    /// Attaches to `interface` (by name, in the calling thread's network namespace) through a
    /// link pinned at `paths.link(interface)`, which keeps the program attached after this
    /// process exits. An interface that already has a pinned link keeps it.
    pub fn attach_pinned(&mut self, paths: &InstancePaths, interface: &str, mode: XdpMode) -> Result<(), LoadError> {
        let path = paths.link(interface);
        let link_error = |source| LoadError::Link { interface: interface.to_string(), source };
        if path.exists() {
            // Check that it is a link we can open, then keep it as it is.
            PinnedLink::from_pin(&path).map_err(link_error)?;
            return Ok(());
        }
        check_bpffs(&paths.pin_dir)?;
        std::fs::create_dir_all(&paths.pin_dir).map_err(io_error(&paths.pin_dir))?;
        let program = self.loaded.xdp_mut()?;
        let program_error = |source| LoadError::Program { name: PROGRAM, source };
        let id = program.attach(interface, mode).map_err(program_error)?;
        let link = program.take_link(id).map_err(program_error)?;
        // A netlink attachment (kernels without XDP links) cannot be pinned; dropping it here
        // detaches it again.
        let link = FdLink::try_from(link).map_err(link_error)?;
        link.pin(&path).map_err(|source| LoadError::Pin { path, source })?;
        Ok(())
    }

    /// Removes the pinned link of `interface`, which detaches the program from it (once no
    /// process holds the link open; the kernel finishes the detach asynchronously). Returns
    /// whether there was a link.
    pub fn detach_pinned(paths: &InstancePaths, interface: &str) -> Result<bool, LoadError> {
        let path = paths.link(interface);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(io_error(&path)(error)),
        }
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
