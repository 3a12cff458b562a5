//! SPEC 3.4, rule by rule, on frames edited from a good request or reply.

use bytes::Bytes;
use rmpv::Value;

use crate::codec::{Codec, DecodeError, MAX_DEPTH};
use crate::envelope::{Body, Envelope, NodeId};
use crate::name::Topic;
use crate::status::{Code, Status};

fn topic(s: &str) -> Topic {
    Topic::new(s).expect("topic")
}

fn request() -> Envelope {
    Envelope::request(
        topic("a.do"),
        NodeId::new(),
        100,
        Bytes::from_static(b"\x80"),
    )
}

fn reply() -> Envelope {
    let status = Status::error(Code::NotFound, "no such run").with_field("run_id");
    Envelope::reply_to(&request(), NodeId::new(), status, Bytes::new())
}

fn encode(env: &Envelope) -> Vec<u8> {
    Codec::default().encode(env).expect("encode")
}

fn decode(frame: impl Into<Bytes>) -> Result<Envelope, DecodeError> {
    Codec::default().decode(&frame.into())
}

/// `frame` (one envelope map) re-encoded with its entries edited, via rmpv.
fn edit(frame: &[u8], f: impl FnOnce(&mut Vec<(Value, Value)>)) -> Vec<u8> {
    let Value::Map(mut entries) = rmpv::decode::read_value(&mut &frame[..]).expect("a value")
    else {
        panic!("an envelope is a map");
    };
    f(&mut entries);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Value::Map(entries)).expect("a Vec");
    out
}

/// Sets `key` to `value`: replaced in place, or added at the end.
fn set(entries: &mut Vec<(Value, Value)>, key: &str, value: Value) {
    match entries.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
        Some((_, v)) => *v = value,
        None => entries.push((Value::from(key), value)),
    }
}

/// `env` encoded with `key` set to `value`.
fn with(env: &Envelope, key: &str, value: Value) -> Vec<u8> {
    edit(&encode(env), |entries| set(entries, key, value))
}

/// `env` encoded with `entry` (raw key and value bytes) appended to its map.
fn plus(env: &Envelope, entry: &[u8]) -> Vec<u8> {
    let mut frame = encode(env);
    assert!(frame[0] < 0x8f, "a fixmap with room for one more key");
    frame[0] += 1;
    frame.extend_from_slice(entry);
    frame
}

fn field(err: &DecodeError) -> Option<String> {
    err.to_status().field
}

#[test]
fn nothing_may_follow_the_map() {
    let c = Codec::default();
    let mut frame = encode(&request());
    frame.push(0xc0);
    let frame = Bytes::from(frame);
    assert!(matches!(c.decode(&frame), Err(DecodeError::Malformed(_))));
    assert!(matches!(
        c.decode_frame(&frame),
        Err(DecodeError::Malformed(_))
    ));
    let parts = [encode(&request())];
    let mut batch = crate::codec::encode_batch(parts.iter().map(|p| &p[..]));
    assert!(c.decode_frame(&Bytes::from(batch.clone())).is_ok());
    batch.push(0x00);
    assert!(matches!(
        c.decode_frame(&Bytes::from(batch)),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn v_is_checked_before_any_other_key() {
    let env = request();
    // Another version wins over a wrong type elsewhere (its shape may differ)...
    let frame = edit(&encode(&env), |m| {
        set(m, "v", Value::from(2));
        set(m, "id", Value::from("not a bin"));
    });
    assert_eq!(decode(frame), Err(DecodeError::Version { got: 2 }));
    // ... a `v` that is no uint16 is INVALID_ARGUMENT naming it ...
    for v in [
        Value::from("1"),
        Value::from(70_000),
        Value::from(-1),
        Value::Nil,
    ] {
        let err = decode(with(&env, "v", v.clone())).expect_err("bad v");
        assert_eq!(field(&err).as_deref(), Some("v"), "{v}: {err:?}");
    }
    // ... and a missing `v` is reported before other keys' types.
    let frame = edit(&encode(&env), |m| {
        m.retain(|(k, _)| k.as_str() != Some("v"));
        set(m, "seq", Value::Nil);
    });
    assert_eq!(decode(frame), Err(DecodeError::Missing("v")));
}

#[test]
fn a_known_key_of_another_type_is_invalid_and_named() {
    let env = request();
    let cases = [
        ("id", Value::from("0123456789abcdef")),
        ("type", Value::Binary(b"a.do".to_vec())),
        ("kind", Value::from(1)),
        ("source", Value::Nil),
        ("time", Value::from(-1)),
        ("time", Value::F64(1.0)),
        ("deadline", Value::from(1u64 << 32)),
        // Keys of another kind are checked too (SPEC 3.4 step 4).
        ("seq", Value::Nil),
        ("re", Value::from("x")),
        ("status", Value::from(5)),
        ("status", Value::Array(vec![Value::from(5)])),
        ("data", Value::from("x")),
    ];
    for (key, value) in cases {
        let err = decode(with(&env, key, value.clone())).expect_err(key);
        assert!(
            matches!(&err, DecodeError::Invalid { field, .. } if field == key),
            "{key} = {value}: {err:?}"
        );
    }
}

#[test]
fn every_uint_format_is_accepted() {
    // SPEC 1.4: receivers accept every integer format holding the value, signed ones
    // included; written by hand here, as encoders pick the shortest.
    let env = request();
    let frame = encode(&env);
    let at = frame
        .windows(9)
        .position(|w| w == b"\xa8deadline")
        .expect("deadline key")
        + 9;
    assert_eq!(frame[at], 100, "a positive fixint");
    for wide in [
        &b"\xcc\x64"[..],
        b"\xcd\x00\x64",
        b"\xce\x00\x00\x00\x64",
        b"\xcf\x00\x00\x00\x00\x00\x00\x00\x64",
        b"\xd0\x64",
        b"\xd1\x00\x64",
        b"\xd2\x00\x00\x00\x64",
        b"\xd3\x00\x00\x00\x00\x00\x00\x00\x64",
    ] {
        let mut f = frame[..at].to_vec();
        f.extend_from_slice(wide);
        f.extend_from_slice(&frame[at + 1..]);
        assert_eq!(decode(f).expect("decodes"), env, "{wide:02x?}");
    }
}

#[test]
fn keys_are_unique_strs() {
    let env = request();
    for entry in [
        &b"\x01\x01"[..],     // an integer key
        b"\xc4\x01v\x01",     // a bin key
        b"\xa2\xff\xfe\x01",  // a str key that is not UTF-8
        b"\xa4kind\xa5event", // a known key twice
    ] {
        let err = decode(plus(&env, entry)).expect_err("bad key");
        assert!(
            matches!(err, DecodeError::Malformed(_)),
            "{entry:02x?}: {err:?}"
        );
        assert_eq!(field(&err), None);
    }
    // An unknown key twice.
    let mut frame = plus(&env, b"\xa1x\x01");
    frame[0] += 1;
    frame.extend_from_slice(b"\xa1x\x02");
    assert!(matches!(decode(frame), Err(DecodeError::Malformed(_))));
    // Two different unknown keys are fine, whatever they hold.
    let mut frame = plus(&env, b"\xa4auth\xc4\x03sig");
    frame[0] += 1;
    frame.extend_from_slice(b"\xa1x\x82\xa1a\x92\xcb\0\0\0\0\0\0\0\0\xd6\x01\0\0\0\0\xa1b\xc0");
    assert_eq!(decode(frame).expect("unknown keys are skipped"), env);
}

#[test]
fn unknown_values_are_skipped_up_to_the_depth_limit() {
    let env = request();
    let nested = |levels: usize| {
        let mut entry = b"\xa1x".to_vec();
        entry.extend(std::iter::repeat_n(0x91, levels));
        entry.push(0x01);
        plus(&env, &entry)
    };
    // The envelope map is one level of MAX_DEPTH.
    assert_eq!(decode(nested(MAX_DEPTH - 1)).expect("at the limit"), env);
    assert!(matches!(
        decode(nested(MAX_DEPTH)),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode(nested(1_000_000)),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn status_is_a_map_of_code_message_and_field() {
    let env = reply();
    let status = |entries: Vec<(&str, Value)>| {
        let map = entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect();
        decode(with(&env, "status", Value::Map(map)))
    };
    let body = |e: Envelope| match e.body {
        Body::Reply { status, .. } => status,
        _ => panic!("a reply"),
    };
    // Unknown keys are ignored; `field: nil` is read as absent, as it always was.
    let got = status(vec![
        ("later", Value::Array(vec![Value::Nil])),
        ("code", Value::from(5)),
        ("field", Value::Nil),
    ])
    .expect("decodes");
    assert_eq!(body(got), Status::error(Code::NotFound, ""));
    // Unknown numbers are UNKNOWN.
    let got = status(vec![("code", Value::from(999))]).expect("decodes");
    assert_eq!(body(got).code, Code::Unknown);
    for bad in [
        vec![("message", Value::from("no code"))],
        vec![("code", Value::from(70_000))],
        vec![("code", Value::from(5)), ("code", Value::from(5))],
        vec![("code", Value::from(5)), ("message", Value::Nil)],
        vec![("code", Value::from(5)), ("field", Value::from(1))],
    ] {
        let err = status(bad.clone()).expect_err("bad status");
        assert_eq!(field(&err).as_deref(), Some("status"), "{bad:?}: {err:?}");
    }
}

#[test]
fn ids_are_16_bytes() {
    let env = reply();
    for key in ["id", "source", "re"] {
        let err = decode(with(&env, key, Value::Binary(vec![1; 15]))).expect_err(key);
        assert!(
            matches!(&err, DecodeError::Invalid { field, .. } if field == key),
            "{key}: {err:?}"
        );
    }
}

#[test]
fn event_frames_share_their_topic() {
    let c = Codec::default();
    let t = topic("a.b");
    let src = NodeId::new();
    let events: Vec<_> = (1..=3)
        .map(|seq| Envelope::event(t.clone(), src, seq, Bytes::from_static(b"\x01")))
        .collect();
    let parts: Vec<Vec<u8>> = events.iter().map(encode).collect();
    let batch = Bytes::from(crate::codec::encode_batch(parts.iter().map(|p| &p[..])));
    let frame_topic = topic("a.b");
    let got = c.decode_event_frame(&frame_topic, &batch).expect("decodes");
    assert_eq!(got, events);
    assert!(got
        .iter()
        .all(|e| std::ptr::eq(e.topic.as_str(), frame_topic.as_str())));
    let single = Bytes::from(parts[0].clone());
    assert_eq!(
        c.decode_event_frame(&frame_topic, &single).expect("one"),
        events[..1]
    );
    // Another topic frame, or one envelope of another type, rejects the frame.
    let other = topic("a.c");
    for frame in [&single, &batch] {
        let err = c
            .decode_event_frame(&other, frame)
            .expect_err("other topic");
        assert_eq!(field(&err).as_deref(), Some("type"), "{err:?}");
    }
    let odd = encode(&Envelope::event(other.clone(), src, 4, Bytes::new()));
    let mixed = [&parts[0], &odd, &parts[1]];
    let mixed = Bytes::from(crate::codec::encode_batch(mixed.iter().map(|p| &p[..])));
    assert!(c.decode_frame(&mixed).is_ok());
    assert!(c.decode_event_frame(&frame_topic, &mixed).is_err());
}

#[test]
fn a_batch_holds_envelope_maps() {
    let c = Codec::default();
    assert!(matches!(
        c.decode_frame(&Bytes::from_static(b"\x93\x01\x02\x03")),
        Err(DecodeError::Malformed(_))
    ));
    // A batch holds at least one envelope (SPEC 5.2).
    assert!(matches!(
        c.decode_frame(&Bytes::from_static(b"\x90")),
        Err(DecodeError::Malformed(_))
    ));
    // A hostile count is an error, not a huge allocation.
    assert!(c
        .decode_frame(&Bytes::from_static(b"\xdd\xff\xff\xff\xff\x80"))
        .is_err());
}

#[test]
fn every_cut_of_a_frame_is_an_error() {
    let c = Codec::default();
    let parts = [encode(&reply()), encode(&request())];
    let batch = crate::codec::encode_batch(parts.iter().map(|p| &p[..]));
    for frame in [&parts[0][..], &batch[..]] {
        for cut in 0..frame.len() {
            let bytes = Bytes::copy_from_slice(&frame[..cut]);
            assert!(c.decode(&bytes).is_err(), "cut at {cut}");
            assert!(c.decode_frame(&bytes).is_err(), "cut at {cut}");
        }
    }
}
