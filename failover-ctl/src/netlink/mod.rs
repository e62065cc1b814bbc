//! Interface, route and neighbour lookups through rtnetlink, for the network namespace the
//! handle was created in (no shelling out to `ip`).
//!
//! A socket belongs to the network namespace of the thread that opened it, for its whole life.
//! [`Netlink::new`] opens every socket it needs at once (the rtnetlink socket and the UDP
//! sockets that start neighbour resolution), so create it on the thread that has entered the
//! namespace you mean; its methods may then run on any thread of any runtime worker.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{LinkAttribute, LinkFlags},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
        route::{RouteAttribute, RouteMessage},
        AddressFamily,
    },
    Handle, RouteMessageBuilder,
};
use tokio::{task::JoinHandle, time::Instant};

mod routes;

/// How often [`Netlink::resolve_neighbour`] re-reads the neighbour table while it waits.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The discard port (RFC 863): the datagram that starts resolution is meant to be ignored.
const DISCARD_PORT: u16 = 9;

// Neighbour states (`NUD_*` in include/uapi/linux/neighbour.h) whose link-layer address can be
// used to send: the kernel itself transmits to neighbours in these states.
const NUD_REACHABLE: u16 = 0x02;
const NUD_STALE: u16 = 0x04;
const NUD_DELAY: u16 = 0x08;
const NUD_PROBE: u16 = 0x10;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
const NUD_USABLE: u16 =
    NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT;

/// ENODEV: what the kernel answers a link request for a name it does not know.
const ENODEV: i32 = 19;
/// EEXIST: adding an address that is already there.
const EEXIST: i32 = 17;
/// EADDRNOTAVAIL: removing an address that is gone.
const EADDRNOTAVAIL: i32 = 99;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink route socket")]
    Socket(#[source] io::Error),
    #[error("Netlink::new must be called inside a tokio runtime")]
    NoRuntime,
    #[error("no interface named {0}")]
    InterfaceNotFound(String),
    #[error("interface {0} has no Ethernet (6-byte) address")]
    NotEthernet(String),
    #[error("netlink request failed: {what}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no route to {0}")]
    NoRoute(IpAddr),
    #[error("sending a datagram to {address} to start neighbour resolution")]
    Trigger {
        address: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("no neighbour entry for {address} after {timeout:?} (last state: {state})")]
    Unresolved {
        address: IpAddr,
        timeout: Duration,
        state: String,
    },
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Administratively up (`IFF_UP`, what `ip link set ... up` sets).
    pub up: bool,
    /// Up with a carrier (`IFF_RUNNING`): the link can carry packets.
    pub running: bool,
}

/// An rtnetlink connection bound to the network namespace of the thread that created it.
///
/// Create it once and share it (`Arc`) among tasks; dropping it stops the connection task.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
    trigger_v4: UdpSocket,
    // None when IPv6 is disabled in the namespace; IPv6 resolution then fails with a clear error.
    trigger_v6: Option<UdpSocket>,
}

/// What the neighbour table says about one address.
enum Entry {
    Usable([u8; 6]),
    Unusable(u16),
    Missing,
}

impl Netlink {
    /// Opens the sockets in the calling thread's network namespace and spawns the connection
    /// task on the current tokio runtime.
    pub fn new() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        let trigger_v4 =
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(NetlinkError::Socket)?;
        let trigger_v6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).ok();
        for socket in std::iter::once(&trigger_v4).chain(&trigger_v6) {
            socket.set_nonblocking(true).map_err(NetlinkError::Socket)?;
        }
        Ok(Self {
            handle,
            connection: runtime.spawn(connection),
            trigger_v4,
            trigger_v6,
        })
    }

    /// The interface called `name`.
    pub async fn interface(&self, name: &str) -> Result<Interface, NetlinkError> {
        let mut request = self.handle.link().get().match_name(name).execute();
        let message = match request.try_next().await {
            Ok(Some(message)) => message,
            Ok(None) => return Err(NetlinkError::InterfaceNotFound(name.to_string())),
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -ENODEV => {
                return Err(NetlinkError::InterfaceNotFound(name.to_string()))
            }
            Err(source) => {
                return Err(NetlinkError::Request {
                    what: format!("getting link {name}"),
                    source,
                })
            }
        };
        let mut mac = None;
        let mut mtu = 0;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                LinkAttribute::Mtu(value) => mtu = *value,
                _ => {}
            }
        }
        Ok(Interface {
            name: name.to_string(),
            index: message.header.index,
            mac: mac.ok_or_else(|| NetlinkError::NotEthernet(name.to_string()))?,
            mtu,
            up: message.header.flags.contains(LinkFlags::Up),
            running: message.header.flags.contains(LinkFlags::Up) && message.header.flags.contains(LinkFlags::Running),
        })
    }

    /// The addresses of interface `index` (`ip addr show dev`), with their prefix lengths.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let mut request = self.handle.address().get().set_link_index_filter(index).execute();
        let mut found = Vec::new();
        loop {
            match request.try_next().await {
                Ok(Some(message)) => {
                    let address = message.attributes.iter().find_map(|attribute| match attribute {
                        AddressAttribute::Local(address) => Some(*address),
                        _ => None,
                    });
                    let address = address.or_else(|| {
                        message.attributes.iter().find_map(|attribute| match attribute {
                            AddressAttribute::Address(address) => Some(*address),
                            _ => None,
                        })
                    });
                    if let Some(address) = address {
                        found.push((address, message.header.prefix_len));
                    }
                }
                Ok(None) => return Ok(found),
                Err(source) => return Err(NetlinkError::Request { what: format!("listing the addresses of interface {index}"), source }),
            }
        }
    }

    /// Adds `address`/`prefix` to interface `index`; already there is not an error.
    pub async fn add_address(&self, index: u32, address: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        match self.handle.address().add(index, address, prefix).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -EEXIST => Ok(()),
            Err(source) => Err(NetlinkError::Request { what: format!("adding {address}/{prefix} to interface {index}"), source }),
        }
    }

    /// Removes `address` from interface `index`; not there is not an error.
    pub async fn remove_address(&self, index: u32, address: IpAddr) -> Result<(), NetlinkError> {
        let mut request = self.handle.address().get().set_link_index_filter(index).set_address_filter(address).execute();
        loop {
            match request.try_next().await {
                Ok(Some(message)) => {
                    if let Err(source) = self.handle.address().del(message).execute().await {
                        if !matches!(&source, rtnetlink::Error::NetlinkError(error) if error.raw_code() == -EADDRNOTAVAIL) {
                            return Err(NetlinkError::Request { what: format!("removing {address} from interface {index}"), source });
                        }
                    }
                }
                Ok(None) => return Ok(()),
                Err(source) => return Err(NetlinkError::Request { what: format!("finding {address} on interface {index}"), source }),
            }
        }
    }

    /// The output interface index of the route the kernel would use to reach `address`
    /// (`ip route get`).
    pub async fn route_interface(&self, address: IpAddr) -> Result<u32, NetlinkError> {
        let message: RouteMessage = match address {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .build(),
        };
        let route = match self.handle.route().get(message).execute().try_next().await {
            Ok(route) => route,
            // ENETUNREACH and friends: the kernel has no usable route.
            Err(rtnetlink::Error::NetlinkError(_)) => None,
            Err(source) => {
                return Err(NetlinkError::Request {
                    what: format!("getting the route to {address}"),
                    source,
                })
            }
        };
        route
            .and_then(|route| {
                route
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        RouteAttribute::Oif(index) => Some(*index),
                        _ => None,
                    })
            })
            .ok_or(NetlinkError::NoRoute(address))
    }

    /// The link-layer address of neighbour `address` (ARP for IPv4, NDP for IPv6).
    ///
    /// Uses an entry in a usable state (REACHABLE, STALE, DELAY, PROBE, PERMANENT, NOARP). When
    /// there is none, sends one empty UDP datagram to the discard port of `address`, which makes
    /// the kernel resolve the neighbour, and re-reads the table every 20 ms until `timeout`.
    /// IPv6 link-local addresses are not supported (they need a scope).
    pub async fn resolve_neighbour(
        &self,
        address: IpAddr,
        timeout: Duration,
    ) -> Result<[u8; 6], NetlinkError> {
        let deadline = Instant::now() + timeout;
        let mut entry = self.neighbour(address).await?;
        if let Entry::Usable(mac) = entry {
            return Ok(mac);
        }
        self.trigger_resolution(address)?;
        loop {
            tokio::time::sleep_until(deadline.min(Instant::now() + POLL_INTERVAL)).await;
            entry = self.neighbour(address).await?;
            match entry {
                Entry::Usable(mac) => return Ok(mac),
                _ if Instant::now() >= deadline => break,
                _ => {}
            }
        }
        let state = match entry {
            Entry::Unusable(state) => state_name(state),
            _ => "none".to_string(),
        };
        Err(NetlinkError::Unresolved {
            address,
            timeout,
            state,
        })
    }

    /// Reads the neighbour table of `address`'s family and picks the entry for `address`,
    /// preferring a usable one when several interfaces have one.
    async fn neighbour(&self, address: IpAddr) -> Result<Entry, NetlinkError> {
        let family = match address {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        let messages: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("listing neighbours for {address}"),
                source,
            })?;
        let mut found = Entry::Missing;
        for message in messages
            .iter()
            .filter(|message| destination(message) == Some(address))
        {
            let state = u16::from(message.header.state);
            let mac = message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    NeighbourAttribute::LinkLayerAddress(bytes) => {
                        <[u8; 6]>::try_from(bytes.as_slice()).ok()
                    }
                    _ => None,
                });
            match mac {
                Some(mac) if state & NUD_USABLE != 0 => return Ok(Entry::Usable(mac)),
                _ => found = Entry::Unusable(state),
            }
        }
        Ok(found)
    }

    fn trigger_resolution(&self, address: IpAddr) -> Result<(), NetlinkError> {
        let socket = match address {
            IpAddr::V4(_) => Some(&self.trigger_v4),
            IpAddr::V6(_) => self.trigger_v6.as_ref(),
        };
        let error = |source| NetlinkError::Trigger { address, source };
        let socket = socket.ok_or_else(|| {
            error(io::Error::new(
                io::ErrorKind::Unsupported,
                "no IPv6 in this namespace",
            ))
        })?;
        match socket.send_to(&[], SocketAddr::new(address, DISCARD_PORT)) {
            Ok(_) => Ok(()),
            Err(source) if source.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(source) if source.kind() == io::ErrorKind::NetworkUnreachable => {
                Err(NetlinkError::NoRoute(address))
            }
            Err(source) => Err(error(source)),
        }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Looks up one interface with a connection opened for this call only. The connection belongs
/// to the namespace of the thread that first polls the returned future; prefer [`Netlink`] when
/// the runtime has several threads or the caller looks up more than once.
pub async fn interface(name: &str) -> Result<Interface, NetlinkError> {
    Netlink::new()?.interface(name).await
}

fn destination(message: &NeighbourMessage) -> Option<IpAddr> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        })
}

/// The `ip neigh` name of a neighbour state, for error messages.
fn state_name(state: u16) -> String {
    match state {
        0x00 => "NONE".to_string(),
        0x01 => "INCOMPLETE".to_string(),
        0x20 => "FAILED".to_string(),
        // Usable states without a 6-byte address (a NOARP entry on a point-to-point link).
        other => format!("{other:#04x} without an Ethernet address"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlab::{veth, Namespace};

    /// Runs `f` inside `namespace` on a current-thread runtime.
    fn run_in<T: Send>(namespace: &Namespace, f: impl AsyncFnOnce() -> T + Send) -> T {
        namespace
            .enter(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(f())
            })
            .unwrap()
    }

    /// Two namespaces joined by a veth pair `a0`—`b0`, with IPv4 and IPv6 addresses and no
    /// traffic between them yet.
    fn pair(tag: &str) -> (Namespace, Namespace) {
        let a = Namespace::create(tag).unwrap();
        let b = Namespace::create(tag).unwrap();
        veth(&a, "a0", &b, "b0").unwrap();
        a.ip("addr add 10.202.0.1/24 dev a0").unwrap();
        b.ip("addr add 10.202.0.2/24 dev b0").unwrap();
        a.ip("addr add fd00:202::1/64 dev a0 nodad").unwrap();
        b.ip("addr add fd00:202::2/64 dev b0 nodad").unwrap();
        (a, b)
    }

    #[test]
    fn netlink_interface_matches_the_kernel() {
        let (a, _b) = pair("nlif");
        a.ip("link set a0 mtu 1400").unwrap();
        let (expected_index, expected_mac) = (a.if_index("a0").unwrap(), a.mac("a0").unwrap());
        let (found, missing) = run_in(&a, async || {
            let netlink = Netlink::new().unwrap();
            (
                netlink.interface("a0").await.unwrap(),
                netlink.interface("nosuch0").await,
            )
        });
        assert_eq!(
            found,
            Interface {
                name: "a0".into(),
                index: expected_index,
                mac: expected_mac,
                mtu: 1400,
                up: true,
                running: true,
            }
        );
        let error = missing.unwrap_err();
        assert!(
            matches!(error, NetlinkError::InterfaceNotFound(ref name) if name == "nosuch0"),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "no interface named nosuch0");
    }

    #[test]
    fn netlink_addresses_are_added_listed_and_removed() {
        let (a, b) = pair("nladdr");
        let index = a.if_index("a0").unwrap();
        let v4: IpAddr = "10.77.0.100".parse().unwrap();
        let v6: IpAddr = "2001:db8:77::100".parse().unwrap();
        let (added, again, removed, running_down) = run_in(&a, async || {
            let netlink = Netlink::new().unwrap();
            netlink.add_address(index, v4, 32).await.unwrap();
            netlink.add_address(index, v6, 128).await.unwrap();
            // Adding twice and removing what is gone are not errors.
            netlink.add_address(index, v4, 32).await.unwrap();
            let added = netlink.addresses(index).await.unwrap();
            netlink.remove_address(index, v4).await.unwrap();
            netlink.remove_address(index, v4).await.unwrap();
            let again = netlink.addresses(index).await.unwrap();
            netlink.remove_address(index, v6).await.unwrap();
            let removed = netlink.addresses(index).await.unwrap();
            (added, again, removed, netlink.interface("a0").await.unwrap().running)
        });
        assert!(added.contains(&(v4, 32)) && added.contains(&(v6, 128)), "{added:?}");
        assert!(!again.contains(&(v4, 32)) && again.contains(&(v6, 128)), "{again:?}");
        assert!(!removed.iter().any(|(address, _)| *address == v4 || *address == v6), "{removed:?}");
        assert!(running_down, "the veth pair is up with a carrier");
        // The peer's end going down takes the carrier away.
        b.ip("link set b0 down").unwrap();
        let running = run_in(&a, async || Netlink::new().unwrap().interface("a0").await.unwrap().running);
        assert!(!running, "no carrier without the peer");
    }

    #[test]
    fn netlink_route_interface_is_the_veth() {
        let (a, _b) = pair("nlroute");
        let index = a.if_index("a0").unwrap();
        let (v4, v6, none) = run_in(&a, async || {
            let netlink = Netlink::new().unwrap();
            (
                netlink
                    .route_interface("10.202.0.2".parse().unwrap())
                    .await
                    .unwrap(),
                netlink
                    .route_interface("fd00:202::2".parse().unwrap())
                    .await
                    .unwrap(),
                netlink.route_interface("10.203.0.1".parse().unwrap()).await,
            )
        });
        assert_eq!((v4, v6), (index, index));
        assert!(matches!(none, Err(NetlinkError::NoRoute(_))), "{none:?}");
    }

    #[test]
    fn netlink_resolves_neighbours_on_demand() {
        let (a, b) = pair("nlneigh");
        let peer_mac = b.mac("b0").unwrap();
        let (v4, v6) = run_in(&a, async || {
            let netlink = Netlink::new().unwrap();
            let timeout = Duration::from_secs(3);
            (
                netlink
                    .resolve_neighbour("10.202.0.2".parse().unwrap(), timeout)
                    .await
                    .unwrap(),
                netlink
                    .resolve_neighbour("fd00:202::2".parse().unwrap(), timeout)
                    .await
                    .unwrap(),
            )
        });
        assert_eq!(v4, peer_mac);
        assert_eq!(v6, peer_mac);
    }

    #[test]
    fn netlink_unanswered_neighbour_times_out() {
        let (a, _b) = pair("nlsilent");
        let timeout = Duration::from_millis(500);
        let (result, elapsed) = run_in(&a, async || {
            let netlink = Netlink::new().unwrap();
            let start = std::time::Instant::now();
            // On the veth's subnet, but nobody has this address.
            let result = netlink
                .resolve_neighbour("10.202.0.99".parse().unwrap(), timeout)
                .await;
            (result, start.elapsed())
        });
        let error = result.unwrap_err();
        assert!(
            matches!(error, NetlinkError::Unresolved { .. }),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("no neighbour entry for 10.202.0.99 after 500ms"),
            "{error}"
        );
        assert!(
            elapsed >= timeout && elapsed < timeout + Duration::from_millis(400),
            "{elapsed:?}"
        );
    }
}
