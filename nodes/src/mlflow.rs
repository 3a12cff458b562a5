//! The MLflow adapter: `tracking/1` and `registry/1` served by a real MLflow tracking
//! server, over its REST API (`/api/2.0/mlflow/...`).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use mlmesh::{Config, Node};
//! use mlmesh_nodes::mlflow::{Mlflow, MlflowSection};
//!
//! let section = MlflowSection { url: "http://127.0.0.1:5000".into(), ..MlflowSection::default() };
//! let adapter = Mlflow::open(&section)?;
//! let node = adapter.serve(Node::builder(Config::local("mlflow", "demo"))).spawn().await?;
//! adapter.watch(&node); // RUNNING runs of owners that leave the mesh become CRASHED
//! # Ok(()) }
//! ```
//!
//! The node advertises the roles `tracker` and `registry`, answers every instruction of
//! both families, and publishes the same events as [`crate::tracker`] and
//! [`crate::registry`], once MLflow has acknowledged the change.
//!
//! ## What it keeps itself
//! A small SQLite store in `data_dir` ([`crate::store`]): the replies of the
//! instructions it executed (a retried request gets the first reply and is not sent to
//! MLflow again), the owner node of each run it started (for CRASHED runs), and the
//! mlmesh id of any MLflow experiment id that is not a plain integer. Integer experiment
//! ids (MLflow's own) map to 32 hex digits without any state: `"7"` is
//! `00000000000000000000000000000007`. MLflow's run ids are 32 lowercase hex digits
//! already and are used as they are.
//!
//! ## Calls to MLflow
//! One pool of kept-alive connections; every call is bounded by `timeout_ms`, and at
//! most `max_in_flight` are under way at once. An unreachable, slow or overloaded MLflow
//! is `UNAVAILABLE` (retryable); MLflow's error codes map to the standard ones
//! (`RESOURCE_DOES_NOT_EXIST` is `NOT_FOUND`, `INVALID_PARAMETER_VALUE` is
//! `INVALID_ARGUMENT`, `RESOURCE_ALREADY_EXISTS` is `ALREADY_EXISTS`, ...).
//!
//! ## Where MLflow differs from the standard
//! SPEC.md section 17 lists what an adapter cannot promise (atomic batches, duplicate
//! counts across batches, summaries in searches, ...) and what this one does instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use mlmesh::protocol::{from_payload, to_payload, Code, NodeId, Status};
use mlmesh::{Ctx, NodeBuilder, NodeHandle, PeerEvent};

use crate::serve::{now_ms, Meta};
use crate::store::{self, Done, Key, Store, StoreError, StoreSection};

mod filter;
mod http;
mod ids;
mod registry;
mod tracking;
mod wire;

pub use crate::tracker::ORPHAN_GRACE;

/// `[mlflow]`: which MLflow server, and where the adapter keeps its own few records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlflowSection {
    /// The tracking server's base URL (`http://127.0.0.1:5000`); the REST API is under
    /// `<url>/api/2.0/mlflow/`.
    pub url: String,
    /// A bearer token sent with every call (`Authorization: Bearer <token>`), if set.
    pub token: Option<String>,
    /// The longest any one HTTP call to MLflow may take, connecting included (ms).
    pub timeout_ms: u64,
    /// Where the adapter keeps its store (created if missing; one adapter owns it).
    pub data_dir: PathBuf,
    /// The most HTTP calls to MLflow under way at once; a call that waits longer than
    /// `timeout_ms` for its turn is UNAVAILABLE.
    pub max_in_flight: usize,
    /// Experiment and registered model names in MLflow start with this; the adapter
    /// sees only those and shows them without it. Empty (the default): every name.
    /// Lets several meshes (or test suites) share one MLflow server. Letters, digits,
    /// `.` and `-` only.
    pub namespace: String,
}

impl Default for MlflowSection {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:5000".into(),
            token: None,
            timeout_ms: 10_000,
            data_dir: PathBuf::from("mlmesh-mlflow-data"),
            max_in_flight: 16,
            namespace: String::new(),
        }
    }
}

/// Why the adapter cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MlflowError {
    /// A value of `[mlflow]` is wrong.
    #[error("config field mlflow.{field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The store cannot open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client cannot be built.
    #[error("http client: {0}")]
    Http(String),
}

impl MlflowSection {
    fn check(&self) -> Result<(), MlflowError> {
        let bad = |field, reason: &str| {
            Err(MlflowError::Config {
                field,
                reason: reason.into(),
            })
        };
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return bad("url", "must start with http:// or https://");
        }
        if !(1..=600_000).contains(&self.timeout_ms) {
            return bad("timeout_ms", "must be between 1 and 600000");
        }
        if !(1..=1024).contains(&self.max_in_flight) {
            return bad("max_in_flight", "must be between 1 and 1024");
        }
        if !self
            .namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return bad("namespace", "only letters, digits, `.` and `-`");
        }
        Ok(())
    }
}

/// The schema version this build writes.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ids(
    kind TEXT NOT NULL, mlflow TEXT NOT NULL, uid TEXT NOT NULL,
    PRIMARY KEY(kind, mlflow)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS ids_by_uid ON ids(kind, uid);
CREATE TABLE IF NOT EXISTS runs(
    run TEXT PRIMARY KEY, experiment TEXT NOT NULL, owner BLOB, state INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_open ON runs(owner) WHERE state = 0;
";

/// What the handlers share: the REST client, the store, the namespace.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) rest: http::Rest,
    pub(crate) store: Store,
    pub(crate) namespace: String,
    inflight: InFlight,
}

impl Inner {
    /// The name in MLflow of a name in the mesh.
    pub(crate) fn in_mlflow(&self, name: &str) -> String {
        format!("{}{name}", self.namespace)
    }

    /// The name in the mesh of a name in MLflow, if it is in the namespace.
    pub(crate) fn in_mesh<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.namespace.as_str())
    }
}

/// A change to the adapter's own records, committed with the instruction's reply.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// A run it started (with its owner) or first saw (without).
    Run {
        run: String,
        experiment: String,
        owner: Option<NodeId>,
    },
    /// A run's state: 0 open, 1 ended, 2 crashed.
    RunState { run: String, state: i64 },
}

/// What a write produced: the reply, the events to publish once it is recorded, and the
/// changes to record with it.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) reply: Bytes,
    pub(crate) events: Vec<(&'static str, Bytes)>,
    pub(crate) changes: Vec<Change>,
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Status> {
    to_payload(value)
        .map(Bytes::from)
        .map_err(|e| e.to_status())
}

impl Outcome {
    pub(crate) fn reply<T: Serialize + ?Sized>(value: &T) -> Result<Self, Status> {
        Ok(Self {
            reply: encode(value)?,
            ..Self::default()
        })
    }

    pub(crate) fn event<T: Serialize + ?Sized>(
        mut self,
        topic: &'static str,
        payload: &T,
    ) -> Result<Self, Status> {
        self.events.push((topic, encode(payload)?));
        Ok(self)
    }

    pub(crate) fn change(mut self, change: Change) -> Self {
        self.changes.push(change);
        self
    }
}

/// Requests under way, by key: a retry that arrives while its first attempt is still
/// talking to MLflow waits for it, then gets its stored reply.
#[derive(Debug, Default)]
struct InFlight(Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>);

struct Entered<'a> {
    set: &'a InFlight,
    key: Key,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl InFlight {
    async fn enter(&self, key: Key) -> Entered<'_> {
        let slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        let guard = slot.lock_owned().await;
        Entered {
            set: self,
            key,
            guard: Some(guard),
        }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut map = self
            .set
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's reference and this guard's: nobody else waits on the key.
        if map
            .get(&self.key)
            .is_some_and(|s| Arc::strong_count(s) <= 2)
        {
            map.remove(&self.key);
        }
        self.guard.take();
    }
}

/// The MLflow adapter: the REST client, its store, and the handlers of both families.
#[derive(Debug, Clone)]
pub struct Mlflow {
    inner: Arc<Inner>,
}

impl Mlflow {
    /// Checks the section, opens (or creates) `mlflow.db` in `data_dir` and builds the
    /// HTTP client. It does not call MLflow: an MLflow that is not up yet makes calls
    /// UNAVAILABLE, not the adapter fail.
    pub fn open(section: &MlflowSection) -> Result<Self, MlflowError> {
        section.check()?;
        let rest = http::Rest::new(section)?;
        let store = Store::open(
            &StoreSection {
                data_dir: section.data_dir.clone(),
                ..StoreSection::default()
            },
            "mlflow.db",
            SCHEMA,
            SCHEMA_VERSION,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                rest,
                store,
                namespace: section.namespace.clone(),
                inflight: InFlight::default(),
            }),
        })
    }

    /// The adapter's store file.
    pub fn store_path(&self) -> &Path {
        self.inner.store.path()
    }

    /// Asks MLflow's `/health`: Ok if it answers 200 within the timeout.
    pub async fn probe(&self) -> Result<(), Status> {
        self.inner.rest.health().await
    }

    /// Adds the roles `tracker` and `registry` and a handler for every instruction of
    /// `tracking/1` and `registry/1`.
    pub fn serve(&self, builder: NodeBuilder) -> NodeBuilder {
        let b = builder.role("tracker").role("registry");
        let b = tracking::serve(b, &self.inner);
        registry::serve(b, &self.inner)
    }

    /// Watches the mesh for owners of RUNNING runs that leave it: their runs end FAILED
    /// in MLflow and CRASHED in the mesh (`tracking.run.ended`). Runs until the node
    /// shuts down.
    pub fn watch(&self, node: &NodeHandle) {
        self.watch_with(node, ORPHAN_GRACE);
    }

    /// [`Mlflow::watch`] with another grace period for the owners of runs found open at
    /// start.
    pub fn watch_with(&self, node: &NodeHandle, grace: Duration) {
        let inner = self.inner.clone();
        let node = node.clone();
        let mut events = node.watch_peers();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let orphans = tokio::time::sleep(grace);
            tokio::pin!(orphans);
            let mut swept = false;
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(PeerEvent::Left(id, _)) => tracking::crash(&inner, &node, Some(id)).await,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => {
                            if started.elapsed() >= grace {
                                tracking::crash(&inner, &node, None).await;
                            }
                        }
                        Err(RecvError::Closed) => return,
                    },
                    () = &mut orphans, if !swept => {
                        swept = true;
                        tracking::crash(&inner, &node, None).await;
                    }
                }
            }
        });
    }
}

/// Records `changes` with the reply under `key` (or without a key), in one commit.
pub(crate) async fn record(
    inner: &Inner,
    key: Option<Key>,
    reply: Bytes,
    changes: Vec<Change>,
) -> Result<Bytes, Status> {
    let done = inner
        .store
        .write(
            key,
            Box::new(move |c| {
                ids::apply(c, &changes)?;
                Ok(Done {
                    reply,
                    events: Vec::new(),
                })
            }),
        )
        .await?;
    Ok(done.reply)
}

/// The stored reply of a request, if it was executed.
async fn stored_reply(inner: &Inner, key: Key) -> Result<Option<Bytes>, Status> {
    inner
        .store
        .read(move |c| {
            use rusqlite::OptionalExtension;
            c.prepare_cached("SELECT reply FROM requests WHERE key = ?1")
                .and_then(|mut st| {
                    st.query_row([&key[..]], |r| r.get::<_, Vec<u8>>(0))
                        .optional()
                })
                .map(|r| r.map(Bytes::from))
                .map_err(store::internal)
        })
        .await
}

/// Serves `topic` with a write: decode, answer a retry from its stored reply, else run
/// `op` (which calls MLflow), record its reply and changes, publish its events, reply.
pub(crate) fn write<T, F, Fut>(
    builder: NodeBuilder,
    topic: &str,
    inner: &Arc<Inner>,
    op: F,
) -> NodeBuilder
where
    T: serde::de::DeserializeOwned + Send + 'static,
    F: Fn(Arc<Inner>, T, Meta) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Outcome, Status>> + Send + 'static,
{
    let op = Arc::new(op);
    let inner = inner.clone();
    builder.handle_raw(topic, move |data: Bytes, ctx: Ctx| {
        let op = op.clone();
        let inner = inner.clone();
        async move {
            let req: T = from_payload(&data).map_err(|e| e.to_status())?;
            let key = store::key(ctx.request_id(), ctx.source());
            let _entered = inner.inflight.enter(key).await;
            if let Some(reply) = stored_reply(&inner, key).await? {
                return Ok(reply);
            }
            let meta = Meta {
                source: ctx.source(),
                node: ctx.node().id(),
                now_ms: now_ms(),
            };
            let out = op(inner.clone(), req, meta).await?;
            let reply = record(&inner, Some(key), out.reply, out.changes).await?;
            for (topic, data) in out.events {
                // MLflow has the change and the reply is recorded; an event that cannot
                // be queued is counted by the runtime as dropped.
                let _ = ctx.node().publish_raw(topic, data).await;
            }
            Ok(reply)
        }
    })
}

/// Serves `topic` with a read: decode, run `op`, encode.
pub(crate) fn read<T, R, F, Fut>(
    builder: NodeBuilder,
    topic: &str,
    inner: &Arc<Inner>,
    op: F,
) -> NodeBuilder
where
    T: serde::de::DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(Arc<Inner>, T, NodeId) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<R, Status>> + Send + 'static,
{
    let op = Arc::new(op);
    let inner = inner.clone();
    builder.handle_raw(topic, move |data: Bytes, ctx: Ctx| {
        let op = op.clone();
        let inner = inner.clone();
        async move {
            let req: T = from_payload(&data).map_err(|e| e.to_status())?;
            let out = op(inner, req, ctx.node().id()).await?;
            encode(&out)
        }
    })
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Status {
    Status::error(Code::InvalidArgument, message).with_field(field)
}

pub(crate) fn not_found(field: impl Into<String>, message: impl Into<String>) -> Status {
    Status::error(Code::NotFound, message).with_field(field)
}
