//! The event path out: a bounded queue in front of the PUB socket, batching a backlog.
//!
//! zmq.rs's PUB never applies backpressure (it queues up to 100,000 frames per
//! subscriber), so this queue ([`queue::Outbox`]) is where the node's own bounds (in
//! events and in bytes) and drop policy live. `publish` encodes each event straight into
//! the open batch of its topic at the queue's tail; the publisher task takes a whole
//! batch per lock and sends it as one frame. When the queue is idle an event goes out
//! alone at once; when a backlog builds up, consecutive events of one topic share a
//! batch frame of at most `limits.batch_max_bytes`, which cuts per-frame costs several
//! fold. Heartbeats go on a lane of their own, ahead of queued events.

mod queue;

pub(crate) use queue::{Offer, Outbox};

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

use mlmesh_protocol::Topic;

use crate::node::{bump, BuildError, Inner};

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

/// An encoded envelope for the control lane (heartbeats).
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) topic: Topic,
    pub(crate) frame: Bytes,
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
    mut control: mpsc::Receiver<Outgoing>,
) {
    let mut out = Sender {
        inner: &inner,
        socket,
    };
    loop {
        // Heartbeats first, then one batch per turn.
        if let Ok(hb) = control.try_recv() {
            out.send(hb.topic, hb.frame).await;
            continue;
        }
        if let Some((batch, backlog)) = inner.outbox.pop_with_backlog() {
            // A batch with nothing behind it is fanned out to the subscribers' queues
            // right here (latency); a backlog leaves that to zmq.rs's fan-out task, which
            // runs beside this one (throughput).
            let frame = batch.body.finish();
            if backlog {
                out.send(batch.topic, frame).await;
            } else {
                out.send_now(batch.topic, frame).await;
            }
            continue;
        }
        tokio::select! {
            biased;
            Some(hb) = control.recv() => out.send(hb.topic, hb.frame).await,
            _ = inner.outbox.ready.notified() => {}
            // Reached only with both lanes empty at this instant.
            _ = inner.leaving.cancelled() => break,
            // Dropped without `shutdown`: no flush, no goodbye.
            _ = inner.cancel.cancelled() => {
                inner.outbox.close();
                return;
            }
        }
    }
    leave(&inner, out, &mut control).await;
}

/// The graceful end: every event still queued goes out (bounded by [`DRAIN`]), then the
/// leaving heartbeat, last, since a peer stops listening when it arrives; then the socket
/// writes all of it to its subscribers' connections (bounded by [`LINGER`]).
async fn leave(inner: &Inner, mut out: Sender<'_>, control: &mut mpsc::Receiver<Outgoing>) {
    let until = Instant::now() + DRAIN;
    while Instant::now() < until {
        if let Ok(hb) = control.try_recv() {
            out.send(hb.topic, hb.frame).await;
            continue;
        }
        let Some(batch) = inner.outbox.pop() else {
            break;
        };
        out.send(batch.topic, batch.body.finish()).await;
    }
    let left = inner.outbox.close();
    if left > 0 {
        bump(&inner.counters.events_dropped, left as u64);
        tracing::warn!(node = %inner.config.node.name, left, "events still queued at shutdown were dropped");
    }
    if let Some(goodbye) = inner.heartbeat_message(true) {
        out.send(goodbye.topic, goodbye.frame).await;
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

/// The PUB socket, as the publisher task writes to it.
struct Sender<'a> {
    inner: &'a Inner,
    socket: PubSocket,
}

impl Sender<'_> {
    /// Sends one event message: the topic frame, then the body (SPEC 5.2).
    async fn send(&mut self, topic: Topic, body: Bytes) {
        let msg = Self::message(&topic, body);
        if let Err(e) = self.socket.send(msg).await {
            tracing::warn!(error = %e, "PUB send failed");
        }
        bump(&self.inner.counters.frames_published, 1);
    }

    /// As [`Sender::send`], handing the message to the subscribers' queues before it
    /// returns when no earlier message is still being fanned out (one task hop less).
    async fn send_now(&mut self, topic: Topic, body: Bytes) {
        let msg = Self::message(&topic, body);
        if let Err(e) = self.socket.send_now(msg).await {
            tracing::warn!(error = %e, "PUB send failed");
        }
        bump(&self.inner.counters.frames_published, 1);
    }

    fn message(topic: &Topic, body: Bytes) -> ZmqMessage {
        let mut msg = ZmqMessage::from(Bytes::copy_from_slice(topic.as_str().as_bytes()));
        msg.push_back(body);
        msg
    }
}
