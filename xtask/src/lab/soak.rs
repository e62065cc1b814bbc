//! `cargo xtask lab --soak DURATION`: the same lab and traffic for DURATION with faults chosen
//! at random from a seeded generator (backend kills, drains, reloads, kill -9 of a daemon), each
//! one of `faults`' functions, the lab settled and a random pause between them. At the end, a
//! table: faults by kind, requests, established connections broken and why, each daemon's RSS
//! and open descriptors (sampled at the start, every minute and at the end; a restarted daemon
//! starts a new series) and the size of its events log; the run fails when a connection broke
//! outside the killed backends or a resource grew beyond its bound (see `failed_checks`).

use std::{
    collections::BTreeMap,
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

mod resources;

use resources::Resources;

use super::{
    config,
    control::{check_interrupt, now_millis, say, sleep, Daemon, Programs},
    faults::{self, Reload, Stage, PREFERRED},
    summary::{self, Row},
    topology::{backend_name, BACKENDS, LBS, SEGMENT_MAC},
    traffic::{Break, Snapshot},
    wire,
};

/// Each fault's watch window (the lab's `--quick` phase).
pub const PHASE: Duration = Duration::from_secs(2);
/// Samples of RSS, descriptors and the events log are this far apart.
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// A connection established in a table-change window that breaks this close to a change of
/// master on the wire broke for want of the old master's flow entry (see `classify`).
const TAKEOVER_BEFORE_MS: u64 = 500;
const TAKEOVER_AFTER_MS: u64 = 2500;

/// Parses `--soak`'s DURATION (`90s`, `3m`, `1h30m`), between 30 s and a day.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| {
        format!("{text:?} is not a duration ({error}); write it like 90s, 3m, 30m or 1h30m")
    })?;
    if duration < Duration::from_secs(30) {
        return Err(format!(
            "{text:?} is too short for a soak: at least 30s (a fault and its settling take ~10 s)"
        ));
    }
    if duration > Duration::from_secs(24 * 3600) {
        return Err(format!("{text:?} is longer than a day"));
    }
    Ok(duration)
}

/// splitmix64: small, seedable and good enough to pick faults; the seed replays a run.
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed from the clock and the process id, for runs without `--seed`.
    pub fn fresh_seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    /// A duration in `[low, high]`, to the millisecond.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(self.below(span + 1))
    }
}

/// A span in which the VIP's table lacked `backend` (killed, or drained), ms since the epoch
/// from the fault until its reversal's window ended.
#[derive(Debug, Clone, Copy)]
struct Window {
    backend: usize,
    killed: bool,
    from_ms: u64,
    to_ms: u64,
}

impl Window {
    /// The window of a fault on `backend` that began at `from_ms` and ends now.
    fn until_now(backend: usize, killed: bool, from_ms: u64) -> Self {
        Self { backend, killed, from_ms, to_ms: now_millis() }
    }
}

/// Broken connections by cause.
#[derive(Debug, Default, Clone)]
pub struct Breaks {
    /// On a backend while it was killed.
    pub killed: u64,
    /// Established while a backend was out of the table, broken at a change of master: the
    /// flow was on its fallback backend, which flow sync should have told the new master (must
    /// not happen; counted apart because it points at flow sync).
    pub stale: u64,
    /// Everything else: what must not happen either.
    pub healthy: Vec<Break>,
}

/// What a soak measured.
pub struct Report {
    pub seed: u64,
    pub requested: Duration,
    pub elapsed: Duration,
    pub faults: BTreeMap<String, u64>,
    pub rows: Vec<Row>,
    pub traffic: Snapshot,
    pub breaks: Breaks,
    pub resources: Resources,
}

/// Runs random faults on `stage` for `duration`, then measures and classifies.
pub fn run(stage: &mut Stage, duration: Duration, seed: u64) -> Result<Report> {
    let programs = Programs::find()?;
    let mut random = Random::new(seed);
    let started = Instant::now();
    let start_us = wire::now_us();
    let before = stage.stats.snapshot();
    let mut report = Report {
        seed,
        requested: duration,
        elapsed: Duration::ZERO,
        faults: BTreeMap::new(),
        rows: Vec::new(),
        traffic: Snapshot::default(),
        breaks: Breaks::default(),
        resources: Resources::default(),
    };
    let mut windows = Vec::new();
    let mut reloads = 0u64;
    say(format!(
        "==> soak for {} with random faults, seed {seed}",
        humantime::format_duration(duration)
    ));
    report.resources.sample(stage.daemons, started, false)?;
    let mut next_sample = started + SAMPLE_EVERY;
    while started.elapsed() < duration {
        check_interrupt()?;
        let from_ms = now_millis();
        // Kill -9 is drawn one time in ten, the others three in ten each: a daemon killed more
        // often would live too short a time for its RSS series to show a trend.
        let (kind, rows) = match random.below(10) {
            0..=2 => {
                let victim = random.below(BACKENDS as u64) as usize;
                let mut rows = vec![faults::kill_backend(stage, victim)?];
                sleep(random.between(Duration::ZERO, Duration::from_secs(3)))?;
                rows.push(faults::restart_backend(stage, &programs, victim)?);
                windows.push(Window::until_now(victim, true, from_ms));
                ("kill a backend, restart it".to_owned(), rows)
            }
            3..=5 => {
                let drained = random.below(BACKENDS as u64) as usize;
                let mut rows = vec![faults::set_drained(stage, drained, true)?];
                sleep(random.between(Duration::ZERO, Duration::from_secs(3)))?;
                rows.push(faults::set_drained(stage, drained, false)?);
                windows.push(Window::until_now(drained, false, from_ms));
                ("drain a backend, undrain it".to_owned(), rows)
            }
            6..=8 => {
                let lb = random.below(LBS as u64) as usize;
                // Half the reloads read the same text, half a comment more: neither may change
                // what the daemon serves.
                let changed = random.below(2) == 1;
                reloads += 1;
                rewrite_config(&stage.daemons[lb], lb, changed.then_some(reloads))?;
                let how = if random.below(2) == 0 {
                    Reload::Hangup
                } else {
                    Reload::Command
                };
                let row = faults::reload(stage, lb, how)?;
                let kind = match how {
                    Reload::Hangup => "reload (SIGHUP)",
                    Reload::Command => "reload (failover-ctl reload)",
                };
                (kind.to_owned(), vec![row])
            }
            _ => {
                let lb = random.below(LBS as u64) as usize;
                let role = if faults::master(stage.observer).ok() == Some(lb) {
                    "master"
                } else {
                    "backup"
                };
                let row = faults::kill_daemon(stage, lb)?;
                // The restarted daemon's first sample, which its series is judged from (the
                // other daemon keeps to its minutes).
                report.resources.sample(stage.daemons, started, true)?;
                (format!("kill -9 a daemon ({role}), restart it"), vec![row])
            }
        };
        *report.faults.entry(kind).or_default() += 1;
        report.rows.extend(rows);
        settle(stage)?;
        let pause_end =
            Instant::now() + random.between(Duration::from_secs(1), Duration::from_secs(5));
        while Instant::now() < pause_end {
            if Instant::now() >= next_sample {
                report.resources.sample(stage.daemons, started, false)?;
                next_sample += SAMPLE_EVERY;
            }
            sleep(Duration::from_millis(100))?;
        }
        if Instant::now() >= next_sample {
            report.resources.sample(stage.daemons, started, false)?;
            next_sample += SAMPLE_EVERY;
        }
    }
    report.resources.sample(stage.daemons, started, false)?;
    report.elapsed = started.elapsed();
    report.traffic = stage.stats.snapshot().since(&before);
    let (takeovers, _) = wire::replay(&stage.observer.adverts()?, config::VRID, start_us);
    let takeovers_ms: Vec<u64> = takeovers
        .iter()
        .map(|takeover| takeover.first_us / 1000)
        .collect();
    report.breaks = classify(&stage.stats.breaks(), &windows, &takeovers_ms);
    Ok(report)
}

/// The lab settled: the preferred load balancer master, every backend up and serving on both,
/// and the traffic quiet.
fn settle(stage: &mut Stage) -> Result<()> {
    faults::wait_master(stage.observer, stage.daemons, PREFERRED)?;
    for daemon in stage.daemons.iter_mut() {
        super::wait_ready(daemon, |backends| {
            (0..BACKENDS).all(|index| {
                super::control::find(backends, index)
                    .is_some_and(super::control::BackendState::serving_up)
            })
        })
        .with_context(|| format!("waiting for {} to settle", daemon.name))?;
    }
    faults::quiet(stage.stats)
}

/// Writes load balancer `lb`'s configuration again, with a comment naming reload `number` when
/// given (a trivial change).
fn rewrite_config(daemon: &Daemon, lb: usize, number: Option<u64>) -> Result<()> {
    let mut text = config::config_text(&daemon.instance, lb, SEGMENT_MAC);
    if let Some(number) = number {
        text.push_str(&format!("# soak reload {number}\n"));
    }
    fs::write(&daemon.config, text).with_context(|| format!("writing {}", daemon.config.display()))
}

/// Sorts broken connections: on a backend while it was killed; established while a backend was
/// out of the table and broken at a change of master (ms on the wire in `takeovers_ms`); else
/// healthy.
fn classify(breaks: &[Break], windows: &[Window], takeovers_ms: &[u64]) -> Breaks {
    let mut sorted = Breaks::default();
    for record in breaks {
        let killed = windows.iter().any(|window| {
            window.killed
                && window.backend == record.backend
                && (window.from_ms..=window.to_ms).contains(&record.broken_ms)
        });
        let opened_in_change = windows
            .iter()
            .any(|window| (window.from_ms..=window.to_ms).contains(&record.established_ms));
        let at_takeover = takeovers_ms.iter().any(|&at| {
            (at.saturating_sub(TAKEOVER_BEFORE_MS)..=at + TAKEOVER_AFTER_MS)
                .contains(&record.broken_ms)
        });
        if killed {
            sorted.killed += 1;
        } else if opened_in_change && at_takeover {
            sorted.stale += 1;
        } else {
            sorted.healthy.push(*record);
        }
    }
    sorted
}

/// The checks that failed, one sentence each; empty when the soak held.
pub fn failed_checks(report: &Report) -> Vec<String> {
    let mut failures: Vec<String> = summary::failed_checks(&report.rows);
    if !report.breaks.healthy.is_empty() {
        failures.push(format!(
            "{} established connections broken outside the killed backends: {}",
            report.breaks.healthy.len(),
            report
                .breaks
                .healthy
                .iter()
                .map(|record| format!(
                    "{} (client port {}, up {:.1} s, broke at {} ms since the epoch)",
                    backend_name(record.backend),
                    record.port.map_or("?".into(), |port| port.to_string()),
                    record.broken_ms.saturating_sub(record.established_ms) as f64 / 1000.0,
                    record.broken_ms
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if report.breaks.stale > 0 {
        failures.push(format!(
            "{} connections opened while a backend was out broke at a change of master: flow sync did not keep them on their backends",
            report.breaks.stale
        ));
    }
    failures.extend(report.resources.failed_checks());
    failures
}

/// The soak's table: every fault's row, then the totals.
pub fn table(report: &Report) -> Vec<String> {
    let mut lines = summary::table(&report.rows);
    lines.push(String::new());
    lines.push(format!(
        "soak: {} requested, {:.0} s run, seed {} (replay: cargo xtask lab --soak {} --seed {})",
        humantime::format_duration(report.requested),
        report.elapsed.as_secs_f64(),
        report.seed,
        humantime::format_duration(report.requested),
        report.seed
    ));
    lines.push(format!("{:<36} {:>6}", "faults injected", "count"));
    for (kind, count) in &report.faults {
        lines.push(format!("{kind:<36} {count:>6}"));
    }
    let traffic = &report.traffic;
    lines.push(format!(
        "requests: {} ok, {} failed (short); {} ok on keep-alive connections, {} keep-alive connects failed",
        traffic.ok(),
        traffic.failed,
        traffic.long_answered,
        traffic.long_connect_failed
    ));
    lines.push(format!(
        "connections broken: {} = {} on killed backends + {} opened while a backend was out, at a change of master (must be 0) + {} others (must be 0)",
        traffic.broken,
        report.breaks.killed,
        report.breaks.stale,
        report.breaks.healthy.len()
    ));
    lines.extend(report.resources.lines());
    lines.push("checks: 0 connections broken outside the killed backends, the bounds above, the events logs' bounds, and each fault row's promises (as in the lab's table).".into());
    lines
}

/// The soak as one JSON object.
pub fn json(report: &Report, failures: &[String]) -> String {
    let (series, events) = report.resources.json();
    serde_json::json!({
        "seed": report.seed,
        "duration_s": report.requested.as_secs(),
        "elapsed_s": report.elapsed.as_secs(),
        "faults": report.faults,
        "ok": report.traffic.ok(),
        "failed": report.traffic.failed,
        "keep_alive_ok": report.traffic.long_answered,
        "broken": {
            "total": report.traffic.broken,
            "killed_backends": report.breaks.killed,
            "stale_flows": report.breaks.stale,
            "healthy": report.breaks.healthy.len(),
        },
        "daemons": series,
        "events_log": events,
        "checks_failed": failures,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_or_say_why_not() {
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("3 parsecs")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("5s").unwrap_err().contains("too short"));
        assert!(parse_duration("2days")
            .unwrap_err()
            .contains("longer than a day"));
    }

    #[test]
    fn a_seed_replays_the_same_faults() {
        let picks = |seed| {
            let mut random = Random::new(seed);
            (0..20).map(|_| random.below(4)).collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7));
        assert_ne!(picks(7), picks(8));
        let mut random = Random::new(1);
        for _ in 0..100 {
            let pause = random.between(Duration::from_secs(1), Duration::from_secs(5));
            assert!((Duration::from_secs(1)..=Duration::from_secs(5)).contains(&pause));
        }
    }

    #[test]
    fn breaks_are_sorted_by_cause() {
        let windows = [Window {
            backend: 1,
            killed: true,
            from_ms: 1000,
            to_ms: 5000,
        }];
        let takeovers = [10_000];
        let record = |backend, established_ms, broken_ms| Break {
            backend,
            established_ms,
            broken_ms,
            port: None,
        };
        let sorted = classify(
            &[
                // On the killed backend during its kill.
                record(1, 0, 1100),
                // Opened on a fallback during the kill, broken at the takeover.
                record(0, 2000, 10_300),
                // Opened before the kill, broken at the takeover: healthy.
                record(0, 500, 10_300),
                // Opened during the kill, broken long after any takeover: healthy.
                record(2, 2000, 20_000),
            ],
            &windows,
            &takeovers,
        );
        assert_eq!((sorted.killed, sorted.stale), (1, 1));
        assert_eq!(
            sorted.healthy,
            [record(0, 500, 10_300), record(2, 2000, 20_000)]
        );
    }

    #[test]
    fn a_break_outside_the_killed_backends_fails_the_soak() {
        let mut report = Report {
            seed: 1,
            requested: Duration::from_secs(180),
            elapsed: Duration::from_secs(181),
            faults: BTreeMap::new(),
            rows: Vec::new(),
            traffic: Snapshot::default(),
            breaks: Breaks::default(),
            resources: Resources::default(),
        };
        assert_eq!(failed_checks(&report), Vec::<String>::new());
        report.breaks.healthy.push(Break {
            backend: 0,
            established_ms: 1,
            broken_ms: 2,
            port: None,
        });
        assert!(failed_checks(&report)[0].contains("outside the killed backends"));
        report.breaks.healthy.clear();
        report.breaks.stale = 2;
        assert!(failed_checks(&report)[0].starts_with("2 connections opened while a backend was out broke"));
    }
}
