//! Encoding and decoding of envelopes and payloads, with a size limit.
//!
//! An envelope is a MessagePack map with string keys (see SPEC.md, "Envelope"). A frame
//! on the event path holds either one envelope (a map) or a batch (an array of maps that
//! share one topic). Decoding never panics: every malformed input is a [`DecodeError`].

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::envelope::NodeId;
use crate::envelope::{Envelope, MessageId, PROTOCOL_VERSION};
use crate::name::Topic;
use crate::status::{Code, Status};

#[cfg(test)]
mod oracle;
mod read;
mod wire;
mod write;

use read::{Malformed, Reader};
use wire::Fields;

/// The default maximum size of one frame, in bytes (1 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

/// The deepest nesting of arrays and maps accepted in a frame or payload. Deeper input
/// is malformed: unbounded recursion would let one frame overflow a node's stack.
pub const MAX_DEPTH: usize = 64;

/// A deserializer over `bytes` that borrows from it and enforces [`MAX_DEPTH`].
fn reader(bytes: &[u8]) -> rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'_, [u8]>> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    // rmp-serde fails when its depth budget reaches zero, so a budget of N admits N - 1
    // levels: one more makes it agree with `Reader::skip_value` and the doc of MAX_DEPTH.
    de.set_max_depth(MAX_DEPTH + 1);
    de
}

/// Decodes one MessagePack value of type `T` from `bytes`, depth-limited.
fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    T::deserialize(&mut reader(bytes))
}

/// Why bytes could not be decoded into an envelope or a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is over the receiver's size limit.
    #[error("message is {size} bytes, the limit is {max}")]
    TooLarge {
        /// Size of the frame.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The envelope's protocol version is not [`PROTOCOL_VERSION`].
    #[error("protocol version {got} is not supported (this node speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version found.
        got: u16,
    },
    /// Not a MessagePack value of the right shape.
    #[error("malformed MessagePack: {0}")]
    Malformed(String),
    /// A required field is missing.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field has a wrong type or value.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        /// The offending field (a dotted path for payloads).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// The standard status that reports this error to the sender.
    pub fn to_status(&self) -> Status {
        let status = match self {
            DecodeError::TooLarge { .. } => Status::error(Code::TooLarge, self.to_string()),
            DecodeError::Version { .. } => Status::error(Code::VersionMismatch, self.to_string()),
            _ => Status::error(Code::InvalidArgument, self.to_string()),
        };
        match self {
            DecodeError::Missing(field) => status.with_field(*field),
            DecodeError::Invalid { field, .. } => status.with_field(field.clone()),
            _ => status,
        }
    }
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded message would be over the size limit.
    #[error("message is {size} bytes, the limit is {max}")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The value cannot be represented in MessagePack.
    #[error("cannot encode: {0}")]
    Serialize(String),
}

impl EncodeError {
    /// The standard status for this error.
    pub fn to_status(&self) -> Status {
        match self {
            EncodeError::TooLarge { .. } => Status::error(Code::TooLarge, self.to_string()),
            EncodeError::Serialize(_) => Status::error(Code::InvalidArgument, self.to_string()),
        }
    }
}

/// Encodes and decodes envelopes under a size limit.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    max_size: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl Codec {
    /// A codec that refuses frames over `max_size` bytes.
    pub const fn new(max_size: usize) -> Self {
        Self { max_size }
    }

    /// The size limit.
    pub const fn max_size(&self) -> usize {
        self.max_size
    }

    /// Encodes one envelope: its keys in the order of SPEC 3.1 and every value in its
    /// shortest format, which is what reproduces the SPEC 14 vectors byte for byte.
    pub fn encode(&self, env: &Envelope) -> Result<Vec<u8>, EncodeError> {
        let out = wire::write_envelope(env)?;
        if out.len() > self.max_size {
            return Err(EncodeError::TooLarge {
                size: out.len(),
                max: self.max_size,
            });
        }
        Ok(out)
    }

    /// Decodes one envelope, following SPEC 3.4. `frame` is sliced, not copied, for the
    /// payload.
    pub fn decode(&self, frame: &Bytes) -> Result<Envelope, DecodeError> {
        self.check_size(frame)?;
        decode_one(frame, None)
    }

    /// As [`decode`](Self::decode), for the instruction path: a request or reply laid out
    /// as this crate writes one, whose `type` `resolve` maps to a topic the caller already
    /// holds (a served topic, the topic of the last reply), is read by position, with
    /// that topic shared instead of validated and allocated again (the tests compare both
    /// paths on every envelope they decode). Anything else takes [`decode`](Self::decode)'s
    /// path and result.
    pub fn decode_with(
        &self,
        frame: &Bytes,
        resolve: impl FnOnce(&[u8]) -> Option<Topic>,
    ) -> Result<Envelope, DecodeError> {
        self.check_size(frame)?;
        let mut r = Reader::new(frame);
        if let Some(env) = r.attempt(|r| {
            let env = wire::read_instruction(r, frame, resolve)?;
            r.end().ok()?;
            Some(env)
        }) {
            return Ok(env);
        }
        decode_one(frame, None)
    }

    /// As [`decode_with`](Self::decode_with), for an instruction frame that may be a
    /// batch (SPEC 5.3): each envelope, in order, is handed to `each` as it is decoded,
    /// read by position when `resolve` knows its `type`. A batch is decoded whole or not
    /// at all: on an error `each` may have had the envelopes before the bad one, and the
    /// caller must discard them (the batch is rejected as one undecodable request).
    pub fn decode_instructions(
        &self,
        frame: &Bytes,
        mut resolve: impl FnMut(&[u8]) -> Option<Topic>,
        mut each: impl FnMut(Envelope),
    ) -> Result<(), DecodeError> {
        if !is_batch(frame) {
            each(self.decode_with(frame, resolve)?);
            return Ok(());
        }
        self.check_size(frame)?;
        let mut r = Reader::new(frame);
        let count = r
            .attempt(Reader::array_len)
            .ok_or_else(|| malformed("the batch's array header is cut short"))?;
        if count == 0 {
            return Err(malformed("a batch holds at least one envelope (SPEC 5.3)"));
        }
        for _ in 0..count {
            if let Some(env) = r.attempt(|r| wire::read_instruction(r, frame, &mut resolve)) {
                each(env);
                continue;
            }
            let mut fields = Fields::default();
            fields.read(&mut r, 1)?;
            each(fields.into_envelope(frame, None)?);
        }
        r.end()?;
        Ok(())
    }

    /// Decodes an event frame: one envelope, or a batch of envelopes (an array).
    pub fn decode_frame(&self, frame: &Bytes) -> Result<Vec<Envelope>, DecodeError> {
        let mut out = Vec::new();
        self.decode_envelopes::<false>(frame, None, |env| out.push(env))?;
        Ok(out)
    }

    /// Decodes the body of an event message whose topic frame is `topic` (SPEC 5.2): as
    /// [`decode_frame`](Self::decode_frame), but the `type` of every envelope must equal
    /// `topic` (else [`DecodeError::Invalid`] for `type`), and the envelopes share
    /// `topic` instead of each validating and allocating its own copy.
    pub fn decode_event_frame(
        &self,
        topic: &Topic,
        frame: &Bytes,
    ) -> Result<Vec<Envelope>, DecodeError> {
        let mut out = Vec::new();
        self.decode_event_frame_with(topic, frame, |env| out.push(env))?;
        Ok(out)
    }

    /// As [`decode_event_frame`](Self::decode_event_frame), handing each envelope to
    /// `each` as it is decoded instead of collecting them. On an error `each` may have
    /// had the envelopes before the bad one: they belong to a rejected frame, and the
    /// caller discards them.
    pub fn decode_event_frame_with(
        &self,
        topic: &Topic,
        frame: &Bytes,
        each: impl FnMut(Envelope),
    ) -> Result<(), DecodeError> {
        self.decode_envelopes::<true>(frame, Some(topic), each)
    }

    /// Decodes a frame's envelopes into `each`. With `FAST`, an envelope laid out as this
    /// crate writes events is read by [`wire::read_event`] first (the tests run every
    /// frame both ways and compare).
    fn decode_envelopes<const FAST: bool>(
        &self,
        frame: &Bytes,
        topic: Option<&Topic>,
        mut each: impl FnMut(Envelope),
    ) -> Result<(), DecodeError> {
        self.check_size(frame)?;
        let one = |r: &mut Reader<'_>, depth: usize| -> Result<Envelope, DecodeError> {
            if let (true, Some(topic)) = (FAST, topic) {
                if let Some(env) = r.attempt(|r| wire::read_event(r, frame, topic)) {
                    return Ok(env);
                }
            }
            let mut fields = Fields::default();
            fields.read(r, depth)?;
            if depth == 0 {
                // Step 2 of SPEC 3.4 (one map, nothing after it) comes before any check
                // of its keys.
                r.end()?;
            }
            fields.into_envelope(frame, topic)
        };
        let mut r = Reader::new(frame);
        if !is_batch(frame) {
            let env = one(&mut r, 0)?;
            r.end()?;
            each(env);
            return Ok(());
        }
        let count = r
            .attempt(Reader::array_len)
            .ok_or_else(|| malformed("the batch's array header is cut short"))?;
        if count == 0 {
            return Err(malformed("a batch holds at least one envelope (SPEC 5.2)"));
        }
        for _ in 0..count {
            // Each envelope is validated as soon as it is read: one bad envelope rejects
            // the whole batch (SPEC 5.2 allows that), whatever follows it.
            each(one(&mut r, 1)?);
        }
        r.end()?;
        Ok(())
    }

    /// Reads the `id` of a frame that may not decode as a whole, so that an error reply
    /// can still name the request it answers.
    pub fn peek_id(frame: &[u8]) -> Option<MessageId> {
        #[derive(Deserialize)]
        struct IdOnly<'a> {
            #[serde(default, borrow, deserialize_with = "opt_bytes")]
            id: Option<&'a [u8]>,
        }
        let w: IdOnly<'_> = from_slice(frame).ok()?;
        w.id.and_then(MessageId::from_slice)
    }

    fn check_size(&self, frame: &[u8]) -> Result<(), DecodeError> {
        if frame.len() > self.max_size {
            return Err(DecodeError::TooLarge {
                size: frame.len(),
                max: self.max_size,
            });
        }
        Ok(())
    }
}

/// Decodes a frame that is one envelope; with a `topic`, its `type` must be that.
fn decode_one(frame: &Bytes, topic: Option<&Topic>) -> Result<Envelope, DecodeError> {
    let mut r = Reader::new(frame);
    let mut fields = Fields::default();
    fields.read(&mut r, 0)?;
    // Step 2 of SPEC 3.4 (one map, nothing after it) comes before any check of its keys.
    r.end()?;
    fields.into_envelope(frame, topic)
}

/// `Option<&[u8]>` read from a bin or nil.
fn opt_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de [u8]>, D::Error> {
    Option::<&'de serde_bytes::Bytes>::deserialize(d).map(|o| o.map(|b| &b[..]))
}

/// Whether an event frame is a batch (a MessagePack array) rather than one envelope.
pub fn is_batch(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(0x90..=0x9f | 0xdc | 0xdd))
}

/// Joins already-encoded envelopes into one batch frame (a MessagePack array).
pub fn encode_batch<'a>(parts: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let n = parts.len();
    let mut out = Vec::new();
    // Writing an array header into a Vec cannot fail.
    let _ = rmp::encode::write_array_len(&mut out, n as u32);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// Bytes a [`BatchBuf`] keeps in front of its envelopes for the array header (an
/// array 32 header, the longest).
const BATCH_HEADER: usize = 5;

/// A batch frame built in place (SPEC 5.2): each envelope is encoded straight after the
/// previous one, and the array header is written at the end into space kept in front,
/// so no envelope is copied. [`finish`](Self::finish) gives the same bytes as
/// [`encode_batch`] of the same envelopes, and a batch of one is the envelope alone.
#[derive(Debug)]
pub struct BatchBuf {
    buf: Vec<u8>,
    count: usize,
    /// Where the last envelope pushed starts, for [`undo`](Self::undo).
    last: usize,
}

impl BatchBuf {
    /// An empty batch with room for `capacity` bytes of envelopes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(BATCH_HEADER + capacity);
        buf.resize(BATCH_HEADER, 0);
        Self {
            buf,
            count: 0,
            last: BATCH_HEADER,
        }
    }

    /// Envelopes in the batch.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes of the envelopes (the header not counted).
    pub fn len(&self) -> usize {
        self.buf.len() - BATCH_HEADER
    }

    /// Whether the batch holds no envelope.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encodes `env` at the end of the batch and returns its size; an envelope over the
    /// codec's limit is an error, and leaves the batch as it was.
    pub fn push(&mut self, codec: &Codec, env: &Envelope) -> Result<usize, EncodeError> {
        let start = self.buf.len();
        wire::append_envelope(env, &mut self.buf)?;
        let size = self.buf.len() - start;
        if size > codec.max_size {
            self.buf.truncate(start);
            return Err(EncodeError::TooLarge {
                size,
                max: codec.max_size,
            });
        }
        self.last = start;
        self.count += 1;
        Ok(size)
    }

    /// Appends an envelope already encoded (by [`Codec::encode`]) and returns its size.
    pub fn push_encoded(&mut self, envelope: &[u8]) -> usize {
        self.last = self.buf.len();
        self.buf.extend_from_slice(envelope);
        self.count += 1;
        envelope.len()
    }

    /// Removes the envelope of the last [`push`](Self::push); only once after a push.
    pub fn undo(&mut self) {
        if self.count > 0 && self.last < self.buf.len() {
            self.buf.truncate(self.last);
            self.count -= 1;
        }
    }

    /// The frame: the one envelope, or an array of them.
    pub fn finish(self) -> Bytes {
        let Self { mut buf, count, .. } = self;
        let start = if count == 1 {
            BATCH_HEADER
        } else {
            let mut header = Vec::with_capacity(BATCH_HEADER);
            // Writing an array header into a Vec cannot fail; a count over u32 cannot
            // be reached under any frame size limit.
            let _ = rmp::encode::write_array_len(&mut header, count as u32);
            let start = BATCH_HEADER - header.len();
            buf[start..BATCH_HEADER].copy_from_slice(&header);
            start
        };
        Bytes::from(buf).slice(start..)
    }
}

fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}

impl From<Malformed> for DecodeError {
    fn from(m: Malformed) -> Self {
        DecodeError::Malformed(m.to_string())
    }
}

/// Encodes a payload as a MessagePack map with named fields.
pub fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    // Room for a small payload from the start: growing from empty took three
    // reallocations for a reply of a few fields.
    let mut buf = Vec::with_capacity(64);
    rmp_serde::encode::write_named(&mut buf, value)
        .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    Ok(buf)
}

/// The length of `value` encoded as [`to_payload`] would encode it, without building it:
/// what a node needs to cut a reply to its size limit.
pub fn payload_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, EncodeError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut count).with_struct_map())
        .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    Ok(count.0)
}

/// Decodes a payload; an error names the offending field as a path (`a.b[2].c`),
/// including a required field that is missing.
pub fn from_payload<T: DeserializeOwned>(data: &[u8]) -> Result<T, DecodeError> {
    // The plain decoder first: tracking the path costs on every field, and only an error
    // needs it. A payload that fails is decoded again, with the path, to name the field.
    if let Ok(value) = T::deserialize(&mut reader(data)) {
        return Ok(value);
    }
    serde_path_to_error::deserialize(&mut reader(data)).map_err(|e| {
        let parent = e.path().to_string();
        let reason = e.into_inner().to_string();
        let parent = if parent == "." { String::new() } else { parent };
        // serde reports a missing field at its parent's path, naming it in the message.
        let missing = reason
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next());
        match missing {
            Some(name) if parent.is_empty() => DecodeError::Invalid {
                field: name.to_owned(),
                reason,
            },
            Some(name) => DecodeError::Invalid {
                field: format!("{parent}.{name}"),
                reason,
            },
            None if parent.is_empty() => DecodeError::Malformed(reason),
            None => DecodeError::Invalid {
                field: parent,
                reason,
            },
        }
    })
}

/// Checks that `data` is exactly one MessagePack value (within [`MAX_DEPTH`]), as a
/// request's payload must be, without decoding it into any type.
pub fn check_payload(data: &[u8]) -> Result<(), DecodeError> {
    let invalid = |reason: String| DecodeError::Invalid {
        field: "data".into(),
        reason,
    };
    let mut r = Reader::new(data);
    r.skip_value(0)
        .map_err(|e| invalid(format!("not a MessagePack value: {e}")))?;
    let rest = r.remaining();
    if rest != 0 {
        return Err(invalid(format!("{rest} bytes follow the payload value")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).expect("valid")
    }

    #[test]
    fn every_kind_round_trips() {
        let c = Codec::default();
        let src = NodeId::new();
        let req = Envelope::request(topic("a.do"), src, 250, Bytes::from_static(b"\x80"));
        let envs = [
            Envelope::event(topic("a.done"), src, 7, Bytes::from_static(b"\xc0")),
            req.clone(),
            Envelope::reply_to(&req, src, Status::ok(), Bytes::from_static(b"\x80")),
            Envelope::reply_to(
                &req,
                src,
                Status::error(Code::NotFound, "no such run").with_field("run_id"),
                Bytes::new(),
            ),
        ];
        for env in envs {
            let bytes = Bytes::from(c.encode(&env).expect("encode"));
            assert_eq!(c.decode(&bytes).expect("decode"), env);
        }
    }

    #[test]
    fn batches_round_trip() {
        let c = Codec::default();
        let src = NodeId::new();
        let envs: Vec<_> = (1..=3)
            .map(|i| Envelope::event(topic("a.b"), src, i, Bytes::from_static(b"\x01")))
            .collect();
        let parts: Vec<Vec<u8>> = envs.iter().map(|e| c.encode(e).expect("enc")).collect();
        let frame = Bytes::from(encode_batch(parts.iter().map(|p| &p[..])));
        assert!(is_batch(&frame));
        assert_eq!(c.decode_frame(&frame).expect("decode"), envs);
    }

    #[test]
    fn a_batch_built_in_place_is_the_joined_batch() {
        let c = Codec::default();
        let src = NodeId::new();
        // Array headers of every width: fixarray, array 16.
        for n in [1u64, 2, 15, 16, 17, 300] {
            let envs: Vec<_> = (1..=n)
                .map(|i| Envelope::event(topic("a.b"), src, i, Bytes::from_static(b"\x01")))
                .collect();
            let parts: Vec<Vec<u8>> = envs.iter().map(|e| c.encode(e).expect("enc")).collect();
            let mut batch = BatchBuf::with_capacity(16);
            for e in &envs {
                batch.push(&c, e).expect("push");
            }
            // An undone push leaves no trace.
            batch.push(&c, &envs[0]).expect("push");
            batch.undo();
            assert_eq!(batch.count(), envs.len());
            assert_eq!(batch.len(), parts.iter().map(Vec::len).sum::<usize>());
            let frame = batch.finish();
            if n == 1 {
                assert_eq!(frame[..], parts[0][..], "a batch of one is the envelope");
            } else {
                assert_eq!(frame[..], encode_batch(parts.iter().map(|p| &p[..]))[..]);
            }
            assert_eq!(c.decode_frame(&frame).expect("decode"), envs);
        }
        let mut small = BatchBuf::with_capacity(0);
        let big = Envelope::event(topic("a.b"), src, 1, Bytes::from(vec![0xc0; 300]));
        assert!(matches!(
            small.push(&Codec::new(256), &big),
            Err(EncodeError::TooLarge { .. })
        ));
        assert!(small.is_empty());
        assert_eq!(small.len(), 0, "no bytes left behind");
    }

    /// `frame`, then copies with one byte changed (each of the first 300, three ways),
    /// cut short at each of those places, and with a byte too many.
    fn damaged(frame: &[u8]) -> Vec<Vec<u8>> {
        let mut variants = vec![frame.to_vec()];
        for i in 0..frame.len().min(300) {
            for delta in [1u8, 0x80, 0xff] {
                let mut edited = frame.to_vec();
                edited[i] = edited[i].wrapping_add(delta);
                variants.push(edited);
            }
            variants.push(frame[..i].to_vec());
        }
        let mut longer = frame.to_vec();
        longer.push(0xc0);
        variants.push(longer);
        variants
    }

    #[test]
    fn the_event_fast_path_agrees_with_the_general_path() {
        let c = Codec::default();
        let t = topic("a.b");
        let run = |fast: bool, frame: &Bytes| {
            let mut out = Vec::new();
            let r = if fast {
                c.decode_envelopes::<true>(frame, Some(&t), |e| out.push(e))
            } else {
                c.decode_envelopes::<false>(frame, Some(&t), |e| out.push(e))
            };
            r.map(|()| out)
        };
        // Every width of time, seq and data; then a batch of them, a request and an
        // event of another topic.
        let mut frames = Vec::new();
        for (time, seq, len) in [
            (0, 1, 0),
            (127, 128, 1),
            (255, 256, 255),
            (65_535, 65_536, 256),
            (u64::from(u32::MAX), u64::MAX, 70_000),
        ] {
            let mut env =
                Envelope::event(t.clone(), NodeId::new(), seq, Bytes::from(vec![0xc0; len]));
            env.time = time;
            let frame = c.encode(&env).expect("encode");
            let bytes = Bytes::from(frame.clone());
            let mut r = read::Reader::new(&bytes);
            assert_eq!(
                wire::read_event(&mut r, &bytes, &t),
                Some(env),
                "the fast path reads what the encoder writes"
            );
            frames.push(frame);
        }
        frames.push(encode_batch(frames[..4].iter().map(|f| &f[..])));
        let req = Envelope::request(t.clone(), NodeId::new(), 5, Bytes::from_static(b"\x80"));
        frames.push(c.encode(&req).expect("encode"));
        let other = Envelope::event(topic("a.c"), NodeId::new(), 1, Bytes::from_static(b"\x80"));
        frames.push(c.encode(&other).expect("encode"));
        let mut checked = 0;
        for frame in &frames {
            let variants = damaged(frame);
            for v in variants {
                let v = Bytes::from(v);
                assert_eq!(run(true, &v), run(false, &v), "{v:x?}");
                checked += 1;
            }
        }
        assert!(checked > 5000);
    }

    #[test]
    fn the_instruction_fast_path_agrees_with_the_general_path() {
        let c = Codec::default();
        let t = topic("a.b");
        let known = |name: &[u8]| (name == t.as_str().as_bytes()).then(|| t.clone());
        // Every width of time, deadline and data, for requests; then replies with each
        // shape of status; then envelopes the fast path must leave to the general one.
        let mut frames = Vec::new();
        let mut read_fast = Vec::new();
        for (time, deadline, len) in [
            (0, 1, 0),
            (127, 128, 1),
            (255, 256, 255),
            (65_535, 65_536, 256),
            (u64::from(u32::MAX), u32::MAX, 70_000),
        ] {
            let mut req = Envelope::request(
                t.clone(),
                NodeId::new(),
                deadline,
                Bytes::from(vec![0xc0; len]),
            );
            req.time = time;
            for status in [
                Status::ok(),
                Status::error(Code::NotFound, "no such run"),
                Status::error(Code::InvalidArgument, "bad").with_field("data.x"),
            ] {
                let mut rep = Envelope::reply_to(&req, NodeId::new(), status, req.data.clone());
                rep.time = time;
                read_fast.push(rep);
            }
            read_fast.push(req);
        }
        for env in &read_fast {
            let frame = Bytes::from(c.encode(env).expect("encode"));
            let mut r = read::Reader::new(&frame);
            assert_eq!(
                wire::read_instruction(&mut r, &frame, known).as_ref(),
                Some(env),
                "the fast path reads what the encoder writes"
            );
            frames.push(frame.to_vec());
        }
        let ev = Envelope::event(t.clone(), NodeId::new(), 1, Bytes::from_static(b"\x80"));
        frames.push(c.encode(&ev).expect("encode"));
        let other = Envelope::request(topic("a.c"), NodeId::new(), 5, Bytes::from_static(b"\x80"));
        frames.push(c.encode(&other).expect("encode"));
        let mut checked = 0;
        for frame in &frames {
            let variants = damaged(frame);
            for v in variants {
                let v = Bytes::from(v);
                assert_eq!(c.decode_with(&v, known), c.decode(&v), "{v:x?}");
                // A resolver that names another topic is not believed.
                let wrong = |_: &[u8]| Some(topic("a.c"));
                assert_eq!(c.decode_with(&v, wrong), c.decode(&v), "{v:x?}");
                checked += 1;
            }
        }
        assert!(checked > 5000);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let c = Codec::new(64);
        assert!(matches!(
            c.decode(&Bytes::from(vec![0u8; 65])),
            Err(DecodeError::TooLarge { size: 65, max: 64 })
        ));
        assert!(matches!(
            c.decode(&Bytes::from_static(b"\xc1")),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            c.decode(&Bytes::from_static(b"\x80")),
            Err(DecodeError::Missing("v"))
        ));
        // {"v": 9}
        assert_eq!(
            c.decode(&Bytes::from_static(b"\x81\xa1v\x09")),
            Err(DecodeError::Version { got: 9 })
        );
    }

    #[test]
    fn payload_errors_name_the_field() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct P {
            name: String,
            n: u32,
        }
        let bytes = to_payload(&serde_json_like()).expect("enc");
        let err = from_payload::<P>(&bytes).expect_err("wrong type");
        assert!(
            matches!(err, DecodeError::Invalid { ref field, .. } if field == "n"),
            "{err:?}"
        );
    }

    fn serde_json_like() -> std::collections::BTreeMap<&'static str, &'static str> {
        [("name", "x"), ("n", "not a number")].into_iter().collect()
    }
}

#[cfg(test)]
mod nesting {
    use super::*;

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // {"x": [[[[ ... 100,000 levels ... ]]]]}
        let mut frame = vec![0x81, 0xa1, b'x'];
        frame.extend(std::iter::repeat_n(0x91u8, 100_000));
        frame.push(0xc0);
        let frame = Bytes::from(frame);
        let codec = Codec::new(1 << 20);
        assert!(codec.decode(&frame).is_err());
        assert!(codec.decode_frame(&frame).is_err());
        assert!(from_payload::<std::collections::BTreeMap<String, u8>>(&frame).is_err());
    }

    #[test]
    fn payloads_nest_up_to_max_depth() {
        let nested = |levels: usize| {
            let mut v = vec![0x91; levels];
            v.push(0x01);
            v
        };
        let ok = nested(MAX_DEPTH);
        let deep = nested(MAX_DEPTH + 1);
        assert!(check_payload(&ok).is_ok());
        assert!(check_payload(&deep).is_err());
        // The serde path agrees, so that what `check_payload` passes can be decoded.
        assert!(from_payload::<serde::de::IgnoredAny>(&ok).is_ok());
        assert!(from_payload::<serde::de::IgnoredAny>(&deep).is_err());
    }
}

#[cfg(test)]
mod strictness {
    use super::*;

    #[test]
    fn nil_is_not_absent() {
        let c = Codec::default();
        let env = Envelope::request(
            Topic::new("a.do").expect("topic"),
            NodeId::new(),
            100,
            Bytes::from_static(b"\x80"),
        );
        let good = c.encode(&env).expect("encode");
        // Append "seq": nil to the map (fixmap count + 1).
        let mut bad = good.clone();
        bad[0] += 1;
        bad.extend_from_slice(b"\xa3seq\xc0");
        assert!(c.decode(&Bytes::from(good)).is_ok());
        assert!(c.decode(&Bytes::from(bad)).is_err());
    }

    #[test]
    fn missing_payload_fields_are_named() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            n: u32,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            a: u32,
            items: Vec<Inner>,
        }
        let bytes = to_payload(&std::collections::BTreeMap::from([(
            "items",
            Vec::<std::collections::BTreeMap<String, u32>>::new(),
        )]))
        .expect("encode");
        let err = from_payload::<Outer>(&bytes).expect_err("a is missing");
        assert!(
            matches!(err, DecodeError::Invalid { ref field, .. } if field == "a"),
            "{err:?}"
        );
        #[derive(serde::Serialize)]
        struct Partial {
            a: u32,
            items: Vec<std::collections::BTreeMap<String, u32>>,
        }
        let bytes = to_payload(&Partial {
            a: 1,
            items: vec![[("n".to_owned(), 1)].into(), Default::default()],
        })
        .expect("encode");
        let err = from_payload::<Outer>(&bytes).expect_err("items[1].n is missing");
        assert!(
            matches!(err, DecodeError::Invalid { ref field, .. } if field == "items[1].n"),
            "{err:?}"
        );
    }

    #[test]
    fn a_payload_is_exactly_one_value() {
        assert!(check_payload(b"\x80").is_ok());
        assert!(check_payload(b"\x92\x01\x02").is_ok());
        for bad in [&b""[..], b"\x80\x80", b"\x92\x01", b"\xc1"] {
            let err = check_payload(bad).expect_err("not one value");
            assert!(matches!(err, DecodeError::Invalid { ref field, .. } if field == "data"));
        }
    }

    #[test]
    fn payload_len_is_the_encoded_length() {
        #[derive(Serialize)]
        struct Item {
            name: String,
            tags: Vec<(String, String)>,
            value: f64,
            raw: serde_bytes::ByteBuf,
        }
        for n in [0usize, 1, 31, 32, 300, 70_000] {
            let item = Item {
                name: "x".repeat(n),
                tags: vec![("k".into(), "v".repeat(n / 2)); n % 7],
                value: f64::NAN,
                raw: serde_bytes::ByteBuf::from(vec![7u8; n]),
            };
            let encoded = to_payload(&item).expect("encodes");
            assert_eq!(
                payload_len(&item).expect("counts"),
                encoded.len(),
                "n = {n}"
            );
        }
    }
}
