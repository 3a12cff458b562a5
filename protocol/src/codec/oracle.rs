//! The previous envelope encoder (rmp-serde over a derived struct), kept as the oracle
//! that the hand-written one must match byte for byte, on random envelopes whose lengths
//! and numbers sit on every boundary between two MessagePack formats.

use bytes::Bytes;
use proptest::prelude::*;
use serde::Serialize;

use super::Codec;
use crate::envelope::{Body, Envelope, MessageId, NodeId};
use crate::name::Topic;
use crate::status::{Code, Status};

/// The wire form of an envelope, borrowed for encoding.
#[derive(Serialize)]
struct WireOut<'a> {
    v: u16,
    #[serde(with = "serde_bytes")]
    id: &'a [u8],
    #[serde(rename = "type")]
    topic: &'a str,
    kind: &'static str,
    #[serde(with = "serde_bytes")]
    source: &'a [u8],
    time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_bytes")]
    re: Option<&'a [u8]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a Status>,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

fn opt_bytes<S: serde::Serializer>(v: &Option<&[u8]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_bytes(b),
        None => s.serialize_none(),
    }
}

/// What `Codec::encode` wrote before it was written by hand.
fn serde_encode(env: &Envelope) -> Vec<u8> {
    let (seq, deadline, re, status) = match &env.body {
        Body::Event { seq } => (Some(*seq), None, None, None),
        Body::Request { deadline_ms } => (None, Some(*deadline_ms), None, None),
        Body::Reply { re, status } => (None, None, Some(&re.as_bytes()[..]), Some(status)),
    };
    let wire = WireOut {
        v: env.version,
        id: env.id.as_bytes(),
        topic: env.topic.as_str(),
        kind: env.kind().as_str(),
        source: env.source.as_bytes(),
        time: env.time,
        seq,
        deadline,
        re,
        status,
        data: &env.data,
    };
    rmp_serde::to_vec_named(&wire).expect("a Vec cannot fail")
}

/// Numbers on both sides of every uint format's edge, or any.
fn number() -> impl Strategy<Value = u64> {
    let edges = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000];
    let edges: Vec<u64> = edges
        .into_iter()
        .chain([u64::from(u32::MAX), u64::from(u32::MAX) + 1, u64::MAX])
        .collect();
    prop_oneof![proptest::sample::select(edges), any::<u64>()]
}

/// A length on both sides of every str/bin format's edge, or a small one.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        proptest::sample::select(vec![0, 31, 32, 255, 256, 65_535, 65_536]),
        0..300usize,
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        length().prop_map(|n| "é".repeat(n / 2) + &"x".repeat(n % 2))
    ]
}

/// Topics of 1 to 128 bytes (fixstr and str 8).
fn topic() -> impl Strategy<Value = Topic> {
    proptest::collection::vec("[a-z0-9_]{1,40}", 1..6)
        .prop_filter_map("too long", |segs| Topic::new(&segs.join(".")).ok())
}

fn body() -> impl Strategy<Value = Body> {
    let status = (
        proptest::sample::select(Code::ALL.to_vec()),
        text(),
        proptest::option::of(text()),
    )
        .prop_map(|(code, message, field)| Status {
            code,
            message,
            field,
        });
    prop_oneof![
        number().prop_map(|seq| Body::Event { seq }),
        number().prop_map(|n| Body::Request {
            deadline_ms: u32::try_from(n).unwrap_or(u32::MAX)
        }),
        (any::<u128>(), status).prop_map(|(re, status)| Body::Reply {
            re: MessageId(uuid::Uuid::from_u128(re)),
            status
        }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<u16>(),
        any::<u128>(),
        topic(),
        any::<u128>(),
        number(),
        body(),
        length(),
        any::<u8>(),
    )
        .prop_map(
            |(version, id, topic, source, time, body, len, byte)| Envelope {
                version,
                id: MessageId(uuid::Uuid::from_u128(id)),
                topic,
                source: NodeId(uuid::Uuid::from_u128(source)),
                time,
                body,
                data: Bytes::from(vec![byte; len]),
            },
        )
}

proptest! {
    #[test]
    fn the_encoder_writes_what_rmp_serde_wrote(env in envelope()) {
        let codec = Codec::new(usize::MAX);
        let ours = codec.encode(&env).expect("encodes");
        prop_assert_eq!(&ours, &serde_encode(&env));
        if env.version == crate::PROTOCOL_VERSION {
            prop_assert_eq!(codec.decode(&Bytes::from(ours)).expect("decodes"), env);
        }
    }
}
