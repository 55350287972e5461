//! Durable sockets: the resume of an upgrade with `resume`, and the position frames that
//! keep a quiet socket's position inside the log (wire: docs/PROTOCOL.md, "Durable sockets").
//!
//! Why the replay/live seam cannot lose or duplicate: the dispatcher is the only task that
//! writes messages to sockets and the only one that moves the log's `handled` offset, and
//! it also writes every hello. A durable socket is registered as `Starting`, which the
//! dispatcher skips; its connection task reads what only Redis has (the client's channels,
//! log entries older than the window) and hands a [`ResumeRequest`] to the dispatcher.
//! Between two batches, the dispatcher takes `top = handled`, writes the hello and the
//! replay of `(O, top]`, and marks the socket `Durable(top)`: every message at or below
//! `top` was dispatched before (so it is in the replay, not live), every one above is
//! dispatched after (live, not replayed). Position frames are written by the dispatcher
//! too, so frames on a socket are in offset order.

use super::Node;
use super::connection::{CloseReason, Conn, Kind};
use super::log::{Entry, NodeLog, READ_PAGE};
use super::websocket;
use crate::durable::{self, Resume};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;

/// Resume requests waiting for the dispatcher; connection tasks wait when it is full.
pub(crate) const RESUME_QUEUE: usize = 1024;

/// A durable socket ready for its hello.
#[derive(Debug)]
pub(crate) struct ResumeRequest {
    conn: Arc<Conn>,
    resume: Resume,
    /// The client's channels at replay time; `None` when they could not be read (then it
    /// is not recovered: a replay without its channel messages would lose them silently).
    chans: Option<HashSet<String>>,
    /// Entries of `(O, …)` older than the node's window, read from Redis.
    older: Vec<Entry>,
}

/// How a resume ended, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `resume=E:O` replayed.
    Recovered,
    /// `resume=E:O` that could not be (another epoch, trimmed, unreadable).
    NotRecovered,
    /// `resume=`: from the top.
    New,
}

impl Outcome {
    /// Every variant, in declaration order (the order of `/metrics` lines).
    pub(crate) const ALL: [Outcome; 3] = [Outcome::Recovered, Outcome::NotRecovered, Outcome::New];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Recovered => "recovered",
            Outcome::NotRecovered => "not_recovered",
            Outcome::New => "new",
        }
    }
}

/// In the socket's task: reads what the resume needs from Redis, then queues it for the
/// dispatcher. Returns when the dispatcher has it (or is gone, at shutdown).
pub(crate) async fn request(node: &Node, conn: &Arc<Conn>, resume: Resume) {
    let mut request = ResumeRequest { conn: conn.clone(), resume, chans: Some(HashSet::new()), older: Vec::new() };
    if let Resume::After { epoch, offset } = resume {
        request.chans = match node.client.get_chan_list_by_client_id(conn.client_id).await {
            Ok(chans) => Some(chans.into_iter().collect()),
            Err(e) => {
                tracing::warn!(error = %e, client = conn.client_id, "cannot read the client's channels for its resume");
                None
            }
        };
        let first = node.log_gauge.first();
        let top = node.log_gauge.top();
        if offset < top && (first == 0 || offset + 1 < first) {
            request.older = older(node, epoch, offset + 1, if first == 0 { top } else { first - 1 }).await;
        }
    }
    let _ = node.resumes.send(request).await;
}

/// The log entries `from..=to` of `epoch` from Redis, or none if they cannot all be read.
async fn older(node: &Node, epoch: durable::Epoch, from: u64, to: u64) -> Vec<Entry> {
    let keys = node.client.keys();
    let (log, meta) = (keys.log(&node.config.server), keys.log_meta(&node.config.server));
    let count = (to - from + 1).min(READ_PAGE as u64) as usize;
    match node.client.backend().log_read(&log, &meta, from, to, count).await {
        Ok(read) if read.epoch == Some(epoch) => {
            let now = node.now_ms();
            read.entries.iter().map(|e| Entry::from_log(e, now)).collect()
        }
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, from, to, "cannot read the durable log for a resume");
            Vec::new()
        }
    }
}

/// In the dispatcher: the hello, the replay when recovered, and the socket goes live.
pub(crate) fn serve(node: &Node, log: &NodeLog, request: ResumeRequest) {
    let ResumeRequest { conn, resume, chans, older } = request;
    let (Some(epoch), top) = log.head() else {
        // The log was lost meanwhile and is not open again: the client resumes later.
        conn.close(CloseReason::LogReset);
        return;
    };
    let replay = match (resume, &chans) {
        (Resume::After { epoch: e, offset }, Some(_)) if e == epoch => log.replay(offset, &older),
        _ => None,
    };
    let outcome = match (resume, &replay) {
        (Resume::Top, _) => Outcome::New,
        (_, Some(_)) => Outcome::Recovered,
        (_, None) => Outcome::NotRecovered,
    };
    let mut frames = vec![websocket::text_frame(durable::hello(epoch, top, replay.is_some()).as_bytes())];
    if let (Some(entries), Some(chans)) = (replay, &chans) {
        let sockets = node.registry.with(conn.client_id, <[_]>::len).unwrap_or(1);
        frames.extend(entries.filter(|e| e.audience.includes(conn.client_id, chans, sockets)).map(|e| e.frame.clone()));
        node.metrics.replayed(frames.len() - 1);
        frames.push(position(top));
    }
    conn.told(top);
    node.metrics.resumed(outcome);
    let dropped = conn.send(&frames, node.config.max_queue_bytes);
    node.metrics.queue_dropped(dropped);
    tracing::debug!(
        conn = conn.id,
        client = conn.client_id,
        ?outcome,
        top,
        frames = frames.len(),
        "durable socket resumed"
    );
}

/// A position frame: `{"t":"pos","o":<offset>}`.
fn position(offset: u64) -> Bytes {
    websocket::text_frame(durable::position(offset).as_bytes())
}

/// In the dispatcher, once per `--ping-interval`: tells each durable socket that has been
/// told less than `handled` that it has everything up to there.
pub(crate) fn tell_positions(node: &Node, log: &NodeLog) {
    let (_, top) = log.head();
    let frame = position(top);
    let mut dropped = 0;
    node.registry.for_each(|_, conns| {
        for conn in conns {
            if matches!(conn.kind(), Kind::Durable(told) if told < top) {
                conn.told(top);
                dropped += conn.send(std::slice::from_ref(&frame), node.config.max_queue_bytes);
            }
        }
    });
    node.metrics.queue_dropped(dropped);
}
