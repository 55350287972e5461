//! The business-side library: exact payloads on the node channels and exact key state after
//! each operation, on Redis and on the in-process broker.

mod common;
use common::*;
use freeim::backend::{Backend, MemoryBackend, Subscription};
use freeim::{ImClient, ImClientOptions, PresenceEvent};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const A: &str = "127.0.0.1:6001";
const B: &str = "127.0.0.1:6002";

/// A backend and a client for nodes A and B.
struct Env {
    store: TestBackend,
    backend: Backend,
    im: ImClient,
}

impl Env {
    fn new(kind: Kind) -> Env {
        let store = TestBackend::start(kind);
        let backend = store.handle();
        let im = ImClient::new(backend.clone(), ImClientOptions::new([A, B])).unwrap();
        Env { store, backend, im }
    }

    /// Subscribes to both node channels and waits until the subscription is live.
    async fn tap_nodes(&self) -> Subscription {
        let mut sub = self.backend.subscribe(vec![format!("im_v2_wsServer{A}"), format!("im_v2_wsServer{B}")]);
        assert!(sub.ready().await, "subscribed");
        sub
    }
}

both!(connect_url_and_token_value, |kind| async move {
    let env = Env::new(kind);
    let url = env.im.prev_connect_server(43, Some("203.0.113.7")).await.unwrap();
    let token = url.strip_prefix(&format!("ws://{B}/ws?token=")).expect("client 43 belongs to node B");
    assert_eq!(token.len(), 128);
    assert!(token.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    let stored = env.backend.get(&format!("im_v2_wsToken{token}"), false).await.unwrap();
    assert_eq!(stored.as_deref(), Some(r#"{"Item1":43,"Item2":"203.0.113.7"}"#));
    if let Some(redis) = env.store.redis() {
        let ttl: i64 = redis.cmd(&["TTL", &format!("im_v2_wsToken{token}")]);
        assert!((1..=10).contains(&ttl), "TTL {ttl}");
    }
    let connect = env.im.connect_url(42, None).await.unwrap();
    assert_eq!(connect.url, format!("ws://{A}/ws?token={}", connect.token));
    assert_eq!(connect.expires_in, 10);
    let stored = env.backend.get(&format!("im_v2_wsToken{}", connect.token), false).await.unwrap();
    assert_eq!(stored.as_deref(), Some(r#"{"Item1":42,"Item2":null}"#));
});

both!(payloads_on_node_channels_are_byte_exact, |kind| async move {
    let env = Env::new(kind);
    let mut sub = env.tap_nodes().await;
    let (ca, cb) = (format!("im_v2_wsServer{A}"), format!("im_v2_wsServer{B}"));
    env.im.send_message(1, &[3, 2, 3, 4], "hello", true).await.unwrap();
    env.im.send_message(0, &[6], &serde_json::json!({"a": 1, "s": "é\u{2028}"}), false).await.unwrap();
    env.im.send_chan_message(7, "room1", "x").await.unwrap();
    env.im.send_broadcast_message("all").await.unwrap();
    env.im.force_offline(5).await.unwrap();
    let want = [
        (&cb, r#"{"Item1":1,"Item2":[3],"Item3":"\"hello\"","Item4":true}"#),
        (&ca, r#"{"Item1":1,"Item2":[2,4],"Item3":"\"hello\"","Item4":true}"#),
        (&ca, r#"{"Item1":0,"Item2":[6],"Item3":"{\"a\":1,\"s\":\"é\\u2028\"}","Item4":false}"#),
        (&ca, r#"__FreeIM__(ChanMessage){"Item1":7,"Item2":"room1","Item3":"\"x\""}"#),
        (&cb, r#"__FreeIM__(ChanMessage){"Item1":7,"Item2":"room1","Item3":"\"x\""}"#),
        (&ca, r#"__FreeIM__(ChanMessage){"Item1":0,"Item2":null,"Item3":"\"all\""}"#),
        (&cb, r#"__FreeIM__(ChanMessage){"Item1":0,"Item2":null,"Item3":"\"all\""}"#),
        (&cb, "__FreeIM__(ForceOffline)5"),
    ];
    for (channel, payload) in want {
        assert_eq!(next_publish(&mut sub).await, (channel.clone(), payload.to_owned()));
    }
});

both!(channel_membership_state_is_exact, |kind| async move {
    let env = Env::new(kind);
    let im = &env.im;
    im.join_chan(5, &["a", "b", ""]).await.unwrap();
    im.join_chan(5, &["a"]).await.unwrap(); // joining twice changes nothing
    im.join_chan(6, &["a"]).await.unwrap();
    assert_eq!(env.store.hash("im_v2_wsChana").await, pairs(&[("5", "0"), ("6", "0")]));
    assert_eq!(env.store.hash("im_v2_wsClient5").await, pairs(&[("a", "0"), ("b", "0")]));
    assert_eq!(env.store.hash("im_v2_wsListChan").await, pairs(&[("a", "2"), ("b", "1")]));
    let mut chans = im.get_chan_list().await.unwrap();
    chans.sort();
    assert_eq!(chans, vec![("a".to_owned(), 2), ("b".to_owned(), 1)]);
    let mut members = im.get_chan_client_list("a").await.unwrap();
    members.sort();
    assert_eq!(members, vec![5, 6]);
    assert_eq!(im.get_chan_online("a").await.unwrap(), 2);
    assert_eq!(im.get_chan_online("").await.unwrap(), 0);

    im.leave_chan(5, &["a", "nope"]).await.unwrap();
    im.leave_chan_clients("b", &[5, 9]).await.unwrap();
    assert_eq!(env.store.hash("im_v2_wsChana").await, pairs(&[("6", "0")]));
    assert_eq!(env.store.hash("im_v2_wsClient5").await, vec![]);
    assert_eq!(env.store.hash("im_v2_wsChanb").await, vec![]);
    assert_eq!(env.store.hash("im_v2_wsListChan").await, pairs(&[("a", "1")]));
    assert_eq!(im.get_chan_list_by_client_id(6).await.unwrap(), vec!["a".to_owned()]);
});

both!(presence_reads_skip_zero_and_non_numeric_ids, |kind| async move {
    let env = Env::new(kind);
    let online =
        |field: &str, by| freeim::backend::Op::HIncrBy { key: "im_v2_wsOnline".into(), field: field.into(), by };
    env.backend.execute(vec![online("7", 2), online("0", 1), online("abc", 1), online("-4", 1)]).await.unwrap();
    let mut ids = env.im.get_client_list_by_online().await.unwrap();
    ids.sort();
    assert_eq!(ids, vec![-4, 7]);
    assert!(env.im.has_online(7).await.unwrap());
    assert!(!env.im.has_online(8).await.unwrap());
    assert_eq!(env.im.has_online_many(&[8, 7, -4]).await.unwrap(), vec![false, true, true]);
    assert_eq!(env.im.has_online_many(&[]).await.unwrap(), Vec::<bool>::new());
});

both!(online_pages_scan_every_online_client, |kind| async move {
    let env = Env::new(kind);
    let online = |id: i64| freeim::backend::Op::HIncrBy { key: "im_v2_wsOnline".into(), field: id.to_string(), by: 1 };
    // More than Redis keeps in one listpack (512 here), which HSCAN returns whole.
    env.backend.execute((1..=1000).map(online).collect()).await.unwrap();
    let (mut ids, mut cursor, mut pages) = (Vec::new(), 0, 0);
    loop {
        let page = env.im.online_page(cursor, 20).await.unwrap();
        ids.extend(page.client_ids);
        pages += 1;
        if page.cursor == 0 {
            break;
        }
        cursor = page.cursor;
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids, (1..=1000).collect::<Vec<i64>>());
    assert!(pages > 1, "HSCAN pages, not one HKEYS");
    let empty = Env::new(kind).im.online_page(0, 20).await.unwrap();
    assert_eq!((empty.cursor, empty.client_ids), (0, vec![]));
});

both!(clear_chan_client_also_fixes_client_and_list_keys, |kind| async move {
    let env = Env::new(kind);
    env.im.join_chan(7, &["c"]).await.unwrap();
    env.im.join_chan(8, &["c", "d"]).await.unwrap();
    let op = freeim::backend::Op::HIncrBy { key: "im_v2_wsOnline".into(), field: "7".into(), by: 1 };
    env.backend.execute(vec![op]).await.unwrap();
    assert_eq!(env.im.clear_chan_client("c").await.unwrap(), vec!["8".to_owned()]);
    assert_eq!(env.store.hash("im_v2_wsChanc").await, pairs(&[("7", "0")]));
    assert_eq!(env.store.hash("im_v2_wsClient8").await, pairs(&[("d", "0")]));
    assert_eq!(env.store.hash("im_v2_wsListChan").await, pairs(&[("c", "1"), ("d", "1")]));
});

both!(event_bus_yields_typed_events_and_skips_garbage, |kind| async move {
    let env = Env::new(kind);
    let mut events = live_event_bus(&env.im).await;
    let publish = |channel: &str, payload: &str| freeim::backend::Op::Publish {
        channel: channel.into(),
        payload: payload.to_owned().into(),
    };
    env.backend
        .execute(vec![
            publish("evt_im_v2_wsOnline", r#"{"Item1":4,"Item2":"m"}"#),
            publish("evt_im_v2_wsOnline", "not json"),
            publish("evt_im_v2_wsOffline", r#"{"Item1":4,"Item2":null}"#),
        ])
        .await
        .unwrap();
    let first = next_event(&mut events).await;
    let second = next_event(&mut events).await;
    let value = |meta: Option<&str>| freeim::protocol::TokenValue { client_id: 4, meta: meta.map(Into::into) };
    assert_eq!(first, PresenceEvent::Online(value(Some("m"))));
    assert_eq!(second, PresenceEvent::Offline(value(None)));
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_bus_survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    let im = ImClient::connect(&redis.url(), ImClientOptions::new([A])).unwrap();
    let mut events = live_event_bus(&im).await;
    redis.kill();
    eventually(None, || async { !events.is_live() }).await;
    redis.restart(None);
    eventually(None, || async { events.is_live() }).await;
    let _: i64 = redis.cmd(&["PUBLISH", "evt_im_v2_wsOnline", r#"{"Item1":9,"Item2":"back"}"#]);
    let event = next_event(&mut events).await;
    assert!(matches!(event, PresenceEvent::Online(v) if v.client_id == 9));
    // Commands work again too, through the reconnecting command connection.
    eventually(None, || async { im.has_online(1).await.is_ok() }).await;
}

#[tokio::test]
async fn on_send_is_called_once_per_node_publish() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let im =
        ImClient::new(Backend::Memory(MemoryBackend::new()), ImClientOptions::new([A, B])).unwrap().on_send(move |e| {
            let line = format!("{} {} {:?} {:?} {} {}", e.server, e.sender, e.receivers, e.chan, e.content, e.receipt);
            log.lock().unwrap().push(line);
        });
    im.send_message(1, &[2, 3, 4], "m", true).await.unwrap();
    im.send_chan_message(1, "r", "c").await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            format!("{A} 1 [2, 4] None \"m\" true"),
            format!("{B} 1 [3] None \"m\" true"),
            format!("{A} 1 [] Some(\"r\") \"c\" false"),
            format!("{B} 1 [] Some(\"r\") \"c\" false"),
        ]
    );
}

#[test]
fn options_are_validated_and_shape_connect_urls() {
    let bad = [
        ImClientOptions::new(Vec::<String>::new()),
        ImClientOptions { path: "ws".into(), ..ImClientOptions::new([A]) },
        ImClientOptions { scheme: "http".into(), ..ImClientOptions::new([A]) },
        ImClientOptions { public_hosts: vec!["x".into(), "y".into()], ..ImClientOptions::new([A]) },
        ImClientOptions { token_ttl: Duration::ZERO, ..ImClientOptions::new([A]) },
    ];
    for options in bad {
        let err = ImClient::new(Backend::Memory(MemoryBackend::new()), options.clone()).unwrap_err();
        assert!(err.to_string().starts_with("invalid client options: "), "{options:?}: {err}");
    }
}

#[tokio::test]
async fn wss_and_public_hosts_shape_connect_urls() {
    let options = ImClientOptions {
        scheme: "wss".into(),
        path: "/chat/ws".into(),
        public_hosts: vec!["im0.example.com".into(), "im1.example.com".into()],
        ..ImClientOptions::new([A, B])
    };
    let backend = MemoryBackend::new();
    let im = ImClient::new(Backend::Memory(backend.clone()), options).unwrap();
    let url = im.prev_connect_server(1, None).await.unwrap();
    let token = url.strip_prefix("wss://im1.example.com/chat/ws?token=").expect(&url);
    let stored = Backend::Memory(backend).get(&format!("im_v2_chat_wsToken{token}"), true).await.unwrap();
    assert_eq!(stored.as_deref(), Some(r#"{"Item1":1,"Item2":null}"#));
}
