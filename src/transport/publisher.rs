//! The event path out: a bounded queue in front of the PUB socket, batching a backlog.
//!
//! zmq.rs's PUB never applies backpressure (it queues up to 100,000 frames per
//! subscriber), so this queue is where the node's own bound and drop policy live.
//! When the queue is idle an event goes out alone at once; when a backlog has built
//! up, consecutive events of one topic are joined into one batch frame of at most
//! `limits.batch_max_bytes`, which cuts per-frame costs several fold.

use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

use mlmesh_protocol::{encode_batch, Topic};

use crate::node::{bump, BuildError, Inner};

/// Most envelopes in one batch frame.
const BATCH_MAX_COUNT: usize = 1024;

/// Largest message a subscriber may send to a PUB (a subscription: a topic prefix).
const MAX_SUBSCRIPTION: usize = 1024;

/// An encoded envelope on its way to the PUB socket, holding its share of the publish
/// queue's byte budget until it is handed to the socket.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) topic: Topic,
    pub(crate) frame: Bytes,
    pub(crate) budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A PUB socket whose per-subscriber queue holds `subscriber_queue` frames (zmq.rs,
/// as patched here, drops beyond that), and which accepts only small messages from
/// subscribers (subscriptions).
pub(crate) async fn bind(
    ip: Ipv4Addr,
    port: u16,
    subscriber_queue: usize,
) -> Result<(PubSocket, u16), BuildError> {
    let mut options = super::listen_options(MAX_SUBSCRIPTION);
    options.send_queue_capacity(subscriber_queue);
    let mut socket = PubSocket::with_options(options);
    let endpoint = format!("tcp://{ip}:{port}");
    let bound = socket.bind(&endpoint).await.map_err(|e| BuildError::Bind {
        socket: "pub",
        endpoint,
        reason: e.to_string(),
    })?;
    Ok((socket, super::port_of(&bound)))
}

pub(crate) async fn run(
    inner: Arc<Inner>,
    mut socket: PubSocket,
    mut queue: mpsc::Receiver<Outgoing>,
    mut control: mpsc::Receiver<Outgoing>,
) {
    let budget = inner.config.limits.batch_max_bytes;
    let mut held: Option<Outgoing> = None;
    let mut parts: Vec<Bytes> = Vec::with_capacity(64);
    loop {
        let first = match held.take() {
            Some(out) => out,
            None => tokio::select! {
                biased;
                Some(out) = control.recv() => out,
                Some(out) = queue.recv() => out,
                _ = inner.cancel.cancelled() => break,
                else => break,
            },
        };
        // Gather a batch only from what is already waiting: an idle queue adds no delay.
        let mut size = first.frame.len();
        let topic = first.topic;
        parts.clear();
        parts.push(first.frame);
        // Released once per frame below: a release takes the semaphore's lock.
        let mut permits = first.budget;
        while parts.len() < BATCH_MAX_COUNT {
            let Ok(next) = queue.try_recv() else { break };
            if next.topic != topic || size + next.frame.len() > budget {
                held = Some(next);
                break;
            }
            size += next.frame.len();
            parts.push(next.frame);
            match (&mut permits, next.budget) {
                (Some(b), Some(n)) => b.merge(n),
                (b @ None, n) => *b = n,
                (Some(_), None) => {}
            }
        }
        let body = if parts.len() == 1 {
            parts.pop().unwrap_or_default()
        } else {
            Bytes::from(encode_batch(parts.iter().map(|p| &p[..])))
        };
        drop(permits);
        let mut msg = ZmqMessage::from(Bytes::copy_from_slice(topic.as_str().as_bytes()));
        msg.push_back(body);
        if let Err(e) = socket.send(msg).await {
            tracing::warn!(error = %e, "PUB send failed");
        }
        bump(&inner.counters.frames_published, 1);
    }
    // Flush what the shutdown path left (the leaving heartbeat among it), bounded.
    while let Ok(out) = control.try_recv().or_else(|_| queue.try_recv()) {
        let mut msg = ZmqMessage::from(Bytes::copy_from_slice(out.topic.as_str().as_bytes()));
        msg.push_back(out.frame);
        let _ = socket.send(msg).await;
    }
    // Give the writer tasks a moment to put the last frames on the wire.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    drop(socket);
}
