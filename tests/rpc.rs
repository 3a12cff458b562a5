//! Instructions and acks between real nodes on loopback: routing, deadlines, the
//! standard error codes, retries, broadcast, restarts and graceful shutdown.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use mlmesh::protocol::sys::{Empty, Pong};
use mlmesh::{CallOptions, Code, Ctx, Node, NodeBuilder, NodeHandle, NodeId, PeerState, Status};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Call options with a deadline of `ms` milliseconds.
fn deadline(ms: u64) -> CallOptions {
    CallOptions::default().deadline(Duration::from_millis(ms))
}

fn hits(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

/// Serves `topic` by sleeping for the payload's number of milliseconds, then answering
/// with it; counts the calls that reached the handler in `entered`.
fn sleeper(b: NodeBuilder, topic: &str, entered: Arc<AtomicUsize>) -> NodeBuilder {
    b.handle(topic, move |ms: u64, _| {
        entered.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Status>(ms)
        }
    })
}

/// Serves `topic` by answering with the serving node's own name.
fn whoami(b: NodeBuilder, topic: &str) -> NodeBuilder {
    b.handle(topic, |_: Empty, ctx: Ctx| async move {
        Ok::<_, Status>(ctx.node().name().to_owned())
    })
}

/// A provider serving `work.sleep` ([`sleeper`]) and a caller seeded with it, the
/// connection warmed by one call that did not sleep (so that a deadline measures the
/// handler only); and the provider's count of calls, that one included.
async fn sleeper_and_caller() -> (NodeHandle, NodeHandle, Arc<AtomicUsize>) {
    let mesh = unique_mesh();
    let entered = Arc::new(AtomicUsize::new(0));
    let provider = start(sleeper(
        Node::builder(local("provider", &mesh)),
        "work.sleep",
        entered.clone(),
    ))
    .await;
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;
    let ms: u64 = caller
        .request_with("work.sleep", &0u64, deadline(2000))
        .await
        .expect("a fast call");
    assert_eq!(ms, 0);
    (provider, caller, entered)
}

async fn start(b: NodeBuilder) -> NodeHandle {
    b.spawn().await.expect("node starts")
}

async fn shutdown_all(nodes: Vec<NodeHandle>) {
    within(
        "every node to shut down",
        WAIT,
        futures::future::join_all(nodes.into_iter().map(NodeHandle::shutdown)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_acknowledged_by_a_seeded_provider() {
    init_tracing();
    let mesh = unique_mesh();
    let provider = Node::builder(local("provider", &mesh))
        .handle("math.add", |v: (i64, i64), _| async move {
            Ok::<_, Status>(v.0 + v.1)
        })
        .spawn()
        .await
        .expect("provider starts");
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;
    let sum: i64 = caller.request("math.add", &(40, 2)).await.expect("ack");
    assert_eq!(sum, 42);
    let err = caller
        .request::<_, i64>("math.sub", &(1, 2))
        .await
        .expect_err("nobody serves math.sub");
    assert_eq!(err.code, Code::NoResponders);
    let err = caller
        .request_with::<_, i64>(
            "math.add",
            &"not a pair",
            CallOptions::default().deadline(Duration::from_secs(2)),
        )
        .await
        .expect_err("malformed payload");
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    caller.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_responders_comes_at_once_and_is_not_a_timeout() {
    init_tracing();
    let mesh = unique_mesh();
    let provider = start(
        Node::builder(local("provider", &mesh)).handle("math.add", |v: (i64, i64), _| async move {
            Ok::<_, Status>(v.0 + v.1)
        }),
    )
    .await;
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;

    // A topic nobody serves: the mesh is up, the answer is immediate.
    let t = Instant::now();
    let err = caller
        .request_with::<_, i64>("math.mul", &(6, 7), deadline(5000))
        .await
        .expect_err("nobody serves math.mul");
    let took = t.elapsed();
    assert_eq!(err.code, Code::NoResponders, "{err}");
    assert_ne!(err.code, Code::DeadlineExceeded);
    assert!(took < Duration::from_secs(1), "NO_RESPONDERS took {took:?}");

    // A target that is not a peer: the same, at once.
    let t = Instant::now();
    let err = caller
        .request_with::<_, i64>("math.add", &(6, 7), deadline(5000).to(NodeId::new()))
        .await
        .expect_err("the target is unknown");
    let took = t.elapsed();
    assert_eq!(err.code, Code::NoResponders, "{err}");
    assert!(took < Duration::from_secs(1), "NO_RESPONDERS took {took:?}");

    // The served topic still works: the errors above were about routing only.
    let sum: i64 = caller
        .request_with("math.add", &(6, 7), deadline(2000))
        .await
        .expect("ack");
    assert_eq!(sum, 13);
    shutdown_all(vec![caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_deadline_gives_deadline_exceeded() {
    init_tracing();
    let (provider, caller, entered) = sleeper_and_caller().await;

    let limit = Duration::from_millis(300);
    let margin = Duration::from_millis(500);
    let t = Instant::now();
    let err = caller
        .request_with::<_, u64>("work.sleep", &1000u64, deadline(300))
        .await
        .expect_err("the handler sleeps 1 s, the deadline is 300 ms");
    let took = t.elapsed();
    assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
    assert!(took >= limit, "gave up early, after {took:?}");
    assert!(took < limit + margin, "gave up late, after {took:?}");
    assert_eq!(hits(&entered), 2, "the slow call reached the handler");

    // The provider serves other calls while (and after) the slow one runs.
    for _ in 0..3 {
        let ms: u64 = caller
            .request_with("work.sleep", &1u64, deadline(2000))
            .await
            .expect("the provider keeps serving after a timeout");
        assert_eq!(ms, 1);
    }

    // A call the provider handles itself honours deadlines the same way.
    let t = Instant::now();
    let err = provider
        .request_with::<_, u64>("work.sleep", &1000u64, deadline(300))
        .await
        .expect_err("the local handler sleeps 1 s");
    let took = t.elapsed();
    assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
    assert!(took < limit + margin, "local call gave up after {took:?}");
    shutdown_all(vec![caller, provider]).await;
}

/// Deadlines are kept per connection (one wake for the earliest): a call with a short
/// deadline sent after one with a long deadline still ends at its own, and the long one
/// at its own, and a reply that comes in time is not cut short by either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_one_connection_each_end_at_their_own_deadline() {
    init_tracing();
    let (provider, caller, entered) = sleeper_and_caller().await;

    let margin = Duration::from_millis(400);
    let timed = |sleep_ms: u64, deadline_ms: u64| {
        let caller = caller.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = caller
                .request_with::<_, u64>("work.sleep", &sleep_ms, deadline(deadline_ms))
                .await;
            (r, t.elapsed())
        })
    };
    let long = timed(2500, 1500);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let short = timed(2500, 200);
    let in_time = timed(100, 1000);
    let (r, took) = short.await.expect("the short call's task");
    assert_eq!(
        r.expect_err("2.5 s of work, 200 ms of deadline").code,
        Code::DeadlineExceeded
    );
    let limit = Duration::from_millis(200);
    assert!(
        took >= limit && took < limit + margin,
        "the short call ended after {took:?}"
    );
    let (r, took) = in_time.await.expect("the call in time's task");
    assert_eq!(r.expect("100 ms of work, 1 s of deadline"), 100);
    assert!(
        took < Duration::from_millis(1000),
        "the call in time took {took:?}"
    );
    let (r, took) = long.await.expect("the long call's task");
    assert_eq!(
        r.expect_err("2.5 s of work, 1.5 s of deadline").code,
        Code::DeadlineExceeded
    );
    let limit = Duration::from_millis(1500);
    assert!(
        took >= limit && took < limit + margin,
        "the long call ended after {took:?}"
    );
    assert_eq!(hits(&entered), 4, "every call reached the handler");
    shutdown_all(vec![caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_does_not_serve_the_topic_answers_unimplemented() {
    init_tracing();
    let mesh = unique_mesh();
    let provider = start(
        Node::builder(local("provider", &mesh)).handle("math.add", |v: (i64, i64), _| async move {
            Ok::<_, Status>(v.0 + v.1)
        }),
    )
    .await;
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;

    let err = caller
        .request_with::<_, i64>("math.mul", &(2, 3), deadline(2000).to(provider.id()))
        .await
        .expect_err("the provider does not serve math.mul");
    assert_eq!(err.code, Code::Unimplemented, "{err}");

    // The same target does answer what it serves.
    let sum: i64 = caller
        .request_with("math.add", &(2, 3), deadline(2000).to(provider.id()))
        .await
        .expect("the target serves math.add");
    assert_eq!(sum, 5);

    // A node targeting itself for a topic it does not serve: the same code.
    let err = caller
        .request_with::<_, i64>("math.add", &(2, 3), deadline(2000).to(caller.id()))
        .await
        .expect_err("the caller serves nothing");
    assert_eq!(err.code, Code::Unimplemented, "{err}");
    shutdown_all(vec![caller, provider]).await;
}

#[derive(Debug, Deserialize)]
struct Job {
    name: String,
    n: u32,
}

#[derive(Debug, Serialize)]
struct JobOut<'a, N> {
    name: &'a str,
    n: N,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_field_is_invalid_argument_naming_it() {
    init_tracing();
    let mesh = unique_mesh();
    let entered = Arc::new(AtomicUsize::new(0));
    let count = entered.clone();
    let provider = start(Node::builder(local("provider", &mesh)).handle(
        "jobs.run",
        move |job: Job, _| {
            count.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Status>(job.name.repeat(job.n as usize)) }
        },
    ))
    .await;
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;

    let out: String = caller
        .request_with("jobs.run", &JobOut { name: "x", n: 3u32 }, deadline(2000))
        .await
        .expect("a well-typed job");
    assert_eq!(out, "xxx");

    let err = caller
        .request_with::<_, String>(
            "jobs.run",
            &JobOut {
                name: "x",
                n: "str",
            },
            deadline(2000),
        )
        .await
        .expect_err("n is a string");
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    assert_eq!(err.field.as_deref(), Some("n"), "{err:?}");
    assert_eq!(
        hits(&entered),
        1,
        "a malformed payload never reaches the handler"
    );
    shutdown_all(vec![caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_internal_and_the_node_lives_on() {
    init_tracing();
    let mesh = unique_mesh();
    let provider = start(Node::builder(local("provider", &mesh)).handle(
        "risky.op",
        |boom: bool, _| async move {
            if boom {
                panic!("boom (on purpose, in a test)");
            }
            Ok::<_, Status>("fine".to_owned())
        },
    ))
    .await;
    panics_become_internal(&mesh, provider, "risky.op").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_before_returning_its_future_is_internal_too() {
    init_tracing();
    let mesh = unique_mesh();
    // The closure itself panics, before it builds the future: still a panicking handler.
    let provider = start(Node::builder(local("provider", &mesh)).handle(
        "risky.sync",
        |boom: bool, _| {
            if boom {
                panic!("boom before the future (on purpose, in a test)");
            }
            async move { Ok::<_, Status>("fine".to_owned()) }
        },
    ))
    .await;
    panics_become_internal(&mesh, provider, "risky.sync").await;
}

/// `provider` serves `topic` with a handler that panics when sent `true`: a remote call
/// and a local one both get INTERNAL, and the provider serves on.
async fn panics_become_internal(mesh: &str, provider: NodeHandle, topic: &str) {
    let caller = plain(seeded("caller", mesh, &provider)).await;
    wait_peers(&caller, 1).await;

    let err = caller
        .request_with::<_, String>(topic, &true, deadline(2000))
        .await
        .expect_err("the handler panics");
    assert_eq!(err.code, Code::Internal, "{err}");
    let ok: String = caller
        .request_with(topic, &false, deadline(2000))
        .await
        .expect("the node lives on");
    assert_eq!(ok, "fine");
    assert_eq!(provider.stats().handler_panics, 1);

    // The provider calling its own handler (no sockets) gets the same code.
    let err = within(
        "a local call to a panicking handler",
        Duration::from_secs(3),
        provider.request_with::<_, String>(topic, &true, deadline(2000)),
    )
    .await
    .expect_err("the handler panics");
    assert_eq!(err.code, Code::Internal, "{err}");
    assert_eq!(provider.stats().handler_panics, 2);
    shutdown_all(vec![caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_provider_refuses_with_resource_exhausted() {
    init_tracing();
    let mesh = unique_mesh();
    let entered = Arc::new(AtomicUsize::new(0));
    let mut cfg = local("provider", &mesh);
    cfg.limits.max_concurrent_requests = 1;
    let provider = start(sleeper(Node::builder(cfg), "work.sleep", entered.clone())).await;
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;

    // Two calls at once to the only provider, whose bound is one: one runs, the other
    // is refused. The runtime retries RESOURCE_EXHAUSTED elsewhere (SPEC 9.4), finds no
    // other provider, and returns the refusal itself (rpc.rs: `Err(last..)`).
    let timed = |ms: u64| {
        let caller = caller.clone();
        async move {
            let t = Instant::now();
            let r = caller
                .request_with::<_, u64>("work.sleep", &ms, deadline(3000))
                .await;
            (r, t.elapsed())
        }
    };
    let ((r1, t1), (r2, t2)) = tokio::join!(timed(600), timed(600));
    let (ok, refused) = match (r1, r2) {
        (Ok(v), Err(e)) => ((v, t1), (e, t2)),
        (Err(e), Ok(v)) => ((v, t2), (e, t1)),
        other => panic!("expected one OK and one refusal, got {other:?}"),
    };
    assert_eq!(ok.0, 600);
    assert_eq!(refused.0.code, Code::ResourceExhausted, "{}", refused.0);
    assert!(
        refused.1 < ok.1,
        "the refusal ({:?}) came after the slow call ({:?})",
        refused.1,
        ok.1
    );
    assert_eq!(hits(&entered), 1, "the refused call was not executed");
    assert_eq!(provider.stats().requests_refused, 1);

    // Once the slot is free the provider serves again.
    let ms: u64 = caller
        .request_with("work.sleep", &1u64, deadline(2000))
        .await
        .expect("served once the slot is free");
    assert_eq!(ms, 1);
    assert_eq!(provider.stats().requests_refused, 1);

    // The bound holds for the provider's calls to itself too (SPEC 9.1).
    let remote = tokio::spawn(timed(400));
    wait_until("the remote call to take the slot", WAIT, || {
        hits(&entered) == 3
    })
    .await;
    let err = provider
        .request_with::<_, u64>("work.sleep", &1u64, deadline(2000))
        .await
        .expect_err("the only slot is taken");
    assert_eq!(err.code, Code::ResourceExhausted, "{err}");
    let (r, _) = within("the remote call", WAIT, remote)
        .await
        .expect("the call task");
    assert_eq!(r.expect("the remote call holds the slot"), 400);
    assert_eq!(hits(&entered), 3, "the refused local call was not executed");
    shutdown_all(vec![caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_on_another_provider() {
    init_tracing();
    let mesh = unique_mesh();
    let good_hits = Arc::new(AtomicUsize::new(0));
    let bad_hits = Arc::new(AtomicUsize::new(0));
    let count = good_hits.clone();
    let good = start(
        Node::builder(local("good", &mesh)).handle("demo.work", move |x: u32, _| {
            count.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Status>(x) }
        }),
    )
    .await;
    let count = bad_hits.clone();
    let bad = start(Node::builder(seeded("bad", &mesh, &good)).handle(
        "demo.work",
        move |_: u32, _| {
            count.fetch_add(1, Ordering::SeqCst);
            async move { Err::<u32, _>(Status::error(Code::Unavailable, "backend down")) }
        },
    ))
    .await;
    let caller = plain(seeded("caller", &mesh, &good)).await;
    wait_peers(&caller, 2).await;

    const CALLS: u32 = 20;
    for i in 0..CALLS {
        let v: u32 = caller
            .request_with("demo.work", &i, deadline(2000))
            .await
            .expect("an UNAVAILABLE provider is skipped");
        assert_eq!(v, i);
    }
    assert_eq!(
        hits(&good_hits),
        CALLS as usize,
        "each call ran once on good"
    );
    assert!(hits(&bad_hits) >= 1, "the bad provider was never tried");
    shutdown_all(vec![caller, bad, good]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_spread_over_providers_by_outstanding_count() {
    init_tracing();
    let mesh = unique_mesh();
    let a_hits = Arc::new(AtomicUsize::new(0));
    let b_hits = Arc::new(AtomicUsize::new(0));
    let a = start(sleeper(
        Node::builder(local("a", &mesh)),
        "demo.slow",
        a_hits.clone(),
    ))
    .await;
    let b = start(sleeper(
        Node::builder(seeded("b", &mesh, &a)),
        "demo.slow",
        b_hits.clone(),
    ))
    .await;
    let caller = plain(seeded("caller", &mesh, &a)).await;
    wait_peers(&caller, 2).await;

    let calls =
        (0..20).map(|_| caller.request_with::<_, u64>("demo.slow", &100u64, deadline(5000)));
    let results = within(
        "20 concurrent calls",
        WAIT,
        futures::future::join_all(calls),
    )
    .await;
    for r in results {
        assert_eq!(r.expect("every call succeeds"), 100);
    }
    let (a_n, b_n) = (hits(&a_hits), hits(&b_hits));
    assert_eq!(a_n + b_n, 20);
    assert!(a_n >= 5 && b_n >= 5, "unfair split: a={a_n} b={b_n}");
    shutdown_all(vec![caller, b, a]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_gathers_one_ack_per_provider() {
    init_tracing();
    let mesh = unique_mesh();
    let p1 = start(whoami(Node::builder(local("p1", &mesh)), "demo.whoami")).await;
    let p2 = start(whoami(
        Node::builder(seeded("p2", &mesh, &p1)),
        "demo.whoami",
    ))
    .await;
    // The caller is the third provider.
    let caller = start(whoami(
        Node::builder(seeded("caller", &mesh, &p1)),
        "demo.whoami",
    ))
    .await;
    wait_peers(&caller, 2).await;

    let acks = caller
        .broadcast::<_, String>("demo.whoami", &Empty {}, Some(Duration::from_secs(2)))
        .await
        .expect("three providers");
    assert_eq!(acks.len(), 3, "{acks:?}");
    for ack in &acks {
        let name = ack.result.as_ref().expect("every provider answers OK");
        assert_eq!(name, &ack.name, "each ack comes from the node it names");
    }
    let mut names: Vec<_> = acks.iter().map(|a| a.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["caller", "p1", "p2"]);
    let mut ids: Vec<_> = acks.iter().map(|a| a.node).collect();
    ids.sort();
    let mut want = vec![caller.id(), p1.id(), p2.id()];
    want.sort();
    assert_eq!(ids, want);

    // A broadcast nobody serves fails at once.
    let t = Instant::now();
    let err = caller
        .broadcast::<_, String>("demo.nobody", &Empty {}, Some(Duration::from_secs(5)))
        .await
        .expect_err("nobody serves demo.nobody");
    assert_eq!(err.code, Code::NoResponders, "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    shutdown_all(vec![caller, p2, p1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_carries_each_providers_own_error() {
    init_tracing();
    let mesh = unique_mesh();
    let ok = start(whoami(Node::builder(local("ok", &mesh)), "demo.check")).await;
    let failing = start(Node::builder(seeded("failing", &mesh, &ok)).handle(
        "demo.check",
        |_: Empty, _| async {
            Err::<String, _>(
                Status::error(Code::FailedPrecondition, "not ready").with_field("state"),
            )
        },
    ))
    .await;
    let caller = start(whoami(
        Node::builder(seeded("caller", &mesh, &ok)),
        "demo.check",
    ))
    .await;
    wait_peers(&caller, 2).await;

    let acks = caller
        .broadcast::<_, String>("demo.check", &Empty {}, Some(Duration::from_secs(2)))
        .await
        .expect("three providers");
    assert_eq!(acks.len(), 3, "{acks:?}");
    for ack in &acks {
        match ack.name.as_str() {
            "failing" => {
                assert_eq!(ack.node, failing.id());
                let err = ack.result.as_ref().expect_err("failing answers an error");
                assert_eq!(err.code, Code::FailedPrecondition, "{err}");
                assert_eq!(err.field.as_deref(), Some("state"));
            }
            "ok" | "caller" => {
                assert_eq!(ack.result.as_deref(), Ok(ack.name.as_str()), "{ack:?}");
            }
            other => panic!("an ack from an unknown provider {other}"),
        }
    }
    shutdown_all(vec![caller, failing, ok]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_gives_a_silent_provider_deadline_exceeded_by_the_deadline() {
    init_tracing();
    let mesh = unique_mesh();
    let slow_hits = Arc::new(AtomicUsize::new(0));
    let fast_hits = Arc::new(AtomicUsize::new(0));
    let fast = start(sleeper(
        Node::builder(local("fast", &mesh)),
        "demo.nap",
        fast_hits.clone(),
    ))
    .await;
    // The slow one sleeps 800 ms longer than asked.
    let count = slow_hits.clone();
    let slow = start(Node::builder(seeded("slow", &mesh, &fast)).handle(
        "demo.nap",
        move |ms: u64, _| {
            count.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(ms + 800)).await;
                Ok::<_, Status>(ms)
            }
        },
    ))
    .await;
    let caller = plain(seeded("caller", &mesh, &fast)).await;
    wait_peers(&caller, 2).await;

    let t = Instant::now();
    let acks = caller
        .broadcast::<_, u64>("demo.nap", &1u64, Some(Duration::from_millis(300)))
        .await
        .expect("two providers");
    let took = t.elapsed();
    assert!(took < Duration::from_millis(800), "broadcast took {took:?}");
    assert_eq!(acks.len(), 2, "{acks:?}");
    for ack in &acks {
        match ack.name.as_str() {
            "fast" => assert_eq!(ack.result.as_ref().ok(), Some(&1), "{ack:?}"),
            "slow" => {
                let err = ack.result.as_ref().expect_err("slow misses the deadline");
                assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
            }
            other => panic!("an ack from an unknown provider {other}"),
        }
    }
    assert_eq!((hits(&fast_hits), hits(&slow_hits)), (1, 1));
    shutdown_all(vec![caller, slow, fast]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_provider_leaves_and_its_restart_serves_again() {
    init_tracing();
    let mesh = unique_mesh();
    let caller = plain(local("caller", &mesh)).await;
    let seed = caller.endpoints().rpc.clone();
    let echo = ["--echo", "demo.echo"];

    let mut child = ChildNode::seeded("echo1", &mesh, &seed, &echo);
    wait_peers(&caller, 1).await;
    assert_eq!(caller.peers()[0].id, child.id);
    let got: String = caller
        .request_with("demo.echo", "hello", deadline(2000))
        .await
        .expect("the child echoes");
    assert_eq!(got, "hello");

    child.kill9();
    wait_until("the caller to drop the killed child", WAIT, || {
        caller.peers().is_empty()
    })
    .await;
    let t = Instant::now();
    let err = caller
        .request_with::<_, String>("demo.echo", "anyone?", deadline(5000))
        .await
        .expect_err("the only provider is gone");
    assert_eq!(err.code, Code::NoResponders, "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );

    let child2 = ChildNode::seeded("echo2", &mesh, &seed, &echo);
    wait_until("the restarted child to join", WAIT, || {
        caller
            .peers()
            .iter()
            .any(|p| p.id == child2.id && p.state == PeerState::Alive)
    })
    .await;
    let got: String = caller
        .request_with("demo.echo", "again", deadline(2000))
        .await
        .expect("the restarted child echoes");
    assert_eq!(got, "again");
    drop(child2);
    within("the caller to shut down", WAIT, caller.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_ping_must_name_a_target_and_then_pongs() {
    init_tracing();
    let mesh = unique_mesh();
    let provider = plain(local("provider", &mesh)).await;
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;

    let err = caller
        .request_with::<_, Pong>("sys.ping", &Empty {}, deadline(2000))
        .await
        .expect_err("sys.ping is never routed");
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    assert_eq!(err.field.as_deref(), Some("type"), "{err:?}");

    let before = mlmesh::protocol::now_nanos();
    let pong: Pong = caller
        .request_with("sys.ping", &Empty {}, deadline(2000).to(provider.id()))
        .await
        .expect("the provider pongs");
    let after = mlmesh::protocol::now_nanos();
    assert!(
        (before..=after).contains(&pong.time),
        "pong time {} outside [{before}, {after}]",
        pong.time
    );
    // Every node answers sys.ping, itself included.
    let pong: Pong = caller
        .request_with("sys.ping", &Empty {}, deadline(2000).to(caller.id()))
        .await
        .expect("a node pongs itself");
    assert!(pong.time >= after);
    shutdown_all(vec![caller, provider]).await;
}

/// Serves `topic` by echoing the raw payload; counts calls in `entered`.
fn echo(b: NodeBuilder, topic: &str, entered: Arc<AtomicUsize>) -> NodeBuilder {
    b.handle_raw(topic, move |data: Bytes, _| {
        entered.fetch_add(1, Ordering::SeqCst);
        async move { Ok(data) }
    })
}

const SMALL_LIMIT: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_too_large_before_it_is_sent() {
    init_tracing();
    let mesh = unique_mesh();
    let entered = Arc::new(AtomicUsize::new(0));
    let provider = start(echo(
        Node::builder(local("provider", &mesh)),
        "demo.echo",
        entered.clone(),
    ))
    .await;
    let mut cfg = seeded("caller", &mesh, &provider);
    cfg.limits.max_message_size = SMALL_LIMIT;
    let caller = plain(cfg).await;
    wait_peers(&caller, 1).await;

    let big = ByteBuf::from(vec![7u8; SMALL_LIMIT + 1000]);
    let t = Instant::now();
    let err = within(
        "an oversized request to fail",
        Duration::from_secs(2),
        caller.request_with::<_, ByteBuf>("demo.echo", &big, deadline(5000)),
    )
    .await
    .map(|echoed| echoed.len())
    .expect_err("over the caller's limit");
    assert_eq!(err.code, Code::TooLarge, "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(hits(&entered), 0, "nothing reached the provider");

    // Under the limit, the same call goes through.
    let small = ByteBuf::from(vec![7u8; 1000]);
    let got: ByteBuf = caller
        .request_with("demo.echo", &small, deadline(2000))
        .await
        .expect("a small payload");
    assert_eq!(got, small);
    assert_eq!(hits(&entered), 1);
    shutdown_all(vec![caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_answers_too_large_for_requests_and_replies_over_its_limit() {
    init_tracing();
    let mesh = unique_mesh();
    let entered = Arc::new(AtomicUsize::new(0));
    let mut cfg = local("provider", &mesh);
    cfg.limits.max_message_size = SMALL_LIMIT;
    let count = entered.clone();
    let provider = start(
        echo(Node::builder(cfg), "demo.echo", entered.clone()).handle(
            "demo.blowup",
            move |n: usize, _| {
                count.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, Status>(ByteBuf::from(vec![7u8; n])) }
            },
        ),
    )
    .await;
    // The caller's limit is the default 1 MiB: it sends what the provider refuses.
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;

    let big = ByteBuf::from(vec![7u8; SMALL_LIMIT + 1000]);
    let err = caller
        .request_with::<_, ByteBuf>("demo.echo", &big, deadline(3000))
        .await
        .map(|echoed| echoed.len())
        .expect_err("over the provider's limit");
    assert_eq!(err.code, Code::TooLarge, "{err}");
    assert_eq!(hits(&entered), 0, "the handler never saw it");

    let err = caller
        .request_with::<_, ByteBuf>("demo.blowup", &(SMALL_LIMIT + 1000), deadline(3000))
        .await
        .map(|reply| reply.len())
        .expect_err("the reply is over the provider's limit");
    assert_eq!(err.code, Code::TooLarge, "{err}");
    assert_eq!(hits(&entered), 1, "the handler ran; its reply was replaced");

    // The provider still answers ordinary calls.
    let got: ByteBuf = caller
        .request_with("demo.blowup", &10usize, deadline(2000))
        .await
        .expect("a small reply");
    assert_eq!(got.len(), 10);
    shutdown_all(vec![caller, provider]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_served_locally_honours_the_size_limit() {
    init_tracing();
    let mesh = unique_mesh();
    let entered = Arc::new(AtomicUsize::new(0));
    let mut cfg = local("alone", &mesh);
    cfg.limits.max_message_size = SMALL_LIMIT;
    let node = start(echo(Node::builder(cfg), "demo.echo", entered.clone())).await;
    // SPEC 9.1: a call the node handles itself MUST behave as over the sockets (limits
    // included); 9.5: a request over the sender's limit fails TOO_LARGE, unsent.
    let big = ByteBuf::from(vec![7u8; SMALL_LIMIT + 1000]);
    let err = within(
        "an oversized local call to fail",
        Duration::from_secs(2),
        node.request_with::<_, ByteBuf>("demo.echo", &big, deadline(2000)),
    )
    .await
    .map(|echoed| echoed.len())
    .expect_err("over the node's own limit");
    assert_eq!(err.code, Code::TooLarge, "{err}");
    assert_eq!(hits(&entered), 0, "the handler never saw it");
    within("the node to shut down", WAIT, node.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_calls_and_refuses_new_ones() {
    init_tracing();
    let mesh = unique_mesh();
    let entered = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(4);
    let count = entered.clone();
    let provider = start(Node::builder(local("provider", &mesh)).handle(
        "work.slow",
        move |ms: u64, _| {
            count.fetch_add(1, Ordering::SeqCst);
            let started = started_tx.clone();
            async move {
                let _ = started.send(()).await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Status>(ms)
            }
        },
    ))
    .await;
    let caller = plain(seeded("caller", &mesh, &provider)).await;
    wait_peers(&caller, 1).await;

    let in_flight = tokio::spawn({
        let caller = caller.clone();
        async move {
            caller
                .request_with::<_, u64>("work.slow", &500u64, deadline(5000))
                .await
        }
    });
    within("the slow handler to start", WAIT, started_rx.recv())
        .await
        .expect("the handler started");

    // Start the shutdown and make sure it has begun (first poll) before calling again.
    let mut shutdown = Box::pin(provider.clone().shutdown());
    assert!(
        futures::poll!(shutdown.as_mut()).is_pending(),
        "shutdown cannot finish with a call in flight"
    );
    let shutdown = tokio::spawn(shutdown);

    let t = Instant::now();
    let err = caller
        .request_with::<_, u64>("work.slow", &1u64, deadline(3000))
        .await
        .expect_err("the provider is shutting down");
    assert!(
        matches!(err.code, Code::Unavailable | Code::NoResponders),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );

    let done = within("the in-flight call", WAIT, in_flight)
        .await
        .expect("the call task")
        .expect("the in-flight call completes OK");
    assert_eq!(done, 500);
    within("the provider to shut down", WAIT, shutdown)
        .await
        .expect("the shutdown task");
    assert_eq!(hits(&entered), 1, "the late call was not executed");
    within("the caller to shut down", WAIT, caller.shutdown()).await;
}
