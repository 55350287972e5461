//! Which sockets this node holds, by client id.
//!
//! A sharded map (`DashMap`): a lookup locks one shard briefly, so delivery never waits on
//! a global lock and connects in other shards go on in parallel. Callers copy out the
//! `Arc<Conn>`s they need and write to sockets after the shard lock is released.

use super::connection::Conn;
use crate::protocol::ClientId;
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// client id → its sockets on this node (several devices or tabs).
#[derive(Debug, Default)]
pub struct Registry {
    clients: DashMap<ClientId, Vec<Arc<Conn>>>,
    sockets: AtomicUsize,
}

impl Registry {
    /// Adds a socket.
    pub fn insert(&self, conn: Arc<Conn>) {
        self.clients.entry(conn.client_id).or_default().push(conn);
        self.sockets.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes a socket (no-op if it is not there).
    pub fn remove(&self, conn: &Conn) {
        let removed = self.clients.remove_if_mut(&conn.client_id, |_, conns| {
            if let Some(i) = conns.iter().position(|c| c.id == conn.id) {
                conns.swap_remove(i);
                self.sockets.fetch_sub(1, Ordering::Relaxed);
            }
            conns.is_empty()
        });
        drop(removed);
    }

    /// Calls `f` with the sockets of `client_id`; `None` when it has none here.
    pub fn with<R>(&self, client_id: ClientId, f: impl FnOnce(&[Arc<Conn>]) -> R) -> Option<R> {
        self.clients.get(&client_id).map(|conns| f(&conns))
    }

    /// Whether `conn` is (still) registered.
    pub fn holds(&self, conn: &Conn) -> bool {
        self.holds_socket(conn.client_id, conn.id)
    }

    /// Whether socket `socket` of `client_id` is registered.
    pub fn holds_socket(&self, client_id: ClientId, socket: u64) -> bool {
        self.with(client_id, |conns| conns.iter().any(|c| c.id == socket)).unwrap_or(false)
    }

    /// Calls `f` for every client on this node with its sockets.
    pub fn for_each(&self, mut f: impl FnMut(ClientId, &[Arc<Conn>])) {
        for entry in self.clients.iter() {
            f(*entry.key(), entry.value());
        }
    }

    /// Every socket on this node.
    pub fn all(&self) -> Vec<Arc<Conn>> {
        let mut all = Vec::with_capacity(self.len());
        self.for_each(|_, conns| all.extend(conns.iter().cloned()));
        all
    }

    /// Number of sockets on this node.
    pub fn len(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }

    /// Whether the node holds no socket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
