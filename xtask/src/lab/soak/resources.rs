//! What a soak watches in the daemons over time: each process's RSS (`VmRSS` of
//! /proc/PID/status) and open descriptors (entries of /proc/PID/fd), one series per process (a
//! daemon restarted after kill -9 starts another), and the size of each daemon's on-disk event
//! log; and the bounds they are held to.

use std::{fs, time::Instant};

use anyhow::{Context as _, Result};

use crate::lab::control::Daemon;

/// A series fails when its last RSS exceeds its first by more than this...
const RSS_GROWTH_BOUND_KIB: u64 = 20 * 1024;
/// ...or when it rose at every sample over at least `RISE_SAMPLES` samples, by more than this
/// in all: a leak rises steadily, a daemon that warmed up levels off.
const RSS_RISE_BOUND_KIB: u64 = 4 * 1024;
const RISE_SAMPLES: usize = 5;
/// A series fails when its last descriptor count exceeds its first by more than this (probe
/// sockets and CLI connections in flight make it move by a few).
const FD_GROWTH_BOUND: u64 = 8;
/// The daemon compacts `events.jsonl` to its last 2000 events once it holds 4000 lines
/// (failover-ctl/src/daemon/events.rs, `KEEP`); lines are a few hundred bytes.
const EVENTS_LINES_BOUND: u64 = 4000;
const EVENTS_BYTES_BOUND: u64 = 4 * 1024 * 1024;

/// One sample of a daemon process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the soak began.
    pub at_s: u64,
    pub rss_kib: u64,
    /// `RssAnon`: the heap and stacks. Most of VmRSS is `RssFile`, the BPF maps the daemon
    /// maps into memory, whose pages count once touched.
    pub anon_kib: u64,
    pub fds: u64,
}

/// The samples of one daemon process (a restart starts another).
#[derive(Debug, Clone)]
pub struct Series {
    pub daemon: String,
    pub pid: u32,
    pub samples: Vec<Sample>,
}

/// The events log of one daemon (the file outlives restarts: one series per load balancer).
#[derive(Debug, Clone, Default)]
pub struct EventsLog {
    pub daemon: String,
    pub bytes: Vec<u64>,
    pub lines: Vec<u64>,
}

/// Every series of a soak.
#[derive(Debug, Default)]
pub struct Resources {
    pub series: Vec<Series>,
    pub events: Vec<EventsLog>,
}

impl Resources {
    /// Samples every running daemon (with `only_new`, only a process without a series yet).
    pub fn sample(&mut self, daemons: &[Daemon], started: Instant, only_new: bool) -> Result<()> {
        let at_s = started.elapsed().as_secs();
        for daemon in daemons {
            let Some(pid) = daemon.pid() else { continue };
            let known = self
                .series
                .iter()
                .position(|series| series.daemon == daemon.name && series.pid == pid);
            if only_new && known.is_some() {
                continue;
            }
            let status = fs::read_to_string(format!("/proc/{pid}/status"))
                .with_context(|| format!("reading /proc/{pid}/status ({})", daemon.name))?;
            let field = |name| {
                status_kib(&status, name)
                    .with_context(|| format!("no {name} in /proc/{pid}/status ({})", daemon.name))
            };
            let (rss_kib, anon_kib) = (field("VmRSS")?, field("RssAnon")?);
            let fds = fs::read_dir(format!("/proc/{pid}/fd"))
                .with_context(|| format!("listing /proc/{pid}/fd ({})", daemon.name))?
                .count() as u64;
            let entry = Sample {
                at_s,
                rss_kib,
                anon_kib,
                fds,
            };
            match known {
                Some(index) => self.series[index].samples.push(entry),
                None => self.series.push(Series {
                    daemon: daemon.name.clone(),
                    pid,
                    samples: vec![entry],
                }),
            }
            let text = fs::read(daemon.events_file()).unwrap_or_default();
            let lines = text.iter().filter(|&&byte| byte == b'\n').count() as u64;
            let index = match self.events.iter().position(|log| log.daemon == daemon.name) {
                Some(index) => index,
                None => {
                    self.events.push(EventsLog {
                        daemon: daemon.name.clone(),
                        ..EventsLog::default()
                    });
                    self.events.len() - 1
                }
            };
            self.events[index].bytes.push(text.len() as u64);
            self.events[index].lines.push(lines);
        }
        Ok(())
    }

    /// The bounds that did not hold, one sentence each.
    pub fn failed_checks(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for series in &self.series {
            let (Some(first), Some(last)) = (series.samples.first(), series.samples.last()) else {
                continue;
            };
            let name = format!("{} (pid {})", series.daemon, series.pid);
            if last.rss_kib > first.rss_kib + RSS_GROWTH_BOUND_KIB {
                failures.push(format!(
                    "{name}: RSS grew from {} to {} MiB, beyond {} MiB",
                    mib(first.rss_kib),
                    mib(last.rss_kib),
                    mib(RSS_GROWTH_BOUND_KIB)
                ));
            }
            let rising = series
                .samples
                .windows(2)
                .all(|pair| pair[1].rss_kib > pair[0].rss_kib);
            if series.samples.len() >= RISE_SAMPLES
                && rising
                && last.rss_kib > first.rss_kib + RSS_RISE_BOUND_KIB
            {
                failures.push(format!(
                    "{name}: RSS rose at each of {} samples, {} to {} MiB",
                    series.samples.len(),
                    mib(first.rss_kib),
                    mib(last.rss_kib)
                ));
            }
            if last.fds > first.fds + FD_GROWTH_BOUND {
                failures.push(format!(
                    "{name}: open descriptors grew from {} to {}, beyond +{FD_GROWTH_BOUND}",
                    first.fds, last.fds
                ));
            }
        }
        for log in &self.events {
            let bytes = log.bytes.iter().copied().max().unwrap_or(0);
            let lines = log.lines.iter().copied().max().unwrap_or(0);
            if bytes > EVENTS_BYTES_BOUND || lines > EVENTS_LINES_BOUND {
                failures.push(format!(
                    "{}: events.jsonl reached {bytes} bytes, {lines} lines, beyond {EVENTS_BYTES_BOUND} bytes or {EVENTS_LINES_BOUND} lines",
                    log.daemon
                ));
            }
        }
        failures
    }

    /// The table's lines: one per series, one per events log, and the bounds.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{:<6} {:>8} {:>8}  RSS MiB (anon) at start or restart, each minute, end | fds",
            "daemon", "pid", "samples"
        )];
        for series in &self.series {
            let rss: Vec<String> = series
                .samples
                .iter()
                .map(|sample| format!("{} ({})", mib(sample.rss_kib), mib(sample.anon_kib)))
                .collect();
            let fds: Vec<String> = series
                .samples
                .iter()
                .map(|sample| sample.fds.to_string())
                .collect();
            lines.push(format!(
                "{:<6} {:>8} {:>8}  {} | {}",
                series.daemon,
                series.pid,
                series.samples.len(),
                rss.join(" "),
                fds.join(" ")
            ));
        }
        for log in &self.events {
            lines.push(format!(
                "events.jsonl of {}: {} bytes, {} lines at the end (bounds {EVENTS_BYTES_BOUND} bytes, {EVENTS_LINES_BOUND} lines)",
                log.daemon,
                log.bytes.last().copied().unwrap_or(0),
                log.lines.last().copied().unwrap_or(0)
            ));
        }
        lines.push(format!(
            "bounds per daemon process: RSS last <= first + {} MiB and not rising at each of >= {RISE_SAMPLES} samples by > {} MiB in all; descriptors last <= first + {FD_GROWTH_BOUND}",
            mib(RSS_GROWTH_BOUND_KIB),
            mib(RSS_RISE_BOUND_KIB)
        ));
        lines
    }

    /// The series and the events logs, for the soak's JSON object.
    pub fn json(&self) -> (serde_json::Value, serde_json::Value) {
        let series: Vec<serde_json::Value> = self
            .series
            .iter()
            .map(|series| {
                serde_json::json!({
                    "daemon": series.daemon,
                    "pid": series.pid,
                    "at_s": series.samples.iter().map(|sample| sample.at_s).collect::<Vec<_>>(),
                    "rss_kib": series.samples.iter().map(|sample| sample.rss_kib).collect::<Vec<_>>(),
                    "anon_kib": series.samples.iter().map(|sample| sample.anon_kib).collect::<Vec<_>>(),
                    "fds": series.samples.iter().map(|sample| sample.fds).collect::<Vec<_>>(),
                })
            })
            .collect();
        let events: Vec<serde_json::Value> = self
            .events
            .iter()
            .map(|log| serde_json::json!({"daemon": log.daemon, "bytes": log.bytes, "lines": log.lines}))
            .collect();
        (series.into(), events.into())
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// A `NAME:` line of /proc/PID/status (`VmRSS`, `RssAnon`), in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tfailover-ctl\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 3164 kB\nThreads:\t4\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(12345));
        assert_eq!(status_kib(status, "RssAnon"), Some(3164));
        assert_eq!(status_kib("Name:\tx\n", "VmRSS"), None);
    }

    fn resources(rss: &[u64], fds: &[u64]) -> Resources {
        Resources {
            series: vec![Series {
                daemon: "lb1".into(),
                pid: 42,
                samples: rss
                    .iter()
                    .zip(fds)
                    .enumerate()
                    .map(|(index, (&rss_kib, &fds))| Sample {
                        at_s: index as u64 * 60,
                        rss_kib,
                        anon_kib: rss_kib / 10,
                        fds,
                    })
                    .collect(),
            }],
            events: vec![EventsLog {
                daemon: "lb1".into(),
                bytes: vec![1000],
                lines: vec![10],
            }],
        }
    }

    #[test]
    fn flat_series_hold_and_growth_is_caught() {
        let flat = resources(
            &[10_000, 12_000, 11_900, 12_100, 12_000],
            &[20, 22, 21, 20, 21],
        );
        assert_eq!(flat.failed_checks(), Vec::<String>::new());
        let grown = resources(&[10_000, 40_000], &[20, 40]);
        let failures = grown.failed_checks();
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("RSS grew"), "{failures:?}");
        assert!(failures[1].contains("descriptors grew"), "{failures:?}");
        let rising = resources(&[10_000, 11_500, 13_000, 14_500, 16_000], &[20; 5]);
        assert!(rising.failed_checks()[0].contains("rose at each"));
        // Rising at every sample but by little: a warm-up, not a leak.
        let creeping = resources(&[10_000, 10_100, 10_200, 10_300, 10_400], &[20; 5]);
        assert!(creeping.failed_checks().is_empty());
        let mut big = resources(&[10_000], &[20]);
        big.events[0].lines = vec![5000];
        assert!(big.failed_checks()[0].contains("events.jsonl"));
    }
}
