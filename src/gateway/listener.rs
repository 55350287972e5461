//! Accepting sockets and the HTTP side of a connection: `/healthz`, and the WebSocket
//! upgrade of `{path}?token=…` after the token lookup.
//!
//! Everything before the `101` answer happens in a short-lived part of the connection's
//! task, bounded by [`HANDSHAKE_TIMEOUT`]; its buffers are gone before the socket becomes
//! long-lived. A request that is not a valid upgrade with a live token gets a plain HTTP
//! error (400, 401, 404 or 503) and is closed.

use super::config::HANDSHAKE_TIMEOUT;
use super::connection::{self, Conn};
use super::{Node, presence, websocket};
use crate::protocol::{self, TokenValue};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

/// An accepted upgrade: who connected, and bytes read past the request head.
struct Upgrade {
    token_value: String,
    client_id: i64,
    leftover: Vec<u8>,
}

async fn handle(node: Arc<Node>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    // Every step but `serve` is boxed: a task's future is as large as its largest state,
    // and only `serve` lasts; the handshake's buffers and Redis futures must not.
    let upgrade = match tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(handshake(&node, &mut stream))).await {
        Ok(Some(upgrade)) => upgrade,
        Ok(None) => return,
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    let id = node.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let token_value = Bytes::from(upgrade.token_value);
    let conn = Arc::new(Conn::new(id, upgrade.client_id, token_value, stream, node.now_ms()));
    node.registry.insert(conn.clone());
    if node.shutdown.is_cancelled() {
        conn.close(connection::CloseReason::Shutdown);
    }
    tracing::debug!(conn = id, client = conn.client_id, %peer, "connected");
    Box::pin(presence::online(&node, &conn)).await;
    let reason = connection::serve(&node, &conn, &upgrade.leftover).await;
    node.registry.remove(&conn);
    Box::pin(presence::offline(&node, &conn)).await;
    tracing::debug!(conn = id, client = conn.client_id, ?reason, "disconnected");
}

/// Reads the request head and answers it; `Some` when the socket is now a WebSocket.
async fn handshake(node: &Node, stream: &mut TcpStream) -> Option<Upgrade> {
    let (head, leftover) = read_head(stream).await?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let answer = match request.parse(&head) {
        Ok(httparse::Status::Complete(_)) => route(node, &request).await,
        _ => Err(Reject::BadRequest("malformed HTTP request")),
    };
    match answer {
        Ok((key, value)) => {
            let response = websocket::upgrade_response(key.as_bytes());
            stream.write_all(response.as_bytes()).await.ok()?;
            Some(Upgrade { client_id: value.client_id, token_value: value.json, leftover })
        }
        Err(reject) => {
            let _ = stream.write_all(reject.response(node).as_bytes()).await;
            let _ = stream.shutdown().await;
            None
        }
    }
}

/// Reads until the end of the request head; `None` if the peer closes or it is too long
/// (then a 431 has been sent).
async fn read_head(stream: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let leftover = buf.split_off(end + 4);
            return Some((buf, leftover));
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            let _ = stream.write_all(Reject::TooLarge.plain().as_bytes()).await;
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

enum Reject {
    BadRequest(&'static str),
    Unauthorized(&'static str),
    NotFound,
    TooLarge,
    Unavailable(&'static str),
    Health,
}

impl Reject {
    fn status(&self) -> (u16, &'static str, &'static str) {
        match self {
            Reject::BadRequest(why) => (400, "Bad Request", why),
            Reject::Unauthorized(why) => (401, "Unauthorized", why),
            Reject::NotFound => (404, "Not Found", "not found"),
            Reject::TooLarge => (431, "Request Header Fields Too Large", "request head too large"),
            Reject::Unavailable(why) => (503, "Service Unavailable", why),
            Reject::Health => (200, "OK", "ok"),
        }
    }

    fn plain(&self) -> String {
        let (code, text, body) = self.status();
        format!(
            "HTTP/1.1 {code} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
            body.len() + 1
        )
    }

    /// The answer; `/healthz` says 503 instead of 200 while the subscription is down.
    fn response(&self, node: &Node) -> String {
        match self {
            Reject::Health if !*node.live.borrow() => Reject::Unavailable("redis subscription down").plain(),
            other => other.plain(),
        }
    }
}

/// Decides what a request gets: the upgrade key and token, or a rejection.
async fn route<'r>(node: &Node, request: &httparse::Request<'_, 'r>) -> Result<(&'r str, Admitted), Reject> {
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/healthz" {
        return Err(Reject::Health);
    }
    if path != node.config.path {
        return Err(Reject::NotFound);
    }
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
        return Err(Reject::BadRequest("expected a WebSocket upgrade (version 13)"));
    }
    let token = query.split('&').find_map(|pair| pair.strip_prefix("token=")).unwrap_or("");
    if token.is_empty() {
        return Err(Reject::Unauthorized("missing token"));
    }
    if !protocol::is_token_shaped(token) {
        return Err(Reject::Unauthorized("invalid token"));
    }
    Ok((key, admit(node, token).await?))
}

/// Looks the token up (taking it, unless reuse is allowed) and parses its value.
async fn admit(node: &Node, token: &str) -> Result<Admitted, Reject> {
    let key = node.client.keys().token(token);
    let single_use = !node.config.allow_token_reuse;
    let json = match node.client.backend().get(&key, single_use).await {
        Ok(Some(json)) => json,
        Ok(None) => return Err(Reject::Unauthorized("unknown, expired or used token")),
        Err(e) => {
            tracing::warn!(error = %e, "token lookup failed");
            return Err(Reject::Unavailable("token store unavailable"));
        }
    };
    match serde_json::from_str::<TokenValue>(&json) {
        Ok(value) => Ok(Admitted { client_id: value.client_id, json }),
        Err(e) => {
            tracing::warn!(error = %e, value = %json, "malformed token value");
            Err(Reject::Unauthorized("malformed token value"))
        }
    }
}
