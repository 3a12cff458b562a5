//! Events between real nodes on loopback: pattern fan-out, ordering, bounded queues with
//! counted drops, and sequence gaps.

mod common;

use std::time::Duration;

use common::*;
use mlmesh::{Config, Event, Node, NodeHandle, Overflow, PublishError, Status, Subscription};

/// A publisher and a subscriber seeded by it, each with `tune` applied to its config
/// (given the node's role: `"pub"` or `"sub"`), and each listing the other.
async fn pair(mesh: &str, tune: impl Fn(&str, &mut Config)) -> (NodeHandle, NodeHandle) {
    let mut pc = local("publisher", mesh);
    tune("pub", &mut pc);
    let publisher = plain(pc).await;
    let mut sc = seeded("subscriber", mesh, &publisher);
    tune("sub", &mut sc);
    let subscriber = plain(sc).await;
    wait_peers(&publisher, 1).await;
    wait_peers(&subscriber, 1).await;
    (publisher, subscriber)
}

/// A pair for runs of many events on `bulk.*`: the subscriber has room for a whole run
/// (these tests are about the network path, not a slow reader), subscribes to `bulk.**`
/// and has received a probe from the publisher; `tune_pub` applies to the publisher.
async fn bulk_pair(
    mesh: &str,
    tune_pub: impl Fn(&mut Config),
) -> (NodeHandle, NodeHandle, Subscription) {
    let (publisher, subscriber) = pair(mesh, |role, c| match role {
        "pub" => tune_pub(c),
        _ => c.limits.subscription_queue = 16_384,
    })
    .await;
    let mut sub = subscriber.subscribe("bulk.**").expect("pattern");
    sync_events(&publisher, &mut sub, "bulk.probe").await;
    (publisher, subscriber, sub)
}

/// Reads `sub` in a task until an event on `fence` arrives, keeping the events on `topic`
/// (others are probes and are skipped).
fn collect_until_fence(
    mut sub: Subscription,
    topic: &'static str,
    fence: &'static str,
) -> tokio::task::JoinHandle<(Vec<Event>, Subscription)> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(ev) = sub.recv().await {
            match ev.topic().as_str() {
                t if t == fence => break,
                t if t == topic => got.push(ev),
                _ => {}
            }
        }
        (got, sub)
    })
}

/// Publishes `fence` every 50 ms until `reader` has seen one (a fence may be dropped by a
/// full publish queue), and returns what the reader collected. Events are delivered in
/// order per publisher, so everything published before the fence has arrived by then.
async fn fence(
    publisher: &NodeHandle,
    fence: &str,
    reader: tokio::task::JoinHandle<(Vec<Event>, Subscription)>,
) -> (Vec<Event>, Subscription) {
    within("the fence to arrive", WAIT, async {
        while !reader.is_finished() {
            publisher
                .publish(fence, &())
                .await
                .expect("fence published");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    reader.await.expect("reader does not panic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_patterns_fan_out_to_exactly_the_matching_subscribers() {
    init_tracing();
    let mesh = unique_mesh();
    let publisher = plain(local("publisher", &mesh)).await;
    let patterns = ["train.*.ended", "train.**", "**"];
    let mut subs = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let node = plain(seeded(&format!("sub{i}"), &mesh, &publisher)).await;
        let sub = node.subscribe(pattern).expect("valid pattern");
        let probe = node.subscribe("probe.**").expect("valid pattern");
        subs.push((node, sub, probe));
    }
    wait_peers(&publisher, 3).await;
    for (node, sub, probe) in &mut subs {
        wait_until("the subscriber to list the publisher", WAIT, || {
            node.peers().iter().any(|p| p.id == publisher.id())
        })
        .await;
        sync_events(&publisher, probe, "probe.sync").await;
        // `**` sees the probes too; they were published before anything counted here.
        while sub.try_recv().is_some() {}
    }

    for (topic, n) in [
        ("train.epoch.ended", 1u32),
        ("train.run.started", 2),
        ("other.x", 3),
    ] {
        publisher.publish(topic, &n).await.expect("published");
    }
    // A fence every pattern matches: in-order delivery means that once it is in, all
    // that was published before it is in too.
    publisher
        .publish("train.fence.ended", &0u32)
        .await
        .expect("published");

    let expected: [&[(&str, u32)]; 3] = [
        &[("train.epoch.ended", 1)],
        &[("train.epoch.ended", 1), ("train.run.started", 2)],
        &[
            ("train.epoch.ended", 1),
            ("train.run.started", 2),
            ("other.x", 3),
        ],
    ];
    for ((node, sub, _), want) in subs.iter_mut().zip(expected) {
        let mut got = Vec::new();
        within("the fence to arrive", WAIT, async {
            loop {
                let ev = sub.recv().await.expect("subscription open");
                assert_eq!(ev.source(), publisher.id());
                assert_eq!(ev.missed, 0, "{ev:?}");
                if ev.topic().as_str() == "train.fence.ended" {
                    break;
                }
                if ev.topic().as_str().starts_with("probe.") {
                    continue;
                }
                let n: u32 = ev.decode().expect("payload");
                got.push((ev.topic().as_str().to_owned(), n));
            }
        })
        .await;
        let want: Vec<(String, u32)> = want.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        assert_eq!(got, want, "{} ({})", node.name(), sub.pattern().as_str());
        assert!(sub.try_recv().is_none(), "nothing after the fence");
    }

    for (node, _, _) in subs {
        node.shutdown().await;
    }
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_arrive_in_order_without_loss() {
    init_tracing();
    let mesh = unique_mesh();
    let (publisher, subscriber, sub) = bulk_pair(&mesh, |_| {}).await;
    let reader = collect_until_fence(sub, "bulk.data", "bulk.fence");

    const N: u64 = 10_000;
    for i in 0..N {
        publisher.publish("bulk.data", &i).await.expect("published");
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    let (got, sub) = fence(&publisher, "bulk.fence", reader).await;

    assert_eq!(got.len() as u64, N, "every event arrives");
    for (i, ev) in got.iter().enumerate() {
        let i = i as u64;
        assert_eq!(ev.seq(), i + 1, "in order, none skipped");
        assert_eq!(ev.missed, 0, "{ev:?}");
        assert_eq!(ev.decode::<u64>().expect("payload"), i);
    }
    assert_eq!(sub.dropped(), 0);
    assert_eq!(publisher.stats().events_dropped, 0);
    let s = subscriber.stats();
    assert_eq!(s.events_missed, 0, "{s:?}");
    assert_eq!(s.subscription_dropped, 0, "{s:?}");
    assert!(s.events_received >= N, "{s:?}");
    subscriber.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_drops_show_as_sequence_gaps_that_add_up() {
    init_tracing();
    let mesh = unique_mesh();
    let (publisher, subscriber) = pair(&mesh, |role, c| match role {
        "pub" => {
            c.limits.publish_queue = 8;
            c.limits.publish_overflow = Overflow::DropNewest;
        }
        _ => c.limits.subscription_queue = 32_768,
    })
    .await;
    let mut sub = subscriber.subscribe("flood.**").expect("pattern");
    sync_events(&publisher, &mut sub, "flood.probe").await;
    let reader = collect_until_fence(sub, "flood.data", "flood.fence");
    let dropped_before = publisher.stats().events_dropped;
    let missed_before = subscriber.stats().events_missed;

    const N: u64 = 20_000;
    // A tight loop: publish never waits under DropNewest, so the queue overflows.
    for i in 0..N {
        publisher.publish("flood.data", &i).await.expect("accepted");
    }
    let dropped = publisher.stats().events_dropped - dropped_before;
    let (got, sub) = fence(&publisher, "flood.fence", reader).await;

    assert!(dropped > 0, "a queue of 8 overflows under a tight loop");
    assert!(!got.is_empty(), "some events get through");
    let received = got.len() as u64;
    let missed: u64 = got.iter().map(|e| e.missed).sum();
    let (first, last) = (got[0].seq(), got[got.len() - 1].seq());
    eprintln!("published {N}, dropped {dropped}, received {received}, gaps {missed}, seq {first}..={last}");
    assert!(
        got.windows(2).all(|w| w[1].seq() > w[0].seq()),
        "seq strictly increases"
    );
    for ev in &got {
        // The payload is the loop index, and seq counts dropped events too.
        assert_eq!(ev.decode::<u64>().expect("payload") + 1, ev.seq());
    }
    assert_eq!(got[0].missed, 0, "the first event seen counts no gap");
    assert!(missed > 0, "drops show as gaps");
    assert_eq!(first, 1, "the subscriber was connected before the flood");
    assert_eq!(
        last - first + 1,
        received + missed,
        "every seq in the range is either received or counted missed"
    );
    // Nothing was lost beyond what the publisher counted: each drop is a gap, or lies
    // after the last event received.
    assert_eq!(received + dropped, N);
    assert_eq!(missed + (N - last), dropped);
    assert_eq!(
        subscriber.stats().events_missed - missed_before,
        missed,
        "the node's counter agrees with the events"
    );
    assert_eq!(sub.dropped(), 0);
    subscriber.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscription_drops_and_counts_while_the_node_stays_responsive() {
    init_tracing();
    let mesh = unique_mesh();
    let publisher = Node::builder(local("publisher", &mesh))
        .handle("echo.say", |s: String, _| async move { Ok::<_, Status>(s) })
        .spawn()
        .await
        .expect("publisher starts");
    let mut cfg = seeded("subscriber", &mesh, &publisher);
    cfg.limits.subscription_queue = 4;
    let subscriber = plain(cfg).await;
    wait_peers(&subscriber, 1).await;
    let mut flood = subscriber.subscribe("flood.**").expect("pattern");
    let mut probe = subscriber.subscribe("probe.**").expect("pattern");
    sync_events(&publisher, &mut probe, "probe.sync").await;
    // Probes went to `probe` only; `flood` is empty and nobody reads it now.
    assert!(flood.try_recv().is_none());

    const N: u64 = 1000;
    for i in 0..N {
        publisher
            .publish("flood.data", &i)
            .await
            .expect("published");
    }
    // Once a later event is in, all 1000 have been dispatched.
    sync_events(&publisher, &mut probe, "probe.fence").await;

    assert_eq!(
        flood.dropped(),
        N - 4,
        "all but the 4 buffered were dropped"
    );
    let s = subscriber.stats();
    assert!(s.subscription_dropped >= N - 4, "{s:?}");
    assert_eq!(s.events_missed, 0, "the network lost nothing: {s:?}");
    assert_eq!(publisher.stats().events_dropped, 0);
    // The buffer kept the oldest.
    let kept: Vec<u64> = std::iter::from_fn(|| flood.try_recv())
        .map(|e| e.seq())
        .collect();
    assert_eq!(kept, vec![1, 2, 3, 4]);

    // Responsive throughout: instructions, the peer table, and events again once read.
    let reply: String = within(
        "a request",
        WAIT,
        subscriber.request("echo.say", &"still here"),
    )
    .await
    .expect("ack");
    assert_eq!(reply, "still here");
    assert!(subscriber.peers().iter().any(|p| p.id == publisher.id()));
    publisher
        .publish("flood.data", &N)
        .await
        .expect("published");
    let ev = within("an event after draining", WAIT, flood.recv())
        .await
        .expect("subscription open");
    assert_eq!(ev.seq(), N + 1);
    subscriber.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_its_own_events() {
    init_tracing();
    let mesh = unique_mesh();
    let (a, b) = pair(&mesh, |_, _| {}).await;
    let mut own = a.subscribe("local.**").expect("pattern");
    let mut remote = b.subscribe("local.**").expect("pattern");
    sync_events(&a, &mut remote, "local.probe").await;
    // The probes were a's own events: a saw every one of them.
    let probes = std::iter::from_fn(|| own.try_recv()).count();
    assert!(probes >= 1);

    a.publish("local.ping", &"hello").await.expect("published");
    a.publish("elsewhere.pong", &"not for us")
        .await
        .expect("published");
    // Local delivery needs no network: it is there when publish returns.
    let ev = own.try_recv().expect("own event delivered locally");
    assert_eq!(ev.topic().as_str(), "local.ping");
    assert_eq!(ev.source(), a.id());
    assert_eq!(ev.seq(), 1);
    assert_eq!(ev.missed, 0);
    assert_eq!(ev.decode::<String>().expect("payload"), "hello");
    // The peer gets it over the network; a gets no second copy meanwhile.
    let ev = within("the peer's copy", WAIT, async {
        loop {
            let ev = remote.recv().await.expect("open");
            if ev.topic().as_str() == "local.ping" {
                return ev;
            }
        }
    })
    .await;
    assert_eq!(ev.source(), a.id());
    assert!(own.try_recv().is_none(), "exactly one local copy");
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_and_invalid_topics_are_refused() {
    init_tracing();
    let mesh = unique_mesh();
    let node = plain(local("node", &mesh)).await;
    let mut all = node.subscribe("**").expect("pattern");

    match node.publish("sys.heartbeat", &()).await {
        Err(PublishError::Reserved(t)) => assert_eq!(t.as_str(), "sys.heartbeat"),
        other => panic!("sys.heartbeat: {other:?}"),
    }
    match node.publish_raw("sys.custom", bytes_nil()).await {
        Err(PublishError::Reserved(t)) => assert_eq!(t.as_str(), "sys.custom"),
        other => panic!("sys.custom: {other:?}"),
    }
    for bad in ["", "Train.Ended", "a..b", ".a", "a.", "a b", "a.*", "a-b"] {
        match node.publish(bad, &()).await {
            Err(PublishError::Topic(_)) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert!(node.subscribe("a.**.b").is_err(), "** must be last");
    assert!(
        node.subscribe("a.b*").is_err(),
        "wildcards are whole segments"
    );
    assert_eq!(node.stats().events_published, 0, "nothing refused was sent");
    assert!(all.try_recv().is_none(), "nothing refused was delivered");

    // Only the exact `sys.` prefix is reserved.
    node.publish("system.ok", &()).await.expect("not reserved");
    assert_eq!(
        all.try_recv().map(|e| e.topic().as_str().to_owned()),
        Some("system.ok".to_owned())
    );
    assert_eq!(node.stats().events_published, 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_nobody_watches_is_not_encoded_but_takes_its_seq() {
    init_tracing();
    let mesh = unique_mesh();
    let node = plain(local("node", &mesh)).await;
    let encoded = std::sync::atomic::AtomicUsize::new(0);
    let publish = |n: u32| {
        let encoded = &encoded;
        let node = &node;
        async move {
            node.publish_with("quiet.tick", || {
                encoded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                mlmesh::protocol::to_payload(&n)
            })
            .await
            .expect("published")
        }
    };
    for n in 1..=3 {
        publish(n).await;
    }
    assert_eq!(encoded.load(std::sync::atomic::Ordering::Relaxed), 0);
    let stats = node.stats();
    assert_eq!((stats.events_published, stats.events_unsubscribed), (3, 3));

    // Watched (here by the node itself): encoded, and numbered after the unwatched ones.
    let mut sub = node.subscribe("quiet.*").expect("pattern");
    publish(4).await;
    assert_eq!(encoded.load(std::sync::atomic::Ordering::Relaxed), 1);
    let ev = sub.try_recv().expect("delivered locally");
    assert_eq!((ev.seq(), ev.decode::<u32>().expect("payload")), (4, 4));
    // Other topics stay unwatched.
    node.publish_with("loud.tick", || panic!("not encoded"))
        .await
        .expect("published");
    node.shutdown().await;
}

/// A MessagePack nil.
fn bytes_nil() -> bytes::Bytes {
    bytes::Bytes::from_static(&[0xc0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_block_policy_waits_instead_of_dropping() {
    init_tracing();
    let mesh = unique_mesh();
    let (publisher, subscriber, sub) = bulk_pair(&mesh, |c| {
        c.limits.publish_queue = 2;
        c.limits.publish_overflow = Overflow::Block;
    })
    .await;
    let reader = collect_until_fence(sub, "bulk.data", "bulk.fence");

    const N: u64 = 5_000;
    let published_before = publisher.stats().events_published;
    within("publishing under backpressure", WAIT, async {
        for i in 0..N {
            publisher.publish("bulk.data", &i).await.expect("published");
        }
    })
    .await;
    let s = publisher.stats();
    assert_eq!(s.events_dropped, 0, "{s:?}");
    assert_eq!(s.events_published - published_before, N);
    let (got, _) = fence(&publisher, "bulk.fence", reader).await;
    let seqs: Vec<u64> = got.iter().map(|e| e.seq()).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "all arrive, in order");
    assert!(got.iter().all(|e| e.missed == 0));
    assert_eq!(subscriber.stats().events_missed, 0);
    subscriber.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_right_after_publishing_delivers_everything_before_its_goodbye() {
    init_tracing();
    let mesh = unique_mesh();
    let (publisher, subscriber, mut sub) = bulk_pair(&mesh, |_| {}).await;
    let mut peers = subscriber.watch_peers();
    let id = publisher.id();

    // A burst, then shutdown at once: most of it is still queued when the node leaves.
    const N: u64 = 3_000;
    for i in 0..N {
        publisher.publish("bulk.data", &i).await.expect("published");
    }
    let stats = publisher.stats();
    publisher.shutdown().await;
    assert_eq!(stats.events_dropped, 0, "{stats:?}");

    // The goodbye came after the burst: by the time the peer is gone, all of it is in.
    next_peer_event(
        &mut peers,
        "the publisher's goodbye",
        WAIT,
        |ev| matches!(ev, mlmesh::PeerEvent::Left(p, mlmesh::LeftReason::Goodbye) if *p == id),
    )
    .await;
    let mut seqs = Vec::new();
    while let Some(ev) = sub.try_recv() {
        if ev.topic().as_str() == "bulk.data" {
            assert_eq!(ev.missed, 0, "{ev:?}");
            seqs.push(ev.seq());
        }
    }
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "every event, in order");
    subscriber.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_that_waits_for_its_subscribers_reaches_them_with_its_first_event() {
    init_tracing();
    let mesh = unique_mesh();
    let listener = plain(local("listener", &mesh)).await;
    let mut sub = listener.subscribe("first.*").expect("pattern");
    // Fresh publishers, one event each and gone: no probe can warm their PUB up first.
    for round in 0..5u32 {
        let node = plain(seeded("short-lived", &mesh, &listener)).await;
        // Publish as soon as the listener is in the table: it has not connected yet.
        let mut peers = node.watch_peers();
        if node.peers().is_empty() {
            next_peer_event(&mut peers, "the listener to join", WAIT, |ev| {
                matches!(ev, mlmesh::PeerEvent::Joined(_))
            })
            .await;
        }
        assert_eq!(node.wait_for_subscribers(WAIT).await, 0, "round {round}");
        node.publish("first.event", &round)
            .await
            .expect("published");
        node.shutdown().await;
        let ev = within("the first event", WAIT, sub.recv())
            .await
            .expect("subscription open");
        assert_eq!(ev.decode::<u32>().expect("payload"), round);
        assert_eq!(ev.seq(), 1);
    }
    listener.shutdown().await;
}
