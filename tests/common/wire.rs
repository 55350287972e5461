//! Test-kit parts below the WebSocket library: plain HTTP requests, a hand-made WebSocket
//! client that reads raw bytes (and can stay silent), a tungstenite client with a tiny
//! receive buffer (a slow consumer), and `freeim server` child processes.

use super::{WAIT, Ws};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A plain HTTP/1.1 GET of `target`; returns the status code of the answer's status line.
pub async fn http_status(addr: SocketAddr, target: &str) -> u16 {
    http_request(addr, &format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n")).await
}

/// Sends `request` as is and returns the status code of the answer's status line.
pub async fn http_request(addr: SocketAddr, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer to {request:?}");
    status_of(&answer)
}

/// A plain HTTP/1.1 GET of `target`; the status code and the body.
pub async fn http_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer to GET {target}");
    let text = String::from_utf8_lossy(&answer);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status_of(&answer), body)
}

/// The code of an HTTP status line such as `HTTP/1.1 401 Unauthorized`.
fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next().unwrap_or_default();
    let code = line.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3));
    code.and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

/// The `host:port` and `/path?query` of a `ws://` URL.
pub fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("ws://").expect("a ws:// URL");
    let (host, target) = rest.split_at(rest.find('/').expect("a path"));
    (host.parse().unwrap(), target.to_owned())
}

/// A WebSocket client made by hand on a raw TCP stream: it sends the upgrade request and
/// then only what the test writes, and answers nothing (no pongs), so the test sees the
/// server's exact bytes.
pub struct RawWs {
    pub stream: TcpStream,
}

impl RawWs {
    /// Upgrades through `url`; panics unless the answer is `101`.
    pub async fn connect(url: &str) -> RawWs {
        let (addr, target) = split_url(url);
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            let n = tokio::time::timeout(WAIT, stream.read(&mut byte)).await.expect("upgrade answer").unwrap();
            assert_eq!(n, 1, "connection closed during the upgrade: {:?}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        assert_eq!(status_of(&head), 101, "{:?}", String::from_utf8_lossy(&head));
        let head = String::from_utf8(head).unwrap();
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
        RawWs { stream }
    }

    /// Reads exactly `n` bytes within [`WAIT`].
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut buf)).await.expect("bytes in time").unwrap();
        buf
    }

    /// Reads until the server ends the connection (within [`WAIT`]); the bytes read.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, self.stream.read_to_end(&mut buf)).await;
        read.expect("the server ends the connection").unwrap();
        buf
    }

    /// Sends one masked client frame (`first` is FIN + opcode, e.g. `0x81` for text).
    pub async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        self.stream.write_all(&masked_frame(first, payload)).await.unwrap();
    }
}

/// A masked client frame, as browsers send them.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    freeim::internals::client_frame(first, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// A tungstenite client whose kernel receive buffer is as small as the OS allows, so that a
/// client that does not read stops the server's writes quickly.
pub async fn connect_small_buffer(url: &str) -> Ws {
    let (addr, _) = split_url(url);
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (stream, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    Ws { stream }
}

/// How a socket's life ended, seen from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A close frame with this code and reason.
    Close(u16, String),
    /// The connection ended without a close frame (EOF or reset).
    Dropped(String),
}

impl Ws {
    /// The next message within `wait` (`Ok(None)`: nothing came), or how the socket ended.
    pub async fn next_or_end(&mut self, wait: Duration) -> Result<Option<Message>, End> {
        use futures_util::StreamExt;
        match tokio::time::timeout(wait, self.stream.next()).await {
            Err(_) => Ok(None),
            Ok(Some(Ok(Message::Close(frame)))) => {
                let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or_default();
                Err(End::Close(code, reason))
            }
            Ok(Some(Ok(message))) => Ok(Some(message)),
            Ok(Some(Err(e))) => Err(End::Dropped(e.to_string())),
            Ok(None) => Err(End::Dropped("end of stream".to_owned())),
        }
    }

    /// Answers pings (by reading) until `done` holds, failing if a frame other than a ping
    /// arrives or the socket ends; returns the number of pings seen.
    pub async fn keep_reading_until(&mut self, mut done: impl FnMut(usize) -> bool) -> usize {
        let mut pings = 0;
        while !done(pings) {
            match self.next_or_end(Duration::from_millis(50)).await {
                Ok(None) | Ok(Some(Message::Pong(_))) => {}
                Ok(Some(Message::Ping(_))) => pings += 1,
                other => panic!("expected only pings, got {other:?}"),
            }
        }
        pings
    }
}

/// A `freeim server` child process; killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    stderr: std::path::PathBuf,
}

impl ServerProcess {
    /// Runs `freeim` with `args` and `envs` (stderr captured to a file), and waits until
    /// `addr` answers `/healthz` with 200.
    pub async fn start(args: &[&str], envs: &[(&str, &str)], addr: SocketAddr) -> ServerProcess {
        Self::start_expecting(args, envs, addr, 200).await
    }

    /// [`ServerProcess::start`], waiting for `/healthz` to answer `health` instead.
    pub async fn start_expecting(args: &[&str], envs: &[(&str, &str)], addr: SocketAddr, health: u16) -> ServerProcess {
        let stderr = std::env::temp_dir().join(format!("freeim-test-{}-{}.log", std::process::id(), addr.port()));
        let file = std::fs::File::create(&stderr).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_freeim"))
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut process = ServerProcess { child, addr, stderr };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("freeim exited with {status}: {}", process.stderr_text());
            }
            if TcpStream::connect(addr).await.is_ok() && http_status(addr, "/healthz").await == health {
                return process;
            }
            assert!(Instant::now() < deadline, "freeim did not answer /healthz {health}: {}", process.stderr_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        super::send_signal(&self.child, libc::SIGTERM);
    }

    /// Waits (polling, up to `within`) for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "freeim did not exit: {}", self.stderr_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// Runs `freeim` with `args` and `envs` to completion (it must exit within [`WAIT`]);
/// returns its exit code and stderr.
pub fn run_freeim(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_freeim"))
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("freeim {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Waits until `addr` answers `/healthz` with `status`, up to [`RECOVERY`].
pub async fn wait_health(addr: SocketAddr, status: u16) {
    eventually_within(RECOVERY, || async move { http_status(addr, "/healthz").await == status }).await;
}

/// How long a test waits for recovery after Redis comes back (reconnect back-off included).
pub const RECOVERY: Duration = Duration::from_secs(15);

/// Polls `check` until it is true, failing the test after `within`.
pub async fn eventually_within<F, Fut>(within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl super::Cluster {
    /// A hash as sorted (field, value) pairs, read through the cluster's backend (Redis or
    /// the in-process broker), so exact-state assertions run on both.
    pub async fn hash(&self, key: &str) -> Vec<(String, String)> {
        let mut pairs = self.backend().hgetall(key).await.unwrap();
        pairs.sort();
        pairs
    }

    /// `{P}Online` as sorted (client id, count) pairs.
    pub async fn online(&self) -> Vec<(String, String)> {
        self.hash(self.im.keys().online()).await
    }

    /// The address node `i` listens on.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].local_addr()
    }

    /// Node `i`'s `/metrics` text.
    pub async fn metrics(&self, i: usize) -> String {
        let (status, text) = http_get(self.addr(i), "/metrics").await;
        assert_eq!(status, 200, "{text}");
        text
    }

    /// The value of one series of node `i`'s metrics, named as in the text
    /// (`freeim_connections`, `freeim_disconnects_total{reason="limit"}`).
    pub async fn metric(&self, i: usize, series: &str) -> u64 {
        let text = self.metrics(i).await;
        let value = text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' '));
        value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {series} in\n{text}"))
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
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connect URL for `id` (a fresh token), without connecting.
    pub async fn url(&self, id: i64) -> String {
        self.im.prev_connect_server(id, Some("meta")).await.unwrap()
    }
}

/// Sorted (field, value) pairs from string slices, for comparing with [`super::Cluster::hash`].
pub fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = items.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect();
    pairs.sort();
    pairs
}

/// [`Ws::expect_silence`] on every socket at once.
pub async fn expect_silence_all<'a>(sockets: impl IntoIterator<Item = &'a mut Ws>) {
    futures_util::future::join_all(sockets.into_iter().map(Ws::expect_silence)).await;
}

impl super::RedisServer {
    /// Starts it again on the same port with persistence in `dir` (an append-only file,
    /// written on every command): after a kill, the next `restart_from(dir)` comes back
    /// with every write, as a production Redis does after a crash.
    pub fn restart_from(&mut self, dir: &std::path::Path) {
        assert!(self.child.is_none(), "redis-server is already running");
        let port = self.port.to_string();
        let dir = dir.to_str().unwrap();
        let args = ["--port", &port, "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "yes"];
        let child = Command::new("redis-server")
            .args(args)
            .args(["--appendfsync", "always"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.child = Some(child.unwrap());
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
