//! PostgreSQL role probe: a backend is healthy when it accepts a connection and is a primary or a standby as asked.

use std::net::SocketAddr;

use tokio_postgres::NoTls;

use super::ProbeError;
use crate::config::PostgresRole;

/// What a PostgreSQL probe asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSpec {
    pub address: SocketAddr,
    pub user: String,
    pub database: String,
    pub role: PostgresRole,
}

/// Whether a server answering `pg_is_in_recovery() = in_recovery` has `role`: a standby is in
/// recovery, a primary is not.
pub fn has_role(role: PostgresRole, in_recovery: bool) -> bool {
    match role {
        PostgresRole::Primary => !in_recovery,
        PostgresRole::Standby => in_recovery,
    }
}

/// Connects, asks `pg_is_in_recovery()` and compares; the caller bounds it with a timeout.
pub async fn probe(spec: &PostgresSpec) -> Result<String, ProbeError> {
    let address = spec.address;
    let postgres_error = |source| ProbeError::Postgres { address, source };
    let (client, connection) = tokio_postgres::Config::new()
        .hostaddr(address.ip())
        .port(address.port())
        .user(&spec.user)
        .dbname(&spec.database)
        .application_name("failover-probe")
        .connect(NoTls)
        .await
        .map_err(postgres_error)?;
    // The connection is driven here rather than in a spawned task, so that it ends with the attempt.
    let query = client.query_one("SELECT pg_is_in_recovery()", &[]);
    tokio::pin!(connection, query);
    let row = tokio::select! {
        row = &mut query => row.map_err(postgres_error)?,
        ended = &mut connection => {
            return Err(match ended {
                Err(source) => postgres_error(source),
                Ok(()) => ProbeError::PostgresClosed { address },
            });
        }
    };
    let in_recovery: bool = row.try_get(0).map_err(postgres_error)?;
    if !has_role(spec.role, in_recovery) {
        return Err(ProbeError::PostgresRole {
            address,
            expected: spec.role,
            in_recovery,
        });
    }
    Ok(format!("PostgreSQL {address} has role {:?}", spec.role))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::probe::test_support::*;
    use crate::probe::{probe_once, ProbeSpec};

    #[test]
    fn role_follows_recovery() {
        assert!(has_role(PostgresRole::Primary, false));
        assert!(!has_role(PostgresRole::Primary, true));
        assert!(has_role(PostgresRole::Standby, true));
        assert!(!has_role(PostgresRole::Standby, false));
    }

    #[tokio::test]
    async fn closed_port_fails() {
        let address = unused_port();
        let spec = ProbeSpec::Postgres(PostgresSpec {
            address,
            user: "monitor".into(),
            database: "postgres".into(),
            role: PostgresRole::Primary,
        });
        let result = probe_once(&spec, Duration::from_secs(2)).await;
        assert!(!result.success);
        assert!(result.latency < Duration::from_secs(2), "{}", result.detail);
        assert!(
            result.detail.contains(&address.to_string()),
            "{}",
            result.detail
        );
    }
}
