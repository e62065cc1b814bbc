//! Redis role probe: a backend is healthy when `INFO replication` reports the expected role.

use std::{
    io,
    net::SocketAddr,
    pin::{pin, Pin},
    task::{ready, Context, Poll},
};

use futures::future::{select, Either};
use redis::{aio::MultiplexedConnection, RedisConnectionInfo};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::ProbeError;
use crate::config::RedisRole;

/// The most a Redis backend may send in one attempt. `INFO replication` is about 100 bytes per
/// replica; without a cap, a backend announcing `$999999999` would be buffered until it had sent
/// that much (the client's parser has no limit of its own).
pub const REPLY_LIMIT: usize = 64 * 1024;

/// What a Redis probe asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSpec {
    pub address: SocketAddr,
    pub role: RedisRole,
}

/// The `role:` value Redis reports for `role`.
pub fn role_name(role: RedisRole) -> &'static str {
    match role {
        RedisRole::Master => "master",
        // Redis still spells it "slave" in INFO.
        RedisRole::Replica => "slave",
    }
}

/// The `role:` value of an `INFO replication` answer.
pub fn reported_role(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix("role:"))
}

/// Connects, runs `INFO replication` and compares the role; the caller bounds it with a timeout.
///
/// The connection and the task reading its replies both live inside this future, so the timeout
/// that drops it closes the connection: nothing keeps reading from a backend after the attempt.
pub async fn probe(spec: &RedisSpec) -> Result<String, ProbeError> {
    let address = spec.address;
    let redis_error = |source| ProbeError::Redis { address, source };
    let stream = TcpStream::connect(address)
        .await
        .map_err(|source| ProbeError::Connect { address, source })?;
    let stream = Capped {
        stream,
        received: 0,
    };
    let (mut connection, driver) =
        MultiplexedConnection::new(&RedisConnectionInfo::default(), stream)
            .await
            .map_err(redis_error)?;
    let mut command = redis::cmd("INFO");
    command.arg("replication");
    let query = pin!(command.query_async::<String>(&mut connection));
    let info = match select(query, pin!(driver)).await {
        Either::Left((info, _driver)) => info,
        // The driver stopped (the backend closed, or sent too much): the query holds why.
        Either::Right(((), query)) => query.await,
    }
    .map_err(redis_error)?;
    let expected = role_name(spec.role);
    match reported_role(&info) {
        Some(actual) if actual == expected => Ok(format!("Redis {address} has role {actual}")),
        actual => Err(ProbeError::RedisRole {
            address,
            expected,
            actual: actual.unwrap_or("none").to_owned(),
        }),
    }
}

/// A TCP connection that fails its reads once more than [`REPLY_LIMIT`] bytes came in. The last
/// read may overshoot by one buffer, which is then dropped with the connection.
struct Capped {
    stream: TcpStream,
    received: usize,
}

impl AsyncRead for Capped {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buffer.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(context, buffer))?;
        this.received += buffer.filled().len() - before;
        if this.received > REPLY_LIMIT {
            return Poll::Ready(Err(io::Error::other(format!(
                "the backend sent more than {REPLY_LIMIT} bytes without completing its answer"
            ))));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(context, data)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        process::{Child, Command, Stdio},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::probe::test_support::*;
    use crate::probe::{probe_once, ProbeSpec};

    #[test]
    fn role_is_read_from_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n";
        assert_eq!(reported_role(info), Some("master"));
        assert_eq!(
            reported_role("# Replication\r\nrole:slave\r\n"),
            Some("slave")
        );
        assert_eq!(reported_role("# Replication\r\n"), None);
        assert_eq!(role_name(RedisRole::Replica), "slave");
    }

    #[tokio::test]
    async fn closed_port_fails() {
        let address = unused_port();
        let spec = ProbeSpec::Redis(RedisSpec {
            address,
            role: RedisRole::Master,
        });
        let result = probe_once(&spec, Duration::from_secs(2)).await;
        assert!(!result.success);
        assert!(
            result.detail.contains(&address.to_string()),
            "{}",
            result.detail
        );
    }

    /// A throwaway `redis-server`, killed when dropped.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn master_role_is_checked_against_a_real_server() {
        if !netlab::prerequisite::require_program("redis-server", "redis-server") {
            return;
        }
        // A free port: bind, note it, release it for the server.
        let address = unused_port();
        let port = address.port().to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let _server = Server(child.expect("starting redis-server"));
        let master = ProbeSpec::Redis(RedisSpec {
            address,
            role: RedisRole::Master,
        });
        let start = Instant::now();
        loop {
            let result = probe_once(&master, Duration::from_secs(1)).await;
            if result.success {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not answer: {}",
                result.detail
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let replica = ProbeSpec::Redis(RedisSpec {
            address,
            role: RedisRole::Replica,
        });
        let result = probe_once(&replica, Duration::from_secs(2)).await;
        assert!(!result.success);
        assert!(result.detail.contains("master"), "{}", result.detail);
    }
}
