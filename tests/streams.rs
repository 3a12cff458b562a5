//! Request streams between real nodes on loopback: one answer per request, the window,
//! the node's in-flight slots, deadlines per request, errors per request, a provider left
//! once suspect and then killed with requests in flight, and a provider that is the node
//! itself.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mlmesh::{Code, Node, NodeHandle, PeerState, Status, StreamOptions};

/// A provider of `math.double` (odd numbers refused with INVALID_ARGUMENT) and
/// `work.sleep` (sleeps the payload's milliseconds), and a caller seeded with it.
async fn provider_and_caller() -> (NodeHandle, NodeHandle) {
    let (provider, caller, _) = counting_provider_and_caller().await;
    (provider, caller)
}

/// The same, with the count of `work.sleep` requests that reached the handler.
async fn counting_provider_and_caller() -> (NodeHandle, NodeHandle, Arc<AtomicUsize>) {
    let mesh = unique_mesh();
    let slept = Arc::new(AtomicUsize::new(0));
    let count = slept.clone();
    let provider = Node::builder(local("provider", &mesh))
        .handle("math.double", |x: u64, _| async move {
            if x % 2 == 1 {
                return Err(
                    Status::error(Code::InvalidArgument, format!("{x} is odd")).with_field("x")
                );
            }
            Ok(x * 2)
        })
        .handle("work.sleep", move |ms: u64, _| {
            count.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Status>(ms)
            }
        })
        .spawn()
        .await
        .expect("provider starts");
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;
    (provider, caller, slept)
}

/// An `mlmesh-node --echo demo.echo` process with a heartbeat of 1 s: suspect 2 s after
/// it stops, gone 1 s later, wide enough windows to act in whatever the load.
fn slow_heartbeat_echo(name: &str, mesh: &str, seed: &str) -> ChildNode {
    ChildNode::seeded_beating(name, mesh, seed, 1000, &["--echo", "demo.echo"])
}

async fn shutdown(nodes: [NodeHandle; 2]) {
    within(
        "the nodes to shut down",
        WAIT,
        futures::future::join_all(nodes.map(NodeHandle::shutdown)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_one_answer_its_own() {
    init_tracing();
    let (provider, caller) = provider_and_caller().await;
    let mut stream = caller
        .request_stream("math.double", StreamOptions::default().window(64))
        .expect("a stream");
    let n = 5_000u64;
    let mut sent: HashMap<_, u64> = HashMap::new();
    let mut next = 0..n;
    let mut answers = 0;
    within("5,000 requests, 64 in flight", WAIT, async {
        while stream.in_flight() < stream.window() {
            let x = next.next().expect("more than a window");
            sent.insert(stream.send(&x).expect("queued"), x);
        }
        while let Some(answer) = stream.next::<u64>().await {
            answers += 1;
            let x = sent
                .remove(&answer.id)
                .expect("an answer to a request sent, once");
            match answer.result {
                Ok(y) => assert_eq!(y, 2 * x),
                Err(status) => {
                    assert_eq!(x % 2, 1, "{x} refused: {status}");
                    assert_eq!(status.code, Code::InvalidArgument);
                    assert_eq!(status.field.as_deref(), Some("x"));
                }
            }
            if let Some(x) = next.next() {
                sent.insert(stream.send(&x).expect("room for one per answer"), x);
            }
        }
    })
    .await;
    assert_eq!(answers, n);
    assert!(sent.is_empty(), "{} requests unanswered", sent.len());
    assert_eq!(stream.in_flight(), 0);
    drop(stream);
    shutdown([caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_refuses_until_an_answer_is_read() {
    init_tracing();
    let (provider, caller) = provider_and_caller().await;
    let mut stream = caller
        .request_stream("math.double", StreamOptions::default().window(3))
        .expect("a stream");
    for x in [2u64, 4, 6] {
        stream.send(&x).expect("within the window");
    }
    let err = stream.send(&8u64).expect_err("the window is full");
    assert_eq!(err.code, Code::ResourceExhausted, "{err}");
    // Answered but not read: still in the window.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.flush();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        stream.send(&8u64).unwrap_err().code,
        Code::ResourceExhausted
    );
    let first = within("an answer", WAIT, stream.next::<u64>())
        .await
        .expect("three in flight");
    assert_eq!(first.result.expect("doubled"), 4);
    stream.send(&8u64).expect("room after one answer read");
    let mut rest = Vec::new();
    while let Some(a) = within("the answers", WAIT, stream.next::<u64>()).await {
        rest.push(a.result.expect("doubled"));
    }
    rest.sort_unstable();
    assert_eq!(rest, [8, 12, 16]);
    drop(stream);
    shutdown([caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holds_its_window_of_the_nodes_in_flight_slots() {
    init_tracing();
    let mesh = unique_mesh();
    let mut config = local("caller", &mesh);
    config.limits.max_in_flight = 100;
    let caller = plain(config).await;
    let err = caller
        .request_stream("math.double", StreamOptions::default().window(0))
        .expect_err("window 0");
    assert_eq!(err.code, Code::InvalidArgument);
    assert_eq!(err.field.as_deref(), Some("window"));
    let err = caller
        .request_stream("math.double", StreamOptions::default().window(101))
        .expect_err("over max_in_flight");
    assert_eq!(err.field.as_deref(), Some("window"));

    let first = caller
        .request_stream("math.double", StreamOptions::default().window(60))
        .expect("60 of 100 slots");
    let err = caller
        .request_stream("math.double", StreamOptions::default().window(60))
        .expect_err("40 slots left");
    assert_eq!(err.code, Code::ResourceExhausted, "{err}");
    drop(first);
    let _second = caller
        .request_stream("math.double", StreamOptions::default().window(60))
        .expect("the first stream's slots came back");

    let err = caller
        .request_stream("sys.ping", StreamOptions::default().window(1))
        .expect_err("sys. without a target");
    assert_eq!(err.code, Code::InvalidArgument);
    assert_eq!(err.field.as_deref(), Some("type"));
    drop(_second);
    within("the caller to shut down", WAIT, caller.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_provider_send_is_no_responders_at_once() {
    init_tracing();
    let caller = plain(local("caller", &unique_mesh())).await;
    let mut stream = caller
        .request_stream("math.double", StreamOptions::default())
        .expect("a stream before any provider");
    let err = stream.send(&2u64).expect_err("nobody serves it");
    assert_eq!(err.code, Code::NoResponders, "{err}");
    assert_eq!(stream.in_flight(), 0);
    assert!(within("no answer", WAIT, stream.next::<u64>())
        .await
        .is_none());
    drop(stream);
    within("the caller to shut down", WAIT, caller.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_ends_at_its_own_deadline_and_next_is_cancel_safe() {
    init_tracing();
    let (provider, caller) = provider_and_caller().await;
    let mut stream = caller
        .request_stream(
            "work.sleep",
            StreamOptions::default().deadline(Duration::from_millis(400)),
        )
        .expect("a stream");
    let slow = stream.send(&5_000u64).expect("queued");
    let fast = stream.send(&0u64).expect("queued");
    let t = Instant::now();
    let first = within("the fast answer", WAIT, stream.next::<u64>())
        .await
        .expect("two in flight");
    assert_eq!(first.id, fast);
    assert_eq!(first.result.expect("no sleep"), 0);
    // A wait given up loses nothing: the answer is there for the next one.
    let gave_up = tokio::time::timeout(Duration::from_millis(50), stream.next::<u64>()).await;
    assert!(gave_up.is_err(), "the slow request cannot be answered yet");
    let second = within("the slow answer", WAIT, stream.next::<u64>())
        .await
        .expect("one still in flight");
    let waited = t.elapsed();
    assert_eq!(second.id, slow);
    let err = second
        .result
        .expect_err("the handler outlives the deadline");
    assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
    assert!(
        waited >= Duration::from_millis(390) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    assert!(stream.next::<u64>().await.is_none());
    drop(stream);
    shutdown([caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_serves_the_topic_itself_answers_its_own_stream() {
    init_tracing();
    let node = Node::builder(local("alone", &unique_mesh()))
        .handle(
            "math.double",
            |x: u64, _| async move { Ok::<_, Status>(x * 2) },
        )
        .spawn()
        .await
        .expect("node starts");
    let mut stream = node
        .request_stream("math.double", StreamOptions::default().window(10))
        .expect("a stream");
    let mut ids = HashMap::new();
    for x in 0..10u64 {
        ids.insert(stream.send(&x).expect("queued"), x);
    }
    let mut sum = 0;
    while let Some(a) = within("local answers", WAIT, stream.next::<u64>()).await {
        let x = ids.remove(&a.id).expect("its own request");
        assert_eq!(a.result.expect("doubled"), 2 * x);
        sum += x;
    }
    assert_eq!(sum, 45);
    let not_msgpack = bytes::Bytes::from_static(&[0xc1]);
    let err = stream.send_raw(not_msgpack).expect_err("not a payload");
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    let too_big = serde_bytes::ByteBuf::from(vec![0u8; 2 << 20]);
    let err = stream.send(&too_big).expect_err("over the size limit");
    assert_eq!(err.code, Code::TooLarge, "{err}");
    assert_eq!(stream.in_flight(), 0);
    drop(stream);
    within("the node to shut down", WAIT, node.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_leaves_a_suspect_provider_and_a_killed_one_cancels_what_it_held() {
    init_tracing();
    let mesh = unique_mesh();
    let caller = plain(local("caller", &mesh)).await;
    let seed = caller.endpoints().rpc.clone();
    let echo = ["--echo", "demo.echo"];
    let mut first = slow_heartbeat_echo("echo1", &mesh, &seed);
    wait_peers(&caller, 1).await;
    let mut stream = caller
        .request_stream(
            "demo.echo",
            StreamOptions::default().deadline(Duration::from_secs(20)),
        )
        .expect("a stream");
    stream.send(&"hello").expect("queued");
    let a = within("the first echo", WAIT, stream.next::<String>())
        .await
        .expect("in flight");
    assert_eq!(a.result.expect("echoed"), "hello");

    let second = ChildNode::seeded("echo2", &mesh, &seed, &echo);
    wait_peers(&caller, 2).await;
    // Stopped, the first provider takes requests into its socket and answers none.
    signal(first.child.id(), "STOP");
    let held: Vec<_> = (0..3)
        .map(|i| stream.send(&format!("held {i}")).expect("queued"))
        .collect();
    stream.flush();
    wait_until("the stopped provider to be suspect", WAIT, || {
        caller
            .peers()
            .iter()
            .any(|p| p.id == first.id && p.state == PeerState::Suspect)
    })
    .await;
    // Still in the table, but suspect: the next frame goes to the other provider.
    stream.send(&"again").expect("queued");
    let a = within(
        "an echo from the other provider",
        WAIT,
        stream.next::<String>(),
    )
    .await
    .expect("in flight");
    assert_eq!(a.result.expect("echoed"), "again");
    assert!(
        caller.peers().iter().any(|p| p.id == first.id),
        "answered while the stopped provider was still a peer"
    );

    first.kill9();
    for _ in 0..3 {
        let a = within("the held requests' answers", WAIT, stream.next::<String>())
            .await
            .expect("in flight");
        assert!(held.contains(&a.id));
        let err = a.result.expect_err("the provider died with them");
        assert_eq!(err.code, Code::Cancelled, "{err}");
    }
    assert!(stream.next::<String>().await.is_none());
    drop(stream);
    drop(second);
    within("the caller to shut down", WAIT, caller.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_alone_goes_out_at_once_and_one_that_expires_queued_never_does() {
    init_tracing();
    let (provider, caller, slept) = counting_provider_and_caller().await;
    let mut stream = caller
        .request_stream(
            "work.sleep",
            StreamOptions::default().deadline(Duration::from_millis(300)),
        )
        .expect("a stream");
    // Nothing else in flight: sent by `send` itself, without next() or flush() (SPEC 5.3).
    let first = stream.send(&600u64).expect("queued");
    wait_until("the lone request to reach the handler", WAIT, || {
        slept.load(Ordering::SeqCst) == 1
    })
    .await;
    // One in flight: this one waits for the next frame, and its deadline passes there.
    let queued = stream.send(&0u64).expect("queued");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut answers = HashMap::new();
    while let Some(a) = within("both answers", WAIT, stream.next::<u64>()).await {
        answers.insert(a.id, a.result.expect_err("both past their deadline"));
    }
    assert_eq!(answers[&first].code, Code::DeadlineExceeded);
    let late = &answers[&queued];
    assert_eq!(late.code, Code::DeadlineExceeded, "{late}");
    assert!(
        late.message.contains("before the request was sent"),
        "{late}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        slept.load(Ordering::SeqCst),
        1,
        "the expired request was sent"
    );
    drop(stream);
    shutdown([caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutting_down_answers_its_streams_requests() {
    init_tracing();
    let (provider, caller) = provider_and_caller().await;
    let mut stream = caller
        .request_stream(
            "work.sleep",
            StreamOptions::default().deadline(Duration::from_secs(30)),
        )
        .expect("a stream");
    let sent = stream.send(&5_000u64).expect("queued");
    let queued = stream.send(&5_000u64).expect("queued");
    stream.flush();
    let queued_later = stream.send(&0u64).expect("queued");
    within("the caller to shut down", WAIT, caller.clone().shutdown()).await;
    let err = stream.send(&0u64).expect_err("the node is down");
    assert_eq!(err.code, Code::Unavailable, "{err}");
    let mut answered = Vec::new();
    while let Some(a) = within("answers after the shutdown", WAIT, stream.next::<u64>()).await {
        let err = a.result.expect_err("the provider sleeps for 5 s");
        assert!(
            matches!(err.code, Code::Cancelled | Code::Unavailable),
            "{err}"
        );
        answered.push(a.id);
    }
    answered.sort_unstable();
    let mut expected = vec![sent, queued, queued_later];
    expected.sort_unstable();
    assert_eq!(answered, expected);
    drop(stream);
    within("the provider to shut down", WAIT, provider.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_timing_out_on_a_stopped_provider_does_not_keep_it_alive() {
    init_tracing();
    let mesh = unique_mesh();
    let caller = plain(local("caller", &mesh)).await;
    let seed = caller.endpoints().rpc.clone();
    let mut stopped = slow_heartbeat_echo("echo1", &mesh, &seed);
    wait_peers(&caller, 1).await;
    let mut stream = caller
        .request_stream(
            "demo.echo",
            StreamOptions::default().deadline(Duration::from_millis(200)),
        )
        .expect("a stream");
    signal(stopped.child.id(), "STOP");
    let t = Instant::now();
    // Deadlines every 200 ms, each answered by this node, not by the provider: its
    // liveness must run out as if nothing were sent (suspect after 2 s).
    while caller
        .peers()
        .iter()
        .any(|p| p.id == stopped.id && p.state == PeerState::Alive)
    {
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "the stopped provider stayed alive for {:?}",
            t.elapsed()
        );
        stream.send(&"anyone?").expect("still a provider");
        let a = within("an answer", WAIT, stream.next::<String>())
            .await
            .expect("in flight");
        let err = a.result.expect_err("the provider is stopped");
        assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
    }
    stopped.kill9();
    drop(stream);
    within("the caller to shut down", WAIT, caller.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_requests_count_in_its_providers_load_until_answered_or_dropped() {
    init_tracing();
    let (provider, caller) = provider_and_caller().await;
    let load = || caller.peers()[0].outstanding;
    let mut stream = caller
        .request_stream("work.sleep", StreamOptions::default().window(10))
        .expect("a stream");
    for ms in [0u64, 0, 0] {
        stream.send(&ms).expect("queued");
    }
    while let Some(a) = within("three quick answers", WAIT, stream.next::<u64>()).await {
        a.result.expect("slept 0 ms");
    }
    assert_eq!(load(), 0, "every answer read comes off the load");
    for _ in 0..5 {
        stream.send(&1_500u64).expect("queued");
    }
    stream.flush();
    assert_eq!(load(), 5, "five requests on the wire");
    drop(stream);
    assert_eq!(load(), 0, "a dropped stream's requests come off the load");
    shutdown([caller, provider]).await;
}
