//! The node channel consumer: turns `{P}Server{server}` messages into socket writes.
//!
//! It takes every message already waiting (up to [`MAX_BATCH`]) and plans the batch before
//! writing anything:
//! - each message's frame is encoded once and shared by all its sockets;
//! - consecutive messages to the same audience (same channel and sender, or broadcast) are
//!   merged, so each socket gets all of them in one vectored write;
//! - the member lists of the batch's channels are fetched in one pipelined round trip;
//! - receipts of the whole batch go out in one pipeline after the writes.
//!
//! Order is kept: groups are written in the order their messages arrived, and a force
//! offline writes what was planned before it, then closes.

use super::Node;
use super::connection::{CloseReason, Conn};
use super::websocket;
use crate::backend::{Op, PubSubMessage, Subscription};
use crate::protocol::{self, ChanMessage, ClientId, DirectMessage, NodeCommand, Receipt};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// Most node-channel messages handled as one batch.
const MAX_BATCH: usize = 512;

/// Consumes the node's subscription until shutdown.
pub(crate) async fn run(node: Arc<Node>, mut subscription: Subscription) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            n = subscription.recv_many(&mut batch, MAX_BATCH) => n,
            _ = node.shutdown.cancelled() => return,
        };
        if received == 0 {
            return;
        }
        dispatch(&node, &batch).await;
        batch.clear();
    }
}

/// Who a group of frames goes to; consecutive messages with equal audiences merge.
#[derive(Debug, PartialEq, Eq)]
enum Audience {
    /// Channel members (or everyone, for `None`), minus the sender's only socket.
    Chan { chan: Option<String>, sender: ClientId },
    /// Receivers of one direct message (never merged).
    Direct,
}

struct Group {
    audience: Audience,
    targets: Vec<Arc<Conn>>,
    frames: Vec<Bytes>,
}

/// The writes of one batch, in order.
#[derive(Default)]
struct Plan {
    groups: Vec<Group>,
}

impl Plan {
    /// Writes every planned group, counting the frames handed to sockets and those lost
    /// to overflowing queues.
    fn write(&mut self, node: &Node) {
        let (mut frames, mut dropped) = (0, 0);
        for group in self.groups.drain(..) {
            for conn in &group.targets {
                dropped += conn.send(&group.frames, node.config.max_queue_bytes);
            }
            frames += group.targets.len() * group.frames.len();
        }
        node.metrics.frames_out(frames);
        node.metrics.queue_dropped(dropped);
    }
}

async fn dispatch(node: &Node, batch: &[PubSubMessage]) {
    let commands: Vec<NodeCommand> = batch.iter().filter_map(parse).collect();
    node.metrics.messages_in(batch.len(), batch.len() - commands.len());
    let members = chan_members(node, &commands).await;
    let mut plan = Plan::default();
    let mut receipts = Vec::new();
    for command in commands {
        match command {
            NodeCommand::ForceOffline(id) => {
                plan.write(node);
                node.registry.with(id, |conns| conns.iter().for_each(|c| c.close(CloseReason::ForceOffline)));
            }
            NodeCommand::Direct(message) => plan_direct(node, &message, &mut plan, &mut receipts),
            NodeCommand::Chan(message) => plan_chan(node, message, &members, &mut plan),
        }
    }
    plan.write(node);
    if let Err(e) = node.client.backend().execute(receipts).await {
        tracing::warn!(error = %e, "could not publish receipts");
    }
}

fn parse(message: &PubSubMessage) -> Option<NodeCommand> {
    match NodeCommand::parse(&message.payload) {
        Ok(command) => Some(command),
        Err(e) => {
            let preview = String::from_utf8_lossy(&message.payload[..message.payload.len().min(200)]);
            tracing::warn!(error = %e, payload = %preview, "dropping malformed node-channel message");
            None
        }
    }
}

/// The member ids of every channel named in the batch, in one pipelined `HKEYS`.
async fn chan_members(node: &Node, commands: &[NodeCommand]) -> HashMap<String, Vec<ClientId>> {
    let mut chans: Vec<&str> = Vec::new();
    for command in commands {
        if let NodeCommand::Chan(message) = command
            && let Some(chan) = message.channel()
            && !chans.contains(&chan)
        {
            chans.push(chan);
        }
    }
    let keys: Vec<String> = chans.iter().map(|c| node.client.keys().chan(c)).collect();
    match node.client.backend().hkeys(&keys).await {
        Ok(lists) => {
            chans.iter().zip(lists).map(|(chan, fields)| (chan.to_string(), protocol::member_ids(&fields))).collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, ?chans, "could not read channel members; dropping these channel messages");
            HashMap::new()
        }
    }
}

/// The sockets of `receiver` a message from `sender` goes to: none when the receiver is
/// the sender on a single socket (a sender's other devices do get their own message).
fn sockets_of(node: &Node, receiver: ClientId, sender: ClientId, targets: &mut Vec<Arc<Conn>>) -> bool {
    node.registry
        .with(receiver, |conns| {
            if receiver != sender || conns.len() > 1 {
                targets.extend(conns.iter().cloned());
            }
        })
        .is_some()
}

fn plan_direct(node: &Node, message: &DirectMessage, plan: &mut Plan, receipts: &mut Vec<Op>) {
    let mut targets = Vec::with_capacity(message.receivers.len());
    for &receiver in &message.receivers {
        let online = sockets_of(node, receiver, message.sender, &mut targets);
        if message.receipt && message.sender != 0 && receiver != message.sender {
            let status = if online { protocol::RECEIPT_DELIVERED } else { protocol::RECEIPT_OFFLINE };
            node.metrics.receipt(online);
            let receipt = protocol::to_json(&Receipt { content: &message.content, receipt: status });
            node.client.direct_ops(receiver, &[message.sender], &receipt, false, false, receipts);
        }
    }
    if !targets.is_empty() {
        let frames = vec![websocket::text_frame(message.content.as_bytes())];
        plan.groups.push(Group { audience: Audience::Direct, targets, frames });
    }
}

fn plan_chan(node: &Node, message: ChanMessage, members: &HashMap<String, Vec<ClientId>>, plan: &mut Plan) {
    let frame = websocket::text_frame(message.content.as_bytes());
    let sender = message.sender;
    let audience = Audience::Chan { chan: message.channel().map(str::to_owned), sender };
    if let Some(last) = plan.groups.last_mut()
        && last.audience == audience
    {
        last.frames.push(frame);
        return;
    }
    let mut targets = Vec::new();
    match &audience {
        Audience::Chan { chan: Some(chan), .. } => {
            for &member in members.get(chan).map(Vec::as_slice).unwrap_or_default() {
                sockets_of(node, member, sender, &mut targets);
            }
        }
        _ => node.registry.for_each(|id, conns| {
            if id != sender || conns.len() > 1 {
                targets.extend(conns.iter().cloned());
            }
        }),
    }
    plan.groups.push(Group { audience, targets, frames: vec![frame] });
}
