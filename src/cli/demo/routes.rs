//! The demo's HTTP routes: FreeIM's seven demo routes, byte-compatible so FreeIM's own
//! page works against them, and the few the chat page needs beyond them.
//!
//! The three send routes take one field beyond FreeIM's, `durable=true`: the send is then
//! durable ([`ImClient::durable`]), so a durable socket that was away gets it when it
//! resumes. The chat page sets it; FreeIM's own page does not, and gets FreeIM's at-most-once
//! sends, which a .NET `ImServer` understands too.
//!
//! Each route is one [`ImClient`] call. As in FreeIM's demo nothing is authenticated: the
//! page says who it is with `websocketId`. A real business app would take the id from its
//! session instead, and that is the only change it needs to make to these routes.

use super::channels::channel_list;
use super::error::DemoError;
use super::input::{Fields, MAX_CLIENT_ID};
use super::roster::{OnlineClient, Roster};
use super::state::App;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use freeim::ClientId;
use serde::Serialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tracing::Span;

/// A fresh id is drawn from `1..=ALLOCATED_ID_MAX` (short enough to read on a page). An id
/// that is online already is drawn again, up to [`ALLOCATION_TRIES`] times.
const ALLOCATED_ID_MAX: ClientId = 999_999_999;
/// Draws of a fresh id before giving up on avoiding online ids (then ids stay unique with
/// high probability all the same).
const ALLOCATION_TRIES: usize = 8;

/// A route's answer: `{"code":0,…}` or a [`DemoError`].
type Answer = Result<Json<Success>, DemoError>;

/// A successful answer: `code` first, as FreeIM writes it, then the route's fields.
#[derive(Debug, Serialize)]
pub struct Success {
    code: u8,
    #[serde(flatten)]
    fields: Value,
}

fn ok(fields: Value) -> Json<Success> {
    Json(Success { code: 0, fields })
}

/// The answer of a route that has nothing to say but success: `{"code":0}`.
fn done() -> Answer {
    Ok(ok(json!({})))
}

/// The caller's address as FreeIM's demo takes it: `X-Real-IP` first (set by a proxy),
/// else the peer address. Stored as the client metadata of its token.
fn caller_ip(headers: &HeaderMap, peer: SocketAddr) -> String {
    let header = headers.get("x-real-ip").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    header.map_or_else(|| peer.ip().to_string(), str::to_owned)
}

/// `POST /ws/pre-connect` (`websocketId` optional): a connect URL with a fresh token.
#[tracing::instrument(skip_all, fields(websocket_id))]
pub async fn pre_connect(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    fields: Fields,
) -> Answer {
    let id = match fields.optional_client_id("websocketId")? {
        Some(id) => id,
        None => allocate_id(&app.roster),
    };
    Span::current().record("websocket_id", id);
    let server = app.im.prev_connect_server(id, Some(&caller_ip(&headers, peer))).await?;
    Ok(ok(json!({ "server": server, "websocketId": id })))
}

fn allocate_id(roster: &Roster) -> ClientId {
    const _: () = assert!(ALLOCATED_ID_MAX <= MAX_CLIENT_ID);
    let draw = || rand::random_range(1..=ALLOCATED_ID_MAX);
    (1..ALLOCATION_TRIES).map(|_| draw()).find(|id| !roster.is_online(*id)).unwrap_or_else(draw)
}

/// `GET /ws/offline?websocketId=N`: closes every socket of the client.
#[tracing::instrument(skip_all, fields(websocket_id))]
pub async fn offline(State(app): State<App>, fields: Fields) -> Answer {
    app.im.force_offline(websocket_id(&fields)?).await?;
    done()
}

/// `POST /ws/get-channels`: every channel with its member count.
#[tracing::instrument(skip_all)]
pub async fn get_channels(State(app): State<App>) -> Answer {
    Ok(ok(json!({ "channels": channel_list(&app.im).await? })))
}

/// `POST /ws/subscr-channel` (`websocketId`, `channel`): joins the channel, remembered so
/// it is joined again after a Redis restart (see [`rejoin`](super::rejoin)).
#[tracing::instrument(skip_all, fields(websocket_id, channel))]
pub async fn subscr_channel(State(app): State<App>, fields: Fields) -> Answer {
    let (id, chan) = channel_fields(&fields)?;
    // Remembered first, so a full table refuses before anything is joined; a join that fails
    // stays remembered, and happens at the client's next online event, as the page asked.
    app.roster.join(id, &chan).map_err(DemoError::Full)?;
    app.im.join_chan(id, &[&chan]).await?;
    app.roster.touch();
    done()
}

/// `POST /ws/leave-channel` (`websocketId`, `channel`): leaves the channel. Not in FreeIM's
/// demo.
#[tracing::instrument(skip_all, fields(websocket_id, channel))]
pub async fn leave_channel(State(app): State<App>, fields: Fields) -> Answer {
    let (id, chan) = channel_fields(&fields)?;
    app.im.leave_chan(id, &[&chan]).await?;
    app.roster.leave(id, &chan);
    app.roster.touch();
    done()
}

/// `POST /ws/send-channelmsg` (`websocketId`, `channel`, `message`, `durable`): to the
/// channel's online members, from the system (sender 0, so the sender's own page gets it
/// too, which FreeIM's page relies on to show its own lines).
#[tracing::instrument(skip_all, fields(websocket_id, channel))]
pub async fn send_channel_msg(State(app): State<App>, fields: Fields) -> Answer {
    let (_, chan) = channel_fields(&fields)?;
    let message = fields.message("message")?;
    if fields.flag("durable")? {
        app.im.durable().send_chan_message(0, &chan, message).await?;
    } else {
        app.im.send_chan_message(0, &chan, message).await?;
    }
    done()
}

/// `POST /ws/send-broadcast` (`message`, `durable`): to every connected client.
#[tracing::instrument(skip_all)]
pub async fn send_broadcast(State(app): State<App>, fields: Fields) -> Answer {
    let message = fields.message("message")?;
    if fields.flag("durable")? {
        app.im.durable().send_broadcast_message(message).await?;
    } else {
        app.im.send_broadcast_message(message).await?;
    }
    done()
}

/// `POST /ws/send-msg` (`senderWebsocketId`, `receiveWebsocketId`, `message`, `isReceipt`,
/// `durable`): a private message; with `isReceipt=true` the sender's sockets get a receipt
/// frame.
#[tracing::instrument(skip_all, fields(websocket_id, receiver))]
pub async fn send_msg(State(app): State<App>, fields: Fields) -> Answer {
    let sender = fields.client_id("senderWebsocketId")?;
    let receiver = fields.client_id("receiveWebsocketId")?;
    Span::current().record("websocket_id", sender).record("receiver", receiver);
    let (message, receipt) = (fields.message("message")?, fields.flag("isReceipt")?);
    if fields.flag("durable")? {
        app.im.durable().send_message(sender, &[receiver], message, receipt).await?;
    } else {
        app.im.send_message(sender, &[receiver], message, receipt).await?;
    }
    done()
}

/// `POST|GET /ws/online`: who is online, with nicknames. Not in FreeIM's demo.
#[tracing::instrument(skip_all)]
pub async fn online(State(app): State<App>) -> Answer {
    let clients: Vec<OnlineClient> = app.roster.online();
    Ok(ok(json!({ "clients": clients })))
}

/// `POST /ws/set-nick` (`websocketId`, `nick`): the nickname the online list shows. Not in
/// FreeIM's demo.
#[tracing::instrument(skip_all, fields(websocket_id))]
pub async fn set_nick(State(app): State<App>, fields: Fields) -> Answer {
    let id = websocket_id(&fields)?;
    app.roster.set_nick(id, fields.nick("nick")?).map_err(DemoError::Full)?;
    done()
}

/// Any other path.
pub async fn not_found() -> DemoError {
    DemoError::NotFound
}

/// A known path with the wrong method.
pub async fn method_not_allowed() -> DemoError {
    DemoError::MethodNotAllowed
}

/// The `websocketId` field, recorded on the route's span.
fn websocket_id(fields: &Fields) -> Result<ClientId, DemoError> {
    let id = fields.client_id("websocketId")?;
    Span::current().record("websocket_id", id);
    Ok(id)
}

/// The `websocketId` and `channel` fields of a channel route, recorded on its span.
fn channel_fields(fields: &Fields) -> Result<(ClientId, String), DemoError> {
    let (id, chan) = (fields.client_id("websocketId")?, fields.channel("channel")?);
    Span::current().record("websocket_id", id).record("channel", chan.as_str());
    Ok((id, chan))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_ip_prefers_x_real_ip() {
        let peer: SocketAddr = "192.0.2.1:5555".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(caller_ip(&headers, peer), "192.0.2.1");
        headers.insert("X-Real-IP", "203.0.113.7".parse().unwrap());
        assert_eq!(caller_ip(&headers, peer), "203.0.113.7");
    }
}
