//! Who is online, with nicknames, kept live from the cluster's event bus, and pushed to
//! every page when it changes.
//!
//! FreeIM's demo has no online list. Ours counts sockets per client from the online and
//! offline events (a client with two tabs is online until both close), seeded from
//! `{P}Online` at start and re-read every [`RESYNC_INTERVAL`]: pub/sub is at-most-once, so
//! events missed while Redis was away would otherwise leave the list wrong for good.
//!
//! Pages learn about changes through FreeIM itself: after a change (debounced by
//! [`PUSH_DEBOUNCE`], so a burst of connects costs one message) the demo broadcasts a
//! `{"type":"presence","online":[…],"channels":[…]}` message, serialized twice like every
//! page message. FreeIM's own page ignores that type.
//!
//! Nicknames live in this process only (the demo is one business app); a page sets its
//! nickname again each time it connects, and a nickname is forgotten when its client's last
//! socket closes, so the table holds at most the online clients plus [`MAX_NICKS`].

use freeim::{ClientId, ImClient, PresenceEvent};
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Quiet time after a change before the presence message goes out; changes within it are
/// merged into one message.
pub const PUSH_DEBOUNCE: Duration = Duration::from_millis(150);
/// How often the socket counts are re-read from `{P}Online`, repairing anything missed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Nicknames of clients that are not (or not yet) online that the table keeps; beyond
/// this, setting a new one is refused (429) until clients come online or leave.
pub const MAX_NICKS: usize = 10_000;
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
    nicks: HashMap<ClientId, String>,
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
            state.sockets.keys().map(|&id| OnlineClient { id, nick: state.nicks.get(&id).cloned() }).collect();
        list.sort_by(|a, b| (a.nick.is_none(), &a.nick, a.id).cmp(&(b.nick.is_none(), &b.nick, b.id)));
        list
    }

    /// Whether `id` has at least one socket.
    pub fn is_online(&self, id: ClientId) -> bool {
        self.state().sockets.contains_key(&id)
    }

    /// Sets the nickname of `id`; refused when the table is full of offline clients.
    pub fn set_nick(&self, id: ClientId, nick: String) -> Result<(), &'static str> {
        let mut state = self.state();
        let offline_nicks = state.nicks.len().saturating_sub(state.sockets.len());
        if !state.nicks.contains_key(&id) && !state.sockets.contains_key(&id) && offline_nicks >= MAX_NICKS {
            return Err("too many nicknames of clients that are not online; retry later");
        }
        state.nicks.insert(id, nick);
        drop(state);
        self.touch();
        Ok(())
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
                    state.nicks.remove(&v.client_id);
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

/// Keeps `roster` live from the event bus until `stop` is cancelled.
pub async fn track(im: ImClient, roster: Arc<Roster>, stop: CancellationToken) {
    // Subscribe before the first read of `{P}Online`, so no event falls between the two.
    let mut events = im.event_bus();
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = resync.tick() => match read_counts(&im).await {
                Ok(counts) => roster.replace_counts(counts),
                Err(e) => tracing::warn!(error = %e, "cannot read the online list; retrying later"),
            },
            event = events.next() => match event {
                Some(event) => {
                    roster.apply(&event);
                    roster.touch();
                }
                None => return,
            },
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
        assert_eq!(roster.state().nicks.get(&7), None, "the nickname goes with the last socket");
        roster.apply(&offline(9)); // an offline event for an unknown client changes nothing
        assert_eq!(roster.online().len(), 1);
    }
}
