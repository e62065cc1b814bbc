//! UDP request/reply probe: a backend is healthy when it answers a datagram with a reply containing the expected text.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

use super::ProbeError;

/// The largest reply read; a longer datagram is cut, which is enough to search a health answer.
const REPLY_LIMIT: usize = 64 * 1024;

/// What a UDP probe sends and expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpSpec {
    pub address: SocketAddr,
    /// The request payload.
    pub send: String,
    /// Text the reply must contain.
    pub expect: String,
}

/// Sends one datagram and waits for the reply; the caller bounds it with a timeout.
///
/// The socket is connected, so the kernel drops datagrams from any other source and reports an
/// ICMP port unreachable as an error on receive, which fails the attempt before its timeout.
pub async fn probe(spec: &UdpSpec) -> Result<String, ProbeError> {
    let address = spec.address;
    let exchange_error = |source| ProbeError::Datagram { address, source };
    let local: SocketAddr = match address {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(exchange_error)?;
    socket.connect(address).await.map_err(exchange_error)?;
    socket
        .send(spec.send.as_bytes())
        .await
        .map_err(exchange_error)?;
    let mut reply = vec![0u8; REPLY_LIMIT];
    let length = socket.recv(&mut reply).await.map_err(exchange_error)?;
    reply.truncate(length);
    if !String::from_utf8_lossy(&reply).contains(spec.expect.as_str()) {
        return Err(ProbeError::Reply {
            address,
            expected: spec.expect.clone(),
        });
    }
    Ok(format!("{address} answered {length} bytes over UDP"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::task::JoinHandle;

    use super::*;
    use crate::probe::{probe_once, ProbeSpec};

    const TIMEOUT: Duration = Duration::from_millis(300);

    /// A loopback server answering every datagram with `reply`, or staying silent without one.
    async fn serve(reply: Option<&'static str>) -> (SocketAddr, JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            while let Ok((_, peer)) = socket.recv_from(&mut buffer).await {
                if let Some(reply) = reply {
                    let _ = socket.send_to(reply.as_bytes(), peer).await;
                }
            }
        });
        (address, server)
    }

    fn spec(address: SocketAddr) -> ProbeSpec {
        ProbeSpec::Udp(UdpSpec {
            address,
            send: "ping".into(),
            expect: "pong".into(),
        })
    }

    #[tokio::test]
    async fn expected_reply_succeeds() {
        let (address, server) = serve(Some("+pong ready")).await;
        let result = probe_once(&spec(address), Duration::from_secs(2)).await;
        assert!(result.success, "{}", result.detail);
        server.abort();
    }

    #[tokio::test]
    async fn wrong_reply_fails() {
        let (address, server) = serve(Some("busy")).await;
        let result = probe_once(&spec(address), Duration::from_secs(2)).await;
        assert!(!result.success);
        assert!(result.detail.contains("pong"), "{}", result.detail);
        server.abort();
    }

    #[tokio::test]
    async fn silence_fails_at_the_timeout() {
        let (address, server) = serve(None).await;
        let start = Instant::now();
        let result = probe_once(&spec(address), TIMEOUT).await;
        let elapsed = start.elapsed();
        assert!(!result.success);
        assert!(elapsed >= TIMEOUT, "{elapsed:?}");
        assert!(elapsed < TIMEOUT * 5, "{elapsed:?}");
        server.abort();
    }
}
