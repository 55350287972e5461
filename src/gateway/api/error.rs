//! [`ApiError`]: every way an API call can fail, its HTTP status, and its body
//! `{"error":{"code":"<snake_case>","message":"…"}}`.
//!
//! Input errors name the field (`commands[2].params.client_id` inside a batch) and the
//! reason, so a caller can fix the request from the message alone. Nothing a caller sends
//! maps to 500: only [`ApiError::Internal`] does, for a failure of the node itself.

use crate::Error;
use crate::backend::BackendError;
use bytes::Bytes;
use serde::Serialize;

/// An API failure. `Display` is the message of the answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum ApiError {
    /// The body (or a batch command) is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// A required field is absent.
    #[error("`{0}` is required")]
    MissingField(String),
    /// A field that the method does not take (a typo, or the two forms of `chan_leave` mixed).
    #[error("`{0}` is not a parameter of this method")]
    UnknownField(String),
    /// A field of the wrong JSON type.
    #[error("`{field}` must be {expected}")]
    InvalidType {
        /// The field.
        field: String,
        /// What it must be, as a phrase ("an array of strings").
        expected: &'static str,
    },
    /// A client id that is not a JSON integer in the signed 64-bit range.
    #[error("`{0}` must be an integer client id (signed 64-bit)")]
    InvalidId(String),
    /// An empty channel name.
    #[error("`{0}` must not be an empty channel name")]
    EmptyChan(String),
    /// A value of the right type but out of its range (a count, a cursor).
    #[error("`{field}` {reason}")]
    InvalidValue {
        /// The field.
        field: String,
        /// Why, as a phrase after the field's name.
        reason: String,
    },
    /// A `batch` inside a batch.
    #[error("a batch cannot hold a batch")]
    NestedBatch,
    /// No key, or not one of `--api-key`.
    #[error("missing or wrong API key: send `X-API-Key: KEY` or `Authorization: apikey KEY`")]
    Unauthorized,
    /// `/api/<method>` with a method that does not exist.
    #[error("no API method `{0}` (see /api/openapi.json)")]
    UnknownMethod(String),
    /// A path under `/api/` that names no method.
    #[error("no such API path (POST /api/<method>; see /api/openapi.json)")]
    NotFound,
    /// An HTTP method other than the one the path takes.
    #[error("{0} only")]
    MethodNotAllowed(&'static str),
    /// The body is larger than `--api-max-body`.
    #[error("the body is over the {0}-byte limit (--api-max-body)")]
    BodyTooLarge(usize),
    /// The serialized `content` is larger than the business-side message limit.
    #[error("`{field}` is {size} bytes as JSON, over the {limit}-byte message limit")]
    ContentTooLarge {
        /// The field.
        field: String,
        /// Its serialized size.
        size: usize,
        /// The limit (`ImClientOptions::max_message_bytes`).
        limit: usize,
    },
    /// Redis (or the in-process broker) failed; the call may be retried (a send may then
    /// go out twice, as with `ImClient`).
    #[error("Redis is unreachable; retry later")]
    Unavailable,
    /// The node itself failed; never caused by the request.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The HTTP status.
    pub(super) fn status(&self) -> u16 {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::MissingField(_)
            | ApiError::UnknownField(_)
            | ApiError::InvalidType { .. }
            | ApiError::InvalidId(_)
            | ApiError::EmptyChan(_)
            | ApiError::InvalidValue { .. }
            | ApiError::NestedBatch => 400,
            ApiError::Unauthorized => 401,
            ApiError::UnknownMethod(_) | ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::BodyTooLarge(_) | ApiError::ContentTooLarge { .. } => 413,
            ApiError::Unavailable => 503,
            ApiError::Internal => 500,
        }
    }

    /// The `code` of the body, one per variant.
    pub(super) fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::MissingField(_) => "missing_field",
            ApiError::UnknownField(_) => "unknown_field",
            ApiError::InvalidType { .. } => "invalid_type",
            ApiError::InvalidId(_) => "invalid_id",
            ApiError::EmptyChan(_) => "empty_chan",
            ApiError::InvalidValue { .. } => "invalid_value",
            ApiError::NestedBatch => "nested_batch",
            ApiError::Unauthorized => "unauthorized",
            ApiError::UnknownMethod(_) => "unknown_method",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::ContentTooLarge { .. } => "content_too_large",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    /// The `{"code","message"}` object (a batch reply's `error`, or inside the body).
    pub(super) fn detail(&self) -> ErrorDetail {
        ErrorDetail { code: self.code(), message: self.to_string() }
    }

    /// The whole answer body: `{"error":{…}}`.
    pub(super) fn body(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&ErrorBody { error: self.detail() }).unwrap_or_default())
    }

    /// A backend failure (logged: the operator must know Redis is gone).
    pub(super) fn backend(error: BackendError) -> ApiError {
        tracing::warn!(error = %error, "API call failed on the backend");
        ApiError::Unavailable
    }

    /// A library error of the call that read `field` (`content` for the size limit).
    pub(super) fn from_client(error: Error, field: &str) -> ApiError {
        match error {
            Error::Backend(e) => ApiError::backend(e),
            Error::MessageTooLarge { size, limit } => {
                ApiError::ContentTooLarge { field: field.to_owned(), size, limit }
            }
            // A JSON value always serializes; options were checked when the node started.
            Error::Serialize(_) | Error::Options(_) => {
                tracing::error!(error = %error, "API call failed inside the node");
                ApiError::Internal
            }
        }
    }
}

/// `{"code":"…","message":"…"}`.
#[derive(Debug, Serialize)]
pub(super) struct ErrorDetail {
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}
