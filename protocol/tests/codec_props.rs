//! Property tests: the codec round-trips every envelope it can build, and no input,
//! however malformed, makes it panic.

use bytes::Bytes;
use mlmesh_protocol::{
    encode_batch, Body, Code, Codec, Envelope, MessageId, NodeId, Status, Topic,
};
use proptest::prelude::*;

fn topic() -> impl Strategy<Value = Topic> {
    proptest::collection::vec("[a-z0-9_]{1,12}", 1..6)
        .prop_map(|segs| Topic::new(&segs.join(".")).expect("generated topics are valid"))
}

fn status() -> impl Strategy<Value = Status> {
    (
        proptest::sample::select(Code::ALL.to_vec()),
        ".{0,40}",
        proptest::option::of("[a-z_.\\[\\]0-9]{1,20}"),
    )
        .prop_map(|(code, message, field)| Status {
            code,
            message,
            field,
        })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        any::<u64>().prop_map(|seq| Body::Event { seq }),
        any::<u32>().prop_map(|deadline_ms| Body::Request { deadline_ms }),
        (any::<u128>(), status()).prop_map(|(re, status)| Body::Reply {
            re: MessageId(uuid::Uuid::from_u128(re)),
            status
        }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<u128>(),
        topic(),
        any::<u128>(),
        any::<u64>(),
        body(),
        proptest::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(id, topic, source, time, body, data)| Envelope {
            version: mlmesh_protocol::PROTOCOL_VERSION,
            id: MessageId(uuid::Uuid::from_u128(id)),
            topic,
            source: NodeId(uuid::Uuid::from_u128(source)),
            time,
            body,
            data: Bytes::from(data),
        })
}

proptest! {
    #[test]
    fn every_envelope_round_trips(env in envelope()) {
        let codec = Codec::default();
        let frame = Bytes::from(codec.encode(&env).expect("encodes"));
        prop_assert_eq!(codec.decode(&frame).expect("decodes"), env);
    }

    #[test]
    fn batches_round_trip(envs in proptest::collection::vec(envelope(), 1..20)) {
        let codec = Codec::default();
        let parts: Vec<Vec<u8>> = envs.iter().map(|e| codec.encode(e).expect("encodes")).collect();
        let frame = Bytes::from(encode_batch(parts.iter().map(|p| &p[..])));
        prop_assert_eq!(codec.decode_frame(&frame).expect("decodes"), envs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let codec = Codec::new(256);
        let frame = Bytes::from(bytes);
        let _ = codec.decode(&frame);
        let _ = codec.decode_frame(&frame);
        let _ = Codec::peek_id(&frame);
    }

    #[test]
    fn corrupted_envelopes_never_panic(env in envelope(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let codec = Codec::default();
        let mut bytes = codec.encode(&env).expect("encodes");
        for (at, b) in flips {
            let n = bytes.len();
            bytes[at % n] = b;
        }
        let keep = cut % (bytes.len() + 1);
        bytes.truncate(keep);
        let frame = Bytes::from(bytes);
        if let Err(e) = codec.decode_frame(&frame) {
            // Every failure maps to a standard error status.
            prop_assert!(!e.to_status().is_ok());
        }
    }
}
