//! Routing instructions: pick a live provider, send with a deadline, retry elsewhere
//! only when the error proves the request was not executed; and broadcast.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use mlmesh_protocol::{Body, Code, Envelope, MessageId, NodeId, Status, Topic, PROTOCOL_VERSION};

use crate::handler::Ctx;
use crate::node::{bump, Ack, CallOptions, Inner, NodeHandle};
use crate::peers::Liveness;
use crate::transport::client::PeerClient;
use crate::transport::server::{run_handler, Slot};

mod stream;

pub use stream::{RequestStream, StreamOptions, StreamReply};

/// Attempts per call, the first included.
const MAX_ATTEMPTS: usize = 3;

/// Where one attempt goes.
#[derive(Clone, Debug)]
enum Provider {
    Local,
    Remote {
        id: NodeId,
        name: Arc<str>,
        endpoint: Arc<str>,
        live: Arc<Liveness>,
        /// The provider accepts request batches (SPEC 5.3).
        batch: bool,
    },
}

impl Provider {
    fn id(&self, inner: &Inner) -> NodeId {
        match self {
            Provider::Local => inner.id,
            Provider::Remote { id, .. } => *id,
        }
    }
}

/// Errors after which another provider may be tried: the request was not executed.
fn try_elsewhere(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

fn invalid(message: impl Into<String>, field: &str) -> Status {
    Status::error(Code::InvalidArgument, message).with_field(field)
}

pub(crate) async fn call(
    inner: &Arc<Inner>,
    handle: &NodeHandle,
    topic: Topic,
    data: Bytes,
    options: CallOptions,
) -> Result<Bytes, Status> {
    let start = Instant::now();
    let deadline = start
        + options
            .deadline
            .unwrap_or_else(|| inner.config.default_deadline());
    if topic.is_reserved() && options.target.is_none() {
        return Err(invalid(
            format!("{topic} is answered by every node: name a target node"),
            "type",
        ));
    }
    let _slot = acquire_slot(inner, deadline).await?;
    // One read of the wall clock for the id and the first attempt's envelope.
    let mut time = mlmesh_protocol::now_nanos();
    let id = options.id.unwrap_or_else(|| MessageId::at(time));
    let mut tried: Vec<NodeId> = Vec::new();
    let mut last: Option<Status> = None;
    for attempt in 0..MAX_ATTEMPTS {
        // One clock read per call in the usual case (one attempt).
        let now = if attempt == 0 {
            start
        } else {
            time = mlmesh_protocol::now_nanos();
            Instant::now()
        };
        let provider = match options.target {
            Some(target) if tried.is_empty() => Some(resolve_target(inner, &topic, target)?),
            Some(_) => None,
            None => pick(inner, &topic, &tried),
        };
        let Some(provider) = provider else { break };
        match call_one(
            inner,
            handle,
            &provider,
            &topic,
            id,
            data.clone(),
            (now, time, deadline),
        )
        .await
        {
            Ok(reply) => return Ok(reply),
            Err(status) if try_elsewhere(status.code) && Instant::now() < deadline => {
                tracing::debug!(%topic, %status, "retrying on another provider");
                tried.push(provider.id(inner));
                last = Some(status);
            }
            Err(status) => return Err(status),
        }
    }
    Err(last.unwrap_or_else(|| no_responders(inner, &topic)))
}

fn no_responders(inner: &Inner, topic: &Topic) -> Status {
    Status::error(
        Code::NoResponders,
        format!(
            "no live node in mesh {} serves {topic}",
            inner.config.node.mesh
        ),
    )
}

pub(crate) async fn broadcast(
    inner: &Arc<Inner>,
    handle: &NodeHandle,
    topic: Topic,
    data: Bytes,
    deadline: Option<Duration>,
) -> Result<Vec<Ack<Bytes>>, Status> {
    if topic.is_reserved() {
        return Err(invalid(format!("{topic} cannot be broadcast"), "type"));
    }
    let start = Instant::now();
    let deadline = start + deadline.unwrap_or_else(|| inner.config.default_deadline());
    let providers = providers(inner, &topic);
    if providers.is_empty() {
        return Err(no_responders(inner, &topic));
    }
    let time = mlmesh_protocol::now_nanos();
    let id = MessageId::at(time);
    let calls = providers.into_iter().map(|p| {
        let data = data.clone();
        let topic = topic.clone();
        async move {
            let result =
                call_one(inner, handle, &p, &topic, id, data, (start, time, deadline)).await;
            let (node, name) = match &p {
                Provider::Local => (inner.id, inner.config.node.name.clone()),
                Provider::Remote { id, name, .. } => (*id, name.to_string()),
            };
            Ack { node, name, result }
        }
    });
    Ok(futures::future::join_all(calls).await)
}

/// Waits for one of the node's outgoing-request slots, until the deadline.
async fn acquire_slot(
    inner: &Inner,
    deadline: Instant,
) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
    if let Ok(permit) = inner.in_flight.clone().try_acquire_owned() {
        return Ok(permit); // the usual case: no timer
    }
    let until = tokio::time::Instant::from_std(deadline);
    match tokio::time::timeout_at(until, inner.in_flight.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(Status::error(
            Code::Unavailable,
            "the node is shutting down",
        )),
        Err(_) => Err(Status::error(
            Code::DeadlineExceeded,
            "the deadline passed while waiting for an in-flight slot",
        )),
    }
}

fn resolve_target(inner: &Inner, topic: &Topic, target: NodeId) -> Result<Provider, Status> {
    if target == inner.id {
        return Ok(Provider::Local);
    }
    let peers = inner.peers();
    let peer = peers.get(&target).ok_or_else(|| {
        Status::error(
            Code::NoResponders,
            format!("node {target} is not a live peer (for {topic})"),
        )
    })?;
    Ok(Provider::Remote {
        id: target,
        name: peer.route.0.clone(),
        endpoint: peer.route.1.clone(),
        live: peer.live.clone(),
        batch: peer.describe.batch,
    })
}

fn providers(inner: &Inner, topic: &Topic) -> Vec<Provider> {
    let mut out: Vec<Provider> = inner
        .peers()
        .providers(topic)
        .into_iter()
        .map(|(id, name, endpoint, live, batch)| Provider::Remote {
            id,
            name,
            endpoint,
            live,
            batch,
        })
        .collect();
    if inner.handlers.contains_key(topic) {
        out.push(Provider::Local);
    }
    out
}

/// The live provider with the fewest outstanding requests; ties rotate. One walk over
/// the candidates under the peer table's lock when there is one (the usual case), two
/// otherwise (count, then choose), and one clone, of the provider chosen: nothing is
/// collected per call.
fn pick(inner: &Inner, topic: &Topic, tried: &[NodeId]) -> Option<Provider> {
    static ROTATE: AtomicUsize = AtomicUsize::new(0);
    let local = !tried.contains(&inner.id) && inner.handlers.contains_key(topic);
    let peers = inner.peers();
    // `None` stands for this node.
    let candidates = || {
        peers
            .serving(topic)
            .filter(|p| !tried.contains(&p.describe.id))
            .map(Some)
            .chain(local.then_some(None))
    };
    let (mut n, mut first) = (0, None);
    for c in candidates() {
        first = first.or(Some(c));
        n += 1;
    }
    // One candidate (the usual case): no second walk, no shared rotation counter.
    let best = if n <= 1 {
        first?
    } else {
        let start = ROTATE.fetch_add(1, Ordering::Relaxed) % n;
        let load = |c: &Option<&crate::peers::Peer>| match c {
            None => inner.local_outstanding.load(Ordering::Relaxed),
            Some(p) => p.live.outstanding.load(Ordering::Relaxed),
        };
        // The least loaded; among equals, the first from `start` on (in a rotated order).
        candidates()
            .enumerate()
            .min_by_key(|(j, c)| (load(c), (j + n - start) % n))?
            .1
    };
    Some(match best {
        None => Provider::Local,
        Some(p) => Provider::Remote {
            id: p.describe.id,
            name: p.route.0.clone(),
            endpoint: p.route.1.clone(),
            live: p.live.clone(),
            batch: p.describe.batch,
        },
    })
}

/// Counts an outstanding request for as long as it lives.
struct Outstanding<'a>(&'a AtomicUsize);

impl<'a> Outstanding<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn call_one(
    inner: &Arc<Inner>,
    handle: &NodeHandle,
    provider: &Provider,
    topic: &Topic,
    id: MessageId,
    data: Bytes,
    (now, time, deadline): (Instant, u64, Instant),
) -> Result<Bytes, Status> {
    let remaining = deadline.saturating_duration_since(now);
    if remaining.is_zero() {
        return Err(Status::error(Code::DeadlineExceeded, "the deadline passed"));
    }
    match provider {
        Provider::Local => {
            let _count = Outstanding::new(&inner.local_outstanding);
            call_local(inner, handle, topic, id, data, deadline).await
        }
        Provider::Remote {
            endpoint,
            live,
            batch,
            ..
        } => {
            let _count = Outstanding::new(&live.outstanding);
            // Built, encoded and dropped before the wait, so that the call's future does
            // not hold the envelope.
            let frame = {
                let env = Envelope {
                    version: PROTOCOL_VERSION,
                    id,
                    topic: topic.clone(),
                    source: inner.id,
                    time,
                    body: Body::Request {
                        deadline_ms: u32::try_from(remaining.as_millis())
                            .unwrap_or(u32::MAX)
                            .max(1),
                    },
                    data,
                };
                inner.codec.encode(&env).map_err(|e| e.to_status())?
            };
            let answer = client(inner, endpoint, live)
                .call(id, frame, deadline, *batch)
                .await?;
            live.touch();
            answer
        }
    }
}

/// The client of a remote provider's endpoint: the one its liveness keeps while it
/// serves that endpoint, else the node's (started on first use).
fn client(inner: &Inner, endpoint: &str, live: &Liveness) -> Arc<PeerClient> {
    if let Some(c) = live.client.get().filter(|c| c.serves(endpoint)) {
        return c.clone();
    }
    let timeout = Duration::from_millis(inner.config.limits.connect_timeout_ms);
    let c = inner
        .clients
        .get(endpoint, inner.codec, timeout, &inner.cancel);
    let _ = live.client.set(c.clone());
    c
}

/// Runs an instruction on this node's own handler, without the network but under the
/// same rules as over it: size limits, concurrency bound, panics caught, and tracked so
/// that a graceful shutdown waits for it.
async fn call_local(
    inner: &Arc<Inner>,
    handle: &NodeHandle,
    topic: &Topic,
    id: MessageId,
    data: Bytes,
    deadline: Instant,
) -> Result<Bytes, Status> {
    check_size(inner, topic, &data)?;
    mlmesh_protocol::check_payload(&data).map_err(|e| e.to_status())?;
    if let Some(reply) = inner.sys_reply(topic, &data) {
        return reply;
    }
    if inner.closing.load(Ordering::Relaxed) {
        return Err(Status::error(
            Code::Unavailable,
            "the node is shutting down",
        ));
    }
    let Some(handler) = inner.local_handler(topic) else {
        return Err(Status::error(
            Code::Unimplemented,
            format!("node {} does not serve {topic}", inner.config.node.name),
        )
        .with_field("type"));
    };
    if !inner.serving.try_take() {
        bump(&inner.counters.requests_refused, 1);
        return Err(Status::error(
            Code::ResourceExhausted,
            format!(
                "node {} is executing its limit of {} instructions",
                inner.config.node.name, inner.config.limits.max_concurrent_requests
            ),
        ));
    }
    let slot = Slot(inner.clone());
    let ctx = Ctx {
        node: handle.clone(),
        topic: topic.clone(),
        source: inner.id,
        id,
        deadline,
    };
    let task = inner.handler_tasks.spawn(async move {
        let slot = slot;
        run_handler(&slot.0, handler.as_ref(), data, ctx).await
    });
    let reply = match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), task).await
    {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err(Status::error(
            Code::Internal,
            "the handler task was aborted",
        )),
        Err(_) => {
            return Err(Status::error(
                Code::DeadlineExceeded,
                "no reply by the deadline",
            ))
        }
    };
    bump(&inner.counters.requests_served, 1);
    match reply {
        Ok(out) => check_size(inner, topic, &out).map(|()| out),
        Err(status) => Err(status),
    }
}

/// A payload that would make an envelope over the size limit is TOO_LARGE, as it would
/// be on the wire.
fn check_size(inner: &Inner, topic: &Topic, data: &Bytes) -> Result<(), Status> {
    let probe = Envelope {
        version: PROTOCOL_VERSION,
        id: MessageId::nil(),
        topic: topic.clone(),
        source: inner.id,
        time: 0,
        body: Body::Request {
            deadline_ms: u32::MAX,
        },
        data: data.clone(),
    };
    inner
        .codec
        .encode(&probe)
        .map(drop)
        .map_err(|e| e.to_status())
}
