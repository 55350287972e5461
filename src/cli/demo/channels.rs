//! The channel list as pages show it: FreeIM's `{chan, online}` entries, ordered by name.
//!
//! Both `/ws/get-channels` and the presence message carry it, so a page renders one shape
//! whichever it got it from.

use freeim::ImClient;
use serde::Serialize;

/// One channel as the page lists it (FreeIM's `{chan, online}`; `online` is the member
/// count).
#[derive(Debug, Serialize)]
pub struct ChannelEntry {
    chan: String,
    online: i64,
}

/// Every channel with its member count, ordered by name.
pub async fn channel_list(im: &ImClient) -> Result<Vec<ChannelEntry>, freeim::Error> {
    Ok(entries(im.get_chan_list().await?))
}

/// `(channel, member count)` pairs as entries, ordered by name.
fn entries(counts: Vec<(String, i64)>) -> Vec<ChannelEntry> {
    let mut list: Vec<ChannelEntry> = counts.into_iter().map(|(chan, online)| ChannelEntry { chan, online }).collect();
    list.sort_by(|a, b| a.chan.cmp(&b.chan));
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn entries_are_freeim_shaped_and_ordered_by_name() {
        let cases: Vec<(Vec<(&str, i64)>, Value)> = vec![
            (vec![], json!([])),
            (vec![("room", 2)], json!([{"chan": "room", "online": 2}])),
            (
                vec![("room", 2), ("Lobby", 0), ("lobby", 5)],
                json!([{"chan": "Lobby", "online": 0}, {"chan": "lobby", "online": 5}, {"chan": "room", "online": 2}]),
            ),
        ];
        for (counts, expected) in cases {
            let counts = counts.into_iter().map(|(chan, n)| (chan.to_owned(), n)).collect();
            assert_eq!(serde_json::to_value(entries(counts)).unwrap(), expected);
        }
    }
}
