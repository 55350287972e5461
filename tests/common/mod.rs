//! The test kit: real `redis-server` processes on free loopback ports (killable and
//! restartable), gateway nodes in-process or as `freeim server` processes, real WebSocket
//! clients (tokio-tungstenite), and raw Redis access for asserting exact state.
//!
//! Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

mod wire;
#[allow(unused_imports)]
pub use wire::*;

use freeim::backend::{Backend, MemoryBackend, RedisBackend};
use freeim::gateway::{Gateway, GatewayConfig};
use freeim::{ImClient, ImClientOptions};
use futures_util::{SinkExt, StreamExt};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A free TCP port on 127.0.0.1 (bound and released; the window for a race is tiny).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends `signal` to `child` with kill(2) (no `kill` binary: a bare machine has none).
pub fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// A `redis-server` child process on a free port, with no persistence.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = RedisServer { port: free_port(), child: None };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): its connections stay open but nothing answers, as with a
    /// frozen host or a dropped route. [`RedisServer::resume`] undoes it.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        send_signal(self.child.as_ref().expect("redis-server is running"), signal);
    }

    /// A plain synchronous connection for asserting exact state.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    /// Runs one raw command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.conn()).unwrap()
    }

    /// A hash as sorted (field, value) pairs.
    pub fn hash(&self, key: &str) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self.cmd(&["HGETALL", key]);
        pairs.sort();
        pairs
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which backend a behaviour test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Memory,
}

/// A cluster: one backend, `n` in-process gateway nodes, and a business-side client.
pub struct Cluster {
    pub redis: Option<RedisServer>,
    memory: Option<MemoryBackend>,
    pub nodes: Vec<Gateway>,
    pub servers: Vec<String>,
    pub im: ImClient,
}

impl Cluster {
    /// `n` nodes on free ports, with default settings.
    pub async fn start(kind: Kind, n: usize) -> Self {
        Self::start_with(kind, n, |_| {}).await
    }

    /// `n` nodes; `tweak` adjusts each node's configuration.
    pub async fn start_with(kind: Kind, n: usize, tweak: impl Fn(&mut GatewayConfig)) -> Self {
        let (mut redis, mut memory) = match kind {
            Kind::Redis => (Some(RedisServer::start()), None),
            Kind::Memory => (None, Some(MemoryBackend::new())),
        };
        // A port found free may be taken before the node binds it (tests run in parallel):
        // then start again on other ports.
        for _ in 0..5 {
            let servers: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
            let im = ImClient::new(backend_of(&redis, &memory), ImClientOptions::new(servers.clone())).unwrap();
            let mut cluster = Cluster { redis: redis.take(), memory: memory.take(), nodes: Vec::new(), im, servers };
            let mut bound = true;
            for server in cluster.servers.clone() {
                let refs: Vec<&str> = cluster.servers.iter().map(String::as_str).collect();
                let mut config = GatewayConfig::new(&server, &refs).unwrap();
                tweak(&mut config);
                match Gateway::start(config, cluster.backend()).await {
                    Ok(node) => cluster.nodes.push(node),
                    Err(freeim::gateway::GatewayError::Bind { .. }) => {
                        bound = false;
                        break;
                    }
                    Err(e) => panic!("gateway start: {e}"),
                }
            }
            if bound {
                cluster.wait_live().await;
                return cluster;
            }
            let nodes = std::mem::take(&mut cluster.nodes);
            futures_util::future::join_all(nodes.into_iter().map(Gateway::shutdown)).await;
            (redis, memory) = (cluster.redis.take(), cluster.memory.take());
        }
        panic!("no free ports for {n} nodes after 5 attempts");
    }

    /// A fresh backend handle on the cluster's Redis or shared in-process broker.
    pub fn backend(&self) -> Backend {
        backend_of(&self.redis, &self.memory)
    }

    pub fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("a Redis cluster")
    }

    /// Waits until every node's node-channel subscription is live.
    pub async fn wait_live(&self) {
        eventually(|| async { self.nodes.iter().all(Gateway::is_live) }).await;
    }

    /// Connects a WebSocket for `id` through a fresh token.
    pub async fn connect(&self, id: i64) -> Ws {
        let url = self.im.prev_connect_server(id, Some("meta")).await.unwrap();
        let ws = Ws::connect(&url).await.unwrap_or_else(|status| panic!("connect {id}: HTTP {status}"));
        // Presence is recorded right after the upgrade; wait for it so tests see it.
        let node = freeim::protocol::node_index(id, self.servers.len());
        eventually(|| async { self.nodes[node].connections() > 0 && self.im.has_online(id).await.unwrap() }).await;
        ws
    }

    /// Gracefully stops every node, all at once (each may wait up to the close linger for
    /// clients that do not answer its close frame).
    pub async fn shutdown(self) {
        futures_util::future::join_all(self.nodes.into_iter().map(Gateway::shutdown)).await;
    }
}

fn backend_of(redis: &Option<RedisServer>, memory: &Option<MemoryBackend>) -> Backend {
    match (redis, memory) {
        (Some(redis), _) => Backend::Redis(RedisBackend::open(&redis.url()).unwrap()),
        (_, Some(memory)) => Backend::Memory(memory.clone()),
        _ => panic!("a cluster has a backend"),
    }
}

/// Polls `check` until it is true, failing the test after [`WAIT`].
pub async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "condition not met within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real WebSocket client.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects; `Err(status)` when the server answers with an HTTP error instead.
    pub async fn connect(url: &str) -> Result<Ws, u16> {
        match tokio_tungstenite::connect_async(url).await {
            Ok((stream, _)) => Ok(Ws { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("connect {url}: {e}"),
        }
    }

    /// The next text frame (pings are answered by tungstenite and skipped).
    pub async fn recv_text(&mut self) -> String {
        loop {
            match self.next_message(WAIT).await {
                Some(Message::Text(text)) => return text.to_string(),
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Asserts that no text frame arrives within [`QUIET`].
    pub async fn expect_silence(&mut self) {
        loop {
            match self.next_message(QUIET).await {
                None => return,
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                Some(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Waits for the server's close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_message(WAIT).await {
                Some(Message::Close(Some(CloseFrame { code, reason }))) => return (code.into(), reason.to_string()),
                Some(Message::Text(_) | Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        while let Some(Ok(_)) = self.stream.next().await {}
    }

    async fn next_message(&mut self, wait: Duration) -> Option<Message> {
        match tokio::time::timeout(wait, self.stream.next()).await {
            Err(_) => None,
            Ok(Some(Ok(message))) => Some(message),
            Ok(other) => panic!("socket ended: {other:?}"),
        }
    }
}

/// Runs a behaviour test once per backend: `both!(name, |kind| async move { … })`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                ($body)(Kind::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                ($body)(Kind::Memory).await
            }
        }
    };
}
