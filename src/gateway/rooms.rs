//! The channel memberships of this node's clients, kept in memory, so that a channel
//! message costs Redis nothing on the nodes (FreeIM runs `HKEYS {P}Chan{chan}` on every node
//! for every message: room size × nodes of work on the one Redis thread per message).
//!
//! Exact, because every change reaches the node in Redis's order, on its node channel,
//! between the messages: the join and leave scripts publish the change to the client's node
//! in the same atomic step as the write (`__FreeIM__(Join)` / `(Leave)`), and when a socket
//! opens, its node publishes the client's whole channel list from a script
//! (`__FreeIM__(Chans)`, right before the online event). So a join that completed before a
//! message was published is applied before that message is dispatched, whichever process
//! did either. After the subscription was lost, the node's presence restore publishes every
//! live client's list again.
//!
//! A change is applied for a client that has a socket here (or is already known); a client
//! that connects later gets its list when its socket opens. A client is forgotten when it
//! has no channel left. Writers that do not publish changes (a .NET ImHelper runs FreeIM's
//! own scripts) need `--chan-cache off`: the node then reads the members from Redis per
//! batch, as FreeIM does.

use crate::protocol::{ClientId, MembersChange};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Channel → members, and client → channels, for the clients this node knows. A channel's
/// name is allocated once, shared by its entry and by each member's set.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    members: HashMap<Arc<str>, HashSet<ClientId>>,
    chans: HashMap<ClientId, HashSet<Arc<str>>>,
    /// Memberships held: kept, not summed, since every change reports it.
    count: usize,
}

impl Rooms {
    /// Applies one change; `connected` says whether a client has a socket on this node.
    /// Client 0 (the system) is never a member, as the reference skips it.
    pub(crate) fn apply(&mut self, change: MembersChange, connected: impl Fn(ClientId) -> bool) {
        match change {
            MembersChange::Join(0, _) | MembersChange::Chans(0, _) => {}
            MembersChange::Join(id, chan) => {
                if connected(id) || self.chans.contains_key(&id) {
                    self.join(id, &chan);
                }
            }
            MembersChange::Leave(id, chan) => self.leave(id, &chan),
            MembersChange::Chans(id, list) => {
                let old = self.chans.remove(&id).unwrap_or_default();
                self.count -= old.len();
                for chan in &old {
                    self.remove_member(chan, id);
                }
                for chan in list {
                    self.join(id, &chan);
                }
            }
        }
    }

    fn join(&mut self, id: ClientId, chan: &str) {
        let name = match self.members.get_key_value(chan) {
            Some((name, _)) => name.clone(),
            None => Arc::from(chan),
        };
        self.members.entry(name.clone()).or_default().insert(id);
        if self.chans.entry(id).or_default().insert(name) {
            self.count += 1;
        }
    }

    fn leave(&mut self, id: ClientId, chan: &str) {
        let Some(chans) = self.chans.get_mut(&id) else { return };
        if chans.remove(chan) {
            self.count -= 1;
            if chans.is_empty() {
                self.chans.remove(&id);
            }
            self.remove_member(chan, id);
        }
    }

    fn remove_member(&mut self, chan: &str, id: ClientId) {
        if let Some(members) = self.members.get_mut(chan) {
            members.remove(&id);
            if members.is_empty() {
                self.members.remove(chan);
            }
        }
    }

    /// The members of `chan` known here.
    pub(crate) fn members(&self, chan: &str) -> impl Iterator<Item = ClientId> + '_ {
        self.members.get(chan).into_iter().flatten().copied()
    }

    /// Memberships held (for the metrics).
    pub(crate) fn len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MembersChange::{Chans, Join, Leave};

    fn members(rooms: &Rooms, chan: &str) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = rooms.members(chan).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn changes_apply_in_order_for_clients_connected_or_known() {
        let mut rooms = Rooms::default();
        let connected = |id: ClientId| id <= 2;
        let changes = [
            Join(1, "a".into()),
            Join(2, "a".into()),
            Join(9, "a".into()), // not connected here, not known: its list comes when it connects
            Join(0, "a".into()), // the system
            Chans(3, vec!["a".into(), "b".into()]),
            Join(3, "c".into()), // known from its list
            Leave(2, "a".into()),
            Chans(1, vec!["b".into()]),
        ];
        for change in changes {
            rooms.apply(change, connected);
        }
        assert_eq!(members(&rooms, "a"), [3]);
        assert_eq!(members(&rooms, "b"), [1, 3]);
        assert_eq!(members(&rooms, "c"), [3]);
        assert_eq!(rooms.len(), 4);
        assert_eq!(rooms.len(), rooms.chans.values().map(HashSet::len).sum::<usize>());
        for chan in ["a", "b", "c"] {
            rooms.apply(Leave(3, chan.into()), connected);
        }
        rooms.apply(Chans(1, Vec::new()), connected);
        assert_eq!((rooms.len(), rooms.members.len(), rooms.chans.len()), (0, 0, 0));
    }
}
