//! An in-process cluster: one backend ([`TestBackend`]), `n` gateway nodes on free ports,
//! and the business side's [`ImClient`]. Tests connect clients through it, read exact
//! presence and channel state through its backend, publish raw node commands and read each
//! node's `/metrics`.

use super::{Kind, POLL, RedisServer, TestBackend, WAIT, Ws, eventually, free_addr, get, http};
use bytes::Bytes;
use freeim::backend::{Backend, Op};
use freeim::gateway::{Gateway, GatewayConfig, GatewayError};
use freeim::protocol::{DirectMessage, NodeCommand, to_json};
use freeim::{ImClient, ImClientOptions};
use futures_util::future::join_all;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::net::ToSocketAddrs;

/// How many times a cluster starts again on other ports when one was taken meanwhile.
const BIND_ATTEMPTS: usize = 5;

/// A backend, in-process gateway nodes, and a business-side client.
pub struct Cluster {
    /// The backend every node and the client share.
    pub store: TestBackend,
    /// The nodes, in the order of [`Cluster::servers`].
    pub nodes: Vec<Gateway>,
    /// Each node's `host:port`, as the client and the node channels name it.
    pub servers: Vec<String>,
    /// The business side.
    pub im: ImClient,
}

impl Cluster {
    /// `n` nodes on free ports, with default settings.
    pub async fn start(kind: Kind, n: usize) -> Self {
        Self::start_with(kind, n, |_| {}).await
    }

    /// `n` nodes; `tweak` adjusts each node's configuration. A port found free may be
    /// taken before the node binds it (tests run in parallel): then it starts again on
    /// other ports.
    pub async fn start_with(kind: Kind, n: usize, tweak: impl Fn(&mut GatewayConfig)) -> Self {
        Self::start_on(TestBackend::start(kind), n, tweak).await
    }

    /// [`Cluster::start_with`] on a backend the test started (a persistent Redis, say).
    pub async fn start_on(store: TestBackend, n: usize, tweak: impl Fn(&mut GatewayConfig)) -> Self {
        for _ in 0..BIND_ATTEMPTS {
            let servers: Vec<String> = (0..n).map(|_| free_addr()).collect();
            if let Some(nodes) = start_nodes(&store, &servers, &tweak).await {
                let im = ImClient::new(store.handle(), ImClientOptions::new(servers.clone())).unwrap();
                let cluster = Cluster { store, nodes, servers, im };
                cluster.wait_live().await;
                return cluster;
            }
        }
        panic!("no free ports for {n} nodes after {BIND_ATTEMPTS} attempts");
    }

    /// A fresh backend handle on the cluster's Redis or shared in-process broker.
    pub fn backend(&self) -> Backend {
        self.store.handle()
    }

    /// The cluster's Redis server; panics on the in-process broker.
    pub fn redis(&self) -> &RedisServer {
        self.store.redis().expect("a Redis cluster")
    }

    /// The cluster's Redis server, to kill or restart it.
    pub fn redis_mut(&mut self) -> &mut RedisServer {
        self.store.redis_mut()
    }

    /// Waits until every node's node-channel subscription is live.
    pub async fn wait_live(&self) {
        eventually(None, || async { self.nodes.iter().all(Gateway::is_live) }).await;
    }

    /// A connect URL for `id` (a fresh token), without connecting.
    pub async fn url(&self, id: i64) -> String {
        self.im.prev_connect_server(id, Some("meta")).await.unwrap()
    }

    /// Connects a WebSocket for `id` through a fresh token, and waits until its node
    /// counts it and its presence is recorded, so tests see it.
    pub async fn connect(&self, id: i64) -> Ws {
        let ws = Ws::connect(&self.url(id).await).await.unwrap_or_else(|status| panic!("connect {id}: HTTP {status}"));
        let node = freeim::protocol::node_index(id, self.servers.len());
        eventually(None, || async { self.nodes[node].connections() > 0 && self.im.has_online(id).await.unwrap() })
            .await;
        ws
    }

    /// A hash as sorted (field, value) pairs, read through the cluster's backend.
    pub async fn hash(&self, key: &str) -> Vec<(String, String)> {
        self.store.hash(key).await
    }

    /// `{P}Online` as sorted (client id, count) pairs.
    pub async fn online(&self) -> Vec<(String, String)> {
        self.hash(self.im.keys().online()).await
    }

    /// Publishes `payloads` on node `i`'s channel in one pipeline, so the node gets them
    /// as one batch.
    pub async fn publish<P: Into<Bytes>>(&self, i: usize, payloads: impl IntoIterator<Item = P>) {
        let channel = self.im.keys().server(&self.servers[i]);
        let publish = |payload: P| Op::Publish { channel: channel.clone(), payload: payload.into() };
        self.backend().execute(payloads.into_iter().map(publish).collect()).await.unwrap();
    }

    /// The address node `i` listens on.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].local_addr()
    }

    /// Node `i`'s `/metrics` text.
    pub async fn metrics(&self, i: usize) -> String {
        metrics(self.addr(i)).await
    }

    /// The value of one series of node `i`'s metrics (see [`metric`]).
    pub async fn metric(&self, i: usize, series: &str) -> u64 {
        metric(&self.metrics(i).await, series)
    }

    /// Waits until series `series` of node `i`'s metrics is `want`, failing with its last value.
    pub async fn expect_metric(&self, i: usize, series: &str, want: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.metric(i, series).await;
            if value == want {
                return;
            }
            assert!(Instant::now() < deadline, "{series} is {value}, expected {want}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Drops `sockets` (closed by the client, so no node waits out its close linger for
    /// them), then gracefully stops every node, all at once.
    pub async fn shutdown_after<Sockets>(self, sockets: Sockets) {
        drop(sockets);
        self.shutdown().await;
    }

    /// Gracefully stops every node, all at once (each may wait up to the close linger for
    /// clients that do not answer its close frame).
    pub async fn shutdown(self) {
        join_all(self.nodes.into_iter().map(Gateway::shutdown)).await;
    }
}

/// Starts a node for each of `servers`; `None` (and nothing left running) when one of
/// the ports was taken.
async fn start_nodes(
    store: &TestBackend,
    servers: &[String],
    tweak: &impl Fn(&mut GatewayConfig),
) -> Option<Vec<Gateway>> {
    let names: Vec<&str> = servers.iter().map(String::as_str).collect();
    let mut nodes = Vec::new();
    for server in &names {
        let mut config = GatewayConfig::new(server, &names).unwrap();
        tweak(&mut config);
        match Gateway::start(config, store.handle()).await {
            Ok(node) => nodes.push(node),
            Err(GatewayError::Bind { .. }) => {
                join_all(nodes.into_iter().map(Gateway::shutdown)).await;
                return None;
            }
            Err(e) => panic!("gateway start: {e}"),
        }
    }
    Some(nodes)
}

/// The node command a business message from the system to `receiver` is, with no receipt.
pub fn system_message(receiver: i64, content: &impl serde::Serialize) -> NodeCommand {
    NodeCommand::Direct(DirectMessage {
        sender: 0,
        receivers: vec![receiver],
        content: to_json(content),
        receipt: false,
    })
}

/// The `/metrics` text of the node at `addr`.
pub async fn metrics(addr: impl ToSocketAddrs) -> String {
    let answer = http(addr, &get("/metrics")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// The value of one series in a `/metrics` text, named as in the text
/// (`freeim_connections`, `freeim_disconnects_total{reason="limit"}`).
pub fn metric(text: &str, series: &str) -> u64 {
    let value = text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' '));
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}
