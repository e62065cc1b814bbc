//! The hostile servers of `hostile_probes.rs`: loopback listeners on threads of their own that
//! answer every connection the way one [`Behaviour`] says, count what they sent, and stop (and
//! join) when dropped.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// A hostile server's connections live at most this long, whatever the test does.
const SERVER_LIFETIME: Duration = Duration::from_secs(30);
/// At most this many connections are served; later ones are closed at once.
const MAX_CONNECTIONS: usize = 256;

/// What a hostile server does with each connection it accepts.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Not hostile: answers `200 ok` and closes.
    Healthy,
    /// Reads the request and never answers.
    Silent,
    /// A 200 status without a length, then body bytes until the client leaves.
    EndlessBody,
    /// A status line, then one header line after another until the client leaves.
    EndlessHeaders,
    /// A status line, then one header whose value never ends.
    EndlessHeaderLine,
    /// A complete and valid answer, one byte every 100 ms: 4 s in all.
    Slowloris,
    /// Pseudo-random bytes until the client leaves.
    Garbage,
    /// A Redis bulk string announcing 999999999 bytes, then bytes until the client leaves.
    HugeBulkString,
    /// A Redis simple string that never ends.
    EndlessLine,
    /// Resets the connection as soon as it is accepted (SO_LINGER 0, then close).
    Reset,
}

/// What the hostile server saw, shared with its threads.
#[derive(Default)]
pub struct Tally {
    accepted: AtomicUsize,
    open: AtomicUsize,
    /// The most bytes one connection got out.
    largest: AtomicU64,
}

/// A loopback server on its own threads, so that it does not compete with the runtime under
/// test. Dropping it stops and joins every thread.
pub struct Hostile {
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    acceptor: Option<JoinHandle<()>>,
}

impl Hostile {
    pub fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let acceptor = {
            let (stop, tally) = (stop.clone(), tally.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + SERVER_LIFETIME;
                let mut workers = Vec::new();
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if tally.accepted.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        continue;
                    }
                    tally.open.fetch_add(1, Ordering::SeqCst);
                    let (stop, tally) = (stop.clone(), tally.clone());
                    workers.push(thread::spawn(move || {
                        let sent = serve(behaviour, stream, &stop, deadline);
                        tally.largest.fetch_max(sent, Ordering::SeqCst);
                        tally.open.fetch_sub(1, Ordering::SeqCst);
                    }));
                }
                for worker in workers {
                    let _ = worker.join();
                }
            })
        };
        Self {
            address,
            stop,
            tally,
            acceptor: Some(acceptor),
        }
    }

    pub fn accepted(&self) -> usize {
        self.tally.accepted.load(Ordering::SeqCst)
    }

    pub fn largest_sent(&self) -> u64 {
        self.tally.largest.load(Ordering::SeqCst)
    }

    /// Waits until every accepted connection has been closed by the client, at most `limit`.
    /// Asynchronous: the client's connection tasks need the runtime to close.
    pub async fn wait_all_closed(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.tally.open.load(Ordering::SeqCst) == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Fills a chunk with the next bytes to send.
type Refill = Box<dyn FnMut(&mut Vec<u8>)>;

/// Serves one connection as `behaviour` says until the client leaves, the test stops or the
/// deadline passes; returns the bytes written.
fn serve(behaviour: Behaviour, mut stream: TcpStream, stop: &AtomicBool, deadline: Instant) -> u64 {
    let tick = Duration::from_millis(50);
    stream.set_read_timeout(Some(tick)).unwrap();
    stream.set_write_timeout(Some(tick)).unwrap();
    let running = || !stop.load(Ordering::SeqCst) && Instant::now() < deadline;
    if matches!(
        behaviour,
        Behaviour::Healthy
            | Behaviour::EndlessBody
            | Behaviour::EndlessHeaders
            | Behaviour::EndlessHeaderLine
            | Behaviour::Slowloris
    ) {
        // An HTTP client reads no answer before its request is out.
        read_request_head(&mut stream);
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    // The endless ones: a prefix, then chunk after chunk until the client leaves.
    let (prefix, mut refill): (&[u8], Refill) = match behaviour {
        Behaviour::Silent => {
            let mut buffer = [0u8; 4096];
            while running() {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(error) if is_timeout(&error) => {}
                    Err(_) => break,
                }
            }
            return 0;
        }
        Behaviour::Healthy => {
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
            return match stream.write_all(answer) {
                Ok(()) => answer.len() as u64,
                Err(_) => 0,
            };
        }
        Behaviour::Reset => {
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            return 0;
        }
        Behaviour::Slowloris => {
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            let mut sent = 0;
            for byte in answer {
                if !running() || stream.write_all(&[*byte]).is_err() {
                    break;
                }
                sent += 1;
                thread::sleep(Duration::from_millis(100));
            }
            return sent;
        }
        Behaviour::EndlessBody => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
            Box::new(|chunk| chunk.fill(b'a')),
        ),
        Behaviour::EndlessHeaders => {
            let mut line = 0u64;
            (
                b"HTTP/1.1 200 OK\r\n",
                Box::new(move |chunk| {
                    chunk.clear();
                    while chunk.len() < 60_000 {
                        line += 1;
                        chunk.extend_from_slice(format!("X-Padding-{line}: a\r\n").as_bytes());
                    }
                }),
            )
        }
        Behaviour::EndlessHeaderLine => (
            b"HTTP/1.1 200 OK\r\nX-Padding: ",
            Box::new(|chunk| chunk.fill(b'a')),
        ),
        Behaviour::Garbage => (
            b"",
            Box::new(move |chunk| {
                for byte in chunk.iter_mut() {
                    // xorshift64: cheap, reproducible noise.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *byte = seed as u8;
                }
            }),
        ),
        Behaviour::HugeBulkString => (b"$999999999\r\n", Box::new(|chunk| chunk.fill(b'a'))),
        Behaviour::EndlessLine => (b"+", Box::new(|chunk| chunk.fill(b'a'))),
    };
    let mut sent = 0u64;
    let mut chunk = prefix.to_vec();
    let mut offset = 0;
    while running() {
        if offset == chunk.len() {
            chunk.resize(64 * 1024, 0);
            refill(&mut chunk);
            offset = 0;
        }
        match stream.write(&chunk[offset..]) {
            Ok(0) => break,
            Ok(count) => {
                offset += count;
                sent += count as u64;
            }
            Err(error) if is_timeout(&error) => {}
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    sent
}

/// Reads until the end of an HTTP request head, at most 64 KiB or 1 s.
fn read_request_head(stream: &mut TcpStream) {
    let start = Instant::now();
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    while !request.windows(4).any(|window| window == b"\r\n\r\n")
        && request.len() < 64 * 1024
        && start.elapsed() < Duration::from_secs(1)
    {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => request.extend_from_slice(&buffer[..count]),
            Err(error) if is_timeout(&error) => {}
            Err(_) => return,
        }
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

