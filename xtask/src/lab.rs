//! `cargo xtask lab`: the live demo. Builds a client, a router, the load balancer and three HTTP
//! backends in private namespaces, runs `failover-ctl run` on real packets, drives traffic at
//! the VIP, and injects faults in turn (kill a backend, bring it back, drain one, kill -9 the
//! daemon), printing each backend's share once a second and, per fault, how fast the daemon
//! reacted and what the clients saw.
//!
//! Cleans up on exit, on error and on Ctrl-C, and at start removes what crashed runs left.
//! `--keep` leaves the lab running for the CLI; `--cleanup` removes kept labs. Fails when a check
//! of what it demonstrates does not hold (see `summary`).

mod control;
mod summary;
mod topology;
mod traffic;

use std::{
    fs,
    process::Child,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use control::{check_interrupt, now_millis, sleep, Daemon, Event, Programs};
use summary::{failed_checks, print_rows, Phase, Row};
use topology::{backend_address, backend_name, Topology, BACKENDS, PORT, VIP};
use traffic::{Settings, Snapshot, Stats};

#[derive(clap::Args)]
pub struct Arguments {
    /// Leave the lab running at the end (daemon, backends, namespaces) and print how to use it;
    /// `cargo xtask lab --cleanup` removes it. Ctrl-C still cleans up.
    #[arg(long)]
    keep: bool,
    /// Seconds to watch the traffic after each fault.
    #[arg(long, default_value_t = 4, value_name = "SECONDS")]
    duration: u64,
    /// Short phases (2 s each) for a quick look.
    #[arg(long, conflicts_with = "duration")]
    quick: bool,
    /// Remove every lab left running (kept or crashed) and exit.
    #[arg(long)]
    cleanup: bool,
    /// Threads issuing short requests (a new connection each).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Short requests per second, over all workers.
    #[arg(long, default_value_t = 150)]
    rate: u32,
    /// Long-lived keep-alive connections, one request every 100 ms each.
    #[arg(long, default_value_t = 12)]
    connections: usize,
    /// Use the release binaries already built (skip `cargo build`).
    #[arg(long, hide = true)]
    no_build: bool,
    /// Check the network, backends and traffic without the daemon: the router sends the VIP
    /// straight to backend1.
    #[arg(long, hide = true)]
    without_daemon: bool,
}

/// Longest wait for the daemon's reaction to a fault.
const REACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for every backend to come up after the daemon starts.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub fn run(arguments: Arguments) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and loads XDP programs: run it as root");
    }
    control::install_signal_handler();
    if arguments.cleanup {
        let programs = Programs::find().ok();
        let removed = control::cleanup_runs(programs.as_ref(), true)?;
        netlab::cleanup_stale()?;
        match removed.is_empty() {
            true => println!("lab: nothing to clean up"),
            false => println!("lab: removed {}", removed.join(", ")),
        }
        return Ok(());
    }
    crate::prerequisites::ensure(crate::prerequisites::Task::Lab)?;
    if !arguments.no_build {
        crate::command::run(crate::command::cargo()?.args([
            "build",
            "--release",
            "--package",
            "failover-ctl",
            "--package",
            "netlab",
        ]))?;
    }
    let programs = Programs::find()?;
    netlab::cleanup_stale().context("removing namespaces of crashed runs")?;
    for instance in control::cleanup_runs(Some(&programs), false)? {
        eprintln!("lab: removed {instance}, left by a run that died");
    }

    let pid = std::process::id();
    let dir = control::run_dir(pid);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut lab = Lab {
        pid,
        topology: None,
        daemon: None,
        backends: Vec::new(),
        decaps: Vec::new(),
    };
    let outcome = lab
        .setup(&programs, &arguments)
        .and_then(|()| show(&mut lab, &arguments));
    if outcome.is_ok() && arguments.keep && !arguments.without_daemon {
        lab.keep()?;
    } else {
        if outcome.is_err() {
            if let Some(daemon) = &lab.daemon {
                eprintln!("lab: {}", control::log_tail(&daemon.log));
            }
        }
        eprintln!("lab: cleaning up");
        lab.cleanup(&programs)?;
    }
    outcome
}

/// Everything one run started; `cleanup` or `keep` ends it.
struct Lab {
    pid: u32,
    topology: Option<Topology>,
    daemon: Option<Daemon>,
    /// Each backend's HTTP server, `None` while it is killed.
    backends: Vec<Option<Child>>,
    decaps: Vec<Child>,
}

impl Lab {
    fn setup(&mut self, programs: &Programs, arguments: &Arguments) -> Result<()> {
        let dir = control::run_dir(self.pid);
        eprintln!("lab: building the network");
        let topology = self.topology.insert(Topology::build(self.pid)?);
        for (index, namespace) in topology.backends.iter().enumerate() {
            self.backends.push(Some(control::start_backend(
                programs, namespace, index, &dir,
            )?));
        }
        if arguments.without_daemon {
            topology
                .router
                .ip(&format!("route replace {VIP}/32 via 10.100.11.2"))?;
            return Ok(());
        }

        let config = dir.join("failover.toml");
        let instance = control::instance_name(self.pid);
        let mac = topology.router.mac(topology::ROUTER_LB_INTERFACE)?;
        fs::write(&config, control::config_text(&instance, mac))
            .with_context(|| format!("writing {}", config.display()))?;
        let daemon = Daemon::new(
            programs,
            instance,
            config,
            dir.join("daemon.log"),
            &topology.lb,
        )?;
        daemon.require(&[
            "run", "status", "events", "drain", "undrain", "decap", "teardown",
        ])?;
        for namespace in &topology.backends {
            let decap =
                control::start_decap(programs, namespace, topology::BACKEND_INTERFACE, VIP, &dir)?;
            self.decaps.push(decap);
        }
        let napi = control::start_decap(
            programs,
            &topology.router,
            topology::ROUTER_LB_INTERFACE,
            topology::ROUTER_DECAP_PLACEHOLDER,
            &dir,
        )?;
        self.decaps.push(napi);
        let daemon = self.daemon.insert(daemon);
        eprintln!(
            "lab: starting `failover-ctl run --config {}`",
            daemon.config.display()
        );
        daemon.start()?;
        wait_ready(daemon, |backends| {
            (0..BACKENDS).all(|index| {
                control::find(backends, index).is_some_and(control::BackendState::serving_up)
            })
        })
        .context("waiting for every backend to be up and serving")?;
        for child in &mut self.decaps {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "a `failover-ctl decap` exited ({status}); see the decap-*.log files in {}",
                    dir.display()
                );
            }
        }
        Ok(())
    }

    /// Stops everything in order (decap programs detach, the daemon stops), then removes the
    /// data plane, runtime files, namespaces and the lab directory.
    fn cleanup(&mut self, programs: &Programs) -> Result<()> {
        for child in &mut self.decaps {
            control::stop(child, libc::SIGTERM, Duration::from_secs(2));
        }
        if let Some(daemon) = &mut self.daemon {
            daemon.terminate();
        }
        for child in self.backends.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The namespaces go in `cleanup_run`, after the teardown.
        if let Some(topology) = self.topology.take() {
            topology.keep();
        }
        control::cleanup_run(Some(programs), self.pid)
    }

    /// Leaves the lab running and says how to use it and remove it.
    fn keep(&mut self) -> Result<()> {
        let dir = control::run_dir(self.pid);
        fs::write(dir.join("kept"), b"").context("marking the lab as kept")?;
        let names = self.topology.take().map(Topology::keep).unwrap_or_default();
        let daemon = self.daemon.as_ref().context("no daemon")?;
        let client = topology::namespace_name("client", self.pid);
        println!();
        println!("The lab keeps running (namespaces: {}).", names.join(", "));
        println!("  {}", daemon.describe("status"));
        println!("  {}", daemon.describe("events"));
        println!(
            "  {}",
            daemon.describe(&format!(
                "drain {} {}",
                control::VIP_NAME,
                backend_address(2)
            ))
        );
        println!("  ip netns exec {client} curl -s http://{VIP}:{PORT}/    (if curl is installed)");
        println!("  logs and configuration: {}", dir.display());
        println!("Remove it with: cargo xtask lab --cleanup");
        // The children keep running after this process; nothing is waited for or killed.
        self.backends.clear();
        self.decaps.clear();
        self.daemon = None;
        Ok(())
    }
}

/// Polls `backends --json` until `ready` holds (or the daemon exits, or time runs out).
fn wait_ready(daemon: &mut Daemon, ready: impl Fn(&[control::BackendState]) -> bool) -> Result<()> {
    let end = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no status yet");
    while Instant::now() < end {
        check_interrupt()?;
        daemon.check_alive()?;
        match daemon.backends() {
            Ok(backends) if ready(&backends) => return Ok(()),
            Ok(backends) => last = format!("{backends:?}"),
            Err(error) => last = format!("{error:#}"),
        }
        sleep(Duration::from_millis(100))?;
    }
    bail!("not ready after {READY_TIMEOUT:?}; last: {last}")
}

/// Polls `events --json` for the first event from `since` (ms) on that `wanted` accepts.
fn wait_event(
    daemon: &mut Daemon,
    since: u64,
    wanted: impl Fn(&Event) -> bool,
) -> Result<Option<Event>> {
    let end = Instant::now() + REACTION_TIMEOUT;
    while Instant::now() < end {
        check_interrupt()?;
        daemon.check_alive()?;
        // A failed poll (the daemon just restarting, say) is retried.
        if let Ok(events) = daemon.events() {
            if let Some(event) = events
                .into_iter()
                .find(|event| event.at >= since && wanted(event))
            {
                return Ok(Some(event));
            }
        }
        sleep(Duration::from_millis(100))?;
    }
    Ok(None)
}

/// Sets the traffic's stop flag when dropped, so that the traffic ends on every path.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn show(lab: &mut Lab, arguments: &Arguments) -> Result<()> {
    let phase = Duration::from_secs(if arguments.quick {
        2
    } else {
        arguments.duration.max(1)
    });
    let Lab {
        topology,
        daemon,
        backends,
        ..
    } = lab;
    let topology = topology.as_ref().context("no topology")?;
    let settings = Settings {
        workers: arguments.workers.max(1),
        rate: arguments.rate.max(1),
        connections: arguments.connections,
        // Far beyond the show's length: a bound, not a schedule.
        limit: Duration::from_secs(600) + phase * 20,
    };
    println!(
        "lab: VIP {VIP}:{PORT}/tcp; client {}, load balancer {}, backends {}; {} req/s on new connections, {} keep-alive connections",
        topology::CLIENT,
        topology::LB,
        (0..BACKENDS).map(|index| format!("{}={}", backend_name(index), backend_address(index))).collect::<Vec<_>>().join(" "),
        settings.rate,
        settings.connections
    );
    let stats = Stats::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let traffic = scope.spawn(|| traffic::run(&topology.client, settings, &stats, &stop));
        scope.spawn(|| report(&stats, &stop, settings.connections));
        let rows = match daemon {
            Some(daemon) => faults(topology, daemon, backends, &stats, phase),
            None => sleep(phase * 2).map(|()| {
                vec![Row {
                    window: stats.snapshot(),
                    ..Row::new(Phase::SteadyWithoutDaemon, "steady (no daemon)")
                }]
            }),
        };
        stop.store(true, Ordering::Relaxed);
        let traffic = traffic
            .join()
            .map_err(|_| anyhow::anyhow!("the traffic panicked"))?;
        let rows = rows?;
        traffic?;
        println!();
        print_rows(&rows);
        let failures = failed_checks(&rows);
        for failure in &failures {
            println!("lab: check failed: {failure}");
        }
        if !failures.is_empty() {
            bail!("{} of the lab's checks failed (see above)", failures.len());
        }
        println!("lab: every check held");
        Ok(())
    })
}

/// Prints one line a second: each backend's share and the success rate of that second.
fn report(stats: &Stats, stop: &AtomicBool, connections: usize) {
    let start = Instant::now();
    let mut previous = stats.snapshot();
    let mut next = start + Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        next += Duration::from_secs(1);
        let now = stats.snapshot();
        let label = format!("{}s", start.elapsed().as_secs());
        println!("{}", now.since(&previous).line(&label, connections));
        previous = now;
    }
}

fn faults(
    topology: &Topology,
    daemon: &mut Daemon,
    backends: &mut [Option<Child>],
    stats: &Stats,
    phase: Duration,
) -> Result<Vec<Row>> {
    let dir = control::run_dir(std::process::id());
    let programs = Programs::find()?;
    let mut rows = Vec::new();
    let victim = 1; // backend2
    let drained = 2; // backend3

    println!("==> steady state");
    let before = stats.snapshot();
    sleep(phase)?;
    rows.push(Row {
        window: stats.snapshot().since(&before),
        ..Row::new(Phase::Steady, "steady")
    });

    // (1) Kill a backend: its probes fail, the daemon marks it down and republishes.
    println!(
        "==> kill -9 {} ({})",
        backend_name(victim),
        backend_address(victim)
    );
    let before = stats.snapshot();
    let t0 = now_millis();
    if let Some(mut child) = backends[victim].take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    rows.push(reaction(
        daemon,
        stats,
        before,
        t0,
        phase,
        Row::new(Phase::KillBackend, format!("kill {}", backend_name(victim))),
        failover_of(victim, "down"),
    )?);

    // (2) Bring it back: rise successes, then it serves new flows again.
    println!("==> restart {}", backend_name(victim));
    let before = stats.snapshot();
    let t0 = now_millis();
    backends[victim] = Some(control::start_backend(
        &programs,
        &topology.backends[victim],
        victim,
        &dir,
    )?);
    rows.push(reaction(
        daemon,
        stats,
        before,
        t0,
        phase,
        Row::new(Phase::RestartBackend, format!("restart {}", backend_name(victim))),
        failover_of(victim, "up"),
    )?);

    // (3) Drain: no new flows, established ones continue; then undrain.
    println!(
        "==> drain {} ({})",
        backend_name(drained),
        backend_address(drained)
    );
    let before = stats.snapshot();
    let t0 = now_millis();
    daemon.drain(drained, true)?;
    rows.push(reaction(
        daemon,
        stats,
        before,
        t0,
        phase,
        Row::new(Phase::Drain, format!("drain {}", backend_name(drained))),
        |event| event.kind == "drain" && event.is_about(drained),
    )?);
    println!("==> undrain {}", backend_name(drained));
    let before = stats.snapshot();
    let t0 = now_millis();
    daemon.drain(drained, false)?;
    rows.push(reaction(
        daemon,
        stats,
        before,
        t0,
        phase,
        Row::new(Phase::Undrain, format!("undrain {}", backend_name(drained))),
        |event| event.kind == "undrain" && event.is_about(drained),
    )?);

    // (4) Kill -9 the daemon: the pinned data plane keeps forwarding; a new daemon adopts it.
    println!("==> kill -9 the daemon; restart it after {:?}", phase / 2);
    let before = stats.snapshot();
    daemon.kill();
    sleep(phase / 2)?;
    let down = stats.snapshot().since(&before);
    let t0 = now_millis();
    daemon.start()?;
    let mut row = reaction(
        daemon,
        stats,
        before,
        t0,
        phase,
        Row::new(Phase::KillDaemon, "kill -9 daemon"),
        |event| event.kind == "adopted" || event.kind == "started",
    )?;
    row.note = format!(
        "{} ok / {} failed while no daemon ran; detection: restart to adoption of the pinned data plane",
        down.ok(),
        down.failed
    );
    rows.push(row);
    Ok(rows)
}

/// Matches the daemon's failover event that takes backend `index` to `to` ("up" or "down").
fn failover_of(index: usize, to: &'static str) -> impl Fn(&Event) -> bool {
    move |event| {
        event.kind == "failover"
            && event.is_about(index)
            && event.timings.as_ref().is_some_and(|timings| timings.to == to)
    }
}

/// Waits for the daemon's reaction to a fault made at `t0`, watches the traffic for `phase`,
/// and fills in `row`.
fn reaction(
    daemon: &mut Daemon,
    stats: &Stats,
    before: Snapshot,
    t0: u64,
    phase: Duration,
    mut row: Row,
    wanted: impl Fn(&Event) -> bool,
) -> Result<Row> {
    let event = wait_event(daemon, t0, wanted)?;
    match &event {
        Some(event) => {
            row.detection = Some(event.at.saturating_sub(t0));
            row.published = event
                .timings
                .as_ref()
                .map(|timings| timings.table_published_us);
            row.note = format!("event {}", event.kind);
            let about = event
                .backend
                .as_deref()
                .map_or(String::new(), |backend| format!(" {backend}"));
            let timings = event.timings.as_ref().map_or(String::new(), |timings| {
                format!(
                    ", health written {} µs, table published {} µs after the verdict",
                    timings.health_written_us, timings.table_published_us
                )
            });
            println!(
                "    daemon: {}{about} after {} ms{timings}",
                event.kind,
                event.at.saturating_sub(t0)
            );
        }
        None => {
            row.note = format!("no event within {REACTION_TIMEOUT:?}");
            println!("    daemon: {}", row.note);
        }
    }
    sleep(phase)?;
    row.window = stats.snapshot().since(&before);
    Ok(row)
}
