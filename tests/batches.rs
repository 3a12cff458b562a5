//! Request and reply batches (SPEC 5.3): a node that advertises `batch` serves every
//! envelope of a request batch once and rejects a batch that does not decode as one bad
//! request; two nodes batch the calls they pipeline; and a node never sends a batch to a
//! provider that did not advertise batches, from calls or from a request stream.
//!
//! The raw clients are zmq.rs DEALERs, so that they can send what no node would.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use mlmesh::protocol::sys::{self, Describe, Endpoints, Served};
use mlmesh::protocol::{encode_batch, is_batch, to_payload, Body, Codec, Envelope, MessageId};
use mlmesh::{CallOptions, Code, Node, NodeId, Status, Topic};
use zeromq::{DealerSocket, PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

fn topic(s: &str) -> Topic {
    Topic::new(s).expect("valid topic")
}

/// Sends `[empty][body]` and reads reply messages until `n` replies came (each message
/// one envelope or a batch); returns the replies and whether any message was a batch.
async fn exchange(dealer: &mut DealerSocket, body: Vec<u8>, n: usize) -> (Vec<Envelope>, bool) {
    let mut msg = ZmqMessage::from(Bytes::new());
    msg.push_back(Bytes::from(body));
    dealer.send(msg).await.expect("DEALER sends");
    let codec = Codec::default();
    let mut replies = Vec::new();
    let mut batched = false;
    while replies.len() < n {
        let msg = within("a reply", WAIT, dealer.recv())
            .await
            .expect("receives");
        let frames = msg.into_vec();
        assert_eq!(frames.len(), 2, "[empty][replies]");
        assert!(frames[0].is_empty());
        batched |= is_batch(&frames[1]);
        replies.extend(codec.decode_frame(&frames[1]).expect("replies decode"));
    }
    (replies, batched)
}

/// A raw DEALER connected to `node`'s instruction socket.
async fn dealer_to(node: &mlmesh::NodeHandle) -> DealerSocket {
    let mut dealer = DealerSocket::new();
    dealer
        .connect(&node.endpoints().rpc)
        .await
        .expect("DEALER connects");
    dealer
}

fn reply_parts(env: &Envelope) -> (MessageId, &Status) {
    let Body::Reply { re, status } = &env.body else {
        panic!("answered with a {} envelope", env.kind());
    };
    (*re, status)
}

#[tokio::test]
async fn a_request_batch_gets_one_reply_per_envelope() {
    init_tracing();
    let node = Node::builder(local("target", &unique_mesh()))
        .handle_raw("demo.echo", |data: Bytes, _| async move { Ok(data) })
        .spawn()
        .await
        .expect("node starts");
    assert!(node.describe().batch, "a node advertises request batches");
    let mut dealer = dealer_to(&node).await;

    let codec = Codec::default();
    let me = NodeId::new();
    let payload = Bytes::from(to_payload(&"hello").expect("enc"));
    let echo = Envelope::request(topic("demo.echo"), me, 2000, payload.clone());
    let unknown = Envelope::request(topic("demo.nobody"), me, 2000, payload.clone());
    let event = Envelope::event(topic("demo.echo"), me, 1, payload.clone());
    let echo2 = Envelope::request(topic("demo.echo"), me, 2000, payload.clone());
    let parts: Vec<Vec<u8>> = [&echo, &unknown, &event, &echo2]
        .iter()
        .map(|e| codec.encode(e).expect("encodes"))
        .collect();
    let batch = encode_batch(parts.iter().map(|p| &p[..]));
    let (replies, batched) = exchange(&mut dealer, batch, 4).await;
    assert!(
        batched,
        "the replies to a batch that are ready at once come as a batch"
    );
    assert_eq!(replies.len(), 4, "exactly one reply per envelope");
    for (env, want) in [
        (&echo, Code::Ok),
        (&unknown, Code::Unimplemented),
        (&event, Code::InvalidArgument),
        (&echo2, Code::Ok),
    ] {
        let reply = replies
            .iter()
            .find(|r| reply_parts(r).0 == env.id)
            .unwrap_or_else(|| panic!("no reply to {}", env.id));
        assert_eq!(reply_parts(reply).1.code, want, "{}", env.topic);
        assert_eq!(reply.topic, env.topic);
        assert_eq!(reply.source, node.id());
        if want == Code::Ok {
            assert_eq!(reply.data, payload);
        }
    }

    // A single request on the same connection is answered singly, as always.
    let one = Envelope::request(topic("demo.echo"), me, 2000, payload.clone());
    let (replies, batched) = exchange(&mut dealer, codec.encode(&one).expect("enc"), 1).await;
    assert!(!batched);
    assert_eq!(reply_parts(&replies[0]).0, one.id);
    node.shutdown().await;
}

#[tokio::test]
async fn a_batch_that_does_not_decode_gets_one_error_reply_and_serves_none() {
    init_tracing();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let node = Node::builder(local("target", &unique_mesh()))
        .handle_raw("demo.echo", move |data: Bytes, _| {
            count.fetch_add(1, Ordering::Relaxed);
            async move { Ok(data) }
        })
        .spawn()
        .await
        .expect("node starts");
    let mut dealer = dealer_to(&node).await;
    let codec = Codec::default();
    let good = |n: u8| {
        let env = Envelope::request(
            topic("demo.echo"),
            NodeId::new(),
            2000,
            Bytes::from(vec![n]),
        );
        codec.encode(&env).expect("enc")
    };
    let mut v99 = Envelope::request(
        topic("demo.echo"),
        NodeId::new(),
        2000,
        Bytes::from(vec![1]),
    );
    v99.version = 99;
    let v99 = codec.encode(&v99).expect("enc");
    let (a, b) = (good(1), good(2));
    let mut cut = encode_batch([&a[..], &b[..]].into_iter());
    cut.truncate(cut.len() - 3);
    let mut more = encode_batch([&a[..]].into_iter());
    more[0] = 0x93;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an empty batch", vec![0x90]),
        ("a batch announcing more than it holds", more),
        ("a batch cut short", cut),
        (
            "a good request and one of v=99",
            encode_batch([&a[..], &v99[..]].into_iter()),
        ),
        (
            "a good request and garbage",
            encode_batch([&a[..], &[0xc1][..]].into_iter()),
        ),
    ];
    for (what, body) in cases {
        let (replies, batched) = exchange(&mut dealer, body, 1).await;
        assert!(!batched, "{what}");
        let (re, status) = reply_parts(&replies[0]);
        assert_eq!(re, MessageId::nil(), "{what}");
        assert_ne!(status.code, Code::Ok, "{what}: {status}");
        assert_eq!(replies[0].topic.as_str(), "sys.error", "{what}");
    }
    // Nothing more came (a second reply would be taken for this one), and nothing ran.
    let last = Bytes::from(good(3));
    let id = codec.decode(&last).expect("dec").id;
    let (replies, _) = exchange(&mut dealer, last.to_vec(), 1).await;
    assert_eq!(reply_parts(&replies[0]).0, id);
    assert_eq!(
        served.load(Ordering::Relaxed),
        1,
        "only the last, single request ran"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn pipelined_calls_between_nodes_are_each_answered() {
    init_tracing();
    let mesh = unique_mesh();
    let a = Node::builder(local("provider", &mesh))
        .handle_raw("demo.echo", |data: Bytes, _| async move { Ok(data) })
        .spawn()
        .await
        .expect("provider starts");
    let b = plain(seeded("caller", &mesh, &a)).await;
    wait_peers(&b, 1).await;
    let t = topic("demo.echo");
    let calls = (0..2000u32).map(|i| {
        let (b, t) = (b.clone(), t.clone());
        async move {
            let data = Bytes::from(to_payload(&i).expect("enc"));
            let reply = b
                .request_raw(&t, data.clone(), CallOptions::default())
                .await;
            (reply.expect("answered"), data)
        }
    });
    let results: Vec<_> = within(
        "2,000 calls, 200 at a time",
        WAIT,
        futures::stream::iter(calls).buffer_unordered(200).collect(),
    )
    .await;
    assert_eq!(results.len(), 2000);
    for (reply, data) in results {
        assert_eq!(reply, data, "each call gets its own reply");
    }
    b.shutdown().await;
    a.shutdown().await;
}

/// A provider of raw sockets that serves `sys.describe` (without `batch`) and echoes
/// `demo.echo`, noting whether any request frame was a batch.
async fn serve_without_batches(
    mut router: RouterSocket,
    describe: Describe,
    saw_batch: Arc<AtomicBool>,
) {
    let codec = Codec::default();
    while let Ok(msg) = router.recv().await {
        let mut frames = msg.into_vec();
        let Some(body) = frames.pop() else { continue };
        if is_batch(&body) {
            saw_batch.store(true, Ordering::Relaxed);
            continue;
        }
        let Ok(request) = codec.decode(&body) else {
            continue;
        };
        let (status, data) = match request.topic.as_str() {
            sys::DESCRIBE => (
                Status::ok(),
                Bytes::from(to_payload(&describe).expect("enc")),
            ),
            "demo.echo" => (Status::ok(), request.data.clone()),
            _ => (Status::error(Code::Unimplemented, "a fake"), Bytes::new()),
        };
        let reply = Envelope::reply_to(&request, describe.id, status, data);
        frames.push(codec.encode(&reply).expect("encode").into());
        let _ = router
            .send(ZmqMessage::try_from(frames).expect("frames"))
            .await;
    }
}

#[tokio::test]
async fn a_provider_that_does_not_advertise_batches_never_gets_one() {
    init_tracing();
    let mesh = unique_mesh();
    let mut router = RouterSocket::new();
    let rpc = router.bind("tcp://127.0.0.1:0").await.expect("bind ROUTER");
    let mut publisher = PubSocket::new();
    let publish = publisher.bind("tcp://127.0.0.1:0").await.expect("bind PUB");
    let describe = Describe {
        id: NodeId::new(),
        name: "old".into(),
        mesh: mesh.clone(),
        protocol: 1,
        version: "fake/0.1".into(),
        roles: vec![],
        serves: vec![Served {
            topic: "demo.echo".into(),
            schema: 1,
        }],
        endpoints: Endpoints {
            publish: publish.to_string(),
            rpc: rpc.to_string(),
        },
        heartbeat_ms: 60_000,
        started_ms: 0,
        peers: vec![],
        batch: false,
    };
    let saw_batch = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(serve_without_batches(router, describe, saw_batch.clone()));
    let mut config = local("caller", &mesh);
    config.discovery.seeds = vec![rpc.to_string()];
    config.discovery.seed_interval_ms = 200;
    let b = plain(config).await;
    wait_peers(&b, 1).await;
    let t = topic("demo.echo");
    let calls = (0..500u32).map(|i| {
        let (b, t) = (b.clone(), t.clone());
        async move {
            let data = Bytes::from(to_payload(&i).expect("enc"));
            b.request_raw(&t, data.clone(), CallOptions::default())
                .await
                .map(|reply| (reply, data))
        }
    });
    let results: Vec<_> = within(
        "500 calls, 100 at a time",
        WAIT,
        futures::stream::iter(calls).buffer_unordered(100).collect(),
    )
    .await;
    let answered: HashSet<Bytes> = results
        .into_iter()
        .map(|r| {
            let (reply, data) = r.expect("answered");
            assert_eq!(reply, data);
            reply
        })
        .collect();
    assert_eq!(answered.len(), 500);
    // A request stream, 100 in flight, sends them one per message too.
    let mut stream = b
        .request_stream(&t, mlmesh::StreamOptions::default().window(100))
        .expect("a stream");
    let mut answered = HashSet::new();
    let mut next = 0..500u32;
    within("500 requests of a stream, 100 in flight", WAIT, async {
        for i in next.by_ref().take(100) {
            stream.send(&i).expect("queued");
        }
        while let Some(answer) = stream.next::<u32>().await {
            assert!(answered.insert(answer.result.expect("echoed")));
            if let Some(i) = next.next() {
                stream.send(&i).expect("queued");
            }
        }
    })
    .await;
    assert_eq!(answered.len(), 500);
    assert!(
        !saw_batch.load(Ordering::Relaxed),
        "a batch went to a provider without `batch`"
    );
    drop(stream);
    b.shutdown().await;
    server.abort();
    drop(publisher);
}
