//! `status`, `vips`, `backends`, `table`, `flows`, `stats`, `which` and `events`: read-only
//! views of one instance, built from its pinned maps and the daemon's runtime files.
//!
//! The maps are the truth about what the data plane does; `state.json` only adds what the maps
//! do not hold (names, weights, tiers, probe verdicts). Without it every command still works and
//! shows ids where names would be. Every command prints an aligned table, or with `--json` one
//! JSON object whose field names are part of the CLI's interface.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use aya::programs::{TestRun, TestRunOptions};
use failover_common::{
    hash,
    maps::{
        Backend, Config, Counter, FlowKey, FlowValue, VipKey, VipMeta, FAMILY_IPV4, HEALTH_DOWN, HEALTH_DRAINING,
        HEALTH_UP, MAX_SLOT_PROBES, PROTOCOL_TCP, PROTOCOL_UDP, VIP_ALL_DOWN_PASS, VIP_HASH_SOURCE_ONLY,
        VIP_NO_FLOW_TRACKING, VIP_OWNED,
    },
    stats::REASON_NAMES,
};
use serde::Serialize;

use crate::{
    address,
    config::Protocol,
    daemon::{
        control, events,
        status::{now_millis, BackendStatus, Event, Request, Status, VipStatus},
    },
    loader,
    maps::Counters,
    paths::InstancePaths,
    pin::PinnedView,
};

/// Which instance to read and how to print.
pub struct Target {
    pub paths: InstancePaths,
    pub json: bool,
}

/// XDP action codes (`enum xdp_action`).
const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// How long `status` waits for the daemon's control socket before calling it unresponsive
/// (the daemon answers from its state owner, which may be busy publishing).
const CONTROL_PATIENCE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Shared pieces: opening the instance, the state file, names, printing.

fn missing_instance(paths: &InstancePaths) -> anyhow::Error {
    anyhow::anyhow!(
        "instance {} has no pinned data plane under {}: is it running, or was it torn down?",
        paths.instance,
        paths.pin_dir.display()
    )
}

fn open(paths: &InstancePaths) -> anyhow::Result<PinnedView> {
    if !PinnedView::exists(paths) {
        return Err(missing_instance(paths));
    }
    PinnedView::open(paths).with_context(|| {
        format!("opening the pinned data plane of instance {} ({})", paths.instance, paths.pin_dir.display())
    })
}

/// The daemon's `state.json`, or why it is not there.
struct State {
    status: Option<Status>,
    /// "ok", "missing" or "unreadable" (the JSON field `state_file`).
    file: &'static str,
    problem: Option<String>,
}

impl State {
    fn read(paths: &InstancePaths) -> Self {
        let path = paths.state();
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Status>(&bytes) {
                Ok(status) => Self { status: Some(status), file: "ok", problem: None },
                Err(error) => Self {
                    status: None,
                    file: "unreadable",
                    problem: Some(format!(
                        "the daemon's state file {} is unreadable ({error}): names, weights, tiers and probe verdicts are not shown",
                        path.display()
                    )),
                },
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Self {
                status: None,
                file: "missing",
                problem: Some(format!(
                    "the daemon's state file {} is missing: VIPs and backends are shown by id, without names, weights, tiers or probe verdicts",
                    path.display()
                )),
            },
            Err(error) => Self {
                status: None,
                file: "unreadable",
                problem: Some(format!("the daemon's state file {} is unreadable: {error}", path.display())),
            },
        }
    }

    /// Says on stderr (so that stdout stays parseable) what is missing.
    fn warn(&self) {
        if let Some(problem) = &self.problem {
            eprintln!("note: {problem}");
        }
    }

    fn vip(&self, vip_id: u32) -> Option<&VipStatus> {
        self.status.as_ref()?.vips.iter().find(|vip| vip.vip_id == vip_id)
    }

    fn backend(&self, id: u32) -> Option<&BackendStatus> {
        self.status.as_ref()?.vips.iter().flat_map(|vip| &vip.backends).find(|backend| backend.id == id)
    }

    /// The VIP's name, or `#<vip id>` when the state file does not name it.
    fn vip_name(&self, vip_id: u32) -> String {
        self.vip(vip_id).map_or_else(|| format!("#{vip_id}"), |vip| vip.name.clone())
    }
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        PROTOCOL_TCP => "tcp".into(),
        PROTOCOL_UDP => "udp".into(),
        other => other.to_string(),
    }
}

fn ip(words: &[u32; 4], family: u8) -> String {
    address::from_words(words, family).map_or_else(|| "?".into(), |address| address.to_string())
}

/// `address:port` with IPv6 in brackets; port 0 (every port) as `*`.
fn endpoint(words: &[u32; 4], family: u8, port_be: u16) -> String {
    let address = ip(words, family);
    let port = match u16::from_be(port_be) {
        0 => "*".to_string(),
        port => port.to_string(),
    };
    if family == FAMILY_IPV4 {
        format!("{address}:{port}")
    } else {
        format!("[{address}]:{port}")
    }
}

/// `203.0.113.10:443/tcp`.
fn vip_label(key: &VipKey) -> String {
    format!("{}/{}", endpoint(&key.address, key.family, key.port), protocol_name(key.protocol))
}

fn health_name(health: u32) -> String {
    match health {
        HEALTH_UP => "up".into(),
        HEALTH_DOWN => "down".into(),
        HEALTH_DRAINING => "draining".into(),
        other => format!("unknown({other})"),
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.into()
}

/// Finds the VIP the user named: a name from `state.json`, a vip id, or `ADDRESS:PORT/PROTO`
/// as `vips` prints it.
fn resolve_vip(vips: &[(VipKey, VipMeta)], state: &State, name: &str) -> anyhow::Result<(VipKey, VipMeta)> {
    if let Some(status) = state.status.as_ref().and_then(|status| status.vips.iter().find(|vip| vip.name == name)) {
        return vips.iter().find(|(_, meta)| meta.vip_id == status.vip_id).copied().with_context(|| {
            format!("VIP {name} (vip id {}) is configured but not published in the maps", status.vip_id)
        });
    }
    let by_id = name.trim_start_matches('#').parse::<u32>().ok();
    if let Some(found) = vips.iter().find(|(key, meta)| Some(meta.vip_id) == by_id || vip_label(key) == name) {
        return Ok(*found);
    }
    let mut known: Vec<String> = match &state.status {
        Some(status) => status.vips.iter().map(|vip| vip.name.clone()).collect(),
        None => vips.iter().map(|(key, meta)| format!("#{} ({})", meta.vip_id, vip_label(key))).collect(),
    };
    if known.is_empty() {
        known.push("none".into());
    }
    let hint = if state.status.is_none() {
        "; without the daemon's state file give a vip id or ADDRESS:PORT/PROTO"
    } else {
        ""
    };
    bail!("unknown VIP {name:?}: known VIPs are {}{hint}", known.join(", "))
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn emit_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    emit(&text)
}

/// An aligned text table: columns separated by two spaces, numbers right-aligned.
struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Column names; a leading `>` right-aligns the column.
    fn new(columns: &[&'static str]) -> Self {
        Self {
            headers: columns.iter().map(|column| column.trim_start_matches('>')).collect(),
            right: columns.iter().map(|column| column.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let width = |column: usize| {
            self.rows
                .iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .chain([self.headers[column].len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let mut text = String::new();
        let headers: Vec<String> = self.headers.iter().map(|header| header.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate().take(widths.len()) {
                if column > 0 {
                    line.push_str("  ");
                }
                let pad = widths[column].saturating_sub(cell.chars().count());
                if self.right[column] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// `1.5 KiB`; bytes below 1 KiB exactly.
fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A short duration: `850ms`, `12s`, `3m04s`, `2h05m`, `3d04h`.
fn short_duration(millis: u64) -> String {
    let seconds = millis / 1000;
    match seconds {
        0 => format!("{millis}ms"),
        1..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..=86399 => format!("{}h{:02}m", seconds / 3600, seconds / 60 % 60),
        _ => format!("{}d{:02}h", seconds / 86400, seconds / 3600 % 24),
    }
}

/// `85us`, `1.2ms`, `1.50s`.
fn micros(value: u64) -> String {
    match value {
        0..=999 => format!("{value}us"),
        1_000..=999_999 => format!("{:.1}ms", value as f64 / 1e3),
        _ => format!("{:.2}s", value as f64 / 1e6),
    }
}

/// Unix milliseconds as UTC, `2026-11-22T06:12:03.123Z`.
pub fn utc(millis: u64) -> String {
    let seconds = millis / 1000;
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let time = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        time / 3600,
        time / 60 % 60,
        time % 60,
        millis % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day): the era-based
/// algorithm of H. Hinnant's "chrono-Compatible Low-Level Date Algorithms".
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_(coarse_)ns`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if result != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The backends of the instance by id, with their health bits.
fn backends_by_id(view: &PinnedView) -> anyhow::Result<BTreeMap<u32, (Backend, u32)>> {
    Ok(view.backends()?.into_iter().map(|(id, backend, health)| (id, (backend, health))).collect())
}

fn backend_address(backends: &BTreeMap<u32, (Backend, u32)>, id: u32) -> String {
    backends.get(&id).map_or_else(|| "?".into(), |(backend, _)| ip(&backend.address, backend.family))
}

/// The VIP a packet to (address, port, protocol) belongs to, as the data plane finds it: the
/// exact service first, then the all-ports service of the address.
fn lookup_vip(
    vips: &BTreeMap<VipKey, VipMeta>,
    family: u8,
    address: [u32; 4],
    port_be: u16,
    protocol: u8,
) -> Option<(VipKey, VipMeta)> {
    let mut key = VipKey { address, port: port_be, protocol, family };
    if let Some(meta) = vips.get(&key) {
        return Some((key, *meta));
    }
    key.port = 0;
    vips.get(&key).map(|meta| (key, *meta))
}

#[derive(Serialize)]
struct VipRef {
    name: Option<String>,
    vip_id: u32,
    address: String,
}

fn vip_ref(state: &State, key: &VipKey, meta: &VipMeta) -> VipRef {
    VipRef { name: state.vip(meta.vip_id).map(|vip| vip.name.clone()), vip_id: meta.vip_id, address: vip_label(key) }
}

// ---------------------------------------------------------------------------------------------
// status

#[derive(Serialize)]
struct StatusView {
    instance: String,
    pin_dir: String,
    /// "ok", "missing" or "unreadable".
    state_file: &'static str,
    daemon: DaemonView,
    adopted: Option<bool>,
    config_path: Option<String>,
    started_at: Option<String>,
    interfaces: Vec<InterfaceView>,
    next_hop_mac: Option<String>,
    vips: usize,
    backends: BackendCounts,
    failovers: Option<u64>,
    last_event: Option<EventView>,
}

#[derive(Serialize)]
struct DaemonView {
    pid: Option<u32>,
    running: bool,
    /// How `running` was found out.
    detail: String,
}

#[derive(Serialize)]
struct InterfaceView {
    name: String,
    /// "native", "generic", or "unknown" without the state file.
    mode: String,
    /// Whether a pinned XDP link keeps the program attached to it.
    pinned_link: bool,
}

/// Backend counts: by health bit (the maps) and, from the state file, by admin state.
#[derive(Serialize, Default)]
struct BackendCounts {
    total: usize,
    up: usize,
    down: usize,
    draining: usize,
    serving: Option<usize>,
    drained: Option<usize>,
    maintenance: Option<usize>,
}

/// Asks the daemon for its status, giving up after `patience`: `Ok(None)` when the socket
/// does not answer in time.
fn ask_status(paths: &InstancePaths, patience: Duration) -> anyhow::Result<Option<Status>> {
    let socket = paths.control_socket();
    let (sender, receiver) = std::sync::mpsc::channel();
    // A daemon that accepts but never answers would hold `control::request` for a minute; the
    // thread is left behind in that case and ends with the process.
    std::thread::Builder::new().name("status-request".into()).spawn(move || {
        let _ = sender.send(control::request(&socket, &Request::Status));
    })?;
    match receiver.recv_timeout(patience) {
        Ok(Ok(response)) if response.ok => Ok(response.status),
        Ok(Ok(response)) => bail!("the daemon refused: {}", response.message),
        Ok(Err(error)) => Err(error),
        Err(_) => Ok(None),
    }
}

/// Whether `pid` is a live failover-ctl process (not this one).
fn is_daemon_process(pid: u32) -> bool {
    if pid == 0 || pid == std::process::id() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|name| name.trim() == "failover-ctl")
}

fn daemon_view(paths: &InstancePaths, state: &State) -> (DaemonView, Option<Status>) {
    let pid = state.status.as_ref().map(|status| status.pid).filter(|pid| *pid != 0);
    let mut why_not = String::new();
    if paths.control_socket().exists() {
        match ask_status(paths, CONTROL_PATIENCE) {
            Ok(Some(status)) => {
                let pid = Some(status.pid);
                return (DaemonView { pid, running: true, detail: "its control socket answers".into() }, Some(status));
            }
            Ok(None) => {
                why_not = format!("; its control socket did not answer within {} s", CONTROL_PATIENCE.as_secs())
            }
            Err(error) => why_not = format!("; its control socket: {error:#}"),
        }
    }
    match pid {
        Some(pid) if is_daemon_process(pid) => {
            (DaemonView { pid: Some(pid), running: true, detail: format!("process {pid} is alive{why_not}") }, None)
        }
        Some(pid) => {
            let gone = if Path::new(&format!("/proc/{pid}")).exists() { "is another program now" } else { "is gone" };
            (
                DaemonView {
                    pid: Some(pid),
                    running: false,
                    detail: format!("process {pid} of the state file {gone}{why_not}"),
                },
                None,
            )
        }
        None => (
            DaemonView { pid: None, running: false, detail: format!("no control socket and no state file{why_not}") },
            None,
        ),
    }
}

pub fn status(target: &Target) -> anyhow::Result<()> {
    let paths = &target.paths;
    let view = open(paths)?;
    let mut state = State::read(paths);
    let (daemon, live) = daemon_view(paths, &state);
    if let Some(live) = live {
        // Fresher than the file, and present even if the file is not.
        state = State { status: Some(live), file: state.file, problem: None };
    }
    state.warn();
    let backends = backends_by_id(&view)?;
    let mut counts = BackendCounts { total: backends.len(), ..BackendCounts::default() };
    for (_, health) in backends.values() {
        match *health {
            HEALTH_UP => counts.up += 1,
            HEALTH_DRAINING => counts.draining += 1,
            _ => counts.down += 1,
        }
    }
    let status = state.status.as_ref();
    if let Some(status) = status {
        let all = || status.vips.iter().flat_map(|vip| &vip.backends);
        counts.serving = Some(all().filter(|backend| backend.serving).count());
        counts.drained = Some(all().filter(|backend| backend.admin == "drained").count());
        counts.maintenance = Some(all().filter(|backend| backend.admin == "maintenance").count());
    }
    let linked = loader::attached_interfaces(paths);
    let mut interfaces: Vec<InterfaceView> = status
        .map(|status| &status.interfaces[..])
        .unwrap_or_default()
        .iter()
        .map(|interface| InterfaceView {
            name: interface.name.clone(),
            mode: interface.mode.clone(),
            pinned_link: linked.contains(&interface.name),
        })
        .collect();
    for name in &linked {
        if !interfaces.iter().any(|interface| &interface.name == name) {
            interfaces.push(InterfaceView { name: name.clone(), mode: "unknown".into(), pinned_link: true });
        }
    }
    let config = view.config()?;
    let last_event = events::read(&paths.events())
        .with_context(|| format!("reading {}", paths.events().display()))?
        .pop()
        .map(EventView::from);
    let report = StatusView {
        instance: paths.instance.clone(),
        pin_dir: paths.pin_dir.display().to_string(),
        state_file: state.file,
        daemon,
        adopted: status.map(|status| status.adopted),
        config_path: status.map(|status| status.config_path.clone()),
        started_at: status.map(|status| utc(status.started_at)),
        interfaces,
        next_hop_mac: config.map(|config| crate::address::format_mac(&config.next_hop_mac)),
        vips: view.vips()?.len(),
        backends: counts,
        failovers: status.map(|status| status.failovers.count),
        last_event,
    };
    if target.json {
        return emit_json(&report);
    }
    let unknown = || "-".to_string();
    let mut lines: Vec<(&str, String)> = vec![
        ("instance", report.instance.clone()),
        ("pins", report.pin_dir.clone()),
        (
            "daemon",
            format!("{}: {}", if report.daemon.running { "running" } else { "not running" }, report.daemon.detail),
        ),
        ("started", report.started_at.clone().unwrap_or_else(unknown)),
        ("adopted", report.adopted.map_or_else(unknown, yes_no)),
        ("config", report.config_path.clone().unwrap_or_else(unknown)),
    ];
    let interfaces = if report.interfaces.is_empty() {
        "none attached".to_string()
    } else {
        report
            .interfaces
            .iter()
            .map(|interface| {
                let link = if interface.pinned_link { "" } else { ", no pinned link" };
                format!("{} ({}{link})", interface.name, interface.mode)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    lines.push(("interfaces", interfaces));
    lines
        .push(("next-hop MAC", report.next_hop_mac.clone().unwrap_or_else(|| "- (no configuration published)".into())));
    lines.push(("VIPs", report.vips.to_string()));
    let counts = &report.backends;
    let mut backends =
        format!("{} ({} up, {} down, {} draining", counts.total, counts.up, counts.down, counts.draining);
    if let (Some(serving), Some(drained), Some(maintenance)) = (counts.serving, counts.drained, counts.maintenance) {
        backends.push_str(&format!("; {serving} serving, {drained} drained, {maintenance} in maintenance"));
    }
    backends.push(')');
    lines.push(("backends", backends));
    lines.push(("failovers", report.failovers.map_or_else(unknown, |count| count.to_string())));
    let last = report.last_event.as_ref().map_or_else(
        || "none".to_string(),
        |event| {
            let subject =
                [event.vip.as_deref(), event.backend.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ");
            format!("{} {} {subject}: {}", event.time, event.kind, event.detail).replace(" :", ":")
        },
    );
    lines.push(("last event", last));
    let width = lines.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let text: String = lines.iter().map(|(name, value)| format!("{name:width$}  {value}\n")).collect();
    emit(&text)
}

// ---------------------------------------------------------------------------------------------
// vips

#[derive(Serialize)]
struct VipRow {
    name: Option<String>,
    /// `ADDRESS:PORT/PROTO` as the commands accept it in place of a name.
    label: String,
    address: String,
    port: u16,
    protocol: String,
    vip_id: u32,
    table_size: u32,
    owned: bool,
    flags: Vec<&'static str>,
    backends_up: usize,
    backends_total: usize,
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct VipsView {
    instance: String,
    state_file: &'static str,
    vips: Vec<VipRow>,
}

fn flag_list(flags: u32) -> Vec<&'static str> {
    let mut list = Vec::new();
    if flags & VIP_OWNED != 0 {
        list.push("owned");
    }
    if flags & VIP_HASH_SOURCE_ONLY != 0 {
        list.push("source_hash");
    }
    if flags & VIP_ALL_DOWN_PASS != 0 {
        list.push("all_down_pass");
    }
    if flags & VIP_NO_FLOW_TRACKING != 0 {
        list.push("no_flow_tracking");
    }
    list
}

pub fn vips(target: &Target) -> anyhow::Result<()> {
    let view = open(&target.paths)?;
    let state = State::read(&target.paths);
    state.warn();
    let backends = backends_by_id(&view)?;
    let mut rows = Vec::new();
    for (key, meta) in view.vips()? {
        let members: Vec<u32> = backends
            .iter()
            .filter(|(_, (backend, _))| backend.vip_id == meta.vip_id)
            .map(|(_, (_, health))| *health)
            .collect();
        let counter = view.counters().vip(meta.vip_id)?;
        rows.push(VipRow {
            name: state.vip(meta.vip_id).map(|vip| vip.name.clone()),
            label: vip_label(&key),
            address: ip(&key.address, key.family),
            port: u16::from_be(key.port),
            protocol: protocol_name(key.protocol),
            vip_id: meta.vip_id,
            table_size: meta.table_size,
            owned: meta.flags & VIP_OWNED != 0,
            flags: flag_list(meta.flags),
            backends_up: members.iter().filter(|health| **health == HEALTH_UP).count(),
            backends_total: members.len(),
            packets: counter.packets,
            bytes: counter.bytes,
        });
    }
    rows.sort_by_key(|row| row.vip_id);
    if target.json {
        return emit_json(&VipsView { instance: target.paths.instance.clone(), state_file: state.file, vips: rows });
    }
    let mut table = Table::new(&["NAME", "VIP", ">ID", ">TABLE", "OWNED", "FLAGS", ">UP/TOTAL", ">PACKETS", ">BYTES"]);
    for row in &rows {
        let flags: Vec<&str> = row.flags.iter().copied().filter(|flag| *flag != "owned").collect();
        table.row(vec![
            row.name.clone().unwrap_or_else(|| format!("#{}", row.vip_id)),
            row.label.clone(),
            row.vip_id.to_string(),
            row.table_size.to_string(),
            yes_no(row.owned),
            if flags.is_empty() { "-".into() } else { flags.join(",") },
            format!("{}/{}", row.backends_up, row.backends_total),
            row.packets.to_string(),
            human_bytes(row.bytes as f64),
        ]);
    }
    if rows.is_empty() {
        return emit("no VIPs published\n");
    }
    emit(&table.render())
}

/// The published VIPs ordered by vip id (the order every listing uses).
fn sorted_vips(view: &PinnedView) -> anyhow::Result<Vec<(VipKey, VipMeta)>> {
    let mut vips = view.vips()?;
    vips.sort_by_key(|(_, meta)| meta.vip_id);
    Ok(vips)
}

// ---------------------------------------------------------------------------------------------
// backends

#[derive(Serialize)]
struct BackendRow {
    vip: Option<String>,
    vip_id: u32,
    address: String,
    id: u32,
    /// The HEALTH map's bit: "up", "down" or "draining".
    health_bit: String,
    /// From the state file: the probes' verdict, admin state, tier, weight, table membership.
    verdict: Option<String>,
    admin: Option<String>,
    tier: Option<String>,
    weight: Option<u16>,
    serving: Option<bool>,
    packets: u64,
    bytes: u64,
    last_probe: Option<ProbeView>,
}

#[derive(Serialize)]
struct ProbeView {
    at: String,
    age_ms: u64,
    success: bool,
    latency_us: u64,
    detail: String,
}

#[derive(Serialize)]
struct BackendsView {
    instance: String,
    state_file: &'static str,
    backends: Vec<BackendRow>,
}

pub fn backends(target: &Target, vip: Option<&str>) -> anyhow::Result<()> {
    let view = open(&target.paths)?;
    let state = State::read(&target.paths);
    state.warn();
    let only = match vip {
        Some(name) => Some(resolve_vip(&view.vips()?, &state, name)?.1.vip_id),
        None => None,
    };
    let now = now_millis();
    let mut rows = Vec::new();
    for (id, backend, health) in view.backends()? {
        if only.is_some_and(|vip_id| vip_id != backend.vip_id) {
            continue;
        }
        let status = state.backend(id).filter(|status| status.address == ip(&backend.address, backend.family));
        let counter = view.counters().backend(id)?;
        rows.push(BackendRow {
            vip: state.vip(backend.vip_id).map(|vip| vip.name.clone()),
            vip_id: backend.vip_id,
            address: ip(&backend.address, backend.family),
            id,
            health_bit: health_name(health),
            verdict: status.map(|status| status.health.clone()),
            admin: status.map(|status| status.admin.clone()),
            tier: status.map(|status| status.tier.clone()),
            weight: status.map(|status| status.weight),
            serving: status.map(|status| status.serving),
            packets: counter.packets,
            bytes: counter.bytes,
            last_probe: status.and_then(|status| status.last_probe.as_ref()).map(|probe| ProbeView {
                at: utc(probe.at),
                age_ms: now.saturating_sub(probe.at),
                success: probe.success,
                latency_us: probe.latency_us,
                detail: probe.detail.clone(),
            }),
        });
    }
    rows.sort_by_key(|row| (row.vip_id, row.id));
    if target.json {
        return emit_json(&BackendsView {
            instance: target.paths.instance.clone(),
            state_file: state.file,
            backends: rows,
        });
    }
    if rows.is_empty() {
        return emit("no backends\n");
    }
    let mut table = Table::new(&[
        "VIP",
        "ADDRESS",
        ">ID",
        "BIT",
        "VERDICT",
        "ADMIN",
        "TIER",
        ">WEIGHT",
        "SERVING",
        ">PACKETS",
        ">BYTES",
        "LAST PROBE",
    ]);
    let unknown = || "-".to_string();
    for row in &rows {
        table.row(vec![
            row.vip.clone().unwrap_or_else(|| format!("#{}", row.vip_id)),
            row.address.clone(),
            row.id.to_string(),
            row.health_bit.clone(),
            row.verdict.clone().unwrap_or_else(unknown),
            row.admin.clone().unwrap_or_else(unknown),
            row.tier.clone().unwrap_or_else(unknown),
            row.weight.map_or_else(unknown, |weight| weight.to_string()),
            row.serving.map_or_else(unknown, yes_no),
            row.packets.to_string(),
            human_bytes(row.bytes as f64),
            row.last_probe.as_ref().map_or_else(unknown, |probe| {
                let outcome = if probe.success { "ok".to_string() } else { format!("failed ({})", probe.detail) };
                format!("{outcome} in {}, {} ago", micros(probe.latency_us), short_duration(probe.age_ms))
            }),
        ]);
    }
    emit(&table.render())
}

// ---------------------------------------------------------------------------------------------
// table

#[derive(Serialize)]
struct TableRow {
    id: u32,
    address: String,
    health_bit: String,
    serving: Option<bool>,
    weight: Option<u16>,
    slots: u32,
    share_percent: f64,
    /// Weight share among the serving backends (needs the state file).
    ideal_percent: Option<f64>,
    /// `share_percent - ideal_percent`, in percentage points.
    deviation_points: Option<f64>,
}

#[derive(Serialize)]
struct TableView {
    vip: VipRef,
    table_size: u32,
    table_offset: u32,
    state_file: &'static str,
    backends: Vec<TableRow>,
    max_deviation_points: Option<f64>,
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

pub fn table(target: &Target, vip: &str) -> anyhow::Result<()> {
    let view = open(&target.paths)?;
    let state = State::read(&target.paths);
    state.warn();
    let (key, meta) = resolve_vip(&view.vips()?, &state, vip)?;
    let slots = view.table(&key).with_context(|| {
        format!(
            "VIP {vip}: its table region (offset {}, {} slots) is outside the pool",
            meta.table_offset, meta.table_size
        )
    })?;
    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    for id in &slots {
        *counts.entry(*id).or_default() += 1;
    }
    let backends = backends_by_id(&view)?;
    let status = state.vip(meta.vip_id);
    let mut ids: BTreeSet<u32> = counts.keys().copied().collect();
    ids.extend(backends.iter().filter(|(_, (backend, _))| backend.vip_id == meta.vip_id).map(|(id, _)| *id));
    ids.extend(status.iter().flat_map(|vip| &vip.backends).map(|backend| backend.id));
    let weight_sum: u64 = status
        .iter()
        .flat_map(|vip| &vip.backends)
        .filter(|backend| backend.serving)
        .map(|backend| u64::from(backend.weight))
        .sum();
    let size = slots.len().max(1) as f64;
    let rows: Vec<TableRow> = ids
        .into_iter()
        .map(|id| {
            let member = status.and_then(|vip| vip.backends.iter().find(|backend| backend.id == id));
            let slots = counts.get(&id).copied().unwrap_or(0);
            let share = 100.0 * f64::from(slots) / size;
            let ideal = match (status, member) {
                (Some(_), _) if weight_sum == 0 => None,
                (Some(_), Some(member)) if member.serving => Some(100.0 * f64::from(member.weight) / weight_sum as f64),
                (Some(_), _) => Some(0.0),
                (None, _) => None,
            };
            TableRow {
                id,
                address: member.map_or_else(|| backend_address(&backends, id), |member| member.address.clone()),
                health_bit: backends.get(&id).map_or_else(|| "absent".into(), |(_, health)| health_name(*health)),
                serving: member.map(|member| member.serving),
                weight: member.map(|member| member.weight),
                slots,
                share_percent: round2(share),
                ideal_percent: ideal.map(round2),
                deviation_points: ideal.map(|ideal| round2(share - ideal)),
            }
        })
        .collect();
    let max_deviation = rows
        .iter()
        .filter_map(|row| row.deviation_points)
        .map(f64::abs)
        .fold(None, |max: Option<f64>, value| Some(max.map_or(value, |max| max.max(value))));
    let report = TableView {
        vip: vip_ref(&state, &key, &meta),
        table_size: meta.table_size,
        table_offset: meta.table_offset,
        state_file: state.file,
        backends: rows,
        max_deviation_points: max_deviation,
    };
    if target.json {
        return emit_json(&report);
    }
    let mut text = format!(
        "VIP {} {} (vip id {}): {} slots at offset {}\n",
        state.vip_name(meta.vip_id),
        report.vip.address,
        meta.vip_id,
        meta.table_size,
        meta.table_offset
    );
    let mut table =
        Table::new(&[">ID", "ADDRESS", "BIT", "SERVING", ">WEIGHT", ">SLOTS", ">SHARE", ">IDEAL", ">DEVIATION"]);
    let unknown = || "-".to_string();
    for row in &report.backends {
        table.row(vec![
            row.id.to_string(),
            row.address.clone(),
            row.health_bit.clone(),
            row.serving.map_or_else(unknown, yes_no),
            row.weight.map_or_else(unknown, |weight| weight.to_string()),
            row.slots.to_string(),
            format!("{:.2}%", row.share_percent),
            row.ideal_percent.map_or_else(unknown, |ideal| format!("{ideal:.2}%")),
            row.deviation_points.map_or_else(unknown, |deviation| format!("{deviation:+.2}")),
        ]);
    }
    text.push_str(&table.render());
    if let Some(max) = report.max_deviation_points {
        text.push_str(&format!("largest deviation from the weights: {max:.2} percentage points\n"));
    }
    emit(&text)
}

// ---------------------------------------------------------------------------------------------
// flows

#[derive(Serialize)]
struct FlowRow {
    client: String,
    vip: String,
    vip_name: Option<String>,
    protocol: String,
    backend_id: u32,
    backend: String,
    /// Since the entry was created (TCP) or last refreshed (UDP, at most once a second).
    age_ms: u64,
    /// "live", "backend_down" (the next packet re-chooses), "stale" (the backend id now
    /// belongs to another VIP or to none) or "expired" (UDP idle beyond the timeout).
    state: &'static str,
}

#[derive(Serialize)]
struct FlowsView {
    total: usize,
    matching: usize,
    shown: usize,
    flows: Vec<FlowRow>,
}

fn flow_state(
    key: &FlowKey,
    value: &FlowValue,
    vip: Option<&VipMeta>,
    backends: &BTreeMap<u32, (Backend, u32)>,
    config: Option<&Config>,
    now: u64,
) -> &'static str {
    let Some((backend, health)) = backends.get(&value.backend_id) else { return "stale" };
    if vip.is_some_and(|meta| meta.vip_id != backend.vip_id) {
        return "stale";
    }
    if key.protocol == PROTOCOL_UDP
        && config.is_some_and(|config| now.saturating_sub(value.last_seen_ns) > config.udp_idle_timeout_ns)
    {
        return "expired";
    }
    if *health == HEALTH_UP || *health == HEALTH_DRAINING {
        "live"
    } else {
        "backend_down"
    }
}

pub fn flows(target: &Target, vip: Option<&str>, backend: Option<&str>, limit: usize) -> anyhow::Result<()> {
    let view = open(&target.paths)?;
    let state = State::read(&target.paths);
    state.warn();
    let published = view.vips()?;
    let only_vip = match vip {
        Some(name) => Some(resolve_vip(&published, &state, name)?.0),
        None => None,
    };
    let only_backend = match backend {
        Some(text) => {
            Some(text.parse::<IpAddr>().map_err(|_| anyhow::anyhow!("--backend {text:?}: not an IP address"))?)
        }
        None => None,
    };
    let vips: BTreeMap<VipKey, VipMeta> = published.into_iter().collect();
    let backends = backends_by_id(&view)?;
    let config = view.config()?;
    let now = monotonic_ns();
    let all = view.flows()?;
    let total = all.len();
    let mut rows: Vec<FlowRow> = Vec::new();
    for (key, value) in all {
        let found = lookup_vip(&vips, key.family, key.destination, key.destination_port, key.protocol);
        if only_vip.is_some() && found.map(|(vip, _)| vip) != only_vip {
            continue;
        }
        let backend_ip = backends
            .get(&value.backend_id)
            .and_then(|(backend, _)| address::from_words(&backend.address, backend.family));
        if only_backend.is_some() && backend_ip != only_backend {
            continue;
        }
        rows.push(FlowRow {
            client: endpoint(&key.source, key.family, key.source_port),
            vip: format!(
                "{}/{}",
                endpoint(&key.destination, key.family, key.destination_port),
                protocol_name(key.protocol)
            ),
            vip_name: found.map(|(_, meta)| state.vip_name(meta.vip_id)),
            protocol: protocol_name(key.protocol),
            backend_id: value.backend_id,
            backend: backend_ip.map_or_else(|| "?".into(), |ip| ip.to_string()),
            age_ms: now.saturating_sub(value.last_seen_ns) / 1_000_000,
            state: flow_state(&key, &value, found.as_ref().map(|(_, meta)| meta), &backends, config.as_ref(), now),
        });
    }
    let matching = rows.len();
    // Most recent first; then a stable order.
    rows.sort_by(|a, b| a.age_ms.cmp(&b.age_ms).then_with(|| a.client.cmp(&b.client)).then_with(|| a.vip.cmp(&b.vip)));
    rows.truncate(limit);
    let report = FlowsView { total, matching, shown: rows.len(), flows: rows };
    if target.json {
        return emit_json(&report);
    }
    let mut table = Table::new(&["CLIENT", "VIP", "NAME", "BACKEND", ">ID", ">AGE", "STATE"]);
    for row in &report.flows {
        table.row(vec![
            row.client.clone(),
            row.vip.clone(),
            row.vip_name.clone().unwrap_or_else(|| "-".into()),
            row.backend.clone(),
            row.backend_id.to_string(),
            short_duration(row.age_ms),
            row.state.replace('_', " "),
        ]);
    }
    let mut text = if report.flows.is_empty() { String::new() } else { table.render() };
    text.push_str(&format!(
        "{} shown of {} matching, {} tracked in all (age: TCP since the first packet, UDP since the last refresh)\n",
        report.shown, report.matching, report.total
    ));
    emit(&text)
}

// ---------------------------------------------------------------------------------------------
// stats

/// One reading of every counter.
struct Sample {
    at: Instant,
    wall: u64,
    reasons: Vec<Counter>,
    vips: Vec<(VipKey, VipMeta, Counter)>,
    backends: Vec<(u32, Backend, Counter)>,
}

impl Sample {
    fn take(view: &PinnedView) -> anyhow::Result<Self> {
        let counters = view.counters();
        let vips = sorted_vips(view)?
            .into_iter()
            .map(|(key, meta)| Ok((key, meta, counters.vip(meta.vip_id)?)))
            .collect::<anyhow::Result<_>>()?;
        let backends = view
            .backends()?
            .into_iter()
            .map(|(id, backend, _)| Ok((id, backend, counters.backend(id)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { at: Instant::now(), wall: now_millis(), reasons: counters.reasons()?, vips, backends })
    }
}

#[derive(Serialize)]
struct CounterRow {
    packets: u64,
    bytes: u64,
    /// Per second since the previous print (`--watch` only, not on the first).
    packets_per_second: Option<f64>,
    bytes_per_second: Option<f64>,
}

#[derive(Serialize)]
struct ReasonRow {
    reason: &'static str,
    index: usize,
    #[serde(flatten)]
    counter: CounterRow,
}

#[derive(Serialize)]
struct VipCounterRow {
    vip: VipRef,
    #[serde(flatten)]
    counter: CounterRow,
}

#[derive(Serialize)]
struct BackendCounterRow {
    vip: String,
    vip_id: u32,
    id: u32,
    address: String,
    #[serde(flatten)]
    counter: CounterRow,
}

#[derive(Serialize)]
struct StatsView {
    at: String,
    interval_seconds: Option<f64>,
    reasons: Vec<ReasonRow>,
    vips: Vec<VipCounterRow>,
    backends: Vec<BackendCounterRow>,
}

fn counter_row(now: Counter, before: Option<Counter>, seconds: Option<f64>) -> CounterRow {
    let rate = |now: u64, before: u64| {
        seconds.filter(|seconds| *seconds > 0.0).map(|seconds| now.saturating_sub(before) as f64 / seconds)
    };
    CounterRow {
        packets: now.packets,
        bytes: now.bytes,
        packets_per_second: before.and_then(|before| rate(now.packets, before.packets)).map(round2),
        bytes_per_second: before.and_then(|before| rate(now.bytes, before.bytes)).map(round2),
    }
}

fn stats_view(state: &State, sample: &Sample, previous: Option<&Sample>) -> StatsView {
    let seconds = previous.map(|previous| sample.at.duration_since(previous.at).as_secs_f64());
    let reasons = sample
        .reasons
        .iter()
        .enumerate()
        .map(|(index, counter)| ReasonRow {
            reason: REASON_NAMES.get(index).copied().unwrap_or("unknown"),
            index,
            counter: counter_row(*counter, previous.and_then(|previous| previous.reasons.get(index).copied()), seconds),
        })
        .collect();
    let vips = sample
        .vips
        .iter()
        .map(|(key, meta, counter)| {
            let before = previous
                .and_then(|previous| previous.vips.iter().find(|(k, m, _)| k == key && m.vip_id == meta.vip_id))
                .map(|(_, _, c)| *c);
            VipCounterRow { vip: vip_ref(state, key, meta), counter: counter_row(*counter, before, seconds) }
        })
        .collect();
    let backends = sample
        .backends
        .iter()
        .map(|(id, backend, counter)| {
            let before = previous
                .and_then(|previous| previous.backends.iter().find(|(i, b, _)| i == id && b == backend))
                .map(|(_, _, c)| *c);
            BackendCounterRow {
                vip: state.vip_name(backend.vip_id),
                vip_id: backend.vip_id,
                id: *id,
                address: ip(&backend.address, backend.family),
                counter: counter_row(*counter, before, seconds),
            }
        })
        .collect();
    StatsView {
        at: utc(sample.wall),
        interval_seconds: seconds.map(|seconds| (seconds * 1000.0).round() / 1000.0),
        reasons,
        vips,
        backends,
    }
}

fn render_stats(report: &StatsView) -> String {
    let rates = report.interval_seconds.is_some();
    let columns = |first: &'static [&'static str]| -> Vec<&'static str> {
        let mut columns = first.to_vec();
        columns.extend([">PACKETS", ">BYTES"]);
        if rates {
            columns.extend([">PKT/S", ">BYTES/S"]);
        }
        columns
    };
    let cells = |counter: &CounterRow| -> Vec<String> {
        let mut cells = vec![counter.packets.to_string(), human_bytes(counter.bytes as f64)];
        if rates {
            cells.push(counter.packets_per_second.map_or_else(|| "-".into(), |rate| format!("{rate:.1}")));
            cells.push(counter.bytes_per_second.map_or_else(|| "-".into(), |rate| format!("{}/s", human_bytes(rate))));
        }
        cells
    };
    let mut text = match report.interval_seconds {
        Some(seconds) => format!("== {} (rates over {seconds:.3} s)\n", report.at),
        None => format!("== {}\n", report.at),
    };
    let mut reasons = Table::new(&columns(&["REASON"]));
    for row in &report.reasons {
        let mut line = vec![row.reason.to_string()];
        line.extend(cells(&row.counter));
        reasons.row(line);
    }
    text.push_str(&reasons.render());
    text.push('\n');
    if report.vips.is_empty() {
        text.push_str("no VIPs published\n");
    } else {
        let mut vips = Table::new(&columns(&["VIP", "ADDRESS", ">ID"]));
        for row in &report.vips {
            let mut line = vec![
                row.vip.name.clone().unwrap_or_else(|| format!("#{}", row.vip.vip_id)),
                row.vip.address.clone(),
                row.vip.vip_id.to_string(),
            ];
            line.extend(cells(&row.counter));
            vips.row(line);
        }
        text.push_str(&vips.render());
    }
    text.push('\n');
    if report.backends.is_empty() {
        text.push_str("no backends\n");
    } else {
        let mut backends = Table::new(&columns(&["VIP", "BACKEND", ">ID"]));
        for row in &report.backends {
            let mut line = vec![row.vip.clone(), row.address.clone(), row.id.to_string()];
            line.extend(cells(&row.counter));
            backends.row(line);
        }
        text.push_str(&backends.render());
    }
    text
}

/// Prints the counters; with `watch`, again every interval with rates, `count` times in all
/// (until interrupted without `count`).
pub fn stats(target: &Target, watch: Option<Duration>, count: Option<u64>) -> anyhow::Result<()> {
    if count == Some(0) {
        bail!("--count 0: expected at least 1");
    }
    let view = open(&target.paths)?;
    let state = State::read(&target.paths);
    state.warn();
    let prints = match watch {
        None => 1,
        Some(_) => count.unwrap_or(u64::MAX),
    };
    let mut previous: Option<Sample> = None;
    let mut printed = 0;
    let start = Instant::now();
    loop {
        let sample = Sample::take(&view)?;
        let report = stats_view(&state, &sample, previous.as_ref());
        if target.json {
            // One object per line under --watch, so a consumer can read the stream.
            let mut line =
                if watch.is_some() { serde_json::to_string(&report)? } else { serde_json::to_string_pretty(&report)? };
            line.push('\n');
            emit(&line)?;
        } else {
            let mut text = render_stats(&report);
            if watch.is_some() && printed + 1 < prints {
                text.push('\n');
            }
            emit(&text)?;
        }
        printed += 1;
        previous = Some(sample);
        let Some(interval) = watch else { break };
        if printed >= prints {
            break;
        }
        // Fixed cadence: sleep to the next multiple of the interval, not interval after the print.
        let next = start + interval.mul_f64(printed as f64);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// which

#[derive(Serialize)]
struct BackendRef {
    /// None when the address is not a backend of the VIP.
    id: Option<u32>,
    address: String,
}

#[derive(Serialize)]
struct TrackedView {
    backend_id: u32,
    address: String,
    health_bit: String,
    age_ms: u64,
    /// Whether the entry still decides (its backend is up or draining, still of this VIP,
    /// and, for UDP, not expired); if not, the packet takes the table like a new flow.
    decides: bool,
}

#[derive(Serialize)]
struct NewFlowView {
    /// The flow's slot in the VIP's table.
    slot: u32,
    table_size: u32,
    /// The slot's backend or the next up one within `MAX_SLOT_PROBES` slots; none if all
    /// are down.
    backend: Option<BackendRef>,
}

#[derive(Serialize)]
struct WhichView {
    source: String,
    destination: String,
    protocol: String,
    vip: Option<VipRef>,
    /// The program's action: "XDP_TX", "XDP_PASS", "XDP_DROP", ...
    verdict: &'static str,
    /// Where the program sent the packet (XDP_TX of an encapsulated packet).
    backend: Option<BackendRef>,
    /// In words: why this verdict.
    explanation: String,
    /// The flow-table entry the packet found, if any.
    tracked: Option<TrackedView>,
    /// Where a new flow with this 5-tuple goes (from the table and the health bits).
    new_flow: Option<NewFlowView>,
    /// Whether the test run created a flow entry that was removed afterwards.
    flow_entry_removed: bool,
    /// The program's answer differs from what the maps predicted (they changed during the run).
    mismatch: Option<String>,
}

fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// The client's packet: a TCP SYN (the first packet of a new connection) or a UDP datagram,
/// from a locally administered MAC to the load balancer's interface MAC.
fn crafted_packet(
    source: SocketAddr,
    destination: SocketAddr,
    protocol: Protocol,
    interface_mac: [u8; 6],
) -> anyhow::Result<Vec<u8>> {
    const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    let ethernet = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, interface_mac);
    let ip = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ethernet.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => ethernet.ipv6(s.octets(), d.octets(), 64),
        _ => bail!("{source} and {destination} are of different address families"),
    };
    let mut frame = Vec::new();
    match protocol {
        Protocol::Tcp => ip.tcp(source.port(), destination.port(), 1, 64_240).syn().write(&mut frame, &[]),
        Protocol::Udp => ip.udp(source.port(), destination.port()).write(&mut frame, b"which"),
    }
    .context("building the test packet")?;
    Ok(frame)
}

/// The outer destination of an encapsulated frame (IPIP / 6in4 / 4in6 / IP6IP6), if it is one.
fn tunnel_destination(frame: &[u8]) -> Option<IpAddr> {
    let ether_type = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let ip = frame.get(14..)?;
    match ether_type {
        0x0800 if matches!(ip.get(9), Some(4 | 41)) => Some(IpAddr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?)),
        0x86dd if matches!(ip.get(6), Some(4 | 41)) => Some(IpAddr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?)),
        _ => None,
    }
}

/// The backend a new flow takes, as `probe_table` in the data plane picks it.
fn predict(
    table: &[u32],
    meta: &VipMeta,
    key: &FlowKey,
    backends: &BTreeMap<u32, (Backend, u32)>,
) -> (u32, Option<u32>) {
    let size = table.len() as u32;
    let hash = hash::flow_key_hash(key, meta.flags & VIP_HASH_SOURCE_ONLY != 0);
    let first = hash::slot_of(hash, size);
    let mut slot = first;
    for _ in 0..MAX_SLOT_PROBES.min(size) {
        let id = table[slot as usize];
        if backends.get(&id).is_some_and(|(backend, health)| *health == HEALTH_UP && backend.vip_id == meta.vip_id) {
            return (first, Some(id));
        }
        slot = if slot + 1 >= size { 0 } else { slot + 1 };
    }
    (first, None)
}

/// Runs the pinned program on a crafted first packet of the flow and reports where it went.
///
/// Side effects, kept as small as the kernel allows: the run counts one packet in the VIP,
/// backend and reason counters and spends one flow-insert token; a flow entry the run created
/// (the flow was not tracked) is deleted again, so a new flow still takes the table. A flow that
/// was tracked keeps its entry, updated exactly as its next real packet would update it.
pub fn which(target: &Target, source: SocketAddr, destination: SocketAddr, protocol: Protocol) -> anyhow::Result<()> {
    let paths = &target.paths;
    let view = open(paths)?;
    let state = State::read(paths);
    state.warn();
    let (source_words, family) = address::to_words(source.ip());
    let (destination_words, destination_family) = address::to_words(destination.ip());
    if family != destination_family {
        bail!("{source} and {destination} are of different address families");
    }
    let protocol_number = match protocol {
        Protocol::Tcp => PROTOCOL_TCP,
        Protocol::Udp => PROTOCOL_UDP,
    };
    let key = FlowKey {
        source: source_words,
        destination: destination_words,
        source_port: source.port().to_be(),
        destination_port: destination.port().to_be(),
        protocol: protocol_number,
        family,
        _padding: [0; 2],
    };
    let vips: BTreeMap<VipKey, VipMeta> = view.vips()?.into_iter().collect();
    let found = lookup_vip(&vips, family, destination_words, key.destination_port, protocol_number);
    let backends = backends_by_id(&view)?;
    let config = view.config()?;
    let reference = |id: u32| BackendRef { id: Some(id), address: backend_address(&backends, id) };

    // What the maps say, before the run.
    let mut counters = Counters::open_pinned(paths).context("opening the flow table")?;
    let before = counters.flow(&key);
    let now = monotonic_ns();
    let tracking = found.is_some_and(|(_, meta)| meta.flags & VIP_NO_FLOW_TRACKING == 0);
    let tracked = match (found, before) {
        (Some((_, meta)), Some(value)) if tracking => {
            let usable = backends.get(&value.backend_id).is_some_and(|(backend, health)| {
                backend.vip_id == meta.vip_id && (*health == HEALTH_UP || *health == HEALTH_DRAINING)
            });
            let expired = protocol_number == PROTOCOL_UDP
                && config.is_some_and(|config| now.saturating_sub(value.last_seen_ns) > config.udp_idle_timeout_ns);
            Some(TrackedView {
                backend_id: value.backend_id,
                address: backend_address(&backends, value.backend_id),
                health_bit: backends
                    .get(&value.backend_id)
                    .map_or_else(|| "absent".into(), |(_, health)| health_name(*health)),
                age_ms: now.saturating_sub(value.last_seen_ns) / 1_000_000,
                decides: usable && !expired,
            })
        }
        _ => None,
    };
    let new_flow = match found {
        Some((vip_key, meta)) => {
            let table = view.table(&vip_key).filter(|table| !table.is_empty());
            table.map(|table| {
                let (slot, id) = predict(&table, &meta, &key, &backends);
                NewFlowView { slot, table_size: table.len() as u32, backend: id.map(reference) }
            })
        }
        None => None,
    };

    // The program's answer.
    let interface_mac = config.map_or([0x02, 0, 0, 0, 0, 0x02], |config| config.interface_mac);
    let frame = crafted_packet(source, destination, protocol, interface_mac)?;
    let mut out = vec![0u8; frame.len() + 256];
    let result = view
        .program()
        .test_run(TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..TestRunOptions::default() })
        .context("running the pinned program on the test packet (BPF_PROG_TEST_RUN)")?;
    out.truncate(result.data_size_out as usize);
    let mut flow_entry_removed = false;
    if before.is_none() && counters.flow(&key).is_some() {
        counters.forget_flow(&key).context("removing the flow entry the test packet created")?;
        flow_entry_removed = true;
    }

    let action = result.return_value;
    let outer = if action == XDP_TX { tunnel_destination(&out) } else { None };
    let sent_to = outer.map(|address| {
        let vip_id = found.map(|(_, meta)| meta.vip_id);
        let id = backends
            .iter()
            .filter(|(_, (backend, _))| Some(backend.vip_id) == vip_id)
            .find(|(_, (backend, _))| address::from_words(&backend.address, backend.family) == Some(address))
            .map(|(id, _)| *id);
        (address, id)
    });
    let expected = match (&tracked, &new_flow) {
        (Some(tracked), _) if tracked.decides => Some(tracked.backend_id),
        (_, Some(new_flow)) => new_flow.backend.as_ref().and_then(|backend| backend.id),
        _ => None,
    };
    let owned = found.is_some_and(|(_, meta)| meta.flags & VIP_OWNED != 0);
    let explanation = match (found, action) {
        (None, _) => format!("{destination} {protocol} is not a VIP: the packet goes to the kernel"),
        (Some(_), _) if !owned => "this node does not own the VIP: the packet goes to the kernel".into(),
        (Some(_), XDP_TX) if sent_to.is_some() => match &tracked {
            Some(tracked) if tracked.decides => "an existing tracked flow: its entry decides".into(),
            Some(_) => "a tracked flow whose backend can no longer take it: re-chosen from the table".into(),
            None if !tracking => "flow tracking is off for this VIP: every packet takes the table".into(),
            None => "a new flow: its table slot (or the next up backend) decides".into(),
        },
        (Some((_, meta)), XDP_PASS | XDP_DROP) if expected.is_none() => format!(
            "no backend of the VIP is up: its policy is to {}",
            if meta.flags & VIP_ALL_DOWN_PASS != 0 { "pass to the kernel" } else { "drop" }
        ),
        (Some(_), _) => "see the reason counters (`failover-ctl stats`)".into(),
    };
    let mismatch = match (found, sent_to) {
        (Some(_), Some((address, id))) if id != expected => Some(format!(
            "the program sent the packet to {address} (id {}) but the maps predicted {}: did they change during the run?",
            id.map_or_else(|| "?".into(), |id| id.to_string()),
            expected.map_or_else(|| "no backend".into(), |id| format!("id {id}"))
        )),
        _ => None,
    };
    let report = WhichView {
        source: source.to_string(),
        destination: destination.to_string(),
        protocol: protocol.to_string(),
        vip: found.map(|(vip_key, meta)| vip_ref(&state, &vip_key, &meta)),
        verdict: action_name(action),
        backend: sent_to.map(|(address, id)| BackendRef { id, address: address.to_string() }),
        explanation,
        tracked,
        new_flow,
        flow_entry_removed,
        mismatch,
    };
    if target.json {
        return emit_json(&report);
    }
    let mut lines: Vec<(&str, String)> = vec![("flow", format!("{source} -> {destination} {protocol}"))];
    lines.push((
        "vip",
        report.vip.as_ref().map_or_else(
            || "none".into(),
            |vip| {
                format!(
                    "{} {} (vip id {})",
                    vip.name.clone().unwrap_or_else(|| format!("#{}", vip.vip_id)),
                    vip.address,
                    vip.vip_id
                )
            },
        ),
    ));
    let verdict = match &report.backend {
        Some(BackendRef { id: None, address }) => format!("XDP_TX to {address} (not a backend of the VIP)"),
        Some(BackendRef { id: Some(id), address }) => format!("XDP_TX to backend {address} (id {id})"),
        None => report.verdict.to_string(),
    };
    lines.push(("verdict", verdict));
    lines.push(("why", report.explanation.clone()));
    if report.vip.is_some() && tracking {
        lines.push((
            "tracked",
            match &report.tracked {
                Some(tracked) => format!(
                    "yes: backend {} (id {}, {}), {} old{}",
                    tracked.address,
                    tracked.backend_id,
                    tracked.health_bit,
                    short_duration(tracked.age_ms),
                    if tracked.decides { "" } else { "; no longer decides" }
                ),
                None => "no".into(),
            },
        ));
    }
    if let Some(new_flow) = &report.new_flow {
        lines.push((
            "new flow",
            format!(
                "slot {} of {} -> {}",
                new_flow.slot,
                new_flow.table_size,
                new_flow.backend.as_ref().map_or_else(
                    || "no backend up".into(),
                    |backend| format!("backend {} (id {})", backend.address, backend.id.unwrap_or_default()),
                )
            ),
        ));
    }
    if report.flow_entry_removed {
        lines.push(("note", "the flow entry the test packet created was removed again".into()));
    }
    if let Some(mismatch) = &report.mismatch {
        lines.push(("warning", mismatch.clone()));
    }
    let width = lines.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let text: String = lines.iter().map(|(name, value)| format!("{name:width$}  {value}\n")).collect();
    emit(&text)
}

// ---------------------------------------------------------------------------------------------
// events

#[derive(Serialize)]
struct EventView {
    /// `at` as UTC.
    time: String,
    #[serde(flatten)]
    event: Event,
}

impl From<Event> for EventView {
    fn from(event: Event) -> Self {
        Self { time: utc(event.at), event }
    }
}

impl std::ops::Deref for EventView {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

#[derive(Serialize)]
struct EventsView {
    instance: String,
    total: usize,
    events: Vec<EventView>,
}

pub fn events(target: &Target, limit: usize) -> anyhow::Result<()> {
    let paths = &target.paths;
    let path = paths.events();
    if !path.exists() && !PinnedView::exists(paths) {
        return Err(missing_instance(paths));
    }
    let all = events::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let total = all.len();
    let recent: Vec<EventView> = all.into_iter().skip(total.saturating_sub(limit)).map(EventView::from).collect();
    if target.json {
        return emit_json(&EventsView { instance: paths.instance.clone(), total, events: recent });
    }
    if recent.is_empty() {
        let why = if path.exists() { "" } else { " (no event log yet)" };
        return emit(&format!("no events{why} in {}\n", path.display()));
    }
    let mut table = Table::new(&["TIME", "KIND", "VIP", "BACKEND", "DETAIL"]);
    for event in &recent {
        let mut detail = event.detail.clone();
        if let Some(timings) = &event.timings {
            detail.push_str(&format!(
                " [to {}: health bit +{}, table +{} after the verdict; probe at {}]",
                timings.to,
                micros(timings.health_written_us),
                micros(timings.table_published_us),
                utc(timings.probe_at)
            ));
        }
        table.row(vec![
            event.time.clone(),
            event.kind.clone(),
            event.vip.clone().unwrap_or_else(|| "-".into()),
            event.backend.clone().unwrap_or_else(|| "-".into()),
            detail,
        ]);
    }
    let mut text = table.render();
    if total > recent.len() {
        text.push_str(&format!("last {} of {} events\n", recent.len(), total));
    }
    emit(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_unix_milliseconds() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_795_328_523_123), "2026-11-22T06:22:03.123Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(&["NAME", ">N"]);
        table.row(vec!["a".into(), "1".into()]);
        table.row(vec!["long".into(), "100".into()]);
        assert_eq!(table.render(), "NAME    N\na       1\nlong  100\n");
    }

    #[test]
    fn tunnel_destination_reads_the_outer_header() {
        let mut frame = vec![0u8; 14 + 20];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame[14 + 9] = 4;
        frame[14 + 16..14 + 20].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(tunnel_destination(&frame), Some("192.0.2.7".parse().unwrap()));
        frame[14 + 9] = 6;
        assert_eq!(tunnel_destination(&frame), None);
        assert_eq!(tunnel_destination(&frame[..20]), None);
    }

    #[test]
    fn short_durations() {
        assert_eq!(short_duration(850), "850ms");
        assert_eq!(short_duration(12_000), "12s");
        assert_eq!(short_duration(184_000), "3m04s");
        assert_eq!(short_duration(7_500_000), "2h05m");
        assert_eq!(short_duration(273_600_000), "3d04h");
    }
}
