//! The server HTTP API (issue 11) against a real Redis and a real 2-node cluster: every
//! method with its exact Redis state and the exact frames sockets get, every kind of bad
//! input with its documented 4xx, the key, the limits, Redis down, keep-alive, its own
//! listener, its metrics and the all-in-one. Every answer is checked against the OpenAPI
//! document the nodes serve.

mod common;
use common::*;
use freeim::gateway::{ApiConfig, ApiKeys, GatewayConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The document the nodes serve, as checked in.
const OPENAPI: &str = include_str!("../src/gateway/api/openapi.json");
/// The key of the test clusters.
const KEY: &str = "test-key-1";
/// Every method, as the paths name them.
const METHODS: [&str; 16] = [
    "connect_url",
    "send",
    "chan_send",
    "broadcast",
    "force_offline",
    "has_online",
    "online",
    "chan_join",
    "chan_leave",
    "chan_members",
    "chan_online",
    "chan_clear",
    "chans",
    "client_chans",
    "batch",
    "info",
];

/// Turns the API on with [`KEY`] (and `tweak` for its settings).
fn with_api(tweak: impl Fn(&mut ApiConfig)) -> impl Fn(&mut GatewayConfig) {
    move |config: &mut GatewayConfig| {
        let mut api = ApiConfig::new(ApiKeys::new([KEY]).unwrap());
        tweak(&mut api);
        config.api = Some(api);
    }
}

/// A 2-node cluster on Redis with the API on, and the document to check answers against.
struct Api {
    cluster: Cluster,
    spec: OpenApi,
}

impl Api {
    async fn start() -> Api {
        Api::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl Fn(&mut ApiConfig)) -> Api {
        Api { cluster: Cluster::start_with(Kind::Redis, 2, with_api(tweak)).await, spec: OpenApi::new(OPENAPI) }
    }

    /// `POST /api/{method}` with `body` and the key on node 0; its status and answer,
    /// checked against the document.
    async fn call(&self, method: &str, body: &str) -> (u16, Value) {
        self.call_on(0, method, body, &[("X-API-Key", KEY)]).await
    }

    async fn call_on(&self, node: usize, method: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let (status, answer) = post(self.cluster.addr(node), method, headers, body).await;
        if METHODS.contains(&method) {
            self.spec.check(&format!("/api/{method}"), status, &answer);
        }
        (status, answer)
    }

    /// A call that must succeed (its request conforms to the document too); its answer.
    async fn ok(&self, method: &str, body: Value) -> Value {
        self.spec.check_request(&format!("/api/{method}"), &body);
        let (status, answer) = self.call(method, &body.to_string()).await;
        assert_eq!(status, 200, "{method} {body}: {answer}");
        answer
    }

    fn redis(&self) -> &RedisServer {
        self.cluster.redis()
    }
}

/// `POST /api/{method}` on `addr`: the status and the JSON answer.
async fn post(
    addr: impl tokio::net::ToSocketAddrs,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let Answer { status, body } = http(addr, &request("POST", &format!("/api/{method}"), headers, body)).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method}: {e}: {body:?}")))
}

/// The error body of `code` and `message`.
fn error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_url_hands_out_a_token_the_clients_node_accepts() {
    let api = Api::start().await;
    let answer = api.ok("connect_url", json!({"client_id": 43, "meta": "203.0.113.7"})).await;
    let token = answer["token"].as_str().unwrap().to_owned();
    let url = format!("ws://{}/ws?token={token}", api.cluster.servers[1]);
    assert_eq!(answer, json!({"url": url, "token": token, "expires_in": 10}));
    let stored: String = api.redis().cmd(&["GET", &format!("im_v2_wsToken{token}")]);
    assert_eq!(stored, r#"{"Item1":43,"Item2":"203.0.113.7"}"#);
    let ttl: i64 = api.redis().cmd(&["TTL", &format!("im_v2_wsToken{token}")]);
    assert!((1..=10).contains(&ttl), "TTL {ttl}");
    let _ws = Ws::connect(&url).await.unwrap();
    eventually(None, || async { api.cluster.online().await == pairs(&[("43", "1")]) }).await;
    // Without meta: null, as ImClient stores it.
    let answer = api.ok("connect_url", json!({"client_id": -2})).await;
    let stored: String = api.redis().cmd(&["GET", &format!("im_v2_wsToken{}", answer["token"].as_str().unwrap())]);
    assert_eq!(stored, r#"{"Item1":-2,"Item2":null}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_delivers_content_as_imclient_writes_it_with_receipts_when_asked() {
    let api = Api::start().await;
    let (mut a, mut b, mut sender) =
        (api.cluster.connect(2).await, api.cluster.connect(3).await, api.cluster.connect(1).await);
    // Raw text: `json!` would sort the keys.
    let body = r#"{"sender":1,"receivers":[2,3,2],"content":{"z":1,"a":["x",null,true,1.5],"m":{"b":2,"a":1}}}"#;
    assert_eq!(api.call("send", body).await, (200, json!({})));
    // Key order as sent, not sorted; duplicates removed.
    for ws in [&mut a, &mut b] {
        assert_eq!(ws.recv_text().await, r#"{"z":1,"a":["x",null,true,1.5],"m":{"b":2,"a":1}}"#);
    }
    assert_eq!(
        api.ok("send", json!({"sender": 1, "receivers": [3], "content": "hi", "receipt": true})).await,
        json!({})
    );
    assert_eq!(b.recv_text().await, r#""hi""#);
    assert_eq!(sender.recv_text().await, r#"{"content":"\"hi\"","receipt":"发送成功"}"#);
    api.ok("send", json!({"sender": 1, "receivers": [], "content": 0})).await;
    expect_silence_all([&mut a, &mut b, &mut sender]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_sends_are_logged_and_reach_durable_sockets_with_their_offset() {
    let api = Api::start().await;
    let mut ws = Ws::connect(&format!("{}&resume=", api.cluster.url(2).await)).await.unwrap();
    let hello: Value = serde_json::from_str(&ws.recv_text().await).unwrap();
    let top = hello["o"].as_u64().unwrap();
    api.ok("send", json!({"sender": 1, "receivers": [2], "content": "d", "durable": true})).await;
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"d"}}"#, top + 1));
    api.ok("chan_join", json!({"client_id": 2, "chans": ["room"]})).await;
    api.ok("chan_send", json!({"chan": "room", "content": "c", "durable": true})).await;
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"c"}}"#, top + 2));
    api.ok("broadcast", json!({"content": "b", "durable": true})).await;
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"b"}}"#, top + 3));
    let log = |i: usize| format!("im_v2_wsLog{}", api.cluster.servers[i]);
    let (first, second): (u64, u64) = (api.redis().cmd(&["XLEN", &log(0)]), api.redis().cmd(&["XLEN", &log(1)]));
    assert_eq!((first, second), (3, 2), "client 2's node logs all three; the other the channel and broadcast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chan_send_reaches_members_and_broadcast_everyone() {
    let api = Api::start().await;
    let (mut a, mut b, mut outsider) =
        (api.cluster.connect(2).await, api.cluster.connect(3).await, api.cluster.connect(5).await);
    assert_eq!(api.ok("chan_join", json!({"client_id": 2, "chans": ["room"]})).await, json!({}));
    api.ok("chan_join", json!({"client_id": 3, "chans": ["room", "other"]})).await;
    assert_eq!(api.call("chan_send", r#"{"chan":"room","content":{"t":"m","n":1}}"#).await, (200, json!({})));
    assert_eq!(a.recv_text().await, r#"{"t":"m","n":1}"#);
    assert_eq!(b.recv_text().await, r#"{"t":"m","n":1}"#);
    // From a member: not to itself, as ImClient.
    api.ok("chan_send", json!({"chan": "room", "content": "from 3", "sender": 3})).await;
    assert_eq!(a.recv_text().await, r#""from 3""#);
    outsider.expect_silence().await;
    b.expect_silence().await;
    assert_eq!(api.ok("broadcast", json!({"content": null})).await, json!({}));
    for ws in [&mut a, &mut b, &mut outsider] {
        assert_eq!(ws.recv_text().await, "null");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_offline_closes_every_socket_of_each_client() {
    let api = Api::start().await;
    let (mut a, mut b, mut c) =
        (api.cluster.connect(2).await, api.cluster.connect(3).await, api.cluster.connect(4).await);
    assert_eq!(api.ok("force_offline", json!({"client_ids": [2, 3]})).await, json!({}));
    assert_eq!(a.expect_close().await, (1001, "disconnect".to_owned()));
    assert_eq!(b.expect_close().await, (1001, "disconnect".to_owned()));
    c.expect_silence().await;
    eventually(None, || async { api.cluster.online().await == pairs(&[("4", "1")]) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn has_online_and_online_pages_read_presence() {
    let api = Api::start().await;
    let _sockets = (api.cluster.connect(2).await, api.cluster.connect(3).await, api.cluster.connect(5).await);
    let answer = api.ok("has_online", json!({"client_ids": [2, 9, 5, 2]})).await;
    assert_eq!(answer, json!({"online": {"2": true, "9": false, "5": true}}));
    assert_eq!(api.ok("has_online", json!({"client_ids": []})).await, json!({"online": {}}));
    let (mut ids, mut cursor) = (Vec::new(), "0".to_owned());
    loop {
        let page = api.ok("online", json!({"cursor": cursor, "count": 1})).await;
        ids.extend(page["client_ids"].as_array().unwrap().iter().map(|id| id.as_i64().unwrap()));
        cursor = page["cursor"].as_str().unwrap().to_owned();
        if cursor == "0" {
            break;
        }
    }
    ids.sort();
    assert_eq!(ids, [2, 3, 5]);
    let mut all: Vec<i64> = serde_json::from_value(api.ok("online", json!({})).await["client_ids"].clone()).unwrap();
    all.sort();
    assert_eq!(all, [2, 3, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_membership_methods_have_imclients_redis_effects() {
    let api = Api::start().await;
    let _online = api.cluster.connect(2).await;
    api.ok("chan_join", json!({"client_id": 2, "chans": ["a", "b"]})).await;
    api.ok("chan_join", json!({"client_id": 3, "chans": ["a"]})).await;
    api.ok("chan_join", json!({"client_id": 7, "chans": ["a"]})).await;
    assert_eq!(api.cluster.hash("im_v2_wsChana").await, pairs(&[("2", "0"), ("3", "0"), ("7", "0")]));
    assert_eq!(api.cluster.hash("im_v2_wsClient2").await, pairs(&[("a", "0"), ("b", "0")]));
    assert_eq!(api.cluster.hash("im_v2_wsListChan").await, pairs(&[("a", "3"), ("b", "1")]));
    assert_eq!(api.ok("chan_members", json!({"chan": "a"})).await, json!({"client_ids": [2, 3, 7]}));
    assert_eq!(api.ok("chan_online", json!({"chan": "a"})).await, json!({"online": 3}));
    assert_eq!(api.ok("chan_online", json!({"chan": "none"})).await, json!({"online": 0}));
    assert_eq!(api.ok("client_chans", json!({"client_id": 2})).await, json!({"chans": ["a", "b"]}));
    let chans = json!({"chans": [{"chan": "a", "online": 3}, {"chan": "b", "online": 1}]});
    assert_eq!(api.ok("chans", json!({})).await, chans);

    // One client leaves channels; clients leave one channel.
    assert_eq!(api.ok("chan_leave", json!({"client_id": 2, "chans": ["b"]})).await, json!({}));
    assert_eq!(api.cluster.hash("im_v2_wsClient2").await, pairs(&[("a", "0")]));
    assert_eq!(api.ok("chan_leave", json!({"chan": "a", "client_ids": [3]})).await, json!({}));
    assert_eq!(api.cluster.hash("im_v2_wsChana").await, pairs(&[("2", "0"), ("7", "0")]));
    assert_eq!(api.cluster.hash("im_v2_wsListChan").await, pairs(&[("a", "2")]));

    // Clearing drops the offline member 7 everywhere.
    assert_eq!(api.ok("chan_clear", json!({"chan": "a"})).await, json!({}));
    assert_eq!(api.cluster.hash("im_v2_wsChana").await, pairs(&[("2", "0")]));
    assert_eq!(api.cluster.hash("im_v2_wsClient7").await, vec![]);
    assert_eq!(api.cluster.hash("im_v2_wsListChan").await, pairs(&[("a", "1")]));
    assert_eq!(api.ok("client_chans", json!({"client_id": 7})).await, json!({"chans": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_each_command_in_order_and_failures_stay_their_own() {
    let api = Api::start().await;
    let mut ws = api.cluster.connect(2).await;
    let commands = json!({"commands": [
        {"method": "chan_join", "params": {"client_id": 2, "chans": ["x"]}},
        {"method": "chan_members", "params": {"chan": "x"}},
        {"method": "nope"},
        {"method": "batch", "params": {"commands": []}},
        {"method": "chan_online", "params": {"chan": ""}},
        {"method": "chan_send", "params": {"chan": "x", "content": "in a batch"}},
        {"method": "chans"},
    ]});
    let (status, answer) = api.call("batch", &commands.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let replies = json!({"replies": [
        {"result": {}},
        {"result": {"client_ids": [2]}},
        error("unknown_method", "no API method `nope` (see /api/openapi.json)"),
        error("nested_batch", "a batch cannot hold a batch"),
        error("empty_chan", "`commands[4].params.chan` must not be an empty channel name"),
        {"result": {}},
        {"result": {"chans": [{"chan": "x", "online": 1}]}},
    ]});
    assert_eq!(answer, replies);
    assert_eq!(ws.recv_text().await, r#""in a batch""#);
    assert_eq!(api.ok("batch", json!({"commands": []})).await, json!({"replies": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_lists_every_node_with_its_lease_and_sockets() {
    let api = Api::start().await;
    let _sockets = (api.cluster.connect(2).await, api.cluster.connect(4).await, api.cluster.connect(3).await);
    let nodes = json!({"nodes": [
        {"server": api.cluster.servers[0], "alive": true, "connections": 2},
        {"server": api.cluster.servers[1], "alive": true, "connections": 1},
    ]});
    assert_eq!(api.ok("info", json!({})).await, nodes);
    // A node whose lease is gone (dead, not yet cleaned up) is not alive.
    let _: i64 = api.redis().cmd(&["DEL", &format!("im_v2_wsNodeLease{}", api.cluster.servers[1])]);
    let answer = api.ok("info", json!({})).await;
    assert_eq!(answer["nodes"][1], json!({"server": api.cluster.servers[1], "alive": false, "connections": 1}));
    // An empty body is {}.
    assert_eq!(api.call("info", "").await.0, 200);
}

/// Golden cases: a method, a body, the status and the exact answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_documented_4xx_and_changes_nothing() {
    let api = Api::start().await;
    let mut ws = api.cluster.connect(2).await;
    let cases: &[(&str, &str, u16, Value)] = &[
        (
            "send",
            "{",
            400,
            error("malformed_json", "the body is not valid JSON: EOF while parsing an object at line 1 column 1"),
        ),
        (
            "send",
            r#"{"sender":1,}"#,
            400,
            error("malformed_json", "the body is not valid JSON: key must be a string at line 1 column 13"),
        ),
        ("send", "[]", 400, error("invalid_type", "`body` must be a JSON object")),
        ("send", r#"{"receivers":[2],"content":"x"}"#, 400, error("missing_field", "`sender` is required")),
        ("send", r#"{"sender":1,"receivers":[2]}"#, 400, error("missing_field", "`content` is required")),
        (
            "send",
            r#"{"sender":"1","receivers":[2],"content":"x"}"#,
            400,
            error("invalid_id", "`sender` must be an integer client id (signed 64-bit)"),
        ),
        (
            "send",
            r#"{"sender":1,"receivers":[2.5],"content":"x"}"#,
            400,
            error("invalid_id", "`receivers[0]` must be an integer client id (signed 64-bit)"),
        ),
        (
            "send",
            r#"{"sender":1,"receivers":[18446744073709551615],"content":"x"}"#,
            400,
            error("invalid_id", "`receivers[0]` must be an integer client id (signed 64-bit)"),
        ),
        (
            "send",
            r#"{"sender":1,"receivers":2,"content":"x"}"#,
            400,
            error("invalid_type", "`receivers` must be an array of integer client ids"),
        ),
        (
            "send",
            r#"{"sender":1,"receivers":[2],"content":"x","recievers":[]}"#,
            400,
            error("unknown_field", "`recievers` is not a parameter of this method"),
        ),
        (
            "send",
            r#"{"sender":1,"receivers":[2],"content":"x","receipt":"yes"}"#,
            400,
            error("invalid_type", "`receipt` must be a boolean"),
        ),
        (
            "chan_send",
            r#"{"chan":"","content":1}"#,
            400,
            error("empty_chan", "`chan` must not be an empty channel name"),
        ),
        (
            "chan_send",
            r#"{"chan":["a"],"content":1}"#,
            400,
            error("invalid_type", "`chan` must be a channel name (a string)"),
        ),
        ("broadcast", r#"{"content":1,"durable":1}"#, 400, error("invalid_type", "`durable` must be a boolean")),
        (
            "chan_join",
            r#"{"client_id":2,"chans":["a",5]}"#,
            400,
            error("invalid_type", "`chans[1]` must be a channel name (a string)"),
        ),
        (
            "chan_join",
            r#"{"client_id":2,"chans":["a",""]}"#,
            400,
            error("empty_chan", "`chans[1]` must not be an empty channel name"),
        ),
        ("chan_leave", "{}", 400, error("missing_field", "`client_id` is required")),
        (
            "chan_leave",
            r#"{"client_id":2,"chans":["a"],"chan":"a"}"#,
            400,
            error("missing_field", "`client_ids` is required"),
        ),
        (
            "chan_leave",
            r#"{"chan":"a","client_ids":[2],"client_id":2}"#,
            400,
            error("unknown_field", "`client_id` is not a parameter of this method"),
        ),
        ("connect_url", r#"{"client_id":1,"meta":5}"#, 400, error("invalid_type", "`meta` must be a string")),
        ("online", r#"{"count":1001}"#, 400, error("invalid_value", "`count` must be between 1 and 1000")),
        (
            "online",
            r#"{"cursor":"x"}"#,
            400,
            error("invalid_value", "`cursor` must be a cursor a previous page returned (decimal digits), or \"0\""),
        ),
        ("online", r#"{"cursor":7}"#, 400, error("invalid_type", "`cursor` must be a string")),
        ("chans", r#"{"chan":"a"}"#, 400, error("unknown_field", "`chan` is not a parameter of this method")),
        ("batch", r#"{"commands":{}}"#, 400, error("invalid_type", "`commands` must be an array of commands")),
        ("batch", "{}", 400, error("missing_field", "`commands` is required")),
        // A command that is not a command fails the whole batch, before any runs.
        (
            "batch",
            r#"{"commands":[{"method":"broadcast","params":{"content":1}},7]}"#,
            400,
            error("invalid_type", "`commands[1]` must be a JSON object"),
        ),
        ("batch", r#"{"commands":[{"params":{}}]}"#, 400, error("missing_field", "`commands[0].method` is required")),
        (
            "batch",
            r#"{"commands":[{"method":"chans","param":{}}]}"#,
            400,
            error("unknown_field", "`commands[0].param` is not a parameter of this method"),
        ),
        (
            "batch",
            r#"{"commands":[{"method":"chans","params":[]}]}"#,
            400,
            error("invalid_type", "`commands[0].params` must be a JSON object"),
        ),
        ("nope", "{}", 404, error("unknown_method", "no API method `nope` (see /api/openapi.json)")),
        ("", "{}", 404, error("not_found", "no such API path (POST /api/<method>; see /api/openapi.json)")),
    ];
    for (method, body, status, answer) in cases {
        assert_eq!(&api.call(method, body).await, &(*status, answer.clone()), "{method} {body}");
    }
    let commands: Vec<Value> = (0..1001).map(|_| json!({"method": "chans"})).collect();
    let (status, answer) = api.call("batch", &json!({ "commands": commands }).to_string()).await;
    assert_eq!((status, answer), (400, error("invalid_value", "`commands` holds more than 1000 commands")));
    ws.expect_silence().await;
    assert_eq!(api.cluster.hash("im_v2_wsListChan").await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_need_one_of_the_keys_in_either_header() {
    let api = Api::start_with(|api| api.keys = ApiKeys::new(["old-key", KEY]).unwrap()).await;
    let mut ws = api.cluster.connect(2).await;
    let unauthorized =
        error("unauthorized", "missing or wrong API key: send `X-API-Key: KEY` or `Authorization: apikey KEY`");
    let broadcast = r#"{"content":"x"}"#;
    for headers in
        [&[][..], &[("X-API-Key", "wrong")], &[("X-API-Key", "test-key-")], &[("Authorization", "Bearer old-key")]]
    {
        assert_eq!(api.call_on(0, "broadcast", broadcast, headers).await, (401, unauthorized.clone()), "{headers:?}");
    }
    ws.expect_silence().await;
    for headers in [&[("X-API-Key", "old-key")][..], &[("Authorization", &format!("apikey {KEY}"))]] {
        assert_eq!(api.call_on(1, "broadcast", broadcast, headers).await, (200, json!({})), "{headers:?}");
        assert_eq!(ws.recv_text().await, r#""x""#);
    }
    // The key is checked before the method name, so unknown methods do not leak without one.
    assert_eq!(api.call_on(0, "nope", "{}", &[]).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_there_is_no_api() {
    let cluster = Cluster::start(Kind::Redis, 1).await;
    for target in ["/api/send", "/api/openapi.json", "/api/"] {
        let answer = http(cluster.addr(0), &request("POST", target, &[("X-API-Key", KEY)], "{}")).await;
        assert_eq!((answer.status, answer.body.as_str()), (404, "not found\n"), "{target}");
    }
    assert_eq!(http(cluster.addr(0), &get("/api/openapi.json")).await.status, 404);
}

/// Sends `request` as is and reads the whole answer, head included.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.expect("an answer").unwrap();
    String::from_utf8(answer).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_http_methods_get_405_with_allow() {
    let api = Api::start().await;
    for method in ["GET", "PUT", "DELETE"] {
        let answer = raw_exchange(api.cluster.addr(0), &request(method, "/api/send", &[("X-API-Key", KEY)], "")).await;
        assert_eq!(status_of(answer.as_bytes()), 405, "{answer}");
        assert!(answer.to_ascii_lowercase().contains("\r\nallow: post\r\n"), "{answer}");
        assert!(answer.ends_with(r#"{"error":{"code":"method_not_allowed","message":"POST only"}}"#), "{answer}");
    }
    let answer = raw_exchange(api.cluster.addr(0), &request("POST", "/api/openapi.json", &[], "")).await;
    assert_eq!(status_of(answer.as_bytes()), 405, "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nallow: get\r\n"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_contents_over_their_limits_get_413() {
    let api = Api::start_with(|api| api.max_body = 2 * 1024 * 1024).await;
    let mut ws = api.cluster.connect(2).await;
    // A content over ImClient's 1 MiB message limit, in a body within --api-max-body.
    let big = "x".repeat(1024 * 1024);
    let body = json!({"sender": 1, "receivers": [2], "content": big}).to_string();
    let too_large =
        error("content_too_large", "`content` is 1048578 bytes as JSON, over the 1048576-byte message limit");
    assert_eq!(api.call("send", &body).await, (413, too_large));
    let (status, answer) = api
        .call("batch", &json!({"commands": [{"method": "broadcast", "params": {"content": big}}]}).to_string())
        .await;
    let nested = error(
        "content_too_large",
        "`commands[0].params.content` is 1048578 bytes as JSON, over the 1048576-byte message limit",
    );
    assert_eq!((status, answer), (200, json!({ "replies": [nested] })));
    ws.expect_silence().await;

    let small = Api::start_with(|api| api.max_body = 100).await;
    let body = json!({"content": "y".repeat(100)}).to_string();
    let over = error("body_too_large", "the body is over the 100-byte limit (--api-max-body)");
    assert_eq!(small.call("broadcast", &body).await, (413, over.clone()));
    // Without a Content-Length (chunked), the limit holds as the body is read.
    let chunked = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-API-Key: {KEY}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let answer = raw_exchange(small.cluster.addr(0), &chunked).await;
    assert_eq!(status_of(answer.as_bytes()), 413, "{answer}");
    assert!(answer.ends_with(&over.to_string()), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gets_503() {
    let mut api = Api::start().await;
    api.cluster.redis_mut().kill();
    let unavailable = error("unavailable", "Redis is unreachable; retry later");
    assert_eq!(api.call("has_online", r#"{"client_ids":[1]}"#).await, (503, unavailable.clone()));
    assert_eq!(api.call("send", r#"{"sender":1,"receivers":[2],"content":1}"#).await, (503, unavailable.clone()));
    assert_eq!(api.call("info", "{}").await, (503, unavailable.clone()));
    let (status, answer) = api.call("batch", r#"{"commands":[{"method":"chans"}]}"#).await;
    assert_eq!((status, answer), (200, json!({"replies": [unavailable]})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_without_a_key_and_names_every_method() {
    let api = Api::start().await;
    let answer = http(api.cluster.addr(1), &get("/api/openapi.json")).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, OPENAPI));
    let doc = api.spec.doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    paths.sort();
    let mut want: Vec<String> = METHODS.iter().map(|m| format!("/api/{m}")).collect();
    want.push("/api/openapi.json".to_owned());
    want.sort();
    assert_eq!(paths, want);
}

/// Reads one HTTP answer (head and a `Content-Length` body) off a kept-alive connection;
/// `buf` keeps what was read past it (the next pipelined answer may come in the same read).
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    let mut read_more = async |buf: &mut Vec<u8>| {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        read_more(buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize =
        head.split("content-length: ").nth(1).and_then(|v| v.split("\r\n").next()?.parse().ok()).unwrap();
    while buf.len() < head_end + length {
        read_more(buf).await;
    }
    let answer = (status_of(buf), String::from_utf8(buf[head_end..head_end + length].to_vec()).unwrap());
    buf.drain(..head_end + length);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_connection_carries_many_calls() {
    let api = Api::start().await;
    let mut ws = api.cluster.connect(2).await;
    let mut stream = TcpStream::connect(api.cluster.addr(0)).await.unwrap();
    let mut buf = Vec::new();
    for n in 0..3 {
        let body = json!({"sender": 1, "receivers": [2], "content": n}).to_string();
        let call = format!(
            "POST /api/send HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(call.as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut stream, &mut buf).await, (200, "{}".to_owned()));
        assert_eq!(ws.recv_text().await, n.to_string());
    }
    // Pipelined requests on it are answered in order too.
    let info = format!("POST /api/chans HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nContent-Length: 2\r\n\r\n{{}}");
    stream.write_all(format!("{info}{info}").as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut stream, &mut buf).await, (200, r#"{"chans":[]}"#.to_owned()));
    assert_eq!(read_answer(&mut stream, &mut buf).await, (200, r#"{"chans":[]}"#.to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_listen_serves_the_api_apart_from_the_public_port() {
    let api = Api::start_with(|api| api.listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let private = api.cluster.nodes[0].api_addr().expect("its own listener");
    assert_eq!(post(private, "info", &[("X-API-Key", KEY)], "{}").await.0, 200);
    let public = http(api.cluster.addr(0), &request("POST", "/api/info", &[("X-API-Key", KEY)], "{}")).await;
    assert_eq!((public.status, public.body.as_str()), (404, "not found\n"));
    // The node's listener still serves WebSockets.
    let _ws = api.cluster.connect(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_counted_by_method_and_status_with_their_latency() {
    let api = Api::start().await;
    api.ok("info", json!({})).await;
    api.ok("info", json!({})).await;
    api.call("send", "{").await;
    api.call_on(0, "chans", "{}", &[]).await;
    api.call("nope", "{}").await;
    let text = api.cluster.metrics(0).await;
    for (series, want) in [
        ("freeim_api_calls_total{method=\"info\",status=\"200\"}", 2),
        ("freeim_api_calls_total{method=\"send\",status=\"400\"}", 1),
        ("freeim_api_calls_total{method=\"chans\",status=\"401\"}", 1),
        ("freeim_api_calls_total{method=\"unknown\",status=\"404\"}", 1),
        ("freeim_api_call_duration_seconds_count{method=\"info\"}", 2),
        ("freeim_api_call_duration_seconds_bucket{method=\"info\",le=\"+Inf\"}", 2),
    ] {
        assert_eq!(metric(&text, series), want, "{series}");
    }
    assert!(text.contains("# TYPE freeim_api_call_duration_seconds histogram"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_in_one_serves_the_api_and_prints_how_to_call_it() {
    let (web, gateway) = (free_addr(), free_addr());
    let mut freeim = FreeimProcess::spawn(&["--listen", &web, "--gateway", &gateway], &[]);
    freeim.wait_listening(&web).await;
    let stdout = freeim.stdout_text();
    let line = stdout.lines().find(|l| l.starts_with("HTTP API: curl")).unwrap_or_else(|| panic!("{stdout}"));
    let key = line.split("X-API-Key: ").nth(1).and_then(|rest| rest.split('\'').next()).unwrap();
    assert_eq!(
        line,
        format!("HTTP API: curl -H 'X-API-Key: {key}' -d '{{\"content\":\"hello\"}}' http://{gateway}/api/broadcast")
    );
    let answer = post(&gateway, "info", &[("X-API-Key", key)], "").await;
    assert_eq!(answer, (200, json!({"nodes": [{"server": gateway, "alive": true, "connections": 0}]})));
    assert_eq!(post(&gateway, "info", &[("X-API-Key", "guess")], "").await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeim_server_takes_keys_from_flags_and_the_environment_and_never_logs_them() {
    let redis = RedisServer::start();
    let node = free_addr();
    let (url, flag_keys, env_key) = (redis.url(), "flag-key-1,flag-key-2", "env-key-3");
    let server = ["server", "--redis", url.as_str(), "--server", node.as_str(), "--servers", node.as_str()];
    // The flag wins over the variable, as for every setting.
    let args: Vec<&str> = server.iter().copied().chain(["--api-key", flag_keys]).collect();
    let freeim = FreeimProcess::start(&args, &[("RUST_LOG", "debug"), ("FREEIM_API_KEY", env_key)], &node, 200).await;
    for (key, status) in [("flag-key-1", 200), ("flag-key-2", 200), (env_key, 401), ("wrong-key-4", 401)] {
        assert_eq!(post(&node, "info", &[("X-API-Key", key)], "{}").await.0, status, "{key}");
    }
    assert_eq!(post(&node, "send", &[("Authorization", "apikey flag-key-1")], "{").await.0, 400);
    freeim.terminate();
    let stderr = freeim.stderr_text();
    assert!(stderr.contains("API call refused"), "refusals are logged:\n{stderr}");
    for secret in ["flag-key", "env-key", "wrong-key"] {
        assert!(!stderr.contains(secret), "{secret} in the log:\n{stderr}");
    }
    let env_only = run(&server, &[("FREEIM_API_KEY", "a b")], WAIT);
    assert_eq!(env_only.code, Some(2), "{env_only:?}");
    assert!(env_only.stderr.contains("--api-key: each key must be printable ASCII"), "{}", env_only.stderr);
    assert!(!env_only.stderr.contains("a b"), "{}", env_only.stderr);
}

/// A batch is pipelined: with Redis frozen (every reply times out after 5 s), its commands
/// time out together, not one after the other (4 × 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_commands_are_pipelined_not_one_round_trip_each() {
    let api = Api::start().await;
    let commands: Vec<Value> =
        ["a", "b", "c", "d"].map(|c| json!({"method": "chan_online", "params": {"chan": c}})).into();
    let body = json!({ "commands": commands }).to_string();
    api.redis().pause();
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(api.cluster.addr(0)).await.unwrap();
    stream.write_all(request("POST", "/api/batch", &[("X-API-Key", KEY)], &body).as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    let elapsed = started.elapsed();
    api.redis().resume();
    read.expect("an answer").unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let unavailable = error("unavailable", "Redis is unreachable; retry later");
    assert!(
        answer.ends_with(&json!({"replies": [&unavailable, &unavailable, &unavailable, &unavailable]}).to_string()),
        "{answer}"
    );
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}: one round trip each");
}
