//! Durable sockets (issue 13): a socket that connects with `resume` gets a hello, the
//! durable messages it missed (exactly, in order), then live frames with their offsets;
//! FreeIM sockets beside it see the very bytes they always did.

mod common;
use common::*;
use serde_json::{Value, json};

/// A durable socket's URL: a fresh token plus `resume=<value>`.
async fn durable_url(cluster: &Cluster, id: i64, resume: &str) -> String {
    format!("{}&resume={resume}", cluster.url(id).await)
}

/// Connects a durable socket and returns it with its hello.
async fn connect_durable(cluster: &Cluster, id: i64, resume: &str) -> (Ws, Value) {
    let url = durable_url(cluster, id, resume).await;
    let mut ws = Ws::connect(&url).await.unwrap_or_else(|status| panic!("connect {id}: HTTP {status}"));
    let hello = frame(&mut ws).await;
    assert_eq!(hello["t"], "hello", "{hello}");
    (ws, hello)
}

/// The next frame, parsed.
async fn frame(ws: &mut Ws) -> Value {
    let text = ws.recv_text().await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The `resume` value of a position: `E:O`.
fn position(hello: &Value, offset: u64) -> String {
    format!("{}:{offset}", hello["e"].as_str().unwrap())
}

fn offset(value: &Value) -> u64 {
    value["o"].as_u64().unwrap_or_else(|| panic!("no offset in {value}"))
}

both!(a_reconnect_gets_exactly_the_gap, |kind| async move {
    let cluster = Cluster::start(kind, 2).await;
    let durable = cluster.im.durable();
    let mut ws = Ws::connect(&durable_url(&cluster, 2, "").await).await.unwrap();
    let text = ws.recv_text().await;
    let hello: Value = serde_json::from_str(&text).unwrap();
    let top = offset(&hello);
    let epoch = hello["e"].as_str().unwrap();
    assert!(epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{epoch}");
    assert_eq!(text, format!(r#"{{"t":"hello","e":"{epoch}","o":{top},"recovered":false}}"#));
    durable.send_message(1, &[2], "before", false).await.unwrap();
    let before = ws.recv_text().await;
    assert_eq!(before, format!(r#"{{"o":{},"d":"before"}}"#, top + 1));
    ws.close().await;
    eventually(None, || async { !cluster.im.has_online(2).await.unwrap() }).await;

    // While it is away: two messages for it, one for another client of its node, one for a
    // client of the other node, and one that is not durable (lost, as with FreeIM).
    durable.send_message(1, &[2], "missed 1", false).await.unwrap();
    durable.send_message(1, &[4], "not for 2", false).await.unwrap();
    durable.send_message(1, &[3], "other node", false).await.unwrap();
    durable.send_chan_message(0, "room", &json!({"a": 1})).await.unwrap();
    durable.send_broadcast_message("to all").await.unwrap();
    cluster.im.send_message(1, &[2], "not durable", false).await.unwrap();
    durable.send_message(1, &[2], "missed 2", false).await.unwrap();

    let (mut ws, hello) = connect_durable(&cluster, 2, &position(&hello, top + 1)).await;
    assert_eq!(hello["recovered"], true, "{hello}");
    // Node 0 logged: 1 before, 2 missed 1, 3 not for 2, 4 room (2 is no member), 5 to all,
    // 6 missed 2.
    assert_eq!(offset(&hello), top + 6);
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"missed 1"}}"#, top + 2));
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"to all"}}"#, top + 5));
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"missed 2"}}"#, top + 6));
    assert_eq!(ws.recv_text().await, format!(r#"{{"t":"pos","o":{}}}"#, top + 6));
    durable.send_message(1, &[2], "live", false).await.unwrap();
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"live"}}"#, top + 7));
    cluster.im.send_message(1, &[2], "live, not durable", false).await.unwrap();
    assert_eq!(ws.recv_text().await, r#"{"d":"live, not durable"}"#);
    ws.expect_silence().await;
    cluster.shutdown_after(ws).await;
});

both!(a_freeim_socket_sees_the_same_bytes_while_durable_sends_flow, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let mut freeim = RawWs::connect(&cluster.url(2).await).await;
    let (mut durable_ws, hello) = connect_durable(&cluster, 2, "").await;
    eventually(None, || async { cluster.nodes[0].connections() == 2 }).await;
    let top = offset(&hello);
    cluster.im.durable().send_message(1, &[2], "x", false).await.unwrap();
    cluster.im.send_message(1, &[2], "y", false).await.unwrap();
    cluster.im.durable().send_broadcast_message(&json!({"b": 2})).await.unwrap();
    assert_eq!(freeim.read_exact(5).await, b"\x81\x03\"x\"");
    assert_eq!(freeim.read_exact(5).await, b"\x81\x03\"y\"");
    assert_eq!(freeim.read_exact(9).await, b"\x81\x07{\"b\":2}");
    assert_eq!(durable_ws.recv_text().await, format!(r#"{{"o":{},"d":"x"}}"#, top + 1));
    assert_eq!(durable_ws.recv_text().await, r#"{"d":"y"}"#);
    assert_eq!(durable_ws.recv_text().await, format!(r#"{{"o":{},"d":{{"b":2}}}}"#, top + 2));
    cluster.shutdown_after((freeim, durable_ws)).await;
});

both!(two_devices_resume_independently, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let durable = cluster.im.durable();
    let (phone, hello) = connect_durable(&cluster, 2, "").await;
    let (mut laptop, _) = connect_durable(&cluster, 2, "").await;
    let top = offset(&hello);
    phone.close().await;
    durable.send_message(1, &[2], "one", false).await.unwrap();
    assert_eq!(laptop.recv_text().await, format!(r#"{{"o":{},"d":"one"}}"#, top + 1));
    laptop.close().await;
    durable.send_message(1, &[2], "two", false).await.unwrap();
    let (mut phone, hello) = connect_durable(&cluster, 2, &position(&hello, top)).await;
    assert_eq!((hello["recovered"].clone(), offset(&hello)), (json!(true), top + 2));
    assert_eq!(phone.recv_text().await, format!(r#"{{"o":{},"d":"one"}}"#, top + 1));
    assert_eq!(phone.recv_text().await, format!(r#"{{"o":{},"d":"two"}}"#, top + 2));
    assert_eq!(phone.recv_text().await, format!(r#"{{"t":"pos","o":{}}}"#, top + 2));
    let (mut laptop, hello) = connect_durable(&cluster, 2, &position(&hello, top + 1)).await;
    assert_eq!(hello["recovered"], true);
    // The phone is connected now: the sender rule does not apply (1 sent it), so both get it.
    assert_eq!(laptop.recv_text().await, format!(r#"{{"o":{},"d":"two"}}"#, top + 2));
    assert_eq!(laptop.recv_text().await, format!(r#"{{"t":"pos","o":{}}}"#, top + 2));
    cluster.shutdown_after((phone, laptop)).await;
});

both!(a_bad_resume_gets_400_and_keeps_the_token, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let url = cluster.url(2).await;
    for bad in ["x", "0123456789abcdef", "0123456789abcdef:01", "0123456789ABCDEF:1", "0123456789abcdef:-1"] {
        let (addr, target) = split_url(&format!("{url}&resume={bad}"));
        let answer = http(addr, &upgrade_request(&target)).await;
        assert_eq!((answer.status, answer.body.as_str()), (400, "invalid resume\n"), "{bad}");
    }
    // The token was not spent: the same URL still opens a (FreeIM) socket.
    let ws = Ws::connect(&url).await.expect("the token is still good");
    cluster.shutdown_after(ws).await;
});

both!(a_resume_from_another_epoch_or_beyond_the_top_is_not_recovered, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let (ws, hello) = connect_durable(&cluster, 2, "").await;
    let top = offset(&hello);
    ws.close().await;
    for resume in ["0123456789abcdef:0".to_owned(), position(&hello, top + 1)] {
        let (ws, again) = connect_durable(&cluster, 2, &resume).await;
        assert_eq!((again["recovered"].clone(), &again["e"], offset(&again)), (json!(false), &hello["e"], top));
        ws.close().await;
    }
    cluster.expect_metric(0, "freeim_resumes_total{result=\"not_recovered\"}", 2).await;
    cluster.expect_metric(0, "freeim_resumes_total{result=\"new\"}", 1).await;
    cluster.shutdown().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_older_than_the_trimmed_log_is_not_recovered() {
    let cluster = Cluster::start_with(Kind::Redis, 1, |c| c.history_size = 5).await;
    let options = freeim::ImClientOptions { history_size: 5, ..freeim::ImClientOptions::new(cluster.servers.clone()) };
    let im = freeim::ImClient::new(cluster.backend(), options).unwrap();
    let (ws, hello) = connect_durable(&cluster, 2, "").await;
    ws.close().await;
    // Redis trims whole blocks of stream-node-max-entries (100): 300 leave at most ~105.
    for i in 0..300 {
        im.durable().send_message(1, &[2], &i, false).await.unwrap();
    }
    let (ws, again) = connect_durable(&cluster, 2, &position(&hello, offset(&hello))).await;
    assert_eq!((again["recovered"].clone(), offset(&again)), (json!(false), offset(&hello) + 300));
    cluster.shutdown_after(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gives_a_new_epoch() {
    let mut cluster = Cluster::start(Kind::Redis, 1).await;
    let durable = cluster.im.durable();
    let (ws, hello) = connect_durable(&cluster, 2, "").await;
    durable.send_message(1, &[2], "a", false).await.unwrap();
    let _ = durable;
    drop(ws);
    cluster.redis_mut().kill();
    cluster.redis_mut().restart(None);
    cluster.wait_live().await;
    // The first durable send after the restart makes a new epoch; the node follows it.
    eventually(Some(RECOVERY), || async { cluster.im.durable().send_message(1, &[3], "b", false).await.is_ok() }).await;
    let resume = position(&hello, offset(&hello) + 1);
    let again = eventually_hello(&cluster, &resume, hello["e"].as_str().unwrap()).await;
    assert_eq!(again["recovered"], false, "{again}");
    assert_ne!(again["e"], hello["e"]);
    cluster.shutdown().await;
}

/// Connects client 2 until the hello names an epoch other than `old`, and returns that hello. A
/// socket may also be closed with `log reset` instead, while the node learns the new epoch.
async fn eventually_hello(cluster: &Cluster, resume: &str, old: &str) -> Value {
    let deadline = std::time::Instant::now() + RECOVERY;
    loop {
        if let Ok(mut ws) = Ws::connect(&durable_url(cluster, 2, resume).await).await
            && let tokio_tungstenite::tungstenite::Message::Text(text) = ws.next_frame().await
        {
            let hello: Value = serde_json::from_str(&text).unwrap();
            if hello["e"] != old {
                return hello;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no hello of a new epoch");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_socket_is_told_its_position_and_still_recovers() {
    let cluster = Cluster::start_with(Kind::Redis, 1, |c| {
        c.ping_interval = std::time::Duration::from_secs(1);
        c.history_size = 5;
    })
    .await;
    let options = freeim::ImClientOptions { history_size: 5, ..freeim::ImClientOptions::new(cluster.servers.clone()) };
    let im = freeim::ImClient::new(cluster.backend(), options).unwrap();
    let (mut quiet, hello) = connect_durable(&cluster, 2, "").await;
    // Thousands pass its node, none for it; the log keeps only the last ~100.
    for i in 0..2000 {
        im.durable().send_message(1, &[4], &i, false).await.unwrap();
    }
    let top = offset(&hello) + 2000;
    // Pings come every second too, so bound the wait for position frames as a whole.
    let told = tokio::time::timeout(RECOVERY, async {
        let mut told = 0;
        while told < top {
            let pos = frame(&mut quiet).await;
            assert_eq!(pos["t"], "pos", "{pos}");
            told = offset(&pos);
        }
        told
    })
    .await
    .expect("position frames up to the top");
    assert_eq!(told, top);
    quiet.close().await;
    let (ws, again) = connect_durable(&cluster, 2, &position(&hello, told)).await;
    assert_eq!((again["recovered"].clone(), offset(&again)), (json!(true), top));
    cluster.shutdown_after(ws).await;
}

both!(a_single_device_keeps_its_channels_while_away_and_gets_their_messages, |kind| async move {
    let cluster = Cluster::start_with(kind, 1, |c| c.history_ttl = std::time::Duration::from_secs(2)).await;
    cluster.im.join_chan(2, &["room"]).await.unwrap();
    let (ws, hello) = connect_durable(&cluster, 2, "").await;
    let top = offset(&hello);
    ws.close().await;
    eventually(None, || async { !cluster.im.has_online(2).await.unwrap() }).await;
    assert_eq!(cluster.im.get_chan_list_by_client_id(2).await.unwrap(), ["room"], "still a member while away");
    cluster.im.durable().send_chan_message(0, "room", "missed").await.unwrap();
    let (ws, again) = connect_durable(&cluster, 2, &position(&hello, top)).await;
    let mut ws = ws;
    assert_eq!(again["recovered"], true);
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"missed"}}"#, top + 1));
    assert_eq!(ws.recv_text().await, format!(r#"{{"t":"pos","o":{}}}"#, top + 1));
    ws.close().await;
    // Away longer than --history-ttl: it leaves its channels, as a FreeIM client does at once.
    eventually(Some(RECOVERY), || async { cluster.im.get_chan_list_by_client_id(2).await.unwrap().is_empty() }).await;
    assert!(cluster.im.get_chan_client_list("room").await.unwrap().is_empty());
    cluster.shutdown().await;
});
