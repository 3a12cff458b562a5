//! The background logger of a run: logging from a training loop never waits on the
//! network.
//!
//! `log_*` checks the item (the same limits a tracker enforces), puts it in a bounded
//! buffer and returns. One task sends what the buffer holds as `tracking.run.log`
//! batches within the batch limits, one batch at a time, as soon as the previous one is
//! acknowledged: alone, an item leaves at once; under load, batches grow to the limit.
//! A batch that fails with a code that may clear (the tracker is restarting or busy, the
//! connection dropped, the deadline passed) is sent again **with the same request id**
//! until [`LoggerOptions::give_up_after`]: a tracker that applied it the first time
//! answers from its stored reply and writes nothing twice. What still fails is kept and
//! reported by [`RunLogger::end`]; nothing acknowledged is ever lost (the tracker
//! acknowledges only committed writes).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use mlmesh_protocol::tracking::{
    limits, DatasetInput, LogBatch, Metric, Param, RunInfo, RunStatus, Tag,
};
use mlmesh_protocol::{Code, MessageId, Status};

use super::tracking::Tracking;
use crate::node::CallOptions;

/// How a [`RunLogger`] buffers and retries.
#[derive(Debug, Clone)]
pub struct LoggerOptions {
    /// Items (metrics, params, tags, inputs) the buffer holds before `log_*` refuses
    /// with [`LogError::Full`].
    pub capacity: usize,
    /// How long a batch is retried before it is reported as unacknowledged.
    pub give_up_after: Duration,
    /// Unacknowledged items kept for the report; beyond this they are only counted.
    pub keep_unacknowledged: usize,
}

impl Default for LoggerOptions {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            give_up_after: Duration::from_secs(60),
            keep_unacknowledged: 10_000,
        }
    }
}

/// Why an item was not taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The item breaks a limit of `tracking/1` (the status names the field).
    #[error("{0}")]
    Invalid(Status),
    /// The buffer is full: the tracker is behind or unreachable.
    #[error("the logger's buffer is full")]
    Full,
    /// The run has ended.
    #[error("the run has ended")]
    Closed,
}

/// Items that could not be acknowledged, with the last error.
#[derive(Debug, Clone, PartialEq)]
pub struct Unacknowledged {
    /// The batch that failed (possibly cut short to `keep_unacknowledged`).
    pub batch: LogBatch,
    /// Why.
    pub status: Status,
}

/// What became of a run's logging, from [`RunLogger::end`].
#[derive(Debug, Clone, PartialEq)]
pub struct EndReport {
    /// The run as its tracker ended it.
    pub info: RunInfo,
    /// Metric values acknowledged (written or recognised as exact duplicates).
    pub metrics_acknowledged: u64,
    /// Batches acknowledged.
    pub batches: u64,
    /// What could not be acknowledged.
    pub unacknowledged: Vec<Unacknowledged>,
    /// Unacknowledged items beyond those kept in `unacknowledged`.
    pub unacknowledged_dropped: u64,
}

#[derive(Default)]
struct Buffer {
    metrics: VecDeque<Metric>,
    params: VecDeque<Param>,
    tags: VecDeque<Tag>,
    inputs: VecDeque<DatasetInput>,
    /// Callers of `flush`, answered once everything queued before them is settled.
    waiters: Vec<oneshot::Sender<()>>,
    closed: bool,
    metrics_acknowledged: u64,
    batches: u64,
    unacknowledged: Vec<Unacknowledged>,
    kept_items: usize,
    unacknowledged_dropped: u64,
}

impl Buffer {
    fn len(&self) -> usize {
        self.metrics.len() + self.params.len() + self.tags.len() + self.inputs.len()
    }

    /// The next batch, within every per-batch limit.
    fn take(&mut self, run: &RunInfo) -> LogBatch {
        fn drain<T>(q: &mut VecDeque<T>, n: usize) -> Vec<T> {
            q.drain(..n.min(q.len())).collect()
        }
        let params = drain(&mut self.params, limits::MAX_PARAMS_PER_BATCH);
        let tags = drain(&mut self.tags, limits::MAX_TAGS_PER_BATCH);
        let inputs = drain(&mut self.inputs, limits::MAX_INPUTS_PER_BATCH);
        let room = limits::MAX_ENTITIES_PER_BATCH - params.len() - tags.len() - inputs.len();
        let metrics = drain(&mut self.metrics, room.min(limits::MAX_METRICS_PER_BATCH));
        LogBatch {
            run: run.id,
            params,
            metrics,
            tags,
            inputs,
        }
    }
}

struct Shared {
    buf: Mutex<Buffer>,
    wake: Notify,
    options: LoggerOptions,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buf.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running run with its background logger. Dropping it stops logging after what is
/// buffered is sent; the run stays RUNNING until [`RunLogger::end`] (or until this node
/// leaves the mesh, when its tracker marks it CRASHED).
#[derive(Debug)]
pub struct RunLogger {
    info: RunInfo,
    client: Tracking,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("options", &self.options)
            .finish()
    }
}

fn now_ms() -> u64 {
    mlmesh_protocol::now_nanos() / 1_000_000
}

/// Whether a batch that failed this way may still be applied if sent again. NOT_FOUND
/// is among them: the run exists (its tracker acknowledged its start), so its tracker
/// is restarting or not found yet.
fn worth_retrying(s: &Status) -> bool {
    s.code.is_retryable() || matches!(s.code, Code::Cancelled | Code::NotFound)
}

impl RunLogger {
    pub(crate) fn spawn(client: Tracking, info: RunInfo, options: LoggerOptions) -> Self {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Buffer::default()),
            wake: Notify::new(),
            options,
        });
        tokio::spawn(send_loop(client.clone(), info.clone(), shared.clone()));
        Self {
            info,
            client,
            shared,
        }
    }

    /// The run.
    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    fn push(&self, put: impl FnOnce(&mut Buffer)) -> Result<(), LogError> {
        let mut buf = self.shared.lock();
        if buf.closed {
            return Err(LogError::Closed);
        }
        if buf.len() >= self.shared.options.capacity {
            return Err(LogError::Full);
        }
        put(&mut buf);
        drop(buf);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Logs a metric value at `step`, timestamped now.
    pub fn log_metric(&self, key: &str, value: f64, step: i64) -> Result<(), LogError> {
        self.log_metric_at(key, value, step, now_ms())
    }

    /// Logs a metric value at `step` with its own timestamp (Unix milliseconds).
    pub fn log_metric_at(
        &self,
        key: &str,
        value: f64,
        step: i64,
        timestamp: u64,
    ) -> Result<(), LogError> {
        limits::check_key("key", key).map_err(LogError::Invalid)?;
        let m = Metric {
            key: key.to_owned(),
            value,
            timestamp,
            step,
        };
        self.push(|b| b.metrics.push_back(m))
    }

    /// Logs a param (written once: the same value again is fine, another is refused by
    /// the tracker and reported).
    pub fn log_param(&self, key: &str, value: &str) -> Result<(), LogError> {
        let p = Param {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        check_one(LogBatch {
            params: vec![p.clone()],
            ..self.empty()
        })?;
        self.push(|b| b.params.push_back(p))
    }

    /// Sets a tag (the last write wins).
    pub fn set_tag(&self, key: &str, value: &str) -> Result<(), LogError> {
        let t = Tag {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        check_one(LogBatch {
            tags: vec![t.clone()],
            ..self.empty()
        })?;
        self.push(|b| b.tags.push_back(t))
    }

    /// Records a dataset the run consumes.
    pub fn log_input(&self, input: DatasetInput) -> Result<(), LogError> {
        check_one(LogBatch {
            inputs: vec![input.clone()],
            ..self.empty()
        })?;
        self.push(|b| b.inputs.push_back(input))
    }

    fn empty(&self) -> LogBatch {
        LogBatch {
            run: self.info.id,
            params: Vec::new(),
            metrics: Vec::new(),
            tags: Vec::new(),
            inputs: Vec::new(),
        }
    }

    /// Waits until everything logged so far is acknowledged or given up on.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.shared.lock().waiters.push(tx);
        self.shared.wake.notify_one();
        let _ = rx.await;
    }

    /// Flushes, ends the run with `status` (FINISHED, FAILED or KILLED) and reports what
    /// could not be acknowledged.
    pub async fn end(self, status: RunStatus) -> Result<EndReport, Status> {
        self.flush().await;
        let info = self.end_run(status).await;
        let mut buf = self.shared.lock();
        buf.closed = true;
        let report = EndReport {
            info: info?,
            metrics_acknowledged: buf.metrics_acknowledged,
            batches: buf.batches,
            unacknowledged: std::mem::take(&mut buf.unacknowledged),
            unacknowledged_dropped: buf.unacknowledged_dropped,
        };
        drop(buf);
        self.shared.wake.notify_one();
        Ok(report)
    }

    /// `tracking.run.end`, repeated with the same id while the outcome is unclear.
    async fn end_run(&self, status: RunStatus) -> Result<RunInfo, Status> {
        let req = mlmesh_protocol::tracking::RunEnd {
            run: self.info.id,
            status,
            end_ms: Some(now_ms()),
        };
        let id = MessageId::new();
        let give_up = Instant::now() + self.shared.options.give_up_after;
        let mut delay = Duration::from_millis(20);
        loop {
            let options = CallOptions::default().id(id);
            match self
                .client
                .call_run(
                    self.info.id,
                    mlmesh_protocol::tracking::RUN_END,
                    &req,
                    options,
                )
                .await
            {
                Err(s) if worth_retrying(&s) && Instant::now() + delay < give_up => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }
}

impl Drop for RunLogger {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

fn check_one(batch: LogBatch) -> Result<(), LogError> {
    limits::check_log(&batch).map_err(|mut s| {
        // The item is the caller's, not the first of a batch: name its field alone.
        s.field = s.field.map(|f| {
            f.split_once("].")
                .map_or(f.clone(), |(_, rest)| rest.to_owned())
        });
        LogError::Invalid(s)
    })
}

/// The logger's task: sends batches until the logger is closed and its buffer is empty.
async fn send_loop(client: Tracking, run: RunInfo, shared: Arc<Shared>) {
    loop {
        let (batch, waiters, closed) = {
            let mut buf = shared.lock();
            let batch = buf.take(&run);
            // Waiters are answered once the buffer has been emptied by this batch.
            let waiters = if buf.len() == 0 {
                std::mem::take(&mut buf.waiters)
            } else {
                Vec::new()
            };
            (batch, waiters, buf.closed)
        };
        let empty = batch.params.is_empty()
            && batch.metrics.is_empty()
            && batch.tags.is_empty()
            && batch.inputs.is_empty();
        if !empty {
            send(&client, batch, &shared).await;
        }
        for w in waiters {
            let _ = w.send(());
        }
        if empty {
            if closed {
                return;
            }
            shared.wake.notified().await;
        }
    }
}

/// Sends one batch until it is acknowledged, refused for good, or given up on. A batch
/// refused because of one item (INVALID_ARGUMENT naming `params[3].value`, say) is sent
/// again without that item, under a new id: one bad param does not cost the metrics
/// logged beside it. The item is reported.
async fn send(client: &Tracking, mut batch: LogBatch, shared: &Shared) {
    // Each round takes one item out, so this ends.
    loop {
        match send_once(client, &batch, shared).await {
            Ok(()) => return,
            Err(status) => match take_item(&mut batch, &status) {
                Some(item) => {
                    tracing::warn!(%status, "a logged item was refused; sending the rest of its batch");
                    report(shared, item, status);
                }
                None => {
                    tracing::warn!(%status, "a log batch could not be acknowledged");
                    report(shared, batch, status);
                    return;
                }
            },
        }
    }
}

/// One batch under one id, repeated while the outcome may still change.
async fn send_once(client: &Tracking, batch: &LogBatch, shared: &Shared) -> Result<(), Status> {
    let id = MessageId::new();
    let give_up = Instant::now() + shared.options.give_up_after;
    let mut delay = Duration::from_millis(20);
    loop {
        match client.log_with(batch, CallOptions::default().id(id)).await {
            Ok(logged) => {
                let mut buf = shared.lock();
                buf.metrics_acknowledged += u64::from(logged.metrics + logged.duplicates);
                buf.batches += 1;
                return Ok(());
            }
            Err(s) if worth_retrying(&s) && Instant::now() + delay < give_up => {
                tracing::debug!(status = %s, "log batch not acknowledged yet; sending it again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(s) => return Err(s),
        }
    }
}

/// Takes out of `batch` the one item an INVALID_ARGUMENT names (`metrics[7].key`), as
/// a batch of its own; `None` if the status names no item, or the batch would be empty.
fn take_item(batch: &mut LogBatch, status: &Status) -> Option<LogBatch> {
    if status.code != Code::InvalidArgument {
        return None;
    }
    let field = status.field.as_deref()?;
    let (list, rest) = field.split_once('[')?;
    let index: usize = rest.split_once(']')?.0.parse().ok()?;
    let mut item = LogBatch {
        run: batch.run,
        params: Vec::new(),
        metrics: Vec::new(),
        tags: Vec::new(),
        inputs: Vec::new(),
    };
    fn take<T>(from: &mut Vec<T>, to: &mut Vec<T>, i: usize) -> Option<()> {
        (i < from.len()).then(|| to.push(from.remove(i)))
    }
    match list {
        "params" => take(&mut batch.params, &mut item.params, index)?,
        "metrics" => take(&mut batch.metrics, &mut item.metrics, index)?,
        "tags" => take(&mut batch.tags, &mut item.tags, index)?,
        "inputs" => take(&mut batch.inputs, &mut item.inputs, index)?,
        _ => return None,
    }
    let left = batch.params.len() + batch.metrics.len() + batch.tags.len() + batch.inputs.len();
    if left == 0 {
        *batch = item;
        return None;
    }
    Some(item)
}

/// Keeps (or counts) what could not be acknowledged.
fn report(shared: &Shared, batch: LogBatch, status: Status) {
    let mut buf = shared.lock();
    let items = batch.params.len() + batch.metrics.len() + batch.tags.len() + batch.inputs.len();
    if buf.kept_items + items <= shared.options.keep_unacknowledged {
        buf.kept_items += items;
        buf.unacknowledged.push(Unacknowledged { batch, status });
    } else {
        buf.unacknowledged_dropped += items as u64;
    }
}
