//! The three ways of timing a program (`test_run/repeat`, `live_frames` on one CPU or on several at once, `test_run/loop`), each followed by the checks that every iteration took the path the scenario names.

use std::{
    os::fd::{AsFd, BorrowedFd},
    sync::Barrier,
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};
use failover_common::stats::{self, REASON_NAMES};

use super::{
    lab::Lab,
    raw::{self, Restore, Vary},
    setup::LoadBalancer,
};

/// Frames per kernel batch in live mode: the kernel's default, one NAPI budget.
pub const LIVE_BATCH: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    /// One `BPF_PROG_TEST_RUN` with `repeat = N`; the kernel's average.
    Repeat,
    /// One `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, `repeat = N` frames.
    Live,
    /// N calls with `repeat = 1`, wall clock (the fallback when live frames are unavailable).
    Loop,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Repeat => "test_run/repeat",
            Method::Live => "live_frames",
            Method::Loop => "test_run/loop",
        }
    }

    /// The name of a number from which the floor's number (same method, same round) was
    /// subtracted.
    pub fn minus_floor_name(self) -> &'static str {
        match self {
            Method::Repeat => "test_run/repeat-minus-floor",
            Method::Live => "live_frames-minus-floor",
            Method::Loop => "test_run/loop-minus-floor",
        }
    }
}

/// One timed call (or loop of calls): nanoseconds per packet two ways.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// What the kernel reported (`duration`); for `Loop`, the mean of the per-call values.
    pub kernel_ns: f64,
    /// Wall-clock time of the call(s) divided by the packets.
    pub wall_ns: f64,
}

/// The program a scenario times.
#[derive(Clone, Copy)]
pub enum Program<'a> {
    /// The two-instruction `return XDP_TX`.
    Floor(BorrowedFd<'a>),
    /// A load balancer (this tree's or another revision's); every packet must be counted
    /// under `reason` in its own counters.
    LoadBalancer { balancer: &'a LoadBalancer, reason: u32 },
}

impl<'a> Program<'a> {
    fn fd(&self) -> BorrowedFd<'a> {
        match *self {
            Program::Floor(fd) => fd,
            Program::LoadBalancer { balancer, .. } => balancer.program.as_fd(),
        }
    }
}

/// How a live or looped scenario's frames differ from each other.
#[derive(Clone, Copy, Debug)]
pub struct Variation {
    /// Bytes the program pushes in front of the frame (the peer's restore needs it).
    pub pushed: u16,
    /// What changes from frame to frame (or from CPU to CPU).
    pub vary: Vary,
}

/// Runs `f` on a thread of its own pinned to `cpu`, so runs are comparable (and per-CPU state
/// such as the insert limiter and the LRU's local lists stays on one CPU).
pub fn pinned<T: Send>(cpu: usize, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_current_thread(cpu)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?
    })
}

pub fn pin_current_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays inside it for cpu < 1024,
    // and sched_setaffinity(0, ...) only affects the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning the benchmark thread to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The reason counters before a run, to compare with after it.
struct Before {
    reasons: Vec<u64>,
}

fn before(program: Program<'_>) -> Result<Before> {
    Ok(Before { reasons: match program {
        Program::LoadBalancer { balancer, .. } => balancer.reasons()?,
        Program::Floor(_) => Vec::new(),
    } })
}

/// Checks that exactly `packets` packets were counted, all under `reason` (events included:
/// a new flow the limiter refused would show up as `event_flow_not_tracked`). The flow cache
/// may also refuse a new flow whose bucket is full (expected for about 1 in a million of the
/// benchmark's new flows): up to one in a thousand is accepted, more fails the run.
fn check_reasons(program: Program<'_>, before: &Before, packets: u64, what: &str) -> Result<()> {
    let Program::LoadBalancer { balancer, reason } = program else { return Ok(()) };
    let after = balancer.reasons()?;
    let mut unexpected = Vec::new();
    for (index, (now, then)) in after.iter().zip(&before.reasons).enumerate() {
        let delta = now - then;
        let expected = if index == reason as usize { packets } else { 0 };
        let tolerated = if index == stats::EVENT_FLOW_NOT_TRACKED as usize { packets / 1000 } else { 0 };
        if delta < expected || delta > expected + tolerated {
            unexpected.push(format!("{} {delta} (expected {expected})", REASON_NAMES[index]));
        }
    }
    ensure!(unexpected.is_empty(), "{what}: the load balancer did not take the measured path: {}", unexpected.join(", "));
    Ok(())
}

/// `test_run/repeat`: valid only for programs that leave the packet as it was, since the
/// kernel runs every repetition on the same copy.
pub fn repeat(cpu: usize, program: Program<'_>, frame: &[u8], action: u32, iterations: u32, what: &str) -> Result<Sample> {
    let state = before(program)?;
    let fd = program.fd();
    let run = pinned(cpu, || raw::test_run(fd, frame, iterations))??;
    ensure!(run.return_value == action, "{what}: returned {} instead of {action}", run.return_value);
    check_reasons(program, &state, u64::from(iterations), what)?;
    Ok(Sample { kernel_ns: f64::from(run.kernel_ns), wall_ns: run.wall.as_nanos() as f64 / f64::from(iterations) })
}

/// `live_frames`: `frames` frames through the program in the lab's load-balancer namespace;
/// XDP_TX sends them to the peer, which restores and drops them. Checks, for the load balancer,
/// that every frame took the scenario's path, and that the peer received every frame (so every
/// one was really transmitted).
pub fn live(cpu: usize, lab: &mut Lab, program: Program<'_>, frame: &[u8], variation: Variation, frames: u32, what: &str) -> Result<Sample> {
    let (sample, _) = parallel(&[cpu], lab, program, frame, variation, frames, what)?;
    Ok(sample)
}

/// `live_frames` on several CPUs at once: one thread pinned to each CPU, all released
/// together by a barrier, each sending `frames` frames in one live call. The checks cover the
/// total (every CPU's frames took the path; the peer received them all). Returns the
/// combined sample (the sum of the CPUs' rates, as nanoseconds per packet of the total) and
/// how much the calls overlapped in time: the span all of them ran / the span any of them
/// ran (1 for one CPU).
pub fn parallel(cpus: &[usize], lab: &mut Lab, program: Program<'_>, frame: &[u8], variation: Variation, frames: u32, what: &str) -> Result<(Sample, f64)> {
    let template = &frame[..restore_len(frame)?];
    lab.set_peer(&Restore { template, pushed: variation.pushed, vary: variation.vary })
        .with_context(|| format!("{what}: setting up the peer"))?;
    let state = before(program)?;
    let received = lab.frames_received()?;
    let fd = program.fd();
    let ifindex = lab.lb_ifindex;
    let lab = &*lab;
    let start = Barrier::new(cpus.len());
    let runs: Vec<(raw::Run, Instant, Instant)> = std::thread::scope(|scope| {
        let threads: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                let start = &start;
                scope.spawn(move || {
                    lab.in_lb(|| -> Result<(raw::Run, Instant, Instant)> {
                        let pinned = pin_current_thread(cpu);
                        // Every thread reaches the barrier, pinned or not, so none waits forever.
                        start.wait();
                        pinned?;
                        let began = Instant::now();
                        let run = raw::test_run_live(fd, frame, ifindex, frames, LIVE_BATCH)?;
                        Ok((run, began, Instant::now()))
                    })?
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().map_err(|_| anyhow::anyhow!("{what}: a sending thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    let total = frames as u64 * cpus.len() as u64;
    // The path first: a frame the program did not transmit never reaches the peer either.
    check_reasons(program, &state, total, what)?;
    let arrived = lab.frames_received()? - received;
    ensure!(arrived == total, "{what}: the peer received {arrived} of {total} frames: XDP_TX into the veth lost some");
    let rates: Vec<f64> = runs.iter().map(|(run, ..)| 1.0 / f64::from(run.kernel_ns.max(1))).collect();
    let first = runs.iter().map(|(_, began, _)| *began).min().context("no CPU ran")?;
    let last = runs.iter().map(|(.., ended)| *ended).max().context("no CPU ran")?;
    let all_began = runs.iter().map(|(_, began, _)| *began).max().context("no CPU ran")?;
    let first_ended = runs.iter().map(|(.., ended)| *ended).min().context("no CPU ran")?;
    let span = (last - first).as_secs_f64();
    let together = first_ended.saturating_duration_since(all_began).as_secs_f64();
    let sample = Sample { kernel_ns: combined_ns(&rates), wall_ns: span * 1e9 / total as f64 };
    Ok((sample, if span > 0.0 { together / span } else { 1.0 }))
}

/// Nanoseconds per packet of the total when CPUs each process `rates[i]` packets per
/// nanosecond at once: the inverse of the summed rate.
pub fn combined_ns(rates: &[f64]) -> f64 {
    1.0 / rates.iter().sum::<f64>()
}

/// `test_run/loop`: `calls` calls of one iteration each, each on a fresh kernel copy of the
/// frame (varied in user space for new flows). Dominated by the system call; used only when
/// live frames are unavailable.
pub fn looped(cpu: usize, program: Program<'_>, frame: &[u8], variation: Variation, calls: u32, what: &str) -> Result<Sample> {
    let state = before(program)?;
    let fd = program.fd();
    let mut frame = frame.to_vec();
    let (kernel_total, wall) = pinned(cpu, || -> Result<(u64, std::time::Duration)> {
        let start = std::time::Instant::now();
        let mut kernel_total = 0u64;
        for call in 0..calls {
            match variation.vary {
                Vary::Nothing => {}
                Vary::Number { at } => {
                    let at = usize::from(at);
                    frame[at..at + 4].copy_from_slice(&(call + 1).to_le_bytes());
                }
                Vary::PerCpu { at, base } => frame[usize::from(at)] = base.wrapping_add(cpu as u8),
            }
            kernel_total += u64::from(raw::test_run(fd, &frame, 1)?.kernel_ns);
        }
        Ok((kernel_total, start.elapsed()))
    })??;
    check_reasons(program, &state, u64::from(calls), what)?;
    Ok(Sample { kernel_ns: kernel_total as f64 / f64::from(calls), wall_ns: wall.as_nanos() as f64 / f64::from(calls) })
}

/// How many leading bytes the peer restores. The load balancer's writes at the frame's
/// original position end at byte 14 (encapsulation: the pushed headers overwrite the old
/// Ethernet header) or 42 (IPv4 echo reply: MACs, addresses, TTL, checksums, ICMP type); the
/// new-flow word lies below 38. Nothing beyond is ever written.
fn restore_len(frame: &[u8]) -> Result<usize> {
    let length = (frame.len() & !7).min(64);
    ensure!(length >= 48, "a {}-byte frame is too short to restore", frame.len());
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cpus_at_equal_rates_halve_the_time_per_packet() {
        assert_eq!(combined_ns(&[1.0 / 200.0]), 200.0);
        assert!((combined_ns(&[1.0 / 200.0, 1.0 / 200.0]) - 100.0).abs() < 1e-9);
        // 5 and 2.5 Mpps: 7.5 Mpps in total.
        assert!((1000.0 / combined_ns(&[1.0 / 200.0, 1.0 / 400.0]) - 7.5).abs() < 1e-9);
    }
}
