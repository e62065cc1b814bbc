//! Backend health probes: one task per backend probes on a jittered interval and reports typed events to the owner.
//!
//! The owner of the controller state receives a [`ProbeEvent`] for every result and decides what to
//! log or publish; the probe tasks have no side effects beyond the network. Every attempt is cut
//! by its timeout, and every backend has its own task, so a hanging backend delays no other probe.

pub mod http;
pub mod tcp;
pub mod verdict;

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use rand::{rngs::StdRng, SeedableRng};
use tokio::{sync::mpsc, task::JoinHandle};

pub use http::HttpSpec;
pub use verdict::{next_delay, Health, Thresholds, ThresholdsError, Transition, Verdict};

/// What to probe and how a backend proves it is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSpec {
    /// Healthy when a TCP connection to `address` completes.
    Tcp { address: SocketAddr },
    /// Healthy when an HTTP or HTTPS GET answers as [`HttpSpec`] expects.
    Http(HttpSpec),
}

impl ProbeSpec {
    pub fn address(&self) -> SocketAddr {
        match self {
            Self::Tcp { address } | Self::Http(HttpSpec { address, .. }) => *address,
        }
    }
}

/// How often to probe one backend and how many results change its verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeSettings {
    pub interval: Duration,
    /// Upper bound of one attempt, connection included.
    pub timeout: Duration,
    pub thresholds: Thresholds,
    /// Fraction of `interval` by which each delay is spread, in `[0, 1]`.
    pub jitter: f64,
}

/// Why one probe attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connecting to backend {address} failed")]
    Connect {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("building the HTTP client for backend {address} failed")]
    Client {
        address: SocketAddr,
        source: reqwest::Error,
    },
    #[error("HTTP request {url} to backend {address} failed")]
    Request {
        address: SocketAddr,
        url: String,
        source: reqwest::Error,
    },
    #[error("HTTP request {url} to backend {address} answered {status}, expected {expected}")]
    Status {
        address: SocketAddr,
        url: String,
        status: u16,
        expected: u16,
    },
    #[error("HTTP response of {url} from backend {address} does not contain {expected:?}")]
    Body {
        address: SocketAddr,
        url: String,
        expected: String,
    },
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub success: bool,
    pub latency: Duration,
    /// What happened, for the owner's log: the error chain on failure.
    pub detail: String,
}

/// One result of one backend's probe task, with the verdict change it caused.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeEvent {
    pub id: u32,
    pub result: ProbeResult,
    pub transition: Option<Transition>,
    pub at: SystemTime,
}

/// A probe ready to run repeatedly: holds what is costly to build (the HTTP client) once.
enum Prober {
    Tcp {
        address: SocketAddr,
    },
    Http(Box<http::HttpProbe>),
    /// The HTTP client could not be built; every attempt reports why.
    Broken(String),
}

impl Prober {
    fn new(spec: &ProbeSpec, timeout: Duration) -> Self {
        match spec {
            ProbeSpec::Tcp { address } => Self::Tcp { address: *address },
            ProbeSpec::Http(http_spec) => match http::HttpProbe::new(http_spec, timeout) {
                Ok(probe) => Self::Http(Box::new(probe)),
                Err(error) => Self::Broken(error_chain(&error)),
            },
        }
    }

    async fn run(&self, timeout: Duration) -> ProbeResult {
        let start = Instant::now();
        let outcome = match self {
            Self::Tcp { address } => tokio::time::timeout(timeout, tcp::probe(*address)).await,
            Self::Http(probe) => tokio::time::timeout(timeout, probe.run()).await,
            Self::Broken(detail) => {
                return ProbeResult {
                    success: false,
                    latency: Duration::ZERO,
                    detail: detail.clone(),
                }
            }
        };
        let latency = start.elapsed();
        match outcome {
            Ok(Ok(detail)) => ProbeResult {
                success: true,
                latency,
                detail,
            },
            Ok(Err(error)) => ProbeResult {
                success: false,
                latency,
                detail: error_chain(&error),
            },
            Err(_elapsed) => ProbeResult {
                success: false,
                latency,
                detail: format!("no answer within {timeout:?}"),
            },
        }
    }
}

/// The error and its sources on one line, so the detail says why a connection failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs one attempt of `spec`, cut at `timeout`. Never panics; a failure is a result.
pub async fn probe_once(spec: &ProbeSpec, timeout: Duration) -> ProbeResult {
    Prober::new(spec, timeout).run(timeout).await
}

/// Starts a task that probes `spec` forever and sends a [`ProbeEvent`] for every result.
///
/// The task ends when the receiver of `sender` is dropped. The first probe runs at once; the
/// next ones follow [`next_delay`] after the previous result.
pub fn spawn(
    id: u32,
    spec: ProbeSpec,
    settings: ProbeSettings,
    sender: mpsc::Sender<ProbeEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let prober = Prober::new(&spec, settings.timeout);
        let mut verdict = Verdict::new(settings.thresholds);
        let mut rng = StdRng::from_os_rng();
        loop {
            let result = tokio::select! {
                result = prober.run(settings.timeout) => result,
                () = sender.closed() => return,
            };
            let transition = verdict.observe(result.success);
            let event = ProbeEvent {
                id,
                result,
                transition,
                at: SystemTime::now(),
            };
            if sender.send(event).await.is_err() {
                return;
            }
            let delay = next_delay(settings.interval, settings.jitter, &mut rng);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = sender.closed() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(5);

    /// Receives events until one carries a transition; bounded by [`WAIT`].
    async fn next_transition(receiver: &mut mpsc::Receiver<ProbeEvent>) -> ProbeEvent {
        tokio::time::timeout(WAIT, async {
            loop {
                let event = receiver.recv().await.expect("probe task ended early");
                if event.transition.is_some() {
                    return event;
                }
            }
        })
        .await
        .expect("no transition within the wait")
    }

    #[tokio::test]
    async fn spawned_probe_reports_up_then_down_and_ends_with_its_receiver() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let settings = ProbeSettings {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            thresholds: Thresholds::new(2, 2).unwrap(),
            jitter: 0.1,
        };
        let (sender, mut receiver) = mpsc::channel(16);
        let task = spawn(7, ProbeSpec::Tcp { address }, settings, sender);

        let up = next_transition(&mut receiver).await;
        assert_eq!(up.id, 7);
        assert!(up.result.success);
        assert_eq!(
            up.transition,
            Some(Transition {
                from: Health::Down,
                to: Health::Up
            })
        );

        drop(listener);
        let down = next_transition(&mut receiver).await;
        assert!(!down.result.success);
        assert_eq!(
            down.transition,
            Some(Transition {
                from: Health::Up,
                to: Health::Down
            })
        );

        drop(receiver);
        tokio::time::timeout(WAIT, task)
            .await
            .expect("probe task kept running without a receiver")
            .unwrap();
    }

    #[tokio::test]
    async fn a_hanging_backend_does_not_delay_another() {
        // The hanging backend accepts TCP but never answers HTTP; its probe waits for the timeout
        // while the other backend's probe keeps its own pace.
        let hanging = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hanging_address = hanging.local_addr().unwrap();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = hanging.accept().await {
                held.push(stream);
            }
        });
        let healthy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let healthy_address = healthy.local_addr().unwrap();

        let (sender, mut receiver) = mpsc::channel(64);
        let slow = spawn(
            1,
            ProbeSpec::Http(HttpSpec {
                address: hanging_address,
                host: None,
                path: "/".into(),
                tls: false,
                accept_invalid_certificates: false,
                expect_status: 200,
                body_contains: None,
            }),
            ProbeSettings {
                interval: Duration::from_millis(50),
                timeout: Duration::from_secs(3),
                thresholds: Thresholds::new(1, 1).unwrap(),
                jitter: 0.0,
            },
            sender.clone(),
        );
        let fast = spawn(
            2,
            ProbeSpec::Tcp {
                address: healthy_address,
            },
            ProbeSettings {
                interval: Duration::from_millis(20),
                timeout: Duration::from_millis(500),
                thresholds: Thresholds::new(1, 1).unwrap(),
                jitter: 0.0,
            },
            sender,
        );
        // Five results of the fast probe arrive well before the slow one's 3 s timeout.
        let mut fast_results = 0;
        tokio::time::timeout(Duration::from_secs(2), async {
            while fast_results < 5 {
                let event = receiver.recv().await.expect("probe tasks ended early");
                assert_eq!(event.id, 2, "the hanging probe answered before its timeout");
                fast_results += 1;
            }
        })
        .await
        .expect("the fast probe was delayed");
        drop(receiver);
        tokio::time::timeout(WAIT, async {
            slow.await.unwrap();
            fast.await.unwrap();
        })
        .await
        .expect("probe tasks kept running without a receiver");
        holder.abort();
    }
}
