//! `cargo xtask lab`: the live demo. Builds a client, a router, two load balancers and three
//! HTTP backends in private namespaces, runs `failover-ctl run` on both load balancers (a VRRP
//! group decides which one serves the VIP) on real packets, drives traffic at the VIP, and
//! injects faults in turn (kill a backend, bring it back, drain one, kill -9 the master's
//! daemon, take the master's link down and up, resign the master), printing each backend's
//! share once a second and, per fault, how fast the daemons reacted, how long the group was
//! without a master on the wire, and what the clients saw.
//!
//! `--scale-out` runs the other demonstration instead: several active load balancers announcing
//! the VIP over BGP (BIRD) to an ECMP router (see `scale_out`).
//!
//! Cleans up on exit, on error and on Ctrl-C, and at start removes what crashed runs left.
//! `--keep` leaves the lab running for the CLI; `--cleanup` removes kept labs; `--json` prints
//! the summary as JSON lines. Fails when a check of what it demonstrates does not hold (see
//! `summary`).

mod cleanup;
mod config;
mod control;
mod election;
mod faults;
mod scale_out;
mod soak;
mod summary;
mod topology;
mod traffic;
mod wire;

use std::{
    fs,
    process::Child,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use control::{check_interrupt, say, sleep, Daemon, Programs};
use summary::{failed_checks, Phase, Row};
use topology::{
    backend_address, backend_name, lb_address, lb_index, lb_name, Topology, BACKENDS, LBS, PORT,
    VIP,
};
use traffic::{Settings, Stats};
use wire::Observer;

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
    /// Long-lived keep-alive connections, one request every 100 ms each (every 50 ms with
    /// --scale-out) [default: 12, 24 with --scale-out].
    #[arg(long)]
    connections: Option<usize>,
    /// Print the summary as JSON lines, one object per fault (`fault`, `detection_ms`,
    /// `takeover_ms` where the master changed, `ok`, `failed`, `broken`; with --scale-out, one
    /// per phase) on standard output; everything else goes to standard error.
    #[arg(long)]
    json: bool,
    /// The scale-out demonstration: load balancers announce the VIP over BGP (BIRD) to a router
    /// that spreads flows over them by ECMP; backends unreachable from one node, kill -9 of a
    /// daemon, drain-node, a node added and one removed, with the router's next hops and the
    /// connections watched throughout.
    #[arg(long, conflicts_with = "without_daemon")]
    scale_out: bool,
    /// Run the same lab and traffic for DURATION (90s, 3m, 30m, 1h30m) with faults chosen at
    /// random (backend kills, drains, reloads, kill -9 of a daemon), then a table of faults,
    /// requests, connections broken outside the killed backends (must be 0), the daemons' RSS,
    /// descriptors and events log (bounded). Prints its seed.
    #[arg(long, value_name = "DURATION", value_parser = soak::parse_duration,
          conflicts_with_all = ["quick", "scale_out", "without_daemon", "keep"])]
    soak: Option<Duration>,
    /// The soak's random seed, to replay a run's sequence of faults.
    #[arg(long, value_name = "N", requires = "soak")]
    seed: Option<u64>,
    /// Use the release binaries already built (skip `cargo build`).
    #[arg(long, hide = true)]
    no_build: bool,
    /// Check the network, backends and traffic without the daemon: the router sends the VIP
    /// straight to backend1.
    #[arg(long, hide = true)]
    without_daemon: bool,
}

/// Longest wait for every backend to come up after the daemons start.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub fn run(arguments: Arguments) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and loads XDP programs: run it as root");
    }
    control::install_signal_handler();
    control::set_json(arguments.json);
    if arguments.cleanup {
        let programs = Programs::find().ok();
        let removed = cleanup::cleanup_runs(programs.as_ref(), true)?;
        netlab::cleanup_stale()?;
        match removed.is_empty() {
            true => say("lab: nothing to clean up"),
            false => say(format!("lab: removed {}", removed.join(", "))),
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
    for instance in cleanup::cleanup_runs(Some(&programs), false)? {
        eprintln!("lab: removed {instance}, left by a run that died");
    }
    if arguments.scale_out {
        return scale_out::run(&programs, &arguments);
    }

    let pid = std::process::id();
    let dir = control::run_dir(pid);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut lab = Lab {
        pid,
        topology: None,
        daemons: Vec::new(),
        backends: Vec::new(),
        decaps: Vec::new(),
        observer: None,
    };
    let outcome = lab
        .setup(&programs, &arguments)
        .and_then(|()| show(&mut lab, &arguments));
    if outcome.is_ok() && arguments.keep && !arguments.without_daemon {
        lab.keep()?;
    } else {
        if outcome.is_err() {
            for daemon in &lab.daemons {
                eprintln!("lab: {}: {}", daemon.name, control::log_tail(&daemon.log));
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
    /// One per load balancer, in order (lb1, lb2).
    daemons: Vec<Daemon>,
    /// Each backend's HTTP server, `None` while it is killed.
    backends: Vec<Option<Child>>,
    decaps: Vec<Child>,
    /// The adverts on the segment, as the router receives them.
    observer: Option<Observer>,
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

        for (index, namespace) in topology.lbs.iter().enumerate() {
            let name = lb_name(index);
            let config = dir.join(format!("failover-{name}.toml"));
            let instance = control::lb_instance(self.pid, index);
            fs::write(
                &config,
                config::config_text(&instance, index, topology::SEGMENT_MAC),
            )
            .with_context(|| format!("writing {}", config.display()))?;
            let daemon = Daemon::new(
                programs,
                name.clone(),
                instance,
                config,
                dir.join(format!("daemon-{name}.log")),
                namespace,
            )?;
            daemon.require(&[
                "run",
                "status",
                "events",
                "drain",
                "undrain",
                "decap",
                "teardown",
                "elections",
                "election",
            ])?;
            self.daemons.push(daemon);
        }
        for namespace in &topology.backends {
            let decap =
                control::start_decap(programs, namespace, topology::BACKEND_INTERFACE, VIP, &dir)?;
            self.decaps.push(decap);
        }
        for index in 0..LBS {
            let napi = control::start_decap(
                programs,
                &topology.router,
                &topology::segment_port(index),
                topology::ROUTER_DECAP_PLACEHOLDER,
                &dir,
            )?;
            self.decaps.push(napi);
        }
        let observer = self
            .observer
            .insert(Observer::start(&topology.router, topology::SEGMENT_BRIDGE)?);
        for daemon in &mut self.daemons {
            say(format!(
                "lab: starting `failover-ctl run --config {}` on {}",
                daemon.config.display(),
                daemon.name
            ));
            daemon.start()?;
        }
        for daemon in &mut self.daemons {
            wait_ready(daemon, |backends| {
                (0..BACKENDS).all(|index| {
                    control::find(backends, index).is_some_and(control::BackendState::serving_up)
                })
            })
            .with_context(|| {
                format!(
                    "waiting for every backend to be up and serving on {}",
                    daemon.name
                )
            })?;
        }
        // lb1, the higher priority, ends up master (at once, or by preempting lb2 after its
        // delay if lb2 was ready first).
        faults::wait_master(observer, &mut self.daemons, faults::PREFERRED)?;
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
        for daemon in &mut self.daemons {
            daemon.terminate();
        }
        self.observer = None;
        for child in self.backends.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The namespaces go in `cleanup_run`, after the teardown.
        if let Some(topology) = self.topology.take() {
            topology.keep();
        }
        cleanup::cleanup_run(Some(programs), self.pid)
    }

    /// Leaves the lab running and says how to use it and remove it.
    fn keep(&mut self) -> Result<()> {
        let dir = control::run_dir(self.pid);
        fs::write(dir.join("kept"), b"").context("marking the lab as kept")?;
        let names = self.topology.take().map(Topology::keep).unwrap_or_default();
        let client = topology::namespace_name("client", self.pid);
        say("");
        say(format!(
            "The lab keeps running (namespaces: {}).",
            names.join(", ")
        ));
        for daemon in &self.daemons {
            say(format!("  {}", daemon.describe("status")));
            say(format!("  {}", daemon.describe("elections")));
        }
        if let Some(daemon) = self.daemons.first() {
            say(format!("  {}", daemon.describe("events")));
            say(format!(
                "  {}",
                daemon.describe(&format!(
                    "drain {} {}",
                    config::VIP_NAME,
                    backend_address(2)
                ))
            ));
            say(format!(
                "  {}",
                daemon.describe(&format!("election resign {}", config::GROUP))
            ));
        }
        say(format!(
            "  ip netns exec {client} curl -s http://{VIP}:{PORT}/    (if curl is installed)"
        ));
        say(format!("  logs and configuration: {}", dir.display()));
        say("Remove it with: cargo xtask lab --cleanup");
        // The children keep running after this process; nothing is waited for or killed.
        self.backends.clear();
        self.decaps.clear();
        self.daemons.clear();
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

/// Sets the traffic's stop flag when dropped, so that the traffic ends on every path.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn show(lab: &mut Lab, arguments: &Arguments) -> Result<()> {
    let started = Instant::now();
    let phase = if arguments.soak.is_some() {
        soak::PHASE
    } else {
        Duration::from_secs(if arguments.quick {
            2
        } else {
            arguments.duration.max(1)
        })
    };
    let Lab {
        topology,
        daemons,
        backends,
        observer,
        ..
    } = lab;
    let topology = topology.as_ref().context("no topology")?;
    let observer = observer.as_ref();
    let settings = Settings {
        workers: arguments.workers.max(1),
        rate: arguments.rate.max(1),
        connections: arguments.connections.unwrap_or(12),
        long_period: Duration::from_millis(100),
        // Far beyond the show's length: a bound, not a schedule.
        limit: Duration::from_secs(600) + phase * 20 + arguments.soak.unwrap_or_default(),
    };
    say(format!(
        "lab: VIP {VIP}:{PORT}/tcp; client {}, load balancers {} (VRRP group {} on {}, next hop {}), backends {}; {} req/s on new connections, {} keep-alive connections",
        topology::CLIENT,
        (0..LBS).map(|index| format!("{}={} priority {}", lb_name(index), lb_address(index), config::priority(index))).collect::<Vec<_>>().join(" "),
        config::GROUP,
        topology::SEGMENT_BRIDGE,
        topology::VRRP_ADDRESS,
        (0..BACKENDS).map(|index| format!("{}={}", backend_name(index), backend_address(index))).collect::<Vec<_>>().join(" "),
        settings.rate,
        settings.connections
    ));
    let stats = Stats::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let traffic = scope.spawn(|| traffic::run(&topology.client, settings, &stats, &stop));
        scope.spawn(|| report(&stats, &stop, settings.connections, observer));
        let soak = arguments.soak.map(|duration| {
            let seed = arguments.seed.unwrap_or_else(soak::Random::fresh_seed);
            say(format!("lab: soak seed {seed} (replay with --seed {seed})"));
            (duration, seed)
        });
        let outcome = match observer {
            Some(observer) if !daemons.is_empty() => {
                let mut stage = faults::Stage {
                    topology,
                    daemons,
                    backends,
                    stats: &stats,
                    observer,
                    phase,
                };
                match soak {
                    Some((duration, seed)) => {
                        soak::run(&mut stage, duration, seed).map(|report| Outcome::Soak(Box::new(report)))
                    }
                    None => faults::run(&mut stage).map(Outcome::Rows),
                }
            }
            _ => sleep(phase * 2).map(|()| {
                Outcome::Rows(vec![Row {
                    window: stats.snapshot(),
                    ..Row::new(Phase::SteadyWithoutDaemon, "steady (no daemon)")
                }])
            }),
        };
        stop.store(true, Ordering::Relaxed);
        let traffic = traffic
            .join()
            .map_err(|_| anyhow::anyhow!("the traffic panicked"))?;
        let outcome = outcome?;
        traffic?;
        match outcome {
            Outcome::Rows(rows) => control::conclude(
                summary::table(&rows),
                arguments.json.then(|| summary::json_lines(&rows)),
                format!(
                    "lab: the traffic and faults took {:.1} s; link-down takeover bound: Master_Down_Interval of {} + one interval = {:.1} ms",
                    started.elapsed().as_secs_f64(),
                    lb_name(1),
                    summary::takeover_bound().as_secs_f64() * 1000.0
                ),
                failed_checks(&rows),
                "the lab",
            ),
            Outcome::Soak(report) => {
                let failures = soak::failed_checks(&report);
                control::conclude(
                    soak::table(&report),
                    arguments.json.then(|| vec![soak::json(&report, &failures)]),
                    format!(
                        "lab: the soak took {:.1} s with the start-up",
                        started.elapsed().as_secs_f64()
                    ),
                    failures,
                    "the soak",
                )
            }
        }
    })
}

/// What the faults produced: the fault sequence's rows, or a soak's report.
enum Outcome {
    Rows(Vec<Row>),
    Soak(Box<soak::Report>),
}

/// Prints one line a second: each backend's share and the success rate of that second, and the
/// master on the wire.
fn report(stats: &Stats, stop: &AtomicBool, connections: usize, observer: Option<&Observer>) {
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
        let master = observer
            .and_then(|observer| observer.adverts().ok())
            .map(|adverts| {
                match wire::replay(&adverts, config::VRID, 0)
                    .1
                    .map(|address| (address, lb_index(address)))
                {
                    Some((_, Some(index))) => format!(" | master {}", lb_name(index)),
                    Some((address, None)) => format!(" | master {address}"),
                    None => " | no master".into(),
                }
            })
            .unwrap_or_default();
        say(format!(
            "{}{master}",
            now.since(&previous).line(&label, connections)
        ));
        previous = now;
    }
}
