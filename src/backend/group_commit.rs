//! Durable appends to one node's log share script calls: a group commit per log.
//!
//! Each durable send is an append script on Redis (`backend::log`), and the script's fixed
//! part (reading the meta, counting the top, the expiry, the call itself) costs Redis more
//! than the entry it writes: about 10 µs a message when every send is its own call. So while
//! one append call to a log is in flight, further appends to that log wait in its queue;
//! when the call returns, everything queued goes in the next pipeline, merged into calls of
//! up to 256 payloads ([`super::log::merge_appends`]). Each caller returns once its own
//! entries are written, with that call's outcome.
//!
//! Only a lone append takes this path (a durable send to one node, the common case); the
//! appends of a send to several nodes go out as one pipeline, in their order. Order within
//! a log is the queue's: appends reach Redis in the order they were queued, as they would
//! on the one connection. The flushing runs in a task of its own, so a caller that stops
//! waiting cannot stall the queue.

use super::log::merge_appends;
use super::redis::RedisBackend;
use super::{BackendError, Op};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::oneshot;

/// One queued append and where its outcome goes.
type Waiting = (Op, oneshot::Sender<Result<(), BackendError>>);

/// The queues, by log key.
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    queues: Mutex<HashMap<String, Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A task is writing this log's appends (and will take what is queued).
    flushing: bool,
}

impl GroupCommit {
    fn queues(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Appends `op` (an [`Op::LogAppend`]) through `backend`'s group commit.
pub(super) async fn append(backend: &RedisBackend, op: Op) -> Result<(), BackendError> {
    let Op::LogAppend { log, .. } = &op else { return backend.execute_now(vec![op]).await };
    let log = log.clone();
    let (done, outcome) = oneshot::channel();
    let start = {
        let mut queues = backend.group_commit().queues();
        let queue = queues.entry(log.clone()).or_default();
        queue.waiting.push((op, done));
        !std::mem::replace(&mut queue.flushing, true)
    };
    if start {
        tokio::spawn(flush(backend.clone(), log));
    }
    // The flushing task answers every append it takes; it is gone only at runtime shutdown.
    outcome.await.unwrap_or_else(|_| Err(BackendError::Shutdown))
}

/// Writes the queued appends of `log`, batch after batch, until its queue is empty.
async fn flush(backend: RedisBackend, log: String) {
    loop {
        let batch = {
            let mut queues = backend.group_commit().queues();
            let Some(queue) = queues.get_mut(&log) else { return };
            if queue.waiting.is_empty() {
                queues.remove(&log);
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        let (ops, waiting): (Vec<Op>, Vec<_>) = batch.into_iter().unzip();
        let outcome = backend.execute_now(merge_appends(ops)).await;
        for done in waiting {
            let _ = done.send(outcome.clone());
        }
    }
}
