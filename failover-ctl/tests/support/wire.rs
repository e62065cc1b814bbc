//! The wire as the election tests judge it: an observer on the shared segment that records every
//! VRRP advert (kernel receive time, source MAC and address, TTL, VRID, priority) and every ARP
//! packet through a packet socket, the questions the tests ask of that record (who is master,
//! when did the mastership move), and an injector that sends hand-built adverts, hostile or
//! carrying IPv4 options, with its own IPv4 header.

use std::{
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use netlab::Namespace;

use super::topology::wait_for;

const ETH_P_ALL: u16 = 0x0003;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_ARP: u16 = 0x0806;
const VRRP: u8 = 112;

/// Time as the kernel stamps packets: since the Unix epoch.
pub fn wall_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// One VRRP packet seen on the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Kernel receive time (since the epoch).
    pub at: Duration,
    pub source_mac: [u8; 6],
    pub source: IpAddr,
    pub destination: IpAddr,
    pub ttl: u8,
    /// High nibble of the first byte.
    pub version: u8,
    pub vrid: u8,
    pub priority: u8,
    /// Sent by the observer itself (an injection).
    pub outgoing: bool,
}

/// One ARP packet seen on the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpSeen {
    pub at: Duration,
    pub sender_mac: [u8; 6],
    pub sender: Ipv4Addr,
    pub target: Ipv4Addr,
}

#[derive(Default)]
struct Record {
    adverts: Vec<Seen>,
    arps: Vec<ArpSeen>,
}

/// Records the segment from the observer's interface until dropped.
pub struct Observer {
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Opens an `AF_PACKET` socket for every protocol on `interface` (called inside the namespace),
/// with kernel timestamps and a 50 ms receive timeout so the reader can stop.
fn packet_socket(interface: &str) -> OwnedFd {
    // SAFETY: plain socket calls on a descriptor we own; every option value has its C size.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be()));
        assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let name = std::ffi::CString::new(interface).unwrap();
        let index = libc::if_nametoindex(name.as_ptr());
        assert!(index != 0, "no interface {interface}");
        let mut address: libc::sockaddr_ll = mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETH_P_ALL.to_be();
        address.sll_ifindex = index as i32;
        let bound = libc::bind(fd.as_raw_fd(), (&address as *const libc::sockaddr_ll).cast(), mem::size_of::<libc::sockaddr_ll>() as u32);
        assert!(bound == 0, "bind the packet socket: {}", std::io::Error::last_os_error());
        let on: libc::c_int = 1;
        let set = libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, (&on as *const libc::c_int).cast(), 4);
        assert!(set == 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        let set = libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as u32,
        );
        assert!(set == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        fd
    }
}

/// Reads one frame: its bytes, kernel time and whether we sent it. `None` on timeout.
fn read_frame(fd: &OwnedFd, buffer: &mut [u8]) -> Option<(usize, Duration, bool)> {
    // SAFETY: recvmsg into buffers we own, described exactly by the msghdr; control messages
    // are walked with the libc macros inside the control buffer.
    unsafe {
        let mut address: libc::sockaddr_ll = mem::zeroed();
        let mut control = [0u8; 128];
        let mut iov = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
        let mut header: libc::msghdr = mem::zeroed();
        header.msg_name = (&mut address as *mut libc::sockaddr_ll).cast();
        header.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as u32;
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = control.len();
        let length = libc::recvmsg(fd.as_raw_fd(), &mut header, 0);
        if length < 0 {
            return None;
        }
        let mut at = wall_now();
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_TIMESTAMPNS {
                let stamp = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                at = Duration::new(stamp.tv_sec as u64, stamp.tv_nsec as u32);
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
        Some((length as usize, at, address.sll_pkttype == libc::PACKET_OUTGOING))
    }
}

/// The VRRP packet in an Ethernet frame, if it is one.
fn parse_vrrp(frame: &[u8], at: Duration, outgoing: bool) -> Option<Seen> {
    let source_mac: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let packet = frame.get(14..)?;
    let (source, destination, ttl, message) = match ethertype {
        ETHERTYPE_IPV4 => {
            let header_len = usize::from(packet.first()? & 0x0f) * 4;
            if *packet.get(9)? != VRRP {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
            let source = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?);
            let destination = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(16..20)?).ok()?);
            (IpAddr::V4(source), IpAddr::V4(destination), packet[8], packet.get(header_len..total.min(packet.len()))?)
        }
        ETHERTYPE_IPV6 => {
            if *packet.get(6)? != VRRP {
                return None;
            }
            let length = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
            let source = Ipv6Addr::from(<[u8; 16]>::try_from(packet.get(8..24)?).ok()?);
            let destination = Ipv6Addr::from(<[u8; 16]>::try_from(packet.get(24..40)?).ok()?);
            (IpAddr::V6(source), IpAddr::V6(destination), packet[7], packet.get(40..(40 + length).min(packet.len()))?)
        }
        _ => return None,
    };
    Some(Seen { at, source_mac, source, destination, ttl, version: message.first()? >> 4, vrid: *message.get(1)?, priority: *message.get(2)?, outgoing })
}

fn parse_arp(frame: &[u8], at: Duration) -> Option<ArpSeen> {
    if u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) != ETHERTYPE_ARP {
        return None;
    }
    let arp = frame.get(14..42)?;
    Some(ArpSeen {
        at,
        sender_mac: arp[8..14].try_into().ok()?,
        sender: Ipv4Addr::from(<[u8; 4]>::try_from(&arp[14..18]).ok()?),
        target: Ipv4Addr::from(<[u8; 4]>::try_from(&arp[24..28]).ok()?),
    })
}

impl Observer {
    pub fn start(namespace: &Namespace, interface: &str) -> Self {
        let fd = namespace.enter(|| packet_socket(interface)).unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (record, stop) = (record.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 65536];
                while !stop.load(Ordering::Acquire) {
                    let Some((length, at, outgoing)) = read_frame(&fd, &mut buffer) else {
                        continue;
                    };
                    let frame = &buffer[..length];
                    if let Some(seen) = parse_vrrp(frame, at, outgoing) {
                        record.lock().unwrap().adverts.push(seen);
                    } else if let Some(arp) = parse_arp(frame, at) {
                        record.lock().unwrap().arps.push(arp);
                    }
                }
            })
        };
        Self { record, stop, thread: Some(thread) }
    }

    /// Every advert seen so far, in arrival order (the observer's own injections excluded).
    pub fn adverts(&self) -> Vec<Seen> {
        self.record.lock().unwrap().adverts.iter().filter(|seen| !seen.outgoing).cloned().collect()
    }

    pub fn arps(&self) -> Vec<ArpSeen> {
        self.record.lock().unwrap().arps.clone()
    }

    /// Adverts of `vrid` with a priority above 0 (a master's) from `from` on.
    pub fn master_adverts(&self, vrid: u8, from: Duration) -> Vec<Seen> {
        self.adverts().into_iter().filter(|seen| seen.vrid == vrid && seen.priority > 0 && seen.at >= from).collect()
    }

    /// The sources that advertised as master of `vrid` in `[from, to)`.
    pub fn masters_between(&self, vrid: u8, from: Duration, to: Duration) -> Vec<IpAddr> {
        let mut sources: Vec<IpAddr> = self.master_adverts(vrid, from).into_iter().filter(|seen| seen.at < to).map(|seen| seen.source).collect();
        sources.sort();
        sources.dedup();
        sources
    }

    /// Waits until `source` alone has advertised `vrid` for `steady`, all of it after `since`
    /// (at least one advert per 100 ms interval but one, none from anyone else); returns when
    /// that stretch began.
    pub fn wait_sole_master(&self, vrid: u8, source: IpAddr, since: Duration, steady: Duration, limit: Duration) -> Duration {
        let found = wait_for(limit, || {
            let window = wall_now().checked_sub(steady).filter(|window| *window >= since)?;
            let adverts: Vec<Seen> = self.master_adverts(vrid, window);
            let ours = adverts.iter().filter(|seen| seen.source == source).count();
            let others = adverts.iter().any(|seen| seen.source != source);
            (!others && ours as u128 + 1 >= steady.as_millis() / 100).then_some(window)
        });
        found.unwrap_or_else(|| {
            panic!(
                "{source} was not the sole master of VRID {vrid} for {steady:?} within {limit:?}; the wire: {}",
                self.describe(vrid, since.max(wall_now().saturating_sub(limit + steady)))
            )
        })
    }

    /// The first master advert of `source` for `vrid` at or after `from`.
    pub fn first_from(&self, vrid: u8, source: IpAddr, from: Duration) -> Option<Seen> {
        self.master_adverts(vrid, from).into_iter().find(|seen| seen.source == source)
    }

    /// The last advert (any priority) of `source` for `vrid` before `before`.
    pub fn last_before(&self, vrid: u8, source: IpAddr, before: Duration) -> Option<Seen> {
        self.adverts().into_iter().rfind(|seen| seen.vrid == vrid && seen.source == source && seen.at < before)
    }

    /// Waits for the mastership of `vrid` to move from `old` to `new` after `since`: returns the
    /// takeover as the wire shows it, the first master advert of `new` minus the last advert of
    /// `old` before it.
    pub fn takeover(&self, vrid: u8, old: IpAddr, new: IpAddr, since: Duration, limit: Duration) -> Takeover {
        let first = wait_for(limit, || self.first_from(vrid, new, since));
        let first = first.unwrap_or_else(|| {
            panic!("no master advert from {new} within {limit:?}; the wire: {}", self.describe(vrid, since.saturating_sub(Duration::from_secs(1))))
        });
        let last = self.last_before(vrid, old, first.at).unwrap_or_else(|| {
            panic!("no advert from {old} before {new} took over; the wire: {}", self.describe(vrid, since.saturating_sub(Duration::from_secs(1))))
        });
        Takeover { last_old: last.clone(), first_new: first.clone(), took: first.at.saturating_sub(last.at) }
    }

    /// A readable summary of the adverts of `vrid` from `from` on: runs of the same source and
    /// priority with their times relative to `from`.
    pub fn describe(&self, vrid: u8, from: Duration) -> String {
        let mut text = String::new();
        let mut run: Option<(IpAddr, u8, Duration, Duration, usize)> = None;
        let flush = |text: &mut String, run: &Option<(IpAddr, u8, Duration, Duration, usize)>| {
            if let Some((source, priority, first, last, count)) = run {
                text.push_str(&format!(
                    "\n  {source} prio {priority}: {count} adverts from +{} to +{} ms",
                    first.saturating_sub(from).as_millis(),
                    last.saturating_sub(from).as_millis()
                ));
            }
        };
        for seen in self.adverts().into_iter().filter(|seen| seen.vrid == vrid && seen.at >= from) {
            match &mut run {
                Some((source, priority, _, last, count)) if *source == seen.source && *priority == seen.priority => {
                    *last = seen.at;
                    *count += 1;
                }
                _ => {
                    flush(&mut text, &run);
                    run = Some((seen.source, seen.priority, seen.at, seen.at, 1));
                }
            }
        }
        flush(&mut text, &run);
        if text.is_empty() {
            text.push_str(" (no adverts)");
        }
        text
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A mastership move as the wire shows it.
#[derive(Debug, Clone)]
pub struct Takeover {
    pub last_old: Seen,
    pub first_new: Seen,
    pub took: Duration,
}

/// Sends IPv4 packets with a header we build (`IPPROTO_RAW`: the kernel fills in only the
/// header checksum, and the identification when it is zero) out of one interface.
pub struct Injector {
    fd: OwnedFd,
}

impl Injector {
    pub fn open(namespace: &Namespace, interface: &str) -> Self {
        let interface = interface.to_owned();
        let fd = namespace
            .enter(move || {
                // SAFETY: plain socket calls on a descriptor we own.
                unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
                    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
                    let fd = OwnedFd::from_raw_fd(fd);
                    let bound = libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_BINDTODEVICE, interface.as_ptr().cast(), interface.len() as u32);
                    assert!(bound == 0, "SO_BINDTODEVICE: {}", std::io::Error::last_os_error());
                    fd
                }
            })
            .unwrap();
        Self { fd }
    }

    /// Sends `message` as a VRRP packet from `source` to `destination` with this TTL and IPv4
    /// options (a multiple of 4 bytes).
    pub fn send(&self, source: Ipv4Addr, destination: Ipv4Addr, ttl: u8, options: &[u8], message: &[u8]) {
        self.send_ip(VRRP, source, destination, ttl, options, message);
    }

    /// Sends `payload` as a UDP datagram from `source` (any address: this is how a peer's
    /// datagram is forged) to `destination`, without a UDP checksum (0: none, valid in IPv4).
    pub fn send_udp(&self, source: std::net::SocketAddrV4, destination: std::net::SocketAddrV4, payload: &[u8]) {
        let mut datagram = Vec::with_capacity(8 + payload.len());
        datagram.extend_from_slice(&source.port().to_be_bytes());
        datagram.extend_from_slice(&destination.port().to_be_bytes());
        datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        datagram.extend_from_slice(&[0, 0]);
        datagram.extend_from_slice(payload);
        self.send_ip(libc::IPPROTO_UDP as u8, *source.ip(), *destination.ip(), 64, &[], &datagram);
    }

    fn send_ip(&self, protocol: u8, source: Ipv4Addr, destination: Ipv4Addr, ttl: u8, options: &[u8], message: &[u8]) {
        assert!(options.len().is_multiple_of(4) && options.len() <= 40, "IPv4 options come in 4-byte words, at most 40 bytes");
        let header_len = 20 + options.len();
        let total = (header_len + message.len()) as u16;
        let mut packet = vec![0x40 | (header_len / 4) as u8, 0xc0];
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 0, ttl, protocol, 0, 0]);
        packet.extend_from_slice(&source.octets());
        packet.extend_from_slice(&destination.octets());
        packet.extend_from_slice(options);
        packet.extend_from_slice(message);
        // SAFETY: sendto with a buffer and an address we own.
        let sent = unsafe {
            let mut address: libc::sockaddr_in = mem::zeroed();
            address.sin_family = libc::AF_INET as u16;
            address.sin_addr.s_addr = u32::from_ne_bytes(destination.octets());
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&address as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(sent, packet.len() as isize, "inject: {}", std::io::Error::last_os_error());
    }
}
