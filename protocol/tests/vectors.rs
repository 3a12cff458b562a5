//! The test vectors of `SPEC.md` section 14, checked byte for byte.
//!
//! The hex lives only in `SPEC.md`, in fenced blocks whose info string is
//! `hex name=<name> [key=value ...]`, so the specification and this crate cannot drift
//! apart. Every vector is rebuilt here from the fixed inputs the spec lists and checked
//! three ways: this crate's encoder yields exactly those bytes, its decoder gives back the
//! same value, and an independent MessagePack reader (`rmpv`) sees the key names, key
//! order and types the spec's tables promise. When a vector differs, the failure prints
//! the block as it should read.
//!
//! Run with `cargo test -p mlmesh-protocol --test vectors`.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use bytes::Bytes;
use mlmesh_protocol::registry::{AliasAssign, Located, VersionStatus};
use mlmesh_protocol::sys::{Describe, Endpoints, Heartbeat, PeerRecord, Pong, Served};
use mlmesh_protocol::tracking::{self, ExperimentId, LogBatch, RunId, RunInfo, RunStatus};
use mlmesh_protocol::{
    encode_batch, from_payload, is_batch, to_payload, Body, Code, Codec, Envelope, MessageId,
    NodeId, Status, Topic, PROTOCOL_VERSION,
};
use rmpv::Value;
use serde::{Deserialize, Serialize};

const SPEC: &str = include_str!("../SPEC.md");

/// Every vector name the spec holds; a block not listed here is an unchecked vector.
const CHECKED: &[&str] = &[
    "event",
    "request",
    "reply_ok",
    "reply_error",
    "batch",
    "request_batch",
    "reply_batch",
    "heartbeat",
    "heartbeat_leaving",
    "describe",
    "reject_version",
    "reject_missing_type",
    "reject_bad_topic",
    "reject_duplicate_key",
    "reject_truncated",
    "tracking_log_batch",
    "tracking_run_info",
    "registry_alias_assign",
    "registry_located",
];

// The fixed inputs of SPEC.md section 14.1. All ids are UUIDv7 whose 48-bit time field is
// 2024-06-01T00:00:00Z plus a few milliseconds.
const NODE_A: u128 = 0x018fd118_9400_7000_8000_00000000000a;
const NODE_B: u128 = 0x018fd118_9400_7000_8000_00000000000b;
const EVENT_ID: u128 = 0x018fd118_9401_7000_8000_000000000001;
const PING_ID: u128 = 0x018fd118_9402_7000_8000_000000000002;
const PONG_ID: u128 = 0x018fd118_9402_7000_8000_000000000003;
const END_ID: u128 = 0x018fd118_9403_7000_8000_000000000004;
const END_REPLY_ID: u128 = 0x018fd118_9403_7000_8000_000000000005;
const BATCH_IDS: [u128; 2] = [
    0x018fd118_9404_7000_8000_000000000006,
    0x018fd118_9404_7000_8000_000000000007,
];
/// 2024-06-01T00:00:00Z in Unix milliseconds.
const T0_MS: u64 = 1_717_200_000_000;
/// [`T0_MS`] in Unix nanoseconds.
const T0_NS: u64 = T0_MS * 1_000_000;

/// The payload of the `tracking.metrics.logged` vectors.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Metric {
    key: String,
    value: f64,
    step: u64,
}

// ---------------------------------------------------------------------------------------
// Reading SPEC.md

/// One fenced hex block of SPEC.md.
#[derive(Debug)]
struct Block {
    name: String,
    /// The `key=value` words of the info string after `name`, in order.
    attrs: Vec<(String, String)>,
    bytes: Vec<u8>,
}

impl Block {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The fenced blocks whose info string starts with `lang`. In a block, text after `|` on
/// a line is a comment; the rest is hex with any whitespace.
fn blocks(lang: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = SPEC.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace();
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        if words.next() != Some(lang) {
            continue;
        }
        let mut name = None;
        let mut attrs = Vec::new();
        for word in words {
            let (k, v) = word
                .split_once('=')
                .unwrap_or_else(|| panic!("`{word}` in ```{info} is not key=value"));
            if k == "name" {
                name = Some(v.to_owned());
            } else {
                attrs.push((k.to_owned(), v.to_owned()));
            }
        }
        let name = name.unwrap_or_else(|| panic!("```{info} has no name="));
        let hex_text: String = body
            .iter()
            .flat_map(|l| l.split('|').next().unwrap_or("").chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let bytes = hex::decode(&hex_text)
            .unwrap_or_else(|e| panic!("vector `{name}` is not valid hex: {e}"));
        out.push(Block { name, attrs, bytes });
    }
    out
}

fn vectors() -> &'static [Block] {
    static VECTORS: OnceLock<Vec<Block>> = OnceLock::new();
    VECTORS.get_or_init(|| blocks("hex"))
}

fn vector(name: &str) -> &'static Block {
    vectors()
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("SPEC.md has no ```hex name={name} block"))
}

/// The block as it should read in SPEC.md: lowercase hex, 16 bytes a line.
fn render(block: &Block, bytes: &[u8]) -> String {
    let mut info = format!("hex name={}", block.name);
    for (k, v) in &block.attrs {
        info.push_str(&format!(" {k}={v}"));
    }
    let lines: Vec<String> = bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    format!("```{info}\n{}\n```", lines.join("\n"))
}

/// Asserts that `actual` is the vector `name`; on failure prints the block to paste.
fn assert_vector(name: &str, actual: &[u8]) -> Bytes {
    let block = vector(name);
    assert!(
        block.bytes == actual,
        "vector `{name}` in SPEC.md differs from the encoder; it should read:\n{}",
        render(block, actual)
    );
    Bytes::from(block.bytes.clone())
}

// ---------------------------------------------------------------------------------------
// Building the vectors

fn topic(s: &str) -> Topic {
    Topic::new(s).expect("valid topic")
}

fn payload<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(to_payload(value).expect("payload encodes"))
}

fn metric(value: f64, step: u64) -> Metric {
    Metric {
        key: "loss".to_owned(),
        value,
        step,
    }
}

fn event() -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        id: MessageId(uuid::Uuid::from_u128(EVENT_ID)),
        topic: topic("tracking.metrics.logged"),
        source: NodeId(uuid::Uuid::from_u128(NODE_A)),
        time: T0_NS + 1_000_000,
        body: Body::Event { seq: 1 },
        data: payload(&metric(0.5, 1)),
    }
}

fn request() -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        id: MessageId(uuid::Uuid::from_u128(PING_ID)),
        topic: topic("sys.ping"),
        source: NodeId(uuid::Uuid::from_u128(NODE_B)),
        time: T0_NS + 2_000_000,
        body: Body::Request { deadline_ms: 5000 },
        data: Bytes::from_static(b"\x80"),
    }
}

fn reply_ok() -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        id: MessageId(uuid::Uuid::from_u128(PONG_ID)),
        topic: topic("sys.ping"),
        source: NodeId(uuid::Uuid::from_u128(NODE_A)),
        time: T0_NS + 2_500_000,
        body: Body::Reply {
            re: MessageId(uuid::Uuid::from_u128(PING_ID)),
            status: Status::ok(),
        },
        data: payload(&Pong {
            time: T0_NS + 2_400_000,
        }),
    }
}

fn reply_error() -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        id: MessageId(uuid::Uuid::from_u128(END_REPLY_ID)),
        topic: topic("tracking.run.end"),
        source: NodeId(uuid::Uuid::from_u128(NODE_A)),
        time: T0_NS + 3_000_000,
        body: Body::Reply {
            re: MessageId(uuid::Uuid::from_u128(END_ID)),
            status: Status::error(Code::NotFound, "no such run").with_field("run_id"),
        },
        data: Bytes::new(),
    }
}

fn batch() -> Vec<Envelope> {
    [(2, 0.25), (3, 0.125)]
        .into_iter()
        .zip(BATCH_IDS)
        .map(|((seq, value), id)| Envelope {
            version: PROTOCOL_VERSION,
            id: MessageId(uuid::Uuid::from_u128(id)),
            topic: topic("tracking.metrics.logged"),
            source: NodeId(uuid::Uuid::from_u128(NODE_A)),
            time: T0_NS + 4_000_000 + seq * 1_000,
            body: Body::Event { seq },
            data: payload(&metric(value, seq)),
        })
        .collect()
}

/// The `tracking.run.end` request that `reply_error` answers.
fn end_request() -> Envelope {
    #[derive(Serialize)]
    struct End {
        run_id: &'static str,
    }
    Envelope {
        version: PROTOCOL_VERSION,
        id: MessageId(uuid::Uuid::from_u128(END_ID)),
        topic: topic("tracking.run.end"),
        source: NodeId(uuid::Uuid::from_u128(NODE_B)),
        time: T0_NS + 2_000_000 + 1_000,
        body: Body::Request { deadline_ms: 5000 },
        data: payload(&End { run_id: "r0" }),
    }
}

fn heartbeat(leaving: bool) -> Heartbeat {
    Heartbeat {
        interval_ms: 1000,
        name: "tracker".to_owned(),
        mesh: "default".to_owned(),
        leaving,
    }
}

fn endpoints(host: &str) -> Endpoints {
    Endpoints {
        publish: format!("tcp://{host}:40001"),
        rpc: format!("tcp://{host}:40002"),
    }
}

fn describe() -> Describe {
    Describe {
        id: NodeId(uuid::Uuid::from_u128(NODE_A)),
        name: "tracker".to_owned(),
        mesh: "default".to_owned(),
        protocol: PROTOCOL_VERSION,
        version: "mlmesh-rs/0.1.0".to_owned(),
        roles: vec!["tracker".to_owned()],
        serves: vec![Served {
            topic: "tracking.run.start".to_owned(),
            schema: 1,
        }],
        endpoints: endpoints("192.168.1.10"),
        heartbeat_ms: 1000,
        started_ms: T0_MS,
        peers: vec![PeerRecord {
            id: NodeId(uuid::Uuid::from_u128(NODE_B)),
            name: "trainer".to_owned(),
            endpoints: endpoints("192.168.1.11"),
        }],
        batch: true,
    }
}

fn encode(env: &Envelope) -> Vec<u8> {
    Codec::default().encode(env).expect("envelope encodes")
}

/// Re-encodes the map in `bytes` with `edit` applied to its entries, so that a malformed
/// vector is still generated by code from a well-formed one.
fn edit_map(bytes: &[u8], edit: impl FnOnce(&mut Vec<(Value, Value)>)) -> Vec<u8> {
    let Value::Map(mut entries) = rmpv::decode::read_value(&mut &bytes[..]).expect("map") else {
        panic!("not a map");
    };
    edit(&mut entries);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Value::Map(entries)).expect("writes to a Vec");
    out
}

// ---------------------------------------------------------------------------------------
// The independent reading (rmpv)

/// Reads exactly one MessagePack value that fills `bytes`.
fn read_one(bytes: &[u8]) -> Value {
    let mut rd = bytes;
    let value = rmpv::decode::read_value(&mut rd).expect("one MessagePack value");
    assert!(rd.is_empty(), "{} bytes after the value", rd.len());
    value
}

/// The keys of a map value, which must all be strings, in order.
fn keys(value: &Value) -> Vec<&str> {
    let map = value.as_map().expect("a map");
    map.iter()
        .map(|(k, _)| k.as_str().expect("string keys"))
        .collect()
}

fn get<'a>(value: &'a Value, key: &str) -> &'a Value {
    value
        .as_map()
        .expect("a map")
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no key `{key}`"))
}

fn is_uint(v: &Value) -> bool {
    v.as_u64().is_some()
}

fn is_bin16(v: &Value) -> bool {
    matches!(v, Value::Binary(b) if b.len() == 16)
}

/// Checks an envelope as SPEC.md section 3 describes it, without this crate's decoder.
fn check_envelope_shape(bytes: &[u8], env: &Envelope) {
    let value = read_one(bytes);
    let middle: &[&str] = match env.body {
        Body::Event { .. } => &["seq"],
        Body::Request { .. } => &["deadline"],
        Body::Reply { .. } => &["re", "status"],
    };
    let mut order = vec!["v", "id", "type", "kind", "source", "time"];
    order.extend_from_slice(middle);
    order.push("data");
    assert_eq!(keys(&value), order, "keys and their order");

    assert_eq!(get(&value, "v").as_u64(), Some(1));
    assert!(is_bin16(get(&value, "id")));
    assert_eq!(get(&value, "type").as_str(), Some(env.topic.as_str()));
    assert_eq!(get(&value, "kind").as_str(), Some(env.kind().as_str()));
    assert!(is_bin16(get(&value, "source")));
    assert!(is_uint(get(&value, "time")));
    match &env.body {
        Body::Event { seq } => assert_eq!(get(&value, "seq").as_u64(), Some(*seq)),
        Body::Request { deadline_ms } => {
            assert_eq!(
                get(&value, "deadline").as_u64(),
                Some(u64::from(*deadline_ms))
            );
        }
        Body::Reply { re, status } => {
            assert_eq!(
                get(&value, "re"),
                &Value::Binary(re.as_bytes().to_vec()),
                "re"
            );
            let st = get(&value, "status");
            let mut want = vec!["code"];
            if !status.message.is_empty() {
                want.push("message");
            }
            if status.field.is_some() {
                want.push("field");
            }
            assert_eq!(keys(st), want, "status keys");
            assert_eq!(
                get(st, "code").as_u64(),
                Some(u64::from(status.code.as_u16()))
            );
        }
    }
    let Value::Binary(data) = get(&value, "data") else {
        panic!("data is not bin");
    };
    assert_eq!(&data[..], &env.data[..]);
    // A non-OK reply carries no payload; everything else carries exactly one value.
    let no_payload = matches!(&env.body, Body::Reply { status, .. } if !status.is_ok());
    if no_payload {
        assert!(data.is_empty(), "a non-OK reply's data is empty");
    } else {
        read_one(data);
    }
}

fn id_text(id: u128) -> String {
    uuid::Uuid::from_u128(id).hyphenated().to_string()
}

// ---------------------------------------------------------------------------------------
// The checks

#[test]
fn every_vector_in_the_spec_is_checked() {
    let found: BTreeSet<&str> = vectors().iter().map(|b| b.name.as_str()).collect();
    let want: BTreeSet<&str> = CHECKED.iter().copied().collect();
    assert_eq!(found, want);
    assert_eq!(found.len(), vectors().len(), "a vector name is used twice");
}

#[test]
fn fixed_ids_are_uuid_v7() {
    let mut all = vec![
        NODE_A,
        NODE_B,
        EVENT_ID,
        PING_ID,
        PONG_ID,
        END_ID,
        END_REPLY_ID,
    ];
    all.extend(BATCH_IDS);
    for id in all {
        let u = uuid::Uuid::from_u128(id);
        assert_eq!(u.get_version(), Some(uuid::Version::SortRand), "{u}");
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{u}");
        let (secs, nanos) = u.get_timestamp().expect("v7 has a time").to_unix();
        let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!((T0_MS..T0_MS + 10).contains(&ms), "{u}");
    }
}

#[test]
fn envelopes_encode_to_the_vectors_and_back() {
    let codec = Codec::default();
    for (name, env) in [
        ("event", event()),
        ("request", request()),
        ("reply_ok", reply_ok()),
        ("reply_error", reply_error()),
    ] {
        let bytes = assert_vector(name, &encode(&env));
        assert!(!is_batch(&bytes), "{name}");
        assert_eq!(codec.decode(&bytes).expect(name), env, "{name}");
        assert_eq!(
            codec.decode_frame(&bytes).expect(name),
            std::slice::from_ref(&env),
            "{name}"
        );
        check_envelope_shape(&bytes, &env);
    }
}

#[test]
fn payloads_in_the_envelope_vectors_decode() {
    let m: Metric = from_payload(&event().data).expect("metric");
    assert_eq!(m, metric(0.5, 1));
    let p: Pong = from_payload(&reply_ok().data).expect("pong");
    assert_eq!(p.time, T0_NS + 2_400_000);
    assert_eq!(read_one(&request().data), Value::Map(vec![]));
    assert!(reply_error().data.is_empty());
}

#[test]
fn batch_frame_is_an_array_of_envelopes() {
    let envs = batch();
    let parts: Vec<Vec<u8>> = envs.iter().map(encode).collect();
    let bytes = assert_vector("batch", &encode_batch(parts.iter().map(|p| &p[..])));
    assert!(is_batch(&bytes));
    assert_eq!(Codec::default().decode_frame(&bytes).expect("batch"), envs);
    let Value::Array(items) = read_one(&bytes) else {
        panic!("a batch is an array");
    };
    assert_eq!(items.len(), envs.len());
    // Each element is byte for byte the envelope encoded alone.
    let mut rest = &bytes[1..];
    for (part, env) in parts.iter().zip(&envs) {
        assert_eq!(&rest[..part.len()], &part[..]);
        check_envelope_shape(part, env);
        rest = &rest[part.len()..];
    }
    assert!(rest.is_empty());
}

#[test]
fn request_and_reply_batches_are_arrays_of_envelopes() {
    let codec = Codec::default();
    for (name, envs) in [
        ("request_batch", vec![request(), end_request()]),
        ("reply_batch", vec![reply_ok(), reply_error()]),
    ] {
        let parts: Vec<Vec<u8>> = envs.iter().map(encode).collect();
        let bytes = assert_vector(name, &encode_batch(parts.iter().map(|p| &p[..])));
        assert!(is_batch(&bytes), "{name}");
        // Read by the instruction path, with and without the topics known beforehand.
        for known in [false, true] {
            let mut got = Vec::new();
            codec
                .decode_instructions(
                    &bytes,
                    |t| {
                        known
                            .then(|| Topic::new(std::str::from_utf8(t).ok()?).ok())
                            .flatten()
                    },
                    |env| got.push(env),
                )
                .expect(name);
            assert_eq!(got, envs, "{name}");
        }
        let Value::Array(items) = read_one(&bytes) else {
            panic!("a batch is an array");
        };
        assert_eq!(items.len(), envs.len());
        let mut rest = &bytes[1..];
        for (part, env) in parts.iter().zip(&envs) {
            assert_eq!(&rest[..part.len()], &part[..]);
            check_envelope_shape(part, env);
            rest = &rest[part.len()..];
        }
        assert!(rest.is_empty());
    }
    // A batch of none, and one cut short, are rejected whole.
    let mut got = 0;
    for bad in [&b"\x90"[..], &b"\x92\x80"[..]] {
        let bad = Bytes::copy_from_slice(bad);
        assert!(codec
            .decode_instructions(&bad, |_| None, |_| got += 1)
            .is_err());
    }
}

#[test]
fn sys_payloads_encode_to_the_vectors_and_back() {
    for (name, hb) in [
        ("heartbeat", heartbeat(false)),
        ("heartbeat_leaving", heartbeat(true)),
    ] {
        let bytes = assert_vector(name, &to_payload(&hb).expect(name));
        assert_eq!(from_payload::<Heartbeat>(&bytes).expect(name), hb);
        let mut want = vec!["interval_ms", "name", "mesh"];
        if hb.leaving {
            want.push("leaving");
        }
        assert_eq!(keys(&read_one(&bytes)), want, "{name}");
    }

    let d = describe();
    let bytes = assert_vector("describe", &to_payload(&d).expect("describe"));
    assert_eq!(from_payload::<Describe>(&bytes).expect("describe"), d);
    let v = read_one(&bytes);
    assert_eq!(
        keys(&v),
        [
            "id",
            "name",
            "mesh",
            "protocol",
            "version",
            "roles",
            "serves",
            "endpoints",
            "heartbeat_ms",
            "started_ms",
            "peers",
            "batch"
        ]
    );
    assert_eq!(get(&v, "batch"), &Value::Boolean(true));
    // Without batches the key is left out, and a describe without it reads as `false`.
    let plain = Describe {
        batch: false,
        ..describe()
    };
    let plain_bytes = to_payload(&plain).expect("describe");
    assert_eq!(plain_bytes.len(), bytes.len() - 7);
    assert_eq!(plain_bytes[0], 0x8b);
    assert_eq!(
        from_payload::<Describe>(&plain_bytes).expect("describe"),
        plain
    );
    assert!(is_bin16(get(&v, "id")));
    assert_eq!(keys(get(&v, "endpoints")), ["pub", "rpc"]);
    let serves = get(&v, "serves").as_array().expect("serves is an array");
    assert_eq!(keys(&serves[0]), ["topic", "schema"]);
    let peers = get(&v, "peers").as_array().expect("peers is an array");
    assert_eq!(keys(&peers[0]), ["id", "name", "endpoints"]);
    assert!(is_bin16(get(&peers[0], "id")));
}

#[test]
fn malformed_inputs_are_rejected_with_the_listed_status() {
    let good = encode(&request());
    let mut wrong_version = request();
    wrong_version.version = 2;
    let cases: [(&str, Vec<u8>); 5] = [
        ("reject_version", encode(&wrong_version)),
        (
            "reject_missing_type",
            edit_map(&good, |m| m.retain(|(k, _)| k.as_str() != Some("type"))),
        ),
        (
            "reject_bad_topic",
            edit_map(&good, |m| {
                for (k, v) in m.iter_mut() {
                    if k.as_str() == Some("type") {
                        *v = Value::from("Sys.Ping");
                    }
                }
            }),
        ),
        (
            "reject_duplicate_key",
            edit_map(&good, |m| {
                m.push((Value::from("type"), Value::from("sys.describe")));
            }),
        ),
        ("reject_truncated", good[..good.len() - 1].to_vec()),
    ];
    for (name, built) in cases {
        let bytes = assert_vector(name, &built);
        let block = vector(name);
        let err = Codec::default()
            .decode(&bytes)
            .expect_err("a reject vector must not decode");
        let status = err.to_status();
        let want = block
            .attr("expect")
            .expect("reject vectors name their code");
        assert_eq!(status.code.name(), want, "{name}: {err}");
        assert_eq!(
            status.field.as_deref(),
            block.attr("field"),
            "{name}: {err}"
        );
        let re = Codec::peek_id(&bytes).unwrap_or(MessageId::nil());
        assert_eq!(
            Some(re.to_string().as_str()),
            block.attr("re"),
            "{name}: the id the error reply answers"
        );
    }
    assert_eq!(
        vector("reject_version").attr("re"),
        Some(id_text(PING_ID).as_str())
    );
}

#[test]
fn annotated_event_adds_up_to_the_event_vector() {
    let annotated = blocks("hex-annotated");
    let event = annotated
        .iter()
        .find(|b| b.name == "event")
        .expect("SPEC.md has a ```hex-annotated name=event block");
    assert_eq!(
        hex::encode(&event.bytes),
        hex::encode(&vector("event").bytes)
    );
}

// ---------------------------------------------------------------------------------------
// Part II: the families' payloads (SPEC.md 15.10, 16.x)

const RUN: &str = "018fd11894057000800000000000000c";
const EXPERIMENT: &str = "018fd11894057000800000000000000d";

fn log_batch() -> LogBatch {
    LogBatch {
        run: RunId::parse(RUN).expect("run id"),
        params: vec![tracking::Param {
            key: "lr".into(),
            value: "0.01".into(),
        }],
        metrics: vec![
            tracking::Metric {
                key: "loss".into(),
                value: 0.5,
                timestamp: T0_MS,
                step: 3,
            },
            tracking::Metric {
                key: "loss".into(),
                value: f64::NAN,
                timestamp: T0_MS + 1,
                step: 4,
            },
        ],
        tags: vec![],
        inputs: vec![],
    }
}

fn run_info() -> RunInfo {
    RunInfo {
        id: RunId::parse(RUN).expect("run id"),
        experiment_id: ExperimentId::parse(EXPERIMENT).expect("experiment id"),
        name: "baseline".into(),
        status: RunStatus::Running,
        start_ms: T0_MS,
        end_ms: None,
        owner: NodeId::from_slice(&NODE_B.to_be_bytes()).expect("node id"),
        tracker: NodeId::from_slice(&NODE_A.to_be_bytes()).expect("node id"),
        parent: None,
        artifact_uri: format!("file:///srv/mlmesh/artifacts/{EXPERIMENT}/{RUN}/artifacts"),
    }
}

#[test]
fn tracking_payloads_encode_to_the_vectors_and_back() {
    let b = log_batch();
    let bytes = assert_vector("tracking_log_batch", &to_payload(&b).expect("batch"));
    let back: LogBatch = from_payload(&bytes).expect("batch decodes");
    assert_eq!(back.params, b.params);
    assert_eq!(back.metrics[0], b.metrics[0]);
    assert!(back.metrics[1].value.is_nan(), "NaN survives as a float64");
    let v = read_one(&bytes);
    assert_eq!(keys(&v), ["run", "params", "metrics"]);
    let metrics = get(&v, "metrics").as_array().expect("metrics is an array");
    assert_eq!(keys(&metrics[0]), ["key", "value", "timestamp", "step"]);
    assert!(matches!(get(&metrics[1], "value"), Value::F64(x) if x.is_nan()));

    let info = run_info();
    let bytes = assert_vector("tracking_run_info", &to_payload(&info).expect("info"));
    assert_eq!(from_payload::<RunInfo>(&bytes).expect("info decodes"), info);
    let v = read_one(&bytes);
    assert_eq!(
        keys(&v),
        [
            "id",
            "experiment_id",
            "name",
            "status",
            "start_ms",
            "owner",
            "tracker",
            "artifact_uri"
        ]
    );
    assert!(is_bin16(get(&v, "owner")));
    assert_eq!(get(&v, "status").as_str(), Some("RUNNING"));
}

#[test]
fn registry_payloads_encode_to_the_vectors_and_back() {
    let assign = AliasAssign {
        name: "churn".into(),
        alias: "champion".into(),
        version: 3,
    };
    let bytes = assert_vector(
        "registry_alias_assign",
        &to_payload(&assign).expect("assign"),
    );
    assert_eq!(
        from_payload::<AliasAssign>(&bytes).expect("assign decodes"),
        assign
    );
    assert_eq!(keys(&read_one(&bytes)), ["name", "alias", "version"]);

    let located = Located {
        name: "churn".into(),
        version: 3,
        source: "file:///srv/models/churn/3/model.json".into(),
        run_id: Some(RunId::parse(RUN).expect("run id")),
        status: VersionStatus::Ready,
        alias: Some("champion".into()),
    };
    let bytes = assert_vector("registry_located", &to_payload(&located).expect("located"));
    assert_eq!(
        from_payload::<Located>(&bytes).expect("located decodes"),
        located
    );
    assert_eq!(
        keys(&read_one(&bytes)),
        ["name", "version", "source", "run_id", "status", "alias"]
    );
}
