//! # mlmesh-nodes
//!
//! The standard nodes of mlmesh, built only on the runtime's public API
//! ([`mlmesh::Node::builder`]): each is a library module with a thin binary around it,
//! so that it can be launched on a host or embedded in a service.
//!
//! ## Layout
//! - [`tracker`]: the experiment tracker (`tracking/1`), binary `mlmesh-tracker`.
//! - [`registry`]: the model registry (`registry/1`), binary `mlmesh-registry`.
//! - [`store`]: the embedded SQLite store both own: group commit, idempotent replies,
//!   durability settings (`[store]` in their config). The tracker puts a journal in
//!   front of it (`journal`): a write is acknowledged once appended, and applied to
//!   SQLite after the reply.
//! - [`filter`]: MLflow's search filter language, shared by both searches.
//! - [`host`]: what every node binary does around its node (logging, ready line, signals).
//! - [`mlflow`]: the MLflow adapter: `tracking/1` and `registry/1` served by an MLflow
//!   tracking server, binary `mlmesh-mlflow`.
//! - [`cli`]: the `mlmesh` command (nodes, describe, sub, pub, call, hz, doctor, run).

pub mod cli;
pub mod filter;
pub mod host;
mod journal;
pub mod mlflow;
pub mod registry;
mod serve;
pub mod store;
pub mod tracker;

/// A hash map for the hot paths: foldhash (seeded per process) instead of SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A hash set for the hot paths, as [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub use mlmesh;
pub use mlmesh_protocol as protocol;
