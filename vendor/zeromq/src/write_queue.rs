use crate::codec::{CodecResult, Message, ZmqFramedWrite};

use futures::channel::mpsc;
use futures::lock::Mutex;
use futures::task::AtomicWaker;
use futures::{Sink, SinkExt, StreamExt};

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

const WRITE_BATCH_LIMIT: usize = 128;

/// Writes queued socket messages into the underlying framed sink in small batches.
#[inline]
pub(crate) async fn write_message_queue(
    queue_receiver: mpsc::Receiver<Message>,
    send_queue: ZmqFramedWrite,
) -> CodecResult<()> {
    write_message_queue_counted(queue_receiver, send_queue, |_| {}).await
}

/// [`write_message_queue`], calling `flushed` with the number of messages each flush
/// wrote (mlmesh patch: the PUB counts what its subscribers still have to write,
/// PATCHES.md, 5).
#[inline]
pub(crate) async fn write_message_queue_counted(
    mut queue_receiver: mpsc::Receiver<Message>,
    mut send_queue: ZmqFramedWrite,
    mut flushed: impl FnMut(usize),
) -> CodecResult<()> {
    while let Some(message) = queue_receiver.next().await {
        // When backlog already exists, feed a batch before flushing once to avoid per-message flush cost during bursts.
        send_queue.feed(message).await?;
        let mut fed = 1;

        for _ in 1..WRITE_BATCH_LIMIT {
            let message = match queue_receiver.try_recv() {
                Ok(message) => message,
                Err(_) => break,
            };
            send_queue.feed(message).await?;
            fed += 1;
        }

        send_queue.flush().await?;
        flushed(fed);
    }

    Ok(())
}

/// mlmesh patch (PATCHES.md, 11): a peer's connection that a sender may write to itself.
///
/// A peer's messages normally go through its queue to its writer task, which puts them
/// on the wire: a task hop per message, and a message sent from a task that keeps its
/// worker busy waits until that task yields. [`Direct::try_write`] writes a message from
/// the sending task instead, when nothing is queued before it and the writer task is not
/// writing; otherwise the caller queues it as before. Order is kept: a message is
/// written directly only when no queued message is waiting to be written.
pub(crate) struct Direct {
    sink: Mutex<ZmqFramedWrite>,
    /// Messages pushed (or being pushed) into the queue and not yet written: raised
    /// before a push ([`Direct::queueing`]), lowered by the writer task after it wrote them.
    queued: AtomicUsize,
    /// A direct write left bytes buffered (the socket was full): the writer task must
    /// flush them.
    unflushed: AtomicBool,
    writer: AtomicWaker,
}

impl Direct {
    pub(crate) fn new(sink: ZmqFramedWrite) -> Self {
        Self {
            sink: Mutex::new(sink),
            queued: AtomicUsize::new(0),
            unflushed: AtomicBool::new(false),
            writer: AtomicWaker::new(),
        }
    }

    /// Counts a message about to be pushed into the peer's queue; the returned guard
    /// takes the count back unless [`Queueing::pushed`] says the push succeeded.
    pub(crate) fn queueing(&self) -> Queueing<'_> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        Queueing(Some(self))
    }

    /// Writes `message` to the connection now if nothing is queued before it and the
    /// writer task is not writing. `Ok(None)`: written (or buffered, for the writer task to
    /// flush); `Ok(Some(message))`: not written, to be queued. `Err`: the connection failed.
    pub(crate) fn try_write(&self, message: Message) -> CodecResult<Option<Message>> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return Ok(Some(message));
        }
        let Some(mut sink) = self.sink.try_lock() else {
            return Ok(Some(message));
        };
        if self.queued.load(Ordering::Acquire) != 0 {
            return Ok(Some(message));
        }
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut sink = Pin::new(&mut *sink);
        match sink.as_mut().poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(Some(message)),
        }
        sink.as_mut().start_send(message)?;
        match sink.as_mut().poll_flush(&mut cx) {
            Poll::Ready(result) => result.map(|()| None),
            Poll::Pending => {
                self.unflushed.store(true, Ordering::Release);
                self.writer.wake();
                Ok(None)
            }
        }
    }
}

/// A message counted in [`Direct::queued`] while it is being pushed.
pub(crate) struct Queueing<'a>(Option<&'a Direct>);

impl Queueing<'_> {
    pub(crate) fn pushed(mut self) {
        self.0 = None;
    }
}

impl Drop for Queueing<'_> {
    fn drop(&mut self) {
        if let Some(direct) = self.0 {
            direct.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// [`write_message_queue`] for a connection that senders may also write directly
/// ([`Direct`]): the sink is locked while the task writes, and it also flushes what a
/// direct write left buffered.
pub(crate) async fn write_direct_queue(
    mut queue_receiver: mpsc::Receiver<Message>,
    direct: std::sync::Arc<Direct>,
) -> CodecResult<()> {
    enum Next {
        Message(Message),
        Flush,
    }
    loop {
        let next = futures::future::poll_fn(|cx| {
            direct.writer.register(cx.waker());
            if direct.unflushed.swap(false, Ordering::AcqRel) {
                return Poll::Ready(Some(Next::Flush));
            }
            queue_receiver
                .poll_next_unpin(cx)
                .map(|m| m.map(Next::Message))
        })
        .await;
        let mut sink = direct.sink.lock().await;
        let mut fed = 0;
        match next {
            None => return Ok(()),
            Some(Next::Flush) => {}
            Some(Next::Message(message)) => {
                sink.feed(message).await?;
                fed = 1;
                while fed < WRITE_BATCH_LIMIT {
                    match queue_receiver.try_recv() {
                        Ok(message) => sink.feed(message).await?,
                        Err(_) => break,
                    }
                    fed += 1;
                }
            }
        }
        sink.flush().await?;
        direct.queued.fetch_sub(fed, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    mod batch_boundaries;
    mod direct;

    use super::*;
    use crate::codec::{CodecError, ZmqCodec};
    use crate::ZmqMessage;

    use bytes::Bytes;
    use futures::{AsyncWrite, SinkExt};
    use parking_lot::Mutex;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    #[derive(Default)]
    struct WriteStats {
        bytes: Vec<u8>,
        flushes: usize,
    }

    struct RecordingWrite {
        stats: Arc<Mutex<WriteStats>>,
    }

    impl AsyncWrite for RecordingWrite {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut stats = self.stats.lock();
            stats.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.stats.lock().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct FailingWrite;

    impl AsyncWrite for FailingWrite {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "writer failed",
            )))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[crate::async_rt::test]
    async fn test_write_message_queue_batches_ready_messages_into_one_flush() {
        let (mut sender, receiver) = mpsc::channel(8);
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"a"))))
            .await
            .expect("send first message");
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"b"))))
            .await
            .expect("send second message");
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"c"))))
            .await
            .expect("send third message");
        drop(sender);

        let stats = Arc::new(Mutex::new(WriteStats::default()));
        let writer = RecordingWrite {
            stats: Arc::clone(&stats),
        };
        let send_queue = ZmqFramedWrite::new(Box::new(writer), ZmqCodec::new());

        write_message_queue(receiver, send_queue)
            .await
            .expect("write queued messages");

        let stats = stats.lock();
        assert_eq!(1, stats.flushes);
        assert_eq!(
            stats.bytes,
            vec![0x00, 0x01, b'a', 0x00, 0x01, b'b', 0x00, 0x01, b'c']
        );
    }

    // mlmesh patch (PATCHES.md, 5).
    #[crate::async_rt::test]
    async fn test_counted_write_reports_each_flush_with_its_messages() {
        let (mut sender, receiver) = mpsc::channel(WRITE_BATCH_LIMIT * 2);
        for _ in 0..WRITE_BATCH_LIMIT + 3 {
            sender
                .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"m"))))
                .await
                .expect("send message");
        }
        drop(sender);

        let stats = Arc::new(Mutex::new(WriteStats::default()));
        let writer = RecordingWrite {
            stats: Arc::clone(&stats),
        };
        let send_queue = ZmqFramedWrite::new(Box::new(writer), ZmqCodec::new());
        let mut reported = Vec::new();
        write_message_queue_counted(receiver, send_queue, |n| reported.push(n))
            .await
            .expect("write queued messages");

        assert_eq!(reported, vec![WRITE_BATCH_LIMIT, 3]);
        assert_eq!(stats.lock().flushes, 2);
    }

    #[crate::async_rt::test]
    async fn test_write_message_queue_returns_writer_errors() {
        let (mut sender, receiver) = mpsc::channel(1);
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"a"))))
            .await
            .expect("send message");
        drop(sender);

        let send_queue = ZmqFramedWrite::new(Box::new(FailingWrite), ZmqCodec::new());
        let error = write_message_queue(receiver, send_queue)
            .await
            .expect_err("write error");

        let CodecError::Io(error) = error else {
            panic!("unexpected error type");
        };
        assert_eq!(io::ErrorKind::BrokenPipe, error.kind());
    }
}
