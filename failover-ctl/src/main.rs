//! failover-ctl: the controller daemon (`run`), its control commands and the inspection CLI.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use failover_ctl::{
    cli::{
        flush,
        inspect::{self, Target},
        monitor,
    },
    config::{self, Protocol},
    daemon::{control, run, status::Request},
    loader::{self, Decap},
    paths::InstancePaths,
};

/// Control program of the failover XDP load balancer.
#[derive(Parser)]
#[command(version, about)]
struct Arguments {
    /// The instance to act on (its pinned maps and runtime files). Default: the `instance` of
    /// `--config`, else "default".
    #[arg(long, global = true)]
    instance: Option<String>,
    /// Configuration file naming the instance (for commands other than `run` and `check`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Run in the named network namespace (/run/netns/NAME). Use this instead of
    /// `ip netns exec`, which remounts /sys and so hides the pins in /sys/fs/bpf.
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
enum ElectionAction {
    /// The master of GROUP resigns now (a priority-0 advert: the best backup takes over after
    /// its skew time); it does not preempt back until it is master again.
    Resign { group: String },
    /// Advertise PRIORITY (1..=254) in GROUP until the next restart.
    Priority { group: String, priority: u8 },
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and print a summary.
    Check {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Run the controller: load or adopt the pinned data plane, attach it, probe the backends
    /// and keep the maps equal to the configuration. Stops on SIGTERM / SIGINT, leaving the data
    /// plane forwarding and the announced routes in place (a restart is hitless); SIGHUP reloads.
    /// SIGUSR1 stops for good: every VIP is withdrawn, the daemon waits `announce.withdraw_grace`
    /// for the routers to converge, then stops (the systemd unit's KillSignal; its restarts send
    /// SIGTERM). That withdraw is not a drain-node: the next start announces again.
    Run {
        /// The TOML configuration file (or the global --config).
        #[arg(long = "config-file", short = 'c')]
        file: Option<PathBuf>,
    },
    /// Ask the running daemon to re-read its configuration and apply the difference.
    Reload,
    /// No new flows to BACKEND of VIP; tracked flows continue.
    Drain { vip: String, backend: IpAddr },
    /// Give BACKEND of VIP new flows again.
    Undrain { vip: String, backend: IpAddr },
    /// Take BACKEND of VIP out entirely without probing it (on), or put it back (off).
    Maintenance { vip: String, backend: IpAddr, state: OnOff },
    /// Instance, interfaces, VIPs and backends at a glance.
    Status,
    /// The VIPs with their counters.
    Vips,
    /// The backends: state, weight, tier, packets and bytes.
    Backends {
        /// Only this VIP.
        vip: Option<String>,
    },
    /// The published Maglev table of VIP: slots per backend against the ideal share.
    Table { vip: String },
    /// Tracked flows.
    Flows {
        /// Only flows of this VIP (by name).
        #[arg(long)]
        vip: Option<String>,
        /// Only flows to this backend address.
        #[arg(long)]
        backend: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Packet counters by reason, VIP and backend.
    Stats {
        /// Print again every SECONDS with rates.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<f64>,
        /// Stop after this many prints with --watch.
        #[arg(long)]
        count: Option<u64>,
    },
    /// The backend a flow goes to, found by running the loaded program on a crafted packet.
    ///
    /// The packet is the flow's first: a TCP SYN or a UDP datagram. A tracked flow goes where
    /// its flow-table entry says (if that backend can still take it); the output also shows
    /// where a new flow with this 5-tuple goes (its table slot and the next up backend).
    ///
    /// Side effects: the run counts one packet in the VIP, backend and reason counters. A flow
    /// entry the run creates is deleted again, so that a new flow still takes the table; a
    /// tracked flow's entry is treated as one more packet of that flow would treat it.
    Which {
        /// Client address and port, e.g. 198.51.100.7:40000.
        source: SocketAddr,
        /// VIP address and port, e.g. 203.0.113.10:443.
        destination: SocketAddr,
        /// tcp or udp.
        protocol: String,
    },
    /// Live per-packet decisions of the data plane for packets matching a filter: action,
    /// reason, VIP, chosen backend, whether the flow was tracked, the 5-tuple, the time.
    ///
    /// Works with or without the daemon. The filter is switched off again on exit (also on
    /// SIGINT / SIGTERM); a monitor killed outright leaves one that expires within 5 s. With
    /// --json one JSON object per line. The conditions given must all hold; none = every packet.
    Monitor {
        /// Packets to this VIP: a name (from the daemon's state file), an address (every port
        /// and protocol) or ADDRESS:PORT/PROTO.
        #[arg(long, value_name = "NAME|ADDR")]
        vip: Option<String>,
        /// Packets from this client address or prefix.
        #[arg(long, value_name = "ADDR[/LEN]")]
        client: Option<String>,
        /// Packets sent to this backend address.
        #[arg(long, value_name = "ADDR")]
        backend: Option<IpAddr>,
        /// Stop after this many packets shown.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Show at most this many packets per second; the rest are counted and reported at the end.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        rate: u32,
    },
    /// Per VIP: announced (its route in the announce table) or why not, and since when.
    Announcements,
    /// Withdraw every VIP (a planned stop), wait `announce.withdraw_grace` for the routers to
    /// converge, then return. Kept across restarts until `undrain-node`.
    DrainNode,
    /// Announce every announceable VIP again.
    UndrainNode,
    /// Remove every route the controller announced (the host routes of the announce table with
    /// its route protocol, IPv4 and IPv6) without the daemon, which must not be running: for a
    /// node whose controller cannot run at all (failover-ctl-flush.service). Table and protocol
    /// come from --config's [announce], or from the flags, which win.
    FlushAnnouncements {
        /// The announce table (default: `announce.table` of --config).
        #[arg(long)]
        table: Option<u32>,
        /// The controller's route protocol number (default: `announce.protocol` of --config).
        #[arg(long)]
        protocol: Option<u8>,
    },
    /// The VRRP groups: state, priority, master, interval, ownership, last transition, failed
    /// tracks, counters and the table digests of their VIPs.
    Elections,
    /// Act on a VRRP group through the running daemon.
    Election {
        #[command(subcommand)]
        action: ElectionAction,
    },
    /// The event log (failovers with their timings, reloads, drains).
    Events {
        /// The most recent N.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Attach the decap program (for backends) to INTERFACE for the given VIPs, in the
    /// foreground; SIGTERM / SIGINT detach it.
    Decap {
        #[arg(long)]
        interface: String,
        #[arg(long = "vip", required = true)]
        vips: Vec<IpAddr>,
        /// Generic (skb) mode instead of native.
        #[arg(long)]
        generic: bool,
    },
    /// Detach the program and remove the instance's pins and runtime files (the daemon must be
    /// stopped).
    Teardown,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages, failover-ctl.1 and one failover-ctl-COMMAND.1 per command, into DIR
    /// (for packaging: `cargo xtask dist` runs it).
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn instance_paths(arguments: &Arguments) -> anyhow::Result<InstancePaths> {
    if let Some(instance) = &arguments.instance {
        return Ok(InstancePaths::new(instance));
    }
    if let Some(file) = &arguments.config {
        let config = config::load(file)?;
        return Ok(InstancePaths::new(&config.instance));
    }
    Ok(InstancePaths::new("default"))
}

fn send(paths: &InstancePaths, request: Request) -> anyhow::Result<()> {
    let response = control::request(&paths.control_socket(), &request)?;
    if response.ok {
        println!("{}", response.message);
        Ok(())
    } else {
        anyhow::bail!("{}", response.message)
    }
}

/// Withdraws every VIP, then waits the daemon's `withdraw_grace` so the routers converge before
/// the caller (a systemd stop, an operator) goes on.
fn drain_node(paths: &InstancePaths) -> anyhow::Result<()> {
    send(paths, Request::DrainNode)?;
    let status = control::request(&paths.control_socket(), &Request::Status)?.status.context("the daemon sent no status")?;
    let grace = Duration::from_millis(status.withdraw_grace_ms);
    eprintln!("waiting {grace:?} (announce.withdraw_grace) for the routers to converge");
    std::thread::sleep(grace);
    println!("node drained: every VIP withdrawn {grace:?} ago");
    Ok(())
}

fn decap(interface: &str, vips: &[IpAddr], generic: bool) -> anyhow::Result<()> {
    let mut decap = Decap::load()?;
    for vip in vips {
        decap.add_vip(*vip)?;
    }
    let mode = if generic { aya::programs::XdpMode::Skb } else { aya::programs::XdpMode::Driver };
    decap.attach(interface, mode).with_context(|| format!("attaching the decap program to {interface}"))?;
    eprintln!("decap attached to {interface} for {} VIPs; SIGTERM or SIGINT detaches it", vips.len());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    drop(decap);
    Ok(())
}

fn teardown(paths: &InstancePaths) -> anyhow::Result<()> {
    if control::request(&paths.control_socket(), &Request::Status).is_ok() {
        anyhow::bail!("instance {} is running: stop `failover-ctl run` first", paths.instance);
    }
    loader::teardown(paths)?;
    match std::fs::remove_dir_all(&paths.run_dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    println!("instance {}: detached and unpinned", paths.instance);
    Ok(())
}

fn protocol(text: &str) -> anyhow::Result<Protocol> {
    match text {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => anyhow::bail!("protocol {other:?}: expected tcp or udp"),
    }
}

fn config_file(arguments: &Arguments, file: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    file.clone()
        .or_else(|| arguments.config.clone())
        .context("`run` needs a configuration file: failover-ctl run --config FILE")
}

fn execute(arguments: &Arguments) -> anyhow::Result<()> {
    let target = || -> anyhow::Result<Target> { Ok(Target { paths: instance_paths(arguments)?, json: arguments.json }) };
    match &arguments.command {
        Command::Check { file } => {
            let config = config::load(file)?;
            println!("{}: ok ({} VIPs, {} backends)", file.display(), config.vips.len(), config.backend_count());
            Ok(())
        }
        Command::Run { file } => run::run(Path::new(&config_file(arguments, file)?)),
        Command::Reload => send(&instance_paths(arguments)?, Request::Reload),
        Command::Drain { vip, backend } => {
            send(&instance_paths(arguments)?, Request::Drain { vip: vip.clone(), backend: backend.to_string() })
        }
        Command::Undrain { vip, backend } => {
            send(&instance_paths(arguments)?, Request::Undrain { vip: vip.clone(), backend: backend.to_string() })
        }
        Command::Maintenance { vip, backend, state } => send(
            &instance_paths(arguments)?,
            Request::Maintenance { vip: vip.clone(), backend: backend.to_string(), on: matches!(state, OnOff::On) },
        ),
        Command::Status => inspect::status(&target()?),
        Command::Vips => inspect::vips(&target()?),
        Command::Backends { vip } => inspect::backends(&target()?, vip.as_deref()),
        Command::Table { vip } => inspect::table(&target()?, vip),
        Command::Flows { vip, backend, limit } => inspect::flows(&target()?, vip.as_deref(), backend.as_deref(), *limit),
        Command::Stats { watch, count } => {
            let watch = match watch {
                Some(seconds) if !(seconds.is_finite() && *seconds >= 0.1 && *seconds <= 3600.0) => {
                    anyhow::bail!("--watch {seconds}: expected 0.1 to 3600 seconds")
                }
                Some(seconds) => Some(Duration::from_secs_f64(*seconds)),
                None => None,
            };
            inspect::stats(&target()?, watch, *count)
        }
        Command::Which { source, destination, protocol: name } => {
            inspect::which(&target()?, *source, *destination, protocol(name)?)
        }
        Command::Events { limit } => inspect::events(&target()?, *limit),
        Command::Elections => inspect::elections(&target()?),
        Command::Announcements => inspect::announcements(&target()?),
        Command::DrainNode => drain_node(&instance_paths(arguments)?),
        Command::UndrainNode => send(&instance_paths(arguments)?, Request::UndrainNode),
        Command::FlushAnnouncements { table, protocol } => {
            // Loaded once: a configuration that does not load stops the command before any route goes.
            let config = arguments.config.as_deref().map(config::load).transpose()?;
            let (table, protocol) = flush::selection(config.as_ref().map(|config| &config.announce), *table, *protocol)?;
            let paths = match (&arguments.instance, &config) {
                (Some(instance), _) => InstancePaths::new(instance),
                (None, Some(config)) => InstancePaths::new(&config.instance),
                (None, None) => InstancePaths::new("default"),
            };
            flush::flush_announcements(&paths, table, protocol, arguments.json)
        }
        Command::Election { action } => {
            let request = match action {
                ElectionAction::Resign { group } => Request::ElectionResign { group: group.clone() },
                ElectionAction::Priority { group, priority } => Request::ElectionPriority { group: group.clone(), priority: *priority },
            };
            send(&instance_paths(arguments)?, request)
        }
        Command::Monitor { vip, client, backend, count, rate } => monitor::monitor(
            &instance_paths(arguments)?,
            &monitor::Options {
                vip: vip.clone(),
                client: client.clone(),
                backend: *backend,
                count: *count,
                rate: *rate,
                json: arguments.json,
            },
        ),
        Command::Decap { interface, vips, generic } => decap(interface, vips, *generic),
        Command::Teardown => teardown(&instance_paths(arguments)?),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Arguments::command(), "failover-ctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Arguments::command(), dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))
        }
    }
}

/// Moves the (still single-threaded) process into the network namespace `name`, keeping the
/// mount namespace, so /sys/fs/bpf stays the host's.
fn enter_netns(name: &str) -> anyhow::Result<()> {
    if name.contains('/') || name.is_empty() {
        anyhow::bail!("--netns {name:?}: expected a name under /run/netns");
    }
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on a namespace file descriptor we own; no other thread exists yet.
    let result = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("entering network namespace {name}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    if let Some(name) = &arguments.netns {
        if let Err(error) = enter_netns(name) {
            eprintln!("failover-ctl: {error:#}");
            return ExitCode::FAILURE;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FAILOVER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match execute(&arguments) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("failover-ctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}
