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
        // One queue per CPU on each end: a frame sent with XDP_TX on CPU n goes to the peer's
        // queue n (the veth picks the queue by CPU), so frames sent on two CPUs at once do not
        // meet on one queue's ring and its lock, which would cap the two-CPU rows.
        let queues = std::thread::available_parallelism().map_or(1, |count| count.get());
        lb.ip(&format!(
            "link add {LB_INTERFACE} numtxqueues {queues} numrxqueues {queues} type veth peer name {PEER_INTERFACE} numtxqueues {queues} numrxqueues {queues}"
        ))
        .context("creating the veth pair")?;
        lb.ip(&format!("link set {PEER_INTERFACE} netns {}", peer.name()))?;
        lb.ip(&format!("link set {LB_INTERFACE} up"))?;
        peer.ip(&format!("link set {PEER_INTERFACE} up"))?;
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

    /// Frames the peer has received since the lab was made, on every CPU.
    pub fn frames_received(&self) -> Result<u64> {
        raw::read_counter(self.counter.as_fd())
    }

    /// Runs `f` on a thread inside the load balancer's namespace, where `lb_ifindex` means
    /// `lb0` (the kernel resolves a test run's ingress ifindex in the caller's namespace).
    /// Several threads may each call it at once.
    pub fn in_lb<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.lb.enter(f)
    }
}
