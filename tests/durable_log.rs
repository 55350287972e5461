//! The durable log (issue 13) from the business side: exact log and meta state and exact
//! node-channel bytes after durable sends, offsets, epochs and bounds, on Redis and on the
//! in-process broker; and the reads and trims the nodes use.

mod common;
use bytes::Bytes;
use common::*;
use freeim::backend::{Backend, BackendError, LogEntry, LogHead, Op, Subscription};
use freeim::durable::Epoch;
use freeim::{ImClient, ImClientOptions};

const A: &str = "127.0.0.1:6001";
const B: &str = "127.0.0.1:6002";
const C: &str = "127.0.0.1:6003";
const LOG_A: &str = "im_v2_wsLog127.0.0.1:6001";
const META_A: &str = "im_v2_wsLogMeta127.0.0.1:6001";
const META_B: &str = "im_v2_wsLogMeta127.0.0.1:6002";
const CHANNEL_A: &str = "im_v2_wsServer127.0.0.1:6001";
const CHANNEL_B: &str = "im_v2_wsServer127.0.0.1:6002";

const DIRECT_A: &str = r#"{"Item1":1,"Item2":[2],"Item3":"\"hi\"","Item4":true}"#;
const DIRECT_B: &str = r#"{"Item1":1,"Item2":[3],"Item3":"\"hi\"","Item4":true}"#;
const CHAN: &str = r#"__FreeIM__(ChanMessage){"Item1":7,"Item2":"room","Item3":"\"x\""}"#;
const BROADCAST: &str = r#"__FreeIM__(ChanMessage){"Item1":0,"Item2":null,"Item3":"\"all\""}"#;

/// A backend, a client for nodes A and B, and a tap on both node channels.
struct Env {
    store: TestBackend,
    backend: Backend,
    im: ImClient,
    tap: Subscription,
}

impl Env {
    async fn new(kind: Kind) -> Env {
        Self::with(kind, ImClientOptions::new([A, B])).await
    }

    async fn with(kind: Kind, options: ImClientOptions) -> Env {
        let store = TestBackend::start(kind);
        let backend = store.handle();
        let im = ImClient::new(backend.clone(), options).unwrap();
        let mut tap = backend.subscribe(vec![CHANNEL_A.to_owned(), CHANNEL_B.to_owned()]);
        assert!(tap.ready().await, "subscribed");
        Env { store, backend, im, tap }
    }

    /// The epoch in a node's meta.
    async fn epoch(&self, meta: &str) -> String {
        let fields = self.store.hash(meta).await;
        fields.into_iter().find(|(f, _)| f == "e").map(|(_, e)| e).expect("an epoch")
    }

    /// Every entry of node A's log, as (offset, payload text).
    async fn log_a(&self) -> Vec<(u64, String)> {
        let read = self.backend.log_read(LOG_A, META_A, 0, u64::MAX, 1000).await.unwrap();
        read.entries.iter().map(text).collect()
    }

    /// The next publishes on the tap, as (channel, payload text).
    async fn publishes(&mut self, n: usize) -> Vec<(String, String)> {
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(next_publish(&mut self.tap).await);
        }
        got
    }
}

fn text(entry: &LogEntry) -> (u64, String) {
    (entry.offset, String::from_utf8(entry.payload.to_vec()).unwrap())
}

/// The node-channel bytes of a logged payload, written out here rather than with the library.
fn logged(channel: &str, epoch: &str, offset: u64, payload: &str) -> (String, String) {
    (channel.to_owned(), format!("__FreeIM__(Durable){epoch}:{offset}:{payload}"))
}

/// FNV-1a 64 of the names joined by `,`, in hex: the fingerprint the metas must record.
fn fingerprint(servers: &[&str]) -> String {
    let hash = servers
        .join(",")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{hash:016x}")
}

fn entries(items: &[(u64, &str)]) -> Vec<(u64, String)> {
    items.iter().map(|(o, p)| (*o, p.to_string())).collect()
}

both!(durable_sends_log_and_publish_exact_bytes, |kind| async move {
    let mut env = Env::new(kind).await;
    let durable = env.im.durable();
    durable.send_message(1, &[2, 3, 2], "hi", true).await.unwrap();
    durable.send_chan_message(7, "room", "x").await.unwrap();
    durable.send_broadcast_message("all").await.unwrap();

    let (ea, eb) = (env.epoch(META_A).await, env.epoch(META_B).await);
    assert!(ea.len() == 16 && ea.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "{ea}");
    assert_ne!(ea, eb, "each node's log has its own epoch");
    let want = [
        logged(CHANNEL_A, &ea, 1, DIRECT_A),
        logged(CHANNEL_B, &eb, 1, DIRECT_B),
        logged(CHANNEL_A, &ea, 2, CHAN),
        logged(CHANNEL_B, &eb, 2, CHAN),
        logged(CHANNEL_A, &ea, 3, BROADCAST),
        logged(CHANNEL_B, &eb, 3, BROADCAST),
    ];
    assert_eq!(env.publishes(want.len()).await, want);

    let list = fingerprint(&[A, B]);
    assert_eq!(env.store.hash(META_A).await, pairs(&[("e", &ea), ("l", &list), ("s", "3")]));
    assert_eq!(env.log_a().await, entries(&[(1, DIRECT_A), (2, CHAN), (3, BROADCAST)]));
    if let Some(redis) = env.store.redis() {
        let range: Vec<(String, Vec<(String, String)>)> = redis.cmd(&["XRANGE", LOG_A, "-", "+"]);
        let want: Vec<(String, Vec<(String, String)>)> = [("1-0", DIRECT_A), ("2-0", CHAN), ("3-0", BROADCAST)]
            .iter()
            .map(|(id, d)| (id.to_string(), vec![("d".to_owned(), d.to_string())]))
            .collect();
        assert_eq!(range, want);
        let ttl: i64 = redis.cmd(&["PTTL", LOG_A]);
        assert!((1..=120_000).contains(&ttl), "PTTL {ttl}");
    }
});

both!(non_durable_sends_stay_freeim_and_offsets_go_on, |kind| async move {
    let mut env = Env::new(kind).await;
    env.im.durable().send_broadcast_message("all").await.unwrap();
    env.im.send_message(1, &[2], "hi", true).await.unwrap();
    env.im.send_chan_message(7, "room", "x").await.unwrap();
    env.im.force_offline(4).await.unwrap();
    env.im.durable().send_chan_message(7, "room", "x").await.unwrap();
    env.im.durable().send_message(1, &[2], "hi", true).await.unwrap();

    let (ea, eb) = (env.epoch(META_A).await, env.epoch(META_B).await);
    let want = [
        logged(CHANNEL_A, &ea, 1, BROADCAST),
        logged(CHANNEL_B, &eb, 1, BROADCAST),
        (CHANNEL_A.to_owned(), DIRECT_A.to_owned()),
        (CHANNEL_A.to_owned(), CHAN.to_owned()),
        (CHANNEL_B.to_owned(), CHAN.to_owned()),
        (CHANNEL_A.to_owned(), "__FreeIM__(ForceOffline)4".to_owned()),
        logged(CHANNEL_A, &ea, 2, CHAN),
        logged(CHANNEL_B, &eb, 2, CHAN),
        logged(CHANNEL_A, &ea, 3, DIRECT_A),
    ];
    assert_eq!(env.publishes(want.len()).await, want);
    assert_eq!(env.log_a().await, entries(&[(1, BROADCAST), (2, CHAN), (3, DIRECT_A)]));
    assert_eq!(env.store.hash(META_B).await, pairs(&[("e", &eb), ("l", &fingerprint(&[A, B])), ("s", "2")]));
});

both!(a_lost_meta_starts_a_new_epoch_at_offset_1, |kind| async move {
    let mut env = Env::new(kind).await;
    env.im.durable().send_message(1, &[2], "hi", true).await.unwrap();
    env.im.durable().send_message(1, &[2], "hi", true).await.unwrap();
    let old = env.epoch(META_A).await;
    env.publishes(2).await;
    match env.store.redis() {
        Some(redis) => {
            let _: () = redis.cmd(&["FLUSHALL"]);
        }
        None => {
            let fields = ["e", "s", "l"].map(String::from).to_vec();
            env.backend.execute(vec![Op::HDel { key: META_A.into(), fields }]).await.unwrap();
        }
    }
    env.im.durable().send_message(1, &[2], "hi", true).await.unwrap();
    let new = env.epoch(META_A).await;
    assert_ne!(new, old);
    assert_eq!(env.publishes(1).await, [logged(CHANNEL_A, &new, 1, DIRECT_A)]);
    assert_eq!(env.log_a().await, entries(&[(1, DIRECT_A)]));
});

both!(a_writer_with_another_server_list_resets_the_log, |kind| async move {
    let mut env = Env::new(kind).await;
    env.im.durable().send_broadcast_message("all").await.unwrap();
    env.im.durable().send_broadcast_message("all").await.unwrap();
    let old = env.epoch(META_A).await;
    env.publishes(4).await;

    let three = ImClient::new(env.backend.clone(), ImClientOptions::new([A, B, C])).unwrap();
    three.durable().send_chan_message(7, "room", "x").await.unwrap();
    let new = env.epoch(META_A).await;
    assert_ne!(new, old);
    assert_eq!(env.publishes(2).await[0], logged(CHANNEL_A, &new, 1, CHAN));
    assert_eq!(env.store.hash(META_A).await, pairs(&[("e", &new), ("l", &fingerprint(&[A, B, C])), ("s", "1")]));
    assert_eq!(env.log_a().await, entries(&[(1, CHAN)]));

    // A node opening the log never resets it, whatever its list.
    let head = env.backend.log_open(LOG_A, META_A, Epoch::random(), &fingerprint(&[A])).await.unwrap();
    assert_eq!(head, LogHead { epoch: Epoch::parse(new.as_bytes()).unwrap(), top: 1 });
    assert_eq!(env.log_a().await, entries(&[(1, CHAN)]));
});

both!(open_read_and_trim_see_one_consistent_log, |kind| async move {
    let env = Env::new(kind).await;
    let fresh = Epoch::random();
    let list = fingerprint(&[A, B]);
    assert_eq!(env.backend.log_open(LOG_A, META_A, fresh, &list).await.unwrap(), LogHead { epoch: fresh, top: 0 });
    assert_eq!(env.store.hash(META_A).await, pairs(&[("e", fresh.as_str()), ("l", &list), ("s", "0")]));
    let empty = env.backend.log_read(LOG_A, META_A, 1, u64::MAX, 10).await.unwrap();
    assert_eq!((empty.epoch, empty.top, empty.entries.len()), (Some(fresh), 0, 0));

    for _ in 0..4 {
        env.im.durable().send_message(1, &[2], "hi", true).await.unwrap();
    }
    assert_eq!(env.epoch(META_A).await, fresh.as_str(), "the writer keeps the opened epoch");
    let read = env.backend.log_read(LOG_A, META_A, 2, 3, 10).await.unwrap();
    assert_eq!((read.epoch, read.top), (Some(fresh), 4));
    assert_eq!(read.entries.iter().map(text).collect::<Vec<_>>(), entries(&[(2, DIRECT_A), (3, DIRECT_A)]));
    let read = env.backend.log_read(LOG_A, META_A, 2, u64::MAX, 1).await.unwrap();
    assert_eq!(read.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), [2]);

    env.backend.log_trim(LOG_A, 3).await.unwrap();
    assert_eq!(env.log_a().await, entries(&[(3, DIRECT_A), (4, DIRECT_A)]));
    let missing = env.backend.log_read("im_v2_wsLognowhere", "im_v2_wsLogMetanowhere", 0, u64::MAX, 10).await.unwrap();
    assert_eq!((missing.epoch, missing.top, missing.entries.len()), (None, 0, 0));
});

both!(appends_in_one_batch_keep_their_order, |kind| async move {
    let mut env = Env::new(kind).await;
    let append = |payload: &'static str| Op::LogAppend {
        log: LOG_A.into(),
        meta: META_A.into(),
        channel: CHANNEL_A.into(),
        payloads: vec![Bytes::from_static(payload.as_bytes())],
        size: 100,
        ttl_ms: 60_000,
        fresh_epoch: Epoch::random(),
        fingerprint: fingerprint(&[A, B]),
    };
    let publish = Op::Publish { channel: CHANNEL_A.into(), payload: Bytes::from_static(b"plain") };
    env.backend.execute(vec![append("p1"), append("p2"), publish, append("p3")]).await.unwrap();
    let e = env.epoch(META_A).await;
    let want = [
        logged(CHANNEL_A, &e, 1, "p1"),
        logged(CHANNEL_A, &e, 2, "p2"),
        (CHANNEL_A.to_owned(), "plain".to_owned()),
        logged(CHANNEL_A, &e, 3, "p3"),
    ];
    assert_eq!(env.publishes(4).await, want);
    assert_eq!(env.log_a().await, entries(&[(1, "p1"), (2, "p2"), (3, "p3")]));
});

#[tokio::test]
async fn the_size_bound_trims_the_oldest_entries() {
    let options = ImClientOptions { history_size: 10, ..ImClientOptions::new([A, B]) };
    let env = Env::with(Kind::Redis, options).await;
    let redis = env.store.redis().unwrap();
    // One entry per stream node, so that `MAXLEN ~` trims exactly.
    let _: () = redis.cmd(&["CONFIG", "SET", "stream-node-max-entries", "1"]);
    for _ in 0..25 {
        env.im.durable().send_message(1, &[2], "hi", false).await.unwrap();
    }
    let len: u64 = redis.cmd(&["XLEN", LOG_A]);
    assert_eq!(len, 10);
    let offsets: Vec<u64> = env.log_a().await.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (16..=25).collect::<Vec<_>>());
    assert_eq!(redis.hash(META_A).iter().find(|(f, _)| f == "s").unwrap().1, "25");
}

#[tokio::test]
async fn scripts_flushed_from_redis_are_sent_again() {
    let mut env = Env::new(Kind::Redis).await;
    env.im.durable().send_message(1, &[2], "hi", true).await.unwrap();
    let redis = env.store.redis().unwrap();
    let _: () = redis.cmd(&["SCRIPT", "FLUSH"]);
    env.im.durable().send_message(1, &[2], "hi", true).await.unwrap();
    env.im.durable().send_message(1, &[2], "hi", true).await.unwrap();
    let stats: String = redis.cmd(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_evalsha:calls="), "appends go by SHA-1 once cached: {stats}");
    let _: () = redis.cmd(&["SCRIPT", "FLUSH"]);
    assert_eq!(env.log_a().await, entries(&[(1, DIRECT_A), (2, DIRECT_A), (3, DIRECT_A)]));
    let _: () = redis.cmd(&["SCRIPT", "FLUSH"]);
    let head = env.backend.log_open(LOG_A, META_A, Epoch::random(), "x").await.unwrap();
    assert_eq!(head.top, 3);
    let e = env.epoch(META_A).await;
    let want: Vec<_> = (1..=3).map(|offset| logged(CHANNEL_A, &e, offset, DIRECT_A)).collect();
    assert_eq!(env.publishes(3).await, want);
}

#[tokio::test]
async fn bad_data_in_redis_is_skipped_or_refused() {
    let env = Env::new(Kind::Redis).await;
    let redis = env.store.redis().unwrap();
    let e = Epoch::random();
    let _: i64 = redis.cmd(&["HSET", META_A, "e", e.as_str(), "s", "3", "l", "x"]);
    let _: String = redis.cmd(&["XADD", LOG_A, "1-0", "d", "one"]);
    let _: String = redis.cmd(&["XADD", LOG_A, "2-1", "d", "odd id"]);
    let _: String = redis.cmd(&["XADD", LOG_A, "3-0", "other", "no d"]);
    let _: String = redis.cmd(&["XADD", LOG_A, "4-0", "x", "y", "d", "four"]);
    let read = env.backend.log_read(LOG_A, META_A, 0, u64::MAX, 10).await.unwrap();
    assert_eq!((read.epoch, read.top), (Some(e), 3));
    assert_eq!(read.entries.iter().map(text).collect::<Vec<_>>(), entries(&[(1, "one"), (4, "four")]));

    let _: i64 = redis.cmd(&["HSET", META_A, "e", "NOT-AN-EPOCH"]);
    let read = env.backend.log_read(LOG_A, META_A, 0, u64::MAX, 10).await.unwrap();
    assert_eq!((read.epoch, read.top, read.entries.len()), (None, 0, 2));
    let open = env.backend.log_open(LOG_A, META_A, Epoch::random(), "x").await;
    assert!(matches!(open, Err(BackendError::MalformedLogMeta { .. })), "{open:?}");

    // A writer starts a new epoch over a malformed meta.
    env.im.durable().send_message(1, &[2], "hi", true).await.unwrap();
    assert_eq!(env.log_a().await, entries(&[(1, DIRECT_A)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_sends_to_one_node_share_script_calls() {
    let mut env = Env::new(Kind::Redis).await;
    let redis = env.store.redis().unwrap();
    let script_calls = || redis.calls("evalsha") + redis.calls("eval");
    let before = script_calls();
    let sends = (0..200).map(|n| {
        let im = env.im.clone();
        async move { im.durable().send_message(1, &[2], &n, false).await }
    });
    assert!(futures_util::future::join_all(sends).await.iter().all(Result::is_ok));
    let calls = script_calls() - before;
    assert!(calls < 100, "200 concurrent appends took {calls} script calls");
    // Each got its own offset, 1 to 200, published once each.
    let log = env.log_a().await;
    assert_eq!(log.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>());
    assert_eq!(env.publishes(200).await.len(), 200);
}
