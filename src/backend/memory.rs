//! The in-process broker: the subset of Redis that FreeIM uses, for one process with no Redis.
//!
//! Semantics follow Redis: strings expire after their TTL, `HINCRBY` on a non-integer is an
//! error, each [`Op`] batch is applied under one lock (so FreeIM's scripts are atomic, as
//! `EVAL` is), and pub/sub delivers to every current subscriber in publish order. A full
//! subscriber queue makes the publisher wait (back-pressure) instead of dropping.
//!
//! Durable logs ([`super::log`]) are native: a queue of entries per log with an expiry
//! deadline, their metas in the hashes as on Redis. The size bound is exact here (Redis keeps
//! up to one stream node more).

use super::log::{self, LogEntry, LogHead, LogRead, META_EPOCH, META_FINGERPRINT, META_TOP};
use super::{BackendError, HashPage, Op, PubSubMessage, SUBSCRIPTION_QUEUE, Script, Source, Subscription};
use crate::durable::{self, Epoch};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
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
    /// Durable logs (`{P}Log{node}`) by key; their metas are in `hashes`.
    logs: HashMap<String, Log>,
}

/// One durable log: its entries, oldest first, offsets consecutive.
#[derive(Debug)]
struct Log {
    entries: VecDeque<LogEntry>,
    /// When it expires (`PEXPIRE` at each append); an expired log reads as missing.
    expires: Instant,
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

    /// Runs a script; its integer reply (the reference's scripts all answer 1). What it
    /// publishes goes to `publishes`, for after the lock.
    fn eval(
        &mut self,
        script: Script,
        keys: &[String],
        args: &[String],
        publishes: &mut Vec<PubSubMessage>,
    ) -> Result<i64, BackendError> {
        let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
        let mut publish = |channel: &str, payload: String| {
            publishes.push(PubSubMessage { channel: channel.to_owned(), payload: payload.into() });
        };
        if matches!(script, Script::JoinChan | Script::LeaveChan) && args.len() >= 4 {
            publish(arg(2), arg(3).to_owned());
        }
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
                if keys.len() >= 3 {
                    let chans: Vec<&String> = self.hashes.get(key(2)).map(|h| h.keys().collect()).unwrap_or_default();
                    publish(arg(3), format!("{}{}", arg(4), crate::protocol::to_json(&chans)));
                }
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

    /// The append's first step: the epoch of `log`, with `fresh` started over it (the log
    /// emptied) when its meta has no valid epoch or was written for another server list.
    fn log_epoch(&mut self, log: &str, meta: &str, fresh: Epoch, fingerprint: &str) -> Epoch {
        let current = self.hashes.get(meta).and_then(|hash| {
            let epoch = Epoch::parse(hash.get(META_EPOCH)?.as_bytes())?;
            (hash.get(META_FINGERPRINT)?.as_str() == fingerprint).then_some(epoch)
        });
        current.unwrap_or_else(|| {
            self.reset_log(log, meta, fresh, fingerprint);
            fresh
        })
    }

    /// Empties `log` and gives its meta epoch `fresh`, top 0 and `fingerprint`.
    fn reset_log(&mut self, log: &str, meta: &str, fresh: Epoch, fingerprint: &str) {
        self.logs.remove(log);
        let hash = self.hash(meta);
        hash.insert(META_EPOCH.to_owned(), fresh.as_str().to_owned());
        hash.insert(META_TOP.to_owned(), "0".to_owned());
        hash.insert(META_FINGERPRINT.to_owned(), fingerprint.to_owned());
    }

    /// The append's second step: takes the next offsets, appends `payloads` at them, keeps the
    /// last `size` entries and expires the log `ttl` after `now`. The first offset taken.
    fn log_push(
        &mut self,
        log: &str,
        meta: &str,
        payloads: &[Bytes],
        size: u64,
        ttl: Duration,
        now: Instant,
    ) -> Result<u64, BackendError> {
        let n = i64::try_from(payloads.len()).unwrap_or(i64::MAX);
        let last = self.hincrby(meta, META_TOP, n)?;
        let first = u64::try_from(last - n + 1).map_err(|_| BackendError::MalformedLogMeta { key: meta.to_owned() })?;
        self.drop_expired(log, now);
        let log = self.logs.entry(log.to_owned()).or_insert_with(|| Log { entries: VecDeque::new(), expires: now });
        log.entries.extend((first..).zip(payloads).map(|(offset, p)| LogEntry { offset, payload: p.clone() }));
        let keep = usize::try_from(size).unwrap_or(usize::MAX);
        let excess = log.entries.len().saturating_sub(keep);
        log.entries.drain(..excess);
        log.expires = now + ttl;
        Ok(first)
    }

    /// The head in `meta`; see [`log::meta_head`].
    fn log_head(&self, meta: &str) -> Result<Option<LogHead>, BackendError> {
        let hash = self.hashes.get(meta);
        let field = |name: &str| hash.and_then(|h| h.get(name)).map(String::as_bytes);
        log::meta_head(meta, field(META_EPOCH), field(META_TOP))
    }

    /// `log` unless it has expired.
    fn live_log(&mut self, log: &str, now: Instant) -> Option<&mut Log> {
        self.drop_expired(log, now);
        self.logs.get_mut(log)
    }

    /// Removes `log` if it has expired, as Redis does when it is next touched.
    fn drop_expired(&mut self, log: &str, now: Instant) {
        if self.logs.get(log).is_some_and(|l| l.expires <= now) {
            self.logs.remove(log);
        }
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
                    Op::HSet { key, field, value } => {
                        state.hash(&key).insert(field, value);
                    }
                    Op::HDel { key, fields } => {
                        for field in &fields {
                            state.hdel(&key, field);
                        }
                    }
                    Op::Eval { script, keys, args } => {
                        state.eval(script, &keys, &args, &mut publishes)?;
                    }
                    Op::LogAppend { log, meta, channel, payloads, size, ttl_ms, fresh_epoch, fingerprint } => {
                        let epoch = state.log_epoch(&log, &meta, fresh_epoch, &fingerprint);
                        let ttl = Duration::from_millis(ttl_ms);
                        let first = state.log_push(&log, &meta, &payloads, size, ttl, Instant::now())?;
                        publishes.extend((first..).zip(&payloads).map(|(offset, payload)| PubSubMessage {
                            channel: channel.clone(),
                            payload: durable::envelope(epoch, offset, payload).into(),
                        }));
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
        let mut publishes = Vec::new();
        let reply = self.state().eval(script, &keys, &args, &mut publishes)?;
        for message in publishes {
            self.publish(message).await;
        }
        Ok(reply)
    }

    pub(super) async fn eval_counts(
        &self,
        script: Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<i64>, BackendError> {
        let mut publishes = Vec::new();
        let counts = {
            let mut state = self.state();
            let per_pair = args.chunks(2).map(|pair| state.eval(script, &keys, pair, &mut publishes));
            per_pair.collect::<Result<Vec<i64>, BackendError>>()?
        };
        for message in publishes {
            self.publish(message).await;
        }
        Ok(counts)
    }

    pub(super) async fn set_ex(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut state = self.state();
        state.sweep_expired(now);
        state.set(key, value, now + Duration::from_secs(ttl_secs));
        Ok(())
    }

    pub(super) async fn set_ex_get(
        &self,
        key: &str,
        value: &str,
        ttl_secs: u64,
    ) -> Result<Option<String>, BackendError> {
        let now = Instant::now();
        let mut state = self.state();
        state.sweep_expired(now);
        let old = state.strings.get(key).map(|(old, _)| old.clone());
        state.set(key, value, now + Duration::from_secs(ttl_secs));
        Ok(old)
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

    pub(super) async fn mget(&self, keys: &[String]) -> Result<Vec<Option<String>>, BackendError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key, false).await?);
        }
        Ok(values)
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

    /// Fields are visited in the order of [`scan_position`], a page ends after the last
    /// field of its position (positions are shared only by hash collisions), and the cursor
    /// is the next position: a field present throughout a scan is returned exactly once,
    /// however the hash changes meanwhile, as `HSCAN` promises.
    pub(super) async fn hscan(&self, key: &str, cursor: u64, count: usize) -> Result<HashPage, BackendError> {
        let state = self.state();
        let Some(hash) = state.hashes.get(key) else { return Ok(HashPage { cursor: 0, entries: Vec::new() }) };
        let mut ahead: Vec<(u64, (&String, &String))> =
            hash.iter().map(|e| (scan_position(e.0), e)).filter(|(p, _)| *p >= cursor).collect();
        ahead.sort_unstable();
        let mut end = count.max(1).min(ahead.len());
        while end < ahead.len() && ahead[end].0 == ahead[end - 1].0 {
            end += 1;
        }
        let next = match ahead.get(end) {
            Some(&(position, _)) => position,
            None => 0,
        };
        let entries = ahead[..end].iter().map(|(_, (f, v))| ((*f).clone(), (*v).clone())).collect();
        Ok(HashPage { cursor: next, entries })
    }

    pub(super) async fn hlen(&self, key: &str) -> Result<u64, BackendError> {
        Ok(self.state().hashes.get(key).map_or(0, |h| h.len() as u64))
    }

    pub(super) async fn hgetall(&self, key: &str) -> Result<Vec<(String, String)>, BackendError> {
        let state = self.state();
        let entries = state.hashes.get(key).map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        Ok(entries.unwrap_or_default())
    }

    pub(super) async fn log_open(
        &self,
        log: &str,
        meta: &str,
        fresh: Epoch,
        fingerprint: &str,
    ) -> Result<LogHead, BackendError> {
        let mut state = self.state();
        if let Some(head) = state.log_head(meta)? {
            return Ok(head);
        }
        state.reset_log(log, meta, fresh, fingerprint);
        Ok(LogHead { epoch: fresh, top: 0 })
    }

    pub(super) async fn log_read(
        &self,
        log: &str,
        meta: &str,
        from: u64,
        to: u64,
        count: usize,
    ) -> Result<LogRead, BackendError> {
        let mut state = self.state();
        let head = log::or_lost(state.log_head(meta));
        let entries = state.live_log(log, Instant::now()).map(|log| {
            let wanted = log.entries.iter().skip_while(|e| e.offset < from).take_while(|e| e.offset <= to);
            wanted.take(count).cloned().collect()
        });
        Ok(LogRead {
            epoch: head.map(|h| h.epoch),
            top: head.map_or(0, |h| h.top),
            entries: entries.unwrap_or_default(),
        })
    }

    pub(super) async fn log_trim(&self, log: &str, min_offset: u64) -> Result<(), BackendError> {
        if let Some(log) = self.state().live_log(log, Instant::now()) {
            let below = log.entries.iter().take_while(|e| e.offset < min_offset).count();
            log.entries.drain(..below);
        }
        Ok(())
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

/// Scan positions are below this: at most 18 decimal digits, like the short cursors of Redis
/// (the HTTP API documents cursors as at most 19 digits).
const SCAN_POSITIONS: u64 = 1_000_000_000_000_000_000;

/// Where `field` comes in a scan of the in-process broker: a hash of it that is never 0
/// (cursor 0 means "start" and "done", as on Redis). Stable within the process.
fn scan_position(field: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    (BuildHasherDefault::<DefaultHasher>::default().hash_one(field) % SCAN_POSITIONS).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "L";
    const META: &str = "M";
    const CHANNEL: &str = "C";

    #[tokio::test]
    async fn a_hash_scan_returns_every_field_once_even_when_fields_come_and_go() {
        let memory = MemoryBackend::new();
        let fields: Vec<String> = (0..500).map(|i| i.to_string()).collect();
        memory.state().hash("H").extend(fields.iter().map(|f| (f.clone(), "1".to_owned())));
        let (mut seen, mut cursor, mut pages) = (Vec::new(), 0, 0);
        loop {
            let page = memory.hscan("H", cursor, 7).await.unwrap();
            // Churn between pages: a new field and a removed one that were not there throughout.
            memory.state().hash("H").insert(format!("new{pages}"), "1".into());
            memory.state().hdel("H", &format!("new{}", pages.max(1) - 1));
            seen.extend(page.entries.into_iter().map(|(f, _)| f).filter(|f| !f.starts_with("new")));
            pages += 1;
            if page.cursor == 0 {
                break;
            }
            cursor = page.cursor;
        }
        seen.sort_by_key(|f| f.parse::<u32>().unwrap());
        assert_eq!(seen, fields);
        assert!(pages >= 500 / 7, "{pages} pages");
        assert_eq!(memory.hscan("missing", 0, 10).await.unwrap(), HashPage { cursor: 0, entries: vec![] });
        assert_eq!(memory.hlen("H").await.unwrap(), 501);
    }

    fn append(payloads: &[&str], size: u64, ttl_ms: u64, fresh: Epoch, fingerprint: &str) -> Op {
        Op::LogAppend {
            log: LOG.into(),
            meta: META.into(),
            channel: CHANNEL.into(),
            payloads: payloads.iter().map(|p| Bytes::from(p.to_string())).collect(),
            size,
            ttl_ms,
            fresh_epoch: fresh,
            fingerprint: fingerprint.into(),
        }
    }

    async fn read(
        memory: &MemoryBackend,
        from: u64,
        to: u64,
        count: usize,
    ) -> (Option<Epoch>, u64, Vec<(u64, String)>) {
        let read = memory.log_read(LOG, META, from, to, count).await.unwrap();
        let entries = read.entries.iter().map(|e| (e.offset, String::from_utf8(e.payload.to_vec()).unwrap()));
        (read.epoch, read.top, entries.collect())
    }

    fn entries(items: &[(u64, &str)]) -> Vec<(u64, String)> {
        items.iter().map(|(o, p)| (*o, p.to_string())).collect()
    }

    async fn meta(memory: &MemoryBackend) -> Vec<(String, String)> {
        let mut fields = memory.hgetall(META).await.unwrap();
        fields.sort();
        fields
    }

    #[tokio::test]
    async fn appends_take_consecutive_offsets_and_publish_envelopes() {
        let memory = MemoryBackend::new();
        let mut sub = memory.subscribe(vec![CHANNEL.into()]);
        let e = Epoch::random();
        memory
            .execute(vec![append(&["a"], 10, 60_000, e, "f"), append(&["b", "c"], 10, 60_000, Epoch::random(), "f")])
            .await
            .unwrap();
        let pairs =
            |items: &[(&str, &str)]| items.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(meta(&memory).await, pairs(&[("e", e.as_str()), ("l", "f"), ("s", "3")]));
        assert_eq!(read(&memory, 0, u64::MAX, 100).await, (Some(e), 3, entries(&[(1, "a"), (2, "b"), (3, "c")])));
        assert_eq!(read(&memory, 2, 2, 100).await.2, entries(&[(2, "b")]));
        assert_eq!(read(&memory, 2, u64::MAX, 1).await.2, entries(&[(2, "b")]));
        for (offset, payload) in [(1, "a"), (2, "b"), (3, "c")] {
            let message = sub.recv().await.unwrap();
            assert_eq!(message.payload, durable::envelope(e, offset, payload.as_bytes()));
        }
    }

    #[tokio::test]
    async fn open_creates_a_missing_meta_and_never_resets_one() {
        let memory = MemoryBackend::new();
        let e = Epoch::random();
        assert_eq!(memory.log_open(LOG, META, e, "f").await.unwrap(), LogHead { epoch: e, top: 0 });
        memory.execute(vec![append(&["a"], 10, 60_000, Epoch::random(), "f")]).await.unwrap();
        let head = memory.log_open(LOG, META, Epoch::random(), "other list").await.unwrap();
        assert_eq!(head, LogHead { epoch: e, top: 1 });
        assert_eq!(read(&memory, 1, u64::MAX, 10).await, (Some(e), 1, entries(&[(1, "a")])));
    }

    #[tokio::test]
    async fn another_server_list_or_a_malformed_meta_starts_a_new_epoch() {
        let memory = MemoryBackend::new();
        let (e1, e2, e3) = (Epoch::random(), Epoch::random(), Epoch::random());
        memory.execute(vec![append(&["a", "b"], 10, 60_000, e1, "f")]).await.unwrap();
        memory.execute(vec![append(&["c"], 10, 60_000, e2, "g")]).await.unwrap();
        assert_eq!(read(&memory, 0, u64::MAX, 10).await, (Some(e2), 1, entries(&[(1, "c")])));

        memory.state().hash(META).insert("e".into(), "NOT-AN-EPOCH".into());
        assert!(matches!(memory.log_open(LOG, META, e3, "g").await, Err(BackendError::MalformedLogMeta { .. })));
        assert_eq!(read(&memory, 0, u64::MAX, 10).await, (None, 0, entries(&[(1, "c")])));
        memory.execute(vec![append(&["d"], 10, 60_000, e3, "g")]).await.unwrap();
        assert_eq!(read(&memory, 0, u64::MAX, 10).await, (Some(e3), 1, entries(&[(1, "d")])));
    }

    #[tokio::test]
    async fn size_trim_and_ttl_bound_the_log_but_not_the_meta() {
        let memory = MemoryBackend::new();
        let e = Epoch::random();
        memory.execute(vec![append(&["1", "2", "3", "4", "5"], 3, 60_000, e, "f")]).await.unwrap();
        assert_eq!(read(&memory, 0, u64::MAX, 10).await.2, entries(&[(3, "3"), (4, "4"), (5, "5")]));
        memory.log_trim(LOG, 5).await.unwrap();
        assert_eq!(read(&memory, 0, u64::MAX, 10).await.2, entries(&[(5, "5")]));

        memory.execute(vec![append(&["6"], 3, 1, e, "f")]).await.unwrap();
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(read(&memory, 0, u64::MAX, 10).await, (Some(e), 6, Vec::new()));
        memory.execute(vec![append(&["7"], 3, 60_000, Epoch::random(), "f")]).await.unwrap();
        assert_eq!(read(&memory, 0, u64::MAX, 10).await, (Some(e), 7, entries(&[(7, "7")])));
    }
}
