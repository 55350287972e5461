//! The state every route shares: the business-side client and the roster.
//!
//! Cloned into each request by axum, so it holds only handles: the [`ImClient`] is a handle
//! on its connection, and the [`Roster`] is shared with the tasks that keep it live.

use super::roster::Roster;
use freeim::ImClient;
use std::sync::Arc;

/// What every route shares.
#[derive(Debug, Clone)]
pub struct App {
    /// The business-side client (Redis or the in-process broker).
    pub im: ImClient,
    /// The live online list and nicknames.
    pub roster: Arc<Roster>,
}
