//! The three ways of timing a program (`test_run/repeat`, `live_frames`, `test_run/loop`), each followed by the checks that every iteration took the path the scenario names.

use std::os::fd::BorrowedFd;

use anyhow::{bail, ensure, Context as _, Result};
use failover_common::stats::REASON_NAMES;

use super::{
    lab::Lab,
    raw::{self, Restore},
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
    /// The load balancer; every packet must be counted under `reason`.
    LoadBalancer { fd: BorrowedFd<'a>, reason: u32 },
}

impl Program<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Program::Floor(fd) | Program::LoadBalancer { fd, .. } => *fd,
        }
    }
}

/// How a live or looped scenario's frames differ from each other.
#[derive(Clone, Copy, Debug)]
pub struct Variation {
    /// Bytes the program pushes in front of the frame (the peer's restore needs it).
    pub pushed: u16,
    /// Where a fresh 32-bit number goes into each frame to make it a new flow.
    pub vary_at: Option<u16>,
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

fn before(balancer: &LoadBalancer) -> Result<Before> {
    Ok(Before { reasons: balancer.reasons()? })
}

/// Checks that exactly `packets` packets were counted, all under `reason` (events included:
/// a new flow the limiter refused would show up as `event_flow_not_tracked`).
fn check_reasons(balancer: &LoadBalancer, before: &Before, reason: u32, packets: u64, what: &str) -> Result<()> {
    let after = balancer.reasons()?;
    let mut unexpected = Vec::new();
    for (index, (now, then)) in after.iter().zip(&before.reasons).enumerate() {
        let delta = now - then;
        let expected = if index == reason as usize { packets } else { 0 };
        if delta != expected {
            unexpected.push(format!("{} {delta} (expected {expected})", REASON_NAMES[index]));
        }
    }
    ensure!(unexpected.is_empty(), "{what}: the load balancer did not take the measured path: {}", unexpected.join(", "));
    Ok(())
}

/// `test_run/repeat`: valid only for programs that leave the packet as it was, since the
/// kernel runs every repetition on the same copy.
pub fn repeat(cpu: usize, balancer: &LoadBalancer, program: Program<'_>, frame: &[u8], action: u32, iterations: u32, what: &str) -> Result<Sample> {
    let state = before(balancer)?;
    let fd = program.fd();
    let run = pinned(cpu, || raw::test_run(fd, frame, iterations))??;
    ensure!(run.return_value == action, "{what}: returned {} instead of {action}", run.return_value);
    if let Program::LoadBalancer { reason, .. } = program {
        check_reasons(balancer, &state, reason, u64::from(iterations), what)?;
    }
    Ok(Sample { kernel_ns: f64::from(run.kernel_ns), wall_ns: run.wall.as_nanos() as f64 / f64::from(iterations) })
}

/// `live_frames`: `frames` frames through the program in the lab's load-balancer namespace;
/// XDP_TX sends them to the peer, which restores and drops them. Checks, for the load balancer,
/// that every frame took the scenario's path, and that the peer received every frame (so every
/// one was really transmitted).
#[allow(clippy::too_many_arguments, reason = "one call site per scenario kind; a struct would only rename them")]
pub fn live(
    cpu: usize,
    lab: &mut Lab,
    balancer: &LoadBalancer,
    program: Program<'_>,
    frame: &[u8],
    variation: Variation,
    frames: u32,
    what: &str,
) -> Result<Sample> {
    let template = &frame[..restore_len(frame)?];
    lab.set_peer(&Restore { template, pushed: variation.pushed, vary_at: variation.vary_at })
        .with_context(|| format!("{what}: setting up the peer"))?;
    let state = before(balancer)?;
    let received = lab.frames_received()?;
    let fd = program.fd();
    let ifindex = lab.lb_ifindex;
    let run = lab.in_lb(|| -> Result<raw::Run> {
        pin_current_thread(cpu)?;
        raw::test_run_live(fd, frame, ifindex, frames, LIVE_BATCH)
    })??;
    // The path first: a frame the program did not transmit never reaches the peer either.
    if let Program::LoadBalancer { reason, .. } = program {
        check_reasons(balancer, &state, reason, u64::from(frames), what)?;
    }
    let arrived = lab.frames_received()? - received;
    ensure!(
        arrived == u64::from(frames),
        "{what}: the peer received {arrived} of {frames} frames: XDP_TX into the veth lost some"
    );
    Ok(Sample { kernel_ns: f64::from(run.kernel_ns), wall_ns: run.wall.as_nanos() as f64 / f64::from(frames) })
}

/// `test_run/loop`: `calls` calls of one iteration each, each on a fresh kernel copy of the
/// frame (varied in user space for new flows). Dominated by the system call; used only when
/// live frames are unavailable.
pub fn looped(cpu: usize, balancer: &LoadBalancer, program: Program<'_>, frame: &[u8], variation: Variation, calls: u32, what: &str) -> Result<Sample> {
    let state = before(balancer)?;
    let fd = program.fd();
    let mut frame = frame.to_vec();
    let (kernel_total, wall) = pinned(cpu, || -> Result<(u64, std::time::Duration)> {
        let start = std::time::Instant::now();
        let mut kernel_total = 0u64;
        for call in 0..calls {
            if let Some(at) = variation.vary_at {
                let at = usize::from(at);
                frame[at..at + 4].copy_from_slice(&(call + 1).to_le_bytes());
            }
            kernel_total += u64::from(raw::test_run(fd, &frame, 1)?.kernel_ns);
        }
        Ok((kernel_total, start.elapsed()))
    })??;
    if let Program::LoadBalancer { reason, .. } = program {
        check_reasons(balancer, &state, reason, u64::from(calls), what)?;
    }
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
