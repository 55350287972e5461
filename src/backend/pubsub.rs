//! A Redis subscription read by the task that consumes it: the connection, its reconnect
//! loop, and the little of RESP2 a subscriber needs.
//!
//! Why by hand: redis-rs's async pub/sub spawns a driver task that forwards every message
//! through an unbounded channel, so a node-channel message crossed two more tasks (often
//! both cores) before the dispatcher saw it, and a busy dispatcher let that channel grow
//! without bound. Here the consumer's own [`RedisSubscriber::recv_many`] reads the socket,
//! takes every complete message already in the read buffer as one batch, and hands out
//! payloads as slices of that buffer (no copy). While the consumer is busy nothing reads, so
//! Redis buffers on its side (up to its `client-output-buffer-limit pubsub`; beyond it Redis
//! drops the connection and we subscribe again): memory here stays bounded.
//!
//! A reply that does not parse is treated as a lost connection. An idle connection is
//! probed with a `PING` after [`PROBE_AFTER`] of silence and declared dead when nothing at all
//! arrives within [`PROBE_AFTER`] more, since a half-open TCP connection never reports itself.

use super::PubSubMessage;
use bytes::BytesMut;
use redis::{ConnectionAddr, ConnectionInfo};
use std::ops::Range;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long connecting, authenticating and subscribing may take together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest pause between two failed subscribe attempts (doubling).
const RESUBSCRIBE_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// Silence after which the connection is probed with a `PING`; the same again without any
/// byte from Redis and it is dropped and re-established.
const PROBE_AFTER: Duration = Duration::from_secs(5);
/// Read buffer reserved ahead of each read. One allocation per subscription, grown only for
/// a message that does not fit, and returned to this size once such a message is consumed.
const READ_CHUNK: usize = 64 * 1024;
/// The largest bulk string accepted: Redis's own default `proto-max-bulk-len` (512 MiB), so
/// anything Redis can deliver is accepted, and a length beyond it means a corrupt stream.
const MAX_BULK: usize = 512 * 1024 * 1024;
/// The longest array accepted; pub/sub replies have at most four elements.
const MAX_ARRAY: usize = 16;

/// A reply from Redis that a subscriber cannot take.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// An error reply (a refused `AUTH`, say).
    #[error("redis answered: {0}")]
    Refused(String),
    /// Bytes that are not RESP2 as Redis writes it: the stream cannot be trusted past them.
    #[error("unparsable reply from redis: {0}")]
    Malformed(&'static str),
}

/// Why a subscription connection failed or was dropped (logged; the subscriber retries).
#[derive(Debug, thiserror::Error)]
enum PubSubError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connect, auth and subscribe took over {CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    #[error(transparent)]
    Reply(#[from] ReplyError),
    #[error("redis closed the connection")]
    Closed,
    #[error("no reply to a ping within {PROBE_AFTER:?}")]
    Dead,
    #[error("unsupported address {0} (only redis:// and redis+unix://)")]
    Unsupported(String),
}

/// What the subscriber connects to, from the backend's `redis://` URL.
#[derive(Debug, Clone)]
pub(super) struct Target {
    addr: ConnectionAddr,
    username: Option<String>,
    password: Option<String>,
}

impl Target {
    pub(super) fn new(info: &ConnectionInfo) -> Target {
        let settings = info.redis_settings();
        Target {
            addr: info.addr().clone(),
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
        }
    }
}

/// A byte stream to Redis: TCP or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One subscription; see the module doc. Messages are only read while a `recv` is awaited.
pub(super) struct RedisSubscriber {
    target: Target,
    channels: Vec<String>,
    conn: Option<Connection>,
    live: watch::Sender<bool>,
    epoch: watch::Sender<u64>,
}

impl std::fmt::Debug for RedisSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSubscriber").field("channels", &self.channels).finish()
    }
}

impl RedisSubscriber {
    /// A subscription that connects when first read (or made [`RedisSubscriber::ready`]).
    pub(super) fn new(target: Target, channels: Vec<String>) -> (Self, watch::Receiver<bool>, watch::Receiver<u64>) {
        let (live, live_rx) = watch::channel(false);
        let (epoch, epoch_rx) = watch::channel(0);
        (RedisSubscriber { target, channels, conn: None, live, epoch }, live_rx, epoch_rx)
    }

    /// Subscribes now unless already subscribed (one attempt); whether it is subscribed.
    pub(super) async fn ready(&mut self) -> bool {
        if self.conn.is_none()
            && let Err(e) = self.try_subscribe().await
        {
            tracing::warn!(error = %e, channels = ?self.channels, "redis subscription failed; retrying");
        }
        self.conn.is_some()
    }

    /// Waits for at least one message and appends it, with every other complete message
    /// already received, up to `max`, to `out`. Returns how many were appended (never 0:
    /// a lost connection is re-established here, with backoff, as long as it takes).
    pub(super) async fn recv_many(&mut self, out: &mut Vec<PubSubMessage>, max: usize) -> usize {
        let mut backoff = RESUBSCRIBE_BACKOFF.0;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                if let Err(e) = self.try_subscribe().await {
                    tracing::warn!(error = %e, channels = ?self.channels, "redis subscription failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RESUBSCRIBE_BACKOFF.1);
                }
                continue;
            };
            let taken = match take_messages(&mut conn.buf, out, max) {
                Ok(0) => conn.fill().await.map(|()| 0),
                taken => taken.map_err(PubSubError::from),
            };
            match taken {
                Ok(0) => {}
                Ok(n) => return n,
                Err(e) => {
                    tracing::warn!(error = %e, channels = ?self.channels, "redis subscription lost");
                    self.conn = None;
                    self.live.send_replace(false);
                }
            }
        }
    }

    async fn try_subscribe(&mut self) -> Result<(), PubSubError> {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::open(&self.target, &self.channels))
            .await
            .map_err(|_| PubSubError::ConnectTimeout)??;
        self.conn = Some(conn);
        self.live.send_replace(true);
        self.epoch.send_modify(|n| *n += 1);
        tracing::info!(channels = ?self.channels, "redis subscription established");
        Ok(())
    }
}

/// An established, subscribed connection and its read buffer.
struct Connection {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// When the last byte arrived; a probe is due [`PROBE_AFTER`] later.
    last_read: Instant,
    probed: bool,
}

impl Connection {
    /// Connects, authenticates when the URL has a password, and subscribes to `channels`,
    /// returning once Redis has confirmed every channel.
    async fn open(target: &Target, channels: &[String]) -> Result<Connection, PubSubError> {
        let io: Box<dyn Io> = match &target.addr {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            ConnectionAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            other => return Err(PubSubError::Unsupported(format!("{other:?}"))),
        };
        let mut conn =
            Connection { io, buf: BytesMut::with_capacity(READ_CHUNK), last_read: Instant::now(), probed: false };
        let mut request = Vec::new();
        if let Some(password) = &target.password {
            let auth = ["AUTH"].into_iter().chain(target.username.as_deref()).chain([password.as_str()]);
            encode_command(&mut request, auth);
        }
        encode_command(&mut request, ["SUBSCRIBE"].into_iter().chain(channels.iter().map(String::as_str)));
        conn.io.write_all(&request).await?;
        let mut confirmed = 0;
        while confirmed < channels.len() {
            let Some((value, len)) = parse(&conn.buf, 0)? else {
                conn.fill().await?;
                continue;
            };
            match &value {
                Value::Error(range) => return Err(ReplyError::Refused(text(&conn.buf[range.clone()])).into()),
                Value::Array(items) if bulk_is(&conn.buf, items.first(), b"subscribe") => confirmed += 1,
                _ => {} // +OK of AUTH
            }
            let _ = conn.buf.split_to(len);
        }
        Ok(conn)
    }

    /// Reads what Redis sent next, probing the connection when it has been silent.
    async fn fill(&mut self) -> Result<(), PubSubError> {
        loop {
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                self.buf.reserve(self.buf.len().max(READ_CHUNK));
            }
            let deadline = self.last_read + if self.probed { 2 * PROBE_AFTER } else { PROBE_AFTER };
            tokio::select! {
                read = self.io.read_buf(&mut self.buf) => {
                    if read? == 0 {
                        return Err(PubSubError::Closed);
                    }
                    self.last_read = Instant::now();
                    self.probed = false;
                    return Ok(());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if self.probed {
                        return Err(PubSubError::Dead);
                    }
                    self.probed = true;
                    self.io.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
                }
            }
        }
    }
}

/// Moves the complete `message` pushes at the front of `buf` (bytes read from a subscribed
/// connection) into `out`, up to `max`, and returns how many; payloads are slices of `buf`'s
/// memory, not copies. Other pushes (pong, subscribe confirmations) are consumed and skipped;
/// an incomplete reply stays in `buf` for the next read.
pub fn take_messages(buf: &mut BytesMut, out: &mut Vec<PubSubMessage>, max: usize) -> Result<usize, ReplyError> {
    let mut taken = 0;
    while taken < max {
        let Some((value, len)) = parse(buf, 0)? else { break };
        let frame = buf.split_to(len).freeze();
        match value {
            Value::Array(items) if items.len() == 3 && bulk_is(&frame, items.first(), b"message") => {
                let (Value::Bulk(channel), Value::Bulk(payload)) = (&items[1], &items[2]) else {
                    return Err(ReplyError::Malformed("message without channel or payload"));
                };
                out.push(PubSubMessage {
                    channel: text(&frame[channel.clone()]),
                    payload: frame.slice(payload.clone()),
                });
                taken += 1;
            }
            Value::Error(range) => return Err(ReplyError::Refused(text(&frame[range]))),
            _ => {}
        }
    }
    if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
        *buf = BytesMut::with_capacity(READ_CHUNK);
    }
    Ok(taken)
}

/// A parsed RESP2 value; strings are byte ranges of the buffer it was parsed from.
#[derive(Debug, PartialEq)]
enum Value {
    Bulk(Range<usize>),
    Simple(Range<usize>),
    Error(Range<usize>),
    Integer,
    Nil,
    Array(Vec<Value>),
}

/// Parses one value at `buf[at..]`: `Ok(None)` when it is not complete yet, else the value
/// and the position just past it.
fn parse(buf: &[u8], at: usize) -> Result<Option<(Value, usize)>, ReplyError> {
    let Some(line_end) = find_crlf(buf, at + 1) else {
        return Ok(None);
    };
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let line = at + 1..line_end;
    let next = line_end + 2;
    match kind {
        b'+' => Ok(Some((Value::Simple(line), next))),
        b'-' => Ok(Some((Value::Error(line), next))),
        b':' => {
            number(&buf[line])?;
            Ok(Some((Value::Integer, next)))
        }
        b'$' => {
            let Some(len) = length(number(&buf[line])?, MAX_BULK)? else {
                return Ok(Some((Value::Nil, next)));
            };
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            if &buf[next + len..next + len + 2] != b"\r\n" {
                return Err(ReplyError::Malformed("bulk string not followed by CRLF"));
            }
            Ok(Some((Value::Bulk(next..next + len), next + len + 2)))
        }
        b'*' => {
            let Some(len) = length(number(&buf[line])?, MAX_ARRAY)? else {
                return Ok(Some((Value::Nil, next)));
            };
            let (mut items, mut pos) = (Vec::with_capacity(len), next);
            for _ in 0..len {
                let Some((item, after)) = parse(buf, pos)? else {
                    return Ok(None);
                };
                if matches!(item, Value::Array(_)) {
                    return Err(ReplyError::Malformed("nested array"));
                }
                items.push(item);
                pos = after;
            }
            Ok(Some((Value::Array(items), pos)))
        }
        _ => Err(ReplyError::Malformed("unknown reply type")),
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    rest.windows(2).position(|w| w == b"\r\n").map(|p| from + p)
}

fn number(digits: &[u8]) -> Result<i64, ReplyError> {
    std::str::from_utf8(digits).ok().and_then(|s| s.parse().ok()).ok_or(ReplyError::Malformed("bad number"))
}

/// A length field: `None` for -1 (nil), an error when negative otherwise or over `max`.
fn length(n: i64, max: usize) -> Result<Option<usize>, ReplyError> {
    match n {
        -1 => Ok(None),
        n if n < 0 => Err(ReplyError::Malformed("negative length")),
        n => usize::try_from(n).ok().filter(|&n| n <= max).map(Some).ok_or(ReplyError::Malformed("length too large")),
    }
}

fn bulk_is(buf: &[u8], value: Option<&Value>, want: &[u8]) -> bool {
    matches!(value, Some(Value::Bulk(range)) if buf[range.clone()].eq_ignore_ascii_case(want))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Appends a command as a RESP array of bulk strings.
fn encode_command<'a>(out: &mut Vec<u8>, args: impl Iterator<Item = &'a str> + Clone) {
    out.extend_from_slice(format!("*{}\r\n", args.clone().count()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input, and the first value parsed from it with the position just past it.
    type Case = (&'static [u8], Option<(Value, usize)>);

    #[test]
    fn parses_the_replies_a_subscriber_sees() {
        let cases: &[Case] = &[
            (b"+OK\r\n", Some((Value::Simple(1..3), 5))),
            (b"-ERR bad\r\n", Some((Value::Error(1..8), 10))),
            (b":3\r\n", Some((Value::Integer, 4))),
            (b"$-1\r\n", Some((Value::Nil, 5))),
            (b"$2\r\nhi\r\n", Some((Value::Bulk(4..6), 8))),
            (b"$0\r\n\r\n", Some((Value::Bulk(4..4), 6))),
            (
                b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
                Some((Value::Array(vec![Value::Bulk(8..12), Value::Bulk(18..18)]), 20)),
            ),
            // incomplete at every cut
            (b"", None),
            (b"+OK", None),
            (b"$5\r\nhel", None),
            (b"$5\r\nhello\r", None),
            (b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n", None),
        ];
        for (input, want) in cases {
            assert_eq!(&parse(input, 0).unwrap(), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn corrupt_replies_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            b"?x\r\n",
            b"$abc\r\n",
            b"$-5\r\n",
            b"$99999999999999999999\r\n",
            b"$600000000\r\n",
            b"$2\r\nhiXX",
            b"*1000\r\n",
            b"*1\r\n*1\r\n:1\r\n",
            b":\r\n",
        ];
        for input in cases {
            assert!(parse(input, 0).is_err(), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn takes_complete_messages_in_order_and_skips_other_pushes() {
        let stream = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$3\r\none\r\n\
                       *2\r\n$4\r\npong\r\n$0\r\n\r\n\
                       *3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
                       *3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$0\r\n\r\n\
                       *3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nthr";
        let mut buf = BytesMut::from(&stream[..]);
        let mut out = Vec::new();
        assert_eq!(take_messages(&mut buf, &mut out, 10).unwrap(), 2);
        let got: Vec<(&str, &[u8])> = out.iter().map(|m| (m.channel.as_str(), &m.payload[..])).collect();
        assert_eq!(got, [("a", &b"one"[..]), ("b", &b""[..])]);
        // The incomplete third message stays buffered until the rest arrives.
        buf.extend_from_slice(b"ee\r\n");
        assert_eq!(take_messages(&mut buf, &mut out, 10).unwrap(), 1);
        assert_eq!(&out[2].payload[..], b"three");
        assert!(buf.is_empty());
    }

    #[test]
    fn takes_at_most_max_and_keeps_the_rest() {
        let one = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n";
        let mut buf = BytesMut::from(&one.repeat(3)[..]);
        let mut out = Vec::new();
        assert_eq!(take_messages(&mut buf, &mut out, 2).unwrap(), 2);
        assert_eq!(take_messages(&mut buf, &mut out, 2).unwrap(), 1);
        assert_eq!(take_messages(&mut buf, &mut out, 2).unwrap(), 0);
    }

    #[test]
    fn an_error_reply_or_a_malformed_message_is_an_error() {
        let cases: &[(&[u8], ReplyError)] = &[
            (b"-NOAUTH Authentication required.\r\n", ReplyError::Refused("NOAUTH Authentication required.".into())),
            (b"*3\r\n$7\r\nmessage\r\n:1\r\n$1\r\nx\r\n", ReplyError::Malformed("message without channel or payload")),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            assert_eq!(take_messages(&mut BytesMut::from(*input), &mut out, 10).unwrap_err(), *want);
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, ["SUBSCRIBE", "a b", ""].into_iter());
        assert_eq!(out, b"*3\r\n$9\r\nSUBSCRIBE\r\n$3\r\na b\r\n$0\r\n\r\n");
    }
}
