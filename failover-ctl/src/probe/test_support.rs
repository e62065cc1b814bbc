//! Loopback fixtures shared by the probe tests.

use std::net::{SocketAddr, TcpListener};

use tokio::task::JoinHandle;

/// A loopback address nothing listens on: bound, noted, released.
pub fn unused_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

/// A loopback server that accepts connections and never answers; they stay open until the
/// returned task is aborted.
pub async fn silent_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("local address");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (address, holder)
}
