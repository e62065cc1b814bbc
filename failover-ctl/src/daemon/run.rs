//! `failover-ctl run`: loads (or adopts) the pinned data plane, attaches it, starts the state
//! owner, the probes, the control socket, the metrics endpoint and the signal handlers, and
//! leaves the data plane forwarding when it stops.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use aya::programs::XdpMode;
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot},
};

use super::{
    control,
    controller::{Announcing, Controller, FlowSync, Links, LinksFn, Message, Start},
    events::EventLog,
    status::{InterfaceStatus, Request, Status},
};
use crate::{
    config::{self, Config, NextHop},
    loader::{self, Dataplane, LoadOptions},
    metrics::{self, Traffic},
    netlink::Netlink,
    ownership::Ownership,
    paths::InstancePaths,
    pin::PinnedView,
};

/// How long the next hop's MAC may take to resolve.
const NEIGHBOUR_TIMEOUT: Duration = Duration::from_secs(3);

/// Attaches the program to `interface` as `mode` asks; `auto` falls back to generic mode with
/// a warning. Returns the mode used ("pinned" when an earlier daemon's link is kept).
fn attach(dataplane: &mut Dataplane, paths: &InstancePaths, interface: &str, mode: config::XdpMode) -> anyhow::Result<String> {
    if paths.link(interface).exists() {
        dataplane.attach_pinned(paths, interface, XdpMode::Driver)?;
        return Ok("pinned".into());
    }
    match mode {
        config::XdpMode::Native => {
            dataplane.attach_pinned(paths, interface, XdpMode::Driver)?;
            Ok("native".into())
        }
        config::XdpMode::Generic => {
            dataplane.attach_pinned(paths, interface, XdpMode::Skb)?;
            Ok("generic".into())
        }
        config::XdpMode::Auto => match dataplane.attach_pinned(paths, interface, XdpMode::Driver) {
            Ok(()) => Ok("native".into()),
            Err(error) => {
                tracing::warn!("{interface}: native XDP refused ({error}); falling back to generic mode");
                dataplane.attach_pinned(paths, interface, XdpMode::Skb)?;
                Ok("generic".into())
            }
        },
    }
}

/// The links callback: attaches to the configured interfaces (detaching dropped ones) and
/// resolves the MACs through netlink.
fn links(paths: InstancePaths, netlink: Arc<Netlink>, runtime: tokio::runtime::Handle) -> LinksFn {
    Box::new(move |dataplane: &mut Dataplane, config: &Config| {
        // Resolve everything before changing any attachment.
        let mut found = Vec::new();
        for name in &config.interfaces {
            let interface = runtime
                .block_on(netlink.interface(name))
                .with_context(|| format!("interface {name}"))?;
            found.push(interface);
        }
        let next_hop_mac = match config.next_hop {
            NextHop::Mac(mac) => mac,
            NextHop::Address(address) => runtime
                .block_on(netlink.resolve_neighbour(address, NEIGHBOUR_TIMEOUT))
                .with_context(|| format!("next hop {address}"))?,
        };
        for name in loader::attached_interfaces(&paths) {
            if !config.interfaces.contains(&name) {
                Dataplane::detach_pinned(&paths, &name)?;
                tracing::info!("{name}: detached");
            }
        }
        let mut interfaces = Vec::new();
        for interface in &found {
            let mode = attach(dataplane, &paths, &interface.name, config.xdp_mode)?;
            tracing::info!("{}: attached ({mode})", interface.name);
            interfaces.push(InterfaceStatus {
                name: interface.name.clone(),
                ifindex: interface.index,
                mac: crate::address::format_mac(&interface.mac),
                mode,
            });
        }
        Ok(Links { interfaces, interface_mac: found[0].mac, next_hop_mac })
    })
}

/// The metrics text: the daemon's status plus the counters read from the pinned maps.
fn render(status: Status, view: &PinnedView) -> String {
    let counters = view.counters();
    let mut traffic = Traffic { vips: BTreeMap::new(), backends: BTreeMap::new(), reasons: counters.reasons().unwrap_or_default() };
    for vip in &status.vips {
        if let Ok(counter) = counters.vip(vip.vip_id) {
            traffic.vips.insert(vip.vip_id, counter);
        }
        for backend in &vip.backends {
            if let Ok(counter) = counters.backend(backend.id) {
                traffic.backends.insert(backend.id, counter);
            }
        }
    }
    metrics::render(status, traffic)
}

/// Runs the daemon until SIGTERM or SIGINT, which keep the announced routes (a restart is
/// hitless), or SIGUSR1, which withdraws every VIP and waits `announce.withdraw_grace` first (a
/// stop for good: the systemd unit sends it on `systemctl stop` and at shutdown, and SIGTERM on
/// restarts). A configuration or load error stops it before the data plane is touched.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = config::load(config_path)?;
    let paths = InstancePaths::new(&config.instance);
    std::fs::create_dir_all(&paths.run_dir).with_context(|| format!("creating {}", paths.run_dir.display()))?;
    std::fs::set_permissions(&paths.run_dir, std::fs::Permissions::from_mode(0o700))?;
    let socket = paths.control_socket();
    if control::request(&socket, &Request::Status).is_ok() {
        anyhow::bail!("instance {} is already running (its control socket {} answers)", config.instance, socket.display());
    }
    let _ = std::fs::remove_file(&socket);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let adopted = PinnedView::exists(&paths);
    let dataplane = if adopted {
        tracing::info!("adopting the pinned data plane in {}", paths.pin_dir.display());
        Dataplane::adopt(&paths)?
    } else {
        let options = LoadOptions { flow_entries: config.flows.capacity, ..LoadOptions::default() };
        Dataplane::create_pinned(&paths, options)?
    };
    let view = PinnedView::open(&paths)?;
    let netlink = {
        let _guard = runtime.enter();
        Arc::new(Netlink::new()?)
    };
    let events = EventLog::open(&paths.events())?;
    let previous = std::fs::read(paths.state()).ok().and_then(|bytes| serde_json::from_slice::<Status>(&bytes).ok());
    let shared = Arc::new(Mutex::new(Status::default()));

    runtime.block_on(async {
        let (sender, mut receiver) = mpsc::channel::<Message>(1024);
        let (probe_sender, mut probe_receiver) = mpsc::channel(4096);
        let forward = sender.clone();
        tokio::spawn(async move {
            while let Some(event) = probe_receiver.recv().await {
                if forward.send(Message::Probe(event)).await.is_err() {
                    break;
                }
            }
        });

        // The election task first: it takes the state owner's updates from the start, and
        // stays ineligible for mastership until the state owner says every backend has a
        // verdict.
        let (elections, election_task) = if config.elections.is_empty() {
            (None, None)
        } else {
            // Pins of a program older than elections have no OWNERSHIP map: this says so.
            let ownership = Ownership::open_pinned(&paths).context("opening the ownership map")?;
            match super::elections::start(&config, netlink.clone(), Box::new(ownership), sender.clone()).await? {
                Some((handle, task)) => (Some(handle), Some(task)),
                None => (None, None),
            }
        };

        // Flow sync: its socket now, so a port in use stops the start with its name; its
        // ticks and datagrams reach the state owner as messages.
        let (flow_sync, flow_sync_task) = match &config.flow_sync {
            None => (None, None),
            Some(settings) => {
                let (inputs, mut received) = mpsc::channel(256);
                let (outgoing, handle) = crate::flow_sync::task::start(settings, inputs).await?;
                let owner = sender.clone();
                tokio::spawn(async move {
                    while let Some(input) = received.recv().await {
                        if owner.send(Message::FlowSync(input)).await.is_err() {
                            break;
                        }
                    }
                });
                (Some(FlowSync::new(settings, outgoing)), Some(handle))
            }
        };

        // The state owner, on its own thread.
        let (ready, started) = oneshot::channel();
        let start = Start {
            dataplane,
            config_path: config_path.to_path_buf(),
            config: config.clone(),
            links: links(paths.clone(), netlink.clone(), tokio::runtime::Handle::current()),
            adopted,
            events,
            state_path: paths.state(),
            shared: shared.clone(),
            probe_sender,
            runtime: tokio::runtime::Handle::current(),
            previous: if adopted { previous } else { None },
            elections,
            announcing: config.announce.enabled.then(|| Announcing { netlink: netlink.clone(), runtime: tokio::runtime::Handle::current() }),
            flow_sync,
        };
        let owner = std::thread::Builder::new().name("state-owner".into()).spawn(move || {
            let mut controller = match Controller::start(start) {
                Ok(controller) => controller,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            while let Some(message) = receiver.blocking_recv() {
                if !controller.handle(message) {
                    break;
                }
            }
        })?;
        started.await.context("the state owner stopped while starting")??;

        let listener = UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        tokio::spawn(control::serve(listener, sender.clone()));

        match TcpListener::bind(config.metrics_address).await {
            Ok(listener) => {
                let view = Arc::new(Mutex::new(view));
                let shared = shared.clone();
                let source: metrics::Render = Arc::new(move || {
                    let status = shared.lock().map(|status| status.clone()).unwrap_or_default();
                    match view.lock() {
                        Ok(view) => render(status, &view),
                        Err(_) => String::new(),
                    }
                });
                tracing::info!("metrics on http://{}/metrics", config.metrics_address);
                tokio::spawn(metrics::serve(listener, source));
            }
            Err(error) => tracing::warn!("metrics endpoint {} not started: {error}", config.metrics_address),
        }

        let ticks = sender.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            loop {
                interval.tick().await;
                if ticks.send(Message::Tick).await.is_err() {
                    break;
                }
            }
        });

        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut withdraw = signal(SignalKind::user_defined1())?;
        tracing::info!("instance {} running (pid {})", config.instance, std::process::id());
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    let (reply, answer) = oneshot::channel();
                    if sender.send(Message::Control(Request::Reload, reply)).await.is_ok() {
                        if let Ok(response) = answer.await {
                            tracing::info!("SIGHUP reload: {}", response.message);
                        }
                    }
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = withdraw.recv() => {
                    let (reply, answer) = oneshot::channel();
                    if sender.send(Message::Withdraw(reply)).await.is_ok() {
                        if let Ok(Some(grace)) = answer.await {
                            tracing::info!("SIGUSR1: every VIP withdrawn; stopping in {grace:?} (announce.withdraw_grace) once the routers have moved the flows");
                            // Still the controller meanwhile; SIGTERM or SIGINT cut the wait short.
                            tokio::select! {
                                _ = tokio::time::sleep(grace) => {}
                                _ = terminate.recv() => {}
                                _ = interrupt.recv() => {}
                            }
                        }
                    }
                    break;
                }
            }
        }
        tracing::info!("stopping; the data plane stays attached and keeps forwarding");
        if let Some(task) = election_task {
            task.stop().await;
        }
        if let Some(task) = flow_sync_task {
            task.abort();
        }
        let _ = sender.send(Message::Shutdown).await;
        let _ = tokio::task::spawn_blocking(move || owner.join()).await;
        let _ = std::fs::remove_file(&socket);
        anyhow::Ok(())
    })
}
