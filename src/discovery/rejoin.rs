//! Looking again for peers dropped for silence.
//!
//! A partition, a frozen process or heartbeats delayed by load make a peer expire while
//! it is still alive. Seeds bring it back at their next tick, but mDNS does not:
//! mdns-sd reports a record only when it is new to its cache, and a record that stays
//! cached (known-answer suppression keeps it from being re-sent, TTL refreshes are not
//! reported) is never resolved again. So a peer found over mDNS or introduced by
//! another peer is kept, when it expires, as a *candidate*: described again with a
//! backoff for a bounded time, until it or another node answers at its endpoint or it
//! says goodbye. Its mDNS record lapsing does not end the search: a partition longer
//! than the record's TTL lapses it too, though the node lives. A peer that said goodbye
//! is never a candidate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use mlmesh_protocol::NodeId;

use crate::node::Inner;
use crate::peers::Via;

/// The most candidates kept; past it the one closest to giving up is forgotten. Every
/// candidate has at most one describe in flight (`consider` allows one per endpoint),
/// so this also bounds the describes this module makes at once. A mesh cut in two
/// larger halves still heals: the first peer to answer introduces the others.
const MAX_CANDIDATES: usize = 64;

/// The first describe after a peer expired: soon, since a late heartbeat or a short
/// freeze is over by then.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The longest wait between two describes of a candidate while its mDNS record could
/// still be cached (the record TTL): a healed partition is seen within about this (plus
/// a describe), as with seeds at their default interval.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// The record TTL of the mDNS records that name a node (SRV and A).
const RECORD_TTL: Duration = Duration::from_secs(120);

/// The longest wait between two describes after that: a longer partition heals within
/// about this, and a node that is really gone costs one failed connect this often.
const LATE_RETRY: Duration = Duration::from_secs(5);

/// How long a candidate is kept. Past the record TTL mDNS has let the record of a node
/// that did not answer lapse, whether the node is gone or only cut off; the search goes
/// on, slower, for a partition of up to this long.
const KEEP_FOR: Duration = Duration::from_secs(600);

/// A peer dropped for silence, to be described again.
#[derive(Debug)]
struct Candidate {
    endpoint: String,
    via: Via,
    /// When it was dropped, or its record last resolved.
    since: Instant,
    /// When to describe it next.
    next: Instant,
    /// The wait after that.
    backoff: Duration,
    /// When to give up.
    until: Instant,
}

/// The candidates of one node, and the wake-up of the task that describes them.
#[derive(Debug, Default)]
pub(crate) struct Rejoin {
    candidates: Mutex<HashMap<NodeId, Candidate>>,
    changed: Notify,
}

impl Rejoin {
    fn candidates(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Candidate>> {
        self.candidates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a peer that expired (never one that said goodbye) as a candidate. A peer
    /// found through a seed is not kept: the seed's own ticks find it again.
    pub(crate) fn remember(&self, id: NodeId, endpoint: String, via: Via, now: Instant) {
        if via == Via::Seed {
            return;
        }
        let mut candidates = self.candidates();
        if candidates.len() >= MAX_CANDIDATES && !candidates.contains_key(&id) {
            let oldest = candidates
                .iter()
                .min_by_key(|(_, c)| c.until)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                candidates.remove(&oldest);
            }
        }
        candidates.insert(
            id,
            Candidate {
                endpoint,
                via,
                since: now,
                next: now + FIRST_RETRY,
                backoff: FIRST_RETRY,
                until: now + KEEP_FOR,
            },
        );
        drop(candidates);
        self.changed.notify_one();
    }

    /// Forgets a candidate: it said goodbye.
    pub(crate) fn forget(&self, id: &NodeId) {
        self.candidates().remove(id);
    }

    /// Node `id` answered a describe at `endpoint`: it is no candidate any more (it
    /// joins or is refused on its own merits), and neither is a node that used to be
    /// there (it restarted with a new id, or its port was taken).
    pub(crate) fn answered(&self, endpoint: &str, id: &NodeId) {
        self.candidates()
            .retain(|k, c| k != id && c.endpoint != endpoint);
    }

    /// mDNS resolved a record for `id` again (new to mdns-sd's cache: the node
    /// answered it after its record had lapsed, or re-registered). The record is the
    /// latest word on where the node is and lives a TTL from now, so a candidate moves
    /// there, starts its backoff over and is kept that much longer.
    pub(crate) fn resolved(&self, id: &NodeId, endpoint: &str, now: Instant) {
        if let Some(c) = self.candidates().get_mut(id) {
            endpoint.clone_into(&mut c.endpoint);
            c.since = now;
            c.next = now + FIRST_RETRY;
            c.backoff = FIRST_RETRY;
            c.until = now + KEEP_FOR;
        }
    }

    /// Drops the candidates kept long enough, and returns those due for a describe
    /// (their next one scheduled, backing off) with the time the next one falls due.
    fn due(&self, now: Instant) -> (Vec<(NodeId, String, Via)>, Option<Instant>) {
        let mut candidates = self.candidates();
        candidates.retain(|_, c| c.until > now);
        let mut due = Vec::new();
        for (id, c) in candidates.iter_mut() {
            if c.next <= now {
                due.push((*id, c.endpoint.clone(), c.via));
                let cap = if now < c.since + RECORD_TTL {
                    MAX_RETRY
                } else {
                    LATE_RETRY
                };
                c.backoff = (c.backoff * 2).min(cap);
                c.next = now + c.backoff;
            }
        }
        let next = candidates.values().map(|c| c.next.min(c.until)).min();
        (due, next)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.candidates().len()
    }
}

/// Describes the candidates as they fall due, until the node stops.
pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        let (due, next) = inner.rejoin.due(Instant::now());
        for (id, endpoint, via) in due {
            // Skipped while a describe of that endpoint is under way, and for a peer
            // already back in the table there (`admit` forgets it as a candidate).
            super::consider(&inner, endpoint, via, Some(id), false);
        }
        let wait = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.rejoin.changed.notified() => {}
            _ = wait => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> String {
        format!("tcp://10.0.0.1:{port}")
    }

    #[test]
    fn a_candidate_is_described_with_a_bounded_backoff_until_it_is_kept_long_enough() {
        let r = Rejoin::default();
        let t0 = Instant::now();
        let id = NodeId::new();
        r.remember(id, ep(1), Via::Mdns, t0);
        let (due, next) = r.due(t0);
        assert!(due.is_empty());
        assert_eq!(next, Some(t0 + FIRST_RETRY));

        let mut at = t0 + FIRST_RETRY;
        let mut gaps = Vec::new();
        while at < t0 + KEEP_FOR {
            let (due, next) = r.due(at);
            assert_eq!(due, vec![(id, ep(1), Via::Mdns)]);
            let next = next.expect("still kept");
            gaps.push(next - at);
            at = next;
        }
        assert_eq!(
            gaps[..4],
            [500, 1000, 2000, 2000].map(Duration::from_millis)
        );
        // 2 s apart while the record could live, 5 s apart after.
        let in_ttl = gaps.iter().scan(Duration::ZERO, |t, g| {
            *t += *g;
            Some((*t, *g))
        });
        for (t, g) in in_ttl {
            let cap = if t <= RECORD_TTL + FIRST_RETRY {
                MAX_RETRY
            } else {
                LATE_RETRY
            };
            assert!(g <= cap, "a {g:?} gap {t:?} in");
        }
        assert!(gaps.contains(&LATE_RETRY), "slower after the record TTL");
        let (due, next) = r.due(t0 + KEEP_FOR);
        assert!(
            due.is_empty() && next.is_none(),
            "given up after {KEEP_FOR:?}"
        );
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn seed_peers_are_not_kept_and_goodbyes_are_forgotten() {
        let r = Rejoin::default();
        let t0 = Instant::now();
        r.remember(NodeId::new(), ep(1), Via::Seed, t0);
        assert_eq!(r.len(), 0, "a seed's ticks find its peers again");
        let id = NodeId::new();
        r.remember(id, ep(2), Via::Introduction, t0);
        r.forget(&id);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn an_answer_at_an_endpoint_ends_every_candidate_there() {
        let r = Rejoin::default();
        let t0 = Instant::now();
        let (a, b, c) = (NodeId::new(), NodeId::new(), NodeId::new());
        r.remember(a, ep(1), Via::Mdns, t0);
        r.remember(b, ep(2), Via::Mdns, t0);
        r.remember(c, ep(3), Via::Mdns, t0);
        r.answered(&ep(1), &a); // a is back
        r.answered(&ep(2), &NodeId::new()); // another node now answers where b was
        assert_eq!(r.len(), 1);
        let (due, _) = r.due(t0 + FIRST_RETRY);
        assert_eq!(due, vec![(c, ep(3), Via::Mdns)]);
    }

    #[test]
    fn a_new_resolution_moves_a_candidate_and_starts_it_over() {
        let r = Rejoin::default();
        let t0 = Instant::now();
        let id = NodeId::new();
        r.remember(id, ep(1), Via::Mdns, t0);
        let later = t0 + Duration::from_secs(100);
        r.due(later); // backed off to the maximum
        r.resolved(&id, &ep(9), later);
        let (due, next) = r.due(later);
        assert!(due.is_empty());
        assert_eq!(next, Some(later + FIRST_RETRY));
        let (due, _) = r.due(t0 + KEEP_FOR + Duration::from_secs(1));
        assert_eq!(
            due,
            vec![(id, ep(9), Via::Mdns)],
            "kept KEEP_FOR from the resolution"
        );
    }

    #[test]
    fn candidates_are_bounded() {
        let r = Rejoin::default();
        let t0 = Instant::now();
        let first = NodeId::new();
        r.remember(first, ep(0), Via::Mdns, t0);
        for k in 1..=MAX_CANDIDATES {
            r.remember(
                NodeId::new(),
                ep(k as u16),
                Via::Mdns,
                t0 + Duration::from_millis(k as u64),
            );
        }
        assert_eq!(r.len(), MAX_CANDIDATES);
        assert!(
            !r.candidates().contains_key(&first),
            "the oldest goes first"
        );
    }
}
