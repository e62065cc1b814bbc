//! The data-plane fuzzer behind `cargo xtask fuzz`: frames from a seeded generator, some of
//! them mutated, run one at a time through the real `failover` program (`BPF_PROG_TEST_RUN`,
//! repeat 1) over map state written by the real map writer, every output checked by the oracle.
//! The same seed gives the same frames, so a violation is reproduced by its seed and index.
//!
//! `scenario` writes the map state, `generate` and `mutate` make the frames, `oracle` judges
//! them (with `reading`, `replies` and `invariant`); this file drives the run and reports.

mod generate;
mod invariant;
mod mutate;
mod oracle;
mod reading;
mod replies;
mod scenario;

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use failover_common::stats::{self, REASON_NAMES};
use failover_ctl::loader::Dataplane;
use rand::{rngs::StdRng, SeedableRng};

pub use invariant::{Invariant, Violation};
pub use scenario::{load, Scenario};

use crate::{action_name, hex_diff};

/// The seed of the test in `cargo xtask test` (overridden by `FAILOVER_FUZZ_SEED`).
pub const DEFAULT_SEED: u64 = 0x5eed_f00d;

/// Verdict reasons (the counters below `EVENT_FLOW_NOT_TRACKED`): exactly one per run.
const VERDICTS: usize = stats::EVENT_FLOW_NOT_TRACKED as usize;
/// Action slots of the report: XDP_ABORTED..=XDP_REDIRECT, then anything else.
const ACTIONS: usize = 6;

pub struct Options {
    pub frames: u64,
    pub seed: u64,
    /// Violations reported in full (with both frames in hex); the rest are only counted.
    pub shown: usize,
}

/// A violation reported in full.
pub struct Shown {
    pub index: u64,
    pub label: String,
    pub invariant: Invariant,
    pub detail: String,
    pub action: u32,
    /// The reason counter the frame was counted under, from a second run of it.
    pub reason: Option<&'static str>,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
}

/// What a run did.
pub struct Report {
    pub seed: u64,
    pub frames: u64,
    /// Second runs of shown violations, to read their reason counter.
    pub reruns: u64,
    pub setup: Duration,
    /// The largest frame generated (the largest the program sees whole).
    pub frame_limit: usize,
    pub elapsed: Duration,
    /// Runs per action (`ACTIONS` slots).
    pub actions: [u64; ACTIONS],
    /// Verdict reason counters over the run, by name.
    pub reasons: Vec<(&'static str, u64)>,
    pub violations: BTreeMap<Invariant, u64>,
    pub shown: Vec<Shown>,
}

impl Report {
    pub fn violation_count(&self) -> u64 {
        self.violations.values().sum()
    }

    /// The packets counted under the reason called `name`.
    pub fn reason(&self, name: &str) -> u64 {
        self.reasons.iter().find(|(n, _)| *n == name).map_or(0, |(_, count)| *count)
    }

    pub fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Parses a seed written in decimal or as `0x` hex.
pub fn parse_seed(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    parsed.map_err(|error| format!("seed {text:?} is neither decimal nor 0x-hex: {error}"))
}

/// Loads the program, installs the scenario and runs `options.frames` frames (needs root).
pub fn run(options: &Options) -> Result<Report> {
    let setup = Instant::now();
    let (dataplane, scenario) = load()?;
    let setup = setup.elapsed();
    let report = run_on(&dataplane, &scenario, options)?;
    Ok(Report { setup, ..report })
}

/// Runs `options.frames` frames through `dataplane`, judged by what `scenario` says its maps
/// hold (a test changes the maps behind the oracle's back to see it object).
pub fn run_on(dataplane: &Dataplane, scenario: &Scenario, options: &Options) -> Result<Report> {
    let program = dataplane.program().context("the load-balancer program")?;
    let before = reason_counts(dataplane)?;
    let mut report = Report {
        seed: options.seed,
        frames: 0,
        reruns: 0,
        setup: Duration::ZERO,
        frame_limit: scenario.frame_limit,
        elapsed: Duration::ZERO,
        actions: [0; ACTIONS],
        reasons: Vec::new(),
        violations: BTreeMap::new(),
        shown: Vec::new(),
    };
    let mut oracle = oracle::Oracle::new(scenario);
    let mut rng = StdRng::seed_from_u64(options.seed);
    let started = Instant::now();
    'frames: while report.frames < options.frames {
        let generated = generate::frame(&mut rng, scenario);
        for case in mutate::cases(&mut rng, generated, scenario.frame_limit) {
            if report.frames == options.frames {
                break 'frames;
            }
            let index = report.frames;
            report.frames += 1;
            let (action, output, verdict) = match run_once(program, &case.frame) {
                Ok((action, output)) => {
                    report.actions[(action as usize).min(ACTIONS - 1)] += 1;
                    let verdict = oracle.check(&case.frame, action, &output);
                    (action, output, verdict)
                }
                Err(error) => (u32::MAX, Vec::new(), Err(Violation { invariant: Invariant::KernelAccepts, detail: error })),
            };
            let Err(violation) = verdict else { continue };
            *report.violations.entry(violation.invariant).or_default() += 1;
            if report.shown.len() < options.shown {
                let reason = if action == u32::MAX { None } else { reason_of(dataplane, program, &case.frame, &mut report)? };
                report.shown.push(Shown {
                    index,
                    label: case.label,
                    invariant: violation.invariant,
                    detail: violation.detail,
                    action,
                    reason,
                    input: case.frame,
                    output,
                });
            }
        }
    }
    report.elapsed = started.elapsed();
    let after = reason_counts(dataplane)?;
    let deltas: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    report.reasons = REASON_NAMES[..VERDICTS].iter().copied().zip(deltas.iter().copied()).collect();
    check_counters(&mut report, &deltas, options.shown);
    Ok(report)
}

/// One test run of `frame`: (action, output), or why the kernel refused it.
fn run_once(program: &Xdp, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
    let mut output = vec![0u8; frame.len() + 512];
    let result = program
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut output), ..Default::default() })
        .map_err(|error| format!("BPF_PROG_TEST_RUN refused a {}-byte frame: {error}", frame.len()))?;
    output.truncate(result.data_size_out as usize);
    Ok((result.return_value, output))
}

fn reason_counts(dataplane: &Dataplane) -> Result<Vec<u64>> {
    let counters = dataplane.counters.reasons().context("read the reason counters")?;
    Ok(counters.iter().map(|counter| counter.packets).collect())
}

/// Runs `frame` again between two reads of the counters to learn its reason; the second run
/// is counted like any other.
fn reason_of(dataplane: &Dataplane, program: &Xdp, frame: &[u8], report: &mut Report) -> Result<Option<&'static str>> {
    let before = reason_counts(dataplane)?;
    let again = run_once(program, frame);
    let after = reason_counts(dataplane)?;
    report.reruns += 1;
    if let Ok((action, _)) = again {
        report.actions[(action as usize).min(ACTIONS - 1)] += 1;
    }
    Ok((0..VERDICTS).find(|&reason| after[reason] > before[reason]).map(|reason| REASON_NAMES[reason]))
}

/// Every run counts exactly one verdict reason, and the reasons of each action add up to the
/// runs that ended in it.
fn check_counters(report: &mut Report, deltas: &[u64], shown: usize) {
    let runs = report.frames + report.reruns;
    let refused = report.violations.get(&Invariant::KernelAccepts).copied().unwrap_or(0);
    let by_prefix = |prefix: &str| -> u64 {
        REASON_NAMES[..VERDICTS].iter().zip(deltas).filter(|(name, _)| name.starts_with(prefix)).map(|(_, n)| n).sum()
    };
    let checks = [
        ("all verdicts", deltas[..VERDICTS].iter().sum::<u64>(), runs - refused),
        ("pass_*", by_prefix("pass_"), report.actions[2]),
        ("drop_*", by_prefix("drop_"), report.actions[1]),
        ("tx_*", by_prefix("tx_"), report.actions[3]),
    ];
    for (what, counted, expected) in checks {
        if counted != expected {
            *report.violations.entry(Invariant::CountersAddUp).or_default() += 1;
            if report.shown.len() < shown {
                report.shown.push(Shown {
                    index: report.frames,
                    label: "after the run".into(),
                    invariant: Invariant::CountersAddUp,
                    detail: format!("{what}: the counters say {counted}, the runs say {expected}"),
                    action: u32::MAX,
                    reason: None,
                    input: Vec::new(),
                    output: Vec::new(),
                });
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {:#x}; reproduce with: cargo xtask fuzz --seed {:#x} --frames {}", self.seed, self.seed, self.frames)?;
        writeln!(
            f,
            "frames run: {} of up to {} bytes in {:.2} s ({:.0} frames/s; set-up {:.2} s){}",
            self.frames,
            self.frame_limit,
            self.elapsed.as_secs_f64(),
            self.frames_per_second(),
            self.setup.as_secs_f64(),
            if self.reruns > 0 { format!(", plus {} re-runs of violating frames to read their reason", self.reruns) } else { String::new() },
        )?;
        let actions: Vec<String> = (0..ACTIONS)
            .filter(|&a| self.actions[a] > 0)
            .map(|a| format!("{} {}", if a < ACTIONS - 1 { action_name(a as u32) } else { "other" }, self.actions[a]))
            .collect();
        writeln!(f, "actions: {}", actions.join(", "))?;
        writeln!(f, "reasons:")?;
        for (name, count) in &self.reasons {
            writeln!(f, "  {name:<28} {count}")?;
        }
        let total = self.violation_count();
        writeln!(f, "violations: {total}")?;
        for (invariant, count) in &self.violations {
            writeln!(f, "  {:<22} {count:>8}  {}", invariant.to_string(), invariant.describe())?;
        }
        for shown in &self.shown {
            writeln!(f, "--- seed {:#x}, frame {} ({}): {}", self.seed, shown.index, shown.label, shown.invariant)?;
            writeln!(f, "    {}", shown.detail)?;
            if shown.action != u32::MAX {
                writeln!(f, "    {} counted as {}", action_name(shown.action), shown.reason.unwrap_or("(no reason counter moved)"))?;
            }
            if !shown.input.is_empty() {
                writeln!(f, "    input (left) | output (right):")?;
                write!(f, "{}", hex_diff(&shown.input, &shown.output))?;
            }
        }
        if total > self.shown.len() as u64 {
            writeln!(f, "({} more violations counted, not shown)", total - self.shown.len() as u64)?;
        }
        Ok(())
    }
}
