//! Backend health probes: one task per backend probes on a jittered interval and reports typed events to the owner.
//!
//! The owner of the controller state receives a [`ProbeEvent`] for every result and decides what to
//! log or publish; the probe tasks have no side effects beyond the network. Every attempt is cut
//! by its timeout, and every backend has its own task, so a hanging backend delays no other probe.

pub mod exec;
pub mod http;
pub mod icmp;
pub mod postgres;
pub mod redis;
pub mod tcp;
#[cfg(test)]
mod test_support;
pub mod udp;
pub mod verdict;

use std::{
    net::{IpAddr, SocketAddr},
    process::ExitStatus,
    time::{Duration, Instant, SystemTime},
};

use rand::{rngs::StdRng, SeedableRng};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::config::{self, Check, PostgresRole};

pub use http::HttpSpec;
pub use postgres::PostgresSpec;
pub use redis::RedisSpec;
pub use udp::UdpSpec;
pub use verdict::{next_delay, Health, Thresholds, ThresholdsError, Transition, Verdict};

/// What to probe and how a backend proves it is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSpec {
    /// Healthy when a TCP connection to `address` completes.
    Tcp { address: SocketAddr },
    /// Healthy when an HTTP or HTTPS GET answers as [`HttpSpec`] expects.
    Http(HttpSpec),
    /// Healthy when a datagram is answered as [`UdpSpec`] expects.
    Udp(UdpSpec),
    /// Healthy when an ICMP echo request is answered; the port of `address` is unused.
    Icmp { address: SocketAddr },
    /// Healthy when a program exits with status 0.
    Exec(ExecSpec),
    /// Healthy when Redis reports the expected replication role.
    Redis(RedisSpec),
    /// Healthy when PostgreSQL accepts the connection and has the expected role.
    Postgres(PostgresSpec),
}

/// A program run as a probe; `address` names the backend it checks, the program is not told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub address: SocketAddr,
    /// Program and arguments, run directly, never through a shell.
    pub argv: Vec<String>,
    /// Who runs it (`script_user` or the probe's `user`).
    pub user: config::ScriptUser,
}

impl ProbeSpec {
    pub fn address(&self) -> SocketAddr {
        match self {
            Self::Tcp { address }
            | Self::Http(HttpSpec { address, .. })
            | Self::Udp(UdpSpec { address, .. })
            | Self::Icmp { address }
            | Self::Exec(ExecSpec { address, .. })
            | Self::Redis(RedisSpec { address, .. })
            | Self::Postgres(PostgresSpec { address, .. }) => *address,
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
    #[error("UDP exchange with backend {address} failed")]
    Datagram {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("UDP reply from backend {address} does not contain {expected:?}")]
    Reply {
        address: SocketAddr,
        expected: String,
    },
    #[error("ICMP echo to backend {address} failed")]
    Echo {
        address: IpAddr,
        source: surge_ping::SurgeError,
    },
    #[error("health check program has an empty argv")]
    EmptyCommand,
    #[error("starting health check program {program} failed")]
    Start {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for health check program {program} failed")]
    Wait {
        program: String,
        source: std::io::Error,
    },
    #[error("health check program {program} ended with {status}: {stderr:?}")]
    Exit {
        program: String,
        status: ExitStatus,
        /// The start of its standard error.
        stderr: String,
    },
    #[error("Redis INFO replication on backend {address} failed")]
    Redis {
        address: SocketAddr,
        source: ::redis::RedisError,
    },
    #[error("Redis backend {address} has role {actual}, expected {expected}")]
    RedisRole {
        address: SocketAddr,
        expected: &'static str,
        actual: String,
    },
    #[error("PostgreSQL check on backend {address} failed")]
    Postgres {
        address: SocketAddr,
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL backend {address} closed the connection before answering")]
    PostgresClosed { address: SocketAddr },
    #[error(
        "PostgreSQL backend {address} is not {expected:?} (pg_is_in_recovery is {in_recovery})"
    )]
    PostgresRole {
        address: SocketAddr,
        expected: PostgresRole,
        in_recovery: bool,
    },
}

/// Why a configured probe could not be turned into a [`ProbeSpec`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FromConfigError {
    #[error("probe of backend {address} has invalid thresholds")]
    Thresholds {
        address: IpAddr,
        source: ThresholdsError,
    },
}

/// Turns the configured probe of the backend at `backend` into what [`spawn`] takes.
///
/// Ports are already resolved by the configuration (VIP port or the kind's default). The
/// configured jitter, a duration, becomes a fraction of the interval.
pub fn from_config(
    probe: &config::Probe,
    backend: IpAddr,
) -> Result<(ProbeSpec, ProbeSettings), FromConfigError> {
    let at = |port: u16| SocketAddr::new(backend, port);
    let http = |check: &config::HttpCheck, tls: bool| HttpSpec {
        address: at(check.port),
        host: check.host.clone(),
        path: check.path.clone(),
        tls,
        accept_invalid_certificates: false,
        expect_status: check.expect_status,
        body_contains: check.body_contains.clone(),
    };
    let spec = match &probe.check {
        Check::Tcp { port } => ProbeSpec::Tcp { address: at(*port) },
        Check::Http(check) => ProbeSpec::Http(http(check, false)),
        Check::Https(check) => ProbeSpec::Http(http(check, true)),
        Check::Udp { port, send, expect } => ProbeSpec::Udp(UdpSpec {
            address: at(*port),
            send: send.clone(),
            expect: expect.clone(),
        }),
        Check::Icmp => ProbeSpec::Icmp { address: at(0) },
        Check::Exec { argv, user } => ProbeSpec::Exec(ExecSpec {
            address: at(0),
            argv: argv.clone(),
            user: user.clone(),
        }),
        Check::Redis { port, role } => ProbeSpec::Redis(RedisSpec {
            address: at(*port),
            role: *role,
        }),
        Check::Postgres {
            port,
            user,
            database,
            role,
        } => ProbeSpec::Postgres(PostgresSpec {
            address: at(*port),
            user: user.clone(),
            database: database.clone(),
            role: *role,
        }),
    };
    let timing = &probe.timing;
    let thresholds = Thresholds::new(timing.rise, timing.fall).map_err(|source| {
        FromConfigError::Thresholds {
            address: backend,
            source,
        }
    })?;
    let jitter = if timing.interval.is_zero() {
        0.0
    } else {
        (timing.jitter.as_secs_f64() / timing.interval.as_secs_f64()).clamp(0.0, 1.0)
    };
    let settings = ProbeSettings {
        interval: timing.interval,
        timeout: timing.timeout,
        thresholds,
        jitter,
    };
    Ok((spec, settings))
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
    Udp(UdpSpec),
    Icmp {
        address: IpAddr,
    },
    Exec {
        argv: Vec<String>,
        user: config::ScriptUser,
    },
    Redis(RedisSpec),
    Postgres(PostgresSpec),
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
            ProbeSpec::Udp(udp_spec) => Self::Udp(udp_spec.clone()),
            ProbeSpec::Icmp { address } => Self::Icmp {
                address: address.ip(),
            },
            ProbeSpec::Exec(ExecSpec { argv, user, .. }) => Self::Exec {
                argv: argv.clone(),
                user: user.clone(),
            },
            ProbeSpec::Redis(redis_spec) => Self::Redis(redis_spec.clone()),
            ProbeSpec::Postgres(postgres_spec) => Self::Postgres(postgres_spec.clone()),
        }
    }

    async fn run(&self, timeout: Duration) -> ProbeResult {
        let start = Instant::now();
        let outcome = match self {
            Self::Tcp { address } => tokio::time::timeout(timeout, tcp::probe(*address)).await,
            Self::Http(probe) => tokio::time::timeout(timeout, probe.run()).await,
            Self::Udp(spec) => tokio::time::timeout(timeout, udp::probe(spec)).await,
            Self::Icmp { address } => {
                tokio::time::timeout(timeout, icmp::probe(*address, timeout)).await
            }
            Self::Exec { argv, user } => {
                tokio::time::timeout(timeout, exec::probe(argv, user)).await
            }
            Self::Redis(spec) => tokio::time::timeout(timeout, redis::probe(spec)).await,
            Self::Postgres(spec) => tokio::time::timeout(timeout, postgres::probe(spec)).await,
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
    spawn_from(id, spec, settings, Health::Down, sender)
}

/// Same as [`spawn`], with the verdict starting at `initial` instead of `Down`.
pub fn spawn_from(
    id: u32,
    spec: ProbeSpec,
    settings: ProbeSettings,
    initial: Health,
    sender: mpsc::Sender<ProbeEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let prober = Prober::new(&spec, settings.timeout);
        let mut verdict = Verdict::starting(settings.thresholds, initial);
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
    use crate::probe::test_support::*;
    use tokio::net::TcpListener;

    #[test]
    fn every_backend_of_the_example_converts() {
        // Parsed, not loaded: the example's exec probe names a program this host does not have.
        let config = config::parse(include_str!("../../examples/failover.toml"), "failover.toml").unwrap();
        let mut kinds = Vec::new();
        for vip in &config.vips {
            for backend in &vip.backends {
                let (spec, settings) = from_config(&backend.probe, backend.address).unwrap();
                assert_eq!(spec.address().ip(), backend.address);
                assert_eq!(settings.interval, backend.probe.timing.interval);
                assert_eq!(settings.timeout, backend.probe.timing.timeout);
                assert!(
                    (0.0..=1.0).contains(&settings.jitter),
                    "{}",
                    settings.jitter
                );
                let kind = match spec {
                    ProbeSpec::Tcp { .. } => "tcp",
                    ProbeSpec::Http(HttpSpec { tls: false, .. }) => "http",
                    ProbeSpec::Http(HttpSpec { tls: true, .. }) => "https",
                    ProbeSpec::Udp(_) => "udp",
                    ProbeSpec::Icmp { .. } => "icmp",
                    ProbeSpec::Exec(_) => "exec",
                    ProbeSpec::Redis(_) => "redis",
                    ProbeSpec::Postgres(_) => "postgres",
                };
                kinds.push(kind);
            }
        }
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(
            kinds,
            ["exec", "http", "https", "icmp", "postgres", "redis", "tcp", "udp"]
        );
    }

    #[test]
    fn example_values_reach_the_spec() {
        // Parsed, not loaded: the example's exec probe names a program this host does not have.
        let config = config::parse(include_str!("../../examples/failover.toml"), "failover.toml").unwrap();
        let dns = config.vip("dns").unwrap();
        let (spec, settings) =
            from_config(&dns.backends[0].probe, dns.backends[0].address).unwrap();
        assert_eq!(
            spec,
            ProbeSpec::Udp(UdpSpec {
                address: "[2001:db8:2::1]:53".parse().unwrap(),
                send: "ping".into(),
                expect: "pong".into(),
            })
        );
        assert_eq!(settings.thresholds, Thresholds::new(1, 2).unwrap());
        let db = config.vip("db").unwrap();
        let (spec, _) = from_config(&db.backends[2].probe, db.backends[2].address).unwrap();
        assert_eq!(
            spec,
            ProbeSpec::Redis(RedisSpec {
                address: "198.51.100.33:6379".parse().unwrap(),
                role: config::RedisRole::Replica,
            })
        );
    }

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
        let (hanging_address, holder) = silent_server().await;
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
