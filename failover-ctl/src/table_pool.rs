//! The `TABLES` pool: an mmap of the BPF array holding every VIP's Maglev regions, and the
//! allocator that hands out regions.
//!
//! Writing a 65537-slot table through `bpf_map_update_elem` would take 65537 system calls; the
//! pool is created `BPF_F_MMAPABLE`, so a table is written with plain stores into the inactive
//! region and published by one `VIPS` update (see `failover_common::maps`).

use std::{io, os::fd::AsRawFd, ptr::NonNull};

use thiserror::Error;

/// The kernel lays array elements out every `round_up(value_size, 8)` bytes: a `u32` slot
/// occupies eight.
const SLOT_STRIDE: usize = 8;

#[derive(Debug, Error)]
pub enum PoolError {
    #[error("table pool: no free region of {slots} slots left (pool has {capacity} slots; raise the pool size)")]
    Full { slots: u32, capacity: u32 },
    #[error("table pool: mmap of the TABLES map failed: {0}")]
    Map(#[source] io::Error),
    #[error("table pool: region {offset}+{len} lies outside the pool of {capacity} slots")]
    OutOfRange { offset: u32, len: u32, capacity: u32 },
    #[error("table pool: regions {first:?} and {second:?} overlap")]
    Overlap { first: Region, second: Region },
}

/// A run of slots in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub offset: u32,
    pub len: u32,
}

/// The mapped pool plus a first-fit free list.
#[derive(Debug)]
pub struct TablePool {
    base: NonNull<u8>,
    mapped_len: usize,
    capacity: u32,
    /// False for an inspection mapping (`PROT_READ`): `write` refuses to touch it.
    writable: bool,
    /// Free runs, sorted by offset, never adjacent (merged on free).
    free: Vec<Region>,
    /// Slots stored since the mapping was made: what a publication costs in writes.
    written: u64,
}

// SAFETY: the mapping is owned by this value and only written through `&mut self`.
unsafe impl Send for TablePool {}
// SAFETY: shared references only read.
unsafe impl Sync for TablePool {}

impl TablePool {
    /// Maps the `TABLES` array of `capacity` slots behind `fd`.
    pub fn map(fd: &impl AsRawFd, capacity: u32) -> Result<Self, PoolError> {
        Self::map_with(fd, capacity, true)
    }

    /// Maps the pool for reading only (inspection of a pinned instance): nothing can be
    /// allocated or written through it.
    pub fn map_read_only(fd: &impl AsRawFd, capacity: u32) -> Result<Self, PoolError> {
        let mut pool = Self::map_with(fd, capacity, false)?;
        pool.free.clear();
        Ok(pool)
    }

    fn map_with(fd: &impl AsRawFd, capacity: u32, writable: bool) -> Result<Self, PoolError> {
        let protection = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mapped_len = (capacity as usize * SLOT_STRIDE).div_ceil(page) * page;
        // SAFETY: a shared mapping of a BPF_F_MMAPABLE array; length rounded to pages as the
        // kernel requires. Checked for MAP_FAILED below.
        let pointer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                protection,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if pointer == libc::MAP_FAILED {
            return Err(PoolError::Map(io::Error::last_os_error()));
        }
        let base = NonNull::new(pointer.cast()).ok_or(PoolError::Map(io::Error::other("null mapping")))?;
        Ok(Self { base, mapped_len, capacity, writable, free: vec![Region { offset: 0, len: capacity }], written: 0 })
    }

    /// Checks that `region` lies inside the pool.
    pub fn check(&self, region: Region) -> Result<(), PoolError> {
        match region.offset.checked_add(region.len) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(PoolError::OutOfRange { offset: region.offset, len: region.len, capacity: self.capacity }),
        }
    }

    /// Makes exactly `regions` allocated and everything else free (adoption of a pool written
    /// by an earlier process). The regions must lie inside the pool and not overlap; on error
    /// the allocator is left unchanged.
    pub fn set_allocated(&mut self, regions: &[Region]) -> Result<(), PoolError> {
        let mut sorted = regions.to_vec();
        sorted.sort_by_key(|region| (region.offset, region.len));
        let mut free = Vec::new();
        let mut cursor = 0u32;
        let mut previous: Option<Region> = None;
        for region in sorted {
            self.check(region)?;
            if let Some(before) = previous {
                // `check` bounds both ends by the capacity, so these sums do not overflow.
                if before.offset + before.len > region.offset {
                    return Err(PoolError::Overlap { first: before, second: region });
                }
            }
            if region.offset > cursor {
                free.push(Region { offset: cursor, len: region.offset - cursor });
            }
            cursor = cursor.max(region.offset + region.len);
            previous = Some(region);
        }
        if cursor < self.capacity {
            free.push(Region { offset: cursor, len: self.capacity - cursor });
        }
        self.free = free;
        Ok(())
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Takes `len` slots out of the free list.
    pub fn allocate(&mut self, len: u32) -> Result<Region, PoolError> {
        let index = self
            .free
            .iter()
            .position(|run| run.len >= len)
            .ok_or(PoolError::Full { slots: len, capacity: self.capacity })?;
        let run = &mut self.free[index];
        let region = Region { offset: run.offset, len };
        run.offset += len;
        run.len -= len;
        if run.len == 0 {
            self.free.remove(index);
        }
        Ok(region)
    }

    /// Returns a region to the free list. Only call once no packet can read it.
    pub fn release(&mut self, region: Region) {
        let index = self.free.partition_point(|run| run.offset < region.offset);
        self.free.insert(index, region);
        // Merge with the right neighbour, then the left one.
        if index + 1 < self.free.len() && self.free[index].offset + self.free[index].len == self.free[index + 1].offset {
            self.free[index].len += self.free[index + 1].len;
            self.free.remove(index + 1);
        }
        if index > 0 && self.free[index - 1].offset + self.free[index - 1].len == self.free[index].offset {
            self.free[index - 1].len += self.free[index].len;
            self.free.remove(index);
        }
    }

    /// Slots not allocated.
    pub fn free_slots(&self) -> u32 {
        self.free.iter().map(|run| run.len).sum()
    }

    fn slot(&self, index: u32) -> *mut u32 {
        debug_assert!(index < self.capacity);
        // SAFETY: index < capacity, so the slot lies inside the mapping.
        unsafe { self.base.as_ptr().add(index as usize * SLOT_STRIDE).cast() }
    }

    /// Writes `table` into `region` (which no packet may be reading).
    pub fn write(&mut self, region: Region, table: &[u32]) {
        assert!(self.writable, "write through a read-only pool mapping");
        assert_eq!(region.len as usize, table.len(), "table length must match its region");
        for (i, backend) in table.iter().enumerate() {
            // SAFETY: inside the mapping (region was allocated from this pool); volatile so the
            // stores are not elided, they are read by the kernel.
            unsafe { self.slot(region.offset + i as u32).write_volatile(*backend) };
        }
        self.written += table.len() as u64;
        // The VIPS update that publishes the region is a system call, which orders these stores
        // before it on every architecture Linux supports; the fence documents the intent.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes `id` into each `(slot, id)` of `region` (which no packet may be reading); later
    /// pairs win over earlier ones at the same slot.
    pub fn write_slots(&mut self, region: Region, slots: &[(u32, u32)]) {
        assert!(self.writable, "write through a read-only pool mapping");
        for &(slot, id) in slots {
            assert!(slot < region.len, "slot {slot} outside a region of {} slots", region.len);
            // SAFETY: inside the region, which lies inside the mapping; volatile as in `write`.
            unsafe { self.slot(region.offset + slot).write_volatile(id) };
        }
        self.written += slots.len() as u64;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Copies region `from` into region `to` of the same length (which no packet may be reading).
    pub fn copy(&mut self, from: Region, to: Region) {
        assert!(self.writable, "write through a read-only pool mapping");
        assert_eq!(from.len, to.len, "regions of a copy must have the same length");
        for index in 0..from.len {
            // SAFETY: both regions lie inside the mapping; volatile as in `write` and `read`.
            // (One memcpy of the whole elements measured slower on the failover path: a
            // median of 63 us against 50 us.)
            unsafe { self.slot(to.offset + index).write_volatile(self.slot(from.offset + index).read_volatile()) };
        }
        self.written += u64::from(from.len);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// One slot of `region`.
    pub fn read_slot(&self, region: Region, slot: u32) -> u32 {
        assert!(slot < region.len, "slot {slot} outside a region of {} slots", region.len);
        // SAFETY: inside the region, which lies inside the mapping.
        unsafe { self.slot(region.offset + slot).read_volatile() }
    }

    /// The slots where `region` differs from `table`, with `table`'s ids, in slot order.
    pub fn differences(&self, region: Region, table: &[u32]) -> Vec<(u32, u32)> {
        assert_eq!(region.len as usize, table.len(), "table length must match its region");
        (0..region.len)
            // SAFETY: inside the mapping.
            .filter(|&index| unsafe { self.slot(region.offset + index).read_volatile() } != table[index as usize])
            .map(|index| (index, table[index as usize]))
            .collect()
    }

    /// Slots stored since the mapping was made (`write`, `write_slots` and `copy`).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Reads a region back (inspection, tests). A region outside the pool reads as empty.
    pub fn read(&self, region: Region) -> Vec<u32> {
        if self.check(region).is_err() {
            return Vec::new();
        }
        (0..region.len)
            // SAFETY: inside the mapping; volatile because the kernel side may be written too.
            .map(|i| unsafe { self.slot(region.offset + i).read_volatile() })
            .collect()
    }
}

impl Drop for TablePool {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `map` with this length and is not used after drop.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(capacity: u32) -> TablePool {
        // An anonymous mapping stands in for the BPF map in this host test.
        let mapped_len = capacity as usize * SLOT_STRIDE;
        // SAFETY: plain anonymous mapping.
        let pointer = unsafe {
            libc::mmap(std::ptr::null_mut(), mapped_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(pointer, libc::MAP_FAILED);
        TablePool {
            base: NonNull::new(pointer.cast()).unwrap(),
            mapped_len,
            capacity,
            writable: true,
            free: vec![Region { offset: 0, len: capacity }],
            written: 0,
        }
    }

    #[test]
    fn allocate_release_merges_neighbours() {
        let mut pool = pool(100);
        let a = pool.allocate(30).unwrap();
        let b = pool.allocate(30).unwrap();
        let c = pool.allocate(40).unwrap();
        assert_eq!((a.offset, b.offset, c.offset), (0, 30, 60));
        assert!(matches!(pool.allocate(1), Err(PoolError::Full { .. })));
        pool.release(a);
        pool.release(c);
        assert_eq!(pool.free.len(), 2);
        pool.release(b);
        assert_eq!(pool.free, vec![Region { offset: 0, len: 100 }]);
        assert_eq!(pool.free_slots(), 100);
    }

    #[test]
    fn set_allocated_frees_exactly_the_gaps() {
        let mut pool = pool(100);
        let regions = [Region { offset: 50, len: 10 }, Region { offset: 0, len: 20 }, Region { offset: 60, len: 5 }];
        pool.set_allocated(&regions).unwrap();
        assert_eq!(pool.free, vec![Region { offset: 20, len: 30 }, Region { offset: 65, len: 35 }]);
        assert_eq!(pool.free_slots(), 65);
        // The next allocations never touch an adopted region.
        assert_eq!(pool.allocate(30).unwrap(), Region { offset: 20, len: 30 });
        assert_eq!(pool.allocate(35).unwrap(), Region { offset: 65, len: 35 });
        assert!(matches!(pool.allocate(1), Err(PoolError::Full { .. })));
    }

    #[test]
    fn set_allocated_refuses_bad_regions() {
        let mut pool = pool(100);
        let overlap = [Region { offset: 0, len: 20 }, Region { offset: 19, len: 5 }];
        assert!(matches!(pool.set_allocated(&overlap), Err(PoolError::Overlap { .. })));
        let outside = [Region { offset: 90, len: 20 }];
        assert!(matches!(pool.set_allocated(&outside), Err(PoolError::OutOfRange { .. })));
        let overflow = [Region { offset: u32::MAX, len: 2 }];
        assert!(matches!(pool.set_allocated(&overflow), Err(PoolError::OutOfRange { .. })));
        // Unchanged after the refusals.
        assert_eq!(pool.free, vec![Region { offset: 0, len: 100 }]);
    }

    #[test]
    fn write_then_read_round_trips() {
        let mut pool = pool(64);
        let region = pool.allocate(7).unwrap();
        let table = [5, 1, 4, 2, 3, 9, 0];
        pool.write(region, &table);
        assert_eq!(pool.read(region), table);
    }

    #[test]
    fn patches_copies_and_differences() {
        let mut pool = pool(64);
        let (first, second) = (pool.allocate(7).unwrap(), pool.allocate(7).unwrap());
        pool.write(first, &[5, 1, 4, 2, 3, 9, 0]);
        pool.copy(first, second);
        assert_eq!(pool.read(second), [5, 1, 4, 2, 3, 9, 0]);
        pool.write_slots(second, &[(1, 8), (6, 7), (1, 6)]);
        assert_eq!(pool.read(second), [5, 6, 4, 2, 3, 9, 7]);
        assert_eq!(pool.read_slot(second, 6), 7);
        assert_eq!(pool.differences(first, &pool.read(second)), [(1, 6), (6, 7)]);
        assert_eq!(pool.differences(first, &[5, 1, 4, 2, 3, 9, 0]), []);
        assert_eq!(pool.read(first), [5, 1, 4, 2, 3, 9, 0], "the source of a copy is left alone");
        assert_eq!(pool.written(), 7 + 7 + 3);
    }
}
