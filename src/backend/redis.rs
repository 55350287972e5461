//! The Redis backend: one multiplexed, self-reconnecting command connection shared by every
//! caller, plus one dedicated connection per subscription ([`super::pubsub`]).
//!
//! Commands are exactly those of the reference (`SET … EX`, `GET`, `HKEYS`, `HMGET`,
//! `HGETALL`, `PUBLISH`, `HINCRBY`, `EVAL`), with `GETDEL` for single-use tokens.
//! A command issued while Redis is down fails fast with [`BackendError::Redis`]; the
//! connection manager reconnects in the background so the next command works again.

use super::pubsub::{RedisSubscriber, Target};
use super::{BackendError, Op, Script, Source, Subscription};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue};
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
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(RedisBackend { client, conn })
    }

    pub(super) async fn execute(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        let mut pipe = redis::pipe();
        for op in ops {
            pipe.add_command(command(op)).ignore();
        }
        Ok(pipe.exec_async(&mut self.conn.clone()).await?)
    }

    pub(super) async fn eval(&self, script: Script, keys: Vec<String>, args: Vec<String>) -> Result<i64, BackendError> {
        self.query(&command(Op::Eval { script, keys, args })).await
    }

    pub(super) async fn set_ex(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), BackendError> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("EX").arg(ttl_secs)).await
    }

    pub(super) async fn set_nx_ex(&self, key: &str, value: &str, ttl_secs: u64) -> Result<bool, BackendError> {
        let cmd = redis::cmd("SET").arg(key).arg(value).arg("NX").arg("EX").arg(ttl_secs).clone();
        let reply: Option<String> = self.query(&cmd).await?;
        Ok(reply.is_some())
    }

    pub(super) async fn get(&self, key: &str, delete: bool) -> Result<Option<String>, BackendError> {
        self.query(redis::cmd(if delete { "GETDEL" } else { "GET" }).arg(key)).await
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

    pub(super) async fn hgetall(&self, key: &str) -> Result<Vec<(String, String)>, BackendError> {
        self.query(redis::cmd("HGETALL").arg(key)).await
    }

    /// Sends one command on the shared connection and converts its reply.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BackendError> {
        Ok(cmd.query_async(&mut self.conn.clone()).await?)
    }

    pub(super) fn subscribe(&self, channels: Vec<String>) -> Subscription {
        let target = Target::new(self.client.get_connection_info());
        let (subscriber, live, epoch) = RedisSubscriber::new(target, channels);
        Subscription { source: Source::Redis(Box::new(subscriber)), live, epoch }
    }
}

/// The Redis command of one [`Op`], exactly as the reference sends it.
fn command(op: Op) -> Cmd {
    match op {
        Op::Publish { channel, payload } => redis::cmd("PUBLISH").arg(channel).arg(payload.as_ref()).clone(),
        Op::HIncrBy { key, field, by } => redis::cmd("HINCRBY").arg(key).arg(field).arg(by).clone(),
        Op::HDel { key, fields } => redis::cmd("HDEL").arg(key).arg(fields).clone(),
        Op::Eval { script, keys, args } => {
            redis::cmd("EVAL").arg(script.lua()).arg(keys.len()).arg(keys).arg(args).clone()
        }
    }
}
