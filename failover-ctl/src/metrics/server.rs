//! The metrics endpoint's HTTP side: `GET /metrics` over HTTP/1.1 with hyper, one request per connection, bounded in number and in time.
//!
//! hyper parses the requests (and answers malformed ones: 400, 431 for a head over the size
//! bound); this module adds what an endpoint anybody on the network may reach needs: at most
//! [`Limits::connections`] at once (beyond it accepting waits), a deadline for the request
//! head and one for the whole exchange, so a client that neither writes nor reads holds a slot
//! for a bounded time. Keep-alive is off: a scrape every few seconds pays one connection setup,
//! and no idle connection holds a slot between scrapes.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

/// What the endpoint serves: the text of one scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Bounds of the endpoint's connections.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// From accept to the end of the request head; then the connection is closed unanswered.
    head_timeout: Duration,
    /// From accept to the last byte of the answer: a client that stops reading is cut off.
    exchange_timeout: Duration,
    /// Largest request head hyper buffers (it answers 431 beyond); hyper's minimum is 8 KiB.
    request_bytes: usize,
    /// Connections served at once; beyond it, accepting waits.
    connections: usize,
}

const LIMITS: Limits = Limits {
    head_timeout: Duration::from_secs(5),
    exchange_timeout: Duration::from_secs(10),
    request_bytes: 8 * 1024,
    connections: 256,
};

/// Serves `GET /metrics` (and `HEAD`) with the text `render` returns, one task per connection.
///
/// Other paths get 404, other methods on `/metrics` 405; malformed requests get hyper's 400,
/// heads over 8 KiB 431; a connection that has not sent its request head within 5 s is closed.
/// Runs until the task is aborted; accept errors (such as running out of descriptors) are
/// logged and retried after a pause.
pub async fn serve(listener: TcpListener, render: Render) {
    serve_with(listener, render, LIMITS).await;
}

async fn serve_with(listener: TcpListener, render: Render, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            // The semaphore is never closed; this only keeps the loop free of panics.
            return;
        };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let render = Arc::clone(&render);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let answer = answer(&request, render.as_ref());
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.head_timeout)
                        .max_buf_size(limits.request_bytes)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    // Errors are the client's (a reset, a bad request hyper already answered):
                    // nothing to do but close.
                    let _ = tokio::time::timeout(limits.exchange_timeout, connection).await;
                    drop(slot);
                });
            }
            Err(error) => {
                tracing::warn!("metrics endpoint: accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The answer to one request; hyper leaves the body out for `HEAD`.
fn answer(
    request: &Request<Incoming>,
    render: &(dyn Fn() -> String + Send + Sync),
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    text(StatusCode::OK, super::CONTENT_TYPE, render())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    const BODY: &str = "# HELP failover_adopted 1 when adopted.\n# TYPE failover_adopted gauge\nfailover_adopted 0\n";
    const WAIT: Duration = Duration::from_secs(5);

    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let render: Render = Arc::new(|| BODY.to_string());
        (address, tokio::spawn(serve_with(listener, render, limits)))
    }

    /// Sends `request` and reads until the server closes.
    async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
        tokio::time::timeout(WAIT, async {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(request).await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            String::from_utf8(answer).unwrap()
        })
        .await
        .expect("no answer in time")
    }

    fn status_line(answer: &str) -> &str {
        answer.split("\r\n").next().unwrap()
    }

    /// The value of header `name` (case-insensitive, as HTTP defines header names).
    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    #[tokio::test]
    async fn serves_the_rendered_text() {
        let (address, server) = start(LIMITS).await;
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(status_line(head), "HTTP/1.1 200 OK");
        assert_eq!(
            header(head, "content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert_eq!(
            header(head, "content-length"),
            Some(body.len().to_string().as_str()),
            "{head}"
        );
        assert_eq!(header(head, "connection"), Some("close"), "{head}");
        assert_eq!(body, BODY);

        // A query string does not change the path.
        let answer = exchange(address, b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");

        let answer = exchange(address, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(
            answer.ends_with("\r\n\r\n"),
            "HEAD answered with a body: {answer}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn answers_errors() {
        let (address, server) = start(LIMITS).await;
        let not_found = exchange(address, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_line(&not_found), "HTTP/1.1 404 Not Found");
        let garbage = exchange(
            address,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        )
        .await;
        assert_eq!(status_line(&garbage), "HTTP/1.1 400 Bad Request");
        let no_colon = exchange(address, b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n").await;
        assert_eq!(status_line(&no_colon), "HTTP/1.1 400 Bad Request");
        let method = exchange(
            address,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(status_line(&method), "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(header(&method, "allow"), Some("GET, HEAD"), "{method}");
        // A head that never ends is cut at the size limit, not buffered forever.
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b"X-Filler: yes\r\n".as_slice(), 1_000).flatten());
        let too_large = exchange(address, &huge).await;
        assert_eq!(
            status_line(&too_large),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        // Still serving after all that.
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        server.abort();
    }

    #[tokio::test]
    async fn a_silent_client_does_not_block_others_and_is_cut_off() {
        let limits = Limits {
            head_timeout: Duration::from_millis(500),
            ..LIMITS
        };
        let (address, server) = start(limits).await;
        let mut silent = TcpStream::connect(address).await.unwrap();
        let mut half = TcpStream::connect(address).await.unwrap();
        half.write_all(b"GET /metr").await.unwrap();

        let started = Instant::now();
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(
            started.elapsed() < limits.head_timeout,
            "served only after the silent clients timed out"
        );

        for stream in [&mut silent, &mut half] {
            let mut answer = Vec::new();
            let cut = Instant::now();
            tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
                .await
                .expect("idle connection kept open")
                .unwrap();
            // Closed without an answer: nobody is there to read one.
            assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
            assert!(
                cut.elapsed() < limits.head_timeout + Duration::from_secs(1),
                "{:?}",
                cut.elapsed()
            );
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_cut_off() {
        let limits = Limits {
            exchange_timeout: Duration::from_millis(500),
            ..LIMITS
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // An answer far larger than the socket buffers, so writing it blocks on the client.
        let render: Render = Arc::new(|| "x".repeat(32 << 20));
        let server = tokio::spawn(serve_with(listener, render, limits));
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(limits.exchange_timeout * 2).await;
        // The server gave up: reading now ends (EOF or reset) well short of the whole answer.
        let mut answer = Vec::new();
        let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
            .await
            .expect("the connection of a client that did not read was kept open");
        assert!(
            read.is_err() || answer.len() < 32 << 20,
            "{} bytes",
            answer.len()
        );
        server.abort();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let limits = Limits {
            head_timeout: Duration::from_millis(300),
            connections: 1,
            ..LIMITS
        };
        let (address, server) = start(limits).await;
        let _silent = TcpStream::connect(address).await.unwrap();
        // The only slot is taken until the silent connection times out; then this one is served.
        let started = Instant::now();
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(
            started.elapsed() >= limits.head_timeout / 2,
            "{:?}",
            started.elapsed()
        );
        server.abort();
    }
}
