//! The event path out: a bounded queue in front of the PUB socket, batching a backlog.
//!
//! zmq.rs's PUB never applies backpressure (it queues up to 100,000 frames per
//! subscriber), so this queue is where the node's own bound and drop policy live.
//! When the queue is idle an event goes out alone at once; when a backlog has built
//! up, consecutive events of one topic are joined into one batch frame of at most
//! `limits.batch_max_bytes`, which cuts per-frame costs several fold.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

use mlmesh_protocol::{encode_batch, Topic};

use crate::node::{bump, BuildError, Inner};

/// Most envelopes in one batch frame.
const BATCH_MAX_COUNT: usize = 1024;

/// Largest message a subscriber may send to a PUB (a subscription: a topic prefix).
const MAX_SUBSCRIPTION: usize = 1024;

/// How long a leaving node may spend handing its queued events to the socket.
const DRAIN: Duration = Duration::from_millis(500);

/// How long, after the goodbye, the socket may take to write what it holds (to
/// subscribers that keep up; a stalled one holds it this long).
const LINGER: Duration = Duration::from_millis(500);

/// How often the linger looks at what the socket still has to write.
const LINGER_POLL: Duration = Duration::from_millis(2);

/// The longest a graceful shutdown waits for the publisher to flush and say goodbye.
pub(crate) const FLUSH_BOUND: Duration = DRAIN
    .saturating_add(LINGER)
    .saturating_add(Duration::from_millis(200));

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
    socket: PubSocket,
    mut queue: mpsc::Receiver<Outgoing>,
    mut control: mpsc::Receiver<Outgoing>,
) {
    let mut out = Batcher::new(&inner, socket);
    loop {
        let first = match out.held.take() {
            Some(first) => first,
            None => tokio::select! {
                biased;
                Some(first) = control.recv() => first,
                Some(first) = queue.recv() => first,
                // Reached only with both lanes empty at this instant.
                _ = inner.leaving.cancelled() => break,
                // Dropped without `shutdown`: no flush, no goodbye.
                _ = inner.cancel.cancelled() => return,
                else => break,
            },
        };
        out.send(first, &mut queue).await;
    }
    leave(&inner, out, &mut queue, &mut control).await;
}

/// The graceful end: every event still queued goes out (bounded by [`DRAIN`]), then the
/// leaving heartbeat, last, since a peer stops listening when it arrives; then the socket
/// writes all of it to its subscribers' connections (bounded by [`LINGER`]).
async fn leave(
    inner: &Inner,
    mut out: Batcher<'_>,
    queue: &mut mpsc::Receiver<Outgoing>,
    control: &mut mpsc::Receiver<Outgoing>,
) {
    let until = Instant::now() + DRAIN;
    while Instant::now() < until {
        let next = out
            .held
            .take()
            .or_else(|| control.try_recv().ok())
            .or_else(|| queue.try_recv().ok());
        let Some(first) = next else { break };
        out.send(first, queue).await;
    }
    let left = queue.len() + usize::from(out.held.is_some());
    if left > 0 {
        bump(&inner.counters.events_dropped, left as u64);
        tracing::warn!(node = %inner.config.node.name, left, "events still queued at shutdown were dropped");
    }
    if let Some(goodbye) = inner.heartbeat_message(true) {
        let mut msg = ZmqMessage::from(Bytes::copy_from_slice(goodbye.topic.as_str().as_bytes()));
        msg.push_back(goodbye.frame);
        let _ = out.socket.send(msg).await;
    }
    // zmq.rs's `send` only queues: a fan-out task and a writer task per subscriber put the
    // frames on the wire, and dropping the socket (or the process exiting) ends them.
    let until = Instant::now() + LINGER;
    loop {
        let unwritten = inner.pub_state.unwritten().await;
        if unwritten == 0 {
            break;
        }
        if Instant::now() >= until {
            tracing::debug!(node = %inner.config.node.name, unwritten, "PUB linger ended with frames unwritten");
            break;
        }
        tokio::time::sleep(LINGER_POLL).await;
    }
    inner.flushed.cancel();
}

/// Sends what the queue holds, joining a backlog of one topic into batch frames.
struct Batcher<'a> {
    inner: &'a Inner,
    socket: PubSocket,
    /// An event taken from the queue that did not fit the last batch.
    held: Option<Outgoing>,
    parts: Vec<Bytes>,
}

impl<'a> Batcher<'a> {
    fn new(inner: &'a Inner, socket: PubSocket) -> Self {
        Self {
            inner,
            socket,
            held: None,
            parts: Vec::with_capacity(64),
        }
    }

    /// Sends `first`, batched with what is already waiting behind it (an idle queue
    /// adds no delay).
    async fn send(&mut self, first: Outgoing, queue: &mut mpsc::Receiver<Outgoing>) {
        let budget = self.inner.config.limits.batch_max_bytes;
        let parts = &mut self.parts;
        let mut size = first.frame.len();
        let topic = first.topic;
        parts.clear();
        parts.push(first.frame);
        // Released once per frame below: a release takes the semaphore's lock.
        let mut permits = first.budget;
        while parts.len() < BATCH_MAX_COUNT {
            let Ok(next) = queue.try_recv() else { break };
            if next.topic != topic || size + next.frame.len() > budget {
                self.held = Some(next);
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
        if let Err(e) = self.socket.send(msg).await {
            tracing::warn!(error = %e, "PUB send failed");
        }
        bump(&self.inner.counters.frames_published, 1);
    }
}
