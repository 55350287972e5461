//! The demo business app, through the `freeim` binary: FreeIM's demo routes answer as the
//! reference does, bad input gets a 4xx JSON answer, and the all-in-one mode works alone.

#[allow(unused_imports)] // the kit re-exports its wire helpers, which these tests do not need
mod common;
use common::*;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `freeim` child process, killed when dropped.
struct Freeim(Child);

impl Freeim {
    fn spawn(args: &[&str]) -> Freeim {
        let child = Command::new(env!("CARGO_BIN_EXE_freeim"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn freeim");
        Freeim(child)
    }
}

impl Drop for Freeim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 exchange (`Connection: close`): the status and the body.
async fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, body.to_owned())
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// `POST` a form; the status and the JSON answer.
async fn post(addr: &str, route: &str, form: &str) -> (u16, Value) {
    let (status, body) = http(addr, "POST", route, &[FORM], form).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{route}: {e}: {body:?}")))
}

async fn wait_http(addr: &str) {
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_serves_the_page_and_delivers() {
    let (web, gateway) = (addr(), addr());
    let _freeim = Freeim::spawn(&["--listen", &web, "--gateway", &gateway]);
    wait_http(&web).await;

    let (status, page) = http(&web, "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>FreeIM chat</title>") && page.contains("/freeim.js"));
    let (status, script) = http(&web, "GET", "/freeim.js", &[], "").await;
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
async fn bad_input_gets_a_4xx_json_answer() {
    let (web, gateway) = (addr(), addr());
    let _freeim = Freeim::spawn(&["--listen", &web, "--gateway", &gateway]);
    wait_http(&web).await;
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
        let (status, body) = http(&web, method, route, &[FORM], form).await;
        let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{route} {form:.40}: {e}: {body}"));
        assert_eq!((status, answer["code"].as_i64()), (want_status, Some(want_code)), "{route} {form:.40}: {body}");
        assert!(answer["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _) = http(&web, "POST", "/ws/send-broadcast", &[("Content-Type", "application/json")], "{}").await;
    assert_eq!(status, 415);
}

#[test]
fn a_taken_port_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    for args in [["--listen", &taken_addr, "--gateway", &addr()], ["--listen", &addr(), "--gateway", &taken_addr]] {
        let out = Command::new(env!("CARGO_BIN_EXE_freeim")).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains("cannot listen on") && lines[0].contains(&taken_addr), "{stderr}");
    }
}

#[test]
fn help_still_works_and_a_missing_redis_is_a_one_line_error() {
    let help = Command::new(env!("CARGO_BIN_EXE_freeim")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success() && text.contains("demo") && text.contains("--gateway"), "{text}");

    let dead_redis = format!("redis://127.0.0.1:{}/0", free_port());
    let args = ["demo", "--redis", &dead_redis, "--servers", "127.0.0.1:6001", "--listen", "127.0.0.1:0"];
    let out = Command::new(env!("CARGO_BIN_EXE_freeim")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "{stderr}");
    assert!(stderr.contains("error: --redis: cannot reach Redis"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_routes_on_a_redis_cluster() {
    let cluster = Cluster::start(Kind::Redis, 2).await;
    let web = addr();
    let servers = cluster.servers.join(",");
    let _demo = Freeim::spawn(&["demo", "--redis", &cluster.redis().url(), "--servers", &servers, "--listen", &web]);
    wait_http(&web).await;

    // The client's node is id mod 2; its metadata is the caller IP, X-Real-IP first.
    let (status, body) =
        http(&web, "POST", "/ws/pre-connect", &[FORM, ("X-Real-IP", "203.0.113.9")], "websocketId=7").await;
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

    let (status, body) = http(&web, "GET", "/ws/offline?websocketId=7", &[], "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"code":0}"#));
    assert_eq!(ws.expect_close().await, (1001, "disconnect".to_owned()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_joins_channels_again_after_redis_restarts_empty() {
    let mut cluster = Cluster::start(Kind::Redis, 2).await;
    let web = addr();
    let servers = cluster.servers.join(",");
    let _demo = Freeim::spawn(&["demo", "--redis", &cluster.redis().url(), "--servers", &servers, "--listen", &web]);
    wait_http(&web).await;
    let (_, answer) = post(&web, "/ws/pre-connect", "websocketId=7").await;
    let mut ws = Ws::connect(answer["server"].as_str().unwrap()).await.unwrap();
    assert_eq!(post(&web, "/ws/subscr-channel", "websocketId=7&channel=room").await.0, 200);
    let online =
        || async { post(&web, "/ws/online", "").await.1["clients"] == json!([{"websocketId": 7, "nick": null}]) };
    eventually(online).await;

    let redis = cluster.redis.as_mut().unwrap();
    redis.kill();
    redis.restart();
    let redis = cluster.redis();
    let joined = || async {
        let members: Vec<String> = redis.cmd(&["HKEYS", "im_v2_wsChanroom"]);
        let chans: Vec<String> = redis.cmd(&["HKEYS", "im_v2_wsClient7"]);
        members == ["7"] && chans == ["room"] && redis.hash("im_v2_wsListChan") == pairs(&[("room", "1")])
    };
    eventually_within(RECOVERY, joined).await;
    cluster.wait_live().await;
    // The demo's first command after the restart may meet its dead connection (503).
    let form = "websocketId=7&channel=room&message=%22back%22";
    eventually(|| async { post(&web, "/ws/send-channelmsg", form).await.0 == 200 }).await;
    assert_eq!(recv_skipping_presence(&mut ws).await, r#""\"back\"""#);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheme_wss_hands_out_wss_urls() {
    let redis = RedisServer::start();
    let (web, node) = (addr(), addr());
    let _demo =
        Freeim::spawn(&["demo", "--redis", &redis.url(), "--servers", &node, "--listen", &web, "--scheme", "wss"]);
    wait_http(&web).await;
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
