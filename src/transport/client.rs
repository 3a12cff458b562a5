//! The instruction path out: one DEALER per provider endpoint, many requests in flight,
//! correlated by request id, rebuilt when the connection breaks or goes silent.
//!
//! zmq.rs's DEALER neither reconnects after the peer restarts nor bounds its connect
//! (30 s by default), so each client runs a supervisor task that connects with a short
//! timeout, and builds a new socket whenever the old one is disconnected or suspected
//! dead (a request timed out with no reply on that connection since it was sent).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use zeromq::{DealerSocket, Socket, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use mlmesh_protocol::{Body, Code, Codec, Envelope, MessageId, Status};

/// Requests queued towards one endpoint before callers wait for room.
const QUEUE: usize = 1024;

type Pending = Mutex<HashMap<MessageId, oneshot::Sender<Envelope>>>;

/// A client towards one ROUTER endpoint.
#[derive(Debug)]
pub(crate) struct PeerClient {
    endpoint: String,
    tx: mpsc::Sender<ZmqMessage>,
    pending: Arc<Pending>,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last reply on the current connection.
    last_reply_ms: Arc<AtomicU64>,
    rebuild: Arc<Notify>,
    cancel: CancellationToken,
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
                while Instant::now() < until
                    && !c
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_empty()
                {
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
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = Arc::new(Self {
            endpoint,
            tx,
            pending: Arc::new(Mutex::new(HashMap::new())),
            epoch: Instant::now(),
            last_reply_ms: Arc::new(AtomicU64::new(0)),
            rebuild: Arc::new(Notify::new()),
            cancel,
        });
        tokio::spawn(supervise(
            client.endpoint.clone(),
            codec,
            connect_timeout,
            rx,
            client.pending.clone(),
            client.epoch,
            client.last_reply_ms.clone(),
            client.rebuild.clone(),
            client.cancel.clone(),
        ));
        client
    }

    fn close(&self) {
        self.cancel.cancel();
        fail_all(&self.pending, "the connection to the provider was closed");
    }

    /// Sends one encoded request and waits for its reply until `deadline`.
    pub(crate) async fn call(
        &self,
        id: MessageId,
        frame: Vec<u8>,
        deadline: Instant,
    ) -> Result<Envelope, Status> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, reply_tx);
        let _cleanup = RemoveOnDrop(&self.pending, id);
        let sent_ms = self.now_ms();
        let mut msg = ZmqMessage::from(Bytes::new());
        msg.push_back(Bytes::from(frame));
        let deadline = tokio::time::Instant::from_std(deadline);
        let outcome = tokio::time::timeout_at(deadline, async {
            self.tx.send(msg).await.map_err(|_| not_sent())?;
            reply_rx.await.map_err(|_| lost())
        })
        .await;
        match outcome {
            Ok(r) => r,
            Err(_) => {
                // No reply on this connection since the request went out: the
                // connection may be dead without zmq.rs noticing; build a new one.
                if self.last_reply_ms.load(Ordering::Relaxed) <= sent_ms {
                    self.rebuild.notify_one();
                }
                Err(Status::error(
                    Code::DeadlineExceeded,
                    format!("no reply from {} by the deadline", self.endpoint),
                ))
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
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

#[allow(clippy::too_many_arguments)]
async fn supervise(
    endpoint: String,
    codec: Codec,
    connect_timeout: Duration,
    mut rx: mpsc::Receiver<ZmqMessage>,
    pending: Arc<Pending>,
    epoch: Instant,
    last_reply_ms: Arc<AtomicU64>,
    rebuild: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut socket =
            DealerSocket::with_options(super::dial_options(codec.max_size(), connect_timeout));
        let mut monitor = socket.monitor();
        let connected = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.connect(&endpoint) => r,
        };
        if let Err(e) = connected {
            tracing::debug!(%endpoint, error = %e, "connect failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        backoff = Duration::from_millis(50);
        last_reply_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let (mut send, mut recv) = socket.split();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = rebuild.notified() => {
                    tracing::debug!(%endpoint, "rebuilding the connection after a silent timeout");
                    break;
                }
                ev = monitor.next() => match ev {
                    Some(SocketEvent::Disconnected(_)) | None => {
                        tracing::debug!(%endpoint, "provider disconnected");
                        fail_all(&pending, "provider disconnected");
                        break;
                    }
                    Some(_) => {}
                },
                Some(msg) = rx.recv() => {
                    if let Err(e) = send.send(msg).await {
                        tracing::debug!(%endpoint, error = %e, "send failed");
                        break;
                    }
                }
                msg = recv.recv() => match msg {
                    Ok(msg) => {
                        last_reply_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                        deliver(&codec, &pending, msg);
                    }
                    Err(e) => {
                        tracing::debug!(%endpoint, error = %e, "receive failed");
                        break;
                    }
                },
            }
        }
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
