//! The backend a behaviour test runs on: a Redis server of its own or the in-process
//! broker, chosen by [`Kind`], with [`both!`](crate::both) running a test once on each.
//! Reads and taps go through the library's `Backend`, so the same assertions hold on both.

use super::{RedisServer, WAIT, eventually};
use freeim::backend::{Backend, MemoryBackend, RedisBackend, Subscription};
use freeim::{EventStream, ImClient, PresenceEvent};
use futures_util::StreamExt;

/// Which backend a behaviour test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `redis-server` process of the test's own.
    Redis,
    /// The in-process broker.
    Memory,
}

/// A started backend: the Redis process, or the shared in-process broker.
pub enum TestBackend {
    /// A Redis server, killed when this is dropped.
    Redis(RedisServer),
    /// An in-process broker; every handle on it shares its state.
    Memory(MemoryBackend),
}

impl TestBackend {
    /// Starts a backend of `kind`.
    pub fn start(kind: Kind) -> Self {
        match kind {
            Kind::Redis => TestBackend::Redis(RedisServer::start()),
            Kind::Memory => TestBackend::Memory(MemoryBackend::new()),
        }
    }

    /// A fresh handle on it.
    pub fn handle(&self) -> Backend {
        match self {
            TestBackend::Redis(redis) => Backend::Redis(RedisBackend::open(&redis.url()).unwrap()),
            TestBackend::Memory(memory) => Backend::Memory(memory.clone()),
        }
    }

    /// The Redis server, when the backend is one.
    pub fn redis(&self) -> Option<&RedisServer> {
        match self {
            TestBackend::Redis(redis) => Some(redis),
            TestBackend::Memory(_) => None,
        }
    }

    /// The Redis server, to kill or restart it; panics on the in-process broker.
    pub fn redis_mut(&mut self) -> &mut RedisServer {
        match self {
            TestBackend::Redis(redis) => redis,
            TestBackend::Memory(_) => panic!("a Redis backend"),
        }
    }

    /// A hash as sorted (field, value) pairs, so exact-state assertions run on both kinds.
    pub async fn hash(&self, key: &str) -> Vec<(String, String)> {
        let mut pairs = self.handle().hgetall(key).await.unwrap();
        pairs.sort();
        pairs
    }
}

/// Sorted (field, value) pairs from string slices, for comparing with a hash read.
pub fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = items.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect();
    pairs.sort();
    pairs
}

/// The next message published on `subscription` within [`WAIT`]: (channel, payload text).
pub async fn next_publish(subscription: &mut Subscription) -> (String, String) {
    let message = tokio::time::timeout(WAIT, subscription.recv()).await.expect("a publish").unwrap();
    (message.channel, String::from_utf8(message.payload.to_vec()).unwrap())
}

/// `im`'s presence event bus, once its subscription is live.
pub async fn live_event_bus(im: &ImClient) -> EventStream {
    let events = im.event_bus();
    eventually(None, || async { events.is_live() }).await;
    events
}

/// The next presence event within [`WAIT`].
pub async fn next_event(events: &mut EventStream) -> PresenceEvent {
    tokio::time::timeout(WAIT, events.next()).await.expect("a presence event").unwrap()
}

/// Runs a behaviour test once per backend: `both!(name, |kind| async move { … })`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                ($body)(Kind::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                ($body)(Kind::Memory).await
            }
        }
    };
}
