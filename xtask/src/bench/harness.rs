//! The benchmark run: builds the scenarios, times them round by round (each load-balancer scenario on this tree's program and, with `--against`, on REV's, back to back), checks every run, and prints the rows, the JIT counts and the notes.

use std::{net::IpAddr, os::fd::AsFd};

use anyhow::{ensure, Context as _, Result};
use failover_common::stats;
use failover_ctl::objects;

use super::{
    control, failover,
    jit::{self, Jited},
    lab::Lab,
    layout,
    measure::{self, Method, Program, Sample, Variation},
    notes::{self, Facts},
    raw::{self, Vary, XDP_PASS, XDP_TX},
    report::{self, JitRows, Row},
    revision::{self, Revision},
    rows::{self, Series},
    setup::{self, Kind, LoadBalancer, CLIENT4, CLIENT6, OTHER4, OTHER6, VIP4, VIP6},
    Group,
};

/// Measured rounds; the scenarios take turns within a round, so slow drift (another process,
/// frequency changes) spreads over all of them instead of landing on one. Round 0 is a warm-up
/// at a tenth of the counts and is not reported.
pub const ROUNDS: usize = 7;
/// Iterations of one `test_run/repeat` call (floor and non-VIP: 2 to 30 ns each).
const REPEAT_ITERATIONS: u32 = 5_000_000;
/// Frames of one live call (100 to 400 ns each), per CPU.
pub const LIVE_FRAMES: u32 = 1_000_000;
/// Frames of one live new-flow call, per CPU: every one inserts a flow, and the table is
/// cleared after each call, so two CPUs' worth stays far below the 1 Mi entries of the flow
/// table (no LRU eviction).
pub const NEW_FLOW_FRAMES: u32 = 250_000;
/// Calls of the `test_run/loop` fallback (a system call each, about 1 µs).
pub const LOOP_CALLS: u32 = 200_000;

/// What `cargo xtask bench` was asked for.
pub struct Options<'a> {
    pub json: bool,
    pub groups: &'a [Group],
    pub against: Option<&'a str>,
    /// Only the JIT counts, no timing.
    pub jited: bool,
    /// Prefixes of the scenarios to time (the floors always are); empty: all.
    pub scenarios: &'a [String],
}

#[derive(Clone, Copy)]
enum How {
    /// `test_run/repeat`: the program leaves the packet unchanged, so repetitions are valid.
    Repeat { action: u32 },
    /// Live frames (or the loop fallback) on one CPU: the program rewrites the packet.
    Live { variation: Variation, new_flows: bool },
    /// Live frames on two CPUs at once.
    Parallel { variation: Variation, new_flows: bool },
}

struct Scenario {
    name: &'static str,
    /// The reason every packet of a load-balancer scenario is counted under; `None` for the
    /// floor.
    reason: Option<u32>,
    frame: Vec<u8>,
    how: How,
}

/// A load balancer under test and the name its rows carry (`current` or `against`).
struct Subject {
    name: &'static str,
    balancer: LoadBalancer,
}

pub fn run(options: Options<'_>) -> Result<()> {
    let cpu = std::thread::available_parallelism().map_or(0, |count| count.get() - 1);
    let dataplane_wanted = options.groups.contains(&Group::Dataplane);
    ensure!(options.against.is_none() || options.jited || dataplane_wanted, "--against compares data planes: use it with --jited, --only dataplane or without --only");
    if options.jited || dataplane_wanted {
        // SAFETY: geteuid has no preconditions.
        ensure!(unsafe { libc::geteuid() } == 0, "the benchmark loads XDP programs and creates namespaces: run it as root");
    }
    let against = options.against.map(revision::prepare).transpose()?;
    let sizes_only = match &against {
        Some(revision) => layout::check(objects::FAILOVER, &revision.object, &revision.name)?,
        None => 0,
    };
    if options.jited {
        let subjects = subjects(against.as_ref(), [0x02, 0x1b, 0, 0, 0, 1], [0x02, 0x4e, 0, 0, 0, 0xfe])?;
        let mut counts = Vec::new();
        for subject in &subjects {
            let jited = jit::read(subject.balancer.program.as_fd()).with_context(|| format!("reading the JITed image of the {} program", subject.name))?;
            counts.push((subject.name, jited));
        }
        print_jit(options.json, &counts);
        return Ok(());
    }
    let Results { rows, counts, mut notes } = if dataplane_wanted { dataplane(cpu, against.as_ref(), sizes_only, options.scenarios)? } else { Results::default() };
    // After the data plane, whose lab is gone by then, so its numbers are taken as before.
    let mut control_rows = Vec::new();
    if options.groups.contains(&Group::Maglev) {
        let (rows, note) = control::maglev_build(cpu)?;
        control_rows.extend(rows);
        notes.push(note);
    }
    if options.groups.contains(&Group::Probes) {
        let (rows, note) = control::probe_cpu()?;
        control_rows.extend(rows);
        notes.push(note);
    }
    if options.groups.contains(&Group::Failover) {
        let (rows, note) = failover::verdict_to_publish()?;
        control_rows.extend(rows);
        notes.push(note);
    }
    if options.json {
        report::print_json(&rows);
        print_jit(true, &counts);
        report::print_control_json(&control_rows);
        for line in notes {
            eprintln!("{line}");
        }
    } else {
        if !rows.is_empty() {
            report::print_table(&rows);
            println!();
        }
        if !counts.is_empty() {
            print_jit(false, &counts);
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

fn print_jit(json: bool, counts: &[(&'static str, Jited)]) {
    let programs: Vec<JitRows<'_>> = counts
        .iter()
        .map(|(program, jited)| JitRows { program, functions: &jited.functions, total: jited.total(), verified_instructions: jited.verified_instructions })
        .collect();
    if json {
        report::print_jit_json(&programs);
    } else {
        report::print_jit_table(&programs);
    }
}

/// This tree's load balancer and, with `--against`, REV's, both configured alike.
fn subjects(against: Option<&Revision>, lb_mac: [u8; 6], peer_mac: [u8; 6]) -> Result<Vec<Subject>> {
    let mut subjects = vec![Subject { name: "current", balancer: LoadBalancer::current(lb_mac, peer_mac)? }];
    if let Some(revision) = against {
        let balancer = LoadBalancer::from_object(&revision.object, lb_mac, peer_mac).with_context(|| format!("loading the program of {}", revision.name))?;
        subjects.push(Subject { name: "against", balancer });
    }
    Ok(subjects)
}

/// The scenarios in the order; the two-CPU ones only when `two_cpus`.
fn scenarios(lb_mac: [u8; 6], two_cpus: bool) -> Result<Vec<Scenario>> {
    let frame = |source, destination, kind, port| setup::frame(lb_mac, source, destination, kind, port);
    let (v4, v6) = (IpAddr::V4(CLIENT4), IpAddr::V6(CLIENT6));
    let variation = |pushed, vary| Variation { pushed, vary };
    let live = |pushed, vary| How::Live { variation: variation(pushed, vary), new_flows: matches!(vary, Vary::Number { .. }) };
    let forward = Some(stats::TX_FORWARD);
    // New flows with live frames: data_in is one packet, so the variety has to come from the
    // peer, which writes a fresh source address into each frame as it restores it (see
    // `raw::load_restore`). Tracking stays on and the limiter is on, so the number covers the
    // flow-table miss, the Maglev probe, the limiter and the insert: the whole new-flow path,
    // not a shortcut such as VIP_NO_FLOW_TRACKING (no insert) or a refusing limiter (no insert
    // either). The rejected alternative, repeat = 1 calls, is what `test_run/loop` does.
    let new_flow4 = Vary::Number { at: setup::SOURCE_WORD_IPV4 };
    let mut scenarios = vec![
        Scenario { name: "floor", reason: None, frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpAck, 40000)?, how: How::Repeat { action: XDP_TX } },
        Scenario { name: "floor", reason: None, frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpAck, 40000)?, how: live(0, Vary::Nothing) },
        Scenario { name: "v4_new_flow", reason: forward, frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpSyn, 40001)?, how: live(setup::PUSHED_IPV4, new_flow4) },
        Scenario { name: "v4_established", reason: forward, frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpAck, 40000)?, how: live(setup::PUSHED_IPV4, Vary::Nothing) },
        Scenario { name: "v4_non_vip", reason: Some(stats::PASS_NOT_VIP), frame: frame(v4, IpAddr::V4(OTHER4), Kind::TcpAck, 40000)?, how: How::Repeat { action: XDP_PASS } },
        Scenario { name: "v6_new_flow", reason: forward, frame: frame(v6, IpAddr::V6(VIP6), Kind::TcpSyn, 40001)?, how: live(setup::PUSHED_IPV6, Vary::Number { at: setup::SOURCE_WORD_IPV6 }) },
        Scenario { name: "v6_established", reason: forward, frame: frame(v6, IpAddr::V6(VIP6), Kind::TcpAck, 40000)?, how: live(setup::PUSHED_IPV6, Vary::Nothing) },
        Scenario { name: "v6_non_vip", reason: Some(stats::PASS_NOT_VIP), frame: frame(v6, IpAddr::V6(OTHER6), Kind::TcpAck, 40000)?, how: How::Repeat { action: XDP_PASS } },
        Scenario { name: "icmp_echo", reason: Some(stats::TX_ECHO_REPLY), frame: frame(v4, IpAddr::V4(VIP4), Kind::EchoRequest, 0)?, how: live(0, Vary::Nothing) },
    ];
    if two_cpus {
        let per_cpu = Vary::PerCpu { at: setup::SOURCE_LAST_BYTE_IPV4, base: setup::PER_CPU_CLIENT_BASE };
        let parallel = |pushed, vary| How::Parallel { variation: variation(pushed, vary), new_flows: matches!(vary, Vary::Number { .. }) };
        scenarios.extend([
            Scenario { name: "floor_2cpu", reason: None, frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpAck, 40000)?, how: parallel(0, Vary::Nothing) },
            Scenario { name: "v4_new_flow_2cpu", reason: forward, frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpSyn, 40001)?, how: parallel(setup::PUSHED_IPV4, new_flow4) },
            Scenario { name: "v4_established_2cpu", reason: forward, frame: frame(v4, IpAddr::V4(VIP4), Kind::TcpAck, 40000)?, how: parallel(setup::PUSHED_IPV4, per_cpu) },
        ]);
    }
    Ok(scenarios)
}

/// One ordinary run of each one-CPU load-balancer scenario (checks the verdict and reason,
/// and tracks the established flows on their first packet), and the two-CPU scenario's
/// per-CPU flows, each tracked on its own CPU.
fn track(balancer: &mut LoadBalancer, scenarios: &[Scenario], cpu: usize, pair: Option<[usize; 2]>, lb_mac: [u8; 6]) -> Result<()> {
    for scenario in scenarios {
        let action = match scenario.how {
            How::Repeat { action } => action,
            How::Live { .. } => XDP_TX,
            How::Parallel { .. } => continue,
        };
        let Some(reason) = scenario.reason else { continue };
        measure::repeat(cpu, Program::LoadBalancer { balancer, reason }, &scenario.frame, action, 1, scenario.name)
            .with_context(|| format!("{}: first packet", scenario.name))?;
    }
    let (v4, v6) = (IpAddr::V4(CLIENT4), IpAddr::V6(CLIENT6));
    let mut keys = vec![setup::flow_key(v4, IpAddr::V4(VIP4), 40000), setup::flow_key(v6, IpAddr::V6(VIP6), 40000)];
    for cpu in pair.into_iter().flatten() {
        let client = IpAddr::V4(setup::per_cpu_client(cpu));
        let frame = setup::frame(lb_mac, client, IpAddr::V4(VIP4), Kind::TcpAck, 40000)?;
        measure::repeat(cpu, Program::LoadBalancer { balancer, reason: stats::TX_FORWARD }, &frame, XDP_TX, 1, "v4_established_2cpu")
            .with_context(|| format!("v4_established_2cpu: first packet on CPU {cpu}"))?;
        keys.push(setup::flow_key(client, IpAddr::V4(VIP4), 40000));
    }
    // Found by a scan, not by the flow hash: an `--against` program may hash differently.
    let tracked = balancer.counters.flows().context("listing the flow table")?;
    for key in keys {
        ensure!(tracked.iter().any(|(flow, _)| *flow == key), "the established flow {key:?} was not tracked on its first packet");
        balancer.established.insert(key);
    }
    balancer.clear_new_flows()?;
    Ok(())
}

/// One timed run's outcome.
struct Measured {
    method: Method,
    cpus: usize,
    packets: u32,
    sample: Sample,
    overlap: Option<f64>,
    new_flows: bool,
}

fn measure_one(scenario: &Scenario, program: Program<'_>, lab: Option<&mut Lab>, cpu: usize, pair: Option<[usize; 2]>, scale: u32) -> Result<Measured> {
    let what = scenario.name;
    let one = |method, packets, sample| Measured { method, cpus: 1, packets, sample, overlap: None, new_flows: false };
    Ok(match (scenario.how, lab) {
        (How::Repeat { action }, _) => {
            let iterations = REPEAT_ITERATIONS / scale;
            one(Method::Repeat, iterations, measure::repeat(cpu, program, &scenario.frame, action, iterations, what)?)
        }
        (How::Live { variation, new_flows }, Some(lab)) => {
            let frames = if new_flows { NEW_FLOW_FRAMES } else { LIVE_FRAMES } / scale;
            Measured { new_flows, ..one(Method::Live, frames, measure::live(cpu, lab, program, &scenario.frame, variation, frames, what)?) }
        }
        (How::Live { variation, new_flows }, None) => {
            let calls = LOOP_CALLS / scale;
            Measured { new_flows, ..one(Method::Loop, calls, measure::looped(cpu, program, &scenario.frame, variation, calls, what)?) }
        }
        (How::Parallel { variation, new_flows }, Some(lab)) => {
            let cpus = pair.context("a two-CPU scenario without two CPUs")?;
            let frames = if new_flows { NEW_FLOW_FRAMES } else { LIVE_FRAMES } / scale;
            let (sample, overlap) = measure::parallel(&cpus, lab, program, &scenario.frame, variation, frames, what)?;
            Measured { method: Method::Live, cpus: 2, packets: 2 * frames, sample, overlap: Some(overlap), new_flows }
        }
        (How::Parallel { .. }, None) => anyhow::bail!("{what}: two-CPU scenarios need live frames"),
    })
}

/// What the data-plane group prints.
#[derive(Default)]
struct Results {
    rows: Vec<Row>,
    /// Per program (`current`, `against`).
    counts: Vec<(&'static str, Jited)>,
    notes: Vec<String>,
}

/// The data-plane scenarios: rows, JIT counts and notes.
fn dataplane(cpu: usize, against: Option<&Revision>, sizes_only: usize, wanted: &[String]) -> Result<Results> {
    let floor = raw::load_floor()?;
    let (mut lab, live_error) = match Lab::new() {
        Ok(lab) => (Some(lab), None),
        Err(error) => (None, Some(error)),
    };
    let (lb_mac, peer_mac) = lab.as_ref().map_or(([0x02, 0x1b, 0, 0, 0, 1], [0x02, 0x4e, 0, 0, 0, 0xfe]), |lab| (lab.lb_mac, lab.peer_mac));
    let mut subjects = subjects(against, lb_mac, peer_mac)?;
    let cpus = std::thread::available_parallelism().map_or(1, |count| count.get());
    let pair: Result<[usize; 2], &'static str> = match (&lab, cpus) {
        (None, _) => Err("live frames are unavailable"),
        (_, 0..=1) => Err("this machine has one CPU"),
        _ => Ok([cpus - 2, cpus - 1]),
    };
    let mut scenarios = scenarios(lb_mac, pair.is_ok())?;
    for subject in &mut subjects {
        track(&mut subject.balancer, &scenarios, cpu, pair.ok(), lb_mac).with_context(|| format!("the {} program", subject.name))?;
    }
    // After tracking, which every scenario's first packet is part of.
    scenarios.retain(|scenario| scenario.reason.is_none() || wanted.is_empty() || wanted.iter().any(|name| scenario.name.starts_with(name.as_str())));
    ensure!(scenarios.iter().any(|scenario| scenario.reason.is_some()), "no data-plane scenario starts with {}", wanted.join(" or "));

    let live_method = if lab.is_some() { Method::Live } else { Method::Loop };
    let mut series: Vec<Series> = Vec::new();
    let mut inserted = Vec::new();
    let mut overlaps = Vec::new();
    for round in 0..=ROUNDS {
        let scale = if round == 0 { 10 } else { 1 };
        for scenario in &scenarios {
            // Both programs back to back, the first one alternating from round to round.
            let mut order: Vec<Option<usize>> = match scenario.reason {
                None => vec![None],
                Some(_) => (0..subjects.len()).map(Some).collect(),
            };
            if round % 2 == 0 {
                order.reverse();
            }
            for index in order {
                let program = match (index, scenario.reason) {
                    (Some(index), Some(reason)) => Program::LoadBalancer { balancer: &subjects[index].balancer, reason },
                    _ => Program::Floor(floor.as_fd()),
                };
                let measured = measure_one(scenario, program, lab.as_mut(), cpu, pair.ok(), scale)?;
                let name = index.map(|index| subjects[index].name);
                if let (true, Some(index)) = (measured.new_flows, index) {
                    let slack = measured.cpus * measure::LIVE_BATCH as usize;
                    check_new_flows(&mut subjects[index].balancer, measured.packets, slack, round, scenario.name, name, &mut inserted)?;
                }
                if round == 0 {
                    continue;
                }
                overlaps.extend(measured.overlap);
                match series.iter_mut().find(|series| series.name == scenario.name && series.method == measured.method && series.program == name) {
                    Some(series) => series.samples.push(measured.sample),
                    None => series.push(Series {
                        name: scenario.name,
                        method: measured.method,
                        program: name,
                        cpus: measured.cpus,
                        packets: measured.packets,
                        samples: vec![measured.sample],
                    }),
                }
            }
        }
    }

    let mut order: Vec<&'static str> = Vec::new();
    for scenario in &scenarios {
        if !order.contains(&scenario.name) {
            order.push(scenario.name);
        }
    }
    let rows = rows::rows(&order, &series, live_method)?;
    let mut notes = notes::notes(&Facts { live_method, live_error: live_error.as_ref(), cpu, pair, overlaps: &overlaps, inserted: &inserted, against, sizes_only });
    let mut counts = Vec::new();
    for subject in &subjects {
        match jit::read(subject.balancer.program.as_fd()) {
            Ok(jited) => counts.push((subject.name, jited)),
            Err(error) => notes.push(format!("JIT counts of the {} program unavailable: {error:#}", subject.name)),
        }
    }
    Ok(Results { rows, counts, notes })
}

/// What the new-flow runs of one scenario and program inserted, over the measured rounds.
pub struct Inserted {
    pub name: &'static str,
    pub program: Option<&'static str>,
    pub packets: u32,
    pub fewest: usize,
    pub most: usize,
    pub backends: (usize, usize),
}

/// Clears the flows a new-flow run inserted and requires that (nearly) every packet inserted
/// one: the first use of each page of the kernel's pool carries the frame as given, so those
/// few frames (at most a batch per CPU: `slack`) share one flow; every later frame has a
/// number of its own. The flow cache may also refuse a flow whose bucket is full, as
/// `check_reasons` tolerates: up to one in a thousand more.
fn check_new_flows(
    balancer: &mut LoadBalancer,
    packets: u32,
    slack: usize,
    round: usize,
    what: &'static str,
    program: Option<&'static str>,
    totals: &mut Vec<Inserted>,
) -> Result<()> {
    let (inserted, backends) = balancer.clear_new_flows()?;
    let refused = packets as usize / 1000;
    ensure!(inserted + slack + refused >= packets as usize, "{what}: only {inserted} of {packets} frames inserted a new flow");
    if round == 0 {
        return Ok(());
    }
    match totals.iter_mut().find(|total| total.name == what && total.program == program) {
        Some(total) => {
            total.fewest = total.fewest.min(inserted);
            total.most = total.most.max(inserted);
            total.backends = (total.backends.0.min(backends), total.backends.1.max(backends));
        }
        None => totals.push(Inserted { name: what, program, packets, fewest: inserted, most: inserted, backends: (backends, backends) }),
    }
    Ok(())
}
