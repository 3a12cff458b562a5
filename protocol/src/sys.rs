//! Payloads of the runtime's reserved `sys.*` topics.
//!
//! | topic | kind | payload |
//! |---|---|---|
//! | `sys.heartbeat` | event | [`Heartbeat`] |
//! | `sys.describe` | request / reply | [`DescribeRequest`] / [`Describe`] |
//! | `sys.ping` | request / reply | `{}` / [`Pong`] |

use serde::{Deserialize, Serialize};

use crate::envelope::NodeId;

/// Topic of heartbeat events.
pub const HEARTBEAT: &str = "sys.heartbeat";
/// Topic of the describe instruction.
pub const DESCRIBE: &str = "sys.describe";
/// Topic of the ping instruction.
pub const PING: &str = "sys.ping";

/// Published every `interval_ms` by every node. Receivers judge the sender's liveness by
/// the sender's own interval: suspect after 2 intervals of silence, gone after 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's heartbeat interval, in milliseconds.
    pub interval_ms: u32,
    /// The sender's node name.
    #[serde(default)]
    pub name: String,
    /// The sender's mesh.
    #[serde(default)]
    pub mesh: String,
    /// True in the last heartbeat a node sends before it shuts down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// A topic a node serves, with its schema version (`tracking/1` is version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The instruction topic.
    pub topic: String,
    /// Version of the payload schema.
    #[serde(default = "one")]
    pub schema: u32,
}

fn one() -> u32 {
    1
}

/// Where to reach a node: its PUB and ROUTER endpoints, `tcp://IPv4:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoints {
    /// The PUB socket (events).
    #[serde(rename = "pub")]
    pub publish: String,
    /// The ROUTER socket (instructions).
    pub rpc: String,
}

/// A peer as one node knows it, passed on in [`Describe::peers`] so that one seed can
/// introduce the rest of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer's id.
    pub id: NodeId,
    /// The peer's name.
    pub name: String,
    /// The peer's endpoints.
    pub endpoints: Endpoints,
}

/// The payload of a `sys.describe` request. A node that asks while looking for peers
/// names itself, so that the answering node can describe it in turn (a seed learns of
/// every node that contacts it). `{}` is a valid request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeRequest {
    /// The asking node, if it wants to be known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<PeerRecord>,
}

/// The answer to `sys.describe`: who a node is and what it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Describe {
    /// Node id.
    pub id: NodeId,
    /// Node name (not unique).
    pub name: String,
    /// Mesh name; nodes ignore peers of other meshes.
    pub mesh: String,
    /// Protocol version spoken (`v`).
    pub protocol: u16,
    /// Implementation and version, e.g. `mlmesh-rs/0.1.0`.
    pub version: String,
    /// Roles, e.g. `tracker`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Instruction topics served.
    #[serde(default)]
    pub serves: Vec<Served>,
    /// Endpoints.
    pub endpoints: Endpoints,
    /// Heartbeat interval, in milliseconds.
    pub heartbeat_ms: u32,
    /// Start time, Unix milliseconds.
    pub started_ms: u64,
    /// Live peers the node knows (mesh introduction).
    #[serde(default)]
    pub peers: Vec<PeerRecord>,
    /// Whether the node's rpc socket accepts request batches (SPEC 5.3); omitted when
    /// `false`, so a node that does not batch describes itself as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
}

/// The answer to `sys.ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The responder's clock, Unix nanoseconds (for skew estimates).
    pub time: u64,
}

/// An empty payload (`{}`), for instructions that take no arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}
