//! Channel members kept in memory by the nodes (issue 12): a join or leave that completed
//! before a send is reflected in its delivery, whichever business process did either; a
//! channel message costs Redis no `HKEYS`; a client's channels are loaded when it connects
//! and again when its node resubscribes; `--chan-cache off` reads members per batch, as FreeIM,
//! for clusters where a .NET ImHelper (FreeIM's own scripts) joins clients.

mod common;
use common::*;
use freeim::protocol::{ChanMessage, to_json};
use freeim::{ImClient, ImClientOptions};

/// FreeIM's join script, as a .NET ImHelper sends it (it publishes nothing).
const DOTNET_JOIN: &str = "if redis.call('HSETNX',KEYS[1],ARGV[1],0)==1 then redis.call('HSET',KEYS[2],ARGV[2],0) redis.call('HINCRBY',KEYS[3],ARGV[2],1) end return 1";

both!(a_join_or_leave_before_a_send_is_reflected_whoever_did_them, |kind| async move {
    let cluster = Cluster::start(kind, 2).await;
    // A second business process: its own connection to the broker.
    let other = ImClient::new(cluster.backend(), ImClientOptions::new(cluster.servers.clone())).unwrap();
    let mut ws = cluster.connect(3).await; // node 1
    let rounds = 50;
    for round in 0..rounds {
        let (joiner, sender) = if round % 2 == 0 { (&cluster.im, &other) } else { (&other, &cluster.im) };
        joiner.join_chan(3, &["room"]).await.unwrap();
        sender.send_chan_message(1, "room", &format!("in {round}")).await.unwrap();
        joiner.leave_chan(3, &["room"]).await.unwrap();
        sender.send_chan_message(1, "room", &format!("out {round}")).await.unwrap();
        other.leave_chan_clients("room", &[3]).await.unwrap();
    }
    for round in 0..rounds {
        assert_eq!(ws.recv_text().await, format!("\"in {round}\""));
    }
    ws.expect_silence().await;
    cluster.shutdown_after(ws).await;
});

both!(a_client_that_joined_while_offline_gets_its_channels_when_it_connects, |kind| async move {
    let cluster = Cluster::start(kind, 2).await;
    cluster.im.join_chan(3, &["a", "b"]).await.unwrap();
    cluster.im.join_chan(5, &["a"]).await.unwrap();
    let mut three = cluster.connect(3).await;
    let mut five = cluster.connect(5).await;
    cluster.im.send_chan_message(1, "b", "to b").await.unwrap();
    cluster.im.send_chan_message(1, "a", "to a").await.unwrap();
    assert_eq!(three.recv_text().await, "\"to b\"");
    assert_eq!(three.recv_text().await, "\"to a\"");
    assert_eq!(five.recv_text().await, "\"to a\"");
    cluster.expect_metric(1, "freeim_chan_memberships", 3).await;
    expect_silence_all([&mut three, &mut five]).await;
    cluster.shutdown_after((three, five)).await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_messages_cost_redis_no_hkeys() {
    let cluster = Cluster::start(Kind::Redis, 3).await;
    let mut sockets = Vec::new();
    for id in 1..=30 {
        cluster.im.join_chan(id, &["room"]).await.unwrap();
        sockets.push(cluster.connect(id).await);
    }
    let before = cluster.redis().calls("hkeys");
    for n in 0..20 {
        cluster.im.send_chan_message(0, "room", &n).await.unwrap();
    }
    for ws in &mut sockets {
        for n in 0..20 {
            assert_eq!(ws.recv_text().await, n.to_string());
        }
    }
    assert_eq!(cluster.redis().calls("hkeys") - before, 0, "HKEYS while dispatching channel messages");
    cluster.shutdown_after(sockets).await;
}

/// Joins client `id` to `chan` as a .NET ImHelper does: FreeIM's script, no notice.
fn dotnet_join(redis: &RedisServer, id: i64, chan: &str) {
    let (chan_key, client_key) = (format!("im_v2_wsChan{chan}"), format!("im_v2_wsClient{id}"));
    let args = ["EVAL", DOTNET_JOIN, "3", &chan_key, &client_key, "im_v2_wsListChan", &id.to_string(), chan];
    let _: i64 = redis.cmd(&args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_loads_its_clients_channels_again_when_it_resubscribes() {
    let cluster = Cluster::start(Kind::Redis, 1).await;
    let mut ws = cluster.connect(2).await;
    cluster.im.join_chan(2, &["kept"]).await.unwrap();
    // A change the node cannot hear of (as if made while it was cut off from Redis).
    dotnet_join(cluster.redis(), 2, "unheard");
    cluster.expect_metric(0, "freeim_chan_memberships", 1).await;
    let _: i64 = cluster.redis().cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    eventually(Some(RECOVERY), || async { cluster.metric(0, "freeim_chan_memberships").await == 2 }).await;
    cluster.im.send_chan_message(1, "unheard", "to unheard").await.unwrap();
    cluster.im.send_chan_message(1, "kept", "to kept").await.unwrap();
    assert_eq!(ws.recv_text().await, "\"to unheard\"");
    assert_eq!(ws.recv_text().await, "\"to kept\"");
    cluster.shutdown_after(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_a_dotnet_join_is_delivered() {
    for cache in [false, true] {
        let cluster = Cluster::start_with(Kind::Redis, 1, |c| c.chan_cache = cache).await;
        let mut ws = cluster.connect(2).await;
        dotnet_join(cluster.redis(), 2, "room");
        let hkeys = cluster.redis().calls("hkeys");
        cluster.im.send_chan_message(1, "room", "from .NET's join").await.unwrap();
        if cache {
            // Documented: with the cache on, joins must come from our scripts.
            ws.expect_silence().await;
            assert_eq!(cluster.redis().calls("hkeys"), hkeys);
        } else {
            assert_eq!(ws.recv_text().await, "\"from .NET's join\"");
            assert_eq!(cluster.redis().calls("hkeys"), hkeys + 1, "one HKEYS for the batch");
        }
        cluster.shutdown_after(ws).await;
    }
}

both!(a_change_between_two_messages_of_one_batch_splits_them, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let mut ws = cluster.connect(3).await;
    let message = |text: &str| ChanMessage { sender: 1, chan: Some("room".into()), content: to_json(text) }.encode();
    // Published in one pipeline, so the node takes them as one batch.
    let payloads = [message("before"), "__FreeIM__(Join)3:room".to_owned(), message("after")];
    cluster.publish(0, payloads).await;
    assert_eq!(ws.recv_text().await, "\"after\"");
    ws.expect_silence().await;
    cluster.shutdown_after(ws).await;
});
