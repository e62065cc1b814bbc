//! `flush-announcements`: removes, without the daemon, every route the controller announced —
//! the host routes of the announce table with its route protocol number, IPv4 and IPv6 — so that
//! the routing daemon withdraws the VIPs of a node whose controller cannot run (the systemd unit
//! `failover-ctl-flush.service`, started by `OnFailure=`). Routes of other protocols in that table
//! and every other table stay.

use std::net::IpAddr;

use anyhow::Context;
use serde::Serialize;

use crate::{
    config::Announce,
    daemon::{control, status::Request},
    netlink::Netlink,
    paths::InstancePaths,
};

/// The table and protocol to flush: each from its flag, else from the configuration's
/// `[announce]`; without either, the command refuses rather than guess.
pub fn selection(announce: Option<&Announce>, table: Option<u32>, protocol: Option<u8>) -> anyhow::Result<(u32, u8)> {
    let table = table.or(announce.map(|announce| announce.table)).context(
        "flush-announcements needs the announce table: --config FILE (its [announce] table and protocol) or --table and --protocol",
    )?;
    let protocol = protocol.or(announce.map(|announce| announce.protocol)).context(
        "flush-announcements needs the route protocol: --config FILE (its [announce] table and protocol) or --table and --protocol",
    )?;
    // The same limits as `[announce]`: never the kernel's own tables or protocols.
    if matches!(table, 0 | 253..=255) {
        anyhow::bail!("--table {table}: the announce table is a table of its own, not 0, 253, 254 or 255");
    }
    if !(5..=254).contains(&protocol) {
        anyhow::bail!("--protocol {protocol}: expected a route protocol number from 5 to 254 (0-4 are the kernel's)");
    }
    Ok((table, protocol))
}

#[derive(Serialize)]
struct FlushView {
    table: u32,
    protocol: u8,
    removed: Vec<IpAddr>,
}

/// Removes the routes of `table` with `protocol` in the caller's network namespace and prints
/// them. Refuses while the daemon of `paths` answers: it owns the table and would not know its
/// routes are gone (`drain-node` is the way to withdraw with it running).
pub fn flush_announcements(paths: &InstancePaths, table: u32, protocol: u8, json: bool) -> anyhow::Result<()> {
    if control::request(&paths.control_socket(), &Request::Status).is_ok() {
        anyhow::bail!(
            "instance {} is running and owns announce table {table}: withdraw with `failover-ctl drain-node`, or stop it first",
            paths.instance
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let removed = runtime
        .block_on(async { Netlink::new()?.flush(table, protocol).await })
        .with_context(|| format!("flushing the routes of protocol {protocol} from table {table}"))?;
    let view = FlushView { table, protocol, removed };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    if view.removed.is_empty() {
        println!("table {table}: no route with protocol {protocol}, nothing removed");
        return Ok(());
    }
    println!("table {table}: removed {} routes with protocol {protocol}", view.removed.len());
    for address in &view.removed {
        println!("  {address}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_configuration_and_nothing_is_guessed() {
        let announce = Announce { table: 120, protocol: 210, ..Announce::default() };
        assert_eq!(selection(Some(&announce), None, None).unwrap(), (120, 210));
        assert_eq!(selection(Some(&announce), Some(130), None).unwrap(), (130, 210));
        assert_eq!(selection(None, Some(100), Some(201)).unwrap(), (100, 201));
        let missing = selection(None, Some(100), None).unwrap_err().to_string();
        assert!(missing.contains("--config FILE"), "{missing}");
        assert!(selection(None, None, None).is_err());
    }

    #[test]
    fn the_kernels_tables_and_protocols_are_refused() {
        for table in [0, 253, 254, 255] {
            let error = selection(None, Some(table), Some(201)).unwrap_err().to_string();
            assert!(error.starts_with(&format!("--table {table}:")), "{error}");
        }
        for protocol in [0, 2, 4, 255] {
            let error = selection(None, Some(100), Some(protocol)).unwrap_err().to_string();
            assert!(error.starts_with(&format!("--protocol {protocol}:")), "{error}");
        }
    }
}
