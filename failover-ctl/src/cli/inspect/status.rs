//! `status`: the instance at a glance — daemon, interfaces, next hop, counts of VIPs and
//! backends, failovers and the last event.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context};
use failover_common::maps::{HEALTH_DRAINING, HEALTH_UP};
use serde::Serialize;

use super::{
    events::EventView,
    instance::{backends_by_id, open, State},
    render::{emit, emit_json, fields, utc, yes_no},
    Target,
};
use crate::{
    daemon::{
        control, events,
        status::{Request, Status},
    },
    loader,
    paths::InstancePaths,
};

/// How long `status` waits for the daemon's control socket before calling it unresponsive
/// (the daemon answers from its state owner, which may be busy publishing).
const CONTROL_PATIENCE: Duration = Duration::from_secs(2);


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
pub(super) fn ask_status(paths: &InstancePaths, patience: Duration) -> anyhow::Result<Option<Status>> {
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
    emit(&fields(&lines))
}
