//! The benchmark run: builds the scenarios, times them round by round, checks every run, and turns the medians into rows with targets and verdicts.

use std::{
    net::IpAddr,
    os::fd::{AsFd, OwnedFd},
};

use anyhow::{ensure, Context as _, Result};
use failover_common::stats;

use super::{
    control, failover,
    lab::Lab,
    measure::{self, Method, Program, Sample, Variation},
    raw::{self, XDP_PASS, XDP_TX},
    report::{self, Row},
    setup::{self, Kind, LoadBalancer, CLIENT4, CLIENT6, OTHER4, OTHER6, VIP4, VIP6},
    statistics::median,
    Group,
};

/// Measured rounds; the scenarios take turns within a round, so slow drift (another process,
/// frequency changes) spreads over all of them instead of landing on one. Round 0 is a warm-up
/// at a tenth of the counts and is not reported.
const ROUNDS: usize = 7;
/// Iterations of one `test_run/repeat` call (floor and non-VIP: 2 to 30 ns each).
const REPEAT_ITERATIONS: u32 = 5_000_000;
/// Frames of one live call (100 to 400 ns each).
const LIVE_FRAMES: u32 = 1_000_000;
/// Frames of one live new-flow call: every one inserts a flow, and the table is cleared after
/// each call, so this stays far below the 1 Mi entries of the flow table (no LRU eviction).
const NEW_FLOW_FRAMES: u32 = 250_000;
/// Calls of the `test_run/loop` fallback (a system call each, about 1 µs).
const LOOP_CALLS: u32 = 200_000;

/// The targets.
const ESTABLISHED_SHARE_OF_FLOOR: f64 = 0.7;
const NEW_FLOW_MAX_NS: f64 = 250.0;
const NON_VIP_MAX_NS: f64 = 45.0;

#[derive(Clone, Copy)]
enum How {
    /// `test_run/repeat`: the program leaves the packet unchanged, so repetitions are valid.
    Repeat { action: u32 },
    /// Live frames (or the loop fallback): the program rewrites the packet.
    Live { variation: Variation, new_flows: bool },
}

struct Scenario<'a> {
    name: &'static str,
    program: Program<'a>,
    frame: Vec<u8>,
    how: How,
}

/// Every sample of one (scenario, method), in round order.
struct Series {
    name: &'static str,
    method: Method,
    packets: u32,
    samples: Vec<Sample>,
}

pub fn run(json: bool, groups: &[Group]) -> Result<()> {
    let cpu = std::thread::available_parallelism().map_or(0, |count| count.get() - 1);
    let (rows, mut notes) = if groups.contains(&Group::Dataplane) { dataplane(cpu)? } else { (Vec::new(), Vec::new()) };
    // After the data plane, whose lab is gone by then, so its numbers are taken as before.
    let mut control_rows = Vec::new();
    if groups.contains(&Group::Maglev) {
        let (rows, note) = control::maglev_build(cpu)?;
        control_rows.extend(rows);
        notes.push(note);
    }
    if groups.contains(&Group::Probes) {
        let (rows, note) = control::probe_cpu()?;
        control_rows.extend(rows);
        notes.push(note);
    }
    if groups.contains(&Group::Failover) {
        let (rows, note) = failover::verdict_to_publish()?;
        control_rows.extend(rows);
        notes.push(note);
    }
    if json {
        report::print_json(&rows);
        report::print_control_json(&control_rows);
        for line in notes {
            eprintln!("{line}");
        }
    } else {
        if !rows.is_empty() {
            report::print_table(&rows);
            println!();
        }
        if !control_rows.is_empty() {
            report::print_control_table(&control_rows);
            println!();
        }
        for line in notes {
            println!("{line}");
        }
    }
    Ok(())
}

/// The data-plane scenarios: rows and notes.
fn dataplane(cpu: usize) -> Result<(Vec<Row>, Vec<String>)> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "the benchmark loads XDP programs and creates namespaces: run it as root");
    let floor = raw::load_floor()?;
    let (mut lab, live_error) = match Lab::new() {
        Ok(lab) => (Some(lab), None),
        Err(error) => (None, Some(error)),
    };
    let (lb_mac, peer_mac) = lab.as_ref().map_or(([0x02, 0x1b, 0, 0, 0, 1], [0x02, 0x4e, 0, 0, 0, 0xfe]), |lab| (lab.lb_mac, lab.peer_mac));
    let mut balancer = LoadBalancer::new(lb_mac, peer_mac)?;
    // An fd of our own, so the balancer stays free to be borrowed mutably between runs.
    let balancer_fd: OwnedFd = balancer
        .dataplane
        .program()
        .context("the load-balancer program")?
        .fd()
        .context("the load-balancer program's fd")?
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating the program fd")?;
    let balancer_program = |reason| Program::LoadBalancer { fd: balancer_fd.as_fd(), reason };
    let frame = |source, destination, kind, port| setup::frame(lb_mac, source, destination, kind, port);
    let (v4, v6) = (IpAddr::V4(CLIENT4), IpAddr::V6(CLIENT6));
    let live = |pushed, vary_at: Option<u16>| How::Live { variation: Variation { pushed, vary_at }, new_flows: vary_at.is_some() };

    // New flows with live frames: data_in is one packet, so the variety has to come from the
    // peer, which writes a fresh source address into each frame as it restores it (see
    // `raw::load_restore`). Tracking stays on and the limiter is on, so the number covers the
    // flow-table miss, the Maglev probe, the limiter and the insert: the whole new-flow path,
    // not a shortcut such as VIP_NO_FLOW_TRACKING (no insert) or a refusing limiter (no insert
    // either). The rejected alternative, repeat = 1 calls, is what `test_run/loop` does.
    let scenarios = [
        Scenario { name: "floor", program: Program::Floor(floor.as_fd()), frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpAck, 40000)?, how: How::Repeat { action: XDP_TX } },
        Scenario { name: "floor", program: Program::Floor(floor.as_fd()), frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpAck, 40000)?, how: live(0, None) },
        Scenario { name: "v4_new_flow", program: balancer_program(stats::TX_FORWARD), frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpSyn, 40001)?, how: live(setup::PUSHED_IPV4, Some(setup::SOURCE_WORD_IPV4)) },
        Scenario { name: "v4_established", program: balancer_program(stats::TX_FORWARD), frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpAck, 40000)?, how: live(setup::PUSHED_IPV4, None) },
        Scenario { name: "v4_non_vip", program: balancer_program(stats::PASS_NOT_VIP), frame: frame(v4, IpAddr::V4(OTHER4), Kind::TcpAck, 40000)?, how: How::Repeat { action: XDP_PASS } },
        Scenario { name: "v6_new_flow", program: balancer_program(stats::TX_FORWARD), frame: frame(v6, IpAddr::V6(VIP6), Kind::TcpSyn, 40001)?, how: live(setup::PUSHED_IPV6, Some(setup::SOURCE_WORD_IPV6)) },
        Scenario { name: "v6_established", program: balancer_program(stats::TX_FORWARD), frame: frame(v6, IpAddr::V6(VIP6), Kind::TcpAck, 40000)?, how: live(setup::PUSHED_IPV6, None) },
        Scenario { name: "v6_non_vip", program: balancer_program(stats::PASS_NOT_VIP), frame: frame(v6, IpAddr::V6(OTHER6), Kind::TcpAck, 40000)?, how: How::Repeat { action: XDP_PASS } },
        Scenario { name: "icmp_echo", program: balancer_program(stats::TX_ECHO_REPLY), frame: frame(v4, IpAddr::V4(VIP4), Kind::EchoRequest, 0)?, how: live(0, None) },
    ];

    // One ordinary run of each load-balancer scenario: checks the verdict and reason, and
    // tracks the two established flows on their first packet.
    for scenario in &scenarios {
        if let Program::LoadBalancer { .. } = scenario.program {
            let action = match scenario.how {
                How::Repeat { action } => action,
                How::Live { .. } => XDP_TX,
            };
            measure::repeat(cpu, &balancer, scenario.program, &scenario.frame, action, 1, scenario.name)
                .with_context(|| format!("{}: first packet", scenario.name))?;
        }
    }
    for key in [setup::flow_key(v4, IpAddr::V4(VIP4), 40000), setup::flow_key(v6, IpAddr::V6(VIP6), 40000)] {
        ensure!(balancer.dataplane.counters.flow(&key).is_some(), "the established flow {key:?} was not tracked on its first packet");
        balancer.established.insert(key);
    }
    balancer.clear_new_flows()?;

    let live_method = if lab.is_some() { Method::Live } else { Method::Loop };
    let mut series: Vec<Series> = Vec::new();
    let mut inserted = Vec::new();
    for round in 0..=ROUNDS {
        let scale = if round == 0 { 10 } else { 1 };
        for scenario in &scenarios {
            let what = scenario.name;
            let (method, packets, sample) = match scenario.how {
                How::Repeat { action } => {
                    let iterations = REPEAT_ITERATIONS / scale;
                    (Method::Repeat, iterations, measure::repeat(cpu, &balancer, scenario.program, &scenario.frame, action, iterations, what)?)
                }
                How::Live { variation, new_flows } => {
                    let (packets, sample) = match lab.as_mut() {
                        Some(lab) => {
                            let frames = if new_flows { NEW_FLOW_FRAMES } else { LIVE_FRAMES } / scale;
                            (frames, measure::live(cpu, lab, &balancer, scenario.program, &scenario.frame, variation, frames, what)?)
                        }
                        None => {
                            let calls = LOOP_CALLS / scale;
                            (calls, measure::looped(cpu, &balancer, scenario.program, &scenario.frame, variation, calls, what)?)
                        }
                    };
                    if new_flows {
                        check_new_flows(&mut balancer, packets, round, what, &mut inserted)?;
                    }
                    (live_method, packets, sample)
                }
            };
            if round == 0 {
                continue;
            }
            match series.iter_mut().find(|series| series.name == scenario.name && series.method == method) {
                Some(series) => series.samples.push(sample),
                None => series.push(Series { name: scenario.name, method, packets, samples: vec![sample] }),
            }
        }
    }

    let rows = rows(&scenarios, &series, live_method)?;
    let notes = notes(live_method, live_error.as_ref(), cpu, &inserted);
    Ok((rows, notes))
}

/// What the new-flow runs of one scenario inserted, over the measured rounds.
struct Inserted {
    name: &'static str,
    packets: u32,
    fewest: usize,
    most: usize,
    backends: (usize, usize),
}

/// Clears the flows a new-flow run inserted and requires that (nearly) every packet inserted
/// one: the first use of each page of the kernel's pool carries the frame as given, so those
/// few frames (at most a batch) share one flow; every later frame has a number of its own.
fn check_new_flows(balancer: &mut LoadBalancer, packets: u32, round: usize, what: &'static str, totals: &mut Vec<Inserted>) -> Result<()> {
    let (inserted, backends) = balancer.clear_new_flows()?;
    ensure!(
        inserted + measure::LIVE_BATCH as usize >= packets as usize,
        "{what}: only {inserted} of {packets} frames inserted a new flow"
    );
    if round == 0 {
        return Ok(());
    }
    match totals.iter_mut().find(|total| total.name == what) {
        Some(total) => {
            total.fewest = total.fewest.min(inserted);
            total.most = total.most.max(inserted);
            total.backends = (total.backends.0.min(backends), total.backends.1.max(backends));
        }
        None => totals.push(Inserted { name: what, packets, fewest: inserted, most: inserted, backends: (backends, backends) }),
    }
    Ok(())
}

fn row(scenario: &'static str, method: &'static str, packets: u32, mut kernel: Vec<f64>, mut wall: Vec<f64>) -> Row {
    let min_ns = kernel.iter().copied().fold(f64::INFINITY, f64::min);
    let max_ns = kernel.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Row {
        scenario,
        method,
        ns_per_packet: median(&mut kernel),
        wall_ns_per_packet: median(&mut wall),
        min_ns,
        max_ns,
        rounds: kernel.len(),
        packets,
        target: None,
        verdict: None,
    }
}

/// The rows in the scenario order: each series as measured, and the same minus the
/// floor measured the same way in the same round.
fn rows(scenarios: &[Scenario<'_>], series: &[Series], live_method: Method) -> Result<Vec<Row>> {
    let find = |name: &str, method: Method| series.iter().find(|series| series.name == name && series.method == method);
    let floor_live = find("floor", live_method).context("the live floor was not measured")?;
    let floor_live_mpps = {
        let mut kernel: Vec<f64> = floor_live.samples.iter().map(|sample| sample.kernel_ns).collect();
        1000.0 / median(&mut kernel)
    };
    let mut rows = Vec::new();
    let mut seen = Vec::new();
    for scenario in scenarios {
        if seen.contains(&scenario.name) {
            continue;
        }
        seen.push(scenario.name);
        for series in series.iter().filter(|series| series.name == scenario.name) {
            let kernel = series.samples.iter().map(|sample| sample.kernel_ns).collect();
            let wall = series.samples.iter().map(|sample| sample.wall_ns).collect();
            let mut raw_row = row(series.name, series.method.name(), series.packets, kernel, wall);
            if series.name.ends_with("_non_vip") {
                raw_row.target = Some(format!("<= {NON_VIP_MAX_NS} ns"));
                raw_row.verdict = Some(raw_row.ns_per_packet <= NON_VIP_MAX_NS);
            }
            if series.name.ends_with("_established") {
                let needed = ESTABLISHED_SHARE_OF_FLOOR * floor_live_mpps;
                raw_row.target = Some(format!(">= {ESTABLISHED_SHARE_OF_FLOOR} x floor = {needed:.2} Mpps"));
                raw_row.verdict = Some(raw_row.mpps() >= needed);
            }
            rows.push(raw_row);
            if series.name == "floor" {
                continue;
            }
            // Per round: the scenario minus the floor measured moments before it.
            let floor = find("floor", series.method).context("no floor for this method")?;
            let kernel = series.samples.iter().zip(&floor.samples).map(|(own, floor)| own.kernel_ns - floor.kernel_ns).collect();
            let wall = series.samples.iter().zip(&floor.samples).map(|(own, floor)| own.wall_ns - floor.wall_ns).collect();
            let mut net_row = row(series.name, series.method.minus_floor_name(), series.packets, kernel, wall);
            if series.name.ends_with("_new_flow") {
                net_row.target = Some(format!("<= {NEW_FLOW_MAX_NS} ns"));
                net_row.verdict = Some(net_row.ns_per_packet <= NEW_FLOW_MAX_NS);
            }
            rows.push(net_row);
        }
    }
    Ok(rows)
}

fn notes(live_method: Method, live_error: Option<&anyhow::Error>, cpu: usize, new_flows: &[Inserted]) -> Vec<String> {
    let mut notes = vec![
        format!("Setup: 2 TCP VIPs (IPv4, IPv6), {} backends each, equal weights, Maglev tables of 65537 slots built by failover_ctl::maglev::build; 1 Mi-entry LRU flow table; flow-insert limiter on at 1 insert/ns; runs pinned to CPU {cpu}; {ROUNDS} measured rounds after a warm-up, scenarios interleaved; ns/packet is the median over rounds of the kernel-reported duration (integer ns), wall ns/pkt the median of wall-clock time / packets.", setup::BACKENDS_PER_VIP),
        "test_run/repeat: one BPF_PROG_TEST_RUN with repeat = N; the kernel reruns the program on one copy of the packet, so it is used only where the packet is left unchanged (floor, non-VIP pass). Every run checked: return value, and the reason counter grew by exactly N with no other counter moving. test_run/repeat-minus-floor subtracts the floor's number of the same round (the test loop's own cost per iteration).".to_string(),
    ];
    match live_method {
        Method::Live => notes.push(format!(
            "live_frames: one BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, repeat = N frames, batch {} (ctx_in = xdp_md with ingress_ifindex of lb0), issued from a thread inside the benchmark's namespace; XDP_TX really transmits into the veth lb0 -> peer0. The kernel's duration is its timed total divided by the frames, and that total includes the transmit into the veth and the peer's NAPI receive, which run in the softirq at the end of each batch: it is the whole pipeline's cost per frame. live_frames-minus-floor subtracts the floor's live number of the same round (same peer, same pipeline) and so isolates the program.",
            measure::LIVE_BATCH
        )),
        _ => notes.push("test_run/loop: N calls with repeat = 1, each on a fresh copy of the frame; ns/packet is the mean of the kernel's per-call durations, wall ns/pkt the loop's wall clock per call (mostly the system call). test_run/loop-minus-floor subtracts the floor timed the same way in the same round.".to_string()),
    }
    if let Some(error) = live_error {
        notes.push(format!("LIVE FRAMES UNAVAILABLE, so the rewriting scenarios fell back to test_run/loop: {error:#}"));
    }
    if live_method == Method::Live {
        notes.push("Peer program (assembled by the benchmark, attached natively to peer0): counts the frame, writes the original frame's first 56-64 bytes back at the original position, and drops it. It is not a decap: the kernel does NOT copy data_in into a recycled page again (Documentation/bpf/bpf_prog_run.rst: only the data pointers are reset), so without the restore a rewriting program sees its own output from the second use of each page on (tried: 99,936 of 100,000 encapsulating frames became pass_unparsed). Every live run is checked: the peer counted exactly N frames, and the load balancer's reason counter (tx_forward / tx_echo_reply) grew by exactly N with no other counter moving.".to_string());
    }
    notes.push(format!(
        "New flows: flow tracking and the insert limiter on, as deployed. {} so every frame misses the flow table, probes the Maglev table, passes the limiter and inserts; the flows are deleted after each run, so the table holds at most {} entries (never full: LRU eviction is not measured).{}",
        if live_method == Method::Live {
            "The peer writes a fresh 32-bit number into the client source address (IPv4) or its last word (IPv6) while restoring,"
        } else {
            "Each call carries its own number in the client source address (IPv4) or its last word (IPv6),"
        },
        if live_method == Method::Live { NEW_FLOW_FRAMES } else { LOOP_CALLS },
        if live_method == Method::Live {
            " The first use of each page of the kernel's pool carries data_in unchanged, so up to a batch of frames per run share one flow:"
        } else {
            ""
        },
    ));
    for total in new_flows {
        let range = |(low, high): (usize, usize)| if low == high { low.to_string() } else { format!("{low}..{high}") };
        notes.push(format!(
            "  {}: {} of {} frames per round inserted a new flow ({:.3}% or more), spread over {} backends",
            total.name,
            range((total.fewest, total.most)),
            total.packets,
            100.0 * total.fewest as f64 / f64::from(total.packets),
            range(total.backends),
        ));
    }
    notes.push(format!(
        "Established: the flow is tracked on its first packet (an ordinary test run), then every frame finds it. Non-VIP: the destination misses the address filter (checked to use another filter slot than the VIP). Targets from the issue: established Mpps >= 0.7 x floor Mpps (both {live}, same run); new flow <= 250 ns ({net}); non-VIP pass <= 45 ns (judged on test_run/repeat as measured, floor included; the minus-floor row is for information).",
        live = live_method.name(),
        net = live_method.minus_floor_name(),
    ));
    notes
}
