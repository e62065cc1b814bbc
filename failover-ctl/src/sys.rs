//! The raw `bpf(2)` system call, for the few operations aya does not offer: a private
//! array-of-maps (the grace period) and the benchmark's hand-assembled programs.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

pub const BPF_MAP_CREATE: libc::c_long = 0;
pub const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_PROG_TEST_RUN: libc::c_long = 10;
pub const BPF_LINK_CREATE: libc::c_long = 28;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// Runs `bpf(command, attributes)`. `attributes` must be a `repr(C)` prefix of
/// `union bpf_attr` for `command`, zeroed where unused; the kernel zero-extends the rest.
pub fn bpf<T>(command: libc::c_long, attributes: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: per the contract above; `attributes` lives for the duration of the call and the
    // size passed is its own.
    let result = unsafe {
        libc::syscall(libc::SYS_bpf, command, attributes as *mut T as *mut libc::c_void, size_of::<T>() as libc::c_uint)
    };
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result) }
}

/// Takes ownership of a descriptor the kernel just returned.
pub fn owned_fd(raw: libc::c_long) -> OwnedFd {
    // SAFETY: a new descriptor from a successful bpf() call; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(raw as i32) }
}

/// The `BPF_MAP_CREATE` prefix of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

/// Creates a map with 4-byte keys; `inner_map` is the template of a map-of-maps.
pub fn create_map(map_type: u32, value_size: u32, max_entries: u32, inner_map: Option<BorrowedFd<'_>>) -> io::Result<OwnedFd> {
    let mut attributes = MapCreate {
        map_type,
        key_size: 4,
        value_size,
        max_entries,
        inner_map_fd: inner_map.map_or(0, |fd| fd.as_raw_fd() as u32),
        ..MapCreate::default()
    };
    bpf(BPF_MAP_CREATE, &mut attributes).map(owned_fd)
}

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapElement {
    map_fd: u32,
    padding: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `bpf_map_update_elem(map, &index, value)` for a map with 4-byte keys.
pub fn update_element<V>(map: BorrowedFd<'_>, index: u32, value: &V) -> io::Result<()> {
    let mut attributes = MapElement {
        map_fd: map.as_raw_fd() as u32,
        key: &index as *const u32 as u64,
        value: value as *const V as u64,
        ..MapElement::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attributes).map(drop)
}

/// `bpf_map_lookup_elem(map, &index)` for a map with 4-byte keys.
pub fn lookup_element<V: Default>(map: BorrowedFd<'_>, index: u32) -> io::Result<V> {
    let mut value = V::default();
    let mut attributes = MapElement {
        map_fd: map.as_raw_fd() as u32,
        key: &index as *const u32 as u64,
        value: &mut value as *mut V as u64,
        ..MapElement::default()
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attributes)?;
    Ok(value)
}

/// `clock` (`CLOCK_MONOTONIC`, `CLOCK_MONOTONIC_COARSE`, ...) in nanoseconds. The data plane's
/// `bpf_ktime_get_ns` is `CLOCK_MONOTONIC`, its `bpf_ktime_get_coarse_ns` the coarse one.
pub fn clock_ns(clock: libc::clockid_t) -> io::Result<u64> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the data plane's `bpf_ktime_get_coarse_ns`, the
/// clock of flow times and the monitor's lease.
pub fn coarse_now_ns() -> io::Result<u64> {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}
