//! The envelope's wire form (SPEC 3), written and read by hand over [`Writer`] and
//! [`Reader`]: rmp-serde's derived code cost four times as much per envelope, mostly in
//! matching key names and in its generic paths.

use bytes::Bytes;

use super::read::Reader;
use super::write::Writer;
use super::{malformed, DecodeError, EncodeError};
use crate::envelope::{Body, Envelope, Kind, MessageId, NodeId, PROTOCOL_VERSION};
use crate::name::Topic;
use crate::status::{Code, Status};

/// Encodes `env` (see [`Codec::encode`](super::Codec::encode)), with no size limit.
pub(super) fn write_envelope(env: &Envelope) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    append_envelope(env, &mut out)?;
    Ok(out)
}

/// Encodes `env` after the bytes `out` holds, with no size limit; on an error, `out` is
/// as it was.
pub(super) fn append_envelope(env: &Envelope, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let mut w = Writer::from_vec(std::mem::take(out));
    let written = write_fields(env, &mut w);
    *out = w.into_vec();
    if written.is_err() {
        out.truncate(start);
    }
    written
}

fn write_fields(env: &Envelope, w: &mut Writer) -> Result<(), EncodeError> {
    // Destructured so that a new field cannot be forgotten here.
    let Envelope {
        version,
        id,
        topic,
        source,
        time,
        body,
        data,
    } = env;
    let (kind_keys, status_len) = match body {
        Body::Event { .. } | Body::Request { .. } => (1, 0),
        Body::Reply { status, .. } => (
            2,
            48 + status.message.len() + status.field.as_ref().map_or(0, String::len),
        ),
    };
    // An upper bound of the encoded size: one allocation, whatever the values.
    w.reserve(112 + topic.as_str().len() + data.len() + status_len);
    // v, id, type, kind, source, time and data, with the kind's own keys before data.
    w.map_len(7 + kind_keys);
    w.key("v");
    w.uint((*version).into());
    w.key("id");
    w.bin(id.as_bytes())?;
    w.key("type");
    w.str(topic.as_str())?;
    w.key("kind");
    w.str(env.kind().as_str())?;
    w.key("source");
    w.bin(source.as_bytes())?;
    w.key("time");
    w.uint(*time);
    match body {
        Body::Event { seq } => {
            w.key("seq");
            w.uint(*seq);
        }
        Body::Request { deadline_ms } => {
            w.key("deadline");
            w.uint((*deadline_ms).into());
        }
        Body::Reply { re, status } => {
            w.key("re");
            w.bin(re.as_bytes())?;
            w.key("status");
            write_status(w, status)?;
        }
    }
    w.key("data");
    w.bin(data)
}

/// The bytes of an event envelope up to its id, as [`write_envelope`] writes them: a map
/// of 8, then `v`: 1.
const EVENT_HEAD: &[u8] = b"\x88\xa1v\x01\xa2id\xc4\x10";
const _: () = assert!(PROTOCOL_VERSION == 1, "EVENT_HEAD writes v as 1");
const _: () = assert!(
    REQUEST_HEAD.len() == REPLY_HEAD.len(),
    "a request and a reply differ in their map header only"
);

/// Reads an event envelope laid out exactly as [`write_envelope`] writes one (the keys of
/// SPEC 3.1 in order, each once, `v` 1, `kind` "event") whose `type` is `topic`: by
/// position, comparing fixed bytes instead of matching keys. For such bytes the general
/// path ([`Fields`]) gives the same envelope (the tests compare both on every frame they
/// decode, and on edits of them). `None` at the first difference, with the reader then
/// anywhere: the caller runs it under [`Reader::attempt`] and falls back on the general
/// path, which decodes the envelope or says what is wrong with it.
#[inline]
pub(super) fn read_event(r: &mut Reader<'_>, frame: &Bytes, topic: &Topic) -> Option<Envelope> {
    r.expect(EVENT_HEAD)?;
    let id = r.be::<16>()?;
    r.expect(b"\xa4type")?;
    if r.str_bytes()? != topic.as_str().as_bytes() {
        return None;
    }
    r.expect(b"\xa4kind\xa5event\xa6source\xc4\x10")?;
    let source = r.be::<16>()?;
    r.expect(b"\xa4time")?;
    let time = r.uint()?;
    r.expect(b"\xa3seq")?;
    let seq = r.uint()?;
    r.expect(b"\xa4data")?;
    let data = r.bin()?;
    Some(Envelope {
        version: PROTOCOL_VERSION,
        id: MessageId(uuid::Uuid::from_bytes(id)),
        topic: topic.clone(),
        source: NodeId(uuid::Uuid::from_bytes(source)),
        time,
        body: Body::Event { seq },
        data: frame.slice_ref(data),
    })
}

/// The bytes of a request or reply envelope up to its id, as [`write_envelope`] writes
/// them: a map of 8 (request) or 9 (reply), then `v`: 1.
const REQUEST_HEAD: &[u8] = b"\x88\xa1v\x01\xa2id\xc4\x10";
const REPLY_HEAD: &[u8] = b"\x89\xa1v\x01\xa2id\xc4\x10";

/// Reads a request or reply envelope laid out exactly as [`write_envelope`] writes one (the
/// keys of SPEC 3.1 in order, each once, `v` 1), whose `type` `resolve` turns into a
/// [`Topic`] with exactly those bytes (a topic the caller already holds: no validation
/// and no allocation here). As [`read_event`]: the same envelope as the general path for
/// such bytes, `None` at the first difference (or when `resolve` does not know the
/// topic), with the reader then anywhere; the caller falls back on the general path.
#[inline]
pub(super) fn read_instruction(
    r: &mut Reader<'_>,
    frame: &Bytes,
    resolve: impl FnOnce(&[u8]) -> Option<Topic>,
) -> Option<Envelope> {
    let reply = match r.be::<1>()? {
        [0x88] => false,
        [0x89] => true,
        _ => return None,
    };
    r.expect(&REQUEST_HEAD[1..])?;
    let id = r.be::<16>()?;
    r.expect(b"\xa4type")?;
    let name = r.str_bytes()?;
    let topic = resolve(name).filter(|t| t.as_str().as_bytes() == name)?;
    if reply {
        r.expect(b"\xa4kind\xa5reply\xa6source\xc4\x10")?;
    } else {
        r.expect(b"\xa4kind\xa7request\xa6source\xc4\x10")?;
    }
    let source = r.be::<16>()?;
    r.expect(b"\xa4time")?;
    let time = r.uint()?;
    let body = if reply {
        r.expect(b"\xa2re\xc4\x10")?;
        let re = MessageId(uuid::Uuid::from_bytes(r.be::<16>()?));
        r.expect(b"\xa6status")?;
        // The status map is read as the general path reads it, one container deep.
        let status = read_status(r, 1)?;
        Body::Reply { re, status }
    } else {
        r.expect(b"\xa8deadline")?;
        Body::Request {
            deadline_ms: r.uint()?,
        }
    };
    r.expect(b"\xa4data")?;
    let data = r.bin()?;
    Some(Envelope {
        version: PROTOCOL_VERSION,
        id: MessageId(uuid::Uuid::from_bytes(id)),
        topic,
        source: NodeId(uuid::Uuid::from_bytes(source)),
        time,
        body,
        data: frame.slice_ref(data),
    })
}

/// Writes a status map (SPEC 3.5): `code`, then `message` and `field` when present.
fn write_status(w: &mut Writer, status: &Status) -> Result<(), EncodeError> {
    let Status {
        code,
        message,
        field,
    } = status;
    w.map_len(1 + u8::from(!message.is_empty()) + u8::from(field.is_some()));
    w.key("code");
    w.uint(code.as_u16().into());
    if !message.is_empty() {
        w.key("message");
        w.str(message)?;
    }
    if let Some(field) = field {
        w.key("field");
        w.str(field)?;
    }
    Ok(())
}

/// The keys of an envelope that this version knows (SPEC 3.1), in the order written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    V,
    Id,
    Type,
    Kind,
    Source,
    Time,
    Seq,
    Deadline,
    Re,
    Status,
    Data,
}

impl Key {
    /// The key named `name`, if this version knows it.
    fn parse(name: &[u8]) -> Option<Key> {
        // Length first, then fixed-size arrays: those compare as integers, where slice
        // patterns would call `memcmp` per candidate (for every key of every envelope).
        match name.len() {
            1 => (fixed(name)? == b"v").then_some(Key::V),
            2 => match fixed(name)? {
                b"id" => Some(Key::Id),
                b"re" => Some(Key::Re),
                _ => None,
            },
            3 => (fixed(name)? == b"seq").then_some(Key::Seq),
            4 => match fixed(name)? {
                b"type" => Some(Key::Type),
                b"kind" => Some(Key::Kind),
                b"time" => Some(Key::Time),
                b"data" => Some(Key::Data),
                _ => None,
            },
            6 => match fixed(name)? {
                b"source" => Some(Key::Source),
                b"status" => Some(Key::Status),
                _ => None,
            },
            8 => (fixed(name)? == b"deadline").then_some(Key::Deadline),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Key::V => "v",
            Key::Id => "id",
            Key::Type => "type",
            Key::Kind => "kind",
            Key::Source => "source",
            Key::Time => "time",
            Key::Seq => "seq",
            Key::Deadline => "deadline",
            Key::Re => "re",
            Key::Status => "status",
            Key::Data => "data",
        }
    }

    /// The key's type in SPEC 3.1, for an error message.
    fn expects(self) -> &'static str {
        match self {
            Key::V => "a uint16",
            Key::Id | Key::Source | Key::Re | Key::Data => "a bin",
            Key::Type | Key::Kind => "a str",
            Key::Time | Key::Seq => "a uint64",
            Key::Deadline => "a uint32",
            Key::Status => "a map {code: uint16, message?: str, field?: str}",
        }
    }
}

/// `bytes` as an array of `N`, if it has that length.
fn fixed<const N: usize>(bytes: &[u8]) -> Option<&[u8; N]> {
    bytes.try_into().ok()
}

/// The known keys of one envelope map, each of its type, none validated yet.
#[derive(Default)]
pub(super) struct Fields<'a> {
    v: Option<u16>,
    id: Option<&'a [u8]>,
    /// The str's bytes: compared with the topic frame, or checked when parsed.
    topic: Option<&'a [u8]>,
    kind: Option<&'a [u8]>,
    source: Option<&'a [u8]>,
    time: Option<u64>,
    seq: Option<u64>,
    deadline: Option<u32>,
    re: Option<&'a [u8]>,
    status: Option<Status>,
    data: Option<&'a [u8]>,
    /// The first key found holding a value of another type; `v` if `v` is one of them,
    /// because its type is checked before any other's (SPEC 3.4 step 3).
    wrong: Option<Key>,
}

impl<'a> Fields<'a> {
    /// Reads one envelope map, `depth` containers deep, into `self` (empty): checks its
    /// structure (SPEC 3.4 step 2: str keys, none repeated) and notes the first key of a
    /// wrong type. Filled in place because returning the large struct costs a copy.
    pub(super) fn read(&mut self, r: &mut Reader<'a>, depth: usize) -> Result<(), DecodeError> {
        let entries = r
            .attempt(Reader::map_len)
            .ok_or_else(|| malformed("an envelope must be a MessagePack map"))?;
        // The values are inside the map.
        let depth = depth + 1;
        let mut seen = 0u16;
        let mut unknown = Vec::new();
        for _ in 0..entries {
            let name = r.key()?;
            let Some(key) = Key::parse(name) else {
                // Known keys are ASCII; only another key can be a str that is not UTF-8.
                std::str::from_utf8(name).map_err(|_| malformed("a map key is not UTF-8"))?;
                unknown.push(name);
                r.skip_value(depth)?;
                continue;
            };
            let bit = 1u16 << (key as u16);
            if seen & bit != 0 {
                return Err(malformed(format!("the key `{}` appears twice", key.name())));
            }
            seen |= bit;
            if !self.read_value(key, r, depth) {
                // Skipping the value tells a wrong type from bytes that are no value.
                r.skip_value(depth)?;
                if key == Key::V || self.wrong.is_none() {
                    self.wrong = Some(key);
                }
            }
        }
        // Sorted only when there are unknown keys, so that the usual envelope pays nothing.
        if unknown.len() > 1 {
            unknown.sort_unstable();
            if unknown.windows(2).any(|w| w[0] == w[1]) {
                return Err(malformed("an unknown key appears twice"));
            }
        }
        Ok(())
    }

    /// Reads the value of `key` if it has the key's type; false (and nothing read) if not.
    fn read_value(&mut self, key: Key, r: &mut Reader<'a>, depth: usize) -> bool {
        fn put<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
            let ok = value.is_some();
            *slot = value;
            ok
        }
        match key {
            Key::V => put(&mut self.v, r.attempt(Reader::uint)),
            Key::Id => put(&mut self.id, r.attempt(Reader::bin)),
            Key::Type => put(&mut self.topic, r.attempt(Reader::str_bytes)),
            Key::Kind => put(&mut self.kind, r.attempt(Reader::str_bytes)),
            Key::Source => put(&mut self.source, r.attempt(Reader::bin)),
            Key::Time => put(&mut self.time, r.attempt(Reader::uint)),
            Key::Seq => put(&mut self.seq, r.attempt(Reader::uint)),
            Key::Deadline => put(&mut self.deadline, r.attempt(Reader::uint)),
            Key::Re => put(&mut self.re, r.attempt(Reader::bin)),
            Key::Status => put(&mut self.status, r.attempt(|r| read_status(r, depth))),
            Key::Data => put(&mut self.data, r.attempt(Reader::bin)),
        }
    }

    /// SPEC 3.4 steps 3 to 5: `v`, then the types of all keys, then the required keys
    /// and their values. With a `topic`, `type` must equal it and the envelope shares it.
    pub(super) fn into_envelope(
        self,
        frame: &Bytes,
        topic: Option<&Topic>,
    ) -> Result<Envelope, DecodeError> {
        let invalid = |field: &str, reason: &str| DecodeError::Invalid {
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        let wrong_type = |key: Key| invalid(key.name(), &format!("must be {}", key.expects()));
        if self.wrong == Some(Key::V) {
            return Err(wrong_type(Key::V));
        }
        let version = required(self.v, "v")?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::Version { got: version });
        }
        if let Some(key) = self.wrong {
            return Err(wrong_type(key));
        }
        let id = required(self.id, "id")?;
        let id = MessageId::from_slice(id).ok_or_else(|| invalid("id", "must be 16 bytes"))?;
        let name = required(self.topic, "type")?;
        let topic = match topic {
            Some(t) if t.as_str().as_bytes() == name => t.clone(),
            Some(t) => return Err(invalid("type", &format!("differs from the topic `{t}`"))),
            None => {
                let name = std::str::from_utf8(name).map_err(|_| invalid("type", "not UTF-8"))?;
                Topic::new(name).map_err(|e| invalid("type", &e.to_string()))?
            }
        };
        let kind = required(self.kind, "kind")?;
        let kind = match kind {
            k if fixed(k) == Some(b"event") => Kind::Event,
            k if fixed(k) == Some(b"request") => Kind::Request,
            k if fixed(k) == Some(b"reply") => Kind::Reply,
            _ => return Err(invalid("kind", "must be event, request or reply")),
        };
        let source = required(self.source, "source")?;
        let source =
            NodeId::from_slice(source).ok_or_else(|| invalid("source", "must be 16 bytes"))?;
        let time = required(self.time, "time")?;
        let body = match kind {
            Kind::Event => Body::Event {
                seq: required(self.seq, "seq")?,
            },
            Kind::Request => Body::Request {
                deadline_ms: required(self.deadline, "deadline")?,
            },
            Kind::Reply => {
                let re = required(self.re, "re")?;
                Body::Reply {
                    re: MessageId::from_slice(re)
                        .ok_or_else(|| invalid("re", "must be 16 bytes"))?,
                    status: required(self.status, "status")?,
                }
            }
        };
        let data = required(self.data, "data")?;
        Ok(Envelope {
            version,
            id,
            topic,
            source,
            time,
            body,
            data: frame.slice_ref(data),
        })
    }
}

/// A required key's value, or [`DecodeError::Missing`] naming it.
fn required<T>(value: Option<T>, key: &'static str) -> Result<T, DecodeError> {
    match value {
        Some(v) => Ok(v),
        None => Err(DecodeError::Missing(key)),
    }
}

/// Reads a status map (SPEC 3.5) inside `depth` containers, skipping unknown keys;
/// `None` if the value is not one.
fn read_status(r: &mut Reader<'_>, depth: usize) -> Option<Status> {
    let entries = r.map_len()?;
    let (mut code, mut message, mut field) = (None, None, None);
    for _ in 0..entries {
        match r.key().ok()? {
            b"code" if code.is_none() => code = Some(Code::from_u16(r.uint()?)),
            b"message" if message.is_none() => message = Some(r.str()?.to_owned()),
            // `nil` reads as absent here, as it always has: refusing an error reply for
            // it would leave the caller waiting out its deadline instead.
            b"field" if field.is_none() => {
                field = Some(match r.attempt(Reader::nil) {
                    Some(()) => None,
                    None => Some(r.str()?.to_owned()),
                });
            }
            b"code" | b"message" | b"field" => return None,
            _ => r.skip_value(depth + 1).ok()?,
        }
    }
    Some(Status {
        code: code?,
        message: message.unwrap_or_default(),
        field: field.flatten(),
    })
}

#[cfg(test)]
mod tests;
