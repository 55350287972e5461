//! Presence: exact `{P}Online` counts, online/offline events, channel membership dropped
//! only with a client's last socket, and force offline.

mod common;
use common::*;
use freeim::PresenceEvent;
use freeim::protocol::TokenValue;

/// The token value of [`Cluster::connect`]'s sockets for client `id`.
fn token(id: i64) -> TokenValue {
    TokenValue { client_id: id, meta: Some("meta".to_owned()) }
}

both!(online_counts_every_socket, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    let a = cluster.connect(7).await;
    let b = cluster.connect(7).await;
    let c = cluster.connect(7).await;
    let other = cluster.connect(8).await;
    eventually(None, || async { cluster.online().await == pairs(&[("7", "3"), ("8", "1")]) }).await;
    assert_eq!(cluster.im.get_client_list_by_online().await.unwrap().len(), 2);
    a.close().await;
    eventually(None, || async { cluster.online().await == pairs(&[("7", "2"), ("8", "1")]) }).await;
    b.close().await;
    other.close().await;
    eventually(None, || async { cluster.online().await == pairs(&[("7", "1")]) }).await;
    c.close().await;
    eventually(None, || async { cluster.online().await.is_empty() }).await;
    assert!(!cluster.im.has_online(7).await.unwrap());
    cluster.shutdown().await;
});

both!(each_socket_publishes_online_and_offline_events, |kind| async move {
    let cluster = Cluster::start(kind, 2).await;
    let keys = cluster.im.keys();
    let mut raw = cluster.backend().subscribe(vec![keys.event_online().to_owned(), keys.event_offline().to_owned()]);
    assert!(raw.ready().await, "subscribed");
    let mut events = live_event_bus(&cluster.im).await;
    let a = cluster.connect(9).await;
    let b = cluster.connect(9).await;
    assert_eq!(next_event(&mut events).await, PresenceEvent::Online(token(9)));
    assert_eq!(next_event(&mut events).await, PresenceEvent::Online(token(9)));
    a.close().await;
    assert_eq!(next_event(&mut events).await, PresenceEvent::Offline(token(9)));
    b.close().await;
    assert_eq!(next_event(&mut events).await, PresenceEvent::Offline(token(9)));
    // The exact payloads: the token value as the business side stored it.
    for channel in [keys.event_online(), keys.event_online(), keys.event_offline(), keys.event_offline()] {
        let (channel, payload) = (channel.to_owned(), r#"{"Item1":9,"Item2":"meta"}"#.to_owned());
        assert_eq!(next_publish(&mut raw).await, (channel, payload));
    }
    cluster.shutdown().await;
});

both!(channels_are_left_when_the_last_socket_closes, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let keys = cluster.im.keys();
    let mut events = live_event_bus(&cluster.im).await;
    let first = cluster.connect(4).await;
    let second = cluster.connect(4).await;
    let member = cluster.connect(5).await;
    for _ in 0..3 {
        assert!(matches!(next_event(&mut events).await, PresenceEvent::Online(_)));
    }
    cluster.im.join_chan(4, &["a", "b"]).await.unwrap();
    cluster.im.join_chan(5, &["a"]).await.unwrap();
    let state = || async {
        (
            cluster.hash(&keys.chan("a")).await,
            cluster.hash(&keys.chan("b")).await,
            cluster.hash(&keys.client(4)).await,
            cluster.hash(keys.list_chan()).await,
        )
    };
    let joined = (
        pairs(&[("4", "0"), ("5", "0")]),
        pairs(&[("4", "0")]),
        pairs(&[("a", "0"), ("b", "0")]),
        pairs(&[("a", "2"), ("b", "1")]),
    );
    assert_eq!(state().await, joined);
    // One of two sockets closes: the offline event comes after any channel leave would.
    first.close().await;
    assert_eq!(next_event(&mut events).await, PresenceEvent::Offline(token(4)));
    assert_eq!(state().await, joined);
    assert_eq!(cluster.online().await, pairs(&[("4", "1"), ("5", "1")]));
    second.close().await;
    assert_eq!(next_event(&mut events).await, PresenceEvent::Offline(token(4)));
    assert_eq!(state().await, (pairs(&[("5", "0")]), vec![], vec![], pairs(&[("a", "1")])));
    assert_eq!(cluster.online().await, pairs(&[("5", "1")]));
    assert_eq!(cluster.hash(&keys.client(5)).await, pairs(&[("a", "0")]));
    cluster.shutdown_after(member).await;
});

both!(force_offline_closes_every_socket_of_the_client, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    let keys = cluster.im.keys();
    let mut events = live_event_bus(&cluster.im).await;
    let mut a = cluster.connect(6).await;
    let mut b = cluster.connect(6).await;
    let mut bystander = cluster.connect(3).await; // same node as 6
    for id in [6, 6, 3] {
        assert_eq!(next_event(&mut events).await, PresenceEvent::Online(token(id)));
    }
    cluster.im.join_chan(6, &["room"]).await.unwrap();
    cluster.im.join_chan(3, &["room"]).await.unwrap();
    cluster.im.force_offline(6).await.unwrap();
    assert_eq!(a.expect_close().await, (1001, "disconnect".to_owned()));
    assert_eq!(b.expect_close().await, (1001, "disconnect".to_owned()));
    assert_eq!(next_event(&mut events).await, PresenceEvent::Offline(token(6)));
    assert_eq!(next_event(&mut events).await, PresenceEvent::Offline(token(6)));
    assert_eq!(cluster.online().await, pairs(&[("3", "1")]));
    assert_eq!(cluster.hash(&keys.chan("room")).await, pairs(&[("3", "0")]));
    assert_eq!(cluster.hash(&keys.client(6)).await, vec![]);
    assert_eq!(cluster.hash(keys.list_chan()).await, pairs(&[("room", "1")]));
    cluster.im.send_chan_message(0, "room", "still").await.unwrap();
    assert_eq!(bystander.recv_text().await, "\"still\"");
    // Forcing an unknown or offline client is a no-op.
    cluster.im.force_offline(6).await.unwrap();
    cluster.im.force_offline(99).await.unwrap();
    bystander.expect_silence().await;
    assert_eq!(cluster.online().await, pairs(&[("3", "1")]));
    cluster.shutdown_after((a, b, bystander)).await;
});

// A force offline after a message in the same batch: the message first, then the close.
both!(force_offline_comes_after_the_messages_before_it, |kind| async move {
    use freeim::protocol::NodeCommand;
    let cluster = Cluster::start(kind, 1).await;
    let mut ws = cluster.connect(6).await;
    let commands = [system_message(6, &1), system_message(6, &2), NodeCommand::ForceOffline(6), system_message(6, &3)];
    cluster.publish(0, commands.iter().map(NodeCommand::encode)).await;
    assert_eq!(ws.recv_text().await, "1");
    assert_eq!(ws.recv_text().await, "2");
    assert_eq!(ws.expect_close().await, (1001, "disconnect".to_owned()));
    eventually(None, || async { cluster.online().await.is_empty() }).await;
    cluster.shutdown().await;
});

// The count is per client over all nodes: with sockets on two nodes (a second device that
// reached another node), closing one keeps the client online and in its channels.
both!(the_last_socket_on_any_node_leaves_the_channels, |kind| async move {
    let cluster = Cluster::start(kind, 2).await;
    let keys = cluster.im.keys();
    let mut events = live_event_bus(&cluster.im).await;
    let home = cluster.connect(3).await; // node 1
    let url = cluster.url(3).await.replace(&cluster.servers[1], &cluster.servers[0]);
    let away = Ws::connect(&url).await.expect("a socket on node 0");
    for _ in 0..2 {
        assert_eq!(next_event(&mut events).await, PresenceEvent::Online(token(3)));
    }
    assert_eq!((cluster.nodes[0].connections(), cluster.nodes[1].connections()), (1, 1));
    assert_eq!(cluster.online().await, pairs(&[("3", "2")]));
    cluster.im.join_chan(3, &["room"]).await.unwrap();
    home.close().await;
    assert_eq!(next_event(&mut events).await, PresenceEvent::Offline(token(3)));
    assert_eq!(cluster.online().await, pairs(&[("3", "1")]));
    assert_eq!(cluster.hash(&keys.chan("room")).await, pairs(&[("3", "0")]));
    away.close().await;
    assert_eq!(next_event(&mut events).await, PresenceEvent::Offline(token(3)));
    assert_eq!(cluster.online().await, vec![]);
    assert_eq!(cluster.hash(&keys.chan("room")).await, vec![]);
    assert_eq!(cluster.hash(keys.list_chan()).await, vec![]);
    cluster.shutdown().await;
});

/// Sockets of the batched-close test; half of their clients are in a channel.
const DRAINED: i64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_closes_its_sockets_in_batches_and_leaves_no_presence() {
    let mut cluster = Cluster::start(Kind::Redis, 1).await;
    let keys = cluster.im.keys().clone();
    let mut offline = cluster.backend().subscribe(vec![keys.event_offline().to_owned()]);
    assert!(offline.ready().await, "subscribed");
    let mut sockets = Vec::new();
    for id in 1..=DRAINED {
        sockets.push(cluster.connect(id).await);
        if id % 2 == 0 {
            cluster.im.join_chan(id, &["room"]).await.unwrap();
        }
    }
    let evals = cluster.redis().calls("eval");
    cluster.nodes.remove(0).shutdown().await;
    let redis = cluster.redis();
    // Each socket's close: counted down, its record gone, its channel left, its event out.
    assert_eq!((cluster.online().await, redis.fields(&keys.node_sockets(&cluster.servers[0]))), (pairs(&[]), vec![]));
    assert!(redis.fields(&keys.chan("room")).is_empty());
    for _ in 0..DRAINED {
        next_publish(&mut offline).await;
    }
    // One `SocketClose` call per batch of closes (plus the 150 channel leaves), not one per
    // socket.
    let socket_closes = redis.calls("eval") - evals - DRAINED as u64 / 2;
    assert!(socket_closes <= DRAINED as u64 / 10, "{socket_closes} SocketClose calls for {DRAINED} sockets");
    drop(sockets);
}
