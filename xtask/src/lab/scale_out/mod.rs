//! `cargo xtask lab --scale-out`: several active load balancers behind one router. Each node
//! runs `failover-ctl run` with announcing on (a blackhole route per servable VIP in kernel table
//! 100) and BIRD exporting that table over eBGP; the router (BIRD, `merge paths on`) spreads the
//! client's flows over every announcing node by ECMP. With short and long-lived connections
//! running throughout, the phases show: every node announcing and the spread of new
//! connections (1), a node whose backends are unreachable withdrawing and coming back (2, 3),
//! kill -9 of a daemon leaving the route in place (4), `drain-node` / `undrain-node` (5), and a
//! node joining and one leaving (6a, 6b), with the flows that changed node and those broken.
//!
//! One summary row per phase (JSON lines with `--json`); the lab fails when a check does not
//! hold. Cleanup as the other lab's: on exit, error and Ctrl-C, and of crashed runs at start.

mod announce;
mod flows;
mod membership;
mod network;
mod node;
mod outages;
mod stage;
mod summary;
mod watch;

use std::{
    fs,
    path::PathBuf,
    process::Child,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use netlab::bird::{router_config, Bird, Timers};

use self::{
    announce::Announcement,
    network::{lb_side, names, Network, MAX_LBS, START_LBS},
    node::{Node, FALL, INTERVAL, RISE, WITHDRAW_GRACE},
    stage::Stage,
    summary::{failed_checks, Row},
};
use super::{
    cleanup,
    control::{self, check_interrupt, say, sleep, Programs},
    topology::{backend_address, backend_name, lb_name, BACKENDS, BACKEND_INTERFACE, PORT, VIP},
    traffic::{self, Settings, Stats},
    wait_ready, Arguments, StopOnDrop,
};

/// Longest wait for the BGP sessions at the start.
const SESSION_WAIT: Duration = Duration::from_secs(20);

pub fn run(programs: &Programs, arguments: &Arguments) -> Result<()> {
    let pid = std::process::id();
    let dir = control::run_dir(pid);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut lab = ScaleOut {
        pid,
        dir,
        network: None,
        router_bird: None,
        nodes: Vec::new(),
        backends: Vec::new(),
        decaps: Vec::new(),
    };
    let outcome = lab
        .setup(programs)
        .and_then(|announcements| show(&mut lab, programs, arguments, &announcements));
    if outcome.is_ok() && arguments.keep {
        lab.keep();
        return Ok(());
    }
    if outcome.is_err() {
        for node in &lab.nodes {
            eprintln!(
                "lab: {}: {}",
                node.name(),
                control::log_tail(&node.daemon.log)
            );
            eprintln!("lab: {} BIRD: {}", node.name(), node.bird_log());
        }
        if let Some(bird) = &lab.router_bird {
            eprintln!("lab: router BIRD: {}", control::log_tail(&bird.log));
        }
    }
    eprintln!("lab: cleaning up");
    lab.cleanup(programs)?;
    outcome
}

/// Everything one run started; `cleanup` or `keep` ends it.
struct ScaleOut {
    pid: u32,
    dir: PathBuf,
    network: Option<Network>,
    router_bird: Option<Bird>,
    nodes: Vec<Node>,
    /// Each backend's HTTP server.
    backends: Vec<Child>,
    /// The backends' decap programs.
    decaps: Vec<Child>,
}

impl ScaleOut {
    /// Builds the network, starts the backends, the router's BIRD and the first nodes' BIRD,
    /// waits for their sessions, then starts their daemons and measures how their
    /// announcements reach the router.
    fn setup(&mut self, programs: &Programs) -> Result<Vec<Announcement>> {
        eprintln!("lab: building the scale-out network");
        let network = self.network.insert(Network::build(self.pid)?);
        for (index, namespace) in network.backends.iter().enumerate() {
            self.backends.push(control::start_backend(
                programs, namespace, index, &self.dir,
            )?);
            self.decaps.push(control::start_decap(
                programs,
                namespace,
                BACKEND_INTERFACE,
                VIP,
                &self.dir,
            )?);
        }
        // Every node the lab may add is a neighbor from the start, as on a router provisioned
        // for the rack; a session comes up when its node does.
        let neighbors: Vec<_> = (0..MAX_LBS)
            .map(|index| (lb_name(index), lb_side(index).into()))
            .collect();
        let router_bird = self.router_bird.insert(Bird::start(
            &network.router,
            &self.dir,
            "router",
            &router_config(network::ROUTER_ID, &neighbors, Timers::SHORT),
        )?);
        for index in 0..START_LBS {
            let node = Node::add(network, programs, self.pid, index, &self.dir)?;
            self.nodes.push(node);
        }
        let started = Instant::now();
        while !(0..START_LBS).all(|index| router_bird.established(&lb_name(index))) {
            check_interrupt()?;
            if started.elapsed() > SESSION_WAIT {
                bail!(
                    "BGP sessions not Established after {SESSION_WAIT:?}:\n{}",
                    router_bird.birdc("show protocols").unwrap_or_default()
                );
            }
            sleep(Duration::from_millis(50))?;
        }
        say(format!(
            "lab: BGP sessions router <-> {} Established after {:.1} s",
            names(&(0..START_LBS).collect::<Vec<_>>()),
            started.elapsed().as_secs_f64()
        ));
        let which: Vec<usize> = (0..START_LBS).collect();
        let announcements = announce::start_and_announce(&network.router, &mut self.nodes, &which)?;
        for node in &mut self.nodes {
            let name = node.name();
            wait_ready(&mut node.daemon, |backends| {
                (0..BACKENDS).all(|index| {
                    control::find(backends, index).is_some_and(control::BackendState::serving_up)
                })
            })
            .with_context(|| format!("waiting for every backend to be up and serving on {name}"))?;
        }
        for child in &mut self.decaps {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "a backend's `failover-ctl decap` exited ({status}); see the decap-*.log files in {}",
                    self.dir.display()
                );
            }
        }
        Ok(announcements)
    }

    /// Stops everything (decap programs detach, daemons and BIRD stop), then removes the data
    /// planes, runtime files, namespaces and the lab directory.
    fn cleanup(&mut self, programs: &Programs) -> Result<()> {
        let mut names = Vec::new();
        for node in &mut self.nodes {
            names.extend(node.release(false));
        }
        self.router_bird = None;
        for child in &mut self.decaps {
            control::stop(child, libc::SIGTERM, Duration::from_secs(2));
        }
        for child in &mut self.backends {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The namespaces go in `cleanup_run`, after the daemons' teardown.
        if let Some(network) = self.network.take() {
            network.keep();
        }
        cleanup::cleanup_run(Some(programs), self.pid)
    }

    /// Leaves the lab running and says how to use it and remove it.
    fn keep(&mut self) {
        let _ = fs::write(self.dir.join("kept"), b"");
        let mut kept = self.network.take().map(Network::keep).unwrap_or_default();
        say("");
        for node in self.nodes.iter_mut().filter(|node| !node.removed) {
            say(format!("  {}", node.daemon.describe("announcements")));
            say(format!("  {}", node.daemon.describe("flows")));
            if let Some(bird) = &node.bird {
                say(format!(
                    "  birdc -s {} show route table announce4",
                    bird.socket.display()
                ));
            }
        }
        if let Some(bird) = self.router_bird.take() {
            say(format!("  birdc -s {} show route", bird.socket.display()));
            std::mem::forget(bird);
        }
        for node in &mut self.nodes {
            kept.extend(node.release(true));
        }
        say(format!(
            "The lab keeps running (namespaces: {}).",
            kept.join(", ")
        ));
        say(format!("  logs and configuration: {}", self.dir.display()));
        say("Remove it with: cargo xtask lab --cleanup");
        // The children keep running after this process; nothing is waited for or killed.
        self.nodes.clear();
        self.backends.clear();
        self.decaps.clear();
    }
}

fn show(
    lab: &mut ScaleOut,
    programs: &Programs,
    arguments: &Arguments,
    announcements: &[Announcement],
) -> Result<()> {
    let started = Instant::now();
    let phase = Duration::from_secs(if arguments.quick {
        2
    } else {
        arguments.duration.max(1)
    });
    let settings = Settings {
        workers: arguments.workers.max(1),
        rate: arguments.rate.max(1),
        connections: arguments.connections.unwrap_or(24),
        long_period: Duration::from_millis(50),
        // Far beyond the show's length: a bound, not a schedule.
        limit: Duration::from_secs(600) + phase * 20,
    };
    let ScaleOut {
        pid,
        dir,
        network,
        router_bird,
        nodes,
        ..
    } = lab;
    let network = network.as_ref().context("no network")?;
    let router_bird = router_bird.as_ref().context("no router BIRD")?;
    say(format!(
        "lab: VIP {VIP}:{PORT}/tcp announced over eBGP by {}; backends {}; probes every {INTERVAL:?}, fall {FALL}, rise {RISE}; withdraw_grace {WITHDRAW_GRACE:?}; {} req/s on new connections, {} keep-alive connections (a request every {:?} each)",
        (0..START_LBS).map(|index| format!("{}={}", lb_name(index), lb_side(index))).collect::<Vec<_>>().join(" "),
        (0..BACKENDS).map(|index| format!("{}={}", backend_name(index), backend_address(index))).collect::<Vec<_>>().join(" "),
        settings.rate,
        settings.connections,
        settings.long_period
    ));
    let stats = Stats::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let traffic = scope.spawn(|| traffic::run(&network.client, settings, &stats, &stop));
        scope.spawn(|| report(network, &stats, &stop, settings.connections));
        let mut stage = Stage {
            network,
            router_bird,
            nodes,
            stats: &stats,
            programs,
            pid: *pid,
            dir,
            phase,
        };
        let rows = phases(&mut stage, announcements);
        stop.store(true, Ordering::Relaxed);
        let traffic = traffic
            .join()
            .map_err(|_| anyhow::anyhow!("the traffic panicked"))?;
        let rows = rows?;
        traffic?;
        control::conclude(
            summary::table(&rows),
            arguments.json.then(|| summary::json_lines(&rows)),
            format!(
                "lab: the phases took {:.1} s; withdraw bound fall x interval + 200 ms = {:?}",
                started.elapsed().as_secs_f64(),
                outages::withdraw_bound()
            ),
            failed_checks(&rows),
            "the scale-out lab",
        )
    })
}

/// The phases in order, one row each.
fn phases(stage: &mut Stage, announcements: &[Announcement]) -> Result<Vec<Row>> {
    // Long-lived connections first: the later phases count how they move.
    sleep(Duration::from_millis(500))?;
    Ok(vec![
        announce::phase(stage, announcements)?,
        outages::unreachable(stage, 0)?,
        outages::reachable(stage, 0)?,
        outages::kill_daemon(stage, 1)?,
        membership::drain(stage, 0)?,
        membership::add(stage, 2)?,
        membership::remove(stage, 0)?,
    ])
}

/// Prints one line a second: each backend's share and the success rate of that second, the
/// long-lived connections, and the router's next hops.
fn report(network: &Network, stats: &Stats, stop: &AtomicBool, connections: usize) {
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
        let hops = network
            .next_hops()
            .map_or_else(|error| format!("? ({error:#})"), |hops| names(&hops));
        say(format!(
            "{} | next hops {hops}",
            now.since(&previous).line(&label, connections)
        ));
        previous = now;
    }
}
