//! Limits an operator sets, and `/metrics`: each limit is hit and answered as documented.

mod common;
use common::*;
use freeim::backend::{Backend, MemoryBackend};
use freeim::{Error, ImClient, ImClientOptions};

both!(connections_beyond_the_node_limit_get_503, |kind| async move {
    let cluster = Cluster::start_with(kind, 1, |c| c.max_connections = 2).await;
    let _a = cluster.connect(1).await;
    let _b = cluster.connect(2).await;
    let url = cluster.im.prev_connect_server(3, None).await.unwrap();
    assert_eq!(Ws::connect(&url).await.err(), Some(503));
    cluster.expect_metric(0, "freeim_refused_total{reason=\"node_full\"}", 1).await;
    cluster.shutdown().await;
});

/// Upgrades through every URL at once (one task each); the sockets that got `101`, and the
/// statuses of the refused ones.
async fn upgrade_all(urls: Vec<String>) -> (Vec<Ws>, Vec<u16>) {
    let attempts = urls.into_iter().map(|url| tokio::spawn(async move { Ws::connect(&url).await }));
    let (mut open, mut refused) = (Vec::new(), Vec::new());
    for attempt in futures_util::future::join_all(attempts).await {
        match attempt.unwrap() {
            Ok(ws) => open.push(ws),
            Err(status) => refused.push(status),
        }
    }
    (open, refused)
}

// Upgrades arriving together each take a place before their token lookup: exactly the limit
// gets in, and the places come back when those sockets close.
both!(concurrent_upgrades_never_overshoot_the_node_limit, |kind| async move {
    const LIMIT: usize = 10;
    const ATTEMPTS: usize = 50;
    let cluster = Cluster::start_with(kind, 1, |c| c.max_connections = LIMIT).await;
    for round in 1..=2 {
        let urls = futures_util::future::join_all((1..=ATTEMPTS as i64).map(|id| cluster.url(id))).await;
        let (open, refused) = upgrade_all(urls).await;
        assert_eq!(open.len(), LIMIT, "round {round}: {refused:?}");
        assert_eq!(refused, vec![503; ATTEMPTS - LIMIT], "round {round}");
        assert_eq!(cluster.nodes[0].connections(), LIMIT);
        let refusals = ((ATTEMPTS - LIMIT) * round) as u64;
        cluster.expect_metric(0, "freeim_refused_total{reason=\"node_full\"}", refusals).await;
        drop(open);
        eventually(None, || async { cluster.nodes[0].connections() == 0 }).await;
    }
    cluster.shutdown().await;
});

both!(concurrent_upgrades_never_overshoot_the_per_client_limit, |kind| async move {
    const LIMIT: usize = 3;
    const ATTEMPTS: usize = 20;
    let cluster = Cluster::start_with(kind, 1, |c| c.max_sockets_per_client = LIMIT).await;
    let urls = futures_util::future::join_all((0..ATTEMPTS).map(|_| cluster.url(7))).await;
    let (open, refused) = upgrade_all(urls).await;
    assert_eq!(open.len(), LIMIT, "{refused:?}");
    assert_eq!(refused, vec![429; ATTEMPTS - LIMIT]);
    cluster.expect_metric(0, "freeim_refused_total{reason=\"client_full\"}", (ATTEMPTS - LIMIT) as u64).await;
    // Every place was either registered or given back: with one socket closed, exactly one
    // more gets in.
    let url = cluster.url(7).await;
    assert_eq!(Ws::connect(&url).await.err(), Some(429));
    let mut open = open;
    drop(open.pop());
    eventually(None, || async { cluster.nodes[0].connections() == LIMIT - 1 }).await;
    open.push(cluster.connect(7).await);
    let url = cluster.url(7).await;
    assert_eq!(Ws::connect(&url).await.err(), Some(429));
    cluster.shutdown_after(open).await;
});

both!(sockets_beyond_the_per_client_limit_get_429, |kind| async move {
    let cluster = Cluster::start_with(kind, 1, |c| c.max_sockets_per_client = 2).await;
    let _a = cluster.connect(7).await;
    let _b = cluster.connect(7).await;
    let url = cluster.im.prev_connect_server(7, None).await.unwrap();
    assert_eq!(Ws::connect(&url).await.err(), Some(429));
    let _other = cluster.connect(8).await;
    cluster.shutdown().await;
});

both!(a_socket_sending_too_many_frames_is_closed_with_1008, |kind| async move {
    let cluster = Cluster::start_with(kind, 1, |c| c.max_frames_per_sec = 5).await;
    let mut calm = cluster.connect(1).await;
    let mut noisy = cluster.connect(2).await;
    for _ in 0..3 {
        calm.send_text("x").await;
    }
    for _ in 0..50 {
        noisy.send_text("x").await;
    }
    assert_eq!(noisy.expect_close().await, (1008, "too many frames".to_owned()));
    // An operator's limit, not a protocol violation.
    cluster.expect_metric(0, "freeim_disconnects_total{reason=\"limit\"}", 1).await;
    assert_eq!(cluster.metric(0, "freeim_disconnects_total{reason=\"violation\"}").await, 0);
    cluster.im.send_message(0, &[1], "still here", false).await.unwrap();
    assert_eq!(calm.recv_text().await, "\"still here\"");
    cluster.shutdown().await;
});

both!(origins_outside_the_allowed_list_get_403, |kind| async move {
    let cluster =
        Cluster::start_with(kind, 1, |c| c.allowed_origins = vec!["https://chat.example.com".to_owned()]).await;
    let url = cluster.im.prev_connect_server(1, None).await.unwrap();
    assert_eq!(Ws::connect_from(&url, "https://evil.example.com").await.err(), Some(403));
    // The refused attempt did not use the token up.
    assert!(Ws::connect_from(&url, "https://chat.example.com").await.is_ok());
    // Non-browser clients send no Origin and pass.
    let _plain = cluster.connect(2).await;
    cluster.shutdown().await;
});

#[tokio::test]
async fn messages_over_the_business_side_limit_are_refused_unsent() {
    let backend = MemoryBackend::new();
    let options = ImClientOptions { max_message_bytes: 16, ..ImClientOptions::new(["127.0.0.1:6001"]) };
    let im = ImClient::new(Backend::Memory(backend.clone()), options).unwrap();
    let mut sub = Backend::Memory(backend).subscribe(vec!["im_v2_wsServer127.0.0.1:6001".to_owned()]);
    let err = im.send_message(1, &[2], "a message of 30 characters...", false).await.unwrap_err();
    assert!(matches!(err, Error::MessageTooLarge { size: 31, limit: 16 }), "{err}");
    assert!(matches!(im.send_chan_message(1, "c", &"x".repeat(15)).await, Err(Error::MessageTooLarge { .. })));
    im.send_message(1, &[2], "fits", false).await.unwrap();
    let first = sub.recv().await.unwrap();
    assert_eq!(&first.payload[..], br#"{"Item1":1,"Item2":[2],"Item3":"\"fits\"","Item4":false}"#);
}

both!(metrics_count_what_happened, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let mut a = cluster.connect(1).await;
    let b = cluster.connect(2).await;
    cluster.im.send_message(2, &[1, 3], "m", true).await.unwrap();
    assert_eq!(a.recv_text().await, "\"m\"");
    let receipt = tokio::time::timeout(WAIT, async {
        let mut b = b;
        let text = b.recv_text().await;
        b.close().await;
        text
    })
    .await
    .unwrap();
    assert!(receipt.contains("发送成功") || receipt.contains("用户不在线"), "{receipt}");
    cluster.expect_metric(0, "freeim_disconnects_total{reason=\"closed\"}", 1).await;
    // Force offline counts as `kicked`.
    let mut kicked = cluster.connect(4).await;
    cluster.im.force_offline(4).await.unwrap();
    assert_eq!(kicked.expect_close().await, (1001, "disconnect".to_owned()));
    cluster.expect_metric(0, "freeim_disconnects_total{reason=\"kicked\"}", 1).await;
    let metrics = cluster.metrics(0).await;
    for line in [
        "freeim_connections 1",
        "freeim_connects_total 3",
        "freeim_redis_subscription_up 1",
        "freeim_receipts_total{status=\"delivered\"} 1",
        "freeim_receipts_total{status=\"offline\"} 1",
        "freeim_disconnects_total{reason=\"closed\"} 1",
        "freeim_disconnects_total{reason=\"limit\"} 0",
        "freeim_disconnects_total{reason=\"violation\"} 0",
        "freeim_disconnects_total{reason=\"dead_peer\"} 0",
        "freeim_queue_dropped_frames_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
    // Two frames out: the message to 1, and the first receipt to 2 (the second receipt may
    // still be on its way when 2 closes); at least three messages in.
    assert!(cluster.metric(0, "freeim_frames_out_total").await >= 2);
    assert!(cluster.metric(0, "freeim_messages_in_total").await >= 3);
    cluster.shutdown().await;
});
