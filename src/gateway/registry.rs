//! Which sockets this node holds, by client id, and the places taken by upgrades in progress.
//!
//! A sharded map (`DashMap`): a lookup locks one shard briefly, so delivery never waits on
//! a global lock and connects in other shards go on in parallel. Callers copy out the
//! `Arc<Conn>`s they need and write to sockets after the shard lock is released.
//!
//! The operator's limits are checked while an upgrade is still in progress (before its
//! token lookup, and before the `101`), so checking the sockets already registered would
//! let upgrades arriving together all pass. Instead an upgrade reserves its place: on the
//! node with one atomic step on a counter of sockets and upgrades in progress, and among
//! its client's sockets with a pending count changed under that client's entry lock. The
//! [`ClientReservation`] becomes the socket's place when registered, and gives both places
//! back when dropped (a failed handshake); removing the socket frees them.

use super::connection::Conn;
use crate::protocol::ClientId;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// client id → its sockets on this node (several devices or tabs).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    clients: DashMap<ClientId, Sockets>,
    /// Registered sockets.
    sockets: AtomicUsize,
    /// Registered sockets and upgrades holding a [`Reservation`]: what `--max-connections`
    /// bounds.
    places: AtomicUsize,
}

/// One client's sockets, and its upgrades that hold a [`ClientReservation`]. The entry is
/// removed when both are gone.
#[derive(Debug, Default)]
struct Sockets {
    conns: Vec<Arc<Conn>>,
    pending: usize,
}

impl Sockets {
    fn is_unused(&self) -> bool {
        self.conns.is_empty() && self.pending == 0
    }
}

/// A place on the node held by an upgrade in progress; given back when dropped.
#[derive(Debug)]
#[must_use]
pub(crate) struct Reservation<'r> {
    registry: &'r Registry,
}

/// A [`Reservation`] that also holds one of a client's socket places; becomes the socket's
/// when passed to [`Registry::insert`], and gives both back when dropped.
#[derive(Debug)]
#[must_use]
pub(crate) struct ClientReservation<'r> {
    node: Reservation<'r>,
    client_id: ClientId,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.registry.places.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for ClientReservation<'_> {
    fn drop(&mut self) {
        let entry = self.node.registry.clients.remove_if_mut(&self.client_id, |_, sockets| {
            sockets.pending -= 1;
            sockets.is_unused()
        });
        drop(entry);
    }
}

impl<'r> Reservation<'r> {
    /// Also reserves a place among `client_id`'s sockets, if it holds (or has reserved)
    /// fewer than `limit`; `None` (and this place given back) otherwise.
    pub(crate) fn for_client(self, client_id: ClientId, limit: usize) -> Option<ClientReservation<'r>> {
        let admitted = match self.registry.clients.entry(client_id) {
            Entry::Occupied(mut entry) => {
                let sockets = entry.get_mut();
                let admitted = sockets.conns.len() + sockets.pending < limit;
                sockets.pending += usize::from(admitted);
                admitted
            }
            Entry::Vacant(entry) if limit > 0 => {
                entry.insert(Sockets { conns: Vec::new(), pending: 1 });
                true
            }
            Entry::Vacant(_) => false,
        };
        // Not `then_some`: a refused reservation must not exist, or its drop would count down.
        admitted.then(|| ClientReservation { node: self, client_id })
    }
}

impl Registry {
    /// Reserves a place on the node for an upgrade, if fewer than `limit` are taken.
    pub(crate) fn reserve(&self, limit: usize) -> Option<Reservation<'_>> {
        let taken = self.places.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1));
        taken.ok().map(|_| Reservation { registry: self })
    }

    /// Adds a socket in the places `reservation` holds for its client.
    pub(crate) fn insert(&self, reservation: ClientReservation<'_>, conn: Arc<Conn>) {
        debug_assert_eq!(reservation.client_id, conn.client_id, "a reservation is for one client");
        // The places stay taken, now by the socket: `remove` gives them back.
        std::mem::forget(reservation);
        let mut sockets = self.clients.entry(conn.client_id).or_default();
        sockets.pending -= 1;
        sockets.conns.push(conn);
        self.sockets.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes a socket (no-op if it is not there).
    pub(crate) fn remove(&self, conn: &Conn) {
        let removed = self.clients.remove_if_mut(&conn.client_id, |_, sockets| {
            if let Some(i) = sockets.conns.iter().position(|c| c.id == conn.id) {
                sockets.conns.swap_remove(i);
                self.sockets.fetch_sub(1, Ordering::Relaxed);
                self.places.fetch_sub(1, Ordering::Relaxed);
            }
            sockets.is_unused()
        });
        drop(removed);
    }

    /// Calls `f` with the sockets of `client_id`; `None` when it has none here.
    pub(crate) fn with<R>(&self, client_id: ClientId, f: impl FnOnce(&[Arc<Conn>]) -> R) -> Option<R> {
        let sockets = self.clients.get(&client_id)?;
        (!sockets.conns.is_empty()).then(|| f(&sockets.conns))
    }

    /// Whether `conn` is (still) registered.
    pub(crate) fn holds(&self, conn: &Conn) -> bool {
        self.holds_socket(conn.client_id, conn.id)
    }

    /// Whether socket `socket` of `client_id` is registered.
    pub(crate) fn holds_socket(&self, client_id: ClientId, socket: u64) -> bool {
        self.with(client_id, |conns| conns.iter().any(|c| c.id == socket)).unwrap_or(false)
    }

    /// Calls `f` for every client with sockets on this node.
    pub(crate) fn for_each(&self, mut f: impl FnMut(ClientId, &[Arc<Conn>])) {
        for entry in self.clients.iter().filter(|e| !e.conns.is_empty()) {
            f(*entry.key(), &entry.conns);
        }
    }

    /// Every socket on this node.
    pub(crate) fn all(&self) -> Vec<Arc<Conn>> {
        let mut all = Vec::with_capacity(self.len());
        self.for_each(|_, conns| all.extend(conns.iter().cloned()));
        all
    }

    /// Number of sockets on this node (upgrades in progress not included).
    pub(crate) fn len(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }

    /// Whether the node holds no socket.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back_when_dropped() {
        let registry = Registry::default();
        let reserve = |client_id| registry.reserve(3).and_then(|r| r.for_client(client_id, 1));
        let first = reserve(7).unwrap();
        for _ in 0..2 {
            assert!(reserve(7).is_none(), "client 7 is full, and a refusal gives back only its own place");
        }
        let second = reserve(8).unwrap();
        let third = registry.reserve(3).unwrap();
        assert!(registry.reserve(3).is_none(), "the node is full");
        assert_eq!(registry.places.load(Ordering::Relaxed), 3);
        drop((first, second, third));
        assert!(registry.clients.is_empty(), "no entry is left behind");
        assert_eq!(registry.places.load(Ordering::Relaxed), 0);
        assert!(registry.is_empty());
    }
}
