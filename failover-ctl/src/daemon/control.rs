//! The control socket: one JSON [`Request`] per line in, one JSON [`Response`] per line out.
//! Requests are handed to the state owner; a malformed or oversized request gets an error
//! answer and changes nothing.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::Context;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream as AsyncUnixStream},
    sync::{mpsc, oneshot},
};

use super::{
    controller::Message,
    status::{Request, Response},
};

/// Longest request line accepted.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may take inside the controller (a reload with many VIPs waits for grace
/// periods).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

fn refusal(message: impl Into<String>) -> Response {
    Response { ok: false, message: message.into(), status: None }
}

/// Accepts connections until the listener fails; one task per connection.
pub async fn serve(listener: UnixListener, controller: mpsc::Sender<Message>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, controller.clone()));
            }
            Err(error) => {
                tracing::warn!("control socket accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: AsyncUnixStream, controller: mpsc::Sender<Message>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = AsyncBufReader::new(reader.take(MAX_REQUEST + 1));
    let mut line = String::new();
    let response = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => refusal("no request within 5 s"),
        Ok(Err(error)) => refusal(format!("reading the request failed: {error}")),
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST => refusal(format!("request longer than {MAX_REQUEST} bytes")),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
            Err(error) => refusal(format!("bad request: {error}")),
            Ok(request) => ask(&controller, request).await,
        },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_else(|_| "{\"ok\":false}".into());
    text.push('\n');
    let _ = writer.write_all(text.as_bytes()).await;
}

async fn ask(controller: &mpsc::Sender<Message>, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    if controller.send(Message::Control(request, reply)).await.is_err() {
        return refusal("the controller is stopping");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => refusal("the controller stopped before answering"),
        Err(_) => refusal("the controller did not answer within 60 s"),
    }
}

/// Sends `request` to the daemon listening on `socket` and waits for its answer.
pub fn request(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!("connecting to {} failed: is `failover-ctl run` running for this instance?", socket.display())
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT + Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream.take(16 * 1024 * 1024)).read_line(&mut answer)?;
    serde_json::from_str(answer.trim()).with_context(|| format!("the daemon's answer {answer:?} is not a response"))
}
