//! One task pings every socket of the node and closes the dead ones.
//!
//! A single sweep over the registry per tick costs far less than a timer per connection
//! (19k timers would cost memory in every idle connection). Each socket is pinged once per
//! ping interval; one that reads nothing (no pong, nothing else) within the pong timeout
//! after a ping is closed and cleaned up like any other close.

use super::Node;
use std::sync::Arc;
use std::time::Duration;

/// Finest and coarsest sweep period; within that, a quarter of the shorter setting.
const TICK_BOUNDS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

pub(crate) async fn run(node: Arc<Node>) {
    let (interval, timeout) = (node.config.ping_interval, node.config.pong_timeout);
    let period = (interval.min(timeout) / 4).clamp(TICK_BOUNDS.0, TICK_BOUNDS.1);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        let now = node.now_ms();
        let dropped = node.registry.all().iter().map(|conn| conn.heartbeat(now, interval, timeout)).sum();
        node.metrics.queue_dropped(dropped);
    }
}
