//! Seed peers: configured ROUTER endpoints asked `sys.describe` at start and every
//! `discovery.seed_interval_ms`, so a node finds the mesh where multicast cannot.

use std::sync::Arc;
use std::time::Duration;

use crate::node::Inner;
use crate::peers::Via;

pub(super) async fn run(inner: Arc<Inner>) {
    let every = Duration::from_millis(inner.config.discovery.seed_interval_ms);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Ask at once: joining should not wait for the first tick.
    for seed in &inner.config.discovery.seeds {
        super::consider(&inner, seed.clone(), Via::Seed, None, true);
    }
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tick.tick() => {
                for seed in &inner.config.discovery.seeds {
                    super::consider(&inner, seed.clone(), Via::Seed, None, true);
                }
            }
        }
    }
}
