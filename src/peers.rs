//! The peer table: every peer this node knows, its state, and the liveness rules.
//!
//! A peer is *alive* while traffic arrives, *suspect* after two of its own heartbeat
//! intervals of silence, and *gone* after three (or one, once its connection closed,
//! which is how a crashed process looks). Only the liveness task removes peers; any
//! envelope from a peer refreshes it through [`Liveness::touch`], a lock-free store.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlmesh_protocol::sys::{Describe, Endpoints};
use mlmesh_protocol::{NodeId, Topic};

use crate::{FastMap, FastSet};

/// How a peer was found; the most direct way when there were several (a peer first
/// introduced by another, then found by mDNS or as a seed, shows as that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Via {
    /// An mDNS record.
    Mdns,
    /// A configured seed.
    Seed,
    /// Another peer's describe answer.
    Introduction,
}

/// Liveness of a peer as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerState {
    /// Traffic arrived within two of its heartbeat intervals.
    Alive,
    /// Silent for two intervals or more; requests avoid it.
    Suspect,
}

/// A peer, as listed by [`crate::NodeHandle::peers`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// Node id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Mesh name.
    pub mesh: String,
    /// Advertised roles.
    pub roles: Vec<String>,
    /// Instruction topics it serves.
    pub serves: Vec<String>,
    /// Its PUB and ROUTER endpoints.
    pub endpoints: Endpoints,
    /// Implementation and version.
    pub version: String,
    /// Its heartbeat interval.
    pub heartbeat: Duration,
    /// Alive or suspect.
    pub state: PeerState,
    /// Time since the last traffic from it.
    pub last_seen: Duration,
    /// How it was found.
    pub via: Via,
    /// Its requests outstanding from this node.
    pub outstanding: usize,
    /// Its start time, Unix milliseconds.
    pub started_ms: u64,
}

/// Why a peer left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeftReason {
    /// Three heartbeat intervals of silence (or one after its connection closed).
    Expired,
    /// It said goodbye (leaving heartbeat or mDNS removal).
    Goodbye,
}

/// A change in the peer table.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A peer answered `sys.describe` and is now in the table.
    Joined(Box<PeerInfo>),
    /// A peer went silent for two intervals.
    Suspect(NodeId),
    /// A suspect peer spoke again.
    Recovered(NodeId),
    /// A peer left.
    Left(NodeId, LeftReason),
}

/// A coarse clock: milliseconds since the table's epoch, advanced by every sweep (so at
/// most one sweep period stale). Hot paths record traffic against it without reading
/// the system clock, which costs tens of nanoseconds a read in a VM.
pub(crate) type CoarseClock = Arc<AtomicU64>;

/// The lock-free part of a peer that hot paths update.
#[derive(Debug)]
pub(crate) struct Liveness {
    clock: CoarseClock,
    last_seen_ms: AtomicU64,
    interval_ms: AtomicU32,
    /// Set when its PUB connection dropped; cleared by traffic.
    disconnected: AtomicBool,
    pub(crate) outstanding: AtomicUsize,
    /// The client of the peer's rpc endpoint, kept here so that a call finds it without
    /// a lookup by endpoint in [`crate::transport::client::Clients`]; valid while it
    /// [`serves`](crate::transport::client::PeerClient::serves) the peer's endpoint.
    pub(crate) client: std::sync::OnceLock<Arc<crate::transport::client::PeerClient>>,
}

impl Liveness {
    pub(crate) fn new(clock: CoarseClock, interval_ms: u32) -> Self {
        let l = Self {
            clock,
            last_seen_ms: AtomicU64::new(0),
            interval_ms: AtomicU32::new(interval_ms.max(1)),
            disconnected: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            client: std::sync::OnceLock::new(),
        };
        l.touch();
        l
    }

    /// Records traffic from the peer.
    pub(crate) fn touch(&self) {
        let now = self.clock.load(Ordering::Relaxed);
        self.last_seen_ms.store(now, Ordering::Relaxed);
        if self.disconnected.load(Ordering::Relaxed) {
            self.disconnected.store(false, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_interval(&self, ms: u32) {
        self.interval_ms.store(ms.max(1), Ordering::Relaxed);
    }

    pub(crate) fn mark_disconnected(&self) {
        self.disconnected.store(true, Ordering::Relaxed);
    }

    fn silence(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed))
    }
}

/// A peer's full record.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) describe: Describe,
    /// Name and rpc endpoint again, shared, so that routing a call copies no strings.
    pub(crate) route: (Arc<str>, Arc<str>),
    pub(crate) serves: FastSet<Topic>,
    pub(crate) state: PeerState,
    pub(crate) via: Via,
    pub(crate) live: Arc<Liveness>,
}

impl Peer {
    pub(crate) fn info(&self, now_ms: u64) -> PeerInfo {
        let d = &self.describe;
        PeerInfo {
            id: d.id,
            name: d.name.clone(),
            mesh: d.mesh.clone(),
            roles: d.roles.clone(),
            serves: d.serves.iter().map(|s| s.topic.clone()).collect(),
            endpoints: d.endpoints.clone(),
            version: d.version.clone(),
            heartbeat: Duration::from_millis(self.live.interval_ms.load(Ordering::Relaxed).into()),
            state: self.state,
            last_seen: Duration::from_millis(self.live.silence(now_ms)),
            via: self.via,
            outstanding: self.live.outstanding.load(Ordering::Relaxed),
            started_ms: d.started_ms,
        }
    }
}

/// What an upsert did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upsert {
    /// A new peer.
    Joined,
    /// Known, same endpoints: refreshed.
    Refreshed,
    /// Known id at new endpoints (restarted with a fixed id): sockets must be rebuilt.
    Moved(Endpoints),
}

/// The table itself. Guarded by a mutex in the node; every method is short.
#[derive(Debug)]
pub(crate) struct PeerTable {
    epoch: Instant,
    clock: CoarseClock,
    peers: FastMap<NodeId, Peer>,
    /// When the last sweep ran, ms since the epoch.
    last_sweep_ms: u64,
}

/// A sweep this late means this node was not running (stopped, suspended, starved): the
/// silence of its peers over that time is its own, not theirs. Sweeps run every 5-50 ms.
const STALL_MS: u64 = 250;

/// What one liveness sweep found.
#[derive(Debug, Default)]
pub(crate) struct Sweep {
    pub(crate) events: Vec<PeerEvent>,
    pub(crate) removed: Vec<Expired>,
}

/// A peer removed for silence: what is needed to tear it down and to look for it again.
#[derive(Debug)]
pub(crate) struct Expired {
    pub(crate) id: NodeId,
    pub(crate) endpoints: Endpoints,
    pub(crate) via: Via,
}

impl PeerTable {
    pub(crate) fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            clock: Arc::new(AtomicU64::new(0)),
            peers: FastMap::default(),
            last_sweep_ms: 0,
        }
    }

    /// Reads the clock and advances the coarse one to it.
    pub(crate) fn now_ms(&self) -> u64 {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.clock.fetch_max(now, Ordering::Relaxed);
        now
    }

    pub(crate) fn get(&self, id: &NodeId) -> Option<&Peer> {
        self.peers.get(id)
    }

    pub(crate) fn contains(&self, id: &NodeId) -> bool {
        self.peers.contains_key(id)
    }

    pub(crate) fn liveness(&self, id: &NodeId) -> Option<Arc<Liveness>> {
        self.peers.get(id).map(|p| p.live.clone())
    }

    /// Adds or refreshes a peer from its describe answer.
    pub(crate) fn upsert(&mut self, describe: Describe, via: Via) -> Upsert {
        self.now_ms(); // a describe answer is fresh traffic: touch at the true time
        let serves = describe
            .serves
            .iter()
            .filter_map(|s| Topic::new(&s.topic).ok())
            .collect();
        match self.peers.get_mut(&describe.id) {
            Some(peer) => {
                peer.live.touch();
                peer.live.set_interval(describe.heartbeat_ms);
                if peer.via == Via::Introduction {
                    // Found directly too (its own describe lost the race to an
                    // introduction): say so.
                    peer.via = via;
                }
                let old =
                    std::mem::replace(&mut peer.describe.endpoints, describe.endpoints.clone());
                peer.serves = serves;
                peer.route = (
                    Arc::from(describe.name.as_str()),
                    Arc::from(describe.endpoints.rpc.as_str()),
                );
                peer.describe = describe;
                if old != peer.describe.endpoints {
                    Upsert::Moved(old)
                } else {
                    Upsert::Refreshed
                }
            }
            None => {
                let live = Arc::new(Liveness::new(self.clock.clone(), describe.heartbeat_ms));
                self.peers.insert(
                    describe.id,
                    Peer {
                        route: (
                            Arc::from(describe.name.as_str()),
                            Arc::from(describe.endpoints.rpc.as_str()),
                        ),
                        describe,
                        serves,
                        state: PeerState::Alive,
                        via,
                        live,
                    },
                );
                Upsert::Joined
            }
        }
    }

    /// Removes a peer (goodbye); returns its endpoints.
    pub(crate) fn remove(&mut self, id: &NodeId) -> Option<Endpoints> {
        self.peers.remove(id).map(|p| p.describe.endpoints)
    }

    /// Applies the liveness rules to every peer.
    pub(crate) fn sweep(&mut self) -> Sweep {
        let now = self.now_ms();
        let gap = now.saturating_sub(self.last_sweep_ms);
        self.last_sweep_ms = now;
        if gap > STALL_MS {
            // This node was away (a frozen or starved process): grant every peer the time
            // it was away, so that it is judged on what it sent while this node listened.
            // A peer that is really gone is still found, that much later.
            let away = gap;
            tracing::warn!(
                away_ms = away,
                "liveness sweep ran late; not counting that time against peers"
            );
            for peer in self.peers.values() {
                let seen = &peer.live.last_seen_ms;
                let shifted = seen.load(Ordering::Relaxed).saturating_add(away).min(now);
                seen.fetch_max(shifted, Ordering::Relaxed);
            }
        }
        let mut out = Sweep::default();
        self.peers.retain(|id, peer| {
            let interval = u64::from(peer.live.interval_ms.load(Ordering::Relaxed));
            let silence = peer.live.silence(now);
            let dropped = peer.live.disconnected.load(Ordering::Relaxed);
            let gone_after = if dropped { interval } else { 3 * interval };
            if silence > gone_after {
                out.events.push(PeerEvent::Left(*id, LeftReason::Expired));
                out.removed.push(Expired {
                    id: *id,
                    endpoints: peer.describe.endpoints.clone(),
                    via: peer.via,
                });
                return false;
            }
            let suspect = silence > 2 * interval || dropped;
            match (peer.state, suspect) {
                (PeerState::Alive, true) => {
                    peer.state = PeerState::Suspect;
                    out.events.push(PeerEvent::Suspect(*id));
                }
                (PeerState::Suspect, false) => {
                    peer.state = PeerState::Alive;
                    out.events.push(PeerEvent::Recovered(*id));
                }
                _ => {}
            }
            true
        });
        out
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Alive peers serving `topic`, with their liveness handles.
    #[allow(clippy::type_complexity)]
    pub(crate) fn providers(
        &self,
        topic: &Topic,
    ) -> Vec<(NodeId, Arc<str>, Arc<str>, Arc<Liveness>, bool)> {
        self.serving(topic)
            .map(|p| {
                (
                    p.describe.id,
                    p.route.0.clone(),
                    p.route.1.clone(),
                    p.live.clone(),
                    p.describe.batch,
                )
            })
            .collect()
    }

    /// Alive peers serving `topic`, borrowed (nothing cloned or collected).
    pub(crate) fn serving<'a>(&'a self, topic: &'a Topic) -> impl Iterator<Item = &'a Peer> + 'a {
        self.peers
            .values()
            .filter(move |p| p.state == PeerState::Alive && p.serves.contains(topic))
    }

    pub(crate) fn infos(&self) -> Vec<PeerInfo> {
        let now = self.now_ms();
        let mut v: Vec<_> = self.peers.values().map(|p| p.info(now)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlmesh_protocol::sys::Served;

    fn describe(id: NodeId, port: u16, hb: u32) -> Describe {
        Describe {
            id,
            name: "n".into(),
            mesh: "m".into(),
            protocol: 1,
            version: "t".into(),
            roles: vec![],
            serves: vec![Served {
                topic: "a.do".into(),
                schema: 1,
            }],
            endpoints: Endpoints {
                publish: format!("tcp://127.0.0.1:{port}"),
                rpc: format!("tcp://127.0.0.1:{}", port + 1),
            },
            heartbeat_ms: hb,
            started_ms: 0,
            peers: vec![],
            batch: false,
        }
    }

    #[test]
    fn a_peer_found_directly_after_an_introduction_says_how() {
        let mut t = PeerTable::new(Instant::now());
        let id = NodeId::new();
        let via = |t: &PeerTable| t.get(&id).expect("known").via;
        assert_eq!(
            t.upsert(describe(id, 10, 1000), Via::Introduction),
            Upsert::Joined
        );
        assert_eq!(via(&t), Via::Introduction);
        assert_eq!(
            t.upsert(describe(id, 10, 1000), Via::Mdns),
            Upsert::Refreshed
        );
        assert_eq!(via(&t), Via::Mdns);
        t.upsert(describe(id, 10, 1000), Via::Introduction);
        t.upsert(describe(id, 10, 1000), Via::Seed);
        assert_eq!(via(&t), Via::Mdns, "a direct way, once known, stays");
    }

    #[test]
    fn silence_makes_suspect_then_gone() {
        let mut t = PeerTable::new(Instant::now());
        let id = NodeId::new();
        assert_eq!(t.upsert(describe(id, 10, 20), Via::Seed), Upsert::Joined);
        assert_eq!(t.providers(&Topic::new("a.do").expect("t")).len(), 1);
        std::thread::sleep(Duration::from_millis(45));
        assert_eq!(t.sweep().events, vec![PeerEvent::Suspect(id)]);
        assert!(t.providers(&Topic::new("a.do").expect("t")).is_empty());
        t.liveness(&id).expect("known").touch();
        assert_eq!(t.sweep().events, vec![PeerEvent::Recovered(id)]);
        std::thread::sleep(Duration::from_millis(65));
        let sweep = t.sweep();
        assert_eq!(sweep.events[0], PeerEvent::Left(id, LeftReason::Expired));
        assert!(!t.contains(&id));
    }

    #[test]
    fn time_this_node_was_away_does_not_count_against_peers() {
        let mut t = PeerTable::new(Instant::now());
        let id = NodeId::new();
        t.upsert(describe(id, 10, 50), Via::Seed);
        t.sweep();
        // No sweep for 400 ms: this node was frozen; the peer's 150 ms of allowed
        // silence is measured on the time it was listened to.
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            t.sweep().events.is_empty(),
            "a stall is not the peer's silence"
        );
        assert!(t.contains(&id));
        // Listening again, the peer stays silent: it goes after its three intervals.
        let start = Instant::now();
        while t.contains(&id) {
            assert!(start.elapsed() < Duration::from_secs(2), "never expired");
            std::thread::sleep(Duration::from_millis(10));
            t.sweep();
        }
    }

    #[test]
    fn a_closed_connection_expires_after_one_interval() {
        let mut t = PeerTable::new(Instant::now());
        let id = NodeId::new();
        t.upsert(describe(id, 10, 30), Via::Mdns);
        t.liveness(&id).expect("known").mark_disconnected();
        std::thread::sleep(Duration::from_millis(35));
        let ev = t.sweep().events;
        assert_eq!(ev, vec![PeerEvent::Left(id, LeftReason::Expired)]);
    }

    #[test]
    fn same_id_at_new_endpoints_is_a_move() {
        let mut t = PeerTable::new(Instant::now());
        let id = NodeId::new();
        t.upsert(describe(id, 10, 1000), Via::Mdns);
        assert_eq!(
            t.upsert(describe(id, 10, 1000), Via::Mdns),
            Upsert::Refreshed
        );
        assert!(matches!(
            t.upsert(describe(id, 20, 1000), Via::Mdns),
            Upsert::Moved(_)
        ));
    }
}
