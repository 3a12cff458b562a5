//! A store's write-ahead journal: acknowledge after one append, bring SQLite up to date
//! after the reply.
//!
//! A node that decides its writes from memory (the tracker) appends each decided change
//! to its journal. The append is a copy into a shared memory map of a file of ours,
//! allocated beforehand: once it is done the change survives `kill -9` of the node (the
//! kernel holds the page, as it would after a `write`), and the instruction can be
//! acknowledged. An applier thread applies the journaled changes to SQLite in large
//! transactions and records, in the same transaction, the last entry applied; a journal
//! file is deleted once everything in it is applied. At open, whatever the journal holds
//! past that point is applied before the node serves.
//!
//! - **Reads see acknowledged writes.** [`Progress::caught_up`] waits until everything
//!   appended before it was called is applied; the store's reads call it first.
//! - **Bounded.** At most [`MAX_BACKLOG`] entries wait to be applied; writers wait for
//!   room ([`Progress::room`]).
//! - **Retries.** An entry may carry an instruction's key and reply. The reply is kept in
//!   memory until the entry is applied, and in SQLite's `requests` table from then on
//!   ([`Journal::seen`] looks in both).
//! - **`durability = "full"`.** An append is followed by `fdatasync` (one for every
//!   append waiting, see [`Journal::sync`]) before the acknowledgement, and SQLite
//!   commits with `synchronous = FULL`, so a file is deleted only once SQLite has its
//!   changes on disk.
//!
//! ## File format
//! Files `<stem>.journal.<n>` (`n` counts up, 20 digits), each allocated at 16 MiB (or
//! the size of a larger entry) and filled with a sequence of entries, then zeros:
//! `len: u32 LE | crc32: u32 LE | body`, the CRC-32 over the body, the body being
//! `seq: u64 LE | at_ms: u64 LE | flags: u8 | [key: 32 bytes if flags & 1] |
//! [reply_len: u32 LE | reply, if flags & 2] | change (MessagePack)`. Sequence numbers
//! rise by one from entry to entry across files. A zero length ends a file's entries.
//! The next file is made ready by the applier thread once the current one is half full,
//! as `<stem>.journal.spare` (allocated, its pages faulted in), and renamed to its
//! number when the current one is full; a spare found at open holds nothing and is
//! deleted.
//!
//! ## Reading back
//! At open the entries past SQLite's applied position are applied while their numbers
//! follow on one by one. The journal ends at the first torn or damaged entry (after a
//! crash of the process only the last append can be torn, and it was never
//! acknowledged) or at a gap in the numbers (the machine lost writes, as a power loss
//! can under `durability = "normal"`: then the last acknowledged writes are lost, and
//! SQLite stays consistent). Files with entries past the end are renamed `*.orphaned`
//! and kept, with an error in the log; nothing is applied on top of a gap.
//!
//! ## Failures
//! A write that cannot be appended (no disk space for the next file) is UNAVAILABLE
//! with nothing written. After a failed `fdatasync` (`full`) nothing more is appended
//! or acknowledged until a restart. If SQLite refuses to apply, the applier retries
//! (backing off to 1 s) and the entries stay in the journal; reads and writers that
//! wait for it give up after [`MAX_WAIT`] with UNAVAILABLE. What a tracker journals is
//! checked first so that SQLite can always take it (e.g. times within `i64`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use mlmesh::protocol::{Code, Status};

use crate::store::{internal, Key, Store, StoreError};
use crate::{FastMap, FastSet};

/// At most this many entries, and about this many bytes of them, wait to be applied; a
/// writer waits for room beyond either.
pub(crate) const MAX_BACKLOG: u64 = 16_384;
pub(crate) const MAX_BACKLOG_BYTES: u64 = 64 * 1024 * 1024;
/// A read or a writer waits at most this long for the applier.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// The applier waits this long for more entries before it applies what it has, unless
/// a reader waits or [`BATCH_NOW`] entries are there.
const COALESCE: Duration = Duration::from_millis(1);
/// Apply at once from this many entries on.
const BATCH_NOW: u64 = 512;
/// After work, the applier looks for more this often for [`DEEP_AFTER`], so that
/// appends need not wake it; then it sleeps until an append does.
const POLL: Duration = Duration::from_millis(2);
const DEEP_AFTER: Duration = Duration::from_secs(1);
/// Keys of instructions appended since open, remembered so that a new key needs no
/// look-up in SQLite (see [`Journal::seen`]).
const RECENT_KEYS: usize = 4096;
/// The size of a journal file: allocated when it is created, then filled. A new one is
/// started when an entry does not fit.
const FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Entry header: len and crc.
const HEADER: usize = 8;

/// A change a journal carries: decided in memory, applied to SQLite later (and again at
/// open after a crash, exactly once: the applied position commits with it).
pub(crate) trait Change: Serialize + DeserializeOwned + Send + 'static {
    /// Applies the change inside the applier's transaction.
    fn apply(&self, c: &Connection) -> rusqlite::Result<()>;
}

/// One journaled change, with the reply to keep for retries of its instruction.
struct Entry<C> {
    seq: u64,
    /// Its size in the file.
    bytes: u64,
    at_ms: u64,
    key: Option<Key>,
    reply: Option<Bytes>,
    change: C,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How far a journal is appended and applied; what reads and writers wait on.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    appended: AtomicU64,
    applied: AtomicU64,
    /// Bytes appended and not yet applied.
    queued_bytes: AtomicU64,
    /// Wakes async waiters after each applied batch.
    changed: tokio::sync::Notify,
    /// Set by a waiting reader or writer: apply now, without waiting for more entries.
    urgent: AtomicBool,
    /// The applier sleeps until woken (nothing to do for [`DEEP_AFTER`]): an append
    /// wakes it.
    idle: AtomicBool,
    /// The applier waits for more entries before applying: only `urgent` wakes it.
    coalescing: AtomicBool,
    wake: (Mutex<()>, Condvar),
}

impl Progress {
    /// Waits until everything appended so far is applied to SQLite; UNAVAILABLE if
    /// that takes over [`MAX_WAIT`] (the applier is failing: see the log).
    pub(crate) async fn caught_up(&self) -> Result<(), Status> {
        let target = self.appended.load(Ordering::SeqCst);
        self.wait(|p| p.applied.load(Ordering::SeqCst) >= target)
            .await
    }

    /// Waits until the backlog is under [`MAX_BACKLOG`] entries and
    /// [`MAX_BACKLOG_BYTES`]; UNAVAILABLE after [`MAX_WAIT`].
    pub(crate) async fn room(&self) -> Result<(), Status> {
        self.wait(|p| {
            p.backlog() < MAX_BACKLOG && p.queued_bytes.load(Ordering::SeqCst) < MAX_BACKLOG_BYTES
        })
        .await
    }

    /// The last sequence number appended.
    #[cfg(test)]
    pub(crate) fn appended(&self) -> u64 {
        self.appended.load(Ordering::SeqCst)
    }

    fn backlog(&self) -> u64 {
        self.appended
            .load(Ordering::SeqCst)
            .saturating_sub(self.applied.load(Ordering::SeqCst))
    }

    async fn wait(&self, done: impl Fn(&Self) -> bool) -> Result<(), Status> {
        if done(self) {
            return Ok(());
        }
        self.hurry();
        let waited = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(self) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(MAX_WAIT, waited).await.map_err(|_| {
            Status::error(
                Code::Unavailable,
                format!(
                    "store: SQLite is more than {} s behind the journal (see the node's log)",
                    MAX_WAIT.as_secs()
                ),
            )
        })
    }

    /// After an append: wakes the applier if it sleeps until woken. One that waits for
    /// more entries, or looks for them every [`POLL`], is left alone: the appender pays
    /// no wake-up.
    fn nudge(&self) {
        if self.idle.swap(false, Ordering::SeqCst) {
            self.wake_applier();
        }
    }

    /// Someone waits for the applier: wakes it whichever way it sleeps.
    fn hurry(&self) {
        self.urgent.store(true, Ordering::SeqCst);
        let idle = self.idle.swap(false, Ordering::SeqCst);
        if self.coalescing.swap(false, Ordering::SeqCst) || idle {
            self.wake_applier();
        }
    }

    fn wake_applier(&self) {
        let _guard = lock(&self.wake.0);
        self.wake.1.notify_one();
    }
}

/// The file being filled, mapped into memory.
struct Segment {
    file: Arc<File>,
    map: memmap2::MmapMut,
    /// Where the next entry goes.
    at: usize,
}

/// The appending side, behind one lock: the open file, the entries the applier has not
/// taken, and the replies not yet applied.
struct Log<C> {
    segment: Segment,
    /// The next file, made ready by the applier thread (see [`Shared::prepare_spare`]).
    spare: Option<Segment>,
    index: u64,
    /// Closed files and the last sequence number in each: deleted once applied.
    sealed: VecDeque<(u64, u64)>,
    next_seq: u64,
    queue: Vec<Entry<C>>,
    /// The keys appended since open (the last [`RECENT_KEYS`] of them at least), with
    /// their reply until their entry is applied.
    keys: FastMap<Key, (u64, Option<Bytes>)>,
    /// `keys` in append order, with their entries' sequence numbers.
    key_order: VecDeque<(u64, Key)>,
    /// Where in `key_order` the replies not yet applied start.
    unapplied: usize,
    /// No key in SQLite and not in `keys` or `far` has a time field (see
    /// [`time_field`]) above this.
    floor: u64,
    /// Keys forgotten from `keys` (or stored before open) whose time field was more than
    /// [`FAR_AHEAD`] in the future then, at most [`RECENT_KEYS`] of them: they do not
    /// raise `floor`, so that one odd id cannot cost every later request a look-up.
    far: FastSet<Key>,
    /// A read connection, for replies already applied.
    lookup: Connection,
    buf: Vec<u8>,
}

struct Shared<C> {
    store: Arc<Store>,
    dir: PathBuf,
    stem: String,
    full: bool,
    /// The size of a new file ([`FILE_BYTES`]; smaller in tests).
    file_bytes: u64,
    log: Mutex<Log<C>>,
    progress: Arc<Progress>,
    /// `full`: the highest sequence number known to be on disk.
    synced: Mutex<u64>,
    /// An `fdatasync` failed: nothing more is appended or acknowledged.
    failed: AtomicBool,
    stop: AtomicBool,
}

/// A journal in front of a [`Store`]: see the module docs.
pub(crate) struct Journal<C: Change> {
    shared: Arc<Shared<C>>,
    applier: Option<std::thread::JoinHandle<()>>,
}

impl<C: Change> std::fmt::Debug for Journal<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.shared.dir)
            .field("stem", &self.shared.stem)
            .finish()
    }
}

const STATE: &str = "CREATE TABLE IF NOT EXISTS journal(
    id INTEGER PRIMARY KEY CHECK (id = 1), applied INTEGER NOT NULL);
    INSERT OR IGNORE INTO journal(id, applied) VALUES (1, 0);";

fn dir_err(dir: &Path, reason: String) -> StoreError {
    StoreError::DataDir {
        path: dir.to_path_buf(),
        reason,
    }
}

impl<C: Change> Journal<C> {
    /// Opens the journal `<stem>.journal.*` of `store` in `dir`: applies what it holds
    /// past SQLite's applied position, deletes its files, starts a new one and the
    /// applier thread, and makes the store's reads wait for it.
    pub(crate) fn open(
        store: Arc<Store>,
        dir: &Path,
        stem: &str,
        full: bool,
    ) -> Result<Self, StoreError> {
        Self::open_sized(store, dir, stem, full, FILE_BYTES)
    }

    /// [`Journal::open`], with files of `file_bytes`.
    fn open_sized(
        store: Arc<Store>,
        dir: &Path,
        stem: &str,
        full: bool,
        file_bytes: u64,
    ) -> Result<Self, StoreError> {
        adopt_spare::<C>(dir, stem)?;
        let (mut files, last, (floor, far)) = store.with_writer(|c| -> Result<_, StoreError> {
            c.execute_batch(STATE)?;
            let applied: i64 = c.query_row("SELECT applied FROM journal", [], |r| r.get(0))?;
            let (files, last) = replay::<C>(c, dir, stem, applied as u64)?;
            Ok((files, last, stored_floor(c)?))
        })?;
        let index = files.last().map_or(0, |(i, _)| i + 1);
        let segment = create(
            &dir.join(file_name(stem, index)),
            dir,
            full,
            file_bytes,
            true,
        )?;
        for (_, path) in files.drain(..) {
            std::fs::remove_file(&path).map_err(|e| dir_err(dir, e.to_string()))?;
        }
        let progress = Arc::new(Progress::default());
        progress.appended.store(last, Ordering::SeqCst);
        progress.applied.store(last, Ordering::SeqCst);
        let log = Log {
            segment,
            spare: None,
            index,
            sealed: VecDeque::new(),
            next_seq: last + 1,
            queue: Vec::new(),
            keys: FastMap::default(),
            key_order: VecDeque::new(),
            unapplied: 0,
            floor,
            far,
            lookup: store.open_reader()?,
            buf: Vec::with_capacity(4096),
        };
        store.follow(progress.clone());
        let shared = Arc::new(Shared {
            store,
            dir: dir.to_path_buf(),
            stem: stem.to_string(),
            full,
            file_bytes,
            log: Mutex::new(log),
            progress,
            synced: Mutex::new(last),
            failed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let applier = std::thread::Builder::new()
            .name("mlmesh-apply".into())
            .spawn(move || s.run_applier())
            .map_err(|e| dir_err(dir, format!("cannot start the applier thread: {e}")))?;
        Ok(Self {
            shared,
            applier: Some(applier),
        })
    }

    /// How far the journal is appended and applied.
    pub(crate) fn progress(&self) -> &Arc<Progress> {
        &self.shared.progress
    }

    /// The last sequence number applied to SQLite.
    pub(crate) fn applied(&self) -> u64 {
        self.shared.progress.applied.load(Ordering::SeqCst)
    }

    /// The reply stored for `key`, and the sequence number of its entry while that is
    /// not applied yet (0 once it is: then SQLite has it): a reply to a retry waits for
    /// [`Journal::sync`] of it as the first reply did. The caller holds whatever orders
    /// its appends, so that no entry with `key` is appended meanwhile.
    ///
    /// A new key is known to be new without a look-up in SQLite (a third of a small
    /// write's cost) when its id's time field is above `floor`: every key in SQLite has
    /// a time field at or below it, or is among the recent keys in memory. That holds
    /// for any 16 bytes of id: an id that is not a UUIDv7 only costs the look-up.
    pub(crate) fn seen(&self, key: &Key) -> Result<Option<(Bytes, u64)>, Status> {
        let log = lock(&self.shared.log);
        match log.keys.get(key) {
            Some((seq, Some(reply))) => return Ok(Some((reply.clone(), *seq))),
            Some((_, None)) => {}
            None if time_field(key) > log.floor && !log.far.contains(key) => return Ok(None),
            None => {}
        }
        // Not in memory: its entry, if any, is applied (replies are forgotten only after
        // their commit, under this lock), so this fresh read sees it.
        let stored: Option<Vec<u8>> = log
            .lookup
            .prepare_cached("SELECT reply FROM requests WHERE key = ?1")
            .and_then(|mut st| st.query_row([&key[..]], |r| r.get(0)).optional())
            .map_err(internal)?;
        Ok(stored.map(|r| (Bytes::from(r), 0)))
    }

    /// Appends `change` (with the instruction's key and reply, kept for retries) and
    /// returns its sequence number; `written` runs once it is in the file, before the
    /// applier can see it. Once this returns, the change survives a crash of the
    /// process; with `full`, call [`Journal::sync`] before acknowledging.
    pub(crate) fn append(
        &self,
        change: C,
        key: Option<Key>,
        reply: &Bytes,
        at_ms: u64,
        written: impl FnOnce(&C, u64),
    ) -> Result<u64, Status> {
        let shared = &*self.shared;
        let mut log = lock(&shared.log);
        let log = &mut *log;
        if shared.failed.load(Ordering::SeqCst) {
            return Err(sync_failed());
        }
        let seq = log.next_seq;
        let reply = key.map(|_| reply.clone());
        encode(
            &mut log.buf,
            seq,
            at_ms,
            key.as_ref(),
            reply.as_deref(),
            &change,
        )?;
        let len = log.buf.len();
        if log.segment.map.len() - log.segment.at < len {
            shared.rotate(log, len).map_err(unavailable)?;
        }
        // A copy into the file's shared mapping: the kernel holds the page from here on.
        let at = log.segment.at;
        log.segment.map[at..at + len].copy_from_slice(&log.buf);
        log.segment.at += len;
        log.next_seq += 1;
        written(&change, seq);
        if let (Some(key), Some(reply)) = (key, &reply) {
            log.remember(seq, key, reply.clone());
        }
        shared
            .progress
            .queued_bytes
            .fetch_add(log.buf.len() as u64, Ordering::SeqCst);
        log.queue.push(Entry {
            seq,
            bytes: log.buf.len() as u64,
            at_ms,
            key,
            reply,
            change,
        });
        shared.progress.appended.store(seq, Ordering::SeqCst);
        shared.progress.nudge();
        Ok(seq)
    }

    /// With `full`, waits until entry `seq` is on disk: one `fdatasync` covers every
    /// entry appended before it, so concurrent appends share it. Blocks the thread.
    pub(crate) fn sync(&self, seq: u64) -> Result<(), Status> {
        let shared = &*self.shared;
        if !shared.full {
            return Ok(());
        }
        let mut synced = lock(&shared.synced);
        if shared.failed.load(Ordering::SeqCst) {
            return Err(sync_failed());
        }
        if *synced >= seq {
            return Ok(());
        }
        // Files closed before this one were synced when they were closed. `fdatasync`
        // writes the pages dirtied through the mapping too.
        let (file, upto) = {
            let log = lock(&shared.log);
            (log.segment.file.clone(), log.next_seq - 1)
        };
        if let Err(e) = file.sync_data() {
            // Linux may drop the pages that failed and clear the error: a later sync
            // would succeed over lost data. Nothing more is acknowledged until a restart
            // reads back what the file holds.
            tracing::error!(error = %e, "journal: fdatasync failed; refusing writes until restart");
            shared.failed.store(true, Ordering::SeqCst);
            return Err(sync_failed());
        }
        *synced = upto;
        Ok(())
    }

    /// Whether `durability = "full"`.
    pub(crate) fn full(&self) -> bool {
        self.shared.full
    }
}

impl<C: Change> Drop for Journal<C> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.progress.wake_applier();
        if let Some(t) = self.applier.take() {
            let _ = t.join();
        }
    }
}

impl<C> Log<C> {
    /// Keeps `key`'s reply until entry `seq` is applied, and the key past that; forgets
    /// the oldest applied key beyond [`RECENT_KEYS`], raising `floor` to it.
    fn remember(&mut self, seq: u64, key: Key, reply: Bytes) {
        // A key seen again (its stored reply pruned after the retention) takes the new
        // entry; the older place in `key_order` then no longer owns it.
        self.keys.insert(key, (seq, Some(reply)));
        self.key_order.push_back((seq, key));
        if self.key_order.len() > RECENT_KEYS && self.unapplied > 0 {
            if let Some((seq, old)) = self.key_order.pop_front() {
                self.unapplied -= 1;
                if self.keys.get(&old).is_some_and(|(s, _)| *s == seq) {
                    self.keys.remove(&old);
                }
                self.forget(old);
            }
        }
    }

    /// Covers a key forgotten from `keys`: by `floor`, or in `far` if its time field is
    /// far ahead (while `far` has room).
    fn forget(&mut self, key: Key) {
        let t = time_field(&key);
        if t > far_ahead() && self.far.len() < RECENT_KEYS {
            self.far.insert(key);
        } else {
            self.floor = self.floor.max(t);
        }
    }

    /// Drops the replies of entries up to `applied` from memory: SQLite has them.
    fn forget_replies(&mut self, applied: u64) {
        while let Some(&(seq, key)) = self.key_order.get(self.unapplied) {
            if seq > applied {
                break;
            }
            if let Some((s, reply)) = self.keys.get_mut(&key) {
                if *s == seq {
                    *reply = None;
                }
            }
            self.unapplied += 1;
        }
    }
}

/// How far in the future a key's time field may be and still raise `floor`.
const FAR_AHEAD: Duration = Duration::from_secs(600);

/// The time field beyond which a key is "far ahead" now.
fn far_ahead() -> u64 {
    crate::store::now_ms() + FAR_AHEAD.as_millis() as u64
}

/// `floor` and `far` for the keys stored in SQLite: the highest time field up to
/// [`far_ahead`], and the keys beyond it (if there are too many of those, the floor
/// covers them too).
fn stored_floor(c: &Connection) -> rusqlite::Result<(u64, FastSet<Key>)> {
    let bound = far_ahead().min((1 << 48) - 1).to_be_bytes()[2..].to_vec();
    let time_of = |k: Option<Vec<u8>>| {
        k.and_then(|k| Key::try_from(k.as_slice()).ok())
            .map_or(0, |k| time_field(&k))
    };
    let near: Option<Vec<u8>> = c.query_row(
        "SELECT max(key) FROM requests WHERE key < ?1",
        [&bound],
        |r| r.get(0),
    )?;
    let far: Vec<Vec<u8>> = c
        .prepare("SELECT key FROM requests WHERE key >= ?1 LIMIT ?2")?
        .query_map(params![&bound, RECENT_KEYS as i64 + 1], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if far.len() > RECENT_KEYS {
        let highest: Option<Vec<u8>> =
            c.query_row("SELECT max(key) FROM requests", [], |r| r.get(0))?;
        return Ok((time_of(highest), Default::default()));
    }
    let far = far
        .into_iter()
        .filter_map(|k| Key::try_from(k.as_slice()).ok())
        .collect();
    Ok((time_of(near), far))
}

/// The 48-bit time field of a key's id (a UUIDv7's Unix milliseconds; for other ids,
/// just their first 6 bytes): keys in byte order are in time-field order.
fn time_field(key: &Key) -> u64 {
    key[..6].iter().fold(0, |t, b| (t << 8) | u64::from(*b))
}

fn sync_failed() -> Status {
    Status::error(
        Code::Unavailable,
        "store: the journal could not be synced to disk; whether this request was written \
         is unknown until the tracker restarts",
    )
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::error(
        Code::Unavailable,
        format!("store: the journal cannot be written ({e}); nothing of this request was written"),
    )
}

fn file_name(stem: &str, index: u64) -> String {
    format!("{stem}.journal.{index:020}")
}

/// The next file while the applier prepares it: not a journal file by its name (no
/// index), so that replay never reads it; deleted at open.
fn spare_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.journal.spare"))
}

/// A spare left by the last run: deleted if it holds no entry, as it should. If it does
/// (under `durability = "normal"` the rename that numbered it is not synced, and a power
/// loss can undo it), it gets the number after the last file's, and replay takes its
/// entries if they follow on.
fn adopt_spare<C: Change>(dir: &Path, stem: &str) -> Result<(), StoreError> {
    let spare = spare_path(dir, stem);
    let bytes = match std::fs::read(&spare) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(dir_err(dir, format!("{}: {e}", spare.display()))),
    };
    let io = |e: std::io::Error| dir_err(dir, format!("{}: {e}", spare.display()));
    if decode_file::<C>(&bytes).0.is_empty() {
        return std::fs::remove_file(&spare).map_err(io);
    }
    let next = list(dir, stem)?.last().map_or(0, |(i, _)| i + 1);
    let path = dir.join(file_name(stem, next));
    tracing::warn!(file = %path.display(), "journal: a spare file holds entries (its rename was lost); reading it as the next file");
    std::fs::rename(&spare, &path).map_err(io)
}

/// Creates the journal file `path` (in `dir`) with `bytes` allocated (zeros: the end of
/// the entries when read back), and maps it; with `populate`, faults its pages in too
/// (milliseconds: at open, and for the applier's spare).
fn create(
    path: &Path,
    dir: &Path,
    full: bool,
    bytes: u64,
    populate: bool,
) -> Result<Segment, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| dir_err(dir, format!("{}: {e}", path.display())))?;
    // A file that could not be made ready goes, so that the next try can create it.
    map_new(file, dir, full, bytes, populate).map_err(|e| {
        let _ = std::fs::remove_file(path);
        dir_err(dir, format!("{}: {e}", path.display()))
    })
}

/// Allocates, maps and faults in the new file `file` of [`create`].
///
/// The project's one `unsafe`: an append through a shared mapping costs a copy where a
/// `write` costs a system call (1-3 us here, the largest single cost of an acknowledged
/// write), with the same guarantee against `kill -9`.
#[allow(unsafe_code)]
fn map_new(
    file: File,
    dir: &Path,
    full: bool,
    bytes: u64,
    populate: bool,
) -> std::io::Result<Segment> {
    let len = libc::off_t::try_from(bytes).map_err(|_| std::io::Error::other("entry too large"))?;
    // Blocks allocated now, so that a full disk fails here and not in a copy into the
    // mapping (which would be a SIGBUS).
    // SAFETY: a valid open file descriptor and a non-negative range.
    let rc = unsafe {
        use std::os::fd::AsRawFd as _;
        libc::posix_fallocate(file.as_raw_fd(), 0, len)
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    if full {
        // The new name must survive a power loss too.
        File::open(dir)?.sync_all()?;
    }
    // SAFETY: the file is this process's alone (the store's directory lock) and is never
    // truncated while mapped.
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }?;
    // Every page faulted in now (writable), not by the appends: a first write to a page
    // of the file cost a fault that zeroed a whole readahead window, 12 % of the CPU of
    // a tracker logging one metric per call. Best effort: a kernel older than 5.14 lacks
    // the call, and the appends fault as before.
    if populate {
        let _ = map.advise(memmap2::Advice::PopulateWrite);
        if full {
            // Faulted in writable, the pages are dirty: written now, here, rather than
            // by the first acknowledged call's `fdatasync` (16 MiB at once).
            file.sync_data()?;
        }
    }
    Ok(Segment {
        file: Arc::new(file),
        map,
        at: 0,
    })
}

fn encode<C: Change>(
    buf: &mut Vec<u8>,
    seq: u64,
    at_ms: u64,
    key: Option<&Key>,
    reply: Option<&[u8]>,
    change: &C,
) -> Result<(), Status> {
    buf.clear();
    buf.extend_from_slice(&[0; HEADER]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&at_ms.to_le_bytes());
    let flags = u8::from(key.is_some()) | (u8::from(reply.is_some()) << 1);
    buf.push(flags);
    if let Some(key) = key {
        buf.extend_from_slice(key);
    }
    if let Some(reply) = reply {
        let len = u32::try_from(reply.len()).map_err(|_| internal("reply too large"))?;
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(reply);
    }
    // Straight into the buffer; structs as maps, so that a later build reads it.
    rmp_serde::encode::write_named(buf, change).map_err(internal)?;
    let body = &buf[HEADER..];
    let len = u32::try_from(body.len()).map_err(|_| internal("entry too large"))?;
    let crc = crc32fast::hash(body);
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Reads the entries of one file, up to the first torn or damaged one; also says
/// whether the file ended cleanly (at its end, or at zeros).
fn decode_file<C: Change>(bytes: &[u8]) -> (Vec<Entry<C>>, bool) {
    let mut out = Vec::new();
    let mut at = 0usize;
    // The file's unused end is zeros: a zero length ends the entries.
    while bytes.len() - at >= HEADER && bytes[at..at + 4] != [0; 4] {
        match decode_entry(&bytes[at..]) {
            Some((entry, used)) => {
                out.push(entry);
                at += used;
            }
            None => return (out, false),
        }
    }
    // Less than a header left: clean only if it is zeros.
    let clean = bytes.len() - at >= HEADER || bytes[at..].iter().all(|b| *b == 0);
    (out, clean)
}

fn decode_entry<C: Change>(b: &[u8]) -> Option<(Entry<C>, usize)> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let body = b.get(HEADER..HEADER.checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let at_ms = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    let flags = *body.get(16)?;
    let mut at = 17;
    let key = if flags & 1 != 0 {
        let k: Key = body.get(at..at + 32)?.try_into().ok()?;
        at += 32;
        Some(k)
    } else {
        None
    };
    let reply = if flags & 2 != 0 {
        let n = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        let r = Bytes::copy_from_slice(body.get(at..at.checked_add(n)?)?);
        at += n;
        Some(r)
    } else {
        None
    };
    let change = rmp_serde::from_slice(body.get(at..)?).ok()?;
    Some((
        Entry {
            seq,
            bytes: (HEADER + len) as u64,
            at_ms,
            key,
            reply,
            change,
        },
        HEADER + len,
    ))
}

/// The journal files of `stem` in `dir`, oldest first.
fn list(dir: &Path, stem: &str) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let prefix = format!("{stem}.journal.");
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| dir_err(dir, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| dir_err(dir, e.to_string()))?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((index, entry.path()));
    }
    files.sort();
    Ok(files)
}

/// Applies every entry past `applied` in the journal files, one transaction per file,
/// while sequence numbers follow on from `applied` one by one. Returns the files (to
/// delete once a new one is open) and the last sequence number applied.
///
/// The journal ends at its first torn or damaged entry, or at a gap in the numbers
/// (after a crash only the last append can be torn; a gap means the machine lost
/// writes, as a power loss can under `durability = "normal"`). Entries past that end are
/// not applied on top of the missing ones: their files are renamed `*.orphaned` and
/// kept, with an error in the log.
fn replay<C: Change>(
    c: &Connection,
    dir: &Path,
    stem: &str,
    applied: u64,
) -> Result<(Vec<(u64, PathBuf)>, u64), StoreError> {
    let mut last = applied;
    let mut replayed = 0usize;
    let mut ended: Option<String> = None;
    let mut done = Vec::new();
    for (index, path) in list(dir, stem)? {
        let bytes = std::fs::read(&path).map_err(|e| dir_err(dir, e.to_string()))?;
        let (entries, clean) = decode_file::<C>(&bytes);
        let mut run = Vec::new();
        let mut beyond = false;
        for e in entries {
            let next = last + run.len() as u64 + 1;
            if e.seq < next {
                continue;
            }
            if e.seq > next || ended.is_some() {
                ended.get_or_insert_with(|| format!("entry {} follows {}", e.seq, next - 1));
                beyond = true;
                break;
            }
            run.push(e);
        }
        if !run.is_empty() {
            c.execute_batch("BEGIN IMMEDIATE")?;
            match apply_all(c, &run) {
                Ok(()) => c.execute_batch("COMMIT")?,
                Err(e) => {
                    let _ = c.execute_batch("ROLLBACK");
                    return Err(e.into());
                }
            }
            replayed += run.len();
            last += run.len() as u64;
        }
        if !clean {
            tracing::warn!(
                file = %path.display(),
                "journal: a torn or damaged entry ends the journal (an append that did not \
                 complete was never acknowledged)"
            );
            ended.get_or_insert_with(|| format!("a torn or damaged entry in {}", path.display()));
        }
        if beyond {
            let kept = PathBuf::from(format!("{}.orphaned", path.display()));
            tracing::error!(
                file = %kept.display(),
                applied = last,
                why = ended.as_deref().unwrap_or_default(),
                "journal: entries past the end of the journal are not applied (this machine \
                 lost writes: a power loss under durability \"normal\"?); the file is kept"
            );
            std::fs::rename(&path, &kept).map_err(|e| dir_err(dir, e.to_string()))?;
        } else {
            done.push((index, path));
        }
    }
    if replayed > 0 {
        tracing::info!(
            entries = replayed,
            "journal: applied what a previous run left"
        );
    }
    Ok((done, last))
}

/// Applies `entries` and moves the applied position, inside the caller's transaction.
fn apply_all<C: Change>(c: &Connection, entries: &[Entry<C>]) -> rusqlite::Result<()> {
    let Some(last) = entries.last() else {
        return Ok(());
    };
    for e in entries {
        e.change.apply(c)?;
        if let (Some(key), Some(reply)) = (&e.key, &e.reply) {
            c.prepare_cached(
                "INSERT OR REPLACE INTO requests(key, at_ms, reply) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![&key[..], e.at_ms as i64, &reply[..]])?;
        }
    }
    c.prepare_cached("UPDATE journal SET applied = ?1")?
        .execute([last.seq as i64])?;
    Ok(())
}

impl<C: Change> Shared<C> {
    /// Closes the current file (synced first with `full`) and starts the next, with room
    /// for at least `need` bytes.
    fn rotate(&self, log: &mut Log<C>, need: usize) -> std::io::Result<()> {
        if self.full {
            log.segment
                .file
                .sync_data()
                .inspect_err(|e| self.fail("fdatasync of a full file", e))?;
        }
        let path = self.dir.join(file_name(&self.stem, log.index + 1));
        let next = match log.spare.take() {
            // The usual case: the applier made the next file ready; it takes its name.
            Some(spare) if spare.map.len() >= need => {
                if let Err(e) = std::fs::rename(spare_path(&self.dir, &self.stem), &path) {
                    log.spare = Some(spare);
                    return Err(e);
                }
                if self.full {
                    File::open(&self.dir)
                        .and_then(|d| d.sync_all())
                        .inspect_err(|e| self.fail("fsync of the directory", e))?;
                }
                spare
            }
            spare => {
                if spare.is_some() {
                    // Too small for this entry.
                    std::fs::remove_file(spare_path(&self.dir, &self.stem))?;
                }
                // No spare yet (or a burst filled the file first): made here, under the
                // lock, without faulting its pages in.
                let bytes = self.file_bytes.max(need as u64);
                create(&path, &self.dir, self.full, bytes, false)
                    .map_err(|e| std::io::Error::other(e.to_string()))?
            }
        };
        log.sealed.push_back((log.index, log.next_seq - 1));
        log.segment = next;
        log.index += 1;
        Ok(())
    }

    /// A sync failed (`full`): Linux may have dropped the pages it could not write and
    /// cleared the error, so nothing more is appended or acknowledged until a restart
    /// reads back what the files hold.
    fn fail(&self, what: &str, e: &std::io::Error) {
        tracing::error!(error = %e, "journal: {what} failed; refusing writes until restart");
        self.failed.store(true, Ordering::SeqCst);
    }

    fn run_applier(&self) {
        let progress = &*self.progress;
        let mut worked = Instant::now();
        loop {
            if !self.wait_for_work(worked) {
                return;
            }
            worked = Instant::now();
            let batch = std::mem::take(&mut lock(&self.log).queue);
            if batch.is_empty() {
                continue;
            }
            let last = batch.last().map_or(0, |e| e.seq);
            let mut backoff = Duration::from_millis(10);
            loop {
                match self.store.apply(|c| apply_all(c, &batch)) {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(
                            error = %e,
                            "journal: applying to SQLite failed; the entries stay in the \
                             journal and are tried again"
                        );
                        if self.stop.load(Ordering::SeqCst) {
                            // Left for the next open to replay.
                            return;
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
            // Replies leave memory before the progress says so (SQLite has them now), so
            // that a caller that saw `applied` reach its entry finds them there.
            self.forget_applied(last);
            let bytes = batch.iter().map(|e| e.bytes).sum();
            progress.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
            progress.applied.store(last, Ordering::SeqCst);
            progress.changed.notify_waiters();
            // After the progress, which reads and writers wait for: it takes milliseconds.
            self.prepare_spare();
        }
    }

    /// Waits until there is work worth applying; false once stopped with nothing left.
    /// The flags it sleeps under are set and checked while it holds the wake-up lock,
    /// which every waker takes to notify: no wake-up is lost.
    fn wait_for_work(&self, worked: Instant) -> bool {
        let p = &*self.progress;
        let mut guard = lock(&p.wake.0);
        let mut since: Option<Instant> = None;
        loop {
            let stop = self.stop.load(Ordering::SeqCst);
            let backlog = p.backlog();
            if backlog == 0 {
                if stop {
                    return false;
                }
                since = None;
                if worked.elapsed() < DEEP_AFTER {
                    guard = p
                        .wake
                        .1
                        .wait_timeout(guard, POLL)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    continue;
                }
                p.idle.store(true, Ordering::SeqCst);
                // An append after the check above found `idle` false and did not wake us.
                if p.backlog() > 0 {
                    p.idle.store(false, Ordering::SeqCst);
                    continue;
                }
                guard = p.wake.1.wait(guard).unwrap_or_else(PoisonError::into_inner);
                p.idle.store(false, Ordering::SeqCst);
                continue;
            }
            if stop || backlog >= BATCH_NOW {
                return true;
            }
            p.coalescing.store(true, Ordering::SeqCst);
            let first = *since.get_or_insert_with(Instant::now);
            let left = COALESCE.checked_sub(first.elapsed());
            if p.urgent.swap(false, Ordering::SeqCst) || left.is_none() {
                p.coalescing.store(false, Ordering::SeqCst);
                return true;
            }
            let left = left.unwrap_or_default();
            guard = p
                .wake
                .1
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            p.coalescing.store(false, Ordering::SeqCst);
        }
    }

    /// Makes the next file ready once the current one is half full, so that the append
    /// that fills the current one does not create, allocate and fault in a file under
    /// the log's lock (milliseconds). Only this thread makes spares; the append that
    /// rotates takes it, or creates the file itself if there is none yet.
    fn prepare_spare(&self) {
        {
            let log = lock(&self.log);
            if log.spare.is_some() || log.segment.at < log.segment.map.len() / 2 {
                return;
            }
        }
        let path = spare_path(&self.dir, &self.stem);
        match create(&path, &self.dir, self.full, self.file_bytes, true) {
            Ok(spare) => lock(&self.log).spare = Some(spare),
            Err(e) => {
                tracing::warn!(error = %e, "journal: cannot prepare the next file; the append that needs it will create it");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Forgets the replies of applied entries and deletes applied files.
    fn forget_applied(&self, applied: u64) {
        let mut log = lock(&self.log);
        log.forget_replies(applied);
        while let Some(&(index, last)) = log.sealed.front() {
            if last > applied {
                break;
            }
            log.sealed.pop_front();
            let path = self.dir.join(file_name(&self.stem, index));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "journal: cannot delete an applied file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreSection;
    use serde::Deserialize;

    /// A change that inserts one value.
    #[derive(Debug, Serialize, Deserialize)]
    struct Put(i64);

    impl Change for Put {
        fn apply(&self, c: &Connection) -> rusqlite::Result<()> {
            c.execute("INSERT INTO t(v) VALUES (?1)", [self.0])
                .map(drop)
        }
    }

    fn store(dir: &Path) -> Arc<Store> {
        let section = StoreSection {
            data_dir: dir.to_path_buf(),
            ..StoreSection::default()
        };
        Arc::new(
            Store::open(
                &section,
                "t.db",
                "CREATE TABLE IF NOT EXISTS t(v INTEGER);",
                1,
            )
            .unwrap(),
        )
    }

    fn values(store: &Store) -> Vec<i64> {
        store.with_writer(|c| {
            c.prepare("SELECT v FROM t ORDER BY rowid")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        })
    }

    /// A store whose SQLite has values 1 and 2, applied up to entry 2.
    fn applied_up_to_2(dir: &Path) {
        store(dir).with_writer(|c| {
            c.execute_batch(STATE).unwrap();
            c.execute_batch("INSERT INTO t(v) VALUES (1), (2); UPDATE journal SET applied = 2")
                .unwrap();
        });
    }

    /// A key with a new UUIDv7 id, as the runtime's requests have.
    fn fresh_key() -> Key {
        let mut k = [0u8; 32];
        k[..16].copy_from_slice(mlmesh::protocol::MessageId::new().as_bytes());
        k
    }

    /// Entries `seqs`, each putting its own number, one after the other.
    fn entries(seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        seqs.flat_map(|seq| entry(seq, seq as i64, None)).collect()
    }

    fn entry(seq: u64, v: i64, key: Option<&Key>) -> Vec<u8> {
        let mut buf = Vec::new();
        let reply = key.map(|_| v.to_string().into_bytes());
        encode(&mut buf, seq, 1, key, reply.as_deref(), &Put(v)).unwrap();
        buf
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_file_rolls_over_to_the_spare_the_applier_made_ready() {
        for full in [false, true] {
            rolls_over_to_the_spare(full).await;
        }
    }

    #[test]
    fn a_spare_that_holds_entries_is_read_as_the_next_file() {
        let dir = tempfile::tempdir().unwrap();
        // SQLite has 1 and 2; file 4 holds 1..=3; the spare, whose rename a power loss
        // undid, holds 4 and 5.
        applied_up_to_2(dir.path());
        std::fs::write(dir.path().join(file_name("t", 4)), entries(1..=3)).unwrap();
        let mut spare = entries(4..=5);
        spare.resize(4096, 0);
        std::fs::write(spare_path(dir.path(), "t"), spare).unwrap();
        let s = store(dir.path());
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        assert_eq!(values(&s), [1, 2, 3, 4, 5]);
        assert_eq!(journal.applied(), 5);
        assert!(!spare_path(dir.path(), "t").exists());
        drop(journal);
        // An empty one (zeros, as the applier makes them) is simply deleted.
        std::fs::write(spare_path(dir.path(), "t"), vec![0u8; 4096]).unwrap();
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        assert_eq!(values(&s), [1, 2, 3, 4, 5]);
        assert!(!spare_path(dir.path(), "t").exists());
        drop(journal);
    }

    /// Whether `cond` holds within 5 s.
    async fn within_5s(cond: impl Fn() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while !cond() {
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    async fn rolls_over_to_the_spare(full: bool) {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let spare = spare_path(dir.path(), "t");
        // A spare left by the last run is not a journal file: it goes at open.
        std::fs::write(&spare, [7u8; 64]).unwrap();
        let s = store(dir.path());
        let journal = Journal::<Put>::open_sized(s.clone(), dir.path(), "t", full, 4096).unwrap();
        assert!(!spare.exists());
        let at = || lock(&journal.shared.log).segment.at;
        let index = || lock(&journal.shared.log).index;
        let mut v = 0;
        let mut append = || {
            v += 1;
            journal
                .append(Put(v), None, &Bytes::new(), 1, |_, _| {})
                .unwrap();
        };
        for round in 0..3 {
            // Past half the file, the applier makes the next one ready once it has
            // applied what is there.
            while at() <= 2048 {
                append();
            }
            journal.progress().caught_up().await.unwrap();
            // Made right after the applier's progress moves: waited for, 5 s at most.
            let ready = within_5s(|| lock(&journal.shared.log).spare.is_some()).await;
            assert!(ready, "a spare is ready (round {round}, full {full})");
            let ready = std::fs::metadata(&spare).unwrap().ino();
            let before = index();
            while index() == before {
                append();
            }
            let next = dir.path().join(file_name("t", before + 1));
            assert_eq!(
                std::fs::metadata(next).unwrap().ino(),
                ready,
                "round {round}, full {full}"
            );
        }
        journal.progress().caught_up().await.unwrap();
        let all: Vec<i64> = (1..=v).collect();
        assert_eq!(values(&s), all);
        drop(journal);
        // Nothing applied twice, nothing lost, when the next run opens these files.
        let journal = Journal::<Put>::open_sized(s.clone(), dir.path(), "t", full, 4096).unwrap();
        journal.progress().caught_up().await.unwrap();
        assert_eq!(values(&s), all);
    }

    #[test]
    fn what_a_crash_left_is_applied_once_at_open_up_to_a_torn_entry() {
        let dir = tempfile::tempdir().unwrap();
        // SQLite has entries up to 2; the journal holds 1..=5 over two files, the
        // second ending in half an entry (a crash in the middle of an append).
        applied_up_to_2(dir.path());
        std::fs::write(dir.path().join(file_name("t", 7)), entries(1..=3)).unwrap();
        let mut second = entries(4..=5);
        let torn = entry(6, 6, None);
        second.extend(&torn[..torn.len() / 2]);
        std::fs::write(dir.path().join(file_name("t", 8)), second).unwrap();

        let s = store(dir.path());
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        assert_eq!(values(&s), [1, 2, 3, 4, 5]);
        assert_eq!(journal.applied(), 5);
        let left: Vec<_> = list(dir.path(), "t")
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(left, [9], "applied files are deleted, the next one is new");

        // The next entry follows on, and nothing is applied twice on the next open.
        let seq = journal
            .append(Put(7), None, &Bytes::new(), 1, |_, _| {})
            .unwrap();
        assert_eq!(seq, 6);
        drop(journal);
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        assert_eq!(values(&s), [1, 2, 3, 4, 5, 7]);
        assert_eq!(journal.applied(), 6);
    }

    #[test]
    fn appended_entries_survive_a_crash_before_they_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        journal
            .append(Put(1), None, &Bytes::new(), 1, |_, _| {})
            .unwrap();
        // Holding the write connection keeps the applier from applying: the files as
        // they are now are what a `kill -9` would leave.
        s.with_writer(|_| {
            for v in 2..=4 {
                journal
                    .append(Put(v), None, &Bytes::new(), 1, |_, _| {})
                    .unwrap();
            }
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
            }
        });
        drop(journal);
        let s = store(copy.path());
        let journal = Journal::<Put>::open(s.clone(), copy.path(), "t", false).unwrap();
        assert_eq!(values(&s), [1, 2, 3, 4]);
        assert_eq!(journal.applied(), 4);
    }

    /// SQLite refusing an entry (a trigger here; a full disk, or a change that breaks a
    /// constraint, in life) stops the applier at that entry: nothing after it is applied
    /// out of order, nothing is skipped, and the acknowledged entries wait in the journal,
    /// across a restart too, until SQLite takes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_sqlite_refuses_wait_in_the_journal_until_it_takes_them() {
        let refuse = |v: i64| {
            format!(
                "CREATE TRIGGER refuse BEFORE INSERT ON t WHEN NEW.v = {v} \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;"
            )
        };
        let accept = |s: &Store| s.with_writer(|c| c.execute_batch("DROP TRIGGER refuse").unwrap());
        let append_all = |journal: &Journal<Put>, vs: std::ops::RangeInclusive<i64>| {
            for v in vs {
                journal
                    .append(Put(v), None, &Bytes::new(), 1, |_, _| {})
                    .unwrap();
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.with_writer(|c| c.execute_batch(&refuse(3)).unwrap());
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        append_all(&journal, 1..=4);
        // Acknowledged (appended), and not applied: the applier keeps trying.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(journal.applied() < 3, "applied {}", journal.applied());
        assert!(!values(&s).iter().any(|v| *v >= 3), "{:?}", values(&s));
        drop(journal);
        // An open replays the journal first: SQLite still refuses, so the open fails and
        // the files stay.
        assert!(Journal::<Put>::open(s.clone(), dir.path(), "t", false).is_err());
        accept(&s);
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        assert_eq!(values(&s), [1, 2, 3, 4]);

        // A running applier resumes by itself once SQLite takes the entry.
        s.with_writer(|c| c.execute_batch(&refuse(7)).unwrap());
        append_all(&journal, 5..=8);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!values(&s).iter().any(|v| *v >= 7), "{:?}", values(&s));
        accept(&s);
        journal.progress().caught_up().await.unwrap();
        assert_eq!(values(&s), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(journal.applied(), 8);
    }

    #[test]
    fn a_damaged_entry_ends_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = entry(1, 1, None);
        let mut bad = entry(2, 2, None);
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        bytes.extend(bad);
        bytes.extend(entry(3, 3, None));
        std::fs::write(dir.path().join(file_name("t", 0)), bytes).unwrap();
        let s = store(dir.path());
        let _journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        assert_eq!(values(&s), [1]);
    }

    #[test]
    fn entries_past_a_gap_are_kept_aside_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        applied_up_to_2(dir.path());
        // Entries 3 and 4 are lost (their file deleted after a commit that a power loss
        // undid); 5 and 6 survive in the next file.
        let bytes = entries(5..=6);
        std::fs::write(dir.path().join(file_name("t", 3)), bytes).unwrap();
        let s = store(dir.path());
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        assert_eq!(values(&s), [1, 2]);
        assert_eq!(journal.applied(), 2);
        let kept = dir.path().join(format!("{}.orphaned", file_name("t", 3)));
        assert!(kept.exists(), "the file past the gap is kept");
    }

    #[test]
    fn a_hole_in_an_earlier_file_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = entry(1, 1, None);
        first.extend(vec![0u8; 64]); // entry 2's page never reached the disk
        first.extend(entry(3, 3, None));
        std::fs::write(dir.path().join(file_name("t", 0)), first).unwrap();
        std::fs::write(dir.path().join(file_name("t", 1)), entry(4, 4, None)).unwrap();
        let s = store(dir.path());
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        assert_eq!(values(&s), [1]);
        assert_eq!(journal.applied(), 1);
        // New entries follow on from what was applied.
        let seq = journal
            .append(Put(9), None, &Bytes::new(), 1, |_, _| {})
            .unwrap();
        assert_eq!(seq, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_see_every_append_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        for round in 0..50i64 {
            for v in 0..round {
                journal
                    .append(Put(round * 100 + v), None, &Bytes::new(), 1, |_, _| {})
                    .unwrap();
            }
            let n: i64 = s
                .read(|c| {
                    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                        .map_err(internal)
                })
                .await
                .unwrap();
            assert_eq!(n, (0..=round).sum::<i64>());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_forgotten_from_memory_is_still_found_in_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        let first = fresh_key();
        journal
            .append(Put(0), Some(first), &Bytes::from("first"), 1, |_, _| {})
            .unwrap();
        journal.progress().caught_up().await.unwrap();
        for i in 1..RECENT_KEYS + 10 {
            let k = fresh_key();
            assert_eq!(journal.seen(&k).unwrap(), None);
            journal
                .append(Put(i as i64), Some(k), &Bytes::new(), 1, |_, _| {})
                .unwrap();
        }
        assert!(!lock(&journal.shared.log).keys.contains_key(&first));
        assert_eq!(journal.seen(&first).unwrap().unwrap().0, "first");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_id_from_the_far_future_leaves_new_ids_without_a_look_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        let mut far: Key = [0xff; 32];
        far[31] = 0;
        journal
            .append(Put(0), Some(far), &Bytes::from("far"), 1, |_, _| {})
            .unwrap();
        journal.progress().caught_up().await.unwrap();
        for i in 1..RECENT_KEYS + 10 {
            let k = fresh_key();
            journal
                .append(Put(i as i64), Some(k), &Bytes::new(), 1, |_, _| {})
                .unwrap();
        }
        journal.progress().caught_up().await.unwrap();
        // Time fields are milliseconds: a key made now must not share one with the last.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let floor_now = |j: &Journal<Put>| lock(&j.shared.log).floor;
        assert!(!lock(&journal.shared.log).keys.contains_key(&far));
        assert!(time_field(&fresh_key()) > floor_now(&journal));
        assert_eq!(journal.seen(&far).unwrap().unwrap().0, "far", "still found");
        drop(journal);
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            time_field(&fresh_key()) > floor_now(&journal),
            "after a restart too"
        );
        assert_eq!(journal.seen(&far).unwrap().unwrap().0, "far");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_are_found_in_memory_then_in_sqlite_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        // A key whose id is not a UUIDv7 (time field 0) and one that is.
        let mut low: Key = [0; 32];
        low[31] = 1;
        let v7 = fresh_key();
        for (v, key) in [(1, low), (2, v7)] {
            assert_eq!(journal.seen(&key).unwrap(), None);
            let reply = Bytes::from(format!("reply {v}"));
            let seq = journal
                .append(Put(v), Some(key), &reply, 1, |_, _| {})
                .unwrap();
            // With its entry's number, for the retry's reply to wait for its sync.
            assert_eq!(
                journal.seen(&key).unwrap(),
                Some((reply.clone(), seq)),
                "in memory"
            );
        }
        journal.progress().caught_up().await.unwrap();
        assert_eq!(
            journal.seen(&low).unwrap().unwrap(),
            (Bytes::from("reply 1"), 0),
            "from SQLite"
        );
        drop(journal);

        let journal = Journal::<Put>::open(s.clone(), dir.path(), "t", false).unwrap();
        assert_eq!(journal.seen(&low).unwrap().unwrap().0, "reply 1");
        assert_eq!(journal.seen(&v7).unwrap().unwrap().0, "reply 2");
        assert_eq!(journal.seen(&fresh_key()).unwrap(), None);
        assert_eq!(values(&s), [1, 2]);
    }
}
