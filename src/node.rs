//! A node: its builder, its shared state and the handle applications hold.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use mlmesh_protocol::sys::{self, Describe, Endpoints, Heartbeat, PeerRecord, Served};
use mlmesh_protocol::{
    from_payload, to_payload, Body, Codec, EncodeError, Envelope, MessageId, NameError, NodeId,
    Pattern, Status, Topic, PROTOCOL_VERSION,
};

use crate::config::{Config, ConfigError, Overflow};
use crate::events::{Subscription, Subscriptions};
use crate::handler::{Ctx, ErasedHandler, Raw, Reply, Typed};
use crate::peers::{PeerEvent, PeerInfo, PeerTable};
use crate::rpc::{RequestStream, StreamOptions};
use crate::transport::client::Clients;
use crate::transport::publisher::{Offer, Outbox, Outgoing};
use crate::{discovery, rpc, transport, FastMap};

/// How long calls already sent to a peer that said goodbye may still get their reply.
const GOODBYE_GRACE: Duration = Duration::from_secs(2);

/// How often [`NodeHandle::wait_for_subscribers`] looks at the PUB socket.
const SUBSCRIBERS_POLL: Duration = Duration::from_millis(5);

/// Most peers listed in one describe answer (keeps it far under the size limit).
const MAX_INTRODUCED: usize = 512;

/// The implementation name and version sent in `sys.describe`.
pub const IMPLEMENTATION: &str = concat!("mlmesh-rs/", env!("CARGO_PKG_VERSION"));

/// Anything that names a topic: `&str`, `String`, [`Topic`].
pub trait IntoTopic {
    /// Parses (or passes through) the topic.
    fn into_topic(self) -> Result<Topic, NameError>;
}

impl IntoTopic for &str {
    fn into_topic(self) -> Result<Topic, NameError> {
        Topic::new(self)
    }
}
impl IntoTopic for String {
    fn into_topic(self) -> Result<Topic, NameError> {
        Topic::new(&self)
    }
}
impl IntoTopic for &String {
    fn into_topic(self) -> Result<Topic, NameError> {
        Topic::new(self)
    }
}
impl IntoTopic for Topic {
    fn into_topic(self) -> Result<Topic, NameError> {
        Ok(self)
    }
}
impl IntoTopic for &Topic {
    fn into_topic(self) -> Result<Topic, NameError> {
        Ok(self.clone())
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A handler was registered for an invalid topic.
    #[error("handler topic {topic:?}: {source}")]
    Topic {
        /// The topic given.
        topic: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// A handler was registered for a `sys.` topic, which the runtime owns.
    #[error("handler topic {0}: the sys. namespace is reserved for the runtime")]
    Reserved(Topic),
    /// Two handlers for one topic.
    #[error("handler topic {0} is registered twice")]
    Duplicate(Topic),
    /// A socket could not be bound.
    #[error("cannot bind the {socket} socket to {endpoint}: {reason}")]
    Bind {
        /// `pub` or `rpc`.
        socket: &'static str,
        /// The endpoint tried.
        endpoint: String,
        /// The underlying error.
        reason: String,
    },
    /// mDNS could not start.
    #[error("mDNS: {0}")]
    Mdns(String),
}

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic is not a valid name.
    #[error("invalid topic: {0}")]
    Topic(#[from] NameError),
    /// `sys.` topics are published by the runtime only.
    #[error("topic {0}: the sys. namespace is reserved for the runtime")]
    Reserved(Topic),
    /// The payload cannot be encoded or is over the size limit. With `publish` and
    /// `publish_with`, known only for an event someone would receive: one that nobody
    /// would is not encoded, so not checked.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The node has shut down.
    #[error("the node has shut down")]
    Closed,
}

/// Options of one instruction call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// How long to wait; the config's default when unset.
    pub deadline: Option<Duration>,
    /// Send to this node only (no routing, no retry elsewhere).
    pub target: Option<NodeId>,
    /// The request id; a new one when unset. A caller that repeats an instruction after
    /// an unclear outcome (a deadline, a lost connection) reuses the id, so that a
    /// provider that keeps replies (SPEC 9.4) answers it once.
    pub id: Option<MessageId>,
}

impl CallOptions {
    /// Sets the deadline.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Sends to one node.
    pub fn to(mut self, node: NodeId) -> Self {
        self.target = Some(node);
        self
    }

    /// Uses this request id (to repeat an instruction idempotently).
    pub fn id(mut self, id: MessageId) -> Self {
        self.id = Some(id);
        self
    }
}

/// One provider's answer to a broadcast.
#[derive(Debug, Clone)]
pub struct Ack<T> {
    /// The provider.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// Its reply, or the error (DEADLINE_EXCEEDED if it did not answer in time).
    pub result: Result<T, Status>,
}

/// Counters of a node, for monitoring and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Events accepted by `publish`.
    pub events_published: u64,
    /// Events dropped because the publish queue was full, or still queued when a
    /// shutdown's flush ran out of time.
    pub events_dropped: u64,
    /// Events accepted by `publish` that no peer subscribed to at that moment: they took
    /// their seq and reached only this node's own subscribers (counted in
    /// `events_published` too).
    pub events_unsubscribed: u64,
    /// Frames written to the PUB socket (a batch is one frame).
    pub frames_published: u64,
    /// Events received from peers.
    pub events_received: u64,
    /// Events known missing from sequence gaps.
    pub events_missed: u64,
    /// Events dropped because a subscription was full.
    pub subscription_dropped: u64,
    /// Frames from peers dropped as malformed, oversized or of another version.
    pub frames_rejected: u64,
    /// Instructions answered by this node.
    pub requests_served: u64,
    /// Instructions refused because the concurrency bound was full.
    pub requests_refused: u64,
    /// Handler panics turned into INTERNAL.
    pub handler_panics: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) events_published: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) events_unsubscribed: AtomicU64,
    pub(crate) frames_published: AtomicU64,
    pub(crate) events_received: AtomicU64,
    pub(crate) events_missed: AtomicU64,
    pub(crate) frames_rejected: AtomicU64,
    pub(crate) requests_served: AtomicU64,
    pub(crate) requests_refused: AtomicU64,
    pub(crate) handler_panics: AtomicU64,
}

/// More than an event envelope adds to its topic and payload once encoded: an event that
/// leaves this much room under the size limit cannot be refused as too large.
pub(crate) const ENVELOPE_OVERHEAD_MAX: usize = 256;

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Shared state of a running node. Tasks hold it; applications hold a [`NodeHandle`].
pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    pub(crate) codec: Codec,
    pub(crate) started_ms: u64,
    pub(crate) endpoints: Endpoints,
    pub(crate) handlers: FastMap<Topic, Arc<dyn ErasedHandler>>,
    pub(crate) serves: Vec<Served>,
    pub(crate) peers: Mutex<PeerTable>,
    pub(crate) peer_events: broadcast::Sender<PeerEvent>,
    pub(crate) subs: Subscriptions,
    pub(crate) clients: Clients,
    /// The publish queue (with the per-topic seqs), which the publisher task empties.
    pub(crate) outbox: Outbox,
    /// The PUB socket's subscribers and backlog (the socket is the publisher task's).
    pub(crate) pub_state: zeromq::PubSocketState,
    pub(crate) control_tx: mpsc::Sender<Outgoing>,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) local_outstanding: std::sync::atomic::AtomicUsize,
    pub(crate) serving: crate::transport::server::Bound,
    pub(crate) counters: Counters,
    pub(crate) closing: AtomicBool,
    /// Shutdown asks the publisher to send what is queued, then the goodbye.
    pub(crate) leaving: CancellationToken,
    /// The publisher has sent the goodbye and its socket has written it (or gave up).
    pub(crate) flushed: CancellationToken,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) handler_tasks: TaskTracker,
    pub(crate) sub_tasks: Mutex<HashMap<NodeId, CancellationToken>>,
    /// Endpoints with a `sys.describe` call under way.
    pub(crate) describing: Mutex<std::collections::HashSet<String>>,
    pub(crate) mdns: Mutex<Option<discovery::mdns::Mdns>>,
    /// Peers that expired for silence, looked for again.
    pub(crate) rejoin: discovery::rejoin::Rejoin,
    /// The applications' guard, so that handles made inside the node share it.
    guard: std::sync::OnceLock<std::sync::Weak<Guard>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("name", &self.config.node.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Inner {
    pub(crate) fn peers(&self) -> std::sync::MutexGuard<'_, PeerTable> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn emit(&self, event: PeerEvent) {
        tracing::debug!(node = %self.config.node.name, ?event, "peer event");
        let _ = self.peer_events.send(event);
    }

    /// This node's describe answer.
    pub(crate) fn describe(&self) -> Describe {
        let peers = self
            .peers()
            .iter()
            .take(MAX_INTRODUCED)
            .map(|p| PeerRecord {
                id: p.describe.id,
                name: p.describe.name.clone(),
                endpoints: p.describe.endpoints.clone(),
            })
            .collect();
        Describe {
            id: self.id,
            name: self.config.node.name.clone(),
            mesh: self.config.node.mesh.clone(),
            protocol: PROTOCOL_VERSION,
            version: IMPLEMENTATION.into(),
            roles: self.config.node.roles.clone(),
            serves: self.serves.clone(),
            endpoints: self.endpoints.clone(),
            heartbeat_ms: self.config.liveness.heartbeat_ms,
            started_ms: self.started_ms,
            peers,
            batch: true,
        }
    }

    /// Runs the instruction `topic` here. The runtime's own `sys.` instructions are
    /// answered inline; others go to the registered handler.
    pub(crate) fn local_handler(&self, topic: &Topic) -> Option<Arc<dyn ErasedHandler>> {
        self.handlers.get(topic).cloned()
    }

    pub(crate) fn sys_reply(self: &Arc<Self>, topic: &Topic, data: &[u8]) -> Option<Reply> {
        fn encode<T: Serialize>(v: &T) -> Reply {
            to_payload(v).map(Bytes::from).map_err(|e| e.to_status())
        }
        match topic.as_str() {
            sys::DESCRIBE => {
                let req = match from_payload::<sys::DescribeRequest>(data) {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e.to_status())),
                };
                // consider() skips a caller already known at this endpoint; a known id at
                // a new endpoint (restarted with a fixed id) is described again.
                if let Some(caller) = req.caller {
                    if caller.id != self.id {
                        discovery::consider(
                            self,
                            caller.endpoints.rpc,
                            crate::peers::Via::Introduction,
                            Some(caller.id),
                            false,
                        );
                    }
                }
                Some(encode(&self.describe()))
            }
            sys::PING => Some(encode(&sys::Pong {
                time: mlmesh_protocol::now_nanos(),
            })),
            _ => None,
        }
    }

    /// As [`Inner::enqueue_event`], with a payload built only if the event would reach
    /// someone: a peer subscribed to its topic (the PUB filters by subscription, SPEC
    /// 5.2) or a subscription of this node's own. An event nobody would get takes its
    /// seq, as a dropped event does (SPEC 8.1), and costs no encoding.
    pub(crate) async fn enqueue_event_with(
        &self,
        topic: Topic,
        build: impl FnOnce() -> Result<Vec<u8>, EncodeError>,
    ) -> Result<(), PublishError> {
        if self.pub_state.wants(topic.as_str().as_bytes()) || self.subs.wants(&topic) {
            return self.enqueue_event(topic, Bytes::from(build()?)).await;
        }
        tokio::task::consume_budget().await;
        self.outbox.next_seq(&topic);
        bump(&self.counters.events_unsubscribed, 1);
        bump(&self.counters.events_published, 1);
        Ok(())
    }

    /// Sends one event through the publish queue, applying the overflow policy.
    pub(crate) async fn enqueue_event(
        &self,
        topic: Topic,
        data: Bytes,
    ) -> Result<(), PublishError> {
        // A publishing loop never waits under DropNewest: without this it would starve
        // the node's own publisher task on the same worker, and drop nearly everything.
        tokio::task::consume_budget().await;
        // Boxed: the waiting future is large, and most publishes never build it (a
        // future is moved whole, so its size costs every publish). Bound before the
        // await, so that no envelope is kept in this future's state across it.
        let wait = match self.try_enqueue(topic, data)? {
            None => return Ok(()),
            Some(env) => Box::pin(self.wait_for_room(env)),
        };
        wait.await
    }

    /// Queues (or, under `Overflow::DropNewest`, drops) one event without waiting; under
    /// `Overflow::Block` with the queue full, gives the envelope back to wait with.
    fn try_enqueue(&self, topic: Topic, data: Bytes) -> Result<Option<Envelope>, PublishError> {
        // The seq is given by the queue, with the event's place in it.
        let mut env = Envelope::event(topic, self.id, 0, data);
        let surely_fits = env.data.len() + env.topic.as_str().len() + ENVELOPE_OVERHEAD_MAX
            <= self.codec.max_size();
        if surely_fits && !self.pub_state.wants(env.topic.as_str().as_bytes()) {
            // No peer would get it (the PUB filters by subscription, SPEC 5.2): it takes
            // its seq, as a dropped event does (SPEC 8.1), and skips the queue, so that
            // an unwatched event costs neither an encode nor a wake-up of the publisher.
            env.body = Body::Event {
                seq: self.outbox.next_seq(&env.topic),
            };
            bump(&self.counters.events_unsubscribed, 1);
            self.published(&env);
            return Ok(None);
        }
        match self.config.limits.publish_overflow {
            Overflow::DropNewest => match self.outbox.offer(&mut env, true)? {
                Offer::Queued => {}
                Offer::Dropped | Offer::Full => bump(&self.counters.events_dropped, 1),
                Offer::Closed => return Err(PublishError::Closed),
            },
            Overflow::Block => match self.outbox.offer(&mut env, false)? {
                Offer::Queued => {}
                Offer::Closed => return Err(PublishError::Closed),
                Offer::Full | Offer::Dropped => return Ok(Some(env)),
            },
        }
        self.published(&env);
        Ok(None)
    }

    /// Counts a queued (or dropped) event and hands it to this node's own subscribers,
    /// which see their node's events without the network.
    fn published(&self, env: &Envelope) {
        bump(&self.counters.events_published, 1);
        self.subs.dispatch_one(env);
    }

    /// `Overflow::Block` with a full queue: offers `env` again each time the publisher
    /// takes a batch out, until it is queued or the node stops.
    async fn wait_for_room(&self, mut env: Envelope) -> Result<(), PublishError> {
        loop {
            // Counted and registered before the offer, so that room made right after it
            // is not missed.
            let _waiting = self.outbox.waiting();
            let room = self.outbox.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.outbox.offer(&mut env, false)? {
                Offer::Queued => {
                    self.published(&env);
                    return Ok(());
                }
                Offer::Closed => return Err(PublishError::Closed),
                Offer::Full | Offer::Dropped => {}
            }
            tokio::select! {
                _ = room => {}
                _ = self.cancel.cancelled() => return Err(PublishError::Closed),
            }
        }
    }

    /// Sends a heartbeat on the priority lane (never dropped behind a backlog).
    pub(crate) fn heartbeat(&self) {
        if let Some(out) = self.heartbeat_message(false) {
            let _ = self.control_tx.try_send(out);
        }
    }

    /// A heartbeat ready for the PUB socket; `leaving` for the goodbye, which the
    /// publisher sends itself after the last queued event (see [`NodeHandle::shutdown`]).
    pub(crate) fn heartbeat_message(&self, leaving: bool) -> Option<Outgoing> {
        let hb = Heartbeat {
            interval_ms: self.config.liveness.heartbeat_ms,
            name: self.config.node.name.clone(),
            mesh: self.config.node.mesh.clone(),
            leaving,
        };
        let topic = Topic::new(sys::HEARTBEAT).ok()?;
        let seq = self.outbox.next_seq(&topic);
        let data = to_payload(&hb).ok()?;
        let env = Envelope::event(topic.clone(), self.id, seq, data.into());
        let frame = self.codec.encode(&env).ok()?;
        Some(Outgoing {
            topic,
            frame: frame.into(),
        })
    }

    /// Removes a peer and tears down its sockets. A peer that said goodbye keeps its
    /// instruction connection for a short grace, so that replies it sent just before
    /// its goodbye (which travels on another connection) still arrive.
    pub(crate) fn drop_peer(&self, id: NodeId, endpoints: &Endpoints, goodbye: bool) {
        if let Some(token) = self
            .sub_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            token.cancel();
        }
        if goodbye {
            self.clients.retire(&endpoints.rpc, GOODBYE_GRACE);
        } else {
            self.clients.remove(&endpoints.rpc);
        }
    }
}

/// Entry point: `Node::builder(config)`.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Starts building a node from a configuration.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder {
            config,
            handlers: Vec::new(),
        }
    }
}

/// Registers handlers, then spawns the node.
pub struct NodeBuilder {
    config: Config,
    handlers: Vec<(String, u32, Arc<dyn ErasedHandler>)>,
}

impl fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .field(
                "handlers",
                &self.handlers.iter().map(|h| &h.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl NodeBuilder {
    /// Adds a role advertised to peers.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.config.node.roles.push(role.into());
        self
    }

    /// Serves the instruction `topic` with a typed handler: the payload is decoded into
    /// `T` (a mismatch is answered INVALID_ARGUMENT naming the field) and the `Ok` value
    /// is the reply payload; an `Err` status is the error reply.
    pub fn handle<T, R, F, Fut>(self, topic: &str, handler: F) -> Self
    where
        F: Fn(T, Ctx) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, Status>> + Send + 'static,
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
    {
        self.handle_versioned(topic, 1, handler)
    }

    /// As [`NodeBuilder::handle`], advertising payload schema version `schema`.
    pub fn handle_versioned<T, R, F, Fut>(mut self, topic: &str, schema: u32, handler: F) -> Self
    where
        F: Fn(T, Ctx) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, Status>> + Send + 'static,
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
    {
        self.handlers
            .push((topic.to_owned(), schema, Arc::new(Typed::new(handler))));
        self
    }

    /// Serves `topic` with a handler of raw MessagePack payload bytes.
    pub fn handle_raw<F, Fut>(mut self, topic: &str, handler: F) -> Self
    where
        F: Fn(Bytes, Ctx) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, Status>> + Send + 'static,
    {
        self.handlers
            .push((topic.to_owned(), 1, Arc::new(Raw(handler))));
        self
    }

    /// Binds the sockets, starts discovery, heartbeats and liveness, and returns the handle.
    /// Must be called inside a Tokio runtime.
    pub async fn spawn(self) -> Result<NodeHandle, BuildError> {
        let NodeBuilder { config, handlers } = self;
        config.validate()?;
        let mut table = FastMap::default();
        let mut serves = Vec::new();
        for (name, schema, h) in handlers {
            let topic = Topic::new(&name).map_err(|source| BuildError::Topic {
                topic: name.clone(),
                source,
            })?;
            if topic.is_reserved() {
                return Err(BuildError::Reserved(topic));
            }
            serves.push(Served {
                topic: topic.to_string(),
                schema,
            });
            if table.insert(topic.clone(), h).is_some() {
                return Err(BuildError::Duplicate(topic));
            }
        }
        serves.sort_by(|a, b| a.topic.cmp(&b.topic));

        let bind = config.bind_address()?;
        let limits = &config.limits;
        let (pub_socket, pub_port) =
            transport::publisher::bind(bind, config.network.pub_port, limits.subscriber_queue)
                .await?;
        let (router, rpc_port) =
            transport::server::bind(bind, config.network.rpc_port, limits.max_message_size).await?;
        let host = advertised_host(&config, bind);
        let endpoints = Endpoints {
            publish: format!("tcp://{host}:{pub_port}"),
            rpc: format!("tcp://{host}:{rpc_port}"),
        };

        let limits = &config.limits;
        let (control_tx, control_rx) = mpsc::channel(64);
        let epoch = Instant::now();
        let inner = Arc::new(Inner {
            id: config.node.id.unwrap_or_default(),
            codec: Codec::new(limits.max_message_size),
            started_ms: mlmesh_protocol::now_nanos() / 1_000_000,

            endpoints,
            handlers: table,
            serves,
            peers: Mutex::new(PeerTable::new(epoch)),
            peer_events: broadcast::channel(1024).0,
            subs: Subscriptions::new(limits.subscription_queue),
            clients: Clients::default(),
            outbox: Outbox::new(
                Codec::new(limits.max_message_size),
                limits.publish_queue,
                limits.publish_queue_bytes,
                limits.batch_max_bytes,
            ),
            pub_state: pub_socket.state(),
            control_tx,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            local_outstanding: Default::default(),
            serving: crate::transport::server::Bound::new(limits.max_concurrent_requests),
            counters: Counters::default(),
            closing: AtomicBool::new(false),
            leaving: CancellationToken::new(),
            flushed: CancellationToken::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            handler_tasks: TaskTracker::new(),
            sub_tasks: Mutex::new(HashMap::new()),
            describing: Mutex::default(),
            mdns: Mutex::new(None),
            rejoin: Default::default(),
            guard: std::sync::OnceLock::new(),
            config,
        });
        tracing::info!(
            node = %inner.config.node.name, id = %inner.id, mesh = %inner.config.node.mesh,
            publish = %inner.endpoints.publish, rpc = %inner.endpoints.rpc, "node started"
        );

        inner.tasks.spawn(transport::publisher::run(
            inner.clone(),
            pub_socket,
            control_rx,
        ));
        inner
            .tasks
            .spawn(transport::server::run(inner.clone(), router));
        inner.tasks.spawn(heartbeats(inner.clone()));
        inner.tasks.spawn(liveness(inner.clone()));
        let guard = Arc::new(Guard(inner.cancel.clone()));
        let _ = inner.guard.set(Arc::downgrade(&guard));
        let handle = NodeHandle {
            inner: inner.clone(),
            _guard: guard,
        };
        discovery::start(&inner)?;
        Ok(handle)
    }
}

/// The address peers are told to dial.
fn advertised_host(config: &Config, bind: Ipv4Addr) -> Ipv4Addr {
    if let Some(a) = config.network.advertise {
        return a;
    }
    if !bind.is_unspecified() {
        return bind;
    }
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|ifs| {
            ifs.into_iter().find_map(|i| match i.ip() {
                std::net::IpAddr::V4(v4) if !v4.is_loopback() => Some(v4),
                _ => None,
            })
        })
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

async fn heartbeats(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.heartbeat());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tick.tick() => inner.heartbeat(),
        }
    }
}

/// Applies the liveness rules often enough that a peer leaves within a few tens of
/// milliseconds of its deadline.
async fn liveness(inner: Arc<Inner>) {
    let period =
        Duration::from_millis(u64::from(inner.config.liveness.heartbeat_ms / 20).clamp(5, 50));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tick.tick() => {
                let sweep = inner.peers().sweep();
                for gone in sweep.removed {
                    inner.drop_peer(gone.id, &gone.endpoints, false);
                    // Silence is not a goodbye: it may be back (a healed partition, a
                    // thawed process), and mDNS alone would not say so.
                    inner.rejoin.remember(gone.id, gone.endpoints.rpc, gone.via, Instant::now());
                }
                for event in sweep.events {
                    inner.emit(event);
                }
            }
        }
    }
}

/// Cancels the node when the last application handle is dropped.
#[derive(Debug)]
struct Guard(CancellationToken);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A running node. Cheap to clone; the node stops when the last clone is dropped
/// (abruptly) or at [`NodeHandle::shutdown`] (gracefully).
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub(crate) inner: Arc<Inner>,
    _guard: Arc<Guard>,
}

impl NodeHandle {
    /// A handle for code running inside the node (handler contexts).
    pub(crate) fn internal(inner: Arc<Inner>) -> Self {
        let guard = inner
            .guard
            .get()
            .and_then(std::sync::Weak::upgrade)
            .unwrap_or_else(|| Arc::new(Guard(inner.cancel.clone())));
        Self {
            inner,
            _guard: guard,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.config.node.name
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Its PUB and ROUTER endpoints as advertised.
    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    /// What `sys.describe` answers for this node.
    pub fn describe(&self) -> Describe {
        self.inner.describe()
    }

    /// Publishes an event to every subscriber in the mesh (and this node's own). The
    /// payload is encoded only if the event would reach someone now (see
    /// [`NodeHandle::publish_with`]): a payload that cannot be encoded, or is too large,
    /// is an error only then.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: impl IntoTopic,
        payload: &T,
    ) -> Result<(), PublishError> {
        self.publish_with(topic, || to_payload(payload)).await
    }

    /// Publishes an event whose MessagePack payload `encode` builds only if the event
    /// would reach someone now: a peer subscribed to its topic, or a subscription of this
    /// node's own. An event nobody would get costs no encoding (so neither are its size
    /// or encoding checked); it takes its `seq` all the same, as a dropped event does
    /// (SPEC 8.1), and is counted in `events_unsubscribed`.
    pub async fn publish_with(
        &self,
        topic: impl IntoTopic,
        encode: impl FnOnce() -> Result<Vec<u8>, EncodeError>,
    ) -> Result<(), PublishError> {
        let topic = topic.into_topic()?;
        if topic.is_reserved() {
            return Err(PublishError::Reserved(topic));
        }
        self.inner.enqueue_event_with(topic, encode).await
    }

    /// Publishes an already-encoded MessagePack payload.
    pub async fn publish_raw(
        &self,
        topic: impl IntoTopic,
        data: Bytes,
    ) -> Result<(), PublishError> {
        let topic = topic.into_topic()?;
        if topic.is_reserved() {
            return Err(PublishError::Reserved(topic));
        }
        self.inner.enqueue_event(topic, data).await
    }

    /// Subscribes to events whose topic matches `pattern` (`*` one segment, `**` the rest),
    /// from every peer and from this node.
    pub fn subscribe(&self, pattern: &str) -> Result<Subscription, NameError> {
        Ok(self.inner.subs.subscribe(Pattern::new(pattern)?))
    }

    /// Sends an instruction to one live provider and waits for its ack by the default deadline.
    pub async fn request<Req, Resp>(
        &self,
        topic: impl IntoTopic,
        payload: &Req,
    ) -> Result<Resp, Status>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.request_with(topic, payload, CallOptions::default())
            .await
    }

    /// As [`NodeHandle::request`], with options (deadline, target node).
    pub async fn request_with<Req, Resp>(
        &self,
        topic: impl IntoTopic,
        payload: &Req,
        options: CallOptions,
    ) -> Result<Resp, Status>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let data = to_payload(payload).map_err(|e| e.to_status())?;
        let reply = self.request_raw(topic, Bytes::from(data), options).await?;
        from_payload(&reply).map_err(|e| e.to_status())
    }

    /// Sends raw MessagePack payload bytes; returns the reply's payload bytes.
    pub async fn request_raw(
        &self,
        topic: impl IntoTopic,
        data: Bytes,
        options: CallOptions,
    ) -> Result<Bytes, Status> {
        let topic = topic.into_topic().map_err(|e| {
            Status::error(mlmesh_protocol::Code::InvalidArgument, e.to_string()).with_field("type")
        })?;
        rpc::call(&self.inner, &self.clone(), topic, data, options).await
    }

    /// A stream of requests to `topic`, many in flight from one task: `send` queues a
    /// request and returns its id, `next` sends what was queued and returns the answers
    /// as they come. For many requests at once, where a future per call (as
    /// [`NodeHandle::request`] makes) would cost more than the request; see
    /// [`RequestStream`].
    ///
    /// ```no_run
    /// # async fn run(node: mlmesh::NodeHandle) -> Result<(), mlmesh::Status> {
    /// use mlmesh::StreamOptions;
    /// let mut stream = node.request_stream("math.square", StreamOptions::default())?;
    /// let mut next = 0..10_000u64;
    /// let mut sum = 0;
    /// // Fill the window, then send one more per answer.
    /// while stream.in_flight() < stream.window() {
    ///     let Some(x) = next.next() else { break };
    ///     stream.send(&x)?;
    /// }
    /// while let Some(answer) = stream.next::<u64>().await {
    ///     sum += answer.result?;
    ///     if let Some(x) = next.next() {
    ///         stream.send(&x)?;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn request_stream(
        &self,
        topic: impl IntoTopic,
        options: StreamOptions,
    ) -> Result<RequestStream, Status> {
        let topic = topic.into_topic().map_err(|e| {
            Status::error(mlmesh_protocol::Code::InvalidArgument, e.to_string()).with_field("type")
        })?;
        RequestStream::new(self, topic, options)
    }

    /// Sends one instruction to every live provider and gathers each one's ack (or
    /// error) by the deadline.
    pub async fn broadcast<Req, Resp>(
        &self,
        topic: impl IntoTopic,
        payload: &Req,
        deadline: Option<Duration>,
    ) -> Result<Vec<Ack<Resp>>, Status>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let data = to_payload(payload).map_err(|e| e.to_status())?;
        let acks = self
            .broadcast_raw(topic, Bytes::from(data), deadline)
            .await?;
        Ok(acks
            .into_iter()
            .map(|a| Ack {
                node: a.node,
                name: a.name,
                result: a
                    .result
                    .and_then(|b| from_payload(&b).map_err(|e| e.to_status())),
            })
            .collect())
    }

    /// [`NodeHandle::broadcast`] with raw payload bytes.
    pub async fn broadcast_raw(
        &self,
        topic: impl IntoTopic,
        data: Bytes,
        deadline: Option<Duration>,
    ) -> Result<Vec<Ack<Bytes>>, Status> {
        let topic = topic.into_topic().map_err(|e| {
            Status::error(mlmesh_protocol::Code::InvalidArgument, e.to_string()).with_field("type")
        })?;
        rpc::broadcast(&self.inner, &self.clone(), topic, data, deadline).await
    }

    /// The peers in the table now: alive or suspect, never the ones already gone.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.inner.peers().infos()
    }

    /// Waits until as many connections to this node's PUB socket have subscribed to its
    /// events as there are peers in the table, or until `timeout`; returns how many
    /// were missing then (0: none).
    ///
    /// A PUB drops events for a subscriber whose subscriptions have not reached it yet
    /// (the "slow joiner"), and a peer connects and subscribes a moment after it admits
    /// this node. A node that publishes right after joining (a short-lived one, such as
    /// `mlmesh pub`) calls this first, so that its events reach every peer in its table
    /// that subscribes to them. A connection counts once it holds a subscription that
    /// covers `sys.`, which every node makes (SPEC 5.2) and the reference implementation
    /// sends after its others: from then on the peer's subscriptions are all in.
    /// Connections are counted, not matched to peers (ZeroMQ does not say which node a
    /// SUB belongs to).
    pub async fn wait_for_subscribers(&self, timeout: Duration) -> usize {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let peers = self.inner.peers().iter().count();
            let ready = self
                .inner
                .pub_state
                .subscriptions()
                .await
                .iter()
                .filter(|subs| subs.iter().any(|p| transport::subscriber::covers_sys(p)))
                .count();
            let missing = peers.saturating_sub(ready);
            if missing == 0 || tokio::time::Instant::now() >= until {
                return missing;
            }
            tokio::time::sleep(SUBSCRIBERS_POLL).await;
        }
    }

    /// Peer changes from now on (joined, suspect, recovered, left).
    pub fn watch_peers(&self) -> broadcast::Receiver<PeerEvent> {
        self.inner.peer_events.subscribe()
    }

    /// The node's counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            events_published: get(&c.events_published),
            events_dropped: get(&c.events_dropped),
            events_unsubscribed: get(&c.events_unsubscribed),
            frames_published: get(&c.frames_published),
            events_received: get(&c.events_received),
            events_missed: get(&c.events_missed),
            subscription_dropped: get(&self.inner.subs.dropped),
            frames_rejected: get(&c.frames_rejected),
            requests_served: get(&c.requests_served),
            requests_refused: get(&c.requests_refused),
            handler_panics: get(&c.handler_panics),
        }
    }

    /// Leaves the mesh gracefully: refuses new instructions (UNAVAILABLE), finishes the
    /// ones in flight (bounded by the default deadline), flushes queued events, says
    /// goodbye (a leaving heartbeat after the last event, then an mDNS unregister), then
    /// stops every task. Events published once the flush has begun are refused
    /// ([`PublishError::Closed`]).
    pub async fn shutdown(self) {
        let inner = &self.inner;
        if inner.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        inner.handler_tasks.close();
        let drain = inner.config.default_deadline();
        if tokio::time::timeout(drain, inner.handler_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(node = %inner.config.node.name, "in-flight instructions outlived the shutdown drain");
        }
        // The publisher sends every queued event, then the leaving heartbeat, and waits
        // (bounded) for its socket to write them. The goodbye must come last: a peer
        // stops listening as soon as it arrives, so events behind it would be lost.
        inner.outbox.refuse();
        inner.leaving.cancel();
        if tokio::time::timeout(transport::publisher::FLUSH_BOUND, inner.flushed.cancelled())
            .await
            .is_err()
        {
            tracing::warn!(node = %inner.config.node.name, "the publisher did not flush in time");
        }
        // Unregistered only now: peers also take an mDNS removal as a goodbye.
        let mdns = inner.mdns.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mdns) = mdns {
            // mdns-sd answers on blocking channels: wait for it off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || mdns.goodbye()).await;
        }
        inner.cancel.cancel();
        inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), inner.tasks.wait()).await;
        inner.subs.close();
        inner.clients.close_all();
        tracing::info!(node = %inner.config.node.name, "node stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlmesh_protocol::name::MAX_TOPIC_LEN;

    #[test]
    fn an_event_envelope_adds_less_than_its_overhead_bound() {
        let codec = Codec::new(usize::MAX);
        for (topic_len, data_len) in [
            (1, 0),
            (MAX_TOPIC_LEN, 0),
            (MAX_TOPIC_LEN, 70_000),
            (MAX_TOPIC_LEN, 5 << 20),
        ] {
            let topic = Topic::new(&"a".repeat(topic_len)).expect("a valid topic");
            let mut env =
                Envelope::event(topic, NodeId::new(), u64::MAX, vec![0u8; data_len].into());
            env.time = u64::MAX;
            let size = codec.encode(&env).expect("encodes").len();
            assert!(
                size <= topic_len + data_len + ENVELOPE_OVERHEAD_MAX,
                "{size} bytes for a {topic_len}-byte topic and {data_len} bytes of data"
            );
        }
    }
}
