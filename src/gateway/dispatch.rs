//! The node channel consumer: turns `{P}Server{server}` messages into socket writes.
//!
//! It takes every message already waiting (up to [`MAX_BATCH`]) and plans the batch before
//! writing anything:
//! - each message's frame is encoded once and shared by all its sockets;
//! - consecutive messages to the same audience (same channel and sender, or broadcast) are
//!   merged, so each socket gets all of them in one vectored write;
//! - channel members come from the node's memory ([`Rooms`], kept in Redis's order by the
//!   membership changes on the same channel), or, with `--chan-cache off`, are fetched for
//!   the batch's channels in one pipelined round trip;
//! - receipts of the whole batch go out in one pipeline after the writes.
//!
//! Order is kept: groups are written in the order their messages arrived, and a force
//! offline writes what was planned before it, then closes.

use super::Node;
use super::connection::{CloseReason, Conn, Kind};
use super::log::{Entry, Item, NodeLog};
use super::resume::{self, ResumeRequest};
use super::rooms::Rooms;
use super::websocket;
use crate::backend::{Op, Subscription};
use crate::durable;
use crate::protocol::{self, ChanMessage, ClientId, DirectMessage, MembersChange, NodeCommand, Receipt};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Most node-channel messages handled as one batch.
const MAX_BATCH: usize = 512;
/// How often the dispatcher trims its log by age (and checks whether position frames are due).
const LOG_TICK: Duration = Duration::from_secs(1);
/// Sockets written to between two yields of the dispatcher (see `Plan::write`).
const WRITES_PER_TURN: usize = 1024;

/// Consumes the node's subscription until shutdown; between batches, serves resumes,
/// catches up after a re-subscription, sends position frames and trims the log.
pub(crate) async fn run(
    node: Arc<Node>,
    mut subscription: Subscription,
    mut log: NodeLog,
    mut resumes: mpsc::Receiver<ResumeRequest>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut subscribed = subscription.epoch();
    let mut ticks = tokio::time::interval(LOG_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut positions_due = node.now_ms();
    let mut rooms = Rooms::default();
    loop {
        tokio::select! {
            n = subscription.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    return;
                }
                let total = batch.len();
                let items = log.accept(&node, batch.drain(..).map(|m| m.payload)).await;
                dispatch(&node, &mut log, &mut rooms, items, total).await;
            }
            Some(request) = resumes.recv() => resume::serve(&node, &log, request),
            Ok(()) = subscribed.changed() => {
                let items = log.catch_up(&node).await;
                dispatch(&node, &mut log, &mut rooms, items, 0).await;
            }
            // Not while re-subscribing: that would cut its connect and backoff short.
            _ = ticks.tick(), if subscription.is_live() => {
                if !log.is_open() {
                    log.load(&node).await;
                }
                log.trim(&node).await;
                if node.now_ms() >= positions_due {
                    resume::tell_positions(&node, &log);
                    positions_due = node.now_ms() + node.config.ping_interval.as_millis() as u64;
                }
            }
            _ = node.shutdown.cancelled() => return,
        }
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

/// Sockets and the frames they get, in order.
#[derive(Default)]
struct Targets {
    conns: Vec<Arc<Conn>>,
    frames: Vec<Bytes>,
}

struct Group {
    audience: Audience,
    /// FreeIM sockets: each message's content bytes as the whole frame.
    freeim: Targets,
    /// Durable sockets past their hello: `{"o":…,"d":…}` (or `{"d":…}` if not logged).
    durable: Targets,
    /// The last logged offset among the group's messages.
    offset: Option<u64>,
}

impl Group {
    fn new(audience: Audience) -> Self {
        Group { audience, freeim: Targets::default(), durable: Targets::default(), offset: None }
    }

    /// Adds the sockets of one client (all of them: the sender rule is the caller's).
    fn add(&mut self, conns: &[Arc<Conn>]) {
        for conn in conns {
            match conn.kind() {
                Kind::FreeIm => self.freeim.conns.push(conn.clone()),
                Kind::Durable(_) => self.durable.conns.push(conn.clone()),
                Kind::Starting => {}
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.freeim.conns.is_empty() && self.durable.conns.is_empty()
    }

    /// Adds one message's frames: `content` for FreeIM sockets, the logged frame (or one
    /// made now, unlogged) for durable ones.
    fn push(&mut self, content: &str, logged: Option<&Entry>) {
        if !self.freeim.conns.is_empty() {
            self.freeim.frames.push(websocket::text_frame(content.as_bytes()));
        }
        if !self.durable.conns.is_empty() {
            let frame = match logged {
                Some(entry) => entry.frame.clone(),
                None => websocket::text_frame(&durable::message(None, content.as_bytes())),
            };
            self.durable.frames.push(frame);
        }
        if let Some(entry) = logged {
            self.offset = Some(entry.offset);
        }
    }
}

/// The writes of one batch, in order, and the logged messages to record once written.
#[derive(Default)]
struct Plan {
    groups: Vec<Group>,
    logged: Vec<Entry>,
    /// A membership changed after the last group was planned: the next channel message
    /// must not join it (its members were those before the change).
    sealed: bool,
}

impl Plan {
    /// Writes every planned group, counting the frames handed to sockets and those lost
    /// to overflowing queues; then records the logged messages in the node's window.
    /// Yields every [`WRITES_PER_TURN`] sockets, so that a broadcast to the node's ~19k
    /// sockets does not keep its other tasks (lease renewal, heartbeats, the sockets' own
    /// flushes) from running: 53 nodes on 2 cores made one such loop last seconds, and the
    /// leases of busy nodes lapsed.
    async fn write(&mut self, node: &Node, log: &mut NodeLog) {
        let (mut frames, mut dropped, mut written) = (0, 0, 0usize);
        for group in self.groups.drain(..) {
            for targets in [&group.freeim, &group.durable] {
                for conn in &targets.conns {
                    dropped += conn.send(&targets.frames, node.config.max_queue_bytes);
                    written += 1;
                    if written.is_multiple_of(WRITES_PER_TURN) {
                        tokio::task::yield_now().await;
                    }
                }
                frames += targets.conns.len() * targets.frames.len();
            }
            if let Some(offset) = group.offset {
                group.durable.conns.iter().for_each(|conn| conn.told(offset));
            }
        }
        node.metrics.frames_out(frames);
        node.metrics.queue_dropped(dropped);
        for entry in self.logged.drain(..) {
            log.record(entry);
        }
    }
}

/// Where the members of a channel come from.
enum Members<'a> {
    /// The node's memory, which the batch's membership changes update as they come.
    Cached(&'a mut Rooms),
    /// Read from Redis for this batch (`--chan-cache off`); changes are ignored.
    Read(HashMap<String, Vec<ClientId>>),
}

impl Members<'_> {
    fn of(&self, chan: &str) -> Vec<ClientId> {
        match self {
            Members::Cached(rooms) => rooms.members(chan).collect(),
            Members::Read(lists) => lists.get(chan).cloned().unwrap_or_default(),
        }
    }

    /// Applies a change; whether one was (then later messages see other members).
    fn apply(&mut self, node: &Node, change: MembersChange) -> bool {
        let Members::Cached(rooms) = self else { return false };
        rooms.apply(change, |id| node.registry.with(id, |_| ()).is_some());
        node.metrics.memberships(rooms.len());
        true
    }
}

/// Delivers `items` (from `received` node-channel messages) in order.
async fn dispatch(node: &Node, log: &mut NodeLog, rooms: &mut Rooms, mut items: Vec<Item>, received: usize) {
    let malformed = items.iter().filter(|i| i.command.is_none()).count();
    node.metrics.messages_in(received, malformed);
    if items.is_empty() {
        return;
    }
    if node.config.chan_cache {
        return dispatch_items(node, log, Members::Cached(rooms), items).await;
    }
    let members = match chan_members(node, &items).await {
        Some(members) => members,
        None => {
            // Durable sockets would miss logged channel messages and then be told positions
            // past them: close them, so that they resume (not recovered) instead.
            if items.iter().any(|i| i.offset.is_some() && matches!(i.command, Some(NodeCommand::Chan(_)))) {
                log.forget(node, "channel members could not be read", &mut items);
            }
            HashMap::new()
        }
    };
    dispatch_items(node, log, Members::Read(members), items).await;
}

/// Plans and writes `items` in order; membership changes apply as they come, so each
/// channel message reaches the members it had when it was published.
async fn dispatch_items(node: &Node, log: &mut NodeLog, mut members: Members<'_>, items: Vec<Item>) {
    let mut plan = Plan::default();
    let mut receipts = Vec::new();
    let now = node.now_ms();
    for Item { offset, command } in items {
        let logged = offset.map(|o| Entry::new(o, command.as_ref(), now));
        match command {
            Some(NodeCommand::ForceOffline(id)) => {
                plan.write(node, log).await;
                node.registry.with(id, |conns| conns.iter().for_each(|c| c.close(CloseReason::ForceOffline)));
            }
            Some(NodeCommand::Direct(message)) => {
                plan_direct(node, &message, logged.as_ref(), &mut plan, &mut receipts)
            }
            Some(NodeCommand::Chan(message)) => plan_chan(node, message, logged.as_ref(), &members, &mut plan),
            Some(NodeCommand::Members(change)) => plan.sealed |= members.apply(node, change),
            None => {}
        }
        plan.logged.extend(logged);
    }
    plan.write(node, log).await;
    log.publish(node);
    if let Err(e) = node.client.backend().execute(receipts).await {
        tracing::warn!(error = %e, "could not publish receipts");
    }
}

/// The member ids of every channel named in the batch, in one pipelined `HKEYS`; `None`
/// when they cannot be read.
async fn chan_members(node: &Node, items: &[Item]) -> Option<HashMap<String, Vec<ClientId>>> {
    let mut chans: Vec<&str> = Vec::new();
    for item in items {
        if let Some(NodeCommand::Chan(message)) = &item.command
            && let Some(chan) = message.channel()
            && !chans.contains(&chan)
        {
            chans.push(chan);
        }
    }
    let keys: Vec<String> = chans.iter().map(|c| node.client.keys().chan(c)).collect();
    match node.client.backend().hkeys(&keys).await {
        Ok(lists) => Some(
            chans.iter().zip(lists).map(|(chan, fields)| (chan.to_string(), protocol::member_ids(&fields))).collect(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, ?chans, "could not read channel members; dropping these channel messages");
            None
        }
    }
}

/// Adds the sockets of `receiver` a message from `sender` goes to: none when the receiver
/// is the sender on a single socket (a sender's other devices do get their own message).
/// Whether the receiver has a socket on this node.
fn sockets_of(node: &Node, receiver: ClientId, sender: ClientId, group: &mut Group) -> bool {
    node.registry
        .with(receiver, |conns| {
            if receiver != sender || conns.len() > 1 {
                group.add(conns);
            }
        })
        .is_some()
}

fn plan_direct(node: &Node, message: &DirectMessage, logged: Option<&Entry>, plan: &mut Plan, receipts: &mut Vec<Op>) {
    let mut group = Group::new(Audience::Direct);
    for &receiver in &message.receivers {
        let online = sockets_of(node, receiver, message.sender, &mut group);
        if message.receipt && message.sender != 0 && receiver != message.sender {
            let status = if online { protocol::RECEIPT_DELIVERED } else { protocol::RECEIPT_OFFLINE };
            node.metrics.receipt(online);
            let receipt = protocol::to_json(&Receipt { content: &message.content, receipt: status });
            node.client.direct_ops(receiver, &[message.sender], &receipt, false, false, receipts);
        }
    }
    if !group.is_empty() {
        group.push(&message.content, logged);
        plan.groups.push(group);
    }
}

fn plan_chan(node: &Node, message: ChanMessage, logged: Option<&Entry>, members: &Members<'_>, plan: &mut Plan) {
    let sender = message.sender;
    let audience = Audience::Chan { chan: message.channel().map(str::to_owned), sender };
    if !plan.sealed
        && let Some(last) = plan.groups.last_mut()
        && last.audience == audience
    {
        last.push(&message.content, logged);
        return;
    }
    plan.sealed = false;
    let mut group = Group::new(audience);
    match &group.audience {
        Audience::Chan { chan: Some(chan), .. } => {
            for member in members.of(chan) {
                sockets_of(node, member, sender, &mut group);
            }
        }
        _ => node.registry.for_each(|id, conns| {
            if id != sender || conns.len() > 1 {
                group.add(conns);
            }
        }),
    }
    group.push(&message.content, logged);
    plan.groups.push(group);
}
