use crate::codec::*;
use crate::endpoint::Endpoint;
use crate::error::ZmqResult;
use crate::message::*;
use crate::transport::AcceptStopHandle;
use crate::util::PeerIdentity;
use crate::write_queue::write_message_queue_counted;
use crate::{async_rt, CaptureSocket, SocketOptions};
use crate::{MultiPeerBackend, Socket, SocketBackend, SocketEvent, SocketSend, SocketType};

use async_trait::async_trait;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use futures::channel::{mpsc, oneshot};
use futures::{select, FutureExt, StreamExt};
use parking_lot::Mutex;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const PUB_SEND_QUEUE_CAPACITY: usize = 100_000;
type PubSendQueue = mpsc::Sender<Message>;

fn subscription_matches(subscriptions: &[Vec<u8>], first_frame: &Bytes) -> bool {
    // Single-subscription PUB fanout is common, so keep its comparison shape unchanged.
    // Only use first-byte filtering for multiple subscriptions, where it avoids extra scans.
    if subscriptions.len() <= 1 {
        return subscriptions.iter().any(|sub_filter| {
            sub_filter.len() <= first_frame.len()
                && sub_filter.as_slice() == &first_frame[0..sub_filter.len()]
        });
    }

    let first_byte = first_frame.first().copied();
    subscriptions
        .iter()
        .any(|sub_filter| match sub_filter.first().copied() {
            Some(prefix_first) if Some(prefix_first) != first_byte => false,
            _ => {
                sub_filter.len() <= first_frame.len()
                    && sub_filter.as_slice() == &first_frame[0..sub_filter.len()]
            }
        })
}

// mlmesh patch: takes the subscriber's own sender by reference. Upstream passed a fresh
// clone per message, and every futures-mpsc sender clone has a guaranteed slot of its
// own, so the queue never filled and a stalled subscriber grew the publisher without
// bound. With one persistent sender the capacity holds and full queues drop.
// Returns whether the message was queued.
fn send_to_subscriber(send_queue: &mut PubSendQueue, message: &ZmqMessage) -> bool {
    let message = Message::Message(message.clone());
    match send_queue.try_send(message) {
        Ok(()) => true,
        Err(error) if error.is_full() => {
            // PUB drops messages for slow subscribers so one full queue does not backpressure all publishers.
            drop(error.into_inner());
            false
        }
        Err(error) => {
            // The writer task owns transport error detection and subscriber cleanup.
            // A closed local queue is treated as a dropped PUB message on this send path.
            drop(error.into_inner());
            false
        }
    }
}

pub(crate) struct Subscriber {
    pub(crate) subscriptions: Vec<Vec<u8>>,
    pub(crate) send_queue: PubSendQueue,
    pub(crate) _subscription_coro_stop: oneshot::Sender<()>,
    // mlmesh patch: messages in `send_queue` or being written, not yet flushed to the
    // connection (PATCHES.md, 5). Raised before a message is queued, lowered by the
    // writer task after each flush.
    pub(crate) unwritten: Arc<AtomicUsize>,
}

pub(crate) struct PubSocketBackend {
    pub(crate) subscribers: scc::HashMap<PeerIdentity, Subscriber>,
    pub(crate) subscriber_count: AtomicUsize,
    pub(crate) socket_monitor: Mutex<Option<mpsc::Sender<SocketEvent>>>,
    pub(crate) socket_options: Arc<SocketOptions>,
    // mlmesh patch: messages accepted by `send` and not yet handed to every matching
    // subscriber's queue (PATCHES.md, 5).
    pub(crate) unfanned: Arc<AtomicUsize>,
    // mlmesh patch: every connected subscriber's subscriptions, counted by prefix, readable
    // without touching the subscriber map (PATCHES.md, 9).
    pub(crate) wanted: Mutex<Wanted>,
}

/// The subscriptions of all connected subscribers: each distinct prefix with the number
/// of (subscriber, subscription) pairs holding it. Updated while the subscriber's map
/// entry is held (or right after the entry is taken out of the map), so an increment
/// always precedes the decrement that undoes it; the lock is never held across an await.
#[derive(Default)]
pub(crate) struct Wanted {
    prefixes: Vec<(Vec<u8>, usize)>,
}

impl Wanted {
    fn add(&mut self, prefix: &[u8]) {
        match self.prefixes.iter_mut().find(|(p, _)| p == prefix) {
            Some((_, n)) => *n += 1,
            None => self.prefixes.push((prefix.to_vec(), 1)),
        }
    }

    fn remove(&mut self, prefix: &[u8]) {
        if let Some(i) = self.prefixes.iter().position(|(p, _)| p == prefix) {
            self.prefixes[i].1 -= 1;
            if self.prefixes[i].1 == 0 {
                self.prefixes.swap_remove(i);
            }
        }
    }

    fn forget(&mut self, subscriber: &Subscriber) {
        for s in &subscriber.subscriptions {
            self.remove(s);
        }
    }

    fn matches(&self, topic: &[u8]) -> bool {
        self.prefixes.iter().any(|(p, _)| topic.starts_with(p))
    }
}

struct PubFanoutQueue {
    queue: Arc<ArrayQueue<ZmqMessage>>,
    wake_sender: mpsc::UnboundedSender<()>,
    wake_pending: Arc<AtomicBool>,
    unfanned: Arc<AtomicUsize>,
}

impl PubFanoutQueue {
    fn publish(&self, message: ZmqMessage) -> ZmqResult<()> {
        // Raised first: the fan-out worker may take the message as soon as it is pushed.
        self.unfanned.fetch_add(1, Ordering::AcqRel);
        if self.queue.push(message).is_err() {
            self.unfanned.fetch_sub(1, Ordering::AcqRel);
            return Ok(());
        }

        if !self.wake_pending.load(Ordering::Acquire)
            && !self.wake_pending.swap(true, Ordering::AcqRel)
        {
            let _ = self.wake_sender.unbounded_send(());
        }

        Ok(())
    }
}

fn spawn_pub_fanout_queue(backend: Arc<PubSocketBackend>) -> PubFanoutQueue {
    let queue = Arc::new(ArrayQueue::new(PUB_SEND_QUEUE_CAPACITY));
    let wake_pending = Arc::new(AtomicBool::new(false));
    let (wake_sender, mut wake_receiver) = mpsc::unbounded();
    let worker_queue = queue.clone();
    let worker_pending = wake_pending.clone();
    let unfanned = backend.unfanned.clone();

    async_rt::task::spawn(async move {
        while wake_receiver.next().await.is_some() {
            loop {
                while let Some(message) = worker_queue.pop() {
                    backend.fanout_message(message).await;
                    backend.unfanned.fetch_sub(1, Ordering::AcqRel);
                }

                worker_pending.store(false, Ordering::Release);
                if worker_queue.is_empty() {
                    break;
                }

                // New messages arrived between draining and sleeping, so this task keeps ownership of the batch.
                worker_pending.store(true, Ordering::Release);
            }
        }
    });

    PubFanoutQueue {
        queue,
        wake_sender,
        wake_pending,
        unfanned,
    }
}

impl PubSocketBackend {
    pub(crate) async fn fanout_message(&self, message: ZmqMessage) {
        let first_frame = match message.get(0) {
            Some(frame) => frame,
            None => return,
        };

        // mlmesh patch: a bucket is locked only while its subscribers get the message,
        // never across an await. Upstream walked the map with begin_async/next_async,
        // holding a bucket across `next_async().await`; the subscribe and disconnect
        // paths (`get_sync`, `remove_sync`) then waited for that bucket blocking their
        // worker threads, and with every worker so blocked the suspended fan-out never
        // ran again: the runtime deadlocked (PATCHES.md, 4).
        self.subscribers
            .iter_mut_async(|mut subscriber| {
                if subscription_matches(&subscriber.subscriptions, first_frame) {
                    // Raised before the writer can take (and count off) the message.
                    subscriber.unwritten.fetch_add(1, Ordering::AcqRel);
                    if !send_to_subscriber(&mut subscriber.send_queue, &message) {
                        subscriber.unwritten.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                true
            })
            .await;
    }

    // mlmesh patch: async (`get_async`), like every map call on the PUB's own tasks; see
    // `fanout_message` and PATCHES.md, 4.
    async fn message_received(&self, peer_id: &PeerIdentity, message: Message) {
        let data = match message {
            Message::Message(m) => {
                if m.len() != 1 {
                    log::warn!("Received message with unexpected length: {}", m.len());
                    return;
                }
                m.into_vec().pop().unwrap_or_default()
            }
            _ => return,
        };

        if data.is_empty() {
            return;
        }

        match data.first() {
            Some(1) => {
                // Subscribe
                if let Some(mut entry) = self.subscribers.get_async(peer_id).await {
                    entry.subscriptions.push(Vec::from(&data[1..]));
                    self.wanted.lock().add(&data[1..]);
                }
            }
            Some(0) => {
                // Unsubscribe
                let sub = Vec::from(&data[1..]);
                if let Some(mut entry) = self.subscribers.get_async(peer_id).await {
                    if let Some(index) = entry.subscriptions.iter().position(|s| s == &sub) {
                        entry.subscriptions.remove(index);
                        self.wanted.lock().remove(&sub);
                    }
                }
            }
            _ => log::warn!(
                "Received message with unexpected first byte: {:?}",
                data.first()
            ),
        }
    }
}

impl SocketBackend for PubSocketBackend {
    fn socket_type(&self) -> SocketType {
        SocketType::PUB
    }

    fn socket_options(&self) -> &Arc<SocketOptions> {
        &self.socket_options
    }

    fn shutdown(&self) {
        self.subscribers.clear_sync();
        self.subscriber_count.store(0, Ordering::Relaxed);
        self.wanted.lock().prefixes.clear();
    }

    fn monitor(&self) -> &Mutex<Option<mpsc::Sender<SocketEvent>>> {
        &self.socket_monitor
    }
}

#[async_trait]
impl MultiPeerBackend for PubSocketBackend {
    async fn peer_connected(self: Arc<Self>, peer_id: &PeerIdentity, io: FramedIo) {
        let (mut recv_queue, send_queue) = io.into_parts();
        // TODO provide handling for recv_queue
        let capacity = self
            .socket_options
            .send_queue_capacity
            .unwrap_or(PUB_SEND_QUEUE_CAPACITY);
        let (queue_sender, queue_receiver) = mpsc::channel(capacity);
        let (sender, stop_receiver) = oneshot::channel();
        let unwritten = Arc::new(AtomicUsize::new(0));
        let old_subscriber = self
            .subscribers
            .upsert_async(
                peer_id.clone(),
                Subscriber {
                    subscriptions: vec![],
                    send_queue: queue_sender,
                    _subscription_coro_stop: sender,
                    unwritten: unwritten.clone(),
                },
            )
            .await;
        match &old_subscriber {
            None => {
                self.subscriber_count.fetch_add(1, Ordering::Relaxed);
            }
            Some(old) => self.wanted.lock().forget(old),
        }
        let writer_backend = self.clone();
        let writer_peer_id = peer_id.clone();
        async_rt::task::spawn(async move {
            let flushed = |n: usize| {
                unwritten.fetch_sub(n, Ordering::AcqRel);
            };
            if let Err(error) =
                write_message_queue_counted(queue_receiver, send_queue, flushed).await
            {
                log::debug!(
                    "Error sending message to subscriber {:?}: {:?}",
                    writer_peer_id,
                    error
                );
                writer_backend.subscriber_gone(&writer_peer_id).await;
            }
        });
        let backend = self;
        let peer_id = peer_id.clone();
        async_rt::task::spawn(async move {
            let mut stop_receiver = stop_receiver.fuse();
            loop {
                select! {
                     _ = stop_receiver => {
                         break;
                     },
                     message = recv_queue.next().fuse() => {
                        match message {
                            Some(Ok(m)) => backend.message_received(&peer_id, m).await,
                            Some(Err(e)) => {
                                log::debug!("Error receiving message: {:?}", e);
                                backend.subscriber_gone(&peer_id).await;
                                break;
                            }
                            None => {
                                backend.subscriber_gone(&peer_id).await;
                                break
                            }
                        }

                     }
                }
            }
        });
    }

    fn peer_disconnected(&self, peer_id: &PeerIdentity) {
        log::info!("Client disconnected {:?}", peer_id);
        if let Some(monitor) = self.monitor().lock().as_mut() {
            let _ = monitor.try_send(SocketEvent::Disconnected(peer_id.clone()));
        }
        if let Some((_, gone)) = self.subscribers.remove_sync(peer_id) {
            self.subscriber_count.fetch_sub(1, Ordering::Relaxed);
            self.wanted.lock().forget(&gone);
        }
    }
}

impl PubSocketBackend {
    // mlmesh patch: `peer_disconnected` for the PUB's own tasks, with `remove_async`. A
    // `_sync` map call parks its worker thread until the bucket is free; the bucket may be
    // held (or handed over) by a task that is not running, and once every worker is
    // parked so, nothing runs it: the runtime deadlocks (PATCHES.md, 4).
    async fn subscriber_gone(&self, peer_id: &PeerIdentity) {
        log::info!("Client disconnected {:?}", peer_id);
        if let Some(monitor) = self.monitor().lock().as_mut() {
            let _ = monitor.try_send(SocketEvent::Disconnected(peer_id.clone()));
        }
        if let Some((_, gone)) = self.subscribers.remove_async(peer_id).await {
            self.subscriber_count.fetch_sub(1, Ordering::Relaxed);
            self.wanted.lock().forget(&gone);
        }
    }
}

pub struct PubSocket {
    pub(crate) backend: Arc<PubSocketBackend>,
    fanout_queue: PubFanoutQueue,
    binds: HashMap<Endpoint, AcceptStopHandle>,
}

impl PubSocket {
    /// mlmesh patch (PATCHES.md, 5): a handle that reads the socket's subscribers and
    /// backlog from any task, while the socket itself is owned by its sender.
    pub fn state(&self) -> PubSocketState {
        PubSocketState {
            backend: self.backend.clone(),
        }
    }
}

impl PubSocket {
    /// mlmesh patch (PATCHES.md, 10): as `send`, but with no fan-out under way the message
    /// goes into each matching subscriber's queue before this returns, instead of through
    /// the fan-out task: a task hop (a thread wake-up, often) less for a lone message.
    /// `send` keeps the fan-out task, which runs beside the sender under a stream of
    /// messages. Sends are sequential (`&mut self`), and the fan-out task keeps
    /// `wake_pending` until its queue is empty, so messages keep their order.
    pub async fn send_now(&mut self, message: ZmqMessage) -> ZmqResult<()> {
        if message.get(0).is_none()
            || self.backend.subscriber_count.load(Ordering::Relaxed) == 0
        {
            return Ok(());
        }
        if self.fanout_queue.wake_pending.load(Ordering::Acquire)
            || !self.fanout_queue.queue.is_empty()
        {
            return self.fanout_queue.publish(message);
        }
        self.backend.fanout_message(message).await;
        Ok(())
    }
}

/// What a [`PubSocket`] holds and who listens to it (mlmesh patch, PATCHES.md, 5).
#[derive(Clone)]
pub struct PubSocketState {
    backend: Arc<PubSocketBackend>,
}

impl std::fmt::Debug for PubSocketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSocketState")
            .field(
                "subscribers",
                &self.backend.subscriber_count.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl PubSocketState {
    /// Messages given to `send` that some connected subscriber still has to get written
    /// to its connection: waiting to be fanned out, in a subscriber's queue, or being
    /// written. Zero means everything sent so far has reached the operating system's
    /// socket buffers (or was dropped, for a full queue or no matching subscriber).
    /// A message to several subscribers counts once per subscriber.
    pub async fn unwritten(&self) -> usize {
        // Read first: a fan-out raises the subscribers' counts before lowering this one.
        let mut total = self.backend.unfanned.load(Ordering::Acquire);
        self.backend
            .subscribers
            .iter_async(|_, subscriber| {
                total += subscriber.unwritten.load(Ordering::Acquire);
                true
            })
            .await;
        total
    }

    /// Whether a message whose first frame is `topic` would go to any connected
    /// subscriber now (mlmesh patch, PATCHES.md, 9). Cheap and never waits for the
    /// subscriber map: a sender can skip building what nobody would get.
    pub fn wants(&self, topic: &[u8]) -> bool {
        self.backend.wanted.lock().matches(topic)
    }

    /// The subscriptions of every connected subscriber, one list per connection, each in
    /// the order the subscriber sent them.
    pub async fn subscriptions(&self) -> Vec<Vec<Vec<u8>>> {
        let mut all = Vec::new();
        self.backend
            .subscribers
            .iter_async(|_, subscriber| {
                all.push(subscriber.subscriptions.clone());
                true
            })
            .await;
        all
    }
}

impl Drop for PubSocket {
    fn drop(&mut self) {
        self.backend.shutdown();
    }
}

#[async_trait]
impl SocketSend for PubSocket {
    async fn send(&mut self, message: ZmqMessage) -> ZmqResult<()> {
        if message.get(0).is_none() {
            return Ok(());
        }

        if self.backend.subscriber_count.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }

        self.fanout_queue.publish(message)
    }
}

impl CaptureSocket for PubSocket {}

#[async_trait]
impl Socket for PubSocket {
    fn with_options(options: SocketOptions) -> Self {
        let backend = Arc::new(PubSocketBackend {
            subscribers: scc::HashMap::new(),
            subscriber_count: AtomicUsize::new(0),
            socket_monitor: Mutex::new(None),
            socket_options: Arc::new(options),
            unfanned: Arc::default(),
            wanted: Mutex::default(),
        });
        let fanout_queue = spawn_pub_fanout_queue(backend.clone());

        Self {
            backend,
            fanout_queue,
            binds: HashMap::new(),
        }
    }

    fn backend(&self) -> Arc<dyn MultiPeerBackend> {
        self.backend.clone()
    }

    fn binds(&mut self) -> &mut HashMap<Endpoint, AcceptStopHandle> {
        &mut self.binds
    }

    fn monitor(&mut self) -> mpsc::Receiver<SocketEvent> {
        let (sender, receiver) = mpsc::channel(1024);
        self.backend.socket_monitor.lock().replace(sender);
        receiver
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::tests::{
        test_bind_to_any_port_helper, test_bind_to_unspecified_interface_helper,
    };
    use crate::ZmqResult;
    use std::net::IpAddr;

    fn test_backend() -> PubSocketBackend {
        PubSocketBackend {
            subscribers: scc::HashMap::new(),
            subscriber_count: AtomicUsize::new(0),
            socket_monitor: Mutex::new(None),
            socket_options: Arc::new(SocketOptions::default()),
            unfanned: Arc::default(),
            wanted: Mutex::default(),
        }
    }

    async fn insert_test_subscriber(
        backend: &PubSocketBackend,
        peer_id: PeerIdentity,
        subscriptions: Vec<Vec<u8>>,
        queue_sender: PubSendQueue,
    ) {
        let (stop_sender, _stop_receiver) = oneshot::channel();
        let old_subscriber = backend
            .subscribers
            .upsert_async(
                peer_id,
                Subscriber {
                    subscriptions,
                    send_queue: queue_sender,
                    _subscription_coro_stop: stop_sender,
                    unwritten: Arc::default(),
                },
            )
            .await;
        if old_subscriber.is_none() {
            backend.subscriber_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn test_fanout_queue(capacity: usize) -> (PubFanoutQueue, mpsc::UnboundedReceiver<()>) {
        let (wake_sender, wake_receiver) = mpsc::unbounded();
        let fanout_queue = PubFanoutQueue {
            queue: Arc::new(ArrayQueue::new(capacity)),
            wake_sender,
            wake_pending: Arc::new(AtomicBool::new(false)),
            unfanned: Arc::default(),
        };
        (fanout_queue, wake_receiver)
    }

    fn queued_frame(message: ZmqMessage) -> Bytes {
        message.get(0).expect("queued frame").clone()
    }

    #[test]
    fn test_fanout_queue_drops_new_message_when_full_without_extra_wake() {
        let (fanout_queue, mut wake_receiver) = test_fanout_queue(1);

        fanout_queue
            .publish(ZmqMessage::from(Bytes::from_static(b"first")))
            .expect("publish first message");

        assert_eq!(fanout_queue.queue.len(), 1);
        assert!(fanout_queue.wake_pending.load(Ordering::Relaxed));
        wake_receiver.try_recv().expect("first wake");

        fanout_queue
            .publish(ZmqMessage::from(Bytes::from_static(b"dropped")))
            .expect("publish dropped message");

        assert_eq!(fanout_queue.queue.len(), 1);
        assert!(wake_receiver.try_recv().is_err());
        assert_eq!(
            queued_frame(fanout_queue.queue.pop().expect("queued message")),
            Bytes::from_static(b"first")
        );
    }

    #[test]
    fn test_fanout_queue_wakes_again_after_pending_is_cleared() {
        let (fanout_queue, mut wake_receiver) = test_fanout_queue(2);

        fanout_queue
            .publish(ZmqMessage::from(Bytes::from_static(b"first")))
            .expect("publish first message");
        wake_receiver.try_recv().expect("first wake");
        assert!(fanout_queue.queue.pop().is_some());

        // Simulate the worker releasing pending after draining the current batch; the next publish must wake it again.
        fanout_queue.wake_pending.store(false, Ordering::Release);

        fanout_queue
            .publish(ZmqMessage::from(Bytes::from_static(b"second")))
            .expect("publish second message");

        wake_receiver.try_recv().expect("second wake");
        assert_eq!(
            queued_frame(fanout_queue.queue.pop().expect("queued message")),
            Bytes::from_static(b"second")
        );
    }

    #[async_rt::test]
    async fn test_send_without_subscribers_does_not_enqueue_fanout_message() {
        let mut socket = PubSocket::new();

        socket
            .send(ZmqMessage::from("dropped without subscribers"))
            .await
            .expect("send without subscribers");

        assert!(socket.fanout_queue.queue.is_empty());
    }

    #[async_rt::test]
    async fn test_replacing_subscriber_does_not_increment_subscriber_count() {
        let backend = test_backend();
        let peer_id = PeerIdentity::new();
        let (first_sender, _first_receiver) = mpsc::channel(8);
        let (second_sender, _second_receiver) = mpsc::channel(8);

        insert_test_subscriber(&backend, peer_id.clone(), vec![vec![]], first_sender).await;
        insert_test_subscriber(
            &backend,
            peer_id.clone(),
            vec![b"topic".to_vec()],
            second_sender,
        )
        .await;

        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 1);
        assert_eq!(backend.subscribers.len(), 1);
    }

    #[async_rt::test]
    async fn test_shutdown_clears_subscriber_count() {
        let backend = test_backend();
        let (sender, _receiver) = mpsc::channel(8);

        insert_test_subscriber(&backend, PeerIdentity::new(), vec![vec![]], sender).await;

        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 1);

        backend.shutdown();

        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 0);
        assert!(backend.subscribers.is_empty());
    }

    #[async_rt::test]
    async fn test_fanout_message_delivers_only_matching_subscribers() {
        let backend = test_backend();
        let matching_peer = PeerIdentity::new();
        let non_matching_peer = PeerIdentity::new();
        let (matching_sender, mut matching_receiver) = mpsc::channel(8);
        let (non_matching_sender, mut non_matching_receiver) = mpsc::channel(8);

        insert_test_subscriber(
            &backend,
            matching_peer,
            vec![b"topic.a".to_vec()],
            matching_sender,
        )
        .await;
        insert_test_subscriber(
            &backend,
            non_matching_peer,
            vec![b"topic.b".to_vec()],
            non_matching_sender,
        )
        .await;

        backend
            .fanout_message(ZmqMessage::from(Bytes::from_static(b"topic.a payload")))
            .await;

        let matched = matching_receiver.try_recv().expect("matching subscriber");
        let Message::Message(matched) = matched else {
            panic!("unexpected queued message type");
        };
        assert_eq!(
            matched.get(0),
            Some(&Bytes::from_static(b"topic.a payload"))
        );
        assert!(non_matching_receiver.try_recv().is_err());
    }

    #[async_rt::test]
    async fn test_closed_subscriber_queue_does_not_interrupt_fanout_to_matching_peer() {
        let backend = test_backend();
        let stale_peer = PeerIdentity::new();
        let live_peer = PeerIdentity::new();
        let (stale_sender, stale_receiver) = mpsc::channel(1);
        let (live_sender, mut live_receiver) = mpsc::channel(8);
        drop(stale_receiver);

        insert_test_subscriber(&backend, stale_peer.clone(), vec![vec![]], stale_sender).await;
        insert_test_subscriber(&backend, live_peer.clone(), vec![vec![]], live_sender).await;

        backend
            .fanout_message(ZmqMessage::from(Bytes::from_static(b"payload")))
            .await;

        let queued = live_receiver.try_recv().expect("live subscriber message");
        let Message::Message(message) = queued else {
            panic!("unexpected queued message type");
        };
        assert_eq!(message.get(0), Some(&Bytes::from_static(b"payload")));

        assert!(backend.subscribers.get_sync(&stale_peer).is_some());
        assert!(backend.subscribers.get_sync(&live_peer).is_some());
        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 2);
    }

    #[async_rt::test]
    async fn test_full_subscriber_queue_drops_message_without_disconnect() {
        let backend = test_backend();
        let peer_id = PeerIdentity::new();
        let (mut queue_sender, mut queue_receiver) = mpsc::channel(1);

        insert_test_subscriber(
            &backend,
            peer_id.clone(),
            vec![vec![]],
            queue_sender.clone(),
        )
        .await;

        let mut prefilled_count = 0;
        loop {
            let message = Message::Message(ZmqMessage::from(format!(
                "already queued {prefilled_count}"
            )));
            match queue_sender.try_send(message) {
                Ok(()) => prefilled_count += 1,
                Err(error) if error.is_full() => {
                    drop(error.into_inner());
                    break;
                }
                Err(error) => panic!("unexpected queue prefill error: {error:?}"),
            }
        }
        assert!(prefilled_count > 0);

        send_to_subscriber(&mut queue_sender, &ZmqMessage::from("dropped payload"));

        assert!(backend.subscribers.get_sync(&peer_id).is_some());
        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 1);

        let mut queued_messages = Vec::new();
        while let Ok(queued) = queue_receiver.try_recv() {
            let Message::Message(message) = queued else {
                panic!("unexpected queued message type");
            };
            queued_messages.push(String::try_from(message).unwrap());
        }

        assert_eq!(queued_messages.len(), prefilled_count);
        assert!(queued_messages
            .iter()
            .all(|message| message.starts_with("already queued ")));
        assert!(!queued_messages
            .iter()
            .any(|message| message == "dropped payload"));
    }

    #[async_rt::test]
    async fn test_send_to_subscriber_drops_closed_queue_without_disconnect() {
        let backend = test_backend();
        let peer_id = PeerIdentity::new();
        let (mut queue_sender, queue_receiver) = mpsc::channel(1);
        drop(queue_receiver);

        insert_test_subscriber(
            &backend,
            peer_id.clone(),
            vec![vec![]],
            queue_sender.clone(),
        )
        .await;

        send_to_subscriber(&mut queue_sender, &ZmqMessage::from("payload"));

        assert!(backend.subscribers.get_sync(&peer_id).is_some());
        assert_eq!(backend.subscriber_count.load(Ordering::Relaxed), 1);
    }

    // mlmesh patch (PATCHES.md, 5).
    #[async_rt::test]
    async fn test_state_counts_unwritten_copies_of_matching_subscribers() {
        let backend = Arc::new(test_backend());
        let (topic_sender, _topic_receiver) = mpsc::channel(8);
        let (other_sender, _other_receiver) = mpsc::channel(8);
        let (closed_sender, closed_receiver) = mpsc::channel(8);
        drop(closed_receiver);
        let topic = vec![b"topic".to_vec()];
        insert_test_subscriber(&backend, PeerIdentity::new(), topic.clone(), topic_sender).await;
        insert_test_subscriber(
            &backend,
            PeerIdentity::new(),
            vec![b"other".to_vec(), b"more".to_vec()],
            other_sender,
        )
        .await;
        // A message it cannot queue is dropped, not counted as still to write.
        insert_test_subscriber(&backend, PeerIdentity::new(), topic, closed_sender).await;
        let state = PubSocketState {
            backend: backend.clone(),
        };
        assert_eq!(state.unwritten().await, 0);

        for message in ["topic.a", "topic.b", "nobody"] {
            backend.fanout_message(ZmqMessage::from(message)).await;
        }

        assert_eq!(state.unwritten().await, 2);
        let mut subscriptions = state.subscriptions().await;
        subscriptions.sort();
        assert_eq!(
            subscriptions,
            vec![
                vec![b"other".to_vec(), b"more".to_vec()],
                vec![b"topic".to_vec()],
                vec![b"topic".to_vec()],
            ]
        );
    }

    // mlmesh patch (PATCHES.md, 5): once `unwritten` is zero, dropping the socket (as a
    // process does when it exits) loses nothing that was sent.
    #[async_rt::test]
    async fn test_nothing_is_lost_when_the_socket_is_dropped_once_all_is_written() {
        let mut publisher = PubSocket::new();
        let endpoint = publisher.bind("tcp://127.0.0.1:0").await.expect("bind");
        let state = publisher.state();
        let mut subscriber = crate::SubSocket::new();
        subscriber.subscribe("topic").await.expect("subscribe");
        subscriber
            .connect(&endpoint.to_string())
            .await
            .expect("connect");
        while state.subscriptions().await != vec![vec![b"topic".to_vec()]] {
            async_rt::task::sleep(std::time::Duration::from_millis(1)).await;
        }

        const N: usize = 2_000;
        for i in 0..N {
            let mut message = ZmqMessage::from("topic");
            message.push_back(Bytes::from(i.to_string()));
            publisher.send(message).await.expect("send");
        }
        while state.unwritten().await > 0 {
            async_rt::task::sleep(std::time::Duration::from_millis(1)).await;
        }
        drop(publisher);

        for i in 0..N {
            let message = async_rt::task::timeout(
                std::time::Duration::from_secs(5),
                crate::SocketRecv::recv(&mut subscriber),
            )
            .await
            .unwrap_or_else(|_| panic!("message {i} of {N} did not arrive"))
            .expect("a message");
            assert_eq!(message.get(1), Some(&Bytes::from(i.to_string())));
        }
    }

    // mlmesh patch (PATCHES.md, 6): a SUB that connects sends what it subscribed to before
    // in the order it subscribed, and a PUB lists them in the order received.
    #[async_rt::test]
    async fn test_subscriptions_arrive_in_the_order_they_were_made() {
        let mut publisher = PubSocket::new();
        let endpoint = publisher.bind("tcp://127.0.0.1:0").await.expect("bind");
        let state = publisher.state();
        let mut subscriber = crate::SubSocket::new();
        for prefix in ["m", "z", "a", "gone", "k", "z"] {
            subscriber.subscribe(prefix).await.expect("subscribe");
        }
        subscriber.unsubscribe("gone").await.expect("unsubscribe");
        subscriber
            .connect(&endpoint.to_string())
            .await
            .expect("connect");
        let want: Vec<Vec<u8>> = ["m", "z", "a", "k"].map(|p| p.as_bytes().to_vec()).into();
        async_rt::task::timeout(std::time::Duration::from_secs(5), async {
            while state.subscriptions().await != vec![want.clone()] {
                async_rt::task::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("subscriptions: {:?}", want));
    }

    #[async_rt::test]
    async fn test_send_now_keeps_order_with_send() {
        let mut publisher = PubSocket::new();
        let endpoint = publisher.bind("tcp://127.0.0.1:0").await.expect("bind");
        let state = publisher.state();
        let mut subscriber = crate::SubSocket::new();
        subscriber.subscribe("t").await.expect("subscribe");
        subscriber
            .connect(&endpoint.to_string())
            .await
            .expect("connect");
        async_rt::task::timeout(std::time::Duration::from_secs(5), async {
            while !state.wants(b"t") {
                async_rt::task::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the subscription arrives");
        // Runs of `send` (through the fan-out task) and `send_now` (inline when the task
        // is idle) interleave; the subscriber must get them all, in order.
        let n = 3000u32;
        for i in 0..n {
            let msg = ZmqMessage::from(format!("t{i}"));
            if (i / 7) % 2 == 0 {
                publisher.send(msg).await.expect("send");
            } else {
                publisher.send_now(msg).await.expect("send_now");
            }
        }
        for i in 0..n {
            let got = async_rt::task::timeout(std::time::Duration::from_secs(5), async {
                crate::SocketRecv::recv(&mut subscriber).await
            })
            .await
            .expect("in time")
            .expect("a message");
            assert_eq!(got.get(0).expect("a frame"), &Bytes::from(format!("t{i}")));
        }
    }

    #[async_rt::test]
    async fn test_wants_follows_subscriptions_and_disconnects() {
        let mut publisher = PubSocket::new();
        let endpoint = publisher.bind("tcp://127.0.0.1:0").await.expect("bind");
        let state = publisher.state();
        assert!(!state.wants(b"tracking.run.started"), "no subscriber yet");
        let until = |want: bool, topic: &'static [u8]| {
            let state = state.clone();
            async move {
                async_rt::task::timeout(std::time::Duration::from_secs(5), async {
                    while state.wants(topic) != want {
                        async_rt::task::sleep(std::time::Duration::from_millis(1)).await;
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("wants({topic:?}) never became {want}"));
            }
        };
        let mut first = crate::SubSocket::new();
        first.subscribe("tracking.").await.expect("subscribe");
        first.connect(&endpoint.to_string()).await.expect("connect");
        let mut second = crate::SubSocket::new();
        second.subscribe("tracking.run").await.expect("subscribe");
        second.subscribe("sys.").await.expect("subscribe");
        second.connect(&endpoint.to_string()).await.expect("connect");
        until(true, b"sys.heartbeat").await;
        until(true, b"tracking.metrics.logged").await;
        assert!(!state.wants(b"registry.alias.set"));
        // One of two holders of a matching prefix leaves: still wanted.
        first.unsubscribe("tracking.").await.expect("unsubscribe");
        until(false, b"tracking.metrics.logged").await;
        assert!(state.wants(b"tracking.run.started"), "the second still holds it");
        // A disconnect takes the subscriber's subscriptions with it.
        drop(second);
        until(false, b"tracking.run.started").await;
        until(false, b"sys.heartbeat").await;
    }

    #[async_rt::test]
    async fn test_bind_to_any_port() -> ZmqResult<()> {
        let s = PubSocket::new();
        test_bind_to_any_port_helper(s).await
    }

    #[async_rt::test]
    async fn test_bind_to_any_ipv4_interface() -> ZmqResult<()> {
        let any_ipv4: IpAddr = "0.0.0.0".parse().unwrap();
        let s = PubSocket::new();
        test_bind_to_unspecified_interface_helper(any_ipv4, s, 4000).await
    }

    #[async_rt::test]
    async fn test_bind_to_any_ipv6_interface() -> ZmqResult<()> {
        let any_ipv6: IpAddr = "::".parse().unwrap();
        let s = PubSocket::new();
        test_bind_to_unspecified_interface_helper(any_ipv6, s, 4010).await
    }
}
