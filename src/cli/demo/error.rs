//! What can go wrong in a demo route, and the HTTP answer for each.
//!
//! FreeIM's demo answers `{"code":0,…}` on success; we keep that shape for failures too
//! (`{"code":<non-zero>,"msg":"…"}`) so a page can test `code` alone, and pick a 4xx
//! status for bad input and 503 when the broker is unreachable. No input can produce a 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A demo route failure. Each variant says what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A required form field is absent or empty: send it.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A form field has an unusable value: fix it (the reason says how).
    #[error("{field}: {reason}")]
    Invalid {
        /// The form field.
        field: &'static str,
        /// Why it is unusable.
        reason: String,
    },
    /// A form field is over its limit: send less.
    #[error("{field} is longer than {limit} bytes")]
    TooLarge {
        /// The form field.
        field: &'static str,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request body could not be read (too large, wrong content type): fix the request.
    #[error("{msg}")]
    Body {
        /// The status axum chose for the rejection (always a 4xx).
        status: StatusCode,
        /// Its explanation.
        msg: String,
    },
    /// A table of the demo is full: retry later.
    #[error("{0}")]
    Full(&'static str),
    /// No such route.
    #[error("no such route")]
    NotFound,
    /// The route exists with another method (FreeIM's routes are POST but for `offline`).
    #[error("wrong method for this route")]
    MethodNotAllowed,
    /// Redis refused or is unreachable: retry later (the client reconnects by itself).
    #[error("the message broker is unavailable: {0}")]
    Backend(#[from] freeim::Error),
}

impl DemoError {
    /// The `code` field of the answer: stable numbers a page may switch on.
    fn code(&self) -> u16 {
        match self {
            DemoError::Missing(_) => 1,
            DemoError::Invalid { .. } => 2,
            DemoError::TooLarge { .. } => 3,
            DemoError::Body { .. } => 4,
            DemoError::Full(_) => 5,
            DemoError::NotFound => 6,
            DemoError::Backend(_) => 7,
            DemoError::MethodNotAllowed => 8,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            DemoError::Missing(_) | DemoError::Invalid { .. } => StatusCode::BAD_REQUEST,
            DemoError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // A rejection is a 4xx by axum's contract; keep a 500 from ever leaking out.
            DemoError::Body { status, .. } if status.is_client_error() => *status,
            DemoError::Body { .. } => StatusCode::BAD_REQUEST,
            DemoError::Full(_) => StatusCode::TOO_MANY_REQUESTS,
            DemoError::NotFound => StatusCode::NOT_FOUND,
            DemoError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            DemoError::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for DemoError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let DemoError::Backend(e) = &self {
            tracing::warn!(error = %e, "demo route failed on the broker");
        } else {
            tracing::debug!(error = %self, %status, "demo route rejected a request");
        }
        (status, Json(json!({ "code": self.code(), "msg": self.to_string() }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_is_a_4xx_or_503_with_a_non_zero_code() {
        let cases = [
            (DemoError::Missing("websocketId"), 400, "websocketId is required"),
            (DemoError::Invalid { field: "channel", reason: "is blank".into() }, 400, "channel: is blank"),
            (DemoError::TooLarge { field: "message", limit: 8 }, 413, "message is longer than 8 bytes"),
            (DemoError::Body { status: StatusCode::INTERNAL_SERVER_ERROR, msg: "x".into() }, 400, "x"),
            (DemoError::Full("too many nicknames"), 429, "too many nicknames"),
        ];
        for (error, status, msg) in cases {
            assert_ne!(error.code(), 0);
            assert_eq!((error.status().as_u16(), error.to_string().as_str()), (status, msg));
        }
    }
}
