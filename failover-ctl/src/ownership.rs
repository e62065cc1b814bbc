//! The election task's handle on `OWNERSHIP` (group index -> this node serves the group's
//! VIPs): the one map the state owner never writes (`failover_common::maps`, "Writers").
//!
//! A group index is the position of an `[[election]]` in the configuration plus one
//! ([`crate::daemon::plan::group_index`]); group 0 means "no group" and has no entry to write.
//! The handle owns its own map file descriptor, so it is `Send` and moves to the election
//! task's thread while the state owner keeps the map writer.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::PathBuf,
};

use aya::maps::{Array, Map, MapData, MapError};
use failover_common::maps::{names, OWNERSHIP_OWNED, OWNERSHIP_RELEASED};
use thiserror::Error;

use crate::paths::InstancePaths;

#[derive(Debug, Error)]
pub enum OwnershipError {
    #[error("ownership group 0 means \"no group\" (the VIP's own flag decides); groups are 1 to 255")]
    NoGroup,
    #[error("map {}: {source}", names::OWNERSHIP)]
    Map { #[source] source: MapError },
    #[error("pinned map {}: {source}", path.display())]
    Pinned { path: PathBuf, #[source] source: MapError },
    #[error("the pinned instance has no {} map ({}): its program predates elections; stop the daemon, run `failover-ctl teardown` and start it again to serve [[election]] groups", names::OWNERSHIP, .0.display())]
    MissingPin(PathBuf),
    #[error("this data plane has no {} map: its program (adopted from pins) predates elections; stop the daemon, run `failover-ctl teardown` and start it again to serve [[election]] groups", names::OWNERSHIP)]
    Missing,
    #[error("duplicating the {} map's file descriptor: {source}", names::OWNERSHIP)]
    Duplicate { #[source] source: io::Error },
}

/// Reads and writes the ownership of groups in the data plane: one `set` takes over or
/// releases every VIP of a group at once.
pub struct Ownership {
    map: Array<MapData, u32>,
    /// Another descriptor of the same map, to make further handles from (`Array` does not
    /// lend its own).
    fd: OwnedFd,
}

impl Ownership {
    /// The `OWNERSHIP` map of an instance's pins. Pins made by a program older than elections
    /// have none: [`OwnershipError::MissingPin`] says what to do.
    pub fn open_pinned(paths: &InstancePaths) -> Result<Self, OwnershipError> {
        let path = paths.map(names::OWNERSHIP);
        if !path.exists() {
            return Err(OwnershipError::MissingPin(path));
        }
        let pinned = |source| OwnershipError::Pinned { path: path.clone(), source };
        Self::from_data(MapData::from_pin(&path).map_err(pinned)?)
    }

    /// The `OWNERSHIP` map of a loaded object, which keeps its own handle.
    pub(crate) fn from_object(ebpf: &aya::Ebpf) -> Result<Self, OwnershipError> {
        let Some(Map::Array(data)) = ebpf.map(names::OWNERSHIP) else {
            return Err(OwnershipError::Missing);
        };
        Self::from_fd(data.fd().as_fd())
    }

    /// A handle on the map behind `fd` (a duplicate is made; `fd` stays the caller's).
    fn from_fd(fd: BorrowedFd<'_>) -> Result<Self, OwnershipError> {
        let fd = fd.try_clone_to_owned().map_err(|source| OwnershipError::Duplicate { source })?;
        Self::from_data(MapData::from_fd(fd).map_err(|source| OwnershipError::Map { source })?)
    }

    fn from_data(data: MapData) -> Result<Self, OwnershipError> {
        let map_error = |source| OwnershipError::Map { source };
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|source| OwnershipError::Duplicate { source })?;
        // The conversion checks the map type and the key and value sizes.
        let map = Array::try_from(Map::from_map_data(data).map_err(map_error)?).map_err(map_error)?;
        Ok(Self { map, fd })
    }

    /// A second handle on the same map, with a file descriptor of its own.
    pub fn try_clone(&self) -> Result<Self, OwnershipError> {
        Self::from_fd(self.fd.as_fd())
    }

    /// Takes over (`owned`) or releases every VIP of `group`, and the address entries at their
    /// addresses: one map update, seen by the next packet.
    pub fn set(&mut self, group: u8, owned: bool) -> Result<(), OwnershipError> {
        if group == 0 {
            return Err(OwnershipError::NoGroup);
        }
        let value = if owned { OWNERSHIP_OWNED } else { OWNERSHIP_RELEASED };
        self.map.set(u32::from(group), value, 0).map_err(|source| OwnershipError::Map { source })
    }

    /// Whether this node serves `group` now (for a restarted daemon, what the previous one
    /// left).
    pub fn get(&self, group: u8) -> Result<bool, OwnershipError> {
        if group == 0 {
            return Err(OwnershipError::NoGroup);
        }
        let value = self.map.get(&u32::from(group), 0).map_err(|source| OwnershipError::Map { source })?;
        Ok(value != OWNERSHIP_RELEASED)
    }
}

#[cfg(test)]
mod tests {
    use super::Ownership;

    #[test]
    fn the_handle_moves_to_another_thread() {
        fn send<T: Send>() {}
        send::<Ownership>();
    }
}
