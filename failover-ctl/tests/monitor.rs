//! `failover-ctl monitor` as the binary against a private pinned instance (built in-process
//! through the real loader and map writer, no daemon): the packets the loaded program runs
//! come out as lines or JSON, the rate bound and the summary hold, the filter is switched off on
//! every way out, and a second monitor is refused while the first lives but not after it was
//! killed. Needs root (BPF); skips otherwise.

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use etherparse::PacketBuilder;
use failover_common::{
    maps::*,
    monitor::{MonitorFilter, MATCH_VIP, MONITOR_ENABLED},
};
use failover_ctl::{
    address::to_words,
    daemon::status::{Status, VipStatus},
    loader::{Dataplane, LoadOptions},
    maps::VipSettings,
};
use pinned::PinnedInstance;
use serde_json::Value;

#[path = "support/pinned.rs"]
mod pinned;

const INSTANCE: &str = "lab";
const WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const BACKEND: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x01];
/// How long a step may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(10);


fn root() -> bool {
    netlab::prerequisite::root("loads and pins BPF programs")
}

/// A pinned instance with one VIP (`web`, 203.0.113.10:80/tcp, one backend) under private roots,
/// and the monitors started against it; everything is killed and removed on drop.
struct Instance {
    pinned: PinnedInstance,
    dataplane: Dataplane,
    monitors: Vec<Child>,
}

impl Instance {
    fn new() -> Self {
        let pinned = PinnedInstance::new("monitor", INSTANCE);
        let paths = &pinned.paths;
        let mut dataplane =
            Dataplane::create_pinned(paths, LoadOptions { table_pool_slots: 4096, flow_entries: 1024 }).unwrap();
        let config = Config {
            next_hop_mac: [0x02, 0x4e, 0, 0, 0, 0xfe],
            interface_mac: LB_MAC,
            mtu: 1500,
            source_v4_base: u32::from_ne_bytes([192, 0, 2, 0]),
            udp_idle_timeout_ns: 30_000_000_000,
            ..Config::default()
        };
        dataplane.writer.set_config(&config).unwrap();
        let (address, family) = to_words(IpAddr::V4(BACKEND));
        dataplane.writer.set_backend(1, Backend { address, vip_id: 1, family, _padding: [0; 3] }, HEALTH_UP).unwrap();
        let (address, family) = to_words(IpAddr::V4(WEB));
        let key = VipKey { address, port: 80u16.to_be(), protocol: PROTOCOL_TCP, family };
        dataplane.writer.publish_vip(key, VipSettings { vip_id: 1, flags: VIP_OWNED }, &[1; 251]).unwrap();
        // The daemon's state file, for the VIP's name.
        let vip = VipStatus { name: "web".into(), address: WEB.to_string(), port: 80, protocol: "tcp".into(), vip_id: 1, ..VipStatus::default() };
        let status = Status { instance: INSTANCE.into(), vips: vec![vip], ..Status::default() };
        std::fs::write(paths.state(), serde_json::to_vec(&status).unwrap()).unwrap();
        Self { pinned, dataplane, monitors: Vec::new() }
    }

    /// Starts `failover-ctl --instance lab ARGS` with piped output; returns its index.
    fn start(&mut self, args: &[&str]) -> usize {
        let child = self
            .pinned
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start failover-ctl");
        self.monitors.push(child);
        self.monitors.len() - 1
    }

    /// The filter as the data plane sees it, through the pin.
    fn filter(&self) -> MonitorFilter {
        let data = MapData::from_pin(self.pinned.paths.map(names::MONITOR_FILTER)).unwrap();
        let array: Array<MapData, MonitorFilter> = Map::Array(data).try_into().unwrap();
        array.get(&0, 0).unwrap()
    }

    /// Waits until monitor `index` has switched its filter on.
    fn wait_attached(&mut self, index: usize) {
        let pid = self.monitors[index].id();
        let deadline = Instant::now() + PATIENCE;
        while !(self.filter().enabled == MONITOR_ENABLED && self.filter().owner_pid == pid) {
            if let Some(status) = self.monitors[index].try_wait().unwrap() {
                panic!("the monitor exited ({status}) before attaching: {}", self.output(index).1);
            }
            assert!(Instant::now() < deadline, "the monitor did not attach within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one TCP packet client:port -> destination:80 through the pinned program.
    fn send(&self, destination: Ipv4Addr, client_port: u16) -> u32 {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([0x02, 0xc1, 0, 0, 0, 1], LB_MAC)
            .ipv4(CLIENT.octets(), destination.octets(), 64)
            .tcp(client_port, 80, 1000, 64240)
            .syn()
            .write(&mut frame, b"hello")
            .unwrap();
        let mut out = vec![0u8; frame.len() + 128];
        let program = self.dataplane.program().unwrap();
        program.test_run(TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..Default::default() }).unwrap().return_value
    }

    /// Waits for monitor `index` to exit; returns its success, stdout and stderr.
    fn finish(&mut self, index: usize) -> (bool, String, String) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.monitors[index].try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the monitor did not exit within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let (stdout, stderr) = self.output(index);
        (status.success(), stdout, stderr)
    }

    fn output(&mut self, index: usize) -> (String, String) {
        let child = &mut self.monitors[index];
        let mut stdout = String::new();
        let mut stderr = String::new();
        child.stdout.take().map(|mut pipe| pipe.read_to_string(&mut stdout));
        child.stderr.take().map(|mut pipe| pipe.read_to_string(&mut stderr));
        (stdout, stderr)
    }

    fn signal(&self, index: usize, signal: libc::c_int) {
        // SAFETY: a signal to our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(self.monitors[index].id() as libc::pid_t, signal) }, 0);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        for child in &mut self.monitors {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn json_lines_for_the_matching_packets_then_the_filter_is_off() {
    if !root() {
        return;
    }
    let mut instance = Instance::new();
    let monitor = instance.start(&["--json", "monitor", "--vip", "web", "--count", "2"]);
    instance.wait_attached(monitor);
    let filter = instance.filter();
    assert_eq!((filter.matches, filter.vip_port, filter.vip_protocol), (MATCH_VIP, 80u16.to_be(), PROTOCOL_TCP), "--vip web: its address, port and protocol");
    assert_eq!(instance.send(OTHER, 40000), 2, "not a VIP: passed");
    assert_eq!(instance.send(WEB, 40001), 3, "forwarded");
    assert_eq!(instance.send(WEB, 40001), 3, "forwarded again");
    let (success, stdout, stderr) = instance.finish(monitor);
    assert!(success, "exit status; stderr:\n{stderr}");
    let lines: Vec<Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}"))).collect();
    assert_eq!(lines.len(), 2, "--count 2 ends after two packets:\n{stdout}");
    for (line, flow) in lines.iter().zip(["new", "tracked"]) {
        assert_eq!(line["action"], "tx");
        assert_eq!(line["reason"], "tx_forward");
        assert_eq!(line["vip"], "web");
        assert_eq!(line["vip_id"], 1);
        assert_eq!(line["backend"], BACKEND.to_string());
        assert_eq!(line["backend_id"], 1);
        assert_eq!(line["flow"], flow);
        assert_eq!(line["protocol"], "tcp");
        assert_eq!(line["source"], format!("{CLIENT}:40001"));
        assert_eq!(line["destination"], format!("{WEB}:80"));
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    assert!(stderr.contains("2 packets shown, 0 not shown over --rate 1000/s, 0 lost"), "{stderr}");
    assert_eq!(instance.filter().enabled, 0, "the filter is off once the monitor ended");
}

#[test]
fn sigterm_ends_the_monitor_with_its_rate_summary_and_clears_the_filter() {
    if !root() {
        return;
    }
    let mut instance = Instance::new();
    let monitor = instance.start(&["monitor", "--client", "198.51.100.0/24", "--rate", "1"]);
    instance.wait_attached(monitor);
    for port in 40000..40005 {
        assert_eq!(instance.send(WEB, port), 3);
    }
    // The records are read within one poll interval; then stop it.
    std::thread::sleep(Duration::from_millis(600));
    instance.signal(monitor, libc::SIGTERM);
    let (success, stdout, stderr) = instance.finish(monitor);
    assert!(success, "SIGTERM is a normal end; stderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--rate 1 shows one packet in the first second:\n{stdout}");
    assert!(
        lines[0].contains("tx    tx_forward") && lines[0].contains(&format!("{CLIENT}:40000 -> {WEB}:80 vip=web backend={BACKEND}#1 flow=new")),
        "{}",
        lines[0]
    );
    assert!(stderr.contains("1 packets shown, 4 not shown over --rate 1/s, 0 lost"), "{stderr}");
    assert_eq!(instance.filter().enabled, 0, "the filter is off after SIGTERM");
}

#[test]
fn a_second_monitor_is_refused_until_the_first_is_gone() {
    if !root() {
        return;
    }
    let mut instance = Instance::new();
    let first = instance.start(&["monitor"]);
    instance.wait_attached(first);
    let second = instance.start(&["monitor"]);
    let (success, _, stderr) = instance.finish(second);
    assert!(!success, "refused");
    let pid = instance.monitors[first].id();
    assert!(stderr.contains(&format!("another monitor (pid {pid}) is attached")), "{stderr}");

    // Killed outright: its filter stays on (until the lease ends) but names a dead process.
    instance.signal(first, libc::SIGKILL);
    let _ = instance.finish(first);
    assert_eq!(instance.filter().enabled, MONITOR_ENABLED, "a killed monitor cannot clear its filter");
    let third = instance.start(&["monitor", "--backend", &BACKEND.to_string(), "--count", "1"]);
    instance.wait_attached(third);
    instance.send(WEB, 40000);
    let (success, stdout, stderr) = instance.finish(third);
    assert!(success, "takes over from the dead one; stderr:\n{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(instance.filter().enabled, 0);
}

#[test]
fn bad_filters_are_refused_with_the_reason() {
    if !root() {
        return;
    }
    let mut instance = Instance::new();
    for (args, message) in [
        (&["monitor", "--vip", "mail"][..], "unknown VIP \"mail\": known VIPs are web"),
        (&["monitor", "--client", "198.51.100.0/40"][..], "prefix length must be 0 to 32"),
        (&["monitor", "--rate", "0"][..], "--rate 0"),
    ] {
        let index = instance.start(args);
        let (success, _, stderr) = instance.finish(index);
        assert!(!success && stderr.contains(message), "{args:?}: {stderr}");
    }
    assert_eq!(instance.filter().enabled, 0, "no refused monitor switched the filter on");
}
