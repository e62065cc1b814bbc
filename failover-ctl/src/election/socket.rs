//! The thin socket layer of VRRP: one raw IP-protocol-112 socket per interface and family,
//! joined to the VRRP multicast group, sending with TTL / hop limit 255 from a chosen source
//! and receiving with the TTL or hop limit and the destination of every packet, which the
//! receive checks need. Nothing here interprets an advert: see `codec`.
//!
//! IPv4 sends carry our own IP header (`IP_HDRINCL`), so source and TTL are exactly what we
//! say, multicast or unicast; received IPv4 packets come with their header, whose length is
//! read from IHL. IPv6 sends give the source through `IPV6_PKTINFO`; the hop limit and the
//! destination of received packets come as control messages.

use std::{
    io,
    mem::{self, MaybeUninit},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::AsRawFd,
};

use socket2::{Domain, InterfaceIndexOrAddress, MsgHdr, MsgHdrMut, Protocol, SockAddr, Socket, Type};
use tokio::io::{unix::AsyncFd, Interest};

use super::codec::{self, Discard, MULTICAST_V4, MULTICAST_V6, PROTOCOL, TTL};

/// Largest datagram read: 255 IPv6 addresses (4 088 bytes) plus headers fit.
const RECEIVE_BUFFER: usize = 8192;
/// DSCP CS6 (network control), as keepalived and routers send VRRP.
const TOS_NETWORK_CONTROL: u8 = 0xc0;

/// A received packet, before any VRRP check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// TTL or hop limit as received.
    pub ttl: u8,
    /// The VRRP message (the IP payload).
    pub message: Vec<u8>,
}

impl Datagram {
    /// The view the codec decodes.
    pub fn received(&self) -> codec::Received<'_> {
        codec::Received { source: self.source, destination: self.destination, ttl: self.ttl, message: &self.message }
    }
}

/// The VRRP socket of one interface and family.
#[derive(Debug)]
pub struct VrrpSocket {
    socket: AsyncFd<Socket>,
    index: u32,
    source: IpAddr,
}

impl VrrpSocket {
    /// Opens the socket on `interface` (index `index`), sending from `source`: for IPv4 an
    /// address of the interface, for IPv6 its link-local address (RFC 9568 §5.1.2.1). Must be
    /// called within a tokio runtime.
    pub fn open(interface: &str, index: u32, source: IpAddr) -> io::Result<Self> {
        let domain = if source.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
        let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(PROTOCOL))))?;
        socket.set_nonblocking(true)?;
        socket.bind_device(Some(interface.as_bytes()))?;
        match source {
            IpAddr::V4(_) => {
                socket.set_header_included_v4(true)?;
                socket.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(index))?;
                // Our own adverts are not news to us.
                socket.set_multicast_loop_v4(false)?;
            }
            IpAddr::V6(_) => {
                socket.join_multicast_v6(&MULTICAST_V6, index)?;
                socket.set_multicast_loop_v6(false)?;
                socket.set_multicast_if_v6(index)?;
                socket.set_multicast_hops_v6(u32::from(TTL))?;
                socket.set_unicast_hops_v6(u32::from(TTL))?;
                socket.set_recv_hoplimit_v6(true)?;
                set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
            }
        }
        // SAFETY: the socket owns its fd, which stays open and the same until the AsyncFd (its
        // only owner from here on) drops it.
        let socket = unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)?;
        Ok(Self { socket, index, source })
    }

    /// The address adverts are sent from.
    pub fn source(&self) -> IpAddr {
        self.source
    }

    /// Sends `message` (an encoded advert) to `destination`: the multicast group or a unicast
    /// peer, of the socket's family.
    pub async fn send(&self, destination: IpAddr, message: &[u8]) -> io::Result<()> {
        let packet;
        let (bytes, control, address) = match (self.source, destination) {
            (IpAddr::V4(source), IpAddr::V4(destination)) => {
                packet = ipv4_packet(source, destination, message);
                (&packet[..], None, SockAddr::from(SocketAddr::new(destination.into(), 0)))
            }
            (IpAddr::V6(source), IpAddr::V6(destination)) => {
                let scope = if needs_scope(destination) { self.index } else { 0 };
                let address = SockAddr::from(SocketAddrV6::new(destination, 0, 0, scope));
                (message, Some(pktinfo_control(source, self.index)), address)
            }
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{destination} is not of the family of {}", self.source))),
        };
        let buffers = [io::IoSlice::new(bytes)];
        loop {
            let mut guard = self.socket.ready(Interest::WRITABLE).await?;
            let mut header = MsgHdr::new().with_addr(&address).with_buffers(&buffers);
            if let Some(control) = &control {
                header = header.with_control(control);
            }
            match guard.try_io(|socket| socket.get_ref().sendmsg(&header, 0)) {
                Ok(result) => return result.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives the next packet. `Ok(Err(discard))`: something arrived that is not a usable
    /// IPv4 packet (its header does not add up); it is to be counted, not acted on.
    pub async fn recv(&self) -> io::Result<Result<Datagram, Discard>> {
        loop {
            let mut guard = self.socket.ready(Interest::READABLE).await?;
            match guard.try_io(|socket| self.receive_now(socket.get_ref())) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    fn receive_now(&self, socket: &Socket) -> io::Result<Result<Datagram, Discard>> {
        let mut buffer = [MaybeUninit::<u8>::uninit(); RECEIVE_BUFFER];
        let mut control = [MaybeUninit::<u8>::uninit(); 128];
        // SAFETY: an all-zero sockaddr_storage is a valid (unspecified) address.
        let mut address = unsafe { SockAddr::new(mem::zeroed(), mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t) };
        let (length, control_length) = {
            let mut buffers = [socket2::MaybeUninitSlice::new(&mut buffer)];
            let mut header = MsgHdrMut::new().with_addr(&mut address).with_buffers(&mut buffers).with_control(&mut control);
            let length = socket.recvmsg(&mut header, 0)?;
            (length, header.control_len())
        };
        // SAFETY: recvmsg initialised the first `length` bytes and `control_length` control bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), length) };
        let control = unsafe { std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), control_length) };
        match self.source {
            IpAddr::V4(_) => Ok(codec::split_ipv4(bytes).map(|(header, message)| Datagram {
                source: header.source.into(),
                destination: header.destination.into(),
                ttl: header.ttl,
                message: message.to_vec(),
            })),
            IpAddr::V6(_) => {
                let source = address.as_socket_ipv6().map(|a| *a.ip()).unwrap_or(Ipv6Addr::UNSPECIFIED);
                let (ttl, destination) = ipv6_control(control);
                Ok(Ok(Datagram { source: source.into(), destination: destination.into(), ttl, message: bytes.to_vec() }))
            }
        }
    }
}

/// Link-local and multicast destinations need the interface as scope.
fn needs_scope(address: Ipv6Addr) -> bool {
    address.is_multicast() || address.segments()[0] & 0xffc0 == 0xfe80
}

/// The IPv4 packet around `message`: our header, so the kernel sends exactly this source and
/// TTL (it fills in the identification and the header checksum).
fn ipv4_packet(source: Ipv4Addr, destination: Ipv4Addr, message: &[u8]) -> Vec<u8> {
    let total = (20 + message.len()) as u16;
    let mut packet = Vec::with_capacity(usize::from(total));
    packet.extend_from_slice(&[0x45, TOS_NETWORK_CONTROL]);
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, TTL, PROTOCOL, 0, 0]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    packet.extend_from_slice(message);
    packet
}

/// An `IPV6_PKTINFO` control message naming the source address and interface.
fn pktinfo_control(source: Ipv6Addr, index: u32) -> Vec<u8> {
    let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: source.octets() }, ipi6_ifindex: index };
    // SAFETY: CMSG_SPACE / CMSG_LEN are pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(mem::size_of::<libc::in6_pktinfo>() as u32) } as usize;
    let mut buffer = vec![0u8; space];
    // SAFETY: the buffer holds one control message of this size; the header is written through
    // a pointer the libc macros derive from a msghdr describing exactly this buffer.
    unsafe {
        let mut header: libc::msghdr = mem::zeroed();
        header.msg_control = buffer.as_mut_ptr().cast();
        header.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&header);
        (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
        (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<libc::in6_pktinfo>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
    }
    buffer
}

/// The hop limit and destination address from received IPv6 control messages (0 and :: when
/// absent, which the receive checks then refuse).
fn ipv6_control(control: &[u8]) -> (u8, Ipv6Addr) {
    let (mut hop_limit, mut destination) = (0u8, Ipv6Addr::UNSPECIFIED);
    // SAFETY: the msghdr describes exactly `control`; the libc macros stay inside it, and every
    // data read is unaligned and sized by the message type.
    unsafe {
        let mut header: libc::msghdr = mem::zeroed();
        header.msg_control = control.as_ptr() as *mut _;
        header.msg_controllen = control.len();
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let value = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    hop_limit = u8::try_from(value).unwrap_or(0);
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    destination = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    (hop_limit, destination)
}

fn set_int_option(socket: &Socket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let result = unsafe {
        libc::setsockopt(socket.as_raw_fd(), level, name, (&value as *const libc::c_int).cast(), mem::size_of::<libc::c_int>() as libc::socklen_t)
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
