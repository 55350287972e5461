//! WebSocket clients and what a test expects of the frames they get: [`Ws`], a real
//! client (tokio-tungstenite, over plain TCP or any stream such as TLS), and [`RawWs`], a
//! client made by hand on a raw TCP stream that sees the server's exact bytes.
//!
//! The gateway's codec is named once, here ([`codec`]), for masked client frames and the
//! inbound frame limit.

use super::{QUIET, WAIT, status_of};
use freeim::internals as codec;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The largest frame a client may send (the limit tests push against).
#[allow(unused_imports)] // only tests/limits.rs uses it
pub use codec::MAX_INBOUND_FRAME;

/// The `Sec-WebSocket-Key` of [`upgrade_request`], from RFC 6455's example.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The `Sec-WebSocket-Accept` the server must answer to [`KEY`].
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The mask of [`masked_frame`]; any will do.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// The kernel receive buffer of [`Ws::connect_small_buffer`]: as small as the OS allows.
const SMALL_RECV_BUFFER: u32 = 4096;
/// How long [`Ws::keep_reading_until`] reads before it asks `done` again.
const READ_SLICE: Duration = Duration::from_millis(50);

/// A real WebSocket client; it answers pings as it reads.
pub struct Ws<S = MaybeTlsStream<TcpStream>> {
    /// The tungstenite stream, for tests that drive it directly.
    pub stream: WebSocketStream<S>,
}

impl Ws {
    /// Connects; `Err(status)` when the server answers with an HTTP error instead.
    pub async fn connect(url: &str) -> Result<Ws, u16> {
        Self::open(url, url.into_client_request().unwrap()).await
    }

    /// [`Ws::connect`] with an `Origin` header, as a browser sends it.
    pub async fn connect_from(url: &str, origin: &str) -> Result<Ws, u16> {
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert("Origin", origin.parse().unwrap());
        Self::open(url, request).await
    }

    async fn open(url: &str, request: impl IntoClientRequest + Unpin) -> Result<Ws, u16> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(Ws { stream }),
            Err(Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("connect {url}: {e}"),
        }
    }

    /// A client whose kernel receive buffer is as small as the OS allows, so that a client
    /// that does not read stops the server's writes quickly.
    pub async fn connect_small_buffer(url: &str) -> Ws {
        let (addr, _) = split_url(url);
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(SMALL_RECV_BUFFER).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        Ws::handshake(url, MaybeTlsStream::Plain(stream)).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ws<S> {
    /// The WebSocket handshake for `url` on an established `stream` (plain or TLS).
    pub async fn handshake(url: &str, stream: S) -> Ws<S> {
        let (stream, _) =
            tokio_tungstenite::client_async(url, stream).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Ws { stream }
    }

    /// The next frame within [`WAIT`] that is not a ping or pong (tungstenite answers pings).
    pub async fn next_frame(&mut self) -> Message {
        loop {
            match self.next_message(WAIT).await {
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                Some(message) => return message,
                None => panic!("no frame within {WAIT:?}"),
            }
        }
    }

    /// The next text frame.
    pub async fn recv_text(&mut self) -> String {
        match self.next_frame().await {
            Message::Text(text) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts that no frame but pings and pongs arrives within [`QUIET`].
    pub async fn expect_silence(&mut self) {
        loop {
            match self.next_message(QUIET).await {
                None => return,
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                Some(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Waits for the server's close frame, skipping text; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_message(WAIT).await {
                Some(Message::Close(Some(CloseFrame { code, reason }))) => return (code.into(), reason.to_string()),
                Some(Message::Text(_) | Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.unwrap();
    }

    /// Closes from the client side and reads until the server is done.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        while let Some(Ok(_)) = self.stream.next().await {}
    }

    /// The next message within `wait` (`Ok(None)`: nothing came), or how the socket ended.
    pub async fn next_or_end(&mut self, wait: Duration) -> Result<Option<Message>, End> {
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
            match self.next_or_end(READ_SLICE).await {
                Ok(None) | Ok(Some(Message::Pong(_))) => {}
                Ok(Some(Message::Ping(_))) => pings += 1,
                other => panic!("expected only pings, got {other:?}"),
            }
        }
        pings
    }

    async fn next_message(&mut self, wait: Duration) -> Option<Message> {
        match tokio::time::timeout(wait, self.stream.next()).await {
            Err(_) => None,
            Ok(Some(Ok(message))) => Some(message),
            Ok(other) => panic!("socket ended: {other:?}"),
        }
    }
}

/// How a socket's life ended, seen from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A close frame with this code and reason.
    Close(u16, String),
    /// The connection ended without a close frame (EOF or reset).
    Dropped(String),
}

/// [`Ws::expect_silence`] on every socket at once.
pub async fn expect_silence_all<'a>(sockets: impl IntoIterator<Item = &'a mut Ws>) {
    futures_util::future::join_all(sockets.into_iter().map(Ws::expect_silence)).await;
}

/// A well-formed upgrade request for `target`, with the key [`RawWs`] checks the answer to.
pub fn upgrade_request(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The `host:port` and `/path?query` of a `ws://` URL.
pub fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("ws://").expect("a ws:// URL");
    let (host, target) = rest.split_at(rest.find('/').expect("a path"));
    (host.parse().unwrap(), target.to_owned())
}

/// A masked client frame, as browsers send them (`first` is FIN + opcode, e.g. `0x81`
/// for text).
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    codec::client_frame(first, payload, MASK)
}

/// A WebSocket client made by hand on a raw TCP stream: it sends the upgrade request and
/// then only what the test writes, and answers nothing (no pongs), so the test sees the
/// server's exact bytes.
pub struct RawWs {
    /// The TCP stream, for tests that write bytes no client would.
    pub stream: TcpStream,
}

impl RawWs {
    /// Upgrades through `url`; panics unless the answer is `101` with the right accept key.
    pub async fn connect(url: &str) -> RawWs {
        let (addr, target) = split_url(url);
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(upgrade_request(&target).as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            let n = tokio::time::timeout(WAIT, stream.read(&mut byte)).await.expect("upgrade answer").unwrap();
            assert_eq!(n, 1, "connection closed during the upgrade: {:?}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        assert_eq!(status_of(&head), 101, "{:?}", String::from_utf8_lossy(&head));
        let head = String::from_utf8(head).unwrap();
        assert!(head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")), "{head}");
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
