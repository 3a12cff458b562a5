//! Request streams: many requests to one topic in flight from one task, their answers
//! read as they come, the way a DEALER socket is used. A call's future, its reply
//! channel and its wake-up per request are the cost of [`NodeHandle::request`]; a
//! stream has none of them. A request made while others are on the wire is queued, and
//! the queue goes out as one frame (a batch, SPEC 5.3, when the provider accepts
//! batches) when the owner waits for an answer; a request made with none on the wire
//! goes at once. Answers come back in chunks, one per reply frame.

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
use crate::node::{Inner, NodeHandle, ENVELOPE_OVERHEAD_MAX};
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
/// request (sending it at once if no other is on the wire) and returns its id,
/// [`next`](Self::next) sends what was queued and returns the next answer, in the order
/// answers arrive. Every request sent gets exactly one answer. Made by
/// [`NodeHandle::request_stream`]; call it within the node's Tokio runtime (a stream may
/// start tasks).
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
    /// Requests queued and not sent yet, encoded when they are (with the deadline left
    /// then, SPEC 9.3).
    unsent: Vec<Queued>,
    /// Requests sent whose answer has not come back to the stream yet: while none is,
    /// a request goes out at once (SPEC 5.3: no waiting for a batch with nothing else in
    /// flight).
    unanswered: usize,
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
        let Provider::Remote {
            id,
            endpoint,
            batch,
            ..
        } = &self.provider
        else {
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
            // The same node, still batching if it did (a restart may change that).
            peers
                .serving(topic)
                .any(|p| p.describe.id == *id && p.describe.batch == *batch)
        }
    }

    /// The stream stops using this route: its requests come off the provider's load.
    /// With `forget` (the stream is dropped), the client drops its requests too; else
    /// they stay, and are answered as they would have been.
    fn leave(self, inner: &Inner, forget: Option<&Sink>) {
        self.load(inner).fetch_sub(self.counted, Ordering::Relaxed);
        if let (Some(client), Some(sink)) = (&self.client, forget) {
            client.forget(sink);
        }
    }
}

/// A request queued by [`RequestStream::send`].
#[derive(Debug)]
struct Queued {
    id: MessageId,
    time: u64,
    deadline: Instant,
    data: Bytes,
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
            unanswered: 0,
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
        // Queued, on the wire (or its answer in the channel), or answered and not read.
        self.unsent.len() + self.unanswered + self.ready.len()
    }

    /// Most requests in flight.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Queues a request (encoded through serde) and returns its id. It goes out at once
    /// when none of the stream's requests is waiting for its reply, else with the others
    /// queued meanwhile, as one frame, at the next [`next`](Self::next) or
    /// [`flush`](Self::flush). Errors at once: a full window (RESOURCE_EXHAUSTED: read
    /// answers first), no provider (NO_RESPONDERS), a payload over the size limit
    /// (TOO_LARGE), a node shutting down (UNAVAILABLE).
    pub fn send<T: Serialize + ?Sized>(&mut self, payload: &T) -> Result<MessageId, Status> {
        let data = to_payload(payload).map_err(|e| e.to_status())?;
        self.send_raw(Bytes::from(data))
    }

    /// [`send`](Self::send) with raw MessagePack payload bytes.
    pub fn send_raw(&mut self, data: Bytes) -> Result<MessageId, Status> {
        if self.in_flight() >= self.window {
            return Err(Status::error(
                Code::ResourceExhausted,
                format!(
                    "the stream has its window of {} requests in flight: read answers with next() first",
                    self.window
                ),
            ));
        }
        if self.inner.closing.load(Ordering::Relaxed) {
            return Err(shutting_down());
        }
        self.ensure_route(false)?;
        let surely_fits = data.len() + self.topic.as_str().len() + ENVELOPE_OVERHEAD_MAX
            <= self.inner.codec.max_size();
        if !surely_fits {
            check_size(&self.inner, &self.topic, &data)?;
        }
        let now = Instant::now();
        let time = mlmesh_protocol::now_nanos();
        let id = MessageId::at(time);
        let deadline = now + self.deadline;
        if let Some(Route {
            provider: Provider::Local,
            ..
        }) = self.route
        {
            // No socket, so nothing to batch: to the handler at once.
            mlmesh_protocol::check_payload(&data).map_err(|e| e.to_status())?;
            self.call_locally(Queued {
                id,
                time,
                deadline,
                data,
            });
            return Ok(id);
        }
        self.unsent.push(Queued {
            id,
            time,
            deadline,
            data,
        });
        if self.unanswered > 0 {
            // Answers that came meanwhile count: the last one may have emptied the wire.
            while let Ok(chunk) = self.answers.try_recv() {
                self.received(chunk);
            }
        }
        if self.unanswered == 0 {
            self.flush();
        }
        Ok(id)
    }

    /// Runs a request on this node's own handler; its answer comes through the channel.
    fn call_locally(&mut self, q: Queued) {
        if let Some(route) = &mut self.route {
            route.counted += 1;
            route.load(&self.inner).fetch_add(1, Ordering::Relaxed);
        }
        self.unanswered += 1;
        let (inner, handle, topic) = (self.inner.clone(), self.handle.clone(), self.topic.clone());
        let sink = self.sink.clone();
        tokio::spawn(async move {
            let reply = call_local(&inner, &handle, &topic, q.id, q.data, q.deadline).await;
            let _ = sink.send(vec![(q.id, Ok(reply))]);
        });
    }

    /// Sends the requests queued by [`send`](Self::send) now, without waiting for an
    /// answer ([`next`](Self::next) does it before it waits). A request whose deadline
    /// passed while it was queued is answered DEADLINE_EXCEEDED without being sent.
    pub fn flush(&mut self) {
        if self.unsent.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.unsent);
        if self.inner.closing.load(Ordering::Relaxed) {
            return self.fail(queued, &shutting_down());
        }
        if let Err(status) = self.ensure_route(true) {
            return self.fail(queued, &status);
        }
        let Some(route) = &self.route else { return };
        let (client, batches) = match (&route.provider, &route.client) {
            (Provider::Remote { batch, .. }, Some(client)) => (client.clone(), *batch),
            _ => {
                // The remote provider left, and this node serves the topic itself.
                for q in queued {
                    self.call_locally(q);
                }
                return;
            }
        };
        let codec = self.inner.codec;
        let limit = BATCH_BYTES.min(codec.max_size().saturating_sub(5));
        let now = Instant::now();
        let mut frame = BatchBuf::with_capacity(0);
        let mut requests = Vec::new();
        let mut sent = 0;
        for q in queued {
            let Some(left) = q
                .deadline
                .checked_duration_since(now)
                .filter(|d| !d.is_zero())
            else {
                self.ready.push_back((
                    q.id,
                    Err(Status::error(
                        Code::DeadlineExceeded,
                        "the deadline passed before the request was sent",
                    )),
                ));
                continue;
            };
            let env = Envelope {
                version: PROTOCOL_VERSION,
                id: q.id,
                topic: self.topic.clone(),
                source: self.inner.id,
                time: q.time,
                body: Body::Request {
                    // Whole milliseconds left, rounded up: the provider never stops first.
                    deadline_ms: u32::try_from(left.as_micros().div_ceil(1000))
                        .unwrap_or(u32::MAX)
                        .max(1),
                },
                data: q.data,
            };
            if let Err(e) = frame.push(&codec, &env) {
                self.ready.push_back((q.id, Err(e.to_status())));
                continue;
            }
            if frame.count() > 1 && (!batches || frame.len() > limit) {
                // It goes in the next frame.
                frame.undo();
                let full = std::mem::replace(&mut frame, BatchBuf::with_capacity(0));
                sent += requests.len();
                client.send_stream(full.finish(), &std::mem::take(&mut requests), &self.sink);
                if let Err(e) = frame.push(&codec, &env) {
                    self.ready.push_back((q.id, Err(e.to_status())));
                    continue;
                }
            }
            requests.push((q.id, q.deadline));
        }
        if !requests.is_empty() {
            sent += requests.len();
            client.send_stream(frame.finish(), &requests, &self.sink);
        }
        self.unanswered += sent;
        if let Some(route) = &mut self.route {
            route.counted += sent;
            route.load(&self.inner).fetch_add(sent, Ordering::Relaxed);
        }
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
                return Some(StreamReply {
                    id,
                    result: answer.and_then(|a| a),
                });
            }
            if let Ok(chunk) = self.answers.try_recv() {
                self.received(chunk);
                continue;
            }
            if self.in_flight() == 0 {
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

    /// Answers that came back: off the wire, and off the provider's load. A chunk holding
    /// a reply (not only answers the client made itself: deadlines, lost connections) is
    /// traffic from the provider, as a call's reply is.
    fn received(&mut self, chunk: Vec<StreamAnswer>) {
        self.unanswered = self.unanswered.saturating_sub(chunk.len());
        if let Some(route) = &mut self.route {
            // An answer from a provider the stream left is taken off the current one's
            // load: routing's load is an estimate.
            let n = chunk.len().min(route.counted);
            route.counted -= n;
            route.load(&self.inner).fetch_sub(n, Ordering::Relaxed);
            if let Provider::Remote { live, .. } = &route.provider {
                if chunk.iter().any(|(_, answer)| answer.is_ok()) {
                    live.touch();
                }
            }
        }
        self.ready.extend(chunk);
    }

    /// Answers every request of `queued` with `status`.
    fn fail(&mut self, queued: Vec<Queued>, status: &Status) {
        self.ready
            .extend(queued.into_iter().map(|q| (q.id, Err(status.clone()))));
    }

    /// Keeps the provider in use while it is one (see [`Route::usable`]), else picks
    /// one as a call does (SPEC 9.2).
    fn ensure_route(&mut self, recheck: bool) -> Result<(), Status> {
        let check = recheck.then_some((&*self.inner, &self.topic, self.target.is_some()));
        if !self.route.as_ref().is_some_and(|r| r.usable(check)) {
            if let Some(old) = self.route.take() {
                old.leave(&self.inner, None);
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
        if let Some(route) = self.route.take() {
            route.leave(&self.inner, Some(&self.sink));
        }
    }
}

fn shutting_down() -> Status {
    Status::error(Code::Unavailable, "the node is shutting down")
}
