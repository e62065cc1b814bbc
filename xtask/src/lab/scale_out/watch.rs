//! The router's next hops for the VIP, polled every 10 ms on a thread of its own while a phase
//! acts: when a node's next hop appeared or went, and whether any poll missed one.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use netlab::Namespace;

use super::network::hops_of;
use crate::lab::control::{check_interrupt, sleep};

/// How often the router's table is read.
pub const POLL: Duration = Duration::from_millis(10);

/// Microseconds since the Unix epoch (the daemons' events count milliseconds on this clock).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// One reading of the router's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When the reading returned, µs since the Unix epoch: the router's table changed before
    /// (by up to one poll and the time `ip` takes), so times measured to it are upper bounds.
    pub at_us: u64,
    /// The load balancers the VIP's route leads to; `None` when the reading failed.
    pub hops: Option<Vec<usize>>,
}

/// The readings so far, shared with the polling thread.
#[derive(Default)]
pub struct Samples(Mutex<Vec<Sample>>);

impl Samples {
    pub fn all(&self) -> Vec<Sample> {
        self.0
            .lock()
            .map(|samples| samples.clone())
            .unwrap_or_default()
    }

    /// Waits (up to `limit`) for the first reading from `from_us` on whose hops satisfy
    /// `wanted`.
    pub fn wait(
        &self,
        from_us: u64,
        limit: Duration,
        wanted: impl Fn(&[usize]) -> bool,
    ) -> Result<Option<Sample>> {
        let end = Instant::now() + limit;
        loop {
            if let Some(sample) = first(&self.all(), from_us, &wanted) {
                return Ok(Some(sample));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            sleep(Duration::from_millis(5))?;
        }
    }
}

/// The first reading from `from_us` on whose hops satisfy `wanted`.
pub fn first(
    samples: &[Sample],
    from_us: u64,
    wanted: impl Fn(&[usize]) -> bool,
) -> Option<Sample> {
    samples
        .iter()
        .find(|sample| sample.at_us >= from_us && sample.hops.as_deref().is_some_and(&wanted))
        .cloned()
}

/// What a run of readings showed about the node set `expected`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Steadiness {
    pub polls: usize,
    /// Readings without every expected next hop (or failed).
    pub short: usize,
    /// The longest time between two readings, µs.
    pub widest_gap_us: u64,
}

pub fn steadiness(samples: &[Sample], expected: &[usize]) -> Steadiness {
    let short = samples
        .iter()
        .filter(|sample| {
            sample
                .hops
                .as_ref()
                .is_none_or(|hops| !expected.iter().all(|lb| hops.contains(lb)))
        })
        .count();
    let widest_gap_us = samples
        .windows(2)
        .map(|pair| pair[1].at_us.saturating_sub(pair[0].at_us))
        .max()
        .unwrap_or(0);
    Steadiness {
        polls: samples.len(),
        short,
        widest_gap_us,
    }
}

/// Polls `router` every [`POLL`] while `action` runs on this thread (it may read the samples);
/// returns what `action` returned and every reading.
pub fn watching<T>(
    router: &Namespace,
    action: impl FnOnce(&Samples) -> Result<T>,
) -> Result<(T, Vec<Sample>)> {
    let samples = Samples::default();
    let done = AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let mut next = Instant::now();
            while !done.load(Ordering::Relaxed) && check_interrupt().is_ok() {
                let hops = hops_of(router).ok();
                let at_us = now_us();
                if let Ok(mut samples) = samples.0.lock() {
                    samples.push(Sample { at_us, hops });
                }
                next += POLL;
                // Behind schedule (a slow `ip`): the next reading at once, no burst after it.
                next = next.max(Instant::now());
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        let outcome = action(&samples);
        done.store(true, Ordering::Relaxed);
        let _ = poller.join();
        outcome
    });
    Ok((outcome?, samples.all()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_us: u64, hops: &[usize]) -> Sample {
        Sample {
            at_us,
            hops: Some(hops.to_vec()),
        }
    }

    #[test]
    fn finds_changes_and_gaps() {
        let samples = [
            sample(1_000, &[0, 1]),
            sample(11_000, &[0, 1]),
            Sample {
                at_us: 21_000,
                hops: None,
            },
            sample(35_000, &[1]),
            sample(45_000, &[0, 1]),
        ];
        let gone = first(&samples, 5_000, |hops| !hops.contains(&0)).unwrap();
        assert_eq!(gone.at_us, 35_000);
        assert_eq!(first(&samples, 40_000, |hops| !hops.contains(&0)), None);
        let steady = steadiness(&samples, &[0, 1]);
        assert_eq!(
            steady,
            Steadiness {
                polls: 5,
                short: 2,
                widest_gap_us: 14_000
            }
        );
        assert_eq!(steadiness(&samples, &[1]).short, 1);
    }
}
