//! A load worker process (`freeim bench worker`, hidden): holds a share of the sockets.
//!
//! One process may open at most 20,000 files, so the coordinator spreads the sockets over
//! several workers. A worker runs one single-threaded runtime and speaks JSON lines: commands
//! on stdin ([`ToWorker`]), answers on stdout ([`FromWorker`]). It issues its own tokens with
//! [`ImClient`] (as a business backend would), opens its sockets from its own source
//! addresses at the pace it is given, and counts what arrives: delivery counts and
//! publish→receive latency, read from the stamp inside each message. Durable sockets (the
//! resume storm) are followed frame by frame ([`super::durable`]); each client's position
//! when its socket closes is kept for its next connection's `resume`.

use super::client::{self, ConnectError, Dial, Event, Socket};
use super::durable::{Position, ResumeCounts, Track};
use super::payload;
use super::stats::{Hist, WireHist, now_ns};
use freeim::{ImClient, ImClientOptions};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

/// A WebSocket handshake (TCP connect, upgrade, token lookup) must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Tokens issued concurrently (pipelined on the multiplexed Redis connection).
const TOKEN_CONCURRENCY: usize = 256;
/// Tokens live this long, so that a whole ramp can be prepared before it starts (a million
/// on this box took more than 10 minutes while the ramp was slow).
const TOKEN_TTL: Duration = Duration::from_secs(1800);
/// Source addresses per worker: the last octet of `127.A.B.x` cycles over `1..=SOURCES`.
const SOURCES: usize = 250;
/// Connection errors kept verbatim for the report.
const ERROR_SAMPLES: usize = 5;
/// Bytes read at once from a `wss://` socket (each has its own buffer: TLS records are
/// decrypted into it).
const TLS_READ: usize = 16 * 1024;
/// A durable upgrade answered 503 (the node's log is not open yet, right after a start) is
/// tried again after this pause, this many times.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
const RETRIES: u32 = 250;

/// Which server the sockets go to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetSpec {
    /// Node names (`HOST:PORT`) in routing order: client `id` goes to `nodes[id % len]`.
    pub nodes: Vec<String>,
    /// The Redis of our gateways; `None` for the raw baseline (no tokens: `?id=N`).
    pub redis: Option<String>,
    /// WebSocket path.
    pub path: String,
    /// Open durable sockets: `resume=` the client's position when its last socket closed
    /// (empty the first time), each followed frame by frame.
    pub resume: bool,
    /// Connect with `wss://`, trusting the PEM certificates in this file.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// A command from the coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ToWorker {
    /// Issue tokens for clients `first..first + count` (prepared, not connected yet).
    Prepare {
        /// Where to connect.
        target: TargetSpec,
        /// First client id.
        first: i64,
        /// Number of clients.
        count: u64,
        /// Source addresses are `127.{net[0]}.{net[1]}.x`.
        net: [u8; 2],
    },
    /// Open the prepared sockets from `at_ns` on, at `rate` per second (0: as fast as
    /// `inflight` concurrent handshakes allow).
    Start {
        /// Wall-clock start (ns), the same for every worker.
        at_ns: u64,
        /// Connects per second for this worker; 0 for no pacing.
        rate: f64,
        /// Most handshakes in flight at once.
        inflight: usize,
    },
    /// Zero the delivery and resume counters (after a warm-up).
    Reset,
    /// Answer with [`FromWorker::Progress`].
    Poll,
    /// Answer with [`FromWorker::Deliveries`].
    Report,
    /// Answer with [`FromWorker::Resumes`].
    ResumeReport,
    /// Exit now (the kernel closes the sockets).
    Quit,
}

/// An answer to the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromWorker {
    /// Tokens are issued; `failed` could not be.
    Ready {
        /// Tokens that failed.
        failed: u64,
    },
    /// Every connection attempt has finished.
    Connected {
        /// Sockets upgraded.
        ok: u64,
        /// Attempts that failed.
        failed: u64,
        /// A few failure messages.
        errors: Vec<String>,
        /// Handshake durations (µs), TCP connect to `101` received.
        handshake: WireHist,
        /// When the first attempt started and the last one finished (ns).
        first_ns: u64,
        /// See `first_ns`.
        last_ns: u64,
    },
    /// Counters now.
    Progress {
        /// Sockets upgraded so far.
        connected: u64,
        /// Failed attempts so far.
        failed: u64,
        /// Messages received since the last reset.
        received: u64,
        /// Sockets closed by the server or by an error.
        closed: u64,
        /// Durable sockets that are current (see [`ResumeCounts::current`]).
        current: u64,
        /// Receipts received since the last reset.
        receipts: u64,
        /// Pings answered with a pong so far.
        pongs: u64,
    },
    /// Deliveries since the last reset.
    Deliveries {
        /// Messages received.
        received: u64,
        /// Publish→receive latency (µs).
        latency: WireHist,
        /// Receipts received.
        receipts: u64,
        /// Publish→receipt latency (µs).
        receipt_latency: WireHist,
        /// When the last receipt came (ns).
        last_receipt_ns: u64,
        /// First and last receive time (ns).
        first_ns: u64,
        /// See `first_ns`.
        last_ns: u64,
    },
    /// The durable sockets' counters, since the last reset.
    Resumes {
        /// The counters.
        counts: ResumeCounts,
    },
    /// The worker's pipe closed (sent by the coordinator's reader, not by the worker).
    Gone,
}

/// The worker thread's counters, shared by every connection task (one thread: no locks).
#[derive(Default)]
struct Counters {
    connected: u64,
    failed: u64,
    finished: u64,
    closed: u64,
    errors: Vec<String>,
    handshake: Hist,
    first_start: u64,
    last_done: u64,
    received: u64,
    latency: Hist,
    first_recv: u64,
    last_recv: u64,
    receipts: u64,
    receipt_latency: Hist,
    last_receipt: u64,
    resumes: ResumeCounts,
    pongs: u64,
    /// Each client's position when its last durable socket closed.
    positions: HashMap<i64, Position>,
}

impl Counters {
    /// Counts a received message by its stamp (`None`: not one of the bench's).
    fn deliver(&mut self, stamp: Option<(u64, u64)>, now: u64) {
        let Some((_, ts)) = stamp else { return };
        self.received += 1;
        self.latency.record(now.saturating_sub(ts) / 1000);
        if self.first_recv == 0 {
            self.first_recv = now;
        }
        self.last_recv = now;
    }

    /// Counts a receipt of a message stamped `ts`.
    fn receipt(&mut self, ts: u64, now: u64) {
        self.receipts += 1;
        self.receipt_latency.record(now.saturating_sub(ts) / 1000);
        self.last_receipt = now;
    }

    /// Forgets an earlier ramp's connects (a reconnect is measured on its own).
    fn reset_connects(&mut self) {
        (self.connected, self.failed, self.finished, self.first_start, self.last_done) = (0, 0, 0, 0, 0);
        self.errors.clear();
        self.handshake = Hist::default();
    }

    fn reset_deliveries(&mut self) {
        (self.received, self.first_recv, self.last_recv) = (0, 0, 0);
        self.latency = Hist::default();
        (self.receipts, self.last_receipt) = (0, 0);
        self.receipt_latency = Hist::default();
        self.resumes = ResumeCounts::default();
    }
}

thread_local! {
    static COUNTERS: RefCell<Counters> = RefCell::new(Counters::default());
}

fn counters<R>(f: impl FnOnce(&mut Counters) -> R) -> R {
    COUNTERS.with(|c| f(&mut c.borrow_mut()))
}

/// Writes one answer line to stdout.
fn answer(msg: &FromWorker) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(msg) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The worker process: serves commands until `Quit` or the end of stdin.
pub fn run() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (tx, mut commands) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ToWorker>(&line) {
                    Ok(cmd) => {
                        if tx.send(cmd).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("bench worker: bad command {line:?}: {e}"),
                }
            }
        });
        let mut prepared: Vec<(i64, Dial, IpAddr)> = Vec::new();
        let mut resume = false;
        while let Some(cmd) = commands.recv().await {
            match cmd {
                ToWorker::Prepare { target, first, count, net } => {
                    let (dials, failed) = prepare(&target, first, count).await;
                    prepared = dials.into_iter().enumerate().map(|(i, (id, d))| (id, d, source(net, i))).collect();
                    resume = target.resume;
                    answer(&FromWorker::Ready { failed });
                }
                ToWorker::Start { at_ns, rate, inflight } => {
                    tokio::spawn(ramp(std::mem::take(&mut prepared), resume, at_ns, rate, inflight));
                }
                ToWorker::Reset => counters(Counters::reset_deliveries),
                ToWorker::Poll => answer(&counters(|c| FromWorker::Progress {
                    connected: c.connected,
                    failed: c.failed,
                    received: c.received,
                    closed: c.closed,
                    current: c.resumes.current,
                    receipts: c.receipts,
                    pongs: c.pongs,
                })),
                ToWorker::Report => answer(&counters(|c| FromWorker::Deliveries {
                    received: c.received,
                    latency: c.latency.to_wire(),
                    receipts: c.receipts,
                    receipt_latency: c.receipt_latency.to_wire(),
                    last_receipt_ns: c.last_receipt,
                    first_ns: c.first_recv,
                    last_ns: c.last_recv,
                })),
                ToWorker::ResumeReport => answer(&counters(|c| FromWorker::Resumes { counts: c.resumes })),
                ToWorker::Quit => break,
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // Exiting closes every socket at once; dropping 19k tasks one by one would be slower.
    std::process::exit(0)
}

fn source(net: [u8; 2], i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, net[0], net[1], 1 + (i % SOURCES) as u8))
}

/// Where each client connects: a fresh token from [`ImClient::prev_connect_server`] for
/// our gateway (with its `resume` for durable sockets), `?id=N` for the raw baseline.
/// Returns the clients with their dials, and the failures.
async fn prepare(target: &TargetSpec, first: i64, count: u64) -> (Vec<(i64, Dial)>, u64) {
    let tls = match target.tls_ca.as_deref().map(tls_config).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("bench worker: {e}");
            return (Vec::new(), count);
        }
    };
    let ids = first..first + count as i64;
    let urls: Vec<Option<String>> = match &target.redis {
        None => ids
            .map(|id| {
                let node = &target.nodes[freeim::protocol::node_index(id, target.nodes.len())];
                Some(format!("ws://{node}{}?id={id}", target.path))
            })
            .collect(),
        Some(redis) => {
            let options = ImClientOptions {
                path: target.path.clone(),
                token_ttl: TOKEN_TTL,
                scheme: if tls.is_some() { "wss" } else { "ws" }.to_owned(),
                ..ImClientOptions::new(target.nodes.clone())
            };
            let im = match ImClient::connect(redis, options) {
                Ok(im) => im,
                Err(e) => {
                    eprintln!("bench worker: {e}");
                    return (Vec::new(), count);
                }
            };
            futures_util::stream::iter(ids)
                .map(|id| {
                    let im = im.clone();
                    async move { im.prev_connect_server(id, Some("bench")).await.ok() }
                })
                .buffered(TOKEN_CONCURRENCY)
                .collect()
                .await
        }
    };
    let resume = |id: i64| match target.resume {
        false => String::new(),
        true => counters(|c| format!("&resume={}", c.positions.get(&id).map(Position::resume).unwrap_or_default())),
    };
    let dials: Vec<(i64, Dial)> = (first..)
        .zip(&urls)
        .filter_map(|(id, url)| Some((id, dial_of(&format!("{}{}", url.as_ref()?, resume(id)), &tls)?)))
        .collect();
    let failed = count - dials.len() as u64;
    (dials, failed)
}

/// `ws://HOST:PORT/path?query` → a [`Dial`].
fn dial_of(url: &str, tls: &Option<Arc<rustls::ClientConfig>>) -> Option<Dial> {
    let (rest, tls) = match url.strip_prefix("wss://") {
        Some(rest) => (rest, Some(tls.clone()?)),
        None => (url.strip_prefix("ws://")?, None),
    };
    let slash = rest.find('/')?;
    let host = &rest[..slash];
    let addr: SocketAddr = host.parse().ok()?;
    Some(Dial { addr, host: host.to_owned(), target: rest[slash..].to_owned(), tls })
}

/// A TLS client that trusts the PEM certificates of `ca` (the nodes' own, self-signed).
fn tls_config(ca: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens every prepared socket on schedule (durable ones when `resume`), then reports.
async fn ramp(prepared: Vec<(i64, Dial, IpAddr)>, resume: bool, at_ns: u64, rate: f64, inflight: usize) {
    let total = prepared.len() as u64;
    counters(Counters::reset_connects);
    tokio::time::sleep(Duration::from_nanos(at_ns.saturating_sub(now_ns()))).await;
    let permits = Arc::new(Semaphore::new(inflight.max(1)));
    let start = Instant::now();
    for (i, (id, dial, source)) in prepared.into_iter().enumerate() {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        tokio::spawn(async move {
            let (t0, result) = connect(&dial, source).await;
            let t1 = now_ns();
            drop(permit);
            let ok = counters(|c| {
                c.finished += 1;
                if c.first_start == 0 || t0 < c.first_start {
                    c.first_start = t0;
                }
                c.last_done = c.last_done.max(t1);
                match &result {
                    Ok(_) => {
                        c.connected += 1;
                        c.handshake.record((t1 - t0) / 1000);
                    }
                    Err(e) => {
                        c.failed += 1;
                        if c.errors.len() < ERROR_SAMPLES {
                            c.errors.push(format!("{}: {e}", dial.addr));
                        }
                    }
                }
                result.is_ok()
            });
            if ok && let Ok((stream, leftover)) = result {
                drop(dial);
                let track = resume.then(|| counters(|c| Track::new(c.positions.get(&id))));
                if let Some(track) = receive(stream, leftover, track).await.and_then(|t| t.position()) {
                    counters(|c| c.positions.insert(id, track));
                }
            }
        });
    }
    while counters(|c| c.finished) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    answer(&counters(|c| FromWorker::Connected {
        ok: c.connected,
        failed: c.failed,
        errors: c.errors.clone(),
        handshake: c.handshake.to_wire(),
        first_ns: c.first_start,
        last_ns: c.last_done,
    }));
}

/// One connection attempt, tried again while a durable upgrade gets 503; the start of the
/// last attempt and its result.
async fn connect(dial: &Dial, source: IpAddr) -> (u64, Result<(Socket, Vec<u8>), ConnectError>) {
    let mut tries = 0;
    loop {
        let t0 = now_ns();
        let result = client::connect(dial, source, HANDSHAKE_TIMEOUT).await;
        if !matches!(result, Err(ConnectError::Status(503))) || tries == RETRIES {
            return (t0, result);
        }
        tries += 1;
        counters(|c| c.resumes.retries += 1);
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Reads a socket until it closes, counting stamped messages (following a durable socket
/// with `track`) and answering pings; returns the track.
async fn receive(socket: Socket, leftover: Vec<u8>, mut track: Option<Track>) -> Option<Track> {
    let mut partial = Vec::new();
    let mut pongs: Vec<Vec<u8>> = Vec::new();
    let mut closed = false;
    let mut on_event = |event: Event<'_>, now: u64, pongs: &mut Vec<Vec<u8>>, closed: &mut bool| match event {
        Event::Text(frame) => counters(|c| match &mut track {
            None => match payload::receipt_stamp(frame) {
                Some((_, ts)) => c.receipt(ts, now),
                None => c.deliver(payload::stamp(frame), now),
            },
            Some(track) => {
                let live = track.take(frame, &mut c.resumes, now);
                c.deliver(live.and_then(|text| payload::text_stamp(text.as_bytes())), now);
            }
        }),
        Event::Ping(payload) => {
            counters(|c| c.pongs += 1);
            pongs.push(client::masked_frame(0xA, payload));
        }
        Event::Close => *closed = true,
    };
    if !leftover.is_empty() {
        let now = now_ns();
        let used = client::parse_frames(&leftover, |e| on_event(e, now, &mut pongs, &mut closed)).unwrap_or(0);
        partial.extend_from_slice(&leftover[used..]);
    }
    let close = client::masked_frame(0x8, &[0x03, 0xe8]);
    match socket {
        Socket::Plain(stream) => {
            while !closed {
                if stream.readable().await.is_err() {
                    break;
                }
                let now = now_ns();
                let open = client::read_available(&stream, &mut partial, |e| on_event(e, now, &mut pongs, &mut closed));
                for pong in pongs.drain(..) {
                    // A pong is 6 bytes; a socket that cannot take it now is not worth waiting for.
                    let _ = stream.try_write(&pong);
                }
                if !matches!(open, Ok(true)) {
                    break;
                }
            }
            if closed {
                let _ = stream.try_write(&close);
            }
        }
        Socket::Tls(mut stream) => {
            let mut buf = vec![0; TLS_READ];
            while !closed {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let now = now_ns();
                partial.extend_from_slice(&buf[..n]);
                let Ok(used) = client::parse_frames(&partial, |e| on_event(e, now, &mut pongs, &mut closed)) else {
                    break;
                };
                partial.drain(..used);
                for pong in pongs.drain(..) {
                    let _ = stream.write_all(&pong).await;
                }
            }
            if closed {
                let _ = stream.write_all(&close).await;
            }
        }
    }
    counters(|c| c.closed += 1);
    track
}
