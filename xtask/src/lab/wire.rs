//! The election as the router sees it: a packet socket on the router's side of the segment
//! records every VRRP advert with the kernel's receive time, and takeovers are read from that
//! record (the new master's first advert, the old master's last one before it), not from what
//! the daemons say about themselves.
//!
//! A few lines of raw socket rather than tcpdump or failover-ctl's own VRRP socket: xtask must
//! build without failover-ctl (see Cargo.toml), and one more package would be one more
//! prerequisite for a reader this small.

use std::{
    io,
    mem::{size_of, zeroed},
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use netlab::Namespace;

/// IP protocol number of VRRP.
const PROTOCOL_VRRP: u8 = 112;
/// How often the reader wakes to look at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// One advert on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    /// When the router's bridge received it: microseconds since the Unix epoch.
    pub at_us: u64,
    pub source: Ipv4Addr,
    pub vrid: u8,
    /// 0: the master resigns.
    pub priority: u8,
    pub interval_cs: u16,
}

/// Reads a VRRPv3 advert from an IPv4 packet (header length from IHL, never assumed 20);
/// `None` for anything else. Only what the lab reports is read: the checksum and the address
/// list are the daemons' business (and counted by them).
pub fn parse(packet: &[u8], at_us: u64) -> Option<Advert> {
    let first = *packet.first()?;
    let header = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header < 20 || *packet.get(9)? != PROTOCOL_VRRP {
        return None;
    }
    let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let vrrp = packet.get(header..header + 8)?;
    // Version 3, type 1 (advertisement).
    if vrrp[0] != 0x31 {
        return None;
    }
    Some(Advert {
        at_us,
        source,
        vrid: vrrp[1],
        priority: vrrp[2],
        interval_cs: u16::from_be_bytes([vrrp[4], vrrp[5]]) & 0x0fff,
    })
}

/// Records the adverts arriving on one interface of one namespace, from `start` until dropped.
pub struct Observer {
    adverts: Arc<Mutex<Vec<Advert>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Observer {
    pub fn start(namespace: &Namespace, interface: &str) -> Result<Self> {
        let socket = namespace.enter(|| open(interface))?.with_context(|| {
            format!(
                "opening a packet socket on {interface} in {}",
                namespace.name()
            )
        })?;
        let adverts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (adverts, stop) = (adverts.clone(), stop.clone());
            std::thread::spawn(move || read(&socket, &adverts, &stop))
        };
        Ok(Self {
            adverts,
            stop,
            thread: Some(thread),
        })
    }

    /// Every advert so far, in arrival order. Fails if the reader stopped on an error.
    pub fn adverts(&self) -> Result<Vec<Advert>> {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            bail!("the VRRP observer stopped reading");
        }
        Ok(self
            .adverts
            .lock()
            .map(|adverts| adverts.clone())
            .unwrap_or_default())
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn check(result: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if result < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(error.kind(), format!("{what}: {error}")));
    }
    Ok(result)
}

fn set_option<T>(socket: &OwnedFd, name: libc::c_int, value: &T, what: &str) -> io::Result<()> {
    // SAFETY: `value` is a live T and the length is its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    check(result, what).map(drop)
}

/// A packet socket for IPv4 on `interface` (of the calling thread's namespace) that keeps only
/// VRRP, with kernel receive timestamps and a receive timeout.
fn open(interface: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let protocol = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let socket = unsafe {
        let fd = check(
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            ),
            "socket(AF_PACKET)",
        )?;
        OwnedFd::from_raw_fd(fd)
    };
    // The segment also carries every forwarded packet: filter in the kernel, so the reader wakes
    // only for VRRP. A SOCK_DGRAM socket's filter sees the IP header at offset 0.
    let mut program = [
        libc::sock_filter {
            code: 0x30,
            jt: 0,
            jf: 0,
            k: 9,
        }, // ldb [9]: the protocol
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: u32::from(PROTOCOL_VRRP),
        }, // jeq
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        }, // ret: keep all of it
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        }, // ret: drop
    ];
    let filter = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    set_option(&socket, libc::SO_ATTACH_FILTER, &filter, "SO_ATTACH_FILTER")?;
    set_option(&socket, libc::SO_TIMESTAMPNS, &1_i32, "SO_TIMESTAMPNS")?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    set_option(&socket, libc::SO_RCVTIMEO, &timeout, "SO_RCVTIMEO")?;
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut address: libc::sockaddr_ll = unsafe { zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = ifindex as i32;
    // SAFETY: `address` is a sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    check(bound, "bind")?;
    Ok(socket)
}

/// Receives until `stop`, appending each advert with the kernel's receive time.
fn read(socket: &OwnedFd, adverts: &Mutex<Vec<Advert>>, stop: &AtomicBool) -> io::Result<()> {
    let mut buffer = [0_u8; 2048];
    // Room for one timespec control message, aligned as cmsghdr needs.
    let mut control = [0_u64; 16];
    while !stop.load(Ordering::Relaxed) {
        let mut vector = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the buffers outlive the call.
        let mut message: libc::msghdr = unsafe { zeroed() };
        message.msg_iov = &mut vector;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = size_of::<[u64; 16]>();
        // SAFETY: recvmsg into the buffers described by `message`.
        let length = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut message, 0) };
        if length < 0 {
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => continue,
                _ => return Err(error),
            }
        }
        let at_us = received_at(&message).unwrap_or_else(now_us);
        if let Some(advert) = parse(&buffer[..length as usize], at_us) {
            if let Ok(mut adverts) = adverts.lock() {
                adverts.push(advert);
            }
        }
    }
    Ok(())
}

/// The kernel's receive time from the SO_TIMESTAMPNS control message, µs since the epoch.
fn received_at(message: &libc::msghdr) -> Option<u64> {
    // SAFETY: walking the control messages the kernel wrote into `message`'s buffer.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET
                && (*header).cmsg_type == libc::SO_TIMESTAMPNS
            {
                let time: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast());
                return Some(time.tv_sec as u64 * 1_000_000 + time.tv_nsec as u64 / 1_000);
            }
            header = libc::CMSG_NXTHDR(message, header);
        }
    }
    None
}

/// Microseconds since the Unix epoch, the clock of the adverts' timestamps.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// A change of master, as the adverts show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Takeover {
    pub from: Option<Ipv4Addr>,
    pub to: Ipv4Addr,
    /// The new master's first advert.
    pub first_us: u64,
    /// The old master's last advert before that (its priority-0 advert when it resigned).
    pub last_us: Option<u64>,
}

impl Takeover {
    /// First advert of the new master minus the last of the old: the time without a master.
    pub fn gap_us(&self) -> Option<u64> {
        self.last_us.map(|last| self.first_us.saturating_sub(last))
    }
}

/// The master as the adverts so far show it.
#[derive(Debug, Clone, Copy)]
struct Master {
    source: Ipv4Addr,
    priority: u8,
    interval_cs: u16,
    last_us: u64,
    /// Its last advert had priority 0.
    resigned: bool,
}

/// Replays the adverts of group `vrid` (in arrival order): the current master, and every change
/// at or after `from_us`. A node other than the master takes over when the master resigned, fell
/// silent for two of its intervals (a backup waits at least three), or is beaten (a higher
/// priority, or an equal one from a higher address: RFC 9568 §6.4.3). Anything else from another
/// node is a loser's last advert (or a split brain) and changes nothing.
pub fn replay(adverts: &[Advert], vrid: u8, from_us: u64) -> (Vec<Takeover>, Option<Ipv4Addr>) {
    let mut master: Option<Master> = None;
    let mut takeovers = Vec::new();
    for advert in adverts.iter().filter(|advert| advert.vrid == vrid) {
        match &mut master {
            Some(current) if current.source == advert.source => {
                current.last_us = advert.at_us;
                current.resigned = advert.priority == 0;
                if advert.priority != 0 {
                    current.priority = advert.priority;
                    current.interval_cs = advert.interval_cs;
                }
            }
            _ if advert.priority == 0 => {}
            current => {
                let takes_over = current.as_ref().is_none_or(|current| {
                    let silence = u64::from(current.interval_cs) * 2 * 10_000;
                    current.resigned
                        || advert.at_us.saturating_sub(current.last_us) > silence
                        || (advert.priority, advert.source) > (current.priority, current.source)
                });
                if !takes_over {
                    continue;
                }
                if advert.at_us >= from_us {
                    takeovers.push(Takeover {
                        from: current.as_ref().map(|current| current.source),
                        to: advert.source,
                        first_us: advert.at_us,
                        last_us: current.as_ref().map(|current| current.last_us),
                    });
                }
                *current = Some(Master {
                    source: advert.source,
                    priority: advert.priority,
                    interval_cs: advert.interval_cs,
                    last_us: advert.at_us,
                    resigned: false,
                });
            }
        }
    }
    (
        takeovers,
        master
            .filter(|master| !master.resigned)
            .map(|master| master.source),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 3);

    fn advert(at_ms: u64, source: Ipv4Addr, priority: u8) -> Advert {
        Advert {
            at_us: at_ms * 1000,
            source,
            vrid: 51,
            priority,
            interval_cs: 10,
        }
    }

    /// `source` advertising every 100 ms from `from` (inclusive) to `to` (exclusive).
    fn every_interval(source: Ipv4Addr, priority: u8, from: u64, to: u64) -> Vec<Advert> {
        (from..to)
            .step_by(100)
            .map(|at| advert(at, source, priority))
            .collect()
    }

    #[test]
    fn parses_an_advert_after_ip_options() {
        // IHL 6 (one option word), protocol 112, from 10.100.2.3; VRRPv3 advert, VRID 51,
        // priority 100, one address, interval 10 cs.
        let mut packet = vec![
            0x46, 0, 0, 32, 0, 0, 0, 0, 255, 112, 0, 0, 10, 100, 2, 3, 224, 0, 0, 18,
        ];
        packet.extend([1, 1, 0, 0]);
        packet.extend([0x31, 51, 100, 1, 0x00, 10, 0, 0, 10, 100, 2, 100]);
        let advert = parse(&packet, 7).unwrap();
        assert_eq!(
            advert,
            Advert {
                at_us: 7,
                source: B,
                vrid: 51,
                priority: 100,
                interval_cs: 10
            }
        );
        packet[9] = 6;
        assert_eq!(parse(&packet, 7), None, "not VRRP");
        packet[9] = 112;
        packet[24] = 0x21;
        assert_eq!(parse(&packet, 7), None, "version 2");
        assert_eq!(parse(&packet[..26], 7), None, "truncated");
    }

    #[test]
    fn a_silent_master_is_replaced_after_the_gap() {
        let mut adverts = every_interval(A, 150, 0, 1000);
        // A's link goes down after its advert at 900 ms; B takes over 361 ms later.
        adverts.extend(every_interval(B, 100, 1261, 2000));
        let (takeovers, master) = replay(&adverts, 51, 950_000);
        assert_eq!(takeovers.len(), 1, "{takeovers:?}");
        assert_eq!((takeovers[0].from, takeovers[0].to), (Some(A), B));
        assert_eq!(takeovers[0].gap_us(), Some(361_000));
        assert_eq!(master, Some(B));
    }

    #[test]
    fn a_preempting_master_and_the_losers_last_advert() {
        let mut adverts = every_interval(B, 100, 0, 1050);
        adverts.push(advert(1020, A, 150));
        // B hears A and sends one last advert, then is silent.
        adverts.push(advert(1021, B, 100));
        adverts.extend(every_interval(A, 150, 1120, 1500));
        adverts.sort_by_key(|advert| advert.at_us);
        let (takeovers, master) = replay(&adverts, 51, 0);
        let changes: Vec<_> = takeovers
            .iter()
            .map(|takeover| (takeover.from, takeover.to))
            .collect();
        assert_eq!(changes, [(None, B), (Some(B), A)]);
        assert_eq!(
            takeovers[1].gap_us(),
            Some(20_000),
            "A's first advert after B's at 1000 ms"
        );
        assert_eq!(master, Some(A));
    }

    #[test]
    fn a_resignation_counts_from_the_priority_zero_advert() {
        let mut adverts = every_interval(A, 150, 0, 500);
        adverts.push(advert(450, A, 0));
        adverts.extend(every_interval(B, 100, 511, 800));
        adverts.sort_by_key(|advert| advert.at_us);
        let (takeovers, _) = replay(&adverts, 51, 440_000);
        assert_eq!(takeovers.len(), 1);
        assert_eq!(takeovers[0].gap_us(), Some(61_000));
        // Before B speaks, the group has no master.
        assert_eq!(replay(&adverts[..6], 51, 0).1, None);
    }

    #[test]
    fn other_groups_are_ignored() {
        let mut adverts = every_interval(A, 150, 0, 300);
        adverts.push(Advert {
            vrid: 52,
            ..advert(350, B, 200)
        });
        assert_eq!(replay(&adverts, 51, 0).1, Some(A));
    }
}
