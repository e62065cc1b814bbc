//! `status`, `vips`, `backends`, `table`, `flows`, `stats`, `which` and `events`.

use std::{net::SocketAddr, time::Duration};

use crate::{config::Protocol, paths::InstancePaths};

/// Which instance to read and how to print.
pub struct Target {
    pub paths: InstancePaths,
    pub json: bool,
}

pub fn status(_target: &Target) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub fn vips(_target: &Target) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub fn backends(_target: &Target, _vip: Option<&str>) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub fn table(_target: &Target, _vip: &str) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub fn flows(_target: &Target, _vip: Option<&str>, _backend: Option<&str>, _limit: usize) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub fn stats(_target: &Target, _watch: Option<Duration>, _count: Option<u64>) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub fn which(_target: &Target, _source: SocketAddr, _destination: SocketAddr, _protocol: Protocol) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub fn events(_target: &Target, _limit: usize) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
