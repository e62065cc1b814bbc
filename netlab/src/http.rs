//! A small HTTP/1.1 server and client for the lab's backends and traffic driver: every GET is
//! answered `200` with the backend's name, so a client learns which backend served it.
//!
//! Std only, because netlab must stay buildable without the eBPF toolchain or an async runtime:
//! one thread per connection (bounded), keep-alive, and every read with a timeout. It speaks
//! just enough HTTP for the lab: no chunked request bodies, no pipelining guarantees.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

/// The most connections a server handles at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection idle this long is closed by the server.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest request or response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest body accepted (requests are discarded, responses kept).
const MAX_BODY: usize = 1024 * 1024;
/// `/slow` streams one line this often ...
const SLOW_PERIOD: Duration = Duration::from_millis(100);
/// ... this many times.
const SLOW_LINES: u32 = 50;

/// Serves `listener` until accepting fails: every GET gets `200` and the body `<name>\n`;
/// `/slow` streams that line every 100 ms for 5 s (chunked), to hold a connection busy.
pub fn serve(listener: TcpListener, name: &str) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let body: Arc<str> = Arc::from(format!("{name}\n"));
    loop {
        let (stream, _) = match listener.accept() {
            Ok(accepted) => accepted,
            // A connection reset before accept is the peer's problem, not the server's.
            Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(error) => return Err(error),
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let active = Arc::clone(&active);
        let body = Arc::clone(&body);
        let spawned = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                let _ = connection(stream, &body);
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            // The closure (and its guard on `active`) was dropped with the error.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One request head, as far as the lab needs it.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    keep_alive: bool,
    content_length: usize,
}

/// Parses a request head (request line and headers, without the blank line).
fn parse_request(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut words = lines.next()?.split(' ');
    let method = words.next()?.to_owned();
    let path = words.next()?.to_owned();
    let version = words.next()?;
    // HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes unless told otherwise
    // (RFC 9112 section 9.3).
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length = 0;
    for line in lines {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if key.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok()?;
        }
    }
    Some(Request {
        method,
        path,
        keep_alive,
        content_length,
    })
}

/// Reads one head (up to the blank line), its lines joined by CRLF without the line ends;
/// `None` at a clean end of stream before any byte.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut lines: Vec<String> = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        total += n;
        if total > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let line = String::from_utf8(line)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "head is not UTF-8"))?;
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if lines.is_empty() {
                // Tolerate a stray blank line between messages (RFC 9112 section 2.2).
                continue;
            }
            return Ok(Some(lines.join("\r\n")));
        }
        lines.push(line.to_owned());
    }
}

fn connection(stream: TcpStream, body: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let Some(request) = parse_request(&head) else {
            writer.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )?;
            return Ok(());
        };
        if request.content_length > MAX_BODY {
            writer.write_all(
                b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )?;
            return Ok(());
        }
        io::copy(
            &mut reader.by_ref().take(request.content_length as u64),
            &mut io::sink(),
        )?;
        let connection = if request.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        if request.method != "GET" && request.method != "HEAD" {
            write!(writer, "HTTP/1.1 405 Method Not Allowed\r\nallow: GET, HEAD\r\ncontent-length: 0\r\nconnection: {connection}\r\n\r\n")?;
        } else if request.path == "/slow" && request.method == "GET" {
            write!(writer, "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: {connection}\r\n\r\n")?;
            for _ in 0..SLOW_LINES {
                write!(writer, "{:x}\r\n{body}\r\n", body.len())?;
                std::thread::sleep(SLOW_PERIOD);
            }
            writer.write_all(b"0\r\n\r\n")?;
        } else {
            write!(writer, "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n", body.len())?;
            if request.method == "GET" {
                writer.write_all(body.as_bytes())?;
            }
        }
        writer.flush()?;
        if !request.keep_alive {
            return Ok(());
        }
    }
}

/// A response as the lab's client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Whether the server will close the connection after this response.
    pub close: bool,
}

/// An HTTP/1.1 client on one connection: GET requests one at a time, keep-alive.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Client {
    /// Connects to `address` within `timeout`; every later read and write is bounded by it too.
    pub fn connect(address: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            host: address.to_string(),
        })
    }

    /// The underlying socket (to read its local address, say).
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Sends `GET path` and reads the whole response (content-length bodies only). With
    /// `keep_alive` false the request asks the server to close afterwards.
    pub fn get(&mut self, path: &str, keep_alive: bool) -> io::Result<Response> {
        let connection = if keep_alive { "keep-alive" } else { "close" };
        write!(
            self.writer,
            "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: {connection}\r\n\r\n",
            self.host
        )?;
        self.writer.flush()?;
        let head = read_head(&mut self.reader)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let response = parse_response(&head).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad response head {head:?}"),
            )
        })?;
        let (status, length, close) = response;
        if length > MAX_BODY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response body too long",
            ));
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Response {
            status,
            body,
            close: close || !keep_alive,
        })
    }
}

/// Status, content length and whether the server closes, from a response head.
fn parse_response(head: &str) -> Option<(u16, usize, bool)> {
    let mut lines = head.split("\r\n");
    let mut words = lines.next()?.split(' ');
    let version = words.next()?;
    let status = words.next()?.parse().ok()?;
    let mut close = version != "HTTP/1.1";
    let mut length = 0;
    for line in lines {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok()?;
        } else if key.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if key.eq_ignore_ascii_case("transfer-encoding") {
            // Only `/slow` answers chunked, and the client never asks for it.
            return None;
        }
    }
    Some((status, length, close))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn parses_requests() {
        let request = parse_request("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close").unwrap();
        assert_eq!(
            request,
            Request {
                method: "GET".into(),
                path: "/x".into(),
                keep_alive: false,
                content_length: 0
            }
        );
        let request =
            parse_request("GET / HTTP/1.0\r\nconnection: Keep-Alive\r\ncontent-length: 3").unwrap();
        assert!(request.keep_alive);
        assert_eq!(request.content_length, 3);
        assert!(!parse_request("GET / HTTP/1.0").unwrap().keep_alive);
        assert!(parse_request("GET").is_none());
    }

    #[test]
    fn serves_names_over_keep_alive_and_close() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, "backend7"));
        let mut client = Client::connect(address, Duration::from_secs(2)).unwrap();
        for _ in 0..3 {
            let response = client.get("/", true).unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(response.body, b"backend7\n");
            assert!(!response.close);
        }
        let response = client.get("/anything", false).unwrap();
        assert_eq!(response.body, b"backend7\n");
        assert!(response.close);
        assert!(
            client.get("/", true).is_err(),
            "the server closed the connection"
        );
    }
}
