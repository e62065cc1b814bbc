//! The stop path of announcing nodes. `flush-announcements` removes, with no daemon, exactly the
//! controller's routes (its protocol in its table, IPv4 and IPv6) and refuses a bad
//! configuration or a running daemon without removing anything. The daemon keeps its routes on
//! SIGTERM (a restart) and withdraws them on SIGUSR1 before it exits after the grace (a stop),
//! without staying drained. The systemd units in contrib/ pass `systemd-analyze verify` and name
//! only commands and options the CLI has.

mod support;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use failover_ctl::config::Announce;
use netlab::Namespace;
use support::*;

const TABLE: u32 = 100;
const PROTOCOL: u8 = 201;
const GRACE: Duration = Duration::from_millis(400);

/// Root and `ip`, for the namespace tests (no BPF).
fn namespace_prerequisites() -> bool {
    netlab::prerequisite::root("network namespaces") && netlab::prerequisite::require_program("ip", "iproute2")
}

/// The destinations of the routes of `table` with `protocol` (any protocol when `None`) in one
/// family, read with `ip` (the test's own view; the command reads through rtnetlink).
fn listed(namespace: &Namespace, family: &str, table: u32, protocol: Option<u8>) -> Vec<IpAddr> {
    let table = table.to_string();
    let mut args = vec![family, "route", "show", "table", &table];
    let protocol = protocol.map(|protocol| protocol.to_string());
    if let Some(protocol) = &protocol {
        args.extend(["proto", protocol]);
    }
    let output = namespace.command("ip").args(&args).output().expect("run ip route show");
    if !output.status.success() {
        // A table that never held a route does not exist.
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(error.contains("FIB table does not exist"), "ip {args:?}: {error}");
        return Vec::new();
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find_map(|word| word.parse::<IpAddr>().ok()))
        .collect()
}

/// Both families.
fn listed_both(namespace: &Namespace, table: u32, protocol: Option<u8>) -> Vec<IpAddr> {
    let mut found = listed(namespace, "-4", table, protocol);
    found.extend(listed(namespace, "-6", table, protocol));
    found.sort();
    found
}

fn blackhole(namespace: &Namespace, destination: &str, table: u32, protocol: u8) {
    let family = if destination.contains(':') { "-6" } else { "-4" };
    namespace.ip(&format!("{family} route add blackhole {destination} table {table} proto {protocol}")).unwrap();
}

/// A configuration file in a scratch directory that goes when this is dropped.
struct ConfigFile {
    dir: PathBuf,
    path: PathBuf,
}

impl ConfigFile {
    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A configuration that loads but for what `announce` (its `[announce]` section) says.
fn config_file(name: &str, announce: &str) -> ConfigFile {
    let dir = std::env::temp_dir().join(format!("failover-stop-path-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "instance = \"sp-{}-{}\"\ninterfaces = [\"eth0\"]\n[next_hop]\nmac = \"02:00:00:00:00:01\"\n\
             [tunnel]\nsource_v4 = \"192.0.2.0/24\"\n{announce}\n\
             [[vip]]\nname = \"web\"\naddress = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n\
             [[vip.backend]]\naddress = \"198.51.100.1\"\n",
            std::process::id(),
            unique()
        ),
    )
    .unwrap();
    ConfigFile { dir, path }
}

/// `failover-ctl --netns <namespace> <args>`.
fn ctl(namespace: &Namespace, args: &[&str]) -> Output {
    Command::new(DAEMON).args(["--netns", namespace.name()]).args(args).output().expect("run failover-ctl")
}

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn addresses(list: &[&str]) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = list.iter().map(|address| address.parse().unwrap()).collect();
    addresses.sort();
    addresses
}

#[test]
fn flush_removes_only_the_controllers_routes_with_no_daemon() {
    if !namespace_prerequisites() {
        return;
    }
    let namespace = Namespace::create("flush").unwrap();
    // The controller's: protocol 201 in table 100, both families.
    blackhole(&namespace, "203.0.113.10/32", TABLE, PROTOCOL);
    blackhole(&namespace, "203.0.113.20/32", TABLE, PROTOCOL);
    blackhole(&namespace, "2001:db8::10/128", TABLE, PROTOCOL);
    // Not the controller's: another protocol in the same table, the same protocol elsewhere.
    blackhole(&namespace, "203.0.113.11/32", TABLE, 202);
    blackhole(&namespace, "2001:db8::11/128", TABLE, 202);
    blackhole(&namespace, "203.0.113.12/32", 101, PROTOCOL);
    blackhole(&namespace, "2001:db8::12/128", 101, PROTOCOL);
    namespace.ip("route add blackhole 203.0.113.13/32 proto 201").unwrap();
    let config = config_file("failover.toml", &format!("[announce]\nenabled = true\ntable = {TABLE}\nprotocol = {PROTOCOL}\n"));

    let output = ctl(&namespace, &["--config", config.path(), "flush-announcements"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "flush-announcements: {stderr}");
    assert!(stdout.starts_with("table 100: removed 3 routes with protocol 201\n"), "{stdout}");
    for address in ["203.0.113.10", "203.0.113.20", "2001:db8::10"] {
        assert!(stdout.lines().any(|line| line.trim() == address), "{address} not reported in {stdout}");
    }
    assert_eq!(listed_both(&namespace, TABLE, Some(PROTOCOL)), Vec::<IpAddr>::new(), "the controller's routes are gone");
    assert_eq!(listed_both(&namespace, TABLE, None), addresses(&["203.0.113.11", "2001:db8::11"]), "protocol 202 stays");
    assert_eq!(listed_both(&namespace, 101, None), addresses(&["203.0.113.12", "2001:db8::12"]), "table 101 stays");
    assert_eq!(listed(&namespace, "-4", 254, Some(PROTOCOL)), addresses(&["203.0.113.13"]), "the main table stays");

    // Again, on the empty table: nothing to do is no error; --json for scripts.
    let output = ctl(&namespace, &["--json", "--config", config.path(), "flush-announcements"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "second flush-announcements: {stderr}");
    let view: serde_json::Value = serde_json::from_str(&stdout).expect("flush-announcements --json");
    assert_eq!(view, serde_json::json!({ "table": 100, "protocol": 201, "removed": [] }));

    // The flags name another table without any configuration.
    let output = ctl(&namespace, &["flush-announcements", "--table", "101", "--protocol", "201"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "flush-announcements --table 101: {stderr}");
    assert!(stdout.starts_with("table 101: removed 2 routes with protocol 201\n"), "{stdout}");
    assert_eq!(listed_both(&namespace, 101, None), Vec::<IpAddr>::new());
    assert_eq!(listed_both(&namespace, TABLE, None), addresses(&["203.0.113.11", "2001:db8::11"]), "still there");
}

#[test]
fn a_bad_configuration_or_a_missing_table_removes_nothing() {
    if !namespace_prerequisites() {
        return;
    }
    let namespace = Namespace::create("flushbad").unwrap();
    blackhole(&namespace, "203.0.113.10/32", TABLE, PROTOCOL);
    blackhole(&namespace, "2001:db8::10/128", TABLE, PROTOCOL);
    let all = addresses(&["203.0.113.10", "2001:db8::10"]);

    // The main table is refused by the configuration's validation, with the file and the line.
    let config = config_file("bad.toml", "[announce]\nenabled = true\ntable = 254\n");
    let output = ctl(&namespace, &["--config", config.path(), "flush-announcements"]);
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "a bad configuration was accepted: {stdout}");
    assert!(stderr.contains("bad.toml:9: announce.table: must be a table of its own"), "{stderr}");
    assert_eq!(listed_both(&namespace, TABLE, None), all);

    let missing = config.path.with_file_name("missing.toml");
    let output = ctl(&namespace, &["--config", missing.to_str().unwrap(), "flush-announcements"]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success() && stderr.contains("missing.toml"), "{stderr}");

    let output = ctl(&namespace, &["flush-announcements"]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success() && stderr.contains("--config FILE"), "no table and no configuration: {stderr}");

    let output = ctl(&namespace, &["flush-announcements", "--table", "254", "--protocol", "201"]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success() && stderr.contains("--table 254"), "{stderr}");
    assert_eq!(listed_both(&namespace, TABLE, None), all, "nothing was removed");
}

/// Whether the daemon process `pid` has exited (gone, or a zombie its parent has not reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

#[test]
fn sigterm_keeps_the_routes_and_sigusr1_withdraws_before_exiting() {
    if !root() {
        return;
    }
    let topology = Topology::new(1);
    let _server = HttpServer::start(&topology.backends[0], 80, &backend_name(0));
    let mut spec = ConfigSpec {
        instance: String::new(),
        metrics_port: 9750 + (unique() % 200) as u16,
        next_hop_mac: topology.next_hop_mac(),
        vip_name: "web",
        vip_port: 80,
        backends: vec![BackendSpec::http(0)],
    };
    let mut daemon = Daemon::start_with(&topology.lb, |instance| {
        spec.instance = instance.to_owned();
        spec.render_announcing(TABLE, PROTOCOL, GRACE)
    });
    let lb = &topology.lb;
    let vip = IpAddr::V4(VIP);
    let announced = || listed(lb, "-4", TABLE, Some(PROTOCOL)) == vec![vip];
    assert!(wait_for(Duration::from_secs(10), || announced().then_some(())).is_some(), "never announced:\n{}", daemon.logs());

    // A running daemon owns the table: the flush refuses and removes nothing.
    let config = daemon.config_path().to_str().unwrap().to_owned();
    let output = ctl(lb, &["--config", &config, "flush-announcements"]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success() && stderr.contains("is running"), "flush with the daemon running: {stderr}");
    assert!(announced(), "the refused flush removed the route");

    // SIGTERM (what a restart sends): the route stays while no daemon runs and after it returns.
    daemon.stop();
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_millis(300) {
        assert!(announced(), "the route left with a SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon.spawn();
    assert!(announced(), "the restarted daemon dropped the route");

    // SIGUSR1 (what a stop sends): withdrawn while the daemon still runs, exit after the grace.
    let pid = daemon.pid();
    let sent = Instant::now();
    signal(pid, libc::SIGUSR1);
    let withdrawn = wait_for(Duration::from_secs(3), || (!announced()).then(|| (sent.elapsed(), exited(pid))));
    let (withdrawn, exited_then) = withdrawn.expect("SIGUSR1 did not withdraw the route");
    assert!(!exited_then, "the daemon exited before the route was withdrawn");
    let exit = wait_for(Duration::from_secs(5), || exited(pid).then(|| sent.elapsed())).expect("the daemon did not exit");
    eprintln!("SIGUSR1: withdrawn after {withdrawn:?}, exited after {exit:?} (grace {GRACE:?})");
    assert!(exit >= GRACE, "exited {exit:?} after SIGUSR1, before the grace {GRACE:?}");
    assert!(exit < GRACE + Duration::from_secs(2), "exited {exit:?} after SIGUSR1");
    let status = daemon.status().expect("state.json");
    assert!(!status.node_drained, "a stop is not a drain-node");
    assert!(status.vips.iter().all(|vip| !vip.announced && vip.announce_reason == "stopping"), "{:?}", status.vips);
    assert!(daemon.events().iter().any(|event| event.kind == "stopping"), "no stopping event");
    daemon.stop();
    assert!(!announced(), "the route came back");

    // The next start announces again: nothing has to undrain.
    daemon.spawn();
    assert!(wait_for(Duration::from_secs(5), || announced().then_some(())).is_some(), "not announced after the start:\n{}", daemon.logs());

    // kill -9 keeps the route; the flush, with no daemon, removes it.
    daemon.kill9();
    assert!(announced(), "kill -9 removed the route");
    let output = ctl(lb, &["--config", &config, "flush-announcements"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "flush after kill -9: {stderr}");
    assert!(stdout.lines().any(|line| line.trim() == VIP.to_string()), "{stdout}");
    assert!(!announced(), "the flush left the route");
}

/// The lines `KEY=value` of a unit file, values only.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|line| line.strip_prefix(key)?.strip_prefix('=')).collect()
}

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("contrib")
}

fn unit_files() -> Vec<(String, String)> {
    let mut units: Vec<(String, String)> = std::fs::read_dir(contrib())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "service"))
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&path).unwrap()))
        .collect();
    units.sort();
    units
}

const INSTALLED: &str = "/usr/local/bin/failover-ctl";

#[test]
fn the_units_name_only_commands_the_cli_has() {
    let units = unit_files();
    let names: Vec<&str> = units.iter().map(|(name, _)| name.as_str()).collect();
    assert!(names.contains(&"failover-ctl.service") && names.contains(&"failover-ctl-flush.service"), "{names:?}");
    let mut checked = Vec::new();
    for (name, unit) in &units {
        for key in ["ExecCondition", "ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost"] {
            for line in values(unit, key) {
                let line = line.trim_start_matches(['-', '@', ':', '+', '!']);
                let mut words = line.split_whitespace();
                let program = words.next().unwrap_or_default();
                if program != INSTALLED {
                    assert!(Path::new(program).is_absolute() && Path::new(program).exists(), "{name}: {key}={line}: no {program}");
                    continue;
                }
                // The whole line with --help: clap rejects an unknown command or option first.
                let args: Vec<&str> = words.collect();
                let output = Command::new(DAEMON).args(&args).arg("--help").output().unwrap();
                let (_, stderr) = text(&output);
                assert!(output.status.success(), "{name}: {key}={line} is not a command line failover-ctl accepts: {stderr}");
                checked.push(args.first().copied().unwrap_or_default().to_owned());
            }
        }
        for started in values(unit, "OnFailure").iter().flat_map(|line| line.split_whitespace()) {
            assert!(names.contains(&started), "{name} starts {started}, which contrib/ does not have");
        }
    }
    checked.sort();
    assert_eq!(checked, ["check", "flush-announcements", "run"], "the failover-ctl command lines of the units");

    // A stop withdraws, a restart keeps, a failure flushes, the flush uses the defaults.
    let (_, main) = units.iter().find(|(name, _)| name == "failover-ctl.service").unwrap();
    assert_eq!(values(main, "KillSignal"), ["SIGUSR1"]);
    assert_eq!(values(main, "RestartKillSignal"), ["SIGTERM"]);
    assert_eq!(values(main, "OnFailure"), ["failover-ctl-flush.service"]);
    let (_, flush) = units.iter().find(|(name, _)| name == "failover-ctl-flush.service").unwrap();
    let defaults = Announce::default();
    let expected = format!("{INSTALLED} flush-announcements --table {} --protocol {}", defaults.table, defaults.protocol);
    assert_eq!(values(flush, "ExecStart"), [expected.as_str()]);
    let timeout: u64 = values(main, "TimeoutStopSec")[0].trim_end_matches('s').parse().unwrap();
    assert!(Duration::from_secs(timeout) > defaults.withdraw_grace * 2, "TimeoutStopSec={timeout}s leaves no room for the grace");
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let Some(analyze) = netlab::prerequisite::find_program("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed (Debian package systemd): only the parsed checks ran");
        return;
    };
    // The units name the installed binary; verify checks that it exists, so point it at ours.
    let dir = std::env::temp_dir().join(format!("failover-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    for (name, unit) in unit_files() {
        let path = dir.join(&name);
        std::fs::write(&path, unit.replace(INSTALLED, DAEMON)).unwrap();
        paths.push(path);
    }
    let output = Command::new(analyze).arg("verify").args(&paths).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "systemd-analyze verify: {stdout}{stderr}");
    // It reports unknown keys and bad values as warnings, with success.
    assert!(stderr.trim().is_empty() && stdout.trim().is_empty(), "systemd-analyze verify: {stdout}{stderr}");
}
