//! The Redis side of a socket's life: online when it opens, offline when it closes.
//!
//! Online: `HINCRBY {P}Online id 1` and `PUBLISH evt_{P}Online <token value>`, pipelined.
//! Offline: decrement the count (deleting it at zero); only when it reaches zero, that is
//! when the client's last socket on any node is gone, leave every channel of
//! `{P}Client{id}`; then `PUBLISH evt_{P}Offline <token value>`. The reference leaves the
//! channels on every close, so one device closing cut all the others out of their channels.
//!
//! A Redis failure here is logged and the socket's life goes on (issue: presence recovery).

use super::Node;
use super::connection::Conn;
use crate::backend::{Op, Script};

pub(crate) async fn online(node: &Node, conn: &Conn) {
    let keys = node.client.keys();
    let ops = vec![
        Op::HIncrBy { key: keys.online().to_owned(), field: conn.client_id.to_string(), by: 1 },
        Op::Publish { channel: keys.event_online().to_owned(), payload: conn.token_value.clone() },
    ];
    if let Err(e) = node.client.backend().execute(ops).await {
        tracing::warn!(error = %e, client = conn.client_id, "could not record online presence");
    }
}

pub(crate) async fn offline(node: &Node, conn: &Conn) {
    if let Err(e) = leave_if_last(node, conn).await {
        tracing::warn!(error = %e, client = conn.client_id, "could not clear presence");
    }
    let keys = node.client.keys();
    let op = Op::Publish { channel: keys.event_offline().to_owned(), payload: conn.token_value.clone() };
    if let Err(e) = node.client.backend().execute(vec![op]).await {
        tracing::warn!(error = %e, client = conn.client_id, "could not publish offline event");
    }
}

async fn leave_if_last(node: &Node, conn: &Conn) -> crate::Result<()> {
    let (client, id) = (&node.client, conn.client_id);
    let online = vec![client.keys().online().to_owned()];
    let remaining = client.backend().eval(Script::OnlineDecr, online, vec![id.to_string()]).await?;
    if remaining <= 0 {
        let chans = client.get_chan_list_by_client_id(id).await?;
        client.leave_chan(id, &chans).await?;
    }
    Ok(())
}
