//! Finding peers: mDNS records and seed endpoints both lead to a `sys.describe` call,
//! and only its answer puts a peer in the table.
//!
//! A record or a seed only names a *candidate*. mDNS records of crashed nodes linger
//! for 120 s and resolves repeat, so a peer joins when it answers, from this mesh and
//! with this protocol version. Its answer lists the peers it knows, which become
//! candidates too: one seed introduces the whole mesh. A peer that expired for silence
//! stays a candidate for a while ([`rejoin`]), since mDNS would not name it again.

pub(crate) mod mdns;
pub(crate) mod rejoin;
mod seeds;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use mlmesh_protocol::sys::{self, Describe};
use mlmesh_protocol::{from_payload, Body, Envelope, MessageId, NodeId, Topic, PROTOCOL_VERSION};

use crate::node::{BuildError, Inner};
use crate::peers::{PeerEvent, Upsert, Via};
use crate::transport::subscriber;

pub(crate) fn start(inner: &Arc<Inner>) -> Result<(), BuildError> {
    if inner.config.discovery.mdns {
        let m = mdns::start(inner)?;
        *inner.mdns.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
    }
    if !inner.config.discovery.seeds.is_empty() {
        inner.tasks.spawn(seeds::run(inner.clone()));
    }
    inner.tasks.spawn(rejoin::run(inner.clone()));
    Ok(())
}

/// Describes the node at `endpoint` and, if it answers from this mesh, puts it in the
/// table. `expect` is the id a record claims; `force` re-describes known peers (seeds).
pub(crate) fn consider(
    inner: &Arc<Inner>,
    endpoint: String,
    via: Via,
    expect: Option<NodeId>,
    force: bool,
) {
    if expect == Some(inner.id) || inner.cancel.is_cancelled() {
        return;
    }
    if let (Some(id), false) = (expect, force) {
        let peers = inner.peers();
        if peers
            .get(&id)
            .is_some_and(|p| p.describe.endpoints.rpc == endpoint)
        {
            return;
        }
    }
    // One describe at a time per endpoint.
    if !inner
        .describing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(endpoint.clone())
    {
        return;
    }
    let inner = inner.clone();
    inner.clone().tasks.spawn(async move {
        let result = describe(&inner, &endpoint).await;
        inner
            .describing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&endpoint);
        match result {
            Ok(d) => admit(&inner, &endpoint, d, via),
            Err(why) => {
                tracing::debug!(%endpoint, %why, "candidate did not answer sys.describe");
                let used = inner
                    .peers()
                    .iter()
                    .any(|p| p.describe.endpoints.rpc == endpoint);
                if !used {
                    inner.clients.remove(&endpoint);
                }
            }
        }
    });
}

async fn describe(inner: &Arc<Inner>, endpoint: &str) -> Result<Describe, String> {
    let timeout = Duration::from_millis(inner.config.limits.connect_timeout_ms);
    let deadline = Instant::now() + timeout + Duration::from_secs(1);
    let topic = Topic::new(sys::DESCRIBE).map_err(|e| e.to_string())?;
    let id = MessageId::new();
    let env = Envelope {
        version: PROTOCOL_VERSION,
        id,
        topic,
        source: inner.id,
        time: mlmesh_protocol::now_nanos(),
        body: Body::Request {
            deadline_ms: (timeout.as_millis() as u32).saturating_add(1000),
        },
        data: Bytes::from(
            mlmesh_protocol::to_payload(&sys::DescribeRequest {
                caller: Some(sys::PeerRecord {
                    id: inner.id,
                    name: inner.config.node.name.clone(),
                    endpoints: inner.endpoints.clone(),
                }),
            })
            .map_err(|e| e.to_string())?,
        ),
    };
    let frame = inner.codec.encode(&env).map_err(|e| e.to_string())?;
    let client = inner
        .clients
        .get(endpoint, inner.codec, timeout, &inner.cancel);
    let reply = client
        .call(id, frame, deadline, false)
        .await
        .map_err(|s| s.to_string())?;
    match reply {
        Ok(data) => from_payload::<Describe>(&data).map_err(|e| e.to_string()),
        Err(status) => Err(status.to_string()),
    }
}

/// Puts a described node in the table (or refreshes it) and wires up its sockets.
fn admit(inner: &Arc<Inner>, endpoint: &str, mut d: Describe, via: Via) {
    inner.rejoin.answered(endpoint, &d.id);
    // A configured seed that introduced itself first (its describe of this node arrived
    // before this node's own describe of it answered, e.g. after a timeout) is a seed.
    let via = match via {
        Via::Introduction if inner.config.discovery.seeds.iter().any(|s| s == endpoint) => {
            Via::Seed
        }
        via => via,
    };
    if d.id == inner.id {
        inner.clients.remove(endpoint);
        return;
    }
    if d.mesh != inner.config.node.mesh || d.protocol != PROTOCOL_VERSION {
        tracing::debug!(peer = %d.name, mesh = %d.mesh, protocol = d.protocol, "ignoring a node of another mesh or version");
        inner.clients.remove(endpoint);
        return;
    }
    // Dial what was proven reachable: the host that answered, with its PUB port.
    let publish = match (host_of(endpoint), port_of(&d.endpoints.publish)) {
        (Some(host), Some(port)) => format!("tcp://{host}:{port}"),
        _ => d.endpoints.publish.clone(),
    };
    d.endpoints.rpc = endpoint.to_owned();
    d.endpoints.publish = publish;
    let introductions: Vec<_> = d
        .peers
        .iter()
        .map(|r| (r.id, r.endpoints.rpc.clone()))
        .collect();
    let id = d.id;
    let sub_endpoint = d.endpoints.publish.clone();
    let (outcome, info, live) = {
        let mut peers = inner.peers();
        let outcome = peers.upsert(d, via);
        let now = peers.now_ms();
        let peer = peers.get(&id);
        (outcome, peer.map(|p| p.info(now)), peers.liveness(&id))
    };
    match outcome {
        Upsert::Joined => {
            if let (Some(info), Some(live)) = (info, live) {
                start_subscriber(inner, id, sub_endpoint, live);
                tracing::info!(node = %inner.config.node.name, peer = %info.name, id = %id, ?via, "peer joined");
                inner.emit(PeerEvent::Joined(Box::new(info)));
            }
        }
        Upsert::Moved(old) => {
            inner.drop_peer(id, &old, false);
            if let Some(live) = live {
                start_subscriber(inner, id, sub_endpoint, live);
            }
        }
        Upsert::Refreshed => {}
    }
    for (peer, rpc) in introductions {
        if peer != inner.id && !inner.peers().contains(&peer) {
            consider(inner, rpc, Via::Introduction, Some(peer), false);
        }
    }
}

fn start_subscriber(
    inner: &Arc<Inner>,
    id: NodeId,
    endpoint: String,
    live: Arc<crate::peers::Liveness>,
) {
    let token = inner.cancel.child_token();
    if let Some(old) = inner
        .sub_tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, token.clone())
    {
        old.cancel();
    }
    inner
        .tasks
        .spawn(subscriber::run(inner.clone(), id, endpoint, live, token));
}

fn host_of(endpoint: &str) -> Option<&str> {
    crate::config::parse_tcp_endpoint(endpoint)
        .ok()
        .map(|(h, _)| h)
}

fn port_of(endpoint: &str) -> Option<u16> {
    crate::config::parse_tcp_endpoint(endpoint)
        .ok()
        .map(|(_, p)| p)
}
