//! One accepted WebSocket: its shared state ([`Conn`]) and the task that serves it.
//!
//! Writes do not go through the connection's task. The dispatcher (and the heartbeat) call
//! [`Conn::send`], which writes straight to the socket when nothing is queued, and queues
//! only what the kernel did not take; the task then flushes the queue when the socket is
//! writable. So a delivery costs no task wake-up and an idle socket holds no buffer.
//! The queue is bounded by bytes: a client that cannot keep up is closed (1008) rather
//! than allowed to grow the node's memory, and [`Conn::send`] tells its caller how many
//! frames that cost (the node's queue-drop counter). The queue itself is an [`Outbox`].
//!
//! The task reads into a 2 KiB buffer on the thread's stack (outside the task's future),
//! answers pings and closes, enforces the frame limit, and ends with a close handshake
//! bounded by [`CLOSE_LINGER`].

use super::outbox::{Outbox, Sink};
use super::websocket::{self, FrameReader, Inbound, close_code};
use super::{Node, socket_read, tls};
use crate::protocol::ClientId;
use bytes::Bytes;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Bytes read per `read` call, into a buffer on the thread's stack.
const READ_CHUNK: usize = 2048;
/// Reads per wake-up before the task yields (a flooding client cannot starve others).
const READS_PER_WAKE: usize = 16;
/// How long a closing socket may take to flush its close frame and see the peer's reply.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why a socket closed; decides the close frame sent and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client sent a close frame or closed its TCP connection.
    PeerClosed,
    /// The business side asked (`__FreeIM__(ForceOffline)`): 1001 `disconnect`.
    ForceOffline,
    /// Its outgoing queue went over the limit: 1008 `slow consumer`.
    SlowConsumer,
    /// No read within the pong timeout after a ping; no frame is sent.
    DeadPeer,
    /// The node is shutting down: 1001 `shutdown`.
    Shutdown,
    /// The client broke the protocol or sent a frame over the size limit.
    Violation(u16, &'static str),
    /// The client sent more frames than `--max-frames-per-sec`: 1008 `too many frames`.
    FrameRate,
    /// The socket failed.
    IoError,
    /// A durable socket whose node lost its log (a new epoch): 1001 `log reset`, so that it
    /// resumes and learns it was not recovered.
    LogReset,
}

impl CloseReason {
    fn frame(self) -> Option<Bytes> {
        match self {
            CloseReason::ForceOffline => Some(websocket::close_frame(close_code::GOING_AWAY, "disconnect")),
            CloseReason::SlowConsumer => Some(websocket::close_frame(close_code::POLICY, "slow consumer")),
            CloseReason::Shutdown => Some(websocket::close_frame(close_code::GOING_AWAY, "shutdown")),
            CloseReason::Violation(code, why) => Some(websocket::close_frame(code, why)),
            CloseReason::FrameRate => Some(websocket::close_frame(close_code::POLICY, "too many frames")),
            CloseReason::LogReset => Some(websocket::close_frame(close_code::GOING_AWAY, "log reset")),
            CloseReason::PeerClosed | CloseReason::DeadPeer | CloseReason::IoError => None,
        }
    }
}

/// A connected socket, shared by the registry, the dispatcher and its own task.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Unique per node, for logs.
    pub(crate) id: u64,
    /// The client this socket belongs to.
    pub(crate) client_id: ClientId,
    /// The token value JSON exactly as stored, published again with the offline event.
    pub(crate) token_value: Bytes,
    stream: TcpStream,
    /// The TLS session for `wss://`; `None` for plain `ws://`. Locked after `out`. Boxed:
    /// a session is ~1.2 KB, which a plain socket must not carry inline.
    tls: Option<Box<Mutex<rustls::ServerConnection>>>,
    out: Mutex<Outgoing>,
    /// Asks the task to flush the queue or to close.
    wake: Notify,
    /// Node-clock milliseconds of the last byte read, and of the last ping sent (see
    /// `heartbeat`).
    last_read: AtomicU64,
    ping_sent: AtomicU64,
    /// For a durable socket (`resume`), the offset of the node's log it has been told
    /// everything up to; `None` for a FreeIM socket. Boxed: FreeIM sockets carry 8 bytes.
    durable: Option<Box<AtomicU64>>,
}

/// A durable socket's position before its hello: the dispatcher sends it nothing yet.
const NOT_STARTED: u64 = u64::MAX;

/// What a socket gets from the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A FreeIM socket: the content bytes as the whole frame.
    FreeIm,
    /// A durable socket waiting for its hello: nothing yet.
    Starting,
    /// A durable socket after its hello, told everything up to this offset.
    Durable(u64),
}

/// What the socket is to write, under one lock so that no frame is queued after the close
/// frame.
#[derive(Debug, Default)]
struct Outgoing {
    outbox: Outbox,
    /// Set once: no more frames are accepted after it.
    closing: Option<CloseReason>,
}

impl Conn {
    pub(crate) fn new(
        id: u64,
        client_id: ClientId,
        token_value: Bytes,
        stream: TcpStream,
        tls: Option<rustls::ServerConnection>,
        durable: bool,
        now_ms: u64,
    ) -> Self {
        let tls = tls.map(|mut session| {
            session.set_buffer_limit(Some(tls::SESSION_BUFFER));
            Box::new(Mutex::new(session))
        });
        Conn {
            id,
            client_id,
            token_value,
            stream,
            tls,
            out: Mutex::default(),
            wake: Notify::new(),
            last_read: AtomicU64::new(now_ms),
            ping_sent: AtomicU64::new(now_ms),
            durable: durable.then(|| Box::new(AtomicU64::new(NOT_STARTED))),
        }
    }

    /// What this socket gets from the dispatcher.
    pub(crate) fn kind(&self) -> Kind {
        match self.durable.as_deref().map(|told| told.load(Ordering::Acquire)) {
            None => Kind::FreeIm,
            Some(NOT_STARTED) => Kind::Starting,
            Some(told) => Kind::Durable(told),
        }
    }

    /// Records that a durable socket has been told everything up to `offset` (its hello,
    /// a message or a position frame); no-op on a FreeIM socket.
    pub(crate) fn told(&self, offset: u64) {
        if let Some(told) = &self.durable {
            told.store(offset, Ordering::Release);
        }
    }

    fn outgoing(&self) -> MutexGuard<'_, Outgoing> {
        lock(&self.out)
    }

    /// Sends `frames` in order: written now as far as the kernel takes them, the rest
    /// queued for the task. Over `max_queue` bytes queued, the socket is closed as a slow
    /// consumer. Frames sent after the socket started closing are dropped.
    ///
    /// Returns the frames lost to an overflowing queue: those discarded when it overflows,
    /// and those offered afterwards while the socket closes as a slow consumer.
    #[must_use]
    pub(crate) fn send(&self, frames: &[Bytes], max_queue: usize) -> usize {
        let mut out = self.outgoing();
        if let Some(reason) = out.closing {
            return if reason == CloseReason::SlowConsumer { frames.len() } else { 0 };
        }
        if out.outbox.offer(frames, self).is_err() {
            self.begin_close(&mut out, CloseReason::IoError);
            return 0;
        }
        if let Some(overflow) = out.outbox.overflow(max_queue) {
            let queued = overflow.queued;
            tracing::warn!(conn = self.id, client = self.client_id, queued, "slow consumer: closing");
            self.begin_close(&mut out, CloseReason::SlowConsumer);
            return overflow.discarded;
        }
        if !out.outbox.is_empty() {
            self.wake.notify_one();
        }
        0
    }

    /// Starts closing the socket for `reason` (the first reason wins).
    pub(crate) fn close(&self, reason: CloseReason) {
        self.begin_close(&mut self.outgoing(), reason);
    }

    fn begin_close(&self, out: &mut Outgoing, reason: CloseReason) {
        if out.closing.is_some() {
            return;
        }
        out.closing = Some(reason);
        if let Some(frame) = reason.frame() {
            out.outbox.queue(frame);
        }
        self.wake.notify_one();
    }

    /// Writes the TLS records still waiting in the session; `Ok(true)` when none are left
    /// (always, on a plain socket).
    fn drain_tls(&self) -> io::Result<bool> {
        match &self.tls {
            None => Ok(true),
            Some(session) => tls::drain(&mut lock(session), &self.stream),
        }
    }

    /// Writes what is queued; `Ok(true)` when nothing is left to write.
    fn flush(&self) -> io::Result<bool> {
        let mut out = self.outgoing();
        if !self.drain_tls()? {
            return Ok(false);
        }
        if out.outbox.is_empty() {
            return Ok(true);
        }
        Ok(out.outbox.flush(self)? && self.drain_tls()?)
    }

    fn closing(&self) -> Option<CloseReason> {
        self.outgoing().closing
    }

    /// Node-clock milliseconds of the last byte read.
    pub(crate) fn last_read_ms(&self) -> u64 {
        self.last_read.load(Ordering::Relaxed)
    }

    /// Node-clock milliseconds of the last ping sent.
    pub(crate) fn ping_sent_ms(&self) -> u64 {
        self.ping_sent.load(Ordering::Relaxed)
    }

    /// Sends a ping now (`now_ms` on the node clock), whatever the queue holds; returns
    /// the frames dropped, as [`Conn::send`].
    #[must_use]
    pub(crate) fn ping(&self, now_ms: u64) -> usize {
        self.ping_sent.store(now_ms, Ordering::Relaxed);
        self.send(&[websocket::ping_frame()], usize::MAX)
    }
}

/// The socket itself: through the TLS session, if any.
impl Sink for &Conn {
    fn write_now<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> io::Result<usize> {
        match &self.tls {
            None => (&self.stream).write_now(frames),
            Some(session) => tls::write(&mut lock(session), &self.stream, frames),
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (each update is
/// applied whole), so a poisoned lock is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves `conn` until it closes; returns why. `leftover` holds bytes read past the
/// upgrade request.
pub(crate) async fn serve(node: &Node, conn: &Conn, leftover: &[u8]) -> CloseReason {
    let mut reader = FrameReader::default();
    let mut inbound = Vec::new();
    let mut rate = RateWindow::default();
    reader.feed(leftover, &mut inbound);
    if let Some(session) = &conn.tls {
        // Bytes decrypted during the handshake but not read as part of the request head.
        let _ = tls::decrypted(&mut lock(session), &mut |plain: &[u8]| reader.feed(plain, &mut inbound));
    }
    handle_inbound(node, conn, &mut inbound);
    loop {
        let pending = !conn.flush().unwrap_or(true);
        if let Some(reason) = conn.closing() {
            // Boxed: the linger state exists only while closing, not in every idle future.
            Box::pin(linger(conn, reason)).await;
            return reason;
        }
        tokio::select! {
            _ = conn.wake.notified() => {}
            _ = conn.stream.writable(), if pending => {}
            ready = conn.stream.readable() => {
                if ready.is_err() {
                    conn.close(CloseReason::IoError);
                    continue;
                }
                let now = node.now_ms();
                match read_available(conn, &mut reader, &mut inbound, now) {
                    Ok(true) if rate.exceeded(now, reader.frames(), node.config.max_frames_per_sec) => {
                        tracing::warn!(conn = conn.id, client = conn.client_id, "closing: too many frames (--max-frames-per-sec)");
                        conn.close(CloseReason::FrameRate);
                    }
                    Ok(true) => handle_inbound(node, conn, &mut inbound),
                    Ok(false) => conn.close(CloseReason::PeerClosed),
                    Err(_) => conn.close(CloseReason::IoError),
                }
            }
        }
    }
}

/// Frames a socket sent in the current one-second window.
#[derive(Debug, Default)]
struct RateWindow {
    start_ms: u64,
    frames_at_start: u64,
}

impl RateWindow {
    /// Whether `frames` (the running total) exceeds `limit` within the window at `now_ms`.
    fn exceeded(&mut self, now_ms: u64, frames: u64, limit: u32) -> bool {
        if now_ms.saturating_sub(self.start_ms) >= 1000 {
            (self.start_ms, self.frames_at_start) = (now_ms, frames);
            return false;
        }
        frames - self.frames_at_start > u64::from(limit)
    }
}

fn handle_inbound(node: &Node, conn: &Conn, inbound: &mut Vec<Inbound>) {
    let mut dropped = 0;
    for event in inbound.drain(..) {
        match event {
            Inbound::Ping(pong) => dropped += conn.send(&[pong], node.config.max_queue_bytes),
            Inbound::Close(reply) => {
                dropped += conn.send(&[reply], usize::MAX);
                conn.close(CloseReason::PeerClosed);
            }
            Inbound::Violation(code, why) => {
                tracing::info!(conn = conn.id, client = conn.client_id, code, why, "closing on bad frame");
                conn.close(CloseReason::Violation(code, why));
            }
        }
    }
    node.metrics.queue_dropped(dropped);
}

/// Reads what is available; `Ok(false)` at end of stream.
fn read_available(conn: &Conn, reader: &mut FrameReader, inbound: &mut Vec<Inbound>, now_ms: u64) -> io::Result<bool> {
    let mut buf = [0u8; READ_CHUNK];
    for _ in 0..READS_PER_WAKE {
        match socket_read::try_read(&conn.stream, &mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                conn.last_read.store(now_ms, Ordering::Relaxed);
                if let Some(session) = &conn.tls {
                    let open = tls::read(&mut lock(session), &buf[..n], |plain| reader.feed(plain, inbound))?;
                    // Handshake messages and alerts may need an answer.
                    conn.wake.notify_one();
                    if !open {
                        return Ok(false);
                    }
                } else {
                    reader.feed(&buf[..n], inbound);
                }
                if n < buf.len() || !inbound.is_empty() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The end of a close: flush the close frame, send FIN, and wait (bounded) for the peer to
/// close its side, so the kernel ends the connection cleanly instead of with a reset.
async fn linger(conn: &Conn, reason: CloseReason) {
    if matches!(reason, CloseReason::DeadPeer | CloseReason::IoError) {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while !conn.flush().unwrap_or(true) {
            if conn.stream.writable().await.is_err() {
                return;
            }
        }
        if let Some(session) = &conn.tls {
            lock(session).send_close_notify();
            let _ = conn.drain_tls();
        }
        let _ = socket2::SockRef::from(&conn.stream).shutdown(std::net::Shutdown::Write);
        while conn.stream.readable().await.is_ok() && !discard_available(conn) {}
    })
    .await;
}

/// Reads and drops what is available; `true` once the peer has closed or the socket failed.
fn discard_available(conn: &Conn) -> bool {
    let mut buf = [0u8; READ_CHUNK];
    loop {
        match socket_read::try_read(&conn.stream, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}
