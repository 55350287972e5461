//! Not a public API: the seam through which freeim's own bench, fuzz targets and tests reach
//! internals. Anything here may change or go away in any release.

// The backend: the RESP2 reader of a Redis subscription (fuzz target `pubsub_replies`).
pub use crate::backend::resp::{ReplyError, take_messages};
