//! The library's error type.

use crate::backend::BackendError;

/// What can go wrong in an [`crate::ImClient`] call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis (or the in-process broker) failed. Redis reconnects by itself: retrying the
    /// call later is safe for every operation except sends, which may then go out twice.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The options given to [`crate::ImClient::new`] are unusable; fix the configuration.
    #[error("invalid client options: {0}")]
    Options(String),
    /// The business message could not be serialized to JSON (a map with non-string keys,
    /// say). Nothing was sent.
    #[error("message cannot be serialized to JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The serialized message is larger than `ImClientOptions::max_message_bytes`. Nothing
    /// was sent.
    #[error("message of {size} bytes is over the {limit}-byte limit")]
    MessageTooLarge {
        /// Its serialized size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
