//! The HTTP side of a connection: reading the request head, routing it, and the answers:
//! `/healthz`, `/metrics`, and the WebSocket upgrade of `{path}?token=…` after the
//! operator's limits and the token lookup. A request for `/api/…` goes to the HTTP API
//! (`api`) with the bytes read, when the API is served on this listener.
//!
//! A request that is not a valid upgrade with a live token gets a plain HTTP error and is
//! closed: 400 (not an upgrade), 401 (token), 403 (origin), 404 (path), 429 (sockets per
//! client), 431 (head too large), 503 (node full, token store down). The two socket limits
//! reserve places in the registry rather than count the sockets there, so upgrades arriving
//! together cannot all pass (see `registry`).

use super::metrics::Refusal;
use super::registry::{ClientReservation, Reservation};
use super::websocket;
use super::{Node, api};
use crate::durable::Resume;
use crate::protocol::{self, ClientId, TokenValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted (request line and headers).
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most headers parsed in a request head.
const MAX_HEADERS: usize = 32;
/// Bytes read per `read` call while the head is incomplete.
const HEAD_READ_CHUNK: usize = 1024;
/// The blank line that ends a request head.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// A request head as read off a socket.
#[derive(Debug)]
pub struct RequestHead {
    /// The request line and headers, up to and including the blank line.
    pub head: Vec<u8>,
    /// Bytes the client sent after the head (the first WebSocket frames, say).
    pub leftover: Vec<u8>,
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The peer closed, or the socket failed, before the head was complete.
    #[error("connection closed before the end of the request head")]
    Closed,
    /// The head is longer than the limit (the gateway answers 431).
    #[error("request head larger than {MAX_REQUEST_HEAD} bytes")]
    TooLarge,
}

/// Reads until the end of the request head.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<RequestHead, HeadError> {
    let mut head = Vec::with_capacity(HEAD_READ_CHUNK);
    loop {
        if let Some(end) = head.windows(HEAD_END.len()).position(|w| w == HEAD_END) {
            let leftover = head.split_off(end + HEAD_END.len());
            return Ok(RequestHead { head, leftover });
        }
        if head.len() >= MAX_REQUEST_HEAD {
            return Err(HeadError::TooLarge);
        }
        let mut chunk = [0u8; HEAD_READ_CHUNK];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An accepted upgrade: who connected, its places on the node, and bytes read past the
/// request head.
pub(super) struct Upgrade<'n> {
    pub(super) admitted: Admitted,
    pub(super) place: ClientReservation<'n>,
    pub(super) leftover: Vec<u8>,
    /// `Some` for a durable socket (`resume` in the query).
    pub(super) resume: Option<Resume>,
}

/// A validated token: its raw JSON (published again with events) and client id.
pub(super) struct Admitted {
    pub(super) json: String,
    pub(super) client_id: ClientId,
}

/// What becomes of a connection whose request was not answered here.
pub(super) enum Handoff<'n> {
    /// It is now a WebSocket.
    WebSocket(Upgrade<'n>),
    /// It is an HTTP API connection: the API serves it from the bytes read so far.
    Api(Vec<u8>),
}

/// Reads the request head and answers it; `Some` when the socket is now a WebSocket or
/// belongs to the API.
pub(super) async fn handshake<'n, S: AsyncRead + AsyncWrite + Unpin>(
    node: &'n Node,
    stream: &mut S,
) -> Option<Handoff<'n>> {
    let RequestHead { head, leftover } = match read_head(stream).await {
        Ok(head) => head,
        Err(HeadError::TooLarge) => {
            let _ = stream.write_all(Refused::HeadTooLarge.render().as_bytes()).await;
            return None;
        }
        Err(HeadError::Closed) => return None,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(&head);
    if matches!(parsed, Ok(httparse::Status::Complete(_))) && api::takes(node, request.path.unwrap_or("")) {
        let mut read = head;
        read.extend_from_slice(&leftover);
        return Some(Handoff::Api(read));
    }
    let answer = match parsed {
        Ok(httparse::Status::Complete(_)) => route(node, &request).await,
        _ => Answer::Refused(Refused::BadRequest("malformed HTTP request")),
    };
    let reply = match answer {
        Answer::Upgrade(Accepted { key, admitted, place, resume }) => {
            let response = websocket::upgrade_response(key.as_bytes());
            stream.write_all(response.as_bytes()).await.ok()?;
            return Some(Handoff::WebSocket(Upgrade { admitted, place, leftover, resume }));
        }
        Answer::Health => health(node),
        Answer::Metrics => metrics(node),
        Answer::Refused(refused) => refused.render(),
    };
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
    None
}

/// What a request gets.
enum Answer<'n, 'r> {
    /// The WebSocket upgrade (`101`).
    Upgrade(Accepted<'n, 'r>),
    /// `/healthz`.
    Health,
    /// `/metrics`.
    Metrics,
    /// An HTTP error; the socket is closed after it.
    Refused(Refused),
}

/// What an accepted upgrade request gets: its key, its token's value, and its places.
struct Accepted<'n, 'r> {
    key: &'r str,
    admitted: Admitted,
    place: ClientReservation<'n>,
    resume: Option<Resume>,
}

/// Why a request is refused; decides the HTTP status and the body.
enum Refused {
    BadRequest(&'static str),
    Unauthorized(&'static str),
    Forbidden(&'static str),
    NotFound,
    HeadTooLarge,
    TooMany(&'static str),
    Unavailable(&'static str),
}

impl Refused {
    /// The HTTP answer.
    fn render(&self) -> String {
        match self {
            Refused::BadRequest(why) => plain(400, "Bad Request", why),
            Refused::Unauthorized(why) => plain(401, "Unauthorized", why),
            Refused::Forbidden(why) => plain(403, "Forbidden", why),
            Refused::NotFound => plain(404, "Not Found", "not found"),
            Refused::HeadTooLarge => plain(431, "Request Header Fields Too Large", "request head too large"),
            Refused::TooMany(why) => plain(429, "Too Many Requests", why),
            Refused::Unavailable(why) => plain(503, "Service Unavailable", why),
        }
    }
}

/// The `/healthz` answer: 503 while the node-channel subscription is down.
fn health(node: &Node) -> String {
    if *node.live.borrow() {
        plain(200, "OK", "ok")
    } else {
        plain(503, "Service Unavailable", "redis subscription down")
    }
}

/// The `/metrics` answer.
fn metrics(node: &Node) -> String {
    let body = node.metrics.render(node.registry.len(), *node.live.borrow(), &node.log_gauge);
    response(200, "OK", "text/plain; version=0.0.4", &body)
}

/// A plain-text answer whose body is `body` and a newline.
fn plain(code: u16, text: &str, body: &str) -> String {
    response(code, text, "text/plain; charset=utf-8", &format!("{body}\n"))
}

/// A whole `Connection: close` answer.
fn response(code: u16, text: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {text}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Decides what a request gets.
async fn route<'n, 'r>(node: &'n Node, request: &httparse::Request<'_, 'r>) -> Answer<'n, 'r> {
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/healthz" => Answer::Health,
        "/metrics" => Answer::Metrics,
        p if p != node.config.path => Answer::Refused(Refused::NotFound),
        _ => upgrade(node, request, query).await.map_or_else(Answer::Refused, Answer::Upgrade),
    }
}

/// Checks an upgrade request against the limits and looks its token up.
async fn upgrade<'n, 'r>(
    node: &'n Node,
    request: &httparse::Request<'_, 'r>,
    query: &str,
) -> Result<Accepted<'n, 'r>, Refused> {
    let key = upgrade_key(node, request)?;
    // Checked before the token, which a bad request must not spend.
    let resume = durable_resume(node, query)?;
    // The node's place is taken before the token lookup, which a full node must not spend.
    let place = reserve_node(node)?;
    let token = query_value(query, "token").unwrap_or("");
    let admitted = match token {
        "" => Err(Refused::Unauthorized("missing token")),
        t if !protocol::is_token_shaped(t) => Err(Refused::Unauthorized("invalid token")),
        t => admit(node, t).await,
    };
    if let Err(Refused::Unauthorized(_)) = admitted {
        node.metrics.refused(Refusal::Token);
    }
    let admitted = admitted?;
    let place = reserve_client(node, place, admitted.client_id)?;
    Ok(Accepted { key, admitted, place, resume })
}

/// The first value of `name` in a query string (`name` alone: empty), still encoded.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some((key, value)) if key == name => Some(value),
        None if pair == name => Some(""),
        _ => None,
    })
}

/// The `resume` of a durable socket: 400 when malformed, 503 while the node's log is not open.
fn durable_resume(node: &Node, query: &str) -> Result<Option<Resume>, Refused> {
    let Some(value) = query_value(query, "resume") else {
        return Ok(None);
    };
    let resume = Resume::parse(value).map_err(|_| Refused::BadRequest("invalid resume"))?;
    if !node.log_gauge.is_ready() {
        tracing::warn!("durable upgrade refused: the node's log is not open (Redis unreachable?)");
        node.metrics.refused(Refusal::Unavailable);
        return Err(Refused::Unavailable("durable log unavailable"));
    }
    Ok(Some(resume))
}

/// The `Sec-WebSocket-Key` of a valid upgrade request from an allowed origin.
fn upgrade_key<'r>(node: &Node, request: &httparse::Request<'_, 'r>) -> Result<&'r str, Refused> {
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
        return Err(Refused::BadRequest("expected a WebSocket upgrade (version 13)"));
    }
    let origin = header("origin");
    let allowed = &node.config.allowed_origins;
    if !origin.is_empty() && !allowed.is_empty() && !allowed.iter().any(|a| a == origin) {
        tracing::warn!(origin, "upgrade refused: origin not allowed");
        node.metrics.refused(Refusal::Origin);
        return Err(Refused::Forbidden("origin not allowed"));
    }
    Ok(key)
}

/// A place on the node, within `--max-connections`.
fn reserve_node(node: &Node) -> Result<Reservation<'_>, Refused> {
    node.registry.reserve(node.config.max_connections).ok_or_else(|| {
        tracing::warn!(limit = node.config.max_connections, "upgrade refused: node full (--max-connections)");
        node.metrics.refused(Refusal::NodeFull);
        Refused::Unavailable("node full")
    })
}

/// A place among `client_id`'s sockets, within `--max-sockets-per-client`.
fn reserve_client<'n>(
    node: &Node,
    place: Reservation<'n>,
    client_id: ClientId,
) -> Result<ClientReservation<'n>, Refused> {
    let limit = node.config.max_sockets_per_client;
    place.for_client(client_id, limit).ok_or_else(|| {
        tracing::warn!(client = client_id, limit, "upgrade refused: too many sockets (--max-sockets-per-client)");
        node.metrics.refused(Refusal::ClientFull);
        Refused::TooMany("too many sockets for this client")
    })
}

/// Looks the token up (taking it, unless reuse is allowed) and parses its value.
async fn admit(node: &Node, token: &str) -> Result<Admitted, Refused> {
    let key = node.client.keys().token(token);
    let single_use = !node.config.allow_token_reuse;
    let json = match node.client.backend().get(&key, single_use).await {
        Ok(Some(json)) => json,
        Ok(None) => return Err(Refused::Unauthorized("unknown, expired or used token")),
        Err(e) => {
            tracing::warn!(error = %e, "token lookup failed");
            node.metrics.refused(Refusal::Unavailable);
            return Err(Refused::Unavailable("token store unavailable"));
        }
    };
    match serde_json::from_str::<TokenValue>(&json) {
        Ok(value) => Ok(Admitted { client_id: value.client_id, json }),
        Err(e) => {
            tracing::warn!(error = %e, value = %json, "malformed token value");
            Err(Refused::Unauthorized("malformed token value"))
        }
    }
}
