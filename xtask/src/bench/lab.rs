//! The live-frames lab: two private namespaces joined by a veth pair. Frames the program under test sends with XDP_TX leave through `lb0` and arrive at `peer0`, whose XDP program restores and drops them.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{Context as _, Result};
use netlab::Namespace;

use super::raw::{self, Restore};

pub const LB_INTERFACE: &str = "lb0";
pub const PEER_INTERFACE: &str = "peer0";

pub struct Lab {
    // Field order is drop order: detach the peer's program before its namespace goes.
    peer_link: Option<OwnedFd>,
    counter: OwnedFd,
    pub lb_ifindex: u32,
    peer_ifindex: u32,
    pub lb_mac: [u8; 6],
    pub peer_mac: [u8; 6],
    peer: Namespace,
    lb: Namespace,
}

impl Lab {
    pub fn new() -> Result<Self> {
        netlab::cleanup_stale().context("removing namespaces left by crashed runs")?;
        let lb = Namespace::create("bench").context("creating the load balancer's namespace")?;
        let peer = Namespace::create("benchpeer").context("creating the peer's namespace")?;
        // IPv6 would send neighbour and multicast-listener messages through the veth at random
        // moments, and the peer would count them as frames of the run.
        for namespace in [&lb, &peer] {
            namespace
                .exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
                .with_context(|| format!("disabling IPv6 in {}", namespace.name()))?;
        }
        netlab::veth(&lb, LB_INTERFACE, &peer, PEER_INTERFACE).context("creating the veth pair")?;
        Ok(Self {
            peer_link: None,
            counter: raw::create_counter()?,
            lb_ifindex: lb.if_index(LB_INTERFACE)?,
            peer_ifindex: peer.if_index(PEER_INTERFACE)?,
            lb_mac: lb.mac(LB_INTERFACE)?,
            peer_mac: peer.mac(PEER_INTERFACE)?,
            peer,
            lb,
        })
    }

    /// Puts a restore program for the next scenario on the peer (native mode, which also turns
    /// on the veth NAPI that XDP_TX into a veth needs).
    pub fn set_peer(&mut self, restore: &Restore<'_>) -> Result<()> {
        self.peer_link = None;
        let program = raw::load_restore(restore, self.counter.as_fd())?;
        let ifindex = self.peer_ifindex;
        let fd = program.as_fd();
        let link = self.peer.enter(|| raw::attach_native(fd, ifindex))??;
        // The link holds its own reference to the program.
        self.peer_link = Some(link);
        Ok(())
    }

    /// Frames the peer has received since the lab was made.
    pub fn frames_received(&self) -> Result<u64> {
        raw::read_counter(self.counter.as_fd())
    }

    /// Runs `f` on a thread inside the load balancer's namespace, where `lb_ifindex` means
    /// `lb0` (the kernel resolves a test run's ingress ifindex in the caller's namespace).
    pub fn in_lb<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.lb.enter(f)
    }
}
