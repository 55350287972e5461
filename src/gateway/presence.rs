//! The Redis side of a socket's life, made crash-safe.
//!
//! FreeIM counts sockets per client in `{P}Online` and nothing else, so a node that dies
//! leaves its clients "online" forever. Here each node also records every socket it holds
//! in `{P}NodeSockets{node}` (socket id → token value), in the same script that counts it,
//! and keeps a lease `{P}NodeLease{node}` alive ([`super::lease`]). Whoever closes a socket,
//! the node itself or a survivor cleaning up after it, runs [`close_socket`]: the script
//! forgets the socket and counts it down only if it was still recorded, so a socket is
//! counted down exactly once.
//!
//! Open: `SocketOpen` script (record + FreeIM's `HINCRBY`), then `PUBLISH evt_{P}Online`,
//! pipelined in one round trip.
//! Close: `SocketClose` script (forget + FreeIM's decrement); only when the client's count
//! reached zero, that is its last socket on any node is gone, leave every channel of
//! `{P}Client{id}` (FreeIM leaves them on every close, which cut a client's other devices
//! out of their channels); then `PUBLISH evt_{P}Offline <token value>`.
//!
//! A Redis failure is logged and the socket's life goes on; [`super::lease`] restores the
//! records of live sockets when the subscription comes back.

use super::Node;
use super::connection::Conn;
use crate::backend::{Op, Script};
use crate::client::ImClient;
use crate::protocol::ClientId;
use bytes::Bytes;

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

/// The `SocketOpen` script call for `conn`: script, KEYS, ARGV.
fn open_script(node: &Node, conn: &Conn) -> (Script, Vec<String>, Vec<String>) {
    let keys = vec![node.client.keys().online().to_owned(), node.sockets_key.clone()];
    let args = vec![conn.client_id.to_string(), conn.id.to_string(), token_text(&conn.token_value)];
    (Script::SocketOpen, keys, args)
}

fn online_event(node: &Node, conn: &Conn) -> Op {
    Op::Publish { channel: node.client.keys().event_online().to_owned(), payload: conn.token_value.clone() }
}

/// Undoes an open socket's presence: ours on close, or a dead node's during cleanup.
pub(crate) async fn offline(node: &Node, conn: &Conn) {
    let result = close_socket(&node.client, &node.sockets_key, conn.client_id, conn.id, &conn.token_value).await;
    if let Err(e) = result {
        tracing::warn!(error = %e, client = conn.client_id, "could not clear presence");
    }
}

/// Forgets socket `socket` of `client_id` recorded in `sockets_key`; if it was still
/// recorded, counts it down, leaves the channels when it was the client's last socket, and
/// publishes the offline event. Returns whether it was still recorded.
pub(crate) async fn close_socket(
    client: &ImClient,
    sockets_key: &str,
    client_id: ClientId,
    socket: u64,
    token_value: &Bytes,
) -> crate::Result<bool> {
    let keys = vec![client.keys().online().to_owned(), sockets_key.to_owned()];
    let remaining =
        client.backend().eval(Script::SocketClose, keys, vec![client_id.to_string(), socket.to_string()]).await?;
    if remaining < 0 {
        return Ok(false);
    }
    if remaining == 0 {
        let chans = client.get_chan_list_by_client_id(client_id).await?;
        client.leave_chan(client_id, &chans).await?;
    }
    let op = Op::Publish { channel: client.keys().event_offline().to_owned(), payload: token_value.clone() };
    client.backend().execute(vec![op]).await?;
    Ok(true)
}

fn token_text(value: &Bytes) -> String {
    String::from_utf8_lossy(value).into_owned()
}
