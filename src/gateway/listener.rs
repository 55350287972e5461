//! Accepting sockets and the HTTP side of a connection: `/healthz`, `/metrics`, and the
//! WebSocket upgrade of `{path}?token=…` after the operator's limits and the token lookup.
//!
//! Everything before the `101` answer happens in a short-lived part of the connection's
//! task, bounded by [`HANDSHAKE_TIMEOUT`]; its buffers are gone before the socket becomes
//! long-lived. A request that is not a valid upgrade with a live token gets a plain HTTP
//! error and is closed: 400 (not an upgrade), 401 (token), 403 (origin), 404 (path),
//! 429 (sockets per client), 431 (head too large), 503 (node full, token store down).
//! The two socket limits reserve places in the registry rather than count the sockets
//! there, so upgrades arriving together cannot all pass (see `registry`).

use super::config::HANDSHAKE_TIMEOUT;
use super::connection::{self, Conn};
use super::metrics::Refusal;
use super::registry::{ClientReservation, Reservation};
use super::{Node, presence, websocket};
use crate::protocol::{self, ClientId, TokenValue};
use bytes::Bytes;
use rustls::ServerConnection;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Largest request head accepted (request line and headers).
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most headers parsed in a request head.
const MAX_HEADERS: usize = 32;
/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) async fn run(node: Arc<Node>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = node.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                node.connections.spawn(handle(node.clone(), stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// An accepted upgrade: who connected, its places on the node, and bytes read past the
/// request head.
struct Upgrade<'n> {
    admitted: Admitted,
    place: ClientReservation<'n>,
    leftover: Vec<u8>,
}

async fn handle(node: Arc<Node>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    // Every step but `serve` is boxed: a task's future is as large as its largest state,
    // and only `serve` lasts; the handshake's buffers and Redis futures must not. Mind its
    // size (736 bytes now): the task is allocated in one of jemalloc's size classes, and
    // once 16 bytes more (776 → 792) took idle RSS from 1.61 to 1.77 KiB per connection.
    let accepted = async {
        let (stream, session, upgrade) = accept(&node, stream).await?;
        Some(register(&node, stream, session, upgrade))
    };
    let (conn, leftover) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(accepted)).await {
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
    Box::pin(presence::online(&node, &conn)).await;
    let reason = connection::serve(&node, &conn, &leftover).await;
    node.registry.remove(&conn);
    Box::pin(presence::offline(&node, &conn)).await;
    node.metrics.disconnected(reason);
    tracing::debug!(conn = conn.id, client = conn.client_id, ?reason, "disconnected");
}

/// The socket of an accepted upgrade, registered in the places its upgrade reserved; and
/// the bytes read past its request head.
fn register(
    node: &Node,
    stream: TcpStream,
    session: Option<ServerConnection>,
    upgrade: Upgrade<'_>,
) -> (Arc<Conn>, Vec<u8>) {
    let id = node.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let Upgrade { admitted: Admitted { json, client_id }, place, leftover } = upgrade;
    let conn = Arc::new(Conn::new(id, client_id, Bytes::from(json), stream, session, node.now_ms()));
    node.registry.insert(place, conn.clone());
    (conn, leftover)
}

/// The TLS handshake when configured, then the HTTP upgrade; the socket, its TLS session
/// and the upgrade when it is now a WebSocket.
async fn accept(node: &Node, mut stream: TcpStream) -> Option<(TcpStream, Option<ServerConnection>, Upgrade<'_>)> {
    let Some(config) = &node.config.tls else {
        let upgrade = handshake(node, &mut stream).await?;
        return Some((stream, None, upgrade));
    };
    let mut tls = TlsAcceptor::from(config.clone()).accept(stream).await.ok()?;
    let upgrade = handshake(node, &mut tls).await?;
    tls.flush().await.ok()?;
    let (stream, session) = tls.into_inner();
    Some((stream, Some(session), upgrade))
}

/// Reads the request head and answers it; `Some` when the socket is now a WebSocket.
async fn handshake<'n, S: AsyncRead + AsyncWrite + Unpin>(node: &'n Node, stream: &mut S) -> Option<Upgrade<'n>> {
    let (head, leftover) = read_head(stream).await?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let answer = match request.parse(&head) {
        Ok(httparse::Status::Complete(_)) => route(node, &request).await,
        _ => Err(Reply::BadRequest("malformed HTTP request")),
    };
    match answer {
        Ok((key, admitted, place)) => {
            let response = websocket::upgrade_response(key.as_bytes());
            stream.write_all(response.as_bytes()).await.ok()?;
            Some(Upgrade { admitted, place, leftover })
        }
        Err(reply) => {
            let _ = stream.write_all(reply.render(node).as_bytes()).await;
            let _ = stream.shutdown().await;
            None
        }
    }
}

/// Reads until the end of the request head; `None` if the peer closes or it is too long
/// (then a 431 has been sent).
async fn read_head<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let leftover = buf.split_off(end + 4);
            return Some((buf, leftover));
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            let _ = stream
                .write_all(plain(431, "Request Header Fields Too Large", "request head too large").as_bytes())
                .await;
            return None;
        }
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A validated token: its raw JSON (published again with events) and client id.
struct Admitted {
    json: String,
    client_id: i64,
}

/// Every answer but the upgrade: errors, `/healthz` and `/metrics`.
enum Reply {
    BadRequest(&'static str),
    Unauthorized(&'static str),
    Forbidden(&'static str),
    NotFound,
    TooMany(&'static str),
    Unavailable(&'static str),
    Health,
    Metrics,
}

impl Reply {
    /// The HTTP answer. `/healthz` is 503 while the node-channel subscription is down.
    fn render(&self, node: &Node) -> String {
        match self {
            Reply::BadRequest(why) => plain(400, "Bad Request", why),
            Reply::Unauthorized(why) => plain(401, "Unauthorized", why),
            Reply::Forbidden(why) => plain(403, "Forbidden", why),
            Reply::NotFound => plain(404, "Not Found", "not found"),
            Reply::TooMany(why) => plain(429, "Too Many Requests", why),
            Reply::Unavailable(why) => plain(503, "Service Unavailable", why),
            Reply::Health if !*node.live.borrow() => plain(503, "Service Unavailable", "redis subscription down"),
            Reply::Health => plain(200, "OK", "ok"),
            Reply::Metrics => {
                let body = node.metrics.render(node.registry.len(), *node.live.borrow());
                response(200, "OK", "text/plain; version=0.0.4", &body)
            }
        }
    }
}

/// A plain-text answer whose body is `body` and a newline.
fn plain(code: u16, text: &str, body: &str) -> String {
    response(code, text, "text/plain; charset=utf-8", &format!("{body}\n"))
}

fn response(code: u16, text: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {text}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// What an accepted upgrade request gets: its key, its token's value, and its places.
type Accepted<'n, 'r> = (&'r str, Admitted, ClientReservation<'n>);

/// Decides what a request gets: the upgrade, or an answer.
async fn route<'n, 'r>(node: &'n Node, request: &httparse::Request<'_, 'r>) -> Result<Accepted<'n, 'r>, Reply> {
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/healthz" => return Err(Reply::Health),
        "/metrics" => return Err(Reply::Metrics),
        p if p != node.config.path => return Err(Reply::NotFound),
        _ => {}
    }
    let key = upgrade_key(node, request)?;
    // The node's place is taken before the token lookup, which a full node must not spend.
    let place = reserve_node(node)?;
    let token = query.split('&').find_map(|pair| pair.strip_prefix("token=")).unwrap_or("");
    let admitted = match token {
        "" => Err(Reply::Unauthorized("missing token")),
        t if !protocol::is_token_shaped(t) => Err(Reply::Unauthorized("invalid token")),
        t => admit(node, t).await,
    };
    if let Err(Reply::Unauthorized(_)) = admitted {
        node.metrics.refused(Refusal::Token);
    }
    let admitted = admitted?;
    let place = reserve_client(node, place, admitted.client_id)?;
    Ok((key, admitted, place))
}

/// The `Sec-WebSocket-Key` of a valid upgrade request from an allowed origin.
fn upgrade_key<'r>(node: &Node, request: &httparse::Request<'_, 'r>) -> Result<&'r str, Reply> {
    let header = |name: &str| {
        let found = request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name));
        found.and_then(|h| std::str::from_utf8(h.value).ok()).unwrap_or("")
    };
    let is_upgrade = request.method == Some("GET")
        && header("upgrade").eq_ignore_ascii_case("websocket")
        && header("connection").split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && header("sec-websocket-version") == "13";
    let key = header("sec-websocket-key");
    if !is_upgrade || key.is_empty() {
        return Err(Reply::BadRequest("expected a WebSocket upgrade (version 13)"));
    }
    let origin = header("origin");
    let allowed = &node.config.allowed_origins;
    if !origin.is_empty() && !allowed.is_empty() && !allowed.iter().any(|a| a == origin) {
        tracing::warn!(origin, "upgrade refused: origin not allowed");
        node.metrics.refused(Refusal::Origin);
        return Err(Reply::Forbidden("origin not allowed"));
    }
    Ok(key)
}

/// A place on the node, within `--max-connections`.
fn reserve_node(node: &Node) -> Result<Reservation<'_>, Reply> {
    node.registry.reserve(node.config.max_connections).ok_or_else(|| {
        tracing::warn!(limit = node.config.max_connections, "upgrade refused: node full (--max-connections)");
        node.metrics.refused(Refusal::NodeFull);
        Reply::Unavailable("node full")
    })
}

/// A place among `client_id`'s sockets, within `--max-sockets-per-client`.
fn reserve_client<'n>(
    node: &Node,
    place: Reservation<'n>,
    client_id: ClientId,
) -> Result<ClientReservation<'n>, Reply> {
    let limit = node.config.max_sockets_per_client;
    place.for_client(client_id, limit).ok_or_else(|| {
        tracing::warn!(client = client_id, limit, "upgrade refused: too many sockets (--max-sockets-per-client)");
        node.metrics.refused(Refusal::ClientFull);
        Reply::TooMany("too many sockets for this client")
    })
}

/// Looks the token up (taking it, unless reuse is allowed) and parses its value.
async fn admit(node: &Node, token: &str) -> Result<Admitted, Reply> {
    let key = node.client.keys().token(token);
    let single_use = !node.config.allow_token_reuse;
    let json = match node.client.backend().get(&key, single_use).await {
        Ok(Some(json)) => json,
        Ok(None) => return Err(Reply::Unauthorized("unknown, expired or used token")),
        Err(e) => {
            tracing::warn!(error = %e, "token lookup failed");
            node.metrics.refused(Refusal::Unavailable);
            return Err(Reply::Unavailable("token store unavailable"));
        }
    };
    match serde_json::from_str::<TokenValue>(&json) {
        Ok(value) => Ok(Admitted { client_id: value.client_id, json }),
        Err(e) => {
            tracing::warn!(error = %e, value = %json, "malformed token value");
            Err(Reply::Unauthorized("malformed token value"))
        }
    }
}
