//! An mmap-able BPF array (`BPF_F_MMAPABLE`) mapped into this process: the flow cache and the
//! VIP index are read and written as memory, with the data plane's concurrent accesses ordered
//! by the protocol each documents in `failover_common::maps`.

use std::{
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::{Map, MapData};

use super::{map_error, MapWriteError};

pub(super) struct Mapping<T> {
    /// Kept for the map's lifetime guarantees; the mapping holds its own reference too.
    _map: MapData,
    base: NonNull<u8>,
    entries: u32,
    mapped_len: usize,
    _values: PhantomData<T>,
}

/// The kernel lays array elements out every `round_up(value_size, 8)` bytes.
const fn stride<T>() -> usize {
    size_of::<T>().next_multiple_of(8)
}

// SAFETY: the mapping is owned by this value and only accessed through its owner's methods;
// the data plane's concurrent accesses are part of the documented protocols.
unsafe impl<T> Send for Mapping<T> {}
unsafe impl<T> Sync for Mapping<T> {}

impl<T> Mapping<T> {
    /// Maps the array `map` (named `name` in errors), whose values must be `T`s.
    pub(super) fn new(map: Map, name: &'static str) -> Result<Self, MapWriteError> {
        let Map::Array(map) = map else {
            return Err(MapWriteError::Corrupt(format!("map {name} is not an array")));
        };
        let info = map.info().map_err(map_error(name))?;
        if info.value_size() as usize != size_of::<T>() {
            return Err(MapWriteError::Corrupt(format!(
                "map {name} holds {}-byte values, this program's are {} bytes",
                info.value_size(),
                size_of::<T>()
            )));
        }
        let entries = info.max_entries();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mapped_len = (entries as usize * stride::<T>()).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of a BPF_F_MMAPABLE array, its length rounded to pages as the
        // kernel requires; checked for MAP_FAILED below.
        let pointer = unsafe { libc::mmap(std::ptr::null_mut(), mapped_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        if pointer == libc::MAP_FAILED {
            let error = std::io::Error::last_os_error();
            return Err(MapWriteError::Corrupt(format!("mapping {name} ({entries} entries): {error}")));
        }
        let base = NonNull::new(pointer.cast()).ok_or_else(|| MapWriteError::Corrupt(format!("mapping {name}: null")))?;
        Ok(Self { _map: map, base, entries, mapped_len, _values: PhantomData })
    }

    pub(super) fn entries(&self) -> u32 {
        self.entries
    }

    /// Entry `index`, which must be below [`Mapping::entries`].
    pub(super) fn entry(&self, index: u32) -> *mut T {
        assert!(index < self.entries, "entry {index} of a {}-entry array", self.entries);
        // SAFETY: `index` < entries, so the pointer stays inside the mapping; elements start
        // at multiples of 8 bytes, which T's alignment (at most 8 for map values) divides.
        unsafe { self.base.as_ptr().add(index as usize * stride::<T>()).cast() }
    }
}

impl<T> Drop for Mapping<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and is not used after drop.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped_len) };
    }
}
