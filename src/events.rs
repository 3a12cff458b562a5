//! Pattern subscriptions, delivery into bounded streams, and sequence-gap counting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

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
    rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event; `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// An event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The pattern.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Events dropped because this subscription's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Entry {
    pattern: Pattern,
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

/// Every subscription of a node, and the ZeroMQ prefixes they need.
#[derive(Debug)]
pub(crate) struct Subscriptions {
    entries: RwLock<Vec<Entry>>,
    prefixes: watch::Sender<Arc<Vec<String>>>,
    capacity: usize,
    pub(crate) dropped: AtomicU64,
}

impl Subscriptions {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(Vec::new()),
            prefixes: watch::Sender::new(Arc::new(vec![
                mlmesh_protocol::name::RESERVED_PREFIX.to_owned()
            ])),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(&self, pattern: Pattern) -> Subscription {
        let (tx, rx) = mpsc::channel(self.capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.push(Entry {
            pattern: pattern.clone(),
            tx,
            dropped: dropped.clone(),
        });
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
            rx,
            dropped,
        }
    }

    /// The ZeroMQ prefixes every SUB socket must subscribe to.
    pub(crate) fn prefixes(&self) -> watch::Receiver<Arc<Vec<String>>> {
        self.prefixes.subscribe()
    }

    /// Delivers one event to every matching subscription.
    pub(crate) fn dispatch(&self, envelope: &Envelope, missed: u64) {
        let mut closed = false;
        {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            for e in entries
                .iter()
                .filter(|e| e.pattern.matches(&envelope.topic))
            {
                let event = Event {
                    envelope: envelope.clone(),
                    missed,
                };
                match e.tx.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        e.dropped.fetch_add(1, Ordering::Relaxed);
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                }
            }
        }
        if closed {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            entries.retain(|e| !e.tx.is_closed());
        }
    }

    /// Ends every subscription stream.
    pub(crate) fn close(&self) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
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
    /// The most recent (source, topic) and its last seq: consecutive events (a batch
    /// shares one topic) skip the hash lookup. The map is updated when the key changes.
    recent: Option<((NodeId, Topic), u64)>,
}

impl GapTracker {
    /// Records `seq` and returns how many were skipped before it. The first event of
    /// a (source, topic) counts none: the receiver cannot know what came before it joined.
    pub(crate) fn observe(&mut self, source: NodeId, topic: &Topic, seq: u64) -> u64 {
        let last = match &mut self.recent {
            Some(((s, t), last)) if *s == source && t == topic => Some(*last),
            recent => {
                if let Some((key, last)) = recent.take() {
                    self.last.insert(key, last);
                }
                self.last.get(&(source, topic.clone())).copied()
            }
        };
        self.recent = Some(((source, topic.clone()), seq));
        // Not greater than the last: the publisher restarted with the same id; count
        // from here again (SPEC 8.1). The first event of a key counts no gap.
        last.map_or(0, |last| seq.saturating_sub(last.saturating_add(1)))
    }

    /// Forgets a source (it left; a return is a new incarnation).
    pub(crate) fn forget(&mut self, source: NodeId) {
        self.last.retain(|(s, _), _| *s != source);
        if self.recent.as_ref().is_some_and(|((s, _), _)| *s == source) {
            self.recent = None;
        }
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
        assert_eq!(g.observe(a, &t, 5), 0);
        assert_eq!(g.observe(a, &t, 6), 0);
        assert_eq!(g.observe(a, &t, 9), 2);
        assert_eq!(g.observe(b, &t, 1), 0);
        // A restart with the same id starts again at 1: no gap, and counting resumes.
        assert_eq!(g.observe(a, &t, 1), 0);
        assert_eq!(g.observe(a, &t, 2), 0);
        assert_eq!(g.observe(a, &t, 5), 2);
    }
}
