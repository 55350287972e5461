//! The in-process broker: the subset of Redis that FreeIM uses, for one process with no Redis.
//!
//! Semantics follow Redis: strings expire after their TTL, `HINCRBY` on a non-integer is an
//! error, each [`Op`] batch is applied under one lock (so FreeIM's scripts are atomic, as
//! `EVAL` is), and pub/sub delivers to every current subscriber in publish order. A full
//! subscriber queue makes the publisher wait (back-pressure) instead of dropping.

use super::{BackendError, Op, PubSubMessage, SUBSCRIPTION_QUEUE, Script, Source, Subscription};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The in-process broker; clones share one state.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    subscribers: Arc<Mutex<HashMap<String, Vec<mpsc::Sender<PubSubMessage>>>>>,
}

#[derive(Debug, Default)]
struct State {
    strings: HashMap<String, (String, Instant)>,
    /// Size of `strings` after the last sweep of expired entries; a sweep runs when the map
    /// has doubled since, so unused tokens cannot accumulate.
    swept_len: usize,
    hashes: HashMap<String, HashMap<String, String>>,
}

impl State {
    fn hash(&mut self, key: &str) -> &mut HashMap<String, String> {
        self.hashes.entry(key.to_owned()).or_default()
    }

    /// `HDEL`: true when the field existed. Empty hashes vanish, as in Redis.
    fn hdel(&mut self, key: &str, field: &str) -> bool {
        let Some(hash) = self.hashes.get_mut(key) else { return false };
        let removed = hash.remove(field).is_some();
        if hash.is_empty() {
            self.hashes.remove(key);
        }
        removed
    }

    /// `HINCRBY`: the new value.
    fn hincrby(&mut self, key: &str, field: &str, by: i64) -> Result<i64, BackendError> {
        let hash = self.hash(key);
        let current = match hash.get(field) {
            None => 0,
            Some(v) => v
                .parse::<i64>()
                .map_err(|_| BackendError::NotAnInteger { key: key.to_owned(), field: field.to_owned() })?,
        };
        let value = current.saturating_add(by);
        hash.insert(field.to_owned(), value.to_string());
        Ok(value)
    }

    /// Runs a script; its integer reply (the reference's scripts all answer 1).
    fn eval(&mut self, script: Script, keys: &[String], args: &[String]) -> Result<i64, BackendError> {
        let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
        let key = |i: usize| keys.get(i).map(String::as_str).unwrap_or_default();
        match script {
            Script::JoinChan => {
                let members = self.hash(key(0));
                if !members.contains_key(arg(0)) {
                    members.insert(arg(0).to_owned(), "0".to_owned());
                    self.hash(key(1)).insert(arg(1).to_owned(), "0".to_owned());
                    self.hincrby(key(2), arg(1), 1)?;
                }
            }
            Script::LeaveChan => {
                if self.hdel(key(0), arg(0)) {
                    self.hdel(key(1), arg(1));
                    if self.hincrby(key(2), arg(1), -1)? <= 0 {
                        self.hdel(key(2), arg(1));
                    }
                }
            }
            Script::SocketOpen => {
                let sockets = self.hash(key(1));
                if sockets.contains_key(arg(1)) {
                    return Ok(-1);
                }
                sockets.insert(arg(1).to_owned(), arg(2).to_owned());
                return self.hincrby(key(0), arg(0), 1);
            }
            Script::SocketClose => {
                if !self.hdel(key(1), arg(1)) {
                    return Ok(-1);
                }
                let count = self.hincrby(key(0), arg(0), -1)?;
                if count <= 0 {
                    self.hdel(key(0), arg(0));
                }
                return Ok(count);
            }
        }
        Ok(1)
    }

    /// `SET`: `value` under `key` until `deadline`.
    fn set(&mut self, key: &str, value: &str, deadline: Instant) {
        self.strings.insert(key.to_owned(), (value.to_owned(), deadline));
    }

    fn sweep_expired(&mut self, now: Instant) {
        if self.strings.len() >= 2 * self.swept_len.max(512) {
            self.strings.retain(|_, (_, deadline)| *deadline > now);
            self.swept_len = self.strings.len();
        }
    }
}

impl MemoryBackend {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(super) async fn execute(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        let mut publishes = Vec::new();
        {
            let mut state = self.state();
            for op in ops {
                match op {
                    Op::Publish { channel, payload } => publishes.push(PubSubMessage { channel, payload }),
                    Op::HIncrBy { key, field, by } => {
                        state.hincrby(&key, &field, by)?;
                    }
                    Op::HDel { key, fields } => {
                        for field in &fields {
                            state.hdel(&key, field);
                        }
                    }
                    Op::Eval { script, keys, args } => {
                        state.eval(script, &keys, &args)?;
                    }
                }
            }
        }
        for message in publishes {
            self.publish(message).await;
        }
        Ok(())
    }

    async fn publish(&self, message: PubSubMessage) {
        let targets = {
            let mut subs = lock(&self.subscribers);
            let Some(list) = subs.get_mut(&message.channel) else { return };
            list.retain(|tx| !tx.is_closed());
            list.clone()
        };
        for tx in targets {
            // An error only means that subscriber has just gone away.
            let _ = tx.send(message.clone()).await;
        }
    }

    pub(super) async fn eval(&self, script: Script, keys: Vec<String>, args: Vec<String>) -> Result<i64, BackendError> {
        self.state().eval(script, &keys, &args)
    }

    pub(super) async fn set_ex(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut state = self.state();
        state.sweep_expired(now);
        state.set(key, value, now + Duration::from_secs(ttl_secs));
        Ok(())
    }

    pub(super) async fn set_nx_ex(&self, key: &str, value: &str, ttl_secs: u64) -> Result<bool, BackendError> {
        let now = Instant::now();
        let mut state = self.state();
        if state.strings.get(key).is_some_and(|(_, deadline)| *deadline > now) {
            return Ok(false);
        }
        state.set(key, value, now + Duration::from_secs(ttl_secs));
        Ok(true)
    }

    pub(super) async fn get(&self, key: &str, delete: bool) -> Result<Option<String>, BackendError> {
        let mut state = self.state();
        let live = match state.strings.get(key) {
            Some((_, deadline)) => *deadline > Instant::now(),
            None => return Ok(None),
        };
        if !live {
            state.strings.remove(key);
            return Ok(None);
        }
        Ok(if delete {
            state.strings.remove(key).map(|(v, _)| v)
        } else {
            state.strings.get(key).map(|(v, _)| v.clone())
        })
    }

    pub(super) async fn hkeys(&self, keys: &[String]) -> Result<Vec<Vec<String>>, BackendError> {
        let state = self.state();
        let fields = |key: &String| state.hashes.get(key).map(|h| h.keys().cloned().collect()).unwrap_or_default();
        Ok(keys.iter().map(fields).collect())
    }

    pub(super) async fn hget(&self, key: &str, field: &str) -> Result<Option<String>, BackendError> {
        Ok(self.state().hashes.get(key).and_then(|h| h.get(field).cloned()))
    }

    pub(super) async fn hmget(&self, key: &str, fields: &[String]) -> Result<Vec<Option<String>>, BackendError> {
        let state = self.state();
        let hash = state.hashes.get(key);
        Ok(fields.iter().map(|f| hash.and_then(|h| h.get(f).cloned())).collect())
    }

    pub(super) async fn hgetall(&self, key: &str) -> Result<Vec<(String, String)>, BackendError> {
        let state = self.state();
        let entries = state.hashes.get(key).map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        Ok(entries.unwrap_or_default())
    }

    pub(super) fn subscribe(&self, channels: Vec<String>) -> Subscription {
        let (tx, messages) = mpsc::channel(SUBSCRIPTION_QUEUE);
        let mut subs = lock(&self.subscribers);
        for channel in channels {
            subs.entry(channel).or_default().push(tx.clone());
        }
        // The in-process broker cannot be lost: live from the start, and for good (a watch
        // receiver keeps its last value after the sender is gone).
        let (_, live) = watch::channel(true);
        let (_, epoch) = watch::channel(1);
        Subscription { source: Source::Memory(messages), live, epoch }
    }
}

/// Locks `mutex`, poisoned or not. A panic while holding a lock cannot leave a half-applied op
/// (each op is applied whole, each subscriber list edited whole), so a poisoned lock is still
/// consistent: keep serving.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
