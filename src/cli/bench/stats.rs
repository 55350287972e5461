//! Measuring: latency histograms, the one clock every process shares, and what `/proc`
//! says about a process (resident memory, CPU time).
//!
//! Latencies cross processes (the publisher stamps, a worker receives), so they are taken
//! on the wall clock (`CLOCK_REALTIME`, one clock for the whole box); durations inside one
//! process use it too, so every figure is on the same scale.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Sub-buckets per power of two: values are kept within 1/64 (1.6 %) of their true value.
const SUB_BITS: u32 = 6;
/// Values below this are counted exactly (one bucket per microsecond).
const LINEAR: u64 = 2 << SUB_BITS;
/// Buckets needed for any `u64`.
const BUCKETS: usize = LINEAR as usize + (64 - SUB_BITS as usize - 1) * (1 << SUB_BITS);
/// Kernel clock ticks per second for `/proc/PID/stat` CPU times (`getconf CLK_TCK`; 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// Nanoseconds since the Unix epoch: the timestamp publishers embed in messages.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A log-linear histogram of microseconds (HdrHistogram's layout, 1.6 % precision).
/// Mergeable, so each worker keeps its own and the coordinator adds them up.
#[derive(Debug, Clone)]
pub struct Hist {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // ≥ SUB_BITS + 1
    let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    LINEAR as usize + ((exp - SUB_BITS - 1) as usize) * (1 << SUB_BITS) + sub as usize
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let rel = i - LINEAR as usize;
    let exp = (rel >> SUB_BITS) as u32 + SUB_BITS + 1;
    let sub = (rel & ((1 << SUB_BITS) - 1)) as u64;
    let low = ((1 << SUB_BITS) + sub) << (exp - SUB_BITS);
    low + (1 << (exp - SUB_BITS)) / 2
}

impl Hist {
    /// Counts one value (µs).
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// Adds `other` into this one.
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The `q` quantile (0..=1) in µs; 0 when empty. The maximum is exact.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }

    /// The largest value recorded (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// A compact form for the worker pipe: non-empty buckets only.
    pub fn to_wire(&self) -> WireHist {
        let buckets = self.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i as u32, *c)).collect();
        WireHist { buckets, max: self.max }
    }

    /// The inverse of [`Hist::to_wire`].
    pub fn from_wire(wire: &WireHist) -> Hist {
        let mut hist = Hist::default();
        for &(i, c) in &wire.buckets {
            if let Some(slot) = hist.counts.get_mut(i as usize) {
                *slot += c;
                hist.total += c;
            }
        }
        hist.max = wire.max;
        hist
    }
}

/// A histogram as sent between processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireHist {
    /// (bucket, count) of non-empty buckets.
    pub buckets: Vec<(u32, u64)>,
    /// Exact maximum.
    pub max: u64,
}

/// Latency percentiles in milliseconds, as reported.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl From<&Hist> for Percentiles {
    fn from(h: &Hist) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles { p50_ms: ms(h.quantile(0.5)), p99_ms: ms(h.quantile(0.99)), max_ms: ms(h.max()) }
    }
}

/// `VmRSS` of `pid` in KiB, if the process exists.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A field of `/proc/meminfo` (`Slab`, `MemAvailable`, …), in KiB.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Redis's `used_memory` (bytes) at `url`, from `INFO memory`.
pub async fn redis_used_memory(url: &str) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.ok()?;
    info.lines().find_map(|l| l.strip_prefix("used_memory:"))?.trim().parse().ok()
}

/// Microseconds Redis at `url` has spent executing commands since it started: the sum of
/// `usec=` over `INFO commandstats` (`None` without a Redis, as for the raw baseline).
pub async fn redis_command_usec(url: Option<&str>) -> Option<u64> {
    let client = redis::Client::open(url?).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.ok()?;
    Some(
        info.lines()
            .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("usec=")))
            .filter_map(|v| v.parse::<u64>().ok())
            .sum(),
    )
}

/// Sum of `VmRSS` over `pids`, in KiB (missing processes count 0).
pub fn rss_sum_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| rss_kib(*p)).sum()
}

/// CPU seconds used by `pid` so far: the sum of its threads' run time from
/// `/proc/PID/task/*/schedstat`, in nanoseconds (`/proc/PID/stat` counts 10 ms ticks, too
/// coarse for a few milliseconds of Redis work per run); `/proc/PID/stat` where that is
/// missing. A thread that exits takes its time with it, so measure long-lived threads.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    schedstat_secs(pid).or_else(|| stat_secs(pid))
}

fn schedstat_secs(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

fn stat_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    // utime and stime are fields 14 and 15 of the whole line: 12th and 13th after ')'.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS)
}

/// CPU seconds of named groups of processes, to turn into utilisation over a window.
#[derive(Debug, Clone)]
pub struct CpuProbe {
    groups: Vec<(String, Vec<u32>)>,
    start: Vec<f64>,
    started_ns: u64,
}

impl CpuProbe {
    /// Starts measuring each group (e.g. "server" → node pids, "workers" → worker pids).
    pub fn start(groups: Vec<(String, Vec<u32>)>) -> Self {
        let start = groups.iter().map(|(_, pids)| Self::sum(pids)).collect();
        CpuProbe { groups, start, started_ns: now_ns() }
    }

    fn sum(pids: &[u32]) -> f64 {
        pids.iter().filter_map(|p| cpu_secs(*p)).sum()
    }

    /// Utilisation of each group since `start`, in cores (1.0 = one core busy). Groups
    /// named `worker PID` are folded into one `busiest worker` figure.
    pub fn stop(&self) -> Vec<(String, f64)> {
        let secs = (now_ns().saturating_sub(self.started_ns)) as f64 / 1e9;
        let mut out = Vec::new();
        let mut busiest: Option<f64> = None;
        for ((name, pids), start) in self.groups.iter().zip(&self.start) {
            let cores = ((Self::sum(pids) - start) / secs.max(1e-3)).max(0.0);
            if name.starts_with("worker ") {
                busiest = Some(busiest.unwrap_or(0.0).max(cores));
            } else {
                out.push((name.clone(), cores));
            }
        }
        if let Some(cores) = busiest {
            out.push(("busiest worker".to_owned(), cores));
        }
        out
    }
}

/// Samples the summed RSS of some processes every few milliseconds on a thread, keeping
/// the peak (the burst is short; `VmHWM` would include the connection ramp).
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    /// Starts sampling `pids`.
    pub fn start(pids: Vec<u32>) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_sum_kib(&pids));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak.max(rss_sum_kib(&pids))
        });
        RssSampler { stop, handle }
    }

    /// Stops and returns the peak, in KiB.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_precision() {
        for v in [0, 1, 127, 128, 129, 1000, 12_345, 188_000, 1 << 40, u64::MAX / 2] {
            let got = value(index(v));
            let err = got.abs_diff(v) as f64 / (v.max(1) as f64);
            assert!(err <= 1.0 / 64.0, "{v} -> {got}");
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Hist::default();
        (1..=100).for_each(|v| a.record(v));
        let mut b = Hist::from_wire(&a.to_wire());
        b.merge(&a);
        assert_eq!(b.total, 200);
        assert_eq!(b.quantile(0.5), 50);
        assert_eq!(b.quantile(0.99), 99);
        assert_eq!(b.max(), 100);
    }

    #[test]
    fn proc_readings_of_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_secs(me).is_some());
    }
}
