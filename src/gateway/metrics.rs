//! Counters of one node, served at `/metrics` in the Prometheus text format.
//!
//! Plain atomics bumped on the paths they count (relaxed: each counter is independent and
//! only needs to be eventually exact). Rates such as deliveries per second are
//! `rate(freeim_frames_out_total[1m])` on the Prometheus side. Sockets closed by an
//! operator's limit (`limit`) are counted apart from protocol violations, and the frames
//! slow consumers lose apart from the sockets closed, so an operator can tell a tight limit
//! from misbehaving clients, and how much was lost.

use super::api::Method;
use super::connection::CloseReason;
use super::log::LogGauge;
use super::resume::Outcome;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why a socket was disconnected, as a metric label: a [`CloseReason`] without its details.
/// Each counter is at the index of its variant; [`Disconnect::ALL`] lists them in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disconnect {
    Closed,
    Kicked,
    SlowConsumer,
    DeadPeer,
    Shutdown,
    Violation,
    Limit,
    Error,
    LogReset,
}

impl Disconnect {
    /// Every variant, in declaration order (the order of `/metrics` lines).
    const ALL: [Disconnect; 9] = [
        Disconnect::Closed,
        Disconnect::Kicked,
        Disconnect::SlowConsumer,
        Disconnect::DeadPeer,
        Disconnect::Shutdown,
        Disconnect::Violation,
        Disconnect::Limit,
        Disconnect::Error,
        Disconnect::LogReset,
    ];

    fn label(self) -> &'static str {
        match self {
            Disconnect::Closed => "closed",
            Disconnect::Kicked => "kicked",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::DeadPeer => "dead_peer",
            Disconnect::Shutdown => "shutdown",
            Disconnect::Violation => "violation",
            Disconnect::Limit => "limit",
            Disconnect::Error => "error",
            Disconnect::LogReset => "log_reset",
        }
    }
}

impl From<CloseReason> for Disconnect {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::PeerClosed => Disconnect::Closed,
            CloseReason::ForceOffline => Disconnect::Kicked,
            CloseReason::SlowConsumer => Disconnect::SlowConsumer,
            CloseReason::DeadPeer => Disconnect::DeadPeer,
            CloseReason::Shutdown => Disconnect::Shutdown,
            CloseReason::Violation(..) => Disconnect::Violation,
            CloseReason::FrameRate => Disconnect::Limit,
            CloseReason::IoError => Disconnect::Error,
            CloseReason::LogReset => Disconnect::LogReset,
        }
    }
}

/// Why an upgrade was refused, as a metric label. Each counter is at the index of its
/// variant; [`Refusal::ALL`] lists them in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Missing, malformed, unknown, expired or used token.
    Token,
    /// `--max-connections` reached.
    NodeFull,
    /// `--max-sockets-per-client` reached.
    ClientFull,
    /// `Origin` not in `--allowed-origins`.
    Origin,
    /// The token store could not be reached.
    Unavailable,
}

impl Refusal {
    /// Every variant, in declaration order (the order of `/metrics` lines).
    const ALL: [Refusal; 5] =
        [Refusal::Token, Refusal::NodeFull, Refusal::ClientFull, Refusal::Origin, Refusal::Unavailable];

    fn label(self) -> &'static str {
        match self {
            Refusal::Token => "token",
            Refusal::NodeFull => "node_full",
            Refusal::ClientFull => "client_full",
            Refusal::Origin => "origin",
            Refusal::Unavailable => "unavailable",
        }
    }
}

/// An HTTP API answer's status, as a metric label. Each counter is at the index of its
/// variant; [`ApiStatus::ALL`] lists them in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiStatus {
    Ok,
    BadRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    TooLarge,
    Internal,
    Unavailable,
}

impl ApiStatus {
    /// Every variant, in declaration order.
    const ALL: [ApiStatus; 8] = [
        ApiStatus::Ok,
        ApiStatus::BadRequest,
        ApiStatus::Unauthorized,
        ApiStatus::NotFound,
        ApiStatus::MethodNotAllowed,
        ApiStatus::TooLarge,
        ApiStatus::Internal,
        ApiStatus::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            ApiStatus::Ok => "200",
            ApiStatus::BadRequest => "400",
            ApiStatus::Unauthorized => "401",
            ApiStatus::NotFound => "404",
            ApiStatus::MethodNotAllowed => "405",
            ApiStatus::TooLarge => "413",
            ApiStatus::Internal => "500",
            ApiStatus::Unavailable => "503",
        }
    }

    /// The label of an answer's status code (the API answers no others).
    fn of(code: u16) -> ApiStatus {
        ApiStatus::ALL.into_iter().find(|s| s.label() == code.to_string()).unwrap_or(ApiStatus::Internal)
    }
}

/// Rows of the API counters: one per [`Method`], then one for requests that name none.
const API_ROWS: usize = Method::ALL.len() + 1;

/// The label of an API counter row.
fn api_row_label(row: usize) -> &'static str {
    Method::ALL.get(row).map_or("unknown", |m| m.label())
}

/// Upper bounds, in seconds, of the API latency histogram's buckets (`+Inf` comes last):
/// from a pipelined publish on a local Redis (≈ 0.2 ms) to a Redis about to time out (5 s).
const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A Prometheus histogram: per-bucket counts (made cumulative when rendered), the total
/// count and the sum in nanoseconds.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&bound| seconds <= bound) {
            bump(&self.buckets[i], 1);
        }
        bump(&self.count, 1);
        bump(&self.sum_nanos, u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Its sample lines, with `labels` (`method="send"`) in each.
    fn render(&self, text: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(text, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(text, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(text, "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {count}");
    }
}

/// The samples of a counter kept per reason: each `{reason="…"}` label and its value.
fn by_reason<K: Copy>(kinds: &[K], label: fn(K) -> &'static str, count: impl Fn(K) -> u64) -> Vec<(String, u64)> {
    kinds.iter().map(|&k| (format!("{{reason=\"{}\"}}", label(k)), count(k))).collect()
}

/// Prometheus text being written.
struct Exposition(String);

impl Exposition {
    /// One metric: its help and type lines, then a line per sample (labels and value).
    fn metric<L: AsRef<str>>(&mut self, name: &str, kind: &str, help: &str, samples: &[(L, u64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{} {value}", labels.as_ref());
        }
    }
}

/// The node's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    connects: AtomicU64,
    disconnects: [AtomicU64; Disconnect::ALL.len()],
    refused: [AtomicU64; Refusal::ALL.len()],
    messages_in: AtomicU64,
    malformed_in: AtomicU64,
    frames_out: AtomicU64,
    queue_dropped: AtomicU64,
    receipts_delivered: AtomicU64,
    receipts_offline: AtomicU64,
    redis_resubscribes: AtomicU64,
    lease_cleanups: AtomicU64,
    lease_cleaned_sockets: AtomicU64,
    lease_renewal_failures: AtomicU64,
    resumes: [AtomicU64; Outcome::ALL.len()],
    replayed_frames: AtomicU64,
    gap_fills: AtomicU64,
    /// A gauge, set by the dispatcher.
    memberships: AtomicU64,
    api_calls: [[AtomicU64; ApiStatus::ALL.len()]; API_ROWS],
    api_latency: [Histogram; API_ROWS],
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Metrics {
    /// A socket completed its upgrade.
    pub(crate) fn connected(&self) {
        bump(&self.connects, 1);
    }
    /// A socket closed.
    pub(crate) fn disconnected(&self, reason: CloseReason) {
        bump(&self.disconnects[Disconnect::from(reason) as usize], 1);
    }
    /// An upgrade was refused.
    pub(crate) fn refused(&self, why: Refusal) {
        bump(&self.refused[why as usize], 1);
    }
    /// Node-channel messages received, and how many of them were malformed.
    pub(crate) fn messages_in(&self, total: usize, malformed: usize) {
        bump(&self.messages_in, total as u64);
        bump(&self.malformed_in, malformed as u64);
    }
    /// Text frames handed to sockets.
    pub(crate) fn frames_out(&self, frames: usize) {
        bump(&self.frames_out, frames as u64);
    }
    /// Frames lost to overflowing socket queues (see `Conn::send`).
    pub(crate) fn queue_dropped(&self, frames: usize) {
        // Most calls drop nothing: skip the shared cache line then.
        if frames > 0 {
            bump(&self.queue_dropped, frames as u64);
        }
    }
    /// A receipt was sent (`delivered` or not).
    pub(crate) fn receipt(&self, delivered: bool) {
        bump(if delivered { &self.receipts_delivered } else { &self.receipts_offline }, 1);
    }
    /// The node-channel subscription was established again after a loss.
    pub(crate) fn resubscribed(&self) {
        bump(&self.redis_resubscribes, 1);
    }

    /// This node cleaned up after a dead node (it held the cleanup lock), closing `sockets`.
    pub(crate) fn lease_cleanup(&self, sockets: usize) {
        bump(&self.lease_cleanups, 1);
        bump(&self.lease_cleaned_sockets, sockets as u64);
    }

    /// A renewal of this node's lease failed (Redis unreachable or too slow).
    pub(crate) fn lease_renewal_failed(&self) {
        bump(&self.lease_renewal_failures, 1);
    }

    /// A durable socket got its hello.
    pub(crate) fn resumed(&self, outcome: Outcome) {
        bump(&self.resumes[outcome as usize], 1);
    }
    /// Messages replayed to a resuming socket.
    pub(crate) fn replayed(&self, frames: usize) {
        bump(&self.replayed_frames, frames as u64);
    }
    /// The node read its log to fill a gap in what it received (or to catch up after a
    /// re-subscription).
    pub(crate) fn gap_fill(&self) {
        bump(&self.gap_fills, 1);
    }
    /// The channel memberships the node keeps in memory now.
    pub(crate) fn memberships(&self, n: usize) {
        self.memberships.store(n as u64, Ordering::Relaxed);
    }

    /// An HTTP API request answered with `status` after `elapsed`; `method` is `None` when
    /// it named no method.
    pub(crate) fn api_call(&self, method: Option<Method>, status: u16, elapsed: Duration) {
        let row = method.map_or(Method::ALL.len(), |m| m as usize);
        bump(&self.api_calls[row][ApiStatus::of(status) as usize], 1);
        self.api_latency[row].observe(elapsed);
    }

    /// The API series: only those with a sample (17 methods × 8 statuses would be mostly
    /// zeros on every scrape).
    fn render_api(&self, text: &mut Exposition) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let calls: Vec<(String, u64)> = (0..API_ROWS)
            .flat_map(|row| ApiStatus::ALL.map(|status| (row, status)))
            .map(|(row, status)| {
                let labels = format!("{{method=\"{}\",status=\"{}\"}}", api_row_label(row), status.label());
                (labels, get(&self.api_calls[row][status as usize]))
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        text.metric("freeim_api_calls_total", "counter", "HTTP API requests by method and status.", &calls);
        let name = "freeim_api_call_duration_seconds";
        let _ = writeln!(text.0, "# HELP {name} HTTP API request latency by method.\n# TYPE {name} histogram");
        for (row, histogram) in self.api_latency.iter().enumerate().filter(|(_, h)| get(&h.count) > 0) {
            histogram.render(&mut text.0, name, &format!("method=\"{}\"", api_row_label(row)));
        }
    }

    /// The Prometheus text exposition, with the gauges given by the caller.
    pub(crate) fn render(&self, connections: usize, live: bool, log: &LogGauge) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut text = Exposition(String::with_capacity(2048));
        text.metric("freeim_connections", "gauge", "Open WebSocket connections.", &[("", connections as u64)]);
        text.metric(
            "freeim_redis_subscription_up",
            "gauge",
            "1 while the node channel subscription is live.",
            &[("", live as u64)],
        );
        text.metric("freeim_connects_total", "counter", "Completed WebSocket upgrades.", &[("", get(&self.connects))]);
        let disconnects = by_reason(&Disconnect::ALL, Disconnect::label, |d| get(&self.disconnects[d as usize]));
        text.metric("freeim_disconnects_total", "counter", "Closed sockets by reason.", &disconnects);
        let refused = by_reason(&Refusal::ALL, Refusal::label, |r| get(&self.refused[r as usize]));
        text.metric("freeim_refused_total", "counter", "Refused upgrades by reason.", &refused);
        text.metric(
            "freeim_messages_in_total",
            "counter",
            "Node-channel messages received.",
            &[("", get(&self.messages_in))],
        );
        text.metric(
            "freeim_messages_malformed_total",
            "counter",
            "Node-channel messages dropped as malformed.",
            &[("", get(&self.malformed_in))],
        );
        text.metric(
            "freeim_frames_out_total",
            "counter",
            "Text frames delivered to sockets.",
            &[("", get(&self.frames_out))],
        );
        text.metric(
            "freeim_queue_dropped_frames_total",
            "counter",
            "Frames not delivered because a socket's outgoing queue overflowed (slow consumers).",
            &[("", get(&self.queue_dropped))],
        );
        text.metric(
            "freeim_receipts_total",
            "counter",
            "Receipts sent by status.",
            &[
                ("{status=\"delivered\"}", get(&self.receipts_delivered)),
                ("{status=\"offline\"}", get(&self.receipts_offline)),
            ],
        );
        text.metric(
            "freeim_redis_resubscribes_total",
            "counter",
            "Node-channel subscriptions re-established after a loss.",
            &[("", get(&self.redis_resubscribes))],
        );
        text.metric(
            "freeim_lease_cleanups_total",
            "counter",
            "Cleanups of dead nodes run by this node (one per dead node it took the lock of).",
            &[("", get(&self.lease_cleanups))],
        );
        text.metric(
            "freeim_lease_cleaned_sockets_total",
            "counter",
            "Sockets of dead nodes closed by this node's cleanups.",
            &[("", get(&self.lease_cleaned_sockets))],
        );
        text.metric(
            "freeim_lease_renewal_failures_total",
            "counter",
            "Renewals of this node's lease that failed (past 15 s of them, survivors clean it up).",
            &[("", get(&self.lease_renewal_failures))],
        );
        let resumes: Vec<(String, u64)> = Outcome::ALL
            .iter()
            .map(|&o| (format!("{{result=\"{}\"}}", o.label()), get(&self.resumes[o as usize])))
            .collect();
        text.metric("freeim_resumes_total", "counter", "Durable sockets' hellos by result.", &resumes);
        text.metric(
            "freeim_replayed_frames_total",
            "counter",
            "Messages replayed to resuming durable sockets.",
            &[("", get(&self.replayed_frames))],
        );
        text.metric(
            "freeim_log_gap_fills_total",
            "counter",
            "Reads of the node's durable log to fill what the subscription missed.",
            &[("", get(&self.gap_fills))],
        );
        text.metric(
            "freeim_chan_memberships",
            "gauge",
            "Channel memberships of this node's clients kept in memory (--chan-cache).",
            &[("", get(&self.memberships))],
        );
        let window = if log.first() == 0 { 0 } else { log.top() + 1 - log.first() };
        text.metric("freeim_log_top_offset", "gauge", "Highest offset of the durable log handled.", &[("", log.top())]);
        text.metric(
            "freeim_log_window_entries",
            "gauge",
            "Durable log entries the node keeps in memory for resumes.",
            &[("", window)],
        );
        self.render_api(&mut text);
        text.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sit_at_their_variants_index() {
        assert!(Disconnect::ALL.iter().enumerate().all(|(i, d)| *d as usize == i));
        assert!(Refusal::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
        assert!(ApiStatus::ALL.iter().enumerate().all(|(i, s)| *s as usize == i));
        assert!(Method::ALL.iter().enumerate().all(|(i, m)| *m as usize == i));
    }

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
        m.lease_renewal_failed();
        m.memberships(7);
        m.resumed(Outcome::Recovered);
        m.resumed(Outcome::Recovered);
        m.resumed(Outcome::New);
        m.replayed(5);
        m.gap_fill();
        m.api_call(Some(Method::Send), 200, Duration::from_micros(700));
        m.api_call(Some(Method::Send), 200, Duration::from_secs(9));
        m.api_call(None, 404, Duration::from_micros(10));
        let text = m.render(7, true, &LogGauge::default());
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
            "freeim_lease_renewal_failures_total 1",
            "freeim_resumes_total{result=\"recovered\"} 2",
            "freeim_resumes_total{result=\"not_recovered\"} 0",
            "freeim_resumes_total{result=\"new\"} 1",
            "freeim_replayed_frames_total 5",
            "freeim_log_gap_fills_total 1",
            "freeim_chan_memberships 7",
            "freeim_log_top_offset 0",
            "freeim_log_window_entries 0",
            "freeim_api_calls_total{method=\"send\",status=\"200\"} 2",
            "freeim_api_calls_total{method=\"unknown\",status=\"404\"} 1",
            "# TYPE freeim_api_call_duration_seconds histogram",
            "freeim_api_call_duration_seconds_bucket{method=\"send\",le=\"0.0005\"} 0",
            "freeim_api_call_duration_seconds_bucket{method=\"send\",le=\"0.001\"} 1",
            "freeim_api_call_duration_seconds_bucket{method=\"send\",le=\"5\"} 1",
            "freeim_api_call_duration_seconds_bucket{method=\"send\",le=\"+Inf\"} 2",
            "freeim_api_call_duration_seconds_sum{method=\"send\"} 9.0007",
            "freeim_api_call_duration_seconds_count{method=\"send\"} 2",
            "freeim_api_call_duration_seconds_count{method=\"unknown\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("status=\"401\""), "zero series are left out");
    }
}
