//! The HTTP API: `POST /api/<method>` with a JSON body, for business backends in any
//! language (docs/API.md; the contract is [`OPENAPI`], served at `/api/openapi.json`).
//!
//! It is off without `--api-key` (then `/api/…` is a 404 like any unknown path). It is
//! served on the node's listener, where `http` hands a request for `/api/…` over with the
//! bytes it has read, or on `--api-listen` alone. API connections are hyper's (HTTP/1.1,
//! keep-alive, bodies), each in a task of its own: nothing of it is in a WebSocket's state,
//! and the upgrade path keeps its small hand-written parser.
//!
//! Every call goes through the node's `ImClient`, so it has the Redis effects of the
//! library call (`methods`). The order of the checks: path, HTTP method (405), key (401),
//! API method (404), body size (413), parameters (400), then the call (503 if Redis fails).

mod auth;
mod content;
mod error;
mod methods;
mod params;
mod rewind;

pub(crate) use self::methods::Method;

use self::error::ApiError;
use self::params::Params;
use self::rewind::Rewind;
use super::Node;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

/// The OpenAPI 3.1 document of the API, served at [`OPENAPI_PATH`] without a key.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");
/// Where [`OPENAPI`] is served.
const OPENAPI_PATH: &str = "/api/openapi.json";
/// Methods are `POST {METHOD_PREFIX}<name>`.
const METHOD_PREFIX: &str = "/api/";
/// A request head must arrive within this, on a new connection and between keep-alive
/// requests alike; an idle keep-alive connection is closed after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the node's listener hands the request for `path` to the API: only when the API
/// is on and has no listener of its own.
pub(super) fn takes(node: &Node, path: &str) -> bool {
    let on_this_listener = node.config.api.as_ref().is_some_and(|api| api.listen.is_none());
    on_this_listener && (path == "/api" || path.starts_with(METHOD_PREFIX))
}

/// Serves API requests on `stream` (after `read`, the bytes the listener already took from
/// it) until the client closes, the connection idles out, or the node shuts down.
pub(super) async fn serve<S>(node: Arc<Node>, stream: S, read: Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = node.shutdown.clone();
    let service = hyper::service::service_fn(move |request| {
        let node = node.clone();
        async move { Ok::<_, Infallible>(answer(&node, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(Rewind::new(read, stream)), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The answer to one request, counted in `/metrics` when it names an API method.
async fn answer(node: &Node, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    if path == OPENAPI_PATH {
        return openapi(&request);
    }
    let method = path.strip_prefix(METHOD_PREFIX).and_then(Method::parse);
    let (status, response) = match handle(node, &path, method, request).await {
        Ok(body) => (200, json(StatusCode::OK, body)),
        Err(error) => {
            let status = error.status();
            if status >= 500 {
                tracing::warn!(path, status, error = %error, "API call failed");
            } else {
                tracing::debug!(path, status, code = error.code(), error = %error, "API call refused");
            }
            (status, refusal(&error))
        }
    };
    node.metrics.api_call(method, status, started.elapsed());
    response
}

/// Checks and runs one API call: the answer body.
async fn handle(
    node: &Node,
    path: &str,
    method: Option<Method>,
    request: Request<Incoming>,
) -> Result<Bytes, ApiError> {
    let Some(api) = &node.config.api else { return Err(ApiError::NotFound) };
    let name = path.strip_prefix(METHOD_PREFIX).filter(|name| !name.is_empty()).ok_or(ApiError::NotFound)?;
    if request.method() != hyper::Method::POST {
        return Err(ApiError::MethodNotAllowed("POST"));
    }
    if !auth::authorized(&api.keys, request.headers()) {
        return Err(ApiError::Unauthorized);
    }
    let method = method.ok_or_else(|| ApiError::UnknownMethod(name.to_owned()))?;
    let body = read_body(request, api.max_body).await?;
    let result = methods::call(node, method, Params::from_body(&body)?).await?;
    Ok(Bytes::from(serde_json::to_vec(&result).map_err(|_| ApiError::Internal)?))
}

/// The whole body, at most `limit` bytes (a `Content-Length` over it is refused unread).
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::BodyTooLarge(limit)),
        Err(e) => Err(ApiError::MalformedJson(format!("the body could not be read: {e}"))),
    }
}

/// `GET /api/openapi.json`: the document, with or without a key.
fn openapi(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET {
        return refusal(&ApiError::MethodNotAllowed("GET"));
    }
    json(StatusCode::OK, Bytes::from_static(OPENAPI.as_bytes()))
}

/// An error's answer: its status, its body, and the headers HTTP asks for with it.
fn refusal(error: &ApiError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json(status, error.body());
    let headers = response.headers_mut();
    match error {
        ApiError::MethodNotAllowed(allow) => {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        ApiError::Unauthorized => {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("apikey"));
        }
        _ => {}
    }
    response
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
