//! Accepting sockets and each socket's life: binding the listen address, the accept loop,
//! and the connection task from the TLS handshake to the last presence update.
//!
//! Everything before the `101` answer ([`http`](super::http)) happens in a short-lived part
//! of the connection's task, bounded by [`HANDSHAKE_TIMEOUT`]; its buffers are gone before
//! the socket becomes long-lived. Then the socket is registered, announced online, served
//! ([`connection`]) until it closes, and announced offline.

use super::config::HANDSHAKE_TIMEOUT;
use super::connection::{self, Conn};
use super::http::{self, Admitted, Handoff, Upgrade};
use super::{Node, api, presence, resume};
use crate::durable::Resume;
use bytes::Bytes;
use rustls::ServerConnection;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Pending connections the kernel queues before `accept` (bursts of thousands of connects).
const LISTEN_BACKLOG: u32 = 4096;
/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listening socket on `addr`, with `SO_REUSEADDR` (a restarted node must not wait for
/// its old connections' `TIME_WAIT`) and a backlog for bursts of connects.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts sockets until shutdown, each served by its own task running `serve` (`handle`
/// for the node's listener).
pub(crate) async fn run<F, Fut>(node: Arc<Node>, listener: TcpListener, serve: F)
where
    F: Fn(Arc<Node>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = node.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                node.connections.spawn(serve(node.clone(), stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One socket of the node's listener, from its first byte to its last presence update.
pub(super) async fn handle(node: Arc<Node>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    // Every step but `serve` is boxed: a task's future is as large as its largest state,
    // and only `serve` lasts; the handshake's buffers and Redis futures must not. Mind its
    // size (736 bytes now): the task is allocated in one of jemalloc's size classes, and
    // once 16 bytes more (776 → 792) took idle RSS from 1.61 to 1.77 KiB per connection.
    let accepted = async {
        let (stream, session, upgrade) = accept(&node, stream).await?;
        Some(register(&node, stream, session, upgrade))
    };
    let (conn, leftover, resume) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(accepted)).await {
        Ok(Some(registered)) => registered,
        Ok(None) => return,
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    if node.shutdown.is_cancelled() {
        conn.close(connection::CloseReason::Shutdown);
    }
    node.metrics.connected();
    tracing::debug!(conn = conn.id, client = conn.client_id, %peer, "connected");
    Box::pin(online(&node, &conn, resume)).await;
    let reason = connection::serve(&node, &conn, &leftover).await;
    node.registry.remove(&conn);
    Box::pin(presence::offline(&node, &conn)).await;
    node.metrics.disconnected(reason);
    tracing::debug!(conn = conn.id, client = conn.client_id, ?reason, "disconnected");
}

/// The socket of an accepted upgrade, registered in the places its upgrade reserved; the
/// bytes read past its request head; and its resume, for a durable socket.
fn register(
    node: &Node,
    stream: TcpStream,
    session: Option<ServerConnection>,
    upgrade: Upgrade<'_>,
) -> (Arc<Conn>, Vec<u8>, Option<Resume>) {
    let id = node.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let Upgrade { admitted: Admitted { json, client_id }, place, leftover, resume } = upgrade;
    let durable = resume.is_some();
    let conn = Arc::new(Conn::new(id, client_id, Bytes::from(json), stream, session, durable, node.now_ms()));
    node.registry.insert(place, conn.clone());
    (conn, leftover, resume)
}

/// Announces the socket online, then hands a durable socket to the dispatcher for its
/// hello (see `resume`).
async fn online(node: &Node, conn: &Arc<Conn>, resume: Option<Resume>) {
    presence::online(node, conn).await;
    if let Some(resume) = resume {
        resume::request(node, conn, resume).await;
    }
}

/// The TLS handshake when configured, then the HTTP upgrade; the socket, its TLS session
/// and the upgrade when it is now a WebSocket. An API connection goes to a task of its own
/// (it may be kept alive far beyond the handshake timeout).
async fn accept(node: &Arc<Node>, mut stream: TcpStream) -> Option<(TcpStream, Option<ServerConnection>, Upgrade<'_>)> {
    let Some(config) = &node.config.tls else {
        return match http::handshake(node, &mut stream).await? {
            Handoff::WebSocket(upgrade) => Some((stream, None, upgrade)),
            Handoff::Api(read) => to_api(node, stream, read),
        };
    };
    let mut tls = TlsAcceptor::from(config.clone()).accept(stream).await.ok()?;
    let upgrade = match http::handshake(node, &mut tls).await? {
        Handoff::WebSocket(upgrade) => upgrade,
        Handoff::Api(read) => return to_api(node, tls, read),
    };
    tls.flush().await.ok()?;
    let (stream, session) = tls.into_inner();
    Some((stream, Some(session), upgrade))
}

/// Hands an API connection to a task of its own; nothing is left for `accept`'s caller.
fn to_api<S, T>(node: &Arc<Node>, stream: S, read: Vec<u8>) -> Option<T>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    node.connections.spawn(api::serve(node.clone(), stream, read));
    None
}
