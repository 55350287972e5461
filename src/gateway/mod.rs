//! The WebSocket gateway node (the reference's `ImServer`).
//!
//! A node is four kinds of tasks around one shared `Node`:
//! - `listener`: accepts TCP, then runs each socket's task: its HTTP request (`http`:
//!   `/healthz`, `/metrics`, or the upgrade of `/ws?token=…` after the token lookup), its
//!   frames (`connection`, writing through an `outbox`) and its presence (`presence`);
//!   an HTTP API connection (`api`) goes to a task of its own;
//! - `dispatch`: consumes the node channel `{P}Server{server}` and writes frames; it also
//!   owns the node's durable log (`log`) and serves durable sockets' resumes (`resume`);
//! - `heartbeat`: pings sockets and closes dead peers;
//! - shutdown ([`Gateway::shutdown`]): stop accepting, close every socket with 1001, run
//!   each close path, and wait for them within the drain timeout.
//!
//! Only [`Gateway`] and its configuration are public; freeim's own bench, fuzz targets and
//! tests reach the pieces they need through `freeim::internals`.

mod api;
pub mod config;
mod connection;
mod dispatch;
mod heartbeat;
pub(crate) mod http;
mod lease;
pub(crate) mod listener;
mod log;
mod metrics;
pub(crate) mod outbox;
mod presence;
mod registry;
mod resume;
mod rooms;
pub(crate) mod socket_read;
mod tls;
pub(crate) mod websocket;

pub use self::config::{ApiConfig, ApiKeys, ConfigError, GatewayConfig, Settings};
use self::connection::CloseReason;
use self::log::{LogGauge, NodeLog};
use self::metrics::Metrics;
use self::registry::Registry;
use self::resume::{RESUME_QUEUE, ResumeRequest};
use crate::backend::Backend;
use crate::client::{ImClient, ImClientOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long start-up may spend cleaning a previous run's presence before serving anyway.
const STARTUP_CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The thread that renews the node's lease could not be started.
    #[error("could not start the lease thread: {0}")]
    LeaseThread(std::io::Error),
    /// The client options derived from the configuration are invalid.
    #[error(transparent)]
    Client(#[from] crate::Error),
}

/// State shared by every task of one node.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) config: GatewayConfig,
    /// The business-side client on the same backend: receipts, channel leaves.
    pub(crate) client: ImClient,
    pub(crate) registry: Registry,
    pub(crate) metrics: Metrics,
    /// `{P}NodeSockets{server}`: this node's socket records (see `presence`).
    pub(crate) sockets_key: String,
    /// `{P}NodeAway{server}`: clients whose last durable socket closed here (see `presence`).
    pub(crate) away_key: String,
    /// Whether the node-channel subscription is established (`/healthz`).
    pub(crate) live: watch::Receiver<bool>,
    /// How many times it has been established (presence is restored on each new one).
    pub(crate) epoch: watch::Receiver<u64>,
    /// Cancelled when shutdown starts.
    pub(crate) shutdown: CancellationToken,
    /// Close paths of this node's sockets, to its closer (see `presence`).
    pub(crate) closes: mpsc::UnboundedSender<presence::Waiting>,
    /// Told by the lease thread when it found this node's lease gone (see `lease`).
    pub(crate) lease_lapsed: Notify,
    /// Connection tasks, so shutdown can wait for their close paths.
    pub(crate) connections: TaskTracker,
    /// Socket ids: the start time in seconds in the high 32 bits and a counter in the low
    /// ones, so a restarted node never reuses an id of its previous run.
    pub(crate) next_conn_id: AtomicU64,
    /// Where the durable log is, as the dispatcher last published it.
    pub(crate) log_gauge: LogGauge,
    /// Durable sockets waiting for their hello, to the dispatcher (see `resume`).
    pub(crate) resumes: mpsc::Sender<ResumeRequest>,
    clock: Instant,
}

impl Node {
    /// Milliseconds since the node started (the heartbeat's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}

/// A running gateway node. Dropping it does not stop it; call [`Gateway::shutdown`].
#[derive(Debug)]
pub struct Gateway {
    node: Arc<Node>,
    local_addr: SocketAddr,
    /// Where `--api-listen` serves the API, when it is given.
    api_addr: Option<SocketAddr>,
    tasks: TaskTracker,
}

impl Gateway {
    /// Binds the listen address, subscribes to the node channel and starts serving.
    pub async fn start(config: GatewayConfig, backend: Backend) -> Result<Gateway, GatewayError> {
        let options = ImClientOptions {
            path: config.path.clone(),
            // Connect URLs handed out by the HTTP API: `wss://` when the nodes serve TLS.
            scheme: if config.tls.is_some() { "wss" } else { "ws" }.to_owned(),
            history_size: config.history_size,
            history_ttl: config.history_ttl,
            ..ImClientOptions::new(config.servers.clone())
        };
        let client = ImClient::new(backend, options)?;
        let listener =
            listener::bind(config.listen).map_err(|source| GatewayError::Bind { addr: config.listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| GatewayError::Bind { addr: config.listen, source })?;
        let api_listener = match config.api.as_ref().and_then(|api| api.listen) {
            Some(addr) => Some(listener::bind(addr).map_err(|source| GatewayError::Bind { addr, source })?),
            None => None,
        };
        let api_addr = api_listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut subscription = client.backend().subscribe(vec![client.keys().server(&config.server)]);
        let sockets_key = client.keys().node_sockets(&config.server);
        let away_key = client.keys().node_away(&config.server);
        let (resumes, resume_requests) = mpsc::channel(RESUME_QUEUE);
        let (closes, closing) = mpsc::unbounded_channel();
        let node = Arc::new(Node {
            log_gauge: LogGauge::default(),
            resumes,
            live: subscription.live(),
            epoch: subscription.epoch(),
            config,
            client,
            registry: Registry::default(),
            metrics: Metrics::default(),
            sockets_key,
            away_key,
            shutdown: CancellationToken::new(),
            closes,
            lease_lapsed: Notify::new(),
            connections: TaskTracker::new(),
            next_conn_id: AtomicU64::new(first_conn_id()),
            clock: Instant::now(),
        });
        // Before serving: take the lease (a node that records sockets without one looks dead
        // to the others, which then clean up its live clients' presence), and undo the
        // presence a previous run of this node left behind (the lease task retries both if
        // the backend cannot be reached now).
        // The durable log is opened once subscribed, so that nothing logged after the top it
        // reads can be missed (the dispatcher opens it later if Redis cannot be reached now).
        let mut log = NodeLog::new(&node);
        let startup = async {
            if subscription.ready().await {
                log.load(&node).await;
            }
            lease::take(&node).await;
            lease::clean_own(&node).await
        };
        let _ = tokio::time::timeout(STARTUP_CLEANUP_TIMEOUT, startup).await;
        lease::keep(node.clone()).map_err(GatewayError::LeaseThread)?;
        let tasks = TaskTracker::new();
        tasks.spawn(listener::run(node.clone(), listener, listener::handle));
        if let Some(api_listener) = api_listener {
            let serve = |node, stream: tokio::net::TcpStream, _| {
                // Small answers on kept-alive connections: no Nagle delay.
                let _ = stream.set_nodelay(true);
                api::serve(node, stream, Vec::new())
            };
            tasks.spawn(listener::run(node.clone(), api_listener, serve));
            tracing::info!(addr = ?api_addr, "HTTP API listening");
        }
        tasks.spawn(dispatch::run(node.clone(), subscription, log, resume_requests));
        tasks.spawn(heartbeat::run(node.clone()));
        tasks.spawn(lease::run(node.clone()));
        tasks.spawn(presence::closer(node.clone(), closing));
        tracing::info!(server = %node.config.server, %local_addr, path = %node.config.path, "gateway listening");
        Ok(Gateway { node, local_addr, api_addr, tasks })
    }

    /// The address the node listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the HTTP API has a listener of its own (`--api-listen`; useful with port 0).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Sockets currently open on this node.
    pub fn connections(&self) -> usize {
        self.node.registry.len()
    }

    /// Whether the node-channel subscription is established.
    pub fn is_live(&self) -> bool {
        *self.node.live.borrow()
    }

    /// Graceful stop: stop accepting, undo the presence of every socket (counts, channels,
    /// offline events: [`presence::offline_all`]), close every socket with 1001, and return
    /// when their tasks are done or the drain timeout has passed. Returns the number of
    /// sockets still open then (0 normally).
    ///
    /// Presence goes first, in batches, while the node is not yet busy closing: from here the
    /// node delivers nothing, so its clients are offline already, and at a million sockets on
    /// this box, 52 nodes draining at once closed about 400 sockets a second each, so most
    /// presence was still recorded at the drain timeout. A socket's own close path then finds
    /// its record gone and counts nothing twice.
    pub async fn shutdown(self) -> usize {
        let node = &self.node;
        node.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + node.config.drain_timeout;
        let open = node.registry.all();
        tracing::info!(sockets = open.len(), "shutting down: clearing presence, then closing sockets");
        match tokio::time::timeout_at(deadline, presence::offline_all(node)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not clear presence before closing; each close retries"),
            Err(_) => tracing::warn!("could not clear presence within the drain timeout"),
        }
        for conn in open {
            conn.close(CloseReason::Shutdown);
        }
        node.connections.close();
        self.tasks.close();
        let drained = tokio::time::timeout_at(deadline, async {
            node.connections.wait().await;
            self.tasks.wait().await;
        })
        .await;
        let left = node.registry.len();
        match drained {
            Ok(()) => tracing::info!("shutdown complete"),
            Err(_) => tracing::warn!(sockets = left, "drain timeout: exiting with sockets still open"),
        }
        left
    }
}

fn first_conn_id() -> u64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs << 32) | 1
}
