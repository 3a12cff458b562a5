//! The instruction path in: one ROUTER, REQ-compatible framing, bounded concurrency.
//!
//! A request arrives as `[identity][empty][envelope]` (REQ, or a DEALER that sends
//! the delimiter). The reply goes back with the same routing frames. Every request
//! frame gets exactly one reply, even one that cannot be decoded, so that a plain REQ
//! socket never gets stuck waiting. A request batch (SPEC 5.3) gets one reply per
//! envelope, those that are ready at once sent back together as reply batches.

use std::net::Ipv4Addr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::FutureExt;
use zeromq::{
    RouterRecvHalf, RouterSendHalf, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage,
};

use mlmesh_protocol::{BatchBuf, Body, Code, Envelope, Kind, MessageId, Status, Topic};

use crate::handler::{Ctx, ErasedHandler, Reply};
use crate::node::{bump, BuildError, Inner, NodeHandle};

pub(crate) async fn bind(
    ip: Ipv4Addr,
    port: u16,
    max_message_size: usize,
) -> Result<(RouterSocket, u16), BuildError> {
    let mut socket = RouterSocket::with_options(super::listen_options(max_message_size));
    let endpoint = format!("tcp://{ip}:{port}");
    let bound = socket.bind(&endpoint).await.map_err(|e| BuildError::Bind {
        socket: "rpc",
        endpoint,
        reason: e.to_string(),
    })?;
    Ok((socket, super::port_of(&bound)))
}

pub(crate) async fn run(inner: Arc<Inner>, socket: RouterSocket) {
    let (send, recv) = socket.split();
    // The receive loop has no branch for the node's cancellation: polling the token
    // registers (and on a message, unregisters) a waiter under the token's lock, twice per
    // request. It is aborted instead, and ends (with the socket) before this returns.
    let receiving = tokio::spawn(receive(inner.clone(), send, recv));
    inner.cancel.cancelled().await;
    receiving.abort();
    let _ = receiving.await;
}

async fn receive(inner: Arc<Inner>, send: RouterSendHalf, mut recv: RouterRecvHalf) {
    loop {
        match recv.recv().await {
            Ok(msg) => accept(&inner, &send, msg),
            Err(e) => {
                tracing::debug!(error = %e, "ROUTER receive failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Decodes one request message (one envelope, or a batch of them: SPEC 5.3) and runs
/// the handlers, or answers at once.
fn accept(inner: &Arc<Inner>, send: &RouterSendHalf, msg: ZmqMessage) {
    let mut frames = msg.into_vec();
    // [identity, (routing...,) empty, envelope]: the last frame is the envelope; all
    // frames before it go back unchanged in front of the reply.
    let Some(body) = frames.pop() else { return };
    if frames.is_empty() {
        return;
    }
    let route = frames;
    if mlmesh_protocol::is_batch(&body) {
        return accept_batch(inner, send, route, &body);
    }
    // A request for a served topic is read by position, its topic and handler found with
    // one lookup by the frame's bytes (no topic validated or allocated per request).
    let mut served = None;
    let resolve = |name: &[u8]| {
        let (topic, handler) = lookup(inner, name)?;
        served = Some(handler);
        Some(topic)
    };
    let request = match inner.codec.decode_with(&body, resolve) {
        Ok(env) => env,
        Err(e) => return reject(inner, send, route, &body, e),
    };
    touch(inner, &request.source);
    if let Some(answer) = serve(inner, send, &route, request, served) {
        let time = mlmesh_protocol::now_nanos();
        if let Some(msg) = encode_reply(inner, route, answer, time) {
            send_reply(send, msg);
        }
    }
}

/// The topic and handler served under `name`, if any.
fn lookup(inner: &Inner, name: &[u8]) -> Option<(Topic, Arc<dyn ErasedHandler>)> {
    let name = std::str::from_utf8(name).ok()?;
    let (topic, handler) = inner.handlers.get_key_value(name)?;
    Some((topic.clone(), handler.clone()))
}

/// A request frame that does not decode: one error reply (SPEC 5.3).
fn reject(
    inner: &Inner,
    send: &RouterSendHalf,
    route: Vec<Bytes>,
    body: &[u8],
    e: mlmesh_protocol::DecodeError,
) {
    bump(&inner.counters.frames_rejected, 1);
    tracing::debug!(error = %e, "undecodable request");
    let id = mlmesh_protocol::Codec::peek_id(body).unwrap_or_else(MessageId::nil);
    let answer = Answer {
        re: id,
        topic: SYS_ERROR.clone(),
        status: e.to_status(),
        data: Bytes::new(),
    };
    if let Some(msg) = encode_reply(inner, route, answer, mlmesh_protocol::now_nanos()) {
        send_reply(send, msg);
    }
}

/// Traffic from a peer is a sign of life.
fn touch(inner: &Inner, source: &mlmesh_protocol::NodeId) {
    if let Some(peer) = inner.peers().get(source) {
        peer.live.touch();
    }
}

/// Largest reply batch, in bytes of envelopes: a batch is sent when it reaches this, so
/// that one request batch does not make one huge reply frame.
const REPLY_BATCH_BYTES: usize = 64 * 1024;

/// A request batch (SPEC 5.3): decoded whole (or rejected as one undecodable request),
/// then each request served in order; the replies that are ready at once go back
/// together in reply batches, those of handlers that wait each in a message of its own.
fn accept_batch(inner: &Arc<Inner>, send: &RouterSendHalf, route: Vec<Bytes>, body: &Bytes) {
    let served = std::cell::Cell::new(None);
    let mut requests = Vec::new();
    let decoded = inner.codec.decode_instructions(
        body,
        |name| {
            let (topic, handler) = lookup(inner, name)?;
            served.set(Some(handler));
            Some(topic)
        },
        |env| requests.push((env, served.take())),
    );
    if let Err(e) = decoded {
        return reject(inner, send, route, body, e);
    }
    let mut last_source = None;
    let time = mlmesh_protocol::now_nanos();
    let new_batch = || BatchBuf::with_capacity(REPLY_BATCH_BYTES.min(inner.codec.max_size()));
    let mut batch = new_batch();
    for (request, handler) in requests {
        if last_source != Some(request.source) {
            last_source = Some(request.source);
            touch(inner, &request.source);
        }
        let Some(answer) = serve(inner, send, &route, request, handler) else {
            continue;
        };
        let env = reply_envelope(inner, answer, time);
        if !push_reply(inner, &mut batch, &env) {
            // Not with the others: they go now, and this one starts the next batch.
            send_batch(
                inner,
                send,
                &route,
                std::mem::replace(&mut batch, new_batch()),
            );
            push_reply(inner, &mut batch, &env);
        }
        if batch.len() >= REPLY_BATCH_BYTES {
            send_batch(
                inner,
                send,
                &route,
                std::mem::replace(&mut batch, new_batch()),
            );
        }
    }
    send_batch(inner, send, &route, batch);
}

/// Adds a reply to `batch` if the batch stays within the frame limit (SPEC 11, the
/// array header counted); `false` leaves the batch as it was. A reply over the limit
/// even alone goes as an error reply saying so, as [`encode_reply`] does.
fn push_reply(inner: &Inner, batch: &mut BatchBuf, env: &Envelope) -> bool {
    let pushed = match batch.push(&inner.codec, env) {
        Ok(_) => true,
        Err(e) => {
            let mut small = env.clone();
            small.data = Bytes::new();
            if let Body::Reply { status, .. } = &mut small.body {
                *status = e.to_status();
            }
            batch.push(&inner.codec, &small).is_ok()
        }
    };
    if pushed && batch.count() > 1 && batch.len() + 5 > inner.codec.max_size() {
        batch.undo();
        return false;
    }
    pushed
}

/// Sends the replies of `batch` (if any) behind a copy of `route`.
fn send_batch(inner: &Inner, send: &RouterSendHalf, route: &[Bytes], batch: BatchBuf) {
    if batch.is_empty() {
        return;
    }
    bump(&inner.counters.requests_served, batch.count() as u64);
    let mut frames = Vec::with_capacity(route.len() + 1);
    frames.extend_from_slice(route);
    frames.push(batch.finish());
    if let Ok(msg) = ZmqMessage::try_from(frames) {
        send_reply(send, msg);
    }
}

/// What a reply says: to which request, on which topic, and the outcome.
struct Answer {
    re: MessageId,
    topic: Topic,
    status: Status,
    data: Bytes,
}

/// Serves one decoded request: the answer if it is ready at once (an error, or a handler
/// that finished where it was polled), or `None` when a handler task took it (and will
/// reply itself, behind a copy of `route`).
fn serve(
    inner: &Arc<Inner>,
    send: &RouterSendHalf,
    route: &[Bytes],
    request: Envelope,
    served: Option<Arc<dyn ErasedHandler>>,
) -> Option<Answer> {
    let error = |request: &Envelope, status: Status| {
        Some(Answer {
            re: request.id,
            topic: request.topic.clone(),
            status,
            data: Bytes::new(),
        })
    };
    if request.kind() != Kind::Request {
        bump(&inner.counters.frames_rejected, 1);
        let status = Status::error(
            Code::InvalidArgument,
            format!(
                "a {} envelope was sent to the instruction socket",
                request.kind()
            ),
        )
        .with_field("kind");
        return error(&request, status);
    }
    let received = Instant::now();
    let Body::Request { deadline_ms } = request.body else {
        return None;
    };
    let deadline = received + Duration::from_millis(deadline_ms.into());

    if inner.closing.load(Ordering::Relaxed) {
        let status = Status::error(Code::Unavailable, "the node is shutting down");
        return error(&request, status);
    }
    if deadline_ms == 0 {
        let status = Status::error(
            Code::DeadlineExceeded,
            "the request's deadline is 0: already passed",
        )
        .with_field("deadline");
        return error(&request, status);
    }
    if let Err(e) = mlmesh_protocol::check_payload(&request.data) {
        bump(&inner.counters.frames_rejected, 1);
        return error(&request, e.to_status());
    }
    if served.is_none() {
        if let Some(result) = inner.sys_reply(&request.topic, &request.data) {
            let (status, data) = split(result);
            return Some(Answer {
                re: request.id,
                topic: request.topic,
                status,
                data,
            });
        }
    }
    let Some(handler) = served.or_else(|| inner.local_handler(&request.topic)) else {
        let status = Status::error(
            Code::Unimplemented,
            format!(
                "node {} does not serve {}",
                inner.config.node.name, request.topic
            ),
        )
        .with_field("type");
        return error(&request, status);
    };
    if !inner.serving.try_take() {
        bump(&inner.counters.requests_refused, 1);
        let status = Status::error(
            Code::ResourceExhausted,
            format!(
                "node {} is executing its limit of {} instructions",
                inner.config.node.name, inner.config.limits.max_concurrent_requests
            ),
        );
        return error(&request, status);
    }
    // No check for a deadline passed while waiting: the work starts as the request
    // arrives (polled at once, and a zero deadline was refused above).
    let Envelope {
        id, topic, data, ..
    } = request;
    let ctx = Ctx {
        node: NodeHandle::internal(inner.clone()),
        topic: topic.clone(),
        source: request.source,
        id,
        deadline,
    };
    // The handler is polled once right here, on the receive loop, and its reply sent from
    // here: most handlers answer without waiting, and a task (or even a boxed future) per
    // request was the largest cost of a round trip. Only a handler that waits gets a task
    // (tracked, so that shutdown waits for it), which polls it again with a real waker. A
    // handler that computes for long without awaiting holds up the receive loop
    // meanwhile, as it would hold a worker.
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut work = handler.call(data, ctx);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match work.as_mut().poll(&mut cx) {
            Poll::Ready(result) => Ok(result),
            Poll::Pending => Err(work),
        }
    }));
    let result = match polled {
        Ok(Ok(result)) => result,
        Ok(Err(work)) => {
            let slot = Slot(inner.clone());
            let send = send.clone();
            let route = route.to_vec();
            inner.handler_tasks.spawn(async move {
                let inner = &slot.0;
                let result = match AssertUnwindSafe(work).catch_unwind().await {
                    Ok(r) => r,
                    Err(panic) => Err(panicked(inner, panic)),
                };
                let (status, data) = split(result);
                let answer = Answer {
                    re: id,
                    topic,
                    status,
                    data,
                };
                let time = mlmesh_protocol::now_nanos();
                if let Some(msg) = encode_reply(inner, route, answer, time) {
                    if let Err(e) = send.clone().send(msg).await {
                        tracing::debug!(error = %e, "reply not delivered (client gone)");
                    }
                }
            });
            return None;
        }
        Err(panic) => Err(panicked(inner, panic)),
    };
    inner.serving.give_back();
    let (status, data) = split(result);
    Some(Answer {
        re: id,
        topic,
        status,
        data,
    })
}

/// The bound on handlers executing at once: a count, so that the usual request (one
/// that finishes where it is polled) takes and gives back a place with two atomic
/// operations, where a semaphore's permit locks a mutex on release.
#[derive(Debug)]
pub(crate) struct Bound {
    taken: AtomicUsize,
    max: usize,
}

impl Bound {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            taken: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a place if fewer than `max` are taken; `false` otherwise.
    pub(crate) fn try_take(&self) -> bool {
        if self.taken.fetch_add(1, Ordering::AcqRel) < self.max {
            return true;
        }
        self.taken.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Gives back a place taken by [`Bound::try_take`].
    pub(crate) fn give_back(&self) {
        self.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place of [`Inner::serving`] held by a task, given back when it ends.
pub(crate) struct Slot(pub(crate) Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.serving.give_back();
    }
}

/// Runs a handler, both the call that builds its future and the future itself; a
/// panic in either becomes INTERNAL and the node lives on.
pub(crate) async fn run_handler(
    inner: &Inner,
    handler: &dyn ErasedHandler,
    data: Bytes,
    ctx: Ctx,
) -> Reply {
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(data, ctx)));
    let outcome = match started {
        Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
        Err(panic) => Err(panic),
    };
    outcome.map_err(|panic| panicked(inner, panic))?
}

/// The INTERNAL status of a handler that panicked, counted and logged.
fn panicked(inner: &Inner, panic: Box<dyn std::any::Any + Send>) -> Status {
    bump(&inner.counters.handler_panics, 1);
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a handler panicked".into());
    tracing::error!(panic = %what, "handler panicked");
    Status::error(Code::Internal, format!("handler panicked: {what}"))
}

fn split(result: Reply) -> (Status, Bytes) {
    match result {
        Ok(data) => (Status::ok(), data),
        Err(status) => (status, Bytes::new()),
    }
}

/// Queues a reply message. At once when the ROUTER has this one client and room for it
/// (no future). Otherwise (several clients: zmq.rs's map of peers is only reached by an
/// async lookup) the send is polled once here, and given a task only if it has to wait,
/// so that one slow client cannot stall the receive loop (its queue is bounded).
fn send_reply(send: &RouterSendHalf, msg: ZmqMessage) {
    let msg = match send.try_send(msg) {
        Ok(None) => return,
        Ok(Some(msg)) => msg,
        Err(e) => {
            tracing::debug!(error = %e, "reply not delivered (client gone)");
            return;
        }
    };
    let mut send = send.clone();
    let mut sending = Box::pin(async move {
        if let Err(e) = send.send(msg).await {
            tracing::debug!(error = %e, "reply not delivered (client gone)");
        }
    });
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    if sending.as_mut().poll(&mut cx).is_pending() {
        // The task polls it again with a real waker, which every future re-registers.
        tokio::spawn(sending);
    }
}

/// The reply envelope of `answer`, sent at `time`.
fn reply_envelope(inner: &Inner, answer: Answer, time: u64) -> Envelope {
    let Answer {
        re,
        topic,
        status,
        data,
    } = answer;
    Envelope {
        version: mlmesh_protocol::PROTOCOL_VERSION,
        id: MessageId::at(time),
        topic,
        source: inner.id,
        time,
        body: Body::Reply { re, status },
        data,
    }
}

/// The reply message: the routing frames, then the reply envelope.
fn encode_reply(
    inner: &Inner,
    mut route: Vec<Bytes>,
    answer: Answer,
    time: u64,
) -> Option<ZmqMessage> {
    let mut env = reply_envelope(inner, answer, time);
    let frame = match inner.codec.encode(&env) {
        Ok(f) => f,
        Err(e) => {
            // The handler's reply is over the limit: say so instead.
            env.data = Bytes::new();
            if let Body::Reply { status, .. } = &mut env.body {
                *status = e.to_status();
            }
            inner.codec.encode(&env).ok()?
        }
    };
    bump(&inner.counters.requests_served, 1);
    route.push(Bytes::from(frame));
    ZmqMessage::try_from(route).ok()
}

/// The topic of replies to frames whose own topic could not be read.
static SYS_ERROR: std::sync::LazyLock<Topic> =
    std::sync::LazyLock::new(|| Topic::new("sys.error").expect("`sys.error` is a valid topic"));
