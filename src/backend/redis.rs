//! The Redis backend: one multiplexed, self-reconnecting command connection shared by every
//! caller, plus one dedicated connection per subscription ([`super::pubsub`]).
//!
//! Commands are those of the reference (`SET … EX`, `GET`, `HKEYS`, `HMGET`, `HGETALL`,
//! `PUBLISH`, `HINCRBY`, `EVAL`), with `GETDEL` for single-use tokens, `SET … GET`, `MGET`,
//! `HLEN` and `HSCAN` for node leases and presence at scale, and for the durable log
//! ([`super::log`]) `EVALSHA` of its scripts and `XTRIM` (Redis ≥ 6.2).
//! A command issued while Redis is down fails fast with [`BackendError::Redis`]; the
//! connection manager reconnects in the background so the next command works again.

use super::group_commit::{self, GroupCommit};
use super::log::{self, LogEntry, LogHead, LogRead};
use super::pubsub::{RedisSubscriber, Target};
use super::{BackendError, HashPage, Op, Script, Source, Subscription};
use crate::durable::Epoch;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind, Value};
use sha1::{Digest, Sha1};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// How long one connection attempt to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may wait for its reply before it fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis server, shared by clones.
#[derive(Clone)]
pub struct RedisBackend {
    client: redis::Client,
    conn: ConnectionManager,
    /// Whether Redis is believed to have the append script cached, so that a pipeline may
    /// name it by SHA-1 only. Until it is, the first append of a pipeline goes by text and
    /// caches it for the ones after it, in the same pipeline: had they failed with
    /// `NOSCRIPT` instead, their retry would come after the pipeline's other commands,
    /// out of order. Cleared on any failed command: a Redis that was restarted (the
    /// connection drops) has lost its scripts.
    append_cached: Arc<AtomicBool>,
    /// Durable appends waiting for their log's call in flight.
    group_commit: Arc<GroupCommit>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("url", &self.client.get_connection_info().addr()).finish()
    }
}

impl RedisBackend {
    /// Opens `url` (`redis://HOST:PORT/DB`) without connecting yet: the first command
    /// connects, and a Redis that is down at start-up is retried rather than fatal.
    /// Fails only when the URL itself is invalid.
    pub fn open(url: &str) -> Result<Self, BackendError> {
        Self::connect_lazily(redis::Client::open(url)?)
    }

    /// The same Redis on a command connection of its own, made by the first command (so on
    /// the runtime that issues it).
    pub(super) fn detached(&self) -> Result<Self, BackendError> {
        Self::connect_lazily(self.client.clone())
    }

    fn connect_lazily(client: redis::Client) -> Result<Self, BackendError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(RedisBackend { client, conn, append_cached: Arc::default(), group_commit: Arc::default() })
    }

    /// Runs `ops` in order. A lone durable append (a durable send to one node) goes through
    /// its log's group commit ([`super::group_commit`]); anything else is one pipeline now,
    /// so the appends of a send to several nodes still reach Redis in their order.
    pub(super) async fn execute(&self, mut ops: Vec<Op>) -> Result<(), BackendError> {
        match ops.as_slice() {
            [Op::LogAppend { .. }] => group_commit::append(self, ops.remove(0)).await,
            _ => self.execute_now(ops).await,
        }
    }

    /// The group commit of this backend's durable appends.
    pub(super) fn group_commit(&self) -> &GroupCommit {
        &self.group_commit
    }

    /// One pipeline, in order. An append that still meets `NOSCRIPT` (the scripts were
    /// flushed while believed cached) did nothing, so it is sent again, after the pipeline;
    /// any other error is returned once the rest ran, as a pipeline does.
    pub(super) async fn execute_now(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        let replies = self.pipeline(ops.iter()).await?;
        let mut retry = Vec::new();
        let mut failed = None;
        for (op, reply) in ops.iter().zip(replies) {
            match reply {
                Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => retry.push(op),
                Value::ServerError(e) => {
                    failed.get_or_insert(e);
                }
                _ => {}
            }
        }
        if !retry.is_empty() {
            self.append_cached.store(false, Ordering::Relaxed);
            self.pipeline(retry.into_iter()).await?;
        }
        failed.map_or(Ok(()), |e| Err(RedisError::from(e).into()))
    }

    /// Sends `ops` as one pipeline and returns each reply (errors included); see
    /// [`RedisBackend::append_cached`] for how appends name their script.
    async fn pipeline<'a>(&self, ops: impl Iterator<Item = &'a Op>) -> Result<Vec<Value>, BackendError> {
        let mut by = if self.append_cached.load(Ordering::Relaxed) { By::Sha } else { By::Text };
        let mut pipe = redis::pipe();
        let mut appends = false;
        for op in ops {
            pipe.add_command(command(op, by));
            if let Op::LogAppend { .. } = op {
                (by, appends) = (By::Sha, true);
            }
        }
        let replies = self.forget_scripts_on(pipe.ignore_errors().query_async(&mut self.conn.clone()).await)?;
        if appends {
            self.append_cached.store(true, Ordering::Relaxed);
        }
        Ok(replies)
    }

    /// `result`, after clearing [`RedisBackend::append_cached`] if it failed.
    fn forget_scripts_on<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if result.is_err() {
            self.append_cached.store(false, Ordering::Relaxed);
        }
        result
    }

    pub(super) async fn eval<T: FromRedisValue>(
        &self,
        script: Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, BackendError> {
        self.query(&command(&Op::Eval { script, keys, args }, By::Text)).await
    }

    pub(super) async fn log_open(
        &self,
        log: &str,
        meta: &str,
        fresh: Epoch,
        fingerprint: &str,
    ) -> Result<LogHead, BackendError> {
        let reply = self.run(&LOG_OPEN, &[log, meta], &[fresh.as_str().as_bytes(), fingerprint.as_bytes()]).await?;
        let malformed = || BackendError::MalformedLogMeta { key: meta.to_owned() };
        let fields = array(&reply).ok_or_else(malformed)?;
        let field = |i: usize| fields.get(i).and_then(bulk);
        log::meta_head(meta, field(0), field(1))?.ok_or_else(malformed)
    }

    pub(super) async fn log_read(
        &self,
        log: &str,
        meta: &str,
        from: u64,
        to: u64,
        count: usize,
    ) -> Result<LogRead, BackendError> {
        let (from, to, count) = (from.to_string(), stream_end(to), count.to_string());
        let reply = self.run(&LOG_READ, &[log, meta], &[from.as_bytes(), to.as_bytes(), count.as_bytes()]).await?;
        let fields = array(&reply).unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(bulk);
        let head = log::or_lost(log::meta_head(meta, field(0), field(1)));
        let entries = fields.get(2).and_then(array).unwrap_or_default();
        Ok(LogRead {
            epoch: head.map(|h| h.epoch),
            top: head.map_or(0, |h| h.top),
            entries: entries.iter().filter_map(|e| entry(log, e)).collect(),
        })
    }

    pub(super) async fn log_trim(&self, log: &str, min_offset: u64) -> Result<(), BackendError> {
        self.query(redis::cmd("XTRIM").arg(log).arg("MINID").arg(format!("{min_offset}-0"))).await
    }

    /// Runs `script` by its SHA-1, and by its text when Redis does not know it yet (which
    /// caches it for the next calls).
    async fn run(&self, script: &LuaScript, keys: &[&str], args: &[&[u8]]) -> Result<Value, BackendError> {
        match self.query(&script.call(By::Sha, keys, args)).await {
            Err(BackendError::Redis(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.query(&script.call(By::Text, keys, args)).await
            }
            reply => reply,
        }
    }

    pub(super) async fn set_ex(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), BackendError> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("EX").arg(ttl_secs)).await
    }

    pub(super) async fn set_ex_get(
        &self,
        key: &str,
        value: &str,
        ttl_secs: u64,
    ) -> Result<Option<String>, BackendError> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("EX").arg(ttl_secs).arg("GET")).await
    }

    pub(super) async fn set_nx_ex(&self, key: &str, value: &str, ttl_secs: u64) -> Result<bool, BackendError> {
        let cmd = redis::cmd("SET").arg(key).arg(value).arg("NX").arg("EX").arg(ttl_secs).clone();
        let reply: Option<String> = self.query(&cmd).await?;
        Ok(reply.is_some())
    }

    pub(super) async fn get(&self, key: &str, delete: bool) -> Result<Option<String>, BackendError> {
        self.query(redis::cmd(if delete { "GETDEL" } else { "GET" }).arg(key)).await
    }

    pub(super) async fn mget(&self, keys: &[String]) -> Result<Vec<Option<String>>, BackendError> {
        self.query(redis::cmd("MGET").arg(keys)).await
    }

    pub(super) async fn hkeys(&self, keys: &[String]) -> Result<Vec<Vec<String>>, BackendError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HKEYS").arg(key);
        }
        Ok(pipe.query_async(&mut self.conn.clone()).await?)
    }

    pub(super) async fn hget(&self, key: &str, field: &str) -> Result<Option<String>, BackendError> {
        self.query(redis::cmd("HGET").arg(key).arg(field)).await
    }

    pub(super) async fn hmget(&self, key: &str, fields: &[String]) -> Result<Vec<Option<String>>, BackendError> {
        self.query(redis::cmd("HMGET").arg(key).arg(fields)).await
    }

    pub(super) async fn hscan(&self, key: &str, cursor: u64, count: usize) -> Result<HashPage, BackendError> {
        let cmd = redis::cmd("HSCAN").arg(key).arg(cursor).arg("COUNT").arg(count).clone();
        let (cursor, entries): (u64, Vec<(String, String)>) = self.query(&cmd).await?;
        Ok(HashPage { cursor, entries })
    }

    pub(super) async fn hlen(&self, key: &str) -> Result<u64, BackendError> {
        self.query(redis::cmd("HLEN").arg(key)).await
    }

    pub(super) async fn hgetall(&self, key: &str) -> Result<Vec<(String, String)>, BackendError> {
        self.query(redis::cmd("HGETALL").arg(key)).await
    }

    /// Sends one command on the shared connection and converts its reply.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BackendError> {
        Ok(self.forget_scripts_on(cmd.query_async(&mut self.conn.clone()).await)?)
    }

    pub(super) fn subscribe(&self, channels: Vec<String>) -> Subscription {
        let target = Target::new(self.client.get_connection_info());
        let (subscriber, live, epoch) = RedisSubscriber::new(target, channels);
        Subscription { source: Source::Redis(Box::new(subscriber)), live, epoch }
    }
}

/// The Redis command of one [`Op`], exactly as the reference sends it; `by` says how an
/// append names its script (FreeIM's own scripts always go as text, as the reference sends
/// them).
fn command(op: &Op, by: By) -> Cmd {
    match op {
        Op::Publish { channel, payload } => redis::cmd("PUBLISH").arg(channel).arg(payload.as_ref()).clone(),
        Op::HIncrBy { key, field, by } => redis::cmd("HINCRBY").arg(key).arg(field).arg(by).clone(),
        Op::HSet { key, field, value } => redis::cmd("HSET").arg(key).arg(field).arg(value).clone(),
        Op::HDel { key, fields } => redis::cmd("HDEL").arg(key).arg(fields).clone(),
        Op::Eval { script, keys, args } => {
            redis::cmd("EVAL").arg(script.lua()).arg(keys.len()).arg(keys).arg(args).clone()
        }
        Op::LogAppend { log, meta, channel, payloads, size, ttl_ms, fresh_epoch, fingerprint } => {
            let (size, ttl_ms) = (size.to_string(), ttl_ms.to_string());
            let head = [channel.as_bytes(), size.as_bytes(), ttl_ms.as_bytes(), fresh_epoch.as_str().as_bytes()];
            let mut args: Vec<&[u8]> = head.to_vec();
            args.push(fingerprint.as_bytes());
            args.extend(payloads.iter().map(Bytes::as_ref));
            LOG_APPEND.call(by, &[log, meta], &args)
        }
    }
}

/// How a script call names its script.
#[derive(Debug, Clone, Copy)]
enum By {
    /// `EVALSHA`: only the 40-byte digest travels, and Redis skips hashing the text.
    Sha,
    /// `EVAL`: the whole text; Redis caches it, so `EVALSHA` works afterwards.
    Text,
}

/// A Lua script with its SHA-1, computed once.
struct LuaScript {
    text: &'static str,
    sha: String,
}

impl LuaScript {
    fn new(text: &'static str) -> Self {
        let sha = Sha1::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        LuaScript { text, sha }
    }

    fn call(&self, by: By, keys: &[&str], args: &[&[u8]]) -> Cmd {
        let mut cmd = match by {
            By::Sha => redis::cmd("EVALSHA").arg(&self.sha).clone(),
            By::Text => redis::cmd("EVAL").arg(self.text).clone(),
        };
        cmd.arg(keys.len()).arg(keys);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd
    }
}

static LOG_APPEND: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(log::APPEND_LUA));
static LOG_OPEN: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(log::OPEN_LUA));
static LOG_READ: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(log::READ_LUA));

/// The XRANGE bound of offset `to`: `+` for `u64::MAX`.
fn stream_end(to: u64) -> String {
    if to == u64::MAX { "+".to_owned() } else { to.to_string() }
}

fn array(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

/// A bulk (or simple) string's bytes; `None` for nil and anything else.
fn bulk(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// One XRANGE entry `[id, [field, value, …]]` of `log`; `None` (logged) unless its id is
/// `<offset>-0` and it has a field `d`.
fn entry(log: &str, value: &Value) -> Option<LogEntry> {
    let parsed = array(value).and_then(|parts| {
        let offset = log::entry_offset(bulk(parts.first()?)?)?;
        let fields = array(parts.get(1)?)?;
        let payload = fields.chunks_exact(2).find(|pair| bulk(&pair[0]) == Some(b"d"))?;
        Some(LogEntry { offset, payload: Bytes::copy_from_slice(bulk(&payload[1])?) })
    });
    if parsed.is_none() {
        tracing::warn!(log, entry = ?value, "skipping a log entry that does not parse");
    }
    parsed
}
