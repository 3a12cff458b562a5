//! Request streams: many requests to one topic in flight from one task, their answers
//! read as they come, the way a DEALER socket is used. A call's future, its reply
//! channel and its wake-up per request are the cost of [`NodeHandle::request`]; a
//! stream has none of them. Its requests are encoded into the frame that carries them
//! (a batch, SPEC 5.3, when the provider accepts batches), sent when its owner waits
//! for an answer, and answered in chunks, one per reply frame.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use mlmesh_protocol::{
    from_payload, to_payload, BatchBuf, Body, Code, Envelope, MessageId, NodeId, Status, Topic,
    PROTOCOL_VERSION,
};

use super::{call_local, check_size, invalid, no_responders, pick, resolve_target, Provider};
use crate::node::{Inner, NodeHandle};
use crate::transport::client::{PeerClient, Sink, StreamAnswer, BATCH_BYTES};

/// Options of a [`RequestStream`].
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Most requests in flight: sent (or about to be) and not yet read back with
    /// [`RequestStream::next`]. 100 by default; at most the node's
    /// `limits.max_in_flight`, whose slots the stream holds while it lives.
    pub window: usize,
    /// How long each request may take, from its `send`; the config's default when unset.
    pub deadline: Option<Duration>,
    /// Send to this node only.
    pub target: Option<NodeId>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            window: 100,
            deadline: None,
            target: None,
        }
    }
}

impl StreamOptions {
    /// Sets the window (most requests in flight).
    pub fn window(mut self, window: usize) -> Self {
        self.window = window;
        self
    }

    /// Sets each request's deadline.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Sends to one node.
    pub fn to(mut self, node: NodeId) -> Self {
        self.target = Some(node);
        self
    }
}

/// The answer to one request of a [`RequestStream`].
#[derive(Debug, Clone)]
pub struct StreamReply<T> {
    /// The request's id, as [`RequestStream::send`] returned it.
    pub id: MessageId,
    /// The provider's reply, or the error status: its own, or DEADLINE_EXCEEDED,
    /// UNAVAILABLE (not sent), CANCELLED (the connection was lost after sending),
    /// NO_RESPONDERS (no provider left).
    pub result: Result<T, Status>,
}

/// Many requests to one topic in flight from one task: [`send`](Self::send) queues a
/// request and returns its id at once, [`next`](Self::next) sends what was queued and
/// returns the next answer, in the order answers arrive. Every request sent gets
/// exactly one answer. Made by [`NodeHandle::request_stream`].
///
/// The stream sends to one provider at a time, picked as a call's (the least loaded
/// live one) at its first send, and picks again when that one stops being a provider
/// (suspect, gone, no longer serving the topic); requests the old one may have run are
/// answered CANCELLED if its connection is lost, never sent twice (SPEC 9.2). It holds a handle of the node, and `window` of its
/// in-flight request slots, while it lives.
#[derive(Debug)]
pub struct RequestStream {
    inner: Arc<Inner>,
    handle: NodeHandle,
    topic: Topic,
    deadline: Duration,
    target: Option<NodeId>,
    window: usize,
    _slots: OwnedSemaphorePermit,
    route: Option<Route>,
    /// Requests encoded and not sent yet, by the frame that will carry them.
    unsent: Vec<Frame>,
    /// Requests sent or queued whose answer [`next`](Self::next) has not returned.
    in_flight: usize,
    sink: Sink,
    answers: mpsc::UnboundedReceiver<Vec<StreamAnswer>>,
    ready: VecDeque<StreamAnswer>,
}

/// The provider a stream sends to.
#[derive(Debug)]
struct Route {
    provider: Provider,
    /// The client of a remote provider.
    client: Option<Arc<PeerClient>>,
    /// Requests counted in the provider's outstanding requests (its load, for routing).
    counted: usize,
}

impl Route {
    fn load<'a>(&'a self, inner: &'a Inner) -> &'a AtomicUsize {
        match &self.provider {
            Provider::Local => &inner.local_outstanding,
            Provider::Remote { live, .. } => &live.outstanding,
        }
    }

    /// Whether new requests may still take this route: its client still serves the
    /// provider's endpoint; with `recheck`, the provider is also still one in the peer
    /// table (alive, serving the topic; with a target, still a peer), which takes the
    /// table's lock and so is done once per frame sent, not per request.
    fn usable(&self, recheck: Option<(&Inner, &Topic, bool)>) -> bool {
        let Provider::Remote { id, endpoint, .. } = &self.provider else {
            return true;
        };
        if !self.client.as_ref().is_some_and(|c| c.serves(endpoint)) {
            return false;
        }
        let Some((inner, topic, targeted)) = recheck else {
            return true;
        };
        let peers = inner.peers();
        if targeted {
            peers.contains(id)
        } else {
            peers.serving(topic).any(|p| p.describe.id == *id)
        }
    }

    fn batches(&self) -> bool {
        matches!(self.provider, Provider::Remote { batch: true, .. })
    }
}

/// Encoded requests that go out as one frame.
#[derive(Debug)]
struct Frame {
    batch: BatchBuf,
    requests: Vec<(MessageId, Instant)>,
}

impl RequestStream {
    pub(crate) fn new(
        handle: &NodeHandle,
        topic: Topic,
        options: StreamOptions,
    ) -> Result<Self, Status> {
        let inner = handle.inner.clone();
        let max = inner.config.limits.max_in_flight;
        if options.window == 0 || options.window > max {
            return Err(invalid(
                format!(
                    "a stream's window is 1 to limits.max_in_flight ({max}), not {}",
                    options.window
                ),
                "window",
            ));
        }
        if topic.is_reserved() && options.target.is_none() {
            return Err(invalid(
                format!("{topic} is answered by every node: name a target node"),
                "type",
            ));
        }
        let window = u32::try_from(options.window).unwrap_or(u32::MAX);
        let slots = inner
            .in_flight
            .clone()
            .try_acquire_many_owned(window)
            .map_err(|_| {
                Status::error(
                    Code::ResourceExhausted,
                    format!(
                        "node {} has fewer than {window} of its {max} in-flight request slots free",
                        inner.config.node.name
                    ),
                )
            })?;
        let (sink, answers) = mpsc::unbounded_channel();
        Ok(Self {
            // At most what the wire's `deadline_ms` (u32) carries: ~49 days.
            deadline: options
                .deadline
                .unwrap_or_else(|| inner.config.default_deadline())
                .min(Duration::from_millis(u32::MAX.into())),
            handle: handle.clone(),
            inner,
            topic,
            target: options.target,
            window: options.window,
            _slots: slots,
            route: None,
            unsent: Vec::new(),
            in_flight: 0,
            sink,
            answers,
            ready: VecDeque::new(),
        })
    }

    /// The topic every request of the stream goes to.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Requests sent and not yet answered through [`next`](Self::next).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Most requests in flight.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Queues a request (encoded through serde) and returns its id; it is sent at the
    /// next [`next`](Self::next) or [`flush`](Self::flush). Errors at once: a full window
    /// (RESOURCE_EXHAUSTED: read answers first), no provider (NO_RESPONDERS), a payload
    /// over the size limit (TOO_LARGE), a node shutting down (UNAVAILABLE).
    pub fn send<T: Serialize + ?Sized>(&mut self, payload: &T) -> Result<MessageId, Status> {
        let data = to_payload(payload).map_err(|e| e.to_status())?;
        self.send_raw(Bytes::from(data))
    }

    /// [`send`](Self::send) with raw MessagePack payload bytes.
    pub fn send_raw(&mut self, data: Bytes) -> Result<MessageId, Status> {
        if self.in_flight >= self.window {
            return Err(Status::error(
                Code::ResourceExhausted,
                format!(
                    "the stream has its window of {} requests in flight: read answers with next() first",
                    self.window
                ),
            ));
        }
        if self.inner.closing.load(Ordering::Relaxed) {
            return Err(Status::error(
                Code::Unavailable,
                "the node is shutting down",
            ));
        }
        let now = Instant::now();
        let time = mlmesh_protocol::now_nanos();
        let id = MessageId::at(time);
        let deadline = now + self.deadline;
        self.ensure_route(false)?;
        let Self {
            route: Some(route),
            inner,
            ..
        } = self
        else {
            return Err(no_responders(&self.inner, &self.topic));
        };
        let batches = route.batches();
        if let Provider::Local = route.provider {
            // Checked here, as a remote request is when it is encoded: an error at once.
            check_size(inner, &self.topic, &data)?;
            mlmesh_protocol::check_payload(&data).map_err(|e| e.to_status())?;
            route.counted += 1;
            route.load(inner).fetch_add(1, Ordering::Relaxed);
            let (inner, handle, topic) =
                (self.inner.clone(), self.handle.clone(), self.topic.clone());
            let sink = self.sink.clone();
            tokio::spawn(async move {
                let reply = call_local(&inner, &handle, &topic, id, data, deadline).await;
                let _ = sink.send(vec![(id, Ok(reply))]);
            });
            self.in_flight += 1;
            return Ok(id);
        }
        let env = Envelope {
            version: PROTOCOL_VERSION,
            id,
            topic: self.topic.clone(),
            source: self.inner.id,
            time,
            body: Body::Request {
                deadline_ms: u32::try_from(self.deadline.as_millis())
                    .unwrap_or(u32::MAX)
                    .max(1),
            },
            data,
        };
        let codec = &self.inner.codec;
        let limit = BATCH_BYTES.min(codec.max_size().saturating_sub(5));
        // Into the frame being filled if the provider takes batches and it has room.
        if let Some(f) = self.unsent.last_mut().filter(|_| batches) {
            f.batch.push(codec, &env).map_err(|e| e.to_status())?;
            if f.batch.len() <= limit {
                f.requests.push((id, deadline));
                self.in_flight += 1;
                return Ok(id);
            }
            f.batch.undo();
        }
        let mut batch = BatchBuf::with_capacity(0);
        batch.push(codec, &env).map_err(|e| e.to_status())?;
        self.unsent.push(Frame {
            batch,
            requests: vec![(id, deadline)],
        });
        self.in_flight += 1;
        Ok(id)
    }

    /// Sends the requests queued by [`send`](Self::send) now, without waiting for an
    /// answer ([`next`](Self::next) does it before it waits).
    pub fn flush(&mut self) {
        if self.unsent.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut self.unsent);
        if let Err(status) = self.ensure_route(true) {
            return self.fail(frames, &status);
        }
        let Self {
            route: Some(route),
            inner,
            sink,
            ..
        } = self
        else {
            return;
        };
        let (Some(client), batches) = (route.client.clone(), route.batches()) else {
            // A remote provider left, and only this node serves the topic now.
            return self.fail(frames, &unsent());
        };
        let mut refused = Vec::new();
        for f in frames {
            if f.requests.len() > 1 && !batches {
                refused.push(f);
                continue;
            }
            route.counted += f.requests.len();
            route
                .load(inner)
                .fetch_add(f.requests.len(), Ordering::Relaxed);
            client.send_stream(f.batch.finish(), &f.requests, sink);
        }
        self.fail(refused, &unsent());
    }

    /// Sends what was queued, then returns the next answer as it arrives, decoded through
    /// serde; `None` when no request is in flight.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<StreamReply<T>> {
        let reply = self.next_raw().await?;
        Some(StreamReply {
            id: reply.id,
            result: reply
                .result
                .and_then(|data| from_payload(&data).map_err(|e| e.to_status())),
        })
    }

    /// [`next`](Self::next) with raw payload bytes. Cancel-safe: dropped before it
    /// returns, it loses no answer.
    pub async fn next_raw(&mut self) -> Option<StreamReply<Bytes>> {
        loop {
            if let Some((id, answer)) = self.ready.pop_front() {
                self.answered();
                return Some(StreamReply {
                    id,
                    result: answer.and_then(|a| a),
                });
            }
            if let Ok(chunk) = self.answers.try_recv() {
                self.received(chunk);
                continue;
            }
            if self.in_flight == 0 {
                return None;
            }
            self.flush();
            if !self.ready.is_empty() {
                continue;
            }
            // The stream holds a sender itself: the channel never closes.
            let chunk = self.answers.recv().await?;
            self.received(chunk);
        }
    }

    fn received(&mut self, chunk: Vec<StreamAnswer>) {
        if let Some(Route {
            provider: Provider::Remote { live, .. },
            ..
        }) = &self.route
        {
            live.touch();
        }
        self.ready.extend(chunk);
    }

    /// One answer returned: one request fewer in flight, and one fewer counted in the
    /// provider's load (an answer from a provider the stream left is counted against the
    /// current one: routing's load is an estimate).
    fn answered(&mut self) {
        self.in_flight -= 1;
        if let Some(route) = &mut self.route {
            if route.counted > 0 {
                route.counted -= 1;
                route.load(&self.inner).fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Answers every request of `frames` with `status`.
    fn fail(&mut self, frames: Vec<Frame>, status: &Status) {
        for f in frames {
            self.ready.extend(
                f.requests
                    .into_iter()
                    .map(|(id, _)| (id, Err(status.clone()))),
            );
        }
    }

    /// Keeps the provider in use while it is one (see [`Route::usable`]), else picks
    /// one as a call does (SPEC 9.2).
    fn ensure_route(&mut self, recheck: bool) -> Result<(), Status> {
        let check = recheck.then_some((&*self.inner, &self.topic, self.target.is_some()));
        if !self.route.as_ref().is_some_and(|r| r.usable(check)) {
            if let Some(old) = self.route.take() {
                old.load(&self.inner)
                    .fetch_sub(old.counted, Ordering::Relaxed);
            }
            let inner = &self.inner;
            let provider = match self.target {
                Some(target) => resolve_target(inner, &self.topic, target)?,
                None => pick(inner, &self.topic, &[])
                    .ok_or_else(|| no_responders(inner, &self.topic))?,
            };
            let client = match &provider {
                Provider::Local => None,
                Provider::Remote { endpoint, live, .. } => {
                    Some(super::client(inner, endpoint, live))
                }
            };
            self.route = Some(Route {
                provider,
                client,
                counted: 0,
            });
        }
        Ok(())
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if let Some(route) = &self.route {
            route
                .load(&self.inner)
                .fetch_sub(route.counted, Ordering::Relaxed);
        }
    }
}

/// A queued request that could not go out: another provider may take it.
fn unsent() -> Status {
    Status::error(
        Code::Unavailable,
        "the provider left before the request was sent",
    )
}
