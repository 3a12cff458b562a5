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
//! - A write is decided from memory (`hot`: what the checks need) and acknowledged once
//!   appended to the tracker's journal (`tracker.journal.*` beside `tracker.db`), so that
//!   a `kill -9` loses none of it; SQLite is brought up to date right after the reply,
//!   and at the next open if the process died first. Reads wait for what was
//!   acknowledged before them. A retry with the same request id gets the stored reply
//!   (a write that changed nothing stores none: a retry of it is decided again, to the
//!   same outcome).
//!   See `journal` for the format and the durability settings.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast::error::RecvError;

use mlmesh::protocol::tracking::{self, ExperimentGet, MetricHistory, RunGet, RunSearch};
use mlmesh::protocol::{from_payload, NodeId, Status};
use mlmesh::{Ctx, NodeBuilder, NodeHandle, PeerEvent};

use crate::journal::Journal;
use crate::serve::{self, now_ms, Meta};
use crate::store::{self, Key, Store, StoreError, StoreSection};
use change::Changes;
use hot::{Decided, Hot};

mod change;
mod hot;
mod read;
pub(crate) mod search;

/// How long a restarted tracker waits for the owners of its RUNNING runs to show up
/// before it declares their runs CRASHED.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// The schema version this build writes. 2: the journal's applied position (a build
/// that knows only 1 would not replay the journal, so it must not open the file).
const SCHEMA_VERSION: i64 = 2;

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

/// An experiment tracker: a store, its journal, what writes check in memory, and the
/// handlers of `tracking/1`.
#[derive(Debug, Clone)]
pub struct Tracker {
    core: Arc<Core>,
}

#[derive(Debug)]
struct Core {
    store: Arc<Store>,
    /// Dropped before `store`: its applier applies what is left first.
    journal: Journal<Changes>,
    /// Decisions and appends in one order.
    hot: Mutex<Hot>,
    settings: Settings,
}

impl Core {
    /// Decides a write from memory and journals what it changes; returns what to reply
    /// and publish, and the journal entry (none if nothing changed). With a `key` seen
    /// before, returns its stored reply and decides nothing.
    fn decide(
        &self,
        key: Option<Key>,
        meta: Meta,
        f: impl FnOnce(&mut Hot) -> Result<Decided, Status>,
    ) -> Result<(store::Done, Option<u64>), Status> {
        let mut hot = self.hot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((reply, seq)) = key
            .as_ref()
            .map(|k| self.journal.seen(k))
            .transpose()?
            .flatten()
        {
            // A retry: its reply waits for the first attempt's entry to be synced too.
            return Ok((
                store::Done {
                    reply,
                    events: Vec::new(),
                },
                Some(seq),
            ));
        }
        let Decided { done, changes } = f(&mut hot)?;
        if changes.0.is_empty() {
            return Ok((done, None));
        }
        let applied = self.journal.applied();
        let seq = self
            .journal
            .append(changes, key, &done.reply, meta.now_ms, |c, seq| {
                hot.commit(c, seq, applied, meta.node);
            })?;
        Ok((done, Some(seq)))
    }

    /// With `durability = "full"`, waits for entry `seq` to be on disk.
    fn sync(&self, seq: Option<u64>) -> Result<(), Status> {
        let Some(seq) = seq.filter(|_| self.journal.full()) else {
            return Ok(());
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| self.journal.sync(seq))
        } else {
            self.journal.sync(seq)
        }
    }
}

/// Serves `topic` with a write decided by `op` from memory: journaled, then replied to,
/// then its events published; a retry of the same request (same id and source) gets
/// the stored reply.
fn write<T, F>(builder: NodeBuilder, topic: &str, core: &Arc<Core>, op: F) -> NodeBuilder
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(&mut Hot, T, &Settings, Meta) -> Result<Decided, Status> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let core = core.clone();
    builder.handle_raw(topic, move |data: Bytes, ctx: Ctx| {
        let op = op.clone();
        let core = core.clone();
        async move {
            let req: T = from_payload(&data).map_err(|e| e.to_status())?;
            let (meta, key) = Meta::of(&ctx);
            core.journal.progress().room().await?;
            let (done, seq) =
                core.decide(Some(key), meta, |hot| op(hot, req, &core.settings, meta))?;
            core.sync(seq)?;
            // The write is journaled: its events go out now.
            for event in done.events {
                event.publish(ctx.node()).await;
            }
            Ok(done.reply)
        }
    })
}

impl Tracker {
    /// Opens (or creates) `tracker.db` and its journal in the section's data directory,
    /// applying what the journal holds from a previous run.
    pub fn open(section: &StoreSection) -> Result<Self, StoreError> {
        let store = Arc::new(Store::open(section, "tracker.db", SCHEMA, SCHEMA_VERSION)?);
        let full = section.durability == store::Durability::Full;
        let journal = Journal::open(store.clone(), &section.data_dir, "tracker", full)?;
        let hot = Hot::load(store.open_reader()?).map_err(|e| StoreError::DataDir {
            path: store.path().to_path_buf(),
            reason: e.to_string(),
        })?;
        let dir = std::path::absolute(&section.data_dir).unwrap_or(section.data_dir.clone());
        let settings = Settings {
            artifact_root: format!("file://{}/artifacts", dir.display()),
        };
        Ok(Self {
            core: Arc::new(Core {
                store,
                journal,
                hot: Mutex::new(hot),
                settings,
            }),
        })
    }

    /// The database file.
    pub fn store_path(&self) -> &Path {
        self.core.store.path()
    }

    /// Adds the role `tracker` and a handler for every `tracking/1` instruction.
    pub fn serve(&self, builder: NodeBuilder) -> NodeBuilder {
        let core = &self.core;
        let store = &core.store;
        let b = builder.role("tracker");
        let b = write(b, tracking::EXPERIMENT_CREATE, core, Hot::experiment_create);
        let b = write(b, tracking::RUN_START, core, Hot::run_start);
        let b = write(b, tracking::RUN_END, core, |hot, req, _, meta| {
            hot.run_end(req, meta)
        });
        let b = write(b, tracking::RUN_LOG, core, |hot, req, _, meta| {
            hot.run_log(req, meta)
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
                    .core
                    .store
                    .read(read::running_owners)
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
            let core = &self.core;
            match core
                .decide(None, meta, |hot| hot.crash(owner, meta))
                .and_then(|(done, seq)| core.sync(seq).map(|()| done))
            {
                Ok(done) => {
                    for event in done.events {
                        event.publish(node).await;
                    }
                }
                Err(e) => tracing::warn!(%owner, error = %e, "marking runs CRASHED failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlmesh::protocol::tracking::RunStart;
    use mlmesh::protocol::{Code, MessageId};

    fn start(start_ms: Option<u64>) -> RunStart {
        RunStart {
            experiment: "e".into(),
            start_ms,
            ..RunStart::default()
        }
    }

    fn open(durability: store::Durability) -> (tempfile::TempDir, Tracker) {
        let dir = tempfile::tempdir().unwrap();
        let section = StoreSection {
            data_dir: dir.path().into(),
            durability,
            ..StoreSection::default()
        };
        let tracker = Tracker::open(&section).unwrap();
        (dir, tracker)
    }

    fn meta() -> Meta {
        let node = NodeId::new();
        Meta {
            source: node,
            node,
            now_ms: now_ms(),
        }
    }

    /// A value SQLite cannot take must be refused before it is journaled: once
    /// acknowledged, a write that cannot be applied would stop the applier.
    #[test]
    fn a_start_time_sqlite_cannot_hold_is_refused_before_the_journal() {
        let (_dir, t) = open(store::Durability::Normal);
        let core = &t.core;
        let m = meta();
        let err = core
            .decide(None, m, |h| {
                h.run_start(start(Some(u64::MAX)), &core.settings, m)
            })
            .unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
        assert_eq!(err.field.as_deref(), Some("start_ms"));
        assert_eq!(core.journal.progress().appended(), 0, "nothing journaled");
    }

    /// Under `full`, the reply to a retry answered from memory waits for the same sync
    /// as the first reply: `decide` gives it the entry's number.
    #[test]
    fn a_retry_answered_from_memory_waits_for_the_same_sync() {
        let (_dir, t) = open(store::Durability::Full);
        let core = &t.core;
        let m = meta();
        let key = store::key(MessageId::new(), m.source);
        let (_, first) = core
            .decide(Some(key), m, |h| {
                h.run_start(start(None), &core.settings, m)
            })
            .unwrap();
        let (_, retry) = core
            .decide(Some(key), m, |h| {
                h.run_start(start(None), &core.settings, m)
            })
            .unwrap();
        assert!(first.is_some());
        assert_eq!(retry, first);
    }
}
