//! The packet monitor's user side: a [`Monitor`] writes the data plane's `MONITOR_FILTER`
//! (the only map not written by the daemon, see `failover_common::monitor`), keeps it alive
//! while it runs, reads the matching packets' records from the `MONITOR_RECORDS` ring buffer,
//! and switches the filter off again when dropped. `failover-ctl monitor` and the tests use it.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    Ebpf,
};
use failover_common::{
    maps::names,
    monitor::{prefix_mask, MonitorFilter, MonitorRecord, MATCH_BACKEND, MATCH_CLIENT, MATCH_VIP, MONITOR_ENABLED},
};
use thiserror::Error;

use crate::{
    address::to_words,
    maps::{MapSource, MapWriteError},
    paths::InstancePaths,
};

/// How long a filter stays live without renewal: a monitor killed without clearing it costs the
/// data plane at most this long, then the first packet switches it off.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often a running monitor renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum MonitorError {
    #[error(transparent)]
    Map(#[from] MapWriteError),
    #[error("map {name}: {source}")]
    Access { name: &'static str, #[source] source: aya::maps::MapError },
    #[error("another monitor (pid {0}) is attached to this instance; stop it first")]
    Busy(u32),
    #[error("client prefix /{length} is longer than the {bits} bits of {address}")]
    Prefix { address: IpAddr, length: u8, bits: u8 },
    #[error("waiting for the ring buffer: {0}")]
    Wait(#[source] io::Error),
    #[error("reading the clock: {0}")]
    Clock(#[source] io::Error),
}

fn access(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> MonitorError {
    move |source| MonitorError::Access { name, source }
}

/// A VIP to match: its address, and optionally its port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipMatch {
    pub address: IpAddr,
    /// Host order; `None` = every port.
    pub port: Option<u16>,
    /// IP protocol number; `None` = every protocol.
    pub protocol: Option<u8>,
}

/// Which packets to report: all conditions that are set must hold; none set = every packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Packets to this VIP (for an ICMP error routed to a backend: about a flow of it).
    pub vip: Option<VipMatch>,
    /// Packets from this client prefix (address, prefix length).
    pub client: Option<(IpAddr, u8)>,
    /// Packets sent to this backend.
    pub backend: Option<IpAddr>,
}

impl Filter {
    /// The map value for this filter, not yet enabled.
    pub fn to_value(&self, expires_ns: u64, owner_pid: u32) -> Result<MonitorFilter, MonitorError> {
        let mut value = MonitorFilter { expires_ns, owner_pid, ..MonitorFilter::default() };
        if let Some(vip) = self.vip {
            let (address, family) = to_words(vip.address);
            value.matches |= MATCH_VIP;
            value.vip_address = address;
            value.vip_family = family;
            value.vip_port = vip.port.unwrap_or(0).to_be();
            value.vip_protocol = vip.protocol.unwrap_or(0);
        }
        if let Some((address, length)) = self.client {
            let bits = if address.is_ipv4() { 32 } else { 128 };
            if length > bits {
                return Err(MonitorError::Prefix { address, length, bits });
            }
            let (words, family) = to_words(address);
            let mask = prefix_mask(length);
            value.matches |= MATCH_CLIENT;
            value.client_family = family;
            value.client_mask = mask;
            value.client_address = [0, 1, 2, 3].map(|index| words[index] & mask[index]);
        }
        if let Some(backend) = self.backend {
            let (address, family) = to_words(backend);
            value.matches |= MATCH_BACKEND;
            value.backend_address = address;
            value.backend_family = family;
        }
        Ok(value)
    }
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock the program compares `expires_ns` with
/// (`bpf_ktime_get_coarse_ns`).
fn coarse_now_ns() -> Result<u64, MonitorError> {
    crate::sys::coarse_now_ns().map_err(MonitorError::Clock)
}

fn clock_ns(clock: libc::clockid_t) -> Result<u64, MonitorError> {
    crate::sys::clock_ns(clock).map_err(MonitorError::Clock)
}

/// Nanoseconds to add to a record's `time_ns` (`CLOCK_MONOTONIC`) for Unix time.
pub fn monotonic_to_unix_ns() -> Result<i128, MonitorError> {
    let unix = clock_ns(libc::CLOCK_REALTIME)?;
    let monotonic = clock_ns(libc::CLOCK_MONOTONIC)?;
    Ok(unix as i128 - monotonic as i128)
}

/// Whether process `pid` exists (a filter owned by a dead process is stale).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    unsafe { libc::kill(pid, 0) == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// An attached monitor: while it lives, matching packets are recorded; dropping it switches the
/// filter off.
pub struct Monitor {
    filter: Array<MapData, MonitorFilter>,
    records: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// The value this monitor wrote, while it is attached.
    attached: Option<MonitorFilter>,
    renewed: Instant,
    lost_at_start: u64,
}

impl Monitor {
    /// The monitor maps of an instance's pinned data plane.
    pub fn open_pinned(paths: &InstancePaths) -> Result<Self, MonitorError> {
        Self::open(MapSource::Pinned(paths))
    }

    /// The monitor maps of a freshly loaded object (taken out of it), for tests.
    pub fn from_object(ebpf: &mut Ebpf) -> Result<Self, MonitorError> {
        Self::open(MapSource::Object(ebpf))
    }

    fn open(mut source: MapSource<'_>) -> Result<Self, MonitorError> {
        Ok(Self {
            filter: source.typed(names::MONITOR_FILTER)?,
            records: source.typed(names::MONITOR_RECORDS)?,
            lost: source.typed(names::MONITOR_LOST)?,
            attached: None,
            renewed: Instant::now(),
            lost_at_start: 0,
        })
    }

    /// The filter entry as the data plane sees it.
    pub fn current(&self) -> Result<MonitorFilter, MonitorError> {
        self.filter.get(&0, 0).map_err(access(names::MONITOR_FILTER))
    }

    /// Attaches with `filter`: refuses while another live process holds a live filter, writes the
    /// match fields, then enables them (the write order in `failover_common::monitor`). Records
    /// left in the ring buffer by an earlier monitor are discarded first.
    pub fn attach(&mut self, filter: &Filter) -> Result<(), MonitorError> {
        let pid = std::process::id();
        let current = self.current()?;
        if current.enabled != 0
            && current.owner_pid != pid
            && current.expires_ns > coarse_now_ns()?
            && alive(current.owner_pid)
        {
            return Err(MonitorError::Busy(current.owner_pid));
        }
        let mut value = filter.to_value(coarse_now_ns()? + LEASE.as_nanos() as u64, pid)?;
        self.filter.set(0, value, 0).map_err(access(names::MONITOR_FILTER))?;
        while self.records.next().is_some() {}
        self.lost_at_start = self.lost_total()?;
        value.enabled = MONITOR_ENABLED;
        self.filter.set(0, value, 0).map_err(access(names::MONITOR_FILTER))?;
        self.attached = Some(value);
        self.renewed = Instant::now();
        Ok(())
    }

    /// Moves the lease on when `RENEW_EVERY` has passed since the last renewal; call it from the
    /// reading loop. Only `expires_ns` changes.
    pub fn renew(&mut self) -> Result<(), MonitorError> {
        let Some(mut value) = self.attached else { return Ok(()) };
        if self.renewed.elapsed() < RENEW_EVERY {
            return Ok(());
        }
        value.expires_ns = coarse_now_ns()? + LEASE.as_nanos() as u64;
        self.filter.set(0, value, 0).map_err(access(names::MONITOR_FILTER))?;
        self.attached = Some(value);
        self.renewed = Instant::now();
        Ok(())
    }

    /// Switches the filter off (its fields stay, `enabled` becomes 0). Idempotent.
    pub fn detach(&mut self) -> Result<(), MonitorError> {
        let Some(mut value) = self.attached.take() else { return Ok(()) };
        // Someone else took over a filter this monitor let expire: leave theirs alone.
        if self.current()?.owner_pid != value.owner_pid {
            return Ok(());
        }
        value.enabled = 0;
        self.filter.set(0, value, 0).map_err(access(names::MONITOR_FILTER))
    }

    /// The next record waiting in the ring buffer, if any.
    pub fn next_record(&mut self) -> Option<MonitorRecord> {
        let item = self.records.next()?;
        if item.len() < size_of::<MonitorRecord>() {
            return None;
        }
        // SAFETY: the program writes whole `MonitorRecord`s (checked length); a plain-data type
        // read unaligned.
        Some(unsafe { item.as_ptr().cast::<MonitorRecord>().read_unaligned() })
    }

    /// Waits up to `timeout` for records; true when some are waiting.
    pub fn wait(&self, timeout: Duration) -> Result<bool, MonitorError> {
        let mut poll = libc::pollfd { fd: self.records.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            // A signal (the CLI's SIGINT / SIGTERM handling) ends the wait early: not an error.
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(MonitorError::Wait(error));
        }
        Ok(ready > 0)
    }

    /// Matched packets whose record found the ring buffer full since `attach`.
    pub fn lost(&self) -> Result<u64, MonitorError> {
        Ok(self.lost_total()?.saturating_sub(self.lost_at_start))
    }

    fn lost_total(&self) -> Result<u64, MonitorError> {
        Ok(self.lost.get(&0, 0).map_err(access(names::MONITOR_LOST))?.iter().sum())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Nothing to report to from here; the lease ends a filter this could not clear.
        let _ = self.detach();
    }
}
