//! The storage and pub/sub seam: Redis for production and clusters, an in-process broker
//! for the single-process mode and fast tests.
//!
//! The seam is a small subset of Redis itself (strings with a TTL, hashes, pub/sub and
//! FreeIM's three Lua scripts) rather than FreeIM-level operations, plus the durable log of
//! each node ([`log`]: append, open, read, trim), which is ours. Keys and payloads are
//! built once, in [`crate::protocol`] and [`crate::client`], so both backends store the very
//! same bytes under the very same names, and the behaviour suite runs unchanged on both.
//!
//! Write-only commands whose replies FreeIM ignores are sent as a batch of [`Op`]s, which the
//! Redis backend pipelines (one round trip) and the memory backend applies in order.

mod group_commit;
mod log;
mod memory;
mod pubsub;
mod redis;
pub(crate) mod resp;

use crate::durable::Epoch;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

pub use self::log::{LogEntry, LogHead, LogRead};
pub use self::memory::MemoryBackend;
pub use self::redis::RedisBackend;

/// How many pub/sub messages may wait for a consumer that is not reading the subscription
/// itself: in the in-process broker (a full queue makes the publisher wait) and in
/// [`crate::EventStream`] (a full queue stops reading, so Redis buffers). Nothing is dropped
/// here; Redis itself drops a subscriber that falls behind its `client-output-buffer-limit
/// pubsub`, and the subscription then subscribes again.
pub(crate) const SUBSCRIPTION_QUEUE: usize = 8192;

/// A backend failure. Callers decide whether to retry; the gateway logs and goes on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Redis refused a command or the connection failed (it reconnects by itself).
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A hash field that should hold an integer holds something else (Redis says the same).
    #[error("hash {key} field {field} is not an integer")]
    NotAnInteger {
        /// The hash key.
        key: String,
        /// The field.
        field: String,
    },
    /// A node's log meta (`{P}LogMeta{node}`) has an epoch that is not 16 lowercase hex
    /// characters, or no integer top. Writers start a new epoch over it at their next
    /// durable send; until then the log cannot be opened.
    #[error("log meta {key} holds no valid epoch and top")]
    MalformedLogMeta {
        /// The meta hash key.
        key: String,
    },
    /// The runtime shut down while a durable append or a socket's close waited for its turn.
    #[error("shutting down: the write was not made")]
    Shutdown,
    /// A script answered in a shape it never answers in (a broken or foreign Redis).
    #[error("unexpected reply to {0}")]
    UnexpectedReply(&'static str),
}

/// The server-side Lua scripts: FreeIM's, and ours for presence and memberships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// KEYS: `{P}Chan{chan}`, `{P}Client{id}`, `{P}ListChan`; ARGV: id, chan, and
    /// optionally a node channel and a payload. FreeIM's join script (the same Redis
    /// effects: adds the membership once and counts it in the channel list), then, when
    /// ARGV 3 and 4 are given, `PUBLISH`es the membership change to the client's node in
    /// the same atomic step, so the node's memory of the channel stays in Redis's order.
    JoinChan,
    /// Same KEYS/ARGV as [`Script::JoinChan`]; FreeIM's leave script (removes the
    /// membership and decrements the count, deleting the list entry when it reaches zero),
    /// then the same optional `PUBLISH`.
    LeaveChan,
    /// A socket opens. KEYS: `{P}Online`, `{P}NodeSockets{node}`, and optionally
    /// `{P}Client{id}`; ARGV: client id, socket field (its id, `d` after it when durable),
    /// token value, and with the third key the node's channel and the payload prefix
    /// `__FreeIM__(Chans)<id>:`. With them, it first publishes the prefix and the client's
    /// channels as a JSON array (`cjson`: `{}` when empty), so the node learns them in
    /// Redis's order, and no later than the client counts as online. Then it records the
    /// socket and, only if it was not recorded yet, increments the client's count (FreeIM's
    /// `HINCRBY`): replaying it after a Redis restart is safe. Returns the new count, or -1
    /// when the socket was already recorded.
    SocketOpen,
    /// Sockets close. KEYS: `{P}Online`, `{P}NodeSockets{node}`; ARGV: client id and socket
    /// field, for each socket (a node that loses many sockets at once closes them in one
    /// call). For each, only if the socket was recorded, forgets it and decrements the
    /// count, deleting it at zero (FreeIM's offline script). Returns the new counts in ARGV's
    /// order, -1 for a socket that another node already cleaned up, so a socket is never
    /// counted down twice.
    SocketClose,
}

impl Script {
    /// The Lua source.
    pub(crate) fn lua(self) -> &'static str {
        match self {
            Script::JoinChan => {
                "if redis.call('HSETNX',KEYS[1],ARGV[1],0)==1 then redis.call('HSET',KEYS[2],ARGV[2],0) redis.call('HINCRBY',KEYS[3],ARGV[2],1) end if ARGV[4] then redis.call('PUBLISH',ARGV[3],ARGV[4]) end return 1"
            }
            Script::LeaveChan => {
                "if redis.call('HDEL',KEYS[1],ARGV[1])==1 then redis.call('HDEL',KEYS[2],ARGV[2]) if redis.call('HINCRBY',KEYS[3],ARGV[2],-1)<=0 then redis.call('HDEL',KEYS[3],ARGV[2]) end end if ARGV[4] then redis.call('PUBLISH',ARGV[3],ARGV[4]) end return 1"
            }
            Script::SocketOpen => {
                "if KEYS[3] then redis.call('PUBLISH', ARGV[4], ARGV[5] .. cjson.encode(redis.call('HKEYS', KEYS[3]))) end \
                 if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 1 then return redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end return -1"
            }
            Script::SocketClose => {
                "local counts = {} for i = 1, #ARGV - 1, 2 do local n = -1 \
                 if redis.call('HDEL', KEYS[2], ARGV[i + 1]) == 1 then n = redis.call('HINCRBY', KEYS[1], ARGV[i], -1) \
                 if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[i]) end end counts[#counts + 1] = n end return counts"
            }
        }
    }
}

/// A write whose reply is not needed; batches of them are pipelined.
#[derive(Debug, Clone)]
pub enum Op {
    /// `PUBLISH channel payload`
    Publish {
        /// The pub/sub channel.
        channel: String,
        /// The message.
        payload: Bytes,
    },
    /// `HINCRBY key field by`
    HIncrBy {
        /// The hash key.
        key: String,
        /// The field.
        field: String,
        /// The increment.
        by: i64,
    },
    /// `HSET key field value`
    HSet {
        /// The hash key.
        key: String,
        /// The field.
        field: String,
        /// Its value.
        value: String,
    },
    /// `HDEL key field…`
    HDel {
        /// The hash key.
        key: String,
        /// The fields to delete.
        fields: Vec<String>,
    },
    /// `EVAL script keys… args…`
    Eval {
        /// Which script.
        script: Script,
        /// Its KEYS.
        keys: Vec<String>,
        /// Its ARGV.
        args: Vec<String>,
    },
    /// Logs `payloads` on a node and publishes each with its offset, in one atomic step
    /// (see [`log`]): the node's meta gets a new epoch `fresh_epoch` (and the log is
    /// emptied) when it is missing, malformed or written for another server list; the top
    /// grows by one per payload; each payload is appended as entry `<offset>-0` (field `d`)
    /// with the log bounded to about `size` entries, and published to `channel` as
    /// [`envelope`](crate::durable::envelope)`(epoch, offset, payload)`; the log then
    /// expires `ttl_ms` after this append. Consecutive appends to one log in a batch are
    /// merged into one call.
    LogAppend {
        /// `{P}Log{node}`.
        log: String,
        /// `{P}LogMeta{node}`.
        meta: String,
        /// `{P}Server{node}`, the node's channel.
        channel: String,
        /// The FreeIM node-channel payloads, in order.
        payloads: Vec<Bytes>,
        /// How many entries the log keeps at least (Redis trims whole stream nodes beyond).
        size: u64,
        /// How long the log lives after its last append, in milliseconds.
        ttl_ms: u64,
        /// The epoch to start if a new one is needed.
        fresh_epoch: Epoch,
        /// The fingerprint of the writer's server list.
        fingerprint: String,
    },
}

/// One message received on a subscribed channel.
#[derive(Debug, Clone)]
pub struct PubSubMessage {
    /// The channel it was published to.
    pub channel: String,
    /// The payload, byte for byte.
    pub payload: Bytes,
}

/// A subscription, read by the task that consumes it: messages are only received while
/// [`Subscription::recv_many`] or [`Subscription::recv`] is awaited (on Redis, the awaiting
/// task reads the socket itself). It resubscribes by itself after a loss and
/// ends when dropped.
#[derive(Debug)]
pub struct Subscription {
    source: Source,
    live: watch::Receiver<bool>,
    epoch: watch::Receiver<u64>,
}

#[derive(Debug)]
enum Source {
    Redis(Box<pubsub::RedisSubscriber>),
    Memory(mpsc::Receiver<PubSubMessage>),
}

impl Subscription {
    /// Waits for at least one message, then appends it and every other message already
    /// received, up to `max`, to `out`, in publish order. Returns how many were appended;
    /// 0 only when the in-process broker is gone (a Redis subscription never ends).
    pub async fn recv_many(&mut self, out: &mut Vec<PubSubMessage>, max: usize) -> usize {
        match &mut self.source {
            Source::Redis(subscriber) => subscriber.recv_many(out, max).await,
            Source::Memory(messages) => messages.recv_many(out, max).await,
        }
    }

    /// Subscribes now unless already subscribed (one attempt, at most a few seconds), and
    /// tells whether it is: so a caller can be subscribed before it depends on messages.
    pub async fn ready(&mut self) -> bool {
        match &mut self.source {
            Source::Redis(subscriber) => subscriber.ready().await,
            Source::Memory(_) => true,
        }
    }

    /// The next message; `None` only when the in-process broker is gone.
    pub async fn recv(&mut self) -> Option<PubSubMessage> {
        let mut one = Vec::with_capacity(1);
        self.recv_many(&mut one, 1).await;
        one.pop()
    }

    /// Whether the subscription is established (Redis: between a confirmed SUBSCRIBE and
    /// the loss of its connection, as last seen by a `recv`).
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// Follows [`Subscription::is_live`].
    pub fn live(&self) -> watch::Receiver<bool> {
        self.live.clone()
    }

    /// How many times it has been established (1 after the first SUBSCRIBE). Unlike
    /// `live`, a loss and recovery between two looks cannot go unnoticed.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.clone()
    }
}

/// One page of a hash scan ([`Backend::hscan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPage {
    /// Where the next page starts; 0 when this was the last one.
    pub cursor: u64,
    /// The fields of this page and their values.
    pub entries: Vec<(String, String)>,
}

/// Redis or the in-process broker. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A Redis server (reconnects by itself).
    Redis(RedisBackend),
    /// The in-process broker: one process, no Redis.
    Memory(MemoryBackend),
}

/// Forwards one call to whichever backend this is.
macro_rules! delegate {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Backend::Redis($b) => $call,
            Backend::Memory($b) => $call,
        }
    };
}

impl Backend {
    /// Runs `ops` in order (pipelined on Redis). Replies are ignored, as FreeIM does.
    pub async fn execute(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        if ops.is_empty() {
            return Ok(());
        }
        let ops = log::merge_appends(ops);
        delegate!(self, b => b.execute(ops).await)
    }
    /// `EVAL script keys… args…`: the script's integer reply.
    pub async fn eval(&self, script: Script, keys: Vec<String>, args: Vec<String>) -> Result<i64, BackendError> {
        delegate!(self, b => b.eval(script, keys, args).await)
    }
    /// `EVAL script keys… args…` of a script that takes its ARGV in pairs and answers one
    /// count per pair ([`Script::SocketClose`]).
    pub async fn eval_counts(
        &self,
        script: Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<i64>, BackendError> {
        match self {
            Backend::Redis(b) => b.eval(script, keys, args).await,
            Backend::Memory(b) => b.eval_counts(script, keys, args).await,
        }
    }
    /// `SET key value EX ttl_secs`
    pub async fn set_ex(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), BackendError> {
        delegate!(self, b => b.set_ex(key, value, ttl_secs).await)
    }
    /// `SET key value EX ttl_secs GET`: the value it replaced (`None`: there was none).
    pub async fn set_ex_get(&self, key: &str, value: &str, ttl_secs: u64) -> Result<Option<String>, BackendError> {
        delegate!(self, b => b.set_ex_get(key, value, ttl_secs).await)
    }
    /// `SET key value NX EX ttl_secs`: whether the key was set (it did not exist).
    pub async fn set_nx_ex(&self, key: &str, value: &str, ttl_secs: u64) -> Result<bool, BackendError> {
        delegate!(self, b => b.set_nx_ex(key, value, ttl_secs).await)
    }
    /// `GET key`, or `GETDEL key` when `delete` is set (single-use tokens).
    pub async fn get(&self, key: &str, delete: bool) -> Result<Option<String>, BackendError> {
        delegate!(self, b => b.get(key, delete).await)
    }
    /// `MGET key…`: each key's value, in order (`None` where missing).
    pub async fn mget(&self, keys: &[String]) -> Result<Vec<Option<String>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, b => b.mget(keys).await)
    }
    /// `HKEYS key` for each key, pipelined.
    pub async fn hkeys(&self, keys: &[String]) -> Result<Vec<Vec<String>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, b => b.hkeys(keys).await)
    }
    /// `HGET key field`
    pub async fn hget(&self, key: &str, field: &str) -> Result<Option<String>, BackendError> {
        delegate!(self, b => b.hget(key, field).await)
    }
    /// `HMGET key field…`
    pub async fn hmget(&self, key: &str, fields: &[String]) -> Result<Vec<Option<String>>, BackendError> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, b => b.hmget(key, fields).await)
    }
    /// One page of `HSCAN key cursor COUNT count`: the next cursor (0 at the end) and the
    /// entries of this page (a field may come twice across pages, as with Redis). Every field
    /// present from the first page to the last is returned; the page never blocks the store
    /// for longer than about `count` fields, unlike `HKEYS` or `HGETALL`.
    pub async fn hscan(&self, key: &str, cursor: u64, count: usize) -> Result<HashPage, BackendError> {
        delegate!(self, b => b.hscan(key, cursor, count).await)
    }
    /// `HLEN key`
    pub async fn hlen(&self, key: &str) -> Result<u64, BackendError> {
        delegate!(self, b => b.hlen(key).await)
    }
    /// `HGETALL key`
    pub async fn hgetall(&self, key: &str) -> Result<Vec<(String, String)>, BackendError> {
        delegate!(self, b => b.hgetall(key).await)
    }
    /// Where the log `log` with meta `meta` stands, creating the meta (epoch `fresh`, top 0,
    /// `fingerprint`) and emptying the log when the meta is missing. An existing meta is
    /// never reset here (only writers reset it); a malformed one is
    /// [`BackendError::MalformedLogMeta`].
    pub async fn log_open(
        &self,
        log: &str,
        meta: &str,
        fresh: Epoch,
        fingerprint: &str,
    ) -> Result<LogHead, BackendError> {
        delegate!(self, b => b.log_open(log, meta, fresh, fingerprint).await)
    }
    /// One atomic snapshot of a log: its epoch and top, and its entries with offsets in
    /// `[from, to]` (`to` = `u64::MAX`: to the end), oldest first, at most `count`.
    /// Entries that do not parse are skipped (logged).
    pub async fn log_read(
        &self,
        log: &str,
        meta: &str,
        from: u64,
        to: u64,
        count: usize,
    ) -> Result<LogRead, BackendError> {
        delegate!(self, b => b.log_read(log, meta, from, to, count).await)
    }
    /// Drops the entries of `log` with offsets below `min_offset` (`XTRIM log MINID`).
    pub async fn log_trim(&self, log: &str, min_offset: u64) -> Result<(), BackendError> {
        delegate!(self, b => b.log_trim(log, min_offset).await)
    }
    /// The same store on a command connection of its own, for a task that must not wait
    /// behind the node's other commands nor on its busy runtime: the connection is made by
    /// the first command, on the runtime that issues it. (In-process, a clone.)
    pub fn detached(&self) -> Result<Backend, BackendError> {
        Ok(match self {
            Backend::Redis(b) => Backend::Redis(b.detached()?),
            Backend::Memory(b) => Backend::Memory(b.clone()),
        })
    }
    /// Subscribes to `channels`; see [`Subscription`]. On Redis it connects when first read
    /// or made [`Subscription::ready`].
    pub fn subscribe(&self, channels: Vec<String>) -> Subscription {
        delegate!(self, b => b.subscribe(channels))
    }
}
