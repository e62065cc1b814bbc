//! Telling the segment that the group's addresses moved: gratuitous ARP for IPv4 (an ARP
//! request whose sender and target address are the moved address, RFC 5227 §3 announcement
//! form) and unsolicited neighbour advertisements with the Override flag for IPv6 (RFC 4861
//! §7.2.6), both from the interface's MAC, so neighbours that had the old master's MAC in
//! their cache replace it at once.

use std::{
    io,
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ARP_REQUEST: u16 = 1;
const BROADCAST: [u8; 6] = [0xff; 6];
const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// The Override flag of a neighbour advertisement (RFC 4861 §4.4).
const NA_OVERRIDE: u32 = 0x2000_0000;
/// Option "Target Link-Layer Address" (RFC 4861 §4.6.1).
const OPTION_TARGET_LINK_LAYER: u8 = 2;
/// All-nodes multicast.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The Ethernet frame of a gratuitous ARP for `address` from `mac`.
pub fn gratuitous_arp(mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&BROADCAST);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    frame.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    frame.extend_from_slice(&[6, 4]);
    frame.extend_from_slice(&ARP_REQUEST.to_be_bytes());
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&address.octets());
    frame
}

/// The ICMPv6 message of an unsolicited neighbour advertisement for `address` from `mac`
/// (checksum left zero: the kernel fills it in for ICMPv6 raw sockets).
pub fn unsolicited_na(mac: [u8; 6], address: Ipv6Addr) -> Vec<u8> {
    let mut message = Vec::with_capacity(32);
    message.extend_from_slice(&[ICMPV6_NEIGHBOR_ADVERTISEMENT, 0, 0, 0]);
    message.extend_from_slice(&NA_OVERRIDE.to_be_bytes());
    message.extend_from_slice(&address.octets());
    message.extend_from_slice(&[OPTION_TARGET_LINK_LAYER, 1]);
    message.extend_from_slice(&mac);
    message
}

/// Sends announcements for the group's addresses on one interface.
#[derive(Debug)]
pub struct Announcer {
    index: u32,
    mac: [u8; 6],
    /// AF_PACKET socket for ARP frames.
    packet: OwnedFd,
    interface: String,
    /// The source of neighbour advertisements.
    link_local: Option<Ipv6Addr>,
    /// ICMPv6 socket for neighbour advertisements, bound to `link_local`; opened with the
    /// announcer, or at the first IPv6 announcement when the link-local address was still
    /// tentative (duplicate address detection not finished: it cannot be bound before).
    icmpv6: std::sync::Mutex<Option<Socket>>,
}

impl Announcer {
    /// Opens the sockets on interface `index` (named `interface`) with MAC `mac`; `link_local`
    /// is the source of neighbour advertisements.
    pub fn open(interface: &str, index: u32, mac: [u8; 6], link_local: Option<Ipv6Addr>) -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let packet = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut announcer =
            Self { index, mac, packet, interface: interface.to_owned(), link_local, icmpv6: std::sync::Mutex::new(None) };
        // Opened now, in the caller's network namespace, where possible; a tentative link-local
        // address is retried at the first announcement.
        if link_local.is_some() {
            match announcer.open_icmpv6() {
                Ok(socket) => announcer.icmpv6 = std::sync::Mutex::new(Some(socket)),
                Err(error) if error.kind() == io::ErrorKind::AddrNotAvailable => {}
                Err(error) => return Err(error),
            }
        }
        Ok(announcer)
    }

    fn open_icmpv6(&self) -> io::Result<Socket> {
        let Some(source) = self.link_local else {
            return Err(io::Error::new(io::ErrorKind::AddrNotAvailable, "no IPv6 link-local address to announce from"));
        };
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        socket.bind_device(Some(self.interface.as_bytes()))?;
        socket.set_multicast_if_v6(self.index)?;
        socket.set_multicast_hops_v6(255)?;
        socket.set_unicast_hops_v6(255)?;
        socket.bind(&SockAddr::from(SocketAddrV6::new(source, 0, 0, self.index)))?;
        Ok(socket)
    }

    /// One announcement per address.
    pub fn announce(&self, addresses: &[IpAddr]) -> io::Result<()> {
        for address in addresses {
            match address {
                IpAddr::V4(address) => self.send_frame(&gratuitous_arp(self.mac, *address))?,
                IpAddr::V6(address) => {
                    let mut icmpv6 = self.icmpv6.lock().map_err(|_| io::Error::other("announcer lock poisoned"))?;
                    if icmpv6.is_none() {
                        *icmpv6 = Some(self.open_icmpv6()?);
                    }
                    let destination = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, self.index));
                    if let Some(socket) = icmpv6.as_ref() {
                        socket.send_to(&unsolicited_na(self.mac, *address), &destination)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set name the interface.
        let mut address: libc::sockaddr_ll = unsafe { mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETHERTYPE_ARP.to_be();
        address.sll_ifindex = self.index as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&BROADCAST);
        // SAFETY: frame and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.packet.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn gratuitous_arp_names_the_address_twice() {
        let frame = gratuitous_arp(MAC, Ipv4Addr::new(192, 0, 2, 100));
        #[rustfmt::skip]
        let expected = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x06, // Ethernet
            0, 1, 0x08, 0x00, 6, 4, 0, 1,                                              // request
            0x02, 0, 0, 0, 0, 0x0a, 192, 0, 2, 100,                                    // sender
            0, 0, 0, 0, 0, 0, 192, 0, 2, 100,                                          // target
        ];
        assert_eq!(frame, expected);
    }

    #[test]
    fn unsolicited_na_overrides_with_our_mac() {
        let target: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let message = unsolicited_na(MAC, target);
        assert_eq!(message.len(), 32);
        assert_eq!(message[0], 136);
        assert_eq!(message[4], 0x20, "Override set, Router and Solicited clear");
        assert_eq!(&message[8..24], &target.octets());
        assert_eq!(&message[24..32], &[2, 1, 2, 0, 0, 0, 0, 0x0a]);
    }
}
