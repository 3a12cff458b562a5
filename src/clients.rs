//! Typed clients of the standard name families, over a [`NodeHandle`](crate::NodeHandle).
//!
//! - [`Tracking`]: `tracking/1` (experiments, runs, metrics), with [`RunLogger`], the
//!   background logger a training loop uses without waiting on the network.

mod logger;
mod tracking;

pub use tracking::{EndReport, LogError, LoggerOptions, RunLogger, Tracking, Unacknowledged};
