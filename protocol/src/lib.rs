//! # mlmesh-protocol
//!
//! The mlmesh standard as Rust types: what goes on the wire, and nothing else (no I/O,
//! no sockets, no async). The normative text is `SPEC.md` in this crate; this crate is
//! its reference implementation and its test vectors are checked byte for byte.
//!
//! ## Layout
//! - [`name`]: [`Topic`] and [`Pattern`], validated names and wildcard matching.
//! - [`status`]: the closed table of status [`Code`]s and the [`Status`] of a reply.
//! - [`envelope`]: the [`Envelope`] every message travels in, with [`MessageId`] and [`NodeId`].
//! - [`codec`]: MessagePack encoding with a size limit; typed [`DecodeError`]s.
//! - [`sys`]: payloads of the runtime's reserved `sys.*` topics.
//! - [`tracking`]: `tracking/1`, the experiment tracker's names and payloads, with [`ids`].
//! - [`registry`]: `registry/1`, the model registry's names and payloads.
//!
//! ```
//! use mlmesh_protocol::{Codec, Envelope, NodeId, Topic};
//!
//! let codec = Codec::default();
//! let data = mlmesh_protocol::to_payload(&("epoch", 3)).unwrap();
//! let env = Envelope::event(Topic::new("train.epoch.ended").unwrap(), NodeId::new(), 1, data.into());
//! let bytes = codec.encode(&env).unwrap();
//! assert_eq!(codec.decode(&bytes.into()).unwrap(), env);
//! ```

pub mod codec;
pub mod envelope;
pub mod ids;
pub mod name;
pub mod registry;
pub mod status;
pub mod sys;
pub mod tracking;

pub use codec::{
    check_payload, encode_batch, from_payload, is_batch, payload_len, to_payload, BatchBuf, Codec,
    DecodeError, EncodeError, DEFAULT_MAX_MESSAGE_SIZE, MAX_DEPTH,
};
pub use envelope::{now_nanos, Body, Envelope, Kind, MessageId, NodeId, PROTOCOL_VERSION};
pub use name::{NameError, Pattern, Topic};
pub use status::{Code, Status};

/// The mDNS service type every node advertises.
pub const MDNS_SERVICE_TYPE: &str = "_mlmesh._tcp.local.";
