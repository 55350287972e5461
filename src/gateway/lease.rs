//! Node leases: no ghost presence after a crash, and presence restored after a Redis loss.
//!
//! Every node keeps `{P}NodeLease{node}` alive (TTL [`LEASE_TTL_SECS`], renewed every
//! [`RENEW_EVERY`] by [`keep`], from a thread and a Redis connection of its own: at a
//! million sockets on this box, 53 nodes broadcasting on 2 cores starved their runtimes
//! for longer than the lease, and the survivors cleaned up live nodes). Every node also
//! checks the others' leases on that tick, from its lease task: a node whose
//! lease is gone but whose `{P}NodeSockets{node}` still lists sockets died without
//! cleaning up (kill -9, power loss). One survivor, the one that takes the cleanup lock
//! (`SET NX`), runs the normal close path for each of those sockets: counts down
//! `{P}Online`, leaves channels where it was the client's last socket, publishes the
//! offline event. The close script only counts a socket down if it is still recorded, so
//! even a second cleaner (say, after the lock expired) cannot count it down twice.
//!
//! Detection takes at most `LEASE_TTL_SECS + RENEW_EVERY` (20 s) after the crash.
//!
//! A node that restarts cleans its own stale records before it serves ([`clean_own`]).
//! When the node-channel subscription comes back after a Redis loss, the node records its
//! live sockets again ([`restore`]): Redis may have restarted empty, or a survivor may have
//! cleaned it up while it was cut off. Each socket recorded anew is announced with an
//! online event, so the business side can re-join its channels (channel membership is
//! business state: FreeIM's clients join again on every connect).

use super::Node;
use super::connection::Conn;
use super::presence::{self, Closing, SocketField};
use crate::backend::Backend;
use crate::protocol::TokenValue;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// Seconds a lease lives without renewal.
const LEASE_TTL_SECS: u64 = 15;
/// How often a node renews its lease and checks the others'.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// Pause before retrying a restore that could not reach the backend.
const RESTORE_RETRY: Duration = Duration::from_millis(250);
/// Seconds the cleanup lock of a dead node is held (long enough for 19k sockets).
const CLEANUP_LOCK_SECS: u64 = 120;
/// Live sockets recorded again at once (their scripts pipelined on the command connection).
const RESTORE_CONCURRENCY: usize = 64;
/// Socket records read per `HSCAN` page while cleaning up.
const CLEAN_PAGE: usize = 1000;

/// Renews this node's lease every [`RENEW_EVERY`] until shutdown, on a thread of its own
/// with a current-thread runtime and its own command connection: a thread that sleeps
/// between renewals is run as soon as it wakes, however busy the node's runtime is. A
/// renewal that finds the lease gone (it lapsed, or Redis came back empty) wakes
/// [`run`] through `Node::lease_lapsed`, to record the live sockets again.
pub(crate) fn keep(node: Arc<Node>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let renewals = async move {
        let backend = match node.client.backend().detached() {
            Ok(backend) => backend,
            // The URL was valid for the node's own connection; this cannot fail after it.
            Err(e) => return tracing::error!(error = %e, "no connection for the node lease"),
        };
        let mut ticks = tokio::time::interval(RENEW_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = node.shutdown.cancelled() => return,
            }
            if renew(&node, &backend).await == Some(false) {
                node.lease_lapsed.notify_one();
            }
        }
    };
    std::thread::Builder::new().name("freeim-lease".into()).spawn(move || runtime.block_on(renewals))?;
    Ok(())
}

/// Cleans up after dead nodes and restores presence after a Redis loss or a lapsed lease,
/// until shutdown.
pub(crate) async fn run(node: Arc<Node>) {
    let mut ticks = tokio::time::interval(RENEW_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut epoch = node.epoch.clone();
    // Established at most once so far: nothing to restore yet.
    let mut seen = (*epoch.borrow_and_update()).max(1);
    let mut own_clean = false;
    let mut restore_pending = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = epoch.changed(), if epoch.has_changed().is_ok() => {}
            // A survivor may have cleaned up this node's live sockets: record them again.
            // (Not while the subscription is down: Redis itself was lost, and the restore
            // once subscribed again announces the sockets when the business can hear it.)
            _ = node.lease_lapsed.notified() => {
                if !node.registry.is_empty() && *node.live.borrow() {
                    tracing::warn!("this node's lease had lapsed: recording its live sockets again");
                    restore_pending = true;
                }
            }
            // The command connection may come back a little after the subscription.
            _ = tokio::time::sleep(RESTORE_RETRY), if restore_pending => {}
            _ = node.shutdown.cancelled() => return,
        }
        let now = *epoch.borrow_and_update();
        if now > seen {
            seen = now;
            node.metrics.resubscribed();
            tracing::warn!("node channel subscription re-established: restoring presence");
            restore_pending = true;
            // Sockets that closed while Redis was unreachable could not be counted down; if
            // Redis kept its data, their records are still there: clean them (live ones stay).
            own_clean = false;
        }
        if restore_pending {
            // The lease first: Redis may have come back without it, and records under a
            // missing lease make the other nodes clean this live node up.
            restore_pending = !(take(&node).await.is_some() && restore(&node).await);
        }
        if !own_clean {
            own_clean = clean_own(&node).await;
        }
        check_others(&node).await;
        if let Err(e) = presence::leave_away(&node).await {
            tracing::warn!(error = %e, "could not leave the channels of clients away");
        }
    }
}

/// Cleans this node's records left by an earlier run (keeping this run's live sockets).
/// Returns whether it could talk to the backend.
pub(crate) async fn clean_own(node: &Node) -> bool {
    match clean_node(node, &node.config.server).await {
        Ok(0) => true,
        Ok(n) => {
            tracing::warn!(sockets = n, "cleaned presence left by this node's previous run");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not clean this node's stale presence; retrying");
            false
        }
    }
}

/// Takes or renews this node's lease on the node's own connection: `Some(true)` if it was
/// still alive, `Some(false)` if it had lapsed (or never existed), `None` if the backend
/// failed.
pub(crate) async fn take(node: &Node) -> Option<bool> {
    renew(node, node.client.backend()).await
}

/// [`take`] on `backend` (the node's connection, or the lease thread's own).
async fn renew(node: &Node, backend: &Backend) -> Option<bool> {
    let lease = node.client.keys().node_lease(&node.config.server);
    match backend.set_ex_get(&lease, "alive", LEASE_TTL_SECS).await {
        Ok(old) => Some(old.is_some()),
        Err(e) => {
            node.metrics.lease_renewal_failed();
            tracing::warn!(error = %e, "could not renew node lease");
            None
        }
    }
}

/// Checks the other nodes' leases and cleans up after those that died.
async fn check_others(node: &Node) {
    let (client, me) = (&node.client, &node.config.server);
    // Every other node's lease in one round trip: at 53 nodes on a loaded box, one GET
    // each made a tick outlast the lease.
    let others: Vec<&String> = client.servers().iter().filter(|s| *s != me).collect();
    let leases: Vec<String> = others.iter().map(|other| client.keys().node_lease(other)).collect();
    match node.client.backend().mget(&leases).await {
        Ok(values) => {
            for (other, _) in others.iter().zip(values).filter(|(_, lease)| lease.is_none()) {
                if let Err(e) = clean_if_dead(node, other).await {
                    tracing::warn!(error = %e, node = %other, "could not clean up after a node");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not check the other nodes' leases"),
    }
}

/// Cleans up after `other`, whose lease is gone, if it left socket records and no other
/// survivor holds its cleanup lock.
async fn clean_if_dead(node: &Node, other: &str) -> crate::Result<()> {
    let backend = node.client.backend();
    let keys = node.client.keys();
    // HLEN, not the records: every survivor looks, and a full node has ~19k of them.
    if backend.hlen(&keys.node_sockets(other)).await? == 0 {
        return Ok(());
    }
    if !backend.set_nx_ex(&keys.node_cleanup(other), &node.config.server, CLEANUP_LOCK_SECS).await? {
        return Ok(()); // another survivor is on it
    }
    let cleaned = clean_node(node, other).await?;
    node.metrics.lease_cleanup(cleaned);
    tracing::warn!(node = %other, sockets = cleaned, "node lease expired: cleaned up its presence");
    Ok(())
}

/// Runs the close path for every socket recorded for `server` that is not live here,
/// [`presence::CLOSE_BATCH`] at a time (a restart after a crash of a full node has ~19k records, and
/// it serves only once they are cleaned), reading the records in `HSCAN` pages of
/// [`CLEAN_PAGE`] (an `HGETALL` of 19k records blocks Redis for about 9 ms); returns how
/// many this call cleaned.
async fn clean_node(node: &Node, server: &str) -> crate::Result<usize> {
    let (backend, key) = (node.client.backend(), node.client.keys().node_sockets(server));
    let (mut cursor, mut cleaned) = (0, 0);
    loop {
        let page = backend.hscan(&key, cursor, CLEAN_PAGE).await?;
        let (mut closing, mut malformed) = (Vec::new(), Vec::new());
        for (socket, value) in page.entries {
            match record(&socket, value) {
                Some(c) if server == node.config.server && node.registry.holds_socket(c.client_id, c.field.id) => {}
                Some(c) => closing.push(c),
                None => malformed.push(socket),
            }
        }
        if !malformed.is_empty() {
            backend.execute(vec![crate::backend::Op::HDel { key: key.clone(), fields: malformed }]).await?;
        }
        cleaned += presence::close_in_batches(node, &key, &closing).await?;
        if page.cursor == 0 {
            return Ok(cleaned);
        }
        cursor = page.cursor;
    }
}

/// The socket a record of `{P}NodeSockets{node}` stands for; `None` (logged) when it is
/// malformed, to be dropped.
fn record(socket: &str, value: String) -> Option<Closing> {
    let Some(field) = SocketField::parse(socket) else {
        tracing::warn!(%socket, "dropping malformed socket record");
        return None;
    };
    match serde_json::from_str::<TokenValue>(&value) {
        Ok(token) => Some(Closing { client_id: token.client_id, field, token: Bytes::from(value) }),
        Err(e) => {
            tracing::warn!(error = %e, %value, "dropping socket record with a malformed token value");
            None
        }
    }
}

/// Records every live socket again, [`RESTORE_CONCURRENCY`] at once; each one missing from
/// Redis is announced online. Returns `false` when the backend failed (the caller retries;
/// replays are harmless).
pub(crate) async fn restore(node: &Node) -> bool {
    let mut restored = 0;
    for chunk in node.registry.all().chunks(CLEAN_PAGE) {
        let results: Vec<crate::Result<bool>> = futures_util::stream::iter(chunk.iter().cloned())
            .map(|conn| async move { restore_socket(node, &conn).await })
            .buffer_unordered(RESTORE_CONCURRENCY)
            .collect()
            .await;
        for result in results {
            match result {
                Ok(recorded) => restored += usize::from(recorded),
                Err(e) => {
                    tracing::warn!(error = %e, "presence restore interrupted; retrying");
                    return false;
                }
            }
        }
    }
    tracing::info!(restored, sockets = node.registry.len(), "presence restored");
    true
}

/// Records `conn` again; whether it was missing from Redis.
async fn restore_socket(node: &Node, conn: &Conn) -> crate::Result<bool> {
    let recorded = presence::open_socket(node, conn).await?;
    // The socket may have closed meanwhile: its close path (unregister, then count down)
    // may have run before we recorded it again. Undo it then; counting down twice is
    // impossible, so this is safe whichever ran first.
    if !node.registry.holds(conn) {
        presence::close_sockets(node, &node.sockets_key, &[Closing::of(conn)]).await?;
    }
    Ok(recorded)
}
