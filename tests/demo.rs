//! The demo business app, through the `freeim` binary: FreeIM's demo routes answer as the
//! reference does, bad input gets a 4xx JSON answer, and the all-in-one mode works alone.

mod common;
use common::*;
use serde_json::{Value, json};

/// Runs the `freeim` demo (or all-in-one mode) with `args`, and waits until its web side
/// listens on `web`.
async fn start_demo(args: &[&str], web: &str) -> FreeimProcess {
    let mut demo = FreeimProcess::spawn(args, &[]);
    demo.wait_listening(web).await;
    demo
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// `POST` a form; the status and the JSON answer.
async fn post(addr: &str, route: &str, form: &str) -> (u16, Value) {
    let Answer { status, body } = http(addr, &request("POST", route, &[FORM], form)).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{route}: {e}: {body:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_serves_the_page_and_delivers() {
    let (web, gateway) = (free_addr(), free_addr());
    let _freeim = start_demo(&["--listen", &web, "--gateway", &gateway], &web).await;

    let Answer { status, body: page } = http(&web, &get("/")).await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>FreeIM chat</title>") && page.contains("/freeim.js"));
    let Answer { status, body: script } = http(&web, &get("/freeim.js")).await;
    assert!(status == 200 && script.contains("decodeFrame"));

    let (status, answer) = post(&web, "/ws/pre-connect", "").await;
    assert_eq!((status, &answer["code"]), (200, &json!(0)));
    let id = answer["websocketId"].as_i64().unwrap();
    let url = answer["server"].as_str().unwrap();
    let token = url.strip_prefix(&format!("ws://{gateway}/ws?token=")).unwrap_or_else(|| panic!("{url}"));
    assert!(token.len() == 128 && token.bytes().all(|b| b.is_ascii_hexdigit()));
    let mut ws = Ws::connect(url).await.unwrap();

    // As FreeIM's page sends it: a JSON document as text, serialized once more on the way.
    let message = r#"{"type":"chanmsg","msg":{"content":"hi"}}"#;
    let form = format!("senderWebsocketId=1&receiveWebsocketId={id}&isReceipt=false&message={}", encode(message));
    assert_eq!(post(&web, "/ws/send-msg", &form).await, (200, json!({"code": 0})));
    assert_eq!(recv_skipping_presence(&mut ws).await, serde_json::to_string(message).unwrap());

    // The online list is kept from the event bus.
    assert_eq!(post(&web, "/ws/set-nick", &format!("websocketId={id}&nick=Ann")).await.0, 200);
    let (_, online) = post(&web, "/ws/online", "").await;
    assert_eq!(online["clients"], json!([{"websocketId": id, "nick": "Ann"}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_routes_are_durable_only_when_asked() {
    let (web, gateway) = (free_addr(), free_addr());
    let _freeim = start_demo(&["--listen", &web, "--gateway", &gateway], &web).await;
    let (_, answer) = post(&web, "/ws/pre-connect", "websocketId=5").await;
    let mut ws = Ws::connect(&format!("{}&resume=", answer["server"].as_str().unwrap())).await.unwrap();
    let hello: Value = serde_json::from_str(&ws.recv_text().await).unwrap();
    assert_eq!((&hello["t"], &hello["recovered"]), (&json!("hello"), &json!(false)), "{hello}");
    assert_eq!(post(&web, "/ws/subscr-channel", "websocketId=5&channel=room").await.0, 200);

    // FreeIM's page sends no `durable` field: at-most-once, as FreeIM. The chat page sets it.
    let routes = [
        ("/ws/send-msg", "senderWebsocketId=1&receiveWebsocketId=5&message=%22dm%22"),
        ("/ws/send-channelmsg", "websocketId=5&channel=room&message=%22chan%22"),
        ("/ws/send-broadcast", "message=%22all%22"),
    ];
    for (route, form) in routes {
        assert_eq!(post(&web, route, form).await.0, 200);
        let frame = recv_skipping_presence(&mut ws).await;
        assert!(frame.starts_with(r#"{"d":"\""#), "{route}: {frame}");
        assert_eq!(post(&web, route, &format!("{form}&durable=true")).await.0, 200);
        let frame = recv_skipping_presence(&mut ws).await;
        assert!(frame.starts_with(r#"{"o":"#) && frame.contains(r#","d":"\""#), "{route} durable: {frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_json_answer() {
    let (web, gateway) = (free_addr(), free_addr());
    let _freeim = start_demo(&["--listen", &web, "--gateway", &gateway], &web).await;
    let big = "x".repeat(16 * 1024 + 1);
    let cases: &[(&str, &str, &str, u16, i64)] = &[
        ("POST", "/ws/subscr-channel", "channel=a", 400, 1),
        ("POST", "/ws/subscr-channel", "websocketId=abc&channel=a", 400, 2),
        ("POST", "/ws/subscr-channel", "websocketId=-3&channel=a", 400, 2),
        ("POST", "/ws/subscr-channel", "websocketId=3&channel=", 400, 1),
        ("POST", "/ws/subscr-channel", "websocketId=3&channel=%20%20", 400, 2),
        ("POST", "/ws/pre-connect", "websocketId=99999999999999999999", 400, 2),
        ("POST", "/ws/send-msg", "senderWebsocketId=1&receiveWebsocketId=2", 400, 1),
        ("POST", "/ws/send-msg", "senderWebsocketId=1&receiveWebsocketId=2&message=m&isReceipt=maybe", 400, 2),
        ("POST", "/ws/send-broadcast", &format!("message={big}"), 413, 3),
        ("GET", "/ws/offline", "", 400, 1),
        ("POST", "/ws/nope", "", 404, 6),
    ];
    for &(method, route, form, want_status, want_code) in cases {
        let Answer { status, body } = http(&web, &request(method, route, &[FORM], form)).await;
        let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{route} {form:.40}: {e}: {body}"));
        assert_eq!((status, answer["code"].as_i64()), (want_status, Some(want_code)), "{route} {form:.40}: {body}");
        assert!(answer["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let json_body = request("POST", "/ws/send-broadcast", &[("Content-Type", "application/json")], "{}");
    assert_eq!(http(&web, &json_body).await.status, 415);
}

#[test]
fn a_taken_port_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    for args in
        [["--listen", &taken_addr, "--gateway", &free_addr()], ["--listen", &free_addr(), "--gateway", &taken_addr]]
    {
        let Finished { code, stderr, .. } = run(&args, &[], WAIT);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert!(code != Some(0), "{args:?}");
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains("cannot listen on") && lines[0].contains(&taken_addr), "{stderr}");
    }
}

#[test]
fn help_still_works_and_a_missing_redis_is_a_one_line_error() {
    let help = run(&["--help"], &[], WAIT);
    let text = &help.stdout;
    assert!(help.success() && text.contains("demo") && text.contains("--gateway"), "{text}");

    let dead_redis = format!("redis://127.0.0.1:{}/0", free_port());
    let args = ["demo", "--redis", &dead_redis, "--servers", "127.0.0.1:6001", "--listen", "127.0.0.1:0"];
    let Finished { code, stderr, .. } = run(&args, &[], WAIT);
    assert!(code != Some(0));
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "{stderr}");
    assert!(stderr.contains("error: --redis: cannot reach Redis"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_routes_on_a_redis_cluster() {
    let cluster = Cluster::start(Kind::Redis, 2).await;
    let web = free_addr();
    let servers = cluster.servers.join(",");
    let _demo =
        start_demo(&["demo", "--redis", &cluster.redis().url(), "--servers", &servers, "--listen", &web], &web).await;

    // The client's node is id mod 2; its metadata is the caller IP, X-Real-IP first.
    let pre_connect = request("POST", "/ws/pre-connect", &[FORM, ("X-Real-IP", "203.0.113.9")], "websocketId=7");
    let Answer { status, body } = http(&web, &pre_connect).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["websocketId"], 7);
    let url = answer["server"].as_str().unwrap();
    let token = url.strip_prefix(&format!("ws://{}/ws?token=", cluster.servers[1])).unwrap();
    let stored: String = cluster.redis().cmd(&["GET", &format!("im_v2_wsToken{token}")]);
    assert_eq!(stored, r#"{"Item1":7,"Item2":"203.0.113.9"}"#);

    // FreeIM's page posts `websocketid` in lower case to this route.
    let mut ws = Ws::connect(url).await.unwrap();
    assert_eq!(post(&web, "/ws/subscr-channel", "websocketid=7&channel=room").await.0, 200);
    let (_, channels) = post(&web, "/ws/get-channels", "").await;
    assert_eq!(channels, json!({"code": 0, "channels": [{"chan": "room", "online": 1}]}));
    let form = "websocketId=7&channel=room&message=%22hello%22";
    assert_eq!(post(&web, "/ws/send-channelmsg", form).await, (200, json!({"code": 0})));
    assert_eq!(recv_skipping_presence(&mut ws).await, r#""\"hello\"""#);

    let Answer { status, body } = http(&web, &get("/ws/offline?websocketId=7")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"code":0}"#));
    assert_eq!(ws.expect_close().await, (1001, "disconnect".to_owned()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_joins_channels_again_after_redis_restarts_empty() {
    let mut cluster = Cluster::start(Kind::Redis, 2).await;
    let web = free_addr();
    let servers = cluster.servers.join(",");
    let _demo =
        start_demo(&["demo", "--redis", &cluster.redis().url(), "--servers", &servers, "--listen", &web], &web).await;
    let (_, answer) = post(&web, "/ws/pre-connect", "websocketId=7").await;
    let mut ws = Ws::connect(answer["server"].as_str().unwrap()).await.unwrap();
    assert_eq!(post(&web, "/ws/subscr-channel", "websocketId=7&channel=room").await.0, 200);
    let online =
        || async { post(&web, "/ws/online", "").await.1["clients"] == json!([{"websocketId": 7, "nick": null}]) };
    eventually(None, online).await;

    let redis = cluster.redis_mut();
    redis.kill();
    redis.restart(None);
    let redis = cluster.redis();
    let joined = || async {
        redis.fields("im_v2_wsChanroom") == ["7"]
            && redis.fields("im_v2_wsClient7") == ["room"]
            && redis.hash("im_v2_wsListChan") == pairs(&[("room", "1")])
    };
    eventually(Some(RECOVERY), joined).await;
    cluster.wait_live().await;
    // The demo's first command after the restart may meet its dead connection (503).
    let form = "websocketId=7&channel=room&message=%22back%22";
    eventually(None, || async { post(&web, "/ws/send-channelmsg", form).await.0 == 200 }).await;
    assert_eq!(recv_skipping_presence(&mut ws).await, r#""\"back\"""#);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheme_wss_hands_out_wss_urls() {
    let redis = RedisServer::start();
    let (web, node) = (free_addr(), free_addr());
    let _demo =
        start_demo(&["demo", "--redis", &redis.url(), "--servers", &node, "--listen", &web, "--scheme", "wss"], &web)
            .await;
    let (status, answer) = post(&web, "/ws/pre-connect", "websocketId=7").await;
    assert_eq!(status, 200, "{answer}");
    let url = answer["server"].as_str().unwrap();
    assert!(url.starts_with(&format!("wss://{node}/ws?token=")), "{url}");
}

/// The next frame that is not the demo's own presence broadcast (sent on every change).
async fn recv_skipping_presence(ws: &mut Ws) -> String {
    loop {
        let frame = ws.recv_text().await;
        if !frame.contains(r#"\"type\":\"presence\""#) {
            return frame;
        }
    }
}

/// Form encoding of one value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
