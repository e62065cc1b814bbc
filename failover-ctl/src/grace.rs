//! Waiting for a kernel RCU grace period from user space.
//!
//! After the controller switches a VIP to a new table region, an XDP program that read the old
//! `VIPS` value may still be reading the old region. The kernel makes every update of a
//! map-of-maps wait for running non-sleepable BPF programs to finish (`synchronize_rcu` in
//! `maybe_wait_bpf_programs`), so one dummy update of a private 1-entry array-of-maps is a
//! grace period. The old region is rewritten only after one.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The `bpf_attr` prefix used by `BPF_MAP_CREATE`.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    padding: [u64; 12],
}

/// The `bpf_attr` prefix used by `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    padding: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(command: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; the kernel zero-extends.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *const T, size_of::<T>()) };
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result) }
}

fn create(map_type: u32, inner_map_fd: u32) -> io::Result<OwnedFd> {
    let attr = MapCreate { map_type, key_size: 4, value_size: 4, max_entries: 1, inner_map_fd, ..Default::default() };
    let fd = bpf(BPF_MAP_CREATE, &attr)?;
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A private array-of-maps whose updates are grace periods.
#[derive(Debug)]
pub struct GracePeriod {
    inner: OwnedFd,
    outer: OwnedFd,
}

impl GracePeriod {
    pub fn new() -> io::Result<Self> {
        let inner = create(BPF_MAP_TYPE_ARRAY, 0)?;
        let outer = create(BPF_MAP_TYPE_ARRAY_OF_MAPS, inner.as_raw_fd() as u32)?;
        Ok(Self { inner, outer })
    }

    /// Returns once every XDP program run that started before the call has finished.
    pub fn wait(&self) -> io::Result<()> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        let attr = MapUpdate {
            map_fd: self.outer.as_raw_fd() as u32,
            padding: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &attr).map(drop)
    }
}
