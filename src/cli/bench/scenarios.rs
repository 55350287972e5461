//! The three measurements: `connect`, `fanout` and `p2p`, against our gateways or the raw
//! baseline. Each opens its own sockets in fresh workers, measures, and returns one
//! [`Record`]; the workers (and their sockets) go away with it.

use super::api::ApiPool;
use super::cluster::{self, Nodes, Redis};
use super::payload;
use super::pool::{MAX_PER_WORKER, Pool, Progress};
use super::publish::{Audience, Publisher, Route};
use super::report::{MemoryPerConn, NodeShare, Record};
use super::stats::{
    CpuProbe, Hist, Percentiles, RssSampler, meminfo_kib, now_ns, redis_command_usec, redis_used_memory, rss_kib,
    rss_sum_kib,
};
use super::worker::{FromWorker, TargetSpec, ToWorker};
use anyhow::bail;
use freeim::{ImClient, ImClientOptions};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// The channel the fan-out sockets join.
pub const BENCH_CHAN: &str = "bench";
/// Sends in flight at once when publishing back to back.
const SEND_WINDOW: usize = 1024;
/// Handshakes in flight at once (over all workers) when connecting without pacing.
pub const DEFAULT_INFLIGHT: usize = 512;
/// A delivery wait ends when nothing new arrived for this long (the rest is missing).
const STALL: Duration = Duration::from_secs(5);
/// Progress lines on stderr, at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Messages of the p2p warm-up (every one must arrive before measuring).
const P2P_WARMUP: u64 = 200;

/// What is measured: our gateways (through Redis) or raw servers.
#[derive(Debug, Clone)]
pub struct Target {
    /// `freeim`, `freeim-durable` or `raw`: the label in reports.
    pub label: String,
    /// Publish durably (`ImClient::durable`): each send is logged on its node.
    pub durable: bool,
    /// Publish through the nodes' HTTP API with this key, instead of the library.
    pub api_key: Option<String>,
    /// Bytes of each message's text.
    pub message_len: usize,
    /// Where the workers connect.
    pub spec: TargetSpec,
    /// Raw servers' control addresses (node order); empty for our gateways.
    pub controls: Vec<SocketAddr>,
    /// Server processes whose RSS and CPU are reported.
    pub watch: Vec<u32>,
    /// Redis process, when known, for its CPU.
    pub redis_pid: Option<u32>,
    /// Workers to use at least (more when the socket count needs them).
    pub min_workers: usize,
}

impl Target {
    /// Our gateway `nodes` on `redis`, started by this bench (their RSS and CPU watched).
    pub fn ours(nodes: &Nodes, redis: &Redis) -> Target {
        Target {
            label: "freeim".to_owned(),
            durable: false,
            api_key: None,
            message_len: payload::MESSAGE_LEN,
            spec: TargetSpec {
                nodes: nodes.names.clone(),
                redis: Some(redis.url.clone()),
                path: "/ws".to_owned(),
                resume: false,
                tls_ca: None,
            },
            controls: Vec::new(),
            watch: nodes.pids(),
            redis_pid: Some(redis.proc.pid()),
            min_workers: 1,
        }
    }

    fn is_raw(&self) -> bool {
        self.spec.redis.is_none()
    }

    /// A client of the target's Redis, as the business would use.
    pub fn im(&self) -> anyhow::Result<ImClient> {
        let redis = self.spec.redis.as_deref().unwrap_or_default();
        let options = ImClientOptions { path: self.spec.path.clone(), ..ImClientOptions::new(self.spec.nodes.clone()) };
        Ok(ImClient::connect(redis, options)?)
    }

    /// What publishes the measured messages.
    pub async fn publisher(&self) -> anyhow::Result<Publisher> {
        if self.is_raw() {
            return Publisher::raw(&self.controls).await;
        }
        let route = match &self.api_key {
            Some(key) => Route::Api(ApiPool::open(&self.spec.nodes, key, self.durable).await?),
            None => Route::Library { im: self.im()?, durable: self.durable },
        };
        Ok(Publisher::ours(route))
    }

    /// Starts measuring the CPU of the servers, the generator and Redis.
    pub fn cpu_probe(&self, pool: &Pool) -> CpuProbe {
        let mut groups = vec![
            ("server".to_owned(), self.watch.clone()),
            ("publisher".to_owned(), vec![std::process::id()]),
            ("workers".to_owned(), pool.pids()),
        ];
        if let Some(pid) = self.redis_pid {
            groups.push(("redis".to_owned(), vec![pid]));
        }
        // Each worker is single-threaded: the busiest one shows whether one is saturated.
        groups.extend(pool.pids().into_iter().map(|pid| (format!("worker {pid}"), vec![pid])));
        CpuProbe::start(groups)
    }
}

/// Sockets opened by [`open`] or [`connect_prepared`].
pub struct Opened {
    /// The workers holding them.
    pub pool: Pool,
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    handshake: Hist,
    /// When the first connect started (ns).
    pub first_ns: u64,
    last_ns: u64,
    cpu: Vec<(String, f64)>,
}

impl Opened {
    /// The record of the connects: attempts, failures, rate and handshake latency.
    pub fn connects(&self, record: &mut Record) {
        let secs = (self.last_ns.saturating_sub(self.first_ns)) as f64 / 1e9;
        record.ok = Some(self.ok);
        record.failed = Some(self.failed);
        record.errors = self.errors.clone();
        record.connects_per_s = Some(self.ok as f64 / secs.max(1e-9));
        record.handshake = Some(Percentiles::from(&self.handshake));
    }
}

pub fn progress_line(scenario: &str, text: String) {
    eprintln!("  [{scenario}] {text}");
}

/// Opens `n` sockets (client ids `1..=n`) at `rate` per second (0: as fast as `inflight`
/// concurrent handshakes go), spread over enough workers.
pub async fn open(target: &Target, scenario: &str, n: u64, rate: f64, inflight: usize) -> anyhow::Result<Opened> {
    let workers = (n.div_ceil(MAX_PER_WORKER) as usize).max(target.min_workers).max(1);
    let mut pool = Pool::spawn(workers)?;
    prepare(&mut pool, target, n).await?;
    connect_prepared(pool, target, scenario, n, rate, inflight).await
}

/// Has the workers of `pool` issue the tokens of clients `1..=n` (split as [`open`] does, so
/// the same pool prepares the same clients again for a reconnect).
pub async fn prepare(pool: &mut Pool, target: &Target, n: u64) -> anyhow::Result<()> {
    let workers = pool.len();
    // Source addresses 127.A.B.x: A per worker, B changes between runs (TIME_WAIT).
    let salt = ((now_ns() / 1_000_000_000) % 250) as u8;
    let per = n / workers as u64;
    for w in 0..workers {
        let count = if w + 1 == workers { n - per * w as u64 } else { per };
        let first = 1 + (per * w as u64) as i64;
        let net = [(10 + w % 240) as u8, salt];
        pool.send(w, &ToWorker::Prepare { target: target.spec.clone(), first, count, net })?;
    }
    let ready = pool.expect("tokens", Duration::from_secs(300), |m| matches!(m, FromWorker::Ready { .. })).await?;
    let token_failures: u64 =
        ready.iter().map(|m| if let FromWorker::Ready { failed } = m { *failed } else { 0 }).sum();
    if token_failures > 0 {
        bail!("{token_failures} tokens could not be issued (is Redis reachable?)");
    }
    Ok(())
}

/// Opens the `n` sockets [`prepare`]d in `pool`, as [`open`] says.
pub async fn connect_prepared(
    mut pool: Pool,
    target: &Target,
    scenario: &str,
    n: u64,
    rate: f64,
    inflight: usize,
) -> anyhow::Result<Opened> {
    let workers = pool.len();
    let at_ns = now_ns() + 300_000_000;
    let share = workers as f64;
    let per_inflight = (inflight / workers).max(1);
    pool.send_all(&ToWorker::Start { at_ns, rate: rate / share, inflight: per_inflight })?;
    let cpu = target.cpu_probe(&pool);
    let connected = loop {
        if let Some(done) = pool.gather(PROGRESS_EVERY, |m| matches!(m, FromWorker::Connected { .. })).await? {
            break done;
        }
        let p = pool.progress().await?;
        progress_line(scenario, format!("{} / {n} connected, {} failed", p.connected, p.failed));
    };
    let cpu = cpu.stop();
    let mut opened = Opened {
        pool,
        ok: 0,
        failed: 0,
        errors: Vec::new(),
        handshake: Hist::default(),
        first_ns: u64::MAX,
        last_ns: 0,
        cpu,
    };
    for msg in connected {
        if let FromWorker::Connected { ok, failed, errors, handshake, first_ns, last_ns } = msg {
            opened.ok += ok;
            opened.failed += failed;
            opened.errors.extend(errors);
            opened.handshake.merge(&Hist::from_wire(&handshake));
            opened.first_ns = opened.first_ns.min(first_ns);
            opened.last_ns = opened.last_ns.max(last_ns);
        }
    }
    progress_line(scenario, format!("{} connected, {} failed", opened.ok, opened.failed));
    Ok(opened)
}

/// `connect`: opens `n` sockets at `rate` and holds them `hold`; connects/s, handshake
/// latency, failures, and the servers' RSS per connection (idle RSS subtracted). The
/// sockets stay open in the pool returned.
pub async fn connect(
    target: &Target,
    n: u64,
    rate: f64,
    inflight: usize,
    hold: Duration,
) -> anyhow::Result<(Record, Pool)> {
    let idle_each: Vec<u64> = target.watch.iter().map(|pid| rss_kib(*pid).unwrap_or(0)).collect();
    let idle = idle_each.iter().sum();
    let machine = Machine::now(target).await;
    let mut opened = open(target, "connect", n, rate, inflight).await?;
    tokio::time::sleep(hold).await;
    let loaded_each: Vec<u64> = target.watch.iter().map(|pid| rss_kib(*pid).unwrap_or(0)).collect();
    let loaded = loaded_each.iter().sum();
    let held = Machine::now(target).await;
    let workers_kib = rss_sum_kib(&opened.pool.pids());
    let progress = opened.pool.progress().await?;
    let secs = (opened.last_ns.saturating_sub(opened.first_ns)) as f64 / 1e9;
    let mut record = Record::new("connect", &target.label);
    record.nodes = target.spec.nodes.len();
    record.size = n;
    record.rate = rate;
    opened.connects(&mut record);
    record.failed = Some(opened.failed + progress.closed);
    record.rss_idle_kib = Some(idle);
    record.rss_loaded_kib = Some(loaded);
    if opened.ok > 0 {
        let per = |bytes: f64| bytes / opened.ok as f64;
        record.rss_per_conn_bytes = Some(per(loaded.saturating_sub(idle) as f64 * 1024.0));
        record.memory_per_conn = Some(MemoryPerConn {
            workers: per(workers_kib as f64 * 1024.0),
            kernel_slab: per(held.slab_kib.saturating_sub(machine.slab_kib) as f64 * 1024.0),
            mem_available: per(machine.available_kib.saturating_sub(held.available_kib) as f64 * 1024.0),
            redis: per(held.redis_bytes.saturating_sub(machine.redis_bytes) as f64),
        });
    }
    // Each node's share, when the watched processes are the nodes, in order.
    if target.watch.len() == target.spec.nodes.len() {
        for ((server, idle), loaded) in target.spec.nodes.iter().zip(idle_each).zip(loaded_each) {
            let connections = server.parse().ok().and_then(cluster::node_connections).unwrap_or(0);
            let rss = loaded.saturating_sub(idle) as f64 * 1024.0 / connections.max(1) as f64;
            record.per_node.push(NodeShare { server: server.clone(), connections, rss_per_conn_bytes: rss });
        }
    }
    record.cpu = opened.cpu;
    record.elapsed_s = secs;
    Ok((record, opened.pool))
}

/// The machine's memory figures that a held connection moves.
struct Machine {
    slab_kib: u64,
    available_kib: u64,
    redis_bytes: u64,
}

impl Machine {
    async fn now(target: &Target) -> Machine {
        let redis_bytes = match &target.spec.redis {
            Some(url) => redis_used_memory(url).await.unwrap_or(0),
            None => 0,
        };
        Machine {
            slab_kib: meminfo_kib("Slab").unwrap_or(0),
            available_kib: meminfo_kib("MemAvailable").unwrap_or(0),
            redis_bytes,
        }
    }
}

/// Waits until `expected` messages were received (or nothing arrives for [`STALL`]).
async fn wait_deliveries(pool: &mut Pool, scenario: &str, expected: u64) -> anyhow::Result<Progress> {
    wait_count(pool, scenario, "delivered", expected, |p| p.received).await
}

/// Waits until the workers' `count` (named `what`) reaches `expected`, or stops moving for
/// [`STALL`]; returns the progress then.
pub async fn wait_count(
    pool: &mut Pool,
    scenario: &str,
    what: &str,
    expected: u64,
    count: impl Fn(&Progress) -> u64,
) -> anyhow::Result<Progress> {
    let mut last = 0;
    let mut last_change = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let p = pool.progress().await?;
        if count(&p) != last {
            last_change = Instant::now();
        }
        last = count(&p);
        if last >= expected || last_change.elapsed() > STALL {
            return Ok(p);
        }
        if last_print.elapsed() >= PROGRESS_EVERY {
            progress_line(scenario, format!("{last} / {expected} {what}"));
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sums the workers' delivery reports: (received, latency, last receive ns).
async fn deliveries(pool: &mut Pool) -> anyhow::Result<Delivered> {
    pool.send_all(&ToWorker::Report)?;
    let reports =
        pool.expect("deliveries", Duration::from_secs(30), |m| matches!(m, FromWorker::Deliveries { .. })).await?;
    let mut sum = Delivered::default();
    for report in reports {
        if let FromWorker::Deliveries {
            received, latency, last_ns, receipts, receipt_latency, last_receipt_ns, ..
        } = report
        {
            sum.received += received;
            sum.latency.merge(&Hist::from_wire(&latency));
            sum.last_ns = sum.last_ns.max(last_ns);
            sum.receipts += receipts;
            sum.receipt_latency.merge(&Hist::from_wire(&receipt_latency));
            sum.last_receipt_ns = sum.last_receipt_ns.max(last_receipt_ns);
        }
    }
    Ok(sum)
}

/// The workers' delivery reports, summed.
#[derive(Default)]
struct Delivered {
    received: u64,
    latency: Hist,
    /// The last receive (ns).
    last_ns: u64,
    receipts: u64,
    receipt_latency: Hist,
    last_receipt_ns: u64,
}

/// Sends `count` messages at `rate` per second (0: back to back), picking each audience
/// with `audience(seq)`; returns the wall time of the first send and the send failures.
pub async fn publish(
    publisher: &mut Publisher,
    len: usize,
    count: u64,
    rate: f64,
    first_seq: u64,
    mut audience: impl FnMut(u64) -> Audience,
) -> (u64, u64) {
    let start = Instant::now();
    let first_ns = now_ns();
    for i in 0..count {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if due > Instant::now() {
                publisher.idle_until(due).await;
            }
        }
        let seq = first_seq + i;
        let text = payload::message(seq, now_ns(), len);
        publisher.send(&audience(seq), &text, SEND_WINDOW, rate > 0.0).await;
    }
    (first_ns, publisher.finish().await)
}

/// Seconds from the first publish to the last receive; when paced, at least the time the
/// schedule itself takes (`messages / rate`), so a rate is not overstated by the first
/// and last message being one interval short of it.
fn window(first_ns: u64, last_ns: u64, messages: u64, rate: f64) -> f64 {
    let measured = last_ns.saturating_sub(first_ns) as f64 / 1e9;
    if rate > 0.0 { measured.max(messages as f64 / rate) } else { measured }
}

/// Settings of a fan-out run.
#[derive(Debug, Clone, Copy)]
pub struct Fanout {
    /// Sockets in the channel.
    pub sockets: u64,
    /// Messages published.
    pub messages: u64,
    /// Messages per second; 0 for back to back.
    pub rate: f64,
    /// A broadcast (`ChanMessage` with a null channel) instead of a channel message.
    pub broadcast: bool,
}

/// `fanout`: `sockets` in one channel (or all, for a broadcast) get `messages`.
pub async fn fanout(target: &Target, f: Fanout) -> anyhow::Result<Record> {
    let opened = open(target, f.name(), f.sockets, 0.0, DEFAULT_INFLIGHT).await?;
    let mut pool = opened.pool;
    if !f.broadcast && !target.is_raw() {
        join_all(&target.im()?, f.sockets).await?;
    }
    deliver(target, &mut pool, f).await
}

impl Fanout {
    fn name(&self) -> &'static str {
        match (self.rate > 0.0, self.broadcast) {
            (false, false) => "fanout-burst",
            (false, true) => "broadcast-burst",
            (true, false) => "fanout-paced",
            (true, true) => "broadcast-paced",
        }
    }
}

/// Publishes `f.messages` to [`BENCH_CHAN`] (or to all, for a broadcast) and measures their
/// delivery to the `f.sockets` sockets of `pool` that should get each, after one warm-up
/// message that every one of them must get.
pub async fn deliver(target: &Target, pool: &mut Pool, f: Fanout) -> anyhow::Result<Record> {
    let name = f.name();
    let audience = Audience::Chan((!f.broadcast).then(|| BENCH_CHAN.to_owned()));
    let mut publisher = target.publisher().await?;
    pool.send_all(&ToWorker::Reset)?;
    let _ = pool.progress().await?; // the reset is done once the poll after it is answered
    publish(&mut publisher, target.message_len, 1, 0.0, 0, |_| audience.clone()).await;
    let warm = wait_deliveries(pool, name, f.sockets).await?;
    if warm.received < f.sockets {
        bail!("warm-up: only {} of {} sockets got the first message", warm.received, f.sockets);
    }
    pool.send_all(&ToWorker::Reset)?;
    let _ = pool.progress().await?;
    let before = rss_sum_kib(&target.watch);
    let sampler = RssSampler::start(target.watch.clone());
    let redis_url = target.spec.redis.as_deref();
    let commands_before = redis_command_usec(redis_url).await;
    let cpu = target.cpu_probe(pool);
    let (first_ns, send_errors) =
        publish(&mut publisher, target.message_len, f.messages, f.rate, 1, |_| audience.clone()).await;
    let expected = f.sockets * f.messages;
    wait_deliveries(pool, name, expected).await?;
    let Delivered { received, latency, last_ns, .. } = deliveries(pool).await?;
    let cpu = cpu.stop();
    let commands_after = redis_command_usec(redis_url).await;
    let peak = sampler.stop();
    let secs = window(first_ns, last_ns, f.messages, f.rate);
    let mut record = Record::new(name, &target.label);
    record.nodes = target.spec.nodes.len();
    record.size = f.sockets;
    record.messages = Some(f.messages);
    record.message_bytes = target.message_len;
    record.rate = f.rate;
    record.delivered = Some(received);
    record.expected = Some(expected);
    record.missing = Some(expected.saturating_sub(received));
    record.send_errors = Some(send_errors);
    record.deliveries_per_s = Some(received as f64 / secs.max(1e-9));
    record.latency = Some(Percentiles::from(&latency));
    record.rss_loaded_kib = Some(before);
    record.rss_peak_kib = Some(peak);
    record.cpu = cpu;
    record.redis_command_us =
        commands_before.zip(commands_after).map(|(b, a)| a.saturating_sub(b) as f64 / f.messages.max(1) as f64);
    record.elapsed_s = secs;
    Ok(record)
}

/// Makes clients `1..=n` members of [`BENCH_CHAN`] (pipelined).
pub async fn join_all(im: &ImClient, n: u64) -> anyhow::Result<()> {
    let results: Vec<freeim::Result<()>> = futures_util::stream::iter(1..=n as i64)
        .map(|id| {
            let im = im.clone();
            async move { im.join_chan(id, &[BENCH_CHAN]).await }
        })
        .buffer_unordered(SEND_WINDOW)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        bail!("{failed} clients could not join the bench channel");
    }
    Ok(())
}

/// A small, fast, seeded generator for picking pairs (reproducible runs).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// A (sender, receiver) pair of distinct ids in `1..=n`.
    fn pair(&mut self, n: u64, receipt: bool) -> Audience {
        let sender = 1 + self.below(n);
        let receiver = 1 + (sender - 1 + 1 + self.below(n - 1)) % n;
        Audience::Direct { sender: sender as i64, receiver: receiver as i64, receipt }
    }
}

/// `p2p`: `clients` over the target's nodes; `messages` direct messages between random
/// pairs at `rate` per second (0: as fast as possible), each with a receipt when `receipts`.
pub async fn p2p(target: &Target, clients: u64, messages: u64, rate: f64, receipts: bool) -> anyhow::Result<Record> {
    if clients < 2 {
        bail!("p2p needs at least 2 clients");
    }
    let name = if rate > 0.0 { "p2p-paced" } else { "p2p-max" };
    let opened = open(target, name, clients, 0.0, DEFAULT_INFLIGHT).await?;
    let mut pool = opened.pool;
    let mut publisher = target.publisher().await?;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    publish(&mut publisher, target.message_len, P2P_WARMUP, 0.0, 0, |_| rng.pair(clients, false)).await;
    let warm = wait_deliveries(&mut pool, name, P2P_WARMUP).await?;
    if warm.received < P2P_WARMUP {
        bail!("warm-up: only {} of {P2P_WARMUP} messages arrived", warm.received);
    }
    pool.send_all(&ToWorker::Reset)?;
    let _ = pool.progress().await?;
    let sampler = RssSampler::start(target.watch.clone());
    let cpu = target.cpu_probe(&pool);
    let (first_ns, send_errors) =
        publish(&mut publisher, target.message_len, messages, rate, 1, |_| rng.pair(clients, receipts)).await;
    wait_deliveries(&mut pool, name, messages).await?;
    if receipts {
        wait_count(&mut pool, name, "receipts", messages, |p| p.receipts).await?;
    }
    let delivered = deliveries(&mut pool).await?;
    let cpu = cpu.stop();
    let peak = sampler.stop();
    let received = delivered.received;
    let secs = window(first_ns, delivered.last_ns, messages, rate);
    let mut record = Record::new(name, &target.label);
    record.nodes = target.spec.nodes.len();
    record.size = clients;
    record.messages = Some(messages);
    record.message_bytes = target.message_len;
    record.rate = rate;
    record.delivered = Some(received);
    record.expected = Some(messages);
    record.missing = Some(messages.saturating_sub(received));
    record.send_errors = Some(send_errors);
    record.deliveries_per_s = Some(received as f64 / secs.max(1e-9));
    record.latency = Some(Percentiles::from(&delivered.latency));
    if receipts {
        let receipt_secs = window(first_ns, delivered.last_receipt_ns, messages, rate);
        record.receipts = Some(delivered.receipts);
        record.receipts_per_s = Some(delivered.receipts as f64 / receipt_secs.max(1e-9));
        record.receipt_latency = Some(Percentiles::from(&delivered.receipt_latency));
        record.missing = Some(messages.saturating_sub(received) + messages.saturating_sub(delivered.receipts));
    }
    record.rss_peak_kib = Some(peak);
    record.cpu = cpu;
    record.elapsed_s = secs;
    Ok(record)
}
