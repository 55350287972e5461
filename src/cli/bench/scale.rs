//! `freeim bench scale`: a cluster of any size on this one box, from one command, through a
//! node's whole life at that size. It starts a private Redis and `--nodes` gateway nodes
//! (one process holds at most ~19,900 sockets here), opens `--connections` sockets over
//! enough workers, and then, in order:
//!
//! 1. **connect**: the ramp, each node's share, and where a connection's memory goes: the
//!    nodes, the load workers, the kernel (both TCP ends are on this box) and Redis;
//! 2. **hold**: keeps every socket open for `--hold` seconds with the nodes' heartbeats on,
//!    sampling RSS, open sockets and pongs, then checks presence in Redis is exact;
//! 3. **broadcast** to every socket, and a message to a `--room` spread over all nodes;
//! 4. **crash**: kill -9 of the last node, timed until a survivor has cleaned up its sockets
//!    (presence counted down exactly once, one offline event each);
//! 5. **drain**: SIGTERM to every other node at once, timed until all have exited, and
//!    presence left empty.
//!
//! Each phase can be skipped (`--skip`), and the run fails if any check does.

use super::cluster::{Nodes, Redis};
use super::pool::Pool;
use super::report::{self, Record};
use super::scenarios::{self, DEFAULT_INFLIGHT, Fanout, Target};
use super::stats::rss_sum_kib;
use anyhow::{Context, ensure};
use freeim::protocol::Keys;
use futures_util::StreamExt;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Seconds the sockets settle after the ramp before the memory is read.
const SETTLE: Duration = Duration::from_secs(10);
/// How often presence is polled while a crash or a drain is timed.
const POLL: Duration = Duration::from_millis(200);
/// The longest a crash cleanup or a drain is waited for.
const GIVE_UP: Duration = Duration::from_secs(180);

/// Connection errors quoted when connections failed.
const ERRORS_SHOWN: usize = 8;
/// Members of the room by default.
const ROOM: u64 = 100_000;

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
    /// Seconds to hold every socket, heartbeats on, after the ramp.
    #[arg(long, default_value_t = 600)]
    hold: u64,
    /// Seconds between samples while holding.
    #[arg(long, default_value_t = 60)]
    sample_every: u64,
    /// Broadcasts to every socket (after one warm-up).
    #[arg(long, default_value_t = 3)]
    broadcasts: u64,
    /// Members of the room (clients 1..=N, so spread over every node); at most
    /// --connections [default: 100,000, or --connections if fewer].
    #[arg(long)]
    room: Option<u64>,
    /// Messages to the room (after one warm-up).
    #[arg(long, default_value_t = 3)]
    room_messages: u64,
    /// The nodes' `--ping-interval` (and `--pong-timeout`) in seconds [default: the nodes'].
    #[arg(long, value_name = "SECS")]
    ping_interval: Option<u64>,
    /// Phases to skip.
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<Phase>,
    /// Append the records to this JSON-lines file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// A phase after the connect ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Hold,
    Broadcast,
    Room,
    Crash,
    Drain,
}

/// What the phases after the ramp saw (one JSON line, scenario `scale-life`).
#[derive(Debug, Default, Serialize)]
struct Life {
    scenario: &'static str,
    nodes: usize,
    connections: u64,
    /// Samples while holding.
    hold: Vec<Sample>,
    /// `HLEN {P}Online` after the hold.
    online: Option<u64>,
    /// The node socket records (`HLEN {P}NodeSockets{node}`, summed) after the hold.
    socket_records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crash: Option<Crash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drain: Option<Drain>,
}

/// One sample while holding.
#[derive(Debug, Serialize)]
struct Sample {
    /// Seconds since the hold began.
    at_s: u64,
    /// The nodes' RSS, summed (KiB).
    nodes_rss_kib: u64,
    /// Sockets open in the workers.
    open: u64,
    /// Sockets the nodes closed since the ramp.
    closed: u64,
    /// Pings answered since the ramp.
    pongs: u64,
}

/// kill -9 of one node and a survivor's cleanup.
#[derive(Debug, Serialize)]
struct Crash {
    node: String,
    /// Sockets the node held.
    sockets: u64,
    /// Kill to its socket records gone and `{P}Online` counted down by `sockets`.
    cleaned_s: Option<f64>,
    /// `{P}Online` before the kill minus after the cleanup (must equal `sockets`).
    online_counted_down: u64,
    /// Offline events published from the kill until a second after the cleanup.
    offline_events: u64,
}

/// SIGTERM to every node at once.
#[derive(Debug, Serialize)]
struct Drain {
    nodes: usize,
    /// SIGTERM to the last node's exit.
    drained_s: Option<f64>,
    /// Nodes that exited with a failure status or not at all.
    failed_exits: usize,
    /// `HLEN {P}Online` afterwards (must be 0).
    online: u64,
    /// The node socket records left (must be 0).
    socket_records: u64,
}

/// Runs the scale test; fails if a connection failed or a check did.
pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    ensure!(args.nodes > 0 && args.connections > 0, "--nodes and --connections must be at least 1");
    let room = args.room.unwrap_or(ROOM.min(args.connections));
    ensure!(room <= args.connections, "--room cannot exceed --connections");
    ensure!(args.sample_every > 0, "--sample-every must be at least 1");
    let on = |phase| !args.skip.contains(&phase);
    let redis = Redis::start()?;
    let flags = match args.ping_interval {
        Some(secs) => {
            vec!["--ping-interval".to_owned(), secs.to_string(), "--pong-timeout".to_owned(), secs.to_string()]
        }
        None => Vec::new(),
    };
    let mut nodes = Nodes::start_with(args.nodes, &redis.url, flags)?;
    eprintln!("  [scale] {} nodes up", nodes.names.len());
    let target = Target::ours(&nodes, &redis);
    let presence = Presence::open(&redis.url, target.im()?.keys().clone()).await?;
    let mut records = Vec::new();
    let (mut record, mut pool) =
        scenarios::connect(&target, args.connections, args.rate, args.inflight, SETTLE).await?;
    record.scenario = "scale".to_owned();
    print(&record);
    let failed = record.failed.unwrap_or(0);
    records.push(record);
    let mut life = Life { scenario: "scale-life", nodes: args.nodes, connections: args.connections, ..Life::default() };
    let outcome = async {
        let errors = &records[0].errors;
        ensure!(
            failed == 0,
            "{failed} connections failed, among them: {:?}",
            &errors[..errors.len().min(ERRORS_SHOWN)]
        );
        if on(Phase::Hold) {
            hold(&target, &mut pool, &args, &mut life).await?;
            let (online, sockets) = (presence.online().await?, presence.socket_records(&nodes.names).await?);
            (life.online, life.socket_records) = (Some(online), Some(sockets));
            println!("\nAfter the hold: {{P}}Online {online}, node socket records {sockets}.");
            ensure!(
                online == args.connections && sockets == args.connections,
                "presence is not exact after the hold: {online} online, {sockets} socket records"
            );
        }
        if on(Phase::Broadcast) && args.broadcasts > 0 {
            let f = Fanout { sockets: args.connections, messages: args.broadcasts, rate: 0.0, broadcast: true };
            records.push(phase_record(scenarios::deliver(&target, &mut pool, f).await?, "scale-broadcast")?);
        }
        if on(Phase::Room) && room > 0 && args.room_messages > 0 {
            scenarios::join_all(&target.im()?, room).await?;
            let f = Fanout { sockets: room, messages: args.room_messages, rate: 0.0, broadcast: false };
            records.push(phase_record(scenarios::deliver(&target, &mut pool, f).await?, "scale-room")?);
        }
        if on(Phase::Crash) && nodes.procs.len() > 1 {
            life.crash = Some(crash(&mut nodes, &presence).await?);
        }
        if on(Phase::Drain) {
            life.drain = Some(drain(&mut nodes, &presence).await?);
        }
        Ok(())
    }
    .await;
    print_life(&life);
    if let Some(path) = &args.json {
        report::append_json(path, &records)?;
        report::append_json(path, std::slice::from_ref(&life))?;
    }
    outcome?;
    check_life(&life)
}

/// Names a phase's record, prints it, and fails on a missing delivery.
fn phase_record(mut record: Record, scenario: &str) -> anyhow::Result<Record> {
    record.scenario = scenario.to_owned();
    report::print_table(std::slice::from_ref(&record));
    let missing = record.missing.unwrap_or(0);
    ensure!(missing == 0 && record.send_errors == Some(0), "{scenario}: {missing} deliveries missing");
    Ok(record)
}

/// Holds every socket `--hold` seconds, sampling every `--sample-every`.
async fn hold(target: &Target, pool: &mut Pool, args: &ScaleArgs, life: &mut Life) -> anyhow::Result<()> {
    let start = Instant::now();
    let base = pool.progress().await?;
    println!("\n| held for | nodes' RSS | open sockets | closed by the nodes | pongs |\n|---|---|---|---|---|");
    loop {
        let p = pool.progress().await?;
        let sample = Sample {
            at_s: start.elapsed().as_secs(),
            nodes_rss_kib: rss_sum_kib(&target.watch),
            open: p.connected.saturating_sub(p.closed),
            closed: p.closed - base.closed,
            pongs: p.pongs - base.pongs,
        };
        println!(
            "| {} s | {:.1} MiB | {} | {} | {} |",
            sample.at_s,
            sample.nodes_rss_kib as f64 / 1024.0,
            sample.open,
            sample.closed,
            sample.pongs
        );
        life.hold.push(sample);
        let left = Duration::from_secs(args.hold).saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(Duration::from_secs(args.sample_every))).await;
    }
}

/// Kills the last node with SIGKILL and times a survivor's cleanup of its sockets.
async fn crash(nodes: &mut Nodes, presence: &Presence) -> anyhow::Result<Crash> {
    let last = nodes.procs.len() - 1;
    let name = nodes.names[last].clone();
    let sockets = presence.socket_records(std::slice::from_ref(&name)).await?;
    let before = presence.online().await?;
    let offline = presence.count_offline_events().await?;
    let start = Instant::now();
    nodes.procs[last].kill();
    eprintln!("  [scale-crash] killed node {name} holding {sockets} sockets");
    let mut cleaned_s = None;
    while start.elapsed() < GIVE_UP {
        let left = presence.socket_records(std::slice::from_ref(&name)).await?;
        let online = presence.online().await?;
        if left == 0 && online + sockets <= before {
            cleaned_s = Some(start.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // the last offline events in flight
    let after = presence.online().await?;
    Ok(Crash {
        node: name,
        sockets,
        cleaned_s,
        online_counted_down: before.saturating_sub(after),
        offline_events: offline.load(Ordering::Relaxed),
    })
}

/// Sends SIGTERM to every live node at once and times until all have exited.
async fn drain(nodes: &mut Nodes, presence: &Presence) -> anyhow::Result<Drain> {
    let live: Vec<usize> = (0..nodes.procs.len()).filter(|&i| nodes.procs[i].exit_status().is_none()).collect();
    let start = Instant::now();
    for &i in &live {
        nodes.procs[i].terminate();
    }
    let mut waiting = live.clone();
    let mut failed_exits = 0;
    while !waiting.is_empty() && start.elapsed() < GIVE_UP {
        let mut still = Vec::new();
        for i in waiting {
            match nodes.procs[i].exit_status() {
                None => still.push(i),
                Some(ok) => failed_exits += usize::from(!ok),
            }
        }
        waiting = still;
        tokio::time::sleep(POLL).await;
    }
    let drained_s = waiting.is_empty().then(|| start.elapsed().as_secs_f64());
    Ok(Drain {
        nodes: live.len(),
        drained_s,
        failed_exits: failed_exits + waiting.len(),
        online: presence.online().await?,
        socket_records: presence.socket_records(&nodes.names).await?,
    })
}

/// Fails on what the life phases got wrong.
fn check_life(life: &Life) -> anyhow::Result<()> {
    if let Some(sample) = life.hold.last() {
        ensure!(sample.closed == 0, "the nodes closed {} sockets while they were held", sample.closed);
    }
    if let Some(c) = &life.crash {
        ensure!(c.cleaned_s.is_some(), "the crashed node's sockets were not cleaned up within {GIVE_UP:?}");
        ensure!(
            c.online_counted_down == c.sockets && c.offline_events == c.sockets,
            "crash cleanup of {} sockets counted {{P}}Online down by {} and published {} offline events",
            c.sockets,
            c.online_counted_down,
            c.offline_events
        );
    }
    if let Some(d) = &life.drain {
        ensure!(d.drained_s.is_some() && d.failed_exits == 0, "{} nodes did not exit cleanly", d.failed_exits);
        ensure!(
            d.online == 0 && d.socket_records == 0,
            "after the drain: {} online, {} socket records",
            d.online,
            d.socket_records
        );
    }
    Ok(())
}

/// Presence in the bench's Redis.
struct Presence {
    url: String,
    conn: redis::aio::MultiplexedConnection,
    keys: Keys,
}

impl Presence {
    async fn open(url: &str, keys: Keys) -> anyhow::Result<Presence> {
        let client = redis::Client::open(url)?;
        let conn = client.get_multiplexed_async_connection().await.context("cannot reach the bench's Redis")?;
        Ok(Presence { url: url.to_owned(), conn, keys })
    }

    /// `HLEN {P}Online`.
    async fn online(&self) -> anyhow::Result<u64> {
        Ok(redis::cmd("HLEN").arg(self.keys.online()).query_async(&mut self.conn.clone()).await?)
    }

    /// The socket records of `nodes`, summed.
    async fn socket_records(&self, nodes: &[String]) -> anyhow::Result<u64> {
        let mut pipe = redis::pipe();
        for node in nodes {
            pipe.cmd("HLEN").arg(self.keys.node_sockets(node));
        }
        let counts: Vec<u64> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(counts.iter().sum())
    }

    /// Counts the offline events published from now on, in the background.
    async fn count_offline_events(&self) -> anyhow::Result<Arc<AtomicU64>> {
        let mut pubsub = redis::Client::open(self.url.as_str())?.get_async_pubsub().await?;
        pubsub.subscribe(self.keys.event_offline()).await?;
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while messages.next().await.is_some() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(count)
    }
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

fn print_life(life: &Life) {
    if let Some(c) = &life.crash {
        let cleaned = c.cleaned_s.map_or("not within the limit".to_owned(), |s| format!("{s:.1} s"));
        println!(
            "\nkill -9 of {} ({} sockets): cleaned up by a survivor in {cleaned}; {{P}}Online counted down by {}, {} offline events.",
            c.node, c.sockets, c.online_counted_down, c.offline_events
        );
    }
    if let Some(d) = &life.drain {
        let drained = d.drained_s.map_or("not within the limit".to_owned(), |s| format!("{s:.1} s"));
        println!(
            "SIGTERM to {} nodes at once: all exited in {drained} ({} failed); left: {} online, {} socket records.",
            d.nodes, d.failed_exits, d.online, d.socket_records
        );
    }
}
