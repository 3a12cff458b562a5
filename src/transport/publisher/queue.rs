//! The publish queue: batch frames that events are encoded straight into.
//!
//! One lock guards the queue, its bounds and the per-topic sequence numbers, so that a
//! publish is one lock, one encode into the open batch of its topic, and no allocation
//! (but for a new batch); the publisher task takes a whole batch per lock. The seq is
//! given under the same lock as the place in the queue, so seqs leave in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use mlmesh_protocol::{BatchBuf, Body, Codec, EncodeError, Envelope, Topic};

/// Most envelopes in one batch frame.
const BATCH_MAX_COUNT: usize = 1024;

/// What a new batch reserves unless it continues a full batch of its topic: most such
/// batches carry one event or a few, and the buffer grows if more come.
const SMALL_BATCH_BYTES: usize = 512;

/// A frame's worth of queued events of one topic, encoded.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) topic: Topic,
    pub(crate) body: BatchBuf,
}

/// What became of an event offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// In the queue, with the next seq of its topic.
    Queued,
    /// The queue was full and the policy drops: the event took its seq (subscribers see
    /// the gap) and was counted nowhere yet; the caller counts it.
    Dropped,
    /// The queue is full; nothing changed (the caller waits for room and offers again).
    Full,
    /// The node is leaving or gone.
    Closed,
}

/// The last seq given per topic (SPEC 8.1: counted per (source, topic) from 1).
#[derive(Debug, Default)]
struct Seqs {
    map: HashMap<Topic, u64>,
    /// The topic of the last seq given, and that seq: a run of one topic skips the hash
    /// lookup. Written back to the map when the topic changes.
    recent: Option<(Topic, u64)>,
}

impl Seqs {
    /// The last seq of `topic` (0: none yet), to be advanced in place.
    fn of(&mut self, topic: &Topic) -> &mut u64 {
        if self.recent.as_ref().is_some_and(|(t, _)| t != topic) {
            if let Some((t, seq)) = self.recent.take() {
                self.map.insert(t, seq);
            }
        }
        let (_, last) = self.recent.get_or_insert_with(|| {
            let last = self.map.get(topic).copied().unwrap_or(0);
            (topic.clone(), last)
        });
        last
    }
}

/// The bounded queue between `publish` and the publisher task.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Wakes the publisher task when the queue stops being empty.
    pub(crate) ready: Notify,
    /// Wakes publishers waiting for room (`Overflow::Block`) when a batch is taken out,
    /// and when the queue closes.
    pub(crate) room: Notify,
    codec: Codec,
    max_events: usize,
    max_bytes: usize,
    batch_max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    seqs: Seqs,
    batches: VecDeque<Batch>,
    /// Events and encoded bytes in `batches`: the bounds apply to these.
    events: usize,
    bytes: usize,
    /// No more events are taken (the node is leaving); what is queued may still go out.
    refusing: bool,
    /// Publishers waiting for room: only then does taking a batch out wake anyone (the
    /// wake-up takes a lock, and without batching there is a batch per event).
    waiting: usize,
}

impl Outbox {
    /// A queue of at most `max_events` events and `max_bytes` encoded bytes, making
    /// frames of at most `batch_max_bytes` of envelopes.
    pub(crate) fn new(
        codec: Codec,
        max_events: usize,
        max_bytes: usize,
        batch_max_bytes: usize,
    ) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            room: Notify::new(),
            codec,
            max_events,
            max_bytes,
            batch_max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `env` the next seq of its topic and encodes it into the queue, if there is
    /// room (or, when `drop_when_full`, takes the seq and drops it). An envelope over the
    /// size limit is an error and takes no seq.
    pub(crate) fn offer(
        &self,
        env: &mut Envelope,
        drop_when_full: bool,
    ) -> Result<Offer, EncodeError> {
        let mut guard = self.lock();
        let State {
            seqs,
            batches,
            events,
            bytes,
            refusing,
            ..
        } = &mut *guard;
        if *refusing {
            return Ok(Offer::Closed);
        }
        let last = seqs.of(&env.topic);
        let seq = *last + 1;
        env.body = Body::Event { seq };
        let mut room = *events < self.max_events;
        if room {
            // Encoded in place (the tail batch of the same topic, or a new batch), then
            // measured against the byte bounds, and taken back out if over.
            let tail = batches.back_mut().filter(|b| {
                b.topic == env.topic
                    && b.body.count() < BATCH_MAX_COUNT
                    && b.body.len() < self.batch_max_bytes
            });
            let mut fresh = None;
            let size = match tail {
                Some(tail) => {
                    let size = tail.body.push(&self.codec, env)?;
                    if tail.body.len() > self.batch_max_bytes {
                        // Past the frame bound: this one starts the next batch.
                        tail.body.undo();
                        fresh = Some(self.new_batch(env, true)?);
                    }
                    size
                }
                None => {
                    // The tail of this topic is full: a run of it is being batched.
                    let run = batches.back().is_some_and(|b| b.topic == env.topic);
                    let batch = self.new_batch(env, run)?;
                    let size = batch.body.len();
                    fresh = Some(batch);
                    size
                }
            };
            room = *bytes + size <= self.max_bytes;
            if room {
                *events += 1;
                *bytes += size;
                if let Some(batch) = fresh {
                    batches.push_back(batch);
                }
            } else if fresh.is_none() {
                if let Some(tail) = batches.back_mut() {
                    tail.body.undo();
                }
            }
        }
        if !room && !drop_when_full {
            return Ok(Offer::Full);
        }
        *last = seq;
        if !room {
            return Ok(Offer::Dropped);
        }
        let wake = *events == 1;
        drop(guard);
        if wake {
            // A stored permit if the task is busy: it looks again before it waits.
            self.ready.notify_one();
        }
        Ok(Offer::Queued)
    }

    /// A batch holding `env` alone; `run` when it continues a full batch of its topic.
    fn new_batch(&self, env: &Envelope, run: bool) -> Result<Batch, EncodeError> {
        // A batch that continues a run will likely fill too: one allocation rather than a
        // growing buffer. Only then, so that queued batches of one event each (topics
        // taking turns) hold no more memory than their bytes.
        let capacity = if run {
            self.batch_max_bytes.max(SMALL_BATCH_BYTES)
        } else {
            SMALL_BATCH_BYTES
        };
        let mut body = BatchBuf::with_capacity(capacity);
        body.push(&self.codec, env)?;
        Ok(Batch {
            topic: env.topic.clone(),
            body,
        })
    }

    /// The next seq of `topic`, for events that bypass the queue (heartbeats).
    pub(crate) fn next_seq(&self, topic: &Topic) -> u64 {
        let mut state = self.lock();
        let last = state.seqs.of(topic);
        *last += 1;
        *last
    }

    /// Takes the oldest batch out, freeing its room.
    pub(crate) fn pop(&self) -> Option<Batch> {
        self.pop_with_backlog().map(|(batch, _)| batch)
    }

    /// As [`Outbox::pop`], and whether more batches were left behind it.
    pub(crate) fn pop_with_backlog(&self) -> Option<(Batch, bool)> {
        let (batch, backlog, wake) = {
            let mut state = self.lock();
            let batch = state.batches.pop_front()?;
            state.events -= batch.body.count();
            state.bytes -= batch.body.len();
            (batch, !state.batches.is_empty(), state.waiting > 0)
        };
        if wake {
            self.room.notify_waiters();
        }
        Some((batch, backlog))
    }

    /// Counts the caller as waiting for room until the guard is dropped (also when its
    /// publish is cancelled); taken before the offer that finds the queue full.
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        self.lock().waiting += 1;
        Waiting(self)
    }

    /// Takes no more events (what is queued stays, for the publisher to send).
    pub(crate) fn refuse(&self) {
        self.lock().refusing = true;
        self.room.notify_waiters();
    }

    /// Takes no more events and empties the queue; returns how many events it held.
    pub(crate) fn close(&self) -> usize {
        let left = {
            let mut state = self.lock();
            state.refusing = true;
            state.batches.clear();
            state.bytes = 0;
            std::mem::take(&mut state.events)
        };
        self.room.notify_waiters();
        left
    }
}

/// A publisher counted as waiting for room, from [`Outbox::waiting`].
#[derive(Debug)]
pub(crate) struct Waiting<'a>(&'a Outbox);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.waiting = state.waiting.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use mlmesh_protocol::NodeId;

    use super::*;

    fn event(topic: &str) -> Envelope {
        let topic = Topic::new(topic).expect("topic");
        Envelope::event(topic, NodeId::nil(), 0, Bytes::from_static(&[0xc0]))
    }

    fn seqs(outbox: &Outbox) -> Vec<(String, Vec<u64>)> {
        std::iter::from_fn(|| outbox.pop())
            .map(|b| {
                let frame = b.body.finish();
                let envs = Codec::default().decode_frame(&frame).expect("decodes");
                let seqs = envs
                    .iter()
                    .map(|e| match e.body {
                        Body::Event { seq } => seq,
                        _ => 0,
                    })
                    .collect();
                (b.topic.as_str().to_owned(), seqs)
            })
            .collect()
    }

    #[test]
    fn a_backlog_of_one_topic_is_batched_within_the_bounds() {
        let size = Codec::default().encode(&event("a.b")).expect("enc").len();
        // Room for 5 envelopes per frame, 8 events in all.
        let outbox = Outbox::new(Codec::default(), 8, 1 << 20, 5 * size + size / 2);
        let offers: Vec<Offer> = [
            "a.b", "a.b", "c.d", "a.b", "a.b", "a.b", "a.b", "a.b", "a.b",
        ]
        .into_iter()
        .map(|topic| outbox.offer(&mut event(topic), true).expect("encodes"))
        .collect();
        assert_eq!(offers[..8], [Offer::Queued; 8]);
        assert_eq!(offers[8], Offer::Dropped);
        assert_eq!(
            seqs(&outbox),
            [
                ("a.b".to_owned(), vec![1, 2]),
                ("c.d".to_owned(), vec![1]),
                ("a.b".to_owned(), vec![3, 4, 5, 6, 7]),
            ]
        );
        // The ninth took its seq although dropped: subscribers see the gap.
        let mut env = event("a.b");
        assert_eq!(
            outbox.offer(&mut env, false).expect("encodes"),
            Offer::Queued
        );
        assert_eq!(seqs(&outbox), [("a.b".to_owned(), vec![9])]);
        assert_eq!(outbox.next_seq(&Topic::new("a.b").expect("topic")), 10);
    }

    #[test]
    fn the_byte_bound_holds_and_a_full_queue_changes_nothing_under_block() {
        let size = Codec::default().encode(&event("a.b")).expect("enc").len();
        let outbox = Outbox::new(Codec::default(), 100, 2 * size, 1 << 20);
        for _ in 0..2 {
            assert_eq!(
                outbox.offer(&mut event("a.b"), false).expect("enc"),
                Offer::Queued
            );
        }
        assert_eq!(
            outbox.offer(&mut event("a.b"), false).expect("enc"),
            Offer::Full
        );
        assert_eq!(
            outbox.offer(&mut event("x.y"), false).expect("enc"),
            Offer::Full
        );
        assert_eq!(seqs(&outbox), [("a.b".to_owned(), vec![1, 2])]);
        assert_eq!(
            outbox.offer(&mut event("a.b"), false).expect("enc"),
            Offer::Queued
        );
        assert_eq!(
            outbox.offer(&mut event("x.y"), false).expect("enc"),
            Offer::Queued
        );
        assert_eq!(
            seqs(&outbox),
            [("a.b".to_owned(), vec![3]), ("x.y".to_owned(), vec![1])]
        );
        // Too large: an error, no seq taken, nothing queued.
        let tight = Outbox::new(Codec::new(size - 1), 100, 1 << 20, 1 << 20);
        assert!(tight.offer(&mut event("a.b"), true).is_err());
        assert!(tight.pop().is_none());
        assert_eq!(tight.next_seq(&Topic::new("a.b").expect("topic")), 1);
        tight.refuse();
        assert_eq!(
            tight.offer(&mut event("a.b"), true).expect("enc"),
            Offer::Closed
        );
    }
}
