//! No ghost presence after a node crash, and exact presence after Redis loses its data or
//! its subscriptions. Nodes run as real `freeim server` processes where a test kills them.

mod common;
use common::*;
use freeim::{EventStream, ImClient, ImClientOptions, PresenceEvent};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// From a kill -9 until the dead node's clients must be gone everywhere: detection takes at
/// most the lease TTL plus one renewal period (20 s), the rest is slack for a loaded machine.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long to watch for a second cleaner after the first: two renewal periods.
const SECOND_CLEANER_WATCH: Duration = Duration::from_secs(10);

/// Starts a `freeim server` process for `addr` of the cluster `servers` on `redis`, and
/// waits until it is healthy.
async fn start_node(redis: &RedisServer, addr: &str, servers: &[String]) -> FreeimProcess {
    let args = ["server", "--redis", &redis.url(), "--server", addr, "--servers", &servers.join(",")];
    FreeimProcess::start(&args, &[("RUST_LOG", "warn")], addr, 200).await
}

fn online_counts(redis: &RedisServer) -> HashMap<i64, i64> {
    redis.hash("im_v2_wsOnline").into_iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_no_ghosts_and_one_survivor_cleans_up() {
    let redis = RedisServer::start();
    let servers: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for server in &servers {
        nodes.push(start_node(&redis, server, &servers).await);
    }
    let im = ImClient::connect(&redis.url(), ImClientOptions::new(servers.clone())).unwrap();
    // 300 clients, 100 per node (id mod 3), each in channel "all" and one of its own.
    let mut sockets = Vec::new();
    for id in 1..=300i64 {
        let url = im.prev_connect_server(id, Some("m")).await.unwrap();
        sockets.push((id, Ws::connect(&url).await.unwrap()));
        im.join_chan(id, &["all".to_owned(), format!("own{id}")]).await.unwrap();
    }
    eventually(None, || async { online_counts(&redis).len() == 300 }).await;
    let mut events = live_event_bus(&im).await;

    nodes[0].kill(); // clients 3, 6, …, 300
    let deadline = Instant::now() + CLEANUP_DEADLINE;
    let dead: Vec<i64> = (1..=300).filter(|id| id % 3 == 0).collect();
    let mut offline = Vec::new();
    while offline.len() < dead.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(PresenceEvent::Offline(v))) => offline.push(v.client_id),
            Ok(Some(PresenceEvent::Online(_))) => {}
            other => panic!("only {} offline events within {CLEANUP_DEADLINE:?}: {other:?}", offline.len()),
        }
    }
    offline.sort();
    assert_eq!(offline, dead, "one offline event per socket of the dead node");

    // A socket's offline event goes out after its close script and channel leaves: the state
    // read now is the state within the deadline.
    let counts = online_counts(&redis);
    let members = redis.fields("im_v2_wsChanall");
    let list_chan = redis.hash("im_v2_wsListChan");
    let client_keys: Vec<String> = redis.cmd(&["KEYS", "im_v2_wsClient*"]);
    let dead_records: i64 = redis.cmd(&["HLEN", &format!("im_v2_wsNodeSockets{}", servers[0])]);
    assert!(Instant::now() < deadline, "the state was not read within {CLEANUP_DEADLINE:?} of the kill");
    let alive: Vec<i64> = (1..=300).filter(|id| id % 3 != 0).collect();
    let want: HashMap<i64, i64> = alive.iter().map(|&id| (id, 1)).collect();
    assert_eq!(counts, want, "the dead node's clients gone, the other 200 at exactly 1 (no double decrement)");
    let ids = |fields: &[String], prefix: &str| {
        let mut ids: Vec<i64> = fields.iter().map(|f| f.strip_prefix(prefix).unwrap().parse().unwrap()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&members, ""), alive, "channel \"all\" holds exactly the 200 survivors");
    assert_eq!(ids(&client_keys, "im_v2_wsClient"), alive, "no dead client is in any channel");
    let mut want_list: Vec<(String, String)> = alive.iter().map(|id| (format!("own{id}"), "1".to_owned())).collect();
    want_list.push(("all".to_owned(), "200".to_owned()));
    want_list.sort();
    assert_eq!(list_chan, want_list, "member counts of the survivors' channels only");
    assert_eq!(dead_records, 0);
    for server in &servers[1..] {
        let records: i64 = redis.cmd(&["HLEN", &format!("im_v2_wsNodeSockets{server}")]);
        assert_eq!(records, 100, "{server} keeps its sockets");
    }

    // Exactly one cleaner: no further offline event, and the survivors' counters add up to
    // one cleanup of 100 sockets.
    assert!(tokio::time::timeout(SECOND_CLEANER_WATCH, events.next()).await.is_err(), "a duplicate event");
    let mut cleanups = 0;
    let mut cleaned = 0;
    for server in &servers[1..] {
        let text = metrics(server.as_str()).await;
        cleanups += metric(&text, "freeim_lease_cleanups_total");
        cleaned += metric(&text, "freeim_lease_cleaned_sockets_total");
    }
    assert_eq!((cleanups, cleaned), (1, 100), "one survivor cleaned up the dead node, once");
    assert_eq!(online_counts(&redis), want, "still exact after the watch");

    // The survivors still deliver.
    im.send_message(0, &[1], "after", false).await.unwrap();
    let first = &mut sockets.iter_mut().find(|(id, _)| *id == 1).unwrap().1;
    assert_eq!(first.recv_text().await, "\"after\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_cleans_its_own_stale_presence_before_serving() {
    let redis = RedisServer::start();
    let servers = vec![free_addr()];
    let mut node = start_node(&redis, &servers[0], &servers).await;
    let im = ImClient::connect(&redis.url(), ImClientOptions::new(servers.clone())).unwrap();
    let mut held = Vec::new();
    for id in 1..=5 {
        held.push(Ws::connect(&im.prev_connect_server(id, None).await.unwrap()).await.unwrap());
        im.join_chan(id, &["room"]).await.unwrap();
    }
    eventually(None, || async { online_counts(&redis).len() == 5 }).await;
    node.kill();
    drop(held);
    let _node = start_node(&redis, &servers[0], &servers).await; // well within the lease TTL
    assert_eq!(online_counts(&redis), HashMap::new());
    assert_eq!(redis.hash("im_v2_wsChanroom"), []);
    assert_eq!(redis.hash("im_v2_wsListChan"), []);
    let url = im.prev_connect_server(9, None).await.unwrap();
    let _ws = Ws::connect(&url).await.unwrap();
    eventually(None, || async { online_counts(&redis) == HashMap::from([(9, 1)]) }).await;
}

/// Presence in Redis equals what the live sockets imply.
async fn presence_matches(redis: &RedisServer, want: &HashMap<i64, i64>, servers: &[String]) -> bool {
    let records: usize =
        servers.iter().map(|s| redis.cmd::<i64>(&["HLEN", &format!("im_v2_wsNodeSockets{s}")]) as usize).sum();
    online_counts(redis) == *want && records == want.values().sum::<i64>() as usize
}

/// Sends made while the receiver's node is subscribed again after the restart; the test
/// keeps sending until it has made this many.
const SENDS_AFTER_RECOVERY: usize = 10;

/// How one send of the outage test went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    /// The business side got an error.
    Failed,
    /// Accepted while the receiver's node was not subscribed: pub/sub may drop it.
    AcceptedWhileDown,
    /// Accepted while the receiver's node was subscribed: it must arrive.
    AcceptedWhileLive,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gets_exact_presence_back_and_delivery_resumes() {
    let mut cluster = Cluster::start(Kind::Redis, 2).await;
    let mut a1 = cluster.connect(1).await;
    let _a2 = cluster.connect(1).await;
    let mut b = cluster.connect(2).await;
    let want = HashMap::from([(1, 2), (2, 1)]);
    assert!(presence_matches(cluster.redis(), &want, &cluster.servers).await);
    let joined = HashMap::from([(1, vec!["room", "lobby"]), (2, vec!["room"])]);
    for (id, chans) in &joined {
        cluster.im.join_chan(*id, chans).await.unwrap();
    }
    assert!(channels_joined(cluster.redis()));
    let events = live_event_bus(&cluster.im).await;
    let business = tokio::spawn(rejoin_channels(cluster.im.clone(), events, joined.clone()));

    // Traffic through the outage (pub/sub is at-most-once): 10 sends before the kill, 10
    // while Redis is down, then on until SENDS_AFTER_RECOVERY were made with b's node
    // subscribed again.
    let b_node = &cluster.nodes[freeim::protocol::node_index(2, cluster.servers.len())];
    let mut sends = Vec::new();
    let deadline = Instant::now() + RECOVERY;
    loop {
        let i = sends.len();
        if i == 10 {
            cluster.store.redis_mut().kill();
        }
        if i == 20 {
            cluster.store.redis_mut().restart(None);
        }
        let after_restart = &sends[sends.len().min(20)..];
        if after_restart.iter().filter(|s| **s == Send::AcceptedWhileLive).count() == SENDS_AFTER_RECOVERY {
            break;
        }
        assert!(Instant::now() < deadline, "b's node did not subscribe again within {RECOVERY:?}");
        let live = b_node.is_live();
        let sent = cluster.im.send_message(0, &[2], &format!("m{i}"), false).await;
        sends.push(match (sent, live) {
            (Err(_), _) => Send::Failed,
            (Ok(()), false) => Send::AcceptedWhileDown,
            (Ok(()), true) => Send::AcceptedWhileLive,
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut received = Vec::new();
    while let Ok(frame) = tokio::time::timeout(QUIET, b.recv_text()).await {
        received.push(frame);
    }
    let count = |kind| sends.iter().filter(|s| **s == kind).count();
    let (failed, accepted) = (count(Send::Failed), sends.len() - count(Send::Failed));
    eprintln!(
        "lost during outage: {} of {} sent ({failed} failed at the business side, {} accepted but not delivered)",
        sends.len() - received.len(),
        sends.len(),
        accepted - received.len(),
    );
    let must: Vec<String> =
        (0..sends.len()).filter(|&i| sends[i] == Send::AcceptedWhileLive).map(|i| format!("\"m{i}\"")).collect();
    let accepted: Vec<String> =
        (0..sends.len()).filter(|&i| sends[i] != Send::Failed).map(|i| format!("\"m{i}\"")).collect();
    assert!(received.iter().all(|m| accepted.contains(m)), "only accepted sends arrive: {received:?}");
    let received_must: Vec<&String> = received.iter().filter(|m| must.contains(m)).collect();
    assert_eq!(received_must.len(), must.len(), "every send accepted while subscribed arrives, in order");
    assert!(received_must.iter().zip(&must).all(|(r, m)| *r == m), "in order: {received:?}");

    // Presence is exactly what the live sockets imply; channels are back once the business
    // re-joined on the online events the nodes republished.
    let redis = cluster.redis();
    eventually(None, || async { presence_matches(redis, &want, &cluster.servers).await }).await;
    eventually(Some(RECOVERY), || async { channels_joined(redis) }).await;
    cluster.im.send_message(0, &[1], "after", false).await.unwrap();
    assert_eq!(a1.recv_text().await, "\"after\"");
    cluster.im.send_chan_message(0, "room", "to room").await.unwrap();
    assert_eq!(a1.recv_text().await, "\"to room\"");
    assert_eq!(b.recv_text().await, "\"to room\"");
    business.abort();
}

/// The memberships of the outage test: 1 in room and lobby, 2 in room.
fn channels_joined(redis: &RedisServer) -> bool {
    redis.fields("im_v2_wsChanroom") == ["1", "2"]
        && redis.fields("im_v2_wsChanlobby") == ["1"]
        && redis.fields("im_v2_wsClient1") == ["lobby", "room"]
        && redis.fields("im_v2_wsClient2") == ["room"]
        && redis.hash("im_v2_wsListChan") == pairs(&[("lobby", "1"), ("room", "2")])
}

/// The business side's part in recovery (channel membership is business state): it joins
/// each client's channels again on the client's online events, and on its own
/// re-subscription, which may come after the nodes' events.
async fn rejoin_channels(im: ImClient, mut events: EventStream, joined: HashMap<i64, Vec<&'static str>>) {
    let mut epoch = events.epoch();
    loop {
        let ids: Vec<i64> = tokio::select! {
            Some(event) = events.next() => match event {
                PresenceEvent::Online(v) => vec![v.client_id],
                PresenceEvent::Offline(_) => continue,
            },
            Ok(()) = epoch.changed() => joined.keys().copied().collect(),
        };
        for id in ids.iter().filter(|id| joined.contains_key(id)) {
            // The first command after a Redis restart may meet the dead connection.
            while im.join_chan(*id, &joined[id]).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_with_redis_data_intact_does_not_double_count() {
    let cluster = Cluster::start(Kind::Redis, 2).await;
    let _a = cluster.connect(1).await;
    let _b = cluster.connect(2).await;
    let _c = cluster.connect(2).await;
    let redis = cluster.redis();
    let want = HashMap::from([(1, 1), (2, 2)]);
    assert!(presence_matches(redis, &want, &cluster.servers).await);
    let killed: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, 2, "one subscription per node");
    for i in 0..cluster.nodes.len() {
        eventually(None, || async { cluster.metric(i, "freeim_redis_resubscribes_total").await == 1 }).await;
    }
    assert!(presence_matches(redis, &want, &cluster.servers).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_lapsed_records_its_live_sockets_again() {
    let cluster = Cluster::start(Kind::Redis, 1).await;
    let _a = cluster.connect(1).await;
    let _b = cluster.connect(1).await;
    let redis = cluster.redis();
    let want = HashMap::from([(1, 2)]);
    assert!(presence_matches(redis, &want, &cluster.servers).await);
    // What a survivor does to a node it believes dead: its lease is gone, its sockets counted down.
    let node = &cluster.servers[0];
    let _: i64 = redis.cmd(&["DEL", &format!("im_v2_wsNodeLease{node}"), &format!("im_v2_wsNodeSockets{node}")]);
    let _: i64 = redis.cmd(&["HDEL", "im_v2_wsOnline", "1"]);
    assert!(presence_matches(redis, &HashMap::new(), &cluster.servers).await);
    // At its next renewal (every 5 s) the node finds its lease lapsed and records both again.
    eventually(Some(Duration::from_secs(15)), || async { presence_matches(redis, &want, &cluster.servers).await })
        .await;
    let lease: Option<String> = redis.cmd(&["GET", &format!("im_v2_wsNodeLease{node}")]);
    assert!(lease.is_some());
}
