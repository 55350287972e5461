//! The demo's table of who is online: socket counts, nicknames and the channels each client
//! joined through the routes.
//!
//! FreeIM's demo has no online list. Ours counts sockets per client (a client with two tabs
//! is online until both close); [`tracker`](super::tracker) feeds it from the event bus,
//! [`rejoin`](super::rejoin) reads the channels back after a Redis restart, and
//! [`broadcast`](super::broadcast) pushes its changes to every page.
//!
//! Nicknames and channels live in this process only (the demo is one business app); a page
//! sets its nickname and joins its channels again each time it connects, and both are
//! forgotten when its client's last socket closes, so the table holds the online clients plus
//! at most [`MAX_OFFLINE_CLIENTS`] (a page names itself before its online event arrives), each
//! with at most [`MAX_CHANNELS_PER_CLIENT`] channels.

use freeim::{ClientId, PresenceEvent};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

/// Clients that are not (or not yet) online the table keeps a nickname or channels of;
/// beyond this, remembering a new one is refused (429) until clients come online or leave.
pub const MAX_OFFLINE_CLIENTS: usize = 10_000;
/// Channels remembered per client; joining one more is refused (429).
pub const MAX_CHANNELS_PER_CLIENT: usize = 100;

/// One online client, as the routes and the presence message show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OnlineClient {
    /// The client id.
    #[serde(rename = "websocketId")]
    pub id: ClientId,
    /// Its nickname, when it has set one.
    pub nick: Option<String>,
}

/// The live online list and the nickname table. Shared by the routes and two tasks.
#[derive(Debug, Default)]
pub struct Roster {
    table: Mutex<Table>,
    /// Signalled on every change; the push task waits on it.
    changed: Notify,
}

/// What the lock of a [`Roster`] guards.
#[derive(Debug, Default)]
struct Table {
    /// Open sockets per online client.
    sockets: HashMap<ClientId, i64>,
    /// What the demo keeps of each client until its last socket closes.
    clients: HashMap<ClientId, Remembered>,
}

/// What the demo keeps of one client.
#[derive(Debug, Default)]
struct Remembered {
    nick: Option<String>,
    /// Joined through the demo's routes and not left: joined again on online events.
    channels: BTreeSet<String>,
}

impl Table {
    /// The entry of `id`, created unless the table is full of clients that are not online.
    fn remember(&mut self, id: ClientId) -> Result<&mut Remembered, &'static str> {
        // Entries of online clients are at most `sockets.len()`: the rest are offline ones.
        let offline = self.clients.len().saturating_sub(self.sockets.len());
        if !self.clients.contains_key(&id) && !self.sockets.contains_key(&id) && offline >= MAX_OFFLINE_CLIENTS {
            return Err("too many clients that are not online are remembered; retry later");
        }
        Ok(self.clients.entry(id).or_default())
    }

    fn nick(&self, id: ClientId) -> Option<String> {
        self.clients.get(&id)?.nick.clone()
    }
}

impl Roster {
    fn table(&self) -> MutexGuard<'_, Table> {
        // Every update below is a single map operation: a poisoned lock is still consistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The online clients, ordered by nickname then id.
    pub fn online(&self) -> Vec<OnlineClient> {
        let table = self.table();
        let mut list: Vec<OnlineClient> =
            table.sockets.keys().map(|&id| OnlineClient { id, nick: table.nick(id) }).collect();
        list.sort_by(|a, b| (a.nick.is_none(), &a.nick, a.id).cmp(&(b.nick.is_none(), &b.nick, b.id)));
        list
    }

    /// Whether `id` has at least one socket.
    pub fn is_online(&self, id: ClientId) -> bool {
        self.table().sockets.contains_key(&id)
    }

    /// Sets the nickname of `id`; refused when the table is full of offline clients.
    pub fn set_nick(&self, id: ClientId, nick: String) -> Result<(), &'static str> {
        self.table().remember(id)?.nick = Some(nick);
        self.touch();
        Ok(())
    }

    /// Remembers that `id` joins `chan`; refused when the table or the client's channel set
    /// is full.
    pub fn join(&self, id: ClientId, chan: &str) -> Result<(), &'static str> {
        let mut table = self.table();
        let channels = &mut table.remember(id)?.channels;
        if channels.len() >= MAX_CHANNELS_PER_CLIENT && !channels.contains(chan) {
            return Err("this client has joined too many channels");
        }
        channels.insert(chan.to_owned());
        Ok(())
    }

    /// Forgets that `id` joined `chan`.
    pub fn leave(&self, id: ClientId, chan: &str) {
        let mut table = self.table();
        if let Some(client) = table.clients.get_mut(&id) {
            client.channels.remove(chan);
            if client.channels.is_empty() && client.nick.is_none() {
                table.clients.remove(&id);
            }
        }
    }

    /// The channels `id` joined through the demo.
    pub fn channels(&self, id: ClientId) -> Vec<String> {
        self.table().clients.get(&id).map(|c| c.channels.iter().cloned().collect()).unwrap_or_default()
    }

    /// The online clients that joined channels through the demo.
    pub fn online_with_channels(&self) -> Vec<ClientId> {
        let table = self.table();
        table
            .sockets
            .keys()
            .copied()
            .filter(|id| table.clients.get(id).is_some_and(|c| !c.channels.is_empty()))
            .collect()
    }

    /// Tells the push task that something pages show has changed (also channel joins).
    pub fn touch(&self) {
        self.changed.notify_one();
    }

    /// Waits for the next [`touch`](Self::touch); one made while nobody waits is kept for
    /// the next wait, so no change is missed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Counts one socket opening or closing; a client's last socket takes its nickname and
    /// channels with it, as the gateway leaves its channels then.
    pub fn apply(&self, event: &PresenceEvent) {
        let mut table = self.table();
        match event {
            PresenceEvent::Online(v) => *table.sockets.entry(v.client_id).or_default() += 1,
            PresenceEvent::Offline(v) => {
                let gone = table.sockets.get_mut(&v.client_id).is_some_and(|n| {
                    *n -= 1;
                    *n <= 0
                });
                if gone {
                    table.sockets.remove(&v.client_id);
                    table.clients.remove(&v.client_id);
                }
            }
        }
    }

    /// Replaces the socket counts with those read from `{P}Online`, touching only on a
    /// difference.
    pub fn replace_counts(&self, counts: HashMap<ClientId, i64>) {
        let mut table = self.table();
        if table.sockets != counts {
            tracing::debug!(before = table.sockets.len(), after = counts.len(), "online list resynchronized");
            table.sockets = counts;
            drop(table);
            self.touch();
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use freeim::protocol::TokenValue;

    fn online(id: ClientId) -> PresenceEvent {
        PresenceEvent::Online(TokenValue { client_id: id, meta: None })
    }
    fn offline(id: ClientId) -> PresenceEvent {
        PresenceEvent::Offline(TokenValue { client_id: id, meta: None })
    }

    #[test]
    fn a_client_stays_online_until_its_last_socket_closes() {
        let roster = Roster::default();
        roster.set_nick(7, "Ann".into()).unwrap();
        for e in [online(7), online(7), online(3), offline(7)] {
            roster.apply(&e);
        }
        let list = roster.online();
        assert_eq!(list, [OnlineClient { id: 7, nick: Some("Ann".into()) }, OnlineClient { id: 3, nick: None }]);
        roster.apply(&offline(7));
        assert!(!roster.is_online(7));
        assert_eq!(roster.table().nick(7), None, "the nickname goes with the last socket");
        roster.apply(&offline(9)); // an offline event for an unknown client changes nothing
        assert_eq!(roster.online().len(), 1);
    }

    #[test]
    fn channels_are_remembered_while_the_client_is_online() {
        let roster = Roster::default();
        roster.join(7, "room").unwrap(); // before its online event: a page joins on open
        roster.apply(&online(7));
        roster.join(7, "lobby").unwrap();
        roster.join(3, "room").unwrap();
        roster.leave(3, "room");
        assert_eq!(roster.channels(7), ["lobby", "room"]);
        assert_eq!(roster.online_with_channels(), [7]);
        assert!(!roster.table().clients.contains_key(&3), "an empty entry is dropped");
        roster.apply(&offline(7));
        assert_eq!(roster.channels(7), Vec::<String>::new(), "the channels go with the last socket");
    }

    #[test]
    fn the_table_is_bounded() {
        let roster = Roster::default();
        roster.apply(&online(1));
        for n in 0..MAX_CHANNELS_PER_CLIENT {
            roster.join(1, &format!("c{n}")).unwrap();
        }
        assert!(roster.join(1, "one more").is_err());
        roster.join(1, "c0").unwrap(); // joining again is not one more
        for id in 0..MAX_OFFLINE_CLIENTS as ClientId {
            roster.join(1000 + id, "room").unwrap();
        }
        assert!(roster.join(2, "room").is_err());
        assert!(roster.set_nick(2, "Bo".into()).is_err());
        roster.join(1000, "lobby").unwrap(); // a remembered client is not a new one
    }
}
