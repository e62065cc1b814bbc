//! Starting the election task of `failover-ctl run`: each `[[election]]` group is resolved on
//! its interface (index, MAC, the address adverts come from) and handed to the task, whose
//! reports reach the state owner as messages.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    sync::mpsc,
    task::JoinHandle,
};

use super::controller::{Elections, Message};
use crate::{
    config::Config,
    election::runtime::{self, Command, OwnershipStore, Resolved, Runtime},
    netlink::Netlink,
    ownership::Ownership,
};

impl OwnershipStore for Ownership {
    fn set(&mut self, group: u8, owned: bool) -> anyhow::Result<()> {
        Ok(Ownership::set(self, group, owned)?)
    }

    fn get(&self, group: u8) -> anyhow::Result<bool> {
        Ok(Ownership::get(self, group)?)
    }
}

/// How long a stopping daemon waits for the groups' last adverts.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The running election task.
pub struct Task {
    commands: mpsc::Sender<Command>,
    handle: JoinHandle<()>,
}

impl Task {
    /// Stops every group (a master resigns only with `release_on_stop`) and waits for it.
    pub async fn stop(self) {
        let _ = self.commands.send(Command::Stop).await;
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.handle).await;
    }
}

/// Resolves the groups of `config` and starts their task, ineligible for mastership until the
/// state owner says every backend has a verdict. `None` when there are no groups.
pub async fn start(
    config: &Config,
    netlink: Arc<Netlink>,
    ownership: Box<dyn OwnershipStore>,
    owner: mpsc::Sender<Message>,
) -> anyhow::Result<Option<(Elections, Task)>> {
    if config.elections.is_empty() {
        return Ok(None);
    }
    let mut groups = Vec::new();
    for (position, election) in config.elections.iter().enumerate() {
        let interface = netlink
            .interface(&election.interface)
            .await
            .with_context(|| format!("election {}: interface {}", election.name, election.interface))?;
        let addresses: Vec<IpAddr> = netlink.addresses(interface.index).await?.into_iter().map(|(address, _)| address).collect();
        // The node's own link-local: a crashed master leaves the group's link-local VRRP
        // address on the interface, and adverts (or NAs) from it would claim to be the group.
        let link_local = addresses.iter().find_map(|address| match address {
            IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 && !election.addresses.contains(address) => Some(*v6),
            _ => None,
        });
        let v4 = election.addresses.first().is_some_and(IpAddr::is_ipv4);
        // RFC 9568 §5.1.1.1 / §5.1.2.1: an IPv4 address of the interface (not one the group
        // protects), or its IPv6 link-local address.
        let source = if v4 {
            addresses.iter().copied().find(|address| address.is_ipv4() && !election.addresses.contains(address))
        } else {
            link_local.map(IpAddr::V6)
        };
        let source = source.with_context(|| {
            format!(
                "election {}: interface {} has no {} to send adverts from",
                election.name,
                election.interface,
                if v4 { "IPv4 address (other than the group's)" } else { "IPv6 link-local address" }
            )
        })?;
        groups.push(Resolved {
            index: u8::try_from(position + 1).context("at most 255 elections")?,
            spec: runtime::group_spec(election),
            election: election.clone(),
            ifindex: interface.index,
            mac: interface.mac,
            source,
            ours: addresses,
            link_local,
        });
    }
    let status = Arc::new(Mutex::new(Vec::new()));
    let (reports, mut reported) = mpsc::unbounded_channel();
    let task = Runtime::new(groups, ownership, netlink, reports, status.clone()).context("opening the VRRP sockets")?;
    let (commands, received) = mpsc::channel(64);
    let handle = tokio::spawn(task.run(received));
    tokio::spawn(async move {
        while let Some(report) = reported.recv().await {
            if owner.send(Message::Election(report)).await.is_err() {
                break;
            }
        }
    });
    Ok(Some((Elections { commands: commands.clone(), status }, Task { commands, handle })))
}
