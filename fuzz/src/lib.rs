//! Fuzz targets for mlmesh, shared by the libFuzzer binaries (`fuzz_targets/`, nightly,
//! `cargo fuzz`) and the stable driver (`src/bin/mlmesh-fuzz.rs`). A target is a
//! function of the input bytes that panics when a property breaks.
//!
//! - [`codec`]: the envelope codec and every payload decoder, in-process. No input may
//!   panic them; every refusal maps to a standard error status; whatever decodes
//!   encodes again and decodes to the same envelope.
//! - [`node_input`]: a live node's sockets. The input is sent either as a request
//!   frame to the node's ROUTER, which must answer it with exactly one reply, or as an
//!   event message from a peer the node subscribes to, which must be dropped or
//!   delivered without disturbing the next good event. After every input the node
//!   must still answer.
//!
//! [`seeds`] gives the starting corpus: every hex test vector of `protocol/SPEC.md`.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use mlmesh::protocol::sys::{self, Describe, Endpoints};
use mlmesh::protocol::{
    from_payload, registry, to_payload, tracking, Body, Codec, Envelope, MessageId, NodeId, Topic,
};
use mlmesh::{Config, Node, NodeHandle, Status, Subscription};
use serde::de::DeserializeOwned;
use zeromq::{DealerSocket, PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// The hex test vectors of SPEC.md (every block tagged `hex name=...`), as bytes.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let spec = include_str!("../../protocol/SPEC.md");
    let mut out = Vec::new();
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        let Some(tag) = line.strip_prefix("```hex name=") else {
            continue;
        };
        let name = tag.split_whitespace().next().unwrap_or("vector").to_owned();
        let mut hex = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            hex.extend(l.chars().filter(char::is_ascii_hexdigit));
        }
        let bytes = (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
            .collect();
        out.push((name, bytes));
    }
    out
}

// ---------------------------------------------------------------------------------------
// The codec.

fn payload_never_panics<T: DeserializeOwned>(data: &[u8]) {
    if let Err(e) = from_payload::<T>(data) {
        assert!(!e.to_status().is_ok(), "a payload error maps to OK: {e}");
    }
}

/// Decodes `data` as every payload type of `sys`, `tracking/1` and `registry/1`.
pub fn payloads(data: &[u8]) {
    payload_never_panics::<sys::Heartbeat>(data);
    payload_never_panics::<sys::DescribeRequest>(data);
    payload_never_panics::<sys::Describe>(data);
    payload_never_panics::<sys::Pong>(data);
    payload_never_panics::<tracking::ExperimentCreate>(data);
    payload_never_panics::<tracking::ExperimentGet>(data);
    payload_never_panics::<tracking::RunStart>(data);
    payload_never_panics::<tracking::RunEnd>(data);
    payload_never_panics::<tracking::RunGet>(data);
    payload_never_panics::<tracking::LogBatch>(data);
    payload_never_panics::<tracking::RunSearch>(data);
    payload_never_panics::<tracking::MetricHistory>(data);
    payload_never_panics::<tracking::Run>(data);
    payload_never_panics::<tracking::RunPage>(data);
    payload_never_panics::<registry::ModelCreate>(data);
    payload_never_panics::<registry::ModelUpdate>(data);
    payload_never_panics::<registry::ModelSearch>(data);
    payload_never_panics::<registry::VersionCreate>(data);
    payload_never_panics::<registry::VersionUpdate>(data);
    payload_never_panics::<registry::VersionSearch>(data);
    payload_never_panics::<registry::AliasAssign>(data);
    payload_never_panics::<registry::AliasDelete>(data);
    payload_never_panics::<registry::Locate>(data);
    payload_never_panics::<registry::ModelPage>(data);
    payload_never_panics::<registry::VersionPage>(data);
    let _ = mlmesh::protocol::check_payload(data);
}

/// The codec target (see the crate doc).
pub fn codec(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    for limit in [64, 4096, mlmesh::protocol::DEFAULT_MAX_MESSAGE_SIZE] {
        let codec = Codec::new(limit);
        let _ = Codec::peek_id(&frame);
        match codec.decode(&frame) {
            Ok(env) => {
                let again = codec.encode(&env).expect("a decoded envelope encodes");
                let back = codec
                    .decode(&Bytes::from(again))
                    .expect("a re-encoded envelope decodes");
                assert_eq!(back, env, "decode(encode(decode(x))) != decode(x)");
                payloads(&env.data);
            }
            Err(e) => assert!(!e.to_status().is_ok(), "a decode error maps to OK: {e}"),
        }
        let frame_envs = match codec.decode_frame(&frame) {
            // SPEC 5.2: a batch holds at least one envelope (RELIABILITY.md, finding 6,
            // fixed).
            Ok(envs) => {
                assert!(!envs.is_empty(), "an empty batch decoded");
                Some(envs)
            }
            Err(e) => {
                assert!(!e.to_status().is_ok(), "a decode error maps to OK: {e}");
                None
            }
        };
        // SPEC 5.3: the instruction path (read by position when the topic is known)
        // accepts exactly what the general reader accepts, and reads the same envelopes.
        for known in [false, true] {
            let resolve = |name: &[u8]| {
                let name = std::str::from_utf8(name).ok().filter(|_| known)?;
                Topic::new(name).ok()
            };
            let mut envs = Vec::new();
            match codec.decode_instructions(&frame, resolve, |env| envs.push(env)) {
                Ok(()) => assert_eq!(Some(&envs), frame_envs.as_ref(), "instruction path"),
                Err(e) => {
                    assert!(!e.to_status().is_ok(), "a decode error maps to OK: {e}");
                    assert!(frame_envs.is_none(), "the instruction path refused: {e}");
                }
            }
        }
    }
    payloads(data);
}

// ---------------------------------------------------------------------------------------
// A node's sockets.

/// The frame limit of the node under test.
const NODE_FRAME_LIMIT: usize = 64 * 1024;

/// How long a node has to answer one input.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// A node under test, a raw DEALER to its ROUTER, and a raw peer (a ROUTER that
/// answers `sys.describe`, a PUB) whose events the node subscribes to.
struct Target {
    rt: tokio::runtime::Runtime,
    node: NodeHandle,
    dealer: DealerSocket,
    publisher: PubSocket,
    fake: NodeId,
    sub: Subscription,
    peer_events: tokio::sync::broadcast::Receiver<mlmesh::PeerEvent>,
    codec: Codec,
    seq: u64,
}

static TARGET: OnceLock<std::sync::Mutex<Target>> = OnceLock::new();

async fn serve_describe(mut router: RouterSocket, describe: Describe) {
    let codec = Codec::default();
    while let Ok(msg) = router.recv().await {
        let mut frames = msg.into_vec();
        let Some(body) = frames.pop() else { continue };
        let Ok(request) = codec.decode(&body) else {
            continue;
        };
        let data = to_payload(&describe).unwrap_or_default();
        let reply = Envelope::reply_to(&request, describe.id, Status::ok(), data.into());
        let Ok(encoded) = codec.encode(&reply) else {
            continue;
        };
        frames.push(encoded.into());
        if let Ok(msg) = ZmqMessage::try_from(frames) {
            let _ = router.send(msg).await;
        }
    }
}

impl Target {
    fn start() -> Target {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (node, dealer, publisher, fake, sub) = rt.block_on(async {
            let mesh = format!("fuzz{}", &NodeId::new().0.simple().to_string()[24..]);
            let mut router = RouterSocket::new();
            let rpc = router.bind("tcp://127.0.0.1:0").await.expect("bind ROUTER");
            let mut publisher = PubSocket::new();
            let publish = publisher.bind("tcp://127.0.0.1:0").await.expect("bind PUB");
            let fake = NodeId::new();
            let describe = Describe {
                id: fake,
                name: "fake".into(),
                mesh: mesh.clone(),
                protocol: 1,
                version: "fuzz/0".into(),
                roles: vec![],
                serves: vec![],
                endpoints: Endpoints {
                    publish: publish.to_string(),
                    rpc: rpc.to_string(),
                },
                heartbeat_ms: 60_000,
                started_ms: 0,
                peers: vec![],
                batch: false,
            };
            tokio::spawn(serve_describe(router, describe));
            let mut config = Config::local("target", &mesh);
            config.discovery.seeds = vec![rpc.to_string()];
            config.discovery.seed_interval_ms = 200;
            config.limits.max_message_size = NODE_FRAME_LIMIT;
            let node = Node::builder(config)
                .handle_raw("demo.echo", |data: Bytes, _| async move { Ok(data) })
                .spawn()
                .await
                .expect("node starts");
            let sub = node.subscribe("demo.**").expect("pattern");
            let mut dealer = DealerSocket::new();
            dealer
                .connect(&node.endpoints().rpc)
                .await
                .expect("DEALER connects");
            let waited = tokio::time::Instant::now();
            while !node.peers().iter().any(|p| p.id == fake) {
                assert!(
                    waited.elapsed() < Duration::from_secs(10),
                    "the fake peer never joined"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (node, dealer, publisher, fake, sub)
        });
        let peer_events = node.watch_peers();
        let mut t = Target {
            rt,
            peer_events,
            node,
            dealer,
            publisher,
            fake,
            sub,
            codec: Codec::default(),
            seq: 0,
        };
        // The node's SUB connects asynchronously: publish until a sentinel gets through.
        let started = std::time::Instant::now();
        while !t.event_sentinel(Duration::from_millis(100)) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the node's SUB never connected"
            );
        }
        t
    }

    /// Sends a good event and waits (up to `within`) until the node delivers it.
    fn event_sentinel(&mut self, within: Duration) -> bool {
        self.seq += 1;
        let seq = self.seq;
        let env = Envelope::event(
            Topic::new("demo.sentinel").expect("topic"),
            self.fake,
            seq,
            to_payload(&seq).unwrap_or_default().into(),
        );
        let body = Bytes::from(self.codec.encode(&env).expect("encode"));
        let msg =
            ZmqMessage::try_from(vec![Bytes::from_static(b"demo.sentinel"), body]).expect("frames");
        let (publisher, sub) = (&mut self.publisher, &mut self.sub);
        self.rt.block_on(async {
            let _ = publisher.send(msg).await;
            let until = tokio::time::Instant::now() + within;
            while let Ok(Some(ev)) = tokio::time::timeout_at(until, sub.recv()).await {
                if ev.topic().as_str() == "demo.sentinel" && ev.seq() == seq {
                    return true;
                }
            }
            false
        })
    }

    /// Sends `frame` as a request and counts the replies until a `sys.ping` sent right
    /// after it is answered; waits for the late ones if they have not come yet. A frame
    /// the node reads as a batch of n requests (SPEC 5.3) gets n replies, single or in
    /// reply batches; anything else gets one, never in a batch.
    fn request(&mut self, frame: &[u8]) {
        let ping = Envelope::request(
            Topic::new(sys::PING).expect("topic"),
            NodeId::new(),
            2000,
            to_payload(&sys::Empty {}).unwrap_or_default().into(),
        );
        let sentinel = ping.id;
        let ping = Bytes::from(self.codec.encode(&ping).expect("encode"));
        let (dealer, codec) = (&mut self.dealer, self.codec);
        let frame = Bytes::copy_from_slice(frame);
        let node_codec = Codec::new(NODE_FRAME_LIMIT);
        let mut batched = 0;
        let batch = mlmesh::protocol::is_batch(&frame)
            && node_codec
                .decode_instructions(&frame, |_| None, |_| batched += 1)
                .is_ok();
        let want = if batch { batched } else { 1 };
        self.rt.block_on(async {
            for body in [frame, ping] {
                let msg = ZmqMessage::try_from(vec![Bytes::new(), body]).expect("frames");
                dealer.send(msg).await.expect("DEALER sends");
            }
            let (mut others, mut pinged) = (0, false);
            while !(pinged && others >= want) {
                let reply = tokio::time::timeout(ANSWER_WITHIN, dealer.recv())
                    .await
                    .expect("the node answered every request within 3 s")
                    .expect("DEALER receives");
                let body = reply.into_vec().pop().expect("a reply frame");
                assert!(
                    batch || !mlmesh::protocol::is_batch(&body),
                    "a reply batch answered a frame that was no request batch"
                );
                let envs = codec.decode_frame(&body).expect("every reply is an envelope");
                for env in envs {
                    match env.body {
                        Body::Reply { re, .. } if re == sentinel => pinged = true,
                        Body::Reply { .. } => others += 1,
                        _ => panic!("the node answered with a {}", env.kind()),
                    }
                }
            }
            assert_eq!(others, want, "a request frame got {others} replies, not {want}");
        });
    }

    /// Publishes `frames` as one event message from the peer, then a good event that
    /// must still arrive.
    fn event(&mut self, frames: Vec<Bytes>) {
        // Peer events before this input are not its doing.
        while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) =
            self.peer_events.try_recv()
        {}
        if let Ok(msg) = ZmqMessage::try_from(frames) {
            let publisher = &mut self.publisher;
            self.rt.block_on(async {
                let _ = publisher.send(msg).await;
            });
        }
        if !self.event_sentinel(ANSWER_WITHIN) {
            // The peer may have dropped itself: a `sys.heartbeat` from its id (libFuzzer
            // learns the id from comparisons) saying it is leaving, or announcing a 1 ms
            // interval and then falling silent. That is the node obeying its peer, not a
            // fault; the node must then take it back (it re-describes its seed every
            // 200 ms) and deliver again.
            let mut left = false;
            loop {
                match self.peer_events.try_recv() {
                    Ok(mlmesh::PeerEvent::Left(id, _)) if id == self.fake => left = true,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => left = true,
                    Err(_) => break,
                }
            }
            assert!(
                left || !self.node.peers().iter().any(|p| p.id == self.fake),
                "a good event after a bad one was not delivered within 3 s, and the peer never left the table"
            );
            let started = std::time::Instant::now();
            while !self.event_sentinel(Duration::from_millis(200)) {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the peer that dropped itself was not taken back within 10 s"
                );
            }
            READMISSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        while self.sub.try_recv().is_some() {}
    }
}

/// Times the raw peer dropped itself (see [`Target::event`]) and was taken back.
pub static READMISSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The node's counters, for reports.
pub fn node_stats() -> Option<mlmesh::Stats> {
    TARGET
        .get()
        .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()).node.stats())
}

/// The node target (see the crate doc). The first byte picks the path: even, the rest
/// is a request frame; odd, the rest is an event message whose frames are separated by
/// `0x00 0x00` (a message of one frame, two, or more).
pub fn node_input(data: &[u8]) {
    let target = TARGET.get_or_init(|| std::sync::Mutex::new(Target::start()));
    let mut t = target.lock().unwrap_or_else(|e| e.into_inner());
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        t.request(rest);
    } else {
        let mut frames = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i + 1 < rest.len() {
            if rest[i] == 0 && rest[i + 1] == 0 {
                frames.push(Bytes::copy_from_slice(&rest[start..i]));
                start = i + 2;
                i += 2;
            } else {
                i += 1;
            }
        }
        frames.push(Bytes::copy_from_slice(&rest[start..]));
        t.event(frames);
    }
}

/// A request envelope for `topic` around `data`, as the node target's seeds.
pub fn request_seed(topic: &str, data: &[u8]) -> Vec<u8> {
    let env = Envelope::request(
        Topic::new(topic).expect("topic"),
        NodeId::new(),
        2000,
        Bytes::copy_from_slice(data),
    );
    let mut out = vec![0u8];
    out.extend(Codec::default().encode(&env).unwrap_or_default());
    out
}

/// An event message from the fake peer, as the node target's seeds.
pub fn event_seed(topic: &str, seq: u64) -> Vec<u8> {
    let env = Envelope::event(
        Topic::new(topic).expect("topic"),
        NodeId::new(),
        seq,
        to_payload(&seq).unwrap_or_default().into(),
    );
    let mut out = vec![1u8];
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend(Codec::default().encode(&env).unwrap_or_default());
    out
}

/// The node target's seeds: a few good requests and events, and the SPEC vectors as
/// request frames.
pub fn node_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        (
            "echo".to_owned(),
            request_seed("demo.echo", &[0xa2, b'h', b'i']),
        ),
        ("ping".to_owned(), request_seed(sys::PING, &[0x80])),
        ("describe".to_owned(), request_seed(sys::DESCRIBE, &[0x80])),
        ("event".to_owned(), event_seed("demo.ok", 7)),
    ];
    for (name, bytes) in seeds() {
        let mut req = vec![0u8];
        req.extend_from_slice(&bytes);
        out.push((format!("req-{name}"), req));
    }
    let _ = MessageId::new();
    out
}
