//! `freeim bench all`: the whole suite on processes it starts itself — a private Redis, `K`
//! gateway nodes, and the raw baseline — fresh for every measurement, so no figure is
//! skewed by the sockets or the memory of the one before. Prints the tables (all runs,
//! medians, ratios to the raw baseline) and writes them as JSON lines and Markdown.

use super::cluster::{Nodes, RawServers, Redis};
use super::payload;
use super::report::{self, Record, si};
use super::scenarios::{self, DEFAULT_INFLIGHT, Fanout, Target};
use super::worker::TargetSpec;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `freeim bench all`.
#[derive(Debug, clap::Args)]
pub struct AllArgs {
    /// Tiny sizes (a few hundred sockets): checks the whole tool in seconds (CI).
    #[arg(long)]
    smoke: bool,
    /// Repetitions of the suite (medians are reported).
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Only the scenarios whose name contains one of these (e.g. connect,p2p).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the raw baseline.
    #[arg(long)]
    no_raw: bool,
    /// Also run p2p at several rates (the latency-against-load curve).
    #[arg(long)]
    sweep: bool,
    /// Append every record to this JSON-lines file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the tables as Markdown to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// One measurement of the suite.
#[derive(Debug, Clone)]
enum Step {
    Connect { nodes: usize, conns: u64, rate: f64, raw: bool },
    Fanout { sockets: u64, messages: u64, rate: f64, broadcast: bool, raw: bool },
    P2p { nodes: usize, clients: u64, messages: u64, rate: f64, raw: bool },
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::Connect { nodes: 1, .. } => "connect",
            Step::Connect { .. } => "connect-cluster",
            Step::Fanout { rate, broadcast, .. } => match (*rate > 0.0, broadcast) {
                (false, false) => "fanout-burst",
                (false, true) => "broadcast-burst",
                (true, false) => "fanout-paced",
                (true, true) => "broadcast-paced",
            },
            Step::P2p { rate, .. } if *rate > 0.0 => "p2p-paced",
            Step::P2p { .. } => "p2p-max",
        }
    }

    fn raw(&self) -> bool {
        match self {
            Step::Connect { raw, .. } | Step::Fanout { raw, .. } | Step::P2p { raw, .. } => *raw,
        }
    }

    fn nodes(&self) -> usize {
        match self {
            Step::Connect { nodes, .. } | Step::P2p { nodes, .. } => *nodes,
            Step::Fanout { .. } => 1,
        }
    }
}

/// Each measurement, on ours then on the raw baseline.
fn plan(args: &AllArgs) -> Vec<Step> {
    let s = args.smoke;
    let pick = |full: u64, smoke: u64| if s { smoke } else { full };
    let mut steps = Vec::new();
    let (conns, rate) = (pick(19_000, 300), if s { 2_000.0 } else { 10_000.0 });
    let (sockets, burst, paced) = (pick(10_000, 200), pick(200, 20), pick(20, 4));
    let (clients, p2p_max, p2p_paced) = (pick(10_000, 200), pick(300_000, 1_000), pick(10_000, 200));
    let mut push = |step: Step| {
        if args.only.is_empty() || args.only.iter().any(|o| step.name().contains(o.as_str())) {
            steps.push(step);
        }
    };
    for raw in raws(args) {
        push(Step::Connect { nodes: 1, conns, rate, raw });
    }
    push(Step::Connect { nodes: 3, conns: pick(57_000, 600), rate: 0.0, raw: false });
    for raw in raws(args) {
        push(Step::Fanout { sockets, messages: burst, rate: 0.0, broadcast: false, raw });
    }
    push(Step::Fanout { sockets, messages: burst, rate: 0.0, broadcast: true, raw: false });
    for raw in raws(args) {
        push(Step::Fanout { sockets, messages: paced, rate: if s { 10.0 } else { 2.0 }, broadcast: false, raw });
    }
    for raw in raws(args) {
        push(Step::P2p { nodes: 2, clients, messages: p2p_max, rate: 0.0, raw });
    }
    for raw in raws(args) {
        push(Step::P2p { nodes: 2, clients, messages: p2p_paced, rate: if s { 500.0 } else { 2_000.0 }, raw });
    }
    if args.sweep {
        let rates: &[f64] = if s { &[50.0] } else { &[10.0, 50.0] };
        for &rate in rates {
            for raw in raws(args) {
                let messages = (rate * 4.0) as u64;
                push(Step::Fanout { sockets, messages, rate, broadcast: false, raw });
            }
        }
        let rates: &[f64] = if s { &[1_000.0] } else { &[5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0] };
        for &rate in rates {
            for raw in raws(args) {
                let messages = (rate * if s { 0.5 } else { 4.0 }) as u64;
                push(Step::P2p { nodes: 2, clients, messages, rate, raw });
            }
        }
    }
    steps
}

fn raws(args: &AllArgs) -> Vec<bool> {
    if args.no_raw { vec![false] } else { vec![false, true] }
}

/// The servers of one measurement; dropped (killed) after it.
enum Servers {
    Ours { _redis: Redis, _nodes: Nodes },
    Raw { _servers: RawServers },
}

fn start(step: &Step) -> anyhow::Result<(Servers, Target)> {
    let k = step.nodes();
    if step.raw() {
        let servers = RawServers::start(k)?;
        let target = Target {
            label: "raw".to_owned(),
            durable: false,
            api_key: None,
            message_len: payload::MESSAGE_LEN,
            spec: TargetSpec {
                nodes: servers.names.clone(),
                redis: None,
                path: "/ws".to_owned(),
                resume: false,
                tls_ca: None,
            },
            controls: servers.controls.clone(),
            watch: servers.pids(),
            redis_pid: None,
            min_workers: 1,
        };
        return Ok((Servers::Raw { _servers: servers }, target));
    }
    let redis = Redis::start()?;
    let nodes = Nodes::start(k, &redis.url)?;
    let target = Target::ours(&nodes, &redis);
    Ok((Servers::Ours { _redis: redis, _nodes: nodes }, target))
}

async fn measure(step: &Step, target: &Target, smoke: bool) -> anyhow::Result<Record> {
    match *step {
        Step::Connect { conns, rate, .. } => {
            // Held long enough for the allocator to settle before RSS is read.
            let hold = if smoke { Duration::from_millis(300) } else { Duration::from_secs(3) };
            let (mut record, _) = scenarios::connect(target, conns, rate, DEFAULT_INFLIGHT, hold).await?;
            record.scenario = step.name().to_owned();
            Ok(record)
        }
        Step::Fanout { sockets, messages, rate, broadcast, .. } => {
            scenarios::fanout(target, Fanout { sockets, messages, rate, broadcast }).await
        }
        Step::P2p { clients, messages, rate, .. } => scenarios::p2p(target, clients, messages, rate, false).await,
    }
}

/// Runs the suite.
pub async fn run(args: AllArgs) -> anyhow::Result<()> {
    let steps = plan(&args);
    let mut records: Vec<Record> = Vec::new();
    for run in 1..=args.runs.max(1) {
        for step in &steps {
            eprintln!(
                "bench all: run {run}: {} on {} ({:?})",
                step.name(),
                if step.raw() { "raw" } else { "freeim" },
                step
            );
            let (servers, target) = start(step)?;
            let mut record = measure(step, &target, args.smoke).await?;
            drop(servers);
            record.run = run;
            report::print_table(std::slice::from_ref(&record));
            if let Some(path) = &args.json {
                report::append_json(path, std::slice::from_ref(&record))?;
            }
            records.push(record);
        }
    }
    let markdown = render(&records);
    println!("\n{markdown}");
    if let Some(path) = &args.report {
        std::fs::write(path, &markdown)?;
    }
    let missing: u64 = records.iter().filter_map(|r| r.missing).sum();
    let failed: u64 = records.iter().filter_map(|r| r.failed).sum();
    anyhow::ensure!(missing == 0 && failed == 0, "{missing} messages missing, {failed} connections failed");
    Ok(())
}

/// Key figures of a record: (name, value, higher is better).
fn figures(r: &Record) -> Vec<(&'static str, f64, bool)> {
    let mut out = Vec::new();
    if let Some(v) = r.connects_per_s {
        out.push(("connects/s", v, true));
    }
    if let Some(p) = r.handshake {
        out.push(("handshake p99 ms", p.p99_ms, false));
    }
    if let Some(v) = r.rss_per_conn_bytes {
        out.push(("RSS bytes/conn", v, false));
    }
    if let Some(v) = r.deliveries_per_s {
        out.push(("deliveries/s", v, true));
    }
    if let Some(p) = r.latency {
        out.push(("latency p50 ms", p.p50_ms, false));
        out.push(("latency p99 ms", p.p99_ms, false));
    }
    if let (Some(peak), Some(loaded)) = (r.rss_peak_kib, r.rss_loaded_kib) {
        out.push(("RSS peak / loaded", peak as f64 / loaded.max(1) as f64, false));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 { si(v) } else { format!("{v:.2}") }
}

/// Markdown: every record, the medians per measurement, and ours vs raw per run.
fn render(records: &[Record]) -> String {
    let mut md = String::from(
        "### Every run\n\n| run | scenario | target | load | result | latency p50 / p99 / max | CPU cores (srv, pub, wrk, redis, wrk-max) |\n|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        let c = r.cells();
        let _ = writeln!(md, "| {} | {} | {} | {} | {} | {} | {} |", r.run, c[0], c[1], c[2], c[3], c[4], c[5]);
    }
    // Groups: same scenario, target and load.
    let key = |r: &Record| (r.scenario.clone(), r.target.clone(), r.size, r.rate.to_bits(), r.nodes);
    let mut keys: Vec<_> = Vec::new();
    for r in records {
        if !keys.contains(&key(r)) {
            keys.push(key(r));
        }
    }
    md.push_str(
        "\n### Medians over runs\n\n| scenario | target | load | figure | median | runs |\n|---|---|---|---|---|---|\n",
    );
    for k in &keys {
        let group: Vec<&Record> = records.iter().filter(|r| key(r) == *k).collect();
        for (i, (name, _, _)) in figures(group[0]).iter().enumerate() {
            let values: Vec<f64> = group.iter().filter_map(|r| figures(r).get(i).map(|f| f.1)).collect();
            let load = group[0].cells()[2].clone();
            let _ = writeln!(
                md,
                "| {} | {} | {load} | {name} | {} | {} |",
                k.0,
                k.1,
                fmt(median(values.clone())),
                values.len()
            );
        }
    }
    md.push_str("\n### Ours against the raw baseline (same run)\n\n| run | scenario | figure | freeim | raw | freeim / raw |\n|---|---|---|---|---|---|\n");
    for ours in records.iter().filter(|r| r.target == "freeim") {
        let Some(raw) = records.iter().find(|r| {
            r.target == "raw"
                && r.run == ours.run
                && r.scenario == ours.scenario
                && r.size == ours.size
                && r.rate == ours.rate
        }) else {
            continue;
        };
        for ((name, a, higher), (_, b, _)) in figures(ours).into_iter().zip(figures(raw)) {
            let ratio = if b > 0.0 { a / b } else { 0.0 };
            let text = if higher { format!("{:.0} %", ratio * 100.0) } else { format!("{ratio:.2}×") };
            let _ = writeln!(md, "| {} | {} | {name} | {} | {} | {text} |", ours.run, ours.scenario, fmt(a), fmt(b));
        }
    }
    md
}
