//! Durable delivery across the failures it exists for (issue 13): a node killed mid-stream, a
//! Redis restarted from its append-only file, a storm of resumes racing live sends, a node
//! restarted gracefully. Every message carries its sequence number, and each test checks the
//! exact messages a socket got against what was sent: nothing lost, nothing twice, in order.

mod common;
use common::*;
use freeim::gateway::{Gateway, GatewayConfig};
use freeim::{ImClient, ImClientOptions};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Messages streamed through the node that is killed.
const STREAM: u64 = 10_000;
/// Messages the client has got when the node is killed.
const KILL_AFTER: usize = 2_500;
/// Lines the stream's feeder writes before it pauses for [`FEED_PAUSE`]: the stream lasts
/// seconds, so the kill, the restart and the resume all happen while it flows.
const FEED_CHUNK: u64 = 20;
const FEED_PAUSE: Duration = Duration::from_millis(10);
/// Durable sockets of the resume storm.
const STORM_SOCKETS: i64 = 1_000;
/// Concurrent senders of the resume storm; each owns the clients `id % STORM_SENDERS`.
const STORM_SENDERS: i64 = 8;
/// Each storm sender's pause between sends: at most 2,000 sends per second in all.
const STORM_SEND_EVERY: Duration = Duration::from_millis(4);

/// What one durable socket got over its connections, checked frame by frame against the
/// wire's rules: message offsets strictly increase, a position frame never goes back, and
/// every message is a logged one.
struct Received {
    epoch: String,
    /// The client's position: the largest `o` of the message and position frames it got.
    position: u64,
    /// The messages' contents with their offsets, in arrival order.
    messages: Vec<(u64, Value)>,
}

impl Received {
    /// From the hello of a socket opened with `resume=` (not recovered, at the top).
    fn new(hello: &Value) -> Self {
        assert_eq!(hello["recovered"], false, "{hello}");
        Received { epoch: hello["e"].as_str().unwrap().to_owned(), position: offset(hello), messages: Vec::new() }
    }

    /// The `resume` value of the position.
    fn resume(&self) -> String {
        format!("{}:{}", self.epoch, self.position)
    }

    /// Takes the hello of a resume from [`Received::resume`]: it must have recovered.
    fn resumed(&mut self, hello: &Value) {
        assert_eq!((&hello["recovered"], hello["e"].as_str()), (&json!(true), Some(&*self.epoch)), "{hello}");
        assert!(offset(hello) >= self.position, "the top went back: {hello} after {}", self.position);
    }

    /// Takes one text frame.
    fn take(&mut self, text: &str) {
        let frame: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let o = offset(&frame);
        match frame["t"].as_str() {
            Some("pos") => assert!(o >= self.position, "position {o} after {}", self.position),
            None => {
                assert!(o > self.position, "offset {o} after {}: {text}", self.position);
                self.messages.push((o, frame["d"].clone()));
            }
            Some(_) => panic!("unexpected frame {text}"),
        }
        self.position = o;
    }

    /// Reads one frame into `self`, within `wait`: `false` when nothing came.
    async fn read(&mut self, ws: &mut Ws, wait: Duration) -> bool {
        match ws.next_or_end(wait).await {
            Ok(Some(Message::Text(text))) => self.take(&text),
            Ok(Some(Message::Ping(_) | Message::Pong(_))) => {}
            Ok(Some(other)) => panic!("unexpected frame {other:?}"),
            Ok(None) => return false,
            Err(end) => panic!("the durable socket ended: {end:?}"),
        }
        true
    }

    /// Reads until `done` holds, each frame within `wait`; `false` if one did not come.
    async fn read_until(&mut self, ws: &mut Ws, wait: Duration, done: impl Fn(&Self) -> bool) -> bool {
        while !done(self) {
            if !self.read(ws, wait).await {
                return false;
            }
        }
        true
    }

    /// Reads for `quiet` more: anything that comes is taken (a duplicate shows then).
    async fn read_quiet(&mut self, ws: &mut Ws, quiet: Duration) {
        let until = Instant::now() + quiet;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            self.read(ws, left).await;
        }
    }

    /// The sequence numbers of the messages (contents `"<n>"` or `{"n": <n>, …}`).
    fn numbers(&self) -> Vec<u64> {
        self.messages.iter().map(|(_, d)| number(d)).collect()
    }
}

fn number(content: &Value) -> u64 {
    match content {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a sequence number: {content}")),
        _ => content["n"].as_u64().unwrap_or_else(|| panic!("not a sequence number: {content}")),
    }
}

fn offset(frame: &Value) -> u64 {
    frame["o"].as_u64().unwrap_or_else(|| panic!("no offset in {frame}"))
}

/// Connects a durable socket for `id` with `resume=<resume>` and returns it with its hello;
/// retries while the node is not there yet or its log is not open (503), for [`RECOVERY`].
async fn connect_durable(im: &ImClient, id: i64, resume: &str) -> (Ws, Value) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let url = format!("{}&resume={resume}", im.prev_connect_server(id, None).await.unwrap());
        let why = match tokio::time::timeout(WAIT, Ws::connect(&url)).await {
            Ok(Ok(mut ws)) => {
                let text = ws.recv_text().await;
                let hello: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(hello["t"], "hello", "{hello}");
                return (ws, hello);
            }
            Ok(Err(status)) => format!("HTTP {status}"),
            Err(_) => "no answer".to_owned(),
        };
        assert!(Instant::now() < deadline, "client {id} could not connect: {why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `freeim server` process for `addr` of `servers` on `redis`, once healthy.
async fn start_node(redis: &RedisServer, addr: &str, servers: &[String]) -> FreeimProcess {
    let args = ["server", "--redis", &redis.url(), "--server", addr, "--servers", &servers.join(",")];
    FreeimProcess::start(&args, &[("RUST_LOG", "warn")], addr, 200).await
}

/// A Redis, one `freeim server` node on it (alone in its server list) and a business client
/// of the two: the Redis, the node's address, the node and the client.
async fn one_node() -> (RedisServer, String, FreeimProcess, ImClient) {
    let redis = RedisServer::start();
    let addr = free_addr();
    let servers = vec![addr.clone()];
    let node = start_node(&redis, &addr, &servers).await;
    let im = ImClient::connect(&redis.url(), ImClientOptions::new(servers)).unwrap();
    (redis, addr, node, im)
}

/// `freeim ctl send --durable --to <to> -` fed the lines `0` … `STREAM - 1` by a thread, in
/// chunks of [`FEED_CHUNK`]; its stderr goes to `stderr`.
fn durable_stream(redis: &RedisServer, servers: &[String], to: i64, stderr: &std::path::Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_freeim"))
        .args(["ctl", "--redis", &redis.url(), "--servers", &servers.join(",")])
        .args(["send", "--durable", "--to", &to.to_string(), "-"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        for n in 0..STREAM {
            writeln!(stdin, "{n}").unwrap();
            if n % FEED_CHUNK == FEED_CHUNK - 1 {
                std::thread::sleep(FEED_PAUSE);
            }
        }
    });
    child
}

/// Waits (polling, for [`RECOVERY`]) until `child` exits; whether it exited with 0.
async fn exited_ok(child: &mut Child) -> bool {
    let deadline = Instant::now() + RECOVERY;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        assert!(Instant::now() < deadline, "the sender did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text frames `ws` still reads until its connection ends (its node was killed).
async fn texts_until_end(ws: &mut Ws) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        match ws.next_or_end(WAIT).await {
            Ok(Some(Message::Text(text))) => texts.push(text.to_string()),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the killed node's socket did not end"),
            Err(_) => return texts,
        }
    }
}

/// Lost and duplicated messages among `received`, of the `sent` numbered `0..sent`.
fn losses(received: &[u64], sent: u64) -> (u64, u64) {
    let distinct: HashSet<u64> = received.iter().copied().filter(|n| *n < sent).collect();
    (sent - distinct.len() as u64, received.len() as u64 - distinct.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let (redis, addr, mut node, im) = one_node().await;
    let servers = vec![addr.clone()];
    let (mut ws, hello) = connect_durable(&im, 1, "").await;
    let mut got = Received::new(&hello);
    let stderr = std::env::temp_dir().join(format!("freeim-durable-stream-{}.stderr", std::process::id()));
    let mut sender = durable_stream(&redis, &servers, 1, &stderr);

    assert!(got.read_until(&mut ws, RECOVERY, |g| g.messages.len() >= KILL_AFTER).await, "the stream stalled");
    node.kill();
    // What the client's kernel already had is still read, up to the end of the connection.
    for text in texts_until_end(&mut ws).await {
        got.take(&text);
    }
    let (before_kill, position) = (got.messages.len(), got.position);
    let node = start_node(&redis, &addr, &servers).await;
    let (mut ws, hello) = connect_durable(&im, 1, &got.resume()).await;
    got.resumed(&hello);
    let missed = offset(&hello) - position;

    // The stream goes on; all of it must arrive (each frame within RECOVERY), then nothing.
    got.read_until(&mut ws, RECOVERY, |g| g.messages.len() as u64 >= STREAM).await;
    let sent_all = exited_ok(&mut sender).await;
    got.read_quiet(&mut ws, QUIET).await;
    let received = got.numbers();
    let (lost, duplicated) = losses(&received, STREAM);
    println!(
        "durable kill -9: {STREAM} sent, {} received, {lost} lost, {duplicated} duplicated \
         ({before_kill} before the kill, {missed} logged between the kill and the resume, {:.1} s)",
        received.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(sent_all, "freeim ctl send failed: {}", std::fs::read_to_string(&stderr).unwrap_or_default());
    let _ = std::fs::remove_file(&stderr);
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(received, (0..STREAM).collect::<Vec<_>>(), "in order");
    assert!(missed > 0, "the kill was not mid-stream");
    drop((ws, node));
}

/// One durable send of [`sends_with_retries`]: sequence number and attempt.
type Attempt = (u64, u32);

/// How long Redis stays down in each outage.
const REDIS_DOWN: Duration = Duration::from_secs(1);
/// Most outages of one test: Redis goes down again until a send was accepted while the
/// node was not subscribed yet (the node resubscribes within ~0.4 s, the sender within
/// ~40 ms, so one outage nearly always has some).
const OUTAGES: usize = 3;

/// Sends `{"n": n, "try": t}` to `to` durably, `n` = 0, 1, …, until `stop`, counting the
/// accepted ones in `count`. A send that fails (or takes over [`WAIT`]) is tried again with
/// the next `t`, on a new connection (so the sender is back as soon as Redis is). Returns the
/// accepted attempts in order, and the failed ones (which may still have been logged, if
/// Redis died after its write).
async fn sends_with_retries(
    url: String,
    servers: Vec<String>,
    to: i64,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> (Vec<Attempt>, HashSet<Attempt>) {
    let connect = || ImClient::connect(&url, ImClientOptions::new(servers.clone())).unwrap();
    let mut im = connect();
    let (mut accepted, mut failed) = (Vec::new(), HashSet::new());
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut attempt = 0;
        loop {
            let content = json!({"n": n, "try": attempt});
            let (durable, receivers) = (im.durable(), [to]);
            let send = durable.send_message(0, &receivers, &content, false);
            if let Ok(Ok(())) = tokio::time::timeout(WAIT, send).await {
                break;
            }
            failed.insert((n, attempt));
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            im = connect();
        }
        accepted.push((n, attempt));
        count.fetch_add(1, Ordering::Relaxed);
        n += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (accepted, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_socket_gets_every_message_across_a_redis_restart_from_its_aof() {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("freeim-durable-aof-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = TestBackend::Redis(RedisServer::start_persistent(&dir));
    let mut cluster = Cluster::start_on(store, 1, |_| {}).await;
    let (mut ws, hello) = connect_durable(&cluster.im, 1, "").await;
    let mut got = Received::new(&hello);
    let (stop, count) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let sends = sends_with_retries(cluster.redis().url(), cluster.servers.clone(), 1, stop.clone(), count.clone());
    let sender = tokio::spawn(sends);

    let (mut outages, mut unsubscribed, mut before_kill) = (0, 0, 0);
    while outages < OUTAGES && unsubscribed == 0 {
        let flowing = got.messages.len() + 500;
        assert!(got.read_until(&mut ws, RECOVERY, |g| g.messages.len() >= flowing).await, "the sends stalled");
        cluster.redis_mut().kill();
        before_kill = before_kill.max(got.messages.len());
        tokio::time::sleep(REDIS_DOWN).await;
        cluster.redis_mut().restart(Some(&dir));
        // Sends accepted while the node is not subscribed again reach it only by its gap fill.
        let accepted_at_restart = count.load(Ordering::Relaxed);
        eventually(Some(RECOVERY), || async { cluster.nodes[0].is_live() }).await;
        unsubscribed += count.load(Ordering::Relaxed) - accepted_at_restart;
        outages += 1;
    }
    // The socket stays connected throughout; messages flow again once the node is back.
    let flowing = got.messages.len() + 500;
    assert!(got.read_until(&mut ws, RECOVERY, |g| g.messages.len() >= flowing).await, "no sends after the restart");
    stop.store(true, Ordering::Relaxed);
    let (accepted, failed) = sender.await.unwrap();
    let all_accepted = |g: &Received| {
        let last = accepted.last().unwrap();
        g.messages.iter().any(|(_, d)| (number(d), d["try"].as_u64().unwrap() as u32) == *last)
    };
    got.read_until(&mut ws, RECOVERY, all_accepted).await;
    got.read_quiet(&mut ws, QUIET).await;

    let received: Vec<Attempt> =
        got.messages.iter().map(|(_, d)| (number(d), d["try"].as_u64().unwrap() as u32)).collect();
    let distinct: HashSet<Attempt> = received.iter().copied().collect();
    let accepted_set: HashSet<Attempt> = accepted.iter().copied().collect();
    let lost = accepted.iter().filter(|a| !distinct.contains(a)).count();
    let duplicated = received.len() - distinct.len();
    // Sends that failed on the sender's side but were logged (Redis died after its write).
    let extra: Vec<&Attempt> = received.iter().filter(|a| !accepted_set.contains(a)).collect();
    let gap_fills = cluster.metric(0, "freeim_log_gap_fills_total").await;
    println!(
        "durable redis restart (AOF): {} accepted ({} failed sends retried), {} received, {lost} lost, \
         {duplicated} duplicated, {} logged though failed; {outages} outage(s), {before_kill} received before the \
         last kill, {unsubscribed} accepted while the node was unsubscribed, {gap_fills} gap fills ({:.1} s)",
        accepted.len(),
        failed.len(),
        received.len(),
        extra.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert!(extra.iter().all(|a| failed.contains(a)), "messages nobody sent: {extra:?}");
    let in_order: Vec<Attempt> = received.iter().copied().filter(|a| accepted_set.contains(a)).collect();
    assert_eq!(in_order, accepted, "in order");
    assert!(!failed.is_empty(), "no send failed: Redis was not down while sending");
    assert!(unsubscribed > 0, "no send was accepted while the node was unsubscribed: the gap fill went untested");
    cluster.shutdown_after(ws).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Phases of the resume storm, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Connected,
    Away,
    Resume,
    Done,
}

/// What the storm's sockets share: the phase, how many got their hello (first connection
/// and resume), and, once the sends are over, what each client was sent.
struct Storm {
    phase: watch::Receiver<Phase>,
    hellos: AtomicUsize,
    resumes: AtomicUsize,
    sent: OnceLock<HashMap<i64, Vec<u64>>>,
}

/// One socket of the storm: connects, reads until `Away`, drops the connection, resumes at
/// `Resume` from its position, reads until it has every message sent to it, then for
/// [`QUIET`] more.
async fn follow(im: ImClient, id: i64, storm: Arc<Storm>) -> Received {
    let mut phase = storm.phase.clone();
    let (mut ws, hello) = connect_durable(&im, id, "").await;
    let mut got = Received::new(&hello);
    storm.hellos.fetch_add(1, Ordering::Relaxed);
    while *phase.borrow_and_update() < Phase::Away {
        tokio::select! {
            _ = phase.changed() => {}
            _ = got.read(&mut ws, RECOVERY) => {}
        }
    }
    drop(ws);
    phase.wait_for(|p| *p >= Phase::Resume).await.unwrap();
    let (mut ws, hello) = connect_durable(&im, id, &got.resume()).await;
    got.resumed(&hello);
    storm.resumes.fetch_add(1, Ordering::Relaxed);
    while *phase.borrow_and_update() < Phase::Done {
        tokio::select! {
            _ = phase.changed() => {}
            _ = got.read(&mut ws, RECOVERY) => {}
        }
    }
    let want = storm.sent.get().unwrap().get(&id).map_or(0, Vec::len);
    got.read_until(&mut ws, RECOVERY, |g| g.messages.len() >= want).await;
    got.read_quiet(&mut ws, QUIET).await;
    ws.close().await;
    got
}

/// Sender `s` of the storm: durable messages numbered `s * 10^6 + k`, each to two of its
/// clients (`id % STORM_SENDERS == s`), until `stop`. What each client was sent, in order.
async fn storm_sender(im: ImClient, s: i64, stop: Arc<AtomicBool>) -> HashMap<i64, Vec<u64>> {
    let clients: Vec<i64> = (1..=STORM_SOCKETS).filter(|id| id % STORM_SENDERS == s).collect();
    let mut sent: HashMap<i64, Vec<u64>> = HashMap::new();
    // Paced, so that the sockets' gap stays within what a resume recovers (20,000 offsets
    // per node; unpaced, an optimised build sends more than that while they are away).
    let mut pace = tokio::time::interval(STORM_SEND_EVERY);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        let n = s as u64 * 1_000_000 + k as u64;
        let mut to = vec![clients[k % clients.len()], clients[(k * 7 + 3) % clients.len()]];
        to.dedup();
        im.durable().send_message(0, &to, &json!({"n": n}), false).await.unwrap();
        to.iter().for_each(|id| sent.entry(*id).or_default().push(n));
        k += 1;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_resumes_racing_live_sends_lose_and_duplicate_nothing() {
    let started = Instant::now();
    let cluster = Cluster::start(Kind::Redis, 2).await;
    let (phase_tx, phase) = watch::channel(Phase::Connected);
    let storm = Arc::new(Storm { phase, hellos: 0.into(), resumes: 0.into(), sent: OnceLock::new() });
    let sockets: Vec<_> =
        (1..=STORM_SOCKETS).map(|id| (id, tokio::spawn(follow(cluster.im.clone(), id, storm.clone())))).collect();
    eventually(Some(RECOVERY), || async { storm.hellos.load(Ordering::Relaxed) == STORM_SOCKETS as usize }).await;
    let connected_in = started.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> =
        (0..STORM_SENDERS).map(|s| tokio::spawn(storm_sender(cluster.im.clone(), s, stop.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    phase_tx.send(Phase::Away).unwrap();
    eventually(Some(RECOVERY), || async { cluster.nodes.iter().all(|n| n.connections() == 0) }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resume_started = Instant::now();
    phase_tx.send(Phase::Resume).unwrap();
    eventually(Some(RECOVERY), || async { storm.resumes.load(Ordering::Relaxed) == STORM_SOCKETS as usize }).await;
    let resumed_in = resume_started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent: HashMap<i64, Vec<u64>> = HashMap::new();
    for sender in senders {
        sent.extend(sender.await.unwrap());
    }
    let messages: usize = sent.values().map(Vec::len).sum();
    storm.sent.set(sent).unwrap();
    phase_tx.send(Phase::Done).unwrap();

    let (mut lost, mut duplicated, mut wrong) = (0, 0, Vec::new());
    for (id, socket) in sockets {
        let got = socket.await.unwrap();
        let want = storm.sent.get().unwrap().get(&id).cloned().unwrap_or_default();
        let received = got.numbers();
        let distinct: HashSet<u64> = received.iter().copied().collect();
        lost += want.iter().filter(|n| !distinct.contains(n)).count();
        duplicated += received.len() - distinct.len();
        if received != want {
            wrong.push(id);
        }
    }
    let (mut replayed, mut recovered) = (0, Vec::new());
    for i in 0..2 {
        replayed += cluster.metric(i, "freeim_replayed_frames_total").await;
        recovered.push(cluster.metric(i, "freeim_resumes_total{result=\"recovered\"}").await);
    }
    println!(
        "durable resume storm: {STORM_SOCKETS} sockets on 2 nodes, {messages} deliveries sent, {lost} lost, \
         {duplicated} duplicated, {} sockets wrong; {replayed} replayed; connected in {:.1} s, resumed in {:.1} s, \
         {:.1} s in all",
        wrong.len(),
        connected_in.as_secs_f64(),
        resumed_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(wrong, Vec::<i64>::new(), "sockets whose messages differ from what was sent to them");
    assert_eq!(recovered, [STORM_SOCKETS as u64 / 2; 2], "recovered resumes per node");
    assert!(replayed > 0, "nothing was missed while away");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_resumes_from_the_log_in_redis() {
    let mut cluster = Cluster::start(Kind::Redis, 2).await;
    let durable = cluster.im.durable();
    let (mut ws, hello) = connect_durable(&cluster.im, 2, "").await;
    let mut got = Received::new(&hello);
    let top = got.position;
    durable.send_message(1, &[2], "before", false).await.unwrap();
    assert!(got.read_until(&mut ws, WAIT, |g| !g.messages.is_empty()).await);
    ws.close().await;
    let stopped = cluster.nodes.remove(0);
    assert_eq!(stopped.shutdown().await, 0);

    // While no node serves client 2 (nor anyone of node 0):
    let log = cluster.im.keys().log(&cluster.servers[0]);
    durable.send_message(1, &[2], "missed 1", false).await.unwrap();
    durable.send_message(1, &[4], "not for 2", false).await.unwrap();
    durable.send_message(1, &[3], "other node", false).await.unwrap();
    durable.send_broadcast_message("to all").await.unwrap();
    cluster.im.send_message(1, &[2], "not durable", false).await.unwrap();
    durable.send_message(1, &[2], "missed 2", false).await.unwrap();
    // Node 0's log took them though nobody was subscribed: before, missed 1, not for 2, to
    // all, missed 2.
    assert_eq!(cluster.redis().cmd::<u64>(&["XLEN", &log]), top + 5);

    let names: Vec<&str> = cluster.servers.iter().map(String::as_str).collect();
    let config = GatewayConfig::new(names[0], &names).unwrap();
    let node = Gateway::start(config, cluster.backend()).await.expect("node 0 starts again on its address");
    cluster.nodes.insert(0, node);
    cluster.wait_live().await;
    let (mut ws, hello) = connect_durable(&cluster.im, 2, &got.resume()).await;
    got.resumed(&hello);
    assert_eq!(offset(&hello), top + 5);
    let o = |n: u64| top + n;
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"missed 1"}}"#, o(2)));
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"to all"}}"#, o(4)));
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"missed 2"}}"#, o(5)));
    assert_eq!(ws.recv_text().await, format!(r#"{{"t":"pos","o":{}}}"#, o(5)));
    ws.expect_silence().await;
    durable.send_message(1, &[2], "live", false).await.unwrap();
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{},"d":"live"}}"#, o(6)));
    cluster.expect_metric(0, "freeim_resumes_total{result=\"recovered\"}", 1).await;
    cluster.shutdown_after(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_client_keeps_its_channels_across_a_node_crash() {
    let (redis, addr, mut node, im) = one_node().await;
    let servers = vec![addr.clone()];
    let (mut ws, hello) = connect_durable(&im, 1, "").await;
    let got = Received::new(&hello);
    im.join_chan(1, &["room"]).await.unwrap();
    let sockets = format!("im_v2_wsNodeSockets{addr}");
    let fields = redis.fields(&sockets);
    assert!(fields.len() == 1 && fields[0].ends_with('d'), "a durable socket's record: {fields:?}");
    node.kill();
    texts_until_end(&mut ws).await;
    im.durable().send_chan_message(2, "room", "missed").await.unwrap();

    // The next run cleans the crashed run's record, but a durable client keeps its channels
    // for --history-ttl: it is recorded away instead.
    let node = start_node(&redis, &addr, &servers).await;
    eventually(None, || async { redis.fields(&sockets).is_empty() }).await;
    assert_eq!(redis.fields("im_v2_wsChanroom"), ["1"]);
    assert_eq!(redis.fields(&format!("im_v2_wsNodeAway{addr}")), ["1"]);
    let (mut ws, hello) = connect_durable(&im, 1, &got.resume()).await;
    assert_eq!(hello["recovered"], true, "{hello}");
    let top = offset(&hello);
    assert_eq!(ws.recv_text().await, format!(r#"{{"o":{top},"d":"missed"}}"#));
    assert_eq!(ws.recv_text().await, format!(r#"{{"t":"pos","o":{top}}}"#));
    ws.close().await;
    drop(node);
}
