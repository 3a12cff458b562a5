//! The instruction path out: one DEALER per provider endpoint, many requests in flight,
//! correlated by request id, rebuilt when the connection breaks or goes silent.
//!
//! zmq.rs's DEALER neither reconnects after the peer restarts nor bounds its connect
//! (30 s by default), so each client runs a supervisor task that connects with a short
//! timeout, reads replies, and builds a new socket whenever the old one is disconnected
//! or suspected dead (a request timed out with no reply on that connection since it was
//! sent). Callers send on the connection's send half themselves (no task hop); while
//! there is no connection, requests wait in a bounded queue the supervisor drains.

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

use mlmesh_protocol::{Body, Code, Codec, Envelope, MessageId, Status};

/// Requests queued towards one endpoint while it is not connected.
const QUEUE: usize = 1024;

type Pending = Mutex<HashMap<MessageId, oneshot::Sender<Envelope>>>;

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
    cancel: CancellationToken,
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
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(endpoint)
    }

    pub(crate) fn close_all(&self) {
        let all: Vec<_> = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, c) in all {
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
            pending: Mutex::new(HashMap::new()),
            connection: RwLock::new(None),
            replies: AtomicU64::new(0),
            rebuild: Notify::new(),
            cancel,
        });
        tokio::spawn(supervise(shared.clone(), rx));
        Arc::new(Self { shared, queue })
    }

    fn close(&self) {
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

    /// Sends one encoded request and waits for its reply until `deadline`.
    pub(crate) async fn call(
        &self,
        id: MessageId,
        frame: Vec<u8>,
        deadline: Instant,
    ) -> Result<Envelope, Status> {
        let shared = &self.shared;
        let (reply_tx, reply_rx) = oneshot::channel();
        shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, reply_tx);
        let _cleanup = RemoveOnDrop(&shared.pending, id);
        let replies_before = shared.replies.load(Ordering::Relaxed);
        let mut msg = ZmqMessage::from(Bytes::new());
        msg.push_back(Bytes::from(frame));
        let deadline = tokio::time::Instant::from_std(deadline);
        let outcome = tokio::time::timeout_at(deadline, async {
            self.send(msg).await?;
            reply_rx.await.map_err(|_| lost())
        })
        .await;
        match outcome {
            Ok(r) => r,
            Err(_) => {
                // No reply on this connection since the request went out: the
                // connection may be dead without zmq.rs noticing; build a new one.
                if shared.replies.load(Ordering::Relaxed) == replies_before {
                    shared.rebuild.notify_one();
                }
                Err(Status::error(
                    Code::DeadlineExceeded,
                    format!("no reply from {} by the deadline", shared.endpoint),
                ))
            }
        }
    }

    /// On the live connection if there is one, else through the supervisor's queue.
    async fn send(&self, msg: ZmqMessage) -> Result<(), Status> {
        let connection = self
            .shared
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
                    tracing::debug!(endpoint = %self.shared.endpoint, error = %e, "send failed");
                    self.shared.rebuild.notify_one();
                    return Err(not_sent());
                }
            },
            None => msg,
        };
        self.queue.send(msg).await.map_err(|_| not_sent())
    }
}

impl Shared {
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

struct RemoveOnDrop<'a>(&'a Pending, MessageId);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

fn fail_all(pending: &Pending, why: &str) {
    // Dropping the senders wakes every waiter with `lost()` (CANCELLED).
    let n = {
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        let n = p.len();
        p.clear();
        n
    };
    if n > 0 {
        tracing::debug!(waiters = n, "{why}");
    }
}

/// Connects, reads replies, and rebuilds the connection when it fails.
async fn supervise(shared: Arc<Shared>, mut queue: mpsc::Receiver<ZmqMessage>) {
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
            loop {
                match recv.recv().await {
                    Ok(msg) => {
                        reading.replies.fetch_add(1, Ordering::Relaxed);
                        deliver(&reading.codec, &reading.pending, msg);
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

/// Aborts a task when dropped (the reader of a connection that is being replaced).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Hands a reply to the caller waiting for it; strays (late or unknown) are dropped.
fn deliver(codec: &Codec, pending: &Pending, msg: ZmqMessage) {
    let frames = msg.into_vec();
    let Some(body) = frames.last() else { return };
    let env = match codec.decode(body) {
        Ok(env) => env,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable reply dropped");
            return;
        }
    };
    let Body::Reply { re, .. } = env.body else {
        return;
    };
    let waiter = pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&re);
    if let Some(w) = waiter {
        let _ = w.send(env);
    }
}
