//! The raw baseline (`freeim bench raw-server`, hidden): the least a push server can do.
//!
//! It upgrades any `GET …?id=N` without a token, keeps its sockets in one map, and writes
//! the frames the bench sends on a control socket straight to them: no Redis, no presence,
//! no channels, no routing. It uses the gateway's own code ([`freeim::internals`]): its
//! listen socket, request head reader, frames, and socket queue ([`Outbox`], so the same
//! write technique: one frame encoded once and shared, a batch's frames to one socket in
//! one vectored write, a queue only for what the kernel did not take, here unbounded). So
//! the difference between it and a gateway node is what our protocol work costs.
//!
//! Control frames (little-endian): `u32 length`, then `u8 kind` (0: to every socket,
//! 1: to the sockets of client `target`), `i64 target`, and the frame payload.

use bytes::Bytes;
use freeim::internals::{Outbox, bind, read_head, text_frame, upgrade_response};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Control kind: a frame for every socket.
pub const KIND_ALL: u8 = 0;
/// Control kind: a frame for one client's sockets.
pub const KIND_ONE: u8 = 1;
/// Bytes of a control header after the length: kind and target.
const HEADER: usize = 9;
/// Bytes read per control read (a burst of commands is handled as one batch).
const CONTROL_READ: usize = 256 * 1024;
/// Bytes read per socket read, on the stack.
const READ_CHUNK: usize = 2048;

/// Flags of `freeim bench raw-server`.
#[derive(Debug, clap::Args)]
pub struct RawServerArgs {
    /// WebSocket address.
    #[arg(long)]
    listen: SocketAddr,
    /// Control address (the bench's publisher connects here).
    #[arg(long)]
    control: SocketAddr,
    /// Worker threads [default: one per core, as `freeim server`].
    #[arg(long, value_parser = crate::cli::server::positive)]
    threads: Option<usize>,
}

/// One control command, encoded.
pub fn command(kind: u8, target: i64, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((HEADER + payload.len()) as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&target.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A socket of the raw server.
struct RawConn {
    id: u64,
    stream: TcpStream,
    out: Mutex<Outbox>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    clients: Mutex<HashMap<i64, Vec<Arc<RawConn>>>>,
    next_id: AtomicU64,
}

/// Runs the raw server until killed.
pub fn run(args: RawServerArgs) -> anyhow::Result<()> {
    super::super::runtime(args.threads)?.block_on(async {
        let state = Arc::new(State::default());
        let ws = bind(args.listen)?;
        let control = bind(args.control)?;
        tokio::spawn(accept_control(state.clone(), control));
        loop {
            match ws.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(state.clone(), stream));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    })
}

async fn serve(state: Arc<State>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Some((client, key)) = Box::pin(upgrade(&mut stream)).await else { return };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    // Answer before registering (as the gateway does), so no frame can overtake the `101`.
    let response = upgrade_response(key.as_bytes());
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let conn = Arc::new(RawConn { id, stream, out: Mutex::default(), wake: Notify::new() });
    state.clients.lock().unwrap_or_else(|p| p.into_inner()).entry(client).or_default().push(conn.clone());
    run_conn(&conn).await;
    let mut clients = state.clients.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(conns) = clients.get_mut(&client) {
        conns.retain(|c| c.id != id);
        if conns.is_empty() {
            clients.remove(&client);
        }
    }
}

/// Reads the request head; returns the `id` query parameter and the WebSocket key.
async fn upgrade(stream: &mut TcpStream) -> Option<(i64, String)> {
    let head = read_head(stream).await.ok()?.head;
    let head = std::str::from_utf8(&head).ok()?;
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?;
    let id = target.split_once('?')?.1.split('&').find_map(|p| p.strip_prefix("id="))?.parse().ok()?;
    let key = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_owned())
    })?;
    Some((id, key))
}

/// Discards what the client sends and flushes the queue when the socket is writable.
async fn run_conn(conn: &RawConn) {
    loop {
        let pending = !conn.flush();
        tokio::select! {
            _ = conn.wake.notified() => {}
            _ = conn.stream.writable(), if pending => {}
            ready = conn.stream.readable() => {
                if ready.is_err() {
                    return;
                }
                let mut buf = [0u8; READ_CHUNK];
                match freeim::internals::try_read(&conn.stream, &mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

impl RawConn {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `frames` now as far as the kernel takes them; queues the rest. Frames that
    /// meet a socket error are dropped.
    fn send(&self, frames: &[Bytes]) {
        let mut out = self.outbox();
        if out.offer(frames, &self.stream).is_ok() && !out.is_empty() {
            self.wake.notify_one();
        }
    }

    /// Writes what is queued; `true` when nothing is left (a failed socket's queue is
    /// dropped).
    fn flush(&self) -> bool {
        let mut out = self.outbox();
        out.flush(&self.stream).unwrap_or_else(|_| {
            out.clear();
            true
        })
    }
}

async fn accept_control(state: Arc<State>, listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(control(state.clone(), stream));
    }
}

/// Who a run of frames goes to.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Audience {
    All,
    One(i64),
}

/// Reads control commands; each read is one batch: consecutive frames for the same
/// audience go out together, one vectored write per socket.
async fn control(state: Arc<State>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(CONTROL_READ);
    loop {
        if buf.capacity() - buf.len() < CONTROL_READ / 2 {
            buf.reserve(CONTROL_READ);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut groups: Vec<(Audience, Vec<Bytes>)> = Vec::new();
        let mut used = 0;
        while buf.len() - used >= 4 {
            let len = u32::from_le_bytes([buf[used], buf[used + 1], buf[used + 2], buf[used + 3]]) as usize;
            if buf.len() - used - 4 < len || len < HEADER {
                break;
            }
            let body = &buf[used + 4..used + 4 + len];
            let mut target = [0u8; 8];
            target.copy_from_slice(&body[1..HEADER]);
            let audience = if body[0] == KIND_ALL { Audience::All } else { Audience::One(i64::from_le_bytes(target)) };
            let frame = text_frame(&body[HEADER..]);
            match groups.last_mut() {
                Some((last, frames)) if *last == audience => frames.push(frame),
                _ => groups.push((audience, vec![frame])),
            }
            used += 4 + len;
        }
        buf.drain(..used);
        for (audience, frames) in groups {
            deliver(&state, audience, &frames);
        }
    }
}

fn deliver(state: &State, audience: Audience, frames: &[Bytes]) {
    let targets: Vec<Arc<RawConn>> = {
        let clients = state.clients.lock().unwrap_or_else(|p| p.into_inner());
        match audience {
            Audience::All => clients.values().flatten().cloned().collect(),
            Audience::One(id) => clients.get(&id).map(|c| c.to_vec()).unwrap_or_default(),
        }
    };
    for conn in targets {
        conn.send(frames);
    }
}

/// The bench's side of a control socket.
pub struct Control {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Control {
    /// Connects to a raw server's control address.
    pub async fn connect(addr: SocketAddr) -> io::Result<Control> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Control { stream, buf: Vec::with_capacity(64 * 1024) })
    }

    /// Queues a frame payload for every socket (`target` None) or one client's.
    pub fn push(&mut self, target: Option<i64>, payload: &[u8]) {
        let (kind, id) = target.map_or((KIND_ALL, 0), |id| (KIND_ONE, id));
        command(kind, id, payload, &mut self.buf);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.stream.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}
