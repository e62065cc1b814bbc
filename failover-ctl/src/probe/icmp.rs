//! ICMP echo probe: a backend is healthy when it answers an echo request.
//!
//! `surge-ping` opens an unprivileged ICMP datagram socket where `net.ipv4.ping_group_range`
//! allows it and falls back to a raw socket (root or `CAP_NET_RAW`) otherwise.

use std::{net::IpAddr, time::Duration};

use surge_ping::{Client, Config, PingIdentifier, PingSequence, ICMP};

use super::ProbeError;

/// The echo payload; its content does not matter, only that the reply carries it back.
const PAYLOAD: &[u8] = b"failover health probe";

/// Sends one echo request to `address` and waits up to `timeout` for the reply.
pub async fn probe(address: IpAddr, timeout: Duration) -> Result<String, ProbeError> {
    let icmp_error = |source| ProbeError::Echo { address, source };
    let kind = match address {
        IpAddr::V4(_) => ICMP::V4,
        IpAddr::V6(_) => ICMP::V6,
    };
    let client = Client::new(&Config::builder().kind(kind).build())
        .map_err(|source| icmp_error(source.into()))?;
    // A random identifier keeps concurrent probes of the same address from taking each other's replies.
    let mut pinger = client.pinger(address, PingIdentifier(rand::random())).await;
    pinger.timeout(timeout);
    let (_, round_trip) = pinger
        .ping(PingSequence(0), PAYLOAD)
        .await
        .map_err(icmp_error)?;
    Ok(format!("{address} answered an echo in {round_trip:?}"))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::probe::{probe_once, ProbeSpec};

    #[tokio::test]
    async fn loopback_answers() {
        let spec = ProbeSpec::Icmp {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        };
        let result = probe_once(&spec, Duration::from_secs(2)).await;
        let refused = result.detail.contains("Operation not permitted")
            || result.detail.contains("Permission denied");
        // Without root the kernel may refuse the socket (net.ipv4.ping_group_range); as root a
        // refusal is a failure.
        if !result.success && refused && !netlab::prerequisite::root("an ICMP socket") {
            return;
        }
        assert!(result.success, "{}", result.detail);
    }
}
