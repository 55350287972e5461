//! The `freeim server` process: flags, environment, one-line errors, and SIGTERM.

mod common;
use common::*;
use freeim::{ImClient, ImClientOptions, PresenceEvent};

/// Asserts a failed start: non-zero exit, and exactly one line on stderr containing `needle`.
fn assert_one_line_error(args: &[&str], envs: &[(&str, &str)], needle: &str) {
    let Finished { code, stderr, .. } = run(args, envs, WAIT);
    assert!(code.is_some_and(|c| c != 0), "{args:?}: exit {code:?}, stderr {stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
    assert!(stderr.contains(needle), "{args:?}: {stderr:?} does not name {needle}");
}

#[test]
fn bad_settings_exit_non_zero_with_one_line_naming_the_flag() {
    let (a, b) = (free_addr(), free_addr());
    let redis = "redis://127.0.0.1:1/0";
    let dir = std::env::temp_dir().join(format!("freeim-process-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unknown_key = dir.join("unknown.toml");
    std::fs::write(&unknown_key, "bogus-key = 1\n").unwrap();
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "ping-interval = \n").unwrap();
    let bad_value = dir.join("bad-value.toml");
    std::fs::write(&bad_value, "path = '/ws'\nping-interval = 'x'\n").unwrap();
    let missing = dir.join("missing.toml");
    let (unknown, bad, missing) =
        (unknown_key.to_str().unwrap(), bad_toml.to_str().unwrap(), missing.to_str().unwrap());
    let bad_value = bad_value.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--redis", redis, "--server", &b, "--servers", &a], "--server"),
        (vec!["--redis", redis, "--server", &a, "--servers", &a, "--ping-interval", "abc"], "--ping-interval"),
        (vec!["--redis", redis, "--server", &a, "--servers", &a, "--pong-timeout", "0"], "--pong-timeout"),
        (vec!["--server", &a, "--servers", &a], "--redis"),
        (vec!["--redis", "http://nope", "--server", &a, "--servers", &a], "--redis"),
        (vec!["--redis", redis, "--servers", &a], "--server"),
        (vec!["--redis", redis, "--server", &a], "--servers"),
        (vec!["--redis", redis, "--server", "nohost", "--servers", "nohost"], "--servers"),
        (vec!["--redis", redis, "--server", &a, "--servers", &a, "--path", "ws"], "--path"),
        (vec!["--redis", redis, "--server", &a, "--servers", &a, "--bogus"], "--bogus"),
        (vec!["--redis", redis, "--server", &a, "--servers", &a, "--config", unknown], "bogus-key"),
        (vec!["--redis", redis, "--server", &a, "--servers", &a, "--config", bad], "--config"),
        (vec!["--redis", redis, "--server", &a, "--servers", &a, "--config", missing], "--config"),
        (vec!["--redis", redis, "--server", &a, "--servers", &a, "--config", bad_value], "line 2, `ping-interval`"),
        (vec!["--redis", redis, "--server", &a, "--servers", &a, "--threads", "0"], "--threads"),
    ];
    for (flags, needle) in cases {
        let args: Vec<&str> = std::iter::once("server").chain(flags).collect();
        assert_one_line_error(&args, &[], needle);
    }
    assert_one_line_error(
        &["server"],
        &[("FREEIM_REDIS", redis), ("FREEIM_SERVER", &a), ("FREEIM_SERVERS", &a), ("FREEIM_PING_INTERVAL", "x")],
        "--ping-interval",
    );
    // A boolean variable takes 1/0 too: the error is about the missing flag, not about it.
    assert_one_line_error(&["server"], &[("FREEIM_ALLOW_TOKEN_REUSE", "1"), ("FREEIM_REDIS", redis)], "--server");
    // A missing required flag of a subcommand is named on the one line.
    assert_one_line_error(&["ctl", "--servers", &a, "online"], &[], "--redis");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_taken_listen_address_is_one_line_naming_the_flag_and_the_os_error_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = ["server", "--redis", "redis://127.0.0.1:1/0", "--server", &addr, "--servers", &addr];
    let Finished { code, stderr, .. } = run(&args, &[], WAIT);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!("error: --server: cannot listen on {addr}: Address already in use (os error 98)")
    );
}

/// Starts, serves and on SIGTERM closes every socket with 1001, cleans all presence and
/// channel membership, publishes the offline events and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_serves_and_stops_cleanly_on_sigterm() {
    let redis = RedisServer::start();
    let (a, b) = (free_addr(), free_addr());
    let servers = format!("{a},{b}");
    let args = ["server", "--redis", &redis.url(), "--server", &a, "--servers", &servers];
    let mut process = FreeimProcess::start(&args, &[], &a, 200).await;
    let im = ImClient::connect(&redis.url(), ImClientOptions::new([a.clone(), b.clone()])).unwrap();
    let mut events = live_event_bus(&im).await;
    // Ids 2 and 4 belong to node a (the process); 4 has two sockets.
    let mut sockets = Vec::new();
    for id in [2, 4, 4] {
        sockets.push(Ws::connect(&im.prev_connect_server(id, Some("m")).await.unwrap()).await.unwrap());
    }
    eventually(None, || async { redis.hash("im_v2_wsOnline") == pairs(&[("2", "1"), ("4", "2")]) }).await;
    im.join_chan(2, &["room"]).await.unwrap();
    im.join_chan(4, &["room", "x"]).await.unwrap();
    im.send_chan_message(0, "room", "hello").await.unwrap();
    for ws in &mut sockets {
        assert_eq!(ws.recv_text().await, "\"hello\"");
    }
    for _ in 0..3 {
        assert!(matches!(next_event(&mut events).await, PresenceEvent::Online(_)));
    }

    process.terminate();
    for ws in &mut sockets {
        assert_eq!(ws.expect_close().await, (1001, "shutdown".to_owned()));
    }
    assert_eq!(process.wait_exit(WAIT * 2).await, Some(0), "{}", process.stderr_text());
    assert_eq!(redis.hash("im_v2_wsOnline"), vec![]);
    assert_eq!(redis.hash(&format!("im_v2_wsNodeSockets{a}")), vec![]);
    for key in ["im_v2_wsChanroom", "im_v2_wsChanx", "im_v2_wsClient2", "im_v2_wsClient4", "im_v2_wsListChan"] {
        assert_eq!(redis.hash(key), vec![], "{key}");
    }
    let mut offline = Vec::new();
    for _ in 0..3 {
        match next_event(&mut events).await {
            PresenceEvent::Offline(value) => offline.push(value.client_id),
            other => panic!("expected an offline event, got {other:?}"),
        }
    }
    offline.sort();
    assert_eq!(offline, [2, 4, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_from_environment_variables_and_a_config_file() {
    let redis = RedisServer::start();
    let a = free_addr();
    let envs = [
        ("FREEIM_REDIS", redis.url()),
        ("FREEIM_SERVER", a.clone()),
        ("FREEIM_SERVERS", a.clone()),
        ("FREEIM_PATH", "/chat".to_owned()),
        ("FREEIM_MAX_QUEUE_BYTES", "abc".to_owned()),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // A flag wins over its variable.
    let process = FreeimProcess::start(&["server", "--max-queue-bytes", "65536"], &envs, &a, 200).await;
    let options = ImClientOptions { path: "/chat".to_owned(), ..ImClientOptions::new([a.clone()]) };
    let im = ImClient::connect(&redis.url(), options).unwrap();
    let url = im.prev_connect_server(5, None).await.unwrap();
    assert!(url.contains("/chat?token="), "{url}");
    let mut ws = Ws::connect(&url).await.expect("upgrade on FREEIM_PATH");
    eventually(None, || async { redis.hash("im_v2_chatOnline") == pairs(&[("5", "1")]) }).await;
    im.send_message(0, &[5], "env", false).await.unwrap();
    assert_eq!(ws.recv_text().await, "\"env\"");
    assert_eq!(http(&a, &get("/ws")).await.status, 404);
    drop(process);

    // The same from a --config file; a flag wins over the file.
    let b = free_addr();
    let file = std::env::temp_dir().join(format!("freeim-config-{}-{}.toml", std::process::id(), free_port()));
    std::fs::write(
        &file,
        format!(
            "redis = '{}'\nserver = '{b}'\nservers = ['{b}']\npath = '/file'\nallow-token-reuse = true\n",
            redis.url()
        ),
    )
    .unwrap();
    let args = ["server", "--config", file.to_str().unwrap(), "--path", "/flag"];
    let _process = FreeimProcess::start(&args, &[], &b, 200).await;
    let options = ImClientOptions { path: "/flag".to_owned(), ..ImClientOptions::new([b.clone()]) };
    let im = ImClient::connect(&redis.url(), options).unwrap();
    let url = im.prev_connect_server(6, None).await.unwrap();
    let _first = Ws::connect(&url).await.expect("upgrade on the --path flag");
    let _again = Ws::connect(&url).await.expect("allow-token-reuse from the file");
    assert_eq!(http(&b, &get("/file")).await.status, 404);
    let _ = std::fs::remove_file(&file);
}

// With Redis gone, SIGTERM still closes every socket with 1001 and the process exits
// within its drain timeout (presence cannot be cleaned: Redis is down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_redis_down_still_exits() {
    let mut redis = RedisServer::start();
    let a = free_addr();
    let args = ["server", "--redis", &redis.url(), "--server", &a, "--servers", &a, "--drain-timeout", "3"];
    let mut process = FreeimProcess::start(&args, &[], &a, 200).await;
    let im = ImClient::connect(&redis.url(), ImClientOptions::new([a.clone()])).unwrap();
    let mut ws = Ws::connect(&im.prev_connect_server(1, None).await.unwrap()).await.unwrap();
    eventually(None, || async { redis.hash("im_v2_wsOnline") == pairs(&[("1", "1")]) }).await;
    redis.kill();
    wait_health(&a, 503).await;
    process.terminate();
    assert_eq!(ws.expect_close().await, (1001, "shutdown".to_owned()));
    let code = process.wait_exit(WAIT * 2).await;
    assert_eq!(code, Some(0), "{}", process.stderr_text());
}

// A Redis that is down when the node starts is waited for, not fatal: /healthz says 503
// until it is up, then the node serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_redis_serves_once_redis_is_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let a = free_addr();
    let args = ["server", "--redis", &redis.url(), "--server", &a, "--servers", &a];
    let _process = FreeimProcess::start(&args, &[], &a, 503).await;
    redis.restart(None);
    wait_health(&a, 200).await;
    let im = ImClient::connect(&redis.url(), ImClientOptions::new([a.clone()])).unwrap();
    let mut ws = Ws::connect(&im.prev_connect_server(1, None).await.unwrap()).await.expect("upgrade");
    eventually(None, || async { redis.hash("im_v2_wsOnline") == pairs(&[("1", "1")]) }).await;
    im.send_message(0, &[1], "late redis", false).await.unwrap();
    assert_eq!(ws.recv_text().await, "\"late redis\"");
}

// Sockets still open at the drain timeout (their peers never answer the close) have their
// presence cleared before the process exits: nothing else would clear it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_drain_timeout_leaves_no_presence() {
    let redis = RedisServer::start();
    let a = free_addr();
    let args = ["server", "--redis", &redis.url(), "--server", &a, "--servers", &a, "--drain-timeout", "1"];
    let mut process = FreeimProcess::start(&args, &[], &a, 200).await;
    let im = ImClient::connect(&redis.url(), ImClientOptions::new([a.clone()])).unwrap();
    let mut mute = Vec::new();
    for id in [1, 2, 2] {
        mute.push(Ws::connect(&im.prev_connect_server(id, None).await.unwrap()).await.unwrap());
    }
    eventually(None, || async { redis.hash("im_v2_wsOnline") == pairs(&[("1", "1"), ("2", "2")]) }).await;
    process.terminate();
    process.wait_exit(WAIT * 2).await;
    assert!(process.stderr_text().contains("3 sockets were still open at the drain timeout"));
    assert_eq!(redis.hash("im_v2_wsOnline"), pairs(&[]));
    assert_eq!(redis.hash(&format!("im_v2_wsNodeSockets{a}")), pairs(&[]));
    drop(mute);
}
