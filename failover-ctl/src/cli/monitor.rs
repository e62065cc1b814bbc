//! `failover-ctl monitor`: live per-packet decisions of the data plane for packets matching a
//! filter, one line (or JSON object) per packet, at a bounded rate, until `--count` packets,
//! SIGINT or SIGTERM. The filter is cleared on every way out (the [`Monitor`] guard); a monitor
//! killed outright leaves a filter that expires within `monitor::LEASE`.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use failover_common::{
    maps::{FAMILY_IPV4, PROTOCOL_ICMP, PROTOCOL_ICMPV6, PROTOCOL_TCP, PROTOCOL_UDP},
    monitor::{MonitorRecord, FLOW_NAMES, FLOW_NONE, MONITOR_NONE},
    stats::REASON_NAMES,
};
use serde::Serialize;

use crate::{
    address::from_words,
    daemon::status::Status,
    monitor::{self, Filter, Monitor, VipMatch},
    paths::InstancePaths,
};

/// What the user asked for on the command line.
pub struct Options {
    pub vip: Option<String>,
    pub client: Option<String>,
    pub backend: Option<IpAddr>,
    /// Stop after this many packets shown.
    pub count: Option<u64>,
    /// Packets shown per second at most; the rest are counted.
    pub rate: u32,
    pub json: bool,
}

/// How long one wait for records lasts: the loop checks for signals and renews the lease at
/// least this often.
const POLL: Duration = Duration::from_millis(200);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP end the loop (and so clear the filter) instead of the process.
/// No SA_RESTART: the pending `poll` returns at once.
fn handle_signals() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
        // async-signal-safe.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = request_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error()).context("installing the signal handlers");
        }
    }
    Ok(())
}

fn protocol_number(name: &str) -> anyhow::Result<u8> {
    match name {
        "tcp" => Ok(PROTOCOL_TCP),
        "udp" => Ok(PROTOCOL_UDP),
        other => bail!("protocol {other:?}: expected tcp or udp"),
    }
}

/// The daemon's view of the VIPs, for names; `None` without a readable state file.
fn read_status(paths: &InstancePaths) -> Option<Status> {
    serde_json::from_slice(&std::fs::read(paths.state()).ok()?).ok()
}

/// `--vip`: an address (every port and protocol), `ADDRESS:PORT/PROTO`, or a name from the
/// daemon's state file.
pub fn parse_vip(text: &str, status: Option<&Status>) -> anyhow::Result<VipMatch> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(VipMatch { address, port: None, protocol: None });
    }
    if let Some((endpoint, protocol)) = text.rsplit_once('/') {
        if let Ok(endpoint) = endpoint.parse::<SocketAddr>() {
            let port = (endpoint.port() != 0).then_some(endpoint.port());
            return Ok(VipMatch { address: endpoint.ip(), port, protocol: Some(protocol_number(protocol)?) });
        }
    }
    let Some(status) = status else {
        bail!("VIP {text:?}: without the daemon's state file give it as ADDRESS or ADDRESS:PORT/PROTO");
    };
    let Some(vip) = status.vips.iter().find(|vip| vip.name == text) else {
        let known: Vec<&str> = status.vips.iter().map(|vip| vip.name.as_str()).collect();
        bail!("unknown VIP {text:?}: known VIPs are {}", if known.is_empty() { "none".into() } else { known.join(", ") });
    };
    let address = vip.address.parse().with_context(|| format!("VIP {text}: address {:?} in the state file", vip.address))?;
    Ok(VipMatch { address, port: (vip.port != 0).then_some(vip.port), protocol: Some(protocol_number(&vip.protocol)?) })
}

/// `--client ADDR[/LEN]`; a bare address is one host.
pub fn parse_client(text: &str) -> anyhow::Result<(IpAddr, u8)> {
    let (address, length) = match text.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (text, None),
    };
    let address: IpAddr = address.parse().with_context(|| format!("--client {text:?}: expected ADDRESS or ADDRESS/LENGTH"))?;
    let bits = if address.is_ipv4() { 32 } else { 128 };
    let length = match length {
        Some(length) => length.parse::<u8>().ok().filter(|length| *length <= bits).with_context(|| {
            format!("--client {text:?}: prefix length must be 0 to {bits}")
        })?,
        None => bits,
    };
    Ok((address, length))
}

/// One packet as printed; the JSON field names are part of the CLI's interface.
#[derive(Serialize)]
struct Decision {
    time: String,
    cpu: u32,
    interface: String,
    action: &'static str,
    reason: &'static str,
    protocol: String,
    source: String,
    destination: String,
    vip: Option<String>,
    vip_id: Option<u32>,
    backend: Option<String>,
    backend_id: Option<u32>,
    /// "tracked", "new" or "untracked"; absent without a backend.
    flow: Option<&'static str>,
    bytes: u32,
}

fn action_name(action: u8) -> &'static str {
    match action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
}

fn protocol_name(protocol: u8, family: u8) -> String {
    match (protocol, family) {
        (_, 0) => "-".into(),
        (PROTOCOL_TCP, _) => "tcp".into(),
        (PROTOCOL_UDP, _) => "udp".into(),
        (PROTOCOL_ICMP, FAMILY_IPV4) | (PROTOCOL_ICMPV6, _) => "icmp".into(),
        (other, _) => other.to_string(),
    }
}

/// `address:port` (IPv6 in brackets); the address alone without ports; `-` for no address.
fn endpoint(words: &[u32; 4], family: u8, port_be: u16, has_ports: bool) -> String {
    match (from_words(words, family), has_ports) {
        (None, _) => "-".into(),
        (Some(address), false) => address.to_string(),
        (Some(address), true) => SocketAddr::new(address, u16::from_be(port_be)).to_string(),
    }
}

/// Turns records into printable decisions: names of VIPs and interfaces, wall-clock times.
struct Describe {
    vip_names: HashMap<u32, String>,
    interfaces: HashMap<u32, String>,
    unix_offset_ns: i128,
}

impl Describe {
    fn interface(&mut self, index: u32) -> String {
        self.interfaces
            .entry(index)
            .or_insert_with(|| {
                let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: `name` has the IF_NAMESIZE bytes the call may write.
                let found = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
                if found.is_null() {
                    format!("if{index}")
                } else {
                    // SAFETY: if_indextoname wrote a NUL-terminated name into `name`.
                    unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned()
                }
            })
            .clone()
    }

    fn decision(&mut self, record: &MonitorRecord) -> Decision {
        let unix_ns = record.time_ns as i128 + self.unix_offset_ns;
        let time = jiff::Timestamp::from_nanosecond(unix_ns)
            .ok()
            .and_then(|time| time.round(jiff::Unit::Microsecond).ok())
            .map_or_else(|| unix_ns.to_string(), |time| time.to_string());
        let has_ports = record.protocol == PROTOCOL_TCP || record.protocol == PROTOCOL_UDP;
        let vip_id = (record.vip_id != MONITOR_NONE).then_some(record.vip_id);
        let chosen = record.flow != FLOW_NONE;
        Decision {
            time,
            cpu: record.cpu,
            interface: self.interface(record.ifindex),
            action: action_name(record.action),
            reason: REASON_NAMES.get(record.reason as usize).copied().unwrap_or("unknown"),
            protocol: protocol_name(record.protocol, record.family),
            source: endpoint(&record.source, record.family, record.source_port, has_ports),
            destination: endpoint(&record.destination, record.family, record.destination_port, has_ports),
            vip: vip_id.map(|id| self.vip_names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))),
            vip_id,
            backend: chosen.then(|| endpoint(&record.backend_address, record.backend_family, 0, false)),
            backend_id: chosen.then_some(record.backend_id),
            flow: chosen.then(|| FLOW_NAMES.get(record.flow as usize).copied().unwrap_or("unknown")),
            bytes: record.frame_len,
        }
    }
}

fn line(decision: &Decision) -> String {
    let backend = match (&decision.backend, decision.backend_id) {
        (Some(address), Some(id)) => format!("{address}#{id}"),
        _ => "-".into(),
    };
    format!(
        "{} cpu{} {} {:<5} {:<26} {:<4} {} -> {} vip={} backend={} flow={} bytes={}",
        decision.time,
        decision.cpu,
        decision.interface,
        decision.action,
        decision.reason,
        decision.protocol,
        decision.source,
        decision.destination,
        decision.vip.as_deref().unwrap_or("-"),
        backend,
        decision.flow.unwrap_or("-"),
        decision.bytes,
    )
}

/// What a run showed and what it left out, printed when it ends.
#[derive(Default)]
struct Tally {
    shown: u64,
    over_rate: u64,
}

/// Runs the monitor until `--count`, a signal, or a closed stdout.
pub fn monitor(paths: &InstancePaths, options: &Options) -> anyhow::Result<()> {
    if options.rate == 0 {
        bail!("--rate 0: expected at least one packet per second");
    }
    let status = read_status(paths);
    let filter = Filter {
        vip: options.vip.as_deref().map(|vip| parse_vip(vip, status.as_ref())).transpose()?,
        client: options.client.as_deref().map(parse_client).transpose()?,
        backend: options.backend,
    };
    if !paths.program().exists() {
        bail!("instance {} has no pinned data plane under {}: is it running?", paths.instance, paths.pin_dir.display());
    }
    let mut monitor = Monitor::open_pinned(paths)
        .with_context(|| format!("opening the monitor maps of instance {} (a data plane loaded before the monitor existed has none: restart it with `failover-ctl teardown` and `run`)", paths.instance))?;
    handle_signals()?;
    monitor.attach(&filter)?;
    eprintln!("monitoring instance {} ({}); SIGINT or SIGTERM stops", paths.instance, describe_filter(&filter));
    let mut describe = Describe {
        vip_names: status.iter().flat_map(|status| &status.vips).map(|vip| (vip.vip_id, vip.name.clone())).collect(),
        interfaces: HashMap::new(),
        unix_offset_ns: monitor::monotonic_to_unix_ns()?,
    };
    let tally = read_loop(&mut monitor, &mut describe, options)?;
    let lost = monitor.lost()?;
    monitor.detach()?;
    eprintln!(
        "{} packets shown, {} not shown over --rate {}/s, {} lost (ring buffer full)",
        tally.shown, tally.over_rate, options.rate, lost
    );
    Ok(())
}

fn read_loop(monitor: &mut Monitor, describe: &mut Describe, options: &Options) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut window = Instant::now();
    let mut in_window = 0u32;
    let mut stdout = std::io::stdout().lock();
    while !STOP.load(Ordering::SeqCst) {
        monitor.renew()?;
        if !monitor.wait(POLL)? {
            continue;
        }
        while let Some(record) = monitor.next_record() {
            if window.elapsed() >= Duration::from_secs(1) {
                window = Instant::now();
                in_window = 0;
            }
            if in_window >= options.rate {
                tally.over_rate += 1;
                continue;
            }
            in_window += 1;
            let decision = describe.decision(&record);
            let text = if options.json { serde_json::to_string(&decision)? } else { line(&decision) };
            // A closed pipe (`| head`) ends the run like a signal.
            if writeln!(stdout, "{text}").and_then(|()| stdout.flush()).is_err() {
                return Ok(tally);
            }
            tally.shown += 1;
            if options.count.is_some_and(|count| tally.shown >= count) {
                return Ok(tally);
            }
        }
    }
    Ok(tally)
}

fn describe_filter(filter: &Filter) -> String {
    let mut parts = Vec::new();
    if let Some(vip) = filter.vip {
        let port = vip.port.map_or_else(|| "*".to_string(), |port| port.to_string());
        let protocol = vip.protocol.map_or_else(|| "any".to_string(), |protocol| protocol_name(protocol, 4));
        parts.push(format!("vip {} port {port} protocol {protocol}", vip.address));
    }
    if let Some((address, length)) = filter.client {
        parts.push(format!("client {address}/{length}"));
    }
    if let Some(backend) = filter.backend {
        parts.push(format!("backend {backend}"));
    }
    if parts.is_empty() {
        "every packet".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::VipStatus;

    fn status() -> Status {
        let vip = |name: &str, address: &str, port, protocol: &str| VipStatus {
            name: name.into(),
            address: address.into(),
            port,
            protocol: protocol.into(),
            ..VipStatus::default()
        };
        Status { vips: vec![vip("web", "203.0.113.10", 443, "tcp"), vip("dns", "2001:db8::53", 0, "udp")], ..Status::default() }
    }

    #[test]
    fn vip_by_address_label_or_name() {
        let address: IpAddr = "203.0.113.10".parse().unwrap();
        assert_eq!(parse_vip("203.0.113.10", None).unwrap(), VipMatch { address, port: None, protocol: None });
        assert_eq!(
            parse_vip("203.0.113.10:80/udp", None).unwrap(),
            VipMatch { address, port: Some(80), protocol: Some(PROTOCOL_UDP) }
        );
        assert_eq!(parse_vip("web", Some(&status())).unwrap(), VipMatch { address, port: Some(443), protocol: Some(PROTOCOL_TCP) });
        let dns = parse_vip("dns", Some(&status())).unwrap();
        assert_eq!((dns.port, dns.protocol), (None, Some(PROTOCOL_UDP)));
        let unknown = parse_vip("mail", Some(&status())).unwrap_err().to_string();
        assert!(unknown.contains("known VIPs are web, dns"), "{unknown}");
        let no_state = parse_vip("web", None).unwrap_err().to_string();
        assert!(no_state.contains("without the daemon's state file"), "{no_state}");
        assert!(parse_vip("203.0.113.10:80/sctp", None).is_err());
    }

    #[test]
    fn client_address_or_prefix() {
        assert_eq!(parse_client("198.51.100.7").unwrap(), ("198.51.100.7".parse().unwrap(), 32));
        assert_eq!(parse_client("198.51.100.0/24").unwrap(), ("198.51.100.0".parse().unwrap(), 24));
        assert_eq!(parse_client("2001:db8::/32").unwrap().1, 32);
        assert!(parse_client("198.51.100.0/33").unwrap_err().to_string().contains("0 to 32"));
        assert!(parse_client("client").is_err());
    }

    #[test]
    fn a_record_prints_as_one_line() {
        let (source, family) = crate::address::to_words("198.51.100.7".parse().unwrap());
        let (destination, _) = crate::address::to_words("203.0.113.10".parse().unwrap());
        let (backend, _) = crate::address::to_words("192.0.2.101".parse().unwrap());
        let record = MonitorRecord {
            time_ns: 0,
            source,
            destination,
            backend_address: backend,
            source_port: 40000u16.to_be(),
            destination_port: 443u16.to_be(),
            protocol: PROTOCOL_TCP,
            family,
            action: 3,
            reason: failover_common::stats::TX_FORWARD as u8,
            flow: failover_common::monitor::FLOW_NEW,
            backend_family: family,
            vip_id: 1,
            backend_id: 10,
            frame_len: 74,
            cpu: 1,
            ..MonitorRecord::default()
        };
        let mut describe = Describe {
            vip_names: HashMap::from([(1, "web".to_string())]),
            interfaces: HashMap::from([(0, "lb0".to_string())]),
            unix_offset_ns: 1_700_000_000_000_000_000,
        };
        let text = line(&describe.decision(&record));
        assert!(text.starts_with("2023-11-14T22:13:20Z cpu1 lb0 tx"), "{text}");
        assert!(
            text.contains("tx_forward") && text.ends_with("tcp  198.51.100.7:40000 -> 203.0.113.10:443 vip=web backend=192.0.2.101#10 flow=new bytes=74"),
            "{text}"
        );
        let json = serde_json::to_value(describe.decision(&record)).unwrap();
        assert_eq!(json["flow"], "new");
        assert_eq!(json["backend"], "192.0.2.101");
        assert_eq!(json["vip_id"], 1);
    }
}
