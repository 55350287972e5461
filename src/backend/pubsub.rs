//! A Redis subscription read by the task that consumes it: the subscription's life (its
//! reconnect loop), its connection, and the idle probe; the bytes on the wire are
//! [`super::resp`]'s.
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
//! arrives within [`PROBE_AFTER`] of the probe, since a half-open TCP connection never reports
//! itself. Both clocks start when this side looks: a node whose thread was busy for longer
//! (53 nodes fanning a broadcast to a million out on 2 cores) must not take its own silence
//! for Redis's, nor give the probe's answer no time to come back.

use super::PubSubMessage;
use super::resp::{self, ReplyError};
use bytes::BytesMut;
use redis::{ConnectionAddr, ConnectionInfo};
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
/// An empty read buffer whose capacity has grown beyond this (for one large message) is
/// given back and replaced by a fresh [`READ_CHUNK`].
const SHRINK_ABOVE: usize = 4 * READ_CHUNK;

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
            let taken = match conn.take(out, max) {
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
    /// When the probe went out, if one is waiting for an answer.
    probed: Option<Instant>,
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
            Connection { io, buf: BytesMut::with_capacity(READ_CHUNK), last_read: Instant::now(), probed: None };
        let mut request = Vec::new();
        if let Some(password) = &target.password {
            let auth = ["AUTH"].into_iter().chain(target.username.as_deref()).chain([password.as_str()]);
            resp::encode_command(&mut request, auth);
        }
        resp::encode_command(&mut request, ["SUBSCRIBE"].into_iter().chain(channels.iter().map(String::as_str)));
        conn.io.write_all(&request).await?;
        let mut unconfirmed = channels.len();
        loop {
            unconfirmed -= resp::take_confirmations(&mut conn.buf, unconfirmed)?;
            if unconfirmed == 0 {
                return Ok(conn);
            }
            conn.fill().await?;
        }
    }

    /// Takes the complete messages already read (see [`resp::take_messages`]), then gives
    /// back a read buffer that grew for a large message once it is empty.
    fn take(&mut self, out: &mut Vec<PubSubMessage>, max: usize) -> Result<usize, ReplyError> {
        let taken = resp::take_messages(&mut self.buf, out, max)?;
        if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
            self.buf = BytesMut::with_capacity(READ_CHUNK);
        }
        Ok(taken)
    }

    /// Reads what Redis sent next, probing the connection when it has been silent.
    async fn fill(&mut self) -> Result<(), PubSubError> {
        loop {
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                self.buf.reserve(self.buf.len().max(READ_CHUNK));
            }
            let deadline = self.probed.unwrap_or(self.last_read) + PROBE_AFTER;
            tokio::select! {
                // Reads first: after a busy spell both are ready, and the bytes waiting in
                // the kernel prove the connection alive.
                biased;
                read = self.io.read_buf(&mut self.buf) => {
                    if read? == 0 {
                        return Err(PubSubError::Closed);
                    }
                    self.last_read = Instant::now();
                    self.probed = None;
                    return Ok(());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if self.probed.is_some() {
                        return Err(PubSubError::Dead);
                    }
                    self.io.write_all(resp::PING).await?;
                    self.probed = Some(Instant::now());
                }
            }
        }
    }
}
