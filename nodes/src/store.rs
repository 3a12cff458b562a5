//! The embedded SQLite store a node owns: one writer with group commit, idempotent
//! instructions, and readers on their own connections.
//!
//! - **One owner.** The data directory is locked (`LOCK`) for the life of the store, so
//!   no other process writes it, and every write in the process goes through one
//!   connection: there is no "database is locked" to see.
//! - **Group commit.** A write is queued; whichever caller finds the writer free
//!   becomes the leader and runs everything queued, each op in its own savepoint, in one
//!   transaction with one commit. Alone, a write commits at once on the caller's thread
//!   (no thread hop); under load, hundreds share a commit.
//! - **Acknowledged means committed.** An op's result reaches its caller only after the
//!   commit; if the commit fails, every op of the batch fails with UNAVAILABLE.
//! - **Idempotent.** An op may carry a key (the request's id and source). Its reply is
//!   stored in the same transaction as its effects; the same key again gets that reply
//!   back and writes nothing. Keys are kept for `request_retention_s`.
//! - **Durability.** WAL, `synchronous = NORMAL` by default: a commit survives `kill -9`
//!   of the node, and a power loss or OS crash can lose the last commits (never corrupt
//!   the file). `durability = "full"` syncs every commit: then nothing acknowledged is
//!   lost even to a power loss, at the cost of an fsync per group of commits.
//! - **A journal in front** (the tracker's, module `journal`): writes are decided from
//!   memory and acknowledged once appended to the journal; its applier brings SQLite up
//!   to date in large transactions, and reads wait for it (`Store::follow`). The same
//!   durability settings hold, for the journal's appends: `normal` survives `kill -9`,
//!   and a power loss may lose the last acknowledged writes (the journal then ends at
//!   the first one missing: see its docs); `full` loses nothing.

use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use mlmesh::protocol::{Code, MessageId, NameError, NodeId, Status, Topic};

/// How much an acknowledged write survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Survives a crash of the node (`kill -9`); a power loss may lose the last commits.
    #[default]
    Normal,
    /// Survives a power loss too: every commit is synced to disk.
    Full,
}

/// `[store]`: where and how a node keeps its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// The data directory (created if missing). One node owns it at a time.
    pub data_dir: PathBuf,
    /// `normal` (survives `kill -9`) or `full` (survives a power loss too).
    pub durability: Durability,
    /// How long a request's reply is kept to answer a retry of it, in seconds.
    pub request_retention_s: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("mlmesh-data"),
            durability: Durability::Normal,
            request_retention_s: 24 * 3600,
        }
    }
}

/// Why a store cannot open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory cannot be created or locked.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// SQLite refused.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file was written by a newer schema.
    #[error("{path}: schema version {found}, this build knows up to {known}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// This build's.
        known: i64,
    },
}

/// What a write op produced: the reply payload and the events to publish once committed.
#[derive(Debug, Default)]
pub(crate) struct Done {
    pub(crate) reply: Bytes,
    pub(crate) events: Vec<Event>,
}

/// An event a write publishes once it is committed. Its payload is kept as a value and
/// encoded when it is published, and only if someone receives it
/// ([`mlmesh::NodeHandle::publish_with`]): most events of a busy tracker have no
/// subscriber, and encoding them was a fifth of a logged metric's cost.
pub(crate) struct Event {
    pub(crate) topic: &'static str,
    payload: Box<dyn Payload>,
}

/// A value an [`Event`] encodes when it is published.
trait Payload: Send {
    fn encode(&self) -> Result<Vec<u8>, mlmesh::protocol::EncodeError>;
}

impl<T: Serialize + Send> Payload for T {
    fn encode(&self) -> Result<Vec<u8>, mlmesh::protocol::EncodeError> {
        mlmesh::protocol::to_payload(self)
    }
}

impl Event {
    pub(crate) fn new<T: Serialize + Send + 'static>(topic: &'static str, payload: T) -> Self {
        Self {
            topic,
            payload: Box::new(payload),
        }
    }

    /// Publishes the event from `node`; one that cannot be queued is counted by the
    /// runtime as dropped (the write it reports stands).
    pub(crate) async fn publish(self, node: &mlmesh::NodeHandle) {
        let Ok(topic) = known_topic(self.topic) else {
            tracing::error!(
                topic = self.topic,
                "an event of an invalid topic was dropped"
            );
            return;
        };
        let payload = self.payload;
        match node.publish_with(topic, move || payload.encode()).await {
            Ok(()) => {}
            Err(e @ mlmesh::PublishError::Encode(_)) => {
                tracing::error!(topic = self.topic, error = %e, "an event was not published")
            }
            Err(e) => tracing::debug!(topic = self.topic, error = %e, "an event was not published"),
        }
    }

    /// The payload, encoded.
    #[cfg(test)]
    pub(crate) fn encoded(&self) -> Vec<u8> {
        self.payload.encode().expect("an event payload encodes")
    }
}

/// The topic named `name`, validated once per name: the stores publish a few constant
/// topics, and building one (checked, then allocated) for every event cost about as
/// much as checking a logged metric.
fn known_topic(name: &'static str) -> Result<Topic, NameError> {
    static KNOWN: Mutex<Vec<(&'static str, Topic)>> = Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    // The names are constants: the same name is the same pointer.
    if let Some((_, topic)) = known.iter().find(|(n, _)| std::ptr::eq(*n, name)) {
        return Ok(topic.clone());
    }
    let topic = Topic::new(name)?;
    if known.len() < 64 {
        known.push((name, topic.clone()));
    }
    Ok(topic)
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event").field("topic", &self.topic).finish()
    }
}

/// A write: runs inside the batch's transaction, in its own savepoint. An error rolls
/// back everything the op did and nothing else.
pub(crate) type Op = Box<dyn FnOnce(&Connection) -> Result<Done, Status> + Send>;

/// The idempotency key of an instruction: its id, then its source.
pub(crate) type Key = [u8; 32];

/// The key of a request.
pub(crate) fn key(id: MessageId, source: NodeId) -> Key {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(id.as_bytes());
    k[16..].copy_from_slice(source.as_bytes());
    k
}

struct Pending {
    key: Option<Key>,
    op: Op,
    done: oneshot::Sender<Result<Done, Status>>,
}

struct Writer {
    conn: Connection,
    commits: u64,
    retention_ms: u64,
}

/// A SQLite database in a data directory, owned by this process.
pub(crate) struct Store {
    queue: Mutex<Vec<Pending>>,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    /// A journal in front of this store ([`crate::journal`]): reads wait for it.
    journal: std::sync::OnceLock<std::sync::Arc<crate::journal::Progress>>,
    path: PathBuf,
    /// `durability = "full"`: commits wait for the disk.
    full: bool,
    _checkpointer: Checkpointer,
    _lock: File,
}

/// How often the WAL is checkpointed into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The thread that checkpoints the WAL (PASSIVE: it never waits for, or blocks, the
/// writer or the readers). Stops when dropped.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mlmesh-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| StoreError::DataDir {
                path: path.to_path_buf(),
                reason: format!("cannot start the checkpoint thread: {e}"),
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The table of stored replies, part of every schema.
const REQUESTS: &str = "CREATE TABLE IF NOT EXISTS requests(
    key BLOB PRIMARY KEY, at_ms INTEGER NOT NULL, reply BLOB NOT NULL) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS requests_by_age ON requests(at_ms);";

/// Prune stored replies every this many commits.
const PRUNE_EVERY: u64 = 4096;
/// Prune stored replies every this many applied batches (each many instructions).
const PRUNE_EVERY_BATCH: u64 = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside an op is caught before it can poison; recover regardless.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    Status::error(Code::Internal, format!("store: {e}"))
}

impl Store {
    /// Opens (or creates) `<data_dir>/<file>` with `schema` (a script of `CREATE ...
    /// IF NOT EXISTS` statements) at version `version`.
    pub(crate) fn open(
        section: &StoreSection,
        file: &str,
        schema: &str,
        version: i64,
    ) -> Result<Self, StoreError> {
        let dir = &section.data_dir;
        let dir_err = |reason: String| StoreError::DataDir {
            path: dir.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| dir_err(e.to_string()))?;
        let lock_path = dir.join(format!("{file}.lock"));
        let lock_file = File::create(&lock_path).map_err(|e| dir_err(e.to_string()))?;
        lock_file.try_lock().map_err(|_| {
            dir_err(format!(
                "{} is held by another process (one node owns a store)",
                lock_path.display()
            ))
        })?;
        let path = dir.join(file);
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match section.durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "cache_size", -32_000)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Checkpoints (copying the WAL into the database, with an fsync) run on their own
        // thread, off the commit path; the WAL file is cut back after each.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.set_prepared_statement_cache_capacity(64);
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > version {
            return Err(StoreError::Schema {
                path,
                found,
                known: version,
            });
        }
        conn.execute_batch(&format!("BEGIN; {REQUESTS} {schema} COMMIT;"))?;
        conn.pragma_update(None, "user_version", version)?;
        let checkpointer = Checkpointer::spawn(&path)?;
        Ok(Self {
            queue: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer {
                conn,
                commits: 0,
                retention_ms: section.request_retention_s.saturating_mul(1000),
            }),
            readers: Mutex::new(Vec::new()),
            journal: std::sync::OnceLock::new(),
            path,
            full: section.durability == Durability::Full,
            _checkpointer: checkpointer,
            _lock: lock_file,
        })
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` in the next group commit and returns its result once committed. With a
    /// `key` seen before, returns the stored reply and runs nothing.
    pub(crate) async fn write(&self, key: Option<Key>, op: Op) -> Result<Done, Status> {
        let (done, rx) = oneshot::channel();
        lock(&self.queue).push(Pending { key, op, done });
        // With `full`, every commit waits for the disk: tell the runtime, so that its
        // other tasks (heartbeats, other requests) move to another thread meanwhile.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if self.full && multi_thread {
            tokio::task::block_in_place(|| self.lead());
        } else {
            self.lead();
        }
        rx.await
            .map_err(|_| Status::error(Code::Internal, "store: the write was dropped"))?
    }

    /// Makes reads wait for `journal`: a read sees every write appended to it before
    /// the read began.
    pub(crate) fn follow(&self, journal: std::sync::Arc<crate::journal::Progress>) {
        let _ = self.journal.set(journal);
    }

    /// Runs `f` on a read connection (a snapshot of what is committed, and of what the
    /// journal held when the read began), off the async threads.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(&Connection) -> Result<T, Status> + Send + 'static,
        T: Send + 'static,
    {
        if let Some(journal) = self.journal.get() {
            journal.caught_up().await?;
        }
        let conn = match lock(&self.readers).pop() {
            Some(c) => c,
            None => self.open_reader().map_err(internal)?,
        };
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = f(&conn);
            (conn, out)
        })
        .await
        .map_err(|_| Status::error(Code::Internal, "store: a read panicked"))?;
        let mut readers = lock(&self.readers);
        if readers.len() < 8 {
            readers.push(conn);
        }
        out
    }

    /// Runs `f` with the write connection, outside any transaction (opening: schema
    /// changes, a journal's replay).
    pub(crate) fn with_writer<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        f(&lock(&self.writer).conn)
    }

    /// Runs `f` in one transaction on the write connection, as a journal's applier does.
    /// An error rolls the whole transaction back.
    pub(crate) fn apply(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        let mut writer = lock(&self.writer);
        exec(&writer.conn, "BEGIN IMMEDIATE")?;
        let done = f(&writer.conn).and_then(|()| exec(&writer.conn, "COMMIT"));
        if done.is_err() {
            let _ = exec(&writer.conn, "ROLLBACK");
            return done;
        }
        writer.commits += 1;
        if writer.commits.is_multiple_of(PRUNE_EVERY_BATCH) {
            writer.prune();
        }
        Ok(())
    }

    /// A new read connection.
    pub(crate) fn open_reader(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "cache_size", -16_000)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    /// Runs queued writes until the queue is empty, unless another caller already is.
    /// A caller that queues while a leader works is served by that leader: the leader
    /// looks at the queue again after it lets go of the writer.
    fn lead(&self) {
        loop {
            let Ok(mut writer) = self.writer.try_lock().or_else(|e| match e {
                std::sync::TryLockError::Poisoned(p) => Ok(p.into_inner()),
                std::sync::TryLockError::WouldBlock => Err(()),
            }) else {
                return;
            };
            loop {
                let batch = std::mem::take(&mut *lock(&self.queue));
                if batch.is_empty() {
                    break;
                }
                writer.run(batch);
            }
            drop(writer);
            if lock(&self.queue).is_empty() {
                return;
            }
        }
    }
}

impl Writer {
    fn run(&mut self, batch: Vec<Pending>) {
        let mut results = Vec::with_capacity(batch.len());
        if let Err(e) = exec(&self.conn, "BEGIN IMMEDIATE") {
            let status = unavailable(&e);
            for p in batch {
                let _ = p.done.send(Err(status.clone()));
            }
            return;
        }
        for p in batch {
            let result = self.apply(p.key, p.op);
            results.push((p.done, result));
        }
        if let Err(e) = exec(&self.conn, "COMMIT") {
            let _ = exec(&self.conn, "ROLLBACK");
            let status = unavailable(&e);
            for (done, _) in results {
                let _ = done.send(Err(status.clone()));
            }
            return;
        }
        for (done, result) in results {
            let _ = done.send(result);
        }
        self.commits += 1;
        if self.commits.is_multiple_of(PRUNE_EVERY) {
            self.prune();
        }
    }

    fn apply(&mut self, key: Option<Key>, op: Op) -> Result<Done, Status> {
        let conn = &self.conn;
        if let Some(key) = &key {
            let seen: Option<Vec<u8>> = conn
                .prepare_cached("SELECT reply FROM requests WHERE key = ?1")
                .and_then(|mut st| st.query_row([&key[..]], |r| r.get(0)).optional())
                .map_err(internal)?;
            if let Some(reply) = seen {
                return Ok(Done {
                    reply: Bytes::from(reply),
                    events: Vec::new(),
                });
            }
        }
        exec(conn, "SAVEPOINT op").map_err(internal)?;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| op(conn)))
            .unwrap_or_else(|_| Err(Status::error(Code::Internal, "store: an op panicked")));
        let result = result.and_then(|done| {
            if let Some(key) = &key {
                conn.prepare_cached("INSERT INTO requests(key, at_ms, reply) VALUES (?1, ?2, ?3)")
                    .and_then(|mut st| {
                        st.execute(params![&key[..], now_ms() as i64, &done.reply[..]])
                    })
                    .map_err(internal)?;
            }
            Ok(done)
        });
        if result.is_err() {
            exec(conn, "ROLLBACK TO op").map_err(internal)?;
        }
        exec(conn, "RELEASE op").map_err(internal)?;
        result
    }

    /// Forgets replies older than the retention (request ids are opaque: any 16 bytes,
    /// so age is the time the reply was stored).
    fn prune(&mut self) {
        let cutoff = now_ms().saturating_sub(self.retention_ms);
        if let Err(e) = self
            .conn
            .execute("DELETE FROM requests WHERE at_ms < ?1", [cutoff as i64])
        {
            tracing::warn!(error = %e, "pruning stored replies failed");
        }
    }
}

/// Now, Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    mlmesh::protocol::now_nanos() / 1_000_000
}

/// Runs a statement without arguments through the statement cache: the transaction
/// control statements run several times per commit, and parsing them each time is a
/// tenth of a small commit's cost.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn unavailable(e: &rusqlite::Error) -> Status {
    Status::error(
        Code::Unavailable,
        format!("store: the commit failed ({e}); nothing of this request was written"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Store {
        let section = StoreSection {
            data_dir: dir.to_path_buf(),
            ..StoreSection::default()
        };
        Store::open(
            &section,
            "t.db",
            "CREATE TABLE IF NOT EXISTS t(v INTEGER);",
            1,
        )
        .unwrap()
    }

    fn insert(v: i64, fail: bool) -> Op {
        Box::new(move |c: &Connection| {
            c.execute("INSERT INTO t(v) VALUES (?1)", [v])
                .map_err(internal)?;
            if fail {
                return Err(Status::error(Code::InvalidArgument, "no"));
            }
            Ok(Done {
                reply: Bytes::from(v.to_string()),
                events: Vec::new(),
            })
        })
    }

    fn count(store: &Store) -> i64 {
        lock(&store.writer)
            .conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_ops_roll_back_alone_and_keys_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(dir.path()));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.write(None, insert(i, i % 2 == 1)).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 100);
        assert_eq!(count(&store), 100);

        let k = key(MessageId::new(), NodeId::new());
        let first = store.write(Some(k), insert(7, false)).await.unwrap();
        let again = store.write(Some(k), insert(8, false)).await.unwrap();
        assert_eq!(first.reply, again.reply);
        assert_eq!(count(&store), 101);
    }

    #[tokio::test]
    async fn stored_replies_are_pruned_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // A random (not time-ordered) request id, as any client may send.
        let k = [7u8; 32];
        store.write(Some(k), insert(1, false)).await.unwrap();
        let stored = |s: &Store| -> i64 {
            lock(&s.writer)
                .conn
                .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(stored(&store), 1);
        lock(&store.writer).prune();
        assert_eq!(stored(&store), 1, "younger than the retention");
        lock(&store.writer).retention_ms = 0;
        std::thread::sleep(std::time::Duration::from_millis(2));
        lock(&store.writer).prune();
        assert_eq!(stored(&store), 0);
    }

    #[test]
    fn a_second_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        let section = StoreSection {
            data_dir: dir.path().to_path_buf(),
            ..StoreSection::default()
        };
        let err = Store::open(&section, "t.db", "", 1).unwrap_err();
        assert!(err.to_string().contains("another process"), "{err}");
    }
}
