//! TCP connect probe: a backend is healthy when it completes the three-way handshake.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::ProbeError;

/// Connects to `address` and closes the connection at once; the caller bounds it with a timeout.
pub async fn probe(address: SocketAddr) -> Result<String, ProbeError> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|source| ProbeError::Connect { address, source })?;
    drop(stream);
    Ok(format!("connected to {address}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;
    use crate::probe::test_support::*;

    use tokio::{net::TcpListener, task::JoinSet};

    use crate::probe::{probe_once, ProbeSpec};

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn succeeds_against_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let result = probe_once(&ProbeSpec::Tcp { address }, TIMEOUT).await;
        assert!(result.success, "{}", result.detail);
    }

    #[tokio::test]
    async fn fails_quickly_on_a_closed_port() {
        let address = unused_port();
        let result = probe_once(&ProbeSpec::Tcp { address }, TIMEOUT).await;
        assert!(!result.success);
        assert!(
            result.latency < TIMEOUT,
            "refused, not timed out: {}",
            result.detail
        );
        assert!(
            result.detail.contains(&address.to_string()),
            "{}",
            result.detail
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_thousand_concurrent_probes_complete() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = tokio::spawn(async move {
            loop {
                if listener.accept().await.is_err() {
                    return;
                }
            }
        });
        let mut probes = JoinSet::new();
        for _ in 0..1000 {
            probes.spawn(async move {
                probe_once(&ProbeSpec::Tcp { address }, Duration::from_secs(10)).await
            });
        }
        let mut completed = 0;
        let mut succeeded = 0;
        while let Some(result) = probes.join_next().await {
            completed += 1;
            if result.unwrap().success {
                succeeded += 1;
            }
        }
        acceptor.abort();
        assert_eq!(completed, 1000);
        assert_eq!(succeeded, 1000);
    }
}
