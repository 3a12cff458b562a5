//! The instruction path out: one DEALER per provider endpoint, many requests in flight,
//! correlated by request id, rebuilt when the connection breaks or goes silent.
//!
//! zmq.rs's DEALER neither reconnects after the peer restarts nor bounds its connect
//! (30 s by default), so each client runs a supervisor task that connects with a short
//! timeout, reads replies, and builds a new socket whenever the old one is disconnected
//! or suspected dead (a request timed out with no reply on that connection since it was
//! sent). Callers send on the connection's send half themselves (no task hop); while
//! there is no connection, requests wait in a bounded queue the supervisor drains.
//!
//! To a provider that accepts batches (SPEC 5.3), a request made while others are in
//! flight goes into a bounded outbox instead, which a batch task per client sends as
//! one frame after the callers that are ready to run have added theirs; a request made
//! alone still goes out at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use zeromq::{
    DealerSendHalf, DealerSocket, Socket, SocketEvent, SocketRecv, SocketSend, ZmqError, ZmqMessage,
};

mod id_hash;
mod outbox;

use id_hash::IdHash;
use outbox::{send_batches, Outbox};

use mlmesh_protocol::{is_batch, Body, Code, Codec, Envelope, MessageId, Status, Topic};

/// Requests queued towards one endpoint while it is not connected.
const QUEUE: usize = 1024;

/// Most bytes of envelopes in one request batch (and never more than the frame limit).
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// What a provider answered: its reply payload, or the error status it replied with.
pub(crate) type Answer = Result<Bytes, Status>;

/// An answer to a request of a stream: its id, and its reply or why there is none.
pub(crate) type StreamAnswer = (MessageId, Result<Answer, Status>);

/// Where a stream's answers go: a chunk per reply frame (the replies of one batch
/// together). Unbounded here; the stream bounds it by its window (it sends no more
/// requests than it has room for answers).
pub(crate) type Sink = mpsc::UnboundedSender<Vec<StreamAnswer>>;

/// Who waits for a reply: one call, or a stream of requests.
#[derive(Debug)]
enum ReplyTo {
    Call(oneshot::Sender<Result<Answer, Status>>),
    Stream(Sink),
}

/// A request waiting for its reply: `Err` when its deadline passes first.
#[derive(Debug)]
struct Waiting {
    reply: ReplyTo,
    /// The deadline, in whole milliseconds (rounded up) since the client's `epoch`.
    deadline_ms: u64,
    /// [`Shared::replies`] when the request was sent.
    replies_before: u64,
}

type Pending = Mutex<HashMap<MessageId, Waiting, IdHash>>;

impl Waiting {
    /// Whether nobody waits for the answer any more (a stream that was dropped).
    fn abandoned(&self) -> bool {
        matches!(&self.reply, ReplyTo::Stream(sink) if sink.is_closed())
    }

    /// Answers the request `id` (whoever takes it out of `pending` answers it, once).
    fn answer(self, id: MessageId, result: Result<Answer, Status>) {
        match self.reply {
            ReplyTo::Call(tx) => {
                let _ = tx.send(result);
            }
            ReplyTo::Stream(sink) => {
                let _ = sink.send(vec![(id, result)]);
            }
        }
    }
}

/// What a client and its supervisor task share.
#[derive(Debug)]
struct Shared {
    endpoint: String,
    codec: Codec,
    connect_timeout: Duration,
    pending: Pending,
    /// The live connection's send half; `None` while (re)connecting.
    connection: RwLock<Option<DealerSendHalfDebug>>,
    /// Replies read so far: a timed-out call whose connection read none since the call
    /// was sent suspects the connection (no clock needed).
    replies: AtomicU64,
    rebuild: Notify,
    /// Deadlines are kept by one task per client instead of a timer per call: this is the
    /// earliest one it is set to wake for, in ms since `epoch` (`u64::MAX`: none), and
    /// `expire` wakes it when a call needs an earlier wake.
    epoch: Instant,
    armed_ms: AtomicU64,
    expire: Notify,
    /// Requests that go out together as one batch (SPEC 5.3), taken by the client's
    /// batch task when `outbox_ready` wakes it.
    outbox: Mutex<Outbox>,
    outbox_ready: Notify,
    cancel: CancellationToken,
    /// Set when the client stops (closed, or its supervisor ended with the node): a
    /// flag that calls read without the cancellation token's lock.
    closed: std::sync::atomic::AtomicBool,
}

/// A DEALER send half (zmq.rs's has no `Debug`).
#[derive(Clone)]
struct DealerSendHalfDebug(DealerSendHalf);

impl std::fmt::Debug for DealerSendHalfDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DealerSendHalf")
    }
}

/// A client towards one ROUTER endpoint.
#[derive(Debug)]
pub(crate) struct PeerClient {
    shared: Arc<Shared>,
    queue: mpsc::Sender<ZmqMessage>,
    /// Taken out of [`Clients`] (retired or removed): new calls must not use it.
    taken: std::sync::atomic::AtomicBool,
}

/// Every client of a node, by endpoint.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    map: Mutex<HashMap<String, Arc<PeerClient>>>,
}

impl Clients {
    /// The client for `endpoint`, started on first use.
    pub(crate) fn get(
        &self,
        endpoint: &str,
        codec: Codec,
        connect_timeout: Duration,
        parent: &CancellationToken,
    ) -> Arc<PeerClient> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(endpoint) {
            return c.clone();
        }
        let c = PeerClient::start(
            endpoint.to_owned(),
            codec,
            connect_timeout,
            parent.child_token(),
        );
        map.insert(endpoint.to_owned(), c.clone());
        c
    }

    /// Stops the client for `endpoint` after its pending calls are answered, or after
    /// `grace` at the latest. New calls no longer find it.
    pub(crate) fn retire(&self, endpoint: &str, grace: Duration) {
        if let Some(c) = self.take(endpoint) {
            tokio::spawn(async move {
                let until = Instant::now() + grace;
                while Instant::now() < until && c.has_pending() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                c.close();
            });
        }
    }

    /// Stops the client for `endpoint` now; calls waiting on it end with CANCELLED.
    pub(crate) fn remove(&self, endpoint: &str) {
        if let Some(c) = self.take(endpoint) {
            c.close();
        }
    }

    fn take(&self, endpoint: &str) -> Option<Arc<PeerClient>> {
        let c = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(endpoint)?;
        c.taken.store(true, Ordering::Release);
        Some(c)
    }

    pub(crate) fn close_all(&self) {
        let all: Vec<_> = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, c) in all {
            c.taken.store(true, Ordering::Release);
            c.close();
        }
    }
}

impl PeerClient {
    fn start(
        endpoint: String,
        codec: Codec,
        connect_timeout: Duration,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            endpoint,
            codec,
            connect_timeout,
            pending: Mutex::new(HashMap::with_hasher(IdHash)),
            connection: RwLock::new(None),
            replies: AtomicU64::new(0),
            rebuild: Notify::new(),
            epoch: Instant::now(),
            armed_ms: AtomicU64::new(u64::MAX),
            expire: Notify::new(),
            outbox: Mutex::new(Outbox::new()),
            outbox_ready: Notify::new(),
            cancel,
            closed: false.into(),
        });
        tokio::spawn(supervise(shared.clone(), rx));
        tokio::spawn(expire(shared.clone()));
        tokio::spawn(send_batches(shared.clone(), queue.clone()));
        Arc::new(Self {
            shared,
            queue,
            taken: false.into(),
        })
    }

    /// Whether new calls to `endpoint` may use this client (a handle kept outside
    /// [`Clients`], as a peer's liveness keeps one, must ask).
    pub(crate) fn serves(&self, endpoint: &str) -> bool {
        !self.taken.load(Ordering::Acquire)
            && !self.shared.closed.load(Ordering::Acquire)
            && self.shared.endpoint == endpoint
    }

    fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.cancel.cancel();
        fail_all(
            &self.shared.pending,
            "the connection to the provider was closed",
        );
    }

    fn has_pending(&self) -> bool {
        !self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Sends one encoded request and waits for its reply until `deadline` (kept by the
    /// client's expiry task: the call has no timer of its own). `Ok` holds what the
    /// provider answered, its error status included; `Err`, a reply that did not come.
    /// With `batch` (the provider accepts request batches), a request made while others
    /// are in flight goes out in a batch with the requests made around it; a request
    /// alone goes at once, as without.
    pub(crate) async fn call(
        &self,
        id: MessageId,
        frame: Vec<u8>,
        deadline: Instant,
        batch: bool,
    ) -> Result<Answer, Status> {
        let shared = &self.shared;
        let (reply_tx, reply_rx) = oneshot::channel();
        let replies_before = shared.replies.load(Ordering::Relaxed);
        let deadline_ms = shared.ms_since_epoch(deadline, true);
        let (others, displaced) = {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            // Closed under the lock: `close` empties the map after setting it, so an
            // entry put in after that would never be answered.
            if shared.closed.load(Ordering::Acquire) {
                return Err(not_sent());
            }
            let others = pending.len();
            let waiting = Waiting {
                reply: ReplyTo::Call(reply_tx),
                deadline_ms,
                replies_before,
            };
            (others, pending.insert(id, waiting))
        };
        if let Some(w) = displaced {
            // The same id reused while its first request still waited.
            w.answer(id, Err(lost()));
        }
        let mut cleanup = RemoveOnDrop(&shared.pending, id, true);
        // The expiry task wakes for the earliest deadline; it is told only when this one
        // is earlier (the first call after a quiet time, or a shorter deadline).
        if shared.armed_ms.fetch_min(deadline_ms, Ordering::AcqRel) > deadline_ms {
            shared.expire.notify_one();
        }
        if !(batch && others > 0 && shared.enqueue(id, &frame)) {
            let mut msg = ZmqMessage::from(Bytes::new());
            msg.push_back(Bytes::from(frame));
            if let Some(msg) = send_now(shared, msg)? {
                // No connection, or its queue is full: wait for one or for room. Rare,
                // and boxed, so that the usual call's future stays small.
                let deadline = tokio::time::Instant::from_std(deadline);
                let sending = send(shared, &self.queue, msg);
                match Box::pin(tokio::time::timeout_at(deadline, sending)).await {
                    Ok(sent) => sent?,
                    Err(_) => return Err(self.timed_out(replies_before)),
                }
            }
        }
        // No timer of its own: the expiry task answers it at the deadline.
        let answer = reply_rx.await.unwrap_or_else(|_| Err(lost()));
        // Answered or not, its sender left `pending` first: no second lock to remove it.
        cleanup.2 = false;
        answer
    }

    fn timed_out(&self, replies_before: u64) -> Status {
        self.shared.timed_out(replies_before)
    }

    /// Drops the requests whose answers go to `sink` (a stream that is dropped): nobody
    /// waits for them, and the map would keep them until their deadlines.
    pub(crate) fn forget(&self, sink: &Sink) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, w| !matches!(&w.reply, ReplyTo::Stream(s) if s.same_channel(sink)));
    }

    /// Sends one frame of a stream's requests (one request, or a batch: SPEC 5.3) whose
    /// answers go to `sink`. Each request is answered there once: by its reply, by
    /// DEADLINE_EXCEEDED at its deadline, or by what kept it from being sent or answered.
    /// Never waits: without a connection (or room on it), a task of its own waits for
    /// one until the last of the deadlines.
    pub(crate) fn send_stream(&self, frame: Bytes, requests: &[(MessageId, Instant)], sink: &Sink) {
        let shared = &self.shared;
        let replies_before = shared.replies.load(Ordering::Relaxed);
        let (mut earliest, mut latest) = (u64::MAX, Instant::now());
        let mut displaced = Vec::new();
        {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            if shared.closed.load(Ordering::Acquire) {
                // Closed: `close` emptied the map already, and would not answer these.
                drop(pending);
                let answers = requests.iter().map(|(id, _)| (*id, Err(not_sent())));
                let _ = sink.send(answers.collect());
                return;
            }
            for &(id, deadline) in requests {
                let deadline_ms = shared.ms_since_epoch(deadline, true);
                earliest = earliest.min(deadline_ms);
                latest = latest.max(deadline);
                let reply = ReplyTo::Stream(sink.clone());
                let waiting = Waiting {
                    reply,
                    deadline_ms,
                    replies_before,
                };
                displaced.extend(pending.insert(id, waiting).map(|w| (id, w)));
            }
        }
        for (id, w) in displaced {
            w.answer(id, Err(lost()));
        }
        if shared.armed_ms.fetch_min(earliest, Ordering::AcqRel) > earliest {
            shared.expire.notify_one();
        }
        let mut msg = ZmqMessage::from(Bytes::new());
        msg.push_back(frame);
        let status = match send_now(shared, msg) {
            Ok(None) => return,
            Err(status) => status,
            Ok(Some(msg)) => {
                let (shared, queue) = (shared.clone(), self.queue.clone());
                let ids: Vec<MessageId> = requests.iter().map(|(id, _)| *id).collect();
                let until = tokio::time::Instant::from_std(latest);
                tokio::spawn(async move {
                    // Past the last deadline every request was answered already.
                    if let Ok(Err(status)) =
                        tokio::time::timeout_at(until, send(&shared, &queue, msg)).await
                    {
                        shared.fail(ids.iter().copied(), &status);
                    }
                });
                return;
            }
        };
        shared.fail(requests.iter().map(|(id, _)| *id), &status);
    }
}

/// Queues `msg` on the live connection if that needs no wait (the usual case: no future,
/// no task hop); hands it back when there is no connection or no room.
fn send_now(shared: &Shared, msg: ZmqMessage) -> Result<Option<ZmqMessage>, Status> {
    let connection = shared.connection.read().unwrap_or_else(|e| e.into_inner());
    let Some(DealerSendHalfDebug(half)) = connection.as_ref() else {
        return Ok(Some(msg));
    };
    half.try_send(msg).map_err(|e| {
        tracing::debug!(endpoint = %shared.endpoint, error = %e, "send failed");
        shared.rebuild.notify_one();
        not_sent()
    })
}

/// On the live connection if there is one, else through the supervisor's queue.
async fn send(
    shared: &Shared,
    queue: &mpsc::Sender<ZmqMessage>,
    msg: ZmqMessage,
) -> Result<(), Status> {
    let connection = shared
        .connection
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let msg = match connection {
        Some(DealerSendHalfDebug(mut half)) => match half.send(msg).await {
            Ok(()) => return Ok(()),
            // The connection went away under us: the message is handed back.
            Err(ZmqError::ReturnToSender { message, .. }) => message,
            Err(e) => {
                tracing::debug!(endpoint = %shared.endpoint, error = %e, "send failed");
                shared.rebuild.notify_one();
                return Err(not_sent());
            }
        },
        None => msg,
    };
    queue.send(msg).await.map_err(|_| not_sent())
}

impl Shared {
    /// Whole milliseconds from `epoch` to `t`, rounded up or down.
    fn ms_since_epoch(&self, t: Instant, up: bool) -> u64 {
        let d = t.saturating_duration_since(self.epoch);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1);
        if up && !d.subsec_nanos().is_multiple_of(1_000_000) {
            ms.saturating_add(1).min(u64::MAX - 1)
        } else {
            ms
        }
    }

    /// A call's deadline passed. No reply on this connection since the request went
    /// out: the connection may be dead without zmq.rs noticing; build a new one.
    fn timed_out(&self, replies_before: u64) -> Status {
        if self.replies.load(Ordering::Relaxed) == replies_before {
            self.rebuild.notify_one();
        }
        Status::error(
            Code::DeadlineExceeded,
            format!("no reply from {} by the deadline", self.endpoint),
        )
    }

    /// Answers the requests `ids` that still wait with `status` (they were not sent).
    fn fail(&self, ids: impl Iterator<Item = MessageId>, status: &Status) {
        let failed: Vec<(MessageId, Waiting)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            ids.filter_map(|id| pending.remove(&id).map(|w| (id, w)))
                .collect()
        };
        for (id, w) in failed {
            w.answer(id, Err(status.clone()));
        }
    }

    fn set_connection(&self, half: Option<DealerSendHalf>) {
        *self.connection.write().unwrap_or_else(|e| e.into_inner()) = half.map(DealerSendHalfDebug);
    }
}

/// The request never left this node: another provider may take it.
fn not_sent() -> Status {
    Status::error(
        Code::Unavailable,
        "the connection to the provider was closed",
    )
}

/// The request may have reached the provider: its outcome is unknown, so it must not be
/// retried elsewhere automatically.
fn lost() -> Status {
    Status::error(
        Code::Cancelled,
        "the connection to the provider was lost after the request was sent; it may or may not have run",
    )
}

/// Takes a call out of `pending` if it ends before its reply (a caller that gave up, a
/// request that could not be sent); disarmed (`.2`) once the reply or its failure came,
/// which took it out already.
struct RemoveOnDrop<'a>(&'a Pending, MessageId, bool);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if self.2 {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.1);
        }
    }
}

fn fail_all(pending: &Pending, why: &str) {
    let all: Vec<(MessageId, Waiting)> = pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    if !all.is_empty() {
        tracing::debug!(waiters = all.len(), "{why}");
    }
    for (id, w) in all {
        w.answer(id, Err(lost()));
    }
}

/// Connects, reads replies, and rebuilds the connection when it fails.
async fn supervise(shared: Arc<Shared>, mut queue: mpsc::Receiver<ZmqMessage>) {
    /// Marks the client closed however the supervisor ends (the node's cancellation
    /// included, which cancels the client's token without [`PeerClient::close`]).
    /// It also answers what still waits (after the flag, so that a request made later
    /// is refused rather than left waiting).
    struct Closed<'a>(&'a Shared);
    impl Drop for Closed<'_> {
        fn drop(&mut self) {
            self.0.closed.store(true, Ordering::Release);
            fail_all(&self.0.pending, "the client stopped");
        }
    }
    let _closed = Closed(&shared);
    let endpoint = shared.endpoint.as_str();
    let mut backoff = Duration::from_millis(50);
    loop {
        let options = super::dial_options(shared.codec.max_size(), shared.connect_timeout);
        let mut socket = DealerSocket::with_options(options);
        let mut monitor = socket.monitor();
        let connected = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = socket.connect(endpoint) => r,
        };
        if let Err(e) = connected {
            tracing::debug!(%endpoint, error = %e, "connect failed; retrying");
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        backoff = Duration::from_millis(50);
        let (mut send, mut recv) = socket.split();
        shared.set_connection(Some(send.clone()));
        // Replies are read by a task of their own: the shortest way from the socket to
        // the waiting caller. It ends with the connection.
        let reading = shared.clone();
        let reader = AbortOnDrop(tokio::spawn(async move {
            let mut topic = None;
            loop {
                match recv.recv().await {
                    Ok(msg) => {
                        reading.replies.fetch_add(1, Ordering::Relaxed);
                        deliver(&reading.codec, &reading.pending, msg, &mut topic);
                    }
                    Err(e) => {
                        tracing::debug!(endpoint = %reading.endpoint, error = %e, "receive failed");
                        reading.rebuild.notify_one();
                        return;
                    }
                }
            }
        }));
        loop {
            tokio::select! {
                _ = shared.cancel.cancelled() => {
                    shared.set_connection(None);
                    return;
                }
                _ = shared.rebuild.notified() => {
                    tracing::debug!(%endpoint, "rebuilding the connection after a silent timeout");
                    break;
                }
                ev = monitor.next() => match ev {
                    Some(SocketEvent::Disconnected(_)) | None => {
                        tracing::debug!(%endpoint, "provider disconnected");
                        fail_all(&shared.pending, "provider disconnected");
                        break;
                    }
                    Some(_) => {}
                },
                // Requests made while there was no connection.
                Some(msg) = queue.recv() => {
                    if let Err(e) = send.send(msg).await {
                        tracing::debug!(%endpoint, error = %e, "send failed");
                        break;
                    }
                }
            }
        }
        shared.set_connection(None);
        drop(reader);
    }
}

/// Answers DEADLINE_EXCEEDED to the calls whose deadline passed, waking once for the
/// earliest deadline: one timer per client instead of one per call (a timer's
/// registration and removal took a lock of Tokio's timer wheel on every call). It ends
/// with the client; calls still waiting then end as [`PeerClient::close`] ends them.
async fn expire(shared: Arc<Shared>) {
    loop {
        let armed = shared.armed_ms.load(Ordering::Acquire);
        let wake = (armed != u64::MAX)
            .then(|| shared.epoch.checked_add(Duration::from_millis(armed)))
            .flatten();
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = shared.expire.notified() => continue,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(
                wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            )), if wake.is_some() => {}
        }
        // Unarmed before the scan: a call registered meanwhile arms it again (and
        // notifies), so that no deadline is missed.
        shared.armed_ms.store(u64::MAX, Ordering::Release);
        let now_ms = shared.ms_since_epoch(Instant::now(), false);
        let (expired, next) = {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            // With those of dropped streams (whose purge missed a client they had left).
            let expired: Vec<(MessageId, Waiting)> = pending
                .extract_if(|_, w| w.deadline_ms <= now_ms || w.abandoned())
                .collect();
            let next = pending.values().map(|w| w.deadline_ms).min();
            (expired, next.unwrap_or(u64::MAX))
        };
        shared.armed_ms.fetch_min(next, Ordering::AcqRel);
        for (id, w) in expired {
            let status = shared.timed_out(w.replies_before);
            w.answer(id, Err(status));
        }
    }
}

/// Aborts a task when dropped (the reader of a connection that is being replaced).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Hands each reply of a message (one, or a batch: SPEC 5.3) to the caller waiting for
/// it; strays (late or unknown) are dropped. `topic` is the topic of the last reply: a
/// reply of the same topic (the usual case) is read by position, sharing it.
fn deliver(codec: &Codec, pending: &Pending, msg: ZmqMessage, topic: &mut Option<Topic>) {
    let frames = msg.into_vec();
    let Some(body) = frames.last() else { return };
    let resolve = |name: &[u8]| {
        topic
            .as_ref()
            .filter(|t| t.as_str().as_bytes() == name)
            .cloned()
    };
    if !is_batch(body) {
        match codec.decode_with(body, resolve) {
            Ok(env) => {
                let mut waiting = pending.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((id, w, answer)) = answer(&mut waiting, env, topic) {
                    drop(waiting);
                    w.answer(id, Ok(answer));
                }
            }
            Err(e) => tracing::debug!(error = %e, "undecodable reply dropped"),
        }
        return;
    }
    let mut replies = Vec::new();
    if let Err(e) = codec.decode_instructions(body, resolve, |env| replies.push(env)) {
        tracing::debug!(error = %e, "undecodable reply batch dropped");
        return;
    }
    // One lock for the batch; the callers are woken after it is released.
    let answers: Vec<_> = {
        let mut waiting = pending.lock().unwrap_or_else(|e| e.into_inner());
        replies
            .into_iter()
            .filter_map(|env| answer(&mut waiting, env, topic))
            .collect()
    };
    // A stream's replies go to it as one chunk per run of them (one wake of the
    // stream's owner per batch, not per reply).
    let mut run: Option<(Sink, Vec<StreamAnswer>)> = None;
    for (id, w, answer) in answers {
        match w.reply {
            ReplyTo::Call(tx) => {
                let _ = tx.send(Ok(answer));
            }
            ReplyTo::Stream(sink) => match &mut run {
                Some((to, chunk)) if to.same_channel(&sink) => chunk.push((id, Ok(answer))),
                _ => {
                    if let Some((to, chunk)) = run.replace((sink, vec![(id, Ok(answer))])) {
                        let _ = to.send(chunk);
                    }
                }
            },
        }
    }
    if let Some((to, chunk)) = run {
        let _ = to.send(chunk);
    }
}

/// The request a reply answers, its waiter (taken out of `pending`), and its answer.
fn answer(
    pending: &mut HashMap<MessageId, Waiting, IdHash>,
    env: Envelope,
    topic: &mut Option<Topic>,
) -> Option<(MessageId, Waiting, Answer)> {
    let Envelope {
        topic: reply_topic,
        body: Body::Reply { re, status },
        data,
        ..
    } = env
    else {
        return None;
    };
    if topic.as_ref() != Some(&reply_topic) {
        *topic = Some(reply_topic);
    }
    let w = pending.remove(&re)?;
    let answer = if status.is_ok() {
        Ok(data)
    } else {
        Err(status)
    };
    Some((re, w, answer))
}
