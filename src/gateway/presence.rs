//! The Redis side of a socket's life, made crash-safe.
//!
//! FreeIM counts sockets per client in `{P}Online` and nothing else, so a node that dies
//! leaves its clients "online" forever. Here each node also records every socket it holds
//! in `{P}NodeSockets{node}` (socket field → token value, see [`SocketField`]), in the same
//! script that counts it,
//! and keeps a lease `{P}NodeLease{node}` alive ([`super::lease`]). Whoever closes a socket,
//! the node itself or a survivor cleaning up after it, runs [`close_sockets`]: the script
//! forgets the socket and counts it down only if it was still recorded, so a socket is
//! counted down exactly once.
//!
//! Open: `SocketOpen` script (record + FreeIM's `HINCRBY`), then `PUBLISH evt_{P}Online`,
//! pipelined in one round trip.
//! Close: `SocketClose` script (forget + FreeIM's decrement, for a batch of sockets: see
//! [`closer`]); only when the client's count
//! reached zero, that is its last socket on any node is gone, leave every channel of
//! `{P}Client{id}` (FreeIM leaves them on every close, which cut a client's other devices
//! out of their channels); then `PUBLISH evt_{P}Offline <token value>`. When that last
//! socket was durable, the channels are left `--history-ttl` later instead (the client is
//! recorded in `{P}NodeAway{node}`, and [`leave_away`] leaves them unless it came back), so
//! that its resume can replay the channel messages it missed.
//!
//! A Redis failure is logged and the socket's life goes on; [`super::lease`] restores the
//! records of live sockets when the subscription comes back.

use super::Node;
use super::connection::{Conn, Kind};
use crate::backend::{BackendError, Op, Script};
use crate::client::ImClient;
use crate::protocol::{ClientId, MembersChange};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// What happens to a client's channels when its last socket closes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Leave<'a> {
    /// It leaves them now, as FreeIM.
    Now,
    /// It is recorded in the away hash `key` and leaves them `after` this long.
    After { key: &'a str, after: Duration },
}

/// A socket's field in `{P}NodeSockets{node}`: its id, followed by `d` when the socket is
/// durable. Whoever closes the socket, this node or, after a crash, the node's next run or a
/// survivor, reads from it whether the client's channels are left now or later
/// ([`Leave`]): a durable client whose node was killed must still be a member when it
/// resumes, or its replay would skip the channel messages it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketField {
    /// The socket id (unique per node run).
    pub(crate) id: u64,
    /// Whether the socket is durable.
    pub(crate) durable: bool,
}

impl SocketField {
    /// The field of `conn`.
    pub(crate) fn of(conn: &Conn) -> Self {
        SocketField { id: conn.id, durable: conn.kind() != Kind::FreeIm }
    }

    /// Parses a field as written by [`SocketField::text`].
    pub(crate) fn parse(field: &str) -> Option<Self> {
        let (digits, durable) = match field.strip_suffix('d') {
            Some(digits) => (digits, true),
            None => (field, false),
        };
        Some(SocketField { id: digits.parse().ok()?, durable })
    }

    /// The field as stored: `17` or `17d`.
    pub(crate) fn text(self) -> String {
        if self.durable { format!("{}d", self.id) } else { self.id.to_string() }
    }

    /// When the client leaves its channels if this was its last socket.
    pub(crate) fn leave(self, node: &Node) -> Leave<'_> {
        if self.durable { Leave::After { key: &node.away_key, after: node.config.history_ttl } } else { Leave::Now }
    }
}

/// Records a newly opened socket and announces it, in one pipelined round trip.
pub(crate) async fn online(node: &Node, conn: &Conn) {
    let (script, keys, args) = open_script(node, conn);
    let ops = vec![Op::Eval { script, keys, args }, online_event(node, conn)];
    if let Err(e) = node.client.backend().execute(ops).await {
        tracing::warn!(error = %e, client = conn.client_id, "could not record online presence");
    }
}

/// Records `conn` if it is not recorded yet (a restore replays this) and then publishes
/// its online event; returns whether it was recorded now.
pub(crate) async fn open_socket(node: &Node, conn: &Conn) -> crate::Result<bool> {
    let (script, keys, args) = open_script(node, conn);
    let recorded = node.client.backend().eval(script, keys, args).await? >= 0;
    if recorded {
        node.client.backend().execute(vec![online_event(node, conn)]).await?;
    }
    Ok(recorded)
}

/// The `SocketOpen` script call for `conn`: script, KEYS, ARGV. With the channel cache, the
/// script also publishes the client's channels to this node (see `rooms`), every time: a
/// restore after a lost subscription reloads them too, as changes may have been missed.
fn open_script(node: &Node, conn: &Conn) -> (Script, Vec<String>, Vec<String>) {
    let names = node.client.keys();
    let mut keys = vec![names.online().to_owned(), node.sockets_key.clone()];
    let mut args = vec![conn.client_id.to_string(), SocketField::of(conn).text(), token_text(&conn.token_value)];
    if node.config.chan_cache {
        keys.push(names.client(conn.client_id));
        args.push(names.server(&node.config.server));
        args.push(format!("{}{}:", MembersChange::chans_prefix(), conn.client_id));
    }
    (Script::SocketOpen, keys, args)
}

fn online_event(node: &Node, conn: &Conn) -> Op {
    Op::Publish { channel: node.client.keys().event_online().to_owned(), payload: conn.token_value.clone() }
}

/// Undoes the presence of a socket of ours that closed, through the node's closer.
pub(crate) async fn offline(node: &Node, conn: &Conn) {
    let closing = Closing::of(conn);
    let (done, outcome) = oneshot::channel();
    let result = match node.closes.send((closing, done)) {
        // The closer answers every close it takes; it is gone only once the node is.
        Ok(()) => outcome.await.unwrap_or(Err(BackendError::Shutdown)),
        Err(unsent) => close_sockets(node, &node.sockets_key, &[unsent.0.0]).await.map(|_| ()),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, client = conn.client_id, "could not clear presence");
    }
}

/// A socket whose presence is to be undone.
#[derive(Debug, Clone)]
pub(crate) struct Closing {
    pub(crate) client_id: ClientId,
    /// Its field in the node's socket records.
    pub(crate) field: SocketField,
    /// Its token value: the offline event's payload.
    pub(crate) token: Bytes,
}

impl Closing {
    /// The close of `conn`, one of this node's sockets.
    pub(crate) fn of(conn: &Conn) -> Self {
        Closing { client_id: conn.client_id, field: SocketField::of(conn), token: conn.token_value.clone() }
    }
}

/// A close of one of this node's sockets, waiting for the closer, and where its outcome goes.
pub(crate) type Waiting = (Closing, oneshot::Sender<Result<(), BackendError>>);

/// Most sockets closed by one script call (and its two pipelines). Large, because a node on
/// a starved box waits long for each round trip.
pub(crate) const CLOSE_BATCH: usize = 1024;

/// The node's closer: the close paths of its sockets, [`CLOSE_BATCH`] at a time, until the
/// node has shut down and every connection task is done. A node losing all of its 19k
/// sockets at once (a drain, a load balancer restart) then costs Redis one script call per
/// batch instead of four round trips per socket: at a million sockets on this box, one
/// close path per socket queued so much work that most of them passed the command timeout
/// and left their presence behind.
pub(crate) async fn closer(node: Arc<Node>, mut closes: mpsc::UnboundedReceiver<Waiting>) {
    let mut batch = Vec::with_capacity(CLOSE_BATCH);
    loop {
        tokio::select! {
            biased;
            n = closes.recv_many(&mut batch, CLOSE_BATCH) => if n == 0 { return },
            () = node.connections.wait(), if node.shutdown.is_cancelled() => return,
        }
        let (closing, done): (Vec<Closing>, Vec<_>) = batch.drain(..).unzip();
        let outcome = close_sockets(&node, &node.sockets_key, &closing).await.map(|_| ());
        for done in done {
            let _ = done.send(outcome.clone());
        }
    }
}

/// Undoes the presence of every registered socket, [`CLOSE_BATCH`] at a time (at shutdown:
/// a node that exits with sockets still open past its drain timeout must not leave their
/// records behind: when every node stops, no survivor is left to clean up). Returns how
/// many were still recorded.
pub(crate) async fn offline_all(node: &Node) -> Result<usize, BackendError> {
    let closing: Vec<Closing> = node.registry.all().iter().map(|conn| Closing::of(conn)).collect();
    close_in_batches(node, &node.sockets_key, &closing).await
}

/// [`close_sockets`] on `closing`, [`CLOSE_BATCH`] at a time; how many were still recorded.
pub(crate) async fn close_in_batches(
    node: &Node,
    sockets_key: &str,
    closing: &[Closing],
) -> Result<usize, BackendError> {
    let mut closed = 0;
    for batch in closing.chunks(CLOSE_BATCH) {
        closed += close_sockets(node, sockets_key, batch).await?.into_iter().filter(|c| *c).count();
    }
    Ok(closed)
}

/// Forgets the sockets of `closing` recorded in `sockets_key`. For each one still recorded,
/// counts it down, leaves the channels when it was its client's last socket ([`Leave`]),
/// and publishes the offline event: one script call, one pipelined read of the channels of
/// the clients gone, one pipeline of leaves and events. Returns for each whether it was
/// still recorded.
pub(crate) async fn close_sockets(
    node: &Node,
    sockets_key: &str,
    closing: &[Closing],
) -> Result<Vec<bool>, BackendError> {
    let (client, names) = (&node.client, node.client.keys());
    let keys = vec![names.online().to_owned(), sockets_key.to_owned()];
    let args = closing.iter().flat_map(|c| [c.client_id.to_string(), c.field.text()]).collect();
    let counts = client.backend().eval_counts(Script::SocketClose, keys, args).await?;
    if counts.len() != closing.len() {
        return Err(BackendError::UnexpectedReply("SocketClose"));
    }
    let closed: Vec<(&Closing, i64)> = closing.iter().zip(counts.iter().copied()).filter(|(_, n)| *n >= 0).collect();
    let mut ops = Vec::new();
    let mut leave_now = Vec::new();
    for (c, _) in closed.iter().filter(|(_, n)| *n == 0) {
        match c.field.leave(node) {
            Leave::Now => leave_now.push(c.client_id),
            Leave::After { key, after } => {
                let until = (wall_ms() + after.as_millis() as u64).to_string();
                ops.push(Op::HSet { key: key.to_owned(), field: c.client_id.to_string(), value: until });
            }
        }
    }
    let chans = client.backend().hkeys(&leave_now.iter().map(|&id| names.client(id)).collect::<Vec<_>>()).await?;
    for (id, chans) in leave_now.iter().zip(chans) {
        ops.extend(client.leave_ops(*id, &chans));
    }
    let event = names.event_offline();
    ops.extend(closed.iter().map(|(c, _)| Op::Publish { channel: event.to_owned(), payload: c.token.clone() }));
    client.backend().execute(ops).await?;
    Ok(counts.iter().map(|n| *n >= 0).collect())
}

/// Makes `client_id` leave every channel it is a member of.
async fn leave_all(client: &ImClient, client_id: ClientId) -> crate::Result<()> {
    let chans = client.get_chan_list_by_client_id(client_id).await?;
    client.leave_chan(client_id, &chans).await
}

/// Leaves the channels of the clients recorded away on this node whose time is up and
/// that have no socket on any node now; forgets every one whose time is up.
pub(crate) async fn leave_away(node: &Node) -> crate::Result<()> {
    let client = &node.client;
    let now = wall_ms();
    let away = client.backend().hgetall(&node.away_key).await?;
    let due: Vec<String> = away
        .into_iter()
        .filter(|(_, until)| until.parse::<u64>().ok().is_none_or(|u| u <= now))
        .map(|(id, _)| id)
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    let ids: Vec<ClientId> = due.iter().filter_map(|id| id.parse().ok()).collect();
    let online = client.has_online_many(&ids).await?;
    for (&id, _) in ids.iter().zip(online).filter(|(_, online)| !online) {
        leave_all(client, id).await?;
    }
    client.backend().execute(vec![Op::HDel { key: node.away_key.clone(), fields: due }]).await?;
    Ok(())
}

/// Milliseconds since the Unix epoch (away deadlines, compared by the same node).
fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn token_text(value: &Bytes) -> String {
    String::from_utf8_lossy(value).into_owned()
}
