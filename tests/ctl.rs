//! `freeim ctl`, the operator CLI, run as a process against a real Redis.

mod common;
use common::*;

const SERVERS: &str = "127.0.0.1:6001,127.0.0.1:6002";

/// `freeim ctl` on `redis` with `args` after the common flags; it must succeed.
fn ctl(redis: &RedisServer, args: &[&str]) -> Finished {
    let url = redis.url();
    let all: Vec<&str> = ["ctl", "--redis", &url, "--servers", SERVERS].iter().chain(args).copied().collect();
    let finished = run(&all, &[], WAIT);
    assert!(finished.success(), "ctl {args:?}: {}", finished.stderr);
    finished
}

/// What [`ctl`] printed.
fn stdout(redis: &RedisServer, args: &[&str]) -> String {
    ctl(redis, args).stdout
}

#[test]
fn membership_commands_edit_and_read_redis() {
    let redis = RedisServer::start();
    assert_eq!(stdout(&redis, &["join", "5", "room"]), "5 joined room\n");
    stdout(&redis, &["join", "6", "room"]);
    stdout(&redis, &["join", "6", "lobby"]);
    assert_eq!(redis.hash("im_v2_wsListChan"), [("lobby".into(), "1".into()), ("room".into(), "2".into())]);
    assert_eq!(stdout(&redis, &["chans"]), "lobby\t1\nroom\t2\n");
    assert_eq!(
        stdout(&redis, &["--json", "chans"]),
        "[{\"chan\":\"lobby\",\"members\":1},{\"chan\":\"room\",\"members\":2}]\n"
    );
    assert_eq!(stdout(&redis, &["chans", "--client", "6"]), "lobby\nroom\n");
    assert_eq!(stdout(&redis, &["members", "room"]), "5\n6\n");
    assert_eq!(stdout(&redis, &["leave", "5", "room"]), "5 left room\n");
    assert_eq!(stdout(&redis, &["--json", "members", "room"]), "[6]\n");
    assert_eq!(redis.hash("im_v2_wsClient5"), []);
}

#[test]
fn online_lists_and_checks_presence() {
    let redis = RedisServer::start();
    let _: i64 = redis.cmd(&["HSET", "im_v2_wsOnline", "7", "2", "3", "1"]);
    assert_eq!(stdout(&redis, &["online"]), "3\n7\n");
    assert_eq!(stdout(&redis, &["online", "7", "8"]), "7\tonline\n8\toffline\n");
    assert_eq!(stdout(&redis, &["--json", "online", "8"]), "[{\"client\":8,\"online\":false}]\n");
}

#[test]
fn global_flags_go_after_the_command_too() {
    let redis = RedisServer::start();
    let _: i64 = redis.cmd(&["HSET", "im_v2_wsOnline", "7", "2", "3", "1"]);
    assert_eq!(stdout(&redis, &["online", "--json"]), "[3,7]\n");
    assert_eq!(
        stdout(&redis, &["online", "7", "8", "--json"]),
        "[{\"client\":7,\"online\":true},{\"client\":8,\"online\":false}]\n"
    );

    let _: i64 = redis.cmd(&["HSET", "im_v2_chatOnline", "5", "1"]);
    let url = redis.url();
    let after = |args: &[&str]| {
        let all: Vec<&str> = ["ctl"]
            .iter()
            .chain(args)
            .chain(&["--redis", &url, "--servers", SERVERS, "--path", "/chat"])
            .copied()
            .collect();
        let finished = run(&all, &[], WAIT);
        assert!(finished.success(), "ctl {args:?}: {}", finished.stderr);
        finished.stdout
    };
    assert_eq!(after(&["online", "5", "6"]), "5\tonline\n6\toffline\n");
    let url = after(&["connect-url", "3", "--scheme", "wss"]);
    assert!(url.starts_with("wss://127.0.0.1:6002/chat?token="), "{url}");
}

#[test]
fn connect_url_stores_a_token() {
    let redis = RedisServer::start();
    let url = stdout(&redis, &["connect-url", "3", "--meta", "ops"]);
    let token = url.trim().strip_prefix("ws://127.0.0.1:6002/ws?token=").expect(&url);
    let value: String = redis.cmd(&["GET", &format!("im_v2_wsToken{token}")]);
    assert_eq!(value, r#"{"Item1":3,"Item2":"ops"}"#);
}

#[test]
fn sends_publish_exact_payloads() {
    let redis = RedisServer::start();
    let mut pubsub = redis.conn();
    let mut pubsub = pubsub.as_pubsub();
    pubsub.psubscribe("im_v2_wsServer*").unwrap();
    ctl(&redis, &["send", "--from", "1", "--to", "2,3", "--receipt", "hi"]);
    ctl(&redis, &["send", "--to", "4", "--raw", r#"{"a":[1,2]}"#]);
    ctl(&redis, &["chan-send", "room", "yo"]);
    ctl(&redis, &["broadcast", "all"]);
    ctl(&redis, &["kick", "9"]);
    let a = "im_v2_wsServer127.0.0.1:6001";
    let b = "im_v2_wsServer127.0.0.1:6002";
    let want = [
        (a, r#"{"Item1":1,"Item2":[2],"Item3":"\"hi\"","Item4":true}"#),
        (b, r#"{"Item1":1,"Item2":[3],"Item3":"\"hi\"","Item4":true}"#),
        (a, r#"{"Item1":0,"Item2":[4],"Item3":"{\"a\":[1,2]}","Item4":false}"#),
        (a, r#"__FreeIM__(ChanMessage){"Item1":0,"Item2":"room","Item3":"\"yo\""}"#),
        (b, r#"__FreeIM__(ChanMessage){"Item1":0,"Item2":"room","Item3":"\"yo\""}"#),
        (a, r#"__FreeIM__(ChanMessage){"Item1":0,"Item2":null,"Item3":"\"all\""}"#),
        (b, r#"__FreeIM__(ChanMessage){"Item1":0,"Item2":null,"Item3":"\"all\""}"#),
        (b, "__FreeIM__(ForceOffline)9"),
    ];
    for (channel, payload) in want {
        let msg = pubsub.get_message().unwrap();
        assert_eq!((msg.get_channel_name(), msg.get_payload::<String>().unwrap().as_str()), (channel, payload));
    }
}

#[tokio::test]
async fn events_tails_presence_as_json_lines() {
    let redis = RedisServer::start();
    let tail = FreeimProcess::spawn(&["ctl", "--redis", &redis.url(), "--servers", SERVERS, "--json", "events"], &[]);
    // Publish until the tail has subscribed, then wait for it to print the event.
    let publisher = std::thread::spawn({
        let url = redis.url();
        move || {
            let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
            for _ in 0..200 {
                let receivers: i64 = redis::cmd("PUBLISH")
                    .arg("evt_im_v2_wsOffline")
                    .arg(r#"{"Item1":12,"Item2":"x"}"#)
                    .query(&mut conn)
                    .unwrap();
                if receivers > 0 {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            panic!("ctl events never subscribed");
        }
    });
    publisher.join().unwrap();
    eventually(None, || async { tail.stdout_text().contains('\n') }).await;
    let printed = tail.stdout_text();
    assert_eq!(printed.lines().next().unwrap(), r#"{"client":12,"event":"offline","meta":"x"}"#);
}

#[test]
fn bad_arguments_fail_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["ctl", "--redis", "redis://127.0.0.1:1/0", "--servers", SERVERS, "kick", "abc"],
            "error: invalid value 'abc'",
        ),
        (&["ctl", "--redis", "nonsense", "--servers", SERVERS, "online"], "error: "),
        (
            &["ctl", "--redis", "redis://127.0.0.1:1/0", "--servers", SERVERS, "send", "--to", "1", "--raw", "{"],
            "error: --raw: MESSAGE is not JSON",
        ),
    ];
    for (args, want) in cases {
        let Finished { code, stderr, .. } = run(args, &[], WAIT);
        assert!(code != Some(0), "{args:?} should fail");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(stderr.starts_with(want), "{args:?}: {stderr:?}");
    }
}
