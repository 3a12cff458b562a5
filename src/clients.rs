//! Typed clients of the standard name families, over a [`NodeHandle`](crate::NodeHandle).
//!
//! - [`Tracking`]: `tracking/1` (experiments, runs, metrics), with [`RunLogger`], the
//!   background logger a training loop uses without waiting on the network.
//! - [`Registry`]: `registry/1` (registered models, versions, aliases, locate).

mod logger;
mod registry;
mod tracking;

pub use registry::Registry;
pub use tracking::{EndReport, LogError, LoggerOptions, RunLogger, Tracking, Unacknowledged};
