//! The event path in: one SUB socket per live peer, in its own task.
//!
//! A socket per peer (rather than one SUB connected to all) because zmq.rs cannot
//! disconnect a SUB from one endpoint: when a peer leaves, its task and socket end.
//! The SUB reconnects by itself if the peer's PUB comes back at the same address.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketEvent, SocketRecv, SubSocket, ZmqMessage};

use mlmesh_protocol::sys::{self, Heartbeat};
use mlmesh_protocol::{from_payload, Body, NodeId};

use crate::events::{Event, GapTracker};
use crate::node::{bump, Inner};
use crate::peers::{LeftReason, Liveness, PeerEvent};

pub(crate) async fn run(
    inner: Arc<Inner>,
    peer: NodeId,
    endpoint: String,
    live: Arc<Liveness>,
    cancel: CancellationToken,
) {
    let timeout = Duration::from_millis(inner.config.limits.connect_timeout_ms);
    let mut prefixes = inner.subs.prefixes();
    let mut socket = SubSocket::with_options(super::dial_options(inner.codec.max_size(), timeout));
    let mut subscribed: Vec<String> = Vec::new();
    let mut initial = prefixes.borrow_and_update().to_vec();
    // The prefix covering `sys.` goes last (SPEC 5.2): zmq.rs sends the subscriptions in
    // the order made when it connects, so a PUB that has it has all of them, and a
    // publisher can tell this node is ready for its events.
    initial.sort_by_key(|p| covers_sys(p.as_bytes()));
    for p in initial.iter() {
        if socket.subscribe(p).await.is_ok() {
            subscribed.push(p.clone());
        }
    }
    let mut monitor = socket.monitor();
    loop {
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.connect(&endpoint) => r,
        };
        match r {
            Ok(()) => break,
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "SUB connect failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    let mut gaps = GapTracker::default();
    let mut events = Vec::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = prefixes.changed() => {
                if changed.is_err() {
                    return;
                }
                let want = prefixes.borrow_and_update().clone();
                for p in want.iter() {
                    if !subscribed.contains(p) && socket.subscribe(p).await.is_ok() {
                        subscribed.push(p.clone());
                    }
                }
            }
            ev = monitor.next() => {
                if let Some(SocketEvent::Disconnected(_)) = ev {
                    // What a crashed process looks like: expire after one interval
                    // unless it speaks again (the SUB keeps reconnecting).
                    live.mark_disconnected();
                }
            }
            msg = socket.recv() => match msg {
                Ok(msg) => {
                    let delivered = receive(&inner, peer, &live, &mut gaps, &mut events, msg);
                    // zmq.rs's futures do not count against Tokio's cooperative budget:
                    // without this, a busy SUB never lets the subscriptions' readers run.
                    // Each event delivered counts (a batch frame holds many), so that the
                    // readers get a turn well before their bounded queues fill.
                    for _ in 0..delivered.max(1) {
                        tokio::task::consume_budget().await;
                    }
                }
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "SUB receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Whether a subscription to `prefix` lets heartbeats (`sys.`) through.
pub(crate) fn covers_sys(prefix: &[u8]) -> bool {
    mlmesh_protocol::name::RESERVED_PREFIX
        .as_bytes()
        .starts_with(prefix)
}

/// Handles one event message; returns how many events it delivered. `events` is a
/// buffer kept between calls (empty in between).
fn receive(
    inner: &Inner,
    peer: NodeId,
    live: &Liveness,
    gaps: &mut GapTracker,
    events: &mut Vec<Event>,
    msg: ZmqMessage,
) -> usize {
    let frames = msg.into_vec();
    // An event message is exactly [topic][body] (SPEC 5.2).
    let [topic_frame, body] = &frames[..] else {
        bump(&inner.counters.frames_rejected, 1);
        return 0;
    };
    // Validated once per message; every envelope must carry this topic (SPEC 5.2) and
    // then shares it rather than validating and allocating its own.
    let topic = std::str::from_utf8(topic_frame)
        .ok()
        .and_then(|t| mlmesh_protocol::Topic::new(t).ok());
    let Some(topic) = topic else {
        bump(&inner.counters.frames_rejected, 1);
        tracing::debug!("event message dropped: its topic frame is not a valid topic");
        return 0;
    };
    if topic.as_str() == sys::HEARTBEAT {
        match inner.codec.decode_event_frame(&topic, body) {
            Ok(envelopes) => heartbeats(inner, peer, live, gaps, envelopes),
            Err(e) => {
                bump(&inner.counters.frames_rejected, 1);
                tracing::debug!(error = %e, "heartbeat frame dropped");
            }
        }
        return 0;
    }
    // Decoded straight into events; checked once the whole frame decodes (one bad
    // envelope rejects the frame).
    let decoded = inner
        .codec
        .decode_event_frame_with(&topic, body, |envelope| {
            events.push(Event {
                envelope,
                missed: 0,
            })
        });
    if let Err(e) = decoded {
        events.clear();
        bump(&inner.counters.frames_rejected, 1);
        tracing::debug!(error = %e, "event frame dropped");
        return 0;
    }
    // Every envelope of a frame has its topic, so the frame is one (source, topic)
    // sequence and is delivered as one unit.
    let mut seqs = gaps.of(peer, &topic);
    let (mut rejected, mut missed) = (0, 0);
    events.retain_mut(|event| {
        let envelope = &event.envelope;
        let Body::Event { seq } = envelope.body else {
            rejected += 1;
            return false;
        };
        if envelope.source != peer {
            // Another node publishes at this peer's address: the peer died and a new
            // process took its ports, and this SUB reconnected to it (zmq.rs SUBs
            // reconnect by themselves). Its traffic is not the peer's, so it neither
            // keeps the peer alive nor is delivered here (it arrives on the new node's
            // own SUB once that node is admitted, and would arrive twice).
            rejected += 1;
            tracing::debug!(%peer, source = %envelope.source, "event from another node at a peer's address dropped");
            return false;
        }
        event.missed = seqs.observe(seq);
        missed += event.missed;
        true
    });
    if rejected > 0 {
        bump(&inner.counters.frames_rejected, rejected);
    }
    let delivered = events.len();
    if delivered > 0 {
        live.touch();
        bump(&inner.counters.events_received, delivered as u64);
        if missed > 0 {
            bump(&inner.counters.events_missed, missed);
        }
        inner.subs.dispatch(&topic, events);
    }
    delivered
}

/// A frame of heartbeats: each keeps the peer alive, and a leaving one is its goodbye.
fn heartbeats(
    inner: &Inner,
    peer: NodeId,
    live: &Liveness,
    gaps: &mut GapTracker,
    envelopes: Vec<mlmesh_protocol::Envelope>,
) {
    for env in envelopes {
        if !matches!(env.body, Body::Event { .. }) || env.source != peer {
            // As for events (see `receive`).
            bump(&inner.counters.frames_rejected, 1);
            continue;
        }
        live.touch();
        if let Ok(hb) = from_payload::<Heartbeat>(&env.data) {
            live.set_interval(hb.interval_ms);
            if hb.leaving {
                goodbye(inner, peer);
                gaps.forget(peer);
                return;
            }
        }
    }
}

/// The peer said it is leaving: remove it now rather than after three intervals, and
/// never look for it again (it may have expired for silence before its goodbye came).
pub(crate) fn goodbye(inner: &Inner, peer: NodeId) {
    inner.rejoin.forget(&peer);
    let removed = inner.peers().remove(&peer);
    if let Some(endpoints) = removed {
        inner.drop_peer(peer, &endpoints, true);
        inner.emit(PeerEvent::Left(peer, LeftReason::Goodbye));
    }
}
