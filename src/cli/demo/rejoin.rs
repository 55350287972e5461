//! The re-join policy: channel membership survives a Redis that restarts empty.
//!
//! Channel membership is business state: the gateway leaves a client's channels when its last
//! socket closes, and a Redis that restarts empty loses them all. Nodes then record their
//! live sockets again and announce each with an online event; so the demo remembers the
//! channels each client joined through its routes (in the [`Roster`]) and joins them again on
//! the client's online events ([`client`]; joining is idempotent), and on its own
//! re-subscription ([`everyone`]), which may come after those events.

use super::roster::Roster;
use freeim::{ClientId, ImClient};
use std::time::Duration;

/// Tries of one re-join: the first command after a Redis restart may meet a dead connection.
const REJOIN_ATTEMPTS: usize = 3;
/// Pause between two tries of a re-join.
const REJOIN_RETRY: Duration = Duration::from_millis(200);

/// On an online event of `id`: joins it to its remembered channels again.
pub async fn client(im: &ImClient, roster: &Roster, id: ClientId) {
    join_again(im, id, &roster.channels(id)).await;
}

/// On the demo's own re-subscription: joins every online client to its remembered channels
/// again, since their online events may have been published before it.
pub async fn everyone(im: &ImClient, roster: &Roster) {
    for id in roster.online_with_channels() {
        client(im, roster, id).await;
    }
}

/// Joins `id` to `chans` again (idempotent), retrying a failed join a few times.
async fn join_again(im: &ImClient, id: ClientId, chans: &[String]) {
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
