//! `freeim bench scale`: a cluster of any size on this one box, from one command. It starts a
//! private Redis and `--nodes` gateway nodes (one process holds at most ~19,900 sockets
//! here), opens `--connections` sockets over enough workers, holds them, and reports the
//! connect ramp, each node's share, and where a connection's memory goes: the nodes, the
//! load workers, the kernel (both TCP ends are on this box) and Redis.

use super::cluster::{Nodes, Redis};
use super::report::{self, Record};
use super::scenarios::{self, DEFAULT_INFLIGHT, Target};
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `freeim bench scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Gateway nodes to start.
    #[arg(long, default_value_t = 53)]
    nodes: usize,
    /// Sockets to open (spread over the nodes by client id).
    #[arg(long, default_value_t = 1_000_000)]
    connections: u64,
    /// Connects offered per second; 0 for as fast as `--inflight` allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Handshakes in flight at once (over all workers).
    #[arg(long, default_value_t = DEFAULT_INFLIGHT)]
    inflight: usize,
    /// Seconds to hold the sockets before the memory is read.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// Append the record to this JSON-lines file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Runs the scale test; fails if a connection failed.
pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes > 0 && args.connections > 0, "--nodes and --connections must be at least 1");
    let redis = Redis::start()?;
    let nodes = Nodes::start(args.nodes, &redis.url)?;
    eprintln!("  [scale] {} nodes up", nodes.names.len());
    let target = Target::ours(&nodes, &redis);
    let hold = Duration::from_secs(args.hold);
    let mut record = scenarios::connect(&target, args.connections, args.rate, args.inflight, hold).await?;
    record.scenario = "scale".to_owned();
    print(&record);
    if let Some(path) = &args.json {
        report::append_json(path, std::slice::from_ref(&record))?;
    }
    let failed = record.failed.unwrap_or(0);
    anyhow::ensure!(failed == 0, "{failed} connections failed: {:?}", record.errors);
    Ok(())
}

fn print(record: &Record) {
    report::print_table(std::slice::from_ref(record));
    println!("\n| node | connections | RSS per connection |\n|---|---|---|");
    for node in &record.per_node {
        println!("| {} | {} | {:.0} B |", node.server, node.connections, node.rss_per_conn_bytes);
    }
    let total: u64 = record.per_node.iter().map(|n| n.connections).sum();
    println!("| all {} nodes | {total} | {:.0} B |", record.per_node.len(), record.rss_per_conn_bytes.unwrap_or(0.0));
    if let Some(m) = record.memory_per_conn {
        println!(
            "\nPer connection: nodes {:.0} B, load workers {:.0} B, kernel slab {:.0} B, Redis {:.0} B; MemAvailable dropped {:.0} B.",
            record.rss_per_conn_bytes.unwrap_or(0.0),
            m.workers,
            m.kernel_slab,
            m.redis,
            m.mem_available
        );
    }
}
