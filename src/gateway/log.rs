//! The node's view of its durable log (`{P}Log{node}` in Redis, see `crate::durable`).
//!
//! Durable messages reach the node in offset order, each wrapped in its epoch and offset.
//! The dispatcher hands every received batch to [`NodeLog::accept`], which:
//! - drops what it has already handled (offsets at or below `handled`);
//! - fills a gap (a message lost while the subscription was down) from Redis before the
//!   message that revealed it, so a connected durable socket never misses an offset;
//! - notices a new epoch (the log was lost: Redis restarted empty, the keys were evicted),
//!   and then closes every durable socket with `log reset`, so each resumes and learns it
//!   was not recovered.
//!
//! After the batch is written, [`NodeLog::record`] keeps each logged message in the
//! in-memory window with the frame durable sockets got, so that resumes (a reconnect storm
//! after a restart above all) replay from memory rather than one Redis read per socket.
//! The window is contiguous and ends at `handled`; it is bounded by [`WINDOW_ENTRIES`] and
//! by `--history-ttl`. Only the dispatcher task touches a `NodeLog`, so nothing here locks;
//! what other tasks need (top, window start, readiness) is published in [`LogGauge`].

use super::Node;
use super::connection::{CloseReason, Kind};
use super::websocket;
use crate::backend::LogEntry;
use crate::durable::{self, Epoch};
use crate::protocol::{ClientId, NodeCommand};
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most logged messages the node keeps in memory (at most `--history-size`). Resumes from
/// older positions read Redis. 10,000 entries of a 200-byte chat message are ~3 MB.
pub(crate) const WINDOW_ENTRIES: u64 = 10_000;
/// Most entries one Redis read of the log returns (gap fills, loading, old resumes).
pub(crate) const READ_PAGE: usize = 10_000;
/// How long a gap fill keeps trying a read that fails. Right after the subscription is back,
/// the node's command connection may still be in its reconnect back-off (up to 500 ms) and
/// fail at once; giving up then would close every durable socket (`log reset`) although
/// the log is intact.
const FILL_RETRY_FOR: Duration = Duration::from_secs(2);
/// The pause between two tries of a failed gap-fill read.
const FILL_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the other tasks of the node may read of the log: set by the dispatcher.
#[derive(Debug, Default)]
pub(crate) struct LogGauge {
    /// Whether the node knows its log's epoch (durable upgrades get 503 until it does).
    ready: AtomicBool,
    /// The highest offset handled.
    top: AtomicU64,
    /// The first offset in the window (0: empty).
    first: AtomicU64,
}

impl LogGauge {
    /// Whether durable sockets can be served.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
    /// The highest offset handled.
    pub(crate) fn top(&self) -> u64 {
        self.top.load(Ordering::Acquire)
    }
    /// The first offset in memory (0 when none is).
    pub(crate) fn first(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }
}

/// Who a logged message is for, as needed to replay it.
#[derive(Debug, Clone)]
pub(crate) enum Audience {
    /// A direct message: its receivers on this node.
    Direct { sender: ClientId, receivers: Box<[ClientId]> },
    /// A channel message (`Some`) or a broadcast (`None`).
    Chan { sender: ClientId, chan: Option<Box<str>> },
    /// Nothing could be parsed: addressed to nobody (it keeps the window contiguous).
    Nobody,
}

impl Audience {
    /// The audience of `command` (a force offline is never logged: nobody).
    pub(crate) fn of(command: Option<&NodeCommand>) -> Self {
        match command {
            Some(NodeCommand::Direct(m)) => {
                Audience::Direct { sender: m.sender, receivers: m.receivers.clone().into() }
            }
            Some(NodeCommand::Chan(m)) => Audience::Chan { sender: m.sender, chan: m.channel().map(Into::into) },
            Some(NodeCommand::ForceOffline(_) | NodeCommand::Members(_)) | None => Audience::Nobody,
        }
    }

    /// Whether a replay to `client` includes it, by the live rules at replay time: the
    /// receivers of a direct message, the members (`chans`: the client's channels) of a
    /// channel, everyone for a broadcast; the sender itself only when it has more than one
    /// socket (`sockets`) on the node.
    pub(crate) fn includes(&self, client: ClientId, chans: &HashSet<String>, sockets: usize) -> bool {
        let (sender, addressed) = match self {
            Audience::Direct { sender, receivers } => (*sender, receivers.contains(&client)),
            Audience::Chan { sender, chan: Some(chan) } => (*sender, chans.contains(&**chan)),
            Audience::Chan { sender, chan: None } => (*sender, true),
            Audience::Nobody => return false,
        };
        addressed && (client != sender || sockets > 1)
    }
}

/// One logged message as the node keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    /// Node-clock milliseconds when the node got it (age trimming).
    pub(crate) received_ms: u64,
    pub(crate) audience: Audience,
    /// The whole WebSocket frame a durable socket gets: `{"o":…,"d":…}`.
    pub(crate) frame: Bytes,
}

impl Entry {
    /// The entry of `command` logged at `offset`.
    pub(crate) fn new(offset: u64, command: Option<&NodeCommand>, received_ms: u64) -> Self {
        let content = match command {
            Some(NodeCommand::Direct(m)) => m.content.as_bytes(),
            Some(NodeCommand::Chan(m)) => m.content.as_bytes(),
            _ => b"null",
        };
        let frame = websocket::text_frame(&durable::message(Some(offset), content));
        Entry { offset, received_ms, audience: Audience::of(command), frame }
    }

    /// The entry of a log entry read from Redis.
    pub(crate) fn from_log(entry: &LogEntry, received_ms: u64) -> Self {
        Entry::new(entry.offset, parse(&entry.payload).as_ref(), received_ms)
    }
}

/// A FreeIM payload, or `None` (logged) when it is malformed.
pub(crate) fn parse(payload: &[u8]) -> Option<NodeCommand> {
    match NodeCommand::parse(payload) {
        Ok(command) => Some(command),
        Err(e) => {
            let preview = String::from_utf8_lossy(&payload[..payload.len().min(200)]);
            tracing::warn!(error = %e, payload = %preview, "dropping malformed node-channel message");
            None
        }
    }
}

/// A node-channel message to dispatch: its offset when it was logged.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) offset: Option<u64>,
    pub(crate) command: Option<NodeCommand>,
}

/// The log state the dispatcher owns.
#[derive(Debug)]
pub(crate) struct NodeLog {
    log_key: String,
    meta_key: String,
    /// `None` until the node could read its log's meta.
    epoch: Option<Epoch>,
    handled: u64,
    window: VecDeque<Entry>,
    capacity: usize,
}

impl NodeLog {
    /// The log of `node`, not opened yet (see [`NodeLog::load`]).
    pub(crate) fn new(node: &Node) -> Self {
        let keys = node.client.keys();
        NodeLog {
            log_key: keys.log(&node.config.server),
            meta_key: keys.log_meta(&node.config.server),
            epoch: None,
            handled: 0,
            window: VecDeque::new(),
            capacity: node.config.history_size.min(WINDOW_ENTRIES) as usize,
        }
    }

    /// Whether the epoch is known (else durable upgrades get 503 and the dispatcher keeps
    /// trying to [`NodeLog::load`]).
    pub(crate) fn is_open(&self) -> bool {
        self.epoch.is_some()
    }

    /// The epoch (when known) and the highest handled offset.
    pub(crate) fn head(&self) -> (Option<Epoch>, u64) {
        (self.epoch, self.handled)
    }

    /// Opens the log: reads the meta (creating it when missing) and the window's worth of
    /// recent entries. On failure it stays unopened, and is tried again later.
    pub(crate) async fn load(&mut self, node: &Node) {
        let backend = node.client.backend();
        let fresh = Epoch::random();
        let head = match backend.log_open(&self.log_key, &self.meta_key, fresh, node.client.log_fingerprint()).await {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the durable log; durable upgrades get 503 until it opens");
                return;
            }
        };
        self.epoch = Some(head.epoch);
        self.handled = head.top;
        self.window.clear();
        let from = head.top.saturating_sub(self.capacity as u64) + 1;
        if head.top > 0 {
            match backend.log_read(&self.log_key, &self.meta_key, from, head.top, self.capacity).await {
                Ok(read) if read.epoch == Some(head.epoch) => {
                    let now = node.now_ms();
                    let contiguous =
                        read.entries.iter().rev().zip((from..=head.top).rev()).take_while(|(e, o)| e.offset == *o);
                    let kept: Vec<Entry> = contiguous.map(|(e, _)| Entry::from_log(e, now)).collect();
                    self.window.extend(kept.into_iter().rev());
                }
                Ok(_) => tracing::warn!("durable log changed while loading; starting with an empty window"),
                Err(e) => tracing::warn!(error = %e, "cannot load the durable log's recent entries"),
            }
        }
        tracing::info!(epoch = %head.epoch, top = head.top, window = self.window.len(), "durable log opened");
        self.publish(node);
    }

    /// Turns received node-channel messages into the items to dispatch, in order: logged
    /// messages already handled are dropped, gaps are filled from Redis first, and a new
    /// epoch resets the node's durable sockets.
    pub(crate) async fn accept(&mut self, node: &Node, messages: impl Iterator<Item = Bytes>) -> Vec<Item> {
        let mut items = Vec::new();
        let mut next = self.handled + 1;
        for payload in messages {
            let logged = match durable::parse_envelope(&payload) {
                Ok(None) => {
                    items.push(Item { offset: None, command: parse(&payload) });
                    continue;
                }
                Ok(Some(logged)) => logged,
                Err(e) => {
                    tracing::warn!(error = %e, "dropping malformed durable node-channel message");
                    items.push(Item { offset: None, command: None });
                    continue;
                }
            };
            if self.epoch != Some(logged.epoch) {
                self.reset(node, logged.epoch, "a message of a new epoch arrived", &mut items);
                next = 1;
            }
            if logged.offset < next {
                continue;
            }
            if logged.offset > next {
                match self.fill(node, next, logged.offset - 1, &mut items).await {
                    Ok(filled) if filled == logged.offset => {}
                    Ok(_) => self.forget(node, "missed messages the log no longer holds", &mut items),
                    Err(_) => self.forget(node, "a gap could not be filled", &mut items),
                }
            }
            items.push(Item { offset: Some(logged.offset), command: parse(logged.inner) });
            next = logged.offset + 1;
        }
        items
    }

    /// After a (re)subscription: what was logged while the node was not subscribed, as
    /// items to dispatch; and the meta, if the node could not read it before.
    pub(crate) async fn catch_up(&mut self, node: &Node) -> Vec<Item> {
        let mut items = Vec::new();
        if self.epoch.is_none() {
            self.load(node).await;
            return items;
        }
        match self.fill(node, self.handled + 1, u64::MAX, &mut items).await {
            Ok(_) => {}
            Err(Some(epoch)) => {
                self.reset(node, epoch, "the log's epoch changed while unsubscribed", &mut items);
                if self.fill(node, 1, u64::MAX, &mut items).await.is_err() {
                    self.forget(node, "the new log could not be read", &mut items);
                }
            }
            Err(None) => {
                // The meta is gone (Redis restarted empty, say) or unreadable: open the log
                // again, under a new epoch if it was lost.
                self.forget(node, "the log's meta is gone or unreadable", &mut items);
                self.epoch = None;
                self.publish(node);
                self.load(node).await;
            }
        }
        items
    }

    /// Appends the logged messages from `from` up to `to` read from Redis to `items` (page
    /// by page); returns the next offset expected. When the read does not start at `from`,
    /// the node missed messages the log no longer has: its durable sockets are reset and it
    /// goes on from what the log has. `Err` when the log has another epoch (`Some`) or
    /// cannot be read.
    async fn fill(&mut self, node: &Node, mut from: u64, to: u64, items: &mut Vec<Item>) -> Result<u64, Option<Epoch>> {
        let backend = node.client.backend();
        node.metrics.gap_fill();
        let give_up = Instant::now() + FILL_RETRY_FOR;
        while from <= to {
            let read = match backend.log_read(&self.log_key, &self.meta_key, from, to, READ_PAGE).await {
                Ok(read) => read,
                Err(e) if Instant::now() < give_up => {
                    tracing::debug!(error = %e, from, "cannot read the durable log to fill a gap; trying again");
                    tokio::time::sleep(FILL_RETRY_PAUSE).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, from, "cannot read the durable log to fill a gap");
                    return Err(None);
                }
            };
            if read.epoch != self.epoch {
                return Err(read.epoch);
            }
            let Some(first) = read.entries.first() else {
                break;
            };
            if first.offset != from {
                tracing::warn!(
                    from,
                    first = first.offset,
                    "messages were trimmed from the log before this node saw them"
                );
                self.forget(node, "missed messages the log no longer holds", items);
            }
            for entry in &read.entries {
                items.push(Item { offset: Some(entry.offset), command: parse(&entry.payload) });
            }
            from = read.entries.last().map_or(from, |e| e.offset + 1);
            if read.entries.len() < READ_PAGE {
                break;
            }
        }
        Ok(from)
    }

    /// A new epoch: the old window means nothing any more, and durable sockets are closed.
    fn reset(&mut self, node: &Node, epoch: Epoch, why: &str, items: &mut [Item]) {
        tracing::warn!(old = ?self.epoch, new = %epoch, why, "durable log reset");
        self.epoch = Some(epoch);
        self.handled = 0;
        self.forget(node, why, items);
    }

    /// Empties the window and closes durable sockets: their positions cannot be served.
    /// Logged `items` not yet dispatched are still delivered, but no longer as logged.
    pub(crate) fn forget(&mut self, node: &Node, why: &str, items: &mut [Item]) {
        self.window.clear();
        items.iter_mut().for_each(|item| item.offset = None);
        let mut closed = 0;
        node.registry.for_each(|_, conns| {
            for conn in conns.iter().filter(|c| c.kind() != Kind::FreeIm) {
                conn.close(CloseReason::LogReset);
                closed += 1;
            }
        });
        if closed > 0 {
            tracing::warn!(sockets = closed, why, "closing durable sockets: log reset");
        }
        self.publish(node);
    }

    /// Keeps `entry` (the next offset) in the window and advances `handled` to it.
    pub(crate) fn record(&mut self, entry: Entry) {
        if self.window.back().is_some_and(|last| last.offset + 1 != entry.offset) {
            self.window.clear();
        }
        self.handled = entry.offset;
        if self.window.len() == self.capacity {
            self.window.pop_front();
        }
        self.window.push_back(entry);
    }

    /// Tells the other tasks where the log is (after a batch or a reset).
    pub(crate) fn publish(&self, node: &Node) {
        let gauge = &node.log_gauge;
        gauge.top.store(self.handled, Ordering::Release);
        gauge.first.store(self.window.front().map_or(0, |e| e.offset), Ordering::Release);
        gauge.ready.store(self.epoch.is_some(), Ordering::Release);
    }

    /// The entries `(after, handled]` when the node can replay all of them, from `older`
    /// (read from Redis by the resuming socket) and then the window.
    pub(crate) fn replay<'a>(&'a self, after: u64, older: &'a [Entry]) -> Option<impl Iterator<Item = &'a Entry>> {
        if after > self.handled {
            return None;
        }
        let window_first = self.window.front().map_or(self.handled + 1, |e| e.offset);
        let older = if after + 1 >= window_first {
            &[][..]
        } else {
            let contiguous = older.first().is_some_and(|e| e.offset == after + 1)
                && older.last().is_some_and(|e| e.offset + 1 == window_first)
                && older.len() as u64 == window_first - after - 1;
            if !contiguous {
                return None;
            }
            older
        };
        let skip = (after + 1).saturating_sub(window_first) as usize;
        Some(older.iter().chain(self.window.iter().skip(skip)))
    }

    /// Drops entries older than `--history-ttl` from the window and from Redis (the owner
    /// trims its own log; `PEXPIRE` on every append drops a log idle that long).
    pub(crate) async fn trim(&mut self, node: &Node) {
        let ttl_ms = node.config.history_ttl.as_millis() as u64;
        let oldest_kept = node.now_ms().saturating_sub(ttl_ms);
        let expired = self.window.iter().take_while(|e| e.received_ms < oldest_kept).count();
        if expired == 0 {
            return;
        }
        self.window.drain(..expired);
        let min = self.window.front().map_or(self.handled + 1, |e| e.offset);
        if let Err(e) = node.client.backend().log_trim(&self.log_key, min).await {
            tracing::warn!(error = %e, "cannot trim the durable log by age");
        }
        self.publish(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(sender: ClientId, receivers: &[ClientId]) -> Audience {
        Audience::Direct { sender, receivers: receivers.into() }
    }

    #[test]
    fn replay_follows_the_live_rules() {
        let room: HashSet<String> = ["room".to_owned()].into();
        let none = HashSet::new();
        let chan = |sender, c: Option<&str>| Audience::Chan { sender, chan: c.map(Into::into) };
        // (audience, client, its channels, its sockets) → included.
        let cases = [
            (direct(1, &[2, 3]), 2, &none, 1, true),
            (direct(1, &[3]), 2, &none, 1, false),
            (direct(2, &[2]), 2, &none, 1, false),
            (direct(2, &[2]), 2, &none, 2, true),
            (chan(1, Some("room")), 2, &room, 1, true),
            (chan(1, Some("room")), 2, &none, 1, false),
            (chan(2, Some("room")), 2, &room, 1, false),
            (chan(0, None), 2, &none, 1, true),
            (chan(2, None), 2, &none, 1, false),
            (Audience::Nobody, 2, &room, 3, false),
        ];
        for (audience, client, chans, sockets, want) in cases {
            assert_eq!(audience.includes(client, chans, sockets), want, "{audience:?} to {client}");
        }
    }

    fn entry(offset: u64) -> Entry {
        Entry { offset, received_ms: 0, audience: Audience::Nobody, frame: Bytes::new() }
    }

    /// A log whose window holds `len` entries ending at `handled`.
    fn log(len: u64, handled: u64) -> NodeLog {
        NodeLog {
            log_key: String::new(),
            meta_key: String::new(),
            epoch: None,
            handled,
            window: (handled + 1 - len..=handled).map(entry).collect(),
            capacity: 100,
        }
    }

    /// A case: the log, the offset resumed after, the entries read from Redis, the replay.
    type Case<'a> = (NodeLog, u64, &'a [Entry], Option<Vec<u64>>);

    fn offsets<'a>(entries: Option<impl Iterator<Item = &'a Entry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.map(|e| e.offset).collect())
    }

    #[test]
    fn replay_covers_the_gap_or_nothing() {
        let older: Vec<Entry> = (3..=4).map(entry).collect();
        let cases: [Case; 8] = [
            (log(4, 8), 8, &[], Some(vec![])),
            (log(4, 8), 6, &[], Some(vec![7, 8])),
            (log(4, 8), 4, &[], Some(vec![5, 6, 7, 8])),
            (log(4, 8), 3, &[], None),
            (log(4, 8), 2, &older, Some(vec![3, 4, 5, 6, 7, 8])),
            (log(4, 8), 1, &older, None),
            (log(4, 8), 9, &[], None),
            (log(0, 8), 8, &[], Some(vec![])),
        ];
        for (log, after, older, want) in cases {
            assert_eq!(offsets(log.replay(after, older)), want, "after {after}");
        }
    }

    #[test]
    fn the_window_is_contiguous_and_bounded() {
        let mut log = log(0, 0);
        log.capacity = 3;
        for o in 1..=5 {
            log.record(entry(o));
        }
        assert_eq!(log.window.iter().map(|e| e.offset).collect::<Vec<_>>(), [3, 4, 5]);
        log.record(entry(9));
        assert_eq!((log.window.len(), log.handled), (1, 9));
    }
}
