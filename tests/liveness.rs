//! Discovery through seeds, and liveness: nodes join, fall silent, crash, restart and
//! leave, and every peer table follows within a bounded time.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mlmesh::protocol::sys::{self, Describe, DescribeRequest};
use mlmesh::{
    CallOptions, Config, LeftReason, Node, NodeHandle, NodeId, PeerEvent, PeerInfo, PeerState,
    Status, Via,
};

/// Settings of an `mlmesh-node` child on loopback, mDNS off, seeded by `seed`, with its
/// own heartbeat interval.
fn child_env(
    name: &str,
    mesh: &str,
    seed: &NodeHandle,
    heartbeat_ms: u32,
) -> Vec<(&'static str, String)> {
    vec![
        ("MLMESH_NODE__NAME", name.into()),
        ("MLMESH_NODE__MESH", mesh.into()),
        ("MLMESH_DISCOVERY__MDNS", "false".into()),
        ("MLMESH_DISCOVERY__SEEDS", seed.endpoints().rpc.clone()),
        ("MLMESH_DISCOVERY__SEED_INTERVAL_MS", "200".into()),
        ("MLMESH_LIVENESS__HEARTBEAT_MS", heartbeat_ms.to_string()),
    ]
}

/// `node`'s entry for `id`, if it lists one.
fn entry(node: &NodeHandle, id: NodeId) -> Option<PeerInfo> {
    node.peers().into_iter().find(|p| p.id == id)
}

fn lists(node: &NodeHandle, id: NodeId) -> bool {
    entry(node, id).is_some()
}

fn lists_alive(node: &NodeHandle, id: NodeId) -> bool {
    entry(node, id).is_some_and(|p| p.state == PeerState::Alive)
}

/// Asks `target` (a peer of `asker`) for its describe answer until it lists `who`: how a
/// test sees the peer table of a node in another process.
async fn wait_known_by(asker: &NodeHandle, target: NodeId, who: NodeId) {
    let start = Instant::now();
    loop {
        let answer: Result<Describe, Status> = asker
            .request_with(
                sys::DESCRIBE,
                &DescribeRequest::default(),
                CallOptions::default()
                    .to(target)
                    .deadline(Duration::from_secs(1)),
            )
            .await;
        if answer
            .as_ref()
            .is_ok_and(|d| d.peers.iter().any(|p| p.id == who))
        {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for node {target} to list {who}; last answer {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `Left(id, _)` on `events`; returns the reason and the time since `since`.
async fn wait_left(
    events: &mut tokio::sync::broadcast::Receiver<PeerEvent>,
    id: NodeId,
    since: Instant,
) -> (LeftReason, Duration) {
    let ev = next_peer_event(
        events,
        "the peer to leave",
        WAIT,
        |e| matches!(e, PeerEvent::Left(who, _) if *who == id),
    )
    .await;
    let PeerEvent::Left(_, reason) = ev else {
        unreachable!("filtered above")
    };
    (reason, since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_introduces_every_node_to_every_other() {
    init_tracing();
    let mesh = unique_mesh();
    let seed = plain(local("seed", &mesh)).await;
    let mut workers = Vec::new();
    for i in 0..4 {
        let topic = format!("work.w{i}.run");
        let node = Node::builder(seeded(&format!("worker{i}"), &mesh, &seed))
            .handle(&topic, |_: (), _| async { Ok::<_, Status>(()) })
            .spawn()
            .await
            .expect("worker starts");
        workers.push((node, topic));
    }
    wait_peers(&seed, 4).await;
    for (w, _) in &workers {
        wait_peers(w, 4).await;
    }

    let check = |info: &PeerInfo, node: &NodeHandle, serves: &[String], via: Via| {
        let who = format!("entry of {}: {info:?}", node.name());
        assert_eq!(info.id, node.id(), "{who}");
        assert_eq!(info.name, node.name(), "{who}");
        assert_eq!(info.mesh, mesh, "{who}");
        assert_eq!(info.serves, serves, "{who}");
        assert_eq!(info.state, PeerState::Alive, "{who}");
        assert_eq!(info.via, via, "{who}");
        assert_eq!(&info.endpoints, node.endpoints(), "{who}");
        assert_eq!(info.heartbeat, Duration::from_millis(200), "{who}");
        assert_eq!(info.version, mlmesh::IMPLEMENTATION, "{who}");
    };
    for (w, topic) in &workers {
        // The seed met each worker as the caller of its describe request.
        let info = entry(&seed, w.id()).expect("the seed lists every worker");
        check(&info, w, std::slice::from_ref(topic), Via::Introduction);
    }
    for (w, _) in &workers {
        let info = entry(w, seed.id()).expect("a worker lists its seed");
        check(&info, &seed, &[], Via::Seed);
        for (other, topic) in workers.iter().filter(|(o, _)| o.id() != w.id()) {
            let info = entry(w, other.id())
                .unwrap_or_else(|| panic!("{} lists {}", w.name(), other.name()));
            check(&info, other, std::slice::from_ref(topic), Via::Introduction);
        }
        assert!(
            w.peers().iter().all(|p| p.id != w.id()),
            "a node never lists itself"
        );
    }

    for (w, _) in workers {
        w.shutdown().await;
    }
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_leaves_within_three_seconds_at_the_default_heartbeat() {
    init_tracing();
    let mesh = unique_mesh();
    let cfg = Config::local("observer", &mesh);
    assert_eq!(cfg.liveness.heartbeat_ms, 1000, "the default interval");
    let observer = plain(cfg).await;
    let mut child = ChildNode::spawn(&child_env("crasher", &mesh, &observer, 1000), &[]);
    wait_until("the observer to list the child", WAIT, || {
        lists_alive(&observer, child.id)
    })
    .await;
    wait_known_by(&observer, child.id, observer.id()).await;
    assert_eq!(
        entry(&observer, child.id).map(|p| p.heartbeat),
        Some(Duration::from_secs(1))
    );

    let mut events = observer.watch_peers();
    let killed = Instant::now();
    child.kill9();
    let (reason, took) = wait_left(&mut events, child.id, killed).await;
    eprintln!("crash detection at a 1 s heartbeat: {took:?} ({reason:?})");
    assert_eq!(reason, LeftReason::Expired);
    assert!(
        took < Duration::from_secs(3),
        "a crashed node must leave within 3 s at a 1 s interval, took {took:?}"
    );
    assert!(!lists(&observer, child.id), "gone from the listing at once");
    observer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_turns_suspect_then_leaves_and_rejoins_when_resumed() {
    init_tracing();
    let mesh = unique_mesh();
    let observer = plain(local("observer", &mesh)).await;
    let child = ChildNode::seeded("sleeper", &mesh, &observer.endpoints().rpc, &[]);
    wait_until("the observer to list the child", WAIT, || {
        lists_alive(&observer, child.id)
    })
    .await;
    wait_known_by(&observer, child.id, observer.id()).await;

    // SIGSTOP keeps the process's connections open: only the silence shows.
    let mut events = observer.watch_peers();
    let stopped = Instant::now();
    signal(child.child.id(), "STOP");
    let ev = next_peer_event(
        &mut events,
        "the child to turn suspect",
        WAIT,
        |e| matches!(e, PeerEvent::Suspect(id) | PeerEvent::Left(id, _) if *id == child.id),
    )
    .await;
    let suspect_after = stopped.elapsed();
    assert_eq!(
        ev,
        PeerEvent::Suspect(child.id),
        "suspect comes before left"
    );
    if let Some(info) = entry(&observer, child.id) {
        assert_eq!(info.state, PeerState::Suspect, "{info:?}");
    }
    let (reason, left_after) = wait_left(&mut events, child.id, stopped).await;
    eprintln!(
        "SIGSTOP at a 200 ms heartbeat: suspect after {suspect_after:?}, left after {left_after:?}"
    );
    assert_eq!(reason, LeftReason::Expired);
    // Two intervals of silence make it suspect and three gone, counted from its last
    // heartbeat, which came at most one interval before the stop.
    assert!(
        suspect_after >= Duration::from_millis(200),
        "suspect too early: {suspect_after:?}"
    );
    assert!(
        left_after >= Duration::from_millis(400),
        "gone too early: {left_after:?}"
    );
    assert!(
        left_after < Duration::from_millis(1500),
        "gone too late: {left_after:?}"
    );
    assert!(!lists(&observer, child.id));

    // Resumed, it re-describes its seed, which admits it again.
    let resumed = Instant::now();
    signal(child.child.id(), "CONT");
    next_peer_event(
        &mut events,
        "the child to rejoin",
        Duration::from_secs(5),
        |e| matches!(e, PeerEvent::Joined(info) if info.id == child.id),
    )
    .await;
    eprintln!("rejoined {:?} after SIGCONT", resumed.elapsed());
    wait_until("the rejoined child to be alive", WAIT, || {
        lists_alive(&observer, child.id)
    })
    .await;
    wait_known_by(&observer, child.id, observer.id()).await;
    // And it stays: its heartbeats reach the observer again.
    never(
        "the rejoined child to leave",
        Duration::from_millis(800),
        || !lists_alive(&observer, child.id),
    )
    .await;
    observer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_node_says_goodbye_and_exits_cleanly() {
    init_tracing();
    let mesh = unique_mesh();
    let observer = plain(local("observer", &mesh)).await;
    // A 1 s interval: a goodbye must beat both the 3-interval silence rule and the
    // 1-interval rule for a closed connection.
    let mut child = ChildNode::spawn(&child_env("leaver", &mesh, &observer, 1000), &[]);
    let id = child.id;
    wait_until("the observer to list the child", WAIT, || {
        lists_alive(&observer, id)
    })
    .await;
    wait_known_by(&observer, id, observer.id()).await;

    let mut events = observer.watch_peers();
    let asked = Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let code = child.terminate();
        (child, code)
    });
    let (reason, took) = wait_left(&mut events, id, asked).await;
    eprintln!("graceful leave seen after {took:?}");
    assert_eq!(reason, LeftReason::Goodbye);
    assert!(
        took < Duration::from_millis(1000),
        "a goodbye should be seen well within 3 intervals, took {took:?}"
    );
    assert!(!lists(&observer, id));
    let (_child, code) = within("the child to exit", WAIT, exit)
        .await
        .expect("terminate does not panic");
    assert_eq!(code, Some(0), "a SIGTERM'd node exits with code 0");
    observer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_different_meshes_ignore_each_other() {
    init_tracing();
    let (mesh_a, mesh_b) = (unique_mesh(), unique_mesh());
    let y = plain(local("y", &mesh_b)).await;
    let w = plain(local("w", &mesh_a)).await;
    let mut cfg = seeded("x", &mesh_a, &w);
    cfg.discovery.seeds.push(y.endpoints().rpc.clone());
    let x = plain(cfg).await;
    // The seeds work: x finds w, its own mesh's seed.
    wait_peers(&x, 1).await;
    wait_peers(&w, 1).await;
    let (xid, yid) = (x.id(), y.id());
    never(
        "x and y (of different meshes) to list each other",
        Duration::from_millis(1500),
        || lists(&x, yid) || lists(&y, xid) || !y.peers().is_empty(),
    )
    .await;
    assert_eq!(
        x.peers().iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![w.id()]
    );
    x.shutdown().await;
    y.shutdown().await;
    w.shutdown().await;
}

/// A provider with a fixed id, seeded by `seed`, whose handler answers `incarnation`.
async fn provider(mesh: &str, seed: &NodeHandle, id: NodeId, incarnation: u32) -> NodeHandle {
    let mut cfg = seeded("provider", mesh, seed);
    cfg.node.id = Some(id);
    Node::builder(cfg)
        .handle("model.which", move |_: (), _| async move {
            Ok::<_, Status>(incarnation)
        })
        .spawn()
        .await
        .expect("provider starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_restarted_with_its_id_on_new_ports_is_picked_up() {
    init_tracing();
    let mesh = unique_mesh();
    let observer = plain(local("observer", &mesh)).await;
    let id = NodeId::new();
    let first = provider(&mesh, &observer, id, 1).await;
    let old = first.endpoints().clone();
    wait_until("the observer to list the provider", WAIT, || {
        entry(&observer, id).is_some_and(|p| p.endpoints == old)
    })
    .await;
    let mut events = observer.watch_peers();
    first.shutdown().await;
    let (reason, _) = wait_left(&mut events, id, Instant::now()).await;
    assert_eq!(reason, LeftReason::Goodbye);

    let second = provider(&mesh, &observer, id, 2).await;
    let new = second.endpoints().clone();
    assert_ne!(new.rpc, old.rpc, "the restart got new ports");
    assert_ne!(new.publish, old.publish, "the restart got new ports");
    wait_until(
        "the observer to list the provider's new endpoints",
        WAIT,
        || entry(&observer, id).is_some_and(|p| p.endpoints == new && p.state == PeerState::Alive),
    )
    .await;
    let which: u32 = observer.request("model.which", &()).await.expect("ack");
    assert_eq!(which, 2, "requests go to the new incarnation");
    second.shutdown().await;
    observer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_restarted_abruptly_moves_before_it_expires() {
    init_tracing();
    let mesh = unique_mesh();
    let observer = plain(local("observer", &mesh)).await;
    let mut loaded = observer.subscribe("model.**").expect("pattern");
    let id = NodeId::new();
    let first = provider(&mesh, &observer, id, 1).await;
    let old = first.endpoints().clone();
    wait_until("the observer to list the provider", WAIT, || {
        entry(&observer, id).is_some_and(|p| p.endpoints == old)
    })
    .await;
    // No goodbye: the old incarnation just vanishes, and the new one (same id, new
    // ports) may well be described before the old one expires.
    drop(first);
    let second = provider(&mesh, &observer, id, 2).await;
    let new = second.endpoints().clone();
    assert_ne!(new.rpc, old.rpc, "the restart got new ports");
    wait_until(
        "the observer to list the provider's new endpoints",
        WAIT,
        || entry(&observer, id).is_some_and(|p| p.endpoints == new && p.state == PeerState::Alive),
    )
    .await;
    // Its events come through the new PUB endpoint...
    sync_events(&second, &mut loaded, "model.loaded").await;
    // ...and so do its heartbeats: it stays listed, at the new endpoints.
    never(
        "the restarted provider to leave or go back to its old endpoints",
        Duration::from_millis(1000),
        || !entry(&observer, id).is_some_and(|p| p.endpoints == new),
    )
    .await;
    let which: u32 = observer.request("model.which", &()).await.expect("ack");
    assert_eq!(which, 2, "requests go to the new incarnation");
    second.shutdown().await;
    observer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_never_lists_a_node_that_is_gone() {
    init_tracing();
    let mesh = unique_mesh();
    let a = plain(local("a", &mesh)).await;
    let b = plain(seeded("b", &mesh, &a)).await;
    let mut child = ChildNode::seeded("doomed", &mesh, &a.endpoints().rpc, &[]);
    let c = child.id;
    wait_peers(&a, 2).await;
    wait_peers(&b, 2).await;
    assert!(lists(&a, c) && lists(&b, c));

    let (mut ea, mut eb) = (a.watch_peers(), b.watch_peers());
    let killed = Instant::now();
    child.kill9();
    for (node, events) in [(&a, &mut ea), (&b, &mut eb)] {
        let (reason, took) = wait_left(events, c, killed).await;
        assert_eq!(reason, LeftReason::Expired);
        assert!(
            took < Duration::from_secs(3),
            "{} took {took:?}",
            node.name()
        );
        assert!(!lists(node, c), "{} still lists the dead node", node.name());
    }
    // Nor does it come back through an introduction (a stale describe `peers` list).
    never(
        "a dead node to be listed again",
        Duration::from_millis(1000),
        || {
            [&a, &b]
                .iter()
                .any(|n| lists(n, c) || n.describe().peers.iter().any(|p| p.id == c))
        },
    )
    .await;
    assert_eq!(
        a.peers().iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![b.id()]
    );
    assert_eq!(
        b.peers().iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![a.id()]
    );
    b.shutdown().await;
    a.shutdown().await;
}

/// A crashed node replaced by another (a new id) at the same ports, before the first
/// expires: the observer's SUB socket for the dead node reconnects by itself to the
/// same address, where the new node now publishes. The dead node must still leave the
/// table within its expiry (the new node's traffic is not its traffic), and each event of
/// the new node must arrive once, not once per SUB socket that reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_at_a_crashed_nodes_ports_neither_revives_it_nor_doubles_events() {
    init_tracing();
    let mesh = unique_mesh();
    let observer = plain(local("observer", &mesh)).await;
    let mut events = observer.subscribe("model.**").expect("pattern");
    // A 1 s heartbeat: the observer gives the dead node a second after its connection
    // drops, which is ample time for the new node to take the ports.
    let mut first = seeded("first", &mesh, &observer);
    first.liveness.heartbeat_ms = 1000;
    let first = plain(first).await;
    let old_id = first.id();
    let ports = first.endpoints().clone();
    wait_until("the observer to list the first node", WAIT, || {
        entry(&observer, old_id).is_some()
    })
    .await;
    // Let the observer's SUB for `first` connect and subscribe.
    sync_events(&first, &mut events, "model.probe").await;
    drop(first); // no goodbye
    let mut config = seeded("second", &mesh, &observer);
    config.network.pub_port = port(&ports.publish);
    config.network.rpc_port = port(&ports.rpc);
    let second = within("the second node to bind the first's ports", WAIT, async {
        loop {
            match Node::builder(config.clone()).spawn().await {
                Ok(node) => return node,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(second.endpoints().publish, ports.publish);
    wait_until("the observer to list the second node", WAIT, || {
        entry(&observer, second.id()).is_some_and(|p| p.state == PeerState::Alive)
    })
    .await;
    wait_until(
        "the dead first node to leave",
        Duration::from_secs(4),
        || entry(&observer, old_id).is_none(),
    )
    .await;
    sync_events(&second, &mut events, "model.probe").await;
    for i in 0..50u32 {
        second.publish("model.loaded", &i).await.expect("published");
    }
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
        if ev.topic().as_str() == "model.loaded" {
            seen.push(ev.decode::<u32>().expect("a number"));
        }
    }
    assert_eq!(
        seen,
        (0..50).collect::<Vec<_>>(),
        "each event once, in order"
    );
    second.shutdown().await;
    observer.shutdown().await;
}

fn port(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("tcp://host:port")
}
