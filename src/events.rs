//! Pattern subscriptions, delivery into bounded streams, and sequence-gap counting.
//!
//! Every envelope of an event frame has the frame's topic, so a frame is matched against
//! the patterns once and handed to each matching subscription as one unit: one lock of
//! its queue (a `VecDeque` bounded in events; what does not fit is dropped and counted),
//! and one wake-up if its reader waits. The last matching subscription gets the events
//! moved, the others copies. A reader takes the whole queue in one lock and hands the
//! events out from there, so most `recv`s take no lock; the events it has taken still
//! count against the bound until handed out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use mlmesh_protocol::{from_payload, Body, DecodeError, Envelope, NodeId, Pattern, Topic};

/// One event delivered to a subscription.
#[derive(Debug, Clone)]
pub struct Event {
    /// The envelope as received.
    pub envelope: Envelope,
    /// Events of this (source, topic) that were skipped just before this one: a
    /// publisher drop, a network loss or a slow subscription upstream.
    pub missed: u64,
}

impl Event {
    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.envelope.topic
    }

    /// The publishing node.
    pub fn source(&self) -> NodeId {
        self.envelope.source
    }

    /// The sequence number, per (source, topic).
    pub fn seq(&self) -> u64 {
        match self.envelope.body {
            Body::Event { seq } => seq,
            _ => 0,
        }
    }

    /// Decodes the payload.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        from_payload(&self.envelope.data)
    }
}

/// A stream of events matching one pattern, bounded: when it is full, further events
/// are dropped and counted in [`Subscription::dropped`].
#[derive(Debug)]
pub struct Subscription {
    pattern: Pattern,
    shared: Arc<Shared>,
    /// Events taken out of the shared queue in one go: most `recv`s take no lock.
    taken: VecDeque<Event>,
}

impl Subscription {
    /// The next event; `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            // Not matched on directly: the matched value would live across the await
            // and make this future (moved whole at every call) an event larger.
            let wait = match self.next() {
                Next::Event(ev) => return Some(ev),
                Next::Closed => return None,
                // A wake-up from before the wait was registered is kept as a permit.
                Next::Empty => self.shared.ready.notified(),
            };
            wait.await;
        }
    }

    /// An event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        match self.next() {
            Next::Event(ev) => Some(ev),
            Next::Empty | Next::Closed => None,
        }
    }

    /// The pattern.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Events dropped because this subscription's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn next(&mut self) -> Next {
        if self.taken.is_empty() {
            let mut queue = self.shared.lock();
            if queue.events.is_empty() {
                if queue.closed {
                    return Next::Closed;
                }
                queue.waiting = true;
                return Next::Empty;
            }
            std::mem::swap(&mut queue.events, &mut self.taken);
        }
        let Some(ev) = self.taken.pop_front() else {
            return Next::Empty;
        };
        // What is taken still counts against the bound until handed out.
        self.shared.taken.store(self.taken.len(), Ordering::Relaxed);
        Next::Event(ev)
    }
}

enum Next {
    Event(Event),
    Empty,
    Closed,
}

/// What a subscription shares with the node: its bounded queue.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the reader, which waits only when it found the queue empty.
    ready: Notify,
    dropped: AtomicU64,
    /// Events the reader has taken out of the queue and not yet handed out.
    taken: AtomicUsize,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Event>,
    /// The reader found the queue empty and waits to be woken.
    waiting: bool,
    /// The node has shut down: no more events.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues as many of `events` (`len` of them) as there is room for, drops and counts
    /// the rest; returns how many were dropped.
    fn deliver(&self, events: impl Iterator<Item = Event>, len: usize) -> u64 {
        let mut queue = self.lock();
        let held = queue.events.len() + self.taken.load(Ordering::Relaxed);
        let room = self.capacity.saturating_sub(held).min(len);
        queue.events.extend(events.take(room));
        let wake = room > 0 && std::mem::take(&mut queue.waiting);
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
        let dropped = (len - room) as u64;
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        dropped
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

#[derive(Debug)]
struct Entry {
    pattern: Pattern,
    shared: Arc<Shared>,
}

impl Entry {
    /// Whether its [`Subscription`] was dropped.
    fn is_gone(&self) -> bool {
        Arc::strong_count(&self.shared) == 1
    }
}

/// Every subscription of a node, and the ZeroMQ prefixes they need.
#[derive(Debug)]
pub(crate) struct Subscriptions {
    entries: RwLock<Vec<Entry>>,
    /// How many entries there are, so that a node without subscriptions skips the lock.
    count: AtomicUsize,
    prefixes: watch::Sender<Arc<Vec<String>>>,
    capacity: usize,
    pub(crate) dropped: AtomicU64,
}

impl Subscriptions {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(Vec::new()),
            count: AtomicUsize::new(0),
            prefixes: watch::Sender::new(Arc::new(vec![
                mlmesh_protocol::name::RESERVED_PREFIX.to_owned()
            ])),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(&self, pattern: Pattern) -> Subscription {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            ready: Notify::new(),
            dropped: AtomicU64::new(0),
            taken: AtomicUsize::new(0),
            capacity: self.capacity,
        });
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.push(Entry {
            pattern: pattern.clone(),
            shared: shared.clone(),
        });
        self.count.store(entries.len(), Ordering::Relaxed);
        let prefixes = minimal_prefixes(entries.iter().map(|e| e.pattern.literal_prefix()));
        drop(entries);
        self.prefixes.send_if_modified(|cur| {
            if **cur == prefixes {
                false
            } else {
                *cur = Arc::new(prefixes);
                true
            }
        });
        Subscription {
            pattern,
            shared,
            taken: VecDeque::new(),
        }
    }

    /// The ZeroMQ prefixes every SUB socket must subscribe to.
    pub(crate) fn prefixes(&self) -> watch::Receiver<Arc<Vec<String>>> {
        self.prefixes.subscribe()
    }

    /// Whether a subscription of this node matches `topic`.
    pub(crate) fn wants(&self, topic: &Topic) -> bool {
        self.count.load(Ordering::Relaxed) > 0
            && self
                .entries
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|e| !e.is_gone() && e.pattern.matches(topic))
    }

    /// Delivers one event to every matching subscription (a copy each: this node's own
    /// events, which the publisher keeps).
    pub(crate) fn dispatch_one(&self, envelope: &Envelope) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.each_matching(&envelope.topic, |shared, _| {
            let event = Event {
                envelope: envelope.clone(),
                missed: 0,
            };
            shared.deliver(std::iter::once(event), 1)
        });
    }

    /// Delivers the events of one frame, all of `topic`, to every matching subscription,
    /// in one hand-off each; `events` is left empty (its capacity kept).
    pub(crate) fn dispatch(&self, topic: &Topic, events: &mut Vec<Event>) {
        let len = events.len();
        if len > 0 {
            self.each_matching(topic, |shared, last| {
                if last {
                    shared.deliver(events.drain(..), len)
                } else {
                    shared.deliver(events.iter().cloned(), len)
                }
            });
        }
        events.clear();
    }

    /// Calls `hand(subscription, last)` for each subscription matching `topic`, with
    /// `last` true for the last one (which may have the events moved rather than copied);
    /// `hand` returns how many it dropped.
    fn each_matching(&self, topic: &Topic, mut hand: impl FnMut(&Shared, bool) -> u64) {
        let mut gone = false;
        {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            let mut matching = entries.iter().filter(|e| e.pattern.matches(topic));
            let mut current = matching.next();
            while let Some(entry) = current {
                let next = matching.next();
                if entry.is_gone() {
                    gone = true;
                } else {
                    let dropped = hand(&entry.shared, next.is_none());
                    if dropped > 0 {
                        self.dropped.fetch_add(dropped, Ordering::Relaxed);
                    }
                }
                current = next;
            }
        }
        if gone {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            entries.retain(|e| !e.is_gone());
            self.count.store(entries.len(), Ordering::Relaxed);
        }
    }

    /// Ends every subscription stream (after the events already in it).
    pub(crate) fn close(&self) {
        let entries = {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            self.count.store(0, Ordering::Relaxed);
            std::mem::take(&mut *entries)
        };
        for e in entries {
            e.shared.close();
        }
    }
}

/// The smallest set of prefixes covering every pattern, plus `sys.` for heartbeats.
fn minimal_prefixes<'a>(patterns: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut all: Vec<&str> = patterns.collect();
    all.push(mlmesh_protocol::name::RESERVED_PREFIX);
    all.sort_unstable();
    all.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in all {
        if !out.iter().any(|kept| p.starts_with(kept.as_str())) {
            out.push(p.to_owned());
        }
    }
    out
}

/// Per-(source, topic) last sequence numbers seen by one receiver.
#[derive(Debug, Default)]
pub(crate) struct GapTracker {
    last: HashMap<(NodeId, Topic), u64>,
    /// The most recent (source, topic) and its last seq, if any: consecutive frames of
    /// one topic skip the hash lookup. The map is updated when the key changes.
    recent: Option<((NodeId, Topic), Option<u64>)>,
}

impl GapTracker {
    /// The sequence of (source, topic), to observe the seqs of one frame with.
    pub(crate) fn of(&mut self, source: NodeId, topic: &Topic) -> Gaps<'_> {
        let hit = matches!(&self.recent, Some(((s, t), _)) if *s == source && t == topic);
        if !hit {
            if let Some((key, Some(last))) = self.recent.take() {
                self.last.insert(key, last);
            }
        }
        let (_, last) = self.recent.get_or_insert_with(|| {
            let key = (source, topic.clone());
            let last = self.last.get(&key).copied();
            (key, last)
        });
        Gaps { last }
    }

    /// Forgets a source (it left; a return is a new incarnation).
    pub(crate) fn forget(&mut self, source: NodeId) {
        self.last.retain(|(s, _), _| *s != source);
        if self.recent.as_ref().is_some_and(|((s, _), _)| *s == source) {
            self.recent = None;
        }
    }
}

/// The last seq of one (source, topic), from [`GapTracker::of`].
#[derive(Debug)]
pub(crate) struct Gaps<'a> {
    last: &'a mut Option<u64>,
}

impl Gaps<'_> {
    /// Records `seq` and returns how many were skipped before it. The first event of
    /// a (source, topic) counts none: the receiver cannot know what came before it joined.
    pub(crate) fn observe(&mut self, seq: u64) -> u64 {
        let last = self.last.replace(seq);
        // Not greater than the last: the publisher restarted with the same id; count
        // from here again (SPEC 8.1).
        last.map_or(0, |last| seq.saturating_sub(last.saturating_add(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_minimal() {
        let p = minimal_prefixes(["a.b.", "a.b.c", "x", "a.b."].into_iter());
        assert_eq!(p, vec!["a.b.", "sys.", "x"]);
        assert_eq!(minimal_prefixes(["", "a"].into_iter()), vec![""]);
    }

    #[test]
    fn gaps_are_counted_per_source_and_topic() {
        let mut g = GapTracker::default();
        let (a, b) = (NodeId::new(), NodeId::new());
        let t = Topic::new("x.y").expect("topic");
        let u = Topic::new("x.z").expect("topic");
        assert_eq!(g.of(a, &t).observe(5), 0);
        assert_eq!(g.of(a, &t).observe(6), 0);
        assert_eq!(g.of(a, &t).observe(9), 2);
        assert_eq!(g.of(b, &t).observe(1), 0);
        assert_eq!(g.of(a, &u).observe(3), 0);
        // A restart with the same id starts again at 1: no gap, and counting resumes.
        let mut run = g.of(a, &t);
        assert_eq!(run.observe(1), 0);
        assert_eq!(run.observe(2), 0);
        assert_eq!(run.observe(5), 2);
        assert_eq!(g.of(a, &u).observe(5), 1);
        g.forget(a);
        assert_eq!(
            g.of(a, &t).observe(9),
            0,
            "a source forgotten starts afresh"
        );
        assert_eq!(g.of(b, &t).observe(3), 1);
    }
}
