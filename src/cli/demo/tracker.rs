//! The task that keeps the [`Roster`] live from the cluster's event bus.
//!
//! Online and offline events count sockets per client. The counts are seeded from
//! `{P}Online` at start and re-read every [`RESYNC_INTERVAL`]: pub/sub is at-most-once, so
//! events missed while Redis was away would otherwise leave the list wrong for good. The same
//! events drive the re-join policy of [`rejoin`].

use super::rejoin;
use super::roster::Roster;
use freeim::{ClientId, ImClient, PresenceEvent};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the socket counts are re-read from `{P}Online`, repairing anything missed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Keeps `roster` live from the event bus until `stop` is cancelled, and joins clients to
/// their remembered channels again when their sockets are announced (see [`rejoin`]).
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
            _ = epoch.changed(), if epoch.has_changed().is_ok() => rejoin::everyone(&im, &roster).await,
            event = events.next() => match event {
                Some(event) => {
                    roster.apply(&event);
                    if let PresenceEvent::Online(v) = &event {
                        rejoin::client(&im, &roster, v.client_id).await;
                    }
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
    Ok(valid_counts(entries))
}

/// The entries of `{P}Online` that name a client (not 0) with at least one socket; others
/// (unparsable, zero or negative) are skipped.
fn valid_counts(entries: Vec<(String, String)>) -> HashMap<ClientId, i64> {
    let parse = |(id, n): (String, String)| Some((id.parse().ok()?, n.parse().ok()?));
    entries.into_iter().filter_map(parse).filter(|&(id, n): &(ClientId, i64)| id != 0 && n > 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_entries_of_the_online_hash_count() {
        let cases: &[(&str, &str, Option<i64>)] = &[
            ("7", "2", Some(2)),
            ("7", "1", Some(1)),
            ("0", "1", None),
            ("7", "0", None),
            ("7", "-1", None),
            ("seven", "1", None),
            ("7", "many", None),
        ];
        for &(id, n, expected) in cases {
            let counts = valid_counts(vec![(id.to_owned(), n.to_owned())]);
            assert_eq!(counts.values().next().copied(), expected, "{id:?} => {n:?}");
        }
    }
}
