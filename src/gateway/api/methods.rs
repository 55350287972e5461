//! The API's methods: [`Method`] (each name and its parameters) and [`call`], which reads a
//! call's parameters and runs it through the node's `ImClient`, so every call has the same
//! Redis effects as the library call it stands for (docs/API.md lists them).
//!
//! `batch` runs its commands concurrently on the one multiplexed Redis connection: they are
//! issued in order, pipelined, and answered in order, one reply each.

use super::error::ApiError;
use super::params::Params;
use crate::gateway::Node;
use futures_util::future::join_all;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// Most commands in one `batch`; beyond, 400 (split it).
pub(super) const MAX_BATCH: usize = 1000;

/// An API method, named by the path `/api/<name>`. [`Method::ALL`] lists them in the order
/// of their `/metrics` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    ConnectUrl,
    Send,
    ChanSend,
    Broadcast,
    ForceOffline,
    HasOnline,
    Online,
    ChanJoin,
    ChanLeave,
    ChanMembers,
    ChanOnline,
    ChanClear,
    Chans,
    ClientChans,
    Batch,
    Info,
}

impl Method {
    /// Every method, in declaration order.
    pub(crate) const ALL: [Method; 16] = [
        Method::ConnectUrl,
        Method::Send,
        Method::ChanSend,
        Method::Broadcast,
        Method::ForceOffline,
        Method::HasOnline,
        Method::Online,
        Method::ChanJoin,
        Method::ChanLeave,
        Method::ChanMembers,
        Method::ChanOnline,
        Method::ChanClear,
        Method::Chans,
        Method::ClientChans,
        Method::Batch,
        Method::Info,
    ];

    /// Its name in the path and in metric labels.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Method::ConnectUrl => "connect_url",
            Method::Send => "send",
            Method::ChanSend => "chan_send",
            Method::Broadcast => "broadcast",
            Method::ForceOffline => "force_offline",
            Method::HasOnline => "has_online",
            Method::Online => "online",
            Method::ChanJoin => "chan_join",
            Method::ChanLeave => "chan_leave",
            Method::ChanMembers => "chan_members",
            Method::ChanOnline => "chan_online",
            Method::ChanClear => "chan_clear",
            Method::Chans => "chans",
            Method::ClientChans => "client_chans",
            Method::Batch => "batch",
            Method::Info => "info",
        }
    }

    /// The method named `name`.
    pub(super) fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.label() == name)
    }
}

/// Runs `method` with `params`: the answer's JSON object.
pub(super) async fn call(node: &Node, method: Method, params: Params) -> Result<Value, ApiError> {
    match method {
        Method::Batch => batch(node, params).await,
        single => run(node, single, params).await,
    }
}

/// Any method; `batch` only at the top (a nested one fails).
async fn run(node: &Node, method: Method, mut p: Params) -> Result<Value, ApiError> {
    let im = &node.client;
    let content_field = p.name("content");
    let client = |e| ApiError::from_client(e, &content_field);
    match method {
        Method::ConnectUrl => {
            let (client_id, meta) = (p.id("client_id")?, p.text("meta")?);
            p.finish()?;
            let connect = im.connect_url(client_id, meta.as_deref()).await.map_err(client)?;
            Ok(json!({"url": connect.url, "token": connect.token, "expires_in": connect.expires_in}))
        }
        Method::Send => {
            let (sender, receivers, content) = (p.id("sender")?, p.ids("receivers")?, p.content()?);
            let (receipt, durable) = (p.flag("receipt")?, p.flag("durable")?);
            p.finish()?;
            let sent = match durable {
                true => im.durable().send_message(sender, &receivers, &content, receipt).await,
                false => im.send_message(sender, &receivers, &content, receipt).await,
            };
            sent.map_err(client).map(|()| json!({}))
        }
        Method::ChanSend => {
            let (chan, content, sender, durable) =
                (p.chan("chan")?, p.content()?, p.id_or("sender", 0)?, p.flag("durable")?);
            p.finish()?;
            let sent = match durable {
                true => im.durable().send_chan_message(sender, &chan, &content).await,
                false => im.send_chan_message(sender, &chan, &content).await,
            };
            sent.map_err(client).map(|()| json!({}))
        }
        Method::Broadcast => {
            let (content, durable) = (p.content()?, p.flag("durable")?);
            p.finish()?;
            let sent = match durable {
                true => im.durable().send_broadcast_message(&content).await,
                false => im.send_broadcast_message(&content).await,
            };
            sent.map_err(client).map(|()| json!({}))
        }
        Method::ForceOffline => {
            let ids = p.ids("client_ids")?;
            p.finish()?;
            let kicked = join_all(ids.iter().map(|&id| im.force_offline(id))).await;
            kicked.into_iter().collect::<Result<Vec<()>, _>>().map_err(client).map(|_| json!({}))
        }
        Method::HasOnline => {
            let ids = p.ids("client_ids")?;
            p.finish()?;
            let online = im.has_online_many(&ids).await.map_err(client)?;
            let map: Map<String, Value> = ids.iter().zip(online).map(|(id, on)| (id.to_string(), on.into())).collect();
            Ok(json!({ "online": map }))
        }
        Method::Online => {
            let (cursor, count) = (p.cursor("cursor")?, p.count("count")?);
            p.finish()?;
            let page = im.online_page(cursor, count as usize).await.map_err(client)?;
            Ok(json!({"client_ids": page.client_ids, "cursor": page.cursor.to_string()}))
        }
        Method::ChanJoin => {
            let (client_id, chans) = (p.id("client_id")?, p.chans("chans")?);
            p.finish()?;
            im.join_chan(client_id, &chans).await.map_err(client).map(|()| json!({}))
        }
        Method::ChanLeave => {
            // Two forms, told by their fields; mixing them fails on a field of the other.
            let left = if p.has("chan") || p.has("client_ids") {
                let (chan, ids) = (p.chan("chan")?, p.ids("client_ids")?);
                p.finish()?;
                im.leave_chan_clients(&chan, &ids).await
            } else {
                let (client_id, chans) = (p.id("client_id")?, p.chans("chans")?);
                p.finish()?;
                im.leave_chan(client_id, &chans).await
            };
            left.map_err(client).map(|()| json!({}))
        }
        Method::ChanMembers => {
            let chan = p.chan("chan")?;
            p.finish()?;
            let mut ids = im.get_chan_client_list(&chan).await.map_err(client)?;
            ids.sort_unstable();
            Ok(json!({ "client_ids": ids }))
        }
        Method::ChanOnline => {
            let chan = p.chan("chan")?;
            p.finish()?;
            Ok(json!({ "online": im.get_chan_online(&chan).await.map_err(client)? }))
        }
        Method::ChanClear => {
            let chan = p.chan("chan")?;
            p.finish()?;
            im.clear_chan_client(&chan).await.map_err(client).map(|_| json!({}))
        }
        Method::Chans => {
            p.finish()?;
            let mut chans = im.get_chan_list().await.map_err(client)?;
            chans.sort_unstable();
            let chans: Vec<Value> =
                chans.into_iter().map(|(chan, online)| json!({"chan": chan, "online": online})).collect();
            Ok(json!({ "chans": chans }))
        }
        Method::ClientChans => {
            let client_id = p.id("client_id")?;
            p.finish()?;
            let mut chans = im.get_chan_list_by_client_id(client_id).await.map_err(client)?;
            chans.sort_unstable();
            Ok(json!({ "chans": chans }))
        }
        Method::Info => {
            p.finish()?;
            info(node).await
        }
        Method::Batch => Err(ApiError::NestedBatch),
    }
}

/// Every node of the list: whether its lease (`{P}NodeLease{node}`) is held, and how many
/// sockets it records (`HLEN {P}NodeSockets{node}`), all read concurrently.
async fn info(node: &Node) -> Result<Value, ApiError> {
    let im = &node.client;
    let (backend, keys) = (im.backend(), im.keys());
    let nodes = join_all(im.servers().iter().map(|server| async move {
        let (lease, key) = (keys.node_lease(server), keys.node_sockets(server));
        let (alive, sockets) = futures_util::join!(backend.get(&lease, false), backend.hlen(&key));
        Ok::<_, crate::backend::BackendError>(
            json!({"server": server, "alive": alive?.is_some(), "connections": sockets?}),
        )
    }))
    .await;
    let nodes: Result<Vec<Value>, _> = nodes.into_iter().collect();
    nodes.map(|nodes| json!({ "nodes": nodes })).map_err(ApiError::backend)
}

/// `batch {commands: [{method, params}, …]}`: one reply per command, in order. A command
/// that is not `{method, params}` fails the whole batch before any runs; a command that
/// fails on its own (its method, its parameters, Redis) gets its error as its reply.
async fn batch(node: &Node, mut p: Params) -> Result<Value, ApiError> {
    let field = p.name("commands");
    let raw = p.take_raw("commands").ok_or_else(|| ApiError::MissingField(field.clone()))?;
    p.finish()?;
    let commands: Vec<Box<RawValue>> = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::InvalidType { field: field.clone(), expected: "an array of commands" })?;
    if commands.len() > MAX_BATCH {
        return Err(ApiError::InvalidValue { field, reason: format!("holds more than {MAX_BATCH} commands") });
    }
    let commands: Vec<(String, Params)> =
        commands.iter().enumerate().map(|(i, raw)| command(i, raw)).collect::<Result<_, _>>()?;
    let replies = join_all(commands.into_iter().map(|(name, params)| async move {
        let method = Method::parse(&name).ok_or(ApiError::UnknownMethod(name));
        match async { run(node, method?, params).await }.await {
            Ok(result) => json!({ "result": result }),
            Err(e) => json!({ "error": e.detail() }),
        }
    }))
    .await;
    Ok(json!({ "replies": replies }))
}

/// One batch command, `{method, params}` (`params` may be left out for `{}`): its method's
/// name and its parameters.
fn command(i: usize, raw: &RawValue) -> Result<(String, Params), ApiError> {
    let at = format!("commands[{i}]");
    let mut command = Params::from_raw(raw, &at, format!("{at}."))?;
    let name = command.text("method")?.ok_or_else(|| ApiError::MissingField(command.name("method")))?;
    let params_field = command.name("params");
    let params = match command.take_raw("params") {
        Some(raw) => Params::from_raw(&raw, &params_field, format!("{params_field}."))?,
        None => Params::empty(format!("{params_field}.")),
    };
    command.finish()?;
    Ok((name, params))
}
