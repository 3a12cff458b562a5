//! # mlmesh
//!
//! The mlmesh node runtime. Every MLOps component is a *node*: it finds its peers over
//! mDNS (or configured seeds), publishes *events* to every interested peer over ZeroMQ
//! PUB/SUB, and serves *instructions* over ROUTER/DEALER, each answered by an *ack*
//! (a reply with a standard status). The wire format and the standard names live in
//! [`mlmesh_protocol`] and its `SPEC.md`.
//!
//! ## Layout
//! - [`config`]: [`Config`], loaded from defaults < TOML file < `MLMESH_*` environment.
//! - `node`: [`Node::builder`] registers handlers and spawns a [`NodeHandle`].
//! - `peers`: the peer table and liveness (alive, suspect, gone) from heartbeats.
//! - `discovery`: mDNS and seeds; both end in a `sys.describe` call. Peers dropped for
//!   silence are described again for ten minutes, whatever their mDNS record does
//!   (`discovery::rejoin`).
//! - `transport`: the bounded publish queue in front of PUB, a SUB per peer, the
//!   ROUTER server with bounded concurrency, a DEALER client per peer.
//! - `rpc`: routing (least outstanding), deadlines, retries, broadcast, and request
//!   streams ([`RequestStream`]: many requests in flight from one task).
//! - `events`: pattern subscriptions, bounded streams and sequence-gap counting.
//! - [`clients`]: typed clients of the standard families (`tracking/1`, `registry/1`).
//!
//! ## Example
//! ```no_run
//! use mlmesh::{Config, Node, Status};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! # async fn run() -> anyhow::Result<()> {
//! let calc = Node::builder(Config::local("calc", "demo"))
//!     .handle("math.add", |req: Add, _ctx| async move { Ok::<_, Status>(req.a + req.b) })
//!     .spawn()
//!     .await?;
//! let sum: i64 = calc.request("math.add", &Add { a: 2, b: 3 }).await?;
//! assert_eq!(sum, 5);
//! calc.publish("math.added", &sum).await?;
//! calc.shutdown().await;
//! # Ok(()) }
//! ```

pub mod clients;
pub mod config;
mod discovery;
mod events;
mod handler;
mod node;
mod peers;
mod rpc;
mod transport;

/// A hash map for the per-message paths: foldhash (seeded per process) instead of
/// SipHash, whose rounds were a tenth of routing a request.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A hash set for the per-message paths, as [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub use config::{Config, ConfigError, Overflow};
pub use events::{Event, Subscription};
pub use handler::Ctx;
pub use node::{
    Ack, BuildError, CallOptions, IntoTopic, Node, NodeBuilder, NodeHandle, PublishError, Stats,
    IMPLEMENTATION,
};
pub use peers::{LeftReason, PeerEvent, PeerInfo, PeerState, Via};
pub use rpc::{RequestStream, StreamOptions, StreamReply};

pub use mlmesh_protocol as protocol;
pub use mlmesh_protocol::{Code, MessageId, NodeId, Status, Topic};

/// The README's examples, compiled as doctests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
