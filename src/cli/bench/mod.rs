//! `freeim bench`: the load generator, and the raw baseline it is compared with.
//!
//! The coordinator (this process) issues tokens and publishes with our own library
//! ([`freeim::ImClient`]) and leaves the sockets to worker processes (this binary again,
//! `bench worker`), because one process may open at most 20,000 files. Workers open their
//! sockets from source addresses spread over 127.0.0.0/8 (a source address has only 28k
//! ephemeral ports) and speak just enough WebSocket ([`client`]). Every latency is read
//! against one clock: the publisher stamps each message, the worker that receives it
//! subtracts. The CPU of the generator (the publisher, every worker and the busiest one)
//! is reported beside the server's and Redis's, so a saturated generator is visible.
//!
//! Files: [`scenarios`] (connect, fanout, p2p), [`storm`] (the resume storm), [`scale`] (a
//! cluster of any size), [`suite`] (`all`), [`worker`] and [`pool`] (the worker processes),
//! [`client`] (the WebSocket client), [`durable`] (following durable sockets), [`publish`]
//! (through `ImClient`, the API ([`api`]) or to the baseline), [`baseline`] (the raw
//! server), [`cluster`] (child processes), [`stats`] and [`report`] (figures and tables),
//! [`payload`] (message stamps).

mod api;
mod baseline;
mod client;
mod cluster;
mod durable;
mod payload;
mod pool;
mod publish;
mod report;
mod scale;
mod scenarios;
mod stats;
mod storm;
mod suite;
mod worker;

use super::cluster::ClusterArgs;
use clap::{Args, Subcommand};
use scenarios::{DEFAULT_INFLIGHT, Fanout, Target};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use worker::TargetSpec;

/// Flags of `freeim bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Ramp up connections and hold them: connects/s, handshake latency, RSS per connection.
    Connect {
        #[command(flatten)]
        target: TargetArgs,
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        /// Connects offered per second; 0 for as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Handshakes in flight at once (over all workers).
        #[arg(long, default_value_t = DEFAULT_INFLIGHT)]
        inflight: usize,
        /// Seconds to hold the connections before reading the servers' RSS.
        #[arg(long, default_value_t = 3)]
        hold: u64,
    },
    /// Sockets in one channel (or a broadcast) get messages: deliveries/s, latency, peak RSS.
    Fanout {
        #[command(flatten)]
        target: TargetArgs,
        /// Sockets.
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        /// Messages.
        #[arg(long, default_value_t = 200)]
        messages: u64,
        /// Messages per second; 0 for back to back.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Send broadcasts instead of channel messages.
        #[arg(long)]
        broadcast: bool,
    },
    /// Direct messages between random pairs of clients over the nodes, through Redis.
    P2p {
        #[command(flatten)]
        target: TargetArgs,
        /// Clients (one socket each).
        #[arg(long, default_value_t = 10_000)]
        clients: u64,
        /// Messages.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Messages per second; 0 for as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Ask a receipt for every message, and count the receipts the senders' sockets get.
        #[arg(long)]
        receipts: bool,
    },
    /// A resume storm: durable sockets of a node that is killed reconnect to it restarted,
    /// each with a gap of messages to replay (starts its own Redis and node).
    Resume(storm::ResumeArgs),
    /// Start a private Redis and N gateway nodes, open and hold C sockets, and report the
    /// ramp, each node's share and the memory per connection (nodes, workers, kernel, Redis).
    Scale(scale::ScaleArgs),
    /// Start a private Redis, gateway nodes and the raw baseline, and run the whole suite.
    All(suite::AllArgs),
    /// A load worker (started by the bench itself).
    #[command(hide = true)]
    Worker,
    /// The raw baseline server (started by the bench itself).
    #[command(hide = true)]
    RawServer(baseline::RawServerArgs),
}

/// Which servers a single scenario measures.
#[derive(Debug, Args)]
struct TargetArgs {
    /// The nodes (and, unless --raw-control, their Redis for tokens and publishing).
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Measure raw baseline servers instead: their control addresses, in --servers order.
    #[arg(long, value_delimiter = ',', value_name = "ADDR,…")]
    raw_control: Vec<SocketAddr>,
    /// Server processes whose RSS and CPU to report (repeatable).
    #[arg(long, value_name = "PID")]
    watch_pid: Vec<u32>,
    /// Redis process, for its CPU.
    #[arg(long, value_name = "PID")]
    redis_pid: Option<u32>,
    /// Worker processes to use at least (one per 15,000 sockets at least).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Append the result to this JSON-lines file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Publish durably: every message is logged on its node (the sockets stay FreeIM
    /// sockets, so this measures the log's cost on the publisher, Redis and the nodes).
    #[arg(long)]
    durable: bool,
    /// Publish through the nodes' HTTP API with this key (`POST /api/send`, …, on
    /// keep-alive connections), as a backend in another language would.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Connect the sockets with `wss://`, trusting the PEM certificates in this file (the
    /// nodes' own, when self-signed).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Bytes of each message's text (its stamp, padded).
    #[arg(long, value_name = "BYTES", default_value_t = payload::MESSAGE_LEN)]
    size: usize,
}

impl TargetArgs {
    fn target(&self) -> anyhow::Result<Target> {
        let raw = !self.raw_control.is_empty();
        anyhow::ensure!(raw || self.cluster.redis.is_some(), "--redis is required unless --raw-control");
        let redis = if raw { None } else { self.cluster.redis.clone() };
        Ok(Target {
            label: match (raw, self.api_key.is_some(), self.durable) {
                (true, _, _) => "raw",
                (false, false, false) => "freeim",
                (false, false, true) => "freeim-durable",
                (false, true, false) => "freeim-api",
                (false, true, true) => "freeim-api-durable",
            }
            .to_owned(),
            durable: self.durable && !raw,
            api_key: self.api_key.clone().filter(|_| !raw),
            message_len: self.size,
            spec: TargetSpec {
                nodes: self.cluster.servers()?.to_vec(),
                redis,
                path: self.cluster.path().to_owned(),
                resume: false,
                tls_ca: self.tls_ca.clone(),
            },
            controls: self.raw_control.clone(),
            watch: self.watch_pid.clone(),
            redis_pid: self.redis_pid,
            min_workers: self.workers,
        })
    }
}

/// Runs `freeim bench …`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Worker => return worker::run(),
        Scenario::RawServer(args) => return baseline::run(args),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (record, json) = match args.scenario {
            Scenario::Connect { target, connections, rate, inflight, hold } => {
                let hold = Duration::from_secs(hold);
                (scenarios::connect(&target.target()?, connections, rate, inflight, hold).await?.0, target.json)
            }
            Scenario::Fanout { target, connections, messages, rate, broadcast } => {
                let f = Fanout { sockets: connections, messages, rate, broadcast };
                (scenarios::fanout(&target.target()?, f).await?, target.json)
            }
            Scenario::P2p { target, clients, messages, rate, receipts } => {
                (scenarios::p2p(&target.target()?, clients, messages, rate, receipts).await?, target.json)
            }
            Scenario::All(all) => return suite::run(all).await,
            Scenario::Resume(args) => return storm::run(args).await,
            Scenario::Scale(args) => return scale::run(args).await,
            Scenario::Worker | Scenario::RawServer(_) => unreachable!("handled above"),
        };
        report::print_table(std::slice::from_ref(&record));
        if let Some(path) = json {
            report::append_json(&path, std::slice::from_ref(&record))?;
        }
        anyhow::ensure!(record.missing.unwrap_or(0) == 0, "{} messages missing", record.missing.unwrap_or(0));
        Ok(())
    })
}
