//! Counters of one node, served at `/metrics` in the Prometheus text format.
//!
//! Plain atomics bumped on the paths they count (relaxed: each counter is independent and
//! only needs to be eventually exact). Rates such as deliveries per second are
//! `rate(freeim_frames_out_total[1m])` on the Prometheus side. Sockets closed by an
//! operator's limit (`limit`) are counted apart from protocol violations, and the frames
//! slow consumers lose apart from the sockets closed, so an operator can tell a tight limit
//! from misbehaving clients, and how much was lost.

use super::connection::CloseReason;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a socket was disconnected, as a metric label.
const DISCONNECT_REASONS: [&str; 8] =
    ["closed", "kicked", "slow_consumer", "dead_peer", "shutdown", "violation", "limit", "error"];

/// Why an upgrade was refused, as a metric label.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// Missing, malformed, unknown, expired or used token.
    Token = 0,
    /// `--max-connections` reached.
    NodeFull = 1,
    /// `--max-sockets-per-client` reached.
    ClientFull = 2,
    /// `Origin` not in `--allowed-origins`.
    Origin = 3,
    /// The token store could not be reached.
    Unavailable = 4,
}
const REFUSALS: [&str; 5] = ["token", "node_full", "client_full", "origin", "unavailable"];

/// The node's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    connects: AtomicU64,
    disconnects: [AtomicU64; DISCONNECT_REASONS.len()],
    refused: [AtomicU64; REFUSALS.len()],
    messages_in: AtomicU64,
    malformed_in: AtomicU64,
    frames_out: AtomicU64,
    queue_dropped: AtomicU64,
    receipts_delivered: AtomicU64,
    receipts_offline: AtomicU64,
    redis_resubscribes: AtomicU64,
    lease_cleanups: AtomicU64,
    lease_cleaned_sockets: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Metrics {
    /// A socket completed its upgrade.
    pub fn connected(&self) {
        bump(&self.connects, 1);
    }
    /// A socket closed.
    pub fn disconnected(&self, reason: CloseReason) {
        let index = match reason {
            CloseReason::PeerClosed => 0,
            CloseReason::ForceOffline => 1,
            CloseReason::SlowConsumer => 2,
            CloseReason::DeadPeer => 3,
            CloseReason::Shutdown => 4,
            CloseReason::Violation(..) => 5,
            CloseReason::FrameRate => 6,
            CloseReason::IoError => 7,
        };
        bump(&self.disconnects[index], 1);
    }
    /// An upgrade was refused.
    pub fn refused(&self, why: Refusal) {
        bump(&self.refused[why as usize], 1);
    }
    /// Node-channel messages received, and how many of them were malformed.
    pub fn messages_in(&self, total: usize, malformed: usize) {
        bump(&self.messages_in, total as u64);
        bump(&self.malformed_in, malformed as u64);
    }
    /// Text frames handed to sockets.
    pub fn frames_out(&self, frames: usize) {
        bump(&self.frames_out, frames as u64);
    }
    /// Frames lost to overflowing socket queues (see `Conn::send`).
    pub fn queue_dropped(&self, frames: usize) {
        // Most calls drop nothing: skip the shared cache line then.
        if frames > 0 {
            bump(&self.queue_dropped, frames as u64);
        }
    }
    /// A receipt was sent (`delivered` or not).
    pub fn receipt(&self, delivered: bool) {
        bump(if delivered { &self.receipts_delivered } else { &self.receipts_offline }, 1);
    }
    /// The node-channel subscription was established again after a loss.
    pub fn resubscribed(&self) {
        bump(&self.redis_resubscribes, 1);
    }

    /// This node cleaned up after a dead node (it held the cleanup lock), closing `sockets`.
    pub fn lease_cleanup(&self, sockets: usize) {
        bump(&self.lease_cleanups, 1);
        bump(&self.lease_cleaned_sockets, sockets as u64);
    }

    /// The Prometheus text exposition, with the gauges given by the caller.
    pub fn render(&self, connections: usize, live: bool) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric("freeim_connections", "gauge", "Open WebSocket connections.", &[("", connections as u64)]);
        metric(
            "freeim_redis_subscription_up",
            "gauge",
            "1 while the node channel subscription is live.",
            &[("", live as u64)],
        );
        metric("freeim_connects_total", "counter", "Completed WebSocket upgrades.", &[("", get(&self.connects))]);
        let labels: Vec<String> = DISCONNECT_REASONS.iter().map(|r| format!("{{reason=\"{r}\"}}")).collect();
        let samples: Vec<(&str, u64)> =
            labels.iter().zip(&self.disconnects).map(|(l, c)| (l.as_str(), get(c))).collect();
        metric("freeim_disconnects_total", "counter", "Closed sockets by reason.", &samples);
        let labels: Vec<String> = REFUSALS.iter().map(|r| format!("{{reason=\"{r}\"}}")).collect();
        let samples: Vec<(&str, u64)> = labels.iter().zip(&self.refused).map(|(l, c)| (l.as_str(), get(c))).collect();
        metric("freeim_refused_total", "counter", "Refused upgrades by reason.", &samples);
        metric(
            "freeim_messages_in_total",
            "counter",
            "Node-channel messages received.",
            &[("", get(&self.messages_in))],
        );
        metric(
            "freeim_messages_malformed_total",
            "counter",
            "Node-channel messages dropped as malformed.",
            &[("", get(&self.malformed_in))],
        );
        metric(
            "freeim_frames_out_total",
            "counter",
            "Text frames delivered to sockets.",
            &[("", get(&self.frames_out))],
        );
        metric(
            "freeim_queue_dropped_frames_total",
            "counter",
            "Frames not delivered because a socket's outgoing queue overflowed (slow consumers).",
            &[("", get(&self.queue_dropped))],
        );
        metric(
            "freeim_receipts_total",
            "counter",
            "Receipts sent by status.",
            &[
                ("{status=\"delivered\"}", get(&self.receipts_delivered)),
                ("{status=\"offline\"}", get(&self.receipts_offline)),
            ],
        );
        metric(
            "freeim_redis_resubscribes_total",
            "counter",
            "Node-channel subscriptions re-established after a loss.",
            &[("", get(&self.redis_resubscribes))],
        );
        metric(
            "freeim_lease_cleanups_total",
            "counter",
            "Cleanups of dead nodes run by this node (one per dead node it took the lock of).",
            &[("", get(&self.lease_cleanups))],
        );
        metric(
            "freeim_lease_cleaned_sockets_total",
            "counter",
            "Sockets of dead nodes closed by this node's cleanups.",
            &[("", get(&self.lease_cleaned_sockets))],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.connected();
        m.disconnected(CloseReason::SlowConsumer);
        m.disconnected(CloseReason::FrameRate);
        m.queue_dropped(4);
        m.queue_dropped(0);
        m.refused(Refusal::Origin);
        m.messages_in(3, 1);
        m.frames_out(10);
        m.receipt(false);
        m.lease_cleanup(4);
        let text = m.render(7, true);
        for line in [
            "# TYPE freeim_connections gauge",
            "freeim_connections 7",
            "freeim_redis_subscription_up 1",
            "freeim_connects_total 1",
            "freeim_disconnects_total{reason=\"slow_consumer\"} 1",
            "freeim_disconnects_total{reason=\"closed\"} 0",
            "freeim_disconnects_total{reason=\"limit\"} 1",
            "freeim_disconnects_total{reason=\"violation\"} 0",
            "freeim_queue_dropped_frames_total 4",
            "freeim_refused_total{reason=\"origin\"} 1",
            "freeim_messages_in_total 3",
            "freeim_messages_malformed_total 1",
            "freeim_frames_out_total 10",
            "freeim_receipts_total{status=\"offline\"} 1",
            "freeim_lease_cleanups_total 1",
            "freeim_lease_cleaned_sockets_total 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
