//! The flow-sync socket task: one UDP socket on `flow_sync.listen`. It forwards what arrives
//! (decoded, or why not) and a tick every `interval` to the state owner, and sends the datagrams
//! the state owner hands it to every peer. No decisions here.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::{net::UdpSocket, sync::mpsc, task::JoinHandle};

use super::{codec, Input};
use crate::config::FlowSync;

/// Datagrams waiting to be sent: a few ticks' worth; the state owner counts what does not fit.
const QUEUE: usize = 8;

/// The state owner's handle: where it hands datagrams to send.
pub struct Outgoing {
    sender: mpsc::Sender<Vec<Vec<u8>>>,
}

impl Outgoing {
    /// Queues one tick's datagrams for every peer; false when the queue is full (the socket
    /// task is behind) or gone.
    pub fn send(&self, datagrams: Vec<Vec<u8>>) -> bool {
        self.sender.try_send(datagrams).is_ok()
    }
}

/// Binds `settings.listen` and starts the task, which hands each input to `inputs` and ends
/// when their receiver is gone.
pub async fn start(settings: &FlowSync, inputs: mpsc::Sender<Input>) -> anyhow::Result<(Outgoing, JoinHandle<()>)> {
    let socket = UdpSocket::bind(settings.listen).await.with_context(|| format!("flow_sync.listen {}", settings.listen))?;
    let (sender, receiver) = mpsc::channel(QUEUE);
    let handle = tokio::spawn(run(socket, settings.peers.clone(), settings.interval, receiver, inputs));
    Ok((Outgoing { sender }, handle))
}

async fn run(socket: UdpSocket, peers: Vec<SocketAddr>, interval: Duration, mut outgoing: mpsc::Receiver<Vec<Vec<u8>>>, inputs: mpsc::Sender<Input>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One byte more than a datagram may be: a longer one arrives truncated and fails its length.
    let mut buffer = vec![0u8; codec::MAX_DATAGRAM + 1];
    loop {
        let input = tokio::select! {
            _ = ticks.tick() => Input::Tick,
            received = socket.recv_from(&mut buffer) => match received {
                Ok((length, from)) if peers.contains(&from) => {
                    Input::Received { from, datagram: codec::decode(&buffer[..length]) }
                }
                Ok((_, from)) => Input::Stranger { from },
                Err(error) => {
                    tracing::warn!("flow sync: receiving: {error}");
                    continue;
                }
            },
            batch = outgoing.recv() => {
                let Some(datagrams) = batch else { return };
                for datagram in &datagrams {
                    for peer in &peers {
                        // A peer that is down refuses (ICMP unreachable): the next tick tries again.
                        if let Err(error) = socket.send_to(datagram, peer).await {
                            tracing::debug!("flow sync: sending to {peer}: {error}");
                        }
                    }
                }
                continue;
            }
        };
        if inputs.send(input).await.is_err() {
            return;
        }
    }
}
