//! Request batches out (SPEC 5.3): the outbox callers fill while others are in flight,
//! and the task that sends it.

use std::sync::Arc;

use bytes::Bytes;
use mlmesh_protocol::{BatchBuf, MessageId};
use tokio::sync::mpsc;
use zeromq::ZmqMessage;

use super::{send, send_now, Shared, BATCH_BYTES};

/// Requests made while others were in flight, to a provider that accepts batches.
#[derive(Debug)]
pub(super) struct Outbox {
    batch: BatchBuf,
    ids: Vec<MessageId>,
    /// The batch task was woken and has not taken the batch yet.
    scheduled: bool,
}

impl Outbox {
    pub(super) fn new() -> Self {
        Self {
            batch: BatchBuf::with_capacity(0),
            ids: Vec::new(),
            scheduled: false,
        }
    }
}

/// Sends the requests of the outbox as batches: woken by the first request put in an
/// empty outbox, it lets the tasks that are ready to run add theirs first (one yield to
/// the scheduler), then takes them all and sends one message. Requests that cannot be
/// sent end with UNAVAILABLE (not sent: another provider may take them).
pub(super) async fn send_batches(shared: Arc<Shared>, queue: mpsc::Sender<ZmqMessage>) {
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = shared.outbox_ready.notified() => {}
        }
        tokio::task::yield_now().await;
        let (batch, ids) = {
            let mut outbox = shared.outbox.lock().unwrap_or_else(|e| e.into_inner());
            outbox.scheduled = false;
            let batch = std::mem::replace(&mut outbox.batch, BatchBuf::with_capacity(0));
            (batch, std::mem::take(&mut outbox.ids))
        };
        if batch.is_empty() {
            continue;
        }
        let mut msg = ZmqMessage::from(Bytes::new());
        msg.push_back(batch.finish());
        let sent = match send_now(&shared, msg) {
            Ok(None) => Ok(()),
            Ok(Some(msg)) => send(&shared, &queue, msg).await,
            Err(status) => Err(status),
        };
        if let Err(status) = sent {
            shared.fail(ids.into_iter(), &status);
        }
    }
}

impl Shared {
    /// Puts an encoded request in the outbox and wakes the batch task if it is not awake
    /// yet; `false` (the request is not taken) when the batch is full.
    pub(super) fn enqueue(&self, id: MessageId, frame: &[u8]) -> bool {
        let limit = BATCH_BYTES.min(self.codec.max_size().saturating_sub(5));
        let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        if outbox.batch.len() + frame.len() > limit {
            return false;
        }
        outbox.batch.push_encoded(frame);
        outbox.ids.push(id);
        if !outbox.scheduled {
            outbox.scheduled = true;
            drop(outbox);
            self.outbox_ready.notify_one();
        }
        true
    }
}
