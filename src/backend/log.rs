//! The durable log of a gateway node (issue 13): what both backends store and how it is read.
//!
//! Every message for a client passes through its node's channel, so one log per node is
//! enough: a stream `{P}Log{node}` of node-channel payloads, entry id `<offset>-0`, one field
//! `d`, and a meta hash `{P}LogMeta{node}` holding the epoch (`e`), the top offset (`s`) and a
//! fingerprint of the server list (`l`). An append takes the next offsets, stores the payloads
//! and publishes their [`envelope`](crate::durable::envelope)s in one atomic step (one Lua
//! script on Redis, one lock in the in-process broker), so a node never sees a published
//! offset that is not in the log, nor a logged one that was not published.
//!
//! Invariants: offsets of one epoch are consecutive and never reused (the meta has no TTL;
//! only the stream expires); the stream always holds one contiguous range of them, because
//! trimming only drops its head. A writer starts a new epoch, and empties the stream, when the
//! meta is missing (Redis lost it), malformed, or was written for another server list.
//!
//! The Lua scripts here are the Redis side; [`super::memory`] implements the same effects
//! natively (it trims to the size bound exactly, where Redis `MAXLEN ~` keeps up to one stream
//! node more).

use super::{BackendError, Op};
use crate::durable::Epoch;
use bytes::Bytes;

/// Meta field: the epoch, 16 lowercase hex characters.
pub(super) const META_EPOCH: &str = "e";
/// Meta field: the top (highest assigned) offset of the epoch.
pub(super) const META_TOP: &str = "s";
/// Meta field: the fingerprint of the server list the log was written for.
pub(super) const META_FINGERPRINT: &str = "l";

/// Most payloads one append call carries after [`merge_appends`]: a script blocks Redis while
/// it runs, so a long batch of sends to one node is cut into calls of at most this many.
const MAX_MERGED_PAYLOADS: usize = 256;

/// The append. KEYS: log, meta. ARGV: node channel, size bound, TTL in ms, fresh epoch,
/// server-list fingerprint, then one payload per message, in order. Starts a new epoch (and
/// empties the log) when the meta has no valid epoch or another fingerprint; offsets are
/// printed with `%d` (exact up to 2^53). The prefix is [`crate::durable::DURABLE_PREFIX`].
/// Returns the last offset assigned.
pub(super) const APPEND_LUA: &str = r#"local meta = redis.call('HMGET', KEYS[2], 'e', 'l')
local epoch = meta[1]
if not epoch or meta[2] ~= ARGV[5] or #epoch ~= 16 or string.find(epoch, '[^0-9a-f]') then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 's', 0, 'l', ARGV[5])
end
local n = #ARGV - 5
local last = redis.call('HINCRBY', KEYS[2], 's', n)
for i = 1, n do
  local offset = string.format('%d', last - n + i)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'd', ARGV[5 + i])
  redis.call('PUBLISH', ARGV[1], '__FreeIM__(Durable)' .. epoch .. ':' .. offset .. ':' .. ARGV[5 + i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return last"#;

/// The open. KEYS: log, meta. ARGV: fresh epoch, fingerprint. Creates the meta (and empties
/// the log) only when it has no epoch; returns `{epoch, top}`.
pub(super) const OPEN_LUA: &str = r#"local m = redis.call('HMGET', KEYS[2], 'e', 's')
if not m[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', ARGV[1], 's', 0, 'l', ARGV[2])
  return {ARGV[1], '0'}
end
return {m[1], m[2]}"#;

/// The read. KEYS: log, meta. ARGV: first id, last id (`+`: the end), count. Returns
/// `{epoch or nil, top or nil, entries}` from one snapshot.
pub(super) const READ_LUA: &str = r#"local m = redis.call('HMGET', KEYS[2], 'e', 's')
return {m[1], m[2], redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])}"#;

/// Where a node's log stands: what [`super::Backend::log_open`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHead {
    /// The log's current epoch.
    pub epoch: Epoch,
    /// Its top offset: the highest assigned in the epoch, 0 before the first append.
    pub top: u64,
}

/// One snapshot of a log: what [`super::Backend::log_read`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    /// The epoch; `None` when the meta is missing or malformed (the log is lost: whatever a
    /// client holds is not recoverable).
    pub epoch: Option<Epoch>,
    /// The top offset (0 with no meta).
    pub top: u64,
    /// The entries asked for that are still in the log, oldest first.
    pub entries: Vec<LogEntry>,
}

/// One logged message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its offset in the epoch.
    pub offset: u64,
    /// The FreeIM node-channel payload, byte for byte (without the durable envelope).
    pub payload: Bytes,
}

/// The head named by a meta's `e` and `s` fields as read: `None` when it has no epoch (no
/// meta), an error when a field does not parse.
pub(super) fn meta_head(key: &str, epoch: Option<&[u8]>, top: Option<&[u8]>) -> Result<Option<LogHead>, BackendError> {
    let Some(epoch) = epoch else { return Ok(None) };
    let malformed = || BackendError::MalformedLogMeta { key: key.to_owned() };
    let epoch = Epoch::parse(epoch).ok_or_else(malformed)?;
    let top = top.and_then(|t| std::str::from_utf8(t).ok()?.parse().ok()).ok_or_else(malformed)?;
    Ok(Some(LogHead { epoch, top }))
}

/// A [`meta_head`] as a read sees it: a malformed meta counts as a lost log (logged).
pub(super) fn or_lost(head: Result<Option<LogHead>, BackendError>) -> Option<LogHead> {
    head.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "log meta unreadable: treating the log as lost");
        None
    })
}

/// The offset of a stream entry id `<offset>-0`; `None` for any other id.
pub(super) fn entry_offset(id: &[u8]) -> Option<u64> {
    let digits = id.strip_suffix(b"-0")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `ops` with each run of consecutive appends to the same log (same parameters) merged into
/// one append of all their payloads, in order, up to [`MAX_MERGED_PAYLOADS`] each: the effect
/// is the same, with one script call instead of one per message.
pub(super) fn merge_appends(ops: Vec<Op>) -> Vec<Op> {
    let mut merged: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        match (merged.last_mut(), op) {
            (
                Some(Op::LogAppend { log, meta, channel, payloads, size, ttl_ms, fingerprint, .. }),
                Op::LogAppend {
                    log: next_log,
                    meta: next_meta,
                    channel: next_channel,
                    payloads: more,
                    size: next_size,
                    ttl_ms: next_ttl,
                    fingerprint: next_fingerprint,
                    ..
                },
            ) if (&*log, &*meta, &*channel, *size, *ttl_ms, &*fingerprint)
                == (&next_log, &next_meta, &next_channel, next_size, next_ttl, &next_fingerprint)
                && payloads.len() + more.len() <= MAX_MERGED_PAYLOADS =>
            {
                payloads.extend(more)
            }
            (_, op) => merged.push(op),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(log: &str, payload: &str) -> Op {
        Op::LogAppend {
            log: log.into(),
            meta: format!("{log}Meta"),
            channel: format!("{log}Channel"),
            payloads: vec![Bytes::from(payload.to_owned())],
            size: 10,
            ttl_ms: 1000,
            fresh_epoch: Epoch::random(),
            fingerprint: "f".into(),
        }
    }

    fn payloads(op: &Op) -> Vec<&[u8]> {
        match op {
            Op::LogAppend { payloads, .. } => payloads.iter().map(|p| p.as_ref()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn consecutive_appends_to_one_log_merge_in_order() {
        let publish = Op::Publish { channel: "c".into(), payload: Bytes::from_static(b"p") };
        let ops = vec![append("a", "1"), append("a", "2"), append("b", "3"), publish, append("b", "4")];
        let merged = merge_appends(ops);
        assert_eq!(merged.len(), 4);
        assert_eq!(payloads(&merged[0]), [b"1", b"2"]);
        assert_eq!(payloads(&merged[1]), [b"3"]);
        assert!(matches!(merged[2], Op::Publish { .. }));
        assert_eq!(payloads(&merged[3]), [b"4"]);
    }

    #[test]
    fn merges_are_bounded() {
        let merged = merge_appends((0..MAX_MERGED_PAYLOADS + 1).map(|i| append("a", &i.to_string())).collect());
        assert_eq!(merged.iter().map(|op| payloads(op).len()).collect::<Vec<_>>(), [MAX_MERGED_PAYLOADS, 1]);
    }

    #[test]
    fn meta_fields_and_entry_ids_parse_or_are_refused() {
        let e = Epoch::random();
        let head = |epoch: Option<&[u8]>, top: Option<&[u8]>| meta_head("m", epoch, top).map_err(|e| e.to_string());
        assert_eq!(head(Some(e.as_str().as_bytes()), Some(b"7")), Ok(Some(LogHead { epoch: e, top: 7 })));
        assert_eq!(head(None, Some(b"7")), Ok(None));
        let bad = Err("log meta m holds no valid epoch and top".to_owned());
        assert_eq!(head(Some(b"XYZ"), Some(b"7")), bad);
        assert_eq!(head(Some(e.as_str().as_bytes()), Some(b"x")), bad);
        assert_eq!(head(Some(e.as_str().as_bytes()), None), bad);
        assert_eq!(or_lost(meta_head("m", Some(b"XYZ"), Some(b"7"))), None);
        let cases: &[(&[u8], Option<u64>)] =
            &[(b"1-0", Some(1)), (b"123-0", Some(123)), (b"1-1", None), (b"x-0", None), (b"5", None), (b"", None)];
        for (id, want) in cases {
            assert_eq!(entry_offset(id), *want, "{}", String::from_utf8_lossy(id));
        }
    }
}
