//! Who is online, with nicknames and the channels each joined, kept live from the
//! cluster's event bus, and pushed to every page when it changes.
//!
//! FreeIM's demo has no online list. Ours counts sockets per client from the online and
//! offline events (a client with two tabs is online until both close), seeded from
//! `{P}Online` at start and re-read every [`RESYNC_INTERVAL`]: pub/sub is at-most-once, so
//! events missed while Redis was away would otherwise leave the list wrong for good.
//!
//! Channel membership is business state: the gateway leaves a client's channels when its last
//! socket closes, and a Redis that restarts empty loses them all. Nodes then record their
//! live sockets again and announce each with an online event; so the demo remembers the
//! channels each client joined through its routes and joins them again on the client's online
//! events (joining is idempotent), and on its own re-subscription, which may come after those
//! events.
//!
//! Pages learn about changes through FreeIM itself: after a change (debounced by
//! [`PUSH_DEBOUNCE`], so a burst of connects costs one message) the demo broadcasts a
//! `{"type":"presence","online":[…],"channels":[…]}` message, serialized twice like every
//! page message. FreeIM's own page ignores that type.
//!
//! Nicknames and channels live in this process only (the demo is one business app); a page
//! sets its nickname and joins its channels again each time it connects, and both are
//! forgotten when its client's last socket closes, so the table holds the online clients plus
//! at most [`MAX_OFFLINE_CLIENTS`] (a page names itself before its online event arrives), each
//! with at most [`MAX_CHANNELS_PER_CLIENT`] channels.

use freeim::{ClientId, ImClient, PresenceEvent};
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Quiet time after a change before the presence message goes out; changes within it are
/// merged into one message.
pub const PUSH_DEBOUNCE: Duration = Duration::from_millis(150);
/// How often the socket counts are re-read from `{P}Online`, repairing anything missed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Clients that are not (or not yet) online the table keeps a nickname or channels of;
/// beyond this, remembering a new one is refused (429) until clients come online or leave.
pub const MAX_OFFLINE_CLIENTS: usize = 10_000;
/// Channels remembered per client; joining one more is refused (429).
pub const MAX_CHANNELS_PER_CLIENT: usize = 100;
/// Tries of one re-join: the first command after a Redis restart may meet a dead connection.
const REJOIN_ATTEMPTS: usize = 3;
/// Pause between two tries of a re-join.
const REJOIN_RETRY: Duration = Duration::from_millis(200);
/// Entries of the online list carried by one presence message; a larger list is cut
/// (`"truncated":true`) and pages fetch the full one from `/ws/online`.
pub const MAX_PUSHED_ONLINE: usize = 500;

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
    state: Mutex<State>,
    /// Signalled on every change; the push task waits on it.
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Open sockets per online client.
    sockets: HashMap<ClientId, i64>,
    /// What the demo keeps of each client until its last socket closes.
    clients: HashMap<ClientId, Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    nick: Option<String>,
    /// Joined through the demo's routes and not left: joined again on online events.
    channels: BTreeSet<String>,
}

impl State {
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
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update below is a single map operation: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The online clients, ordered by nickname then id.
    pub fn online(&self) -> Vec<OnlineClient> {
        let state = self.state();
        let mut list: Vec<OnlineClient> =
            state.sockets.keys().map(|&id| OnlineClient { id, nick: state.nick(id) }).collect();
        list.sort_by(|a, b| (a.nick.is_none(), &a.nick, a.id).cmp(&(b.nick.is_none(), &b.nick, b.id)));
        list
    }

    /// Whether `id` has at least one socket.
    pub fn is_online(&self, id: ClientId) -> bool {
        self.state().sockets.contains_key(&id)
    }

    /// Sets the nickname of `id`; refused when the table is full of offline clients.
    pub fn set_nick(&self, id: ClientId, nick: String) -> Result<(), &'static str> {
        self.state().remember(id)?.nick = Some(nick);
        self.touch();
        Ok(())
    }

    /// Remembers that `id` joins `chan`; refused when the table or the client's channel set
    /// is full.
    pub fn join(&self, id: ClientId, chan: &str) -> Result<(), &'static str> {
        let mut state = self.state();
        let channels = &mut state.remember(id)?.channels;
        if channels.len() >= MAX_CHANNELS_PER_CLIENT && !channels.contains(chan) {
            return Err("this client has joined too many channels");
        }
        channels.insert(chan.to_owned());
        Ok(())
    }

    /// Forgets that `id` joined `chan`.
    pub fn leave(&self, id: ClientId, chan: &str) {
        let mut state = self.state();
        if let Some(client) = state.clients.get_mut(&id) {
            client.channels.remove(chan);
            if client.channels.is_empty() && client.nick.is_none() {
                state.clients.remove(&id);
            }
        }
    }

    /// The channels `id` joined through the demo.
    fn channels(&self, id: ClientId) -> Vec<String> {
        self.state().clients.get(&id).map(|c| c.channels.iter().cloned().collect()).unwrap_or_default()
    }

    /// The online clients that joined channels through the demo.
    fn online_with_channels(&self) -> Vec<ClientId> {
        let state = self.state();
        state
            .sockets
            .keys()
            .copied()
            .filter(|id| state.clients.get(id).is_some_and(|c| !c.channels.is_empty()))
            .collect()
    }

    /// Tells the push task that something pages show has changed (also channel joins).
    pub fn touch(&self) {
        self.changed.notify_one();
    }

    fn apply(&self, event: &PresenceEvent) {
        let mut state = self.state();
        match event {
            PresenceEvent::Online(v) => *state.sockets.entry(v.client_id).or_default() += 1,
            PresenceEvent::Offline(v) => {
                let gone = state.sockets.get_mut(&v.client_id).is_some_and(|n| {
                    *n -= 1;
                    *n <= 0
                });
                if gone {
                    state.sockets.remove(&v.client_id);
                    state.clients.remove(&v.client_id);
                }
            }
        }
    }

    fn replace_counts(&self, counts: HashMap<ClientId, i64>) {
        let mut state = self.state();
        if state.sockets != counts {
            tracing::debug!(before = state.sockets.len(), after = counts.len(), "online list resynchronized");
            state.sockets = counts;
            drop(state);
            self.touch();
        }
    }
}

/// Keeps `roster` live from the event bus until `stop` is cancelled, and joins clients to
/// their remembered channels again when their sockets are announced (see the module doc).
pub async fn track(im: ImClient, roster: Arc<Roster>, stop: CancellationToken) {
    // Subscribe before the first read of `{P}Online`, so no event falls between the two.
    let mut events = im.event_bus();
    let mut epoch = events.epoch();
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = resync.tick() => match read_counts(&im).await {
                Ok(counts) => roster.replace_counts(counts),
                Err(e) => tracing::warn!(error = %e, "cannot read the online list; retrying later"),
            },
            // Subscribed again: online events published meanwhile were lost.
            _ = epoch.changed(), if epoch.has_changed().is_ok() => {
                for id in roster.online_with_channels() {
                    rejoin(&im, id, &roster.channels(id)).await;
                }
            }
            event = events.next() => match event {
                Some(event) => {
                    roster.apply(&event);
                    if let PresenceEvent::Online(v) = &event {
                        rejoin(&im, v.client_id, &roster.channels(v.client_id)).await;
                    }
                    roster.touch();
                }
                None => return,
            },
        }
    }
}

/// Joins `id` to `chans` again (idempotent), retrying a failed join a few times.
async fn rejoin(im: &ImClient, id: ClientId, chans: &[String]) {
    if chans.is_empty() {
        return;
    }
    for attempt in 1..=REJOIN_ATTEMPTS {
        match im.join_chan(id, chans).await {
            Ok(()) => return,
            Err(e) if attempt == REJOIN_ATTEMPTS => {
                tracing::warn!(error = %e, client = id, "cannot join a client's channels again");
            }
            Err(_) => tokio::time::sleep(REJOIN_RETRY).await,
        }
    }
}

/// `HGETALL {P}Online`, as counts per valid client id.
async fn read_counts(im: &ImClient) -> Result<HashMap<ClientId, i64>, freeim::Error> {
    let entries = im.backend().hgetall(im.keys().online()).await.map_err(freeim::Error::from)?;
    let parse = |(id, n): (String, String)| Some((id.parse().ok()?, n.parse().ok()?));
    Ok(entries.into_iter().filter_map(parse).filter(|&(id, n): &(ClientId, i64)| id != 0 && n > 0).collect())
}

/// Broadcasts the presence message after each burst of changes, until `stop` is cancelled.
pub async fn push(im: ImClient, roster: Arc<Roster>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = roster.changed.notified() => {}
        }
        tokio::time::sleep(PUSH_DEBOUNCE).await;
        if let Err(e) = push_once(&im, &roster).await {
            tracing::warn!(error = %e, "cannot push the online list");
        }
    }
}

async fn push_once(im: &ImClient, roster: &Roster) -> Result<(), freeim::Error> {
    let mut online = roster.online();
    let truncated = online.len() > MAX_PUSHED_ONLINE;
    online.truncate(MAX_PUSHED_ONLINE);
    let channels = super::routes::channel_list(im).await?;
    let message = serde_json::json!({
        "type": "presence",
        "online": online,
        "truncated": truncated,
        "channels": channels,
        "time": unix_millis(),
    });
    im.send_broadcast_message(&message.to_string()).await
}

/// Milliseconds since the Unix epoch, as pages stamp their messages.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
        assert_eq!(roster.state().nick(7), None, "the nickname goes with the last socket");
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
        assert!(!roster.state().clients.contains_key(&3), "an empty entry is dropped");
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
