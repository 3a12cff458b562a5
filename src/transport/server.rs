//! The instruction path in: one ROUTER, REQ-compatible framing, bounded concurrency.
//!
//! A request arrives as `[identity][empty][envelope]` (REQ, or a DEALER that sends
//! the delimiter). The reply goes back with the same routing frames. Every request
//! frame gets exactly one reply, even one that cannot be decoded, so that a plain REQ
//! socket never gets stuck waiting.

use std::net::Ipv4Addr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;
use std::task::Context;

use bytes::Bytes;
use futures::FutureExt;
use tokio_util::task::TaskTracker;
use zeromq::{RouterSendHalf, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use mlmesh_protocol::{Body, Code, Envelope, Kind, MessageId, Status, Topic};

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
    let (send, mut recv) = socket.split();
    loop {
        let msg = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            msg = recv.recv() => msg,
        };
        match msg {
            Ok(msg) => accept(&inner, &send, msg),
            Err(e) => {
                tracing::debug!(error = %e, "ROUTER receive failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Decodes one request and starts its handler, or answers at once.
fn accept(inner: &Arc<Inner>, send: &RouterSendHalf, msg: ZmqMessage) {
    let mut frames = msg.into_vec();
    // [identity, (routing...,) empty, envelope]: the last frame is the envelope; all
    // frames before it go back unchanged in front of the reply.
    let Some(body) = frames.pop() else { return };
    if frames.is_empty() {
        return;
    }
    let route = frames;
    let request = match inner.codec.decode(&body) {
        Ok(env) if env.kind() == Kind::Request => env,
        Ok(env) => {
            bump(&inner.counters.frames_rejected, 1);
            let status = Status::error(
                Code::InvalidArgument,
                format!(
                    "a {} envelope was sent to the instruction socket",
                    env.kind()
                ),
            )
            .with_field("kind");
            return reply_raw(inner, send, route, env.id, &env.topic, status, Bytes::new());
        }
        Err(e) => {
            bump(&inner.counters.frames_rejected, 1);
            tracing::debug!(error = %e, "undecodable request");
            let id = mlmesh_protocol::Codec::peek_id(&body).unwrap_or_else(MessageId::nil);
            return reply_raw(
                inner,
                send,
                route,
                id,
                &SYS_ERROR,
                e.to_status(),
                Bytes::new(),
            );
        }
    };
    if let Some(peer) = inner.peers().get(&request.source) {
        peer.live.touch();
    }
    let received = Instant::now();
    let Body::Request { deadline_ms } = request.body else {
        return;
    };
    let deadline = received + Duration::from_millis(deadline_ms.into());

    if inner.closing.load(Ordering::Relaxed) {
        let status = Status::error(Code::Unavailable, "the node is shutting down");
        return reply(inner, send, route, &request, status, Bytes::new());
    }
    if deadline_ms == 0 {
        let status = Status::error(
            Code::DeadlineExceeded,
            "the request's deadline is 0: already passed",
        )
        .with_field("deadline");
        return reply(inner, send, route, &request, status, Bytes::new());
    }
    if let Err(e) = mlmesh_protocol::check_payload(&request.data) {
        bump(&inner.counters.frames_rejected, 1);
        return reply(inner, send, route, &request, e.to_status(), Bytes::new());
    }
    if let Some(result) = inner.sys_reply(&request.topic, &request.data) {
        let (status, data) = split(result);
        return reply(inner, send, route, &request, status, data);
    }
    let Some(handler) = inner.local_handler(&request.topic) else {
        let status = Status::error(
            Code::Unimplemented,
            format!(
                "node {} does not serve {}",
                inner.config.node.name, request.topic
            ),
        )
        .with_field("type");
        return reply(inner, send, route, &request, status, Bytes::new());
    };
    let Ok(permit) = inner.serving.clone().try_acquire_owned() else {
        bump(&inner.counters.requests_refused, 1);
        let status = Status::error(
            Code::ResourceExhausted,
            format!(
                "node {} is executing its limit of {} instructions",
                inner.config.node.name, inner.config.limits.max_concurrent_requests
            ),
        );
        return reply(inner, send, route, &request, status, Bytes::new());
    };
    let inner2 = inner.clone();
    let send = send.clone();
    run_now_or_spawn(&inner.handler_tasks, async move {
        let _permit = permit;
        // No check for a deadline passed while waiting: the work starts as the request
        // arrives (polled at once, and a zero deadline was refused above).
        let ctx = Ctx {
            node: NodeHandle::internal(inner2.clone()),
            topic: request.topic.clone(),
            source: request.source,
            id: request.id,
            deadline,
        };
        let result = run_handler(&inner2, handler.as_ref(), request.data.clone(), ctx).await;
        let (status, data) = split(result);
        if let Some(msg) = encode_reply(&inner2, route, request.id, &request.topic, status, data) {
            if let Err(e) = send.clone().send(msg).await {
                tracing::debug!(error = %e, "reply not delivered (client gone)");
            }
        }
    });
}

/// Polls `work` once right here, on the receive loop, and spawns it as a tracked task
/// only if it is not finished: most handlers answer without waiting, and a task per
/// request was the largest cost of a round trip. A handler that computes for long
/// without awaiting holds up the receive loop meanwhile, as it would hold a worker.
fn run_now_or_spawn(tasks: &TaskTracker, work: impl Future<Output = ()> + Send + 'static) {
    let mut work = Box::pin(work);
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    if work.as_mut().poll(&mut cx).is_pending() {
        // The task polls it again with a real waker, which every future re-registers.
        tasks.spawn(work);
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
    match outcome {
        Ok(r) => r,
        Err(panic) => {
            bump(&inner.counters.handler_panics, 1);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a handler panicked".into());
            tracing::error!(panic = %what, "handler panicked");
            Err(Status::error(
                Code::Internal,
                format!("handler panicked: {what}"),
            ))
        }
    }
}

fn split(result: Reply) -> (Status, Bytes) {
    match result {
        Ok(data) => (Status::ok(), data),
        Err(status) => (status, Bytes::new()),
    }
}

fn reply(
    inner: &Inner,
    send: &RouterSendHalf,
    route: Vec<Bytes>,
    request: &Envelope,
    status: Status,
    data: Bytes,
) {
    reply_raw(inner, send, route, request.id, &request.topic, status, data);
}

fn reply_raw(
    inner: &Inner,
    send: &RouterSendHalf,
    route: Vec<Bytes>,
    re: MessageId,
    topic: &Topic,
    status: Status,
    data: Bytes,
) {
    let Some(msg) = encode_reply(inner, route, re, topic, status, data) else {
        return;
    };
    let mut send = send.clone();
    // Answered from the receive loop: send from a task so that one slow client cannot
    // stall the loop (the ROUTER's per-peer queue is bounded).
    tokio::spawn(async move {
        if let Err(e) = send.send(msg).await {
            tracing::debug!(error = %e, "reply not delivered (client gone)");
        }
    });
}

/// The reply message: the routing frames, then the reply envelope.
fn encode_reply(
    inner: &Inner,
    mut route: Vec<Bytes>,
    re: MessageId,
    topic: &Topic,
    status: Status,
    data: Bytes,
) -> Option<ZmqMessage> {
    let time = mlmesh_protocol::now_nanos();
    let mut env = Envelope {
        version: mlmesh_protocol::PROTOCOL_VERSION,
        id: MessageId::at(time),
        topic: topic.clone(),
        source: inner.id,
        time,
        body: Body::Reply { re, status },
        data,
    };
    let frame = match inner.codec.encode(&env) {
        Ok(f) => f,
        Err(e) => {
            // The handler's reply is over the limit: say so instead.
            env.data = Bytes::new();
            env.body = Body::Reply {
                re,
                status: e.to_status(),
            };
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
