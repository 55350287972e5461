//! One task pings every socket of the node and closes the dead ones.
//!
//! A single sweep over the registry per tick costs far less than a timer per connection
//! (19k timers would cost memory in every idle connection). Each socket is pinged once per
//! ping interval; one that reads nothing (no pong, nothing else) within the pong timeout
//! after a ping is closed and cleaned up like any other close.
//!
//! The sweep visits every socket, so it runs a quarter of the shorter setting apart, and no
//! more often than it must: at a million sockets on this 2-core box, sweeping every second
//! took an eighth of both cores (`Registry::all` was the hottest symbol of the box) and
//! slowed the connect ramp to a few hundred a second. With the defaults (25 s) it sweeps
//! every 5 s, so a ping goes out up to 5 s late and a dead peer is closed up to 5 s late.

use super::Node;
use super::connection::{CloseReason, Conn};
use std::sync::Arc;
use std::time::Duration;

/// Finest and coarsest sweep period; within that, a quarter of the shorter setting.
const TICK_BOUNDS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Sweeps the node's sockets every tick until shutdown.
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
        let dropped = node.registry.all().iter().map(|conn| beat(conn, now, interval, timeout)).sum();
        node.metrics.queue_dropped(dropped);
    }
}

/// What one socket needs at a sweep.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// Nothing: pinged less than an interval ago, or waiting for an answer within the timeout.
    Nothing,
    /// A ping: answered (or never sent) at least an interval ago.
    Ping,
    /// Closing: nothing was read within the timeout after a ping.
    Dead,
}

/// The policy, on the node clock: a socket that has read nothing since its last ping
/// (`last_read < ping_sent`) is waiting for an answer, and dead once `timeout` has passed;
/// any other is pinged again `interval` after its last ping.
fn due(last_read: u64, ping_sent: u64, now_ms: u64, interval: Duration, timeout: Duration) -> Due {
    let waiting = last_read < ping_sent;
    let since_ping = now_ms.saturating_sub(ping_sent);
    if waiting && since_ping >= timeout.as_millis() as u64 {
        Due::Dead
    } else if !waiting && since_ping >= interval.as_millis() as u64 {
        Due::Ping
    } else {
        Due::Nothing
    }
}

/// Pings `conn` or closes it as dead, as due; returns the frames dropped, as `Conn::send`.
fn beat(conn: &Conn, now_ms: u64, interval: Duration, timeout: Duration) -> usize {
    match due(conn.last_read_ms(), conn.ping_sent_ms(), now_ms, interval, timeout) {
        Due::Nothing => 0,
        Due::Ping => conn.ping(now_ms),
        Due::Dead => {
            tracing::info!(conn = conn.id, client = conn.client_id, "dead peer: no pong; closing");
            conn.close(CloseReason::DeadPeer);
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_every_interval_and_closes_a_silent_peer() {
        let (interval, timeout) = (Duration::from_millis(100), Duration::from_millis(50));
        // (last read, ping sent, now) → what is due.
        let cases = [
            ((0, 0, 99), Due::Nothing),
            ((0, 0, 100), Due::Ping),
            ((150, 100, 250), Due::Ping),
            ((100, 200, 249), Due::Nothing),
            ((100, 200, 250), Due::Dead),
            ((200, 200, 250), Due::Nothing),
            ((0, 200, 100), Due::Nothing),
        ];
        for ((last_read, ping_sent, now), expected) in cases {
            assert_eq!(due(last_read, ping_sent, now, interval, timeout), expected, "{last_read} {ping_sent} {now}");
        }
    }
}
