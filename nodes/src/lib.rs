//! # mlmesh-nodes
//!
//! The standard nodes of mlmesh, built only on the runtime's public API
//! ([`mlmesh::Node::builder`]): each is a library module with a thin binary around it,
//! so that it can be launched on a host or embedded in a service.
//!
//! None ships yet. The first ones arrive with the first standard name families
//! (`tracking/1`, `registry/1`): an experiment tracker and a model registry, each with
//! an embedded store, then adapters that put existing tools behind the same names. Until
//! then, `mlmesh-node` in the root crate runs a plain node (a seed or a probe).

pub mod filter;
pub mod host;
mod serve;
pub mod store;
pub mod tracker;

pub use mlmesh;
pub use mlmesh_protocol as protocol;
