//! The load generator's WebSocket client: as little as a FreeIM browser needs.
//!
//! The upgrade request is written by hand and the `101` answer checked by hand; after that
//! the client only reads unmasked server frames (text frames carry the bench's timestamped
//! messages), answers pings with a masked pong and closes with a masked close frame.
//! An idle client is its socket and a few counters: reads go into one buffer shared by every
//! connection of the worker thread, and only a frame split across two reads is kept, in a
//! heap buffer that exists only until the frame is whole. `wss://` goes through rustls's
//! client (trusting the certificates the bench is given), read with plain async reads.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Bytes read per `read` call, into the worker thread's shared buffer.
const READ_BUF: usize = 64 * 1024;
/// Largest `101` answer accepted (the gateway's is ~130 bytes).
const MAX_RESPONSE_HEAD: usize = 1024;
/// A fixed `Sec-WebSocket-Key` (RFC 6455's example): the bench does not need fresh nonces,
/// and a fixed key lets the expected accept value be computed once.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The `Sec-WebSocket-Accept` that answers [`KEY`].
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The mask of the few frames the client sends (any value is valid; it is not a secret here).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

thread_local! {
    static READ: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF]);
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect, bind or I/O failed.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// The server answered with an HTTP status other than 101.
    #[error("HTTP {0}")]
    Status(u16),
    /// The answer was not a valid upgrade.
    #[error("bad upgrade answer")]
    BadAnswer,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// Where one client connects: the node's address and the request target.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Node address.
    pub addr: SocketAddr,
    /// `Host` header (the node name).
    pub host: String,
    /// Path and query, e.g. `/ws?token=…`.
    pub target: String,
    /// `wss://`: TLS with this client configuration.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A connected socket: plain TCP or TLS over it.
pub enum Socket {
    /// `ws://`
    Plain(TcpStream),
    /// `wss://`
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connects from `source` (port chosen by the kernel) and upgrades. Returns the socket and
/// any frame bytes that came with the answer.
pub async fn connect(dial: &Dial, source: IpAddr, timeout: Duration) -> Result<(Socket, Vec<u8>), ConnectError> {
    tokio::time::timeout(timeout, open(dial, source)).await.map_err(|_| ConnectError::Timeout)?
}

async fn open(dial: &Dial, source: IpAddr) -> Result<(Socket, Vec<u8>), ConnectError> {
    let socket = if dial.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // Ports in TIME_WAIT from an earlier run must not make bind fail.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(dial.addr).await?;
    stream.set_nodelay(true)?;
    match &dial.tls {
        None => upgrade(dial, stream).await.map(|(s, rest)| (Socket::Plain(s), rest)),
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(dial.addr.ip().into());
            let tls = TlsConnector::from(config.clone()).connect(name, stream).await?;
            upgrade(dial, tls).await.map(|(s, rest)| (Socket::Tls(Box::new(s)), rest))
        }
    }
}

async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(dial: &Dial, mut stream: S) -> Result<(S, Vec<u8>), ConnectError> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        dial.target, dial.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; MAX_RESPONSE_HEAD];
    let mut len = 0;
    loop {
        let n = stream.read(&mut head[len..]).await?;
        if n == 0 {
            return Err(ConnectError::BadAnswer);
        }
        len += n;
        if let Some(end) = head[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            check_answer(&head[..end])?;
            return Ok((stream, head[end + 4..len].to_vec()));
        }
        if len == head.len() {
            return Err(ConnectError::BadAnswer);
        }
    }
}

fn check_answer(head: &[u8]) -> Result<(), ConnectError> {
    let text = std::str::from_utf8(head).map_err(|_| ConnectError::BadAnswer)?;
    let status = text.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or(ConnectError::BadAnswer)?;
    if status != 101 {
        return Err(ConnectError::Status(status));
    }
    let accept = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-accept").then(|| value.trim())
    });
    if accept != Some(ACCEPT) {
        return Err(ConnectError::BadAnswer);
    }
    Ok(())
}

/// A final masked client frame with `opcode` (only control frames are ever sent).
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    freeim::internals::client_frame(0x80 | opcode, payload, MASK)
}

/// What a connection saw in one read.
pub enum Event<'a> {
    /// A text frame's payload.
    Text(&'a [u8]),
    /// A ping with this payload (answer with a pong).
    Ping(&'a [u8]),
    /// The server closed.
    Close,
}

/// Parses whole server frames in `buf`, calling `on` for each; returns the bytes used.
/// `Err` when the server broke the protocol (a masked or malformed frame).
pub fn parse_frames(buf: &[u8], mut on: impl FnMut(Event<'_>)) -> Result<usize, ()> {
    let mut used = 0;
    loop {
        let rest = &buf[used..];
        if rest.len() < 2 {
            return Ok(used);
        }
        if rest[1] & 0x80 != 0 {
            return Err(());
        }
        let (len, header) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[2..10]);
                (usize::try_from(u64::from_be_bytes(b)).map_err(|_| ())?, 10)
            }
            126 | 127 => return Ok(used),
            n => (n as usize, 2),
        };
        if rest.len() < header + len {
            return Ok(used);
        }
        let payload = &rest[header..header + len];
        match rest[0] & 0x0f {
            0x0..=0x2 => on(Event::Text(payload)),
            0x8 => on(Event::Close),
            0x9 => on(Event::Ping(payload)),
            _ => {}
        }
        used += header + len;
    }
}

/// Reads what is available on `stream`, keeping a split frame in `partial`, and calls `on`
/// for each whole frame. `Ok(false)` at end of stream.
pub fn read_available(
    stream: &TcpStream,
    partial: &mut Vec<u8>,
    mut on: impl FnMut(Event<'_>),
) -> Result<bool, io::Error> {
    READ.with(|cell| {
        let mut buf = cell.borrow_mut();
        loop {
            let n = match freeim::internals::try_read(stream, &mut buf[..]) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            };
            let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad server frame");
            if partial.is_empty() {
                let used = parse_frames(&buf[..n], &mut on).map_err(|_| bad())?;
                partial.extend_from_slice(&buf[used..n]);
            } else {
                partial.extend_from_slice(&buf[..n]);
                let used = parse_frames(partial, &mut on).map_err(|_| bad())?;
                partial.drain(..used);
                if partial.is_empty() {
                    *partial = Vec::new();
                }
            }
            if n < buf.len() {
                return Ok(true);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use freeim::internals::{close_frame, ping_frame, text_frame, upgrade_response};

    #[test]
    fn the_fixed_key_is_answered_by_the_gateway_code() {
        assert!(upgrade_response(KEY.as_bytes()).contains(ACCEPT));
    }

    #[test]
    fn parses_the_gateway_frames_split_anywhere() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&text_frame(b"\"hi\""));
        wire.extend_from_slice(&text_frame(&[b'a'; 300]));
        wire.extend_from_slice(&ping_frame());
        wire.extend_from_slice(&close_frame(1001, "bye"));
        for split in 0..wire.len() {
            let mut seen = Vec::new();
            let mut record = |e: Event<'_>| {
                seen.push(match e {
                    Event::Text(p) => format!("text {}", p.len()),
                    Event::Ping(_) => "ping".into(),
                    Event::Close => "close".into(),
                })
            };
            let used = parse_frames(&wire[..split], &mut record).unwrap();
            let mut rest = wire[used..split].to_vec();
            rest.extend_from_slice(&wire[split..]);
            assert_eq!(parse_frames(&rest, &mut record).unwrap(), rest.len());
            assert_eq!(seen, ["text 4", "text 300", "ping", "close"], "split at {split}");
        }
    }

    #[test]
    fn masked_frames_unmask() {
        let f = masked_frame(0xA, b"abc");
        assert_eq!(&f[..2], &[0x8A, 0x83]);
        let unmasked: Vec<u8> = f[6..].iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]).collect();
        assert_eq!(unmasked, b"abc");
    }
}
