//! Control-plane scenarios: how long a Maglev table takes to build, and how much CPU the probes of 1000 backends use at a 100 ms interval.

use std::{
    net::{Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use failover_ctl::{
    maglev::{self, MaglevBackend, DEFAULT_TABLE_SIZE},
    probe::{self, ProbeSettings, ProbeSpec, Thresholds},
};
use tokio::sync::{mpsc, oneshot};

use super::{measure, report::ControlRow, statistics::median};

/// Backend counts of the Maglev scenario.
const MAGLEV_BACKENDS: [usize; 3] = [10, 100, 1000];
/// Unmeasured builds of each size first, then measured rounds; sizes take turns within a round.
const MAGLEV_WARMUP: usize = 2;
const MAGLEV_ROUNDS: usize = 15;
/// The target: a table of 100 backends within 1 ms.
const MAGLEV_TARGET_BACKENDS: usize = 100;
const MAGLEV_MAX_US: f64 = 1000.0;

/// The probe scenario: 1000 TCP backends, each probed every 100 ms (10% jitter, the default).
const PROBED_BACKENDS: usize = 1000;
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_JITTER: f64 = 0.1;
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_WARMUP: Duration = Duration::from_secs(1);
const PROBE_WINDOW: Duration = Duration::from_secs(5);
/// Enough descriptors for the listeners, the probes' sockets and the accepted ones at once.
const OPEN_FILES: libc::rlim_t = 8192;
/// Achieved rate below this share of the nominal one is a miss: the probes fell behind.
const PROBE_RATE_SHARE: f64 = 0.95;

/// Times `maglev::build` (allocation included: it is what the daemon calls) for 65537 slots.
pub fn maglev_build(cpu: usize) -> Result<(Vec<ControlRow>, String)> {
    let sets: Vec<Vec<MaglevBackend>> = MAGLEV_BACKENDS
        .iter()
        .map(|&count| equal_backends(count))
        .collect();
    // Per size: (build, build_into) wall-clock microseconds of every measured round.
    type Samples = Vec<(Vec<f64>, Vec<f64>)>;
    let samples = measure::pinned(cpu, || -> Result<Samples> {
        let mut samples = vec![(Vec::new(), Vec::new()); sets.len()];
        let mut reused = vec![0u32; DEFAULT_TABLE_SIZE as usize];
        for round in 0..MAGLEV_WARMUP + MAGLEV_ROUNDS {
            for (set, (samples, into_samples)) in sets.iter().zip(&mut samples) {
                let started = Instant::now();
                let table =
                    maglev::build(set, DEFAULT_TABLE_SIZE).context("building a Maglev table")?;
                let elapsed = started.elapsed();
                ensure!(
                    table.len() == DEFAULT_TABLE_SIZE as usize,
                    "the table has {} slots",
                    table.len()
                );
                std::hint::black_box(table);
                let started = Instant::now();
                maglev::build_into(set, DEFAULT_TABLE_SIZE, &mut reused)
                    .context("building a Maglev table into a buffer")?;
                let into_elapsed = started.elapsed();
                std::hint::black_box(&reused);
                if round >= MAGLEV_WARMUP {
                    samples.push(elapsed.as_secs_f64() * 1e6);
                    into_samples.push(into_elapsed.as_secs_f64() * 1e6);
                }
            }
        }
        Ok(samples)
    })??;
    let rows = MAGLEV_BACKENDS
        .iter()
        .zip(samples)
        .map(|(&count, (mut samples, mut into_samples))| {
            let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
            let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let value = median(&mut samples);
            let target =
                (count == MAGLEV_TARGET_BACKENDS).then(|| format!("<= {MAGLEV_MAX_US} us"));
            ControlRow {
                scenario: format!("maglev_build_{count}"),
                method: "maglev::build, wall clock".to_string(),
                value,
                unit: "us",
                min,
                max,
                runs: samples.len(),
                verdict: target.as_ref().map(|_| value <= MAGLEV_MAX_US),
                target,
                detail: format!(
                    "{DEFAULT_TABLE_SIZE} slots, {count} backends of weight 1; build_into a reused buffer: median {:.1} us",
                    median(&mut into_samples)
                ),
            }
        })
        .collect();
    let note = format!(
        "maglev_build_N: failover_ctl::maglev::build of a {DEFAULT_TABLE_SIZE}-slot table for N equal-weight backends (distinct 16-byte keys), the call the daemon makes, allocation of the table included; one thread pinned to CPU {cpu}; {MAGLEV_WARMUP} unmeasured builds of each size, then {MAGLEV_ROUNDS} rounds in which the sizes take turns; the value is the median of the rounds' wall-clock times. Each build is followed by maglev::build_into a buffer reused across runs (no allocation, pages already mapped), whose median is in the detail column. Target from the issue: <= 1 ms at {MAGLEV_TARGET_BACKENDS} backends (judged on build). Load average when done: {}.",
        load_average()
    );
    Ok((rows, note))
}

/// The first three fields of /proc/loadavg: how busy the machine was around the measurement.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_string(),
        |text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

fn equal_backends(count: usize) -> Vec<MaglevBackend> {
    (0..count)
        .map(|index| {
            let id = u32::try_from(index).unwrap_or(u32::MAX);
            let address = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (id >> 16) as u16, id as u16);
            MaglevBackend {
                id,
                key: address.octets(),
                weight: 1,
            }
        })
        .collect()
}

/// CPU time of this process (user, system), in seconds.
fn cpu_seconds(who: libc::c_int) -> Result<(f64, f64)> {
    // SAFETY: getrusage fills the zeroed struct it is given and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(who, &mut usage) != 0 {
            bail!("getrusage: {}", std::io::Error::last_os_error());
        }
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Ok((seconds(usage.ru_utime), seconds(usage.ru_stime)))
}

/// Raises the descriptor limit to [`OPEN_FILES`] (the hard limit too where allowed) and puts
/// the old one back when dropped.
struct OpenFilesLimit {
    previous: libc::rlimit,
}

impl OpenFilesLimit {
    fn raise() -> Result<Self> {
        // SAFETY: getrlimit/setrlimit read and write the struct they are given.
        unsafe {
            let mut previous: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut previous) != 0 {
                bail!(
                    "getrlimit(RLIMIT_NOFILE): {}",
                    std::io::Error::last_os_error()
                );
            }
            let wanted = libc::rlimit {
                rlim_cur: OPEN_FILES.max(previous.rlim_cur),
                rlim_max: OPEN_FILES.max(previous.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                // Not root: as far as the hard limit allows.
                let capped = libc::rlimit {
                    rlim_cur: wanted.rlim_cur.min(previous.rlim_max),
                    rlim_max: previous.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &capped) != 0 {
                    bail!(
                        "setrlimit(RLIMIT_NOFILE, {}): {}",
                        capped.rlim_cur,
                        std::io::Error::last_os_error()
                    );
                }
            }
            Ok(Self { previous })
        }
    }
}

impl Drop for OpenFilesLimit {
    fn drop(&mut self) {
        // SAFETY: as in `raise`; lowering back to what we started with.
        unsafe {
            libc::setrlimit(libc::RLIMIT_NOFILE, &self.previous);
        }
    }
}

/// The backends: one thread with a current-thread runtime running a task per listener that
/// accepts and drops. It has a thread of its own so that its CPU time can be told apart from
/// the probes'.
struct Backends {
    addresses: Vec<SocketAddr>,
    accepted: Arc<AtomicU64>,
    /// Asks the thread for its CPU time so far (user, system).
    cpu: mpsc::Sender<oneshot::Sender<Result<(f64, f64)>>>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Backends {
    fn start(count: usize) -> Result<Self> {
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let (cpu, mut cpu_requests) = mpsc::channel::<oneshot::Sender<Result<(f64, f64)>>>(1);
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let thread = std::thread::Builder::new()
            .name("bench-backends".into())
            .spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building the backends' runtime")?;
                runtime.block_on(async move {
                    let mut addresses = Vec::with_capacity(count);
                    for _ in 0..count {
                        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                            Ok(listener) => listener,
                            Err(error) => {
                                let _ = ready_sender.send(Err(anyhow::Error::new(error).context(
                                    format!("binding listener {} of {count}", addresses.len() + 1),
                                )));
                                return Ok(());
                            }
                        };
                        addresses.push(listener.local_addr().context("a listener's address")?);
                        let counter = Arc::clone(&counter);
                        tokio::spawn(async move {
                            loop {
                                match listener.accept().await {
                                    Ok((stream, _)) => {
                                        drop(stream);
                                        counter.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                                }
                            }
                        });
                    }
                    let _ = ready_sender.send(Ok(addresses));
                    // Serves CPU-time requests until `Backends` is dropped; the runtime, its
                    // tasks and listeners go with this thread.
                    while let Some(reply) = cpu_requests.recv().await {
                        let _ = reply.send(cpu_seconds(libc::RUSAGE_THREAD));
                    }
                    Ok(())
                })
            })
            .context("starting the backends' thread")?;
        let addresses = ready
            .recv()
            .context("the backends' thread ended before listening")??;
        Ok(Self {
            addresses,
            accepted,
            cpu,
            thread,
        })
    }

    async fn cpu_seconds(&self) -> Result<(f64, f64)> {
        let (reply, answer) = oneshot::channel();
        self.cpu
            .send(reply)
            .await
            .ok()
            .context("the backends' thread is gone")?;
        answer
            .await
            .context("the backends' thread did not answer")?
    }

    fn stop(self) -> Result<()> {
        drop(self.cpu);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the backends' thread panicked"))?
    }
}

/// What the probe scenario saw in its measured window.
struct ProbeWindow {
    wall: f64,
    results: u64,
    failures: u64,
    /// Sum of the attempts' own durations (connect), microseconds.
    latency_us: u64,
    accepted: u64,
    process: (f64, f64),
    backends: (f64, f64),
    workers: usize,
}

/// Runs 1000 TCP probes at 100 ms through `probe::spawn` and measures the process's CPU time
/// over the window.
pub fn probe_cpu() -> Result<(Vec<ControlRow>, String)> {
    let limit = OpenFilesLimit::raise()?;
    let backends = Backends::start(PROBED_BACKENDS)?;
    let workers = std::thread::available_parallelism().map_or(1, |count| count.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("building the probes' runtime")?;
    let window = runtime.block_on(probe_window(&backends, workers));
    runtime.shutdown_timeout(Duration::from_secs(2));
    backends.stop()?;
    drop(limit);
    let window = window?;

    let total = window.process.0 + window.process.1;
    let backend_total = window.backends.0 + window.backends.1;
    let nominal = PROBED_BACKENDS as f64 / PROBE_INTERVAL.as_secs_f64();
    let rate = window.results as f64 / window.wall;
    let percent = |seconds: f64| 100.0 * seconds / window.wall;
    let method = format!(
        "getrusage(RUSAGE_SELF) delta over {:.0} s wall",
        PROBE_WINDOW.as_secs_f64()
    );
    let rows = vec![
        ControlRow {
            scenario: "probes_1000_tcp_100ms_cpu".to_string(),
            method: method.clone(),
            value: percent(total),
            unit: "% of a core",
            min: percent(total),
            max: percent(total),
            runs: 1,
            target: None,
            verdict: None,
            detail: format!(
                "whole process: user {:.0}% + system {:.0}%; of which backends' accept thread {:.0}%, so probes about {:.0}%",
                percent(window.process.0),
                percent(window.process.1),
                percent(backend_total),
                percent(total - backend_total),
            ),
        },
        ControlRow {
            scenario: "probes_1000_tcp_100ms_rate".to_string(),
            method: format!("probe results received / {:.0} s wall", PROBE_WINDOW.as_secs_f64()),
            value: rate,
            unit: "probes/s",
            min: rate,
            max: rate,
            runs: 1,
            target: Some(format!(">= {PROBE_RATE_SHARE} x {nominal:.0}/s")),
            verdict: Some(rate >= PROBE_RATE_SHARE * nominal),
            detail: format!(
                "{} results, {} failed, mean attempt {:.0} us; {} connections accepted by the backends",
                window.results,
                window.failures,
                window.latency_us as f64 / window.results.max(1) as f64,
                window.accepted
            ),
        },
    ];
    let note = format!(
        "probes_1000_tcp_100ms: in one process, {PROBED_BACKENDS} TCP listeners on 127.0.0.1 (ephemeral ports; one thread with a current-thread tokio runtime and a task per listener that accepts and drops each connection) and {PROBED_BACKENDS} probe tasks from failover_ctl::probe::spawn (TCP connect, interval {} ms, jitter {:.0}%, timeout {} s, rise 2 / fall 3) on a multi-thread tokio runtime of {} workers, whose events one task drains and counts. RLIMIT_NOFILE raised to {OPEN_FILES} for the run. After {} s of warm-up, the process's CPU time (getrusage RUSAGE_SELF, user + system, every thread) is read before and after {} s of wall time; % of a core = CPU seconds / wall seconds x 100 (this machine has {} CPUs). The backends' thread is timed on its own (RUSAGE_THREAD) so the probes' share can be told apart; the kernel's loopback handshake work is charged to whichever thread runs it. Nominal rate {nominal:.0} probes/s (each task sleeps interval x (1 +- jitter) after its result, so its period is the interval plus the attempt plus timer and scheduling delay); a rate below {PROBE_RATE_SHARE} x nominal means the probes fell behind. Load average when done: {}.",
        PROBE_INTERVAL.as_millis(),
        PROBE_JITTER * 100.0,
        PROBE_TIMEOUT.as_secs(),
        window.workers,
        PROBE_WARMUP.as_secs(),
        PROBE_WINDOW.as_secs(),
        workers,
        load_average(),
    );
    Ok((rows, note))
}

async fn probe_window(backends: &Backends, workers: usize) -> Result<ProbeWindow> {
    let settings = ProbeSettings {
        interval: PROBE_INTERVAL,
        timeout: PROBE_TIMEOUT,
        thresholds: Thresholds::new(2, 3).context("probe thresholds")?,
        jitter: PROBE_JITTER,
    };
    let (sender, mut receiver) = mpsc::channel::<probe::ProbeEvent>(4 * PROBED_BACKENDS);
    let results = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let latency_us = Arc::new(AtomicU64::new(0));
    let drain = {
        let (results, failures, latency_us) = (
            Arc::clone(&results),
            Arc::clone(&failures),
            Arc::clone(&latency_us),
        );
        tokio::spawn(async move {
            while let Some(event) = receiver.recv().await {
                results.fetch_add(1, Ordering::Relaxed);
                let micros = u64::try_from(event.result.latency.as_micros()).unwrap_or(u64::MAX);
                latency_us.fetch_add(micros, Ordering::Relaxed);
                if !event.result.success {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let probes: Vec<_> = backends
        .addresses
        .iter()
        .zip(0u32..)
        .map(|(&address, id)| {
            probe::spawn(id, ProbeSpec::Tcp { address }, settings, sender.clone())
        })
        .collect();
    drop(sender);

    tokio::time::sleep(PROBE_WARMUP).await;
    let started = Instant::now();
    let (results_before, failures_before, latency_before, accepted_before) = (
        results.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        latency_us.load(Ordering::Relaxed),
        backends.accepted.load(Ordering::Relaxed),
    );
    let process_before = cpu_seconds(libc::RUSAGE_SELF)?;
    let backends_before = backends.cpu_seconds().await?;
    tokio::time::sleep(PROBE_WINDOW).await;
    let process_after = cpu_seconds(libc::RUSAGE_SELF)?;
    let backends_after = backends.cpu_seconds().await?;
    let wall = started.elapsed().as_secs_f64();
    let window = ProbeWindow {
        wall,
        results: results.load(Ordering::Relaxed) - results_before,
        failures: failures.load(Ordering::Relaxed) - failures_before,
        latency_us: latency_us.load(Ordering::Relaxed) - latency_before,
        accepted: backends.accepted.load(Ordering::Relaxed) - accepted_before,
        process: (
            process_after.0 - process_before.0,
            process_after.1 - process_before.1,
        ),
        backends: (
            backends_after.0 - backends_before.0,
            backends_after.1 - backends_before.1,
        ),
        workers,
    };

    // The probe tasks end once nobody receives their events.
    drain.abort();
    let _ = drain.await;
    for task in probes {
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .context("a probe task kept running without a receiver")?
            .context("a probe task failed")?;
    }
    Ok(window)
}
