//! The broadcaster: pages learn about roster changes through FreeIM itself.
//!
//! After a change (debounced by [`PUSH_DEBOUNCE`], so a burst of connects costs one message)
//! the demo broadcasts a `{"type":"presence","online":[…],"channels":[…]}` message,
//! serialized twice like every page message. FreeIM's own page ignores that type.

use super::channels::{ChannelEntry, channel_list};
use super::roster::{OnlineClient, Roster};
use freeim::ImClient;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Quiet time after a change before the presence message goes out; changes within it are
/// merged into one message.
pub const PUSH_DEBOUNCE: Duration = Duration::from_millis(150);
/// Entries of the online list carried by one presence message; a larger list is cut
/// (`"truncated":true`) and pages fetch the full one from `/ws/online`.
pub const MAX_PUSHED_ONLINE: usize = 500;

/// Broadcasts the presence message after each burst of changes, until `stop` is cancelled.
pub async fn push(im: ImClient, roster: Arc<Roster>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = roster.changed() => {}
        }
        tokio::time::sleep(PUSH_DEBOUNCE).await;
        if let Err(e) = push_once(&im, &roster).await {
            tracing::warn!(error = %e, "cannot push the online list");
        }
    }
}

async fn push_once(im: &ImClient, roster: &Roster) -> Result<(), freeim::Error> {
    let message = presence(roster.online(), channel_list(im).await?, unix_millis());
    im.send_broadcast_message(&message.to_string()).await
}

/// The presence message, its online list cut to [`MAX_PUSHED_ONLINE`] entries.
fn presence(mut online: Vec<OnlineClient>, channels: Vec<ChannelEntry>, time: u64) -> Value {
    let truncated = online.len() > MAX_PUSHED_ONLINE;
    online.truncate(MAX_PUSHED_ONLINE);
    json!({
        "type": "presence",
        "online": online,
        "truncated": truncated,
        "channels": channels,
        "time": time,
    })
}

/// Milliseconds since the Unix epoch, as pages stamp their messages.
fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_online_list_is_cut_at_the_bound() {
        let cases = [
            (0, 0, false),
            (1, 1, false),
            (MAX_PUSHED_ONLINE, MAX_PUSHED_ONLINE, false),
            (MAX_PUSHED_ONLINE + 1, MAX_PUSHED_ONLINE, true),
        ];
        for (clients, carried, truncated) in cases {
            let online = (1..=clients as i64).map(|id| OnlineClient { id, nick: None }).collect();
            let message = presence(online, Vec::new(), 42);
            assert_eq!(message["online"].as_array().unwrap().len(), carried, "{clients} clients");
            assert_eq!(message["truncated"], truncated, "{clients} clients");
        }
    }

    #[test]
    fn the_message_is_typed_and_stamped() {
        let message = presence(vec![OnlineClient { id: 7, nick: Some("Ann".into()) }], Vec::new(), 42);
        let expected = json!({
            "type": "presence",
            "online": [{"websocketId": 7, "nick": "Ann"}],
            "truncated": false,
            "channels": [],
            "time": 42,
        });
        assert_eq!(message, expected);
    }
}
