//! Redis role probe: a backend is healthy when `INFO replication` reports the expected role.

use std::net::SocketAddr;

use redis::{ConnectionAddr, ConnectionInfo, RedisConnectionInfo};

use super::ProbeError;
use crate::config::RedisRole;

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
pub async fn probe(spec: &RedisSpec) -> Result<String, ProbeError> {
    let address = spec.address;
    let redis_error = |source| ProbeError::Redis { address, source };
    let client = redis::Client::open(ConnectionInfo {
        addr: ConnectionAddr::Tcp(address.ip().to_string(), address.port()),
        redis: RedisConnectionInfo::default(),
    })
    .map_err(redis_error)?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(redis_error)?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut connection)
        .await
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
