//! The node survives its surroundings: Redis dying and coming back, garbage on its channel.

mod common;
use common::*;
use std::time::Duration;

/// Sends until the business side's Redis connection has recovered (a send issued while
/// Redis is down fails fast and is not published).
async fn send_when_redis_is_back(cluster: &Cluster, receivers: &[i64], message: &str) {
    let deadline = std::time::Instant::now() + RECOVERY;
    while let Err(e) = cluster.im.send_message(0, receivers, message, false).await {
        assert!(std::time::Instant::now() < deadline, "send keeps failing: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_traffic_is_survived() {
    let mut cluster = Cluster::start(Kind::Redis, 2).await;
    let mut a = cluster.connect(2).await; // node 0
    let mut b = cluster.connect(3).await; // node 1
    let gone = cluster.connect(5).await; // node 1; closes while Redis is down
    for i in 0..20 {
        cluster.im.send_message(0, &[2, 3], &i, false).await.unwrap();
    }
    let url = cluster.url(6).await;
    cluster.redis_mut().kill();
    for i in 0..20 {
        assert_eq!(a.recv_text().await, i.to_string());
        assert_eq!(b.recv_text().await, i.to_string());
    }
    for node in 0..2 {
        wait_health(cluster.addr(node), 503).await;
    }
    // While Redis is down, sends fail, the sockets stay open and new ones get 503.
    assert!(cluster.im.send_message(0, &[2], "lost", false).await.is_err());
    assert_eq!(Ws::connect(&url).await.err(), Some(503));
    gone.close().await;
    eventually(None, || async { cluster.nodes[1].connections() == 1 }).await;
    cluster.redis_mut().restart(None);
    for node in 0..2 {
        wait_health(cluster.addr(node), 200).await;
    }
    // Redis came back empty: each node records its live sockets again (and only those).
    let restored = || async { cluster.redis().hash_if_up("im_v2_wsOnline") == pairs(&[("2", "1"), ("3", "1")]) };
    eventually(Some(RECOVERY), restored).await;
    send_when_redis_is_back(&cluster, &[2, 3], "after").await;
    assert_eq!(a.recv_text().await, "\"after\"");
    assert_eq!(b.recv_text().await, "\"after\"");
    // The node still takes new sockets (token lookup on the new Redis) and delivers.
    let mut c = cluster.connect(4).await;
    cluster.im.send_message(0, &[4, 2], "new", false).await.unwrap();
    assert_eq!(c.recv_text().await, "\"new\"");
    assert_eq!(a.recv_text().await, "\"new\"");
    a.expect_silence().await;
    b.expect_silence().await;
    cluster.shutdown_after((a, b, c)).await;
}

both!(garbage_on_the_node_channel_is_dropped, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let mut ws = cluster.connect(1).await;
    let garbage: Vec<&[u8]> = vec![
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"{\"Item1\":1}",
        b"[1,2,3]",
        b"__FreeIM__(ForceOffline)",
        b"__FreeIM__(ForceOffline)one",
        b"__FreeIM__(ChanMessage){\"Item1\":\"x\"}",
        b"__FreeIM__(ChanMessage)",
        b"{\"Item1\":1,\"Item2\":[1],\"Item3\":5,\"Item4\":false}",
    ];
    for payload in &garbage {
        cluster.publish(0, [payload.to_vec()]).await;
    }
    // Garbage in the same batch as valid messages drops only itself.
    let mut batch: Vec<Vec<u8>> = garbage.iter().map(|p| p.to_vec()).collect();
    batch.insert(3, br#"{"Item1":0,"Item2":[1],"Item3":"\"in batch\"","Item4":false}"#.to_vec());
    cluster.publish(0, batch).await;
    assert_eq!(ws.recv_text().await, "\"in batch\"");
    cluster.im.send_message(0, &[1], "valid", false).await.unwrap();
    assert_eq!(ws.recv_text().await, "\"valid\"");
    ws.expect_silence().await;
    assert_eq!(cluster.online().await, pairs(&[("1", "1")]));
    assert_eq!(http(cluster.addr(0), &get("/healthz")).await.status, 200);
    cluster.shutdown_after(ws).await;
});

// Redis comes back with its data (persistence): a socket that closed while Redis was down
// could not be counted down then, and must not stay online as a ghost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closed_while_redis_was_down_is_not_a_ghost() {
    let mut cluster = Cluster::start(Kind::Redis, 1).await;
    let dir = std::env::temp_dir().join(format!("freeim-redis-{}-{}", std::process::id(), cluster.redis().port));
    std::fs::create_dir_all(&dir).unwrap();
    // The same Redis, now persistent.
    cluster.redis_mut().kill();
    cluster.redis_mut().restart(Some(dir.as_path()));
    wait_health(cluster.addr(0), 200).await;
    eventually(Some(RECOVERY), || async { cluster.im.has_online(1).await.is_ok() }).await;
    let mut stays = cluster.connect(2).await;
    let leaves = cluster.connect(3).await;
    cluster.im.join_chan(3, &["room"]).await.unwrap();
    assert_eq!(cluster.redis().hash_if_up("im_v2_wsOnline"), pairs(&[("2", "1"), ("3", "1")]));
    cluster.redis_mut().kill();
    wait_health(cluster.addr(0), 503).await;
    leaves.close().await;
    eventually(None, || async { cluster.nodes[0].connections() == 1 }).await;
    cluster.redis_mut().restart(Some(dir.as_path()));
    wait_health(cluster.addr(0), 200).await;
    let clean = || async {
        cluster.redis().hash_if_up("im_v2_wsOnline") == pairs(&[("2", "1")])
            && cluster.redis().hash_if_up("im_v2_wsChanroom").is_empty()
            && cluster.redis().hash_if_up("im_v2_wsListChan").is_empty()
    };
    eventually(Some(RECOVERY), clean).await;
    send_when_redis_is_back(&cluster, &[2], "after").await;
    assert_eq!(stays.recv_text().await, "\"after\"");
    let _ = std::fs::remove_dir_all(&dir);
    cluster.shutdown_after(stays).await;
}

// Redis drops the node's subscription (CLIENT KILL TYPE pubsub): the node subscribes again
// and delivers what is published afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_is_re_established() {
    let cluster = Cluster::start(Kind::Redis, 2).await;
    let mut ws = cluster.connect(3).await; // node 1
    let channel = cluster.im.keys().server(&cluster.servers[1]);
    let subscribers = || {
        let (_, count): (String, i64) = cluster.redis().cmd(&["PUBSUB", "NUMSUB", &channel]);
        count
    };
    assert_eq!(subscribers(), 1);
    let killed: i64 = cluster.redis().cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(killed >= 1);
    eventually(Some(RECOVERY), || async { subscribers() == 1 }).await;
    wait_health(cluster.addr(1), 200).await;
    cluster.im.send_message(0, &[3], "again", false).await.unwrap();
    assert_eq!(ws.recv_text().await, "\"again\"");
    assert_eq!(cluster.redis().hash_if_up("im_v2_wsOnline"), pairs(&[("3", "1")]));
    cluster.shutdown_after(ws).await;
}

/// A Redis that stops answering without closing its connections (a frozen host, a dropped
/// route) is noticed by the subscription's idle probe: `/healthz` turns 503, and 200 again
/// once Redis answers; delivery resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_is_noticed_by_the_subscription_probe() {
    let cluster = Cluster::start(Kind::Redis, 1).await;
    let mut ws = cluster.connect(3).await;
    wait_health(cluster.addr(0), 200).await;
    cluster.redis().pause();
    // Probe after 5 s of silence, dead after 5 s more, then reconnect attempts time out.
    let frozen = || async { http(cluster.addr(0), &get("/healthz")).await.status == 503 };
    eventually(Some(Duration::from_secs(20)), frozen).await;
    cluster.redis().resume();
    wait_health(cluster.addr(0), 200).await;
    send_when_redis_is_back(&cluster, &[3], "after the freeze").await;
    assert_eq!(ws.recv_text().await, "\"after the freeze\"");
    cluster.shutdown_after(ws).await;
}

/// A consumer busy for longer than the probe's deadlines (a node fanning a broadcast out on
/// a loaded box) does not take its own silence for Redis's: its next read probes, waits for
/// the answer, and gets the next message on the same subscription.
#[tokio::test]
async fn a_busy_consumer_keeps_its_subscription() {
    let store = TestBackend::start(Kind::Redis);
    let backend = store.handle();
    let mut sub = backend.subscribe(vec!["busy".to_owned()]);
    assert!(sub.ready().await, "subscribed");
    let epoch = *sub.epoch().borrow();
    // Nothing reads for longer than the probe and its answer are given (5 s + 5 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let publisher = backend.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let op = freeim::backend::Op::Publish { channel: "busy".into(), payload: "after".into() };
        publisher.execute(vec![op]).await.unwrap();
    });
    let message = tokio::time::timeout(Duration::from_secs(8), sub.recv()).await.expect("a message").unwrap();
    assert_eq!(&message.payload[..], b"after");
    assert_eq!(*sub.epoch().borrow(), epoch, "the subscription was dropped and made again");
}
