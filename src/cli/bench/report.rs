//! Results: one [`Record`] per measurement, printed as a table and appended to a JSON-lines
//! file; ratios of our figures to the raw baseline's; medians over repeated runs.

use super::stats::Percentiles;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// One measurement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    /// `connect`, `fanout-burst`, `broadcast-paced`, `p2p-max`, …
    pub scenario: String,
    /// `freeim` (our gateways through Redis) or `raw` (the baseline).
    pub target: String,
    /// Repetition number (1-based) within a suite.
    pub run: u32,
    /// Server nodes.
    pub nodes: usize,
    /// Sockets (connect, fanout) or clients (p2p).
    pub size: u64,
    /// Offered rate: connects/s or messages/s; 0 = as fast as possible.
    pub rate: f64,
    /// Messages published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    /// Bytes of each message's text (0 when no message was sent).
    #[serde(skip_serializing_if = "is_zero")]
    pub message_bytes: usize,
    /// Sockets upgraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<u64>,
    /// Failed attempts, plus sockets the server closed while held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
    /// Achieved connects per second (first attempt to last answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connects_per_s: Option<f64>,
    /// Handshake latency: TCP connect to `101` received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake: Option<Percentiles>,
    /// Server RSS before any socket (KiB, summed over the watched processes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_idle_kib: Option<u64>,
    /// Server RSS with the sockets open and idle (KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_loaded_kib: Option<u64>,
    /// (loaded − idle) / sockets, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_conn_bytes: Option<f64>,
    /// Where the memory of a held connection goes, in bytes per connection: the load
    /// workers' RSS, the kernel's slab (both TCP ends are on this box), the drop of
    /// `MemAvailable` (everything), and Redis's `used_memory` (presence and socket records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_per_conn: Option<MemoryPerConn>,
    /// Each node's share, in node order (when the nodes are this bench's own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_node: Vec<NodeShare>,
    /// Peak server RSS while messages flowed (KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_peak_kib: Option<u64>,
    /// Frames received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    /// Frames that should have been received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    /// expected − delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<u64>,
    /// Publishes that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_errors: Option<u64>,
    /// Frames received per second, first publish to last receive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_s: Option<f64>,
    /// Publish→receive latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Percentiles>,
    /// Receipts received (p2p with receipts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipts: Option<u64>,
    /// Receipts per second, first publish to last receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipts_per_s: Option<f64>,
    /// Publish→receipt latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_latency: Option<Percentiles>,
    /// CPU used in cores (1.0 = one core) by: the server processes, the publisher (the
    /// coordinator), the workers, Redis when known, and the busiest single worker.
    pub cpu: Vec<(String, f64)>,
    /// Microseconds Redis spent executing commands per message published (`INFO
    /// commandstats`, all commands, over the publish window): the command work, without
    /// the event loop's socket writes and idle ticks that the `redis` CPU figure includes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_command_us: Option<f64>,
    /// Resume storm: seconds from the first reconnect until every socket was current.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_current_s: Option<f64>,
    /// Measured window in seconds.
    pub elapsed_s: f64,
    /// A few connection errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// See [`Record::memory_per_conn`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemoryPerConn {
    /// The load workers' RSS.
    pub workers: f64,
    /// The kernel's `Slab` growth.
    pub kernel_slab: f64,
    /// The drop of `MemAvailable`.
    pub mem_available: f64,
    /// Redis's `used_memory` growth.
    pub redis: f64,
}

/// One node's sockets and memory while held.
#[derive(Debug, Clone, Serialize)]
pub struct NodeShare {
    /// The node's name.
    pub server: String,
    /// Its `freeim_connections`.
    pub connections: u64,
    /// Its RSS growth per connection (bytes).
    pub rss_per_conn_bytes: f64,
}

impl Record {
    /// An empty record.
    pub fn new(scenario: &str, target: &str) -> Record {
        Record { scenario: scenario.to_owned(), target: target.to_owned(), run: 1, ..Record::default() }
    }

    fn load(&self) -> String {
        let rate = if self.rate > 0.0 { format!("@{}/s", si(self.rate)) } else { "@max".to_owned() };
        match self.messages {
            Some(m) if self.scenario == "resume-storm" => {
                format!("{} durable sockets, a {m}-message gap each", si(self.size as f64))
            }
            Some(m) if self.scenario.starts_with("p2p") => {
                let (clients, nodes, m) = (si(self.size as f64), self.nodes, si(m as f64));
                format!("{clients} clients/{nodes} nodes, {m} msgs{} {rate}", self.size_text())
            }
            Some(m) => format!("{} sockets × {m} msgs{} {rate}", si(self.size as f64), self.size_text()),
            None => format!("{} conns/{} nodes {rate}", si(self.size as f64), self.nodes),
        }
    }

    fn result(&self) -> String {
        if let Some(secs) = self.all_current_s {
            let replayed = si(self.delivered.unwrap_or(0) as f64);
            let (recovered, failed) = (self.ok.unwrap_or(0), self.failed.unwrap_or(0));
            return format!("all current in {secs:.2} s: {recovered} recovered, {failed} failed, {replayed} replayed");
        }
        if let Some(cps) = self.connects_per_s {
            let per = self.rss_per_conn_bytes.map(|b| format!(", {:.2} KiB/conn", b / 1024.0)).unwrap_or_default();
            return format!("{}/s, {} failed{per}", si(cps), self.failed.unwrap_or(0));
        }
        let peak = match (self.rss_peak_kib, self.rss_loaded_kib) {
            (Some(p), Some(l)) => format!(", RSS {:.1}→{:.1} MiB", l as f64 / 1024.0, p as f64 / 1024.0),
            (Some(p), None) => format!(", RSS peak {:.1} MiB", p as f64 / 1024.0),
            _ => String::new(),
        };
        let receipts = match (self.receipts_per_s, self.receipt_latency) {
            (Some(rate), Some(p)) => format!(", receipts {}/s (p99 {})", si(rate), ms(p.p99_ms)),
            _ => String::new(),
        };
        let (rate, missing) = (si(self.deliveries_per_s.unwrap_or(0.0)), self.missing.unwrap_or(0));
        format!("{rate}/s, {missing} missing{receipts}{peak}")
    }

    /// ` of 4096 B` unless the messages have the default size.
    fn size_text(&self) -> String {
        match self.message_bytes {
            0 | super::payload::MESSAGE_LEN => String::new(),
            n => format!(" of {n} B"),
        }
    }

    fn latency_text(&self) -> String {
        match self.latency.or(self.handshake) {
            Some(p) => format!("{} / {} / {}", ms(p.p50_ms), ms(p.p99_ms), ms(p.max_ms)),
            None => "-".to_owned(),
        }
    }

    fn cpu_text(&self) -> String {
        let short = |name: &str| match name {
            "server" => "srv".to_owned(),
            "publisher" => "pub".to_owned(),
            "workers" => "wrk".to_owned(),
            "busiest worker" => "wrk-max".to_owned(),
            other => other.to_owned(),
        };
        self.cpu.iter().map(|(name, cores)| format!("{} {cores:.2}", short(name))).collect::<Vec<_>>().join(" ")
    }

    /// The cells of a table row.
    pub fn cells(&self) -> [String; 6] {
        [self.scenario.clone(), self.target.clone(), self.load(), self.result(), self.latency_text(), self.cpu_text()]
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `12345.6` → `12.3k`, `1234567` → `1.23M`.
pub fn si(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v if v >= 100.0 => format!("{v:.0}"),
        v => format!("{v:.1}"),
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0} ms") } else { format!("{v:.2} ms") }
}

const HEADERS: [&str; 6] =
    ["scenario", "target", "load", "result", "latency p50 / p99 / max", "CPU cores (srv, pub, wrk, redis, wrk-max)"];

/// Prints `records` as an aligned text table (stdout).
pub fn print_table(records: &[Record]) {
    let rows: Vec<[String; 6]> = records.iter().map(Record::cells).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&HEADERS.map(str::to_owned));
    println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for row in &rows {
        line(row);
    }
}

/// Appends `records` to `path` as JSON lines.
pub fn append_json<T: Serialize>(path: &Path, records: &[T]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    for record in records {
        writeln!(file, "{}", serde_json::to_string(record)?)?;
    }
    Ok(())
}
