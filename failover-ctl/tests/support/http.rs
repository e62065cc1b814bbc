//! Backend HTTP servers that name themselves in every answer and can be killed and restarted,
//! and the clients that learn which backend answered.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use netlab::Namespace;

use super::topology::*;

/// An HTTP server on port `port` of every address of a backend namespace: answers every GET
/// with `200` and its name, keeps connections alive. Killing it closes the listener (new
/// connects get a reset) and every open connection.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(ns: &Namespace, port: u16, name: &str) -> Self {
        let listener = ns
            .enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let stop = stop.clone();
            let connections = connections.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            if let Ok(copy) = stream.try_clone() {
                                connections.lock().unwrap().push(copy);
                            }
                            let name = name.clone();
                            std::thread::spawn(move || serve_connection(stream, &name));
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                // The listener closes here: connects get a reset from now on.
            })
        };
        Self {
            stop,
            connections,
            accept: Some(accept),
        }
    }

    /// Closes the listener, then every connection.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve_connection(stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        // Read one request head; bodies are not expected.
        let mut close = false;
        let mut first = true;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                if first {
                    continue;
                }
                break;
            }
            first = false;
            if line.to_ascii_lowercase().starts_with("connection:")
                && line.to_ascii_lowercase().contains("close")
            {
                close = true;
            }
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{name}",
            name.len()
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// A keep-alive HTTP connection through the VIP.
pub struct Connection {
    reader: BufReader<TcpStream>,
    /// The backend that answered the first request.
    pub backend: String,
}

/// Sends one GET on `reader`'s stream and returns the body.
fn get(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    reader
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    let n = reader
        .read_line(&mut status)
        .map_err(|e| format!("read status: {e}"))?;
    if n == 0 {
        return Err("connection closed before the answer".into());
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {status:?}"));
    }
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .map_err(|e| format!("read header: {e}"))?
            == 0
        {
            return Err("connection closed in the head".into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.ok_or("no content-length")?];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    String::from_utf8(body).map_err(|e| e.to_string())
}

impl Connection {
    /// Connects from the client namespace to the VIP and makes a first request.
    pub fn open(client: &Namespace, port: u16) -> Result<Self, String> {
        let stream = client
            .enter(|| TcpStream::connect_timeout(&SocketAddr::from((VIP, port)), IO_TIMEOUT))
            .unwrap()
            .map_err(|e| format!("connect: {e}"))?;
        Self::first_request(stream)
    }

    /// As [`Connection::open`], from client port `local_port`: the same 5-tuple again and
    /// again, as a client reusing its ports does (close it with [`Connection::reset`], which
    /// leaves no TIME_WAIT behind).
    pub fn open_from(client: &Namespace, port: u16, local_port: u16) -> Result<Self, String> {
        let stream = client
            .enter(|| -> std::io::Result<TcpStream> {
                let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, local_port)).into())?;
                socket.connect_timeout(&SocketAddr::from((VIP, port)).into(), IO_TIMEOUT)?;
                Ok(socket.into())
            })
            .unwrap()
            .map_err(|e| format!("connect from port {local_port}: {e}"))?;
        Self::first_request(stream)
    }

    /// Closes with a reset (SO_LINGER 0): no TIME_WAIT, so the port is free at once.
    pub fn reset(self) {
        let socket = socket2::Socket::from(self.reader.into_inner());
        socket.set_linger(Some(Duration::ZERO)).unwrap();
    }

    fn first_request(stream: TcpStream) -> Result<Self, String> {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut reader = BufReader::new(stream);
        let backend = get(&mut reader)?;
        Ok(Self { reader, backend })
    }

    /// The client's port of this connection: with the VIP's port, what the router's ECMP hash
    /// and the load balancers' flow tables key it by.
    pub fn local_port(&self) -> u16 {
        self.reader.get_ref().local_addr().unwrap().port()
    }

    /// One more request on the same connection; the answer must come from the same backend.
    pub fn request(&mut self) -> Result<(), String> {
        let body = get(&mut self.reader)?;
        if body != self.backend {
            return Err(format!("answered by {body}, expected {}", self.backend));
        }
        Ok(())
    }
}

/// Opens keep-alive connections until there are `per_backend` to each backend in `wanted`.
pub fn connections_to(
    client: &Namespace,
    port: u16,
    wanted: &[&str],
    per_backend: usize,
) -> Vec<Connection> {
    let mut found: Vec<Connection> = Vec::new();
    for _ in 0..400 {
        let missing = wanted
            .iter()
            .any(|name| found.iter().filter(|c| c.backend == *name).count() < per_backend);
        if !missing {
            return found;
        }
        let connection = Connection::open(client, port).unwrap();
        if wanted.contains(&connection.backend.as_str())
            && found
                .iter()
                .filter(|c| c.backend == connection.backend)
                .count()
                < per_backend
        {
            found.push(connection);
        }
    }
    panic!("could not open {per_backend} connections to each of {wanted:?} in 400 tries");
}

/// The outcome of `count` short connections (one GET each, distinct source ports).
#[derive(Debug, Default)]
pub struct Tally {
    pub per_backend: BTreeMap<String, usize>,
    pub errors: Vec<String>,
}

impl Tally {
    pub fn count(&self, name: &str) -> usize {
        self.per_backend.get(name).copied().unwrap_or(0)
    }
    pub fn total(&self) -> usize {
        self.per_backend.values().sum()
    }
}

/// Opens `count` short connections from the client namespace, one GET each.
pub fn short_requests(client: &Namespace, port: u16, count: usize) -> Tally {
    client
        .enter(|| {
            let mut tally = Tally::default();
            for _ in 0..count {
                let result = TcpStream::connect_timeout(&SocketAddr::from((VIP, port)), IO_TIMEOUT)
                    .map_err(|e| format!("connect: {e}"))
                    .and_then(|stream| {
                        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                        get(&mut BufReader::new(stream))
                    });
                match result {
                    Ok(name) => *tally.per_backend.entry(name).or_default() += 1,
                    Err(error) => tally.errors.push(error),
                }
            }
            tally
        })
        .unwrap()
}

/// What an [`Exerciser`] hands back: its connections, the errors and the number of rounds.
pub type Exercised = (Vec<Connection>, Vec<String>, u64);

/// Sends a request on every connection every `period` on a thread until stopped; collects errors.
pub struct Exerciser {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Exercised>>,
}

impl Exerciser {
    pub fn start(mut connections: Vec<Connection>, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut rounds = 0;
            while !flag.load(Ordering::Acquire) {
                for connection in &mut connections {
                    if let Err(error) = connection.request() {
                        errors.push(format!(
                            "{} at {}: {error}",
                            connection.backend,
                            millis_now()
                        ));
                    }
                }
                rounds += 1;
                std::thread::sleep(period);
            }
            (connections, errors, rounds)
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread; returns the connections, the errors and the number of rounds.
    pub fn finish(mut self) -> Exercised {
        self.stop.store(true, Ordering::Release);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Exerciser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
