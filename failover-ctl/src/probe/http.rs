//! HTTP and HTTPS GET probe: a backend is healthy when it answers the expected status and, if asked, a body containing a given text.

use std::{net::SocketAddr, time::Duration};

use super::ProbeError;

/// How much of the body is searched for the expected text; a health page is small.
const BODY_LIMIT: usize = 64 * 1024;

/// What an HTTP probe asks and expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSpec {
    pub address: SocketAddr,
    /// Host header and TLS server name; the address is used when absent.
    pub host: Option<String>,
    pub path: String,
    pub tls: bool,
    /// Skips certificate verification. Off unless asked for: a health check that trusts anything
    /// cannot tell the backend from an impostor.
    pub accept_invalid_certificates: bool,
    pub expect_status: u16,
    pub body_contains: Option<String>,
}

/// An HTTP probe with its client built once, reused by every attempt.
pub struct HttpProbe {
    client: reqwest::Client,
    address: SocketAddr,
    url: String,
    expect_status: u16,
    body_contains: Option<String>,
}

impl HttpProbe {
    /// Builds the client for `spec`; `timeout` also bounds the client's own request.
    pub fn new(spec: &HttpSpec, timeout: Duration) -> Result<Self, ProbeError> {
        let address = spec.address;
        let host = spec.host.as_deref();
        let path = spec.path.as_str();
        let scheme = if spec.tls { "https" } else { "http" };
        let authority = match host {
            Some(host) => format!("{host}:{}", address.port()),
            None => address.to_string(),
        };
        let separator = if path.starts_with('/') { "" } else { "/" };
        let url = format!("{scheme}://{authority}{separator}{path}");

        // No proxy from the environment, no redirects and no pooled connection: the probe must
        // reach this backend itself, every time.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .timeout(timeout)
            .danger_accept_invalid_certs(spec.accept_invalid_certificates);
        if let Some(host) = host {
            // The Host header and TLS server name carry the name, the connection goes to the backend.
            builder = builder.resolve(host, address);
        }
        let client = builder
            .build()
            .map_err(|source| ProbeError::Client { address, source })?;
        Ok(Self {
            client,
            address,
            url,
            expect_status: spec.expect_status,
            body_contains: spec.body_contains.clone(),
        })
    }

    /// One GET; the caller bounds it with a timeout.
    pub async fn run(&self) -> Result<String, ProbeError> {
        let request_error = |source| ProbeError::Request {
            address: self.address,
            url: self.url.clone(),
            source,
        };
        let mut response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status().as_u16();
        if status != self.expect_status {
            return Err(ProbeError::Status {
                address: self.address,
                url: self.url.clone(),
                status,
                expected: self.expect_status,
            });
        }
        if let Some(expected) = &self.body_contains {
            let mut body = Vec::new();
            while body.len() < BODY_LIMIT {
                match response.chunk().await.map_err(request_error)? {
                    Some(chunk) => body.extend_from_slice(&chunk),
                    None => break,
                }
            }
            if !String::from_utf8_lossy(&body).contains(expected.as_str()) {
                return Err(ProbeError::Body {
                    address: self.address,
                    url: self.url.clone(),
                    expected: expected.clone(),
                });
            }
        }
        Ok(format!("{} answered {status}", self.url))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        task::JoinHandle,
    };

    use super::*;
    use crate::probe::test_support::*;
    use crate::probe::{probe_once, ProbeSpec};

    const TIMEOUT: Duration = Duration::from_millis(300);

    /// A loopback server answering every request with `status` and `body`, then closing.
    async fn serve(status: &'static str, body: &'static str) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                // Read until the end of the headers; a GET has no body.
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(count) => request.extend_from_slice(&buffer[..count]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        (address, server)
    }

    fn spec(address: SocketAddr, body_contains: Option<&str>) -> ProbeSpec {
        ProbeSpec::Http(HttpSpec {
            address,
            host: None,
            path: "/health".into(),
            tls: false,
            accept_invalid_certificates: false,
            expect_status: 200,
            body_contains: body_contains.map(str::to_owned),
        })
    }

    #[tokio::test]
    async fn ok_with_matching_body_succeeds() {
        let (address, server) = serve("200 OK", "status: ready").await;
        let result = probe_once(&spec(address, Some("ready")), Duration::from_secs(2)).await;
        assert!(result.success, "{}", result.detail);
        server.abort();
    }

    #[tokio::test]
    async fn host_name_is_resolved_to_the_backend_address() {
        let (address, server) = serve("200 OK", "ok").await;
        let spec = ProbeSpec::Http(HttpSpec {
            address,
            host: Some("backend.example".into()),
            path: "health".into(),
            tls: false,
            accept_invalid_certificates: false,
            expect_status: 200,
            body_contains: None,
        });
        let result = probe_once(&spec, Duration::from_secs(2)).await;
        assert!(result.success, "{}", result.detail);
        assert!(
            result.detail.contains("http://backend.example:"),
            "{}",
            result.detail
        );
        server.abort();
    }

    #[tokio::test]
    async fn service_unavailable_fails() {
        let (address, server) = serve("503 Service Unavailable", "").await;
        let result = probe_once(&spec(address, None), Duration::from_secs(2)).await;
        assert!(!result.success);
        assert!(result.detail.contains("503"), "{}", result.detail);
        server.abort();
    }

    #[tokio::test]
    async fn body_mismatch_fails() {
        let (address, server) = serve("200 OK", "status: draining").await;
        let result = probe_once(&spec(address, Some("ready")), Duration::from_secs(2)).await;
        assert!(!result.success);
        assert!(result.detail.contains("ready"), "{}", result.detail);
        server.abort();
    }

    #[tokio::test]
    async fn silent_server_fails_at_the_timeout() {
        let (address, holder) = silent_server().await;
        let start = Instant::now();
        let result = probe_once(&spec(address, None), TIMEOUT).await;
        assert!(!result.success);
        assert!(start.elapsed() < TIMEOUT * 5, "{:?}", start.elapsed());
        holder.abort();
    }

    #[tokio::test]
    async fn closed_port_fails() {
        let address = unused_port();
        let result = probe_once(&spec(address, None), Duration::from_secs(2)).await;
        assert!(!result.success);
        assert!(
            result.detail.contains(&address.to_string()),
            "{}",
            result.detail
        );
    }

    #[tokio::test]
    async fn https_handshake_failure_fails_without_panicking() {
        // A server that closes every connection at once: the TLS handshake cannot complete.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let spec = ProbeSpec::Http(HttpSpec {
            address,
            host: Some("localhost".into()),
            path: "/".into(),
            tls: true,
            accept_invalid_certificates: false,
            expect_status: 200,
            body_contains: None,
        });
        let result = probe_once(&spec, Duration::from_secs(2)).await;
        assert!(!result.success);
        assert!(
            result.detail.starts_with("HTTP request https://localhost:"),
            "{}",
            result.detail
        );
        server.abort();
    }
}
