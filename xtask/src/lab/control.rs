//! The lab's processes and the daemons' command line: `failover-ctl run` in each load balancer's
//! namespace, the backends' `lab-backend` and decap processes, and the inspection commands
//! (`status`, `events`, `drain`, `election resign`); the names and places of a run's instances.

use std::{
    fs::{self, File},
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use netlab::Namespace;
use serde::Deserialize;

use super::{
    config::VIP_NAME,
    topology::{self, backend_address, backend_name, PORT},
};

/// Set by SIGINT / SIGTERM; every wait and loop of the lab checks it.
static STOP: AtomicBool = AtomicBool::new(false);
/// Set by `--json`: standard output carries only the summary's JSON lines, so every other line
/// goes to standard error.
static JSON: AtomicBool = AtomicBool::new(false);

pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// Prints one line of the lab's running commentary (standard error with `--json`).
pub fn say(line: impl std::fmt::Display) {
    if JSON.load(Ordering::Relaxed) {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Catches Ctrl-C (and SIGTERM) so that the lab cleans up instead of dying mid-way.
/// The end of a lab run: the summary `table`, the `json` lines when asked for, a `closing` line,
/// and every failed check; an error naming how many of the `what`'s checks failed.
pub fn conclude(table: Vec<String>, json: Option<Vec<String>>, closing: String, failures: Vec<String>, what: &str) -> Result<()> {
    say("");
    for line in table {
        say(line);
    }
    for line in json.into_iter().flatten() {
        println!("{line}");
    }
    say(closing);
    for failure in &failures {
        say(format!("lab: check failed: {failure}"));
    }
    if !failures.is_empty() {
        bail!("{} of {what}'s checks failed (see above)", failures.len());
    }
    say("lab: every check held");
    Ok(())
}

pub fn install_signal_handler() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails with "interrupted" once Ctrl-C was pressed.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration`, waking early (with an error) on Ctrl-C.
pub fn sleep(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    loop {
        check_interrupt()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Where lab runs keep their configuration, logs and `kept` marker.
pub(super) const LAB_ROOT: &str = "/run/failover-lab";
/// The daemon's runtime and pin roots (see failover-ctl/src/paths.rs).
pub(super) const RUN_ROOT: &str = "/run/failover";
pub(super) const BPF_ROOT: &str = "/sys/fs/bpf/failover";
/// Bound on every inspection command.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Run `pid`'s name: its directory, and the prefix of its daemons' instances.
pub fn instance_name(pid: u32) -> String {
    format!("lab-{pid}")
}

/// The daemon instance of load balancer `index` of run `pid` (instances are global: pins and
/// runtime files live outside the namespaces).
pub fn lb_instance(pid: u32, index: usize) -> String {
    format!("{}-{}", instance_name(pid), topology::lb_name(index))
}

/// The run of a directory named after a run (`lab-<pid>`) or one of its instances
/// (`lab-<pid>-lb1`).
pub(super) fn run_of(name: &str) -> Option<u32> {
    name.strip_prefix("lab-")?.split('-').next()?.parse().ok()
}

/// The directory of run `pid` (configuration, logs).
pub fn run_dir(pid: u32) -> PathBuf {
    Path::new(LAB_ROOT).join(instance_name(pid))
}

/// The programs the lab runs, built in release.
pub struct Programs {
    pub failover_ctl: PathBuf,
    pub lab_backend: PathBuf,
}

impl Programs {
    pub fn find() -> Result<Self> {
        let release = crate::command::target_dir()?.join("release");
        let programs = Self {
            failover_ctl: release.join("failover-ctl"),
            lab_backend: release.join("lab-backend"),
        };
        for path in [&programs.failover_ctl, &programs.lab_backend] {
            if !path.is_file() {
                bail!("{} is missing after the build", path.display());
            }
        }
        Ok(programs)
    }

    /// The subcommands `failover-ctl --help` lists (the daemon's CLI is still growing).
    pub fn ctl_subcommands(&self) -> Result<Vec<String>> {
        let output = Command::new(&self.failover_ctl)
            .arg("--help")
            .output()
            .with_context(|| format!("running {} --help", self.failover_ctl.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text
            .lines()
            .skip_while(|line| !line.starts_with("Commands:"))
            .skip(1)
            .take_while(|line| line.starts_with("  "))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect())
    }
}

/// Spawns `command` in its own process group (so Ctrl-C reaches only the lab, which then stops
/// its children in order), with both outputs appended to `log`.
fn spawn_logged(mut command: Command, log: &Path) -> Result<Child> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let describe = crate::command::describe(&command);
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting `{describe}`"))
}

/// The last lines of a log, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n    ");
    format!("last lines of {}:\n    {tail}", log.display())
}

/// Sends `signal` to `child` and waits up to `grace` for it, then kills it.
pub fn stop(child: &mut Child, signal: libc::c_int, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: a plain kill(2) on a child we have not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts backend `index`'s HTTP server in its namespace; killing the child kills the server
/// (`ip netns exec` execs the program, so the child is the server itself).
pub fn start_backend(
    programs: &Programs,
    namespace: &Namespace,
    index: usize,
    dir: &Path,
) -> Result<Child> {
    let mut command = namespace.command(&programs.lab_backend.to_string_lossy());
    command.args([
        "--listen",
        &format!("0.0.0.0:{PORT}"),
        "--name",
        &backend_name(index),
    ]);
    spawn_logged(command, &dir.join(format!("{}.log", backend_name(index))))
}

/// The daemon and the CLI of one load balancer.
pub struct Daemon {
    /// "lb1" or "lb2".
    pub name: String,
    pub instance: String,
    pub config: PathBuf,
    pub log: PathBuf,
    ctl: PathBuf,
    namespace: String,
    subcommands: Vec<String>,
    pub child: Option<Child>,
}

impl Daemon {
    pub fn new(
        programs: &Programs,
        name: String,
        instance: String,
        config: PathBuf,
        log: PathBuf,
        lb: &Namespace,
    ) -> Result<Self> {
        Ok(Self {
            name,
            instance,
            config,
            log,
            ctl: programs.failover_ctl.clone(),
            namespace: lb.name().to_owned(),
            subcommands: programs.ctl_subcommands()?,
            child: None,
        })
    }

    pub fn has(&self, subcommand: &str) -> bool {
        self.subcommands.iter().any(|name| name == subcommand)
    }

    /// Fails with a clear message when the daemon's CLI lacks `subcommands` (not landed yet).
    pub fn require(&self, subcommands: &[&str]) -> Result<()> {
        let missing: Vec<&str> = subcommands
            .iter()
            .copied()
            .filter(|name| !self.has(name))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} has no `{}` subcommand yet (it has: {}); the lab needs the daemon's CLI",
                self.ctl.display(),
                missing.join("`, `"),
                self.subcommands.join(", ")
            );
        }
        Ok(())
    }

    /// `failover-ctl --netns LB`: the program enters the namespace itself, because
    /// `ip netns exec` remounts /sys and would hide the pins under /sys/fs/bpf.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.ctl);
        command.args(["--netns", &self.namespace]);
        command
    }

    /// The command line to inspect the kept lab by hand.
    pub fn describe(&self, arguments: &str) -> String {
        format!(
            "{} --netns {} --instance {} {arguments}",
            self.ctl.display(),
            self.namespace,
            self.instance
        )
    }

    /// `failover-ctl run --config FILE` in the load balancer's namespace.
    pub fn start(&mut self) -> Result<()> {
        let mut command = self.command();
        command.arg("run").arg("--config").arg(&self.config);
        self.child = Some(spawn_logged(command, &self.log)?);
        Ok(())
    }

    /// Fails (with the log) when the daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "failover-ctl run on {} exited ({status}); {}",
                    self.name,
                    log_tail(&self.log)
                );
            }
        }
        Ok(())
    }

    /// SIGKILL, as a crash would: the pinned data plane stays and keeps forwarding.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running daemon's process id (`failover-ctl --netns` enters the namespace itself, so
    /// the child is the daemon).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGHUP: the daemon re-reads its configuration.
    pub fn hangup(&self) -> Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("the daemon of {} is not running", self.name))?;
        // SAFETY: a plain kill(2) on a child we have not reaped yet.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } != 0 {
            bail!(
                "kill -HUP {pid} ({}): {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// `failover-ctl reload`: the daemon re-reads its configuration and says what changed.
    pub fn reload(&self) -> Result<()> {
        self.ctl(&["reload"]).map(drop)
    }

    /// The daemon's event log on disk (`events.jsonl` in its runtime directory).
    pub fn events_file(&self) -> PathBuf {
        self.runtime_file("events.jsonl")
    }

    /// SIGTERM and wait: the daemon stops, leaving the data plane pinned.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, libc::SIGTERM, Duration::from_secs(3));
        }
    }

    /// Runs `failover-ctl --instance NAME ARGS...` with a timeout; returns its standard output.
    pub fn ctl(&self, arguments: &[&str]) -> Result<String> {
        let mut command = self.command();
        command
            .arg("--instance")
            .arg(&self.instance)
            .args(arguments);
        output_with_timeout(command, COMMAND_TIMEOUT)
    }

    /// Every backend's state: `backends --json` (health bit from the maps, verdict, admin
    /// state and table membership from the daemon); without that command, the daemon's
    /// published view (`state.json`).
    pub fn backends(&self) -> Result<Vec<BackendState>> {
        let text = match self.ctl(&["backends", "--json"]) {
            Ok(text) => text,
            Err(error) => {
                let text =
                    fs::read_to_string(self.runtime_file("state.json")).map_err(|_| error)?;
                let state: StateFile = serde_json::from_str(&text)
                    .with_context(|| format!("parsing state.json: {}", excerpt(&text)))?;
                return Ok(state
                    .vips
                    .into_iter()
                    .flat_map(|vip| {
                        let name = vip.name;
                        vip.backends.into_iter().map(move |backend| BackendState {
                            vip: Some(name.clone()),
                            address: backend.address,
                            verdict: Some(backend.health),
                            admin: Some(backend.admin),
                            serving: Some(backend.serving),
                        })
                    })
                    .collect());
            }
        };
        let view: BackendsView = serde_json::from_str(&text)
            .with_context(|| format!("parsing `backends --json`: {}", excerpt(&text)))?;
        Ok(view.backends)
    }

    /// The event log: `events --json`; without that command, the file it reads
    /// (`events.jsonl`, one event per line).
    pub fn events(&self) -> Result<Vec<Event>> {
        match self.ctl(&["events", "--json", "--limit", "1000"]) {
            Ok(text) => {
                let events: Events = serde_json::from_str(&text)
                    .with_context(|| format!("parsing `events --json`: {}", excerpt(&text)))?;
                Ok(match events {
                    Events::List(events) | Events::View { events } => events,
                })
            }
            Err(error) => {
                let text =
                    fs::read_to_string(self.runtime_file("events.jsonl")).map_err(|_| error)?;
                text.lines()
                    .filter(|line| !line.trim().is_empty())
                    .map(|line| {
                        serde_json::from_str(line)
                            .with_context(|| format!("parsing event {}", excerpt(line)))
                    })
                    .collect()
            }
        }
    }

    fn runtime_file(&self, name: &str) -> PathBuf {
        Path::new(RUN_ROOT).join(&self.instance).join(name)
    }

    /// `drain` or `undrain` backend `index` of the lab's VIP.
    pub fn drain(&self, index: usize, drain: bool) -> Result<()> {
        let verb = if drain { "drain" } else { "undrain" };
        self.ctl(&[verb, VIP_NAME, &backend_address(index).to_string()])
            .map(drop)
    }

    /// `election resign GROUP`: this node, if master, hands the group over now.
    pub fn resign(&self, group: &str) -> Result<()> {
        self.ctl(&["election", "resign", group]).map(drop)
    }
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    let end = text
        .char_indices()
        .nth(300)
        .map_or(text.len(), |(at, _)| at);
    format!("{:?}", &text[..end])
}

/// Runs `command` to completion within `timeout` (killed after it); fails on a non-zero exit.
pub(super) fn output_with_timeout(mut command: Command, timeout: Duration) -> Result<String> {
    let describe = crate::command::describe(&command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{describe}`"))?;
    // Read both pipes while waiting: a large output would otherwise block the child.
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{describe}` took longer than {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "`{describe}` failed ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Spawns the project's decap program on `interface` of `namespace` for `vip`:
/// `failover-ctl decap --interface IF --vip VIP` runs in the foreground and detaches the
/// program when it gets SIGTERM.
pub fn start_decap(
    programs: &Programs,
    namespace: &Namespace,
    interface: &str,
    vip: std::net::Ipv4Addr,
    dir: &Path,
) -> Result<Child> {
    let mut command = Command::new(&programs.failover_ctl);
    command.args([
        "--netns",
        namespace.name(),
        "decap",
        "--interface",
        interface,
        "--vip",
        &vip.to_string(),
    ]);
    spawn_logged(
        command,
        &dir.join(format!("decap-{}-{interface}.log", namespace.name())),
    )
}

/// `backends --json` (failover-ctl/src/cli/inspect/backends.rs): the fields the lab reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BackendsView {
    backends: Vec<BackendState>,
}

/// One backend of one VIP.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BackendState {
    pub vip: Option<String>,
    pub address: String,
    /// The probes' verdict: "up" or "down".
    pub verdict: Option<String>,
    /// "enabled", "drained" or "maintenance".
    pub admin: Option<String>,
    /// Whether the backend is in the VIP's published table.
    pub serving: Option<bool>,
}

impl BackendState {
    /// Probed up and in the table.
    pub fn serving_up(&self) -> bool {
        self.verdict.as_deref() == Some("up") && self.serving == Some(true)
    }
}

/// Backend `index` of the lab's VIP.
pub fn find(backends: &[BackendState], index: usize) -> Option<&BackendState> {
    let address = backend_address(index).to_string();
    backends.iter().find(|backend| {
        backend.address == address && backend.vip.as_deref().is_none_or(|vip| vip == VIP_NAME)
    })
}

/// `state.json` (failover-ctl/src/daemon/status.rs): the fields the lab reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StateFile {
    vips: Vec<StateVip>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StateVip {
    name: String,
    backends: Vec<StateBackend>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StateBackend {
    address: String,
    admin: String,
    health: String,
    serving: bool,
}

/// `events --json`: an object with the recent events (or, tolerated, a bare list).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Events {
    List(Vec<Event>),
    View { events: Vec<Event> },
}

/// One event of `events --json`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    pub kind: String,
    pub vip: Option<String>,
    pub backend: Option<String>,
    pub detail: String,
    pub timings: Option<Timings>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Timings {
    pub probe_at: u64,
    /// "up" or "down".
    pub to: String,
    pub health_written_us: u64,
    pub table_published_us: u64,
}

impl Event {
    /// Whether the event names backend `index` (by address, or by a text containing it).
    pub fn is_about(&self, index: usize) -> bool {
        let address = backend_address(index).to_string();
        let names = |text: &str| {
            text == address
                || text.starts_with(&format!("{address}:"))
                || text.contains(&format!("{address} "))
        };
        self.backend.as_deref().is_some_and(names)
    }
}

/// Milliseconds since the Unix epoch, the clock of the daemon's events.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_backends_by_address() {
        let event = Event {
            backend: Some("10.100.12.2".into()),
            ..Event::default()
        };
        assert!(event.is_about(1));
        assert!(!event.is_about(0));
    }

    #[test]
    fn parses_events() {
        let text = r#"[{"at":5,"kind":"failover","vip":"web","backend":"10.100.11.2","detail":"",
            "timings":{"probe_at":4,"to":"down","health_written_us":30,"table_published_us":900}},
            {"at":6,"kind":"started","vip":null,"backend":null,"detail":"x","timings":null}]"#;
        let events: Vec<Event> = serde_json::from_str(text).unwrap();
        assert_eq!(events[0].timings.as_ref().unwrap().table_published_us, 900);
        assert!(events[1].timings.is_none());
        let view = format!(r#"{{"instance":"lab-1","total":2,"events":{text}}}"#);
        let Events::View { events } = serde_json::from_str(&view).unwrap() else {
            panic!("not a view")
        };
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn instances_name_their_run() {
        assert_eq!(lb_instance(42, 1), "lab-42-lb2");
        assert_eq!(run_of(&lb_instance(42, 0)), Some(42));
        assert_eq!(run_of(&instance_name(42)), Some(42));
        assert_eq!(run_of("lab-x"), None);
        assert_eq!(run_of("prod"), None);
    }
}
