//! The HTTP edge: who gets a WebSocket and who gets which HTTP error, and `/healthz`.

mod common;
use common::*;
use freeim::ImClient;
use freeim::ImClientOptions;
use std::time::Duration;

both!(requests_without_a_live_token_are_refused, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let addr = cluster.addr(0);
    let unknown = "ab".repeat(64);
    let cases: Vec<(String, u16)> = vec![
        (upgrade_request("/ws"), 401),
        (upgrade_request("/ws?token="), 401),
        (upgrade_request("/ws?other=1"), 401),
        (upgrade_request(&format!("/ws?token={unknown}")), 401),
        (upgrade_request("/ws?token=not-a-token"), 401),
        (upgrade_request(&format!("/elsewhere?token={unknown}")), 404),
        (upgrade_request("/"), 404),
        ("GET /ws HTTP/1.1\r\nHost: test\r\n\r\n".to_owned(), 400),
        (format!("GET /ws?token={unknown} HTTP/1.1\r\nHost: test\r\n\r\n"), 400),
        ("GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n".to_owned(), 200),
    ];
    for (request, status) in cases {
        assert_eq!(http(addr, &request).await.status, status, "{request:?}");
    }
    assert_eq!(http(addr, &get("/nope")).await.status, 404);
    assert_eq!(cluster.nodes[0].connections(), 0);
    assert!(cluster.online().await.is_empty());
    cluster.shutdown().await;
});

both!(a_token_is_single_use, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let url = cluster.url(3).await;
    let key = cluster.im.keys().token(url.rsplit_once("token=").unwrap().1);
    let ws = Ws::connect(&url).await.expect("first use");
    // Taken from the store by the upgrade (GETDEL).
    assert_eq!(cluster.backend().get(&key, false).await.unwrap(), None);
    assert_eq!(Ws::connect(&url).await.err(), Some(401));
    assert_eq!(cluster.online().await, pairs(&[("3", "1")]));
    cluster.shutdown_after(ws).await;
});

both!(token_reuse_is_allowed_when_configured, |kind| async move {
    let cluster = Cluster::start_with(kind, 1, |c| c.allow_token_reuse = true).await;
    let url = cluster.url(3).await;
    let a = Ws::connect(&url).await.expect("first use");
    let b = Ws::connect(&url).await.expect("second use");
    eventually(None, || async { cluster.online().await == pairs(&[("3", "2")]) }).await;
    cluster.shutdown_after((a, b)).await;
});

both!(an_expired_token_is_refused, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let options =
        ImClientOptions { token_ttl: Duration::from_secs(1), ..ImClientOptions::new(cluster.servers.clone()) };
    let im = ImClient::new(cluster.backend(), options).unwrap();
    let url = im.prev_connect_server(3, None).await.unwrap();
    let key = im.keys().token(url.rsplit_once("token=").unwrap().1);
    assert!(cluster.backend().get(&key, false).await.unwrap().is_some());
    let backend = cluster.backend();
    eventually(None, || async { backend.get(&key, false).await.unwrap().is_none() }).await;
    assert_eq!(Ws::connect(&url).await.err(), Some(401));
    // A fresh token of the same client still works.
    let ws = Ws::connect(&im.prev_connect_server(3, None).await.unwrap()).await.expect("fresh token");
    cluster.shutdown_after(ws).await;
});

both!(healthz_answers_200, |kind| async move {
    let cluster = Cluster::start(kind, 2).await;
    for i in 0..2 {
        assert_eq!(http(cluster.addr(i), &get("/healthz")).await.status, 200);
    }
    cluster.shutdown().await;
});

both!(a_malformed_token_value_is_refused, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let token = "cd".repeat(64);
    let key = cluster.im.keys().token(&token);
    cluster.backend().set_ex(&key, "{\"Item1\":\"not an id\"}", 10).await.unwrap();
    let url = format!("ws://{}/ws?token={token}", cluster.servers[0]);
    assert_eq!(Ws::connect(&url).await.err(), Some(401));
    assert!(cluster.online().await.is_empty());
    cluster.shutdown().await;
});

both!(an_oversized_request_head_gets_431, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let filler = "a".repeat(100);
    let headers: String = (0..200).map(|i| format!("X-Filler-{i}: {filler}\r\n")).collect();
    let request = format!("GET /ws?token=x HTTP/1.1\r\nHost: test\r\n{headers}\r\n");
    assert_eq!(http(cluster.addr(0), &request).await.status, 431);
    assert_eq!(http(cluster.addr(0), &get("/healthz")).await.status, 200);
    cluster.shutdown().await;
});
