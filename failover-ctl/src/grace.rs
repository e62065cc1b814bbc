//! Waiting for a kernel RCU grace period from user space.
//!
//! After the controller switches a VIP to a new table region, an XDP program that read the old
//! `VIPS` value may still be reading the old region. The kernel makes every update of a
//! map-of-maps wait for running non-sleepable BPF programs to finish (`synchronize_rcu` in
//! `maybe_wait_bpf_programs`), so one dummy update of a private 1-entry array-of-maps is a
//! grace period. The old region is rewritten only after one.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use crate::sys::{self, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_ARRAY_OF_MAPS};

/// A private array-of-maps whose updates are grace periods.
#[derive(Debug)]
pub struct GracePeriod {
    inner: OwnedFd,
    outer: OwnedFd,
}

impl GracePeriod {
    pub fn new() -> io::Result<Self> {
        let inner = sys::create_map(BPF_MAP_TYPE_ARRAY, 4, 1, None)?;
        let outer = sys::create_map(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 1, Some(inner.as_fd()))?;
        Ok(Self { inner, outer })
    }

    /// Returns once every XDP program run that started before the call has finished.
    pub fn wait(&self) -> io::Result<()> {
        sys::update_element(self.outer.as_fd(), 0, &(self.inner.as_raw_fd() as u32))
    }
}
