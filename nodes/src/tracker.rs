//! The experiment tracker: `tracking/1` over an embedded SQLite store.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use mlmesh::{Config, Node};
//! use mlmesh_nodes::{store::StoreSection, tracker::Tracker};
//!
//! let tracker = Tracker::open(&StoreSection::default())?;
//! let node = tracker.serve(Node::builder(Config::local("tracker", "demo"))).spawn().await?;
//! tracker.watch(&node); // RUNNING runs of owners that leave the mesh become CRASHED
//! # Ok(()) }
//! ```
//!
//! ## Schema
//! `experiments`, `experiment_tags`, `runs` (the owner node's id, the status), `params`
//! and `tags` (one row per run and key), `inputs`, `metric_keys` (one row per run and
//! key: the summary, with the latest value NULL when it is NaN so that filters never
//! match it) and `metrics` (one row per distinct `(step, timestamp, value bits)` of a
//! key: an exact duplicate is the same primary key and is dropped).
//!
//! ## Semantics beyond MLflow
//! - A batch is atomic; so is every other instruction.
//! - A run whose owner leaves the mesh while it is RUNNING becomes CRASHED. After a
//!   restart, RUNNING runs whose owner is not seen within [`ORPHAN_GRACE`] become CRASHED.
//! - Replies reach the caller only once committed; a retry with the same request id
//!   gets the stored reply (see [`crate::store`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use mlmesh::protocol::tracking::{self, ExperimentGet, MetricHistory, RunGet, RunSearch};
use mlmesh::protocol::NodeId;
use mlmesh::{NodeBuilder, NodeHandle, PeerEvent};

use crate::serve::{self, now_ms, Meta};
use crate::store::{Store, StoreError, StoreSection};

mod read;
pub(crate) mod search;
mod write;

/// How long a restarted tracker waits for the owners of its RUNNING runs to show up
/// before it declares their runs CRASHED.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// The schema version this build writes.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS experiments(
    id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, name TEXT NOT NULL UNIQUE,
    artifact_location TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS experiment_tags(
    experiment INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(experiment, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs(
    id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, experiment INTEGER NOT NULL,
    name TEXT NOT NULL, status TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER,
    owner BLOB, parent TEXT, artifact_uri TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs(experiment, start_ms);
CREATE INDEX IF NOT EXISTS runs_running ON runs(owner) WHERE status = 'RUNNING';
CREATE TABLE IF NOT EXISTS params(
    run INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(run, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags(
    run INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(run, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inputs(
    run INTEGER NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL, source TEXT NOT NULL,
    context TEXT NOT NULL, PRIMARY KEY(run, name, digest, context)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metric_keys(
    id INTEGER PRIMARY KEY, run INTEGER NOT NULL, key TEXT NOT NULL,
    last REAL, last_bits INTEGER NOT NULL, last_step INTEGER NOT NULL,
    last_ts INTEGER NOT NULL, min REAL, max REAL, count INTEGER NOT NULL,
    UNIQUE(run, key));
CREATE TABLE IF NOT EXISTS metrics(
    key_id INTEGER NOT NULL, step INTEGER NOT NULL, ts INTEGER NOT NULL, bits INTEGER NOT NULL,
    PRIMARY KEY(key_id, step, ts, bits)) WITHOUT ROWID;
";

/// What the ops need besides the store.
#[derive(Debug)]
pub(crate) struct Settings {
    /// Where experiments put artifacts unless they say otherwise: `file://<data dir>/artifacts`.
    pub(crate) artifact_root: String,
}

/// An experiment tracker: a store and the handlers of `tracking/1`.
#[derive(Debug, Clone)]
pub struct Tracker {
    store: Arc<Store>,
    settings: Arc<Settings>,
}

impl Tracker {
    /// Opens (or creates) `tracker.db` in the section's data directory.
    pub fn open(section: &StoreSection) -> Result<Self, StoreError> {
        let store = Store::open(section, "tracker.db", SCHEMA, SCHEMA_VERSION)?;
        let dir = std::path::absolute(&section.data_dir).unwrap_or(section.data_dir.clone());
        let settings = Settings {
            artifact_root: format!("file://{}/artifacts", dir.display()),
        };
        Ok(Self {
            store: Arc::new(store),
            settings: Arc::new(settings),
        })
    }

    /// The database file.
    pub fn store_path(&self) -> &Path {
        self.store.path()
    }

    /// Adds the role `tracker` and a handler for every `tracking/1` instruction.
    pub fn serve(&self, builder: NodeBuilder) -> NodeBuilder {
        let store = &self.store;
        let b = builder.role("tracker");
        let s = self.settings.clone();
        let b = serve::write(
            b,
            tracking::EXPERIMENT_CREATE,
            store,
            move |c, req, meta| write::experiment_create(c, req, &s, meta),
        );
        let s = self.settings.clone();
        let b = serve::write(b, tracking::RUN_START, store, move |c, req, meta| {
            write::run_start(c, req, &s, meta)
        });
        let b = serve::write(b, tracking::RUN_END, store, write::run_end);
        let b = serve::write(b, tracking::RUN_LOG, store, |c, req, _meta| {
            write::run_log(c, req)
        });
        let b = serve::read(
            b,
            tracking::EXPERIMENT_GET,
            store,
            |c, req: ExperimentGet| read::experiment_get(c, req),
        );
        let b = serve::read_as(b, tracking::RUN_GET, store, |c, req: RunGet, me| {
            read::run_get(c, req, me)
        });
        let b = serve::read(
            b,
            tracking::METRIC_HISTORY,
            store,
            |c, req: MetricHistory| read::metric_history(c, req),
        );
        serve::read_as(b, tracking::RUN_SEARCH, store, |c, req: RunSearch, me| {
            read::run_search(c, req, me)
        })
    }

    /// Watches the mesh for owners of RUNNING runs that leave it, and marks their runs
    /// CRASHED (publishing `tracking.run.ended`). Runs until the node shuts down.
    pub fn watch(&self, node: &NodeHandle) {
        self.watch_with(node, ORPHAN_GRACE);
    }

    /// [`Tracker::watch`] with another grace period for the owners of runs found
    /// RUNNING at start.
    pub fn watch_with(&self, node: &NodeHandle, grace: Duration) {
        let tracker = self.clone();
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
                        Ok(PeerEvent::Left(id, _)) => tracker.crash(&node, Some(id)).await,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => {
                            // Missed events: judge every owner against the table instead.
                            if started.elapsed() >= grace {
                                tracker.crash(&node, None).await;
                            }
                        }
                        Err(RecvError::Closed) => return,
                    },
                    () = &mut orphans, if !swept => {
                        swept = true;
                        tracker.crash(&node, None).await;
                    }
                }
            }
        });
    }

    /// Marks CRASHED the RUNNING runs of `owner`, or (with `None`) of every owner not
    /// in the peer table.
    async fn crash(&self, node: &NodeHandle, owner: Option<NodeId>) {
        let owners = match owner {
            Some(id) => vec![id],
            None => {
                let owners = self
                    .store
                    .read(write::running_owners)
                    .await
                    .unwrap_or_default();
                let alive: Vec<NodeId> = node.peers().iter().map(|p| p.id).collect();
                owners
                    .into_iter()
                    .filter(|o| *o != node.id() && !alive.contains(o))
                    .collect()
            }
        };
        for owner in owners {
            let meta = Meta {
                source: owner,
                node: node.id(),
                now_ms: now_ms(),
            };
            match self
                .store
                .write(
                    None,
                    Box::new(move |c| write::crash_runs_of(c, owner, meta)),
                )
                .await
            {
                Ok(done) => {
                    for (topic, data) in done.events {
                        let _ = node.publish_raw(topic, data).await;
                    }
                }
                Err(e) => tracing::warn!(%owner, error = %e, "marking runs CRASHED failed"),
            }
        }
    }
}
