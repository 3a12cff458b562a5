//! The envelope every message travels in, and the ids it carries.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::name::Topic;
use crate::status::Status;

/// The wire protocol version this crate speaks (`v` in every envelope).
pub const PROTOCOL_VERSION: u16 = 1;

macro_rules! uuid_id {
    ($(#[doc = $doc:literal])* $name:ident) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self::at(now_nanos())
            }

            /// A UUIDv7 whose timestamp is `unix_nanos` (whole milliseconds), with 74
            /// random bits from a thread-local generator: no lock and no clock read, so
            /// that an envelope reads the clock once for its id and its `time`.
            pub fn at(unix_nanos: u64) -> Self {
                // One u128 takes 16 bytes of the generator's output; an array of bytes
                // would take a u32 of it per byte.
                let random = rand::random::<u128>().to_le_bytes();
                let mut bytes = [0u8; 10];
                bytes.copy_from_slice(&random[..10]);
                Self(uuid::Builder::from_unix_timestamp_millis(unix_nanos / 1_000_000, &bytes).into_uuid())
            }

            /// The all-zero id.
            pub const fn nil() -> Self {
                Self(uuid::Uuid::nil())
            }

            /// The 16 bytes sent on the wire.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// From the 16 wire bytes.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                uuid::Uuid::from_slice(b).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0.as_bytes())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let b = <&serde_bytes::Bytes>::deserialize(d)?;
                Self::from_slice(b).ok_or_else(|| {
                    serde::de::Error::invalid_length(b.len(), &"16 bytes")
                })
            }
        }
    };
}

uuid_id! {
    /// A message id: unique per source, the de-duplication key (with `source`).
    MessageId
}

uuid_id! {
    /// A node id: one per running node (a restart is a new id unless configured).
    NodeId
}

/// What an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Published on PUB, fanned out to every subscriber.
    Event,
    /// An instruction sent to one provider, which answers with a reply.
    Request,
    /// The ack of a request.
    Reply,
}

impl Kind {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Request => "request",
            Kind::Reply => "reply",
        }
    }

    /// From the wire name.
    pub fn from_wire(s: &str) -> Option<Self> {
        match s {
            "event" => Some(Kind::Event),
            "request" => Some(Kind::Request),
            "reply" => Some(Kind::Reply),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields that depend on the kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// An event and its sequence number, counted per (source, topic) from 1.
    Event {
        /// Sequence number.
        seq: u64,
    },
    /// A request and the time its sender will wait for the reply.
    Request {
        /// Milliseconds the sender waits, counted from when it sent the request.
        deadline_ms: u32,
    },
    /// A reply to the request `re`.
    Reply {
        /// The id of the request answered.
        re: MessageId,
        /// OK or the error.
        status: Status,
    },
}

/// One message: CloudEvents-like metadata and an opaque MessagePack payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Protocol version (`v`).
    pub version: u16,
    /// Message id (`id`).
    pub id: MessageId,
    /// The topic (`type`).
    pub topic: Topic,
    /// The sending node (`source`).
    pub source: NodeId,
    /// Send time, Unix nanoseconds (`time`).
    pub time: u64,
    /// Kind-specific fields.
    pub body: Body,
    /// The payload (`data`): a MessagePack value, kept encoded.
    pub data: Bytes,
}

impl Envelope {
    fn new(topic: Topic, source: NodeId, body: Body, data: Bytes) -> Self {
        let time = now_nanos();
        Self {
            version: PROTOCOL_VERSION,
            id: MessageId::at(time),
            topic,
            source,
            time,
            body,
            data,
        }
    }

    /// A new event.
    pub fn event(topic: Topic, source: NodeId, seq: u64, data: Bytes) -> Self {
        Self::new(topic, source, Body::Event { seq }, data)
    }

    /// A new request.
    pub fn request(topic: Topic, source: NodeId, deadline_ms: u32, data: Bytes) -> Self {
        Self::new(topic, source, Body::Request { deadline_ms }, data)
    }

    /// The reply to `request`, from `source`.
    pub fn reply_to(request: &Envelope, source: NodeId, status: Status, data: Bytes) -> Self {
        Self::new(
            request.topic.clone(),
            source,
            Body::Reply {
                re: request.id,
                status,
            },
            data,
        )
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Event { .. } => Kind::Event,
            Body::Request { .. } => Kind::Request,
            Body::Reply { .. } => Kind::Reply,
        }
    }
}

/// Unix time in nanoseconds.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v7_carrying_the_given_time() {
        let t = 1_795_826_397_281_123_456; // ns
        let a = MessageId::at(t);
        let b = MessageId::at(t);
        assert_ne!(a, b, "74 random bits per id");
        assert_eq!(a.0.get_version_num(), 7);
        let (secs, nanos) = a.0.get_timestamp().expect("v7 has a timestamp").to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, t / 1_000_000);
        assert!(MessageId::new() > a, "time-ordered");
    }
}
